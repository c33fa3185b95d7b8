//! `fluxnode-registry`: run and inspect a fluxnode registry.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use fluxnode_protocol::cert::{self, TierCertificate};
use fluxnode_protocol::messages::NodeView;
use fluxnode_registry::client::{AdminClient, CallError};
use fluxnode_registry::config::{self, FileConfig, RegistryDir};
use fluxnode_registry::service::{now_ms, Registry};
use fluxnode_registry::store::{Policy, Store as _};
use fluxnode_registry::{pki, policy, server};

/// The network side of fluxnode: registers nodes by their TPM, verifies
/// attested benchmark sessions, ranks nodes into tiers and signs tier
/// certificates anyone can check offline.
///
/// Start with `init`, add the CA of the TPMs you accept (`trust add`), allow
/// the images you released (`policy allow-image manifest.json`), then
/// `serve`. `nodes` and `node` show what the registry knows.
#[derive(Parser, Debug)]
#[command(name = "fluxnode-registry", version)]
struct Cli {
    /// The registry directory (keys, TLS, EK CAs, database, registry.toml).
    #[arg(long, global = true, default_value = "/var/lib/fluxnode-registry")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Makes a new registry directory: CA (nodes pin ca.pem), TLS
    /// certificate for --name, tier-certificate key (signing.pub is what
    /// verifiers need), admin token and registry.toml.
    Init {
        /// Host name or IP address nodes reach the registry by (repeat).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: String,
        /// Benchmark profile: flux (the tier definition) or quick (tests, demos).
        #[arg(long, default_value = "flux")]
        profile: String,
        /// `redb` (a file in the directory) or a postgres:// URL.
        #[arg(long, default_value = "redb")]
        store: String,
        /// Take ca.pem, server.pem and server-key.pem from this directory
        /// instead of making new ones (the CA an image already pins).
        #[arg(long)]
        tls_from: Option<PathBuf>,
        /// A tier table (hal's TOML format) instead of Flux's; copied into
        /// the directory as tiers.toml.
        #[arg(long)]
        tier_policy: Option<PathBuf>,
    },
    /// Serves the HTTPS API until SIGINT or SIGTERM.
    Serve {
        /// Overrides registry.toml's listen address.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Lists nodes: id, online or not, tier, image, PCR 11, uptime, last verdict.
    Nodes {
        /// JSON for machines.
        #[arg(long)]
        json: bool,
        /// The registry's URL (default: registry.toml's port on 127.0.0.1).
        #[arg(long)]
        url: Option<String>,
    },
    /// Shows one node with its verdicts and their reasons.
    Node {
        /// Node id.
        id: String,
        /// JSON for machines.
        #[arg(long)]
        json: bool,
        /// The registry's URL.
        #[arg(long)]
        url: Option<String>,
    },
    /// Shows or changes which images (measured PCR values) are allowed.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
        /// The registry's URL.
        #[arg(long)]
        url: Option<String>,
    },
    /// Manages the allow-listed CAs of EK certificates.
    Trust {
        #[command(subcommand)]
        cmd: TrustCmd,
    },
    /// Checks a tier certificate offline: signature, issuer key, expiry.
    VerifyCert {
        /// The certificate (JSON, as `fluxnode status --json` or the API gives it).
        cert: PathBuf,
        /// The registry's public key: signing.pub, or its 64 hex digits.
        #[arg(long)]
        key: String,
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Prints the policy.
    Show {
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
    /// Allows every slot of a release's manifest.json (its predicted PCRs).
    AllowImage {
        /// fluxnode-image's manifest.json.
        manifest: PathBuf,
    },
    /// Removes the images of a version.
    Remove {
        /// Version.
        version: String,
    },
    /// Sets the PCRs every quote must cover (e.g. 9,11,12).
    Require {
        /// Comma-separated SHA-256 PCR indices.
        pcrs: String,
    },
}

#[derive(Subcommand, Debug)]
enum TrustCmd {
    /// Adds a CA certificate (PEM or DER) whose EK certificates are accepted.
    Add {
        /// The certificate file.
        file: PathBuf,
        /// It is an intermediate CA, not a root.
        #[arg(long)]
        intermediate: bool,
    },
    /// Lists the CA files.
    List,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("fluxnode-registry: error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// The registry over the directory's store, for commands run while no
/// server is up.
fn offline<T>(
    dir: &RegistryDir,
    f: impl AsyncFnOnce(&Registry<fluxnode_registry::store::redb::RedbStore>) -> Result<T>,
) -> Result<T> {
    let cfg = dir.config()?;
    if cfg.store != "redb" {
        bail!("the registry at {} is not reachable; with PostgreSQL, start a registry (serve) to query it", dir.root.display());
    }
    let reg = Registry {
        store: server::open_redb(dir)?,
        key: dir.signing_key()?,
        trust: dir.trust()?,
        settings: dir.settings(&cfg)?,
    };
    runtime()?.block_on(f(&reg))
}

fn run(cli: Cli) -> Result<()> {
    let dir = RegistryDir::new(&cli.dir);
    match cli.cmd {
        Cmd::Init {
            names,
            listen,
            profile,
            store,
            tls_from,
            tier_policy,
        } => {
            if let Some(p) = &tier_policy {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                fluxnode_hal::tier::Policy::from_toml(&text)
                    .with_context(|| format!("parsing {}", p.display()))?;
            }
            let cfg = FileConfig {
                listen,
                store,
                profile,
                tier_policy: tier_policy.as_ref().map(|_| PathBuf::from("tiers.toml")),
                ..FileConfig::default()
            };
            pki::init_with(&cli.dir, &names, &cfg, tls_from.as_deref())?;
            if let Some(p) = &tier_policy {
                std::fs::copy(p, dir.path("tiers.toml"))
                    .with_context(|| format!("copying {}", p.display()))?;
            }
            println!("registry directory: {}", cli.dir.display());
            println!("  nodes pin:        {}", dir.path("ca.pem").display());
            println!("  verifiers need:   {}", dir.path("signing.pub").display());
            println!("next: fluxnode-registry --dir {0} trust add EK-CA.pem; fluxnode-registry --dir {0} policy allow-image manifest.json; fluxnode-registry --dir {0} serve", cli.dir.display());
            Ok(())
        }
        Cmd::Serve { listen } => runtime()?.block_on(async {
            let stop = async {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!("SIGTERM handler: {e}");
                            let _ = tokio::signal::ctrl_c().await;
                            return;
                        }
                    };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
                tracing::info!("stopping");
            };
            server::run(&dir, listen.as_deref(), stop, |addr| {
                eprintln!("fluxnode-registry: listening on https://{addr}");
            })
            .await
        }),
        Cmd::Nodes { json, url } => {
            let views: Vec<NodeView> =
                match AdminClient::for_dir(&dir, url.as_deref())?.get("/v1/nodes") {
                    Ok(v) => v,
                    Err(CallError::Unreachable(why)) => {
                        tracing::debug!("{why}; reading the store directly");
                        offline(&dir, async |r| Ok(r.node_views().await?))?
                    }
                    Err(e) => return Err(e.into()),
                };
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print_nodes(&views);
            }
            Ok(())
        }
        Cmd::Node { id, json, url } => {
            let view: NodeView =
                match AdminClient::for_dir(&dir, url.as_deref())?.get(&format!("/v1/nodes/{id}")) {
                    Ok(v) => v,
                    Err(CallError::Unreachable(_)) => {
                        offline(&dir, async |r| Ok(r.node_view(&id).await?))?
                    }
                    Err(e) => return Err(e.into()),
                };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_node(&view);
            }
            Ok(())
        }
        Cmd::Policy { cmd, url } => policy_cmd(&dir, cmd, url.as_deref()),
        Cmd::Trust { cmd } => match cmd {
            TrustCmd::Add { file, intermediate } => {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let mut probe = fluxnode_protocol::ekcert::TrustStore::new();
                probe
                    .add_root(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                let sub = if intermediate {
                    "ek-ca/intermediates"
                } else {
                    "ek-ca"
                };
                let d = dir.path(sub);
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                let name = file.file_name().context("the file has no name")?;
                let dest = d.join(name);
                std::fs::write(&dest, &bytes)
                    .with_context(|| format!("writing {}", dest.display()))?;
                println!("added {}; restart the registry to use it", dest.display());
                Ok(())
            }
            TrustCmd::List => {
                for sub in ["ek-ca", "ek-ca/intermediates"] {
                    let d = dir.path(sub);
                    if let Ok(rd) = std::fs::read_dir(&d) {
                        for e in rd.flatten().filter(|e| e.path().is_file()) {
                            println!(
                                "{}\t{}",
                                if sub == "ek-ca" {
                                    "root"
                                } else {
                                    "intermediate"
                                },
                                e.path().display()
                            );
                        }
                    }
                }
                Ok(())
            }
        },
        Cmd::VerifyCert {
            cert: path,
            key,
            json,
        } => {
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let c: TierCertificate = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{}: not a tier certificate (JSON with body and signature)",
                    path.display()
                )
            })?;
            let k = config::verifying_key(&key)?;
            match cert::verify(&c, &k, now_ms()) {
                Ok(body) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"valid": true, "certificate": body})
                        );
                    } else {
                        println!(
                            "valid: node {} tier {} image {} until {} (Unix ms)",
                            body.node_id,
                            body.tier.as_deref().unwrap_or("(none)"),
                            body.image,
                            body.expires_at_ms
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"valid": false, "code": e.code(), "message": e.to_string()})
                        );
                    }
                    bail!("{}: {e} ({})", path.display(), e.code())
                }
            }
        }
    }
}

