# The fluxnode boot chain for an image recipe, byte for byte the way the
# prebuilt image's builder makes it (image/src/rootfs.rs `pack`,
# image/src/build.rs, image/src/esp.rs, image/src/disk.rs):
#
# - image type `fluxnoderoot`: the rootfs as erofs (lz4hc, pinned time and
#   UUID), padded to 4 KiB, with the dm-verity hash tree appended in the
#   same file (no verity superblock);
# - task do_fluxnode_boot (after it): one UKI per slot (systemd-boot's stub, our
#   initramfs, the kernel, a command line carrying that slot's partition,
#   the root hash, salt, data blocks, security version and the disk's
#   fixed GUIDs), the FAT ESP (systemd-boot, loader.conf, slot a's UKI),
#   and the update payloads with a manifest.json that `fluxnode-image
#   publish --build` reads;
# - the wic disk (wic/fluxnode-ab.wks.in) gets the builder's fixed disk GUID.

inherit fluxnode_modules

# The image's version (IMAGE_VERSION in os-release and the UKIs, the
# version updates are published as). As image/spec/default.toml `version`.
FLUXNODE_VERSION ?= "0.1.0"
# As default.toml `cmdline` (see there for why each option is there).
FLUXNODE_CMDLINE ?= "console=ttyS0,115200 quiet panic=5 softlockup_panic=1 cryptomgr.notests fluxnode.timestamps"
# Appended to every slot's command line (e.g. a board's console).
FLUXNODE_EXTRA_CMDLINE ?= ""
# Anti-rollback generation: fluxnode.secver= on every UKI (docs/UPDATES.md).
FLUXNODE_SECURITY_VERSION ?= "1"
# The hardware and layout updates must be built for (image/src/spec.rs).
FLUXNODE_COMPATIBLE ?= "fluxnode-x86_64-uefi-ab1"
# The initramfs image baked into each UKI.
FLUXNODE_INITRAMFS ?= "fluxnode-initramfs"
FLUXNODE_INITRAMFS_FILE ?= "${DEPLOY_DIR_IMAGE}/${FLUXNODE_INITRAMFS}-${MACHINE}.cpio.gz"
FLUXNODE_KERNEL_FILE ?= "${DEPLOY_DIR_IMAGE}/${KERNEL_IMAGETYPE}"
# systemd-boot's deploy (EFI_ARCH x64 on x86-64).
FLUXNODE_EFI_ARCH ?= "x64"
FLUXNODE_STUB ?= "${DEPLOY_DIR_IMAGE}/linux${FLUXNODE_EFI_ARCH}.efi.stub"
FLUXNODE_SYSTEMD_BOOT ?= "${DEPLOY_DIR_IMAGE}/systemd-boot${FLUXNODE_EFI_ARCH}.efi"
# Boot counter on slot a's UKI in the ESP ("3" -> +3, unblessed); empty as
# the shipped image (a fresh image's slot a is trusted as flashed).
FLUXNODE_SLOT_A_TRIES ?= ""

# Where the pieces wic assembles are made (the wks names these files).
FLUXNODE_BOOT_DIR = "${WORKDIR}/fluxnode-boot"
# The salt and erofs UUID derive from the version, as the builder's.
FLUXNODE_VERITY_SALT = "${@fluxnode_sha256_hex('fluxnode-verity-salt:%s:a' % d.getVar('FLUXNODE_VERSION'))}"
FLUXNODE_EROFS_UUID = "${@fluxnode_fixed_guid('erofs:' + d.getVar('FLUXNODE_VERSION')).lower()}"
FLUXNODE_DISK_GUID = "${@fluxnode_fixed_guid('disk')}"

DEPENDS += "cryptsetup-native \
    dosfstools-native \
    erofs-utils-native \
    mtools-native \
    python3-pefile-native \
    systemd-boot-native \
    util-linux-native \
"

def fluxnode_sha256_hex(text):
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()

def fluxnode_fixed_guid(label):
    # image/src/disk.rs fixed_guid: sha256("fluxnode-guid:" + label), first
    # 16 bytes, version 4 and variant bits set, upper-case.
    import hashlib
    b = bytearray(hashlib.sha256(('fluxnode-guid:' + label).encode()).digest()[:16])
    b[6] = (b[6] & 0x0f) | 0x40
    b[8] = (b[8] & 0x3f) | 0x80
    x = b.hex().upper()
    return '-'.join((x[0:8], x[8:12], x[12:16], x[16:20], x[20:32]))

