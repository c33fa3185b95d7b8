//! A private CNCF distribution registry (Debian's `docker-registry`) for
//! tests, on a free port of 127.0.0.1, with filesystem storage in a
//! temporary directory; killed when dropped. And [`push_busybox`], which
//! builds a one-binary OCI image from Debian's `busybox-static` with
//! `umoci` and pushes it with `skopeo`, as an app publisher would.
//!
//! ```no_run
//! let Some(reg) = fluxnode_testkit::oci_registry::OciRegistry::start() else { return };
//! let work = tempfile::tempdir().unwrap();
//! let digest = fluxnode_testkit::oci_registry::push_busybox(&reg, "hello:1.0",
//!     &["/bin/busybox", "httpd", "-f", "-p", "8080"], work.path()).unwrap();
//! ```
//!
//! [`OciRegistry::start`] skips (through [`crate::skip`]) when the
//! registry is not installed, and panics when it is but fails to start.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;

/// A running registry.
#[derive(Debug)]
pub struct OciRegistry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

impl OciRegistry {
    /// Starts a registry, or skips when `docker-registry` is missing.
    #[allow(clippy::panic)] // a broken registry must fail the test
    pub fn start() -> Option<OciRegistry> {
        let Some(bin) = find("docker-registry") else {
            crate::skip("docker-registry is not installed (Debian package docker-registry)");
            return None;
        };
        for attempt in 0..START_ATTEMPTS {
            match Self::try_start(&bin) {
                Ok(r) => return Some(r),
                Err(e) if attempt + 1 < START_ATTEMPTS => {
                    eprintln!("docker-registry: {e}; trying another port")
                }
                Err(e) => panic!("docker-registry does not start: {e}"),
            }
        }
        None
    }

    fn try_start(bin: &Path) -> Result<OciRegistry, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut reg = OciRegistry { child, dir, port };
        let t0 = Instant::now();
        while t0.elapsed() < START_TIMEOUT {
            if answers(port) {
                return Ok(reg);
            }
            if let Ok(Some(status)) = reg.child.try_wait() {
                let log = std::fs::read_to_string(reg.dir.path().join("registry.log"))
                    .unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no answer on port {port} within {START_TIMEOUT:?}"))
    }

    /// `127.0.0.1:PORT`, the registry part of a reference.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the registry keeps a blob's bytes (to damage it on purpose).
    pub fn blob_data(&self, digest_hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&digest_hex[..2])
            .join(digest_hex)
            .join("data")
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds an image holding only `/bin/busybox` (from `busybox-static`)
/// with this entrypoint, and pushes it as `NAME:TAG` to the registry.
/// Returns the pushed manifest's digest (`sha256:...`). Needs `umoci`,
/// `skopeo` and `/bin/busybox`; `work` is a scratch directory.
pub fn push_busybox(
    reg: &OciRegistry,
    name_tag: &str,
    entrypoint: &[&str],
    work: &Path,
) -> Result<String, String> {
    let busybox =
        find("busybox").ok_or("busybox is not installed (Debian package busybox-static)")?;
    let umoci = find("umoci").ok_or("umoci is not installed")?;
    let skopeo = find("skopeo").ok_or("skopeo is not installed")?;
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let image = format!("{}:img", layout.display());
    run(Command::new(&umoci).args(["init", "--layout"]).arg(&layout))?;
    run(Command::new(&umoci).args(["new", "--image", &image]))?;
    run(Command::new(&umoci)
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy(&busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    run(Command::new(&umoci)
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    let mut cfg = Command::new(&umoci);
    cfg.args([
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
    ]);
    for e in entrypoint {
        cfg.arg(format!("--config.entrypoint={e}"));
    }
    run(&mut cfg)?;
    let digest_file = work.join("digest");
    run(Command::new(&skopeo)
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            "--digestfile",
        ])
        .arg(&digest_file)
        .arg(format!("oci:{image}"))
        .arg(format!("docker://{}/{name_tag}", reg.addr())))?;
    let digest = std::fs::read_to_string(&digest_file).map_err(|e| e.to_string())?;
    Ok(digest.trim().to_string())
}
