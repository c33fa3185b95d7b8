//! The daemon's start of boot on temp dirs with a recording host: the
//! first boot of a new version passes its health checks and is recorded
//! as a success once blessed (raising the security minimum when asked);
//! one that fails them is marked bad and the node reboots; a rollback and
//! a fall-back are recorded once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use fluxnode_ota::daemon::{self, DaemonConfig, Host};
use fluxnode_ota::state::{Outcome, Phase, Progress, StateDir};
use fluxnode_ota::system::Paths;
use fluxnode_ota::updater::System;

#[derive(Default)]
struct Recorder {
    ready: Vec<String>,
    reboots: Vec<String>,
}

impl Host for Recorder {
    fn ready(&mut self, status: &str) {
        self.ready.push(status.to_string());
    }
    fn status(&mut self, _: &str) {}
    fn reboot(&mut self, why: &str) {
        self.reboots.push(why.to_string());
    }
}

struct Node {
    _t: tempfile::TempDir,
    dir: PathBuf,
    sys: System,
    state: StateDir,
    paths: Paths,
}

fn node(running: &str, slot: &str, entries: &[&str]) -> Node {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let esp = dir.join("esp");
    std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
    for e in entries {
        std::fs::write(esp.join("EFI/Linux").join(e), b"uki").unwrap();
    }
    let sys = System {
        running_version: running.into(),
        running_slot: slot.into(),
        compatible: "c".into(),
        min_security_version: 0,
        running_root: dir.join("root"),
        running_root_len: 0,
        target_root: dir.join("other"),
        esp,
        blessed: false,
    };
    let state = StateDir::open(&dir.join("state")).unwrap();
    let paths = Paths {
        blessed_marker: dir.join("blessed"),
        ..Paths::default()
    };
    Node {
        _t: t,
        dir,
        sys,
        state,
        paths,
    }
}

fn installed(n: &Node, version: &str, slot: &str) {
    n.state
        .save_progress(&Progress {
            version: version.into(),
            from_version: "0.1.0".into(),
            manifest_sha256: String::new(),
            slot: slot.into(),
            target: n.dir.join("other"),
            phase: Phase::Installed,
            root_done: String::new(),
            started_at: 1,
            downloaded: 1234,
            resumes: 0,
        })
        .unwrap();
}

fn cfg(n: &Node, agent: Vec<String>, raise: Vec<String>) -> DaemonConfig {
    DaemonConfig {
        state_dir: n.state.path().to_path_buf(),
        agent_status: agent,
        raise_command: raise,
        health_timeout_s: 0,
        ..DaemonConfig::default()
    }
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&p, perm).unwrap();
    p.display().to_string()
}

