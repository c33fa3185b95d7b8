//! `fluxnode app` as an operator runs it: a spec checked, an image pulled
//! from the real CNCF registry (Debian's docker-registry, an image pushed
//! by skopeo), and pulled again without a byte fetched twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use fluxnode_testkit::oci_registry::{push_busybox, OciRegistry};

fn fluxnode(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fluxnode"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_image_is_pulled_into_the_store_and_not_fetched_twice() {
    let Some(reg) = OciRegistry::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let pushed = push_busybox(
        &reg,
        "hello:1.0",
        &["/bin/busybox", "httpd", "-f"],
        work.path(),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let image = format!("{}/hello:1.0", reg.addr());
    let out = fluxnode(
        state.path(),
        &[
            "app",
            "pull",
            "--insecure-registry",
            &reg.addr(),
            &image,
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"], pushed.as_str());
    let layer = v["layers"][0]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    assert!(state.path().join("oci/blobs/sha256").join(&layer).is_file());
    let again = fluxnode(
        state.path(),
        &["app", "pull", "--insecure-registry", &reg.addr(), &image],
    );
    assert!(again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    let blobs = 1 + v["layers"].as_array().unwrap().len();
    assert_eq!(
        err.matches("already here").count(),
        blobs,
        "the config and every layer are present: {err}"
    );
    // Without --insecure-registry the node speaks HTTPS and says where it failed.
    let tls = fluxnode(state.path(), &["app", "pull", &image]);
    assert!(!tls.status.success());
    assert!(String::from_utf8_lossy(&tls.stderr)
        .contains(&format!("https://{}/v2/hello/manifests/1.0", reg.addr())));
}

#[test]
fn a_spec_is_checked_with_the_field_or_the_shortfall_named() {
    let state = tempfile::tempdir().unwrap();
    let spec = state.path().join("web.toml");
    let base = "name = \"web\"\nimage = \"hello:1.0\"\n[resources]\ncpu = 0.5\nmemory_mib = 64\ndisk_mib = 10\n";
    std::fs::write(&spec, base).unwrap();
    let ok = fluxnode(state.path(), &["app", "check", spec.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    std::fs::write(
        &spec,
        base.replace("memory_mib = 64", "memory_mib = 9999999"),
    )
    .unwrap();
    let out = fluxnode(
        state.path(),
        &["app", "check", spec.to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["reason"].as_str(), v["resource"].as_str()),
        (Some("short"), Some("memory"))
    );
    std::fs::write(&spec, base.replace("cpu = 0.5", "cpu = 0")).unwrap();
    let out = fluxnode(
        state.path(),
        &["app", "check", spec.to_str().unwrap(), "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["field"], "resources.cpu");
}
