//! Apps end to end (issue 14), on real parts: Debian's docker-registry on
//! the host serves a busybox-static image pushed with skopeo; the
//! appliance (apps-test.toml) pulls it through QEMU's user network
//! (10.0.2.100:5000 → the registry), runs six test apps under crun with
//! their limits, and its in-guest driver reports what happened
//! (`apps: key=value` lines). The host fetches the web app's page through
//! the published port (hostfwd → node port 30080), reboots the machine,
//! and checks that the app came back with its volume.
//!
//! One boot sequence, run once; each test asserts one part of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::OnceLock;
use std::time::Duration;

use fluxnode_tests::fixture;
use fluxnode_tests::qemu::{self, Vm, VmConfig};

/// The apps' in-guest driver must be done within this (a cold pull,
/// six apps, the measurements; under TCG on a loaded 2-core host).
const DRIVER: Duration = Duration::from_secs(1200);

#[derive(Debug, Clone)]
struct Run {
    /// `apps:` values of the first boot.
    first: BTreeMap<String, Vec<String>>,
    /// And of the second.
    second: BTreeMap<String, Vec<String>>,
    /// The published page, first boot.
    page: String,
    /// data/boots.txt through the published port, after each boot.
    boots: [String; 2],
    /// The serial log of both boots.
    log: String,
}

fn values(log: &str, from: usize) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in log[from..].lines() {
        if let Some(rest) = l.split("apps: ").nth(1) {
            if let Some((k, v)) = rest.split_once('=') {
                out.entry(k.trim().to_string())
                    .or_default()
                    .push(v.trim().to_string());
            }
        }
    }
    out
}

/// GET `path` from 127.0.0.1:`port`; the body.
fn get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: node\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no HTTP reply: {text:?}"))?;
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(format!("GET {path}: {head}"));
    }
    Ok(body.to_string())
}

