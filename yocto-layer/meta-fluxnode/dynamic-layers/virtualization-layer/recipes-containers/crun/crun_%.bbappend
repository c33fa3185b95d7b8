# meta-virtualization's scarthgap crun requires the systemd distro feature
# (REQUIRED_DISTRO_FEATURES ?= "systemd seccomp", DEPENDS += "systemd"), so
# under the fluxnode distro (no systemd) it would be skipped and
# fluxnode-node-appd's RDEPENDS on crun could not be met. crun runs fine
# without systemd (there is none on the node; the app daemon makes its own
# cgroups, node/src/appd); later meta-virtualization
# releases make systemd a PACKAGECONFIG, where this changes nothing.
REQUIRED_DISTRO_FEATURES:fluxnode = "seccomp"
DEPENDS:remove:fluxnode = "systemd"
EXTRA_OECONF:append:fluxnode = " --disable-systemd"
