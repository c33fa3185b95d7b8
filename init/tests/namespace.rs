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
        ready.since(&started_db) >= Duration::from_millis(900),
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
fn what_a_service_says_before_ready_is_logged_before_its_ready_line() {
    need_namespaces!();
    // Each service writes a line and sends READY=1 at once: both are
    // waiting when init's poll returns, and the output must win.
    let services: Vec<(String, String)> = (0..8)
        .map(|k| {
            (
                format!("svc{k}"),
                sh(
                    &format!(
                        "echo said-before-ready-{k}; {}; exec sleep 60",
                        notify_cmd("READY=1")
                    ),
                    "type = \"notify\"",
                ),
            )
        })
        .collect();
    let refs: Vec<(&str, String)> = services
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    let ns = Ns::start("order", &refs, "");
    ns.wait_for("all services ready", 20);
    let lines = ns.lines();
    let pos = |p: &str| {
        lines
            .iter()
            .position(|l| l.text.contains(p))
            .unwrap_or_else(|| panic!("no {p:?}:\n{}", ns.log()))
    };
    for k in 0..8 {
        assert!(
            pos(&format!("said-before-ready-{k}")) < pos(&format!("svc{k} is ready")),
            "svc{k}'s line came after its ready line:\n{}",
            ns.log()
        );
    }
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
    // The delays are read off init's own stamps, not off when the lines
    // reached this test (a busy host reads one line late and the next on
    // time, and a 200 ms delay looks like 199).
    assert!(starts.iter().all(|l| l.stamp.is_some()), "{}", ns.log());
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| w[1].since(&w[0]).as_millis())
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
        "cannot start /bin/sh: changing to the working directory (/nonexistent/fluxnode-test): No such file or directory",
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
    let waited = kill.since(&stop_c);
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

/// What the namespace can show of cgroups on any host: the service is
/// born in its own cgroup, and each limit is either written with its exact
/// value or refused with init naming the controller that the host's kernel
/// keeps elsewhere (this project's build machines mount memory, pids and cpu
/// as cgroup v1, so all three are refused there). That the limits really
/// apply is asserted in the appliance's own kernel, by the QEMU test
/// `boot_pid1_root_var_and_services` (memory.max, pids.max, cpu.max).
#[test]
fn cgroup_joined_and_each_limit_written_or_its_refusal_explained() {
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
            // The kernel holds this controller elsewhere (a v1 or hybrid
            // host): init must say which and why.
            let controller = file.split('.').next().unwrap_or(file);
            assert!(
                l.contains(&format!("the {controller} controller is not available"))
                    && l.contains("cgroup v1"),
                "{l}"
            );
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
        "boot_complete_grace_ms = 100",
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
    // A refused file may have been a required service: the boot is never
    // complete, so an update shipping one is never blessed.
    ns.wait_for(
        "service file(s) were refused: the boot will not be marked good",
        5,
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !ns.log().contains("boot complete"),
        "boot completed with refused service files:\n{}",
        ns.log()
    );
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

#[test]
fn a_boot_that_never_completes_reboots_at_its_timeout() {
    need_namespaces!();
    // `stuck` is required and a notify service that never says READY=1:
    // boot-complete never holds. With boot_complete_timeout_s = 1, init
    // names it and reboots in order (in a namespace: an ordered exit 0).
    let mut ns = Ns::start(
        "boottimeout",
        &[
            (
                "stuck",
                sh("exec sleep 60", "type = \"notify\"\nrequired = true"),
            ),
            ("fine", sh("exec sleep 60", "required = true")),
        ],
        "boot_complete_timeout_s = 1\n",
    );
    let line = ns.wait_for("boot not complete within boot_complete_timeout_s = 1 s", 20);
    assert!(
        line.text
            .contains("not ready: stuck (running, not ready); rebooting"),
        "{}",
        ns.log()
    );
    assert_eq!(ns.wait_exit(20), 0, "{}", ns.log());
    assert!(!ns.log().contains("boot complete:"), "{}", ns.log());
    ns.wait_for("Reboot requested outside PID 1 of a machine: exiting 0", 1);
}

// ---- PID 1 under abuse (issue 10, section 2) ------------------------------

/// Runs `ctl status` and returns how long the answer took.
fn timed_status(ns: &Ns) -> Duration {
    let t = std::time::Instant::now();
    let (code, out) = ns.ctl(&["status"]);
    let took = t.elapsed();
    assert_eq!(code, 0, "{out}\n{}", ns.log());
    assert!(out.contains("web "), "{out}");
    took
}

/// Reads a control connection to EOF (within `secs`); what it got and when.
fn read_to_eof(c: &mut std::os::unix::net::UnixStream, secs: u64) -> (String, std::time::Instant) {
    use std::io::Read;
    c.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        std::time::Instant::now(),
    )
}

