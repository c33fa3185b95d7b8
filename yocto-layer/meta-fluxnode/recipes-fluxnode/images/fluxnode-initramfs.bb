SUMMARY = "fluxnode initramfs: stage 1 as /init and the kernel modules it loads"
DESCRIPTION = "The initramfs inside every fluxnode UKI, as the prebuilt \
image's builder makes it (image/src/initramfs.rs): fluxnode-stage1 as /init, \
/etc/initrd-release, and the modules stage 1 loads with a trimmed modules.dep \
and modules.alias. No C library, no shell, no busybox."
LICENSE = "MIT"

# Nothing but stage 1: no packagegroup-core-boot, no base-files, no
# package manager data, no locales.
PACKAGE_INSTALL = "fluxnode-init-stage1"
IMAGE_FEATURES = ""
IMAGE_LINGUAS = ""
NO_RECOMMENDATIONS = "1"
# gzip -9 -n --rsyncable (oe-core's gz conversion): a change near the start
# leaves the compressed bytes after it alone, so an update's UKI patch stays
# small (docs/IMAGE.md).
IMAGE_FSTYPES = "cpio.gz"
# Only ever baked into the UKIs.
IMAGE_NAME_SUFFIX = ""

inherit image fluxnode_modules

# As image/spec/default.toml [kernel]: always loaded by stage 1; disk and NIC
# drivers loaded when a present device's modalias matches; the fallback
# drivers when the root has not shown up 300 ms later.
FLUXNODE_INITRD_MODULES ?= "dm-verity erofs ext4 quota_v2 efivarfs vfat nls_cp437 nls_ascii"
FLUXNODE_INITRD_DRIVERS ?= "virtio_pci virtio_blk virtio_scsi nvme virtio_net e1000e"
FLUXNODE_INITRD_FALLBACK_DRIVERS ?= "ahci sd_mod"
FLUXNODE_VERSION ?= "0.1.0"

python fluxnode_initramfs_tree() {
    rootfs = d.getVar('IMAGE_ROOTFS')
    db = fluxnode_moddb(d)
    modules = d.getVar('FLUXNODE_INITRD_MODULES').split()
    drivers = d.getVar('FLUXNODE_INITRD_DRIVERS').split()
    fallback = d.getVar('FLUXNODE_INITRD_FALLBACK_DRIVERS').split()
    order = fluxnode_mod_closure(db, modules + drivers + fallback)
    always = fluxnode_mod_closure(db, modules)
    first = fluxnode_mod_closure(db, drivers)
    later = fluxnode_mod_closure(db, fallback)
    fluxnode_mod_install(d, db, rootfs, order, first + later)
    for name, names in (('modules.initrd', always), ('modules.drivers', first), ('modules.fallback', later)):
        fluxnode_mod_write(os.path.join(rootfs, 'etc/fluxnode', name), '\n'.join(names) + '\n')
    # Stage 1 checks that it runs from an initramfs by this file.
    version = d.getVar('FLUXNODE_VERSION')
    fluxnode_mod_write(os.path.join(rootfs, 'etc/initrd-release'),
                       'NAME="fluxnode"\nID=fluxnode\nIMAGE_ID=fluxnode\nIMAGE_VERSION=%s\n'
                       'VERSION_ID=%s\nPRETTY_NAME="fluxnode %s"\n' % (version, version, version))
    for sub in ('dev', 'proc', 'sys', 'run', 'newroot', 'tmp'):
        bb.utils.mkdirhier(os.path.join(rootfs, sub))
    # As image/src/initramfs.rs: /dev/console and /dev/null (oe-core's cpio
    # image type adds neither; do_rootfs runs under pseudo, so mknod works).
    for node, mode, major, minor in (('dev/console', 0o20600, 5, 1), ('dev/null', 0o20666, 1, 3)):
        if not os.path.lexists(os.path.join(rootfs, node)):
            os.mknod(os.path.join(rootfs, node), mode, os.makedev(major, minor))
}
ROOTFS_POSTPROCESS_COMMAND += "fluxnode_initramfs_tree"
