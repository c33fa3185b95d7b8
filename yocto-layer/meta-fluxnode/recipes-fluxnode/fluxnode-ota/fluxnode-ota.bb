SUMMARY = "fluxnode update client: TUF-verified A/B updates"
DESCRIPTION = "fluxnode-ota installs TUF-verified, streamed, delta updates \
into the other root slot with a boot-counted UKI; health checks decide \
after the reboot."

require recipes-fluxnode/fluxnode-source.inc

FLUXNODE_CARGO_PACKAGE = "fluxnode-ota"

# Static, as in the prebuilt image: the update client is what repairs a node
# whose other parts are broken, so it depends on as little as possible.
RUSTFLAGS:append = " -C target-feature=+crt-static"

do_install() {
	fluxnode_install_bin fluxnode-ota ${bindir}/fluxnode-ota
	fluxnode_install_conf ota.toml ${sysconfdir}/fluxnode/services.d/ota.toml
	# No `repository` in it: the shipped default. The image replaces it with
	# FLUXNODE_OTA_CONFIG when the operator names one.
	fluxnode_install_conf ota/config.toml ${sysconfdir}/fluxnode/ota.toml
}

FILES:${PN} += "${sysconfdir}/fluxnode"
CONFFILES:${PN} = "${sysconfdir}/fluxnode/services.d/ota.toml ${sysconfdir}/fluxnode/ota.toml"
