SUMMARY = "fluxnode network service: DHCPv4 with renewal, or static"
DESCRIPTION = "fluxnode-netd brings up loopback and the first wired link \
(DHCPv4 or a static address from fluxnode.net= on the kernel command line) \
and reports ready once it has an address and a default route."

require recipes-fluxnode/fluxnode-source.inc

FLUXNODE_CARGO_PACKAGE = "fluxnode-netd"

# netd.toml runs it as user and group netd (least privilege, docs/INIT.md).
# Its id is left to the build: the service file names it, nothing pins it.
inherit useradd
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --home-dir /run/netd --no-create-home --shell /sbin/nologin --user-group netd"

do_install() {
	fluxnode_install_bin fluxnode-netd ${bindir}/fluxnode-netd
	fluxnode_install_conf netd.toml ${sysconfdir}/fluxnode/services.d/netd.toml
}

FILES:${PN} += "${sysconfdir}/fluxnode"
CONFFILES:${PN} = "${sysconfdir}/fluxnode/services.d/netd.toml"
