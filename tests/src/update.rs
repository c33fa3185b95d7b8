//! The update tests' world, built once per process: a TUF repository
//! (`fluxnode-image tuf init`'s code) and the versions a node updates to,
//! published into copies of it (`fluxnode-image publish`'s code); a
//! private nginx per sequence serves one copy, reached from the guest at
//! [`UPDATE_HOST`] through slirp's `guestfwd`. Every image bakes the
//! repository's root and an update client configured to check it at once
//! ([`OTA_CONFIG`]).
//!
//! | version | repository | what it is |
//! |---|---|---|
//! | 0.1.0 | (the disk) | what the node runs first, slot a, blessed |
//! | 0.2.0 | `good` | a healthy update (security version 1) |
//! | 0.2.1 | `bad` | a required service that never gets ready |
//! | 0.3.0 | `secure` | security version 2, raises the node's minimum |
//!
//! It also holds the power-cut chains ([`cut_chain`]) that the QEMU test
//! and `cargo xtask torture ota` share.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fluxnode_image::publish::keys::Keystore;
use fluxnode_image::publish::release::{self, PublishOptions};
use fluxnode_image::publish::roles::{self, Expiry, Repo};
use fluxnode_image::publish::trust::{self, InitOptions};
use fluxnode_image::Built;
use fluxnode_testkit::nginx::Nginx;

use crate::disk;
use crate::fixture;
use crate::qemu::{Vm, VmConfig};

/// Where the guest finds the update repository (slirp forwards it).
pub const UPDATE_HOST: &str = "10.0.2.100:80";

/// The update client's settings in the test images: the repository at
/// [`UPDATE_HOST`], checked a second after start, no waves, reboot at
/// once, a failing version given 60 s to be blessed.
pub const OTA_CONFIG: &str = "# The update tests' client (tests/src/update.rs).
repository = \"http://10.0.2.100/\"
first_check_s = 1
check_interval_s = 30
health_timeout_s = 120
bless_timeout_s = 60
ignore_waves = true
reboot = { when = \"now\" }
";

/// One version published for the tests.
#[derive(Debug, Clone)]
pub struct Release {
    /// The version.
    pub version: String,
    /// Its build.
    pub built: Built,
    /// The repository it is the newest version of.
    pub repo: PathBuf,
}

/// Everything the update tests share.
#[derive(Debug, Clone)]
pub struct World {
    /// The scratch directory.
    pub dir: PathBuf,
    /// What the node runs first.
    pub v1: Built,
    /// The healthy update.
    pub good: Release,
    /// The update that never gets healthy.
    pub bad: Release,
    /// The update that raises the security minimum.
    pub secure: Release,
}

/// A line on stderr, for the long steps.
fn say(s: &str) {
    eprintln!("update: {s}");
}

fn write(p: &Path, text: &str) -> Result<(), String> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
}

/// The spec of one test version (written into `dir/spec`).
fn spec(
    world: &Path,
    version: &str,
    secver: u64,
    extra_services: &[&str],
) -> Result<PathBuf, String> {
    let services = fixture::workspace().join("image/services/test");
    let mut s = format!(
        "# An update test version (tests/src/update.rs).\n\
         base = {:?}\n\
         version = {version:?}\n\
         security_version = {secver}\n\
         tuf_root = \"host:{}\"\n\
         [[file]]\nsrc = \"bin:fluxnode-probe\"\ndst = \"/usr/lib/fluxnode/fluxnode-probe\"\n\
         [[file]]\nsrc = \"host:{}\"\ndst = \"/etc/fluxnode/services.d/marker.toml\"\n\
         [[file]]\nsrc = \"host:{}\"\ndst = \"/etc/fluxnode/ota.toml\"\nmode = 0o644\n",
        fixture::workspace()
            .join("image/spec/default.toml")
            .display()
            .to_string(),
        world.join("repo-base/metadata/1.root.json").display(),
        services.join("marker.toml").display(),
        world.join("spec/ota.toml").display(),
    );
    for svc in extra_services {
        s.push_str(&format!(
            "[[file]]\nsrc = \"host:{}\"\ndst = \"/etc/fluxnode/services.d/{svc}\"\n",
            services.join(svc).display()
        ));
    }
    let p = world.join("spec").join(format!("{version}.toml"));
    write(&p, &s)?;
    Ok(p)
}

