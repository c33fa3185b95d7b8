//! Seeded work and its spot-check: the same seed gives the same commitment,
//! another seed another one, and a tampered opening is rejected; also
//! through the CLI (`bench --chunks`, `open`, `check`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use fluxnode_hal::bench::{cpu, disk, mem};
use fluxnode_hal::proof::{self, ChunkSet, HexBytes};
use fluxnode_hal::seed::Seed;

const A: Seed = Seed([0xa1; 32]);
const B: Seed = Seed([0xb2; 32]);

fn mem_set(seed: Seed) -> ChunkSet {
    let mut p = mem::MemParams::default_with(seed);
    p.bytes = 8 << 20;
    p.passes = 2;
    p.max_cv_pct = f64::INFINITY;
    mem::run(&p).unwrap().chunks.unwrap()
}

fn disk_set(seed: Seed, dir: &std::path::Path) -> ChunkSet {
    let mut p = disk::DiskParams::flux(dir.to_path_buf(), seed);
    p.count = 64;
    p.runs = 1;
    p.iops_file_bytes = 0;
    disk::run(&p).unwrap().chunks.unwrap()
}

#[test]
fn memory_and_disk_commitments_depend_on_the_seed_only() {
    let (a1, a2, b) = (mem_set(A), mem_set(A), mem_set(B));
    assert_eq!(a1.commitment, a2.commitment);
    assert_ne!(a1.commitment.root, b.commitment.root);
    let dir = common::scratch();
    let (d1, d2, d3) = (
        disk_set(A, dir.path()),
        disk_set(A, dir.path()),
        disk_set(B, dir.path()),
    );
    assert_eq!(d1.commitment, d2.commitment);
    assert_ne!(d1.commitment.root, d3.commitment.root);
    for set in [&a1, &d1] {
        let o = set.open(&[0, 3, set.commitment.chunks - 1]).unwrap();
        proof::check(
            &o,
            Some(&set.commitment),
            Some(&[0, 3, set.commitment.chunks - 1]),
        )
        .unwrap();
    }
}

#[test]
fn cpu_commitment_is_reproducible_and_spot_checks() {
    // The number of events depends on time; the outputs of events 0..n do not.
    let mut p = cpu::CpuParams::flux(1, A);
    p.duration = Duration::from_millis(300);
    p.warmup = Duration::ZERO;
    p.max_cv_pct = f64::INFINITY;
    let r = cpu::run(&p).unwrap();
    let set = r.chunks.unwrap();
    let n = set.commitment.chunks;
    assert!(n >= 1);
    let redo: Vec<Vec<u8>> = (0..n)
        .map(|i| cpu::chunk_output(&A, p.max_prime, i))
        .collect();
    assert_eq!(
        ChunkSet::new(set.commitment.workload, A, redo).commitment,
        set.commitment
    );
    let other: Vec<Vec<u8>> = (0..n)
        .map(|i| cpu::chunk_output(&B, p.max_prime, i))
        .collect();
    assert_ne!(
        ChunkSet::new(set.commitment.workload, B, other)
            .commitment
            .root,
        set.commitment.root
    );
    let ask = proof::challenge(b"verifier nonce", &set.commitment, 4);
    proof::check(&set.open(&ask).unwrap(), Some(&set.commitment), Some(&ask)).unwrap();
}

#[test]
fn tampered_openings_are_rejected() {
    let set = mem_set(A);
    let ask = proof::challenge(b"nonce", &set.commitment, 3);
    let good = set.open(&ask).unwrap();
    proof::check(&good, Some(&set.commitment), Some(&ask)).unwrap();

    let mut o = good.clone();
    o.openings[0].output.0[0] ^= 1;
    assert!(proof::check(&o, None, None)
        .unwrap_err()
        .to_string()
        .contains("does not match recomputation"));

    // A self-consistent lie: outputs made with another seed, committed honestly.
    let liar = mem_set(B);
    let mut o = liar.open(&ask).unwrap();
    o.commitment.seed = A;
    assert!(proof::check(&o, None, None).is_err());

    let mut o = good.clone();
    if let Some(p) = o.openings[0].path.first_mut() {
        p.0[5] ^= 0x80;
    }
    assert!(proof::check(&o, None, None)
        .unwrap_err()
        .to_string()
        .contains("merkle path"));

    let mut o = good.clone();
    o.openings[0].path.push(HexBytes(vec![0; 32]));
    assert!(proof::check(&o, None, None).is_err());

    let mut o = good.clone();
    o.commitment.root[0] ^= 1;
    assert!(proof::check(&o, Some(&set.commitment), None).is_err());

    // Opening other chunks than the ones asked for.
    let other = set.open(&[0, 1, 2]).unwrap();
    assert!(proof::check(&other, Some(&set.commitment), Some(&ask)).is_err());
}

#[test]
fn cli_bench_open_check_round_trip() {
    let dir = common::scratch();
    let chunks = dir.path().join("chunks");
    let seed = "11".repeat(32);
    let out = Command::new(common::hal_bin())
        .args([
            "bench",
            "--mem",
            "--mem-mib",
            "8",
            "--mem-max-cv",
            "1000",
            "--json",
            "--seed",
            &seed,
            "--chunks",
        ])
        .arg(&chunks)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = report["memory"]["commitment"]["root"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(report["memory"]["commitment"]["seed"], seed.as_str());
    let open = Command::new(common::hal_bin())
        .arg("open")
        .arg("--chunks")
        .arg(chunks.join("memory.json"))
        .args(["--nonce", "abcd", "--k", "4"])
        .output()
        .unwrap();
    assert!(
        open.status.success(),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );
    let openings = dir.path().join("openings.json");
    std::fs::write(&openings, &open.stdout).unwrap();
    let check = |root: &str, nonce: &str| {
        Command::new(common::hal_bin())
            .arg("check")
            .arg("--openings")
            .arg(&openings)
            .args(["--root", root, "--nonce", nonce, "--k", "4"])
            .output()
            .unwrap()
    };
    let ok = check(&root, "abcd");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert_eq!(
        check(&root, "abce").status.code(),
        Some(1),
        "openings for another nonce must be rejected"
    );
    assert_eq!(check(&"00".repeat(32), "abcd").status.code(), Some(1));
    let mut v: serde_json::Value = serde_json::from_slice(&open.stdout).unwrap();
    let out0 = v["openings"][0]["output"].as_str().unwrap().to_string();
    let flipped = format!(
        "{}{}",
        if &out0[..1] == "0" { "1" } else { "0" },
        &out0[1..]
    );
    v["openings"][0]["output"] = serde_json::Value::String(flipped);
    std::fs::write(&openings, serde_json::to_vec(&v).unwrap()).unwrap();
    let bad = check(&root, "abcd");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("rejected"));
}
