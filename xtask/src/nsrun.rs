//! Runs `fluxnode-init` as PID 1 of a fresh PID + mount namespace and
//! collects what it prints, for the namespace demo and the init benchmark.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running init and the lines it prints.
pub struct NsInit {
    child: Child,
    rx: Receiver<(Instant, String)>,
    /// Every line so far.
    pub lines: Vec<(Instant, String)>,
    /// The run directory (control socket).
    pub run: PathBuf,
    /// Echo lines to the terminal as they come.
    pub echo: bool,
}

impl NsInit {
    /// Starts `init` with the services in `dir/services`.
    pub fn start(init: &Path, dir: &Path, echo: bool) -> Result<Self> {
        let run = dir.join("run");
        std::fs::create_dir_all(&run)?;
        let mut cmd = Command::new(init);
        cmd.arg("--services")
            .arg(dir.join("services"))
            .arg("--run-dir")
            .arg(&run)
            .arg("--config")
            .arg(dir.join("init.toml"));
        Self::start_cmd(&cmd, run, echo)
    }

    /// Starts any program as PID 1 of a fresh namespace (e.g. systemd, for comparison).
    pub fn start_cmd(inner: &Command, run: PathBuf, echo: bool) -> Result<Self> {
        let mut child = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--uts",
                // Its own network namespace: systemd as PID 1 raises
                // net.unix.max_dgram_qlen to 512 in the namespace it runs
                // in, and in the host's that changed how the host's later
                // tests behaved (docs/NETD.md). Nothing here needs a network.
                "--net",
                "--kill-child",
            ])
            .arg("env")
            .args(inner.get_envs().filter_map(|(k, v)| {
                v.map(|v| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            }))
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting unshare (util-linux); this needs root")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let pipes: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().context("no stdout")?),
            Box::new(child.stderr.take().context("no stderr")?),
        ];
        for p in pipes {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(p).lines().map_while(Result::ok) {
                    let _ = tx.send((Instant::now(), l));
                }
            });
        }
        Ok(NsInit {
            child,
            rx,
            lines: Vec::new(),
            run,
            echo,
        })
    }

    /// Waits for a line containing `pat`.
    pub fn wait_for(&mut self, pat: &str, timeout: Duration) -> Result<Instant> {
        if let Some((t, _)) = self.lines.iter().find(|(_, l)| l.contains(pat)) {
            return Ok(*t);
        }
        let end = Instant::now() + timeout;
        loop {
            match self
                .rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok((t, l)) => {
                    if self.echo {
                        println!("  | {l}");
                    }
                    let hit = l.contains(pat);
                    self.lines.push((t, l));
                    if hit {
                        return Ok(t);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("init did not print {pat:?} within {timeout:?}")
                }
                Err(RecvTimeoutError::Disconnected) => bail!("init ended before printing {pat:?}"),
            }
        }
    }

    /// Host pid of init (the child of unshare).
    pub fn init_pid(&self) -> Result<i32> {
        let p = self.child.id();
        for _ in 0..500 {
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
                if let Some(pid) = c.split_whitespace().next().and_then(|x| x.parse().ok()) {
                    return Ok(pid);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("unshare has no child")
    }

    /// How many direct children init has now.
    pub fn children(&self, pid: i32) -> usize {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map(|c| c.split_whitespace().count())
            .unwrap_or(0)
    }

    /// Waits until init has `n` children; when that was reached.
    pub fn wait_children(&self, n: usize, timeout: Duration) -> Result<Instant> {
        let pid = self.init_pid()?;
        let end = Instant::now() + timeout;
        loop {
            if self.children(pid) >= n {
                return Ok(Instant::now());
            }
            if Instant::now() > end {
                bail!(
                    "init had {} of {n} children after {timeout:?}",
                    self.children(pid)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends a signal to init.
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = self.init_pid()?;
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(pid, sig) };
        Ok(())
    }

    /// Waits for init to exit, echoing the rest; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        let end = Instant::now() + timeout;
        loop {
            while let Ok((t, l)) = self.rx.try_recv() {
                if self.echo {
                    println!("  | {l}");
                }
                self.lines.push((t, l));
            }
            if let Some(st) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                while let Ok((t, l)) = self.rx.try_recv() {
                    if self.echo {
                        println!("  | {l}");
                    }
                    self.lines.push((t, l));
                }
                return Ok(st.code().unwrap_or(-1));
            }
            if Instant::now() > end {
                bail!("init did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsInit {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Builds `fluxnode-init` in release mode; its path.
pub fn build_init(static_link: bool) -> Result<PathBuf> {
    let mut c = crate::util::cargo();
    c.args(["build", "--release", "--quiet", "-p", "fluxnode-init"]);
    let dir = if static_link {
        c.args(["--target", "x86_64-unknown-linux-gnu"])
            .env("RUSTFLAGS", "-C target-feature=+crt-static");
        "x86_64-unknown-linux-gnu/release"
    } else {
        "release"
    };
    crate::util::run(&mut c)?;
    Ok(crate::util::target_dir().join(dir).join("fluxnode-init"))
}

/// Where staged binaries and scratch directories go.
///
/// Normally `target/xtask`. When target/ itself is under /tmp, /run, /dev,
/// /proc or /sys, the namespace would hide it (init mounts a tmpfs over /tmp
/// and /run inside it), so they go to /var/tmp instead: not into a fixed,
/// guessable directory there (another local user could plant it, or a
/// symlink, before root copies binaries into it and runs them), but into a
/// fresh 0700 directory made with mkdtemp semantics, checked before each
/// use, and removed when xtask exits.
fn scratch_base() -> Result<PathBuf> {
    let target = crate::util::target_dir();
    let hidden = ["/tmp", "/run", "/dev", "/proc", "/sys"]
        .iter()
        .any(|p| target.starts_with(p));
    if !hidden {
        return Ok(target.join("xtask"));
    }
    let mut guard = STAGING
        .lock()
        .map_err(|_| anyhow::anyhow!("staging directory lock poisoned"))?;
    if guard.is_none() {
        let dir = private_dir(Path::new(VAR_TMP))?;
        // SAFETY: `remove_staging` is an `extern "C" fn()` that never unwinds
        // out (it only drops the TempDir, ignoring errors).
        if unsafe { libc::atexit(remove_staging) } != 0 {
            eprintln!(
                "xtask: warning: cannot register removal of {}",
                dir.path().display()
            );
        }
        *guard = Some(dir);
    }
    let dir = guard
        .as_ref()
        .context("staging directory vanished")?
        .path()
        .to_path_buf();
    check_private(&dir)?;
    Ok(dir)
}

/// The parent of the staging directory when target/ would be hidden.
const VAR_TMP: &str = "/var/tmp";

/// This process's staging directory under /var/tmp, once made.
static STAGING: std::sync::Mutex<Option<tempfile::TempDir>> = std::sync::Mutex::new(None);

/// Removes the staging directory at exit (statics are never dropped).
extern "C" fn remove_staging() {
    let _ = std::panic::catch_unwind(|| {
        if let Ok(mut g) = STAGING.lock() {
            drop(g.take());
        }
    });
}

/// A fresh directory under `parent`, made with mkdtemp semantics (a random
/// name, created exclusively, mode 0700) and checked to be ours; removed
/// when the returned guard drops.
fn private_dir(parent: &Path) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("fluxnode-xtask.")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .with_context(|| format!("creating a private directory in {}", parent.display()))?;
    check_private(dir.path())?;
    Ok(dir)
}

/// Fails unless `dir` is a real directory (not a symlink), owned by our
/// effective uid, with mode 0700.
fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m =
        std::fs::symlink_metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !m.file_type().is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if m.uid() != euid {
        bail!(
            "{} is owned by uid {}, not by us ({euid})",
            dir.display(),
            m.uid()
        );
    }
    if m.mode() & 0o7777 != 0o700 {
        bail!(
            "{} has mode {:o}, not 700",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// A copy of `bin` where services inside the namespace can exec it.
pub fn stage_binary(bin: &Path) -> Result<PathBuf> {
    let dir = scratch_base()?.join("bin");
    std::fs::create_dir_all(&dir)?;
    let dst = dir.join(bin.file_name().context("binary has no file name")?);
    let tmp = dst.with_extension("tmp");
    std::fs::copy(bin, &tmp).with_context(|| format!("copying {}", bin.display()))?;
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}

/// A fresh scratch directory that init's own mounts (tmpfs on /tmp and
/// /run inside the namespace) do not hide: under target/, or a private
/// directory in /var/tmp when target/ itself is under /tmp (see
/// [`scratch_base`]).
pub fn scratch(name: &str) -> Result<PathBuf> {
    let dir = scratch_base()?.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("services"))?;
    std::fs::write(dir.join("init.toml"), "boot_complete_grace_ms = 1000\n")?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn private_dir_is_fresh_0700_and_ours() {
        let parent = tempfile::tempdir().unwrap();
        let a = private_dir(parent.path()).unwrap();
        let b = private_dir(parent.path()).unwrap();
        assert_ne!(a.path(), b.path(), "two calls must give two directories");
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        for d in [&a, &b] {
            let m = std::fs::symlink_metadata(d.path()).unwrap();
            assert!(m.file_type().is_dir());
            assert_eq!(m.mode() & 0o7777, 0o700, "{}", d.path().display());
            assert_eq!(m.uid(), euid);
            assert_eq!(d.path().parent(), Some(parent.path()));
        }
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists(), "dropping the guard removes the directory");
    }

    #[test]
    fn check_private_refuses_loose_modes_and_symlinks() {
        let parent = tempfile::tempdir().unwrap();
        let d = private_dir(parent.path()).unwrap();
        check_private(d.path()).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_private(d.path()).is_err());
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(d.path(), &link).unwrap();
        assert!(
            check_private(&link).is_err(),
            "a symlink is not our directory"
        );
        let file = parent.path().join("file");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_private(&file).is_err());
    }
}
