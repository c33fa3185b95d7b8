//! Test images only (image/spec/apps-test.toml): drives the apps QEMU test
//! from inside the guest. On the first boot it deploys every spec in
//! /etc/fluxnode/test-apps (in name order) with `fluxnode app deploy`,
//! then measures what the host cannot see and prints `apps: key=value`
//! lines on the console: the CPU an app used against its limit, OOM kills
//! and refused forks in the apps' own cgroups, disk quota refusals, and
//! what the prober app could reach. On later boots it reports whether the
//! apps came back by themselves.
//!
//! It also listens on TCP port 7070 on every node address: a stand-in for
//! a node service that apps must not reach.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SOCKET: &str = "/run/appd/api.sock";
const MARKER: &str = "/var/lib/fluxnode-apps-probe.marker";

fn say(k: &str, v: impl std::fmt::Display) {
    println!("apps: {k}={v}");
}

fn call(req: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(SOCKET).map_err(|e| format!("{SOCKET}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    BufReader::new(s)
        .read_until(b'\n', &mut out)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| e.to_string())?;
    if v["ok"] != json!(true) {
        return Err(v["error"].to_string());
    }
    Ok(v)
}

fn inspect(name: &str) -> Value {
    call(&json!({"op": "inspect", "name": name}))
        .map(|v| v["app"].clone())
        .unwrap_or(Value::Null)
}

fn logs(name: &str) -> Vec<String> {
    call(&json!({"op": "logs", "name": name, "lines": 1000}))
        .map(|v| {
            v["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `limit` for `pred` on the app's inspect output.
fn wait_for(name: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let v = inspect(name);
        if pred(&v) || t0.elapsed() > limit {
            return v;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_for_log(name: &str, limit: Duration, needle: &str) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let l = logs(name);
        if l.iter().any(|x| x.contains(needle)) || t0.elapsed() > limit {
            return l;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn state(v: &Value) -> String {
    v["status"]["phase"]["state"]
        .as_str()
        .unwrap_or("unknown")
        .to_string()
}

/// The app daemon's resident memory (KiB) and its threads.
fn appd_rss() -> (u64, u64) {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).nth(1) != Some(b"appd".as_slice()) {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        return (field("VmRSS:"), field("Threads:"));
    }
    (0, 0)
}

fn first_boot() {
    let (rss, threads) = appd_rss();
    say("appd_rss_kib_0_apps", rss);
    say("appd_threads_0_apps", threads);
    let mut specs: Vec<_> = std::fs::read_dir("/etc/fluxnode/test-apps")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    specs.sort();
    for p in &specs {
        let t0 = Instant::now();
        let out = Command::new("/usr/bin/fluxnode")
            .args(["app", "deploy"])
            .arg(p)
            .args(["--wait-s", "600"])
            .output();
        match out {
            Ok(o) => {
                for l in String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&o.stderr).lines())
                {
                    println!("deploy: {l}");
                }
                let name = p.file_stem().map(|s| s.to_string_lossy().into_owned());
                say(
                    &format!("deploy_{}", name.unwrap_or_default()),
                    format!("{} {:.1}s", o.status, t0.elapsed().as_secs_f64()),
                );
            }
            Err(e) => say("deploy_error", e),
        }
    }
    let _ = std::fs::write(MARKER, "deployed\n");
    let ls = Command::new("/usr/bin/fluxnode")
        .args(["app", "ls"])
        .output();
    if let Ok(o) = ls {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            println!("ls: {l}");
        }
    }

    let (rss, threads) = appd_rss();
    say("appd_rss_kib_6_apps", rss);
    say("appd_threads_6_apps", threads);

    // CPU: the spinner's usage over 10 s against its 0.5 cores.
    let a = inspect("spin")["cgroup"]["cpu_usage_us"]
        .as_u64()
        .unwrap_or(0);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let b = inspect("spin")["cgroup"]["cpu_usage_us"]
        .as_u64()
        .unwrap_or(0);
    let cores = (b.saturating_sub(a)) as f64 / 1e6 / t0.elapsed().as_secs_f64();
    say("spin_cores", format!("{cores:.3}"));
    say(
        "spin_limit",
        inspect("spin")["resources"]["cpu"].as_f64().unwrap_or(0.0),
    );

    // Memory: the hog's dd is killed inside its own group; the app lives.
    let v = wait_for("hog", Duration::from_secs(120), |v| {
        v["cgroup"]["oom_kills"].as_u64().unwrap_or(0) > 0
    });
    say("hog_oom_kills", &v["cgroup"]["oom_kills"]);
    let l = wait_for_log("hog", Duration::from_secs(30), "hog-dd-exit=");
    for x in l.iter().filter(|x| x.contains("hog-")) {
        say("hog_log", x);
    }
    say("hog_state", state(&inspect("hog")));

    // Processes: the bomb stops at pids.max.
    let v = wait_for("bomb", Duration::from_secs(120), |v| {
        v["cgroup"]["pids_refused"].as_u64().unwrap_or(0) > 0
    });
    say("bomb_pids_refused", &v["cgroup"]["pids_refused"]);
    say("bomb_pids_current", &v["cgroup"]["pids_current"]);
    say("bomb_pids_limit", &v["resources"]["pids"]);

    // Disk: the quota refuses writes past the limit, in the app's own
    // layer and in its volume.
    let l = wait_for_log("filler", Duration::from_secs(120), "filler-vol-exit=");
    for x in l
        .iter()
        .filter(|x| x.contains("filler-") || x.contains("quota") || x.contains("dd:"))
    {
        say("filler_log", x);
    }
    let v = inspect("filler");
    say("filler_used_bytes", &v["disk"]["used_bytes"]);
    say("filler_limit_bytes", &v["disk"]["limit_bytes"]);

    // Reachability, as the prober app saw it.
    let l = wait_for_log("prober", Duration::from_secs(120), "probe done");
    for x in l.iter().filter(|x| x.starts_with("probe ")) {
        say("prober", x.trim_start_matches("probe "));
    }
    // The node's own service is there for the node itself.
    let own = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([10, 88, 0, 1], 7070)),
        Duration::from_secs(3),
    )
    .is_ok();
    say("node_reaches_its_service", own);
    say("web_health", &inspect("web")["status"]["health"]["ok"]);
    say(
        "ip_forward",
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap_or_default()
            .trim(),
    );
    if let Ok(o) = Command::new("/usr/sbin/nft")
        .args(["list", "ruleset"])
        .output()
    {
        for l in String::from_utf8_lossy(&o.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&o.stderr).lines())
        {
            println!("nft: {l}");
        }
    }
}

/// Resident memory (KiB) of every process whose argv[0] is `prog`.
fn rss_of(prog: &[u8]) -> (u64, usize) {
    let mut total = 0;
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).next() != Some(prog) {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        n += 1;
    }
    (total, n)
}

