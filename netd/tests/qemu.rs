//! netd in a QEMU guest against QEMU's own DHCP server (user networking).
//!
//! The namespace tests use veths, which have no device behind them, so
//! they name the link. This test boots Debian's kernel under QEMU (TCG)
//! with a virtio NIC and no `fluxnode.net.iface`: netd must pick `eth0` as
//! the first wired link by itself, and get its lease from QEMU's built-in
//! DHCP server. (`restrict=on` would isolate the guest, but then QEMU's
//! DHCP sends no router and no DNS; the guest runs nothing but netd, whose
//! only traffic is DHCP answered inside QEMU, so nothing leaves it.)
//!
//! One binary, two roles (`harness = false`): on the host it builds an
//! initramfs holding itself as `/init`, netd, their shared libraries and
//! the NIC driver modules, boots it and reads the serial log; as PID 1 in
//! the guest it mounts, loads the modules, runs netd with a notify socket,
//! prints what the kernel holds once `READY=1` comes, stops netd with
//! SIGTERM and powers off. Without `qemu-system-x86_64` or a kernel in
//! /boot it says why and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const NETD: &str = env!("CARGO_BIN_EXE_fluxnode-netd");
/// The guest's driver modules for a virtio NIC on q35, dependencies first.
const WANTED_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

fn main() -> ExitCode {
    if std::process::id() == 1 {
        guest::main();
    }
    const NAME: &str = "qemu_dhcp_first_wired_link";
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    println!("\nrunning 1 test");
    let t = Instant::now();
    // libtest's summary line, which `cargo xtask test` counts; a skip is a
    // pass here, like any libtest test that returns early, and is taken off
    // the passed count through the skip log (fluxnode-testkit).
    let result = |ok: bool, passed: u8, ignored: u8| {
        let (word, failed) = if ok { ("ok", 0) } else { ("FAILED", 1) };
        println!(
            "\ntest result: {word}. {passed} passed; {failed} failed; {ignored} ignored; 0 measured; 0 filtered out; \
             finished in {:.2}s\n",
            t.elapsed().as_secs_f64()
        );
    };
    match host() {
        Ok(Outcome::Passed) => {
            println!("test {NAME} ... ok");
            result(true, 1, 0);
            ExitCode::SUCCESS
        }
        Ok(Outcome::Skipped(why)) => {
            fluxnode_testkit::skip_named(NAME, &why);
            println!("test {NAME} ... ok");
            result(true, 1, 0);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test {NAME} ... FAILED\n{e:#}");
            result(false, 0, 0);
            ExitCode::FAILURE
        }
    }
}

/// How the host side ended, short of failing.
enum Outcome {
    Passed,
    Skipped(String),
}

/// The newest kernel in /boot and its release.
fn kernel() -> Option<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&release)
                .join("modules.dep")
                .exists()
                .then(|| (e.path(), release))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found.pop()
}

/// `names` and their dependencies from modules.dep, in load order
/// (built-in modules are skipped).
fn module_closure(release: &str, names: &[&str]) -> Result<Vec<PathBuf>> {
    let base = Path::new("/lib/modules").join(release);
    let dep = std::fs::read_to_string(base.join("modules.dep")).context("reading modules.dep")?;
    let lookup = |name: &str| -> Option<(String, Vec<String>)> {
        dep.lines().find_map(|l| {
            let (m, deps) = l.split_once(':')?;
            let stem = Path::new(m).file_name()?.to_string_lossy().into_owned();
            let stem = stem.split(".ko").next()?.replace('-', "_");
            (stem == name.replace('-', "_")).then(|| {
                (
                    m.to_string(),
                    deps.split_whitespace().map(str::to_string).collect(),
                )
            })
        })
    };
    let mut order: Vec<PathBuf> = Vec::new();
    for n in names {
        let Some((path, deps)) = lookup(n) else {
            continue; // built in
        };
        // modules.dep lists dependencies with the deepest last.
        for d in deps.iter().rev().chain(std::iter::once(&path)) {
            let p = base.join(d);
            if !order.contains(&p) {
                order.push(p);
            }
        }
    }
    Ok(order)
}

/// The shared libraries `ldd` names for `bin`, with the loader.
fn libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect())
}

fn copy_into(root: &Path, src: &Path, dst: &Path) -> Result<()> {
    let to = root.join(dst.strip_prefix("/").unwrap_or(dst));
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::copy(src, &to)
        .with_context(|| format!("copying {} to {}", src.display(), to.display()))?;
    Ok(())
}

