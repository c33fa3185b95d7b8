//! Runs the real `fluxnode-init` as PID 1 of a new PID and mount namespace
//! (`unshare --pid --fork --mount --mount-proc`) against service files
//! written by the test, and watches what it prints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const INIT: &str = env!("CARGO_BIN_EXE_fluxnode-init");

/// Why this machine cannot run namespace tests, if it cannot.
pub fn cannot_run() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        });
    if uid.as_deref() != Some("0") {
        return Some("not root: PID namespaces and mounts need root".into());
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        return Some("unshare (util-linux) is not installed".into());
    }
    None
}

/// Skips the test with a printed reason when the machine cannot run it.
#[macro_export]
macro_rules! need_namespaces {
    () => {
        if let Some(why) = harness::cannot_run() {
            fluxnode_testkit::skip(why);
            return;
        }
    };
}

/// A line init printed, with when it arrived and when init wrote it.
#[derive(Clone, Debug)]
pub struct Line {
    /// When the test's reader thread got it.
    pub at: Instant,
    /// init's own stamp (`--timestamps`: CLOCK_BOOTTIME when it wrote the
    /// line), without the arrival jitter of a reader thread on a busy host.
    pub stamp: Option<Duration>,
    pub text: String,
}

impl Line {
    /// How long after `earlier` init wrote this line: init's stamps where
    /// both lines carry one, arrival times otherwise. Arrival times can
    /// shrink a gap (the first line read late, the second on time), so
    /// lower bounds on init's delays are checked on the stamps.
    pub fn since(&self, earlier: &Line) -> Duration {
        match (self.stamp, earlier.stamp) {
            (Some(a), Some(b)) => a.saturating_sub(b),
            _ => self.at.saturating_duration_since(earlier.at),
        }
    }
}

/// Splits init's `[    12.345678] ` console stamp off a line.
fn split_stamp(l: &[u8]) -> (Option<Duration>, &[u8]) {
    let parsed = (|| {
        let rest = l.strip_prefix(b"[")?;
        let end = rest.iter().position(|&b| b == b']')?;
        let secs: f64 = std::str::from_utf8(&rest[..end])
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let text = rest[end + 1..].strip_prefix(b" ")?;
        Some((Duration::from_secs_f64(secs), text))
    })();
    match parsed {
        Some((d, text)) => (Some(d), text),
        None => (None, l),
    }
}

pub struct Ns {
    pub dir: PathBuf,
    pub services: PathBuf,
    pub run: PathBuf,
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    /// Lines counted but not kept (see [`Ns::start_muted`]).
    muted: Arc<std::sync::atomic::AtomicU64>,
    pub t0: Instant,
}

fn scratch_base() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let hidden = ["/tmp", "/run", "/dev", "/proc", "/sys"]
        .iter()
        .any(|p| target.starts_with(p));
    if hidden {
        PathBuf::from("/var/tmp/fluxnode-init-tests")
    } else {
        target.to_path_buf()
    }
}

/// The init binary at a path services inside the namespace can reach
/// (a copy in the scratch base when the target dir is under /tmp).
pub fn init_in_ns() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dst = scratch_base().join(format!("fluxnode-init-{}", std::process::id()));
        std::fs::create_dir_all(scratch_base()).unwrap();
        std::fs::copy(INIT, &dst).unwrap();
        dst
    })
    .clone()
}

