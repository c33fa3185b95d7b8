//! The initramfs: only fluxnode-stage1 (as /init, stage 1) and the kernel
//! modules it needs to reach the root, with their dependencies, plus the
//! marker `/etc/initrd-release` that stage 1 checks it runs from.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::cpio::{Archive, Node};
use crate::error::{io, ImageError, Result};
use crate::kernel::Kernel;
use crate::modules::ModDb;
use crate::tools;

/// Builds the gzip-compressed initramfs bytes; returns them and the module list.
pub fn build(
    init: &Path,
    kernel: &Kernel,
    db: &ModDb,
    spec: &crate::spec::Spec,
    epoch: u64,
) -> Result<(Vec<u8>, Vec<String>)> {
    let (modules, drivers, version) = (&spec.initrd_modules, &spec.initrd_drivers, &spec.version);
    let mut a = Archive::default();
    let read = |p: &Path| std::fs::read(p).map_err(io("reading", p));
    a.add("init", Node::File(read(init)?), 0o755);
    for d in ["dev", "proc", "sys", "run", "newroot", "tmp"] {
        a.add(d, Node::Dir, 0o755);
    }
    a.add("dev/console", Node::Char(5, 1), 0o600);
    a.add("dev/null", Node::Char(1, 3), 0o666);
    a.add(
        "etc/initrd-release",
        Node::File(crate::rootfs::os_release(version, None).into_bytes()),
        0o644,
    );
    let mut all: Vec<String> = modules.clone();
    all.extend(drivers.iter().cloned());
    all.extend(spec.initrd_fallback_drivers.iter().cloned());
    let order = db.closure(&all)?;
    let always = db.closure(modules)?;
    let first: Vec<String> = db.closure(drivers)?;
    let fallback: Vec<String> = db.closure(&spec.initrd_fallback_drivers)?;
    let mut driver_names = first.clone();
    driver_names.extend(fallback.iter().cloned());
    let base = format!("lib/modules/{}", kernel.release);
    for m in &order {
        if let Some(rel) = db.path_of(m) {
            let ko = read(&kernel.modules.join(rel))?;
            let ko = if spec.strip_module_signatures {
                crate::modules::strip_signature(&ko).to_vec()
            } else {
                ko
            };
            a.add(&format!("{base}/{rel}"), Node::File(ko), 0o644);
        }
    }
    a.add(
        &format!("{base}/modules.dep"),
        Node::File(db.dep_lines(&order).into_bytes()),
        0o644,
    );
    a.add(
        &format!("{base}/modules.alias"),
        Node::File(db.alias_lines(&driver_names).into_bytes()),
        0o644,
    );
    a.add(
        "etc/fluxnode/modules.initrd",
        Node::File((always.join("\n") + "\n").into_bytes()),
        0o644,
    );
    a.add(
        "etc/fluxnode/modules.drivers",
        Node::File((first.join("\n") + "\n").into_bytes()),
        0o644,
    );
    a.add(
        "etc/fluxnode/modules.fallback",
        Node::File((fallback.join("\n") + "\n").into_bytes()),
        0o644,
    );
    let raw = a.write(epoch as u32);
    Ok((gzip(&raw)?, order))
}

/// `gzip -n -9 --rsyncable`: --rsyncable resets the compressor at
/// content-defined points, so a change early in the archive (stage 1, the
/// version in /etc/initrd-release) leaves the compressed bytes after it the
/// same. An update's zstd patch of the UKI then costs kilobytes, not the
/// whole initramfs (measured: 6 KB instead of 2.4 MB between two versions;
/// the initramfs grows 0.7%).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let gz = tools::find("gzip")?;
    let mut child = Command::new(&gz)
        .args(["-n", "-9", "--rsyncable", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("starting", &gz))?;
    let mut stdin = child.stdin.take().ok_or_else(|| ImageError::Format {
        path: gz.clone(),
        msg: "no stdin".into(),
    })?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().map_err(io("running", &gz))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(ImageError::ToolFailed {
            cmd: "gzip -n -9".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(out.stdout)
}
