//! One private PostgreSQL server for tests: a fresh cluster (`initdb`) on
//! a free port of 127.0.0.1, trust authentication, stopped and removed
//! when dropped.
//!
//! ```no_run
//! let Some(pg) = fluxnode_testkit::postgres::PgCluster::start() else { return };
//! let url = pg.new_database("case_one").unwrap(); // postgres://postgres@127.0.0.1:P/case_one
//! ```
//!
//! [`PgCluster::start`] skips (through [`crate::skip`]) when `initdb`,
//! `pg_ctl` or `createdb` are found neither on PATH nor in
//! `/usr/lib/postgresql/*/bin` (where Debian's `postgresql` package puts
//! them), and panics when they are there but fail: a broken server must
//! fail the test, not hide it.
//!
//! It needs nothing from the system's own PostgreSQL setup (no systemd
//! unit, no `pg_ctlcluster`): the cluster lives in a directory under the
//! workspace's `target/pg-tests`, its server is started by `pg_ctl`
//! directly, and runs as the `postgres` user when the tests run as root
//! (`initdb` and `postgres` refuse root). Durability is off (`fsync`,
//! `synchronous_commit`, `full_page_writes`): a test cluster never outlives
//! its test. Huge pages and parallel query are off too, so that the server
//! asks the kernel only for ordinary memory, whatever the kernel and
//! however small the container.

use std::fmt;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Attempts at finding a free port and starting on it (another process
/// may take the port between the probe and the server's bind).
const START_ATTEMPTS: usize = 5;
/// How long `pg_ctl` waits for the server to accept connections, seconds
/// (generous: a loaded 2-core CI machine runs other tests at the same time).
const START_TIMEOUT_S: &str = "120";
/// The longest Unix socket path PostgreSQL accepts (sun_path less the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The database [`PgCluster::start`] creates; [`PgCluster::url`] names it.
const DEFAULT_DB: &str = "fluxnode";

/// Why a PostgreSQL that is installed could not be set up or started.
#[derive(Debug)]
pub struct PgError(String);

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PgError {}

fn err(what: impl fmt::Display) -> PgError {
    PgError(what.to_string())
}

/// A running private PostgreSQL server; stopped (immediate shutdown) and
/// its directory removed on drop.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Run the server's tools as `postgres` (we are root).
    as_postgres: bool,
}

