//! Issue 12 end to end: the appliance boots under QEMU with swtpm as its
//! TPM (EK certificate from swtpm_setup's local CA), its agent reaches a
//! registry on the host at QEMU's user-net gateway (10.0.2.2), registers,
//! passes an attested session and gets a tier.
//!
//! Three boots of one disk and one TPM:
//! 1. the registry is down at boot: the agent backs off, and registers
//!    and is ranked once the registry comes up;
//! 2. a new boot attests again (and gives the figure "boot-ready to tier");
//! 3. the registry's policy no longer allows the image: the verdict is
//!    "image not allowed", and `fluxnode status` on the node says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use fluxnode_protocol::cert::TierCertificate;
use fluxnode_registry::config::RegistryDir;
use fluxnode_registry::demo::{self, Inputs};
use fluxnode_registry::server;
use fluxnode_registry::store::Policy;
use fluxnode_tests::fixture;
use fluxnode_tests::qemu::{self, Vm, VmConfig};

/// Under TCG a boot takes 30-90 s, more on a loaded host.
const BOOT: Duration = Duration::from_secs(600);
const SESSION: Duration = Duration::from_secs(600);

/// The registry's CLI (built here when the test runs alone; under
/// `cargo test --workspace` the registry's own tests built it already).
fn registry_cli() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "build",
                "--quiet",
                "-p",
                "fluxnode-registry",
                "--bin",
                "fluxnode-registry",
            ])
            .current_dir(fixture::workspace())
            .status()
            .unwrap();
        assert!(st.success(), "building fluxnode-registry");
        fixture::target_dir().join("debug/fluxnode-registry")
    })
    .clone()
}

