//! The JSON manifest written next to the image: what was built, from what,
//! with sizes, root hashes and sha256 of every payload, plus 4 MiB chunk
//! hashes of the whole image (the flasher checks each chunk before writing).

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io, ImageError, Result};

/// Chunk size of the image hashes.
pub const CHUNK: u64 = 4 * 1024 * 1024;

/// A file and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// File name in the output directory.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// Hex sha256.
    pub sha256: String,
}

/// The root filesystem of a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootInfo {
    /// The payload (erofs + verity tree).
    pub payload: Payload,
    /// dm-verity root hash (hex).
    pub root_hash: String,
    /// dm-verity salt (hex).
    pub salt: String,
    /// 4 KiB data blocks; the hash tree starts right after them.
    pub data_blocks: u64,
}

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// IMAGE_VERSION of this slot's UKI.
    pub version: String,
    /// The UKI's name in the ESP's EFI/Linux (with its boot counter, if any).
    pub esp_name: String,
    /// The UKI payload.
    pub uki: Payload,
    /// The root payload.
    pub root: RootInfo,
    /// The kernel command line baked into the UKI.
    pub cmdline: String,
    /// Hex sha256-bank PCR 11 after systemd-stub measured this UKI
    /// ([`crate::measure`]); empty in manifests written before issue 12.
    #[serde(default)]
    pub pcr11_sha256: String,
    /// Hex sha256-bank PCR 12 after systemd-boot and systemd-stub measured
    /// this slot's command line as load options ([`crate::measure::pcr12`]);
    /// empty in manifests written before the build predicted it.
    #[serde(default)]
    pub pcr12_sha256: String,
    /// Hex sha256-bank PCR 9 after the kernel's EFI stub measured its load
    /// options and the initrd ([`crate::measure::pcr9`]); empty in older
    /// manifests.
    #[serde(default)]
    pub pcr9_sha256: String,
}

/// What an update to this build installs, whichever slots the disk image
/// populates: the root payload (the same bytes in either slot) and one UKI
/// per slot, each naming its slot's partition. A node running slot a
/// installs the `b` UKI and vice versa. `fluxnode-image publish` reads
/// this; the disk image itself holds only the UKIs of [`Manifest::slots`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateInfo {
    /// IMAGE_VERSION of the update (the spec's `version`).
    pub version: String,
    /// The spec's `compatible`.
    pub compatible: String,
    /// The spec's `security_version` (`fluxnode.secver=` on each UKI).
    pub security_version: u64,
    /// The root payload (erofs + verity tree) and its verity facts.
    pub root: RootInfo,
    /// `(slot, UKI)` for `a` and `b`, in that order.
    pub ukis: Vec<(String, UpdateUki)>,
}

/// The UKI an update installs into one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateUki {
    /// The UKI file in the output directory.
    pub uki: Payload,
    /// Its kernel command line.
    pub cmdline: String,
    /// Predicted PCR 11 (hex), as in [`SlotInfo::pcr11_sha256`].
    pub pcr11_sha256: String,
    /// Predicted PCR 12 (hex), as in [`SlotInfo::pcr12_sha256`].
    pub pcr12_sha256: String,
    /// Predicted PCR 9 (hex), as in [`SlotInfo::pcr9_sha256`].
    pub pcr9_sha256: String,
}

/// The kernel used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Debian package.
    pub package: String,
    /// Package version.
    pub package_version: String,
    /// `uname -r`.
    pub release: String,
}

/// The whole image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The disk image payload.
    pub payload: Payload,
    /// Chunk size of `chunks`.
    pub chunk_size: u64,
    /// Hex sha256 of each chunk (the last one may be short).
    pub chunks: Vec<String>,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub format: u32,
    /// IMAGE_VERSION of slot a.
    pub version: String,
    /// SOURCE_DATE_EPOCH of the build.
    pub source_date_epoch: u64,
    /// The kernel.
    pub kernel: KernelInfo,
    /// The disk image.
    pub image: ImageInfo,
    /// GPT partitions.
    pub partitions: Vec<crate::disk::Part>,
    /// Populated slots, `a` first.
    pub slots: Vec<(String, SlotInfo)>,
    /// Modules stage 1 loads, in order.
    pub initrd_modules: Vec<String>,
    /// Modules loaded after switch_root.
    pub late_modules: Vec<String>,
    /// Size of the initramfs (gzip) in bytes.
    pub initramfs_size: u64,
    /// The update payloads of this version (both slots' UKIs); absent in
    /// manifests written before issue 13.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateInfo>,
}

