//! The running node as the update client needs it: which version and slot
//! it runs (the booted UKI's command line and the root's
//! `/usr/lib/fluxnode/image.json`), where the boot disk's ESP and both
//! root slots are (found the way stage 1 finds them:
//! `lowlevel::disk::bootdisk::locate_slots`), the ESP mounted, the node's
//! minimum security version (the TPM NV index, read with the raw client
//! stage 1 uses), and whether this boot is blessed (init's marker in /run).
//!
//! Every path is a field of [`Paths`], so tests point them at temp dirs.

use std::path::{Path, PathBuf};

use fluxnode_lowlevel::cmdline::Cmdline;
use fluxnode_lowlevel::disk::{bootdisk, gpt};
use fluxnode_lowlevel::tpmnv;
use serde::{Deserialize, Serialize};

use crate::slot::verity_tree_bytes;
use crate::updater::System;

/// Where the facts are read from.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// The image's own description (`/usr/lib/fluxnode/image.json`).
    pub image_json: PathBuf,
    /// sysfs.
    pub sys: PathBuf,
    /// devtmpfs.
    pub dev: PathBuf,
    /// efivarfs.
    pub efivars: PathBuf,
    /// init's marker that this boot is blessed (`/run/fluxnode/blessed`).
    pub blessed_marker: PathBuf,
    /// Where to mount the ESP when it is not mounted yet.
    pub esp_mount: PathBuf,
    /// The mount table (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// TPM character devices, tried in order.
    pub tpm: Vec<PathBuf>,
    /// init's control socket (asked which required services are not
    /// ready when a new version's boot is not blessed in time).
    pub control_socket: PathBuf,
    /// The update client's own local API for the node agent (`api.rs`).
    pub api_socket: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            cmdline: "/proc/cmdline".into(),
            image_json: "/usr/lib/fluxnode/image.json".into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
            efivars: "/sys/firmware/efi/efivars".into(),
            blessed_marker: "/run/fluxnode/blessed".into(),
            esp_mount: "/run/fluxnode/ota/esp".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            tpm: tpmnv::DEVICES.iter().map(PathBuf::from).collect(),
            control_socket: "/run/fluxnode/control.sock".into(),
            api_socket: "/run/fluxnode/ota.sock".into(),
        }
    }
}

/// `/usr/lib/fluxnode/image.json`, written by the image build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageJson {
    /// The version (the UKI's IMAGE_VERSION).
    pub version: String,
    /// The compatibility string.
    pub compatible: String,
    /// The image's security version.
    pub security_version: u64,
}

/// Why the node's facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// A file is missing or unreadable.
    #[error("reading {path}: {why}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The command line lacks what a fluxnode UKI always has.
    #[error("the kernel command line has no {0}: not booted from a fluxnode UKI")]
    Cmdline(&'static str),
    /// The slots or the ESP could not be located.
    #[error("locating the slots: {0}")]
    Locate(String),
    /// Mounting the ESP failed.
    #[error("mounting the ESP {dev} on {mountpoint}: {why}")]
    Mount {
        /// The device.
        dev: PathBuf,
        /// Where.
        mountpoint: PathBuf,
        /// Why.
        why: String,
    },
}

/// The slot facts as found (for `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    /// The node as the updater takes it.
    pub system: System,
    /// The ESP's device.
    pub esp_device: PathBuf,
    /// The image's description.
    pub image: ImageJson,
    /// The UKI's security version (`fluxnode.secver=`), if any.
    pub uki_security_version: Option<u64>,
    /// What reading the TPM said, when it said nothing usable.
    pub tpm_note: Option<String>,
}

/// Reads the facts and mounts the ESP if needed.
pub fn detect(p: &Paths) -> Result<Found, SystemError> {
    let cmdline = Cmdline::read(&p.cmdline).map_err(|e| SystemError::Read {
        path: p.cmdline.clone(),
        why: e.to_string(),
    })?;
    let text = std::fs::read(&p.image_json).map_err(|e| SystemError::Read {
        path: p.image_json.clone(),
        why: e.to_string(),
    })?;
    let image: ImageJson = serde_json::from_slice(&text).map_err(|e| SystemError::Read {
        path: p.image_json.clone(),
        why: e.to_string(),
    })?;
    let slot = cmdline
        .get("fluxnode.slot")
        .filter(|s| matches!(*s, "a" | "b"))
        .ok_or(SystemError::Cmdline("fluxnode.slot=a|b"))?
        .to_string();
    let root_uuid = cmdline
        .get("fluxnode.rootuuid")
        .and_then(gpt::parse_guid)
        .ok_or(SystemError::Cmdline("fluxnode.rootuuid="))?;
    let data_blocks: u64 = cmdline
        .get("fluxnode.datablocks")
        .and_then(|v| v.parse().ok())
        .ok_or(SystemError::Cmdline("fluxnode.datablocks="))?;
    let uki_secver = cmdline.get("fluxnode.secver").and_then(|v| v.parse().ok());
    let slots = bootdisk::locate_slots(&p.sys, &p.dev, &p.efivars, &root_uuid)
        .map_err(SystemError::Locate)?;
    let esp = mount_esp(p, &slots.esp.dev.node)?;
    let (min, tpm_note) = read_min_secver(&p.tpm);
    let system = System {
        running_version: image.version.clone(),
        running_slot: slot,
        compatible: image.compatible.clone(),
        min_security_version: min,
        running_root: slots.running.dev.node.clone(),
        running_root_len: data_blocks * 4096 + verity_tree_bytes(data_blocks),
        target_root: slots.other.dev.node.clone(),
        esp,
        blessed: p.blessed_marker.exists(),
    };
    Ok(Found {
        system,
        esp_device: slots.esp.dev.node.clone(),
        image,
        uki_security_version: uki_secver,
        tpm_note,
    })
}

