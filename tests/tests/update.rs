//! The QEMU update tests (issue 13): real OVMF, systemd-boot, the Debian
//! kernel, swtpm, and the update repository served by a real nginx that
//! the guest reaches at 10.0.2.100 (tests/src/update.rs builds the
//! versions and publishes them with the publisher's own code). One test
//! binary: the four independent sequences start together on first use,
//! each in its thread, and each test asserts on what its sequence saw.
//!
//! - update: 0.1.0 checks the repository, installs 0.2.0 into slot b and
//!   reboots; 0.2.0 passes its health checks and is blessed. A second boot
//!   shows `fluxnode-ota status`. Then one byte of 0.2.0's update client in
//!   slot b is flipped: the blessed slot fails (dm-verity restarts it) boot
//!   after boot, and systemd-boot falls back to 0.1.0, which reports it.
//! - bad health: 0.2.1 has a required service that never gets ready; init
//!   never blesses it, the update client's bless timeout marks it bad and
//!   reboots into 0.1.0, which is still blessed and reports why.
//! - anti-rollback: 0.3.0 raises the TPM's minimum security version to 2
//!   once blessed and removes 0.1.0's entries; 0.1.0's UKI put back and
//!   chosen with LoaderEntryOneShot refuses to run (stage 1 FATAL), and the
//!   next boot runs 0.3.0.
//! - power cuts: a chain of seeded power cuts during 0.1.0 → 0.2.0
//!   (`FLUXNODE_OTA_CUTS`, default 6; `FLUXNODE_OTA_SEED` repeats a run).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::Duration;

use fluxnode_tests::shared::Shared;
use fluxnode_tests::update::{self, attempts, versions_booted, Node, World, BOOT};
use fluxnode_tests::{disk, efivars, qemu};

/// What dm-verity's `restart_on_corruption` prints.
const VERITY_RESTART: &str = "reboot: Restarting system with command 'dm-verity device corrupted'";

#[derive(Clone, Debug)]
struct UpdateRun {
    /// Boot 1 (0.1.0, the install, 0.2.0's first boot), boot 2 (0.2.0
    /// again), boot 3 (0.2.0 corrupted, the fall-back to 0.1.0).
    logs: [String; 3],
    /// Entries as flashed, after the update, after the fall-back.
    entries: [Vec<String>; 3],
    /// History after the update, after the fall-back.
    history: [serde_json::Value; 2],
    /// /var's boot count after the update and after the fall-back.
    var_boots: [u64; 2],
    /// Seconds from the first failing boot of the blessed slot to 0.1.0's
    /// services all ready.
    fallback_s: f64,
    /// Seconds of the update in boot 1: first check to 0.2.0 blessed.
    update_s: f64,
}

#[derive(Clone, Debug)]
struct BadRun {
    log: String,
    entries: [Vec<String>; 2],
    history: serde_json::Value,
    /// Seconds from the client's verdict to 0.1.0's services all ready.
    back_s: f64,
}

#[derive(Clone, Debug)]
struct SecureRun {
    logs: [String; 2],
    entries: [Vec<String>; 3],
    history: serde_json::Value,
}

#[derive(Clone, Debug)]
struct CutRun {
    seed: u64,
    report: update::ChainReport,
    lines: Vec<String>,
}

struct Runs {
    update: Shared<Result<UpdateRun, String>>,
    bad: Shared<Result<BadRun, String>>,
    secure: Shared<Result<SecureRun, String>>,
    cuts: Shared<Result<CutRun, String>>,
}

