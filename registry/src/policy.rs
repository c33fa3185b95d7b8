//! The image policy from release manifests: `policy allow-image
//! manifest.json` reads every slot's predicted PCR values.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use fluxnode_protocol::types::Sha256Digest;

use fluxnode_protocol::types::{PcrValues, Rejection};

use crate::store::{AllowedImage, Policy};

fn digest(v: &serde_json::Value, what: &str) -> Result<Sha256Digest> {
    let s = v
        .as_str()
        .with_context(|| format!("{what} is not a string"))?;
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b)
        .with_context(|| format!("{what} = {s:?} is not 64 hex digits"))?;
    Ok(Sha256Digest(b))
}

/// The allowed images a manifest.json describes: one per slot, with its
/// predicted PCRs (`pcr11_sha256`, and `pcr9_sha256`/`pcr12_sha256` when
/// the build predicts them).
pub fn images_of_manifest(path: &Path) -> Result<Vec<AllowedImage>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if text.len() > 16 << 20 {
        bail!("{}: over 16 MiB, not a manifest", path.display());
    }
    let m: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let slots = m.get("slots").and_then(|s| s.as_array()).with_context(|| {
        format!(
            "{}: no `slots` array; is this fluxnode-image's manifest.json?",
            path.display()
        )
    })?;
    // The disk's own slots, then every slot's UKI an update of this
    // version installs (`update.ukis`): a node updated to this version
    // runs it from whichever slot was free, so both are this release.
    let version = m
        .get("version")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let mut entries: Vec<(String, serde_json::Value)> = Vec::new();
    let ukis = m
        .get("update")
        .and_then(|u| u.get("ukis"))
        .and_then(|u| u.as_array());
    for entry in slots.iter().chain(ukis.into_iter().flatten()) {
        let (name, slot) = match entry.as_array().map(Vec::as_slice) {
            Some([n, s]) => (n.as_str().unwrap_or_default().to_string(), s),
            _ => bail!("{}: a slot entry is not [name, {{...}}]", path.display()),
        };
        if entries.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let mut slot = slot.clone();
        if slot.get("version").is_none() {
            if let Some(o) = slot.as_object_mut() {
                o.insert("version".into(), version.into());
            }
        }
        entries.push((name, slot));
    }
    let mut out = Vec::new();
    for (name, slot) in &entries {
        let mut pcrs = BTreeMap::new();
        for (index, key) in [
            (9u8, "pcr9_sha256"),
            (11, "pcr11_sha256"),
            (12, "pcr12_sha256"),
        ] {
            if let Some(v) = slot.get(key) {
                pcrs.insert(index, digest(v, &format!("slot {name}: {key}"))?);
            }
        }
        if !pcrs.contains_key(&11) {
            bail!(
                "{}: slot {name} has no pcr11_sha256 (built before PCR prediction?)",
                path.display()
            );
        }
        out.push(AllowedImage {
            version: slot
                .get("version")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            slot: name.clone(),
            pcrs,
        });
    }
    if out.is_empty() {
        bail!("{}: no slots", path.display());
    }
    Ok(out)
}

/// Adds images (replacing entries of the same version and slot).
pub fn allow(policy: &mut Policy, images: Vec<AllowedImage>) {
    for img in images {
        policy
            .images
            .retain(|i| !(i.version == img.version && i.slot == img.slot));
        policy.images.push(img);
    }
}

/// What each pinned PCR covers, for the reasons people read.
fn covers(index: u8) -> &'static str {
    match index {
        9 => "the kernel's load options and the initrd",
        11 => "the UKI's kernel, initrd, os-release and built-in command line",
        12 => "the command line the UKI was started with (load options): another one means the image was booted with a command line it was not built with, e.g. by a loader entry",
        _ => "a measurement",
    }
}