fn build(world: &Path, version: &str, secver: u64, extra: &[&str]) -> Result<Built, String> {
    let spec = spec(world, version, secver, extra)?;
    let mut o = fixture::options(&format!("update-{version}"), "default.toml");
    o.spec = spec;
    fixture::build(&o)
}

/// Copies the directory `from` to `to` (`cp -a`).
fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(to);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("cp -a {} {} failed", from.display(), to.display()))
    }
}

fn publish(
    world: &Path,
    keys: &Keystore,
    name: &str,
    built: Built,
    v1: &Built,
    raise: bool,
) -> Result<Release, String> {
    let dir = world.join(format!("repo-{name}"));
    copy_dir(&world.join("repo-base"), &dir)?;
    let repo = Repo::new(&dir);
    let opts = PublishOptions {
        build: built.dir.clone(),
        from: vec![v1.dir.clone()],
        min_version: "0.1.0".into(),
        security_version: None,
        raise_security_version: raise,
        waves: Vec::new(),
        released_at: fixture::EPOCH,
        expiry: Expiry::from_now(roles::now()),
        // Fast: the patches' size is `bench ota`'s business.
        patch_level: 3,
    };
    let p = release::publish(&repo, keys, &opts, &mut |l| say(&format!("{name}: {l}"))).map_err(
        |e| {
            format!(
                "publishing {} into {}: {e}",
                built.dir.display(),
                dir.display()
            )
        },
    )?;
    Ok(Release {
        version: p.manifest.version.clone(),
        built,
        repo: dir,
    })
}

fn make_world() -> Result<World, String> {
    fixture::binaries()?;
    let dir = fixture::target_dir().join("fluxnode-tests/update");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let t0 = Instant::now();
    let base = Repo::new(dir.join("repo-base"));
    trust::init_repo(
        &base,
        Some(&dir.join("keys")),
        &InitOptions {
            threshold: 1,
            keys_per_role: 1,
            expiry: Expiry::from_now(roles::now()),
        },
    )
    .map_err(|e| format!("tuf init in {}: {e}", dir.display()))?;
    let keys = Keystore::load(&[dir.join("keys")]).map_err(|e| e.to_string())?;
    write(&dir.join("spec/ota.toml"), OTA_CONFIG)?;
    let v1 = build(&dir, "0.1.0", 1, &[])?;
    let good = build(&dir, "0.2.0", 1, &[])?;
    let bad = build(&dir, "0.2.1", 1, &["stuck.toml"])?;
    let secure = build(&dir, "0.3.0", 2, &[])?;
    let good = publish(&dir, &keys, "good", good, &v1, false)?;
    let bad = publish(&dir, &keys, "bad", bad, &v1, false)?;
    let secure = publish(&dir, &keys, "secure", secure, &v1, true)?;
    say(&format!(
        "4 versions built and published in {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(World {
        dir,
        v1,
        good,
        bad,
        secure,
    })
}

/// The world, built on first use.
pub fn world() -> Result<World, String> {
    static W: OnceLock<Result<World, String>> = OnceLock::new();
    W.get_or_init(make_world).clone()
}

/// A node: a copy of version 1's disk, its firmware variables and TPM
/// kept across boots, and a repository served to it.
#[derive(Debug)]
pub struct Node {
    /// The run directory.
    pub dir: PathBuf,
    /// The disk.
    pub disk: PathBuf,
    /// The image it was flashed with.
    pub built: Built,
    /// Serves the repository.
    pub nginx: Nginx,
    boots: usize,
    vars: Option<PathBuf>,
}

