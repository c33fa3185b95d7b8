//! `fluxnode-image`: a thin command line over the library (see `lib.rs`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fluxnode_image::{build, flash, BuildOptions, Manifest, SlotB};

#[derive(Parser, Debug)]
#[command(
    about = "Build fluxnode's reproducible A/B disk image, or flash one",
    long_about = "Build fluxnode's reproducible A/B disk image, or flash one.\n\n\
Typical use:\n  \
RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target x86_64-unknown-linux-gnu -p fluxnode-init -p fluxnode-netd\n  \
cargo build --release -p fluxnode-hal -p fluxnode-node   # dynamic: they link libtss2\n  \
fluxnode-image build --spec image/spec/default.toml --out target/fluxnode-image/out\n  \
fluxnode-image flash --image target/fluxnode-image/out/fluxnode.img --device /dev/sdX"
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
    }
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