/// The allowed image the claimed (and quoted) PCR values are, or a
/// refusal (`image_not_allowed`) that names what differs: when PCR 11 is
/// a released image's but PCR 12 or 9 is not that image's, the reason
/// says that the command line or initrd was changed.
pub fn check_image<'a>(
    policy: &'a Policy,
    claimed: &PcrValues,
) -> Result<&'a AllowedImage, Rejection> {
    let matches = |img: &AllowedImage| {
        !img.pcrs.is_empty()
            && img
                .pcrs
                .iter()
                .all(|(i, v)| claimed.sha256.get(i) == Some(v))
    };
    if let Some(img) = policy.images.iter().find(|i| matches(i)) {
        return Ok(img);
    }
    let pcr = |i: u8| {
        claimed
            .sha256
            .get(&i)
            .map_or_else(|| "(none)".to_string(), ToString::to_string)
    };
    let message = match policy
        .images
        .iter()
        .find(|img| img.pcrs.get(&11).is_some_and(|v| claimed.sha256.get(&11) == Some(v)))
    {
        Some(img) => {
            let differ: Vec<String> = img
                .pcrs
                .iter()
                .filter(|(i, v)| claimed.sha256.get(i) != Some(*v))
                .map(|(i, v)| format!("PCR {i} is {} where {} slot {} has {v} ({})", pcr(*i), img.version, img.slot, covers(*i)))
                .collect();
            format!(
                "image not allowed: PCR 11 is that of {} slot {}, but {}",
                img.version,
                img.slot,
                differ.join("; ")
            )
        }
        None => format!(
            "image not allowed: PCR 11 = {} is not that of any image in the policy ({} allowed); allow a release with `fluxnode-registry policy allow-image manifest.json`",
            pcr(11),
            policy.images.len()
        ),
    };
    Err(Rejection {
        code: "image_not_allowed".into(),
        message,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use fluxnode_protocol::types::Sha256Digest;

    fn img(v11: u8, v12: u8) -> AllowedImage {
        AllowedImage {
            version: "1.0".into(),
            slot: "a".into(),
            pcrs: [
                (9, Sha256Digest([9; 32])),
                (11, Sha256Digest([v11; 32])),
                (12, Sha256Digest([v12; 32])),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn a_release_allows_both_slots_uki_an_update_installs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        let h = |b: u8| format!("{:02x}", b).repeat(32);
        let m = serde_json::json!({
            "version": "0.2.0",
            "slots": [["a", {"version": "0.2.0", "pcr11_sha256": h(1)}]],
            "update": {"ukis": [
                ["a", {"pcr11_sha256": h(1), "pcr12_sha256": h(3)}],
                ["b", {"pcr11_sha256": h(2), "pcr12_sha256": h(4), "pcr9_sha256": h(5)}]
            ]}
        });
        std::fs::write(&p, m.to_string()).unwrap();
        let imgs = images_of_manifest(&p).unwrap();
        assert_eq!(imgs.len(), 2, "{imgs:?}");
        assert_eq!(imgs[0].slot, "a");
        assert_eq!(imgs[0].pcrs.len(), 1, "the disk's own slot a wins");
        assert_eq!(imgs[1].slot, "b");
        assert_eq!(imgs[1].version, "0.2.0");
        assert_eq!(imgs[1].pcrs[&11], Sha256Digest([2; 32]));
        assert_eq!(imgs[1].pcrs.len(), 3);
    }

    #[test]
    fn the_reason_names_the_command_line_when_only_pcr12_differs() {
        let policy = Policy {
            required_pcrs: vec![9, 11, 12],
            images: vec![img(11, 12)],
        };
        let mut claimed = PcrValues::default();
        claimed.sha256.insert(9, Sha256Digest([9; 32]));
        claimed.sha256.insert(11, Sha256Digest([11; 32]));
        claimed.sha256.insert(12, Sha256Digest([12; 32]));
        assert!(check_image(&policy, &claimed).is_ok());
        claimed.sha256.insert(12, Sha256Digest([13; 32]));
        let r = check_image(&policy, &claimed).unwrap_err();
        assert_eq!(r.code, "image_not_allowed");
        assert!(
            r.message.contains("PCR 12") && r.message.contains("command line"),
            "{}",
            r.message
        );
        claimed.sha256.insert(11, Sha256Digest([1; 32]));
        let r = check_image(&policy, &claimed).unwrap_err();
        assert!(r.message.contains("not that of any image"), "{}", r.message);
    }
}