/// GET with retries: slirp's forwarded port answers once the app does.
fn get_retry(port: u16, path: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..30 {
        match get(port, path) {
            Ok(b) => return Ok(b),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Err(last)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn sequence() -> Result<Run, String> {
    if let Some(why) = qemu::missing_prerequisite() {
        fluxnode_testkit::skip(&why);
        return Err(format!("skipped: {why}"));
    }
    let reg = fluxnode_testkit::oci_registry::OciRegistry::start()
        .ok_or("docker-registry is not installed")?;
    let work = fixture::run_dir("apps-oci");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    fluxnode_testkit::oci_registry::push_busybox(
        &reg,
        "fluxnode-test/busybox:1.0",
        &["/bin/busybox", "sh"],
        &work,
    )?;
    let built = fixture::apps_image()?;
    let dir = fixture::run_dir("apps");
    let disk = fixture::copy_disk(&built.image, &dir)?;
    // Room for the node's 1 GiB reserve and the apps.
    fixture::grow_disk(&disk, 2 << 30)?;
    let web = free_port()?;
    let cfg = |name: &str| VmConfig {
        guestfwd: vec![("10.0.2.100:5000".into(), reg.port())],
        hostfwd: vec![(web, 30080)],
        mem_mib: 1024,
        ..VmConfig::new(&disk, &dir.join(name))
    };
    let mut vm = Vm::start(&cfg("boot1"))?;
    vm.wait_for("apps: done=", DRIVER)
        .map_err(|e| format!("first boot: {e}\n{}", vm.tail(80)))?;
    let page = get_retry(web, "/")?;
    let boots1 = get_retry(web, "/data/boots.txt")?;
    let log1 = vm.log();
    let first = values(&log1, 0);
    vm.power_off(Duration::from_secs(120))?;
    let mut vm = Vm::start(&cfg("boot2"))?;
    vm.wait_for("apps: done=", DRIVER)
        .map_err(|e| format!("second boot: {e}\n{}", vm.tail(80)))?;
    let boots2 = get_retry(web, "/data/boots.txt")?;
    let log2 = vm.log();
    let second = values(&log2, 0);
    let _ = vm.power_off(Duration::from_secs(120));
    Ok(Run {
        first,
        second,
        page,
        boots: [boots1, boots2],
        log: format!("{log1}\n----- second boot -----\n{log2}"),
    })
}

fn run() -> Run {
    static RUN: OnceLock<Result<Run, String>> = OnceLock::new();
    match RUN.get_or_init(sequence) {
        Ok(r) => r.clone(),
        Err(e) => panic!("the apps boot sequence failed: {e}"),
    }
}

fn one<'a>(v: &'a BTreeMap<String, Vec<String>>, k: &str, log: &str) -> &'a str {
    match v.get(k).and_then(|x| x.last()) {
        Some(s) => s,
        None => panic!("no `apps: {k}=` line; console:\n{}", tail(log)),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
}

fn num(s: &str) -> f64 {
    s.trim_matches('"').parse().unwrap_or(f64::NAN)
}

#[test]
fn apps_deploy_from_a_registry_and_serve_on_the_published_port() {
    let r = run();
    for app in [
        "10-web",
        "20-spin",
        "30-hog",
        "40-bomb",
        "50-filler",
        "60-prober",
    ] {
        let v = one(&r.first, &format!("deploy_{app}"), &r.log);
        assert!(v.starts_with("exit status: 0"), "deploy {app}: {v}");
    }
    assert!(
        r.page.contains("hello from a fluxnode app"),
        "page: {:?}",
        r.page
    );
    assert_eq!(one(&r.first, "web_health", &r.log), "true");
}

#[test]
fn apps_come_back_after_a_reboot_with_their_volume() {
    let r = run();
    assert_eq!(one(&r.second, "boot", &r.log), "later");
    assert_eq!(one(&r.second, "web_after_reboot", &r.log), "running");
    for app in ["spin", "hog", "bomb", "filler", "prober"] {
        assert_eq!(
            one(&r.second, &format!("{app}_after_reboot"), &r.log),
            "running",
            "{app}"
        );
    }
    let before: Vec<&str> = r.boots[0].lines().collect();
    let after: Vec<&str> = r.boots[1].lines().collect();
    assert!(!before.is_empty(), "boots.txt: {:?}", r.boots);
    assert!(
        after.len() > before.len() && after.starts_with(&before),
        "the volume keeps what the first boot wrote and gains a line: {:?}",
        r.boots
    );
}

#[test]
fn apps_cpu_is_held_to_the_limit() {
    let r = run();
    let used = num(one(&r.first, "spin_cores", &r.log));
    let limit = num(one(&r.first, "spin_limit", &r.log));
    assert_eq!(limit, 0.5);
    assert!(
        (used - limit).abs() <= 0.1 * limit,
        "spin used {used} cores with {limit} allowed"
    );
}

#[test]
fn apps_memory_hog_is_oom_killed_in_its_own_cgroup() {
    let r = run();
    assert!(num(one(&r.first, "hog_oom_kills", &r.log)) >= 1.0);
    // dd was killed (SIGKILL: 137), the app's shell lived on.
    let logs = r.first.get("hog_log").cloned().unwrap_or_default();
    assert!(
        logs.iter().any(|l| l.contains("hog-dd-exit=137")),
        "{logs:?}"
    );
    assert_eq!(one(&r.first, "hog_state", &r.log), "running");
    // The node went on: the driver finished and reported, PID 1 is fine.
    assert!(!r.log.contains("Kernel panic"));
    assert!(!r.log.contains("fluxnode-init: FATAL"));
}

#[test]
fn apps_fork_bomb_stops_at_pids_max() {
    let r = run();
    assert!(num(one(&r.first, "bomb_pids_refused", &r.log)) >= 1.0);
    let current = num(one(&r.first, "bomb_pids_current", &r.log));
    let limit = num(one(&r.first, "bomb_pids_limit", &r.log));
    assert!(current <= limit && current >= 1.0, "{current} of {limit}");
}

#[test]
fn apps_disk_quota_refuses_writes_past_the_limit() {
    let r = run();
    let logs = r.first.get("filler_log").cloned().unwrap_or_default();
    let refusals = logs
        .iter()
        .filter(|l| l.contains("Disk quota exceeded"))
        .count();
    assert_eq!(refusals, 2, "the app's layer and its volume: {logs:?}");
    let used = num(one(&r.first, "filler_used_bytes", &r.log));
    let limit = num(one(&r.first, "filler_limit_bytes", &r.log));
    assert_eq!(limit, (16u64 << 20) as f64);
    assert!(used <= limit, "{used} of {limit}");
    assert!(used >= limit * 0.9, "it did fill up to the limit: {used}");
}

#[test]
fn apps_cannot_reach_the_node_or_each_other() {
    let r = run();
    let seen: BTreeMap<&str, &str> = r
        .first
        .get("prober")
        .into_iter()
        .flatten()
        .filter_map(|l| l.split_once('='))
        .collect();
    for k in [
        "node-by-bridge",
        "node-by-address",
        "web-unpublished",
        "web-by-bridge",
        "socket-/run/fluxnode/control.sock",
        "socket-/run/appd/api.sock",
        "socket-/run/fluxnode-ota/ota.sock",
        "userns",
    ] {
        assert_eq!(seen.get(k), Some(&"closed"), "{k}: {seen:?}");
    }
    // The controls: the app does reach the network, and the node reaches
    // its own service.
    assert_eq!(seen.get("outbound"), Some(&"open"), "{seen:?}");
    assert_eq!(one(&r.first, "node_reaches_its_service", &r.log), "true");
}
