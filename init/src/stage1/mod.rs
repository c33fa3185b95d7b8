//! Stage 1: runs as `/init` in the initramfs.
//!
//! Entry: [`run`] is called by `lib.rs` when PID 1 finds `/etc/initrd-release`.
//! It mounts /dev, /proc, /sys; loads the modules of
//! `/etc/fluxnode/modules.initrd` ([`modules`]); finds the disk it booted
//! from (the ESP systemd-boot names in `LoaderDevicePartUUID`) and on it the
//! booted slot's root partition by type GUID and partition UUID, never by
//! name and never on another disk ([`bootdisk`]); opens it as
//! dm-verity with the root hash from the command line ([`verity`]); mounts
//! the erofs root read-only; moves /dev, /proc, /sys into it; frees the
//! initramfs; and switch_roots into stage 2 (`/sbin/init`). Meanwhile a
//! child process loads ext4 and formats or checks and mounts `data` (on the
//! same disk, by UUID; formatted only when provably new: [`data::decide`])
//! at /var ([`var`], [`data`]); stage 2 waits for it where /var is needed.
//!
//! Any failure prints one line (`fluxnode-init: FATAL: ...`) on the console
//! and reboots after a delay, so systemd-boot's boot counting can fall back
//! to the other slot: never a panic loop without a reason on screen.

// The disk code is shared with the update client: it lives in lowlevel.
pub use fluxnode_lowlevel::disk::{blockdev, bootdisk, gpt};
pub mod data;
pub mod modalias;
pub mod modules;
pub mod readahead;
pub mod secver;
pub mod var;
pub mod verity;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmdline::Cmdline;
use crate::sys::{console_write, fatal_reboot, uptime};

const NEWROOT: &str = "/newroot";

/// The modules of `modules.initrd` that the root needs (with, through
/// modules.dep, what they need); efivarfs to read which disk the boot
/// loader booted from ([`bootdisk::read_anchor`]).
const ROOT_MODULES: [&str; 3] = ["dm_verity", "erofs", "efivarfs"];

/// The modules of `modules.initrd` that /var needs (with what they need):
/// the longest chain of stage 1 under TCG (~0.35 s), loaded by the /var
/// child ([`var`]) off stage 1's path. quota_v2: /var carries ext4's
/// quota feature (project quotas for apps), and ext4 refuses to mount such
/// a filesystem (ESRCH) when the quota format is not loaded: the kernel
/// would ask modprobe for it, and the node has none.
const VAR_MODULES: [&str; 2] = ["ext4", "quota_v2"];

fn say(msg: &str) {
    console_write(&format!("fluxnode-init: {msg}\n"));
}

