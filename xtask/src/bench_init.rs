//! `cargo xtask bench init`: PID 1's figures, measured on the real binary
//! (static release build, as in the appliance) running as PID 1 of a fresh
//! PID namespace:
//!
//! - resident memory (VmRSS) with 20 services running;
//! - restart latency: from a crashed process's last instruction to its
//!   replacement's first, with the backoff set to zero;
//! - time from exec of init to "all services ready" for 200 trivial services;
//! - under abuse (ours only, issue 10): resident memory with 20 services,
//!   one of them flooding its output, and `ctl status` latency with 0, 50
//!   and 500 idle connections open on the control socket.

use std::os::unix::net::UnixStream;
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
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
    {
        let _ = writeln!(f, "{start} {end}");
    }
    std::process::exit(1)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn vm_rss_kib(pid: i32) -> Result<u64> {
    vm_kib(pid, "VmRSS")
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`).
fn vm_kib(pid: i32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field}"))
}

/// The PID 1 under test: ours, or systemd for comparison.
#[derive(Clone, Copy, PartialEq)]
enum Peer<'a> {
    Fluxnode(&'a Path),
    Systemd,
}

const SYSTEMD: &str = "/lib/systemd/systemd";

impl Peer<'_> {
    fn name(&self) -> &'static str {
        match self {
            Peer::Fluxnode(_) => "fluxnode-init",
            Peer::Systemd => "systemd",
        }
    }

    /// Writes `n` services running `argv` (restarting at once when `always`).
    fn write(&self, dir: &Path, n: usize, argv: &[String], always: bool) -> Result<()> {
        match self {
            Peer::Fluxnode(_) => {
                let restart = if always {
                    "restart = \"always\"\n[backoff]\ninitial_ms = 0\njitter = 0.0\n[start_limit]\nburst = 100000\ninterval_s = 1\n"
                } else {
                    ""
                };
                for i in 0..n {
                    std::fs::write(
                        dir.join("services").join(format!("svc{i:03}.toml")),
                        format!("argv = {argv:?}\n{restart}"),
                    )?;
                }
            }
            Peer::Systemd => {
                let units = dir.join("units");
                let wants = units.join("bench.target.wants");
                std::fs::create_dir_all(&wants)?;
                std::fs::write(units.join("bench.target"), "[Unit]\nDescription=bench\n")?;
                let restart = if always {
                    "Restart=always\nRestartSec=0\n"
                } else {
                    ""
                };
                for i in 0..n {
                    let name = format!("svc{i:03}.service");
                    std::fs::write(
                        units.join(&name),
                        format!("[Unit]\nDefaultDependencies=no\nStartLimitIntervalSec=0\n[Service]\nExecStart={}\n{restart}", argv.join(" ")),
                    )?;
                    std::os::unix::fs::symlink(format!("../{name}"), wants.join(&name))?;
                }
            }
        }
        Ok(())
    }

    fn start(&self, dir: &Path) -> Result<NsInit> {
        match self {
            Peer::Fluxnode(init) => NsInit::start(init, dir, false),
            Peer::Systemd => {
                let units = dir.join("units");
                let mut cmd = std::process::Command::new(SYSTEMD);
                cmd.args(["--system", "--unit=bench.target", "--log-level=warning"])
                    .env("container", "fluxnode-bench")
                    .env("SYSTEMD_UNIT_PATH", &units);
                NsInit::start_cmd(&cmd, dir.join("run"), false)
            }
        }
    }

    fn stop(&self, mut ns: NsInit) -> Result<()> {
        if let Peer::Fluxnode(_) = self {
            ns.signal(libc::SIGTERM)?;
            ns.wait_exit(Duration::from_secs(60))?;
        }
        // systemd as PID 1 treats SIGTERM as "re-execute": dropping the
        // handle kills the namespace (unshare --kill-child).
        Ok(())
    }
}

struct Figures {
    rss_mib: f64,
    restart_ms: (f64, f64, f64, usize),
    start200_ms: Vec<f64>,
}

fn measure(peer: Peer, xtask: &Path) -> Result<Figures> {
    let tag = peer.name();
    // 1. RSS with 20 services.
    let dir = scratch(&format!("bench-{tag}-rss"))?;
    peer.write(&dir, 20, &["/bin/sleep".into(), "600".into()], false)?;
    let ns = peer.start(&dir)?;
    ns.wait_children(20, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(1500));
    let rss = vm_rss_kib(ns.init_pid()?)? as f64 / 1024.0;
    peer.stop(ns)?;

    // 2. Restart latency.
    let dir = scratch(&format!("bench-{tag}-restart"))?;
    let probe_log = dir.join("probe.log");
    peer.write(
        &dir,
        1,
        &[
            xtask.display().to_string(),
            "__crash-probe".into(),
            probe_log.display().to_string(),
        ],
        true,
    )?;
    let ns = peer.start(&dir)?;
    let end = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&probe_log)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 201
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    peer.stop(ns)?;
    let rows: Vec<(u64, u64)> = std::fs::read_to_string(&probe_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((w.next()??, w.next()??))
        })
        .collect();
    let mut lat: Vec<f64> = rows
        .windows(2)
        .map(|w| (w[1].0.saturating_sub(w[0].1)) as f64 / 1e6)
        .collect();
    if lat.len() < 20 {
        bail!("{tag}: only {} restarts measured", lat.len());
    }
    lat.sort_by(f64::total_cmp);
    let restart_ms = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.len(),
    );

    // 3. 200 services: exec of the namespace -> 200 service processes running.
    let mut start200_ms = Vec::new();
    for round in 0..3 {
        let dir = scratch(&format!("bench-{tag}-200-{round}"))?;
        peer.write(&dir, 200, &["/bin/sleep".into(), "600".into()], false)?;
        let t0 = Instant::now();
        let ns = peer.start(&dir)?;
        let t1 = ns.wait_children(200, Duration::from_secs(120))?;
        start200_ms.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
        peer.stop(ns)?;
    }
    start200_ms.sort_by(f64::total_cmp);
    Ok(Figures {
        rss_mib: rss,
        restart_ms,
        start200_ms,
    })
}

/// PID 1 under abuse (ours only: the control socket is ours).
struct Abuse {
    /// VmRSS sampled every 100 ms during the flood: the highest, and the
    /// peak the kernel recorded (VmHWM, from init's start).
    flood_rss_mib: f64,
    flood_hwm_mib: f64,
    /// Lines of flood output that came through PID 1 per second.
    flood_lines_per_s: f64,
    /// (idle connections, median ms, max ms) of `ctl status`.
    ctl_ms: Vec<(usize, f64, f64)>,
}

const FLOOD_S: u64 = 3;

fn measure_abuse(init: &Path) -> Result<Abuse> {
    // 1. 20 services, one printing short lines as fast as it can.
    let dir = scratch("bench-fluxnode-flood")?;
    let peer = Peer::Fluxnode(init);
    peer.write(&dir, 19, &["/bin/sleep".into(), "600".into()], false)?;
    std::fs::write(
        dir.join("services").join("flood.toml"),
        "argv = [\"/usr/bin/yes\", \"a short line of output\"]\n",
    )?;
    let ns = peer.start(&dir)?;
    ns.wait_children(20, Duration::from_secs(30))?;
    let pid = ns.init_pid()?;
    let t0 = Instant::now();
    let mut peak = 0;
    while t0.elapsed() < Duration::from_secs(FLOOD_S) {
        peak = peak.max(vm_rss_kib(pid)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let hwm = vm_kib(pid, "VmHWM")?;
    let sock = ns.run.join("control.sock");
    // Stop it first: every line also comes to this process, on a channel.
    ctl(&sock, "stop flood")?;
    let elapsed = t0.elapsed().as_secs_f64();
    // Lines through PID 1: those its ring dropped and those it kept.
    let logs = ctl(&sock, "logs flood")?;
    let dropped: u64 = logs
        .strip_prefix('[')
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let lines = dropped + logs.lines().filter(|l| !l.starts_with('[')).count() as u64;
    peer.stop(ns)?;

    // 2. ctl status with idle connections held open (each is closed by
    // init at the bound of open connections or at its 1 s deadline).
    let dir = scratch("bench-fluxnode-ctl")?;
    peer.write(&dir, 20, &["/bin/sleep".into(), "600".into()], false)?;
    let ns = peer.start(&dir)?;
    ns.wait_children(20, Duration::from_secs(30))?;
    let sock = ns.run.join("control.sock");
    let mut ctl_ms = Vec::new();
    for idle in [0usize, 50, 500] {
        let _held: Vec<UnixStream> = (0..idle)
            .map(|_| UnixStream::connect(&sock))
            .collect::<std::io::Result<_>>()
            .context("opening idle connections")?;
        let mut t: Vec<f64> = (0..20).map(|_| ctl_status(&sock)).collect::<Result<_>>()?;
        t.sort_by(f64::total_cmp);
        ctl_ms.push((idle, percentile(&t, 0.5), t[t.len() - 1]));
        std::thread::sleep(Duration::from_millis(1200));
    }
    peer.stop(ns)?;
    Ok(Abuse {
        flood_rss_mib: peak as f64 / 1024.0,
        flood_hwm_mib: hwm as f64 / 1024.0,
        flood_lines_per_s: lines as f64 / elapsed,
        ctl_ms,
    })
}

/// One request, as `fluxnode-init ctl` sends it; the answer's body.
fn ctl(sock: &Path, line: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{line}\n").as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.strip_prefix("ok\n") {
        Some(body) => Ok(body.to_string()),
        None => bail!("ctl {line} answered {out:?}"),
    }
}

/// `status`'s latency in ms, from connect to the end of the answer.
fn ctl_status(sock: &Path) -> Result<f64> {
    let t = Instant::now();
    ctl(sock, "status")?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
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
    let init = crate::nsrun::stage_binary(&build_init(true)?)?;
    let size = std::fs::metadata(&init)?.len();
    println!(
        "binary: {} ({:.2} MiB)",
        init.display(),
        size as f64 / 1048576.0
    );
    let xtask = crate::nsrun::stage_binary(&std::env::current_exe()?)?;
    let mut peers = vec![Peer::Fluxnode(&init)];
    if Path::new(SYSTEMD).exists() {
        peers.push(Peer::Systemd);
    } else {
        println!("(no {SYSTEMD} here: systemd's column is left out)");
    }
    let mut rows = Vec::new();
    for p in &peers {
        println!(
            "==> measuring {} as PID 1 of a fresh PID namespace",
            p.name()
        );
        rows.push((
            p.name(),
            measure(*p, &xtask).with_context(|| format!("measuring {}", p.name()))?,
        ));
    }
    println!();
    println!(
        "{:<14} {:>10} {:>26} {:>22}",
        "PID 1", "RSS 20svc", "restart median/p90/p99", "200 services (median)"
    );
    for (name, f) in &rows {
        println!(
            "{:<14} {:>7.2} MiB {:>9.2}/{:.2}/{:.2} ms (n={}) {:>10.0} ms ({})",
            name,
            f.rss_mib,
            f.restart_ms.0,
            f.restart_ms.1,
            f.restart_ms.2,
            f.restart_ms.3,
            percentile(&f.start200_ms, 0.5),
            f.start200_ms
                .iter()
                .map(|t| format!("{t:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let [(_, ours), (_, sd)] = rows.as_slice() {
        println!(
            "ratios systemd/fluxnode-init: RSS {:.1}x, restart latency {:.1}x, 200 services {:.1}x",
            sd.rss_mib / ours.rss_mib,
            sd.restart_ms.0 / ours.restart_ms.0,
            percentile(&sd.start200_ms, 0.5) / percentile(&ours.start200_ms, 0.5)
        );
    }
    println!("==> fluxnode-init under abuse");
    let a = measure_abuse(&init).context("measuring fluxnode-init under abuse")?;
    println!(
        "RSS, 20 services, one flooding ({:.0} lines/s through PID 1): {:.2} MiB sampled peak, VmHWM {:.2} MiB",
        a.flood_lines_per_s, a.flood_rss_mib, a.flood_hwm_mib
    );
    for (idle, median, max) in &a.ctl_ms {
        println!(
            "ctl status with {idle:>3} idle connections: median {median:.2} ms, max {max:.2} ms (n=20)"
        );
    }
    println!("goals: RSS <= 2 MiB, restart median <= 5 ms, 200 services <= 500 ms, RSS under a flood <= 4 MiB");
    Ok(())
}