fn skip() -> bool {
    if let Some(why) = qemu::missing_prerequisite() {
        eprintln!("skipped: {why}");
        return true;
    }
    if fluxnode_testkit::nginx::binary().is_none() {
        eprintln!("skipped: nginx is not installed (Debian package nginx)");
        return true;
    }
    false
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let r = Runs {
            update: Shared::new(),
            bad: Shared::new(),
            secure: Shared::new(),
            cuts: Shared::new(),
        };
        let (u, b, s, c) = (
            r.update.handle(),
            r.bad.handle(),
            r.secure.handle(),
            r.cuts.handle(),
        );
        std::thread::spawn(move || u.set(update::world().and_then(|w| update_sequence(&w))));
        std::thread::spawn(move || b.set(update::world().and_then(|w| bad_sequence(&w))));
        std::thread::spawn(move || s.set(update::world().and_then(|w| secure_sequence(&w))));
        std::thread::spawn(move || c.set(update::world().and_then(|w| cut_sequence(&w))));
        r
    })
}

/// Waits for `needle` after byte `from`; the host-side seconds since QEMU started.
fn wait(vm: &mut qemu::Vm, needle: &str, from: usize, t: Duration) -> Result<(usize, f64), String> {
    let at = vm.wait_for_from(needle, from, t)?;
    Ok((at, vm.elapsed()))
}

fn update_sequence(w: &World) -> Result<UpdateRun, String> {
    let mut node = Node::new("update", &w.v1, &w.good.repo)?;
    let flashed = node.entries()?;
    // Boot 1: 0.1.0 finds 0.2.0, installs it, reboots; 0.2.0 is blessed.
    let mut vm = node.start()?;
    let (at, t_check) = wait(&mut vm, "ota: INFO  installing 0.2.0", 0, BOOT)?;
    let (at, _) = wait(&mut vm, "ota: WARN  rebooting", at, BOOT)?;
    let (_, t_done) = wait(&mut vm, "update to 0.2.0 succeeded", at, 2 * BOOT)?;
    let log1 = vm.log();
    vm.power_off(Duration::from_secs(120))?;
    drop(vm);
    let entries_updated = node.entries()?;
    let history1 = node.history()?;
    let boots1 = node
        .var("/lib/fluxnode-probe/boots")?
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    // Boot 2: 0.2.0 again; the marker prints `fluxnode-ota status`.
    let mut vm = node.start()?;
    vm.wait_for("PROBE ota_status=", BOOT)?;
    vm.wait_for("fluxnode-init: all services ready", BOOT)?;
    std::thread::sleep(Duration::from_secs(2));
    let log2 = vm.log();
    vm.power_off(Duration::from_secs(120))?;
    drop(vm);
    // The blessed slot goes bad: one byte of its update client (a required
    // service, read at every boot) flipped in slot b.
    let root_img = w.good.built.dir.join("root_a.img");
    let inner = disk::file_data_offset(&root_img, "/usr/bin/fluxnode-ota")?;
    disk::flip_byte(&node.disk, node.part("root_b")? + inner)?;
    let mut vm = node.start()?;
    let (mut at, _) = wait(&mut vm, "fluxnode-init: stage 1 starting", 0, BOOT)?;
    let t_fail = vm.elapsed();
    for n in 1..=3 {
        at = vm
            .wait_for_from(VERITY_RESTART, at, BOOT)
            .map_err(|e| format!("failing boot {n} of the blessed 0.2.0: {e}"))?;
    }
    let (at, _) = wait(&mut vm, "fell back to 0.1.0 in slot a", at, BOOT)?;
    let (_, t_back) = wait(&mut vm, "fluxnode-init: all services ready", at, BOOT)?;
    vm.wait_for_from("PROBE version=", at, BOOT)?;
    let log3 = vm.log();
    vm.power_off(Duration::from_secs(120))?;
    drop(vm);
    node.var_clean()?;
    let boots3 = node
        .var("/lib/fluxnode-probe/boots")?
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Ok(UpdateRun {
        logs: [log1, log2, log3],
        entries: [flashed, entries_updated, node.entries()?],
        history: [history1, node.history()?],
        var_boots: [boots1, boots3],
        fallback_s: t_back - t_fail,
        update_s: t_done - t_check,
    })
}

