//! Writing an image to a block device or a file, safely: each 4 MiB chunk is
//! checked against the manifest before it is written, everything is read
//! back afterwards (page cache dropped first, so the bytes come from the
//! device), and the target is refused when it, or one of its partitions, is
//! mounted, or when it is the disk the running system booted from.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io, ImageError, Result};
use crate::manifest::Manifest;

/// Where to find the system's facts (tests point these at temp files).
#[derive(Debug, Clone)]
pub struct Host {
    /// `/proc/self/mountinfo`.
    pub mountinfo: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            mountinfo: "/proc/self/mountinfo".into(),
            sys: "/sys".into(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Bytes written and verified.
    pub bytes: u64,
    /// Chunks written.
    pub chunks: usize,
}

/// Progress: (phase, bytes done, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

fn refuse(device: &Path, why: impl Into<String>) -> ImageError {
    ImageError::Refused {
        device: device.into(),
        why: why.into(),
    }
}

/// (major, minor) of a block device number.
fn split_dev(rdev: u64) -> (u64, u64) {
    (libc::major(rdev) as u64, libc::minor(rdev) as u64)
}

/// The `maj:min` of every mount, and that of `/`.
fn mounted_devs(mountinfo: &Path) -> Result<(Vec<String>, Option<String>)> {
    let text = std::fs::read_to_string(mountinfo).map_err(io("reading", mountinfo))?;
    let mut all = Vec::new();
    let mut root = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        all.push(f[2].to_string());
        if f[4] == "/" {
            root = Some(f[2].to_string());
        }
    }
    Ok((all, root))
}

/// The `maj:min` of a block device and of all its partitions, and of its
/// parent disk when it is a partition.
fn family(sys: &Path, majmin: &str) -> (Vec<String>, Option<String>) {
    let base = sys.join("dev/block").join(majmin);
    let mut devs = vec![majmin.to_string()];
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let dev = e.path().join("dev");
            if e.path().join("partition").exists() {
                if let Ok(d) = std::fs::read_to_string(&dev) {
                    devs.push(d.trim().to_string());
                }
            }
        }
    }
    let parent = if base.join("partition").exists() {
        std::fs::read_to_string(base.join("../dev"))
            .ok()
            .map(|s| s.trim().to_string())
    } else {
        None
    };
    (devs, parent)
}

/// Checks that `device` may be written; returns whether it is a block device.
pub fn check_target(device: &Path, image: &Path, host: &Host) -> Result<bool> {
    let meta = match std::fs::metadata(device) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(ImageError::Io {
                what: "inspecting",
                path: device.into(),
                source: e,
            })
        }
    };
    let img = std::fs::metadata(image).map_err(io("inspecting", image))?;
    if meta.dev() == img.dev() && meta.ino() == img.ino() {
        return Err(refuse(device, "it is the image itself"));
    }
    if meta.file_type().is_file() {
        return Ok(false);
    }
    if !meta.file_type().is_block_device() {
        return Err(refuse(
            device,
            "it is neither a block device nor a regular file",
        ));
    }
    let (maj, min) = split_dev(meta.rdev());
    let me = format!("{maj}:{min}");
    let (mounts, root) = mounted_devs(&host.mountinfo)?;
    let (fam, _) = family(&host.sys, &me);
    if let Some(m) = fam.iter().find(|d| mounts.contains(d)) {
        return Err(refuse(
            device,
            format!("device {m} on it is mounted; unmount it first"),
        ));
    }
    // A device-mapper device (LVM, crypt, verity) on top of it counts as in use.
    for m in &fam {
        let holders = host.sys.join("dev/block").join(m).join("holders");
        if let Some(h) = std::fs::read_dir(&holders)
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|e| e.ok())
        {
            return Err(refuse(
                device,
                format!(
                    "device {m} on it is held by {} (LVM, dm-crypt or dm-verity?)",
                    h.file_name().to_string_lossy()
                ),
            ));
        }
    }
    if let Some(r) = root {
        let (_, parent) = family(&host.sys, &r);
        if r == me || parent.as_deref() == Some(me.as_str()) {
            return Err(refuse(
                device,
                "it is the disk the running system booted from",
            ));
        }
    }
    Ok(true)
}

