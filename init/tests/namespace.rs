//! fluxnode-init as PID 1 of a fresh PID + mount namespace, against real
//! processes: ordering, readiness, restarts, limits, reaping, watchdogs,
//! shutdown, bad config. Needs root (CI is root); prints why it skips if not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use harness::{notify_cmd, sh, Ns};

#[test]
fn dependencies_start_in_order() {
    need_namespaces!();
    let mut ns = Ns::start(
        "order",
        &[
            ("c", sh("echo c up; exec sleep 60", "requires = [\"b\"]")),
            ("b", sh("echo b up; exec sleep 60", "after = [\"a\"]")),
            ("a", sh("sleep 0.3; echo a done", "type = \"oneshot\"")),
            ("z", sh("echo z up; exec sleep 60", "")),
        ],
        "",
    );
    let a = ns.wait_for("a finished", 20);
    let b = ns.wait_for("started b", 20);
    let c = ns.wait_for("started c", 20);
    ns.wait_for("all services ready (4 services,", 20);
    assert!(
        a.at <= b.at && b.at <= c.at,
        "order a < b < c broken:\n{}",
        ns.log()
    );
    // z has no dependencies: it starts without waiting for the oneshot.
    let z = ns.wait_for("started z", 5);
    assert!(z.at < a.at, "z waited for a:\n{}", ns.log());
    ns.signal(libc::SIGTERM);
    assert_eq!(ns.wait_exit(20), 0);
}

#[test]
fn notify_service_gates_its_dependents() {
    need_namespaces!();
    let ns = Ns::start(
        "ready",
        &[
            (
                "db",
                sh(
                    &format!(
                        "sleep 1; {}; exec sleep 60",
                        notify_cmd("READY=1 STATUS=serving")
                    ),
                    "type = \"notify\"",
                ),
            ),
            (
                "app",
                sh("echo app up; exec sleep 60", "requires = [\"db\"]"),
            ),
        ],
        "",
    );
    let started_db = ns.wait_for("started db", 20);
    let ready = ns.wait_for("db is ready", 20);
    let app = ns.wait_for("started app", 20);
    assert!(
        ready.at <= app.at,
        "app started before db was ready:\n{}",
        ns.log()
    );
    assert!(
        ready.at.duration_since(started_db.at) >= Duration::from_millis(900),
        "READY=1 came too early:\n{}",
        ns.log()
    );
    let (code, out) = ns.ctl(&["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let db = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db")
        .unwrap()
        .clone();
    assert_eq!(db["ready"], true);
    assert_eq!(db["status"], "serving");
}

#[test]
fn crash_restarts_with_growing_backoff() {
    need_namespaces!();
    let ns = Ns::start(
        "backoff",
        &[(
            "crashy",
            sh(
                "echo crashing; exit 7",
                "restart = \"on-failure\"\n[backoff]\ninitial_ms = 200\nfactor = 2.0\njitter = 0.0\nmax_ms = 10000\n[start_limit]\nburst = 10\ninterval_s = 60",
            ),
        )],
        "",
    );
    ns.wait_for("(failure 4)", 30);
    let starts: Vec<_> = ns.all("started crashy");
    assert!(starts.len() >= 4, "{}", ns.log());
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_millis())
        .collect();
    // 200, 400, 800 ms between starts (plus process time): each gap at least
    // the delay, and each longer than the one before.
    for (k, g) in gaps.iter().take(3).enumerate() {
        let want = 200u128 << k;
        assert!(
            *g >= want,
            "gap {k} was {g} ms, want >= {want}:\n{}",
            ns.log()
        );
    }
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "backoff not growing {gaps:?}:\n{}",
        ns.log()
    );
    let (_, logs) = ns.ctl(&["logs", "crashy"]);
    assert!(
        logs.lines().filter(|l| *l == "crashing").count() >= 4,
        "{logs}"
    );
}