/// A fresh scratch directory that init's own mounts do not hide: init
/// mounts tmpfs on /tmp and /run inside the namespace, so a checkout under
/// /tmp (CI may clone there) cannot hold the test's files; /var/tmp then.
pub fn scratch(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = scratch_base().join(format!("ns-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("services")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    dir
}

/// What runs in the namespace besides init (one at a time).
enum Setup<'a> {
    Plain,
    /// A stand-in for stage 1's /var child.
    Var(&'a str),
    /// Lines starting with this are counted, not kept.
    Mute(&'a str),
    /// A shell command before init.
    Before(&'a str),
}

/// A scratch directory with `services` (name, toml) and `init_toml`.
fn write_config(name: &str, services: &[(&str, String)], init_toml: &str) -> PathBuf {
    let dir = scratch(name);
    for (n, text) in services {
        std::fs::write(dir.join("services").join(format!("{n}.toml")), text).unwrap();
    }
    std::fs::write(dir.join("init.toml"), init_toml).unwrap();
    dir
}

impl Ns {
    /// Writes `services` (name, toml) and `init_toml`, then starts init.
    pub fn start(name: &str, services: &[(&str, String)], init_toml: &str) -> Ns {
        Self::spawn(write_config(name, services, init_toml))
    }

    /// As [`Ns::start`], with `var_script` (a shell command) standing for
    /// stage 1's /var child: it runs as init's child, pid 2 in the
    /// namespace, and init is told to wait for it as for /var.
    pub fn start_with_var(
        name: &str,
        services: &[(&str, String)],
        init_toml: &str,
        var_script: &str,
    ) -> Ns {
        Self::spawn_with(write_config(name, services, init_toml), Some(var_script))
    }

    pub fn spawn(dir: PathBuf) -> Ns {
        Self::spawn_with(dir, None)
    }

    /// As [`Ns::start`], but lines starting with `mute` (a flooding
    /// service's, `NAME: `) are only counted ([`Ns::muted`]), not kept.
    pub fn start_muted(name: &str, services: &[(&str, String)], init_toml: &str, mute: &str) -> Ns {
        Self::spawn_full(write_config(name, services, init_toml), Setup::Mute(mute))
    }

    /// As [`Ns::start`], with `before` (a shell command) run inside the
    /// namespace first, e.g. a mount that only the namespace sees.
    pub fn start_after(
        name: &str,
        services: &[(&str, String)],
        init_toml: &str,
        before: &str,
    ) -> Ns {
        Self::spawn_full(
            write_config(name, services, init_toml),
            Setup::Before(before),
        )
    }

    fn spawn_with(dir: PathBuf, var_script: Option<&str>) -> Ns {
        Self::spawn_full(dir, var_script.map_or(Setup::Plain, Setup::Var))
    }

    fn spawn_full(dir: PathBuf, setup: Setup) -> Ns {
        let (var_script, mute, before) = match setup {
            Setup::Plain => (None, None, None),
            Setup::Var(s) => (Some(s), None, None),
            Setup::Mute(m) => (None, Some(m), None),
            Setup::Before(b) => (None, None, Some(b)),
        };
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount", "--mount-proc", "--kill-child"]);
        if let Some(before) = before {
            // sh is pid 1 for the command, then becomes init.
            cmd.args(["/bin/sh", "-c"])
                .arg(format!("{before} && exec \"$0\" \"$@\""));
        }
        if let Some(script) = var_script {
            // sh is pid 1; its background subshell pid 2; then sh becomes init.
            cmd.args(["/bin/sh", "-c"])
                .arg(format!("( {script} ) & exec \"$0\" \"$@\""))
                .env("FLUXNODE_VAR_PID", "2");
        }
        let mut child = cmd
            .arg(INIT)
            .arg("--services")
            .arg(dir.join("services"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--config")
            .arg(dir.join("init.toml"))
            .arg("--timestamps")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning unshare");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let muted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            let (muted, mute) = (muted.clone(), mute.map(str::to_owned));
            std::thread::spawn(move || {
                // Bytes, not String lines: a flood need not be UTF-8.
                for l in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                    let (stamp, l) = split_stamp(&l);
                    if mute.as_ref().is_some_and(|m| l.starts_with(m.as_bytes())) {
                        muted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    let l = l.strip_suffix(b"\r").unwrap_or(l);
                    let l = String::from_utf8_lossy(l).into_owned();
                    lines.lock().unwrap().push(Line {
                        at: Instant::now(),
                        stamp,
                        text: l,
                    });
                }
            });
        }
        Ns {
            services: dir.join("services"),
            run: dir.join("run"),
            dir,
            child,
            lines,
            muted,
            t0: Instant::now(),
        }
    }

    /// Lines counted but not kept ([`Ns::start_muted`]).
    pub fn muted(&self) -> u64 {
        self.muted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A `kB` figure of init's /proc/PID/status (`VmRSS`, `VmHWM`).
    pub fn init_status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.init_pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in init's status"))
    }

    /// The control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.run.join("control.sock")
    }

    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap().clone()
    }

    pub fn log(&self) -> String {
        self.lines()
            .iter()
            .map(|l| {
                format!(
                    "{:>6} ms  {}\n",
                    l.at.duration_since(self.t0).as_millis(),
                    l.text
                )
            })
            .collect()
    }

    /// Waits until a line contains `pat`; panics with the log after `secs`.
    pub fn wait_for(&self, pat: &str, secs: u64) -> Line {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.text.contains(pat)) {
                return l;
            }
            if Instant::now() > end {
                panic!(
                    "no line with {pat:?} within {secs} s; init printed:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line containing `pat`.
    pub fn all(&self, pat: &str) -> Vec<Line> {
        self.lines()
            .into_iter()
            .filter(|l| l.text.contains(pat))
            .collect()
    }

    /// The host pid of init (the child of `unshare`).
    pub fn init_pid(&self) -> i32 {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let p = self.child.id();
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
                if let Some(pid) = c.split_whitespace().next().and_then(|x| x.parse().ok()) {
                    return pid;
                }
            }
            assert!(Instant::now() < end, "unshare has no child");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.init_pid();
        unsafe { libc::kill(pid, sig) };
    }

    /// `fluxnode-init ctl ARGS` against this init.
    pub fn ctl(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(INIT)
            .arg("ctl")
            .arg("--socket")
            .arg(self.run.join("control.sock"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `fluxnode-init ctl ARGS` as another user (uid, gid), from the
    /// copy of init that any user can run.
    pub fn ctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> (i32, String) {
        use std::os::unix::process::CommandExt;
        let out = Command::new(init_in_ns())
            .arg("ctl")
            .arg("--socket")
            .arg(self.run.join("control.sock"))
            .args(args)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The notify socket's directory (beside the run directory).
    pub fn notify_dir(&self) -> PathBuf {
        self.dir.join("run-notify")
    }

    /// Waits for init (through unshare) to exit; its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> i32 {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(100));
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > end {
                panic!(
                    "init did not exit within {secs} s; it printed:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Host pids of every process in the namespace but init.
    pub fn descendants(&self) -> Vec<i32> {
        let init = self.init_pid();
        let mut out = Vec::new();
        let mut todo = vec![init];
        while let Some(p) = todo.pop() {
            if let Ok(c) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
                for k in c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()) {
                    out.push(k);
                    todo.push(k);
                }
            }
        }
        out
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A service file running `script` with /bin/sh, plus extra TOML.
pub fn sh(script: &str, extra: &str) -> String {
    format!("argv = [\"/bin/sh\", \"-c\", {script:?}]\n{extra}\n")
}

/// The shell command that sends sd_notify messages through init's own helper.
pub fn notify_cmd(msg: &str) -> String {
    format!("{} notify {msg}", init_in_ns().display())
}
