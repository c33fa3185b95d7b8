//! The inventory against fixture trees (hal/tests/data), and the real
//! binary's probe on this machine (no NVIDIA driver here: a fact, exit 0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use fluxnode_hal::inventory::disk::Bus;
use fluxnode_hal::inventory::{self, Inventory, ProbeOptions, Roots};

fn fixture(name: &str) -> Inventory {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    inventory::probe(&ProbeOptions {
        roots: Roots::under(&root),
        tcti: None,
        skip_gpu: true,
    })
}

#[test]
fn qemu_appliance_fixture() {
    let inv = fixture("qemu-appliance");
    assert_eq!((inv.cpu.cores, inv.cpu.threads), (2, 2));
    assert!(inv.cpu.flags.hypervisor && inv.virtualization.hypervisor);
    assert_eq!(inv.virtualization.dmi_vendor.as_deref(), Some("QEMU"));
    assert_eq!(inv.memory.total_bytes, 1002188 * 1024);
    assert_eq!(inv.memory.available_bytes, 850000 * 1024);
    // loop0 and dm-0 are not disks.
    assert_eq!(inv.disks.len(), 1, "{:?}", inv.disks);
    let vda = &inv.disks[0];
    assert_eq!(
        (vda.name.as_str(), vda.bus, vda.size_bytes),
        ("vda", Bus::Virtio, 8388608 * 512)
    );
    assert_eq!(vda.partitions.len(), 4);
    assert!(vda.holds_var);
    assert_eq!(inv.var_partition.as_deref(), Some("vda4"));
    assert_eq!(inv.nics.len(), 1, "lo is skipped");
    let n = &inv.nics[0];
    assert_eq!(
        (n.driver.as_deref(), n.speed_mbps, n.mac.as_deref()),
        (Some("virtio_net"), None, Some("52:54:00:12:34:56"))
    );
    // sysfs says TPM 2.0; the fixture's /dev/tpmrm0 is a plain file, so
    // asking it fails, and that is recorded, not raised.
    assert!(inv.tpm.present);
    assert_eq!(inv.tpm.version.as_deref(), Some("2.0"));
    assert!(inv.tpm.error.is_some());
    let json = serde_json::to_value(&inv).unwrap();
    assert_eq!(json["disks"][0]["bus"], "virtio");
    assert_eq!(json["tpm"]["present"], true);
    // The virtio disk says "rotational" (QEMU's default) but counts as SSD.
    let facts = fluxnode_hal::tier::Facts::from(&inv, None);
    assert_eq!(facts.ssd_gb, Some(8388608.0 * 512.0 / 1e9));
}

#[test]
fn server_fixture() {
    let inv = fixture("server");
    assert_eq!(
        (inv.cpu.cores, inv.cpu.threads, inv.cpu.sockets),
        (16, 32, 2)
    );
    assert!(
        inv.cpu.flags.avx512 && inv.cpu.flags.sha && inv.cpu.flags.aes && !inv.cpu.flags.hypervisor
    );
    let by = |n: &str| inv.disks.iter().find(|d| d.name == n).unwrap();
    assert_eq!(by("nvme0n1").bus, Bus::Nvme);
    assert_eq!(
        by("nvme0n1").model.as_deref(),
        Some("Samsung SSD 980 PRO 1TB")
    );
    assert_eq!(by("sda").bus, Bus::Sata);
    assert!(!by("sda").rotational && by("sdb").rotational);
    assert_eq!(
        inv.var_partition.as_deref(),
        Some("nvme0n1p2"),
        "/var is on the root filesystem"
    );
    let eno1 = inv.nics.iter().find(|n| n.name == "eno1").unwrap();
    assert_eq!(
        (eno1.driver.as_deref(), eno1.speed_mbps),
        (Some("e1000e"), Some(1000))
    );
    let docker = inv.nics.iter().find(|n| n.name == "docker0").unwrap();
    assert_eq!(docker.driver, None);
    assert!(!inv.tpm.present);
    // The spinning SATA disk does not count as SSD; NVMe and the SATA SSD do.
    let facts = fluxnode_hal::tier::Facts::from(&inv, None);
    let ssd = (by("nvme0n1").size_bytes + by("sda").size_bytes) as f64 / 1e9;
    assert_eq!(facts.ssd_gb, Some(ssd));
    assert_eq!((facts.cores, facts.threads), (Some(16.0), Some(32.0)));
}

#[test]
fn missing_tree_gives_empty_facts_not_errors() {
    let empty = tempfile::tempdir().unwrap();
    let inv = inventory::probe(&ProbeOptions {
        roots: Roots::under(empty.path()),
        tcti: None,
        skip_gpu: true,
    });
    assert_eq!(inv.cpu.threads, 0);
    assert!(inv.disks.is_empty() && inv.nics.is_empty() && !inv.tpm.present);
}

#[test]
fn probe_without_nvidia_driver_reports_it_and_exits_0() {
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        fluxnode_testkit::skip(
            "this machine has an NVIDIA driver; the no-driver path cannot be shown here",
        );
        return;
    }
    let out = Command::new(common::hal_bin())
        .args(["probe", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gpu"]["status"], "no NVIDIA driver found");
    assert_eq!(v["gpu"]["driver_found"], false);
    assert!(v["gpu"]["gpus"].as_array().unwrap().is_empty());
    // The rest of the inventory is there.
    assert!(v["cpu"]["threads"].as_u64().unwrap() >= 1);
    let text = Command::new(common::hal_bin())
        .arg("probe")
        .output()
        .unwrap();
    assert_eq!(text.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&text.stdout).contains("gpu:    no NVIDIA driver found"));
}

#[test]
fn help_documents_every_subcommand() {
    let out = Command::new(common::hal_bin())
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["probe", "bench", "tier", "open", "check", "tpm"] {
        assert!(text.contains(sub), "--help lacks {sub}: {text}");
    }
    let out = Command::new(common::hal_bin())
        .args(["tpm", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "info",
        "ek-cert",
        "ek-public",
        "create-ak",
        "ak-info",
        "quote",
        "eventlog",
        "activate",
    ] {
        assert!(text.contains(sub), "tpm --help lacks {sub}: {text}");
    }
}

#[test]
fn eventlog_is_copied_raw_and_a_missing_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("binary_bios_measurements");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    std::fs::write(&log, &bytes).unwrap();
    let out = dir.path().join("copy.bin");
    let r = Command::new(common::hal_bin())
        .args(["tpm", "eventlog", "--path"])
        .arg(&log)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let r = Command::new(common::hal_bin())
        .args(["tpm", "eventlog", "--path"])
        .arg(dir.path().join("nope"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("no firmware event log"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}
