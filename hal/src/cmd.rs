//! The subcommands: argument structs and the few lines that map each onto
//! the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fluxnode_hal::bench::{self, BenchReport};
use fluxnode_hal::inventory::{self, ProbeOptions, Roots};
use fluxnode_hal::proof::{self, ChunkSet, Openings};
use fluxnode_hal::seed::Seed;
use fluxnode_hal::tier::{self, Facts, Policy};

#[derive(Parser, Debug)]
#[command(
    name = "fluxnode-hal",
    version,
    about = "Hardware facts, tier benchmarks and the TPM of a fluxnode",
    long_about = "Hardware facts, tier benchmarks and the TPM of a fluxnode.\n\n\
        probe      what the machine is (CPU, memory, disks, NICs, hypervisor, TPM, GPUs)\n\
        bench      what it does, measured as Flux's tier thresholds are defined\n\
        tier       which tier the machine meets, and what falls short for the others\n\
        open/check the spot-check of a seeded benchmark: open chunks, verify them\n\
        tpm        EK certificate, attestation key, quotes, event log, credentials\n\n\
        Add --json where a program reads the output. See docs/HAL.md."
)]
pub struct Cli {
    /// Log debug detail to stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the hardware inventory. Never fails for missing hardware: no
    /// NVIDIA driver or no TPM are facts in the output (exit 0).
    Probe(ProbeArgs),
    /// Run the tier benchmarks. With no selection: --cpu --mem.
    ///
    /// CPU: sysbench's cpu test (--cpu-max-prime=60000), all threads then one
    /// thread. Disk: dd bs=64k count=16k conv=fdatasync in PATH, three runs,
    /// lowest dropped, mean of two; plus 4 KiB random-write IOPS with O_DIRECT.
    /// Memory: sequential read/write GB/s and MemAvailable. GPU: SGEMM
    /// TFLOP/s (build feature gpu-compute). Every figure carries a Merkle
    /// commitment over seeded chunk outputs; a figure whose runs disagree by
    /// more than the stated bound is refused (exit 1, says why).
    Bench(BenchArgs),
    /// Classify the machine into a tier: probe + a saved bench report + a
    /// policy (Flux's table by default). Prints the highest tier met and,
    /// for each tier missed, which requirement fell short by how much.
    Tier(TierArgs),
    /// Prover side of a spot-check: open chunks of a saved chunk set (from
    /// `bench --chunks DIR`) at the given indices or at those a verifier's
    /// nonce selects. Prints the openings as JSON.
    Open(OpenArgs),
    /// Verifier side of a spot-check: recompute each opened chunk from the
    /// seed and check its Merkle path to the root. Exit 0 accepted, 1 rejected.
    Check(CheckArgs),
    /// Talk to the TPM (TCTI from --tcti, $FLUXNODE_TCTI, or device:/dev/tpmrm0).
    Tpm(crate::cmd_tpm::TpmArgs),
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Read proc/, sys/ and dev/ under DIR instead of / (fixture trees).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// TCTI to ask the TPM for manufacturer and firmware (default: the TPM device if present).
    #[arg(long)]
    tcti: Option<String>,
    /// Do not ask NVML about GPUs.
    #[arg(long)]
    no_gpu: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// CPU events per second (sysbench cpu algorithm).
    #[arg(long)]
    cpu: bool,
    /// Memory bandwidth and usable size.
    #[arg(long)]
    mem: bool,
    /// Disk write speed and IOPS in directory PATH (on the filesystem to measure, e.g. /var).
    #[arg(long, value_name = "PATH")]
    disk: Option<PathBuf>,
    /// GPU SGEMM throughput (needs the gpu-compute build and a CUDA driver).
    #[arg(long)]
    gpu: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// 32-byte seed, hex; all benchmark data derives from it (default: random).
    #[arg(long)]
    seed: Option<Seed>,
    /// Save each benchmark's chunk outputs as DIR/<workload>.json for `open`.
    #[arg(long, value_name = "DIR")]
    chunks: Option<PathBuf>,
    /// CPU: sysbench --cpu-max-prime.
    #[arg(long, default_value_t = bench::cpu::FLUX_MAX_PRIME)]
    max_prime: u64,
    /// CPU: seconds of the all-threads run (Flux: 20).
    #[arg(long, default_value_t = 20.0)]
    cpu_time: f64,
    /// CPU: seconds of the single-thread run (0 skips it).
    #[arg(long, default_value_t = 5.0)]
    single_time: f64,
    /// CPU: threads (default: all online CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// CPU: refuse when per-second EPS varies by more than this CV, percent.
    #[arg(long, default_value_t = 15.0)]
    cpu_max_cv: f64,
    /// Disk: dd count of 64 KiB blocks per run (Flux: 16384 = 1 GiB).
    #[arg(long, default_value_t = 16384)]
    disk_count: u64,
    /// Disk: sequential runs (Flux: 3; the lowest is dropped when there are several).
    #[arg(long, default_value_t = 3)]
    disk_runs: usize,
    /// Disk: what the blocks hold: `sparse` (seeded tags in zeros; costs
    /// what dd's zeros cost, Flux-comparable) or `random` (incompressible).
    #[arg(long, default_value = "sparse", value_parser = parse_disk_data)]
    disk_data: bench::disk::DiskData,
    /// Disk: refuse when the two kept runs differ by more than this, percent.
    #[arg(long, default_value_t = 30.0)]
    disk_max_range: f64,
    /// Disk: MiB of the random-write file (0 skips IOPS).
    #[arg(long, default_value_t = 256)]
    iops_mib: u64,
    /// Disk: seconds of random writes.
    #[arg(long, default_value_t = 5.0)]
    iops_time: f64,
    /// Memory: MiB of the swept buffer.
    #[arg(long, default_value_t = 512)]
    mem_mib: u64,
    /// Memory: refuse when read passes vary by more than this CV, percent.
    #[arg(long, default_value_t = 20.0)]
    mem_max_cv: f64,
    /// GPU: matrix order.
    #[arg(long, default_value_t = 8192)]
    gpu_n: u64,
}