#[test]
fn start_limit_fails_and_escalates() {
    need_namespaces!();
    let mut ns = Ns::start(
        "limit",
        &[
            (
                "vital",
                sh(
                    "exit 1",
                    "required = true\nfailure_action = \"reboot\"\n[backoff]\ninitial_ms = 10\njitter = 0.0\n[start_limit]\nburst = 3\ninterval_s = 30",
                ),
            ),
            ("bystander", sh("trap 'echo bystander got TERM; exit 0' TERM; while :; do sleep 0.1; done", "")),
        ],
        "",
    );
    ns.wait_for("vital failed: start limit hit: 3 starts within 30 s", 30);
    ns.wait_for("escalation: required service vital failed for good", 5);
    ns.wait_for("stopping bystander", 10);
    ns.wait_for("bystander: bystander got TERM", 10);
    assert_eq!(ns.wait_exit(20), 0, "{}", ns.log());
    assert_eq!(ns.all("started vital").len(), 3, "{}", ns.log());
    ns.wait_for("Reboot requested outside PID 1 of a machine: exiting 0", 1);
}

#[test]
fn a_failure_before_exec_is_reported_with_its_step() {
    need_namespaces!();
    // init does not wait for a child's exec: the step that failed comes
    // back through the report pipe when the child exits, and the service
    // fails like any other exit (here until its start limit).
    let ns = Ns::start(
        "preexec",
        &[(
            "lost",
            sh(
                "exit 0",
                "working_dir = \"/nonexistent/fluxnode-test\"\n[backoff]\ninitial_ms = 10\njitter = 0.0\n[start_limit]\nburst = 2\ninterval_s = 30",
            ),
        )],
        "",
    );
    ns.wait_for(
        "cannot start /bin/sh: changing to the working directory: No such file or directory",
        20,
    );
    ns.wait_for("lost failed: start limit hit: 2 starts within 30 s", 20);
}

#[test]
fn double_forked_orphans_are_reaped() {
    need_namespaces!();
    let ns = Ns::start(
        "orphans",
        &[(
            "forker",
            // Each loop leaves a grandchild whose parent exits at once: it is
            // re-parented to init, which must reap it when it dies.
            sh(
                "for i in 1 2 3 4 5; do ( sleep 0.2 & ) ; done; echo forked; exec sleep 60",
                "",
            ),
        )],
        "",
    );
    ns.wait_for("forker: forked", 20);
    std::thread::sleep(Duration::from_millis(1500));
    let init = ns.init_pid();
    let zombies: Vec<i32> = ns
        .descendants()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                        .unwrap_or(false)
                })
                .unwrap_or(false)
        })
        .collect();
    assert!(
        zombies.is_empty(),
        "zombies {zombies:?} under init {init}:\n{}",
        ns.log()
    );
    // The orphans existed and went: only forker's sleep is left.
    assert_eq!(ns.descendants().len(), 1, "{}", ns.log());
}