impl Node {
    /// Flashes version 1 into run directory `name`, serving `repo`.
    pub fn new(name: &str, v1: &Built, repo: &Path) -> Result<Node, String> {
        let dir = fixture::run_dir(name);
        let disk = fixture::copy_disk(&v1.image, &dir)?;
        let nginx = Nginx::try_start(repo)
            .map_err(|e| e.to_string())?
            .ok_or("nginx is not installed (Debian package nginx)")?;
        Ok(Node {
            dir,
            disk,
            built: v1.clone(),
            nginx,
            boots: 0,
            vars: None,
        })
    }

    /// Starts the machine (the next boot: its own log directory, the
    /// firmware variables the last one ended with, the same TPM).
    pub fn start(&mut self) -> Result<Vm, String> {
        self.boots += 1;
        let bdir = self.dir.join(format!("boot{}", self.boots));
        std::fs::create_dir_all(&bdir).map_err(|e| e.to_string())?;
        if let Some(v) = &self.vars {
            std::fs::copy(v, bdir.join("OVMF_VARS.fd"))
                .map_err(|e| format!("{}: {e}", v.display()))?;
        }
        self.vars = Some(bdir.join("OVMF_VARS.fd"));
        let mut cfg = VmConfig::new(&self.disk, &bdir);
        cfg.tpm_state = Some(self.dir.join("tpm"));
        cfg.guestfwd = vec![(UPDATE_HOST.to_string(), self.nginx.port())];
        Vm::start(&cfg)
    }

    /// The firmware variables the next boot starts with.
    pub fn vars(&self) -> Option<&Path> {
        self.vars.as_deref()
    }

    /// The byte offset of a partition.
    pub fn part(&self, name: &str) -> Result<u64, String> {
        disk::part_offset(&self.built, name)
    }

    /// The boot entries on the ESP.
    pub fn entries(&self) -> Result<Vec<String>, String> {
        disk::esp_listing(&self.disk, self.part("esp")?)
    }

    /// A file of /var.
    pub fn var(&self, path: &str) -> Result<Option<String>, String> {
        disk::var_read(&self.disk, self.part("data")?, path)
    }

    /// The update client's history on /var (`[]` when there is none).
    pub fn history(&self) -> Result<serde_json::Value, String> {
        match self.var("/lib/fluxnode/ota/history.json")? {
            None => Ok(serde_json::Value::Array(Vec::new())),
            Some(t) => serde_json::from_str::<serde_json::Value>(&t)
                .map_err(|e| format!("history.json: {e}: {t}")),
        }
    }

    /// /var's file system is clean (`e2fsck -fn`).
    pub fn var_clean(&self) -> Result<(), String> {
        disk::var_fsck(&self.disk, self.part("data")?)
    }
}