#[test]
fn a_healthy_first_boot_is_a_success_once_blessed_and_raises_the_minimum() {
    let n = node(
        "0.2.0",
        "b",
        &["fluxnode-0.1.0-a+3.efi", "fluxnode-0.2.0-b+2-1.efi"],
    );
    installed(&n, "0.2.0", "b");
    // The manifest of the update in flight asks for a raise.
    let manifest = include_manifest("0.2.0", true);
    std::fs::write(n.state.path().join("manifest.json"), manifest).unwrap();
    let raised = n.dir.join("raised");
    let raise = script(
        &n.dir,
        "raise",
        &format!("echo \"$1\" > {}", raised.display()),
    );
    let agent = script(
        &n.dir,
        "agent",
        r#"echo '{"registry":"https://r","node_id":"n1","last_heartbeat_ms":99999999999999}'"#,
    );
    std::fs::write(
        &n.paths.blessed_marker,
        "/EFI/Linux/fluxnode-0.2.0-b+3.efi\n",
    )
    .unwrap();
    let mut host = Recorder::default();
    daemon::start_of_boot(
        &cfg(&n, vec![agent], vec![raise]),
        &n.state,
        &n.sys,
        &n.paths,
        &mut host,
    );
    assert_eq!(host.reboots, Vec::<String>::new());
    assert_eq!(host.ready.len(), 1, "{:?}", host.ready);
    assert!(host.ready[0].contains("healthy"), "{:?}", host.ready);
    let h = n.state.history().unwrap();
    assert_eq!(h.last().unwrap().outcome, Outcome::Success, "{h:?}");
    assert!(h.last().unwrap().reason.contains("raised to 3"), "{h:?}");
    assert_eq!(std::fs::read_to_string(&raised).unwrap().trim(), "3");
    assert_eq!(n.state.progress().unwrap(), None, "the update is done");
    // Superseded: the other slot's entry is gone, the running one stays.
    let left: Vec<String> = std::fs::read_dir(n.sys.esp.join("EFI/Linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["fluxnode-0.2.0-b+2-1.efi".to_string()]);
}

fn include_manifest(version: &str, raise: bool) -> String {
    use fluxnode_protocol::update::{Chunk, Payload, SlotUki, UpdateManifest, FORMAT};
    let p = |t: &str| Payload {
        target: t.into(),
        size: 1,
        sha256: "00".repeat(32),
        chunks: vec![Chunk {
            len: 1,
            sha256: [0; 32],
        }],
        patches: vec![],
    };
    let m = UpdateManifest {
        format: FORMAT,
        version: version.into(),
        min_version: "0.1.0".into(),
        security_version: 3,
        raise_security_version: raise,
        compatible: "c".into(),
        released_at: 0,
        waves: vec![],
        root: p("root"),
        ukis: vec![SlotUki {
            slot: "b".into(),
            pcr11_sha256: String::new(),
            pcr12_sha256: String::new(),
            pcr9_sha256: String::new(),
            payload: p("uki"),
        }],
    };
    String::from_utf8(m.to_json()).unwrap()
}

#[test]
fn a_first_boot_that_fails_its_checks_is_marked_bad_and_reboots() {
    let n = node(
        "0.2.0",
        "b",
        &["fluxnode-0.1.0-a+3.efi", "fluxnode-0.2.0-b+2-1.efi"],
    );
    installed(&n, "0.2.0", "b");
    let agent = script(
        &n.dir,
        "agent",
        r#"echo '{"registry":"https://r","node_id":null}'"#,
    );
    let mut host = Recorder::default();
    daemon::start_of_boot(
        &cfg(&n, vec![agent], vec![]),
        &n.state,
        &n.sys,
        &n.paths,
        &mut host,
    );
    assert!(host.ready.is_empty(), "never ready: init must not bless it");
    assert_eq!(host.reboots.len(), 1);
    assert!(
        n.sys
            .esp
            .join("EFI/Linux/fluxnode-0.2.0-b+0-3.efi")
            .exists(),
        "marked bad"
    );
    let h = n.state.history().unwrap();
    let last = h.last().unwrap();
    assert_eq!(last.outcome, Outcome::RolledBack);
    assert!(last.reason.contains("not registered"), "{last:?}");
    assert_eq!(last.downloaded, 1234);
    // The next boot runs the old version: the bad entry is this failure,
    // recorded once, not a fall-back.
    let old = Node {
        sys: fluxnode_ota::updater::System {
            running_version: "0.1.0".into(),
            running_slot: "a".into(),
            ..n.sys.clone()
        },
        ..n
    };
    let mut host = Recorder::default();
    daemon::start_of_boot(
        &cfg(&old, vec![], vec![]),
        &old.state,
        &old.sys,
        &old.paths,
        &mut host,
    );
    assert_eq!(
        old.state.history().unwrap().len(),
        1,
        "{:?}",
        old.state.history()
    );
    assert_eq!(host.ready.len(), 1);
}

#[test]
fn a_healthy_first_boot_that_init_never_blesses_is_marked_bad_with_the_reason() {
    let n = node(
        "0.2.0",
        "b",
        &["fluxnode-0.1.0-a+3.efi", "fluxnode-0.2.0-b+2-1.efi"],
    );
    installed(&n, "0.2.0", "b");
    let mut host = Recorder::default();
    let c = DaemonConfig {
        bless_timeout_s: 0,
        ..cfg(&n, vec![], vec![])
    };
    let paths = Paths {
        control_socket: n.dir.join("control.sock"),
        ..n.paths.clone()
    };
    // init's control socket: one answer, a required service never ready.
    let l = std::os::unix::net::UnixListener::bind(&paths.control_socket).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead as _, Write as _};
        let (mut s, _) = l.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).unwrap();
        assert_eq!(line, "status json\n");
        s.write_all(b"ok\n{\"boot_complete\":false,\"shutting_down\":false,\"services\":[{\"name\":\"stuck\",\"state\":\"running\",\"pid\":9,\"ready\":false,\"restarts\":0,\"failures\":0,\"required\":true,\"status\":\"\",\"reason\":null}]}\n").unwrap();
    });
    daemon::start_of_boot(&c, &n.state, &n.sys, &paths, &mut host);
    server.join().unwrap();
    assert_eq!(
        host.ready.len(),
        1,
        "its own checks passed: {:?}",
        host.ready
    );
    assert_eq!(host.reboots.len(), 1, "back to the old version");
    assert!(n
        .sys
        .esp
        .join("EFI/Linux/fluxnode-0.2.0-b+0-3.efi")
        .exists());
    let h = n.state.history().unwrap();
    let last = h.last().unwrap();
    assert_eq!(last.outcome, Outcome::RolledBack);
    assert!(
        last.reason.contains(
            "init did not bless the boot within 0 s: required services not ready: stuck (running)"
        ),
        "{last:?}"
    );
}