/// Writes `image` to `device`, verifying against `manifest`.
pub fn flash(
    image: &Path,
    manifest: &Manifest,
    device: &Path,
    host: &Host,
    progress: Progress,
) -> Result<Report> {
    let is_block = check_target(device, image, host)?;
    let total = manifest.image.payload.size;
    let chunk = manifest.image.chunk_size;
    let real = std::fs::metadata(image)
        .map_err(io("inspecting", image))?
        .len();
    if real != total {
        return Err(ImageError::Verify {
            path: image.into(),
            offset: real.min(total),
            msg: format!("image is {real} bytes, the manifest says {total}"),
        });
    }
    let mut src = File::open(image).map_err(io("opening", image))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .read(true)
        .create(!is_block)
        .open(device)
        .map_err(io("opening", device))?;
    if is_block {
        let size = dst.seek(SeekFrom::End(0)).map_err(io("sizing", device))?;
        if size < total {
            return Err(refuse(
                device,
                format!("it holds {size} bytes, the image needs {total}"),
            ));
        }
        dst.seek(SeekFrom::Start(0))
            .map_err(io("seeking", device))?;
    } else {
        dst.set_len(total).map_err(io("sizing", device))?;
    }
    let mut buf = vec![0u8; chunk as usize];
    let mut off = 0u64;
    for (i, want) in manifest.image.chunks.iter().enumerate() {
        let n = (total - off).min(chunk) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(io("reading", image))?;
        let got = hex::encode(Sha256::digest(&buf[..n]));
        if &got != want {
            return Err(ImageError::Verify {
                path: image.into(),
                offset: off,
                msg: format!("chunk {i} does not match the manifest (corrupt download?); nothing past it was written"),
            });
        }
        dst.write_all(&buf[..n]).map_err(io("writing", device))?;
        off += n as u64;
        progress("write", off, total);
    }
    dst.sync_all().map_err(io("syncing", device))?;
    // Drop the cached pages so the read-back comes from the device.
    // SAFETY: plain fd and integer arguments.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&dst),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        );
    }
    dst.seek(SeekFrom::Start(0))
        .map_err(io("seeking", device))?;
    src.seek(SeekFrom::Start(0)).map_err(io("seeking", image))?;
    let mut back = vec![0u8; chunk as usize];
    off = 0;
    for _ in &manifest.image.chunks {
        let n = (total - off).min(chunk) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(io("reading", image))?;
        dst.read_exact(&mut back[..n])
            .map_err(io("reading back", device))?;
        if let Some(pos) = buf[..n].iter().zip(&back[..n]).position(|(a, b)| a != b) {
            return Err(ImageError::Verify {
                path: device.into(),
                offset: off + pos as u64,
                msg: "the byte read back differs from the image".into(),
            });
        }
        off += n as u64;
        progress("verify", off, total);
    }
    Ok(Report {
        bytes: total,
        chunks: manifest.image.chunks.len(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::manifest::{hash_file, ImageInfo, KernelInfo, Payload};

    fn manifest_for(image: &Path, chunk: u64) -> Manifest {
        let (size, sha256, chunks) = hash_file(image, chunk).unwrap();
        Manifest {
            format: 1,
            version: "t".into(),
            source_date_epoch: 0,
            kernel: KernelInfo {
                package: String::new(),
                package_version: String::new(),
                release: String::new(),
            },
            image: ImageInfo {
                payload: Payload {
                    file: "x".into(),
                    size,
                    sha256,
                },
                chunk_size: chunk,
                chunks,
            },
            partitions: vec![],
            slots: vec![],
            initrd_modules: vec![],
            late_modules: vec![],
            initramfs_size: 0,
            update: None,
        }
    }

    #[test]
    fn flashes_a_file_and_refuses_a_corrupt_image() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&img, &data).unwrap();
        let m = manifest_for(&img, 4096);
        let out = d.path().join("out");
        let mut phases = Vec::new();
        let r = flash(&img, &m, &out, &Host::default(), &mut |p, done, _| {
            phases.push((p.to_string(), done))
        })
        .unwrap();
        assert_eq!(r.bytes, 10_000);
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(phases.iter().any(|(p, d)| p == "verify" && *d == 10_000));
        // A flipped byte in the image: caught before the chunk is written.
        let mut bad = data.clone();
        bad[5000] ^= 1;
        std::fs::write(&img, &bad).unwrap();
        let out2 = d.path().join("out2");
        let e = flash(&img, &m, &out2, &Host::default(), &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("chunk 1 does not match"), "{e}");
        // The image itself as target.
        let e = flash(&img, &m, &img, &Host::default(), &mut |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("refusing"), "{e}");
    }

    #[test]
    fn refuses_mounted_and_boot_disks_from_fake_sysfs() {
        // A fake /sys with disk 7:0 and its partition 7:1.
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        let disk = sys.join("dev/block/7:0");
        std::fs::create_dir_all(disk.join("p1")).unwrap();
        std::fs::write(disk.join("p1/partition"), "1").unwrap();
        std::fs::write(disk.join("p1/dev"), "7:1\n").unwrap();
        let mi = d.path().join("mountinfo");
        std::fs::write(&mi, "22 1 7:1 / /mnt rw - ext4 /dev/loop0p1 rw\n").unwrap();
        let (devs, _) = family(&sys, "7:0");
        assert_eq!(devs, vec!["7:0", "7:1"]);
        let (mounts, root) = mounted_devs(&mi).unwrap();
        assert_eq!(mounts, vec!["7:1"]);
        assert_eq!(root, None);
    }

    #[test]
    fn check_target_refuses_mounted_and_boot_disks() {
        let d = tempfile::tempdir().unwrap();
        let node = d.path().join("fakedisk");
        let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; a block node for 7:0 (nothing is opened).
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(7, 0)) } != 0 {
            fluxnode_testkit::skip("mknod needs root");
            return;
        }
        let img = d.path().join("img");
        std::fs::write(&img, b"x").unwrap();
        let sys = d.path().join("sys");
        let disk = sys.join("dev/block/7:0");
        std::fs::create_dir_all(disk.join("p1")).unwrap();
        std::fs::write(disk.join("p1/partition"), "1").unwrap();
        std::fs::write(disk.join("p1/dev"), "7:1\n").unwrap();
        std::fs::create_dir_all(sys.join("dev/block/7:1")).unwrap();
        std::fs::write(sys.join("dev/block/7:1/partition"), "1").unwrap();
        let host = |mi: &str| {
            let p = d.path().join("mountinfo");
            std::fs::write(&p, mi).unwrap();
            Host {
                mountinfo: p,
                sys: sys.clone(),
            }
        };
        let e =
            check_target(&node, &img, &host("22 1 7:1 / /mnt rw - ext4 /dev/x rw\n")).unwrap_err();
        assert!(e.to_string().contains("7:1 on it is mounted"), "{e}");
        assert!(check_target(&node, &img, &host("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")).unwrap());
        std::fs::create_dir_all(sys.join("dev/block/7:1/holders/dm-0")).unwrap();
        let e =
            check_target(&node, &img, &host("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n")).unwrap_err();
        assert!(e.to_string().contains("held by dm-0"), "{e}");
        std::fs::remove_dir(sys.join("dev/block/7:1/holders/dm-0")).unwrap();
        // 7:0 holds / itself (fake sysfs has no parent link for it): the boot disk.
        let e = check_target(
            &node,
            &img,
            &host("22 1 9:9 / /x rw - ext4 a rw\n1 0 7:0 / / rw - ext4 b rw\n"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("mounted") || e.to_string().contains("booted"),
            "{e}"
        );
    }

    #[test]
    fn flashes_a_loop_device() {
        let root = std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        if !root {
            fluxnode_testkit::skip("needs root for losetup");
            return;
        }
        let Ok(losetup) = crate::tools::find("losetup") else {
            fluxnode_testkit::skip("losetup missing (Debian package mount)");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let backing = d.path().join("backing");
        std::fs::write(&backing, vec![0u8; 3 * 1024 * 1024]).unwrap();
        let out = std::process::Command::new(&losetup)
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .unwrap();
        if !out.status.success() {
            fluxnode_testkit::skip(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let img = d.path().join("img");
        let data: Vec<u8> = (0..(2 * 1024 * 1024 + 123u32))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        std::fs::write(&img, &data).unwrap();
        let m = manifest_for(&img, 1024 * 1024);
        let res = flash(&img, &m, &dev, &Host::default(), &mut |_, _, _| {});
        let _ = std::process::Command::new(&losetup)
            .arg("-d")
            .arg(&dev)
            .status();
        let r = res.unwrap();
        assert_eq!(r.chunks, 3);
        let back = std::fs::read(&backing).unwrap();
        assert_eq!(&back[..data.len()], &data[..]);
    }
}
