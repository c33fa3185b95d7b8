//! The app daemon's local API against the client that never speaks, the
//! one that floods, the crowd, and requests it must refuse with a reason.
//! A real server on a Unix socket in a temporary directory; no app runs
//! (the QEMU test `tests/tests/apps.rs` runs them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxnode_apps::capacity::Capacity;
use fluxnode_node::appd::api::{self, Client, ClientError, Limits};
use fluxnode_node::appd::manager::Manager;
use fluxnode_node::appd::{Config, Settings};
use serde_json::json;

fn server(dir: &Path, limits: Limits) -> (Arc<Manager>, std::path::PathBuf) {
    let mut cfg = Config::appliance(Settings::default());
    cfg.state_dir = dir.join("state");
    cfg.run_dir = dir.join("run");
    cfg.cgroup_root = dir.join("cgroup");
    std::fs::create_dir_all(&cfg.run_dir).unwrap();
    let cap = Capacity {
        cpu_milli: 1000,
        memory_mib: 256,
        disk_mib: 1024,
        pids: 1000,
    };
    let mgr = Manager::load(cfg.clone(), cap, Some("not in this test".into())).unwrap();
    let sock = cfg.socket();
    api::serve(Arc::clone(&mgr), &sock, limits).unwrap();
    (mgr, sock)
}

fn reply(s: &mut UnixStream) -> serde_json::Value {
    let mut line = Vec::new();
    BufReader::new(s).read_until(b'\n', &mut line).unwrap();
    serde_json::from_slice(&line).unwrap()
}

#[test]
fn ls_and_refusals_name_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let (_m, sock) = server(t.path(), Limits::default());
    let c = Client::new(&sock);
    let v = c.call(&json!({"op": "ls"})).unwrap();
    assert_eq!(v["apps"], json!([]));
    assert_eq!(v["capacity"]["memory_mib"], 256);
    assert_eq!(v["tier"], json!(null));
    // Once the agent holds a certificate, its tier is the cap (Cumulus
    // guarantees more than this machine has: the machine's figures stay).
    let body = json!({"version": 1, "tier": "Cumulus"}).to_string();
    std::fs::write(
        t.path().join("state/tier-certificate.json"),
        json!({"body": body, "signature": "00"}).to_string(),
    )
    .unwrap();
    let v = c.call(&json!({"op": "ls"})).unwrap();
    assert_eq!(v["tier"], "Cumulus");
    assert_eq!(v["capacity"]["memory_mib"], 256);
    match c.call(&json!({"op": "inspect", "name": "web"})) {
        Err(ClientError::Refused(why)) => {
            assert!(
                why.contains("\"web\"") && why.contains("fluxnode app ls"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A spec that does not fit: refused before anything is written.
    let spec = json!({"name": "big", "image": "example.org/big:1",
        "resources": {"cpu": 0.5, "memory_mib": 512, "disk_mib": 10}});
    match c.call(&json!({"op": "deploy", "spec": spec})) {
        Err(ClientError::Refused(why)) => assert!(why.contains("memory"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(!t.path().join("state/apps/big").exists());
    // An invalid one: the field is named.
    let spec = json!({"name": "Big", "image": "example.org/big:1",
        "resources": {"cpu": 0.5, "memory_mib": 64, "disk_mib": 10}});
    match c.call(&json!({"op": "deploy", "spec": spec})) {
        Err(ClientError::Refused(why)) => assert!(why.contains("name"), "{why}"),
        other => panic!("{other:?}"),
    }
    match c.call(&json!({"op": "format-the-disk"})) {
        Err(ClientError::Refused(why)) => assert!(why.starts_with("bad request"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_silent_client_is_answered_and_dropped() {
    let t = tempfile::tempdir().unwrap();
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (_m, sock) = server(t.path(), limits);
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let v = reply(&mut s);
    assert!(
        v["error"].as_str().unwrap().contains("no request within"),
        "{v}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // And the server still answers others.
    assert!(Client::new(&sock).call(&json!({"op": "ls"})).is_ok());
}

#[test]
fn a_flood_is_cut_at_the_limit() {
    let t = tempfile::tempdir().unwrap();
    let (_m, sock) = server(t.path(), Limits::default());
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // 1 MiB without a newline: the server reads at most its limit and
    // answers; the rest of our writes may fail once it has closed.
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..16 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("one JSON line of at most"), "{out:?}");
}

#[test]
fn a_crowd_is_turned_away_not_queued_forever() {
    let t = tempfile::tempdir().unwrap();
    let limits = Limits {
        request_timeout: Duration::from_secs(5),
        max_clients: 2,
    };
    let (_m, sock) = server(t.path(), limits);
    let _a = UnixStream::connect(&sock).unwrap();
    let _b = UnixStream::connect(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let v = reply(&mut c);
    assert!(
        v["error"].as_str().unwrap().contains("too many clients"),
        "{v}"
    );
}

/// The apps an image carries (`/etc/fluxnode/apps.d`) are deployed once:
/// bad files are skipped with the rest still deployed, and an app the
/// operator removed is not brought back by the next start.
#[test]
fn image_apps_are_seeded_once() {
    let t = tempfile::tempdir().unwrap();
    let (m, _sock) = server(t.path(), Limits::default());
    let d = t.path().join("apps.d");
    std::fs::create_dir_all(&d).unwrap();
    let small = "resources = { cpu = 0.25, memory_mib = 32, disk_mib = 8 }\n";
    std::fs::write(
        d.join("10-web.toml"),
        format!("name = \"web\"\nimage = \"example.invalid/web:1\"\n{small}"),
    )
    .unwrap();
    std::fs::write(
        d.join("20-db.json"),
        r#"{"name": "db", "image": "example.invalid/db:1",
            "resources": {"cpu": 0.25, "memory_mib": 32, "disk_mib": 8}}"#,
    )
    .unwrap();
    // Invalid, too large, not a spec: each skipped, none stops the others.
    std::fs::write(d.join("05-bad.toml"), "name = \"Bad Name\"\n").unwrap();
    let huge = format!(
        "name = \"huge\"\nimage = \"example.invalid/h:1\"\n{small}# {}\n",
        "x".repeat(fluxnode_apps::spec::MAX_SPEC_BYTES)
    );
    std::fs::write(d.join("30-huge.toml"), huge).unwrap();
    std::fs::write(d.join("README"), "name = \"readme\"\n").unwrap();

    m.seed(&d);
    let names = |m: &Manager| {
        let mut v: Vec<String> = m.all().iter().map(|a| a.spec.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&m), ["db", "web"]);
    let seeded: Vec<String> =
        serde_json::from_slice(&std::fs::read(t.path().join("state/apps/.seeded")).unwrap())
            .unwrap();
    assert_eq!(seeded, ["web", "db"]);

    // Removed by the operator: the next seeding (the next boot) leaves it.
    m.rm("web").unwrap();
    m.seed(&d);
    assert_eq!(names(&m), ["db"]);
}
