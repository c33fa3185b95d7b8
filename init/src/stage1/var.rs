//! /var, prepared in the background by a child process of stage 1.
//!
//! /var needs ext4 (and its dependencies): under TCG the longest module
//! chain of stage 1 (ext4 alone 0.2-0.35 s), then the partition checked,
//! formatted on first boot, and mounted (0.07-0.1 s). Stage 1 used to wait
//! for all of that before switch_root, although the first services (netd,
//! the late modules) never touch /var. Now a child forked at the start of
//! stage 1 does it while stage 1 and then stage 2 go on:
//!
//! 1. it opens the module files at once and says so (`o` on its socket), so
//!    stage 1 may free the initramfs while it still loads from them;
//! 2. it loads ext4 and what ext4 needs;
//! 3. it waits for the new root (a directory descriptor passed over its
//!    socket once stage 1 has mounted it and moved /dev, /proc, /sys in,
//!    with what stage 1 decided for the data partition: [`inspect`]), and
//!    chroots there: stage 1's own move of the root later leaves that view
//!    as it is;
//! 4. it grows, formats or checks the data partition as needed, mounts it
//!    at /var, marks it initialised in the GPT ([`gpt::ATTR_INITIALISED`])
//!    if it is not yet, and prints one line;
//! 5. it loads the modules nothing needs before blessing (vfat)
//!    and exits 0 — or prints what failed and exits 1.
//!
//! Formatting (first boot) and checking (unclean) still finish before
//! stage 2 starts ([`needs_work`]). Otherwise stage 1 passes the child's
//! pid to stage 2 (`FLUXNODE_VAR_PID`), which
//! holds back every service not marked `early`, "all services ready" and
//! boot-complete until the child has exited 0, and reboots (so boot
//! counting can fall back) when it failed. A child forked before stage 1
//! starts any thread is a plain single-threaded process, free to allocate
//! and to start its own module-loading threads.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{bootdisk, data, gpt, modules, mount, say};
use crate::sys::uptime;

/// The environment variable through which stage 2 learns the child's pid.
pub const PID_ENV: &str = "FLUXNODE_VAR_PID";

/// The child's nice value while stage 1 does not wait for it.
const BACKGROUND_NICE: libc::c_int = 10;

/// Stage 1's handle on the child.
#[derive(Debug)]
pub struct VarChild {
    pid: libc::pid_t,
    sock: UnixStream,
}

/// Forks the child. `loader` has stage 1's modules.dep; `modules` are the
/// ones /var needs, `later` the ones it loads once /var is mounted
/// (efivarfs, vfat: nothing before blessing needs them). Call before stage
/// 1 starts any thread.
pub fn start(
    loader: &modules::Loader,
    modules: &[String],
    later: &[String],
    t0: f64,
) -> Result<VarChild, String> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("a socket pair for the /var child: {e}"))?;
    // SAFETY: stage 1 has no other thread yet: the child is a complete
    // copy and may do anything a process may.
    match unsafe { libc::fork() } {
        -1 => Err(format!(
            "forking the /var child: {}",
            std::io::Error::last_os_error()
        )),
        0 => {
            drop(ours);
            let code = match child(loader.clone(), modules, later, theirs, t0) {
                Ok(()) => 0,
                Err(e) => {
                    say(&format!("/var: {e}"));
                    1
                }
            };
            // SAFETY: ends the child without the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(VarChild { pid, sock: ours }),
    }
}

impl VarChild {
    /// Its pid.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Hands over the new root (mounted, with /dev, /proc and /sys in it)
    /// and what [`inspect`] decided, so the child need not look again.
    pub fn send_root(&self, root: &Path, plan: &Plan) -> Result<(), String> {
        let dir = std::fs::File::open(root).map_err(|e| format!("{}: {e}", root.display()))?;
        send_fd(&self.sock, dir.as_raw_fd(), &encode(plan))
            .map_err(|e| format!("passing the new root to the /var child: {e}"))
    }