fn bad_sequence(w: &World) -> Result<BadRun, String> {
    let mut node = Node::new("update-bad", &w.v1, &w.bad.repo)?;
    let flashed = node.entries()?;
    let mut vm = node.start()?;
    let (at, _) = wait(&mut vm, "ota: WARN  rebooting: to run 0.2.1", 0, BOOT)?;
    let (at, t_verdict) = wait(&mut vm, "0.2.1 failed its health checks", at, 2 * BOOT)?;
    let (_, t_back) = wait(&mut vm, "fluxnode-init: all services ready", at, BOOT)?;
    vm.wait_for_from("PROBE version=", at, BOOT)?;
    // Back on 0.1.0, which knows the version failed here.
    vm.wait_for_from("0.2.1 failed on this node before", at, BOOT)?;
    let log = vm.log();
    vm.power_off(Duration::from_secs(120))?;
    drop(vm);
    Ok(BadRun {
        log,
        entries: [flashed, node.entries()?],
        history: node.history()?,
        back_s: t_back - t_verdict,
    })
}

fn secure_sequence(w: &World) -> Result<SecureRun, String> {
    let mut node = Node::new("update-secure", &w.v1, &w.secure.repo)?;
    let flashed = node.entries()?;
    let mut vm = node.start()?;
    vm.wait_for("update to 0.3.0 succeeded", 3 * BOOT)?;
    let log1 = vm.log();
    vm.power_off(Duration::from_secs(120))?;
    drop(vm);
    let after = node.entries()?;
    // The attacker: 0.1.0's UKI back on the ESP, chosen for the next boot
    // only (what `bootctl set-oneshot` does on a running node).
    let old = "fluxnode-0.1.0-a.efi";
    disk::esp_put_file(
        &node.disk,
        node.part("esp")?,
        &w.v1.dir.join("uki_a.efi"),
        &format!("/EFI/Linux/{old}"),
    )?;
    let put = node.entries()?;
    let vars = node.vars().ok_or("no firmware variables")?.to_path_buf();
    efivars::set_oneshot(&vars, old)?;
    let mut vm = node.start()?;
    let (at, _) = wait(&mut vm, "fluxnode-init: FATAL:", 0, BOOT)?;
    vm.wait_for_from("PROBE version=", at, BOOT)?;
    vm.wait_for_from("fluxnode-init: all services ready", at, BOOT)?;
    let log2 = vm.log();
    vm.power_off(Duration::from_secs(120))?;
    drop(vm);
    Ok(SecureRun {
        logs: [log1, log2],
        entries: [flashed, after, put],
        history: node.history()?,
    })
}

