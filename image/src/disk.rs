//! The GPT disk: `esp`, `root_a`, `root_b`, `data`, with Discoverable
//! Partitions type GUIDs and fixed disk and partition GUIDs (so the table is
//! reproducible), written by `sfdisk` into a sparse file.
//!
//! The GUIDs are derived from fixed labels, not from the version: an update
//! installs a new version's UKI onto a disk flashed with an older image, and
//! its stage 1 must find that disk's partitions. Stage 1 matches partitions
//! by type GUID and partition UUID (never by GPT name) on the disk the
//! firmware booted from; each UKI's command line carries the UUIDs it needs
//! ([`cmdline_keys`]).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{io, ImageError, Result};
use crate::spec::Sizes;
use crate::tools;

const MIB: u64 = 1024 * 1024;

/// One partition of the layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// GPT partition name (what stage 1 looks for).
    pub name: String,
    /// Partition type GUID.
    pub type_guid: String,
    /// Partition GUID (fixed, derived from the name).
    pub uuid: String,
    /// Byte offset in the image.
    pub offset: u64,
    /// Byte size.
    pub size: u64,
}

/// ESP type.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Root (x86-64) type.
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// /var type.
pub const TYPE_VAR: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";

/// The disk GUID (the GPT's label-id).
pub fn disk_guid() -> String {
    fixed_guid("disk")
}

/// The command-line keys stage 1 reads to recognise the image's disk and
/// the partitions of `slot`: `fluxnode.diskuuid=`, `fluxnode.espuuid=`,
/// `fluxnode.rootuuid=` (root_`slot`), `fluxnode.datauuid=` (lowercase).
pub fn cmdline_keys(parts: &[Part], slot: &str) -> Result<String> {
    let uuid = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.uuid.to_lowercase())
            .ok_or_else(|| ImageError::Format {
                path: "layout".into(),
                msg: format!("no partition named {name}"),
            })
    };
    Ok(format!(
        "fluxnode.diskuuid={} fluxnode.espuuid={} fluxnode.rootuuid={} fluxnode.datauuid={}",
        disk_guid().to_lowercase(),
        uuid("esp")?,
        uuid(&format!("root_{slot}"))?,
        uuid("data")?
    ))
}