#[test]
fn silent_clients_do_not_stall_pid1() {
    need_namespaces!();
    let ns = Ns::start("silent", &[("web", sh("exec sleep 60", ""))], "");
    ns.wait_for("all services ready", 20);
    // 50 connections that never say a word (issue 10: before, `ctl status`
    // got no answer within 3 s behind them).
    let mut idle: Vec<std::os::unix::net::UnixStream> = (0..50)
        .map(|_| std::os::unix::net::UnixStream::connect(ns.control_socket()).unwrap())
        .collect();
    let opened = std::time::Instant::now();
    for _ in 0..3 {
        let took = timed_status(&ns);
        assert!(
            took < Duration::from_secs(2),
            "ctl status took {took:?} behind 50 idle clients:\n{}",
            ns.log()
        );
    }
    // None of them is held for long: each is closed at the bound or at its
    // deadline (1 s after accept), never left open.
    for c in &mut idle {
        let (out, at) = read_to_eof(c, 10);
        assert!(
            at.duration_since(opened) < Duration::from_secs(5),
            "an idle client was held {:?}",
            at.duration_since(opened)
        );
        assert!(
            out.is_empty() || out.starts_with("error: no complete request"),
            "{out}"
        );
    }
}

#[test]
fn a_slow_drip_client_is_dropped_at_its_deadline_and_others_are_served() {
    need_namespaces!();
    let ns = Ns::start("drip", &[("web", sh("exec sleep 60", ""))], "");
    ns.wait_for("all services ready", 20);
    let mut drip = std::os::unix::net::UnixStream::connect(ns.control_socket()).unwrap();
    let connected = std::time::Instant::now();
    let mut writer = drip.try_clone().unwrap();
    // "status json\n" one byte every 150 ms: 1.65 s for the whole line,
    // past the 1 s request deadline (a per-read timeout of 200 ms never
    // fired on this).
    let dripping = std::thread::spawn(move || {
        use std::io::Write;
        for b in b"status json\n" {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    for _ in 0..4 {
        let took = timed_status(&ns);
        assert!(
            took < Duration::from_secs(2),
            "ctl status took {took:?} beside a dripping client:\n{}",
            ns.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (out, closed) = read_to_eof(&mut drip, 10);
    let held = closed.duration_since(connected);
    assert!(
        out.starts_with("error: no complete request within 1000 ms"),
        "the drip client got {out:?}"
    );
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(3),
        "the drip client was held {held:?}"
    );
    dripping.join().unwrap();
    // PID 1 is still fine.
    timed_status(&ns);
}

#[test]
fn a_flooding_service_keeps_pid1_memory_bounded() {
    need_namespaces!();
    // 20 services, two of them flooding: short lines as fast as `yes` can
    // (issue 10 measured 54 MiB of RSS from six million of them), and one
    // endless line with no newline at all. They wait for `go`, so PID 1's
    // resident memory is known before the flood.
    let go = harness::scratch("flood-go").join("go");
    let wait = format!("while [ ! -e {} ]; do sleep 0.05; done; ", go.display());
    let mut services: Vec<(String, String)> = (0..18)
        .map(|i| (format!("idle{i:02}"), sh("exec sleep 60", "")))
        .collect();
    services.push((
        "flood".into(),
        sh(&format!("{wait}exec yes 'a short line of output'"), ""),
    ));
    services.push((
        "floodlong".into(),
        sh(&format!("{wait}tr '\\000' x < /dev/zero"), ""),
    ));
    let services: Vec<(&str, String)> = services
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let ns = Ns::start_muted("flood", &services, "", "flood");
    ns.wait_for("all services ready (20 services,", 20);
    // Touch the control paths once, then settle.
    let (code, _) = ns.ctl(&["logs", "flood"]);
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_millis(300));
    let before = ns.init_status_kib("VmRSS");
    std::fs::write(&go, "").unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(4);
    let mut peak_rss = 0;
    while std::time::Instant::now() < end {
        peak_rss = peak_rss.max(ns.init_status_kib("VmRSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = ns.muted();
    // The flood did go through PID 1 (a stalled reader would bound memory too).
    assert!(
        lines > 50_000,
        "only {lines} flood lines came through:\n{}",
        ns.log()
    );
    // ctl still answers promptly under the flood.
    let t = std::time::Instant::now();
    let (code, logs) = ns.ctl(&["logs", "flood"]);
    assert_eq!(code, 0, "{logs}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ctl logs took {:?}",
        t.elapsed()
    );
    // The ring is bounded in bytes (16 KiB by default) and says what it dropped.
    let head = &logs[..logs.len().min(200)];
    assert!(
        logs.starts_with('[') && logs.contains("earlier lines dropped"),
        "{head}"
    );
    assert!(
        logs.len() < 17 * 1024,
        "logs answer of {} bytes",
        logs.len()
    );
    let (_, long) = ns.ctl(&["logs", "floodlong"]);
    assert!(
        long.lines().skip(1).all(|l| l.len() == 4096),
        "a line was not cut at 4096 bytes"
    );
    let hwm = ns.init_status_kib("VmHWM");
    eprintln!(
        "flood: {lines} lines through PID 1; VmRSS {before} KiB before, {peak_rss} KiB peak sampled; VmHWM {hwm} KiB"
    );
    // What the flood may cost: two 16 KiB rings, a 4 KiB partial line,
    // the code of the output path paged in. Before issue 10 it was tens of MiB.
    assert!(
        peak_rss.max(hwm) <= before + FLOOD_GROWTH_KIB,
        "PID 1 grew from {before} KiB to {} KiB under the flood",
        peak_rss.max(hwm)
    );
    // The absolute goal holds for the appliance's build (release); a
    // debug build's code alone is larger (see docs/BENCHMARKS.md).
    if !cfg!(debug_assertions) {
        assert!(hwm <= 4096, "PID 1's peak RSS was {hwm} KiB (goal 4096)");
    }
}

/// How much PID 1's resident memory may grow under a flood, in KiB.
const FLOOD_GROWTH_KIB: u64 = 512;

#[test]
fn restart_always_after_a_clean_exit_keeps_the_base_delay() {
    need_namespaces!();
    // A clean exit is no failure: restart = always brings it back after the
    // base delay (systemd's RestartSec) every time, without growing the
    // backoff. Every start still counts toward the start limit, as with
    // systemd's StartLimitBurst (the second service).
    // Each run stamps its start (ns), from inside the service: the gaps
    // are then free of the jitter of when init's lines reach the test.
    let stamps = harness::scratch("always-stamps").join("starts");
    let ns = Ns::start(
        "always",
        &[
            (
                "clean",
                sh(
                    &format!("date +%s%N >> {}; exit 0", stamps.display()),
                    "restart = \"always\"\n[backoff]\ninitial_ms = 300\nfactor = 2.0\njitter = 0.0\nmax_ms = 10000\n[start_limit]\nburst = 50\ninterval_s = 60",
                ),
            ),
            (
                "limited",
                sh(
                    "exit 0",
                    "restart = \"always\"\n[backoff]\ninitial_ms = 20\njitter = 0.0\n[start_limit]\nburst = 3\ninterval_s = 60",
                ),
            ),
        ],
        "",
    );
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while ns.all("started clean").len() < 6 {
        assert!(std::time::Instant::now() < end, "{}", ns.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let starts: Vec<u128> = loop {
        let s: Vec<u128> = std::fs::read_to_string(&stamps)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if s.len() >= 6 {
            break s;
        }
        assert!(std::time::Instant::now() < end, "{s:?}\n{}", ns.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    // With a growing backoff the gaps would be 300, 600, 1200, 2400 ms.
    for g in &gaps {
        assert!(
            *g >= 300,
            "restarted before the delay: {gaps:?}\n{}",
            ns.log()
        );
    }
    assert!(
        gaps[2] < 1000 && gaps[3] < 1000 && gaps[4] < 1000,
        "backoff grew on clean exits: {gaps:?}\n{}",
        ns.log()
    );
    ns.wait_for(
        "clean exited (exit status 0); restart = always: restarting in 300 ms",
        1,
    );
    assert!(
        ns.all("clean exited (exit status 0); restarting in")
            .is_empty(),
        "{}",
        ns.log()
    );
    assert!(
        ns.all("(failure").is_empty(),
        "a clean exit counted as a failure:\n{}",
        ns.log()
    );
    let (code, out) = ns.ctl(&["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let clean = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "clean")
        .unwrap()
        .clone();
    assert_eq!(clean["failures"], 0, "{clean}");
    assert!(clean["restarts"].as_u64().unwrap() >= 5, "{clean}");
    assert_ne!(clean["state"], "failed", "{clean}");
    ns.wait_for("limited failed: start limit hit: 3 starts within 60 s", 10);
    assert_eq!(ns.all("started limited").len(), 3, "{}", ns.log());
}

#[test]
fn blessing_runs_in_a_child_reaped_by_the_loop() {
    need_namespaces!();
    // An empty tmpfs over /sys/firmware, seen only inside the namespace:
    // no EFI variables, whatever the host has, so the child never looks at
    // the host's real ESP. It finds no boot loader variable, says so, and is
    // reaped like any child while the loop goes on.
    let ns = Ns::start_after(
        "bless",
        &[("vital", sh("exec sleep 60", "required = true"))],
        "boot_complete = \"bless\"\nboot_complete_grace_ms = 100\n",
        "mount -t tmpfs none /sys/firmware",
    );
    let complete = ns.wait_for("boot complete: required services ready for 100 ms", 20);
    let outcome = ns.wait_for("nothing to bless: not booted by systemd-boot", 10);
    assert!(complete.at <= outcome.at, "{}", ns.log());
    assert!(
        ns.all("blessing the boot failed").is_empty(),
        "{}",
        ns.log()
    );
    let (code, out) = ns.ctl(&["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["boot_complete"], true, "{out}");
    // The child is gone (reaped): only the service's process is left.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while ns.descendants().len() != 1 {
        assert!(
            std::time::Instant::now() < end,
            "{:?}\n{}",
            ns.descendants(),
            ns.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn after_a_caught_panic_the_loop_re_derives_what_it_lost() {
    need_namespaces!();
    // Debug builds only: `__lose-exit` kills the service, reaps it and
    // panics before routing its exit, the state a bug could leave behind.
    if !cfg!(debug_assertions) {
        fluxnode_testkit::skip("the __lose-exit seam exists in debug builds only");
        return;
    }
    let ns = Ns::start(
        "panic",
        &[(
            "web",
            sh(
                "echo web up; exec sleep 60",
                "[backoff]\ninitial_ms = 10\njitter = 0.0",
            ),
        )],
        "",
    );
    ns.wait_for("started web", 20);
    let (code, out) = ns.ctl(&["__lose-exit", "web"]);
    // The connection was mid-request when the turn unwound: closed unanswered.
    assert_eq!(code, 1, "{out}");
    ns.wait_for("internal error in the supervisor loop", 5);
    ns.wait_for("web: process", 5);
    ns.wait_for("is gone and its exit status was lost", 5);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while ns.all("started web").len() < 2 {
        assert!(
            std::time::Instant::now() < end,
            "not restarted:\n{}",
            ns.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, out) = ns.ctl(&["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["services"][0]["state"], "running", "{out}");
    assert_eq!(v["services"][0]["restarts"], 1, "{out}");
}

// ---- least privilege (issue 11 §2) ------------------------------------

/// The value of `Name:` in lines `svc: Name:\tvalue` that init printed.
fn status_field(ns: &Ns, svc: &str, field: &str) -> String {
    let line = ns.wait_for(&format!("{svc}: {field}:"), 20);
    line.text
        .split_once(&format!("{field}:"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

const STATUS: &str = "grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status";

#[test]
fn capabilities_and_no_new_privileges_are_least_by_default() {
    need_namespaces!();
    let dir = harness::scratch("caps");
    let node = dir.join("node");
    // A file that is not a module: with CAP_SYS_MODULE the kernel would
    // refuse its contents (ENOEXEC); without it, it refuses the caller
    // first (EPERM). Nothing is ever loaded.
    let fake_ko = dir.join("fake.ko");
    std::fs::write(&fake_ko, b"not a module").unwrap();
    let insmod = ["/usr/sbin/insmod", "/sbin/insmod"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let module_try = match insmod {
        Some(i) => format!(
            "echo module: $({i} {} 2>&1 | sed 's/.*: //')",
            fake_ko.display()
        ),
        None => "echo module: no insmod".into(),
    };
    for (n, text) in [
        (
            "plain",
            sh(
                &format!(
                    "{STATUS}; mknod {} c 1 3 2>/dev/null && echo mknod-done || echo mknod-refused; {module_try}",
                    node.display()
                ),
                "type = \"oneshot\"\nsystem_call_filter = [\"@system-service\", \"@module\"]",
            ),
        ),
        (
            "netlike",
            sh(
                STATUS,
                "type = \"oneshot\"\nuser = \"65534\"\ncapabilities = [\"CAP_NET_ADMIN\", \"CAP_NET_RAW\", \"CAP_NET_BIND_SERVICE\"]",
            ),
        ),
        (
            "oldstyle",
            sh(
                STATUS,
                "type = \"oneshot\"\ncapabilities = [\"CAP_SYS_MODULE\"]\nno_new_privileges = false\nsystem_call_filter = [\"@all\"]",
            ),
        ),
    ] {
        std::fs::write(dir.join("services").join(format!("{n}.toml")), text).unwrap();
    }
    std::fs::write(dir.join("init.toml"), "").unwrap();
    let mut ns = Ns::spawn(dir);
    // Root without capabilities: nothing effective, nothing to regain.
    assert_eq!(status_field(&ns, "plain", "CapEff"), "0000000000000000");
    assert_eq!(status_field(&ns, "plain", "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&ns, "plain", "NoNewPrivs"), "1");
    assert_eq!(status_field(&ns, "plain", "Seccomp"), "2");
    ns.wait_for("plain: mknod-refused", 20);
    let module = ns.wait_for("plain: module: ", 20).text;
    if module.ends_with("Function not implemented") || module.ends_with("no insmod") {
        // A kernel built without modules (some CI hosts) answers ENOSYS
        // whoever asks; the guest kernel has them (tests/tests/boot.rs).
        eprintln!("module loading not checked here: {module}");
    } else {
        assert!(module.ends_with("Operation not permitted"), "{}", ns.log());
    }
    assert!(!node.exists());
    // A user with exactly its three capabilities, ambient so they survive
    // the exec of /bin/sh and grep: 1 << 10 | 1 << 12 | 1 << 13.
    for f in ["CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&ns, "netlike", f), "0000000000003400", "{f}");
    }
    assert_eq!(status_field(&ns, "netlike", "NoNewPrivs"), "1");
    // What a service gets when it asks for it.
    assert_eq!(status_field(&ns, "oldstyle", "CapBnd"), "0000000000010000");
    assert_eq!(status_field(&ns, "oldstyle", "NoNewPrivs"), "0");
    assert_eq!(status_field(&ns, "oldstyle", "Seccomp"), "0");
    ns.signal(libc::SIGTERM);
    assert_eq!(ns.wait_exit(20), 0);
}

#[test]
fn a_forbidden_system_call_kills_the_service_and_says_why() {
    need_namespaces!();
    let ns = Ns::start(
        "seccomp",
        &[
            (
                // mount(2) is not in @system-service.
                "mounter",
                sh(
                    "echo trying; mount -t tmpfs none /mnt; echo survived $?",
                    "restart = \"never\"",
                ),
            ),
            (
                "allowed",
                sh(
                    "mount -t tmpfs none /mnt 2>/dev/null; echo survived $?",
                    "type = \"oneshot\"\nsystem_call_filter = [\"@system-service\", \"@mount\"]",
                ),
            ),
        ],
        "",
    );
    ns.wait_for("mounter: trying", 20);
    // The shell's child (mount) dies of SIGSYS; the shell reports it.
    ns.wait_for("mounter: survived 159", 20);
    ns.wait_for("allowed: survived 32", 20);
    assert!(ns.all("allowed failed").is_empty(), "{}", ns.log());

    // The service itself making the call: init names seccomp.
    let ns2 = Ns::start(
        "seccomp2",
        &[(
            "mounter",
            "argv = [\"/bin/mount\", \"-t\", \"tmpfs\", \"none\", \"/mnt\"]\nrestart = \"never\"\n"
                .to_string(),
        )],
        "",
    );
    let l = ns2.wait_for("mounter failed: was killed by seccomp", 20);
    assert!(
        l.text.contains("signal 31, SIGSYS") && l.text.contains("system_call_filter"),
        "{}",
        ns2.log()
    );
}

#[test]
fn paths_tmp_and_devices_are_private() {
    need_namespaces!();
    let dir = harness::scratch("paths");
    let ro = dir.join("ro");
    let secret_dir = dir.join("secret");
    let secret_file = dir.join("secret.txt");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("inside"), "x").unwrap();
    std::fs::write(&secret_file, "password").unwrap();
    let (ro_s, sd, sf) = (ro.display(), secret_dir.display(), secret_file.display());
    let sandboxed = format!(
        "( echo x > {ro_s}/f ) 2>&1 | sed 's/.*: //'; \
         ls {sd} 2>&1 | sed 's/.*: //'; cat {sf} 2>&1 | sed 's/.*: //'; \
         echo tmp=$(ls -A /tmp | tr '\\n' ' '); touch /tmp/private-marker; \
         echo dev=$(ls /dev | tr '\\n' ' '); echo hi > /dev/null && echo null-writable"
    );
    let extra = format!(
        "type = \"oneshot\"\nafter = [\"before\"]\nread_only_paths = [\"{ro_s}\"]\n\
         inaccessible_paths = [\"{sd}\", \"{sf}\"]\nprivate_tmp = true\ndevice_allow = [\"/dev/null\"]"
    );
    for (n, text) in [
        ("before", sh("touch /tmp/shared-marker; echo wrote", "type = \"oneshot\"")),
        ("boxed", sh(&sandboxed, &extra)),
        (
            "later",
            sh(
                "test -e /tmp/private-marker && echo leaked || echo not-shared; rm -f /tmp/shared-marker",
                "type = \"oneshot\"\nafter = [\"boxed\"]",
            ),
        ),
    ] {
        std::fs::write(dir.join("services").join(format!("{n}.toml")), text).unwrap();
    }
    std::fs::write(dir.join("init.toml"), "").unwrap();
    let mut ns = Ns::spawn(dir);
    ns.wait_for("boxed finished", 20);
    ns.wait_for("later finished", 20);
    let lines: Vec<String> = ns
        .all("boxed: ")
        .into_iter()
        .map(|l| l.text.split_once("boxed: ").unwrap().1.to_string())
        .collect();
    let log = ns.log();
    assert_eq!(lines[0], "Read-only file system", "{log}");
    assert_eq!(lines[1], "Permission denied", "{log}");
    assert_eq!(lines[2], "Permission denied", "{log}");
    // A fresh /tmp: the marker of the service before is not there.
    assert_eq!(lines[3], "tmp=", "{log}");
    // Only the basic nodes, the allowed one and the fd links.
    assert_eq!(
        lines[4], "dev=fd full null random stderr stdin stdout urandom zero",
        "{log}"
    );
    assert_eq!(lines[5], "null-writable", "{log}");
    ns.wait_for("later: not-shared", 5);
    // The files themselves are untouched outside.
    assert!(!ro.join("f").exists());
    ns.signal(libc::SIGTERM);
    assert_eq!(ns.wait_exit(20), 0);
}

// ---- the control and notify sockets (issue 11 §4) ----------------------

fn mode_of(p: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.gid())
}

#[test]
fn the_control_socket_is_private_and_changes_need_root() {
    need_namespaces!();
    let ns = Ns::start("ctlperm", &[("svc", sh("exec sleep 60", ""))], "");
    ns.wait_for("started svc", 20);
    assert_eq!(mode_of(&ns.run).0, 0o700);
    assert_eq!(mode_of(&ns.control_socket()).0, 0o600);
    assert_eq!(mode_of(&ns.notify_dir()).0, 0o711);
    assert_eq!(mode_of(&ns.notify_dir().join("notify.sock")).0, 0o666);
    // Without control_group, another user cannot even connect.
    let (code, out) = ns.ctl_as(65534, 65534, &["status"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    drop(ns);

    // With it, the group's members may look but not touch.
    let mut ns = Ns::start(
        "ctlgroup",
        &[("svc", sh("exec sleep 60", ""))],
        "control_group = \"65534\"\n",
    );
    ns.wait_for("started svc", 20);
    assert_eq!(mode_of(&ns.run), (0o710, 65534));
    assert_eq!(mode_of(&ns.control_socket()), (0o660, 65534));
    let (code, out) = ns.ctl_as(65534, 65534, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("svc"), "{out}");
    let (code, out) = ns.ctl_as(65534, 65534, &["stop", "svc"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("stop refused: only root may change services or power; you are uid 65534"),
        "{out}"
    );
    ns.wait_for("control: refused \"stop svc\" from uid 65534", 5);
    let (code, out) = ns.ctl_as(65534, 65534, &["reboot"]);
    assert_ne!(code, 0, "{out}");
    // Still running; root may stop it.
    let (_, out) = ns.ctl(&["status"]);
    assert!(out.contains("running"), "{out}");
    let (code, out) = ns.ctl(&["stop", "svc"]);
    assert_eq!(code, 0, "{out}");
    ns.wait_for("stopped svc", 10);
    let (code, out) = ns.ctl(&["poweroff"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(ns.wait_exit(20), 0);
}

#[test]
fn notify_is_open_to_every_user_but_only_for_its_own_service() {
    need_namespaces!();
    let dir = harness::scratch("notifyacl");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let pidfile = shared.join("victim.pid");
    let notify = harness::notify_cmd("");
    let nobody = "user = \"65534\"\ntype = \"notify\"";
    for (n, text) in [
        // Not root, and ready by its own message.
        (
            "honest",
            sh(&format!("{notify} READY=1; exec sleep 60"), nobody),
        ),
        // Never says READY itself.
        (
            "victim",
            sh(&format!("echo $$ > {}; exec sleep 60", pidfile.display()), nobody),
        ),
        // Tries to speak for the victim without CAP_SYS_ADMIN: the kernel
        // refuses the forged credentials.
        (
            "liar",
            sh(
                &format!(
                    "while ! test -s {p}; do sleep 0.05; done; {notify} --pid $(cat {p}) READY=1 2>&1 | sed 's/.*: //'; echo liar-done",
                    p = pidfile.display()
                ),
                "type = \"oneshot\"",
            ),
        ),
        // With CAP_SYS_ADMIN the kernel passes the forged pid, but not a
        // forged uid: init refuses it (the victim runs as 65534).
        (
            "forger",
            sh(
                &format!(
                    "while ! test -s {p}; do sleep 0.05; done; {notify} --pid $(cat {p}) READY=1; echo forger-done",
                    p = pidfile.display()
                ),
                "type = \"oneshot\"\ncapabilities = [\"CAP_SYS_ADMIN\"]",
            ),
        ),
    ] {
        std::fs::write(dir.join("services").join(format!("{n}.toml")), text).unwrap();
    }
    std::fs::write(dir.join("init.toml"), "").unwrap();
    let mut ns = Ns::spawn(dir);
    ns.wait_for("honest is ready", 20);
    ns.wait_for("liar: Operation not permitted", 20);
    ns.wait_for("forger-done", 20);
    let l = ns.wait_for("victim: notify claiming to come from its pid", 10);
    assert!(
        l.text
            .contains("sent by uid 0, and victim runs as uid 65534"),
        "{}",
        ns.log()
    );
    assert!(ns.all("victim is ready").is_empty(), "{}", ns.log());
    let (_, out) = ns.ctl(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ready = |name: &str| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["ready"].clone())
    };
    assert_eq!(
        ready("victim"),
        Some(serde_json::Value::Bool(false)),
        "{out}"
    );
    assert_eq!(
        ready("honest"),
        Some(serde_json::Value::Bool(true)),
        "{out}"
    );
    ns.signal(libc::SIGTERM);
    assert_eq!(ns.wait_exit(20), 0);
}