#[test]
fn missed_software_watchdog_restarts() {
    need_namespaces!();
    let ns = Ns::start(
        "watchdog",
        &[
            (
                "hung",
                sh(
                    "echo hung starting; exec sleep 60",
                    "watchdog_ms = 300\n[backoff]\ninitial_ms = 10",
                ),
            ),
            (
                "healthy",
                sh(
                    &format!("while :; do {}; sleep 0.1; done", notify_cmd("WATCHDOG=1")),
                    "watchdog_ms = 600\n[backoff]\ninitial_ms = 10",
                ),
            ),
        ],
        "",
    );
    ns.wait_for("hung missed its watchdog (no WATCHDOG=1 within 300 ms)", 20);
    // Restarted after the kill:
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while ns.all("started hung").len() < 2 {
        assert!(std::time::Instant::now() < end, "{}", ns.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        ns.all("healthy missed its watchdog").is_empty(),
        "a pinging service was killed:\n{}",
        ns.log()
    );
    assert_eq!(ns.all("started healthy").len(), 1, "{}", ns.log());
}

#[test]
fn sigterm_stops_in_reverse_order_and_kills_stragglers() {
    need_namespaces!();
    let marker = harness::scratch("marker").join("straggler-got-term");
    let mut ns = Ns::start(
        "shutdown",
        &[
            ("a", sh("exec sleep 60", "")),
            ("b", sh("exec sleep 60", "after = [\"a\"]")),
            (
                "c",
                // Ignores SIGTERM: must be SIGKILLed after its 500 ms timeout.
                sh("trap '' TERM; echo c up; while :; do sleep 0.05; done", "requires = [\"b\"]\n[stop]\ntimeout_ms = 500"),
            ),
            (
                "d",
                // Leaves a straggler outside any service's group that ignores TERM.
                sh(
                    &format!("setsid sh -c \"trap 'echo x > {}' TERM; while :; do sleep 0.05; done\" & echo d up; exec sleep 60", marker.display()),
                    "",
                ),
            ),
        ],
        "",
    );
    ns.wait_for("all services ready (4 services,", 20);
    ns.wait_for("d: d up", 5);
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    ns.signal(libc::SIGTERM);
    assert_eq!(ns.wait_exit(30), 0, "{}", ns.log());
    let took = t.elapsed();
    let pos = |p: &str| {
        ns.lines()
            .iter()
            .position(|l| l.text.contains(p))
            .unwrap_or_else(|| panic!("no {p:?}:\n{}", ns.log()))
    };
    assert!(pos("stopping c") < pos("stopping b"), "{}", ns.log());
    assert!(pos("stopped b") < pos("stopping a"), "{}", ns.log());
    let kill = ns.wait_for("c did not stop within 500 ms; sending SIGKILL", 1);
    let stop_c = ns.wait_for("stopping c", 1);
    let waited = kill.at.duration_since(stop_c.at);
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(3000),
        "timeout honoured? {waited:?}"
    );
    ns.wait_for("terminating remaining processes", 1);
    assert!(
        marker.exists(),
        "the straggler never got SIGTERM:\n{}",
        ns.log()
    );
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

#[test]
fn cgroup_limits_written_or_reason_printed() {
    need_namespaces!();
    let ns = Ns::start(
        "cgroup",
        &[(
            "limited",
            sh(
                "echo up; exec sleep 60",
                "[limits]\nmemory_max = \"64M\"\npids_max = 32\ncpu_max = \"50000 100000\"",
            ),
        )],
        "",
    );
    ns.wait_for("limited: up", 20);
    std::thread::sleep(Duration::from_millis(200));
    let init = ns.init_pid();
    let log = ns.log();
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", ns.descendants()[0])).unwrap();
    // Joining the cgroup needs no controller: it always happens.
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("");
    assert!(
        rel.ends_with("/limited"),
        "service not in its own cgroup: {cg}"
    );
    for (file, want) in [
        ("memory.max", "67108864"),
        ("pids.max", "32"),
        ("cpu.max", "50000 100000"),
    ] {
        let refused = format!("limited: {file}=");
        if let Some(l) = log
            .lines()
            .find(|l| l.contains(&refused) && l.contains("not applied"))
        {
            // The kernel holds this controller elsewhere; init said why.
            assert!(l.contains("controller"), "{l}");
            eprintln!("SKIPPED {file}: the kernel refuses it here; init printed: {l}");
            continue;
        }
        let rel = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let path = format!("/proc/{init}/root/sys/fs/cgroup{rel}/{file}");
        let got = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}\n{log}"));
        assert_eq!(got.trim(), want, "{path}");
    }
}

#[test]
fn bad_service_files_are_reported_and_the_rest_start() {
    need_namespaces!();
    let ns = Ns::start(
        "badcfg",
        &[
            ("good", sh("echo good up; exec sleep 60", "")),
            (
                "badtoml",
                "argv = [\"/bin/true\"\ntype = \"simple\"\n".into(),
            ),
            (
                "unknownkey",
                "argv = [\"/bin/true\"]\n\ncolour = \"blue\"\n".into(),
            ),
            (
                "missingbin",
                "# comment\nargv = [\"/no/such/program\"]\n".into(),
            ),
            ("cyc1", sh("sleep 60", "after = [\"cyc2\"]")),
            ("cyc2", sh("sleep 60", "requires = [\"cyc1\"]")),
        ],
        "",
    );
    ns.wait_for("good: good up", 20);
    let dir = ns.services.display().to_string();
    ns.wait_for(
        &format!("{dir}/unknownkey.toml:3: unknown field `colour`"),
        5,
    );
    ns.wait_for(
        &format!("{dir}/missingbin.toml:2: program /no/such/program is missing"),
        5,
    );
    ns.wait_for(&format!("{dir}/badtoml.toml:"), 5);
    let cyc = ns.wait_for("dependency cycle: cyc1 -> cyc2 -> cyc1", 5);
    assert!(
        cyc.text.contains(&format!("{dir}/cyc1.toml:")),
        "{}",
        cyc.text
    );
    ns.wait_for("all services ready (1 services,", 10);
}

