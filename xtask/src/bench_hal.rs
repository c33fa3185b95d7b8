//! `cargo xtask bench hal [--quick] [--dir DIR]`: the hardware layer against
//! the reference tools, side by side on this machine in one run:
//!
//! - CPU: `sysbench cpu --cpu-max-prime=60000 --time=T --threads=N` events
//!   per second vs ours (same T, N);
//! - disk write: `dd if=/dev/zero bs=64k count=16k conv=fdatasync`, three
//!   runs, lowest dropped, mean of two vs ours (same rule, same directory);
//! - 4 KiB random-write IOPS: `fio --rw=randwrite --bs=4k --direct=1
//!   --ioengine=psync --iodepth=1 --size=256M --runtime=5 --time_based` vs ours;
//! - the wall time of a full `fluxnode-hal bench --cpu --mem --disk DIR`.
//!
//! Each comparison prints both figures and ours/theirs. The release binary
//! is measured (the appliance's build).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::util;

struct Opts {
    quick: bool,
    dir: PathBuf,
}

fn parse(rest: &[String]) -> Result<Opts> {
    let mut o = Opts {
        quick: false,
        dir: util::root().join("target/bench-hal"),
    };
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--dir" => o.dir = PathBuf::from(it.next().context("--dir needs a directory")?),
            other => bail!("bench hal: unknown argument {other:?} (use --quick, --dir DIR)"),
        }
    }
    Ok(o)
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn hal(bin: &Path, args: &[&str]) -> Result<Value> {
    let text = output(Command::new(bin).args(args))?;
    serde_json::from_str(&text)
        .with_context(|| format!("fluxnode-hal {args:?} printed no JSON: {text}"))
}

fn num(v: &Value, path: &[&str]) -> Result<f64> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .with_context(|| format!("no number at {path:?} in {v}"))
}

