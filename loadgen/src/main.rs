//! `fluxnode-loadgen`: the registry's figures (issue 12).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use fluxnode_loadgen::sessions::{self, StoreChoice};
use fluxnode_loadgen::softnode::{default_key_dir, AkKind, EkPool};
use fluxnode_loadgen::verify;
use fluxnode_protocol::session::BenchProfile;

#[derive(Parser, Debug)]
#[command(
    about = "The registry's figures: verifications per second, and simulated nodes against a real registry",
    long_about = "The registry's figures (issue 12, docs/BENCHMARKS.md \"Registry\").\n\n\
`verify` is figure 1: how many evidence checks one core does per second, on \
evidence recorded once (quotes signed by a software AK over a synthetic, \
consistent report). The quote pair (both signatures, extraData, PCR digest, \
clocks) and the report checks are what every session costs; the spot-check \
openings (recomputing the opened benchmark chunks) are reported apart, their \
cost is the profile's.\n\n\
`sessions` is figures 2 and 3: N simulated nodes, each a thread with a \
software TPM (RSA-2048 EK with a certificate from a CA the registry trusts, \
a restricted AK, ActivateCredential in software) and the node's own HTTPS \
client, register and then each run one whole session against a real \
registry on loopback (quick profile): open, bandwidth, evidence, spot-check \
openings, verdict. It prints p50/p99/max per phase and for the whole \
session, sessions per second, and the CPU the registry spent per session."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Figure 1: evidence checks per second on one core (recorded evidence).
    Verify(VerifyArgs),
    /// Figures 2 and 3: N simulated nodes against a real registry.
    Sessions(SessionArgs),
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// Iterations of each evidence check.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Iterations of the openings check.
    #[arg(long, default_value_t = 100)]
    openings_iterations: usize,
    /// The AK that signs the quotes: ecc, rsa, or both.
    #[arg(long, default_value = "both")]
    ak: String,
    /// The profile of the recorded session: quick, flux, or both (flux's
    /// openings recompute 16 chunks per workload at max prime 60000).
    #[arg(long, default_value = "quick")]
    profile: String,
    /// CPU events the recorded report claims.
    #[arg(long, default_value_t = 20)]
    cpu_events: u64,
    /// The cache of generated RSA base keys.
    #[arg(long)]
    keys: Option<PathBuf>,
    /// JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct SessionArgs {
    /// Simulated nodes: each registers, then runs one session; all at once.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// The registry's store: redb, postgres (a private cluster started for
    /// the run, fsync off) or a postgres:// URL (an empty database).
    #[arg(long, default_value = "redb")]
    store: StoreChoice,
    /// The nodes' AK: ecc (ECDSA P-256, cheap to sign) or rsa (as hal makes).
    #[arg(long, default_value = "ecc")]
    ak: AkKind,
    /// CPU events each synthetic report claims (each costs the load
    /// generator one event at max prime 10000).
    #[arg(long, default_value_t = 20)]
    cpu_events: u64,
    /// Hold every node's evidence until all have their end quote: the
    /// evidence and openings then run without the load generator's own
    /// benchmark work on the CPUs.
    #[arg(long)]
    precompute: bool,
    /// The cache of generated RSA base keys (default target/loadgen-keys).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Where the registry's temporary directory goes (default target/loadgen).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// JSON on stdout instead of the table (progress stays on stderr).
    #[arg(long)]
    json: bool,
}

fn profiles(arg: &str) -> Result<Vec<BenchProfile>> {
    match arg {
        "both" => Ok(vec![BenchProfile::quick(), BenchProfile::flux()]),
        name => Ok(vec![BenchProfile::named(name).with_context(|| {
            format!("profile {name:?}: use quick, flux or both")
        })?]),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Verify(a) => {
            let pool =
                EkPool::load_or_generate(&a.keys.unwrap_or_else(default_key_dir), 2, !a.json)?;
            let mut all = Vec::new();
            for profile in profiles(&a.profile)? {
                for kind in verify::kinds(&a.ak)? {
                    if !a.json {
                        eprintln!(
                            "loadgen: recording a {} session signed by an {kind} AK",
                            profile.name
                        );
                    }
                    all.push(verify::measure(
                        kind,
                        &profile,
                        a.cpu_events,
                        a.iterations,
                        a.openings_iterations,
                        &pool,
                    )?);
                }
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", verify::table(&all));
            }
        }
        Cmd::Sessions(a) => {
            let needed = match a.ak {
                AkKind::Ecc => a.nodes,
                AkKind::Rsa => 2 * a.nodes,
            };
            let pool = EkPool::load_or_generate(
                &a.keys.unwrap_or_else(default_key_dir),
                needed.max(2),
                true,
            )?;
            let opts = sessions::Options {
                nodes: a.nodes,
                store: a.store,
                ak: a.ak,
                cpu_events: a.cpu_events,
                precompute: a.precompute,
                work_dir: a.work_dir.unwrap_or_else(sessions::default_work_dir),
                progress: true,
            };
            let r = sessions::run(&opts, &pool)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", sessions::table(&r));
            }
            if r.accepted != r.nodes {
                anyhow::bail!(
                    "{} of {} sessions were not accepted",
                    r.nodes - r.accepted,
                    r.nodes
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxnode-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
