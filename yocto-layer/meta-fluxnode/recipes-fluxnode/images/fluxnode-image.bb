SUMMARY = "fluxnode appliance image: A/B erofs + dm-verity roots, systemd-boot, UKIs"
DESCRIPTION = "The fluxnode appliance as image/spec/default.toml builds it: \
fluxnode-init as PID 1 (no systemd, no shell), netd, hal, the node daemon, the \
update client and the app daemon with crun; an erofs root with dm-verity, one \
UKI per slot, systemd-boot, and the A/B GPT disk of wic/fluxnode-ab.wks.in."
LICENSE = "MIT"

# Exactly these packages (and what they depend on): no packagegroup-core-boot,
# so neither systemd nor sysvinit nor busybox comes along. The init manager
# is ours (VIRTUAL-RUNTIME_init_manager in conf/distro/fluxnode.conf).
IMAGE_INSTALL = "base-files \
    base-passwd \
    e2fsprogs-e2fsck \
    e2fsprogs-mke2fs \
    fluxnode-hal \
    fluxnode-init \
    fluxnode-netd \
    fluxnode-node \
    fluxnode-ota \
    ${@'fluxnode-node-appd' if d.getVar('FLUXNODE_APPS') == '1' else ''}"
# Read-only (erofs): every postinst runs at build time, none on the device,
# so the image needs no run-postinsts (and the shell it would bring).
IMAGE_FEATURES = "read-only-rootfs"
ROOTFS_BOOTSTRAP_INSTALL = ""
IMAGE_LINGUAS = ""
NO_RECOMMENDATIONS = "1"
# wic + its bmap to flash; fluxnoderoot is the slot payload (and wic's input).
IMAGE_FSTYPES = "wic wic.bmap fluxnoderoot"
WKS_FILE = "fluxnode-ab.wks.in"
# The root slot is 128 MiB (the wks): room is checked by wic's --fixed-size.
IMAGE_ROOTFS_EXTRA_SPACE = "0"

inherit image fluxnode_verity

# Apps (docs/APPS.md): the app daemon, crun (meta-virtualization), ip and
# nft, the containers' seccomp profile, and the kernel modules their network
# needs. "0" builds the appliance without apps and without meta-virtualization.
FLUXNODE_APPS ??= "1"

# The services in /etc/fluxnode/services.d (image/services/NAME.toml), as the
# QEMU image bakes them; the build fails when the rootfs holds another set.
FLUXNODE_SERVICES ?= "modules netd node ota appd"
FLUXNODE_SERVICES:remove = "${@'' if d.getVar('FLUXNODE_APPS') == '1' else 'appd'}"

# As image/spec/default.toml late_modules: loaded after switch_root by the
# modules service when a present device matches (button, watchdog, RNG,
# SATA for hal's inventory), plus what the apps' network uses.
FLUXNODE_LATE_MODULES ?= "button evdev i6300esb virtio_rng ahci sd_mod \
    ${@'overlay veth bridge nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_connlimit' if d.getVar('FLUXNODE_APPS') == '1' else ''}"

# What the operator bakes in (README.md, "Variables"). Each is a path on the
# build host; empty means "as the shipped image" (see fluxnode_operator_files).
# The update repository's TUF root metadata -> /usr/lib/fluxnode/tuf/root.json
FLUXNODE_TUF_ROOT ?= ""
# The update client's settings (names the repository) -> /etc/fluxnode/ota.toml
FLUXNODE_OTA_CONFIG ?= ""
# The node agent's settings (registry URL, CA path, TCTI) -> /etc/fluxnode/node.toml
FLUXNODE_NODE_CONFIG ?= ""
# The registry's CA certificate -> /etc/fluxnode/registry-ca.pem
FLUXNODE_REGISTRY_CA ?= ""
# The containers' default seccomp profile (containers/common's seccomp.json,
# what Debian's golang-github-containers-common ships) -> /usr/share/containers/seccomp.json
FLUXNODE_SECCOMP_PROFILE ?= ""

python fluxnode_root_tree() {
    import json
    rootfs = d.getVar('IMAGE_ROOTFS')
    # Late modules, trimmed modules.dep/alias, and the list modload reads.
    db = fluxnode_moddb(d)
    late = fluxnode_mod_closure(db, d.getVar('FLUXNODE_LATE_MODULES').split())
    fluxnode_mod_install(d, db, rootfs, late, late)
    fluxnode_mod_write(rootfs + d.expand('${sysconfdir}/fluxnode/modules.late'), '\n'.join(late) + '\n')
    version = d.getVar('FLUXNODE_VERSION')
    fluxnode_mod_write(rootfs + d.expand('${sysconfdir}/os-release'), fluxnode_os_release(version, None))
    fluxnode_mod_write(rootfs + d.expand('${nonarch_libdir}/fluxnode/image.json'), json.dumps({
        'version': version, 'compatible': d.getVar('FLUXNODE_COMPATIBLE'),
        'security_version': int(d.getVar('FLUXNODE_SECURITY_VERSION'))}, indent=2) + '\n')
    fluxnode_mod_write(rootfs + d.expand('${sysconfdir}/hostname'), 'fluxnode\n')
    # Mount points stage 1 and init use (the builder's SKELETON).
    for sub in ('dev', 'proc', 'sys', 'run', 'tmp', 'var', 'efi', 'root'):
        bb.utils.mkdirhier(os.path.join(rootfs, sub))
    # The resolver reads what netd learned (its own runtime directory).
    resolv = rootfs + d.expand('${sysconfdir}/resolv.conf')
    if os.path.lexists(resolv):
        os.unlink(resolv)
    os.symlink('../run/netd/resolv.conf', resolv)
}

