//! Stage 1: runs as `/init` in the initramfs.
//!
//! Entry: [`run`] is called by `lib.rs` when PID 1 finds `/etc/initrd-release`.
//! It mounts /dev, /proc, /sys; loads the modules of
//! `/etc/fluxnode/modules.initrd` ([`modules`]); finds the booted slot's
//! partition by GPT name (`root_<fluxnode.slot>`, [`blockdev`]); opens it as
//! dm-verity with the root hash from the command line ([`verity`]); mounts
//! the erofs root read-only; moves /dev, /proc, /sys into it; formats or
//! checks and mounts `data` at /var ([`data`]); frees the initramfs; and
//! switch_roots into stage 2 (`/sbin/init`).
//!
//! Any failure prints one line (`fluxnode-init: FATAL: ...`) on the console
//! and reboots after a delay, so systemd-boot's boot counting can fall back
//! to the other slot: never a panic loop without a reason on screen.

pub mod blockdev;
pub mod data;
pub mod modalias;
pub mod modules;
pub mod verity;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmdline::Cmdline;
use crate::sys::{console_write, fatal_reboot};

const NEWROOT: &str = "/newroot";

/// Seconds since the kernel started (CLOCK_BOOTTIME).
pub fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

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

    let sys = Path::new("/sys");
    let part_name = format!("root_{slot}");
    let (report, root) = load_and_find(sys, &part_name)?;
    for (m, why) in &report.failed {
        say(&format!("warning: module {m} not loaded: {why}"));
    }
    let t_mod = uptime();
    if root.sectors < data_blocks * 8 {
        return Err(format!(
            "partition {part_name} ({}) is smaller than its verity data",
            root.devname
        ));
    }
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
    // Read stage 2's programs now, on the other CPU, while /var is prepared:
    // every first read of a root page is a dm-verity hash check, slow under
    // emulation, and otherwise it would all happen at exec, on the boot's
    // critical path.
    let warm = std::thread::spawn(|| {
        for f in ["usr/sbin/fluxnode-init", "usr/bin/fluxnode-netd"] {
            if let Ok(mut file) = std::fs::File::open(Path::new(NEWROOT).join(f)) {
                let _ = std::io::copy(&mut file, &mut std::io::sink());
            }
        }
    });
    for d in ["/dev", "/proc", "/sys"] {
        mount(d, &format!("{NEWROOT}{d}"), "", libc::MS_MOVE, "")?;
    }
    let t_data0 = uptime();
    let (data_dev, data_note) = prepare_data(Path::new(NEWROOT))?;
    free_initramfs();
    enter_root(Path::new(NEWROOT))?;
    // /var is mounted from inside the new root, so mountinfo shows /dev/<part>.
    mount(
        &data_dev,
        "/var",
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV,
        "",
    )
    .map_err(|e| format!("{e} (data partition)"))?;
    let _ = warm.join();
    let t_data = uptime();
    let mut slow = report.loaded.clone();
    slow.sort_by_key(|b| std::cmp::Reverse(b.1));
    let slow: Vec<String> = slow
        .iter()
        .take(4)
        .map(|(m, d)| format!("{m} {:.0}", d.as_secs_f64() * 1e3))
        .collect();
    say(&format!(
        "stage 1: slot {slot} root {} verified; {} modules in {:.2} s (slowest ms: {}); root at {:.2} s; /var {data_note} in {:.2} s; switch_root at t={:.3} s ({:.2} s in stage 1)",
        root.devname,
        report.loaded.len(),
        t_mod - t0,
        slow.join(", "),
        t_root - t0,
        t_data - t_data0,
        t_data,
        t_data - t0,
    ));
    exec_init()
}