    /// Waits until the child holds its module files open (at once, in
    /// practice: it does that first). False when it died before.
    pub fn wait_files_open(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.sock.read(&mut b), Ok(1) if b[0] == b'o')
    }

    /// Waits for the child to finish; an error when it failed (its own
    /// line on the console says what).
    pub fn wait(self) -> Result<(), String> {
        // Stage 1 waits for it now: it gets the CPU back.
        // SAFETY: setpriority on our own child with plain integers.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, self.pid as libc::id_t, 0) };
        let mut status = 0;
        // SAFETY: waits for our own child; writes only into `status`.
        let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        if r == self.pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            return Ok(());
        }
        Err("/var could not be prepared (see the line above)".into())
    }
}

/// What stage 1 decided for the data partition, for the child to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The partition's kernel name (`vda4`).
    pub dev: String,
    /// Its disk (`vda`).
    pub disk: String,
    /// Its GPT entry index (0-based).
    pub index: usize,
    /// Format, check or mount.
    pub action: data::Action,
    /// Set [`gpt::ATTR_INITIALISED`] once mounted (not set yet).
    pub mark: bool,
}

/// Finds the data partition under `root` (by type and UUID, on the boot
/// disk `boot_disk` only, looked up afresh so a copy of the boot disk that
/// appeared since stage 1 picked it is refused), reads its first MiB and
/// decides, once, for both stage 1 (whether to wait) and the child (what to
/// do). An error is a refusal: stage 1 prints it as its FATAL line.
pub fn inspect(
    root: &Path,
    anchor: &bootdisk::Anchor,
    exp: &bootdisk::Expected,
    boot_disk: &str,
) -> Result<Plan, String> {
    let (sys, dev) = (root.join("sys"), root.join("dev"));
    let found = bootdisk::find(
        &sys,
        &dev,
        anchor,
        exp,
        &exp.data,
        bootdisk::TYPE_VAR,
        "data",
    )?
    .ok_or_else(|| format!("the data partition of the boot disk {boot_disk} is not visible"))?;
    if found.disk != boot_disk {
        return Err(format!(
            "the boot disk was {boot_disk} and is now {}; using neither",
            found.disk
        ));
    }
    let node = dev.join(&found.dev.devname);
    let state = data::inspect(&node).map_err(|e| format!("reading {}: {e}", node.display()))?;
    let initialised = found.entry.attributes & gpt::ATTR_INITIALISED != 0;
    let provenance = data::Provenance {
        new_allowed: matches!(anchor, bootdisk::Anchor::Loader(_)) && found.disk_is_images,
        initialised,
    };
    let action = data::decide(state, provenance, &found.dev.devname, &found.disk)?;
    Ok(Plan {
        dev: found.dev.devname,
        disk: found.disk,
        index: found.entry.index,
        action,
        mark: !initialised,
    })
}

/// Whether /var is more than a mount: a blank partition to format or a
/// file system to check. That work finishes in stage 1, before stage 2
/// starts, as it always did: once, under TCG on a loaded host, e2fsck
/// running alongside stage 2's start left both vCPUs in a soft lockup for
/// minutes. Only a clean /var (load ext4, mount) goes on in the
/// background: every later boot.
pub fn needs_work(plan: &Plan) -> bool {
    plan.action != data::Action::Mount
}

/// `F`/`C`/`M` for the action, `1`/`0` for the mark, then
/// `dev disk index`.
fn encode(p: &Plan) -> Vec<u8> {
    let tag = match p.action {
        data::Action::Format => 'F',
        data::Action::Check => 'C',
        data::Action::Mount => 'M',
    };
    let mark = if p.mark { '1' } else { '0' };
    format!("{tag}{mark}{} {} {}", p.dev, p.disk, p.index).into_bytes()
}

fn decode(msg: &[u8]) -> Result<Plan, String> {
    let text = String::from_utf8_lossy(msg);
    let bad = || format!("an odd message from stage 1: {text:?}");
    let mut chars = text.chars();
    let action = match chars.next() {
        Some('F') => data::Action::Format,
        Some('C') => data::Action::Check,
        Some('M') => data::Action::Mount,
        _ => return Err(bad()),
    };
    let mark = match chars.next() {
        Some('1') => true,
        Some('0') => false,
        _ => return Err(bad()),
    };
    let rest: Vec<&str> = chars.as_str().split(' ').collect();
    let [dev, disk, index] = rest.as_slice() else {
        return Err(bad());
    };
    let ok = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if !ok(dev) || !ok(disk) {
        return Err(bad());
    }
    Ok(Plan {
        dev: dev.to_string(),
        disk: disk.to_string(),
        index: index.parse().map_err(|_| bad())?,
        action,
        mark,
    })
}