impl Manifest {
    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
        Manifest::parse(&text).map_err(|msg| ImageError::Format {
            path: path.into(),
            msg,
        })
    }

    /// Parses manifest JSON.
    pub fn parse(text: &str) -> std::result::Result<Manifest, String> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if m.image.chunk_size == 0
            || m.image.chunks.len() as u64 != m.image.payload.size.div_ceil(m.image.chunk_size)
        {
            return Err("chunk list does not match the image size".into());
        }
        if let Some(u) = &m.update {
            let slots: Vec<&str> = u.ukis.iter().map(|(s, _)| s.as_str()).collect();
            if slots != ["a", "b"] {
                return Err(format!(
                    "update.ukis names slots {slots:?}, not [\"a\", \"b\"]"
                ));
            }
        }
        Ok(m)
    }

    /// The update payloads of this build: [`Manifest::update`], or for a
    /// manifest written before issue 13 what its slots give (slot a's root,
    /// the UKIs of the populated slots whose version is the build's).
    pub fn update_info(&self) -> Option<UpdateInfo> {
        if let Some(u) = &self.update {
            return Some(u.clone());
        }
        let (_, a) = self.slots.iter().find(|(s, _)| s == "a")?;
        let ukis = self
            .slots
            .iter()
            .filter(|(_, s)| s.version == self.version)
            .map(|(slot, s)| {
                (
                    slot.clone(),
                    UpdateUki {
                        uki: s.uki.clone(),
                        cmdline: s.cmdline.clone(),
                        pcr11_sha256: s.pcr11_sha256.clone(),
                        pcr12_sha256: s.pcr12_sha256.clone(),
                        pcr9_sha256: s.pcr9_sha256.clone(),
                    },
                )
            })
            .collect();
        Some(UpdateInfo {
            version: self.version.clone(),
            compatible: crate::spec::DEFAULT_COMPATIBLE.into(),
            security_version: 1,
            root: a.root.clone(),
            ukis,
        })
    }
}

/// sha256 and size of a file.
pub fn payload(path: &Path) -> Result<Payload> {
    let (size, sha256, _) = hash_file(path, 0)?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Payload { file, size, sha256 })
}

