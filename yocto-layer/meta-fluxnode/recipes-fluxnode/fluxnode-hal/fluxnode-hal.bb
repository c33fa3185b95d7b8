SUMMARY = "fluxnode hardware inventory, tier benchmarks and TPM tool"
DESCRIPTION = "fluxnode-hal reports the machine's hardware, runs the tier \
benchmarks and classifies the tier, and talks to the TPM through libtss2."

require recipes-fluxnode/fluxnode-source.inc

FLUXNODE_CARGO_PACKAGE = "fluxnode-hal"

# The `tpm` feature (hal's default) links libtss2 through tss-esapi; the
# binary requires it (hal/Cargo.toml `required-features`), so it is not a
# PACKAGECONFIG: without tpm2-tss there is no fluxnode-hal binary.
DEPENDS += "tpm2-tss"

do_install() {
	fluxnode_install_bin fluxnode-hal ${bindir}/fluxnode-hal
}

# libtss2-tctildr dlopens the device TCTI by name: no shlib dependency sees it.
RDEPENDS:${PN} = "libtss2-tcti-device"