/// GET / on `addr` until it answers 200; false after `limit`.
fn until_200(addr: &str, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut head = [0u8; 12];
            if std::io::Read::read_exact(&mut s, &mut head).is_ok() && head.ends_with(b"200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `cargo xtask bench apps`: from `fluxnode app deploy` to the first
/// HTTP 200 from the app, cold (the image not on the node: `rm` of the
/// only app using it lets garbage collection clear the store) and warm
/// (the image here, pinned by another app: no registry round trip, as
/// `podman run` with the image present); then the daemon's memory with
/// 10 apps.
fn bench() {
    let spec = "/etc/fluxnode/bench/hello.toml";
    let keeper = json!({"name": "keeper", "image": "10.0.2.100:5000/fluxnode-bench/hello:1.0",
        "command": ["/bin/busybox", "sleep", "1000000"],
        "resources": {"cpu": 0.05, "memory_mib": 16, "disk_mib": 4, "pids": 4}});
    let run = |_cold: bool| -> Option<f64> {
        let _ = call(&json!({"op": "rm", "name": "hello"}));
        let t0 = Instant::now();
        let out = Command::new("/usr/bin/fluxnode")
            .args(["app", "deploy", spec, "--wait-s", "0", "--json"])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let addr = format!("{}:8080", v["address"].as_str()?);
        until_200(&addr, Duration::from_secs(300)).then(|| t0.elapsed().as_secs_f64())
    };
    for _ in 0..3 {
        match run(true) {
            Some(t) => say("bench_cold_s", format!("{t:.3}")),
            None => say("bench_error", "cold start did not answer"),
        }
    }
    if let Err(e) = call(&json!({"op": "deploy", "spec": keeper})) {
        say("bench_error", e);
    }
    let _ = wait_for("keeper", Duration::from_secs(300), |v| {
        state(v) == "running"
    });
    for _ in 0..5 {
        match run(false) {
            Some(t) => say("bench_warm_s", format!("{t:.3}")),
            None => say("bench_error", "warm start did not answer"),
        }
    }
    let _ = call(&json!({"op": "rm", "name": "hello"}));
    let _ = call(&json!({"op": "rm", "name": "keeper"}));
    std::thread::sleep(Duration::from_secs(2));
    say("bench_appd_rss_kib_0", appd_rss().0);
    for i in 0..10 {
        let spec = json!({"name": format!("idle{i}"), "image": "10.0.2.100:5000/fluxnode-bench/hello:1.0",
            "command": ["/bin/busybox", "sleep", "1000000"],
            "resources": {"cpu": 0.05, "memory_mib": 16, "disk_mib": 4, "pids": 4}});
        if let Err(e) = call(&json!({"op": "deploy", "spec": spec})) {
            say("bench_error", e);
        }
    }
    for i in 0..10 {
        let _ = wait_for(&format!("idle{i}"), Duration::from_secs(300), |v| {
            state(v) == "running"
        });
    }
    std::thread::sleep(Duration::from_secs(5));
    let (rss, threads) = appd_rss();
    say("bench_appd_rss_kib_10", rss);
    say("bench_appd_threads_10", threads);
    let (crun, n) = rss_of(b"/usr/bin/crun");
    say("bench_crun_rss_kib_10", crun);
    say("bench_crun_processes_10", n);
}

fn later_boot() {
    let v = wait_for("web", Duration::from_secs(600), |v| {
        state(v) == "running" && v["status"]["health"]["ok"] == json!(true)
    });
    say("web_after_reboot", state(&v));
    for name in ["spin", "hog", "bomb", "filler", "prober"] {
        let v = wait_for(name, Duration::from_secs(300), |v| state(v) == "running");
        say(&format!("{name}_after_reboot"), state(&v));
    }
}

fn main() {
    // A node service apps must not reach (bound on every address).
    let listener = std::net::TcpListener::bind("0.0.0.0:7070");
    if let Ok(l) = listener {
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let _ = (&c).write_all(b"node-private\n");
            }
        });
    }
    let t0 = Instant::now();
    while !Path::new(SOCKET).exists() && t0.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(250));
    }
    if Path::new("/etc/fluxnode/bench/hello.toml").exists() {
        say("boot", "bench");
        bench();
    } else if Path::new(MARKER).exists() {
        say("boot", "later");
        later_boot();
    } else {
        say("boot", "first");
        first_boot();
    }
    say("done", format!("{:.1}s", t0.elapsed().as_secs_f64()));
}
