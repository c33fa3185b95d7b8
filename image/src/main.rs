//! `fluxnode-image`: a thin command line over the library (see `lib.rs`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fluxnode_image::publish::{self, keys, release, roles, trust};
use fluxnode_image::{build, flash, BuildOptions, Manifest, SlotB};

#[derive(Parser, Debug)]
#[command(
    about = "Build fluxnode's reproducible A/B disk image, or flash one",
    long_about = "Build fluxnode's reproducible A/B disk image, or flash one.\n\n\
Typical use:\n  \
RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target x86_64-unknown-linux-gnu -p fluxnode-init -p fluxnode-netd\n  \
cargo build --release -p fluxnode-hal -p fluxnode-node   # dynamic: they link libtss2\n  \
fluxnode-image build --spec image/spec/default.toml --out target/fluxnode-image/out\n  \
fluxnode-image flash --image target/fluxnode-image/out/fluxnode.img --device /dev/sdX\n\n\
Updates (docs/UPDATES.md, \"Publishing\"):\n  \
fluxnode-image tuf init --repo REPO --keys KEYS\n  \
fluxnode-image publish --repo REPO --keys KEYS --build OUT --from OLD_OUT --min-version 0.1.0\n  \
fluxnode-image tuf refresh --repo REPO --keys KEYS        # before timestamp.json expires (7 days)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the disk image, its payloads and manifest.json into --out (replaced atomically).
    Build(BuildArgs),
    /// Write an image to a block device or file, verifying every chunk and reading it all back.
    Flash(FlashArgs),
    /// Publish a build's update (manifest, payloads, patches) into a TUF repository.
    #[command(long_about = PUBLISH_ABOUT)]
    Publish(PublishArgs),
    /// Create and maintain the TUF repository updates are published in: keys, roots, expiry.
    #[command(subcommand)]
    Tuf(TufCmd),
}

const PUBLISH_ABOUT: &str = "Publish a build's update into a TUF repository.\n\n\
Reads --build's manifest.json and payloads (root_a.img, uki_a.efi, uki_b.efi), cuts the \
root and both UKIs into content-defined chunks, makes a zstd patch of each against every \
--from build (verified by decoding it back), writes the update manifest \
fluxnode-<version>.manifest.json and every payload as targets \
(REPO/targets/<sha256>.<name>), then signs targets, snapshot and timestamp with the keys \
the repository's root lists. Targets of earlier versions stay.\n\n\
Patch references are what a node has: it runs slot a and installs slot b (or the reverse), \
so the new root is patched against the old root, the new slot-b UKI against the old \
slot-a UKI, and the new slot-a UKI against the old slot-b UKI.\n\n\
Example:\n  \
fluxnode-image publish --repo REPO --keys KEYS --build out-0.2.0 --from out-0.1.0 \\\n    \
--min-version 0.1.0 --waves 100:0,1024:3600";

#[derive(Subcommand, Debug)]
enum TufCmd {
    /// Create a repository: keys for each role (root, targets, snapshot, timestamp) in --keys,
    /// root version 1 signed by the root keys, an empty targets, snapshot and timestamp.
    Init(TufInitArgs),
    /// Write root version N+1, signed by the threshold of the old root keys and of the new
    /// ones, so clients that trust version N accept it. Re-signs targets, snapshot and
    /// timestamp when their keys change.
    RotateRoot(TufRotateArgs),
    /// Re-sign snapshot and timestamp with new versions and expiry (run it from cron well
    /// before timestamp.json expires; only the timestamp key with --timestamp-only).
    Refresh(TufRefreshArgs),
    /// Print the repository's roles, keys, thresholds, expiry times and targets.
    Show(TufShowArgs),
}

