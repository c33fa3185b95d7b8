//! The service files the image ships, read by init's own parser against
//! the image's own /etc/passwd: a file init refuses is a service that never
//! starts on the appliance (a privilege key once landed under `[backoff]`
//! in netd.toml, and only a QEMU boot showed netd missing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn services_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/services")
}

/// Every service file of the image, shipped and test-only.
fn service_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [services_dir(), services_dir().join("test")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml")
                && p.file_name() != Some("init.toml".as_ref())
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_shipped_service_file_parses_with_the_image_users() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let (passwd, group) = fluxnode_image::rootfs::passwd_and_group();
    std::fs::write(root.path().join("etc/passwd"), passwd).unwrap();
    std::fs::write(root.path().join("etc/group"), group).unwrap();
    // The files the test images install (apps-test.toml is test.toml and
    // more), as placeholders with their modes:
    // init checks that each service's program exists and is executable.
    let spec = fluxnode_image::spec::Spec::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/spec/apps-test.toml"),
    )
    .unwrap();
    for f in &spec.files {
        use std::os::unix::fs::PermissionsExt as _;
        let p = root.path().join(f.dst.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let files = service_files();
    assert!(files.len() >= 3, "service files: {files:?}");
    for f in &files {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let (specs, errors) = fluxnode_init::config::load_dir(dir.path(), root.path());
    assert!(
        errors.is_empty(),
        "init refuses shipped service files: {}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(specs.len(), files.len(), "every file gives a service");
}

#[test]
fn the_shipped_init_settings_parse() {
    fluxnode_init::config::InitConfig::load(&services_dir().join("init.toml")).unwrap();
}
