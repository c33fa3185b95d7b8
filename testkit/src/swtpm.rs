//! One software TPM for tests: a manufactured swtpm (EK, EK certificate
//! and platform certificate from a private local CA), listening on a free
//! TCP port pair, killed when dropped.
//!
//! ```no_run
//! let Some(tpm) = fluxnode_testkit::swtpm::Swtpm::start() else { return };
//! // hal: Tpm::open(&tpm.tcti()); tpm2-tools: -T swtpm:port={tpm.port()}
//! ```
//!
//! [`Swtpm::start`] skips (through [`crate::skip`]) when swtpm, swtpm_setup
//! or swtpm_localca are not on PATH, and panics when they are there but
//! fail: a broken TPM must fail the test, not hide it. Everything lives in
//! a temporary directory under the workspace's `target/swtpm-tests`,
//! removed on drop: `state/` (the TPM's NVRAM) and `ca/` (the local CA:
//! `swtpm-localca-rootca-cert.pem`, the self-signed root, and
//! `issuercert.pem`, the intermediate that signs the EK certificate).

use std::fmt;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long swtpm may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at finding a free port pair and starting on it (another
/// process may take the ports between the probe and swtpm's bind).
const START_ATTEMPTS: usize = 5;

/// Why a swtpm that is installed could not be made or started.
#[derive(Debug)]
pub struct SwtpmError(String);

impl fmt::Display for SwtpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SwtpmError {}

fn err(what: impl fmt::Display) -> SwtpmError {
    SwtpmError(what.to_string())
}

/// A running, manufactured swtpm; killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct Swtpm {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

/// The full path of `prog` on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

impl Swtpm {
    /// Manufactures a TPM and starts it; `None` after [`crate::skip`] when
    /// swtpm's tools are missing. Panics when they are there but fail.
    #[allow(clippy::panic)] // a broken swtpm must fail the test
    pub fn start() -> Option<Self> {
        match Self::try_start() {
            Ok(s) => s,
            Err(e) => panic!("swtpm: {e}"),
        }
    }

    /// [`Swtpm::start`] returning the failure instead of panicking.
    pub fn try_start() -> Result<Option<Self>, SwtpmError> {
        Self::try_start_with_banks("sha256")
    }

    /// [`Swtpm::start`] with these PCR banks allocated (`sha1,sha256`:
    /// for tests of what a verifier does with SHA-1 quotes).
    #[allow(clippy::panic)] // a broken swtpm must fail the test
    pub fn start_with_banks(banks: &str) -> Option<Self> {
        match Self::try_start_with_banks(banks) {
            Ok(s) => s,
            Err(e) => panic!("swtpm: {e}"),
        }
    }

    fn try_start_with_banks(banks: &str) -> Result<Option<Self>, SwtpmError> {
        for (prog, pkg) in [
            ("swtpm", "swtpm"),
            ("swtpm_setup", "swtpm-tools"),
            ("swtpm_localca", "swtpm-tools"),
        ] {
            if which(prog).is_none() {
                crate::skip(format!("{prog} is not installed (apt-get install {pkg})"));
                return Ok(None);
            }
        }
        let dir = scratch()?;
        manufacture_with_banks(dir.path(), banks)?;
        let (child, port) = spawn(&dir.path().join("state"))?;
        Ok(Some(Swtpm { dir, child, port }))
    }

    /// Stops this TPM and starts it again on the same state (same EK, same
    /// certificates, same NV): a power cycle. The port changes, so take
    /// [`Swtpm::tcti`] again.
    pub fn restart(&mut self) -> Result<(), SwtpmError> {
        stop(&mut self.child);
        let (child, port) = spawn(&self.state_dir())?;
        self.child = child;
        self.port = port;
        Ok(())
    }

    /// The TCTI string for tss-esapi (`swtpm:host=127.0.0.1,port=P`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The command port (the control port is the next one): tpm2-tools
    /// take `-T swtpm:port=P`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory everything lives in (scratch files of a
    /// test may go here too; it is removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TPM's state directory (`swtpm --tpmstate dir=`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The local CA's directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// The local CA's self-signed root certificate (PEM).
    pub fn ca_root_cert(&self) -> PathBuf {
        self.ca_dir().join("swtpm-localca-rootca-cert.pem")
    }

    /// The local CA's intermediate certificate (PEM), signed by the root;
    /// it signs the EK and platform certificates.
    pub fn ca_intermediate_cert(&self) -> PathBuf {
        self.ca_dir().join("issuercert.pem")
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A fresh directory under the workspace's `target/swtpm-tests`.
fn scratch() -> Result<tempfile::TempDir, SwtpmError> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/swtpm-tests");
    std::fs::create_dir_all(&base).map_err(|e| err(format!("{}: {e}", base.display())))?;
    tempfile::tempdir_in(&base).map_err(|e| err(format!("tempdir in {}: {e}", base.display())))
}

fn write(path: &Path, text: &str) -> Result<(), SwtpmError> {
    std::fs::write(path, text).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// `swtpm_setup --tpm2 --create-ek-cert --create-platform-cert` with a
/// local CA private to `d` (`d/ca`: `swtpm-localca-rootca-cert.pem`, the
/// root; `issuercert.pem`, the intermediate that signs EK certificates),
/// into the TPM state directory `d/state`. For a TPM that something else
/// runs (QEMU's swtpm).
pub fn manufacture(d: &Path) -> Result<(), SwtpmError> {
    manufacture_with_banks(d, "sha256")
}

fn manufacture_with_banks(d: &Path, banks: &str) -> Result<(), SwtpmError> {
    if banks.is_empty()
        || !banks
            .split(',')
            .all(|b| ["sha1", "sha256", "sha384", "sha512"].contains(&b))
    {
        return Err(err(format!(
            "PCR banks {banks:?}: a comma-separated list of sha1, sha256, sha384, sha512"
        )));
    }
    let ca = d.join("ca");
    let state = d.join("state");
    for dir in [&ca, &state] {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    }
    let localca = which("swtpm_localca").ok_or_else(|| err("swtpm_localca vanished"))?;
    write(
        &d.join("localca.conf"),
        &format!(
            "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
            ca.display()
        ),
    )?;
    write(
        &d.join("localca.options"),
        "--platform-manufacturer fluxnode\n--platform-version 2.1\n--platform-model test\n",
    )?;
    write(
        &d.join("setup.conf"),
        &format!(
            "create_certs_tool = {1}\ncreate_certs_tool_config = {0}/localca.conf\ncreate_certs_tool_options = {0}/localca.options\nactive_pcr_banks = {2}\n",
            d.display(),
            localca.display(),
            banks
        ),
    )?;
    let out = Command::new("swtpm_setup")
        .args([
            "--tpm2",
            "--create-ek-cert",
            "--create-platform-cert",
            "--overwrite",
            "--tpmstate",
        ])
        .arg(&state)
        .arg("--config")
        .arg(d.join("setup.conf"))
        .output()
        .map_err(|e| err(format!("running swtpm_setup: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "swtpm_setup failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// A port P with P and P+1 free on 127.0.0.1 (swtpm's server and control).
fn free_port_pair() -> Result<u16, SwtpmError> {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("bind: {e}")))?;
        let p = a
            .local_addr()
            .map_err(|e| err(format!("bind: {e}")))?
            .port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    Err(err("no free pair of TCP ports on 127.0.0.1"))
}

/// Starts `swtpm socket` on `state` and waits until it listens.
fn spawn(state: &Path) -> Result<(Child, u16), SwtpmError> {
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port_pair()?;
        let mut child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={port}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={}", port + 1))
            .args(["--flags", "not-need-init,startup-clear", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("starting swtpm: {e}")))?;
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok((child, port));
            }
            // Exited: most likely it lost the port to someone else; retry.
            if let Ok(Some(status)) = child.try_wait() {
                last = format!("swtpm exited ({status}) on port {port}");
                break;
            }
            if Instant::now() >= deadline {
                stop(&mut child);
                return Err(err(format!(
                    "swtpm did not listen on {port} within {LISTEN_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    Err(err(last))
}
