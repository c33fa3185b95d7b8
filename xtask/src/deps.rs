//! Installs the Debian packages a command needs, and only those missing.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Every Debian package the tests, the demo and the image build use.
///
/// One list for all commands: CI and a newcomer's machine get the same set,
/// so a test can never pass only because an earlier command installed
/// something by chance.
pub const PACKAGES: &[&str] = &[
    // build
    "build-essential",
    "pkg-config",
    "libtss2-dev",
    "libc6-dev",
    // namespaces, mounts, loop devices
    "util-linux",
    "procps",
    "iproute2",
    // the appliance image
    "linux-image-amd64",
    "systemd-boot-efi",
    "erofs-utils",
    "cryptsetup-bin",
    "dosfstools",
    "mtools",
    "fdisk",
    "e2fsprogs",
    "cpio",
    "binutils",
    "kmod",
    // booting it
    "qemu-system-x86",
    "ovmf",
    "swtpm",
    "swtpm-tools",
    "tpm2-tools",
    // systemd-measure: image's PCR 11 test checks its prediction against it
    "systemd",
    // the README's by-hand QEMU section presses the power button through
    // the monitor socket with it; the update tests' guest reaches its
    // nginx through it (slirp's guestfwd runs one per connection)
    "socat",
    // the hal's TPM tests check the EK certificate chain with it
    "openssl",
    // reference tools the benchmarks are checked against
    // (mmdebstrap: `bench boot` builds a minimal Debian with systemd to compare)
    "mmdebstrap",
    "sysbench",
    "fio",
    // a DHCP server for netd's tests in a network namespace
    "dnsmasq-base",
    // netd's static-mode test pings the address from the server side
    "iputils-ping",
    // the registry's PostgreSQL backend tests start a private cluster with it
    "postgresql",
    // atomic A/B updates (issue 13): the update client's downloads are
    // checked against a real nginx (testkit::nginx, range requests), and
    // the slot writer against RAUC and casync on loop-device slots
    "nginx",
    "rauc",
    // `rauc bundle` runs mksquashfs (rauc only suggests it)
    "squashfs-tools",
    "casync",
    // `rauc install` talks to `rauc service` over D-Bus: a private bus
    // from `dbus-daemon --session`, whose config is the session package's
    "dbus-daemon",
    "dbus-session-bus-common",
    // apps (issue 14): a real OCI registry (the CNCF distribution
    // registry) on loopback, and a one-binary test image built with umoci
    // from busybox-static and pushed with skopeo
    "docker-registry",
    "skopeo",
    "umoci",
    "busybox-static",
    // baked into the image for apps: the OCI runtime, nftables for the
    // apps' ports and isolation, and Debian's container seccomp profile
    "crun",
    "nftables",
    "golang-github-containers-common",
    // the Yocto layer's checks (issue 15) run oelint-adv, BitBake's parser
    // and kas's schema in a virtualenv made with the pinned packages
    "python3-venv",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

/// Installs whatever of `packages` is missing.
pub fn ensure(packages: &[&str]) -> Result<()> {
    if which("dpkg-query").is_none() || which("apt-get").is_none() {
        bail!(
            "this command needs a Debian 12 (bookworm) system with apt-get; it is missing here.\n\
             Install these packages by your system's means and run again: {}",
            packages.join(" ")
        );
    }
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing missing Debian packages: {}",
        missing.join(" ")
    );
    let status = Command::new("apt-get")
        .arg("update")
        .arg("-qq")
        .status()
        .context("running apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed ({status}); are you root, and can the machine reach the package archive?");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!(
            "apt-get install {} failed ({status}); run it by hand to see why",
            missing.join(" ")
        );
    }
    Ok(())
}

/// The full path of `prog` on PATH, if any.
pub fn which(prog: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}
