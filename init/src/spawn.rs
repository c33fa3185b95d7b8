//! Starting a service's process.
//!
//! The child gets a clean state before exec: its own session (so the whole
//! service can be signalled as a process group), an empty signal mask and
//! default dispositions (a SIGPIPE left ignored kills services later on a
//! closed pipe), stdin from /dev/null, stdout and stderr into one pipe that
//! init reads line by line, and its cgroup, so nothing it forks escapes the
//! limits.
//!
//! The child is created inside its cgroup (`clone3` with
//! `CLONE_INTO_CGROUP`, Linux 5.7) instead of moving itself there by
//! writing `cgroup.procs`: a move takes the kernel's cgroup threadgroup lock
//! for writing, which waits for an RCU grace period. Under TCG that wait
//! was 20–40 ms of every service start, on the boot's critical path twice
//! (docs/INIT.md). Where the kernel refuses the clone (older kernels, a
//! seccomp filter, a cgroup it cannot seed) init forks and writes
//! `cgroup.procs` as before.
//!
//! Between the clone and the exec the child only makes plain system calls
//! on memory prepared before: init has other threads, and one of them may
//! hold a lock (the allocator's) that the child's copy could never release.

use std::ffi::{c_char, CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::config::ServiceSpec;
use crate::sandbox::{caps, fsns, seccomp};

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid (also its process group).
    pub pid: i32,
    /// The read end of its stdout+stderr pipe, non-blocking.
    pub output: OwnedFd,
    /// The read end of the pipe on which the child reports a failure
    /// before exec (non-blocking; see [`failure_before_exec`]).
    pub exec_report: OwnedFd,
}

/// The PATH services get.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The child's steps that can fail, as reported through the exec pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    Stdio = 1,
    WorkingDir = 2,
    Ids = 3,
    Exec = 4,
    Mounts = 5,
    Capabilities = 6,
    Seccomp = 7,
    NoNewPrivs = 8,
}

impl Step {
    fn from_u32(v: u32) -> Option<Step> {
        [
            Step::Stdio,
            Step::WorkingDir,
            Step::Ids,
            Step::Exec,
            Step::Mounts,
            Step::Capabilities,
            Step::Seccomp,
            Step::NoNewPrivs,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    fn what(self) -> &'static str {
        match self {
            Step::Stdio => "setting up stdin/stdout/stderr",
            Step::WorkingDir => "changing to the working directory",
            Step::Ids => "switching user and group",
            Step::Exec => "exec",
            Step::Mounts => "setting up its mount namespace",
            Step::Capabilities => "setting its capabilities",
            Step::Seccomp => "installing its seccomp filter",
            Step::NoNewPrivs => "setting no_new_privileges",
        }
    }
}

/// The report's size: step, errno, and up to this much of a path.
const REPORT_LEN: usize = 256;

/// What the child needs besides the service file: paths in init's
/// runtime directory.
#[derive(Debug, Clone)]
pub struct Context {
    /// The sd_notify socket services are given.
    pub notify_socket: PathBuf,
    /// The empty 000 file bound over inaccessible files.
    pub empty_file: PathBuf,
    /// Where `runtime_directory` is created (/run).
    pub run_root: PathBuf,
}

/// Everything the child needs, made before the clone.
struct Plan {
    prog: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
    ids: Option<(u32, u32)>,
    capabilities: u64,
    no_new_privileges: bool,
    seccomp: Option<seccomp::Program>,
    mounts: Option<fsns::Plan>,
    /// init runs as root: it has capabilities to drop. A development init
    /// run by another user has none to give (and may not drop the
    /// bounding set, nor filter without no_new_privs).
    privileged: bool,
    stdin: OwnedFd,
    output: OwnedFd,
    report: OwnedFd,
}

fn cstring(s: impl Into<Vec<u8>>) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a NUL byte in an argument, variable or path",
        )
    })
}

/// The service's environment: a clean one with PATH and NOTIFY_SOCKET, then
/// its own variables (which may override those), then WATCHDOG_USEC.
fn environment(spec: &ServiceSpec, notify_socket: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        (
            "NOTIFY_SOCKET".into(),
            notify_socket.to_string_lossy().into_owned(),
        ),
    ];
    let mut set = |k: &str, v: String| match env.iter_mut().find(|(key, _)| key == k) {
        Some(e) => e.1 = v,
        None => env.push((k.into(), v)),
    };
    for (k, v) in &spec.cfg.env {
        set(k, v.clone());
    }
    if spec.cfg.watchdog_ms > 0 {
        set("WATCHDOG_USEC", (spec.cfg.watchdog_ms * 1000).to_string());
    }
    env
}