/// The attempts of a history (`history.json` is `{"attempts": [...]}` or a list).
pub fn attempts(h: &serde_json::Value) -> Vec<serde_json::Value> {
    h.get("attempts")
        .unwrap_or(h)
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A tiny seeded generator (xorshift64*), so a run is repeated from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From a seed (0 is made 1).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[lo, hi)` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// A seed from the clock, for a run that was not given one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// The update log lines the cuts are spread over, in the order they come:
/// a cut's phase is the last of these the serial log shows before it.
pub const PHASES: &[(&str, &str)] = &[
    ("fluxnode-init: stage 1 starting", "boot"),
    ("ota: INFO  at start", "start"),
    ("ota: INFO  installing", "download"),
    ("ota: INFO  root:", "write"),
    ("ota: INFO  installed", "installed"),
    ("ota: WARN  rebooting", "reboot"),
    ("is healthy", "health"),
    ("fluxnode-init: boot blessed", "bless"),
    ("succeeded: blessed", "done"),
];

/// Which update phase a serial log ended in (`firmware` before stage 1).
pub fn phase_of(log: &str) -> &'static str {
    let mut best = (0usize, "firmware");
    for (needle, name) in PHASES {
        if let Some(i) = log.rfind(needle) {
            if i + 1 > best.0 {
                best = (i + 1, name);
            }
        }
    }
    // A boot after the update's reboot is the reboot phase until health.
    if best.1 == "boot" && log.contains("ota: WARN  rebooting") {
        return "reboot";
    }
    best.1
}

/// The versions the marker service printed (`PROBE version=…`), in order.
pub fn versions_booted(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.split_once("PROBE version=")
                .map(|(_, v)| v.trim().to_string())
        })
        .collect()
}

/// One power cut.
#[derive(Debug, Clone)]
pub struct Cut {
    /// Which chain.
    pub chain: usize,
    /// Milliseconds after QEMU started.
    pub at_ms: u64,
    /// The phase the log showed.
    pub phase: &'static str,
}

/// What a chain of cuts ended with.
#[derive(Debug, Clone)]
pub struct ChainReport {
    /// The cuts made.
    pub cuts: Vec<Cut>,
    /// How each node's update ended, in order: `completed` (0.2.0
    /// blessed, recorded as a success) or `abandoned` (0.1.0 running, the
    /// attempt recorded as rolled back). A node is flashed anew after each.
    pub outcomes: Vec<String>,
    /// The boots counted on /var of each node at its end.
    pub var_boots: Vec<u64>,
}

/// How far after a good boot a cut may come: about one uncut update
/// under TCG on 2 busy cores (check, install, reboot, health, blessing).
pub const CUT_WINDOW_MS: u64 = 50_000;

/// Per boot: long, CI has 2 cores, no KVM, and other machines running.
pub const BOOT: Duration = Duration::from_secs(300);

/// How a run's log says the update ended, if it has.
fn ended(log: &str) -> Option<&'static str> {
    let booted = versions_booted(log);
    if log.contains("update to 0.2.0 succeeded") {
        return Some("completed");
    }
    if log.contains("0.2.0 failed on this node before") {
        return Some("abandoned");
    }
    // Completed in an earlier run: this boot runs 0.2.0 with nothing in
    // flight (the client's decision precedes the marker in a boot).
    let last_boot = log
        .rfind("fluxnode-init: stage 1 starting")
        .map_or(log, |i| &log[i..]);
    if booted.last().map(String::as_str) == Some("0.2.0")
        && last_boot.contains("PROBE version=0.2.0")
        && last_boot.contains("ota: INFO  at start: Normal")
    {
        return Some("completed");
    }
    None
}

/// Checks a powered-off node whose update ended `outcome`: /var clean
/// with its boot count, the history agreeing. Returns the boot count.
fn verify_end(node: &Node, chain: usize, outcome: &str) -> Result<u64, String> {
    node.var_clean()
        .map_err(|e| format!("chain {chain}: /var after the cuts: {e}"))?;
    let var_boots: u64 = node
        .var("/lib/fluxnode-probe/boots")?
        .and_then(|s| s.trim().parse().ok())
        .ok_or(format!("chain {chain}: /var lost the boot count"))?;
    let h = node.history()?;
    let all = attempts(&h);
    let last = all
        .iter()
        .rev()
        .find(|a| a["to"] == "0.2.0" || a["from"] == "0.2.0")
        .ok_or(format!("chain {chain}: no attempt recorded: {h}"))?;
    let want = if outcome == "completed" {
        "success"
    } else {
        "rolled_back"
    };
    if last["outcome"] != want {
        return Err(format!(
            "chain {chain}: the update {outcome} but the history says {last}"
        ));
    }
    Ok(var_boots)
}

/// A chain of `cuts` power cuts on nodes that update 0.1.0 → 0.2.0.
/// Each run of the machine is killed (SIGKILL to QEMU: the power cord) at
/// a seeded moment up to [`CUT_WINDOW_MS`] after its boot was good (the
/// first run of a node: after power-on); every run after a cut must first
/// reach all services ready on some slot (a good boot) before it is cut
/// in turn. A node whose update has ended (completed, or cleanly
/// abandoned: recorded as rolled back, 0.1.0 running) is powered off and
/// checked (/var clean under `e2fsck -fn` with its boot count, the
/// history agreeing), then flashed anew. After the last cut the last node
/// runs to its end and is checked the same way. `log` gets one line per
/// cut: its moment and the phase the log showed.
pub fn cut_chain(
    world: &World,
    chain: usize,
    cuts: usize,
    rng: &mut Rng,
    log: &mut dyn FnMut(&str),
) -> Result<ChainReport, String> {
    let name = format!("cuts-{chain}");
    let mut node = Node::new(&name, &world.v1, &world.good.repo)?;
    let mut report = ChainReport {
        cuts: Vec::new(),
        outcomes: Vec::new(),
        var_boots: Vec::new(),
    };
    let mut fresh = true;
    // The last cut came after the node's update had ended.
    let mut cut_after_end = false;
    while report.cuts.len() < cuts {
        let mut vm = node.start()?;
        // The first run of a node is cut from power-on; later ones after
        // a good boot.
        let good_ms = if fresh {
            0
        } else {
            vm.wait_for("fluxnode-init: all services ready", BOOT)
                .map_err(|e| {
                    format!(
                        "chain {chain}: no good boot after cut {}: {e}",
                        report.cuts.len()
                    )
                })?;
            (vm.elapsed() * 1000.0) as u64
        };
        fresh = false;
        if cut_after_end {
            // The node came back good from a cut after its update ended:
            // check the end held, then flash anew.
            let t0 = Instant::now();
            let outcome = loop {
                if let Some(o) = ended(&vm.log()) {
                    break o;
                }
                if t0.elapsed() > BOOT {
                    return Err(format!(
                        "chain {chain}: after cut {} the ended update is not reported; log tail:\n{}",
                        report.cuts.len(),
                        vm.tail(40)
                    ));
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            vm.power_off(Duration::from_secs(120))?;
            drop(vm);
            report.var_boots.push(verify_end(&node, chain, outcome)?);
            report.outcomes.push(outcome.to_string());
            log(&format!(
                "chain {chain}: node {} {outcome}; checked; flashing anew",
                report.outcomes.len()
            ));
            node = Node::new(&name, &world.v1, &world.good.repo)?;
            fresh = true;
            cut_after_end = false;
            continue;
        }
        let at = good_ms + rng.ms(0, CUT_WINDOW_MS);
        loop {
            let now = (vm.elapsed() * 1000.0) as u64;
            // An update that ended before the moment is cut at once.
            if now >= at || ended(&vm.log()).is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis((at - now).min(300)));
        }
        let at_ms = (vm.elapsed() * 1000.0) as u64;
        vm.kill();
        let l = vm.log();
        let phase = phase_of(&l);
        cut_after_end = ended(&l).is_some();
        report.cuts.push(Cut {
            chain,
            at_ms,
            phase,
        });
        log(&format!(
            "chain {chain}: cut {} at {at_ms} ms: {phase} (booted {:?})",
            report.cuts.len(),
            versions_booted(&l)
        ));
    }
    // After the cuts: the last node runs to the end.
    let mut vm = node.start()?;
    vm.wait_for("fluxnode-init: all services ready", BOOT)
        .map_err(|e| format!("chain {chain}: no good boot after the last cut: {e}"))?;
    let t0 = Instant::now();
    let outcome = loop {
        if let Some(o) = ended(&vm.log()) {
            break o;
        }
        if t0.elapsed() > 2 * BOOT {
            return Err(format!(
                "chain {chain}: after the cuts the update neither completed nor was abandoned; history {}; log tail:\n{}",
                node.history().unwrap_or_default(),
                vm.tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    vm.wait_for_from(
        "fluxnode-init: all services ready",
        vm.log()
            .rfind("fluxnode-init: stage 1 starting")
            .unwrap_or(0),
        BOOT,
    )?;
    vm.power_off(Duration::from_secs(120))?;
    drop(vm);
    report.var_boots.push(verify_end(&node, chain, outcome)?);
    report.outcomes.push(outcome.to_string());
    log(&format!(
        "chain {chain}: {} cuts; nodes ended {:?}; /var boots {:?}",
        report.cuts.len(),
        report.outcomes,
        report.var_boots
    ));
    Ok(report)
}
