# What the appliance needs from linux-yocto whatever the machine: erofs with
# lz4, dm-verity, the EFI stub and efivarfs, ext4 with quotas for /var, the
# TPM, the watchdog, and the apps' overlay, veth, bridge and nftables. Only
# for the fluxnode distro (a Yocto-compatible layer changes nothing unless
# selected); a BSP with another kernel applies fluxnode.cfg to it (README.md).
FILESEXTRAPATHS:prepend:fluxnode := "${THISDIR}/files:"
SRC_URI:append:fluxnode = " file://fluxnode.cfg"
