//! Latency summaries and CPU accounting.

use serde::Serialize;

/// A latency distribution, milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    /// Summarises `samples` (ms).
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Latency {
            n: v.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: v[v.len() - 1],
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (comm, utime + stime in ticks, cutime + cstime in ticks) of a
/// `/proc/.../stat` line.
fn parse_stat(text: &str) -> Option<(String, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // Fields after comm start at field 3 (state): utime is field 14,
    // stime 15, cutime 16, cstime 17 (1-based), i.e. indices 11..=14 here.
    let f = |i: usize| rest.get(i).and_then(|s| s.parse::<u64>().ok());
    Some((comm, f(11)? + f(12)?, f(13)? + f(14)?))
}

/// CPU seconds of this process's threads, split by who runs them: the
/// registry (its runtime's threads: `registry`, `tokio-rt-worker`) and
/// the load generator (everything else: the simulated nodes' threads,
/// main).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuSplit {
    /// The registry's threads, CPU seconds.
    pub registry_s: f64,
    /// The load generator's threads, CPU seconds (live threads only; see
    /// [`CpuSplit::process_s`]).
    pub loadgen_s: f64,
    /// The whole process, CPU seconds (includes threads that ended).
    pub process_s: f64,
}

impl CpuSplit {
    /// Now.
    pub fn sample() -> Self {
        let tps = ticks_per_s();
        let mut s = CpuSplit::default();
        if let Ok(entries) = std::fs::read_dir("/proc/self/task") {
            for e in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                let Some((comm, t, _)) = parse_stat(&text) else {
                    continue;
                };
                let secs = t as f64 / tps;
                if comm == "registry" || comm.starts_with("tokio-") {
                    s.registry_s += secs;
                } else {
                    s.loadgen_s += secs;
                }
            }
        }
        if let Some((_, t, _)) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            s.process_s = t as f64 / tps;
        }
        s
    }

    /// What was spent between `earlier` and `self`. The registry's threads
    /// live through a run, so their difference is exact; the load
    /// generator's is the process's less the registry's (node threads that
    /// ended are counted in the process's total only).
    pub fn since(&self, earlier: &CpuSplit) -> CpuSplit {
        let registry_s = (self.registry_s - earlier.registry_s).max(0.0);
        let process_s = (self.process_s - earlier.process_s).max(0.0);
        CpuSplit {
            registry_s,
            loadgen_s: (process_s - registry_s).max(0.0),
            process_s,
        }
    }
}

/// CPU seconds of a process and its children (reaped ones included), by
/// pid: a PostgreSQL postmaster and its backends.
pub fn process_tree_cpu_s(pid: u32) -> Option<f64> {
    let tps = ticks_per_s();
    let (_, own, reaped) = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let mut total = own + reaped;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The parent pid is the second field after comm.
        let ppid = text
            .rfind(')')
            .and_then(|c| text.get(c + 2..))
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) && child != pid {
            if let Some((_, t, _)) = parse_stat(&text) {
                total += t;
            }
        }
    }
    Some(total as f64 / tps)
}

/// The machine's 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&v);
        assert_eq!((l.p50_ms, l.p99_ms, l.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(Latency::of(&[]).n, 0);
        assert_eq!(Latency::of(&[3.0]).p99_ms, 3.0);
    }

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let line = "12 (tokio-runtime-w) S 1 2 3 4 5 6 7 8 9 10 40 2 5 1 20 0 1 0";
        assert_eq!(parse_stat(line), Some(("tokio-runtime-w".into(), 42, 6)));
        let odd = "12 (a) b) S 1 2 3 4 5 6 7 8 9 10 1 1 0 0 20 0 1 0";
        assert_eq!(parse_stat(odd).map(|p| p.1), Some(2));
        assert!(CpuSplit::sample().process_s >= 0.0);
    }
}