/// (size, sha256, chunk hashes when `chunk` > 0) of a file.
pub fn hash_file(path: &Path, chunk: u64) -> Result<(u64, String, Vec<String>)> {
    let mut f = std::fs::File::open(path).map_err(io("opening", path))?;
    let mut whole = Sha256::new();
    let mut part = Sha256::new();
    let mut in_part = 0u64;
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        size += n as u64;
        if chunk > 0 {
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let take = rest.len().min((chunk - in_part) as usize);
                part.update(&rest[..take]);
                in_part += take as u64;
                rest = &rest[take..];
                if in_part == chunk {
                    chunks.push(hex::encode(std::mem::take(&mut part).finalize()));
                    in_part = 0;
                }
            }
        }
    }
    if chunk > 0 && in_part > 0 {
        chunks.push(hex::encode(part.finalize()));
    }
    Ok((size, hex::encode(whole.finalize()), chunks))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn chunks_cover_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![7u8; 10]).unwrap();
        let (size, sum, chunks) = hash_file(&p, 4).unwrap();
        assert_eq!(size, 10);
        assert_eq!(chunks.len(), 3);
        assert_eq!(sum, hex::encode(Sha256::digest([7u8; 10])));
        assert_eq!(chunks[2], hex::encode(Sha256::digest([7u8; 2])));
    }

    #[test]
    fn slots_carry_pcrs_and_older_ones_parse() {
        let slot = SlotInfo {
            version: "1".into(),
            esp_name: "fluxnode-1-a.efi".into(),
            uki: Payload {
                file: "uki_a.efi".into(),
                size: 1,
                sha256: "00".into(),
            },
            root: RootInfo {
                payload: Payload {
                    file: "root_a.img".into(),
                    size: 1,
                    sha256: "00".into(),
                },
                root_hash: "11".into(),
                salt: "22".into(),
                data_blocks: 1,
            },
            cmdline: "quiet".into(),
            pcr11_sha256: "ab".repeat(32),
            pcr12_sha256: "cd".repeat(32),
            pcr9_sha256: "ef".repeat(32),
        };
        let mut v = serde_json::to_value(&slot).unwrap();
        assert_eq!(v["pcr11_sha256"], serde_json::json!("ab".repeat(32)));
        assert_eq!(v["pcr12_sha256"], serde_json::json!("cd".repeat(32)));
        assert_eq!(v["pcr9_sha256"], serde_json::json!("ef".repeat(32)));
        assert_eq!(serde_json::from_value::<SlotInfo>(v.clone()).unwrap(), slot);
        for key in ["pcr9_sha256", "pcr12_sha256", "pcr11_sha256"] {
            v.as_object_mut().unwrap().remove(key);
        }
        let old = serde_json::from_value::<SlotInfo>(v).unwrap();
        assert_eq!(
            (old.pcr9_sha256, old.pcr11_sha256, old.pcr12_sha256),
            (String::new(), String::new(), String::new())
        );
    }

    fn payload(file: &str) -> Payload {
        Payload {
            file: file.into(),
            size: 1,
            sha256: "00".into(),
        }
    }

    fn manifest_with(update: Option<UpdateInfo>) -> Manifest {
        let root = RootInfo {
            payload: payload("root_a.img"),
            root_hash: "11".into(),
            salt: "22".into(),
            data_blocks: 1,
        };
        let slot = |s: &str, v: &str| SlotInfo {
            version: v.into(),
            esp_name: format!("fluxnode-{v}-{s}.efi"),
            uki: payload(&format!("uki_{s}.efi")),
            root: root.clone(),
            cmdline: format!("fluxnode.slot={s}"),
            pcr11_sha256: "ab".repeat(32),
            pcr12_sha256: String::new(),
            pcr9_sha256: String::new(),
        };
        Manifest {
            format: 1,
            version: "1.0".into(),
            source_date_epoch: 0,
            kernel: KernelInfo {
                package: "k".into(),
                package_version: "1".into(),
                release: "6.1".into(),
            },
            image: ImageInfo {
                payload: payload("fluxnode.img"),
                chunk_size: CHUNK,
                chunks: vec!["00".into()],
            },
            partitions: vec![],
            slots: vec![
                ("a".into(), slot("a", "1.0")),
                ("b".into(), slot("b", "2.0")),
            ],
            initrd_modules: vec![],
            late_modules: vec![],
            initramfs_size: 0,
            update,
        }
    }

    #[test]
    fn update_ukis_do_not_populate_slots_and_older_manifests_fall_back() {
        let uki = |s: &str| UpdateUki {
            uki: payload(&format!("uki_{s}.efi")),
            cmdline: format!("fluxnode.slot={s} fluxnode.secver=4"),
            pcr11_sha256: "cd".repeat(32),
            pcr12_sha256: "ef".repeat(32),
            pcr9_sha256: "12".repeat(32),
        };
        let mut m = manifest_with(None);
        m.slots.truncate(1);
        let info = UpdateInfo {
            version: "1.0".into(),
            compatible: "fluxnode-x86_64-uefi-ab1".into(),
            security_version: 4,
            root: m.slots[0].1.root.clone(),
            ukis: vec![("a".into(), uki("a")), ("b".into(), uki("b"))],
        };
        m.update = Some(info.clone());
        let text = serde_json::to_string(&m).unwrap();
        let back = Manifest::parse(&text).unwrap();
        assert_eq!(back.slots.len(), 1, "slot b stays empty on the disk");
        assert_eq!(back.update_info(), Some(info.clone()));
        // Slots out of order or missing are refused.
        let mut bad = m.clone();
        bad.update.as_mut().unwrap().ukis.reverse();
        assert!(Manifest::parse(&serde_json::to_string(&bad).unwrap()).is_err());
        // A manifest without `update` (before issue 13): slot a's root and
        // the UKIs of slots of the build's version (here only a).
        let old = manifest_with(None);
        let mut v = serde_json::to_value(&old).unwrap();
        assert!(v.get("update").is_none(), "absent, not null");
        v.as_object_mut().unwrap().remove("update");
        let old = Manifest::parse(&v.to_string()).unwrap();
        let u = old.update_info().unwrap();
        assert_eq!(u.ukis.len(), 1);
        assert_eq!(u.ukis[0].0, "a");
        assert_eq!(u.ukis[0].1.pcr11_sha256, "ab".repeat(32));
        assert_eq!(
            (u.security_version, u.root.payload.file.as_str()),
            (1, "root_a.img")
        );
    }

    #[test]
    fn nasty_manifests_are_rejected() {
        for t in [
            "",
            "{}",
            "[]",
            "{\"format\":1}",
            "null",
            "{\"image\":{\"chunk_size\":0}}",
        ] {
            assert!(Manifest::parse(t).is_err(), "{t}");
        }
    }
}
