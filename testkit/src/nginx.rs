//! One private nginx for tests: serves a directory, read-only, on a free
//! port of 127.0.0.1, killed when dropped. The reference HTTP server the
//! update client's downloads (range requests included) are checked
//! against.
//!
//! ```no_run
//! let Some(web) = fluxnode_testkit::nginx::Nginx::start("/some/repo") else { return };
//! let url = format!("{}/targets/root.img", web.base_url()); // http://127.0.0.1:P/targets/root.img
//! ```
//!
//! [`Nginx::start`] skips (through [`crate::skip`]) when `nginx` is found
//! neither on PATH nor in `/usr/sbin` (where Debian's `nginx` package puts
//! it; a non-root PATH often lacks it), and panics when it is there but
//! fails: a broken server must fail the test, not hide it.
//!
//! It needs nothing from the system's nginx setup (no `/etc/nginx`, no
//! systemd unit, no `/var/lib/nginx`, no `/var/log/nginx`): its own config
//! file, pid file, logs and temporary directories live in a temporary
//! directory under the workspace's `target/nginx-tests`, removed on drop.
//! It runs as one process in the foreground (`daemon off`,
//! `master_process off`), so that killing the child leaves no worker
//! behind. As root it says `user root <group 0>`: nginx would otherwise
//! look up `nobody`/`nogroup` (missing from minimal containers) and the
//! served directory would have to be readable by them. Only what every
//! kernel has: IPv4 loopback, no `sendfile`, no AIO, no `reuseport`.
//!
//! Static files answer `GET` and `HEAD`, single and multiple byte ranges
//! (206, `Content-Range`), conditional requests; anything else is 405.
//! Each request is appended to [`Nginx::access_log`] as
//! `METHOD URI STATUS BODY_BYTES "RANGE"`.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long nginx may take to answer its first request (a loaded CI
/// machine runs other tests at the same time).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at finding a free port and starting on it (another process
/// may take the port between the probe and nginx's bind).
const START_ATTEMPTS: usize = 5;

/// Why an nginx that is installed could not be set up or started.
#[derive(Debug)]
pub struct NginxError(String);

impl fmt::Display for NginxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NginxError {}

fn err(what: impl fmt::Display) -> NginxError {
    NginxError(what.to_string())
}

/// A running private nginx; killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct Nginx {
    // Field order: the child is killed in `drop` before the directory goes.
    child: Child,
    port: u16,
    root: PathBuf,
    dir: tempfile::TempDir,
}

/// The nginx binary: the one on PATH, else `/usr/sbin/nginx`.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
        {
            return Some(p);
        }
    }
    let p = PathBuf::from("/usr/sbin/nginx");
    p.is_file().then_some(p)
}

impl Nginx {
    /// Starts nginx serving `root` (a directory) and waits until it
    /// answers; `None` after [`crate::skip`] when nginx is not installed.
    /// Panics when it is there but fails.
    #[allow(clippy::panic)] // a broken server must fail the test
    pub fn start(root: impl AsRef<Path>) -> Option<Self> {
        match Self::try_start(root) {
            Ok(n) => n,
            Err(e) => panic!("nginx: {e}"),
        }
    }