/// A GUID derived from a label, stable across builds.
pub fn fixed_guid(label: &str) -> String {
    let h = Sha256::digest(format!("fluxnode-guid:{label}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode_upper(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// The partition layout for `sizes`, and the total image size.
pub fn layout(sizes: &Sizes) -> (Vec<Part>, u64) {
    let mut off = MIB;
    let mut parts = Vec::new();
    for (name, ty, mib) in [
        ("esp", TYPE_ESP, sizes.esp_mib),
        ("root_a", TYPE_ROOT_X86_64, sizes.root_mib),
        ("root_b", TYPE_ROOT_X86_64, sizes.root_mib),
        ("data", TYPE_VAR, sizes.data_mib),
    ] {
        parts.push(Part {
            name: name.into(),
            type_guid: ty.into(),
            uuid: fixed_guid(name),
            offset: off,
            size: mib * MIB,
        });
        off += mib * MIB;
    }
    (parts, off + MIB)
}

/// The sfdisk script for `parts`.
pub fn sfdisk_script(parts: &[Part]) -> String {
    let mut s = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n",
        disk_guid()
    );
    for p in parts {
        s.push_str(&format!(
            "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
            p.offset / 512,
            p.size / 512,
            p.type_guid,
            p.uuid,
            p.name
        ));
    }
    s
}

/// Creates the image at `out` with the partition table and the given contents.
pub fn write(out: &Path, parts: &[Part], total: u64, contents: &[(&str, &Path)]) -> Result<()> {
    {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(out)
            .map_err(io("creating", out))?;
        f.set_len(total).map_err(io("sizing", out))?;
    }
    tools::run_with_input(
        tools::cmd("sfdisk")?
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(out),
        Some(sfdisk_script(parts).as_bytes()),
    )?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io("opening", out))?;
    for (name, src) in contents {
        let p = parts
            .iter()
            .find(|p| p.name == *name)
            .ok_or_else(|| ImageError::Format {
                path: out.into(),
                msg: format!("no partition named {name}"),
            })?;
        let data = std::fs::read(src).map_err(io("reading", *src))?;
        if data.len() as u64 > p.size {
            return Err(ImageError::TooBig {
                what: format!("{} ({})", name, src.display()),
                need_mib: data.len() as f64 / MIB as f64,
                have_mib: p.size / MIB,
                key: if name.starts_with("root") {
                    "sizes.root_mib"
                } else {
                    "sizes.esp_mib"
                },
            });
        }
        // Only non-zero blocks are written: the image stays sparse.
        for (i, block) in data.chunks(64 * 1024).enumerate() {
            if block.iter().all(|&b| b == 0) {
                continue;
            }
            f.seek(SeekFrom::Start(p.offset + (i as u64) * 64 * 1024))
                .map_err(io("seeking", out))?;
            f.write_all(block).map_err(io("writing", out))?;
        }
    }
    f.sync_all().map_err(io("syncing", out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layout_is_aligned_and_fixed() {
        let (parts, total) = layout(&Sizes {
            esp_mib: 64,
            root_mib: 128,
            data_mib: 64,
        });
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.offset % MIB == 0));
        assert_eq!(total, (1 + 64 + 256 + 64 + 1) * MIB);
        assert_eq!(fixed_guid("esp"), fixed_guid("esp"));
        assert_ne!(fixed_guid("esp"), fixed_guid("data"));
        assert!(sfdisk_script(&parts).contains("name=\"root_b\""));
    }

    #[test]
    fn guids_are_fixed_distinct_and_on_the_command_line() {
        let (parts, _) = layout(&Sizes {
            esp_mib: 64,
            root_mib: 128,
            data_mib: 64,
        });
        // Fixed: what every flashed disk (and every update's stage 1) has.
        // Pinned: every flashed disk has these, and every later version's
        // stage 1 looks for them. Never change them.
        let pinned: Vec<(&str, String)> = std::iter::once(("disk", disk_guid()))
            .chain(parts.iter().map(|p| (p.name.as_str(), p.uuid.clone())))
            .collect();
        let want = [
            ("disk", "4A4C6987-DF32-47F8-8233-F4FC5F79253C"),
            ("esp", "BA7D3D96-B368-49DC-B304-3AFBD05CBED5"),
            ("root_a", "3A5AE598-49A3-4625-AD0F-61501831160E"),
            ("root_b", "7A975741-8902-4056-AB9E-3B9F730B97EB"),
            ("data", "84679FF8-5E3C-412E-8AB5-854EDA6B6A03"),
        ];
        let want: Vec<(&str, String)> = want.iter().map(|(n, g)| (*n, g.to_string())).collect();
        assert_eq!(pinned, want);
        let mut all: Vec<String> = parts.iter().map(|p| p.uuid.clone()).collect();
        all.push(disk_guid());
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "every GUID distinct");
        let types: Vec<&str> = parts.iter().map(|p| p.type_guid.as_str()).collect();
        assert_eq!(
            types,
            [TYPE_ESP, TYPE_ROOT_X86_64, TYPE_ROOT_X86_64, TYPE_VAR]
        );
        let a = cmdline_keys(&parts, "a").unwrap();
        let b = cmdline_keys(&parts, "b").unwrap();
        let root = |s: &str| {
            parts
                .iter()
                .find(|p| p.name == s)
                .unwrap()
                .uuid
                .to_lowercase()
        };
        assert!(
            a.contains(&format!("fluxnode.rootuuid={}", root("root_a"))),
            "{a}"
        );
        assert!(
            b.contains(&format!("fluxnode.rootuuid={}", root("root_b"))),
            "{b}"
        );
        assert!(a.contains(&format!("fluxnode.datauuid={}", root("data"))));
        assert!(a.contains(&format!("fluxnode.espuuid={}", root("esp"))));
        assert!(a.contains(&format!("fluxnode.diskuuid={}", disk_guid().to_lowercase())));
        assert!(cmdline_keys(&parts, "c").is_err());
    }
}