#[derive(clap::Args, Debug)]
struct RepoKeys {
    /// The repository directory (metadata/ and targets/ inside; serve it as is).
    #[arg(long)]
    repo: PathBuf,
    /// Keystore directory of PEM key files; repeat to use several (e.g. root keys on a
    /// separate medium). New keys are written into the first.
    #[arg(long = "keys", required = true)]
    keys: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct TufInitArgs {
    #[command(flatten)]
    rk: RepoKeys,
    /// Signatures each role needs.
    #[arg(long, default_value_t = 1)]
    threshold: u64,
    /// Keys generated for each role (at least --threshold).
    #[arg(long, default_value_t = 1)]
    keys_per_role: usize,
    /// Days until root, targets and snapshot expire (default: 365, 90, 30).
    #[arg(long)]
    expires: Option<u32>,
    /// Days until the timestamp expires (default 7).
    #[arg(long)]
    timestamp_expires: Option<u32>,
}

#[derive(clap::Args, Debug)]
struct TufRotateArgs {
    #[command(flatten)]
    rk: RepoKeys,
    /// Generate a new key for ROLE (root, targets, snapshot, timestamp); repeat for more.
    #[arg(long, value_name = "ROLE")]
    add_key: Vec<String>,
    /// Remove the key with this id (or a unique prefix of it) from every role; repeat for more.
    #[arg(long, value_name = "ID")]
    remove_key: Vec<String>,
    /// New threshold for a role, e.g. --threshold root=2; repeat for more.
    #[arg(long, value_name = "ROLE=N")]
    threshold: Vec<String>,
    /// Days until the new root (and re-signed targets, snapshot) expire (default: 365, 90, 30).
    #[arg(long)]
    expires: Option<u32>,
    /// Days until a re-signed timestamp expires (default 7).
    #[arg(long)]
    timestamp_expires: Option<u32>,
}

#[derive(clap::Args, Debug)]
struct TufRefreshArgs {
    #[command(flatten)]
    rk: RepoKeys,
    /// Days until the snapshot expires (default 30).
    #[arg(long)]
    expires: Option<u32>,
    /// Days until the timestamp expires (default 7).
    #[arg(long)]
    timestamp_expires: Option<u32>,
    /// Re-sign only the timestamp (needs only the timestamp key).
    #[arg(long)]
    timestamp_only: bool,
}

#[derive(clap::Args, Debug)]
struct TufShowArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct PublishArgs {
    #[command(flatten)]
    rk: RepoKeys,
    /// The build's output directory (`fluxnode-image build --out`).
    #[arg(long)]
    build: PathBuf,
    /// An older build's output directory to make patches from; repeat for several versions.
    #[arg(long, value_name = "OLD_OUTDIR")]
    from: Vec<PathBuf>,
    /// The oldest running version this update may be installed over.
    #[arg(long)]
    min_version: String,
    /// Check that the build's security version is N (it is baked into the UKIs'
    /// command lines: change `security_version` in the spec and rebuild to raise it).
    #[arg(long, value_name = "N")]
    security_version: Option<u64>,
    /// Nodes raise their minimum security version to this version's once it is blessed:
    /// older versions can never be installed again.
    #[arg(long)]
    raise_security_version: bool,
    /// Rollout waves BELOW_POSITION:SECONDS,...: nodes (positions 0..1024) below a position
    /// start that many seconds after --released-at; the last wave must reach 1024.
    #[arg(long, default_value = "")]
    waves: String,
    /// Release time, Unix seconds (default: now).
    #[arg(long)]
    released_at: Option<u64>,
    /// Days until targets and snapshot expire (default 90 and 30).
    #[arg(long)]
    expires: Option<u32>,
    /// Days until the timestamp expires (default 7).
    #[arg(long)]
    timestamp_expires: Option<u32>,
    /// zstd level of the patches.
    #[arg(long, default_value_t = publish::patch::DEFAULT_LEVEL)]
    patch_level: i32,
    /// Print the result (manifest, targets, patches) as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct BuildArgs {
    /// The TOML image spec (see image/spec/default.toml).
    #[arg(long, default_value = "image/spec/default.toml")]
    spec: PathBuf,
    /// Output directory: fluxnode.img, manifest.json, root_*.img, uki_*.efi.
    #[arg(long, default_value = "target/fluxnode-image/out")]
    out: PathBuf,
    /// Where the release binaries named `bin:` in the spec are; repeat to
    /// search several directories in order (static binaries first).
    #[arg(long, default_values = ["target/x86_64-unknown-linux-gnu/release", "target/release"])]
    bin_dir: Vec<PathBuf>,
    /// Download cache for the kernel package.
    #[arg(long, default_value = "target/fluxnode-image/cache")]
    cache: PathBuf,
    /// Use this kernel .deb instead of downloading the spec's package.
    #[arg(long)]
    kernel_deb: Option<PathBuf>,
    /// Timestamp of every file (defaults to $SOURCE_DATE_EPOCH, else a fixed date).
    #[arg(long)]
    source_date_epoch: Option<u64>,
    /// Install slot a's UKI with a boot counter `+N` (unblessed).
    #[arg(long)]
    tries: Option<u32>,
    /// Test images: populate slot b with a's root and this (newer) version.
    #[arg(long)]
    slot_b_version: Option<String>,
    /// Test images: boot counter `+N` on slot b's UKI.
    #[arg(long, requires = "slot_b_version")]
    slot_b_tries: Option<u32>,
    /// Test images: give slot b a wrong root hash (it can never boot).
    #[arg(long, requires = "slot_b_version")]
    break_slot_b: bool,
    /// Appended to every slot's kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Print the manifest as JSON on stdout when done.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct FlashArgs {
    /// The image to write (its manifest.json must sit next to it).
    #[arg(long, default_value = "target/fluxnode-image/out/fluxnode.img")]
    image: PathBuf,
    /// The manifest (default: manifest.json next to the image).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Target block device (/dev/sdX, /dev/nvme0n1) or file.
    #[arg(long)]
    device: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxnode-image: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Build(a) => run_build(a),
        Cmd::Flash(a) => run_flash(a),
        Cmd::Publish(a) => run_publish(a),
        Cmd::Tuf(TufCmd::Init(a)) => run_tuf_init(a),
        Cmd::Tuf(TufCmd::RotateRoot(a)) => run_tuf_rotate(a),
        Cmd::Tuf(TufCmd::Refresh(a)) => run_tuf_refresh(a),
        Cmd::Tuf(TufCmd::Show(a)) => run_tuf_show(a),
    }
}

