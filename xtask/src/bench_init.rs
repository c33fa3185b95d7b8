//! `cargo xtask bench init`: PID 1's figures, measured on the real binary
//! (static release build, as in the appliance) running as PID 1 of a fresh
//! PID namespace:
//!
//! - resident memory (VmRSS) with 20 services running;
//! - restart latency: from a crashed process's last instruction to its
//!   replacement's first, with the backoff set to zero;
//! - time from exec of init to "all services ready" for 200 trivial services.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::nsrun::{build_init, scratch, NsInit};

/// The hidden `xtask __crash-probe FILE` entry: records the monotonic time
/// at entry and right before exiting 1.
pub fn crash_probe(file: &Path) -> ! {
    let start = monotonic_ns();
    use std::io::Write;
    let end = monotonic_ns();
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(file) {
        let _ = writeln!(f, "{start} {end}");
    }
    std::process::exit(1)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn vm_rss_kib(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn write_services(dir: &Path, n: usize, text: &str) -> Result<()> {
    for i in 0..n {
        std::fs::write(dir.join("services").join(format!("svc{i:03}.toml")), text)?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

pub fn run(_rest: &[String]) -> Result<()> {
    if !crate::util::is_root() {
        bail!("bench init runs init as PID 1 of a new PID namespace: run it as root");
    }
    println!("==> building fluxnode-init (static release, as in the appliance)");
    let init = build_init(true)?;
    let size = std::fs::metadata(&init)?.len();
    println!("binary: {} ({:.2} MiB)", init.display(), size as f64 / 1048576.0);

    // 1. RSS with 20 services.
    let dir = scratch("bench-rss")?;
    write_services(&dir, 20, "argv = [\"/bin/sleep\", \"600\"]\n")?;
    let mut ns = NsInit::start(&init, &dir, false)?;
    ns.wait_for("all services ready (20 services)", Duration::from_secs(30))?;
    ns.wait_for("boot complete", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    let rss = vm_rss_kib(ns.init_pid()?)?;
    ns.signal(libc::SIGTERM)?;
    ns.wait_exit(Duration::from_secs(30))?;
    let rss_mib = rss as f64 / 1024.0;
    println!("init RSS with 20 services: {rss_mib:.2} MiB (goal <= 2 MiB; systemd as PID 1 of a minimal Debian 12: 11.4 MiB on this kind of machine, ratio {:.1}x)", 11.4 / rss_mib);

    // 2. Restart latency.
    let dir = scratch("bench-restart")?;
    let probe_log = dir.join("probe.log");
    let xtask = std::env::current_exe()?;
    let svc = format!(
        "argv = [{:?}, \"__crash-probe\", {:?}]\nrestart = \"always\"\n[backoff]\ninitial_ms = 0\njitter = 0.0\n[start_limit]\nburst = 1000\ninterval_s = 1\n",
        xtask.display().to_string(),
        probe_log.display().to_string()
    );
    std::fs::write(dir.join("services").join("crasher.toml"), svc)?;
    let mut ns = NsInit::start(&init, &dir, false)?;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let n = std::fs::read_to_string(&probe_log).map(|t| t.lines().count()).unwrap_or(0);
        if n >= 201 || Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ns.signal(libc::SIGTERM)?;
    ns.wait_exit(Duration::from_secs(30))?;
    let rows: Vec<(u64, u64)> = std::fs::read_to_string(&probe_log)?
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((w.next()??, w.next()??))
        })
        .collect();
    let mut lat: Vec<f64> = rows.windows(2).map(|w| (w[1].0.saturating_sub(w[0].1)) as f64 / 1e6).collect();
    if lat.len() < 50 {
        bail!("only {} restarts measured", lat.len());
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "restart latency over {} restarts (crash -> new process running, backoff 0): median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms (goal median <= 5 ms)",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99)
    );

    // 3. 200 services to ready.
    let mut times = Vec::new();
    for round in 0..3 {
        let dir = scratch(&format!("bench-200-{round}"))?;
        write_services(&dir, 200, "argv = [\"/bin/sleep\", \"600\"]\n")?;
        let t0 = Instant::now();
        let mut ns = NsInit::start(&init, &dir, false)?;
        let t1 = ns.wait_for("all services ready (200 services)", Duration::from_secs(60))?;
        times.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
        ns.signal(libc::SIGTERM)?;
        ns.wait_exit(Duration::from_secs(60))?;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "200 trivial services, exec of init -> all ready: median {:.0} ms (runs: {}) (goal <= 500 ms)",
        percentile(&times, 0.5),
        times.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
