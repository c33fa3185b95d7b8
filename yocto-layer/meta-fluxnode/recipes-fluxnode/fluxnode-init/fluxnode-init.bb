SUMMARY = "fluxnode PID 1: stage 1 (initramfs /init), the service supervisor, modload"
DESCRIPTION = "fluxnode-init is the appliance's init: fluxnode-stage1 is the \
initramfs's /init (verity root, /var, switch_root), fluxnode-init is PID 1 \
after switch_root (supervises the services of /etc/fluxnode/services.d, \
blesses the boot), fluxnode-modload loads the late kernel modules."

require recipes-fluxnode/fluxnode-source.inc

FLUXNODE_CARGO_PACKAGE = "fluxnode-init"

# /sbin/init -> ../usr/sbin/fluxnode-init as in the prebuilt image; relative
# to wherever base_sbindir is (it is /usr/sbin itself under usrmerge).
FLUXNODE_INIT_LINK = "${@os.path.relpath(d.getVar('sbindir') + '/fluxnode-init', d.getVar('base_sbindir'))}"

# Static, as the prebuilt image's: stage 1 runs from an initramfs that holds
# no C library, and PID 1 should not depend on the root's libraries to
# report that the root is broken. (Build scripts are unaffected: cargo is
# given --target, so RUSTFLAGS apply to target code only.)
RUSTFLAGS:append = " -C target-feature=+crt-static"

do_install() {
	fluxnode_install_bin fluxnode-init ${sbindir}/fluxnode-init
	# Stage 1 execs /sbin/init's target: PID 1 is named fluxnode-init.
	install -d ${D}${base_sbindir}
	ln -sf ${FLUXNODE_INIT_LINK} ${D}${base_sbindir}/init
	# Fixed paths, not ${libdir} (lib64 on x86-64): modules.toml names this one.
	fluxnode_install_bin fluxnode-modload ${nonarch_libdir}/fluxnode/fluxnode-modload
	fluxnode_install_bin fluxnode-stage1 /init
	fluxnode_install_conf init.toml ${sysconfdir}/fluxnode/init.toml
	fluxnode_install_conf modules.toml ${sysconfdir}/fluxnode/services.d/modules.toml
}

PACKAGES =+ "${PN}-stage1"
# The initramfs's /init alone (fluxnode-initramfs installs only this).
FILES:${PN}-stage1 += "/init"
FILES:${PN} += "${base_sbindir}/init ${nonarch_libdir}/fluxnode ${sysconfdir}/fluxnode"
CONFFILES:${PN} = "${sysconfdir}/fluxnode/init.toml ${sysconfdir}/fluxnode/services.d/modules.toml"