# The image recipe lists it in IMAGE_FSTYPES (before wic, whose parts it makes:
# do_fluxnode_boot sits between the two tasks).
IMAGE_TYPES:append = " fluxnoderoot"
do_image_fluxnoderoot[cleandirs] = "${FLUXNODE_BOOT_DIR}"
IMAGE_CMD:fluxnoderoot () {
	out=${FLUXNODE_BOOT_DIR}/root_a.img
	# Ownership is the rootfs's own (pseudo), unlike the builder's
	# --all-root: Yocto's packages carry their owners.
	mkfs.erofs -zlz4hc -T${SOURCE_DATE_EPOCH} -U${FLUXNODE_EROFS_UUID} -x-1 --quiet $out ${IMAGE_ROOTFS}
	len=$(stat -c %s $out)
	padded=$(( (len + 4095) / 4096 * 4096 ))
	truncate -s $padded $out
	veritysetup format --no-superblock --hash=sha256 \
		--data-block-size=4096 --hash-block-size=4096 \
		--salt=${FLUXNODE_VERITY_SALT} --data-blocks=$(( padded / 4096 )) \
		--hash-offset=$padded $out $out > ${FLUXNODE_BOOT_DIR}/verity.txt
	echo "Data blocks: $(( padded / 4096 ))" >> ${FLUXNODE_BOOT_DIR}/verity.txt
	# IMAGE_NAME already ends in IMAGE_NAME_SUFFIX (.rootfs) since nanbield;
	# image.bbclass links IMAGE_LINK_NAME.fluxnoderoot to IMAGE_NAME.fluxnoderoot.
	ln -f $out ${IMGDEPLOYDIR}/${IMAGE_NAME}.fluxnoderoot
}

def fluxnode_wks_parts(d):
    """(name, type GUID, uuid, MiB) of each `part` line of the wks, in order."""
    import shlex
    path = d.getVar('WKS_FULL_PATH') or ''
    if not os.path.exists(path):
        path = bb.utils.which(d.getVar('BBPATH'), os.path.join('wic', d.getVar('WKS_FILE') or ''))
    if not path or not os.path.exists(path):
        bb.fatal("cannot find the wks file %s" % d.getVar('WKS_FILE'))
    parts = []
    with open(path) as f:
        for line in f:
            w = shlex.split(line, comments=True)
            if not w or w[0] != 'part':
                continue
            opt, i = {}, 1
            while i < len(w):
                key, eq, val = w[i].partition('=')
                if eq:
                    opt[key] = val
                    i += 1
                else:
                    opt[key] = w[i + 1] if i + 1 < len(w) else ''
                    i += 2
            parts.append((opt['--part-name'], opt['--part-type'], opt['--uuid'],
                          int(opt['--fixed-size'].rstrip('M'))))
    return parts

def fluxnode_os_release(version, slot):
    pretty = 'fluxnode %s (slot %s)' % (version, slot) if slot else 'fluxnode %s' % version
    return ('NAME="fluxnode"\nID=fluxnode\nIMAGE_ID=fluxnode\nIMAGE_VERSION=%s\n'
            'VERSION_ID=%s\nPRETTY_NAME="%s"\n' % (version, version, pretty))

def fluxnode_payload(path, name):
    import hashlib
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return {'file': name, 'size': os.path.getsize(path), 'sha256': h.hexdigest()}

