//! Tier classification at every boundary of Flux's table: just below, at,
//! and just above each threshold, with the shortfall text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fluxnode_hal::tier::{classify, Facts, Policy};

fn at(tier: &str) -> Facts {
    let t = Policy::flux()
        .tier
        .into_iter()
        .find(|t| t.name == tier)
        .unwrap();
    Facts {
        cores: t.cores,
        threads: t.threads,
        ram_gb: t.ram_gb,
        ssd_gb: t.ssd_gb,
        cpu_eps: t.cpu_eps,
        disk_write_mbps: t.disk_write_mbps,
        bandwidth_mbps: t.bandwidth_mbps,
    }
}

fn set(f: &mut Facts, key: &str, v: f64) {
    let slot = match key {
        "cores" => &mut f.cores,
        "threads" => &mut f.threads,
        "ram_gb" => &mut f.ram_gb,
        "ssd_gb" => &mut f.ssd_gb,
        "cpu_eps" => &mut f.cpu_eps,
        "disk_write_mbps" => &mut f.disk_write_mbps,
        "bandwidth_mbps" => &mut f.bandwidth_mbps,
        _ => panic!("{key}"),
    };
    *slot = Some(v);
}

const KEYS: [&str; 7] = [
    "cores",
    "threads",
    "ram_gb",
    "ssd_gb",
    "cpu_eps",
    "disk_write_mbps",
    "bandwidth_mbps",
];

#[test]
fn every_threshold_just_below_at_and_above() {
    let policy = Policy::flux();
    let names = ["Cumulus", "Nimbus", "Stratus"];
    for (i, name) in names.iter().enumerate() {
        let exact = at(name);
        assert_eq!(
            classify(&policy, &exact).tier.as_deref(),
            Some(*name),
            "exactly at {name}"
        );
        for key in KEYS {
            let tier = policy.tier.iter().find(|t| &t.name == name).unwrap();
            let threshold = exact_value(&exact, key);
            // Just below: this tier is missed because of exactly this key.
            let mut below = exact.clone();
            let delta = if threshold >= 10.0 { 0.5 } else { 0.25 };
            set(&mut below, key, threshold - delta);
            let c = classify(&policy, &below);
            let v = c.tiers.iter().find(|v| &v.name == name).unwrap();
            // Nimbus and Cumulus share the 180 MB/s disk threshold, so
            // "below Nimbus" on disk also drops Cumulus.
            let expected = names[..i].iter().rev().find(|lower| {
                let lt = policy.tier.iter().find(|t| &t.name == *lower).unwrap();
                field(lt, key).is_none_or(|min| threshold - delta >= min)
            });
            assert_eq!(
                c.tier.as_deref(),
                expected.copied(),
                "{name} {key} just below"
            );
            assert!(!v.met);
            assert_eq!(v.shortfalls.len(), 1, "{name} {key}: {:?}", v.shortfalls);
            let s = &v.shortfalls[0];
            assert_eq!(s.requirement, key);
            assert!((s.short_by - delta).abs() < 1e-9);
            assert!(s.text.starts_with(&format!("{key}: ")), "{}", s.text);
            assert!(s.text.contains("short by"), "{}", s.text);
            // Just above: still this tier (or higher only if every key allows it).
            let mut above = exact.clone();
            set(&mut above, key, threshold + delta);
            assert_eq!(
                classify(&policy, &above).tier.as_deref(),
                Some(*name),
                "{name} {key} just above"
            );
            let _ = tier;
        }
    }
}

fn exact_value(f: &Facts, key: &str) -> f64 {
    match key {
        "cores" => f.cores,
        "threads" => f.threads,
        "ram_gb" => f.ram_gb,
        "ssd_gb" => f.ssd_gb,
        "cpu_eps" => f.cpu_eps,
        "disk_write_mbps" => f.disk_write_mbps,
        "bandwidth_mbps" => f.bandwidth_mbps,
        _ => None,
    }
    .unwrap()
}

fn field(t: &fluxnode_hal::tier::Tier, key: &str) -> Option<f64> {
    match key {
        "cores" => t.cores,
        "threads" => t.threads,
        "ram_gb" => t.ram_gb,
        "ssd_gb" => t.ssd_gb,
        "cpu_eps" => t.cpu_eps,
        "disk_write_mbps" => t.disk_write_mbps,
        "bandwidth_mbps" => t.bandwidth_mbps,
        _ => None,
    }
}

#[test]
fn shortfall_text_names_value_threshold_and_gap() {
    let mut f = at("Cumulus");
    f.cpu_eps = Some(239.5);
    f.ram_gb = Some(7.0);
    let c = classify(&Policy::flux(), &f);
    assert_eq!(c.tier, None);
    let texts: Vec<&str> = c.tiers[0]
        .shortfalls
        .iter()
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "ram_gb: 7 < 8 (short by 1)",
            "cpu_eps: 239.50 < 240 (short by 0.50)"
        ]
    );
}

#[test]
fn unmeasured_facts_are_named_and_count_as_not_met() {
    let mut f = at("Stratus");
    f.bandwidth_mbps = None;
    let c = classify(&Policy::flux(), &f);
    assert_eq!(c.tier, None);
    assert_eq!(
        c.tiers[0].shortfalls[0].text,
        "bandwidth_mbps: not measured (needs 25)"
    );
}

#[test]
fn custom_policy_from_toml() {
    let p = Policy::from_toml("[[tier]]\nname = \"tiny\"\ncpu_eps = 10\n\n[[tier]]\nname = \"big\"\ncpu_eps = 100\nram_gb = 1\n").unwrap();
    let f = Facts {
        cpu_eps: Some(150.0),
        ram_gb: Some(0.5),
        ..Default::default()
    };
    let c = classify(&p, &f);
    assert_eq!(c.tier.as_deref(), Some("tiny"));
    assert_eq!(
        c.tiers[1].shortfalls[0].text,
        "ram_gb: 0.50 < 1 (short by 0.50)"
    );
}

#[test]
fn cli_classifies_facts_and_prints_shortfalls() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = at("Nimbus");
    f.cpu_eps = Some(1000.0);
    let facts = dir.path().join("facts.json");
    std::fs::write(&facts, serde_json::to_vec(&f).unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_fluxnode-hal");
    let out = std::process::Command::new(bin)
        .args(["tier", "--json", "--facts"])
        .arg(&facts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tier"], "Nimbus");
    assert_eq!(v["tiers"][2]["met"], false);
    let text = std::process::Command::new(bin)
        .args(["tier", "--facts"])
        .arg(&facts)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("tier: Nimbus\n"), "{text}");
    assert!(
        text.contains("cpu_eps: 1000 < 1520 (short by 520)"),
        "{text}"
    );
    let policy = std::process::Command::new(bin)
        .args(["tier", "--show-policy"])
        .output()
        .unwrap();
    assert!(Policy::from_toml(&String::from_utf8_lossy(&policy.stdout)).is_ok());
}