fn say(line: &str) {
    eprintln!("fluxnode-image: {line}");
}

fn mib(n: u64) -> String {
    format!("{:.2} MiB", n as f64 / 1048576.0)
}

fn run_tuf_init(a: TufInitArgs) -> Result<()> {
    let repo = roles::Repo::new(&a.rk.repo);
    let dir = a.rk.keys.first().context("--keys is required")?;
    let opts = trust::InitOptions {
        threshold: a.threshold,
        keys_per_role: a.keys_per_role,
        expiry: roles::Expiry::days(roles::now(), a.expires, a.timestamp_expires),
    };
    let made = trust::init_repo(&repo, Some(dir), &opts)
        .with_context(|| format!("creating the repository in {}", a.rk.repo.display()))?;
    for k in &made.keys.keys {
        say(&format!("key {} -> {}", k.id_hex(), k.path.display()));
    }
    say(&format!(
        "created {} (root version 1, threshold {} of {} key(s) per role, expires {})",
        repo.metadata_dir().display(),
        a.threshold,
        a.keys_per_role,
        made.root.signed.expires
    ));
    say(&format!(
        "bake {} into images: tuf_root = \"host:{}\" in the image spec (see docs/UPDATES.md)",
        repo.root_path(1).display(),
        std::fs::canonicalize(repo.root_path(1))
            .unwrap_or_else(|_| repo.root_path(1))
            .display()
    ));
    say(&format!(
        "keep the root keys offline: move {}/root-*.pem to a separate medium and pass it as a second --keys when rotating",
        dir.display()
    ));
    Ok(())
}