/// The node's minimum security version: 0 where no index exists yet, or
/// where no TPM answers (then with a note saying so).
pub fn read_min_secver(devices: &[PathBuf]) -> (u64, Option<String>) {
    let mut last = String::from("no TPM device");
    for d in devices {
        let Some(path) = d.to_str() else { continue };
        match tpmnv::open_device(path) {
            Ok(mut f) => match tpmnv::read_min_security_version(&mut f) {
                Ok(v) => return (v.unwrap_or(0), None),
                Err(e) => last = format!("{path}: {e}"),
            },
            Err(e) => last = format!("{path}: {e}"),
        }
    }
    (
        0,
        Some(format!(
            "minimum security version unknown ({last}); taken as 0"
        )),
    )
}

/// The mount point of `dev` if it is mounted (from mountinfo's text).
pub fn mounted_at(mountinfo: &str, dev: &Path) -> Option<PathBuf> {
    let want = std::fs::canonicalize(dev).unwrap_or_else(|_| dev.to_path_buf());
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let source = right.split_whitespace().nth(1)?;
        let mountpoint = left.split_whitespace().nth(4)?;
        if Path::new(source) == want || Path::new(source) == dev {
            return Some(PathBuf::from(unescape(mountpoint)));
        }
    }
    None
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_esp(p: &Paths, dev: &Path) -> Result<PathBuf, SystemError> {
    let info = std::fs::read_to_string(&p.mountinfo).unwrap_or_default();
    if let Some(at) = mounted_at(&info, dev) {
        return Ok(at);
    }
    let err = |why: String| SystemError::Mount {
        dev: dev.to_path_buf(),
        mountpoint: p.esp_mount.clone(),
        why,
    };
    std::fs::create_dir_all(&p.esp_mount).map_err(|e| err(e.to_string()))?;
    let c = |x: &Path| {
        std::ffi::CString::new(x.as_os_str().as_encoded_bytes()).map_err(|e| err(e.to_string()))
    };
    let (src, dst) = (c(dev)?, c(&p.esp_mount)?);
    let fstype = c(Path::new("vfat"))?;
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    Ok(p.esp_mount.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn finds_a_mounted_device_in_mountinfo() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    40 1 254:1 / /run/fluxnode/esp\\040x rw,nosuid - vfat /dev/vda1 rw\n";
        assert_eq!(
            mounted_at(info, Path::new("/dev/vda1")),
            Some(PathBuf::from("/run/fluxnode/esp x"))
        );
        assert_eq!(mounted_at(info, Path::new("/dev/vda2")), None);
        assert_eq!(mounted_at("garbage\n", Path::new("/dev/vda1")), None);
    }

    #[test]
    fn no_tpm_reads_as_zero_with_a_note() {
        let (v, note) = read_min_secver(&[PathBuf::from("/nonexistent/tpm")]);
        assert_eq!(v, 0);
        assert!(note.unwrap().contains("/nonexistent/tpm"));
    }

    #[test]
    fn detect_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cmdline"),
            "console=ttyS0 fluxnode.slot=a\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("image.json"),
            r#"{"version":"0.1.0","compatible":"c","security_version":1}"#,
        )
        .unwrap();
        let p = Paths {
            cmdline: dir.path().join("cmdline"),
            image_json: dir.path().join("image.json"),
            ..Paths::default()
        };
        let e = detect(&p).unwrap_err();
        assert!(e.to_string().contains("fluxnode.rootuuid"), "{e}");
        let p = Paths {
            image_json: dir.path().join("none.json"),
            ..p
        };
        let e = detect(&p).unwrap_err();
        assert!(e.to_string().contains("none.json"), "{e}");
    }
}