#[test]
fn back_on_the_old_version_and_a_fall_back_are_recorded_once() {
    let n = node(
        "0.1.0",
        "a",
        &["fluxnode-0.1.0-a+2-1.efi", "fluxnode-0.2.0-b+0-3.efi"],
    );
    installed(&n, "0.2.0", "b");
    let mut host = Recorder::default();
    let c = cfg(&n, vec![], vec![]);
    daemon::start_of_boot(&c, &n.state, &n.sys, &n.paths, &mut host);
    assert_eq!(host.ready.len(), 1);
    let h = n.state.history().unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].outcome, Outcome::RolledBack);
    assert!(h[0].reason.contains("3 tries"), "{h:?}");
    assert_eq!(n.state.progress().unwrap(), None);
    // Later boots, no progress: the exhausted newer entry is this
    // rollback's, not a fall-back from a blessed version.
    daemon::start_of_boot(&c, &n.state, &n.sys, &n.paths, &mut host);
    daemon::start_of_boot(&c, &n.state, &n.sys, &n.paths, &mut host);
    let h = n.state.history().unwrap();
    assert_eq!(h.len(), 1, "nothing more recorded: {h:?}");
    assert_eq!(host.ready.len(), 3);
    assert!(host.reboots.is_empty());
}

#[test]
fn an_idle_policy_reboots_when_the_agent_says_idle_or_after_its_longest_wait() {
    use fluxnode_ota::api::{Api, Request};
    use fluxnode_ota::daemon::RebootPolicy;
    use std::time::{Duration, Instant};
    let n = node("0.1.0", "a", &["fluxnode-0.1.0-a+3.efi"]);
    let c = DaemonConfig {
        reboot: RebootPolicy::Idle { max_wait_s: 3600 },
        ..cfg(&n, vec![], vec![])
    };
    let api = Api::default();
    let agent = api.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        agent.answer(Request::Idle)
    });
    let mut host = Recorder::default();
    let t0 = Instant::now();
    daemon::wait_and_reboot(&c, &mut host, &api, "0.2.0", Duration::from_secs(30));
    let said = t.join().unwrap();
    assert!(said.contains("rebooting to run 0.2.0"), "{said}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the API woke the wait"
    );
    assert_eq!(host.reboots.len(), 1);
    assert!(host.reboots[0].contains("idle"), "{:?}", host.reboots);
    // A silent agent delays the reboot by max_wait_s, not forever.
    let c = DaemonConfig {
        reboot: RebootPolicy::Idle { max_wait_s: 0 },
        ..cfg(&n, vec![], vec![])
    };
    let mut host = Recorder::default();
    daemon::wait_and_reboot(
        &c,
        &mut host,
        &Api::default(),
        "0.2.0",
        Duration::from_millis(10),
    );
    assert!(
        host.reboots[0].contains("has not said idle in 0 s"),
        "{:?}",
        host.reboots
    );
    // The setting parses.
    let parsed: DaemonConfig = toml::from_str("reboot = { when = \"idle\" }\n").unwrap();
    assert_eq!(parsed.reboot, RebootPolicy::Idle { max_wait_s: 86_400 });
}
