//! `fluxnode`: the node daemon (agent) and the operator's CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use fluxnode_lowlevel::log::{DebugSwitch, Labels, LineLogger, Stderr};
use fluxnode_node::agent::{self, Agent, Config};
use fluxnode_node::client::RegistryClient;
use fluxnode_node::state::StateDir;
use fluxnode_node::status;

static DEBUG: DebugSwitch = DebugSwitch::new(false);

/// The fluxnode node: proves this machine's tier to the registry and
/// answers "is my node ranked, and why not?".
///
/// On the appliance, init starts `fluxnode agent` after the network is up;
/// operators run `fluxnode status`.
#[derive(Parser, Debug)]
#[command(name = "fluxnode", version)]
struct Cli {
    /// The agent's state directory (node key, AK, state, certificate).
    #[arg(long, global = true, default_value = "/var/lib/fluxnode")]
    state_dir: PathBuf,
    /// Debug logging.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs the agent: registers, attests every 6 h and on each boot, sends heartbeats.
    ///
    /// The registry and its CA come from --config (baked into the image)
    /// unless given here. With no registry configured the agent says so and
    /// exits 0: an image built without one proves nothing to anyone.
    Agent {
        /// The agent's configuration (TOML: registry, ca, tcti, interval_h, ota_socket).
        #[arg(long, default_value = "/etc/fluxnode/node.toml")]
        config: PathBuf,
        /// The registry, https://host:port (overrides the config).
        #[arg(long)]
        registry: Option<String>,
        /// The registry's CA certificate (PEM), pinned (overrides the config).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// TPM TCTI (overrides the config).
        #[arg(long)]
        tcti: Option<String>,
        /// Directory on the disk to benchmark (default: the state directory).
        #[arg(long)]
        bench_dir: Option<PathBuf>,
        /// Hours between sessions (overrides the config).
        #[arg(long)]
        interval_h: Option<f64>,
        /// Run one session (registering first if needed), print the verdict and exit.
        #[arg(long)]
        once: bool,
    },
    /// Is this node ranked, and why not: tier, figures against thresholds,
    /// last verdict and its reason, next session, registry reachability, uptime.
    Status {
        /// JSON for machines.
        #[arg(long)]
        json: bool,
        /// The agent's configuration (for the registry's CA).
        #[arg(long, default_value = "/etc/fluxnode/node.toml")]
        config: PathBuf,
        /// Do not ask the registry; show what the agent last recorded.
        #[arg(long)]
        offline: bool,
        /// Wait up to this many seconds for the agent's verdict of this
        /// boot before printing (for scripts that run right after boot).
        #[arg(long, default_value_t = 0)]
        wait_s: u64,
    },
    /// Apps on this node: deploy, list, inspect, logs, stop, start, rm
    /// (through the app daemon), and check a spec or pull an image.
    #[command(subcommand)]
    App(AppCmd),
    /// Runs the app daemon (the `appd` service): keeps the placed apps
    /// running, isolated and within their limits, and serves the local API
    /// on /run/appd/api.sock.
    Appd {
        /// Settings (TOML: insecure_registries).
        #[arg(long, default_value = "/etc/fluxnode/appd.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum AppCmd {
    /// Checks an app spec (TOML or JSON; `-` reads stdin) and whether it
    /// fits on this node beside the apps already placed. Says which field
    /// is wrong, or which resource is short and by how much. Exit 0: it
    /// would be accepted; 2: refused.
    Check {
        /// The spec file.
        spec: PathBuf,
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Pulls an image into the node's store (/var/lib/fluxnode/oci),
    /// verifying every byte, resuming what an earlier pull left.
    Pull {
        /// The image: [REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST].
        image: String,
        /// Reach this registry (host:port) over plain HTTP (a local test
        /// registry); repeatable.
        #[arg(long = "insecure-registry")]
        insecure: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Places an app (TOML or JSON spec; `-` reads stdin) and starts it,
    /// replacing an app of the same name (its volumes are kept). Waits
    /// until it runs (and passes its first health check, if it has one),
    /// showing the pull's progress. Exit 2: refused or it did not come up.
    Deploy {
        /// The spec file.
        spec: PathBuf,
        /// Seconds to wait for the app to run; 0 returns at once.
        #[arg(long, default_value_t = 300)]
        wait_s: u64,
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Lists the apps: state, restarts, address, ports.
    Ls {
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// One app in detail: status, health, the kernel's counters (OOM
    /// kills, refused forks, CPU), disk use against its quota.
    Inspect {
        /// The app.
        name: String,
        /// JSON for machines (the default is JSON too, indented).
        #[arg(long)]
        json: bool,
    },
    /// An app's output (the last lines; -f follows).
    Logs {
        /// The app.
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// Stops an app; it stays stopped across reboots until started.
    Stop {
        /// The app.
        name: String,
    },
    /// Starts a stopped app.
    Start {
        /// The app.
        name: String,
    },
    /// Removes an app with its writable layer and its volumes.
    Rm {
        /// The app.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    DEBUG.set(cli.verbose);
    let _ = LineLogger::new("", Labels::Padded, &DEBUG, Stderr).install();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fluxnode: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `/etc/fluxnode/node.toml`: where the registry is. Baked into the image
/// with the registry's CA.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeConfig {
    /// `https://host:port`; none: the agent has nothing to do.
    registry: Option<String>,
    /// The registry's CA (PEM).
    #[serde(default = "default_ca")]
    ca: PathBuf,
    /// TPM TCTI.
    #[serde(default = "default_tcti")]
    tcti: String,
    /// Hours between sessions.
    #[serde(default = "default_interval")]
    interval_h: f64,
    /// The update client's local API, told when the node is busy or idle;
    /// `""`: tell nothing.
    #[serde(default = "default_ota_socket")]
    ota_socket: PathBuf,
}

fn default_ca() -> PathBuf {
    "/etc/fluxnode/registry-ca.pem".into()
}
fn default_tcti() -> String {
    fluxnode_hal::tpm::DEFAULT_TCTI.into()
}
fn default_ota_socket() -> PathBuf {
    fluxnode_node::ota_link::DEFAULT_SOCKET.into()
}
fn default_interval() -> f64 {
    6.0
}

impl NodeConfig {
    /// Reads the file; a missing file is an empty configuration.
    fn load(path: &std::path::Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Agent {
            config,
            registry,
            ca,
            tcti,
            bench_dir,
            interval_h,
            once,
        } => {
            let file = NodeConfig::load(&config)?;
            let Some(registry) = registry.or(file.registry) else {
                tracing::info!("no registry configured ({} has none, no --registry): nothing to prove to; exiting", config.display());
                return Ok(ExitCode::SUCCESS);
            };
            let ca = ca.unwrap_or(file.ca);
            let ca_pem = std::fs::read(&ca)
                .with_context(|| format!("reading the registry CA {}", ca.display()))?;
            let interval_h = interval_h.unwrap_or(file.interval_h);
            if !(interval_h.is_finite() && interval_h > 0.0) {
                anyhow::bail!(
                    "the session interval must be a positive number of hours, not {interval_h}"
                );
            }
            let interval = Duration::from_secs_f64(interval_h * 3600.0);
            let cfg = Config {
                registry,
                ca_pem,
                bench_dir: bench_dir.unwrap_or_else(|| cli.state_dir.clone()),
                state_dir: cli.state_dir.clone(),
                tcti: tcti.unwrap_or(file.tcti),
                session_interval: interval,
                jitter: interval / 12,
                retry_refused: Duration::from_secs(3600).min(interval),
                heartbeat: Duration::from_secs(60),
                image: agent::image_info(),
                boot_id: agent::boot_id(),
                event_log: Some(fluxnode_hal::tpm::eventlog::DEFAULT_PATH.into()),
                ota_socket: Some(file.ota_socket).filter(|p| !p.as_os_str().is_empty()),
            };
            let signals =
                fluxnode_lowlevel::signals::SignalFd::block(&[libc::SIGTERM, libc::SIGINT])
                    .context("blocking SIGTERM/SIGINT")?;
            let mut agent = Agent::new(cfg)?;
            loop {
                let wait = agent.step();
                if once && agent.state().last_verdict.is_some() {
                    let st = agent.state();
                    println!("{}", serde_json::to_string_pretty(&st.last_verdict)?);
                    return Ok(if st.last_verdict.as_ref().is_some_and(|v| v.accepted) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    });
                }
                let ready = fluxnode_lowlevel::signals::poll_readable(&[signals.fd()], Some(wait))
                    .context("waiting")?;
                if ready.first().copied().unwrap_or(false) {
                    let _ = signals.read_all();
                    tracing::info!("stopping");
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        Cmd::Status {
            json,
            config,
            offline,
            wait_s,
        } => {
            let ca = NodeConfig::load(&config)?.ca;
            let dir = StateDir::new(&cli.state_dir);
            let deadline = std::time::Instant::now() + Duration::from_secs(wait_s);
            let boot = agent::boot_id();
            let mut st = dir.load();
            while st.attested_boot_id.as_deref() != Some(boot.as_str())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(500));
                st = dir.load();
            }
            let (view, reachable) = match (&st.node_id, offline) {
                (Some(id), false) if !st.registry.is_empty() => {
                    let key = ed25519_dalek::SigningKey::from_bytes(&[0; 32]);
                    match std::fs::read(&ca)
                        .map_err(|e| e.to_string())
                        .and_then(|pem| {
                            RegistryClient::new(&st.registry, &pem, key).map_err(|e| e.to_string())
                        }) {
                        Ok(c) => match c.node_view(id) {
                            Ok(v) => (Some(v), Some(true)),
                            Err(e) => {
                                tracing::debug!("asking the registry: {e}");
                                (
                                    None,
                                    Some(!matches!(
                                        e,
                                        fluxnode_node::client::ClientError::Unreachable { .. }
                                    )),
                                )
                            }
                        },
                        Err(e) => {
                            tracing::debug!("registry client: {e}");
                            (None, None)
                        }
                    }
                }
                _ => (None, None),
            };
            let s = status::status(&dir, &st, view.as_ref(), reachable);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::App(a) => app(&cli.state_dir, a),
        Cmd::Appd { config } => {
            let settings = match std::fs::read_to_string(&config) {
                Ok(t) => {
                    toml::from_str(&t).with_context(|| format!("reading {}", config.display()))?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
                Err(e) => return Err(e).with_context(|| format!("reading {}", config.display())),
            };
            let mut cfg = fluxnode_node::appd::Config::appliance(settings);
            cfg.state_dir = cli.state_dir.clone();
            let notifier = fluxnode_lowlevel::notify::Notifier::from_env()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            fluxnode_node::appd::daemon(cfg, &|status| notifier.ready(status))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn app(state_dir: &std::path::Path, cmd: AppCmd) -> Result<ExitCode> {
    use fluxnode_node::apps::{self, AppsDir};
    let dir = AppsDir::new(state_dir);
    match cmd {
        AppCmd::Check { spec, json } => {
            let text = if spec.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(std::io::stdin(), 1 << 20),
                    &mut s,
                )
                .context("reading the spec from stdin")?;
                s
            } else {
                std::fs::read_to_string(&spec)
                    .with_context(|| format!("reading {}", spec.display()))?
            };
            let (cap, _) = apps::node_capacity(state_dir)
                .with_context(|| format!("measuring the capacity under {}", state_dir.display()))?;
            let r = apps::check(&text, &dir.placed(), &cap);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&apps::check_json(&r, &cap))?
                );
            } else {
                match &r {
                    Ok(s) => println!(
                        "{}: accepted (fits in {} cores, {} MiB, {} MiB of disk for apps)",
                        s.name,
                        cap.cpu_milli as f64 / 1000.0,
                        cap.memory_mib,
                        cap.disk_mib
                    ),
                    Err(e) => println!("{}: refused: {e}", spec.display()),
                }
            }
            Ok(if r.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        AppCmd::Pull {
            image,
            insecure,
            json,
        } => {
            let r = fluxnode_apps::reference::Reference::parse(&image)?;
            let store_dir = dir.store();
            let store = fluxnode_apps::store::Store::open(&store_dir)
                .with_context(|| format!("opening the image store {}", store_dir.display()))?;
            let mut puller = fluxnode_apps::pull::Puller::new(&store, insecure, None);
            let t0 = std::time::Instant::now();
            let img = puller
                .pull(&r, &mut |p| {
                    use fluxnode_apps::pull::Progress;
                    match p {
                        Progress::Blob { digest, from, size } if from > 0 => {
                            eprintln!("{digest}: resuming at {from} of {size} bytes")
                        }
                        Progress::Blob { digest, size, .. } => eprintln!("{digest}: {size} bytes"),
                        Progress::Bytes { digest, done, size } => {
                            eprintln!("{digest}: {done}/{size} ({}%)", done * 100 / size.max(1))
                        }
                        Progress::Present { digest } => eprintln!("{digest}: already here"),
                        Progress::Resume { digest, at, why } => {
                            eprintln!("{digest}: connection lost at {at} ({why}); resuming")
                        }
                    }
                })
                .with_context(|| format!("pulling {r}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "reference": r.to_string(),
                        "manifest": img.manifest,
                        "config": img.config,
                        "layers": img.layers,
                        "seconds": t0.elapsed().as_secs_f64(),
                    }))?
                );
            } else {
                println!(
                    "{r}: {} ({} layers) in {:.1} s",
                    img.manifest,
                    img.layers.len(),
                    t0.elapsed().as_secs_f64()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AppCmd::Deploy { spec, wait_s, json } => {
            let text = read_spec(&spec)?;
            let parsed = fluxnode_apps::spec::AppSpec::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", spec.display()))?;
            let client = api_client();
            let v = match client.call(&serde_json::json!({"op": "deploy", "spec": parsed})) {
                Ok(v) => v,
                Err(fluxnode_node::appd::api::ClientError::Refused(why)) => {
                    eprintln!("{}: refused: {why}", parsed.name);
                    return Ok(ExitCode::from(2));
                }
                Err(e) => return Err(e.into()),
            };
            let name = parsed.name.clone();
            let deadline = std::time::Instant::now() + Duration::from_secs(wait_s);
            let mut last = String::new();
            let mut app = v["app"].clone();
            let healthy_needed = parsed.health.is_some();
            let up = loop {
                let st = &app["status"]["phase"];
                let shown = match st["state"].as_str().unwrap_or("") {
                    "pulling" => format!("pulling: {} of {} bytes", st["done"], st["total"]),
                    s => s.to_string(),
                };
                if shown != last && !json {
                    eprintln!("{name}: {shown}");
                    last = shown;
                }
                let running = st["state"] == "running";
                let healthy = app["status"]["health"]["ok"] == serde_json::json!(true);
                if running && (!healthy_needed || healthy) {
                    break true;
                }
                if st["state"] == "exited" || wait_s == 0 || std::time::Instant::now() >= deadline {
                    break running && wait_s == 0;
                }
                std::thread::sleep(Duration::from_millis(500));
                app = client.call(&serde_json::json!({"op": "inspect", "name": name}))?["app"]
                    .clone();
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&app)?);
            } else if up {
                println!(
                    "{name}: running at {}{}",
                    app["address"].as_str().unwrap_or("?"),
                    if healthy_needed { ", healthy" } else { "" }
                );
            } else {
                println!(
                    "{name}: not running after {wait_s} s ({}); `fluxnode app logs {name}` shows why",
                    app["status"]["last_exit"].as_str().or(app["status"]["phase"]["reason"].as_str()).unwrap_or("no exit yet")
                );
            }
            Ok(if up || wait_s == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        AppCmd::Ls { json } => {
            let v = api_client().call(&serde_json::json!({"op": "ls"}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:<12} {:>8} {:<15} PORTS",
                "NAME", "STATE", "RESTARTS", "ADDRESS"
            );
            for a in v["apps"].as_array().into_iter().flatten() {
                let ports: Vec<String> = a["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "{}->{}/{}",
                            p["node"],
                            p["container"],
                            p["protocol"].as_str().unwrap_or("tcp")
                        )
                    })
                    .collect();
                println!(
                    "{:<20} {:<12} {:>8} {:<15} {}",
                    a["name"].as_str().unwrap_or("?"),
                    a["status"]["state"].as_str().unwrap_or("?"),
                    a["restarts"],
                    a["address"].as_str().unwrap_or("-"),
                    ports.join(",")
                );
            }
            let c = &v["capacity"];
            println!(
                "capacity for apps: {} cores, {} MiB of memory, {} MiB of disk ({})",
                c["cpu_milli"].as_u64().unwrap_or(0) as f64 / 1000.0,
                c["memory_mib"],
                c["disk_mib"],
                v["tier"].as_str().map_or_else(
                    || "the machine's, less the node's reserve".to_string(),
                    |t| format!("held to what tier {t} guarantees")
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        AppCmd::Inspect { name, .. } => {
            let v = api_client().call(&serde_json::json!({"op": "inspect", "name": name}))?;
            println!("{}", serde_json::to_string_pretty(&v["app"])?);
            Ok(ExitCode::SUCCESS)
        }
        AppCmd::Logs {
            name,
            follow,
            lines,
        } => {
            let c = api_client();
            if follow {
                c.follow(&name, lines, &mut |l| {
                    use std::io::Write as _;
                    writeln!(std::io::stdout(), "{}", printable(l)).is_ok()
                })?;
            } else {
                let v = c.call(&serde_json::json!({"op": "logs", "name": name, "lines": lines}))?;
                for l in v["lines"].as_array().into_iter().flatten() {
                    println!("{}", printable(l.as_str().unwrap_or_default()));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AppCmd::Stop { name } => simple_op("stop", &name, "stopped"),
        AppCmd::Start { name } => simple_op("start", &name, "started"),
        AppCmd::Rm { name } => simple_op("rm", &name, "removed, with its volumes"),
    }
}

/// An app's line as it may reach the operator's terminal: control
/// characters (escape sequences that would move the cursor, retitle the
/// window or worse) shown as `\u{..}` instead.
fn printable(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn simple_op(op: &str, name: &str, done: &str) -> Result<ExitCode> {
    match api_client().call(&serde_json::json!({"op": op, "name": name})) {
        Ok(_) => {
            println!("{name}: {done}");
            Ok(ExitCode::SUCCESS)
        }
        Err(fluxnode_node::appd::api::ClientError::Refused(why)) => {
            eprintln!("{name}: {why}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

fn api_client() -> fluxnode_node::appd::api::Client {
    let path = std::env::var_os("FLUXNODE_APPD_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(fluxnode_node::appd::SOCKET));
    fluxnode_node::appd::api::Client::new(&path)
}

fn read_spec(spec: &std::path::Path) -> Result<String> {
    if spec.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(std::io::stdin(), 1 << 20), &mut s)
            .context("reading the spec from stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(spec).with_context(|| format!("reading {}", spec.display()))
    }
}