/// The directory holding `initdb`, `pg_ctl` and `createdb`: the one on
/// PATH, else the newest `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["initdb", "pg_ctl", "createdb"]
            .iter()
            .all(|p| d.join(p).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_all(d)) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_all(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

impl PgCluster {
    /// Creates a cluster, starts its server and creates the database
    /// [`PgCluster::url`] names; `None` after [`crate::skip`] when
    /// PostgreSQL is not installed. Panics when it is there but fails.
    #[allow(clippy::panic)] // a broken server must fail the test
    pub fn start() -> Option<Self> {
        match Self::try_start() {
            Ok(c) => c,
            Err(e) => panic!("postgres: {e}"),
        }
    }

    /// [`PgCluster::start`] returning the failure instead of panicking.
    pub fn try_start() -> Result<Option<Self>, PgError> {
        let Some(bin) = bin_dir() else {
            crate::skip(
                "PostgreSQL's initdb/pg_ctl are neither on PATH nor in \
                 /usr/lib/postgresql/*/bin (apt-get install postgresql)",
            );
            return Ok(None);
        };
        let dir = scratch()?;
        let as_postgres = std::fs::metadata(&dir)
            .map_err(|e| err(format!("{}: {e}", dir.display())))?
            .uid()
            == 0;
        // From here on, dropping `cluster` stops whatever started and
        // removes the directory, on every error path too.
        let mut cluster = PgCluster {
            bin,
            dir,
            port: 0,
            as_postgres,
        };
        if as_postgres {
            if !succeeds(Command::new("id").args(["-u", "postgres"])) {
                crate::skip(
                    "running as root, and there is no `postgres` user to run \
                     the server as (apt-get install postgresql creates it)",
                );
                return Ok(None);
            }
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(&cluster.dir)
                .output();
            check("chown postgres:", chown)?;
            if !succeeds(cluster.tool_as_postgres("test").arg("-w").arg(&cluster.dir)) {
                return Err(err(format!(
                    "the postgres user cannot write {} (are its parent directories \
                     traversable by others?)",
                    cluster.dir.display()
                )));
            }
        }
        cluster.initdb()?;
        cluster.start_server()?;
        cluster.create_database(DEFAULT_DB)?;
        Ok(Some(cluster))
    }

    /// `postgres://postgres@127.0.0.1:PORT/fluxnode`, the database made at
    /// start.
    pub fn url(&self) -> String {
        self.url_of(DEFAULT_DB)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (`data/` and the server's `log` are in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates one more (empty) database, for a test that must not see
    /// another's tables, and returns its URL. `name`: ASCII letters, digits
    /// and `_`.
    pub fn new_database(&self, name: &str) -> Result<String, PgError> {
        self.create_database(name)?;
        Ok(self.url_of(name))
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn url_of(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command running the server's tool `prog` (a bare name: from PATH),
    /// as `postgres` when we are root.
    fn tool_as_postgres(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = if !self.as_postgres {
            Command::new(prog)
        } else if on_path("runuser") {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(prog);
            c
        } else {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(prog);
            c
        };
        // The caller's directory may be closed to `postgres`.
        c.current_dir(&self.dir);
        // Nothing from the caller's environment may point the tools
        // elsewhere.
        for v in [
            "PGDATA",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
        ] {
            c.env_remove(v);
        }
        c.env("LC_ALL", "C");
        c
    }

    fn tool(&self, prog: &str) -> Command {
        self.tool_as_postgres(self.bin.join(prog))
    }

    fn initdb(&self) -> Result<(), PgError> {
        let out = self
            .tool("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                // Not flushing the new cluster to disk: it lives as long as
                // the test.
                "--no-sync",
            ])
            .output();
        check("initdb", out)
    }

    fn start_server(&mut self) -> Result<(), PgError> {
        let socket_dir = if self.dir.as_os_str().len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH
        {
            self.dir.display().to_string()
        } else {
            // Too long for a Unix socket's path: TCP only (the tests use
            // nothing else).
            String::new()
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let out = self
                .tool("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "-t", START_TIMEOUT_S, "-o"])
                .arg(format!(
                    "-p {port} -k '{socket_dir}' -c listen_addresses=127.0.0.1 \
                     -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                     -c huge_pages=off -c max_parallel_workers_per_gather=0 \
                     -c shared_buffers=32MB -c max_connections=200"
                ))
                .arg("start")
                .output();
            match check("pg_ctl start", out) {
                Ok(()) => {
                    self.port = port;
                    return Ok(());
                }
                Err(e) => {
                    let log = self.log();
                    let taken = log.contains("could not bind") || log.contains("already in use");
                    last = format!("{e}\nserver log:\n{}", tail(&log, 40));
                    if !taken {
                        break;
                    }
                    // Start over with an empty log on another port.
                    let _ = std::fs::remove_file(self.dir.join("log"));
                }
            }
        }
        Err(err(last))
    }

    fn create_database(&self, name: &str) -> Result<(), PgError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(format!(
                "database name {name:?}: use letters, digits and _"
            )));
        }
        let out = self
            .tool("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(name)
            .output();
        check(&format!("createdb {name}"), out)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.port != 0 {
            stop_server(self);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops the server now (`-m immediate`: no checkpoint, nothing to keep);
/// when `pg_ctl` cannot, kills the postmaster by the pid in its pid file.
fn stop_server(c: &PgCluster) {
    let stopped = c
        .tool("pg_ctl")
        .arg("-D")
        .arg(c.data())
        .args(["-m", "immediate", "-w", "-t", "30", "stop"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if stopped {
        return;
    }
    if let Some(pid) = std::fs::read_to_string(c.data().join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
        .filter(|p| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_digit()))
    {
        let _ = Command::new("kill").args(["-KILL", &pid]).output();
    }
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(prog).is_file()))
}

fn succeeds(c: &mut Command) -> bool {
    c.output().map(|o| o.status.success()).unwrap_or(false)
}

fn check(what: &str, out: std::io::Result<Output>) -> Result<(), PgError> {
    let out = out.map_err(|e| err(format!("{what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(err(format!(
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> Result<u16, PgError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("probing a port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| err(format!("probing a port: {e}")))
}

/// The workspace's `target/pg-tests` (or `$CARGO_TARGET_DIR/pg-tests`).
fn base_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t).join("pg-tests"),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg-tests"),
    }
}

/// A fresh directory `pg-<pid>-<n>` under [`base_dir`], mode 0700. Removes
/// the directories of test processes that are gone (killed before their
/// clusters' drop ran), stopping any server still running there.
fn scratch() -> Result<PathBuf, PgError> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = base_dir();
    std::fs::create_dir_all(&base).map_err(|e| err(format!("{}: {e}", base.display())))?;
    // Shorter (no `..`), for the Unix socket's path.
    let base = base
        .canonicalize()
        .map_err(|e| err(format!("{}: {e}", base.display())))?;
    reap(&base);
    let dir = base.join(format!(
        "pg-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// Clean up after test processes that died without dropping their
/// clusters.
fn reap(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pg-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let dir = e.path();
        let stale = PgCluster {
            bin: bin_dir().unwrap_or_default(),
            as_postgres: std::fs::metadata(base)
                .map(|m| m.uid() == 0)
                .unwrap_or(false),
            port: 0,
            dir: dir.clone(),
        };
        if stale.data().join("postmaster.pid").exists() {
            stop_server(&stale);
        }
        // Its drop removes the directory.
    }
}
