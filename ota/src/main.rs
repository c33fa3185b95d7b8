//! `fluxnode-ota`: the update client's command line, a thin layer over the
//! library.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use fluxnode_lowlevel::log::{DebugSwitch, Labels, LineLogger, Stderr};
use fluxnode_ota::daemon::{self, DaemonConfig, InitHost};
use fluxnode_ota::esp::Esp;
use fluxnode_ota::fetch::{FetchPolicy, Fetcher};
use fluxnode_ota::state::StateDir;
use fluxnode_ota::system::{self, Paths};
use fluxnode_ota::tuf::{self, RepoConfig};
use fluxnode_ota::updater::{self, Options, System};
use fluxnode_protocol::update::{self, NodeFacts, Waves};

static DEBUG: DebugSwitch = DebugSwitch::new(false);

/// fluxnode's update client: checks a signed (TUF) repository for a new
/// version, streams it into the inactive slot verifying every chunk before
/// writing it, and installs its boot entry with systemd-boot's tries.
///
/// Typical use on a node:
///   fluxnode-ota check                 # what is offered, and would it install?
///   fluxnode-ota install               # install the newest version, then reboot
///   fluxnode-ota status                # the update in flight and every attempt
///
/// From a local copy of a repository (a USB stick, a directory):
///   fluxnode-ota install --from /mnt/usb/fluxnode-repo
#[derive(Parser, Debug)]
#[command(name = "fluxnode-ota", version, verbatim_doc_comment)]
struct Cli {
    /// The client's configuration (TOML: repository, trusted_root, state_dir).
    #[arg(long, global = true, default_value = "/etc/fluxnode/ota.toml")]
    config: PathBuf,
    /// What this node is and where its slots are (JSON, see
    /// docs/UPDATES.md); by default read from the running system.
    #[arg(long, global = true)]
    system: Option<PathBuf>,
    /// Debug logging.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Verify the repository's metadata and say what it offers and whether
    /// this node would install it (writes nothing but TUF's datastore).
    Check {
        /// A repository URL or directory instead of the configured one.
        #[arg(long)]
        from: Option<String>,
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Write a version into the inactive slot without making it bootable
    /// (`install` later finishes in seconds).
    Download(InstallArgs),
    /// Write a version into the inactive slot and install its boot entry
    /// with 3 tries; the next boot runs it.
    Install(InstallArgs),
    /// The update in flight, the boot entries, and every attempt.
    Status {
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// The service init starts: health checks on a new version's first
    /// boot, then scheduled checks, installs and reboots (see
    /// docs/UPDATES.md).
    Daemon,
    /// Accept the new version now, without waiting for its health checks
    /// (on its first boot; the daemon then lets init bless the boot).
    Commit,
    /// Go back to the other slot's version: mark this boot's entry bad and
    /// reboot (refused when the other slot has no bootable entry).
    Rollback {
        /// Mark the entry but do not reboot.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Talk to the running daemon's local API (what the node agent uses):
    /// `status` (JSON), `check` (check the repository now), `idle` (the
    /// node is idle: a reboot held by `reboot = { when = "idle" }` goes
    /// ahead), `busy`.
    Api {
        /// status | check | idle | busy
        request: String,
        /// The daemon's socket.
        #[arg(long, default_value = "/run/fluxnode/ota.sock")]
        socket: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct InstallArgs {
    /// A repository URL or directory instead of the configured one.
    #[arg(long)]
    from: Option<String>,
    /// This version instead of the newest.
    #[arg(long)]
    version: Option<String>,
    /// Allow an older version than the running one (never below the
    /// security minimum).
    #[arg(long)]
    allow_downgrade: bool,
    /// Ignore the rollout wave and install now.
    #[arg(long)]
    now: bool,
    /// JSON report on stdout.
    #[arg(long)]
    json: bool,
}

type Config = DaemonConfig;

fn load_config(path: &Path) -> Result<Config> {
    DaemonConfig::read(path).map_err(anyhow::Error::msg)
}

fn load_system(path: Option<&Path>) -> Result<System> {
    match path {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
        }
        None => {
            let found = system::detect(&Paths::default())
                .context("reading this node's slots (pass --system FILE to name them by hand)")?;
            if let Some(n) = &found.tpm_note {
                tracing::warn!("{n}");
            }
            Ok(found.system)
        }
    }
}

fn repo_of(cfg: &Config, from: Option<&str>) -> Result<RepoConfig> {
    let source = from
        .or(cfg.repository.as_deref())
        .context("no repository: set `repository` in the configuration or pass --from URL|DIR")?;
    Ok(RepoConfig::from_source(
        source,
        &cfg.trusted_root,
        &cfg.state_dir.join("tuf"),
    )?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    DEBUG.set(cli.verbose);
    let _ = LineLogger::new("", Labels::Padded, &DEBUG, Stderr).install();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fluxnode-ota: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cfg = load_config(&cli.config)?;
    match cli.cmd {
        Cmd::Check { from, json } => check(&cfg, cli.system.as_deref(), from.as_deref(), json),
        Cmd::Download(a) => install(&cfg, cli.system.as_deref(), &a, false),
        Cmd::Install(a) => install(&cfg, cli.system.as_deref(), &a, true),
        Cmd::Status { json } => status(&cfg, cli.system.as_deref(), json),
        Cmd::Daemon => run_daemon(&cfg),
        Cmd::Commit => {
            let state = StateDir::open(&cfg.state_dir)?;
            fluxnode_ota::state::write_atomic(&state.path().join(daemon::COMMIT_REQUEST), b"1")?;
            println!("commit requested: the daemon accepts this version without waiting for its health checks, and init blesses the boot");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rollback { no_reboot } => rollback(cli.system.as_deref(), no_reboot),
        Cmd::Api { request, socket } => {
            fluxnode_ota::api::Request::parse(&request).map_err(anyhow::Error::msg)?;
            let body = fluxnode_ota::api::request(&socket, &request)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("asking the update daemon at {}", socket.display()))?;
            println!("{body}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn wave_identity(cfg: &Config) -> String {
    cfg.identity()
}

fn check(cfg: &Config, system: Option<&Path>, from: Option<&str>, json: bool) -> Result<ExitCode> {
    let repo = repo_of(cfg, from)?;
    let verified = tuf::load(&repo)?;
    let offered = verified.versions_offered();
    let offer = verified.offer(None)?;
    let m = &offer.manifest;
    // On a node the system is detected; elsewhere (a publisher's machine)
    // there is none, and the answer says so.
    let sys = match system {
        Some(p) => Some(load_system(Some(p))?),
        None => match load_system(None) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("no node here: {e:#}");
                None
            }
        },
    };
    let decision = match &sys {
        Some(s) => {
            let size = std::fs::metadata(&s.target_root)
                .map(|m| m.len())
                .unwrap_or(u64::MAX);
            match update::check_installable(
                m,
                &NodeFacts {
                    running_version: &s.running_version,
                    compatible: &s.compatible,
                    slot_size: size,
                    min_security_version: s.min_security_version,
                },
                false,
            ) {
                Ok(()) => ("installable".to_string(), String::new()),
                Err(r) => (r.code().to_string(), r.to_string()),
            }
        }
        None => (
            "unknown".into(),
            "this is not a fluxnode node (pass --system FILE to ask for one)".into(),
        ),
    };
    let position = update::wave_position(wave_identity(cfg).as_bytes());
    let start_at = Waves(m).start_at(position);
    if json {
        let v = serde_json::json!({
            "metadata_versions": {"root": verified.versions[0], "targets": verified.versions[1],
                "snapshot": verified.versions[2], "timestamp": verified.versions[3]},
            "offered": offered,
            "newest": m.version,
            "decision": decision.0,
            "reason": decision.1,
            "wave_position": position,
            "start_at": start_at,
            "payload_bytes": m.root.size + m.ukis.first().map_or(0, |u| u.payload.size),
        });
        println!("{v:#}");
    } else {
        println!(
            "repository verified (root v{}, targets v{}, snapshot v{}, timestamp v{})",
            verified.versions[0], verified.versions[1], verified.versions[2], verified.versions[3]
        );
        println!("offered: {}", offered.join(", "));
        println!(
            "newest: {} (min_version {}, security version {})",
            m.version, m.min_version, m.security_version
        );
        println!(
            "this node: {}{}",
            decision.0,
            if decision.1.is_empty() {
                String::new()
            } else {
                format!(": {}", decision.1)
            }
        );
        println!("wave: position {position}, may start at {start_at} (unix time)");
    }
    Ok(ExitCode::SUCCESS)
}

fn install(cfg: &Config, system: Option<&Path>, a: &InstallArgs, commit: bool) -> Result<ExitCode> {
    let sys = load_system(system)?;
    let repo = repo_of(cfg, a.from.as_deref())?;
    let state = StateDir::open(&cfg.state_dir)?;
    let verified = tuf::load(&repo)?;
    let offer = verified.offer(a.version.as_deref())?;
    if !a.now && a.from.is_none() {
        let position = update::wave_position(wave_identity(cfg).as_bytes());
        let start = Waves(&offer.manifest).start_at(position);
        let now = fluxnode_ota::state::now();
        if now < start {
            bail!(
                "version {} reaches this node's wave (position {position}) in {} s; pass --now to install anyway",
                offer.manifest.version,
                start - now
            );
        }
    }
    let mut fetch = Fetcher::new(FetchPolicy::default());
    let mut last = std::time::Instant::now();
    let mut report = |what: &str, done: u64, total: u64| {
        if last.elapsed().as_millis() >= 500 || done == total {
            last = std::time::Instant::now();
            eprintln!(
                "fluxnode-ota: {what}: {:.1} of {:.1} MiB ({}%)",
                done as f64 / 1048576.0,
                total as f64 / 1048576.0,
                (done * 100).checked_div(total).unwrap_or(100)
            );
        }
    };
    let opts = Options {
        allow_downgrade: a.allow_downgrade,
        stage_only: !commit,
    };
    let r = match updater::install(&sys, &offer, &state, &mut fetch, &opts, &mut report) {
        Ok(r) => r,
        Err(e) => {
            if a.json {
                let v = serde_json::json!({"ok": false, "code": e.code(), "error": e.to_string(),
                    "slots_untouched": e.before_any_write()});
                println!("{v:#}");
                return Ok(ExitCode::FAILURE);
            }
            return Err(e.into());
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let pct = r.downloaded as f64 * 100.0 / r.payload_bytes.max(1) as f64;
        println!(
            "{} {} into slot {}{} in {:.1} s: downloaded {} of {} bytes ({pct:.2} %); root: {} reused from {}, {} from a patch, {} fetched",
            if commit { "installed" } else { "downloaded" },
            r.version,
            r.slot,
            if r.entry.is_empty() { String::new() } else { format!(" as {}", r.entry) },
            r.duration_ms as f64 / 1000.0,
            r.downloaded,
            r.payload_bytes,
            r.root.from_reference + r.root.from_target,
            r.from,
            r.root.from_patch,
            r.root.from_ranges,
        );
        if commit {
            println!(
                "reboot to run {}: systemd-boot gives it 3 tries, then boots {} again",
                r.version, r.from
            );
        }
    }
    std::io::stdout().flush().ok();
    Ok(ExitCode::SUCCESS)
}

fn status(cfg: &Config, system: Option<&Path>, json: bool) -> Result<ExitCode> {
    let state = StateDir::open(&cfg.state_dir)?;
    let progress = state.progress()?;
    let history = state.history()?;
    // On a node the system is detected; elsewhere (a publisher's machine)
    // there is none, and the answer says so.
    let sys = match system {
        Some(p) => Some(load_system(Some(p))?),
        None => match load_system(None) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("no node here: {e:#}");
                None
            }
        },
    };
    let entries = match &sys {
        Some(s) => Esp::at(&s.esp).entries().unwrap_or_default(),
        None => Vec::new(),
    };
    if json {
        let v = serde_json::json!({
            "running": sys.as_ref().map(|s| serde_json::json!({"version": s.running_version, "slot": s.running_slot, "blessed": s.blessed})),
            "in_flight": progress,
            "entries": entries.iter().map(|e| serde_json::json!({"file": e.file, "version": e.version, "slot": e.slot, "tries_left": e.left, "tries_done": e.done})).collect::<Vec<_>>(),
            "history": history,
        });
        println!("{v:#}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(s) = &sys {
        println!(
            "running {} from slot {} ({})",
            s.running_version,
            s.running_slot,
            if s.blessed {
                "blessed"
            } else {
                "not blessed yet"
            }
        );
    }
    for e in &entries {
        println!(
            "entry {}: version {} slot {}{}",
            e.file,
            e.version,
            e.slot,
            match e.left {
                None => " (blessed)".to_string(),
                Some(0) => " (bad: no tries left)".to_string(),
                Some(l) => format!(" ({l} tries left)"),
            }
        );
    }
    match &progress {
        Some(p) => println!(
            "in flight: {} -> {} into slot {}, phase {:?}, {} bytes downloaded, {} resumes",
            p.from_version, p.version, p.slot, p.phase, p.downloaded, p.resumes
        ),
        None => println!("no update in flight"),
    }
    if history.is_empty() {
        println!("no attempts yet");
    }
    for h in &history {
        let outcome = serde_json::to_value(h.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let bytes = if h.payload_bytes > 0 {
            format!("downloaded {} of {} bytes", h.downloaded, h.payload_bytes)
        } else {
            format!("downloaded {} bytes", h.downloaded)
        };
        let took = if h.ended_at >= h.started_at && h.started_at > 0 {
            format!(", {} s", h.ended_at - h.started_at)
        } else {
            String::new()
        };
        println!(
            "{} -> {}: {outcome}, {bytes}{took}{}",
            h.from,
            h.to,
            if h.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", h.reason)
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_daemon(cfg: &Config) -> Result<ExitCode> {
    let notifier =
        fluxnode_lowlevel::notify::Notifier::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut host = InitHost {
        notify: move |status: &str, ready: bool| {
            if ready {
                notifier.ready(status);
            } else {
                notifier.status(status);
            }
        },
    };
    daemon::run(cfg, &Paths::default(), &mut host)
}

fn rollback(system: Option<&Path>, no_reboot: bool) -> Result<ExitCode> {
    let sys = load_system(system)?;
    let esp = Esp::at(&sys.esp);
    let other = esp
        .entry_of(sys.target_slot())?
        .filter(|e| !e.is_bad())
        .with_context(|| {
            format!(
                "slot {} has no bootable entry: nothing to go back to",
                sys.target_slot()
            )
        })?;
    let running = esp.entry_of(&sys.running_slot)?.with_context(|| {
        format!(
            "slot {} (running) has no entry on the ESP",
            sys.running_slot
        )
    })?;
    let bad = esp.mark_bad(&running)?;
    println!(
        "marked {} bad ({}); the next boot runs {} from slot {}",
        running.file, bad.file, other.version, other.slot
    );
    if !no_reboot {
        // SAFETY: kill(2) with a constant pid and signal: init's ordered reboot.
        unsafe { libc::kill(1, libc::SIGINT) };
    }
    Ok(ExitCode::SUCCESS)
}
