//! The Yocto layer (`yocto-layer/meta-fluxnode`, issue 15), checked without
//! a bitbake build (the project's machines cannot run one):
//!
//! - the crates include is what Cargo.lock gives (`cargo xtask yocto-crates`);
//! - the wic layout is the one `fluxnode-image` builds: names, type GUIDs,
//!   sizes, and the fixed partition and disk GUIDs stage 1 looks for;
//! - in a virtualenv this test makes, with the pinned packages of
//!   `yocto-layer/check/requirements.txt`: oelint-adv finds no error,
//!   BitBake's own parser (the `bb` library of the bitbake-setup wheel)
//!   parses layer.conf and every recipe, and the kas file validates against
//!   kas's own schema (`yocto-layer/check/check.py`); this test then asserts
//!   the layer's collection, priority and series, that every binary recipe
//!   and the image exist, and that the image's services are the QEMU
//!   image's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Command;

use fluxnode_image::{disk, spec::Spec};
use fluxnode_tests::yocto::{self, in_workspace};
use serde_json::Value;

/// The wic file of the layer.
const WKS: &str = "yocto-layer/meta-fluxnode/wic/fluxnode-ab.wks.in";
/// The kas file.
const KAS: &str = "yocto-layer/kas/fluxnode.yml";
/// The spec of the shipped image.
const SPEC: &str = "image/spec/default.toml";

/// One recipe per binary the issue names, and the image.
const RECIPES: &[&str] = &[
    "fluxnode-init",
    "fluxnode-netd",
    "fluxnode-hal",
    "fluxnode-node",
    "fluxnode-ota",
    "fluxnode-registry",
    "fluxnode-image",
];

#[test]
fn crates_include_matches_cargo_lock() {
    let lock = std::fs::read_to_string(in_workspace("Cargo.lock")).unwrap();
    let want = yocto::crates_inc(&lock).unwrap();
    let have = std::fs::read_to_string(in_workspace(yocto::CRATES_INC)).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale: Cargo.lock changed. Run `cargo xtask yocto-crates` and commit it.",
        yocto::CRATES_INC
    );
}

#[test]
fn wks_layout_is_the_image_builders() {
    let spec = Spec::load(&in_workspace(SPEC)).unwrap();
    let (built, _) = disk::layout(&spec.sizes);
    let text = std::fs::read_to_string(in_workspace(WKS)).unwrap();
    let (parts, diskid) = yocto::wks_parts(&text).unwrap();
    // wic sets no GPT disk GUID from the wks on scarthgap: the layer's
    // verity class sets it after wic (`sfdisk --disk-id`), checked in
    // `layer_passes_oelint_bitbake_and_kas`. A wks that names one must
    // name the right one.
    if let Some(id) = diskid {
        assert_eq!(id, disk::disk_guid(), "{WKS}: `bootloader --diskid`");
    }
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    let want: Vec<&str> = built.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, want, "{WKS}: partitions and their order");
    for (w, b) in parts.iter().zip(&built) {
        assert_eq!(w.type_guid, b.type_guid, "{WKS}: type of {}", w.name);
        assert_eq!(w.uuid, b.uuid, "{WKS}: partition GUID of {}", w.name);
        assert_eq!(
            w.mib * 1024 * 1024,
            b.size,
            "{WKS}: size of {} (image/spec/default.toml [sizes])",
            w.name
        );
    }
}

/// The service files the QEMU image installs into services.d, by name.
fn qemu_services() -> BTreeSet<String> {
    let spec = Spec::load(&in_workspace(SPEC)).unwrap();
    spec.files
        .iter()
        .filter_map(|f| f.dst.strip_prefix("/etc/fluxnode/services.d/"))
        .filter_map(|n| n.strip_suffix(".toml"))
        .map(str::to_string)
        .collect()
}

#[test]
fn layer_passes_oelint_bitbake_and_kas() {
    let python = yocto::venv().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let json = out_dir.path().join("check.json");
    let out = Command::new(&python)
        .arg(in_workspace("yocto-layer/check/check.py"))
        .arg("--layer")
        .arg(in_workspace(yocto::LAYER))
        .arg("--kas")
        .arg(in_workspace(KAS))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    assert!(
        out.status.success(),
        "check.py failed ({}):\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&text).unwrap();

    // oelint-adv: zero errors.
    assert_eq!(r["oelint"]["errors"], 0, "oelint: {}", r["oelint"]);

    // layer.conf, as BitBake read it.
    let layer = &r["layer"];
    assert_eq!(layer["collection"], "fluxnode", "{layer}");
    assert_eq!(layer["priority"], "10", "{layer}");
    let compat: Vec<&str> = layer["compat"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        compat.contains(&"scarthgap"),
        "LAYERSERIES_COMPAT: {compat:?}"
    );
    assert!(
        compat.len() >= 2,
        "scarthgap and the current release: {compat:?}"
    );

    // Every recipe parsed; each binary recipe builds with the cargo class
    // and fetches every locked crate.
    let recipes = r["recipes"].as_object().unwrap();
    let lock = std::fs::read_to_string(in_workspace("Cargo.lock")).unwrap();
    let crates = yocto::locked_crates(&lock).unwrap();
    for pn in RECIPES {
        let rec = recipes
            .get(*pn)
            .unwrap_or_else(|| panic!("no recipe {pn}; parsed: {:?}", recipes.keys()));
        if *pn == "fluxnode-image" {
            continue;
        }
        let inherits: Vec<&str> = rec["inherits"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(inherits.contains(&"cargo"), "{pn} inherits {inherits:?}");
        let src = rec["vars"]["SRC_URI"].as_str().unwrap_or_default();
        for c in &crates {
            let uri = format!("crate://crates.io/{}/{}", c.name, c.version);
            assert!(src.contains(&uri), "{pn}: SRC_URI lacks {uri}");
        }
    }

    // The image's services are the QEMU image's.
    let image = &recipes["fluxnode-image"]["vars"];
    let services: BTreeSet<String> = image["FLUXNODE_SERVICES"]
        .as_str()
        .unwrap_or_else(|| panic!("fluxnode-image has no FLUXNODE_SERVICES: {image}"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        services,
        qemu_services(),
        "FLUXNODE_SERVICES against {SPEC}'s services.d"
    );

    // The GUIDs of the UKIs' command lines come from the layer's own port
    // of `fixed_guid`: the disk's (set on the wic image) is the builder's.
    assert_eq!(
        image["FLUXNODE_DISK_GUID"].as_str().map(str::to_uppercase),
        Some(disk::disk_guid()),
        "fluxnode-image's FLUXNODE_DISK_GUID (classes/fluxnode_verity.bbclass)"
    );

    // kas: valid against the schema the pinned kas ships.
    assert_eq!(r["kas"]["valid"], true, "kas: {}", r["kas"]);
}
