SUMMARY = "fluxnode registry: registers nodes by TPM and signs tier certificates"
DESCRIPTION = "fluxnode-registry is the network side: it registers nodes by \
their TPM, verifies attested sessions, measures bandwidth, ranks nodes and \
signs tier certificates, on redb or PostgreSQL. For operators who host a \
registry; not part of the appliance image."

require recipes-fluxnode/fluxnode-source.inc

FLUXNODE_CARGO_PACKAGE = "fluxnode-registry"

do_install() {
	fluxnode_install_bin fluxnode-registry ${bindir}/fluxnode-registry
}
