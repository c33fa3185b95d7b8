//! `cargo xtask bench ota`: issue 13's update figures, each beside its
//! peer, on this machine in one run (needs root: loop devices, dropping
//! the page cache). See [`LONG_ABOUT`] for what is measured and how.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fluxnode_image::publish::keys::Keystore;
use fluxnode_image::publish::release::{self, BuildPayloads, PublishOptions, Published};
use fluxnode_image::publish::roles::{self, Expiry, Repo};
use fluxnode_image::publish::trust::{self, InitOptions};
use fluxnode_tests::fixture;
use serde_json::{json, Value};

use crate::{deps, util};

/// `cargo xtask bench ota --help`.
pub const LONG_ABOUT: &str = "\
The update figures of issue 13, each beside its peer, on this machine in one run. \
Needs root (loop devices, dropping the page cache) and the Debian packages rauc, \
squashfs-tools, casync, dbus-daemon, dbus-session-bus-common, erofs-utils, nginx and \
openssl (installed when missing).

1. Install time into a root slot. The root image is an uncompressed erofs made from \
host directories (--root-dir, default /usr/sbin and /usr/share/locale: about 180 MiB) \
with `mkfs.erofs -T0 -U<fixed uuid> --all-root -x-1`. Slots are loop devices over \
files of the same size in the work directory. Three sides, interleaved, each run \
after `sync; echo 3 > /proc/sys/vm/drop_caches`, one untimed warm-up each (which also \
checks that slot B holds the image afterwards), then --runs timed runs; the median \
is reported:
   - dd: `dd if=IMG of=SLOT_B bs=1M conv=fsync`;
   - ours: the image published as a version (fluxnode-image's publisher, UKIs of \
64 KiB), then `fluxnode-ota install --from REPO_DIR --system SYSTEM.json --config \
CONFIG.toml --json` (release build, file:// reads, fresh state directory and ESP \
each run) on a node whose running slot A holds unrelated bytes, so every chunk is \
fetched, verified, written, synced and the slot read back and hashed;
   - RAUC: `rauc install` of a plain bundle of the same image (custom bootloader \
backend, private D-Bus session bus, `rauc service --override-boot-slot=A`).
   Goals: ours <= 1.25x dd, ours/RAUC <= 0.3.

2. Bytes downloaded for an update that changes one binary. Two real images of \
--spec built like `fluxnode-image build` (shared kernel cache, the release \
binaries copied first): v1 1.0.0, and v2 1.0.1 whose fluxnode-netd has one log \
message replaced by another of the same length. v1 is published, then v2 with \
patches from v1; `fluxnode-ota install` on a node running v1 (slot A holds v1's \
root, its ESP v1's UKI) reports what it downloaded against the full payload (root + \
UKI). The same without patches (a second repository: chunk reuse only). Beside it, \
casync (default chunking and compression) on the same pair of roots: the chunk \
files of v2's store that v1's store lacks, plus v2's index; checked by a real \
`casync extract --seed=ROOT_V1 --seed-output=no` from a private nginx. Goal: <= 1 %.

Progress goes to stderr; the table (or with --json one JSON object) to stdout. The \
work directory (default target/bench-ota, about 2 GB while it runs) is removed at \
the end unless --keep; loop devices, mounts and the RAUC service and bus left by an \
interrupted run are cleaned up at the next start.";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Timed runs per side of the install figure (after one warm-up each).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print one JSON object on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// Host directories the install figure's root image is made of (repeat).
    #[arg(long = "root-dir", value_name = "DIR", default_values = ["/usr/sbin", "/usr/share/locale"])]
    root_dirs: Vec<PathBuf>,
    /// The image spec of the download figure (under image/spec/).
    #[arg(long, default_value = "default.toml")]
    spec: String,
    /// Skip the install-time figure (1).
    #[arg(long)]
    skip_install: bool,
    /// Skip the bytes-downloaded figure (2).
    #[arg(long)]
    skip_download: bool,
    /// Do not measure RAUC.
    #[arg(long)]
    skip_rauc: bool,
    /// Work directory (default target/bench-ota; replaced).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// The same flags, after `--`.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// Flags after `--` override those before it.
fn merged(mut a: Args) -> Result<Args> {
    if a.extra.is_empty() {
        return Ok(a);
    }
    let cmd = <Args as clap::Args>::augment_args(clap::Command::new("cargo xtask bench ota"));
    let m = cmd
        .try_get_matches_from(std::iter::once("ota".to_string()).chain(a.extra.iter().cloned()))
        .map_err(|e| anyhow::anyhow!("bench ota: flags after `--`: {e}"))?;
    let e = <Args as clap::FromArgMatches>::from_arg_matches(&m)
        .map_err(|e| anyhow::anyhow!("bench ota: flags after `--`: {e}"))?;
    let given = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    if given("runs") {
        a.runs = e.runs;
    }
    if given("root_dirs") {
        a.root_dirs = e.root_dirs;
    }
    if given("spec") {
        a.spec = e.spec;
    }
    if given("dir") {
        a.dir = e.dir;
    }
    a.json |= e.json;
    a.skip_install |= e.skip_install;
    a.skip_download |= e.skip_download;
    a.skip_rauc |= e.skip_rauc;
    a.keep |= e.keep;
    a.extra.clear();
    Ok(a)
}

const PACKAGES: &[&str] = &[
    "util-linux",
    "erofs-utils",
    "rauc",
    "squashfs-tools",
    "casync",
    "dbus-daemon",
    "dbus-session-bus-common",
    "nginx",
    "openssl",
];

/// The compatibility string of both figures' manifests.
const COMPAT: &str = "fluxnode-x86_64-uefi-ab1";
/// The erofs UUID of the install figure's image (fixed: reproducible).
const EROFS_UUID: &str = "6a1d3c52-0b7e-4f4e-9a51-2f0c8d6e7b10";
/// Install figure: the version the node runs and the one it installs.
const P1_RUNNING: &str = "0.9.0";
const P1_VERSION: &str = "1.0.0";
/// Download figure: v1 and v2.
const V1: &str = "1.0.0";
const V2: &str = "1.0.1";
/// Same-length replacements tried in fluxnode-netd, first found once wins.
const EDITS: &[(&str, &str)] = &[
    ("no loopback link found", "loopback link missing!"),
    ("cannot write resolv.conf", "resolv.conf not written!"),
    ("loopback up", "loopback UP"),
];
const MIB: u64 = 1 << 20;

fn say(msg: impl std::fmt::Display) {
    eprintln!("bench ota: {msg}");
}

fn tail(b: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` (stdin from /dev/null), returning its stdout; on failure the
/// command line and the tail of both outputs.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}\n{}",
            out.status,
            tail(&out.stdout, 20),
            tail(&out.stderr, 30)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`output`], timed (wall clock, spawn to exit).
fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = output(cmd)?;
    Ok((t.elapsed().as_secs_f64(), out))
}

fn drop_caches() -> Result<()> {
    util::run(&mut Command::new("sync"))?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("writing /proc/sys/vm/drop_caches")
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / MIB as f64)
}

fn pct(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole.max(1) as f64
}

/// Deterministic bytes that match nothing published.
fn noise_fill(buf: &mut [u8], x: &mut u64) {
    for w in buf.chunks_mut(8) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let b = x.to_le_bytes();
        w.copy_from_slice(&b[..w.len()]);
    }
}

/// A distinct xorshift state for each seed (never zero).
fn mix(seed: u64) -> u64 {
    seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut x = mix(seed);
    noise_fill(&mut v, &mut x);
    v
}

/// Writes `len` bytes of noise at the start of `path` (a file, created
/// when missing, or a block device) and syncs it.
fn write_noise(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut x = mix(seed);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        noise_fill(&mut buf[..n], &mut x);
        f.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// Whether the first bytes of `dev` are exactly the file `img`.
fn holds(dev: &str, img: &Path) -> Result<bool> {
    let mut a = std::fs::File::open(img).with_context(|| format!("opening {}", img.display()))?;
    let mut b = std::fs::File::open(dev).with_context(|| format!("opening {dev}"))?;
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("reading {}", p.display()))?
        .len())
}

fn sha256sum(p: &Path) -> Result<String> {
    let out = output(Command::new("sha256sum").arg(p))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn create_file(path: &Path, len: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(len)
        .with_context(|| format!("sizing {}", path.display()))
}

/// A TOML (and JSON) string literal.
fn quoted(p: &Path) -> String {
    Value::String(p.display().to_string()).to_string()
}

fn remove_dir(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, sig) };
}

/// What a run started and must stop, even on failure: children (the RAUC
/// service, its bus), loop devices. Their ids are also written to
/// `WORK/pids` so a run that was killed is cleaned up by the next one.
struct Guard {
    work: PathBuf,
    children: Vec<(&'static str, Child)>,
    loops: Vec<String>,
}

impl Guard {
    fn new(work: &Path) -> Guard {
        Guard {
            work: work.to_path_buf(),
            children: Vec::new(),
            loops: Vec::new(),
        }
    }

    fn attach(&mut self, file: &Path) -> Result<String> {
        let dev = output(
            Command::new("losetup")
                .arg("--find")
                .arg("--show")
                .arg(file),
        )?
        .trim()
        .to_string();
        if !dev.starts_with("/dev/loop") {
            bail!("losetup --find --show {} printed {dev:?}", file.display());
        }
        self.loops.push(dev.clone());
        Ok(dev)
    }

    fn adopt(&mut self, name: &'static str, child: Child) {
        let line = format!("{name} {}\n", child.id());
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("pids"))
            .and_then(|mut f| f.write_all(line.as_bytes()));
        self.children.push((name, child));
    }

    /// The exit status of the child `name`, if it has ended.
    fn exited(&mut self, name: &str) -> Option<ExitStatus> {
        self.children
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// Stops every child (last started first) and detaches every loop device.
    fn release(&mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            if let Ok(None) = child.try_wait() {
                kill(child.id() as i32, libc::SIGTERM);
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(5) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if let Ok(None) = child.try_wait() {
                    say(format!("{name} did not stop on SIGTERM: killing it"));
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        for dev in self.loops.drain(..).rev() {
            let ok = Command::new("losetup")
                .arg("-d")
                .arg(&dev)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                say(format!("warning: could not detach {dev}"));
            }
        }
        let _ = std::fs::remove_file(self.work.join("pids"));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.release();
    }
}

/// What an interrupted run under `work` left: its processes (by the pids
/// it recorded, when they still are what it started), mounts and loop
/// devices.
fn clean_stale(work: &Path) {
    if let Ok(text) = std::fs::read_to_string(work.join("pids")) {
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(name), Some(Ok(pid))) = (it.next(), it.next().map(str::parse::<i32>)) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == name {
                say(format!(
                    "stopping {name} (pid {pid}) left by an earlier run"
                ));
                kill(pid, libc::SIGTERM);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
            if Path::new(m).starts_with(work) {
                say(format!("unmounting {m} left by an earlier run"));
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
    if let Ok(out) = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split_whitespace();
            if let (Some(dev), Some(back)) = (it.next(), it.next()) {
                if Path::new(back).starts_with(work) {
                    say(format!("detaching {dev} ({back}) left by an earlier run"));
                    let _ = Command::new("losetup").arg("-d").arg(dev).status();
                }
            }
        }
    }
}

/// A fresh TUF repository with its keys.
fn new_repo(dir: &Path, name: &str) -> Result<(Repo, Keystore)> {
    let repo = Repo::new(dir.join(name));
    let made = trust::init_repo(
        &repo,
        Some(&dir.join(format!("{name}-keys"))),
        &InitOptions {
            threshold: 1,
            keys_per_role: 1,
            expiry: Expiry::from_now(roles::now()),
        },
    )
    .with_context(|| format!("creating the repository {name}"))?;
    Ok((repo, made.keys))
}

fn publish(
    repo: &Repo,
    keys: &Keystore,
    build: &Path,
    from: Vec<PathBuf>,
    min: &str,
) -> Result<Published> {
    release::publish(
        repo,
        keys,
        &PublishOptions {
            build: build.to_path_buf(),
            from,
            min_version: min.into(),
            security_version: None,
            raise_security_version: false,
            waves: vec![],
            released_at: roles::now().timestamp().max(0) as u64,
            expiry: Expiry::from_now(roles::now()),
            patch_level: fluxnode_image::publish::patch::DEFAULT_LEVEL,
        },
        &mut |l| say(format!("publish: {l}")),
    )
    .with_context(|| format!("publishing {}", build.display()))
}

/// A node for `fluxnode-ota`: its system file, configuration, state
/// directory and ESP (with the running version's UKI for slot a).
struct Node {
    system: PathBuf,
    config: PathBuf,
    state: PathBuf,
    esp: PathBuf,
    running_version: String,
    running_uki: Vec<u8>,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    fn new(
        dir: &Path,
        repo: &Repo,
        running_version: &str,
        min_security_version: u64,
        running_root: &str,
        running_root_len: u64,
        target_root: &str,
        running_uki: Vec<u8>,
    ) -> Result<Node> {
        std::fs::create_dir_all(dir)?;
        let n = Node {
            system: dir.join("system.json"),
            config: dir.join("ota.toml"),
            state: dir.join("state"),
            esp: dir.join("esp"),
            running_version: running_version.into(),
            running_uki,
        };
        let sys = json!({
            "running_version": running_version,
            "running_slot": "a",
            "compatible": COMPAT,
            "min_security_version": min_security_version,
            "running_root": running_root,
            "running_root_len": running_root_len,
            "target_root": target_root,
            "esp": n.esp,
            "blessed": true,
        });
        std::fs::write(&n.system, format!("{sys:#}\n"))?;
        let root = std::fs::canonicalize(repo.root_path(1))?;
        std::fs::write(
            &n.config,
            format!(
                "trusted_root = {}\nstate_dir = {}\n",
                quoted(&root),
                quoted(&n.state)
            ),
        )?;
        Ok(n)
    }

    /// An empty state directory and an ESP with only the running entry;
    /// with `keep_index`, the chunk index of the running slot the client
    /// cached (what the daemon computes once per version after boot).
    fn reset(&self, keep_index: bool) -> Result<()> {
        let mut kept = Vec::new();
        if keep_index {
            for e in std::fs::read_dir(&self.state)
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("index-") {
                    kept.push((name, std::fs::read(e.path())?));
                }
            }
        }
        remove_dir(&self.state)?;
        remove_dir(&self.esp)?;
        std::fs::create_dir_all(&self.state)?;
        for (name, bytes) in kept {
            std::fs::write(self.state.join(name), bytes)?;
        }
        let linux = self.esp.join("EFI/Linux");
        std::fs::create_dir_all(&linux)?;
        std::fs::write(
            linux.join(format!("fluxnode-{}-a.efi", self.running_version)),
            &self.running_uki,
        )?;
        Ok(())
    }

    fn command(&self, ota: &Path, repo: &Repo) -> Command {
        let mut c = Command::new(ota);
        c.arg("install")
            .arg("--from")
            .arg(repo.metadata_dir().parent().unwrap_or(Path::new(".")))
            .arg("--system")
            .arg(&self.system)
            .arg("--config")
            .arg(&self.config)
            .arg("--json");
        c
    }

    /// `fluxnode-ota install`: (wall seconds, its JSON report).
    fn install(&self, ota: &Path, repo: &Repo) -> Result<(f64, Value)> {
        let mut c = self.command(ota, repo);
        let shown = format!("{c:?}");
        let t = Instant::now();
        let out = c
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting {shown}"))?;
        let secs = t.elapsed().as_secs_f64();
        let v: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        match v {
            Some(v) if out.status.success() && v["ok"] != Value::Bool(false) => Ok((secs, v)),
            _ => bail!(
                "{shown} failed ({}):\n{}\n{}",
                out.status,
                tail(&out.stdout, 30),
                tail(&out.stderr, 30)
            ),
        }
    }
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------- figure 1

/// Makes the root image from host directories; (path, bytes).
fn root_image(dir: &Path, dirs: &[PathBuf]) -> Result<(PathBuf, u64)> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree)?;
    for d in dirs {
        if !d.is_absolute() || !d.is_dir() {
            bail!("--root-dir {}: not an absolute directory", d.display());
        }
        // From `/` with a relative source: coreutils 9.1's `cp -a --parents`
        // fails on an absolute one.
        let rel = d.strip_prefix("/").unwrap_or(d);
        util::run(
            Command::new("cp")
                .current_dir("/")
                .args(["-a", "--parents"])
                .arg(rel)
                .arg(&tree),
        )?;
    }
    let img = dir.join("rootfs.img");
    output(
        Command::new("mkfs.erofs")
            .arg("-T0")
            .arg(format!("-U{EROFS_UUID}"))
            .args(["--all-root", "-x-1", "--quiet"])
            .arg(&img)
            .arg(&tree),
    )?;
    let len = file_len(&img)?.div_ceil(4096) * 4096;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)?
        .set_len(len)?;
    remove_dir(&tree)?;
    Ok((img, len))
}

/// RAUC: a plain bundle of the image, its system.conf over loop devices A
/// and B, a private session bus and `rauc service`, ready for installs.
struct Rauc {
    bundle: PathBuf,
    bus: String,
    version: String,
}

impl Rauc {
    fn setup(dir: &Path, img: &Path, loop_a: &str, loop_b: &str, g: &mut Guard) -> Result<Rauc> {
        let version = output(Command::new("rauc").arg("--version"))?
            .trim()
            .to_string();
        let content = dir.join("content");
        std::fs::create_dir_all(&content)?;
        for d in ["mnt", "data", "boot"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        output(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:4096", "-nodes", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args(["-days", "365", "-subj", "/O=fluxnode/CN=bench"]),
        )?;
        let inside = content.join("rootfs.img");
        if std::fs::hard_link(img, &inside).is_err() {
            std::fs::copy(img, &inside)?;
        }
        std::fs::write(
            content.join("manifest.raucm"),
            "[update]\ncompatible=fluxnode-bench\nversion=2\n\n[bundle]\nformat=plain\n\n\
             [image.rootfs]\nfilename=rootfs.img\n",
        )?;
        let bundle = dir.join("update.raucb");
        say("rauc bundle (plain, mksquashfs -comp zstd -Xcompression-level 3; not timed)");
        output(
            Command::new("rauc")
                .arg("bundle")
                .arg(format!("--keyring={}", cert.display()))
                .arg(format!("--cert={}", cert.display()))
                .arg(format!("--key={}", key.display()))
                .arg("--mksquashfs-args=-comp zstd -Xcompression-level 3")
                .arg(&content)
                .arg(&bundle),
        )?;
        std::fs::remove_file(&inside)?;
        // systemd-boot-like custom backend: the primary slot and each
        // slot's state in files.
        let boot = dir.join("boot");
        std::fs::write(boot.join("primary"), "A\n")?;
        let backend = dir.join("backend.sh");
        std::fs::write(
            &backend,
            format!(
                "#!/bin/sh\n# rauc's custom bootloader backend for the benchmark\nd={}\n\
                 case \"$1\" in\n\
                 get-primary) cat \"$d/primary\" ;;\n\
                 set-primary) echo \"$2\" > \"$d/primary\" ;;\n\
                 get-state) cat \"$d/state-$2\" 2>/dev/null || echo good ;;\n\
                 set-state) echo \"$3\" > \"$d/state-$2\" ;;\n\
                 get-current) echo A ;;\n\
                 *) exit 1 ;;\n\
                 esac\n",
                quoted(&boot)
            ),
        )?;
        std::fs::set_permissions(
            &backend,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let conf = dir.join("system.conf");
        std::fs::write(
            &conf,
            format!(
                "[system]\ncompatible=fluxnode-bench\nbootloader=custom\nmountprefix={}\n\
                 data-directory={}\n\n[handlers]\nbootloader-custom-backend={}\n\n\
                 [keyring]\npath={}\n\n\
                 [slot.rootfs.0]\ndevice={loop_a}\ntype=raw\nbootname=A\ninstall-same=true\n\n\
                 [slot.rootfs.1]\ndevice={loop_b}\ntype=raw\nbootname=B\ninstall-same=true\n",
                dir.join("mnt").display(),
                dir.join("data").display(),
                backend.display(),
                cert.display()
            ),
        )?;
        // A private session bus; its address is its first line.
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("dbus-daemon.log"))?)
            .spawn()
            .context("starting dbus-daemon --session")?;
        let out = bus.stdout.take();
        g.adopt("dbus-daemon", bus);
        let mut address = String::new();
        if let Some(out) = out {
            BufReader::new(out).read_line(&mut address)?;
        }
        let address = address.trim().to_string();
        if address.is_empty() {
            bail!("dbus-daemon --session printed no address");
        }
        let log = std::fs::File::create(dir.join("service.log"))?;
        let service = Command::new("rauc")
            .arg(format!("--conf={}", conf.display()))
            .args(["service", "--override-boot-slot=A"])
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("DBUS_STARTER_BUS_TYPE", "session")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting rauc service")?;
        g.adopt("rauc", service);
        let r = Rauc {
            bundle,
            bus: address,
            version,
        };
        let t = Instant::now();
        loop {
            if let Some(st) = g.exited("rauc") {
                bail!(
                    "rauc service exited ({st}):\n{}",
                    std::fs::read_to_string(dir.join("service.log")).unwrap_or_default()
                );
            }
            if r.client()
                .arg("status")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("rauc service did not answer `rauc status` within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(r)
    }

    fn client(&self) -> Command {
        let mut c = Command::new("rauc");
        c.env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("DBUS_STARTER_BUS_TYPE", "session")
            .stdin(Stdio::null());
        c
    }

    fn install(&self) -> Result<f64> {
        let mut c = self.client();
        c.arg("install").arg(&self.bundle);
        Ok(timed(&mut c)?.0)
    }
}

fn figure_install(a: &Args, work: &Path, ota: &Path, g: &mut Guard) -> Result<Value> {
    let dir = work.join("install");
    std::fs::create_dir_all(&dir)?;
    let dirs: Vec<String> = a
        .root_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    say(format!(
        "figure 1: root image: mkfs.erofs -T0 -U{EROFS_UUID} --all-root -x-1 of {}",
        dirs.join(" ")
    ));
    let (img, len) = root_image(&dir, &a.root_dirs)?;
    let img_sha = sha256sum(&img)?;
    let slot = len.div_ceil(MIB) * MIB + MIB;
    say(format!(
        "root image {} ({len} bytes, sha256 {}); slots: loop devices over {} files",
        mib(len),
        &img_sha[..16.min(img_sha.len())],
        mib(slot)
    ));
    let (file_a, file_b) = (dir.join("slot_a"), dir.join("slot_b"));
    create_file(&file_a, slot)?;
    create_file(&file_b, slot)?;
    write_noise(&file_a, slot, 0xA)?;
    write_noise(&file_b, slot, 0xB)?;
    let loop_a = g.attach(&file_a)?;
    let loop_b = g.attach(&file_b)?;
    say(format!(
        "slot A {loop_a} (running: unrelated bytes), slot B {loop_b} (the target of all three)"
    ));

    // Ours: the image as version 1.0.0, a node running 0.9.0 from A.
    let root = std::fs::read(&img)?;
    let (uki_a, uki_b) = (noise(64 << 10, 21), noise(64 << 10, 22));
    let build = dir.join("build");
    release::write_build_dir(
        &build,
        &BuildPayloads {
            version: P1_VERSION,
            compatible: COMPAT,
            security_version: 1,
            root: &root,
            uki_a: &uki_a,
            uki_b: &uki_b,
        },
    )?;
    drop(root);
    let (repo, keys) = new_repo(&dir, "repo")?;
    publish(&repo, &keys, &build, vec![], P1_RUNNING)?;
    remove_dir(&build)?;
    let node = Node::new(
        &dir.join("node"),
        &repo,
        P1_RUNNING,
        1,
        &loop_a,
        len,
        &loop_b,
        noise(64 << 10, 23),
    )?;
    say(format!(
        "ours: {:?}",
        node.command(ota, &repo).get_args().collect::<Vec<_>>()
    ));

    let rauc = if a.skip_rauc {
        None
    } else {
        Some(Rauc::setup(&dir.join("rauc"), &img, &loop_a, &loop_b, g)?)
    };

    let mut dd_runs = Vec::new();
    let mut ours_runs = Vec::new();
    let mut ours_ms = Vec::new();
    let mut warm_runs = Vec::new();
    let mut warm_ms = Vec::new();
    let mut ours_report = Value::Null;
    let mut rauc_runs = Vec::new();
    for round in 0..=a.runs {
        let warm = round == 0;
        for side in ["dd", "fluxnode-ota", "fluxnode-ota-indexed", "rauc"] {
            if side == "rauc" && rauc.is_none() {
                continue;
            }
            if warm {
                write_noise(Path::new(&loop_b), len, 0xC0 + round as u64)?;
            }
            if side.starts_with("fluxnode-ota") {
                node.reset(side == "fluxnode-ota-indexed")?;
            }
            drop_caches()?;
            let secs = match side {
                "dd" => {
                    timed(
                        Command::new("dd")
                            .arg(format!("if={}", img.display()))
                            .arg(format!("of={loop_b}"))
                            .args(["bs=1M", "conv=fsync", "status=none"]),
                    )?
                    .0
                }
                "fluxnode-ota" | "fluxnode-ota-indexed" => {
                    let (s, v) = node.install(ota, &repo)?;
                    if !warm {
                        if side == "fluxnode-ota" {
                            ours_ms.push(num(&v, &["duration_ms"]));
                        } else {
                            warm_ms.push(num(&v, &["duration_ms"]));
                        }
                    }
                    if num(&v, &["root", "from_ranges"]) != len
                        || num(&v, &["downloaded"]) < num(&v, &["payload_bytes"])
                    {
                        bail!(
                            "fluxnode-ota did not fetch every byte (a full install was meant): {v}"
                        );
                    }
                    ours_report = v;
                    s
                }
                _ => match &rauc {
                    Some(r) => r.install()?,
                    None => continue,
                },
            };
            if warm {
                if !holds(&loop_b, &img)? {
                    bail!("after the {side} warm-up, slot B ({loop_b}) does not hold the image");
                }
                say(format!(
                    "warm-up {side}: {secs:.2} s (not counted); slot B holds the image"
                ));
            } else {
                say(format!("run {round}/{} {side}: {secs:.2} s", a.runs));
                match side {
                    "dd" => dd_runs.push(secs),
                    "fluxnode-ota" => ours_runs.push(secs),
                    "fluxnode-ota-indexed" => warm_runs.push(secs),
                    _ => rauc_runs.push(secs),
                }
            }
        }
    }
    g.release();

    let (dd, ours, indexed) = (median(&dd_runs), median(&ours_runs), median(&warm_runs));
    let rauc_med = rauc.as_ref().map(|_| median(&rauc_runs));
    Ok(json!({
        "root_image": {
            "dirs": dirs,
            "mkfs": format!("mkfs.erofs -T0 -U{EROFS_UUID} --all-root -x-1"),
            "bytes": len,
            "sha256": img_sha,
        },
        "slot_bytes": slot,
        "runs": a.runs,
        "dd": {
            "command": format!("dd if=IMG of={loop_b} bs=1M conv=fsync"),
            "median_s": dd,
            "runs_s": dd_runs,
        },
        "fluxnode_ota": {
            "command": "fluxnode-ota install --from REPO_DIR --system SYSTEM.json --config CONFIG.toml --json",
            "median_s": ours,
            "runs_s": ours_runs,
            "reported_duration_ms": ours_ms,
            "payload_bytes": num(&ours_report, &["payload_bytes"]),
            "downloaded": num(&ours_report, &["downloaded"]),
        },
        "fluxnode_ota_indexed": {
            "what": "the same install with the running slot's chunk index already cached (the daemon computes it once per version after boot): every update but a factory node's first",
            "median_s": indexed,
            "runs_s": warm_runs,
            "reported_duration_ms": warm_ms,
        },
        "indexed_over_dd": indexed / dd,
        "indexed_over_rauc": rauc_med.map(|r| indexed / r),
        "rauc": rauc.as_ref().map(|r| json!({
            "version": r.version,
            "command": "rauc install update.raucb (plain bundle)",
            "median_s": rauc_med,
            "runs_s": rauc_runs,
        })),
        "ours_over_dd": ours / dd,
        "ours_over_rauc": rauc_med.map(|r| ours / r),
        "goal_ours_over_dd": 1.25,
        "goal_ours_over_rauc": 0.3,
    }))
}

// ---------------------------------------------------------------- figure 2

/// The binaries the specs name, copied once so both builds take the same
/// bytes (the target directory is shared with other builds).
fn stage_binaries(to: &Path) -> Result<()> {
    const REQUIRED: &[&str] = &[
        "fluxnode-init",
        "fluxnode-stage1",
        "fluxnode-modload",
        "fluxnode-netd",
        "fluxnode",
    ];
    let dirs = vec![fixture::static_dir(), fixture::host_release_dir()];
    let present = REQUIRED
        .iter()
        .all(|n| dirs.iter().any(|d| d.join(n).is_file()));
    let from = if present {
        dirs
    } else {
        say("release binaries missing: building them as the test fixture does");
        fixture::binaries().map_err(anyhow::Error::msg)?;
        vec![fixture::staged_dir()]
    };
    std::fs::create_dir_all(to)?;
    for name in fixture::IMAGE_BINARIES {
        if let Some(src) = from.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            std::fs::copy(&src, to.join(name))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// Copies netd with one string replaced by another of the same length.
fn edit_netd(from: &Path, to: &Path) -> Result<(&'static str, &'static str)> {
    let mut b = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    for &(old, new) in EDITS {
        if old.len() != new.len() {
            continue;
        }
        let hits: Vec<usize> = b
            .windows(old.len())
            .enumerate()
            .filter(|(_, w)| *w == old.as_bytes())
            .map(|(i, _)| i)
            .collect();
        if let [at] = hits[..] {
            b[at..at + new.len()].copy_from_slice(new.as_bytes());
            std::fs::write(to, &b)?;
            std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
            return Ok((old, new));
        }
    }
    bail!(
        "none of the strings {:?} occurs exactly once in {}",
        EDITS.iter().map(|e| e.0).collect::<Vec<_>>(),
        from.display()
    )
}

fn build_image(
    name: &str,
    spec: &Path,
    out: &Path,
    bin_dirs: Vec<PathBuf>,
) -> Result<fluxnode_image::Built> {
    let opts = fluxnode_image::BuildOptions {
        spec: spec.to_path_buf(),
        out: out.to_path_buf(),
        bin_dirs,
        cache_dir: fixture::target_dir().join("fluxnode-image/cache"),
        source_date_epoch: fixture::EPOCH,
        kernel_deb: None,
        slot_a_tries: None,
        slot_b: None,
        extra_cmdline: String::new(),
    };
    fluxnode_image::build(&opts, &mut |l| say(format!("image {name}: {l}")))
        .with_context(|| format!("building {name} from {}", spec.display()))
}

/// Chunk id -> size of the chunk files of a casync store.
fn store_chunks(store: &Path) -> Result<HashMap<String, u64>> {
    let mut m = HashMap::new();
    for sub in std::fs::read_dir(store).with_context(|| format!("reading {}", store.display()))? {
        let sub = sub?.path();
        if !sub.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&sub)? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".cacnk") {
                m.insert(id.to_string(), f.metadata()?.len());
            }
        }
    }
    Ok(m)
}

fn casync(dir: &Path, root1: &Path, root2: &Path) -> Result<Value> {
    let c = dir.join("casync");
    std::fs::create_dir_all(&c)?;
    for (i, root) in [(1, root1), (2, root2)] {
        say(format!(
            "casync make --store=store-v{i} v{i}.caibx {}",
            root.display()
        ));
        output(
            Command::new("casync")
                .arg("make")
                .arg(format!(
                    "--store={}",
                    c.join(format!("store-v{i}")).display()
                ))
                .arg(c.join(format!("v{i}.caibx")))
                .arg(root),
        )?;
    }
    let s1 = store_chunks(&c.join("store-v1"))?;
    let s2 = store_chunks(&c.join("store-v2"))?;
    let index = file_len(&c.join("v2.caibx"))?;
    let new: Vec<u64> = s2
        .iter()
        .filter(|(id, _)| !s1.contains_key(*id))
        .map(|(_, l)| *l)
        .collect();
    let bytes = new.iter().sum::<u64>() + index;
    let store2: u64 = s2.values().sum();

    // The same, for real: extract v2 from a private nginx with v1 as seed.
    let verified = match fluxnode_testkit::nginx::Nginx::try_start(&c) {
        Ok(Some(web)) => {
            let url = web.base_url();
            let out = c.join("extracted.img");
            say(format!(
                "casync extract --store={url}/store-v2 --seed=ROOT_V1 --seed-output=no {url}/v2.caibx"
            ));
            output(
                Command::new("casync")
                    .arg("extract")
                    .arg(format!("--store={url}/store-v2"))
                    .arg(format!("--seed={}", root1.display()))
                    .arg("--seed-output=no")
                    .arg(format!("{url}/v2.caibx"))
                    .arg(&out),
            )?;
            let same = file_len(&out)? == file_len(root2)? && sha256sum(&out)? == sha256sum(root2)?;
            if !same {
                bail!("casync extract did not reproduce root v2");
            }
            // nginx logs a request once it has answered it.
            let mut log = web.access_log();
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(100));
                let l = web.access_log();
                if l == log {
                    break;
                }
                log = l;
            }
            let (mut body, mut requests, mut chunk_requests) = (0u64, 0u64, 0u64);
            for line in log.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() >= 4 && f[2].starts_with('2') {
                    body += f[3].parse::<u64>().unwrap_or(0);
                    requests += 1;
                    if f[1].ends_with(".cacnk") {
                        chunk_requests += 1;
                    }
                }
            }
            Some(json!({
                "http_body_bytes": body,
                "requests": requests,
                "chunk_requests": chunk_requests,
                "extracted_matches_v2": true,
            }))
        }
        Ok(None) => None,
        Err(e) => {
            say(format!(
                "casync: no check by a real extract (nginx would not start: {e})"
            ));
            None
        }
    };
    Ok(json!({
        "bytes": bytes,
        "new_chunks": new.len(),
        "chunks_v2": s2.len(),
        "index_bytes": index,
        "store_v2_bytes": store2,
        "extract_check": verified,
    }))
}

fn install_summary(v: &Value) -> Value {
    let dl = num(v, &["downloaded"]);
    let payload = num(v, &["payload_bytes"]);
    json!({
        "downloaded": dl,
        "payload_bytes": payload,
        "percent": pct(dl, payload),
        "root": v["root"],
        "uki": v["uki"],
        "duration_ms": num(v, &["duration_ms"]),
    })
}

fn figure_download(a: &Args, work: &Path, ota: &Path, g: &mut Guard) -> Result<Value> {
    let dir = work.join("download");
    std::fs::create_dir_all(&dir)?;
    let base = util::root().join("image/spec").join(&a.spec);
    if !base.is_file() {
        bail!("--spec {}: no such spec under image/spec", a.spec);
    }
    let bin1 = dir.join("bin-v1");
    let bin2 = dir.join("bin-v2");
    stage_binaries(&bin1)?;
    std::fs::create_dir_all(&bin2)?;
    let (old, new) = edit_netd(&bin1.join("fluxnode-netd"), &bin2.join("fluxnode-netd"))?;
    say(format!(
        "figure 2: v2's fluxnode-netd says {new:?} where v1's says {old:?}"
    ));
    let spec = |v: &str| -> Result<PathBuf> {
        let p = dir.join(format!("spec-{v}.toml"));
        std::fs::write(
            &p,
            format!(
                "# {} with another version (bench ota)\nbase = {}\nversion = \"{v}\"\n",
                a.spec,
                quoted(&base)
            ),
        )?;
        Ok(p)
    };
    let b1 = build_image(V1, &spec(V1)?, &dir.join("out-v1"), vec![bin1.clone()])?;
    let b2 = build_image(V2, &spec(V2)?, &dir.join("out-v2"), vec![bin2, bin1])?;
    let u1 = b1
        .manifest
        .update
        .as_ref()
        .context("v1's manifest has no update section")?;
    let u2 = b2
        .manifest
        .update
        .as_ref()
        .context("v2's manifest has no update section")?;
    let root1 = b1.dir.join(&u1.root.payload.file);
    let root2 = b2.dir.join(&u2.root.payload.file);
    if u1.root.payload.sha256 == u2.root.payload.sha256 {
        bail!("v1 and v2 have the same root: the edited netd did not reach it");
    }
    let uki_a1 = u1
        .ukis
        .iter()
        .find(|(s, _)| s == "a")
        .map(|(_, u)| b1.dir.join(&u.uki.file))
        .context("v1 has no UKI for slot a")?;
    let (len1, len2) = (u1.root.payload.size, u2.root.payload.size);
    say(format!(
        "roots: v1 {}, v2 {}; publishing v1, then v2 with patches from v1 (zstd -{})",
        mib(len1),
        mib(len2),
        fluxnode_image::publish::patch::DEFAULT_LEVEL
    ));
    let (repo_p, keys_p) = new_repo(&dir, "repo-patches")?;
    publish(&repo_p, &keys_p, &b1.dir, vec![], V1)?;
    let published = publish(&repo_p, &keys_p, &b2.dir, vec![b1.dir.clone()], V1)?;
    say("publishing v2 alone into a second repository (no patches)");
    let (repo_c, keys_c) = new_repo(&dir, "repo-chunks")?;
    publish(&repo_c, &keys_c, &b2.dir, vec![], V1)?;

    // The node: slot A runs v1, slot B holds other bytes, the ESP v1's UKI.
    let slot = len1.max(len2).div_ceil(MIB) * MIB + MIB;
    let (file_a, file_b) = (dir.join("slot_a"), dir.join("slot_b"));
    std::fs::copy(&root1, &file_a)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file_a)?
        .set_len(slot)?;
    create_file(&file_b, slot)?;
    write_noise(&file_b, slot, 0xB2)?;
    let loop_a = g.attach(&file_a)?;
    let loop_b = g.attach(&file_b)?;
    let uki = std::fs::read(&uki_a1)?;
    let mut results = Vec::new();
    for (name, repo) in [("patches", &repo_p), ("chunks", &repo_c)] {
        let node = Node::new(
            &dir.join(format!("node-{name}")),
            repo,
            V1,
            u1.security_version,
            &loop_a,
            len1,
            &loop_b,
            uki.clone(),
        )?;
        node.reset(false)?;
        say(format!(
            "fluxnode-ota install {V2} over {V1} from repo-{name}: {:?}",
            node.command(ota, repo).get_args().collect::<Vec<_>>()
        ));
        let (_, v) = node.install(ota, repo)?;
        say(format!(
            "repo-{name}: downloaded {} of {} bytes",
            num(&v, &["downloaded"]),
            num(&v, &["payload_bytes"])
        ));
        results.push(install_summary(&v));
    }
    g.release();
    let cas = casync(&dir, &root1, &root2)?;
    let [with_patches, chunks_only] =
        <[Value; 2]>::try_from(results).map_err(|_| anyhow::anyhow!("expected two installs"))?;
    let cas_bytes = num(&cas, &["bytes"]);
    Ok(json!({
        "spec": a.spec,
        "v1": V1,
        "v2": V2,
        "change": {"binary": "fluxnode-netd", "from": old, "to": new},
        "root_bytes": {"v1": len1, "v2": len2},
        "patches_published": published.patches.iter().map(|p| json!({
            "payload": p.payload, "size": p.size, "payload_size": p.payload_size,
        })).collect::<Vec<_>>(),
        "with_patches": with_patches,
        "chunks_only": chunks_only,
        "casync": {
            "percent_of_root": pct(cas_bytes, len2),
            "method": "chunk files of store v2 whose id store v1 lacks, plus v2.caibx",
            "details": cas,
        },
        "goal_percent": 1.0,
    }))
}

// ---------------------------------------------------------------- output

fn print_table(install: &Value, download: &Value, machine: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let runs = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| format!("{:.2}", f(x)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    println!(
        "machine: {} CPUs, kernel {}, load average at start {}",
        num(machine, &["cpus"]),
        machine["kernel"].as_str().unwrap_or(""),
        machine["load_average_at_start"].as_str().unwrap_or(""),
    );
    if !install.is_null() {
        let i = install;
        println!(
            "== 1. install into a slot: {} root image (uncompressed erofs of {}), loop-device slots of {}",
            mib(num(i, &["root_image", "bytes"])),
            i["root_image"]["dirs"]
                .as_array()
                .map(|d| d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            mib(num(i, &["slot_bytes"])),
        );
        println!(
            "   median of {} runs each, page cache dropped before every run, one warm-up each",
            num(i, &["runs"])
        );
        println!("{:<44} {:>9}   runs (s)", "side", "median");
        println!(
            "{:<44} {:>7.2} s   {}",
            "dd bs=1M conv=fsync",
            f(&i["dd"]["median_s"]),
            runs(&i["dd"]["runs_s"])
        );
        println!(
            "{:<44} {:>7.2} s   {}   (its own duration_ms: {})",
            "fluxnode-ota install (full, from a directory)",
            f(&i["fluxnode_ota"]["median_s"]),
            runs(&i["fluxnode_ota"]["runs_s"]),
            i["fluxnode_ota"]["reported_duration_ms"]
                .as_array()
                .map(|a| a
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default()
        );
        println!(
            "{:<44} {:>7.2} s   {}",
            "fluxnode-ota install, running slot indexed",
            f(&i["fluxnode_ota_indexed"]["median_s"]),
            runs(&i["fluxnode_ota_indexed"]["runs_s"]),
        );
        if !i["rauc"].is_null() {
            println!(
                "{:<44} {:>7.2} s   {}",
                format!(
                    "{} install (plain bundle)",
                    i["rauc"]["version"].as_str().unwrap_or("rauc")
                ),
                f(&i["rauc"]["median_s"]),
                runs(&i["rauc"]["runs_s"])
            );
        }
        let (od, or) = (f(&i["ours_over_dd"]), f(&i["ours_over_rauc"]));
        print!(
            "ratios: ours/dd {od:.2}x (goal <= 1.25x: {})",
            if od <= 1.25 { "met" } else { "NOT met" }
        );
        if !i["rauc"].is_null() {
            print!(
                ", ours/RAUC {or:.2} (goal <= 0.3: {})",
                if or <= 0.3 { "met" } else { "NOT met" }
            );
        }
        println!();
        let (id, ir) = (f(&i["indexed_over_dd"]), f(&i["indexed_over_rauc"]));
        print!("        indexed: ours/dd {id:.2}x");
        if !i["rauc"].is_null() {
            print!(", ours/RAUC {ir:.2}");
        }
        println!();
    }
    if !download.is_null() {
        let d = download;
        if !install.is_null() {
            println!();
        }
        println!(
            "== 2. bytes downloaded, {} -> {} of image/spec/{}: one string in {} ({:?} -> {:?})",
            d["v1"].as_str().unwrap_or(""),
            d["v2"].as_str().unwrap_or(""),
            d["spec"].as_str().unwrap_or(""),
            d["change"]["binary"].as_str().unwrap_or(""),
            d["change"]["from"].as_str().unwrap_or(""),
            d["change"]["to"].as_str().unwrap_or(""),
        );
        let payload = num(d, &["with_patches", "payload_bytes"]);
        let root2 = num(d, &["root_bytes", "v2"]);
        println!(
            "   full payload (root + slot-b UKI): {payload} bytes ({}); root v2 {root2} bytes",
            mib(payload)
        );
        println!(
            "{:<46} {:>12} {:>12} {:>10}",
            "what", "bytes", "of payload", "root only"
        );
        for (label, key) in [
            ("fluxnode-ota, patches + chunk reuse", "with_patches"),
            ("fluxnode-ota, chunk reuse only (no patches)", "chunks_only"),
        ] {
            let r = &d[key];
            println!(
                "{:<46} {:>12} {:>11.3}% {:>9.3}%",
                label,
                num(r, &["downloaded"]),
                f(&r["percent"]),
                pct(num(r, &["root", "received"]), num(r, &["root", "payload"])),
            );
        }
        let cas = &d["casync"];
        println!(
            "{:<46} {:>12} {:>12} {:>9.3}%",
            "casync (seed: root v1), root only",
            num(cas, &["details", "bytes"]),
            "-",
            f(&cas["percent_of_root"]),
        );
        let ck = &cas["details"]["extract_check"];
        if ck.is_null() {
            println!(
                "   casync: computed ({}); no real extract",
                cas["method"].as_str().unwrap_or("")
            );
        } else {
            println!(
                "   casync: computed ({}, {} of {} chunks new); a real extract from nginx transferred {} bytes in {} requests",
                cas["method"].as_str().unwrap_or(""),
                num(cas, &["details", "new_chunks"]),
                num(cas, &["details", "chunks_v2"]),
                num(ck, &["http_body_bytes"]),
                num(ck, &["requests"]),
            );
        }
        for p in d["patches_published"].as_array().into_iter().flatten() {
            println!(
                "   patch {}: {} bytes ({:.3}% of {} bytes)",
                p["payload"].as_str().unwrap_or(""),
                num(p, &["size"]),
                pct(num(p, &["size"]), num(p, &["payload_size"])),
                num(p, &["payload_size"]),
            );
        }
        let ours = f(&d["with_patches"]["percent"]);
        let ours_root = pct(
            num(d, &["with_patches", "root", "received"]),
            num(d, &["with_patches", "root", "payload"]),
        );
        println!(
            "ratios: downloaded/payload {ours:.3}% (goal <= 1 %: {}); root only, ours/casync {:.3}",
            if ours <= 1.0 { "met" } else { "NOT met" },
            ours_root / f(&cas["percent_of_root"]),
        );
    }
}

fn machine() -> Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "load_average_at_start": read("/proc/loadavg"),
    })
}

pub fn run(a: Args) -> Result<()> {
    let a = merged(a)?;
    if !util::is_root() {
        bail!("bench ota needs root (loop devices, dropping the page cache): run it as root");
    }
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    deps::ensure(PACKAGES)?;
    say("cargo build --release -p fluxnode-ota");
    util::run(util::cargo().args(["build", "--release", "-p", "fluxnode-ota"]))
        .context("building fluxnode-ota")?;
    let ota = util::target_dir().join("release/fluxnode-ota");
    if !ota.is_file() {
        bail!("{} was not built", ota.display());
    }
    let work = a
        .dir
        .clone()
        .unwrap_or_else(|| util::target_dir().join("bench-ota"));
    let work = std::path::absolute(&work)?;
    // Only ever a directory this benchmark made (or an empty one).
    let marker = work.join(".bench-ota");
    let empty = std::fs::read_dir(&work).map_or(true, |mut d| d.next().is_none());
    if !empty && !marker.is_file() {
        bail!(
            "{} is not empty and was not made by bench ota: pass another --dir",
            work.display()
        );
    }
    clean_stale(&work);
    remove_dir(&work)?;
    std::fs::create_dir_all(&work)?;
    std::fs::write(&marker, "cargo xtask bench ota's work directory\n")?;
    let machine = machine();
    say(format!("work directory {}", work.display()));

    let mut g = Guard::new(&work);
    let install = if a.skip_install {
        Value::Null
    } else {
        figure_install(&a, &work, &ota, &mut g)?
    };
    let download = if a.skip_download {
        Value::Null
    } else {
        figure_download(&a, &work, &ota, &mut g)?
    };
    drop(g);
    if a.json {
        let v = json!({"install": install, "download": download, "machine": machine});
        println!("{v:#}");
    } else {
        print_table(&install, &download, &machine);
    }
    if !a.keep {
        remove_dir(&work)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn edits_keep_the_length() {
        for (old, new) in EDITS {
            assert_eq!(old.len(), new.len(), "{old:?} -> {new:?}");
        }
    }

    #[test]
    fn edit_replaces_exactly_one_string() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, b"xx no loopback link found yy").unwrap();
        assert_eq!(edit_netd(&a, &b).unwrap().1, "loopback link missing!");
        assert_eq!(std::fs::read(&b).unwrap(), b"xx loopback link missing! yy");
        std::fs::write(&a, b"loopback up, loopback up").unwrap();
        assert!(edit_netd(&a, &b).is_err(), "twice: ambiguous");
    }

    #[test]
    fn flags_after_dashes_override() {
        let cmd = <Args as clap::Args>::augment_args(clap::Command::new("ota"));
        let m = cmd
            .try_get_matches_from(["ota", "--runs", "5", "--", "--runs", "7", "--json"])
            .unwrap();
        let a = <Args as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        let a = merged(a).unwrap();
        assert_eq!(a.runs, 7);
        assert!(a.json);
        assert_eq!(a.root_dirs.len(), 2, "defaults kept");
    }

    #[test]
    fn noise_differs_by_seed() {
        let all: Vec<Vec<u8>> = (20..25).map(|s| noise(64, s)).collect();
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b), "seed {}", 20 + i);
        }
    }

    #[test]
    fn median_of_runs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }
}