/// mount(2) with strings.
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
    let (s, t, f, d) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                f.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr() as *const libc::c_void
            },
        )
    };
    if r != 0 {
        return Err(format!(
            "mount {src} on {target} ({fstype}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Runs stage 1. Never returns.
pub fn run() -> ! {
    let t0 = uptime();
    for (src, target, fs) in [
        ("devtmpfs", "/dev", "devtmpfs"),
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
    ] {
        if let Err(e) = mount(src, target, fs, libc::MS_NOSUID | libc::MS_NOEXEC, "") {
            fatal_reboot(&format!("stage 1: {e}"));
        }
    }
    say(&format!("stage 1 starting (t={t0:.3} s)"));
    let cmdline = Cmdline::from_file(Path::new("/proc/cmdline"));
    match stage1(&cmdline, t0) {
        Ok(never) => match never {},
        Err(e) => fatal_reboot(&format!("stage 1: {e}")),
    }
}

enum Never {}

fn stage1(cmdline: &Cmdline, t0: f64) -> Result<Never, String> {
    // Parameters first: a bad command line fails before any work.
    let slot = cmdline
        .get("fluxnode.slot")
        .ok_or("no fluxnode.slot= on the kernel command line")?;
    if !slot.chars().all(|c| c.is_ascii_alphanumeric()) || slot.is_empty() {
        return Err(format!("fluxnode.slot={slot:?} is not a slot name"));
    }
    let root_hash = cmdline
        .get("fluxnode.roothash")
        .ok_or("no fluxnode.roothash= on the kernel command line")?;
    let salt = cmdline.get("fluxnode.salt").unwrap_or("-");
    let data_blocks: u64 = cmdline
        .get("fluxnode.datablocks")
        .and_then(|v| v.parse().ok())
        .ok_or("no valid fluxnode.datablocks= on the kernel command line")?;

    let expected = bootdisk::Expected::from_cmdline(cmdline.as_lowlevel())?;
    let secver = secver::slot_security_version(cmdline)?;

    let sys = Path::new("/sys");
    let always =
        modules::read_list(Path::new("/etc/fluxnode/modules.initrd")).map_err(|e| e.to_string())?;
    // Tracks at once, each waited for only where it is needed: the disk's
    // drivers (here, until the root partition shows up); dm-verity, erofs
    // and efivarfs, then the boot loader's variable (before the boot disk
    // is picked); ext4 and then the rest (vfat: for blessing) by the /var
    // child, which stage 2 waits for where /var is needed. One after the
    // other they took 0.6 s under TCG.
    let loader = modules::Loader::new(Path::new("/")).map_err(|e| e.to_string())?;
    let root_closure = loader.closure(&ROOT_MODULES.map(String::from));
    let var_closure = loader.closure(&VAR_MODULES.map(String::from));
    let (for_root, others): (Vec<String>, Vec<String>) = always
        .into_iter()
        .partition(|m| root_closure.contains(&m.replace('-', "_")));
    let (for_var, for_stage2): (Vec<String>, Vec<String>) = others
        .into_iter()
        .partition(|m| var_closure.contains(&m.replace('-', "_")));
    // Forked before any thread starts (see `var`).
    let mut var_child = var::start(&loader, &for_var, &for_stage2, t0)?;
    // The node's minimum security version, read alongside module loading
    // and judged before the root is created ([`secver`]).
    let secver_check = match secver.map(secver::Check::start).transpose() {
        Ok(c) => c,
        Err(e) => {
            say(&format!(
                "warning: stage 1: cannot start the security version check: {e}; not checked"
            ));
            None
        }
    };
    // The early tracks share the modules.dep just read; the last one,
    // started later, reads /proc/modules afresh to skip what is loaded.
    let mut root_loader = loader.clone();
    let root_mods = std::thread::spawn(move || {
        let r = root_loader.load(&for_root);
        (r, bootdisk::read_anchor(&bootdisk::efivars_dir()))
    });
    let (report, anchor, found) = find_root(sys, &expected, root_mods, loader)?;
    let root = found.dev;
    let part_name = format!("root_{slot} ({})", root.devname);
    let t_mod = uptime();
    if root.sectors < data_blocks * 8 {
        return Err(format!(
            "partition {part_name} is smaller than its verity data"
        ));
    }
    let secver_note = match secver_check.map(secver::Check::finish) {
        None => String::new(),
        Some(secver::Decision::Boot(words)) => format!("; {words}"),
        Some(secver::Decision::Warn(line)) => {
            say(&line);
            "; security version not checked".into()
        }
        Some(secver::Decision::Refuse(why)) => return Err(why),
    };
    let params = verity::VerityParams {
        dev: root.majmin.clone(),
        data_blocks,
        root_hash: root_hash.to_string(),
        salt: salt.to_string(),
    };
    let (_, minor) = verity::create(Path::new("/dev/mapper/control"), "root", &params)
        .map_err(|e| e.to_string())?;
    let dm = PathBuf::from(format!("/dev/dm-{minor}"));
    if !blockdev::wait_for_node(&dm, Duration::from_secs(5)) {
        return Err(format!("{} did not appear", dm.display()));
    }
    mount(&dm.to_string_lossy(), NEWROOT, "erofs", libc::MS_RDONLY | libc::MS_NODEV, "").map_err(|e| {
        format!("{e}: the root of slot {slot} ({}) failed dm-verity verification or is not erofs; refusing to boot it", root.devname)
    })?;
    if !Path::new(NEWROOT).join("sbin/init").exists() {
        return Err(format!(
            "slot {slot} has no /sbin/init (or it failed verification)"
        ));
    }
    let t_root = uptime();
    // First: stage 2's exec is what waits for these pages.
    let mut reader = readahead::ReadAhead::start(Path::new("/"), Path::new(NEWROOT), &READ_AHEAD);
    for d in ["/dev", "/proc", "/sys"] {
        mount(d, &format!("{NEWROOT}{d}"), "", libc::MS_MOVE, "")?;
    }
    // Looked up again: a copy of the boot disk that showed up since is
    // refused here, before anything is written.
    let plan = var::inspect(Path::new(NEWROOT), &anchor, &expected, &found.disk)?;
    var_child.send_root(Path::new(NEWROOT), &plan)?;
    let var_in_background = !var::needs_work(&plan);
    for (m, why) in &report.failed {
        say(&format!("warning: module {m} not loaded: {why}"));
    }
    if !var_child.wait_files_open() {
        say("warning: the /var child ended early; stage 2 will say what it left undone");
    }
    let var_pid = var_child.pid();
    let var_note = if var_in_background {
        format!("/var in the background (pid {var_pid})")
    } else {
        var_child.wait()?;
        format!("/var ready at {:.2} s", uptime() - t0)
    };
    reader.free_initramfs();
    enter_root(Path::new(NEWROOT))?;
    let t_end = uptime();
    let mut slow = report.loaded.clone();
    slow.sort_by_key(|b| std::cmp::Reverse(b.1));
    let slow: Vec<String> = slow
        .iter()
        .take(4)
        .map(|(m, d)| format!("{m} {:.0}", d.as_secs_f64() * 1e3))
        .collect();
    say(&format!(
        "stage 1: boot disk {} ({}); slot {slot} root {} verified{secver_note}; {} modules (the root's in by {:.2} s; slowest ms: {}); root at {:.2} s; {var_note}; {}; switch_root at t={:.3} s ({:.2} s in stage 1)",
        found.disk,
        anchor.describe(),
        root.devname,
        report.loaded.len(),
        t_mod - t0,
        slow.join(", "),
        t_root - t0,
        reader.describe(),
        t_end,
        t_end - t0,
    ));
    exec_init(var_in_background.then_some(var_pid))
}

/// What stage 2 reads first, in that order: init's and the services'
/// settings (a few small files, each a cold read otherwise), then the
/// programs as they are run. A directory stands for the files under it.
const READ_AHEAD: [&str; 4] = [
    "etc/fluxnode",
    "usr/sbin/fluxnode-init",
    "usr/bin/fluxnode-netd",
    "usr/lib/fluxnode/fluxnode-modload",
];

/// The root track's thread: its modules, then the boot loader's variable.
type RootTrack = std::thread::JoinHandle<(
    Result<modules::LoadReport, modules::ModuleError>,
    bootdisk::Anchor,
)>;

/// Waits for the root track and adds what it loaded to `report`.
fn join_root_track(
    track: RootTrack,
    report: &mut modules::LoadReport,
) -> Result<bootdisk::Anchor, String> {
    match track.join() {
        Ok((Ok(r), anchor)) => {
            report.loaded.extend(r.loaded);
            report.failed.extend(r.failed);
            Ok(anchor)
        }
        Ok((Err(e), _)) => Err(e.to_string()),
        Err(_) => Err("a module loading thread crashed".into()),
    }
}

/// Loads the disk drivers the hardware asks for, and keeps matching new
/// devices (buses appear as drivers load: virtio_blk's devices only once
/// virtio_pci is in; SCSI scans are asynchronous) until the boot disk
/// (named by the boot loader: [`bootdisk`]) shows up with the root
/// partition of the slot. The root track is joined once the first drivers
/// are in: the boot disk cannot be told before its variable is read.
fn find_root(
    sys: &Path,
    expected: &bootdisk::Expected,
    root_track: RootTrack,
    mut loader: modules::Loader,
) -> Result<(modules::LoadReport, bootdisk::Anchor, bootdisk::Found), String> {
    let drivers: BTreeSet<String> = modules::read_list(Path::new("/etc/fluxnode/modules.drivers"))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let aliases = modalias::parse_alias(
        &std::fs::read_to_string(loader.dir().join("modules.alias")).unwrap_or_default(),
    );
    let buses = modalias::buses_for(&aliases);
    let present = || {
        let mut p = modalias::device_modaliases_on(sys, buses.iter().cloned());
        p.extend(modalias::virtio_children(&p));
        p
    };
    let matched = modalias::matching(&aliases, &present(), &drivers);
    let first: Vec<String> = matched.into_iter().collect();
    let mut report = loader.load(&first).map_err(|e| e.to_string())?;
    let anchor = join_root_track(root_track, &mut report)?;
    let fallback: BTreeSet<String> =
        modules::read_list(Path::new("/etc/fluxnode/modules.fallback"))
            .unwrap_or_default()
            .into_iter()
            .collect();
    let mut candidates = drivers;
    let mut fell_back = fallback.is_empty();
    let t0 = std::time::Instant::now();
    let dev = Path::new("/dev");
    loop {
        if !fell_back && t0.elapsed() > Duration::from_millis(300) {
            fell_back = true;
            candidates.extend(fallback.iter().cloned());
        }
        if let Some(f) = bootdisk::find(
            sys,
            dev,
            &anchor,
            expected,
            &expected.root,
            bootdisk::TYPE_ROOT_X86_64,
            "root",
        )? {
            return Ok((report, anchor, f));
        }
        if t0.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "no disk with {} appeared within 15 s (no driver for the disk, or not a fluxnode disk)",
                anchor.describe()
            ));
        }
        let more: Vec<String> = modalias::matching(&aliases, &present(), &candidates)
            .into_iter()
            .filter(|m| !loader.is_loaded(m))
            .collect();
        if more.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let r = loader.load(&more).map_err(|e| e.to_string())?;
        report.loaded.extend(r.loaded);
        report.failed.extend(r.failed);
        report.total += r.total;
        // A driver that fails to load must not be retried forever.
        for (m, _) in report.failed.clone() {
            loader_mark_failed(&mut loader, &m);
        }
    }
}