fn host() -> Result<Outcome> {
    // Names and paths go to the shell as positional arguments, never
    // pasted into its script.
    let which = |t: &str| {
        Command::new("sh")
            .args(["-c", r#"command -v "$1""#, "sh", t])
            .output()
    };
    if !which("qemu-system-x86_64")?.status.success() || !which("cpio")?.status.success() {
        return Ok(Outcome::Skipped(
            "qemu-system-x86_64 or cpio missing; `cargo xtask deps` installs them".into(),
        ));
    }
    let Some((vmlinuz, release)) = kernel() else {
        return Ok(Outcome::Skipped(
            "no /boot/vmlinuz-* with modules (package linux-image-amd64)".into(),
        ));
    };
    if std::fs::File::open(&vmlinuz).is_err() {
        let why = format!("{} is not readable (needs root)", vmlinuz.display());
        return Ok(Outcome::Skipped(why));
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let me = std::env::current_exe()?;
    copy_into(&root, &me, Path::new("/init"))?;
    copy_into(&root, Path::new(NETD), Path::new("/netd"))?;
    for bin in [&me, &PathBuf::from(NETD)] {
        for lib in libs(bin)? {
            copy_into(&root, &lib, &lib)?;
        }
    }
    let mut order = String::new();
    for m in module_closure(&release, WANTED_MODULES)? {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        copy_into(&root, &m, &Path::new("/modules").join(&name))?;
        order.push_str(&name);
        order.push('\n');
    }
    std::fs::write(root.join("modules/order"), &order).or_else(|_| {
        std::fs::create_dir_all(root.join("modules"))?;
        std::fs::write(root.join("modules/order"), &order)
    })?;
    let initrd = dir.path().join("initrd.cpio");
    let status = Command::new("sh")
        .args([
            "-c",
            r#"cd "$1" && find . | cpio -o -H newc --quiet > "$2""#,
            "sh",
        ])
        .arg(&root)
        .arg(&initrd)
        .status()?;
    if !status.success() {
        bail!("building the initramfs failed: {status}");
    }
    let log = dir.path().join("serial.log");
    let t = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
        ])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 loglevel=3 fluxnode.net=dhcp",
        ])
        .args(["-nic", "user,model=virtio-net-pci"])
        .arg("-serial")
        .arg({
            // Not through display(): the path goes to QEMU byte for byte.
            let mut a = std::ffi::OsString::from("file:");
            a.push(&log);
            a
        })
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .spawn()
        .context("starting qemu")?;
    let limit = Duration::from_secs(240);
    loop {
        if qemu.try_wait()?.is_some() {
            break;
        }
        if t.elapsed() > limit {
            let _ = qemu.kill();
            let _ = qemu.wait();
            bail!(
                "the guest did not power off within {limit:?}:\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let serial = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("NETD-QEMU: "))
        .collect();
    println!(
        "guest ran {:.1} s; its report:\n  {}",
        t.elapsed().as_secs_f64(),
        lines.join("\n  ")
    );
    let has = |want: &str| lines.contains(&want);
    let fail = |why: &str| -> Result<Outcome> { bail!("{why}\n--- serial log:\n{serial}") };
    if lines.iter().any(|l| l.starts_with("error")) {
        return fail("the guest reported an error");
    }
    if !lines.iter().any(|l| l.starts_with("ready after")) {
        return fail("netd never sent READY=1");
    }
    if !has("addr 10.0.2.15/24 dev eth0") {
        return fail("no 10.0.2.15/24 on eth0 at READY (netd must pick eth0 by itself)");
    }
    if !has("route 0.0.0.0/0 via 10.0.2.2 dev eth0") {
        return fail("no default route via 10.0.2.2 at READY");
    }
    if !has("resolv nameserver 10.0.2.3") {
        return fail("resolv.conf lacks QEMU's DNS 10.0.2.3");
    }
    if !has("exit 0") {
        return fail("netd did not exit 0 on SIGTERM");
    }
    if !has("addresses left 0") {
        return fail("the leased address stayed after the release");
    }
    Ok(Outcome::Passed)
}

/// The guest side, run as PID 1.
mod guest {
    use std::ffi::CString;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use fluxnode_netd::netlink::Netlink;

    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "NETD-QEMU: {line}");
        let _ = out.flush();
    }

    fn mount(src: &str, dst: &str, fstype: &str) -> Result<()> {
        std::fs::create_dir_all(dst).with_context(|| format!("creating {dst}"))?;
        let (s, d, t) = (
            CString::new(src)?,
            CString::new(dst)?,
            CString::new(fstype)?,
        );
        // SAFETY: valid C strings; null data is allowed.
        let rc = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), t.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            bail!(
                "mount {fstype} on {dst}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The initramfs has no /dev/console node; take the console once devtmpfs is up.
    fn console() {
        if let Ok(c) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
        {
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors.
                unsafe { libc::dup2(c.as_raw_fd(), fd) };
            }
        }
    }

    fn load_modules() -> Result<()> {
        let order = std::fs::read_to_string("/modules/order").unwrap_or_default();
        for name in order.lines().filter(|l| !l.is_empty()) {
            let path = format!("/modules/{name}");
            let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            let params = CString::new("")?;
            // SAFETY: f is an open module file; params is a valid C string.
            let rc =
                unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
            let err = std::io::Error::last_os_error();
            if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
                bail!("loading {path}: {err}");
            }
        }
        Ok(())
    }

    fn run() -> Result<()> {
        mount("devtmpfs", "/dev", "devtmpfs")?;
        console();
        mount("proc", "/proc", "proc")?;
        mount("sysfs", "/sys", "sysfs")?;
        mount("tmpfs", "/run", "tmpfs")?;
        load_modules()?;
        // Give the NIC driver a moment to register eth0 (netd would also wait).
        let t = Instant::now();
        while !std::path::Path::new("/sys/class/net/eth0").exists()
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let notify = UnixDatagram::bind("/run/notify").context("binding /run/notify")?;
        notify.set_read_timeout(Some(Duration::from_millis(500)))?;
        let started = Instant::now();
        let mut netd = Command::new("/netd")
            .env("NOTIFY_SOCKET", "/run/notify")
            .env("WATCHDOG_USEC", "4000000")
            .stdin(Stdio::null())
            .spawn()
            .context("starting /netd")?;
        let mut buf = [0u8; 1024];
        let mut ready = false;
        let mut watchdog_pings = 0u32;
        while !ready && started.elapsed() < Duration::from_secs(120) {
            if let Ok(n) = notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg == "WATCHDOG=1" {
                    watchdog_pings += 1;
                    continue;
                }
                say(&format!("notify {}", msg.replace('\n', " | ")));
                ready = msg.lines().any(|l| l == "READY=1");
            }
            if let Some(st) = netd.try_wait()? {
                bail!("netd exited before READY: {st}");
            }
        }
        if !ready {
            bail!("no READY=1 within 120 s");
        }
        say(&format!(
            "ready after {} ms ({watchdog_pings} watchdog pings before)",
            started.elapsed().as_millis()
        ));
        let mut nl = Netlink::open()?;
        let links = nl.links()?;
        let name = |i: u32| {
            links
                .iter()
                .find(|l| l.index == i)
                .map(|l| l.name.clone())
                .unwrap_or_default()
        };
        for a in nl.addresses()? {
            say(&format!(
                "addr {}/{} dev {}",
                a.address,
                a.prefix,
                name(a.index)
            ));
        }
        for r in nl.routes()?.iter().filter(|r| r.table == 254) {
            let gw = r
                .gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into());
            say(&format!(
                "route {}/{} via {gw} dev {}",
                r.dst,
                r.dst_len,
                r.oif.map(name).unwrap_or_default()
            ));
        }
        for l in std::fs::read_to_string("/run/netd/resolv.conf")
            .unwrap_or_default()
            .lines()
        {
            say(&format!("resolv {l}"));
        }
        // SAFETY: kill on our own child.
        unsafe { libc::kill(netd.id() as i32, libc::SIGTERM) };
        let st = netd.wait()?;
        say(&format!(
            "exit {}",
            st.code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| st.to_string())
        ));
        let left = nl
            .addresses()?
            .iter()
            .filter(|a| !a.address.is_loopback())
            .count();
        say(&format!("addresses left {left}"));
        Ok(())
    }

    pub fn main() -> ! {
        if let Err(e) = run() {
            say(&format!("error {e:#}"));
        }
        say("done");
        // SAFETY: PID 1 of a throwaway guest: sync and power off.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
        std::process::exit(0)
    }
}
