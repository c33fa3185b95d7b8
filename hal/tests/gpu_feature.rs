//! The `gpu-compute` feature (on in the appliance build) must build without
//! CUDA installed, and its `bench --gpu` must say cleanly that there is no
//! CUDA driver on a machine without one. Built into its own target
//! directory, so the default binary the other tests run is left alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn gpu_compute_feature_builds_and_reports_no_cuda_driver() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/hal-gpu-compute");
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "fluxnode-hal",
            "--features",
            "gpu-compute",
            "--bin",
            "fluxnode-hal",
            "--target-dir",
        ])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building with gpu-compute failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        fluxnode_testkit::skip(
            "this machine has an NVIDIA driver; the no-driver message cannot be shown here",
        );
        return;
    }
    let run = Command::new(target.join("debug/fluxnode-hal"))
        .args(["bench", "--gpu"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("gpu: no CUDA driver (libcuda.so could not be loaded)"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
