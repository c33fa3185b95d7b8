//! The apps placed on this node: their records on /var, what each is doing
//! now, and the operations of the API (deploy, start, stop, rm, ls, inspect).
//!
//! On /var, per app (`/var/lib/fluxnode/apps/NAME/`): `spec.json` (what the
//! publisher asked for) and `state.json` (its number on this node, whether
//! it should run, the image manifest it was pulled as). Both are written
//! atomically (temporary file, fsync, rename), so a power cut leaves the
//! old record or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fluxnode_apps::capacity::{fit, Capacity};
use fluxnode_apps::network::{self, Published};
use fluxnode_apps::spec::AppSpec;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::logs::Log;
use super::Config;
use crate::apps::AppsDir;
use fluxnode_apps::store::Store;

/// The first host id of the range every app's ids map onto.
pub const ID_BASE: u32 = 100_000;
/// How many ids an app has (0..65535 inside).
pub const ID_SIZE: u32 = 65_536;
/// App number N's quota project is `PROJECT_BASE + N`.
pub const PROJECT_BASE: u32 = 1000;

/// Should the app run?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    /// Keep it running.
    Running,
    /// Keep it stopped.
    Stopped,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The app's number on this node (its address, veth and quota project).
    pub index: u32,
    /// Should it run.
    pub desired: Desired,
    /// The manifest digest the image was pulled as (`sha256:...`); reused
    /// after restarts and reboots without the network.
    pub manifest: Option<String>,
}

/// Where an app is in its life, as its supervisor last set it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Phase {
    /// Fetching its image.
    Pulling {
        /// Bytes in so far (this pull).
        done: u64,
        /// Blobs' total, as far as known.
        total: u64,
    },
    /// Preparing its root, cgroup, network and bundle.
    Starting,
    /// Running.
    Running {
        /// The runtime's pid on the node.
        pid: u32,
        /// Since when (Unix seconds).
        since: u64,
    },
    /// Waiting before the next try.
    Waiting {
        /// Seconds to wait.
        retry_in_s: f64,
        /// Why it is not running.
        reason: String,
    },
    /// Stopping.
    Stopping,
    /// Stopped by the operator (or never started).
    Stopped,
    /// Exited and, by its restart policy, left so.
    Exited {
        /// Its exit status.
        code: i32,
    },
}

/// The last health check.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthState {
    /// Did the last check pass.
    pub ok: bool,
    /// Failed checks in a row.
    pub failures: u32,
    /// What the last check saw.
    pub last: String,
}

/// An app's live status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Where it is.
    pub phase: Phase,
    /// Restarts since the daemon started.
    pub restarts: u32,
    /// How the last run ended.
    pub last_exit: Option<String>,
    /// Its health check, if it has one.
    pub health: Option<HealthState>,
}

/// Mutable state of one app.
#[derive(Debug)]
pub struct AppState {
    /// The persisted record.
    pub record: Record,
    /// The live status.
    pub status: Status,
}