fn policy_cmd(dir: &RegistryDir, cmd: PolicyCmd, url: Option<&str>) -> Result<()> {
    let client = AdminClient::for_dir(dir, url)?;
    let current: Option<Policy> = match client.get::<Policy>("/v1/policy") {
        Ok(p) => Some(p),
        Err(CallError::Unreachable(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let online = current.is_some();
    let mut p = match current {
        Some(p) => p,
        None => offline(dir, async |r| Ok(r.store.policy().await?))?,
    };
    match cmd {
        PolicyCmd::Show { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("required PCRs (sha256): {:?}", p.required_pcrs);
                if p.images.is_empty() {
                    println!("no image allowed: every session is refused (allow one with `policy allow-image manifest.json`)");
                }
                for i in &p.images {
                    let pcrs: Vec<String> =
                        i.pcrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("{} slot {}: {}", i.version, i.slot, pcrs.join(" "));
                }
            }
            return Ok(());
        }
        PolicyCmd::AllowImage { manifest } => {
            let imgs = policy::images_of_manifest(&manifest)?;
            for i in &imgs {
                println!(
                    "allowing {} slot {} (PCR 11 {})",
                    i.version,
                    i.slot,
                    i.pcrs.get(&11).map(ToString::to_string).unwrap_or_default()
                );
            }
            policy::allow(&mut p, imgs);
        }
        PolicyCmd::Remove { version } => {
            let before = p.images.len();
            p.images.retain(|i| i.version != version);
            if p.images.len() == before {
                bail!("no image of version {version} in the policy");
            }
        }
        PolicyCmd::Require { pcrs } => {
            let mut v = Vec::new();
            for s in pcrs.split(',') {
                let i: u8 = s
                    .trim()
                    .parse()
                    .with_context(|| format!("{s:?} is not a PCR index"))?;
                if i > 23 {
                    bail!("PCR {i} does not exist (0..=23)");
                }
                v.push(i);
            }
            v.sort_unstable();
            v.dedup();
            p.required_pcrs = v;
        }
    }
    if online {
        let _: Policy = client.put("/v1/policy", &p)?;
    } else {
        let p2 = p.clone();
        offline(dir, async move |r| Ok(r.store.set_policy(&p2).await?))?;
    }
    println!(
        "policy saved: {} image(s), PCRs {:?} required",
        p.images.len(),
        p.required_pcrs
    );
    Ok(())
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        Some(t) => format!("{}s ago", now_ms().saturating_sub(t) / 1000),
        None => "never".into(),
    }
}

fn print_nodes(views: &[NodeView]) {
    if views.is_empty() {
        println!("no nodes registered");
        return;
    }
    println!(
        "{:<32}  {:<7}  {:<8}  {:<16}  {:<12}  {:>8}  LAST VERDICT",
        "NODE", "STATE", "TIER", "IMAGE", "PCR11", "UPTIME"
    );
    for v in views {
        let last = v.verdicts.first().map_or_else(
            || "none yet".to_string(),
            |r| match &r.rejection {
                Some(rej) => format!("refused: {}", rej.code),
                None => "accepted".into(),
            },
        );
        println!(
            "{:<32}  {:<7}  {:<8}  {:<16}  {:<12}  {:>7}s  {last}",
            v.node_id,
            v.state,
            v.tier.as_deref().unwrap_or("-"),
            v.image.as_ref().map_or("-".into(), |i| i.to_string()),
            v.pcr11.as_deref().map_or("-", |p| &p[..p.len().min(12)]),
            v.uptime_s,
        );
    }
}

fn print_node(v: &NodeView) {
    println!("node:       {}", v.node_id);
    println!(
        "state:      {} (last heartbeat {})",
        v.state,
        ago(v.last_seen_ms)
    );
    println!("tier:       {}", v.tier.as_deref().unwrap_or("none"));
    println!(
        "image:      {}",
        v.image.as_ref().map_or("-".into(), |i| i.to_string())
    );
    println!("pcr11:      {}", v.pcr11.as_deref().unwrap_or("-"));
    println!("uptime:     {} s", v.uptime_s);
    for r in &v.verdicts {
        match &r.rejection {
            Some(rej) => println!(
                "verdict {}: refused ({}): {}",
                r.session_id, rej.code, rej.message
            ),
            None => println!(
                "verdict {}: accepted, tier {}",
                r.session_id,
                r.tier.as_deref().unwrap_or("none")
            ),
        }
        if let Some(c) = &r.classification {
            for t in &c.tiers {
                for s in &t.shortfalls {
                    println!("    {}: {}", t.name, s.text);
                }
            }
        }
    }
}