#[test]
fn ctl_stops_starts_and_restarts_a_service() {
    need_namespaces!();
    let mut ns = Ns::start("ctl", &[("web", sh("echo web up; exec sleep 60", ""))], "");
    ns.wait_for("started web", 20);
    let pid = |ns: &Ns| -> serde_json::Value {
        let (code, out) = ns.ctl(&["status", "--json"]);
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["services"][0].clone()
    };
    let first = pid(&ns)["pid"].clone();
    let (code, out) = ns.ctl(&["stop", "web"]);
    assert_eq!((code, out.as_str()), (0, "stopping web\n"));
    ns.wait_for("stopped web", 10);
    assert_eq!(pid(&ns)["state"], "stopped");
    let (code, _) = ns.ctl(&["start", "web"]);
    assert_eq!(code, 0);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while ns.all("started web").len() < 2 {
        assert!(std::time::Instant::now() < end, "{}", ns.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = pid(&ns)["pid"].clone();
    assert_ne!(first, second);
    let (code, _) = ns.ctl(&["restart", "web"]);
    assert_eq!(code, 0);
    while ns.all("started web").len() < 3 {
        assert!(
            std::time::Instant::now() < end + Duration::from_secs(10),
            "{}",
            ns.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(pid(&ns)["pid"], second);
    let (code, out) = ns.ctl(&["logs", "nosuch"]);
    assert_eq!(code, 1);
    assert!(out.contains("no service named \"nosuch\""), "{out}");
    let (code, _) = ns.ctl(&["poweroff"]);
    assert_eq!(code, 0);
    assert_eq!(ns.wait_exit(20), 0, "{}", ns.log());
}

/// An `early` service (net) and one that needs /var (app), with
/// `var_script` standing for stage 1's /var child.
fn early_and_late(name: &str, var_script: &str) -> Ns {
    Ns::start_with_var(
        name,
        &[
            ("net", sh("echo up; exec sleep 60", "early = true")),
            ("app", sh("echo up; exec sleep 60", "")),
        ],
        "",
        var_script,
    )
}

#[test]
fn services_wait_for_var_unless_early() {
    need_namespaces!();
    // The shell child stands for stage 1's /var child: it "mounts" for 1.5 s.
    let mut ns = early_and_late("var", "sleep 1.5");
    let early = ns.wait_for("net: up", 20);
    let var = ns.wait_for("/var is ready", 20);
    let app = ns.wait_for("app: up", 20);
    let all = ns.wait_for("all services ready", 20);
    let log = ns.log();
    assert!(
        early.at < var.at,
        "an early service waited for /var:\n{log}"
    );
    assert!(
        var.at <= app.at,
        "a service started before /var was ready:\n{log}"
    );
    assert!(var.at <= all.at, "ready reported before /var:\n{log}");
    ns.signal(libc::SIGTERM);
    assert_eq!(ns.wait_exit(20), 0, "{log}");
}

#[test]
fn a_failed_var_child_means_reboot_and_its_dependents_never_start() {
    need_namespaces!();
    let mut ns = early_and_late("varfail", "sleep 0.3; exit 1");
    ns.wait_for("/var could not be prepared (exit status 1); rebooting", 20);
    // In a namespace a reboot is an ordered exit 0.
    assert_eq!(ns.wait_exit(20), 0, "{}", ns.log());
    let log = ns.log();
    assert!(log.contains("net: up"), "{log}");
    assert!(
        !log.contains("app: up"),
        "a service that needs /var ran:\n{log}"
    );
    assert!(!log.contains("all services ready"), "{log}");
}
