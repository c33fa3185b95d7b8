//! `fluxnode-probe`: a test-only oneshot service baked into the TEST image.
//! It prints in-guest facts as `PROBE key=value` lines on its stdout, which
//! stage 2 forwards to the serial console as `probe: PROBE ...`, where the
//! QEMU boot tests read them. There is no shell in the image; this is the
//! tests' eyes inside it.

use std::io::Write;
use std::path::Path;

fn say(k: &str, v: &str) {
    let v = v.replace('\n', " ");
    println!("PROBE {k}={v}");
    let _ = std::io::stdout().flush();
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// (source, fstype, options) of the mount at `target`, from mountinfo.
fn mount_of(target: &str) -> Option<(String, String, String)> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines()
        .rev()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split_whitespace().collect();
            let g: Vec<&str> = post.split_whitespace().collect();
            (f.get(4) == Some(&target)).then(|| {
                (
                    g.get(1).unwrap_or(&"").to_string(),
                    g.first().unwrap_or(&"").to_string(),
                    f.get(5).unwrap_or(&"").to_string(),
                )
            })
        })
        .next()
}

/// PID 1's view of a mount: "per-mount options | superblock options".
fn pid1_mount(target: &str) -> String {
    let mi = std::fs::read_to_string("/proc/1/mountinfo").unwrap_or_default();
    mi.lines()
        .rev()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split_whitespace().collect();
            let g: Vec<&str> = post.split_whitespace().collect();
            (f.get(4) == Some(&target))
                .then(|| format!("{} | {}", f.get(5).unwrap_or(&""), g.get(2).unwrap_or(&"")))
        })
        .unwrap_or_else(|| "not-mounted".into())
}