python fluxnode_operator_files() {
    import shutil
    rootfs = d.getVar('IMAGE_ROOTFS')
    def put(var, dst, check=None):
        src = d.getVar(var)
        if not src:
            return False
        if not os.path.isfile(src):
            bb.fatal("%s = %s: no such file" % (var, src))
        with open(src, 'rb') as f:
            data = f.read()
        if check:
            check(src, data)
        fluxnode_mod_write(rootfs + d.expand(dst), data)
        return True

    def check_root(src, data):
        # The builder also verifies the root's self-signatures; here only its
        # shape (README.md says so): fluxnode-ota refuses a bad root at run time.
        import json
        try:
            role = json.loads(data)['signed']['_type']
        except Exception as e:
            bb.fatal("FLUXNODE_TUF_ROOT = %s is not TUF metadata: %s" % (src, e))
        if role != 'root':
            bb.fatal("FLUXNODE_TUF_ROOT = %s is TUF %s metadata, not root" % (src, role))

    def names(src, key):
        import re
        with open(src) as f:
            return any(re.match(r'\s*%s\s*=' % key, line) for line in f)

    has_root = put('FLUXNODE_TUF_ROOT', '${nonarch_libdir}/fluxnode/tuf/root.json', check_root)
    ota = d.getVar('FLUXNODE_OTA_CONFIG')
    if put('FLUXNODE_OTA_CONFIG', '${sysconfdir}/fluxnode/ota.toml') and names(ota, 'repository') and not has_root:
        bb.fatal("FLUXNODE_OTA_CONFIG (%s) names a repository but FLUXNODE_TUF_ROOT is not set: "
                 "the update client could verify nothing. Set FLUXNODE_TUF_ROOT to the "
                 "repository's root metadata (REPO/metadata/1.root.json, or the newest root)" % ota)
    if not ota:
        bb.note("fluxnode: no FLUXNODE_OTA_CONFIG: the update client only reconciles at boot, "
                "as the shipped image (docs/UPDATES.md)")
    has_ca = put('FLUXNODE_REGISTRY_CA', '${sysconfdir}/fluxnode/registry-ca.pem')
    node = d.getVar('FLUXNODE_NODE_CONFIG')
    if put('FLUXNODE_NODE_CONFIG', '${sysconfdir}/fluxnode/node.toml') and names(node, 'ca') and not has_ca:
        bb.fatal("FLUXNODE_NODE_CONFIG (%s) names a registry CA but FLUXNODE_REGISTRY_CA is not "
                 "set: set it to the registry's ca.pem (fluxnode-registry init makes one)" % node)
    if d.getVar('FLUXNODE_APPS') == '1' and not put('FLUXNODE_SECCOMP_PROFILE', '${datadir}/containers/seccomp.json'):
        bb.fatal("FLUXNODE_SECCOMP_PROFILE is not set: the app daemon filters apps' system calls "
                 "with the containers' default profile (seccomp.json of containers/common, Debian's "
                 "golang-github-containers-common). Point it at a copy, or set FLUXNODE_APPS = \"0\"")
}

python fluxnode_check_services() {
    import glob
    rootfs = d.getVar('IMAGE_ROOTFS')
    have = sorted(os.path.basename(p)[:-len('.toml')]
                  for p in glob.glob(rootfs + d.expand('${sysconfdir}/fluxnode/services.d/*.toml')))
    want = sorted(d.getVar('FLUXNODE_SERVICES').split())
    if have != want:
        bb.fatal("services.d holds %s, FLUXNODE_SERVICES says %s" % (have, want))
    # An appliance without a shell: say so when a dependency brought one.
    for sh in ('bin/sh', 'usr/bin/sh', 'bin/bash', 'bin/busybox'):
        if os.path.lexists(os.path.join(rootfs, sh)):
            bb.warn("fluxnode: /%s is in the root: a package's dependencies brought a shell "
                    "the prebuilt image does not have (see buildhistory's depends graph)" % sh)
}

ROOTFS_POSTPROCESS_COMMAND += "fluxnode_root_tree fluxnode_operator_files fluxnode_check_services"