fn run_tuf_rotate(a: TufRotateArgs) -> Result<()> {
    let repo = roles::Repo::new(&a.rk.repo);
    let ks = keys::Keystore::load(&a.rk.keys)?;
    let mut change = trust::RootChange::default();
    for r in &a.add_key {
        change.add_keys.push(keys::role_from_name(r)?);
    }
    change.remove_keys = a.remove_key.clone();
    for t in &a.threshold {
        let (r, n) = t
            .split_once('=')
            .with_context(|| format!("--threshold {t}: write ROLE=N, e.g. root=2"))?;
        let n: u64 = n
            .parse()
            .with_context(|| format!("--threshold {t}: {n:?} is not a number"))?;
        change.thresholds.push((keys::role_from_name(r)?, n));
    }
    let opts = trust::RotateOptions {
        change,
        expiry: roles::Expiry::days(roles::now(), a.expires, a.timestamp_expires),
    };
    let r = trust::rotate_root(&repo, &ks, &opts)?;
    for k in &r.new_keys {
        say(&format!("new key {} -> {}", k.id_hex(), k.path.display()));
    }
    say(&format!(
        "wrote {} (signed by the old and the new root keys){}",
        repo.root_path(r.root.signed.version.get()).display(),
        if r.resigned {
            "; re-signed targets, snapshot and timestamp with the new keys"
        } else {
            ""
        }
    ));
    Ok(())
}

fn run_tuf_refresh(a: TufRefreshArgs) -> Result<()> {
    let repo = roles::Repo::new(&a.rk.repo);
    let ks = keys::Keystore::load(&a.rk.keys)?;
    let expiry = roles::Expiry::days(roles::now(), a.expires, a.timestamp_expires);
    let r = roles::refresh(&repo, &ks, &expiry, a.timestamp_only)?;
    if let Some(w) = roles::root_expiry_warning(&repo.latest_root()?.signed, roles::now()) {
        say(&w);
    }
    if let Some(v) = r.snapshot_version {
        say(&format!(
            "snapshot version {v}, expires {}",
            expiry.snapshot
        ));
    }
    say(&format!(
        "timestamp version {}, expires {}",
        r.timestamp_version, r.timestamp_expires
    ));
    Ok(())
}

