SUMMARY = "fluxnode node daemon: agent, app daemon and the fluxnode CLI"
DESCRIPTION = "fluxnode (package fluxnode-node) registers the node with its \
registry by the TPM and proves its tier (fluxnode agent), runs apps under \
crun (fluxnode appd), and answers fluxnode status and fluxnode app."

require recipes-fluxnode/fluxnode-source.inc

FLUXNODE_CARGO_PACKAGE = "fluxnode-node"

# Takes hal with its `tpm` feature (node/Cargo.toml): always links libtss2.
DEPENDS += "tpm2-tss"

do_install() {
	fluxnode_install_bin fluxnode ${bindir}/fluxnode
	fluxnode_install_conf node.toml ${sysconfdir}/fluxnode/services.d/node.toml
	fluxnode_install_conf appd.toml ${sysconfdir}/fluxnode/services.d/appd.toml
}

# The app daemon's service and what it runs apps with, apart: an image
# built with FLUXNODE_APPS = "0" leaves this package (and crun) out.
PACKAGES =+ "${PN}-appd"
FILES:${PN}-appd += "${sysconfdir}/fluxnode/services.d/appd.toml"
FILES:${PN} += "${sysconfdir}/fluxnode"
CONFFILES:${PN}-appd += "${sysconfdir}/fluxnode/services.d/appd.toml"
CONFFILES:${PN} = "${sysconfdir}/fluxnode/services.d/node.toml"
# crun (meta-virtualization) runs the apps; ip and nft build their network;
# the seccomp profile comes from the image (FLUXNODE_SECCOMP_PROFILE).
RDEPENDS:${PN}-appd = "${PN} crun iproute2-ip nftables"
# libtss2-tctildr dlopens the device TCTI by name: no shlib dependency sees it.
RDEPENDS:${PN} = "libtss2-tcti-device"