/// Formats or checks the data partition (tools run chrooted in `newroot`);
/// returns its device path as seen from the new root.
/// Loads the always-needed modules and the disk drivers the hardware asks
/// for, and keeps matching new devices (buses appear as drivers load, SCSI
/// scans are asynchronous) until the partition shows up.
fn load_and_find(
    sys: &Path,
    part_name: &str,
) -> Result<(modules::LoadReport, blockdev::BlockDev), String> {
    let mut loader = modules::Loader::new(Path::new("/")).map_err(|e| e.to_string())?;
    let always =
        modules::read_list(Path::new("/etc/fluxnode/modules.initrd")).map_err(|e| e.to_string())?;
    let drivers: BTreeSet<String> = modules::read_list(Path::new("/etc/fluxnode/modules.drivers"))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let aliases = modalias::parse_alias(
        &std::fs::read_to_string(loader.dir().join("modules.alias")).unwrap_or_default(),
    );
    let matched = modalias::matching(&aliases, &modalias::device_modaliases(sys), &drivers);
    let mut first: Vec<String> = always;
    first.extend(matched);
    let mut report = loader.load(&first).map_err(|e| e.to_string())?;
    let fallback: BTreeSet<String> =
        modules::read_list(Path::new("/etc/fluxnode/modules.fallback"))
            .unwrap_or_default()
            .into_iter()
            .collect();
    let mut candidates = drivers;
    let mut fell_back = fallback.is_empty();
    let t0 = std::time::Instant::now();
    loop {
        if !fell_back && t0.elapsed() > Duration::from_millis(300) {
            fell_back = true;
            candidates.extend(fallback.iter().cloned());
        }
        if let Some(b) = blockdev::find_by_partname(sys, part_name) {
            return Ok((report, b));
        }
        if t0.elapsed() > Duration::from_secs(15) {
            return Err(format!("no partition named {part_name} appeared within 15 s (no driver for the disk, or not a fluxnode disk)"));
        }
        let more: Vec<String> =
            modalias::matching(&aliases, &modalias::device_modaliases(sys), &candidates)
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

fn prepare_data(newroot: &Path) -> Result<(String, &'static str), String> {
    let sys = newroot.join("sys");
    let part = blockdev::find_by_partname(&sys, "data").ok_or("no partition named data")?;
    let node = newroot.join("dev").join(&part.devname);
    let in_root = format!("/dev/{}", part.devname);
    let state = data::inspect(&node).map_err(|e| format!("reading {}: {e}", node.display()))?;
    let note = match state {
        data::DataState::Blank => {
            say(&format!(
                "formatting {} as ext4 for /var (first boot)",
                part.devname
            ));
            let code = data::run_in(
                newroot,
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
                    &in_root,
                ],
            )
            .map_err(|e| format!("running mke2fs: {e}"))?;
            if code != 0 {
                return Err(format!("mke2fs on {} exited {code}", part.devname));
            }
            "formatted"
        }
        data::DataState::NeedsCheck => {
            say(&format!(
                "checking {} (not clean, or errors recorded)",
                part.devname
            ));
            let code = data::run_in(newroot, &["/usr/sbin/e2fsck", "-p", &in_root])
                .map_err(|e| format!("running e2fsck: {e}"))?;
            if code >= 4 {
                return Err(format!(
                    "e2fsck -p on {} exited {code}: the data partition needs manual repair",
                    part.devname
                ));
            }
            "checked"
        }
        data::DataState::Clean => "mounted",
        data::DataState::Foreign => {
            return Err(format!(
                "{} holds something that is not ext4; refusing to format it",
                part.devname
            ));
        }
    };
    Ok((in_root, note))
}

/// Deletes the initramfs's files (it is RAM) but not the mounts under it.
fn free_initramfs() {
    use std::os::unix::fs::MetadataExt;
    let Ok(rootdev) = std::fs::metadata("/").map(|m| m.dev()) else {
        return;
    };
    fn wipe(dir: &Path, rootdev: u64) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.dev() != rootdev {
                continue;
            }
            if m.is_dir() {
                wipe(&p, rootdev);
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    wipe(Path::new("/"), rootdev);
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

fn exec_init() -> Result<Never, String> {
    // Exec the real file so PID 1's name is fluxnode-init, not "init".
    let target =
        std::fs::canonicalize("/sbin/init").unwrap_or_else(|_| PathBuf::from("/sbin/init"));
    let prog = CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let argv = [prog.as_ptr(), std::ptr::null()];
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings.
    unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
    Err(format!(
        "exec {} in the new root: {} (verity error?)",
        target.display(),
        std::io::Error::last_os_error()
    ))
}