fn efivar_usec(name: &str) -> String {
    let p = format!("/sys/firmware/efi/efivars/{name}-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f");
    match std::fs::read(&p) {
        Ok(raw) if raw.len() > 4 => {
            let units: Vec<u16> = raw[4..]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => "-".into(),
    }
}

/// `--var-marker`: the update tests' light probe (count this boot on /var,
/// say the running version) instead of the full one.
/// `--never-ready`: a notify service that never says READY (the update
/// tests' failing version).
fn modes() {
    match std::env::args().nth(1).as_deref() {
        Some("--var-marker") => {
            say("var_boots", &count_boot());
            let image = read("/usr/lib/fluxnode/image.json");
            let version = image
                .split_once("\"version\"")
                .and_then(|(_, r)| r.split('"').nth(1))
                .unwrap_or("unknown");
            say("version", version);
            // What an operator sees: `fluxnode-ota status` (the history).
            match std::process::Command::new("/usr/bin/fluxnode-ota")
                .arg("status")
                .output()
            {
                Ok(out) => {
                    for l in String::from_utf8_lossy(&out.stdout).lines() {
                        say("ota_status", l);
                    }
                    for l in String::from_utf8_lossy(&out.stderr).lines() {
                        say("ota_status_stderr", l);
                    }
                    say("ota_status_exit", &out.status.to_string());
                }
                Err(e) => say("ota_status_exit", &format!("error {e}")),
            }
            // The daemon's local API, as the node agent asks it.
            match std::process::Command::new("/usr/bin/fluxnode-ota")
                .args(["api", "status"])
                .output()
            {
                Ok(out) => say(
                    "ota_api",
                    &format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ),
                Err(e) => say("ota_api", &format!("error {e}")),
            }
            std::process::exit(0);
        }
        Some("--never-ready") => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        _ => {}
    }
}

fn main() {
    modes();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    say(
        "uptime",
        &format!("{:.3}", ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9),
    );
    say("pid1_comm", &read("/proc/1/comm"));
    say(
        "pid1_exe",
        &std::fs::read_link("/proc/1/exe")
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    say("cmdline", &read("/proc/cmdline"));
    // The cgroup init put this service in, and the limits written there.
    let cg = read("/proc/self/cgroup");
    let rel = cg
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("")
        .to_string();
    say("cgroup", &rel);
    for f in ["memory.max", "pids.max", "cpu.max"] {
        say(
            &format!("cgroup_{f}"),
            &read(&format!("/sys/fs/cgroup{rel}/{f}")),
        );
    }
    if let Some((src, fs, opts)) = mount_of("/") {
        let ro = opts.split(',').any(|o| o == "ro");
        say(
            "root",
            &format!("{src} {fs} {}", if ro { "ro" } else { "rw" }),
        );
        let dm = src.trim_start_matches("/dev/");
        say("root_dm_name", &read(&format!("/sys/block/{dm}/dm/name")));
        let slaves: Vec<String> = std::fs::read_dir(format!("/sys/block/{dm}/slaves"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        say("root_slaves", &slaves.join(","));
    }
    let tables = std::fs::read_dir("/sys/block")
        .map(|r| r.count())
        .unwrap_or(0);
    say("block_devices", &tables.to_string());
    match std::fs::write("/probe-write-test", b"x") {
        Ok(()) => say("root_write", "allowed"),
        Err(e) => say(
            "root_write",
            &format!("refused {}", e.raw_os_error().unwrap_or(0)),
        ),
    }
    if let Some((src, fs, opts)) = mount_of("/var") {
        let rw = opts.split(',').any(|o| o == "rw");
        let label = std::fs::read_dir("/sys/class/block")
            .ok()
            .and_then(|r| {
                r.flatten().find_map(|e| {
                    let u = std::fs::read_to_string(e.path().join("uevent")).ok()?;
                    (u.contains(&format!("DEVNAME={}", src.trim_start_matches("/dev/")))).then(
                        || {
                            u.lines()
                                .find_map(|l| l.strip_prefix("PARTNAME="))
                                .unwrap_or("")
                                .to_string()
                        },
                    )
                })
            })
            .unwrap_or_default();
        say(
            "var",
            &format!("{src} {fs} {} part={label}", if rw { "rw" } else { "ro" }),
        );
        // SAFETY: statvfs fills a zeroed struct we own; the path is a C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c"/var".as_ptr(), &mut st) } == 0 {
            let mib = (st.f_blocks as u64 * st.f_frsize as u64) >> 20;
            say("var_mib", &mib.to_string());
        }
    } else {
        say("var", "not-mounted");
    }
    // Kernel settings from init's table (issue 11 §5): no router
    // advertisement or redirect is taken, on the NIC as on new links.
    for (key, path) in [
        (
            "sysctl_eth0_accept_ra",
            "/proc/sys/net/ipv6/conf/eth0/accept_ra",
        ),
        (
            "sysctl_default_accept_ra",
            "/proc/sys/net/ipv6/conf/default/accept_ra",
        ),
        (
            "sysctl_eth0_accept_redirects6",
            "/proc/sys/net/ipv6/conf/eth0/accept_redirects",
        ),
        (
            "sysctl_all_accept_redirects4",
            "/proc/sys/net/ipv4/conf/all/accept_redirects",
        ),
        ("sysctl_max_dgram_qlen", "/proc/sys/net/unix/max_dgram_qlen"),
    ] {
        say(key, read(path).trim());
    }
    // How PID 1 mounted what services share (issue 11 §6).
    for (key, target) in [
        ("mount_tmp", "/tmp"),
        ("mount_run", "/run"),
        ("mount_shm", "/dev/shm"),
        ("mount_var", "/var"),
        ("mount_efivars", "/sys/firmware/efi/efivars"),
    ] {
        say(key, &pid1_mount(target));
    }
    // Persistence: count boots in a file on /var.
    say("var_boots", &count_boot());
    say("loader_time_init_usec", &efivar_usec("LoaderTimeInitUSec"));
    say("loader_time_exec_usec", &efivar_usec("LoaderTimeExecUSec"));
    say("loader_entry", &efivar_usec("LoaderEntrySelected"));
    say("boot_count_path", &efivar_usec("LoaderBootCountPath"));
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    say(
        "default_route",
        if route
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
        {
            "yes"
        } else {
            "no"
        },
    );
    // The resolver's view: /etc/resolv.conf is a link to what netd writes,
    // and a lookup goes to the server the lease named. The name is under
    // .invalid (RFC 6761), so whatever answers, nothing real is looked up;
    // the host side finds the query in the NIC's capture.
    say(
        "resolv_conf_link",
        &std::fs::read_link("/etc/resolv.conf")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("error {e}")),
    );
    say(
        "resolv_conf_nameservers",
        &read("/etc/resolv.conf")
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver "))
            .collect::<Vec<_>>()
            .join(","),
    );
    let lookup = std::net::ToSocketAddrs::to_socket_addrs(&("fluxnode-probe.invalid", 80));
    say(
        "dns_lookup",
        &match lookup {
            Ok(mut a) => format!("resolved {:?}", a.next()),
            Err(e) => format!("error {e}"),
        },
    );
    // Without CAP_SYS_MODULE the kernel refuses any module load before it
    // looks at the file: EPERM (1) here, where EBADF would mean the
    // capability check was passed.
    // SAFETY: finit_module with an invalid descriptor and an empty string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) };
    say(
        "finit_module",
        &if rc == 0 {
            "loaded".to_string()
        } else {
            format!(
                "errno {}",
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
            )
        },
    );
    say(
        "input_devices",
        &std::fs::read_dir("/dev/input")
            .map(|r| r.count())
            .unwrap_or(0)
            .to_string(),
    );
    let hal = Path::new("/usr/bin/fluxnode-hal");
    if hal.exists() {
        match std::process::Command::new(hal)
            .args(["probe", "--json"])
            .output()
        {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                say("hal_status", &o.status.to_string());
                say("hal_json", &one_line);
                if !o.status.success() {
                    say(
                        "hal_stderr",
                        String::from_utf8_lossy(&o.stderr)
                            .lines()
                            .last()
                            .unwrap_or(""),
                    );
                }
            }
            Err(e) => say("hal_status", &format!("could not run: {e}")),
        }
    } else {
        say("hal_status", "absent");
    }
    // PCRs of the sha256 bank as Linux exposes them (uppercase hex): 11 is
    // systemd-stub's measurement of the UKI, which the build predicts
    // (manifest.json's pcr11_sha256); 9 (the kernel's initrd measurement)
    // and 12 (the stub's command line and credentials) only printed.
    for pcr in [9, 11, 12] {
        say(
            &format!("pcr{pcr}_sha256"),
            &read(&format!("/sys/class/tpm/tpm0/pcr-sha256/{pcr}")).to_lowercase(),
        );
    }
    privileges();
    say("done", "1");
}

/// What netd may do (issue 11): its ids and capability sets as the kernel
/// reports them, and the modes of init's socket directories.
fn privileges() {
    use std::os::unix::fs::PermissionsExt;
    let netd = std::fs::read_dir("/proc").ok().and_then(|r| {
        r.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (read(&format!("/proc/{pid}/comm")) == "fluxnode-netd").then_some(pid)
        })
    });
    match netd {
        Some(pid) => {
            let status = read(&format!("/proc/{pid}/status"));
            for f in [
                "Uid",
                "CapEff",
                "CapPrm",
                "CapBnd",
                "CapAmb",
                "NoNewPrivs",
                "Seccomp",
            ] {
                let v = status
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{f}:")))
                    .and_then(|v| v.split_whitespace().next())
                    .unwrap_or("-");
                say(&format!("netd_{f}"), v);
            }
        }
        None => say("netd_Uid", "no netd process"),
    }
    for (key, path) in [
        ("init_run_dir_mode", "/run/fluxnode"),
        ("init_control_mode", "/run/fluxnode/control.sock"),
        ("init_notify_dir_mode", "/run/fluxnode-notify"),
        ("init_notify_mode", "/run/fluxnode-notify/notify.sock"),
    ] {
        match std::fs::metadata(path) {
            Ok(m) => say(key, &format!("{:o}", m.permissions().mode() & 0o7777)),
            Err(e) => say(key, &format!("<{e}>")),
        }
    }
}

/// Counts this boot in /var/lib/fluxnode-probe/boots: the new count, or
/// `error WHY`.
fn count_boot() -> String {
    let dir = Path::new("/var/lib/fluxnode-probe");
    let file = dir.join("boots");
    let n: u64 = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
        + 1;
    let res = std::fs::create_dir_all(dir).and_then(|_| {
        let mut f = std::fs::File::create(&file)?;
        f.write_all(format!("{n}\n").as_bytes())?;
        f.sync_all()
    });
    match res {
        Ok(()) => n.to_string(),
        Err(e) => format!("error {e}"),
    }
}
