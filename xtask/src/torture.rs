//! `cargo xtask torture ota --cuts N`: power cuts during real updates, as
//! many as asked. The QEMU test runs a few (tests/tests/update.rs); this
//! runs the same chains (tests/src/update.rs) for as long as one wants and
//! prints where each cut landed, so a run of hundreds is recorded in
//! docs/BENCHMARKS.md with its seed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use fluxnode_tests::update;

use crate::deps;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// Kill QEMU at seeded random moments while a node updates 0.1.0 →
    /// 0.2.0 over HTTP (download, write, UKI install, reboot, health,
    /// blessing); after each cut the next boot must be good, and every
    /// update must complete or be cleanly abandoned with /var intact.
    #[command(long_about = OTA_ABOUT)]
    Ota(OtaArgs),
}

const OTA_ABOUT: &str = "Power cuts during real updates.\n\n\
Builds the update tests' versions (0.1.0 and 0.2.0, published into a TUF repository \
served by a private nginx), then runs chains of nodes under QEMU (TCG). Each run of a \
machine is killed with SIGKILL, the power cord, at a seeded moment up to 50 s after its \
boot was good (at once when the update has ended before it); the next run of the same disk must boot a slot to all services ready \
before it is cut in turn. A node whose update ended (0.2.0 blessed, or 0.1.0 running \
with the attempt recorded as rolled back) is powered off and checked: /var clean under \
e2fsck -fn and holding its boot count, the history agreeing. Then it is flashed anew.\n\n\
Prints one line per cut (its moment and the update phase the serial log showed) and a \
count of cuts per phase. The seed repeats a run: --seed S.\n\n\
Example: cargo xtask torture ota --cuts 100 --chains 2";

#[derive(clap::Args, Debug)]
struct OtaArgs {
    /// Power cuts in all (split between the chains).
    #[arg(long, default_value_t = 6)]
    cuts: usize,
    /// Machines cutting at once (each its own node and nginx).
    #[arg(long, default_value_t = 1)]
    chains: usize,
    /// The seed (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Ota(o) => ota(o),
    }
}

fn ota(a: OtaArgs) -> Result<()> {
    deps::ensure(deps::PACKAGES)?;
    if let Some(why) = fluxnode_tests::qemu::missing_prerequisite() {
        bail!("{why}");
    }
    let chains = a.chains.clamp(1, 8);
    let seed = a.seed.unwrap_or_else(update::clock_seed);
    eprintln!(
        "torture ota: {} cuts over {chains} chain(s), seed {seed} (--seed {seed} repeats it)",
        a.cuts
    );
    let world = update::world().map_err(anyhow::Error::msg)?;
    let t0 = std::time::Instant::now();
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for c in 0..chains {
        let n = a.cuts / chains + usize::from(c < a.cuts % chains);
        let world = world.clone();
        let results = results.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = update::Rng::new(seed.wrapping_add(c as u64));
            let r = update::cut_chain(&world, c, n, &mut rng, &mut |l| {
                eprintln!("torture ota (seed {seed}): {l}")
            });
            results
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((c, r));
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    results.sort_by_key(|(c, _)| *c);
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut cuts, mut completed, mut abandoned, mut failed) = (0, 0, 0, Vec::new());
    for (c, r) in &results {
        match r {
            Ok(r) => {
                cuts += r.cuts.len();
                for cut in &r.cuts {
                    *phases.entry(cut.phase).or_default() += 1;
                }
                completed += r.outcomes.iter().filter(|o| *o == "completed").count();
                abandoned += r.outcomes.iter().filter(|o| *o == "abandoned").count();
            }
            Err(e) => failed.push(format!("chain {c}: {e}")),
        }
    }
    println!(
        "torture ota: seed {seed}: {cuts} power cuts in {:.0} s; updates completed {completed}, cleanly abandoned {abandoned}; failures {}",
        t0.elapsed().as_secs_f64(),
        failed.len()
    );
    let by_phase: Vec<String> = phases.iter().map(|(p, n)| format!("{p} {n}")).collect();
    println!("torture ota: cuts by phase: {}", by_phase.join(", "));
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}
