//! One QEMU machine: q35 under TCG, OVMF (read-only code, a private copy of
//! the variables), the disk as virtio, swtpm as the TPM, user networking,
//! the serial console in a file and the monitor on a unix socket (for
//! `system_powerdown`, which presses the ACPI power button).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// OVMF's code, read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's variable store template.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The bus an extra disk sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// An NVMe controller with one namespace (`nvme0n1` in the guest).
    Nvme,
    /// A SATA disk on an AHCI controller (`sda`).
    Sata,
    /// Another virtio disk (`vdb`).
    Virtio,
}

/// A disk attached besides the boot disk (raw, used in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraDisk {
    /// The raw image.
    pub path: PathBuf,
    /// Where it is attached.
    pub bus: DiskBus,
}

/// How to start a machine.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The raw disk image (used in place; copy it first to keep the original).
    pub disk: PathBuf,
    /// A directory for the serial log, OVMF vars, sockets (created).
    pub dir: PathBuf,
    /// Attach swtpm as a TPM 2.0.
    pub tpm: bool,
    /// The TPM's state directory (e.g. manufactured with an EK certificate
    /// by `fluxnode_testkit::swtpm::manufacture`); default: a blank TPM in
    /// `dir/tpm`.
    pub tpm_state: Option<PathBuf>,
    /// User networking with a virtio NIC (else no NIC).
    pub net: bool,
    /// Memory in MiB.
    pub mem_mib: u32,
    /// Serial to this process's stdout too (the demo) instead of only a file.
    pub serial_stdio: bool,
    /// More disks. With any, the boot disk gets `bootindex=0` so the
    /// firmware still boots from it first.
    pub extra_disks: Vec<ExtraDisk>,
    /// Guest addresses forwarded to a host TCP port, one connection each
    /// (`10.0.2.100:80` → `127.0.0.1:8080`): slirp's `guestfwd` with a
    /// `socat` per connection (a chardev target takes one connection only).
    pub guestfwd: Vec<(String, u16)>,
    /// Host ports on 127.0.0.1 forwarded to guest TCP ports (slirp's
    /// `hostfwd`): `(host, guest)`.
    pub hostfwd: Vec<(u16, u16)>,
}

impl VmConfig {
    /// Defaults: TPM and network on, 1 GiB.
    pub fn new(disk: &Path, dir: &Path) -> Self {
        VmConfig {
            disk: disk.into(),
            dir: dir.into(),
            tpm: true,
            tpm_state: None,
            net: true,
            mem_mib: 1024,
            serial_stdio: false,
            extra_disks: Vec::new(),
            guestfwd: Vec::new(),
            hostfwd: Vec::new(),
        }
    }
}

/// A running machine. Dropping it kills QEMU and swtpm.
#[derive(Debug)]
pub struct Vm {
    qemu: Child,
    swtpm: Option<Child>,
    /// The serial log file.
    pub serial: PathBuf,
    monitor: PathBuf,
    started: Instant,
}

/// The command line the harness uses (also what docs/IMAGE.md shows).
pub fn qemu_command(
    cfg: &VmConfig,
    vars: &Path,
    serial: &Path,
    monitor: &Path,
    tpm_sock: Option<&Path>,
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m",
    ])
    .arg(cfg.mem_mib.to_string())
    .args(["-nodefaults", "-display", "none", "-vga", "none"])
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
    ))
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ))
    .arg("-drive");
    if cfg.extra_disks.is_empty() {
        c.arg(format!("if=virtio,format=raw,file={}", cfg.disk.display()));
    } else {
        // The same virtio disk (the same PCI slot, first free), but with a
        // boot index: a decoy disk must not be the firmware's first choice.
        c.arg(format!(
            "if=none,id=boot,format=raw,file={}",
            cfg.disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
    }
    for (i, d) in cfg.extra_disks.iter().enumerate() {
        c.arg("-drive").arg(format!(
            "if=none,id=extra{i},format=raw,file={}",
            d.path.display()
        ));
        match d.bus {
            DiskBus::Nvme => c
                .arg("-device")
                .arg(format!("nvme,drive=extra{i},serial=extra{i}")),
            DiskBus::Sata => c
                .arg("-device")
                .arg(format!("ahci,id=ahci{i}"))
                .arg("-device")
                .arg(format!("ide-hd,drive=extra{i},bus=ahci{i}.0")),
            DiskBus::Virtio => c
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=extra{i}")),
        };
    }
    c.arg("-monitor")
        .arg(format!("unix:{},server,nowait", monitor.display()));
    if cfg.serial_stdio {
        c.arg("-chardev")
            .arg(format!(
                "stdio,id=ser0,logfile={},signal=off",
                serial.display()
            ))
            .args(["-serial", "chardev:ser0"]);
    } else {
        c.arg("-serial").arg(format!("file:{}", serial.display()));
    }
    if cfg.net {
        // Spelled out (not `-nic`) to name the netdev, so a filter can
        // record what the guest sends: `net.pcap` beside the serial log,
        // for tests that check traffic the guest cannot report itself
        // (a DNS query to the server netd learned).
        let mut netdev = String::from("user,id=net0");
        for (guest, port) in &cfg.guestfwd {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{guest}-cmd:socat - TCP:127.0.0.1:{port}"
            ));
        }
        for (host, guest) in &cfg.hostfwd {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        c.arg("-netdev")
            .arg(netdev)
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .arg("-object")
            .arg(format!(
                "filter-dump,id=dump0,netdev=net0,file={}",
                cfg.dir.join("net.pcap").display()
            ));
    } else {
        c.args(["-nic", "none"]);
    }
    if let Some(sock) = tpm_sock {
        c.arg("-chardev")
            .arg(format!("socket,id=chrtpm,path={}", sock.display()))
            .args([
                "-tpmdev",
                "emulator,id=tpm0,chardev=chrtpm",
                "-device",
                "tpm-tis,tpmdev=tpm0",
            ]);
    }
    c.args(["-device", "i6300esb"]);
    c
}