/// A descriptor numbered 3 or above, so that putting the child's stdio in
/// place (dup2 onto 0, 1, 2) never overwrites another of its descriptors.
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own; the result is a new descriptor.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn open_cloexec(path: &CStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    above_stdio(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Plan {
    fn new(
        spec: &ServiceSpec,
        ctx: &Context,
        output: OwnedFd,
        report: OwnedFd,
    ) -> std::io::Result<Plan> {
        let notify_socket = ctx.notify_socket.as_path();
        let argv = spec
            .cfg
            .argv
            .iter()
            .map(|a| cstring(a.as_str()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let prog = argv.first().cloned().unwrap_or_else(|| c"/".into());
        let envp = environment(spec, notify_socket)
            .into_iter()
            .map(|(k, v)| cstring(format!("{k}={v}")))
            .collect::<std::io::Result<Vec<_>>>()?;
        let cwd = spec
            .cfg
            .working_dir
            .as_ref()
            .map(|d| cstring(d.as_os_str().as_encoded_bytes()))
            .transpose()?;
        Ok(Plan {
            prog,
            argv,
            envp,
            cwd,
            ids: spec.ids,
            capabilities: spec.sandbox.capabilities,
            no_new_privileges: spec.sandbox.no_new_privileges,
            seccomp: spec.sandbox.seccomp.clone(),
            mounts: spec.sandbox.mount_plan(&ctx.empty_file)?,
            // SAFETY: geteuid has no preconditions.
            privileged: unsafe { libc::geteuid() } == 0,
            stdin: open_cloexec(c"/dev/null", libc::O_RDONLY)?,
            output,
            report,
        })
    }
}

/// The kernel's `struct sigaction` for `rt_sigaction(2)` on x86-64; all
/// zero is SIG_DFL with no flags and an empty mask.
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Puts `fd` at `target` without close-on-exec (async-signal-safe).
fn dup_to(fd: RawFd, target: RawFd) -> bool {
    // SAFETY: dup2 on plain descriptor numbers.
    unsafe { libc::dup2(fd, target) == target }
}

/// The child: set up, exec. A failure writes its step and errno into the
/// report pipe and exits 127.
///
/// # Safety
/// Called only in a freshly cloned or forked child. It allocates nothing
/// and calls only async-signal-safe functions on data made before the
/// clone; `argv` and `envp` are NULL-terminated arrays of pointers into
/// the plan's strings.
unsafe fn child(
    plan: &Plan,
    argv: &[*const c_char],
    envp: &[*const c_char],
    join_procs: Option<&CStr>,
) -> ! {
    // SAFETY: see the function's contract.
    unsafe {
        let fail = |step: Step, errno: i32, detail: &CStr| -> ! {
            let mut msg = [0u8; REPORT_LEN];
            msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
            msg[4..8].copy_from_slice(&errno.to_ne_bytes());
            let d = detail.to_bytes();
            let n = d.len().min(REPORT_LEN - 8);
            msg[8..8 + n].copy_from_slice(&d[..n]);
            // One write of at most PIPE_BUF bytes: the pipe keeps it whole.
            libc::write(plan.report.as_raw_fd(), msg.as_ptr().cast(), 8 + n);
            libc::_exit(127)
        };
        let errno = || *libc::__errno_location();
        let check = |step: Step, r: std::io::Result<()>| {
            if let Err(e) = r {
                fail(step, e.raw_os_error().unwrap_or(0), c"");
            }
        };
        libc::setsid();
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // Every signal, real-time ones included, through the raw call:
        // glibc's wrapper refuses the two it keeps for itself, and a
        // disposition of "ignore" survives exec.
        let default = KernelSigaction::default();
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &default as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
        if let Some(p) = join_procs {
            // The fallback: move in. A failure leaves the service where init
            // is, without its limits, as a cgroup-less system would run it.
            let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        let out = plan.output.as_raw_fd();
        if !(dup_to(plan.stdin.as_raw_fd(), 0) && dup_to(out, 1) && dup_to(out, 2)) {
            fail(Step::Stdio, errno(), c"");
        }
        // Mounts first, while the child still has every capability; the
        // working directory after, so it is looked up in the new view.
        if let Some(m) = &plan.mounts {
            if let Err((e, path)) = m.apply() {
                fail(Step::Mounts, e.raw_os_error().unwrap_or(0), path);
            }
        }
        if let Some(dir) = &plan.cwd {
            if libc::chdir(dir.as_ptr()) != 0 {
                fail(Step::WorkingDir, errno(), dir);
            }
        }
        if plan.privileged {
            check(Step::Capabilities, caps::drop_bounding(plan.capabilities));
            // Before the switch of user: installing a filter needs either
            // CAP_SYS_ADMIN (the child still has it) or no_new_privs (which
            // a service may turn off). The filter always allows the few
            // calls made from here to exec.
            if let Some(prog) = &plan.seccomp {
                check(Step::Seccomp, seccomp::install(prog));
            }
        }
        let as_user = plan.ids.is_some_and(|(uid, _)| uid != 0);
        if let Some((uid, gid)) = plan.ids {
            // Keep the permitted set across setuid, to raise the service's
            // capabilities as ambient ones after it.
            if as_user && plan.capabilities != 0 {
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
            }
            // Raw system calls: glibc's wrappers would try to change the ids of
            // every thread of init, and only this one exists in the child.
            let no_groups: *const libc::gid_t = std::ptr::null();
            if libc::syscall(libc::SYS_setgroups, 0, no_groups) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                fail(Step::Ids, errno(), c"");
            }
        }
        // Effective, permitted and inheritable = the service's set. For
        // root, exec then gives it exactly the bounding set; for another
        // user, the ambient set carries it over exec.
        if plan.privileged {
            check(Step::Capabilities, caps::set(plan.capabilities));
            if as_user {
                check(Step::Capabilities, caps::raise_ambient(plan.capabilities));
            }
        }
        // Without CAP_SYS_ADMIN a filter needs no_new_privs first.
        let unprivileged_filter = !plan.privileged && plan.seccomp.is_some();
        if (plan.no_new_privileges || unprivileged_filter)
            && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            fail(Step::NoNewPrivs, errno(), c"");
        }
        if let (false, Some(prog)) = (plan.privileged, &plan.seccomp) {
            check(Step::Seccomp, seccomp::install(prog));
        }
        libc::execve(plan.prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(Step::Exec, errno(), c"")
    }
}

/// `CLONE_INTO_CGROUP` from linux/sched.h (libc's constant is an i32 that
/// overflows).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of `clone3(2)`, up to the `cgroup` field (version 2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Clones a child born in the cgroup `dir` (fork semantics otherwise).
/// Returns 0 in the child.
///
/// # Safety
/// As for fork: the child may only do async-signal-safe work until exec.
unsafe fn clone_into(dir: &OwnedFd) -> std::io::Result<libc::pid_t> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; the
    // caller keeps the child to the rules of a forked child.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc as libc::pid_t)
}

/// Creates the child: inside the cgroup whose `cgroup.procs` is given,
/// by clone3 where the kernel allows it, else by fork and a write.
fn start(plan: &Plan, cgroup_procs: Option<&Path>) -> std::io::Result<libc::pid_t> {
    let ptrs = |v: &[CString]| -> Vec<*const c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = (ptrs(&plan.argv), ptrs(&plan.envp));
    let procs = cgroup_procs
        .map(|p| cstring(p.as_os_str().as_encoded_bytes()))
        .transpose()?;
    let dir = cgroup_procs
        .and_then(Path::parent)
        .and_then(|d| cstring(d.as_os_str().as_encoded_bytes()).ok())
        .and_then(|d| open_cloexec(&d, libc::O_RDONLY | libc::O_DIRECTORY).ok());
    if let Some(dir) = &dir {
        // SAFETY: the child runs only `child`, which keeps to the rules above.
        match unsafe { clone_into(dir) } {
            Ok(0) => unsafe { child(plan, &argv, &envp, None) },
            Ok(pid) => return Ok(pid),
            Err(e) => tracing::debug!("clone3 into a cgroup refused ({e}); forking instead"),
        }
    }
    // SAFETY: as above; the child only runs `child`.
    match unsafe { libc::fork() } {
        0 => unsafe { child(plan, &argv, &envp, procs.as_deref()) },
        -1 => Err(std::io::Error::last_os_error()),
        pid => Ok(pid),
    }
}

/// What a child that has exited reported before exec, if anything: the
/// step that failed and the error. `None` when it reached exec (the pipe
/// closed at exec) or reported nothing. Read without waiting: call it
/// once the child has been reaped, when whatever it wrote is in the pipe.
pub fn failure_before_exec(report: &OwnedFd) -> Option<std::io::Error> {
    let mut msg = [0u8; REPORT_LEN];
    // SAFETY: reading at most msg.len() bytes into `msg`. The child writes
    // its report with one write(2), which a pipe delivers whole.
    let n = unsafe { libc::read(report.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
    if n <= 0 {
        return None;
    }
    let n = n as usize;
    let word = |r: std::ops::Range<usize>| msg.get(r).and_then(|b| b.try_into().ok());
    let step = word(0..4).map(u32::from_ne_bytes).and_then(Step::from_u32);
    let errno = word(4..8).map(i32::from_ne_bytes).unwrap_or(0);
    let detail = msg
        .get(8..n)
        .filter(|d| !d.is_empty())
        .map(|d| format!(" ({})", String::from_utf8_lossy(d)))
        .unwrap_or_default();
    let err = std::io::Error::from_raw_os_error(errno);
    Some(match step {
        Some(Step::Exec) => err,
        Some(step) => std::io::Error::new(err.kind(), format!("{}{detail}: {err}", step.what())),
        None => std::io::Error::other("the child failed before exec and said nothing clear"),
    })
}

/// Starts `spec`'s program, in the cgroup whose `cgroup.procs` is given.
///
/// Returns once the child exists, without waiting for its exec: the child
/// sets itself up and execs on the other CPU while init goes on (10-15 ms
/// under TCG). A failure on the way is read with [`failure_before_exec`]
/// when the child has exited (it exits 127 right after reporting).
pub fn spawn(
    spec: &ServiceSpec,
    ctx: &Context,
    cgroup_procs: Option<&Path>,
) -> std::io::Result<Spawned> {
    if let Some(dir) = &spec.cfg.runtime_directory {
        crate::sandbox::runtime_directory(&ctx.run_root, dir, spec.ids).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "creating its runtime_directory {}: {e}",
                    ctx.run_root.join(dir).display()
                ),
            )
        })?;
    }
    let (read, write) = pipe()?;
    let (report_read, report_write) = pipe()?;
    let plan = Plan::new(spec, ctx, write, report_write)?;
    let pid = start(&plan, cgroup_procs)?;
    // Our copies of the child's ends: the report pipe reads EOF at exec.
    drop(plan);
    set_nonblocking(&read)?;
    set_nonblocking(&report_read)?;
    Ok(Spawned {
        pid,
        output: read,
        exec_report: report_read,
    })
}

/// Sets O_NONBLOCK.
pub fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Read;

    fn spec(text: &str) -> ServiceSpec {
        crate::config::parse_service("svc", Path::new("/etc/svc.toml"), text, Path::new("/"))
            .unwrap()
    }

    fn ctx() -> Context {
        Context {
            notify_socket: "/run/test/notify.sock".into(),
            empty_file: "/nonexistent/empty".into(),
            run_root: "/nonexistent/run".into(),
        }
    }

    /// Runs to the end; its output and exit status.
    fn run(spec: &ServiceSpec, cgroup_procs: Option<&Path>) -> (String, i32) {
        let sp = spawn(spec, &ctx(), cgroup_procs).unwrap();
        let mut status = 0;
        // SAFETY: waits for the child just started.
        assert_eq!(unsafe { libc::waitpid(sp.pid, &mut status, 0) }, sp.pid);
        assert!(failure_before_exec(&sp.exec_report).is_none());
        let mut out = String::new();
        let mut f = std::fs::File::from(sp.output);
        let _ = f.read_to_string(&mut out);
        (out, libc::WEXITSTATUS(status))
    }

    #[test]
    fn environment_session_stdio_and_working_dir() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&format!(
            "argv = [\"/bin/sh\", \"-c\", \"echo $PATH; echo $NOTIFY_SOCKET $X $WATCHDOG_USEC; pwd; \
             ps -o sid= -p $$ | tr -d ' '; echo $$; read l || echo eof; echo err >&2; exit 3\"]\n\
             env = {{ X = \"x1\" }}\nwatchdog_ms = 500\nworking_dir = {:?}\n",
            dir.path()
        ));
        let (out, code) = run(&s, None);
        let l: Vec<&str> = out.lines().collect();
        assert_eq!(code, 3, "{out}");
        assert_eq!(l[0], DEFAULT_PATH);
        assert_eq!(l[1], "/run/test/notify.sock x1 500000");
        assert_eq!(Path::new(l[2]), dir.path().canonicalize().unwrap());
        // Its own session: the session id is its pid (when ps is there).
        if !l[3].is_empty() {
            assert_eq!(l[3], l[4], "{out}");
        }
        assert_eq!(&l[5..], ["eof", "err"]);
    }

    #[test]
    fn a_service_variable_overrides_path() {
        let s = spec("argv = [\"/bin/sh\", \"-c\", \"echo $PATH\"]\nenv = { PATH = \"/bin\" }\n");
        assert_eq!(run(&s, None).0.trim(), "/bin");
    }

    /// Starts `s`, waits for it to exit 127, and returns what it reported.
    fn failure(s: &ServiceSpec) -> std::io::Error {
        let sp = spawn(s, &ctx(), None).unwrap();
        let mut status = 0;
        // SAFETY: waits for the child just started.
        assert_eq!(unsafe { libc::waitpid(sp.pid, &mut status, 0) }, sp.pid);
        assert_eq!(libc::WEXITSTATUS(status), 127);
        failure_before_exec(&sp.exec_report).expect("a report")
    }

    #[test]
    fn failures_before_exec_name_the_step() {
        let mut s = spec("argv = [\"/bin/true\"]\nworking_dir = \"/nonexistent/dir\"\n");
        let e = failure(&s);
        assert!(
            e.to_string()
                .starts_with("changing to the working directory (/nonexistent/dir): "),
            "{e}"
        );
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        // Validated files are executable, but a file can change after.
        s.cfg.working_dir = None;
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("not-executable");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        s.cfg.argv = vec![prog.to_string_lossy().into_owned()];
        let e = failure(&s);
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    }

    #[test]
    fn a_missing_cgroup_falls_back_and_still_starts() {
        // No such cgroup: clone3 cannot open it, the fork's write fails,
        // and the service runs anyway (as on a system without cgroup2).
        let s = spec("argv = [\"/bin/sh\", \"-c\", \"echo ran\"]\n");
        let (out, code) = run(&s, Some(Path::new("/nonexistent/cg/cgroup.procs")));
        assert_eq!((out.trim(), code), ("ran", 0));
    }

    /// `Name:\tvalue` lines of the child's /proc/self/status.
    fn status_of(extra: &str) -> String {
        let s = spec(&format!(
            "argv = [\"/bin/sh\", \"-c\", \"exec grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status\"]\n{extra}"
        ));
        run(&s, None).0
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn by_default_a_service_has_no_capabilities_no_new_privileges_and_a_filter() {
        if !root() {
            fluxnode_testkit::skip("not root: no capabilities to drop");
            return;
        }
        let out = status_of("");
        for want in [
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "CapAmb:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
        ] {
            assert!(out.contains(want), "{want} not in\n{out}");
        }
    }

    #[test]
    fn capabilities_bound_a_root_service_and_are_ambient_for_a_user() {
        if !root() {
            fluxnode_testkit::skip("not root: cannot switch users");
            return;
        }
        let net = "CAP_NET_ADMIN\", \"CAP_NET_RAW";
        // 1 << 12 | 1 << 13
        let mask = "0000000000003000";
        let out = status_of(&format!("capabilities = [\"{net}\"]\nno_new_privileges = false\nsystem_call_filter = [\"@all\"]"));
        for want in [
            format!("CapEff:\t{mask}"),
            format!("CapBnd:\t{mask}"),
            "NoNewPrivs:\t0".into(),
            "Seccomp:\t0".into(),
        ] {
            assert!(out.contains(&want), "{want} not in\n{out}");
        }
        let out = status_of(&format!("capabilities = [\"{net}\"]\nuser = \"65534\""));
        for want in [
            format!("CapEff:\t{mask}"),
            format!("CapAmb:\t{mask}"),
            format!("CapBnd:\t{mask}"),
        ] {
            assert!(out.contains(&want), "{want} not in\n{out}");
        }
    }

    #[test]
    fn signals_are_unblocked_and_default_in_the_child() {
        // init blocks its signals (signalfd) and ignores SIGPIPE; the child must not inherit that.
        let s = spec(
            "argv = [\"/bin/sh\", \"-c\", \"exec grep -E '^Sig(Blk|Ign)' /proc/self/status\"]\n",
        );
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        }
        let (out, _) = run(&s, None);
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        // The test harness ignores SIGPIPE, as Rust programs do.
        assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
    }
}
