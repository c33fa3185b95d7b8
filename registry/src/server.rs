//! Starting a registry from its directory: in the foreground (`serve`) or
//! on a thread of its own (tests, benchmarks).

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::{bail, Context as _, Result};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::RegistryDir;
use crate::http::{self, Limits};
use crate::service::Registry;
use crate::store::redb::RedbStore;

/// A registry running on its own thread; stopped on drop.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Running {
    /// Stops it and waits; returns how it ended.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the registry thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            tracing::warn!("registry stopped with: {e:#}");
        }
    }
}

/// Starts the registry in `dir` on a thread with its own runtime.
/// `listen` overrides registry.toml's address (`127.0.0.1:0` picks a port).
pub fn start(dir: &RegistryDir, listen: Option<&str>) -> Result<Running> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let dir = dir.clone();
    let listen = listen.map(str::to_string);
    let thread = std::thread::Builder::new()
        .name("registry".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(async move {
                let r = run(
                    &dir,
                    listen.as_deref(),
                    async {
                        let _ = stop_rx.await;
                    },
                    |addr| {
                        let _ = ready_tx.send(Ok(addr));
                    },
                )
                .await;
                if let Err(e) = &r {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                }
                r
            })
        })
        .context("spawning the registry thread")?;
    let addr = ready_rx
        .recv()
        .context("the registry thread ended before listening")??;
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Runs the registry in `dir` until `shutdown`; `ready` gets the address once listening.
pub async fn run(
    dir: &RegistryDir,
    listen: Option<&str>,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let cfg = dir.config()?;
    let settings = dir.settings(&cfg)?;
    let listen = listen.unwrap_or(&cfg.listen).to_string();
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr().context("local address")?;
    let tls = dir.tls()?;
    let key = dir.signing_key()?;
    let trust = dir.trust()?;
    let token = dir.admin_token()?;
    macro_rules! go {
        ($store:expr) => {{
            let registry = Registry {
                store: $store,
                key,
                trust,
                settings,
            };
            tracing::info!(%addr, store = %cfg.store, profile = %registry.settings.profile.name, "registry listening");
            ready(addr);
            http::serve(listener, tls, http::router(registry, token), Limits::default(), shutdown).await;
            Ok(())
        }};
    }
    if cfg.store == "redb" {
        go!(open_redb(dir)?)
    } else if cfg.store.starts_with("postgres://") || cfg.store.starts_with("postgresql://") {
        go!(crate::store::postgres::PgStore::connect(&cfg.store).await?)
    } else {
        bail!(
            "store {:?} in registry.toml: use `redb` or a postgres:// URL",
            cfg.store
        )
    }
}

/// Opens the directory's redb store.
pub fn open_redb(dir: &RegistryDir) -> Result<RedbStore> {
    let p = dir.path("registry.redb");
    RedbStore::open(&p).with_context(|| {
        format!(
            "opening {} (is a registry already running on this directory?)",
            p.display()
        )
    })
}