impl Vm {
    /// Starts swtpm (if asked) and QEMU.
    pub fn start(cfg: &VmConfig) -> Result<Vm, String> {
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| format!("creating {}: {e}", cfg.dir.display()))?;
        let vars = cfg.dir.join("OVMF_VARS.fd");
        if !vars.exists() {
            std::fs::copy(OVMF_VARS, &vars)
                .map_err(|e| format!("copying {OVMF_VARS}: {e} (Debian package ovmf)"))?;
        }
        let serial = cfg.dir.join("serial.log");
        let monitor = cfg.dir.join("monitor.sock");
        let _ = std::fs::remove_file(&monitor);
        let mut swtpm = None;
        let mut tpm_sock = None;
        if cfg.tpm {
            let state = cfg.tpm_state.clone().unwrap_or_else(|| cfg.dir.join("tpm"));
            std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
            let sock = cfg.dir.join("swtpm.sock");
            let _ = std::fs::remove_file(&sock);
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", sock.display()))
                .args(["--flags", "startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting swtpm: {e} (Debian package swtpm)"))?;
            let t0 = Instant::now();
            while !sock.exists() && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            swtpm = Some(child);
            tpm_sock = Some(sock);
        }
        let mut cmd = qemu_command(cfg, &vars, &serial, &monitor, tpm_sock.as_deref());
        if !cfg.serial_stdio {
            cmd.stdout(Stdio::null());
        }
        cmd.stderr(Stdio::inherit()).stdin(Stdio::null());
        let qemu = cmd.spawn().map_err(|e| {
            format!("starting qemu-system-x86_64: {e} (Debian package qemu-system-x86)")
        })?;
        Ok(Vm {
            qemu,
            swtpm,
            serial,
            monitor,
            started: Instant::now(),
        })
    }

    /// The serial log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log (for failure messages).
    pub fn tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Seconds since QEMU started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits until the log contains `needle` (counting from byte `from`);
    /// returns the byte offset just past it.
    pub fn wait_for_from(
        &mut self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<usize, String> {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if let Some(i) = log.get(from..).and_then(|s| s.find(needle)) {
                return Ok(from + i + needle.len());
            }
            if let Ok(Some(st)) = self.qemu.try_wait() {
                return Err(format!(
                    "QEMU exited ({st}) before {needle:?} appeared; serial log tail:\n{}",
                    self.tail(40)
                ));
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "{needle:?} did not appear within {} s; serial log tail:\n{}",
                    timeout.as_secs(),
                    self.tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the log contains `needle` anywhere.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<usize, String> {
        self.wait_for_from(needle, 0, timeout)
    }

    /// Sends a human monitor command (e.g. `system_powerdown`).
    pub fn monitor(&self, command: &str) -> Result<(), String> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.monitor).map_err(|e| {
            format!(
                "connecting to the QEMU monitor {}: {e}",
                self.monitor.display()
            )
        })?;
        s.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Presses the ACPI power button (`system_powerdown`) until QEMU exits:
    /// a press before the guest's `button` driver is loaded is lost, as on
    /// a real machine, so it is repeated every 5 s.
    pub fn power_off(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let t0 = Instant::now();
        loop {
            self.monitor("system_powerdown")?;
            match self.wait_exit(Duration::from_secs(5)) {
                Ok(st) => return Ok(st),
                Err(e) if t0.elapsed() > timeout => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.qemu.try_wait().map_err(|e| e.to_string())? {
                return Ok(st);
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "QEMU still running after {} s; serial log tail:\n{}",
                    timeout.as_secs(),
                    self.tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills QEMU (and swtpm).
    pub fn kill(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        if let Some(mut s) = self.swtpm.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `PROBE key=value` lines the test image's probe printed, after byte `from`.
pub fn probe_values(log: &str, from: usize) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    for line in log.get(from..).unwrap_or("").lines() {
        if let Some(rest) = line.split_once("PROBE ").map(|(_, r)| r) {
            if let Some((k, v)) = rest.split_once('=') {
                m.insert(k.trim().to_string(), v.trim_end_matches('\r').to_string());
            }
        }
    }
    m
}

/// Why this machine cannot run the QEMU tests, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    for (tool, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("swtpm", "swtpm"),
    ] {
        if fluxnode_image::tools::find(tool).is_err() {
            return Some(format!("{tool} is missing (Debian package {pkg})"));
        }
    }
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).exists() {
            return Some(format!("{f} is missing (Debian package ovmf)"));
        }
    }
    None
}
