//! The app daemon (`fluxnode appd`): runs the apps placed on this node
//! under crun, each in its own namespaces, cgroup, disk quota and network
//! namespace, and keeps them running.
//!
//! It is a separate service from the agent on purpose: running containers
//! needs root with most capabilities (mounts, namespaces, cgroups, the
//! network), and the agent, which talks to the registry, keeps none.
//!
//! - [`manager`]: the placed apps, their records on /var, deploy/start/stop/rm.
//! - [`supervise`]: one thread per app, an explicit state machine: pull,
//!   prepare, run, health checks, restart with backoff.
//! - [`prepare`]: an app's root (overlay), cgroup, quota, bundle.
//! - [`net`]: bridge, network namespaces, veths, nftables.
//! - [`quota`]: ext4 project quotas.
//! - [`logs`]: the bounded ring and rotated file of an app's output.
//! - [`api`]: the local API on a Unix socket, and its client.
//! - [`sys`]: the overlay mount.

pub mod api;
pub mod logs;
pub mod manager;
pub mod net;
pub mod prepare;
pub mod quota;
pub mod supervise;
pub mod sys;

use std::path::PathBuf;

use serde::Deserialize;

/// Where the daemon finds things. The defaults are the appliance's.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's state directory (`/var/lib/fluxnode`).
    pub state_dir: PathBuf,
    /// The daemon's runtime directory: the API socket, crun's state.
    pub run_dir: PathBuf,
    /// The cgroup2 mount.
    pub cgroup_root: PathBuf,
    /// crun.
    pub crun: PathBuf,
    /// Debian's seccomp profile for containers.
    pub seccomp_profile: PathBuf,
    /// The node's resolver configuration, copied into each app.
    pub resolv_conf: PathBuf,
    /// `ip` and `nft`.
    pub tools: net::Tools,
    /// Apps the image was built with, deployed once each.
    pub seed_dir: PathBuf,
    /// What the settings file says.
    pub settings: Settings,
}

/// `/etc/fluxnode/appd.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Registries (host:port) reached over plain HTTP: a local test
    /// registry. Empty in the shipped image.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Run apps even when /var cannot enforce their disk limits (a /var
    /// formatted without project quotas). Off: such apps wait, saying why.
    #[serde(default)]
    pub allow_unlimited_disk: bool,
}

impl Config {
    /// The appliance's paths, with `settings`.
    pub fn appliance(settings: Settings) -> Config {
        Config {
            state_dir: "/var/lib/fluxnode".into(),
            run_dir: "/run/appd".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            crun: "/usr/bin/crun".into(),
            seccomp_profile: fluxnode_apps::seccomp::DEBIAN_PROFILE.into(),
            resolv_conf: "/etc/resolv.conf".into(),
            tools: net::Tools::default(),
            seed_dir: "/etc/fluxnode/apps.d".into(),
            settings,
        }
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("api.sock")
    }
}

/// The API socket's default path, for the CLI.
pub const SOCKET: &str = "/run/appd/api.sock";

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Modules the daemon needs, loaded by the `modules` service at boot.
pub const MODULES: [&str; 4] = ["overlay", "veth", "bridge", "nf_tables"];

/// Runs the daemon until SIGTERM: sets up the node's side (cgroup parent,
/// quotas, bridge, ruleset), serves the API, starts the apps that should
/// run, and on SIGTERM stops them (they start again with the daemon).
pub fn daemon(cfg: Config, ready: &dyn Fn(&str)) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
    }
    // The modules service loads these right after boot; give it a moment.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(60) {
        let missing: Vec<&str> = MODULES
            .iter()
            .copied()
            .filter(|m| !std::path::Path::new("/sys/module").join(m).exists())
            .collect();
        if missing.is_empty() {
            break;
        }
        if t0.elapsed() > std::time::Duration::from_secs(59) {
            tracing::warn!("kernel modules not loaded: {}", missing.join(", "));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    std::fs::create_dir_all(cfg.run_dir.join("crun"))
        .with_context(|| format!("creating {}", cfg.run_dir.display()))?;
    let cap = crate::apps::machine_capacity(&cfg.state_dir)
        .with_context(|| format!("measuring the capacity under {}", cfg.state_dir.display()))?;
    fluxnode_apps::cgroup::setup_parent(&cfg.cgroup_root, &cap)
        .context("setting up the apps' cgroup")?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let quota_off = quota::enable(&cfg.state_dir).err().map(|e| {
        let why = format!(
            "disk limits are not enforced: {e} (/var needs ext4's quota and project features: \
             formatted by this version's stage 1, or `tune2fs -O quota,project` offline)"
        );
        tracing::warn!("{why}");
        why
    });
    let mgr =
        manager::Manager::load(cfg.clone(), cap, quota_off).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Retried before each app's start; no app starts without it.
    if let Err(e) = mgr.ensure_network() {
        tracing::error!("{e}");
    }
    let sock = cfg.socket();
    api::serve(std::sync::Arc::clone(&mgr), &sock, api::Limits::default())
        .with_context(|| format!("serving the API on {}", sock.display()))?;
    tracing::info!(
        "serving on {}; capacity for apps: {} cores, {} MiB memory, {} MiB disk",
        sock.display(),
        cap.cpu_milli as f64 / 1000.0,
        cap.memory_mib,
        cap.disk_mib
    );
    ready(&format!("{} apps", mgr.all().len()));
    mgr.start_all();
    mgr.seed(&cfg.seed_dir);
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    tracing::info!("stopping every app");
    mgr.shutdown();
    Ok(())
}