#[derive(Args, Debug)]
struct TierArgs {
    /// Tier policy TOML (default: Flux's table; `--show-policy` prints it).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A report saved from `bench --json` (without it, CPU and disk count as not measured).
    #[arg(long, value_name = "REPORT")]
    bench: Option<PathBuf>,
    /// Network bandwidth in Mb/s, measured elsewhere (the hal measures no network).
    #[arg(long)]
    bandwidth_mbps: Option<f64>,
    /// Use facts from this JSON file instead of probing (same fields as the `facts` output).
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,
    /// Print the default policy and exit.
    #[arg(long)]
    show_policy: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct OpenArgs {
    /// A chunk set saved by `bench --chunks DIR` (e.g. DIR/cpu.json).
    #[arg(long)]
    chunks: PathBuf,
    /// Chunk indices, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "nonce")]
    indices: Vec<u64>,
    /// The verifier's nonce (hex): open the k chunks it selects.
    #[arg(long)]
    nonce: Option<String>,
    /// How many chunks the nonce selects.
    #[arg(long, default_value_t = 8)]
    k: usize,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Openings JSON from `open`.
    #[arg(long)]
    openings: PathBuf,
    /// The root the benchmark result committed to (hex); the openings must be for it.
    #[arg(long)]
    root: Option<String>,
    /// The nonce the verifier sent (hex): the openings must be for exactly the chunks it selects.
    #[arg(long)]
    nonce: Option<String>,
    /// How many chunks the nonce selects.
    #[arg(long, default_value_t = 8)]
    k: usize,
}

/// Sets up logging to stderr.
pub fn init_logging(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Probe(a) => probe(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Tier(a) => tier(a),
        Cmd::Open(a) => open(a),
        Cmd::Check(a) => check(a),
        Cmd::Tpm(a) => crate::cmd_tpm::run(a),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn probe(a: ProbeArgs) -> Result<ExitCode> {
    let roots = a.root.as_deref().map(Roots::under).unwrap_or_default();
    let tcti = a.tcti.or_else(|| std::env::var("FLUXNODE_TCTI").ok());
    let inv = inventory::probe(&ProbeOptions {
        roots,
        tcti,
        skip_gpu: a.no_gpu,
    });
    if a.json {
        print_json(&inv)?;
    } else {
        crate::show::inventory(&inv);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_disk_data(s: &str) -> Result<bench::disk::DiskData, String> {
    match s {
        "sparse" => Ok(bench::disk::DiskData::Sparse),
        "random" => Ok(bench::disk::DiskData::Random),
        _ => Err(format!("{s:?}: choose sparse or random")),
    }
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{s} is not a number of seconds"))
}

fn save_chunks(dir: Option<&Path>, name: &str, set: Option<&ChunkSet>) -> Result<()> {
    let (Some(dir), Some(set)) = (dir, set) else {
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(set)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn bench(a: BenchArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let seed = match a.seed {
        Some(s) => s,
        None => Seed::random()?,
    };
    let none = !(a.cpu || a.mem || a.disk.is_some() || a.gpu);
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    let mut report = BenchReport::default();
    let chunks = a.chunks.as_deref();
    if a.cpu || none {
        let mut p = bench::cpu::CpuParams::flux(threads, seed);
        p.max_prime = a.max_prime;
        p.duration = secs(a.cpu_time)?;
        p.max_cv_pct = a.cpu_max_cv;
        let r = bench::cpu::run(&p).context("cpu benchmark (all threads)")?;
        save_chunks(chunks, "cpu", r.chunks.as_ref())?;
        report.cpu = Some(r);
        if a.single_time > 0.0 {
            p.threads = 1;
            p.duration = secs(a.single_time)?;
            p.warmup = Duration::ZERO;
            p.seed = Seed(seed.derive("cpu-single", 0));
            let r = bench::cpu::run(&p).context("cpu benchmark (one thread)")?;
            save_chunks(chunks, "cpu-single", r.chunks.as_ref())?;
            report.cpu_single = Some(r);
        }
    }
    if a.mem || none {
        let mut p = bench::mem::MemParams::default_with(seed);
        p.bytes = a.mem_mib << 20;
        p.max_cv_pct = a.mem_max_cv;
        let r = bench::mem::run(&p).context("memory benchmark")?;
        save_chunks(chunks, "memory", r.chunks.as_ref())?;
        report.memory = Some(r);
    }
    if let Some(dir) = a.disk {
        let mut p = bench::disk::DiskParams::flux(dir, seed);
        p.count = a.disk_count;
        p.runs = a.disk_runs;
        p.data = a.disk_data;
        p.max_range_pct = a.disk_max_range;
        p.iops_file_bytes = a.iops_mib << 20;
        p.iops_duration = secs(a.iops_time)?;
        let r = bench::disk::run(&p).context("disk benchmark")?;
        save_chunks(chunks, "disk", r.chunks.as_ref())?;
        report.disk = Some(r);
    }
    if a.gpu {
        let mut p = bench::gpu::GpuParams::default_with(seed);
        p.n = a.gpu_n;
        let r = bench::gpu::run(&p).context("gpu benchmark")?;
        save_chunks(chunks, "gpu", r.chunks.as_ref())?;
        report.gpu = Some(r);
    }
    report.wall_s = start.elapsed().as_secs_f64();
    if a.json {
        print_json(&report)?;
    } else {
        crate::show::bench(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn tier(a: TierArgs) -> Result<ExitCode> {
    if a.show_policy {
        print!("{}", tier::DEFAULT_POLICY);
        return Ok(ExitCode::SUCCESS);
    }
    let policy = match &a.policy {
        Some(p) => Policy::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => Policy::flux(),
    };
    let report: Option<BenchReport> = match &a.bench {
        Some(p) => Some(
            serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a `bench --json` report", p.display()))?,
        ),
        None => None,
    };
    let mut facts = match &a.facts {
        Some(p) => serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a facts JSON", p.display()))?,
        None => {
            let inv = inventory::probe(&ProbeOptions {
                skip_gpu: true,
                ..Default::default()
            });
            Facts::from(&inv, report.as_ref())
        }
    };
    if a.bandwidth_mbps.is_some() {
        facts.bandwidth_mbps = a.bandwidth_mbps;
    }
    let c = tier::classify(&policy, &facts);
    if a.json {
        print_json(&c)?;
    } else {
        println!("tier: {}", c.tier.as_deref().unwrap_or("none"));
        for t in &c.tiers {
            if t.met {
                println!("  {}: met", t.name);
            } else {
                println!("  {}: not met", t.name);
                for s in &t.shortfalls {
                    println!("    {}", s.text);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_arg(what: &str, s: &str) -> Result<Vec<u8>> {
    hex::decode(s.trim()).with_context(|| format!("{what} must be hex"))
}

fn open(a: OpenArgs) -> Result<ExitCode> {
    let set: ChunkSet = serde_json::from_slice(
        &std::fs::read(&a.chunks).with_context(|| format!("reading {}", a.chunks.display()))?,
    )
    .with_context(|| {
        format!(
            "{} is not a chunk set saved by `bench --chunks`",
            a.chunks.display()
        )
    })?;
    let indices = match &a.nonce {
        Some(n) => proof::challenge(&hex_arg("--nonce", n)?, &set.commitment, a.k),
        None if a.indices.is_empty() => {
            bail!("say which chunks to open: --indices 1,2,3 or --nonce HEX [--k N]")
        }
        None => a.indices.clone(),
    };
    print_json(&set.open(&indices)?)?;
    Ok(ExitCode::SUCCESS)
}

fn check(a: CheckArgs) -> Result<ExitCode> {
    let bytes =
        std::fs::read(&a.openings).with_context(|| format!("reading {}", a.openings.display()))?;
    let o = Openings::from_json(&bytes)?;
    if let Some(root) = &a.root {
        if hex_arg("--root", root)? != o.commitment.root {
            println!(
                "rejected: openings are for root {}, not {root}",
                hex::encode(o.commitment.root)
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let asked = a
        .nonce
        .as_deref()
        .map(|n| hex_arg("--nonce", n).map(|n| proof::challenge(&n, &o.commitment, a.k)))
        .transpose()?;
    match proof::check(&o, None, asked.as_deref()) {
        Ok(()) => {
            println!(
                "accepted: {} chunk(s) of {} recomputed and under root {}",
                o.openings.len(),
                o.commitment.workload.label(),
                hex::encode(o.commitment.root)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("rejected: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