fn child(
    mut loader: modules::Loader,
    mods: &[String],
    later: &[String],
    mut sock: UnixStream,
    t0: f64,
) -> Result<(), String> {
    // Behind stage 1 for the CPU: the root's modules are on the boot's
    // critical path, /var (on later boots) is not. Stage 1 restores the
    // priority when it has to wait for us (`VarChild::wait`).
    // SAFETY: setpriority on ourselves with plain integers.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE) };
    let all: Vec<String> = mods.iter().chain(later).cloned().collect();
    let files = loader.open_ahead(&all).map_err(|e| e.to_string())?;
    sock.write_all(b"o")
        .map_err(|e| format!("telling stage 1: {e}"))?;
    let report = loader.load(mods).map_err(|e| e.to_string())?;
    if let Some((m, why)) = report.failed.first() {
        return Err(format!("module {m} not loaded: {why}"));
    }
    let t_mods = uptime();
    let Some((root, msg)) = recv_fd(&sock).map_err(|e| format!("waiting for the new root: {e}"))?
    else {
        // Stage 1 failed before its root was mounted; it says why.
        return Ok(());
    };
    // SAFETY: fchdir on a directory descriptor we own, then plain chroot/chdir.
    unsafe {
        if libc::fchdir(root.as_raw_fd()) != 0
            || libc::chroot(c".".as_ptr()) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            return Err(format!(
                "entering the new root: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let plan = decode(&msg)?;
    let (dev, note) = prepare_data(Path::new("/"), &plan)?;
    // noexec: nothing on the node runs programs from /var; the container
    // store will get an exec mount of its own (docs/SECURITY.md).
    mount(
        &dev,
        "/var",
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )
    .map_err(|e| format!("{e} (data partition)"))?;
    if plan.mark {
        mark_initialised(Path::new("/"), &plan);
    }
    say(&format!(
        "stage 1: /var {note} ({dev}; ext4's modules in by {:.2} s; mounted at t={:.3} s)",
        t_mods - t0,
        uptime()
    ));
    match loader.load(later) {
        Ok(r) => r
            .failed
            .iter()
            .for_each(|(m, why)| say(&format!("warning: module {m} not loaded: {why}"))),
        Err(e) => say(&format!("warning: modules {later:?} not loaded: {e}")),
    }
    say(&format!(
        "stage 1: the /var child loaded its {files} modules, done at t={:.3} s",
        uptime()
    ));
    Ok(())
}

/// A msghdr over one buffer and room for one descriptor's control message.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; the caller keeps the pointers alive.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    msg
}

fn control_space() -> usize {
    // SAFETY: a pure size computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize }
}

/// Sends `fd` with `payload` (not empty) in one message.
fn send_fd(sock: &UnixStream, fd: i32, payload: &[u8]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut control = vec![0u8; control_space()];
    let msg = message(&mut iov, &mut control);
    // SAFETY: the control buffer holds one cmsg with room for an int.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
    }
    // SAFETY: a valid socket and message.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one descriptor and its payload; `None` when the sender is gone.
fn recv_fd(sock: &UnixStream) -> std::io::Result<Option<(OwnedFd, Vec<u8>)>> {
    let mut buf = vec![0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = vec![0u8; control_space()];
    let mut msg = message(&mut iov, &mut control);
    let n = loop {
        // SAFETY: a valid socket and message buffers.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => {}
            // The sender closed with our byte unread: gone, like EOF.
            std::io::ErrorKind::ConnectionReset => return Ok(None),
            _ => return Err(e),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n);
    // SAFETY: walking the control buffer the kernel filled.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(std::io::Error::other("a message without a descriptor"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
        Ok(Some((OwnedFd::from_raw_fd(fd), buf)))
    }
}

/// Formats (first boot, after growing) or checks (unclean) the data
/// partition under `root`, as stage 1 decided. Returns its device path in
/// the root and what was done.
fn prepare_data(root: &Path, plan: &Plan) -> Result<(String, &'static str), String> {
    let devname = &plan.dev;
    let in_root = format!("/dev/{devname}");
    let note = match plan.action {
        data::Action::Format => {
            grow_data(root, plan);
            say(&format!(
                "formatting {devname} as ext4 for /var (first boot)"
            ));
            let code = data::run_in(
                root,
                &[
                    "/usr/sbin/mke2fs",
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "data",
                    "-m",
                    "0",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                    // Project quotas hold each app to its disk limit
                    // (node/src/appd/quota.rs); they need 256-byte inodes,
                    // which mke2fs would not pick for a small partition.
                    "-O",
                    "quota,project",
                    "-I",
                    "256",
                    &in_root,
                ],
            )
            .map_err(|e| format!("running mke2fs: {e}"))?;
            if code != 0 {
                return Err(format!("mke2fs on {devname} exited {code}"));
            }
            "formatted"
        }
        data::Action::Check => {
            say(&format!(
                "checking {devname} (not clean, or errors recorded)"
            ));
            let code = data::run_in(root, &["/usr/sbin/e2fsck", "-p", &in_root])
                .map_err(|e| format!("running e2fsck: {e}"))?;
            if code >= 4 {
                return Err(format!(
                    "e2fsck -p on {devname} exited {code}: the data partition needs manual repair"
                ));
            }
            "checked"
        }
        data::Action::Mount => "mounted",
    };
    Ok((in_root, note))
}

/// Records in the GPT that the data partition holds /var's file system,
/// so no later boot formats it (a failure is said; the next boot retries).
fn mark_initialised(root: &Path, plan: &Plan) {
    match gpt::set_attributes(
        &root.join("dev").join(&plan.disk),
        plan.index,
        gpt::ATTR_INITIALISED,
    ) {
        Ok(true) => say(&format!(
            "marked {} initialised (GPT attribute bit 56 on {})",
            plan.dev, plan.disk
        )),
        Ok(false) => {}
        Err(e) => say(&format!(
            "warning: could not mark {} initialised: {e}",
            plan.dev
        )),
    }
}

/// Grows the blank data partition to the end of its disk (first boot on a
/// disk larger than the image). A failure only costs space: it is said and
/// the partition is formatted at the size it has.
fn grow_data(root: &Path, plan: &Plan) {
    let (devname, disk) = (&plan.dev, &plan.disk);
    match gpt::grow(&root.join("dev").join(disk), plan.index) {
        Ok(Some((old, new))) => say(&format!(
            "grew {devname} (data) from {old} MiB to {new} MiB, to the end of {disk}"
        )),
        Ok(None) => {}
        Err(e) => say(&format!(
            "warning: not growing {devname}: {e}; /var keeps its size"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(action: data::Action, mark: bool) -> Plan {
        Plan {
            dev: "nvme0n1p4".into(),
            disk: "nvme0n1".into(),
            index: 3,
            action,
            mark,
        }
    }

    #[test]
    fn a_descriptor_crosses_the_socket_and_eof_is_none() {
        let (a, b) = UnixStream::pair().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("marker"), "x").unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        let p = plan(data::Action::Check, true);
        send_fd(&a, f.as_raw_fd(), &encode(&p)).unwrap();
        drop(f);
        let (got, msg) = recv_fd(&b).unwrap().unwrap();
        assert_eq!(decode(&msg), Ok(p));
        // The received descriptor is the same directory.
        let via =
            std::fs::read_to_string(format!("/proc/self/fd/{}/marker", got.as_raw_fd())).unwrap();
        assert_eq!(via, "x");
        drop(a);
        assert!(recv_fd(&b).unwrap().is_none());
    }

    #[test]
    fn what_stage_1_decided_round_trips() {
        use data::Action::*;
        for p in [
            plan(Format, true),
            plan(Check, false),
            plan(Mount, true),
            plan(Mount, false),
        ] {
            assert_eq!(decode(&encode(&p)), Ok(p.clone()));
            assert_eq!(needs_work(&p), p.action != Mount);
        }
        for bad in [
            &b""[..],
            b"X1a b 3",
            b"F2a b 3",
            b"F1a b",
            b"F1a b x",
            b"F1../x b 3",
            b"F1a .. 3",
        ] {
            assert!(decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