/// `fluxnode-registry nodes --json`, as a verifier runs it.
fn nodes_json(dir: &RegistryDir) -> serde_json::Value {
    let out = Command::new(registry_cli())
        .arg("--dir")
        .arg(&dir.root)
        .args(["nodes", "--json", "--url", "https://127.0.0.1:8443"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn bench_ms_after(log: &str, from: usize) -> Option<u64> {
    let rest = log.get(from..)?;
    let i = rest.find("bench_ms=")?;
    rest[i + 9..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_booted_node_proves_its_tier_to_the_registry() {
    if let Some(why) = qemu::missing_prerequisite() {
        fluxnode_testkit::skip(why);
        return;
    }
    let built = fixture::plain_image().unwrap();
    let manifest = built.dir.join("manifest.json");
    let run = fixture::run_dir("attest");
    let disk = fixture::copy_disk(&built.image, &run).unwrap();
    let tpm = run.join("tpm");
    fluxnode_testkit::swtpm::manufacture(&tpm).unwrap();
    let dir = demo::prepare(
        &run.join("registry"),
        &Inputs {
            tls_from: &fixture::workspace().join("image/services/demo/registry-tls"),
            ek_root: &tpm.join("ca/swtpm-localca-rootca-cert.pem"),
            ek_intermediate: &tpm.join("ca/issuercert.pem"),
            manifest: &manifest,
            tiers: &fixture::workspace().join("image/services/demo/tiers.toml"),
        },
    )
    .unwrap();
    let slot_a = &built
        .manifest
        .slots
        .iter()
        .find(|(s, _)| s == "a")
        .unwrap()
        .1;
    let boot = |name: &str| {
        Vm::start(&VmConfig {
            tpm_state: Some(tpm.join("state")),
            ..VmConfig::new(&disk, &run.join(name))
        })
        .unwrap()
    };

    // Boot 1: the registry is down; the agent backs off, then registers.
    let mut vm = boot("boot1");
    let at = vm.wait_for("registry unreachable", BOOT).unwrap();
    let registry = server::start(&dir, Some(demo::LISTEN)).unwrap();
    let at = vm.wait_for_from("session accepted", at, SESSION).unwrap();
    vm.wait_for_from("tier:", at, SESSION).unwrap();
    let log = vm.log();
    assert!(
        log.contains("Demo"),
        "status shows the tier:\n{}",
        vm.tail(30)
    );
    let nodes = nodes_json(&dir);
    let node = &nodes[0];
    assert_eq!(node["tier"], "Demo", "{nodes:#}");
    assert_eq!(
        node["image"]["version"],
        built.manifest.version.as_str(),
        "{nodes:#}"
    );
    assert_eq!(node["image"]["slot"], "a", "{nodes:#}");
    assert_eq!(node["pcr11"], slot_a.pcr11_sha256.as_str(), "{nodes:#}");
    assert!(node["verdicts"][0]["accepted"].as_bool().unwrap());
    // The certificate checks offline with the registry's key.
    let cert: TierCertificate = serde_json::from_value(node["certificate"].clone()).unwrap();
    let key = fluxnode_registry::config::verifying_key(dir.path("signing.pub").to_str().unwrap())
        .unwrap();
    let body =
        fluxnode_protocol::cert::verify(&cert, &key, fluxnode_registry::service::now_ms()).unwrap();
    assert_eq!(body.tier.as_deref(), Some("Demo"));
    assert_eq!(body.pcr11, slot_a.pcr11_sha256);
    let cert_file = run.join("tier-certificate.json");
    std::fs::write(&cert_file, serde_json::to_vec(&cert).unwrap()).unwrap();
    let out = Command::new(registry_cli())
        .arg("verify-cert")
        .arg(&cert_file)
        .arg("--key")
        .arg(dir.path("signing.pub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(vm.power_off(Duration::from_secs(120)).unwrap().success());

    // Boot 2: the registry is up from the start; a new boot attests again.
    let mut vm = boot("boot2");
    let ready = vm
        .wait_for("fluxnode-init: all services ready", BOOT)
        .unwrap();
    let t_ready = Instant::now();
    let at = vm
        .wait_for_from("session accepted", ready, SESSION)
        .unwrap();
    let to_tier = t_ready.elapsed().as_secs_f64();
    let bench_s =
        bench_ms_after(&vm.log(), at - "session accepted".len()).unwrap_or(0) as f64 / 1000.0;
    eprintln!(
        "figure: boot-ready to tier assigned {to_tier:.1} s (host wall time, TCG), of which benchmarks {bench_s:.1} s: {:.1} s without them",
        to_tier - bench_s
    );
    let nodes = nodes_json(&dir);
    assert_eq!(
        nodes.as_array().unwrap().len(),
        1,
        "one TPM is one node: {nodes:#}"
    );
    assert_eq!(
        nodes[0]["verdicts"].as_array().unwrap().len(),
        2,
        "{nodes:#}"
    );
    assert!(vm.power_off(Duration::from_secs(120)).unwrap().success());
    registry.stop().unwrap();

    // Boot 3: a policy that does not allow the image.
    demo::set_policy(&dir, &Policy::default()).unwrap();
    let registry = server::start(&dir, Some(demo::LISTEN)).unwrap();
    let mut vm = boot("boot3");
    let at = vm.wait_for("session refused", BOOT + SESSION).unwrap();
    let log = vm.log();
    let line = log[..at].rsplit('\n').next().unwrap_or("").to_string()
        + log[at..].split('\n').next().unwrap_or("");
    assert!(
        line.contains("image_not_allowed"),
        "the agent logs the reason: {line}"
    );
    vm.wait_for_from("REFUSED", at, SESSION).unwrap();
    let log = vm.log();
    let status = &log[log.rfind("last session:").unwrap()..];
    assert!(
        status.contains("image_not_allowed") && status.contains("image not allowed"),
        "fluxnode status on the node:\n{status}"
    );
    let nodes = nodes_json(&dir);
    assert_eq!(
        nodes[0]["verdicts"][0]["rejection"]["code"], "image_not_allowed",
        "{nodes:#}"
    );
    assert!(vm.power_off(Duration::from_secs(120)).unwrap().success());
    registry.stop().unwrap();
}