/// One placed app.
#[derive(Debug)]
pub struct App {
    /// Its spec.
    pub spec: AppSpec,
    state: Mutex<AppState>,
    wake: Condvar,
    /// Its output.
    pub log: Log,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl App {
    /// Locks its state.
    pub fn state(&self) -> MutexGuard<'_, AppState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets its phase.
    pub fn set_phase(&self, phase: Phase) {
        let mut s = self.state();
        // One line per change of state (not per progress step).
        if std::mem::discriminant(&s.status.phase) != std::mem::discriminant(&phase) {
            tracing::info!(app = %self.spec.name, "{}", serde_json::to_string(&phase).unwrap_or_default());
        }
        s.status.phase = phase;
        drop(s);
        self.wake.notify_all();
    }

    /// Marks it running now.
    pub fn set_running(&self, pid: u32) {
        self.set_phase(Phase::Running {
            pid,
            since: now_unix(),
        });
    }

    /// Should it run?
    pub fn desired(&self) -> Desired {
        self.state().record.desired
    }

    /// Waits up to `d` or until its record changes (a stop); true when it
    /// should still run.
    pub fn sleep(&self, d: Duration) -> bool {
        let g = self.state();
        if g.record.desired == Desired::Stopped {
            return false;
        }
        let (g, _) = self
            .wake
            .wait_timeout_while(g, d, |s| s.record.desired == Desired::Running)
            .unwrap_or_else(|p| p.into_inner());
        g.record.desired == Desired::Running
    }

    /// Its directory on /var.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `state.json`.
    pub fn save(&self) -> std::io::Result<()> {
        let rec = self.state().record.clone();
        write_atomic(
            &self.dir.join("state.json"),
            &serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?,
        )
    }
}

/// Writes `path` so that a power cut leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// An operation was refused; the text says why and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// No such app.
    #[error("no app named {0:?} on this node (`fluxnode app ls` lists them)")]
    NoSuchApp(String),
    /// The spec is invalid or does not fit.
    #[error("{0}")]
    Refused(String),
    /// The node could not record it.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// The daemon's view of every app.
#[derive(Debug)]
pub struct Manager {
    /// Paths and settings.
    pub cfg: Config,
    /// Where apps live.
    pub dir: AppsDir,
    /// The machine's capacity for apps (measured at start); what deploys
    /// are fitted against is [`Manager::capacity`].
    pub cap: Capacity,
    apps: Mutex<BTreeMap<String, Arc<App>>>,
    /// Why disk quotas are not enforced, if they are not.
    pub quota_off: Option<String>,
    /// Serialises network changes (the ruleset is replaced whole).
    pub net_lock: Mutex<()>,
    /// Why the apps' network is not set up, if it is not: no app starts
    /// until it is (a missing table would leave the node open to apps).
    pub net_error: Mutex<Option<String>>,
    /// One operation (deploy, start, stop, rm) at a time.
    ops: Mutex<()>,
    /// The image store, opened once (opening clears unfinished unpacks).
    pub store: Store,
    /// Pulls and unpacks hold it shared; garbage collection exclusively.
    pub store_lock: std::sync::RwLock<()>,
    /// Unpacks one at a time (two apps may share a layer).
    pub unpack_lock: Mutex<()>,
}

impl Manager {
    /// The manager for `cfg`, with `cap`; loads every placed app's record
    /// (starting none: see [`Manager::start_all`]).
    pub fn load(
        cfg: Config,
        cap: Capacity,
        quota_off: Option<String>,
    ) -> Result<Arc<Manager>, OpError> {
        let dir = AppsDir::new(&cfg.state_dir);
        // Finish what an `rm` cut by a power failure started.
        for d in [dir.apps(), cfg.state_dir.join("volumes")] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(".rm-") {
                    let _ = fluxnode_apps::store::remove_tree(&e.path());
                }
            }
        }
        let store_dir = dir.store();
        let store = Store::open(&store_dir).map_err(|e| OpError::Io {
            what: "opening the image store",
            path: store_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut apps = BTreeMap::new();
        let mut used = Vec::new();
        for spec in dir.placed() {
            let adir = dir.apps().join(&spec.name);
            let rec: Option<Record> = std::fs::read(adir.join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let rec = match rec {
                Some(r) if !used.contains(&r.index) => r,
                _ => {
                    tracing::warn!(app = %spec.name, "no usable state.json: given a new number, to run");
                    Record {
                        index: u32::MAX,
                        desired: Desired::Running,
                        manifest: None,
                    }
                }
            };
            used.push(rec.index);
            apps.insert(spec.name.clone(), (spec, rec, adir));
        }
        let mut out = BTreeMap::new();
        for (name, (spec, mut rec, adir)) in apps {
            let renumbered = rec.index == u32::MAX;
            if renumbered {
                rec.index = (0..network::MAX_APPS)
                    .find(|i| !used.contains(i))
                    .unwrap_or(0);
                used.push(rec.index);
            }
            let app = Arc::new(App::new(spec, rec, adir));
            // Written back only when it changed: a start rewrites nothing.
            if renumbered {
                let _ = app.save();
            }
            out.insert(name, app);
        }
        Ok(Arc::new(Manager {
            cfg,
            dir,
            cap,
            apps: Mutex::new(out),
            quota_off,
            net_lock: Mutex::new(()),
            net_error: Mutex::new(Some("not set up yet".into())),
            ops: Mutex::new(()),
            store,
            store_lock: std::sync::RwLock::new(()),
            unpack_lock: Mutex::new(()),
        }))
    }

    fn op(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The capacity deploys are fitted against: the machine's, held to
    /// the guarantee of the tier the agent last certified (read at each
    /// call: the certificate comes and changes while the daemon runs),
    /// and that tier's name.
    pub fn capacity(&self) -> (Capacity, Option<String>) {
        match crate::apps::tier_guarantee(&self.cfg.state_dir) {
            Some(g) => (self.cap.within(&g), Some(g.tier)),
            None => (self.cap, None),
        }
    }

    /// Is `app` still the one placed under its name (not replaced or
    /// removed while its supervisor was busy)?
    pub fn is_current(&self, app: &Arc<App>) -> bool {
        self.lock()
            .get(&app.spec.name)
            .is_some_and(|a| Arc::ptr_eq(a, app))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<App>>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One app.
    pub fn get(&self, name: &str) -> Result<Arc<App>, OpError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| OpError::NoSuchApp(name.to_string()))
    }

    /// Every app, by name.
    pub fn all(&self) -> Vec<Arc<App>> {
        self.lock().values().cloned().collect()
    }

    /// Every published port of every app (the ruleset).
    pub fn published(&self) -> Vec<Published> {
        self.all()
            .iter()
            .flat_map(|a| {
                let index = a.state().record.index;
                let addr = network::address(index);
                a.spec.ports.iter().filter_map(move |p| {
                    Some(Published {
                        app: a.spec.name.clone(),
                        addr: addr?,
                        node: p.node,
                        container: p.container,
                        protocol: p.protocol,
                    })
                })
            })
            .collect()
    }

    /// Starts the supervisor of every app that should run.
    pub fn start_all(self: &Arc<Self>) {
        for app in self.all() {
            if app.desired() == Desired::Running {
                self.spawn(&app);
            }
        }
    }

    fn spawn(self: &Arc<Self>, app: &Arc<App>) {
        let mut t = app.thread.lock().unwrap_or_else(|p| p.into_inner());
        if t.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(h) = t.take() {
            let _ = h.join();
        }
        let (m, a) = (Arc::clone(self), Arc::clone(app));
        match std::thread::Builder::new()
            .name(format!("app-{}", app.spec.name))
            .spawn(move || super::supervise::run(&m, &a))
        {
            Ok(h) => *t = Some(h),
            Err(e) => tracing::error!(app = %app.spec.name, "cannot start its supervisor: {e}"),
        }
    }

    /// Places `spec` and starts it. An app of the same name is replaced
    /// (stopped, its writable layer dropped, its volumes kept).
    pub fn deploy(self: &Arc<Self>, spec: AppSpec) -> Result<Arc<App>, OpError> {
        spec.validate()
            .map_err(|e| OpError::Refused(e.to_string()))?;
        let _op = self.op();
        let old = self.lock().get(&spec.name).cloned();
        let others: Vec<AppSpec> = self
            .all()
            .iter()
            .filter(|a| a.spec.name != spec.name)
            .map(|a| a.spec.clone())
            .collect();
        let refs: Vec<&AppSpec> = others.iter().collect();
        fit(&self.capacity().0, &refs, &spec).map_err(|e| OpError::Refused(e.to_string()))?;
        let index = match &old {
            Some(a) => {
                let i = a.state().record.index;
                self.halt(a);
                i
            }
            None => {
                let used: Vec<u32> = self.all().iter().map(|a| a.state().record.index).collect();
                (0..network::MAX_APPS)
                    .find(|i| !used.contains(i))
                    .ok_or_else(|| OpError::Refused("no app address is free".into()))?
            }
        };
        let adir = self.dir.apps().join(&spec.name);
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| OpError::Io { what, path, source }
        };
        std::fs::create_dir_all(&adir).map_err(io("creating", &adir))?;
        // A new spec starts from the image's files again.
        let upper = adir.join("upper");
        super::sys::unmount(&adir.join("rootfs"));
        let _ = fluxnode_apps::store::remove_tree(&upper);
        let spec_json = serde_json::to_vec_pretty(&spec).map_err(|e| OpError::Io {
            what: "encoding",
            path: adir.join("spec.json"),
            source: std::io::Error::other(e),
        })?;
        let app = Arc::new(App::new(
            spec.clone(),
            Record {
                index,
                desired: Desired::Running,
                manifest: None,
            },
            adir.clone(),
        ));
        // The record first: a power cut between the two leaves the old
        // spec with no pinned image (pulled again), never the new spec
        // with the old image.
        app.save()
            .map_err(io("writing", &adir.join("state.json")))?;
        write_atomic(&adir.join("spec.json"), &spec_json)
            .map_err(io("writing", &adir.join("spec.json")))?;
        if let Ok(d) = std::fs::File::open(self.dir.apps()) {
            let _ = d.sync_all();
        }
        self.lock().insert(spec.name.clone(), Arc::clone(&app));
        self.reload_rules();
        self.spawn(&app);
        Ok(app)
    }

    /// Sets `app` to stopped and waits for its supervisor to end.
    fn halt(&self, app: &Arc<App>) {
        app.state().record.desired = Desired::Stopped;
        app.wake.notify_all();
        let h = app.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(h) = h else { return };
        let t0 = std::time::Instant::now();
        let mut killed = false;
        while !h.is_finished() {
            if !killed && t0.elapsed() > Duration::from_secs(30) {
                tracing::warn!(app = %app.spec.name, "its supervisor is slow to stop; killing the app");
                super::supervise::kill(self, &app.spec.name, "KILL");
                killed = true;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                // Stuck in a pull or a health check: it ends when that
                // does, and then does nothing more (the app is stopped,
                // or no longer the one placed under its name).
                tracing::error!(app = %app.spec.name, "its supervisor did not stop within 60 s; left to end on its own");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = h.join();
    }

    /// Stops an app (it stays stopped across reboots until started).
    pub fn stop(&self, name: &str) -> Result<Arc<App>, OpError> {
        let _op = self.op();
        let app = self.get(name)?;
        self.halt(&app);
        app.save().map_err(|source| OpError::Io {
            what: "writing",
            path: app.dir.join("state.json"),
            source,
        })?;
        app.set_phase(Phase::Stopped);
        Ok(app)
    }

    /// Starts a stopped app.
    pub fn start(self: &Arc<Self>, name: &str) -> Result<Arc<App>, OpError> {
        let _op = self.op();
        let app = self.get(name)?;
        app.state().record.desired = Desired::Running;
        app.save().map_err(|source| OpError::Io {
            what: "writing",
            path: app.dir.join("state.json"),
            source,
        })?;
        self.spawn(&app);
        Ok(app)
    }

    /// Stops and removes an app with its writable layer and volumes.
    pub fn rm(&self, name: &str) -> Result<(), OpError> {
        let _op = self.op();
        let app = self.get(name)?;
        self.halt(&app);
        // Out of the map first: a supervisor still stuck somewhere sees it
        // is no longer current and touches nothing.
        self.lock().remove(name);
        let index = app.state().record.index;
        super::sys::unmount(&app.dir.join("rootfs"));
        self.cfg.tools.teardown_app(name, index);
        let cg = self.cgroup_dir(name);
        let _ = std::fs::remove_dir(cg.join("ctr"));
        let _ = std::fs::remove_dir(&cg);
        if self.quota_off.is_none() {
            let _ = super::quota::set_limit(&self.cfg.state_dir, PROJECT_BASE + index, 0);
        }
        // Renamed away (and the rename made durable) before the slow
        // removal: a power cut leaves a tombstone that the next start
        // finishes, never half an app that comes back to life.
        for d in [app.dir.clone(), self.dir.volumes(name)] {
            let Some(parent) = d.parent() else { continue };
            let tomb = parent.join(format!(".rm-{name}"));
            let _ = fluxnode_apps::store::remove_tree(&tomb);
            match std::fs::rename(&d, &tomb) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(OpError::Io {
                        what: "removing",
                        path: d.clone(),
                        source,
                    })
                }
            }
            let _ = std::fs::File::open(parent).and_then(|f| f.sync_all());
            fluxnode_apps::store::remove_tree(&tomb).map_err(|source| OpError::Io {
                what: "removing",
                path: tomb.clone(),
                source,
            })?;
        }
        self.reload_rules();
        self.gc();
        Ok(())
    }

    /// Removes from the store every image no placed app is pinned to.
    pub fn gc(&self) {
        let _g = self.store_lock.write().unwrap_or_else(|p| p.into_inner());
        let mut keep = std::collections::BTreeSet::new();
        for a in self.all() {
            let pinned = a.state().record.manifest.clone();
            match pinned
                .as_deref()
                .map(fluxnode_apps::reference::Digest::parse)
            {
                Some(Ok(d)) => match fluxnode_apps::pull::Image::load(&self.store, &d) {
                    Ok(img) => keep.extend(img.blobs()),
                    // Unreadable: keep everything rather than guess.
                    Err(_) => return,
                },
                Some(Err(_)) => return,
                None => {}
            }
        }
        match self.store.gc(&keep) {
            Ok(r) => tracing::info!(
                "image store: removed {} blobs, {} layers, {} partial downloads ({} bytes)",
                r.blobs,
                r.layers,
                r.partials,
                r.bytes
            ),
            Err(e) => tracing::warn!("image store: {e}"),
        }
    }

    /// Stops every app (the daemon is stopping); records are kept, so
    /// they start again with the daemon.
    pub fn shutdown(&self) {
        let apps = self.all();
        for a in &apps {
            a.wake.notify_all();
        }
        std::thread::scope(|s| {
            for a in &apps {
                s.spawn(|| {
                    let desired = a.desired();
                    self.halt(a);
                    a.state().record.desired = desired;
                });
            }
        });
    }

    /// Deploys the apps an image was built with (`DIR/*.toml`, `*.json`:
    /// the demo's sample app, an operator's own), each once: a name seeded
    /// before is left alone, so an app the operator removed stays removed.
    /// The names seeded so far are kept in `apps/.seeded`.
    pub fn seed(self: &Arc<Self>, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let record = self.dir.apps().join(".seeded");
        let mut seeded: Vec<String> = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "json"))
            .collect();
        files.sort();
        for p in files.iter().take(64) {
            let text = match std::fs::read(p) {
                Ok(b) if b.len() <= fluxnode_apps::spec::MAX_SPEC_BYTES => {
                    String::from_utf8_lossy(&b).into_owned()
                }
                Ok(_) => {
                    tracing::error!("{}: larger than a spec may be", p.display());
                    continue;
                }
                Err(e) => {
                    tracing::error!("{}: {e}", p.display());
                    continue;
                }
            };
            let spec = match AppSpec::parse(&text) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{}: {e}", p.display());
                    continue;
                }
            };
            if seeded.contains(&spec.name) || self.get(&spec.name).is_ok() {
                continue;
            }
            let name = spec.name.clone();
            match self.deploy(spec) {
                Ok(_) => tracing::info!(app = %name, "deployed from {}", p.display()),
                Err(e) => {
                    tracing::error!(app = %name, "{}: {e}", p.display());
                    continue;
                }
            }
            seeded.push(name);
            if let Err(e) = serde_json::to_vec(&seeded)
                .map_err(std::io::Error::other)
                .and_then(|b| write_atomic(&record, &b))
            {
                tracing::error!("{}: {e}", record.display());
            }
        }
    }

    /// Replaces the nftables table with every published port.
    pub fn reload_rules(&self) {
        let _g = self.net_lock.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.cfg.tools.load_rules(&self.published());
        if let Err(e) = &r {
            tracing::error!("published ports: {e}");
        }
        *self.net_error.lock().unwrap_or_else(|p| p.into_inner()) = r.err().map(|e| e.to_string());
    }

    /// Sets up the node's side of the apps' network (again, after a
    /// failure); Err says why no app may start.
    pub fn ensure_network(&self) -> Result<(), String> {
        let _g = self.net_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = self.net_error.lock().unwrap_or_else(|p| p.into_inner());
        if err.is_none() {
            return Ok(());
        }
        match self.cfg.tools.setup_node(&self.published()) {
            Ok(()) => {
                *err = None;
                Ok(())
            }
            Err(e) => {
                *err = Some(e.to_string());
                Err(format!("the apps' network is not set up: {e}"))
            }
        }
    }

    /// App `name`'s cgroup.
    pub fn cgroup_dir(&self, name: &str) -> PathBuf {
        self.cfg
            .cgroup_root
            .join(fluxnode_apps::cgroup::APPS_GROUP)
            .join(name)
    }

    /// `inspect`: the spec, status, address, kernel counters and disk use.
    pub fn inspect(&self, app: &App) -> serde_json::Value {
        let (rec, status) = {
            let s = app.state();
            (s.record.clone(), s.status.clone())
        };
        let cg = self.cgroup_dir(&app.spec.name);
        let mut report = fluxnode_apps::cgroup::report(&cg);
        // Forks refused are counted where the fork happened: the runtime's
        // group below the app's.
        let inner = fluxnode_apps::cgroup::report(&cg.join("ctr"));
        report.pids_refused = report.pids_refused.max(inner.pids_refused);
        let disk = if self.quota_off.is_none() {
            super::quota::usage(&self.cfg.state_dir, PROJECT_BASE + rec.index)
                .ok()
                .map(|(used, limit)| json!({"used_bytes": used, "limit_bytes": limit}))
        } else {
            None
        };
        json!({
            "name": app.spec.name,
            "image": app.spec.image,
            "manifest": rec.manifest,
            "desired": rec.desired,
            "status": status,
            "address": network::address(rec.index).map(|a| a.to_string()),
            "ports": app.spec.ports,
            "resources": app.spec.resources,
            "volumes": app.spec.volumes,
            "cgroup": report,
            "disk": disk,
            "quota_off": self.quota_off,
        })
    }

    /// `ls`: one line of facts per app.
    pub fn list(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .all()
            .iter()
            .map(|a| {
                let s = a.state();
                json!({
                    "name": a.spec.name,
                    "image": a.spec.image,
                    "status": s.status.phase,
                    "restarts": s.status.restarts,
                    "address": network::address(s.record.index).map(|x| x.to_string()),
                    "ports": a.spec.ports,
                })
            })
            .collect();
        let (cap, tier) = self.capacity();
        json!({ "apps": rows, "capacity": cap, "tier": tier })
    }
}

impl App {
    fn new(spec: AppSpec, record: Record, dir: PathBuf) -> App {
        let log = Log::new(Some(dir.join("log")));
        App {
            spec,
            state: Mutex::new(AppState {
                status: Status {
                    phase: if record.desired == Desired::Running {
                        Phase::Starting
                    } else {
                        Phase::Stopped
                    },
                    restarts: 0,
                    last_exit: None,
                    health: None,
                },
                record,
            }),
            wake: Condvar::new(),
            log,
            thread: Mutex::new(None),
            dir,
        }
    }

    /// Wakes anything sleeping on this app (after a record change).
    pub fn notify(&self) {
        self.wake.notify_all();
    }
}