    /// [`Nginx::start`] returning the failure instead of panicking.
    pub fn try_start(root: impl AsRef<Path>) -> Result<Option<Self>, NginxError> {
        let Some(bin) = binary() else {
            crate::skip("nginx is neither on PATH nor in /usr/sbin (apt-get install nginx)");
            return Ok(None);
        };
        let root = root.as_ref();
        let root = root
            .canonicalize()
            .map_err(|e| err(format!("{}: {e}", root.display())))?;
        if !root.is_dir() {
            return Err(err(format!("{} is not a directory", root.display())));
        }
        let dir = scratch()?;
        let as_root = std::fs::metadata(dir.path())
            .map_err(|e| err(format!("{}: {e}", dir.path().display())))?
            .uid()
            == 0;
        let modules = compiled_modules(&bin)?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let conf = config(dir.path(), &root, port, as_root, &modules)?;
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf)
                .map_err(|e| err(format!("{}: {e}", conf_path.display())))?;
            let _ = std::fs::remove_file(dir.path().join("error.log"));
            let stderr = std::fs::File::create(dir.path().join("stderr"))
                .map_err(|e| err(format!("{}/stderr: {e}", dir.path().display())))?;
            let mut child = Command::new(&bin)
                .arg("-p")
                .arg(format!("{}/", dir.path().display()))
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&conf_path)
                .current_dir(dir.path())
                // nginx takes listening sockets from `NGINX` (its binary
                // upgrade): never from the caller's environment.
                .env_remove("NGINX")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .map_err(|e| err(format!("starting {}: {e}", bin.display())))?;
            match wait_answering(&mut child, port) {
                Ok(()) => {
                    return Ok(Some(Nginx {
                        child,
                        port,
                        root,
                        dir,
                    }))
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = format!(
                        "{}{}",
                        read(&dir.path().join("stderr")),
                        read(&dir.path().join("error.log"))
                    );
                    last = format!("{e}\nnginx's log:\n{}", tail(&log, 40));
                    if !log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        Err(err(last))
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): a file `a/b` of the
    /// served directory is `{base_url}/a/b`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The served directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory nginx's config, pid file, logs and temporary files
    /// live in (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The access log so far, one line a request:
    /// `METHOD URI STATUS BODY_BYTES "RANGE"` (`"-"`: no Range header).
    /// nginx writes a line once it has sent the response, which may be a
    /// moment after the client has read it.
    pub fn access_log(&self) -> String {
        read(&self.dir.path().join("access.log"))
    }

    /// The error log so far (for a failing test's message).
    pub fn error_log(&self) -> String {
        format!(
            "{}{}",
            read(&self.dir.path().join("stderr")),
            read(&self.dir.path().join("error.log"))
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (`master_process off`): nothing survives SIGKILL.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which optional modules with temporary paths nginx was built with.
fn compiled_modules(bin: &Path) -> Result<Vec<&'static str>, NginxError> {
    let out = Command::new(bin)
        .arg("-V")
        .output()
        .map_err(|e| err(format!("{} -V: {e}", bin.display())))?;
    // `nginx -V` prints on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(["proxy", "fastcgi", "uwsgi", "scgi"]
        .into_iter()
        .filter(|m| !text.contains(&format!("--without-http_{m}_module")))
        .collect())
}

/// The config file's text.
fn config(
    dir: &Path,
    root: &Path,
    port: u16,
    as_root: bool,
    modules: &[&str],
) -> Result<String, NginxError> {
    let r = quoted(root)?;
    let user = if as_root {
        format!("user root {};\n", group_zero())
    } else {
        String::new()
    };
    let tmp = dir.join("tmp");
    let mut temp_paths = format!(
        "    client_body_temp_path {};\n",
        quoted(&tmp.join("client_body"))?
    );
    for m in modules {
        temp_paths.push_str(&format!("    {m}_temp_path {};\n", quoted(&tmp.join(m))?));
    }
    std::fs::create_dir_all(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    Ok(format!(
        "# fluxnode testkit: a private nginx; see testkit/src/nginx.rs\n\
         daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         {user}\
         pid {d_pid};\n\
         lock_file {d_lock};\n\
         error_log {d_err} notice;\n\
         events {{\n    worker_connections 256;\n}}\n\
         http {{\n\
         \x20   types {{ }}\n\
         \x20   default_type application/octet-stream;\n\
         \x20   log_format fluxnode '$request_method $uri $status $body_bytes_sent \"$http_range\"';\n\
         \x20   access_log {d_access} fluxnode;\n\
         {temp_paths}\
         \x20   sendfile off;\n\
         \x20   aio off;\n\
         \x20   server_tokens off;\n\
         \x20   keepalive_timeout 30s;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       server_name localhost;\n\
         \x20       root {r};\n\
         \x20       autoindex off;\n\
         \x20       location / {{ }}\n\
         \x20   }}\n\
         }}\n",
        d_pid = quoted(&dir.join("nginx.pid"))?,
        d_lock = quoted(&dir.join("nginx.lock"))?,
        d_err = quoted(&dir.join("error.log"))?,
        d_access = quoted(&dir.join("access.log"))?,
    ))
}

/// `"path"` for the config file; refuses what nginx would read as
/// something else (a variable, an escape, the end of the string).
fn quoted(p: &Path) -> Result<String, NginxError> {
    let s = p
        .to_str()
        .ok_or_else(|| err(format!("{}: not UTF-8", p.display())))?;
    if s.chars()
        .any(|c| matches!(c, '"' | '\\' | '$' | '\'' | '{' | '}' | ';') || c.is_control())
    {
        return Err(err(format!(
            "{s}: nginx's config cannot name this path (quotes, backslash, $, braces, ;)"
        )));
    }
    Ok(format!("\"{s}\""))
}

/// The name of group 0 (`root` on Linux), from `/etc/group`.
fn group_zero() -> String {
    std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let gid = f.nth(1)?;
                (gid == "0" && !name.is_empty()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| "root".to_string())
}

/// Waits until nginx answers `HEAD /` with an HTTP status line.
fn wait_answering(child: &mut Child, port: u16) -> Result<(), NginxError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answers(port) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(err(format!("nginx exited ({status}) on port {port}")));
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "nginx did not answer on port {port} within {START_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"HEAD / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"HTTP/1.")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> Result<u16, NginxError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("probing a port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| err(format!("probing a port: {e}")))
}

/// A fresh directory under the workspace's `target/nginx-tests`
/// (or `$CARGO_TARGET_DIR/nginx-tests`).
fn scratch() -> Result<tempfile::TempDir, NginxError> {
    let base = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t).join("nginx-tests"),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nginx-tests"),
    };
    std::fs::create_dir_all(&base).map_err(|e| err(format!("{}: {e}", base.display())))?;
    let base = base
        .canonicalize()
        .map_err(|e| err(format!("{}: {e}", base.display())))?;
    tempfile::Builder::new()
        .prefix("nginx-")
        .tempdir_in(&base)
        .map_err(|e| err(format!("tempdir in {}: {e}", base.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn get(port: u16, head: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    }

    fn split(resp: &[u8]) -> (String, Vec<u8>) {
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&resp[..end]).to_string(),
            resp[end + 4..].to_vec(),
        )
    }

    #[test]
    fn serves_files_and_byte_ranges() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("targets")).unwrap();
        std::fs::write(root.path().join("targets/img"), &content).unwrap();
        let Some(web) = Nginx::start(root.path()) else {
            return;
        };
        assert!(web.base_url().starts_with("http://127.0.0.1:"));

        let (head, body) = split(&get(
            web.port(),
            "GET /targets/img HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, content);

        let (head, body) = split(&get(
            web.port(),
            "GET /targets/img HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-1999\r\nConnection: close\r\n\r\n",
        ));
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert!(
            head.contains("Content-Range: bytes 1000-1999/100000"),
            "{head}"
        );
        assert_eq!(body, &content[1000..2000]);

        let (head, body) = split(&get(
            web.port(),
            "GET /targets/img HTTP/1.1\r\nHost: x\r\nRange: bytes=99990-\r\nConnection: close\r\n\r\n",
        ));
        assert!(
            head.contains("Content-Range: bytes 99990-99999/100000"),
            "{head}"
        );
        assert_eq!(body, &content[99990..]);

        let (head, _) = split(&get(
            web.port(),
            "GET /targets/img HTTP/1.1\r\nHost: x\r\nRange: bytes=200000-\r\nConnection: close\r\n\r\n",
        ));
        assert!(head.starts_with("HTTP/1.1 416"), "{head}");

        let (head, _) = split(&get(
            web.port(),
            "GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ));
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        // Read-only.
        let (head, _) = split(&get(
            web.port(),
            "PUT /targets/img HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ));
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");

        // Through an ordinary client too.
        let resp = ureq::get(&format!("{}/targets/img", web.base_url()))
            .set("Range", "bytes=5-9")
            .call()
            .unwrap();
        assert_eq!(resp.status(), 206);
        let mut b = Vec::new();
        resp.into_reader().read_to_end(&mut b).unwrap();
        assert_eq!(b, &content[5..10]);

        let dir = web.dir().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !web.access_log().contains("\"bytes=5-9\"") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            web.access_log()
                .contains("GET /targets/img 206 1000 \"bytes=1000-1999\""),
            "{}",
            web.access_log()
        );
        drop(web);
        assert!(!dir.exists());
    }

    #[test]
    fn two_servers_side_by_side() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("f"), b"a").unwrap();
        std::fs::write(b.path().join("f"), b"b").unwrap();
        let Some(wa) = Nginx::start(a.path()) else {
            return;
        };
        let Some(wb) = Nginx::start(b.path()) else {
            return;
        };
        assert_ne!(wa.port(), wb.port());
        let read = |url: String| ureq::get(&url).call().unwrap().into_string().unwrap();
        assert_eq!(read(format!("{}/f", wa.base_url())), "a");
        assert_eq!(read(format!("{}/f", wb.base_url())), "b");
        let port = wa.port();
        drop(wa);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn refuses_paths_the_config_cannot_hold() {
        assert!(quoted(Path::new("/tmp/a\"b")).is_err());
        assert!(quoted(Path::new("/tmp/$x")).is_err());
        assert_eq!(quoted(Path::new("/tmp/a b")).unwrap(), "\"/tmp/a b\"");
    }
}