python do_fluxnode_boot() {
    import json
    import shutil
    boot = d.getVar('FLUXNODE_BOOT_DIR')
    version = d.getVar('FLUXNODE_VERSION')
    epoch = int(d.getVar('SOURCE_DATE_EPOCH'))
    facts = {}
    with open(os.path.join(boot, 'verity.txt')) as f:
        for line in f:
            k, sep, v = line.partition(':')
            if sep:
                facts[k.strip()] = v.strip()
    root_hash, blocks = facts.get('Root hash'), facts.get('Data blocks')
    if not root_hash or not blocks:
        bb.fatal("veritysetup printed no root hash: %s" % facts)
    salt = d.getVar('FLUXNODE_VERITY_SALT')

    parts = fluxnode_wks_parts(d)
    uuid = {p[0]: p[2].lower() for p in parts}
    for need in ('esp', 'root_a', 'root_b', 'data'):
        if need not in uuid:
            bb.fatal("the wks has no partition named %s" % need)

    update = os.path.join(boot, 'update')
    bb.utils.mkdirhier(update)
    shutil.copyfile(os.path.join(boot, 'root_a.img'), os.path.join(update, 'root_a.img'))
    root = {'payload': fluxnode_payload(os.path.join(update, 'root_a.img'), 'root_a.img'),
            'root_hash': root_hash, 'salt': salt, 'data_blocks': int(blocks)}
    ukis = []
    for slot in ('a', 'b'):
        cmdline = ' '.join(('%s fluxnode.slot=%s fluxnode.roothash=%s fluxnode.salt=%s '
                            'fluxnode.datablocks=%s fluxnode.secver=%s fluxnode.diskuuid=%s '
                            'fluxnode.espuuid=%s fluxnode.rootuuid=%s fluxnode.datauuid=%s %s') % (
            d.getVar('FLUXNODE_CMDLINE'), slot, root_hash, salt, blocks,
            d.getVar('FLUXNODE_SECURITY_VERSION'), d.getVar('FLUXNODE_DISK_GUID').lower(),
            uuid['esp'], uuid['root_' + slot], uuid['data'],
            d.getVar('FLUXNODE_EXTRA_CMDLINE') or '').split())
        work = os.path.join(boot, 'uki_' + slot)
        bb.utils.mkdirhier(work)
        with open(os.path.join(work, 'cmdline'), 'w') as f:
            f.write(cmdline)
        with open(os.path.join(work, 'osrel'), 'w') as f:
            f.write(fluxnode_os_release(version, slot))
        out = os.path.join(update, 'uki_%s.efi' % slot)
        for need in ('FLUXNODE_STUB', 'FLUXNODE_KERNEL_FILE', 'FLUXNODE_INITRAMFS_FILE'):
            if not os.path.exists(d.getVar(need)):
                bb.fatal("%s: %s does not exist" % (need, d.getVar(need)))
        # ukify places the sections after whatever the stub already has
        # (the builder's fixed VMAs fit only Debian's systemd 252 stub).
        bb.process.run(['ukify', 'build',
                        '--efi-arch', d.getVar('FLUXNODE_EFI_ARCH'),
                        '--stub', d.getVar('FLUXNODE_STUB'),
                        '--linux', d.getVar('FLUXNODE_KERNEL_FILE'),
                        '--initrd', d.getVar('FLUXNODE_INITRAMFS_FILE'),
                        '--cmdline', '@' + os.path.join(work, 'cmdline'),
                        '--os-release', '@' + os.path.join(work, 'osrel'),
                        '--output', out])
        ukis.append([slot, {'uki': fluxnode_payload(out, 'uki_%s.efi' % slot), 'cmdline': cmdline,
                            'pcr11_sha256': '', 'pcr12_sha256': '', 'pcr9_sha256': ''}])

    # The ESP: systemd-boot, loader.conf (image/src/esp.rs LOADER_CONF) and
    # slot a's UKI; slot b stays empty until the first update.
    tries = d.getVar('FLUXNODE_SLOT_A_TRIES')
    esp_name = 'fluxnode-%s-a%s.efi' % (version, '+' + tries if tries else '')
    tree = os.path.join(boot, 'esp')
    bb.utils.remove(tree, recurse=True)
    for sub in ('EFI/BOOT', 'EFI/systemd', 'EFI/Linux', 'loader/entries'):
        bb.utils.mkdirhier(os.path.join(tree, sub))
    shutil.copyfile(d.getVar('FLUXNODE_SYSTEMD_BOOT'), os.path.join(tree, 'EFI/BOOT/BOOT%s.EFI' % d.getVar('FLUXNODE_EFI_ARCH').upper()))
    shutil.copyfile(d.getVar('FLUXNODE_SYSTEMD_BOOT'), os.path.join(tree, 'EFI/systemd/systemd-boot%s.efi' % d.getVar('FLUXNODE_EFI_ARCH')))
    shutil.copyfile(os.path.join(update, 'uki_a.efi'), os.path.join(tree, 'EFI/Linux', esp_name))
    with open(os.path.join(tree, 'loader/loader.conf'), 'w') as f:
        f.write('timeout 0\nconsole-mode keep\neditor no\nauto-entries no\nauto-firmware no\n')
    for dirpath, dirnames, filenames in os.walk(tree):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (epoch, epoch))
    os.utime(tree, (epoch, epoch))
    esp_mib = [p[3] for p in parts if p[0] == 'esp'][0]
    esp = os.path.join(boot, 'esp.vfat')
    bb.utils.remove(esp)
    bb.process.run(['mkfs.vfat', '-F', '32', '-s', '1', '-S', '512', '--invariant', '-i', '464c5558',
                    '-n', 'ESP', '-C', esp, str(esp_mib * 1024)])
    env = dict(os.environ, MTOOLS_SKIP_CHECK='1')
    bb.process.run(['mcopy', '-s', '-p', '-m', '-Q', '-i', esp,
                    os.path.join(tree, 'EFI'), os.path.join(tree, 'loader'), '::/'], env=env)
    # root_b and data start out blank (the first update fills root_b; stage
    # 1 formats data on first boot): one zero block for wic's rawcopy.
    with open(os.path.join(boot, 'blank.img'), 'wb') as f:
        f.write(bytes(4096))

    # manifest.json (format 1) with what `fluxnode-image publish` reads, as
    # publish::release::write_build_dir writes it: no disk image in it, no
    # PCR predictions (the builder's measure module computes those; here
    # they are empty, which the update manifest allows).
    mib = 1024 * 1024
    off, table = mib, []
    for name, ptype, puuid, size in parts:
        table.append({'name': name, 'type_guid': ptype, 'uuid': puuid, 'offset': off, 'size': size * mib})
        off += size * mib
    manifest = {
        'format': 1, 'version': version, 'source_date_epoch': epoch,
        'kernel': {'package': d.getVar('PREFERRED_PROVIDER_virtual/kernel') or '',
                   'package_version': '', 'release': ''},
        'image': {'payload': {'file': 'fluxnode.img', 'size': 0,
                              'sha256': fluxnode_sha256_hex('')},
                  'chunk_size': 4 * mib, 'chunks': []},
        'partitions': table,
        'slots': [['a', {'version': version, 'esp_name': esp_name, 'uki': ukis[0][1]['uki'],
                         'root': root, 'cmdline': ukis[0][1]['cmdline'],
                         'pcr11_sha256': '', 'pcr12_sha256': '', 'pcr9_sha256': ''}]],
        'initrd_modules': [], 'late_modules': [], 'initramfs_size': os.path.getsize(d.getVar('FLUXNODE_INITRAMFS_FILE')),
        'update': {'version': version, 'compatible': d.getVar('FLUXNODE_COMPATIBLE'),
                   'security_version': int(d.getVar('FLUXNODE_SECURITY_VERSION')),
                   'root': root, 'ukis': ukis},
    }
    with open(os.path.join(update, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=2)
        f.write('\n')
    dest = os.path.join(d.getVar('IMGDEPLOYDIR'), d.getVar('IMAGE_LINK_NAME') + '.fluxnode-update')
    bb.utils.remove(dest, recurse=True)
    shutil.copytree(update, dest)
}
do_fluxnode_boot[depends] += " \
    ${FLUXNODE_INITRAMFS}:do_image_complete \
    systemd-boot:do_deploy \
    virtual/kernel:do_deploy \
"
do_fluxnode_boot[doc] = "Builds the UKIs, the ESP and the update payloads from the verity root"
addtask fluxnode_boot after do_image_fluxnoderoot before do_image_wic do_image_complete

# The disk GUID: wic derives its own from SOURCE_DATE_EPOCH; stage 1 checks
# the builder's (fluxnode.diskuuid=) before it formats data. Set before the
# wic.bmap conversion runs, so the bmap's checksums cover it.
IMAGE_CMD:wic:append () {
	for img in ${IMGDEPLOYDIR}/${IMAGE_NAME}*.wic; do
		sfdisk --disk-id $img ${FLUXNODE_DISK_GUID}
	done
}