/// One sysbench cpu run: (events per second, events per CPU-second of its
/// own, from wait4's rusage).
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives the rusage
fn sysbench(threads: usize, secs: u64) -> Result<(f64, f64)> {
    use std::io::Read;
    let mut child = Command::new("sysbench")
        .args([
            "cpu",
            "--cpu-max-prime=60000",
            &format!("--threads={threads}"),
            &format!("--time={secs}"),
            "run",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting sysbench")?;
    let mut text = String::new();
    child
        .stdout
        .take()
        .context("sysbench stdout")?
        .read_to_string(&mut text)?;
    let pid = i32::try_from(child.id())?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own, unreaped child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; status and ru are valid for writes.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid || status != 0 {
        bail!("sysbench failed: {text}");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let field = |key: &str| -> Result<f64> {
        let l = text
            .lines()
            .find(|l| l.contains(key))
            .with_context(|| format!("sysbench printed no {key}"))?;
        Ok(l.split(':')
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .context("sysbench output")?
            .parse()?)
    };
    Ok((
        field("events per second:")?,
        field("total number of events:")? / (tv(ru.ru_utime) + tv(ru.ru_stime)),
    ))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Flux's rule: lowest run dropped, the others averaged.
fn flux_rule(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.len() > 1 {
        v.remove(0);
    }
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn line(what: &str, ours: f64, theirs: f64, unit: &str, tool: &str) {
    println!(
        "{what:<28} ours {ours:>10.2} {unit:<6} {tool:<9} {theirs:>10.2} {unit:<6} ratio {:.3}",
        ours / theirs
    );
}

pub fn run(rest: &[String]) -> Result<()> {
    let o = parse(rest)?;
    crate::deps::ensure(&["sysbench", "fio", "coreutils"])?;
    util::run(util::cargo().args(["build", "--release", "-p", "fluxnode-hal"]))?;
    let bin = util::root().join("target/release/fluxnode-hal");
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let dir = o.dir.to_string_lossy().to_string();
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let cpu_time = if o.quick { 5 } else { 20 };
    println!("machine: {threads} threads; directory {dir}; cpu runs {cpu_time} s each");

    // Each comparison alternates ours and theirs (ours, theirs, ours, ...):
    // on a shared machine a burst of someone else's work then hits both.
    // CPU: three pairs of runs, same duration and threads; medians.
    let pair_time = if o.quick { 3 } else { 10 };
    let (mut ours_eps, mut sb_eps, mut share) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_cpu, mut sb_cpu) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let ours = hal(
            &bin,
            &[
                "bench",
                "--cpu",
                "--single-time",
                "0",
                "--cpu-max-cv",
                "100",
                "--json",
                "--cpu-time",
                &pair_time.to_string(),
            ],
        )?;
        ours_eps.push(num(&ours, &["cpu", "eps"])?);
        share.push(num(&ours, &["cpu", "cpu_share"])?);
        ours_cpu.push(num(&ours, &["cpu", "events"])? / num(&ours, &["cpu", "cpu_time_s"])?);
        let (eps, per_cpu) = sysbench(threads, pair_time)?;
        sb_eps.push(eps);
        sb_cpu.push(per_cpu);
    }
    line(
        &format!("cpu events/s ({threads} thr, 3x{pair_time}s)"),
        median(&ours_eps),
        median(&sb_eps),
        "EPS",
        "sysbench",
    );
    println!(
        "    ours {ours_eps:.1?}, sysbench {sb_eps:.1?}; our threads got {:.0?}% of the CPU",
        share.iter().map(|s| s * 100.0).collect::<Vec<_>>()
    );
    line(
        "cpu events per CPU-second",
        median(&ours_cpu),
        median(&sb_cpu),
        "EPS/cpu",
        "sysbench",
    );
    println!("    (what the same work costs each tool, whatever else runs: ours {ours_cpu:.1?}, sysbench {sb_cpu:.1?})");

    // Disk write: dd and ours alternately, three runs each of 1 GiB; Flux's
    // rule (lowest dropped, mean of two) on each side.
    let (mut dd, mut ours_w) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let file = o.dir.join("dd.out");
        let text = output(
            Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", file.display()))
                .args(["bs=64k", "count=16k", "conv=fdatasync"]),
        )?;
        let _ = std::fs::remove_file(&file);
        let l = text
            .lines()
            .find(|l| l.contains(" copied, "))
            .context("dd printed no summary")?;
        let bytes: f64 = l.split_whitespace().next().context("dd summary")?.parse()?;
        let secs: f64 = l
            .split(" copied, ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .context("dd summary")?
            .parse()?;
        dd.push(bytes / secs / 1e6);
        let ours = hal(
            &bin,
            &[
                "bench",
                "--disk",
                &dir,
                "--disk-runs",
                "1",
                "--iops-mib",
                "0",
                "--json",
            ],
        )?;
        ours_w.push(
            ours["disk"]["runs_mbps"][0]
                .as_f64()
                .context("no runs_mbps in our report")?,
        );
    }
    line(
        "disk write MB/s (1 GiB, 3 runs)",
        flux_rule(&ours_w),
        flux_rule(&dd),
        "MB/s",
        "dd",
    );
    println!("    ours {ours_w:.1?}, dd {dd:.1?}");

    // 4 KiB random writes, O_DIRECT, QD1, 256 MiB file, 5 s: two pairs.
    let (mut fio_iops, mut ours_iops) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let fio_file = o.dir.join("fio.dat");
        let fio = output(
            Command::new("fio")
                .args([
                    "--name=randwrite",
                    "--rw=randwrite",
                    "--bs=4k",
                    "--size=256M",
                    "--direct=1",
                    "--ioengine=psync",
                    "--iodepth=1",
                ])
                .args(["--runtime=5", "--time_based", "--output-format=json"])
                .arg(format!("--filename={}", fio_file.display())),
        )?;
        let _ = std::fs::remove_file(&fio_file);
        let json_start = fio.find('{').context("fio printed no JSON")?;
        let fio: Value = serde_json::Deserializer::from_str(&fio[json_start..])
            .into_iter::<Value>()
            .next()
            .context("fio JSON")??;
        fio_iops.push(
            fio["jobs"][0]["write"]["iops"]
                .as_f64()
                .context("no write iops in fio output")?,
        );
        let ours = hal(
            &bin,
            &[
                "bench",
                "--disk",
                &dir,
                "--disk-count",
                "16",
                "--disk-max-range",
                "1000",
                "--iops-mib",
                "256",
                "--iops-time",
                "5",
                "--json",
            ],
        )?;
        ours_iops.push(num(&ours, &["disk", "iops_4k"])?);
    }
    line(
        "4k randwrite IOPS (QD1, 2x5s)",
        median(&ours_iops),
        median(&fio_iops),
        "IOPS",
        "fio",
    );
    println!("    ours {ours_iops:.0?}, fio {fio_iops:.0?}");

    // A full bench at default sizes, timed.
    let start = Instant::now();
    let full = output(Command::new(&bin).args(["bench", "--cpu", "--mem", "--disk", &dir]));
    let wall = start.elapsed().as_secs_f64();
    match full {
        Ok(text) => {
            println!("full `fluxnode-hal bench --cpu --mem --disk {dir}`: {wall:.1} s wall (goal <= 60 s)");
            for l in text.lines() {
                println!("    {l}");
            }
        }
        Err(e) => println!("full bench refused a figure after {wall:.1} s: {e:#}"),
    }
    Ok(())
}