fn run_tuf_show(a: TufShowArgs) -> Result<()> {
    let repo = roles::Repo::new(&a.repo);
    let st = repo.state()?;
    let root = &st.root.signed;
    let mut roles_out = Vec::new();
    for role in keys::ROLES {
        let rk = root.roles.get(&role);
        roles_out.push(serde_json::json!({
            "role": role.to_string(),
            "threshold": rk.map(|r| r.threshold.get()),
            "keys": rk.map(|r| r.keyids.iter().map(|k| hex::encode(k.as_ref())).collect::<Vec<_>>()),
        }));
    }
    let mut targets: Vec<_> = st
        .targets
        .signed
        .targets
        .iter()
        .map(|(n, t)| serde_json::json!({"name": n.raw(), "size": t.length, "custom": t.custom}))
        .collect();
    targets.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
    let v = serde_json::json!({
        "root": {"version": root.version.get(), "expires": root.expires.to_rfc3339()},
        "targets": {"version": st.targets.signed.version.get(), "expires": st.targets.signed.expires.to_rfc3339()},
        "snapshot": {"version": st.snapshot.signed.version.get(), "expires": st.snapshot.signed.expires.to_rfc3339()},
        "timestamp": {"version": st.timestamp.signed.version.get(), "expires": st.timestamp.signed.expires.to_rfc3339()},
        "roles": roles_out,
        "target_files": targets,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for r in ["root", "targets", "snapshot", "timestamp"] {
        println!(
            "{r:<9} version {:<4} expires {}",
            v[r]["version"],
            v[r]["expires"].as_str().unwrap_or_default()
        );
    }
    for r in &roles_out {
        println!(
            "role {:<9} threshold {} keys {}",
            r["role"].as_str().unwrap_or_default(),
            r["threshold"],
            r["keys"]
        );
    }
    for t in &targets {
        println!(
            "target {} ({} bytes)",
            t["name"].as_str().unwrap_or_default(),
            t["size"]
        );
    }
    Ok(())
}

fn run_publish(a: PublishArgs) -> Result<()> {
    let repo = roles::Repo::new(&a.rk.repo);
    let ks = keys::Keystore::load(&a.rk.keys)?;
    let now = roles::now();
    let opts = release::PublishOptions {
        build: a.build.clone(),
        from: a.from.clone(),
        min_version: a.min_version.clone(),
        security_version: a.security_version,
        raise_security_version: a.raise_security_version,
        waves: release::parse_waves(&a.waves)?,
        released_at: a
            .released_at
            .unwrap_or_else(|| u64::try_from(now.timestamp()).unwrap_or_default()),
        expiry: roles::Expiry::days(now, a.expires, a.timestamp_expires),
        patch_level: a.patch_level,
    };
    let p = release::publish(&repo, &ks, &opts, &mut |l| say(l)).with_context(|| {
        format!(
            "publishing {} into {}",
            a.build.display(),
            a.rk.repo.display()
        )
    })?;
    say(&format!(
        "published {} as {} (targets v{}, snapshot v{}, timestamp v{})",
        p.manifest.version,
        p.manifest_target,
        p.targets_version,
        p.snapshot_version,
        p.timestamp_version
    ));
    for t in &p.targets {
        say(&format!("  {:<8} {:<48} {}", t.kind, t.name, mib(t.size)));
    }
    for x in &p.patches {
        say(&format!(
            "  patch {:<6} from {:<10} {} of {} ({:.1}%)",
            x.payload,
            x.from_version,
            mib(x.size),
            mib(x.payload_size),
            x.size as f64 * 100.0 / x.payload_size.max(1) as f64
        ));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    }
    Ok(())
}

fn run_build(a: BuildArgs) -> Result<()> {
    let opts = BuildOptions {
        spec: a.spec,
        out: a.out,
        bin_dirs: a.bin_dir,
        cache_dir: a.cache,
        source_date_epoch: a.source_date_epoch.unwrap_or_else(build::default_epoch),
        kernel_deb: a.kernel_deb,
        slot_a_tries: a.tries,
        slot_b: a.slot_b_version.map(|version| SlotB {
            version,
            tries: a.slot_b_tries,
            corrupt_root_hash: a.break_slot_b,
        }),
        extra_cmdline: a.cmdline,
    };
    let built = build(&opts, &mut |line| eprintln!("fluxnode-image: {line}"))?;
    let m = &built.manifest;
    eprintln!(
        "fluxnode-image: built {} ({:.1} MiB, sha256 {}) in {:.1} s",
        built.image.display(),
        m.image.payload.size as f64 / 1048576.0,
        m.image.payload.sha256,
        built.seconds
    );
    for (slot, s) in &m.slots {
        eprintln!(
            "fluxnode-image:   slot {slot}: {} UKI {:.1} MiB, root {:.1} MiB, root hash {}",
            s.esp_name,
            s.uki.size as f64 / 1048576.0,
            s.root.payload.size as f64 / 1048576.0,
            s.root.root_hash
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(m)?);
    }
    Ok(())
}

fn run_flash(a: FlashArgs) -> Result<()> {
    let mpath = a
        .manifest
        .clone()
        .unwrap_or_else(|| a.image.with_file_name("manifest.json"));
    let m = Manifest::read(&mpath).with_context(|| {
        format!(
            "reading the manifest (pass --manifest if it is not {})",
            mpath.display()
        )
    })?;
    let host = flash::Host::default();
    flash::check_target(&a.device, &a.image, &host)?;
    if !a.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to overwrite {} without confirmation: pass --yes",
                a.device.display()
            );
        }
        eprint!(
            "fluxnode-image: this overwrites everything on {}. Type yes to go on: ",
            a.device.display()
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!("not confirmed; nothing written");
        }
    }
    let tty = std::io::stderr().is_terminal();
    let mut last = (String::new(), 0u64);
    let r = flash::flash(&a.image, &m, &a.device, &host, &mut |phase, done, total| {
        let pct = done * 100 / total.max(1);
        if tty {
            let bar = "#".repeat((pct / 4) as usize);
            eprint!(
                "\r{phase:>6} [{bar:<25}] {pct:3}% {:.0}/{:.0} MiB",
                done as f64 / 1048576.0,
                total as f64 / 1048576.0
            );
            if done == total {
                eprintln!();
            }
        } else if last.0 != phase || pct >= last.1 + 10 || done == total {
            eprintln!("fluxnode-image: {phase} {pct}%");
            last = (phase.to_string(), pct);
        }
    })?;
    eprintln!(
        "fluxnode-image: wrote and verified {} bytes ({} chunks) on {}",
        r.bytes,
        r.chunks,
        a.device.display()
    );
    Ok(())
}