fn cut_sequence(w: &World) -> Result<CutRun, String> {
    let cuts = std::env::var("FLUXNODE_OTA_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed = std::env::var("FLUXNODE_OTA_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(update::clock_seed);
    eprintln!("power cuts: {cuts}, seed {seed} (FLUXNODE_OTA_SEED={seed} repeats them)");
    let mut rng = update::Rng::new(seed);
    let mut lines = Vec::new();
    let report = update::cut_chain(w, 0, cuts, &mut rng, &mut |l| {
        eprintln!("power cuts (seed {seed}): {l}");
        lines.push(l.to_string());
    })
    .map_err(|e| format!("seed {seed}: {e}"))?;
    Ok(CutRun {
        seed,
        report,
        lines,
    })
}

/// An entry `STEM.efi` (no counter) or `STEM+3.efi` (blessed, re-armed,
/// no try used) is among `entries`.
fn blessed(entries: &[String], stem: &str) -> bool {
    entries
        .iter()
        .any(|e| *e == format!("{stem}.efi") || *e == format!("{stem}+3.efi"))
}

fn last_attempt(h: &serde_json::Value) -> serde_json::Value {
    attempts(h).last().cloned().unwrap_or_default()
}

#[test]
fn update_v1_to_v2_over_http_is_blessed_and_var_is_kept() {
    if skip() {
        return;
    }
    let r = runs().update.get().unwrap();
    let log = &r.logs[0];
    // 0.1.0 ran first, then 0.2.0 from slot b.
    assert_eq!(
        versions_booted(log),
        vec!["0.1.0", "0.2.0"],
        "{}",
        tail(log)
    );
    let installed = log
        .lines()
        .find(|l| l.contains("ota: INFO  installed 0.2.0"))
        .expect("the install's report line");
    // The one-version change comes mostly from the running slot: the
    // bytes downloaded are a small part of the payload.
    let (down, total) = {
        let w: Vec<&str> = installed.split_whitespace().collect();
        let i = w.iter().position(|x| *x == "downloaded").unwrap();
        (
            w[i + 1].parse::<u64>().unwrap(),
            w[i + 3].parse::<u64>().unwrap(),
        )
    };
    assert!(
        total > 0 && down * 10 < total,
        "downloaded {down} of {total}: {installed}"
    );
    // Blessed: init says so, and the entry is re-armed without a count used.
    assert!(log.contains("fluxnode-init: boot blessed"));
    assert!(
        r.entries[1]
            .iter()
            .any(|e| e.starts_with("fluxnode-0.2.0-b")),
        "{:?}",
        r.entries
    );
    // 0.1.0's entry is still there and blessed: the fallback.
    assert!(
        blessed(&r.entries[1], "fluxnode-0.1.0-a"),
        "{:?}",
        r.entries
    );
    assert!(
        blessed(&r.entries[1], "fluxnode-0.2.0-b"),
        "{:?}",
        r.entries
    );
    // The history: from, to, bytes, duration, result.
    let last = last_attempt(&r.history[0]);
    assert_eq!(last["from"], "0.1.0", "{last}");
    assert_eq!(last["to"], "0.2.0", "{last}");
    assert_eq!(last["outcome"], "success", "{last}");
    assert_eq!(last["downloaded"].as_u64(), Some(down), "{last}");
    assert!(
        last["ended_at"].as_u64() >= last["started_at"].as_u64(),
        "{last}"
    );
    // /var: 0.1.0's boot and 0.2.0's counted in the same file.
    assert_eq!(r.var_boots[0], 2, "/var carried 0.1.0's count into 0.2.0");
    // `fluxnode-ota status` in the next boot shows the attempt.
    let status: Vec<&str> = r.logs[1]
        .lines()
        .filter_map(|l| l.split_once("PROBE ota_status=").map(|(_, s)| s))
        .collect();
    assert!(
        status
            .iter()
            .any(|l| l.starts_with("0.1.0 -> 0.2.0: success, downloaded")
                && l.contains(&format!("of {total} bytes"))),
        "status: {status:#?}"
    );
    assert_eq!(versions_booted(&r.logs[1]), vec!["0.2.0"]);
    // The daemon's local API answers what the node agent asks.
    let api = r.logs[1]
        .lines()
        .find_map(|l| l.split_once("PROBE ota_api=").map(|(_, s)| s.trim()))
        .expect("the marker asked the local API");
    let api: serde_json::Value = serde_json::from_str(api).unwrap_or_else(|e| panic!("{e}: {api}"));
    assert_eq!(api["node"]["running"], "0.2.0", "{api}");
    assert_eq!(api["node"]["slot"], "b", "{api}");
    assert_eq!(api["waiting_for_reboot"], serde_json::Value::Null, "{api}");
    eprintln!(
        "FIGURE update 0.1.0 -> 0.2.0 under TCG: {:.1} s from the install's start to blessed; downloaded {down} of {total} bytes",
        r.update_s
    );
}

#[test]
fn update_a_blessed_slot_that_goes_bad_falls_back_to_the_other() {
    if skip() {
        return;
    }
    let r = runs().update.get().unwrap();
    let log = &r.logs[2];
    assert_eq!(log.matches(VERITY_RESTART).count(), 3, "{}", tail(log));
    assert_eq!(versions_booted(log), vec!["0.1.0"], "{}", tail(log));
    assert!(
        log.contains("0.2.0 (fluxnode-0.2.0-b+0-3.efi) failed 3 boots in a row; fell back to 0.1.0 in slot a"),
        "{}",
        tail(log)
    );
    let last = last_attempt(&r.history[1]);
    assert_eq!(last["outcome"], "fell_back", "{last}");
    assert_eq!(last["from"], "0.2.0", "{last}");
    assert!(
        r.entries[2].contains(&"fluxnode-0.2.0-b+0-3.efi".to_string()),
        "{:?}",
        r.entries
    );
    assert_eq!(
        r.var_boots[1],
        r.var_boots[0] + 2,
        "/var kept its count through the failures"
    );
    eprintln!(
        "FIGURE a blessed slot gone bad: {:.1} s from its first failing boot to the old slot's services ready (3 tries)",
        r.fallback_s
    );
}

#[test]
fn update_whose_health_fails_goes_back_with_the_reason() {
    if skip() {
        return;
    }
    let r = runs().bad.get().unwrap();
    assert_eq!(
        versions_booted(&r.log),
        vec!["0.1.0", "0.2.1", "0.1.0"],
        "{}",
        tail(&r.log)
    );
    let last = last_attempt(&r.history);
    assert_eq!(last["to"], "0.2.1", "{last}");
    assert_eq!(last["outcome"], "rolled_back", "{last}");
    let reason = last["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("init did not bless the boot within 60 s")
            && reason.contains("required services not ready: stuck"),
        "{last}"
    );
    // 0.1.0 is still blessed, no try used. 0.2.1's entry is spent.
    assert!(
        blessed(&r.entries[1], "fluxnode-0.1.0-a"),
        "{:?}",
        r.entries
    );
    assert!(
        r.entries[1]
            .iter()
            .any(|e| e.starts_with("fluxnode-0.2.1-b+0-")),
        "{:?}",
        r.entries
    );
    // Recorded once: not again as a fall-back.
    assert_eq!(
        attempts(&r.history)
            .iter()
            .filter(|a| a["to"] == "0.2.1" || a["from"] == "0.2.1")
            .count(),
        1,
        "{}",
        r.history
    );
    eprintln!(
        "FIGURE a failed update: {:.1} s from the client's verdict to the old slot's services ready",
        r.back_s
    );
}

#[test]
fn update_anti_rollback_refuses_the_old_version_chosen_by_a_one_shot_entry() {
    if skip() {
        return;
    }
    let r = runs().secure.get().unwrap();
    let last = last_attempt(&r.history);
    assert_eq!(last["to"], "0.3.0", "{last}");
    assert_eq!(last["outcome"], "success", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or("")
            .contains("security minimum raised to 2"),
        "{last}"
    );
    // Superseded entries are gone once 0.3.0 is blessed.
    assert!(
        r.entries[1]
            .iter()
            .all(|e| e.starts_with("fluxnode-0.3.0-b")),
        "{:?}",
        r.entries
    );
    assert!(r.entries[2].contains(&"fluxnode-0.1.0-a.efi".to_string()));
    let log = &r.logs[1];
    assert!(
        log.contains("this slot's security version 1 is below this node's minimum 2"),
        "{}",
        tail(log)
    );
    // Then 0.3.0 ran.
    assert_eq!(versions_booted(log), vec!["0.3.0"], "{}", tail(log));
}

#[test]
fn update_survives_power_cuts_at_seeded_moments() {
    if skip() {
        return;
    }
    let r = runs().cuts.get().unwrap();
    let want = std::env::var("FLUXNODE_OTA_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6usize);
    assert_eq!(r.report.cuts.len(), want, "seed {}: {:#?}", r.seed, r.lines);
    assert!(
        !r.report.outcomes.is_empty()
            && r.report
                .outcomes
                .iter()
                .all(|o| o == "completed" || o == "abandoned"),
        "seed {}: {:?}",
        r.seed,
        r.report
    );
    assert!(
        r.report.var_boots.iter().all(|&b| b >= 1),
        "seed {}: {:?}",
        r.seed,
        r.report
    );
    for l in &r.lines {
        eprintln!("seed {}: {l}", r.seed);
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
