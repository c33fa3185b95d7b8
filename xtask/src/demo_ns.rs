//! `cargo xtask demo --namespace`: init supervising sample services as PID 1
//! of a fresh PID and mount namespace — the supervision story without a VM:
//! readiness gating, a crash and its restarts with backoff, a status query
//! over the control socket, then an ordered shutdown.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::nsrun::{build_init, scratch, NsInit};

pub fn run() -> Result<()> {
    if !crate::util::is_root() {
        bail!("the namespace demo runs init as PID 1 of a new PID namespace: run it as root");
    }
    println!("==> building fluxnode-init (release)");
    let init = crate::nsrun::stage_binary(&build_init(false)?)?;
    let dir = scratch("demo-ns")?;
    let notify = format!("{} notify", init.display());
    let services = [
        (
            "database",
            format!(
                "argv = [\"/bin/sh\", \"-c\", \"echo warming up the cache; sleep 1.5; {notify} READY=1 STATUS=accepting; echo ready for queries; exec sleep 600\"]\ntype = \"notify\"\nrequired = true\n"
            ),
        ),
        (
            "api",
            "argv = [\"/bin/sh\", \"-c\", \"echo api serving on :8080; exec sleep 600\"]\nrequires = [\"database\"]\nrequired = true\n".to_string(),
        ),
        (
            "flaky",
            "argv = [\"/bin/sh\", \"-c\", \"echo flaky worker starting; sleep 0.3; echo flaky worker crashed >&2; exit 3\"]\nafter = [\"api\"]\n[backoff]\ninitial_ms = 200\nfactor = 2.0\njitter = 0.1\n[start_limit]\nburst = 20\ninterval_s = 60\n".to_string(),
        ),
        (
            "migrate",
            "argv = [\"/bin/sh\", \"-c\", \"echo applying schema migrations; sleep 0.2; echo migrations done\"]\ntype = \"oneshot\"\nafter = [\"database\"]\n".to_string(),
        ),
    ];
    for (name, text) in &services {
        std::fs::write(dir.join("services").join(format!("{name}.toml")), text)?;
    }
    println!(
        "==> starting init as PID 1 of a new PID + mount namespace with {} services:",
        services.len()
    );
    println!("    database (notify: ready after 1.5 s), api (requires database), migrate (oneshot after database),");
    println!("    flaky (crashes every run: restarted with growing backoff)");
    let mut ns = NsInit::start(&init, &dir, true)?;
    let t_db = ns.wait_for("started database", Duration::from_secs(10))?;
    let t_ready = ns.wait_for("database is ready", Duration::from_secs(10))?;
    let t_api = ns.wait_for("started api", Duration::from_secs(10))?;
    if t_api < t_ready {
        bail!("api started before database was ready");
    }
    ns.wait_for("all services ready", Duration::from_secs(10))
        .or_else(|_| ns.wait_for("startup finished", Duration::from_secs(1)))?;
    ns.wait_for("(failure 3)", Duration::from_secs(15))
        .context("flaky should have crashed three times")?;
    println!(
        "==> readiness: api started {:.2} s after database, only once it sent READY=1",
        t_api.duration_since(t_db).as_secs_f64()
    );
    println!("==> `fluxnode-init ctl status` over the control socket:");
    let status = std::process::Command::new(&init)
        .args(["ctl", "--socket"])
        .arg(ns.run.join("control.sock"))
        .arg("status")
        .output()
        .context("running ctl status")?;
    for l in String::from_utf8_lossy(&status.stdout).lines() {
        println!("    {l}");
    }
    if !status.status.success() {
        bail!(
            "ctl status failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    println!("==> SIGTERM to init: ordered shutdown (reverse dependency order)");
    ns.signal(libc::SIGTERM)?;
    let code = ns.wait_exit(Duration::from_secs(30))?;
    let pos = |p: &str| ns.lines.iter().position(|(_, l)| l.contains(p));
    match (pos("stopping api"), pos("stopping database")) {
        (Some(a), Some(d)) if a < d => {}
        _ => bail!("services did not stop in reverse dependency order"),
    }
    if code != 0 {
        bail!("init exited with {code}");
    }
    println!(
        "==> init stopped api before database, killed what was left, and exited 0: demo passed"
    );
    Ok(())
}