fn loader_mark_failed(loader: &mut modules::Loader, m: &str) {
    loader.mark_loaded(m);
}

fn enter_root(newroot: &Path) -> Result<(), String> {
    let nr = CString::new(newroot.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: NUL-terminated paths that outlive the calls.
    unsafe {
        if libc::chdir(nr.as_ptr()) != 0 {
            return Err(format!(
                "chdir {}: {}",
                newroot.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    mount(".", "/", "", libc::MS_MOVE, "")?;
    // SAFETY: as above.
    unsafe {
        if libc::chroot(c".".as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
            return Err(format!(
                "chroot into the new root: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn exec_init(var_pid: Option<libc::pid_t>) -> Result<Never, String> {
    // Exec the real file so PID 1's name is fluxnode-init, not "init".
    let target =
        std::fs::canonicalize("/sbin/init").unwrap_or_else(|_| PathBuf::from("/sbin/init"));
    let prog = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let argv = [prog.as_ptr(), std::ptr::null()];
    // The kernel's environment for init, and the pid of the /var child
    // when it is still at work.
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != var::PID_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .chain(var_pid.and_then(|p| CString::new(format!("{}={p}", var::PID_ENV)).ok()))
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated strings.
    unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!(
        "exec {} in the new root: {} (verity error?)",
        target.display(),
        std::io::Error::last_os_error()
    ))
}
