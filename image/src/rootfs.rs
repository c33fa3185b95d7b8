//! The root filesystem of a slot: a directory tree assembled from the spec
//! (binaries, their shared libraries, service files, late modules), packed
//! into erofs (lz4hc, pinned timestamps and uuid), with the dm-verity hash
//! tree appended to the same file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{io, ImageError, Result};
use crate::kernel::Kernel;
use crate::modules::ModDb;
use crate::spec::{Source, Spec};
use crate::{libs, tools};

/// The verity facts of a packed root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityRoot {
    /// The file: erofs, padded to 4 KiB, then the hash tree.
    pub path: PathBuf,
    /// 4 KiB data blocks covered by verity (the hash tree starts right after).
    pub data_blocks: u64,
    /// Hex root hash.
    pub root_hash: String,
    /// Hex salt.
    pub salt: String,
    /// Total bytes (data + tree).
    pub size: u64,
}

/// Directories every root has (mount points and the usual hierarchy).
const SKELETON: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var",
    "efi",
    "root",
    "etc/fluxnode/services.d",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "sbin",
    "lib64",
    "lib/x86_64-linux-gnu",
];

/// The users of the image: root, one per service that does not need to be
/// root (init's service files name them), and nobody. No passwords, no
/// shells: nobody logs in to an appliance. (name, uid = gid, description,
/// home).
pub const USERS: &[(&str, u32, &str, &str)] = &[
    ("root", 0, "root", "/root"),
    ("netd", 100, "fluxnode network service", "/run/netd"),
    ("nobody", 65534, "nobody", "/nonexistent"),
];

/// /etc/passwd and /etc/group for [`USERS`], each user with a group of its
/// own name and number (nobody's group is Debian's `nogroup`).
pub fn passwd_and_group() -> (String, String) {
    let mut passwd = String::new();
    let mut group = String::new();
    for (name, id, gecos, home) in USERS {
        passwd.push_str(&format!(
            "{name}:x:{id}:{id}:{gecos}:{home}:/usr/sbin/nologin\n"
        ));
        let g = if *name == "nobody" { "nogroup" } else { name };
        group.push_str(&format!("{g}:x:{id}:\n"));
    }
    (passwd, group)
}

/// Builds the root tree under `tree` (which must not exist).
pub fn assemble(
    spec: &Spec,
    kernel: &Kernel,
    db: &ModDb,
    bin_dirs: &[PathBuf],
    tree: &Path,
    warn: &mut dyn FnMut(&str),
) -> Result<()> {
    for d in SKELETON {
        let p = tree.join(d);
        std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
    }
    let mut libs_needed = BTreeSet::new();
    for f in &spec.files {
        let src = match &f.src {
            Source::Bin(name) => find_bin(bin_dirs, name),
            Source::Host(p) | Source::Spec(p) => p.clone(),
        };
        if !src.is_file() {
            if f.optional {
                warn(&format!(
                    "optional file {} is missing; {} left out",
                    src.display(),
                    f.dst
                ));
                continue;
            }
            let hint = match &f.src {
                Source::Bin(n) => format!(
                    " (binary `{n}` named by the spec): build it with `RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target x86_64-unknown-linux-gnu`, or fix the spec"
                ),
                Source::Host(_) => ": install the package that provides it, or fix the spec".into(),
                Source::Spec(_) => ": the spec names a file that is not in the repository".into(),
            };
            return Err(ImageError::Missing {
                what: "file",
                path: src,
                hint,
            });
        }
        let dst = tree.join(f.dst.trim_start_matches('/'));
        copy_file(&src, &dst, f.mode)?;
        for l in libs::needed(&src)? {
            libs_needed.insert(l);
        }
    }
    for (path, target) in &spec.links {
        let p = tree.join(path.trim_start_matches('/'));
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        std::os::unix::fs::symlink(target, &p).map_err(io("linking", &p))?;
    }
    for l in &libs_needed {
        let dst = tree.join(l.to_string_lossy().trim_start_matches('/'));
        copy_file(l, &dst, 0o755)?;
    }
    // Late modules: after switch_root, from the root (see init's stage1::modules).
    let late = db.closure(&spec.late_modules)?;
    let mdir = tree.join("lib/modules").join(&kernel.release);
    for m in &late {
        if let Some(rel) = db.path_of(m) {
            let src = kernel.modules.join(rel);
            if spec.strip_module_signatures {
                let ko = std::fs::read(&src).map_err(io("reading", &src))?;
                write(&mdir.join(rel), crate::modules::strip_signature(&ko))?;
            } else {
                copy_file(&src, &mdir.join(rel), 0o644)?;
            }
        }
    }
    write(&mdir.join("modules.dep"), db.dep_lines(&late).as_bytes())?;
    write(
        &mdir.join("modules.alias"),
        db.alias_lines(&late).as_bytes(),
    )?;
    write(
        &tree.join("etc/fluxnode/modules.late"),
        (late.join("\n") + "\n").as_bytes(),
    )?;
    write(
        &tree.join("etc/os-release"),
        os_release(&spec.version, None).as_bytes(),
    )?;
    let (passwd, group) = passwd_and_group();
    write(&tree.join("etc/passwd"), passwd.as_bytes())?;
    write(&tree.join("etc/group"), group.as_bytes())?;
    write(&tree.join("etc/hostname"), b"fluxnode\n")?;
    write(
        &tree.join(crate::spec::IMAGE_JSON_PATH.trim_start_matches('/')),
        &image_json(spec),
    )?;
    if let Some(src) = &spec.tuf_root {
        let bytes = std::fs::read(src).map_err(io("reading the spec's tuf_root", src))?;
        crate::publish::trust::check_root(&bytes).map_err(|msg| ImageError::Spec {
            path: spec.path.clone(),
            msg: format!("tuf_root {}: {msg}", src.display()),
        })?;
        write(
            &tree.join(crate::spec::TUF_ROOT_PATH.trim_start_matches('/')),
            &bytes,
        )?;
    }
    Ok(())
}

/// The image's identity as the running system reads it
/// ([`crate::spec::IMAGE_JSON_PATH`]): `{"version", "compatible",
/// "security_version"}`, the values an update manifest is checked against.
pub fn image_json(spec: &Spec) -> Vec<u8> {
    let v = serde_json::json!({
        "version": spec.version,
        "compatible": spec.compatible,
        "security_version": spec.security_version,
    });
    let mut out = serde_json::to_vec_pretty(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The first `dir/name` that exists among `dirs` (else the first candidate, for the error).
pub fn find_bin(dirs: &[PathBuf], name: &str) -> PathBuf {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            dirs.first()
                .map(|d| d.join(name))
                .unwrap_or_else(|| PathBuf::from(name))
        })
}

/// The os-release text of this image (also the UKI's `.osrel`).
pub fn os_release(version: &str, slot: Option<&str>) -> String {
    let pretty = match slot {
        Some(s) => format!("fluxnode {version} (slot {s})"),
        None => format!("fluxnode {version}"),
    };
    format!(
        "NAME=\"fluxnode\"\nID=fluxnode\nIMAGE_ID=fluxnode\nIMAGE_VERSION={version}\nVERSION_ID={version}\nPRETTY_NAME=\"{pretty}\"\n"
    )
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io("creating", p))?;
    }
    std::fs::write(path, data).map_err(io("writing", path))?;
    set_mode(path, 0o644)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

/// Copies a file's content (following symlinks) and sets its mode.
pub fn copy_file(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p).map_err(io("creating", p))?;
    }
    std::fs::copy(src, dst).map_err(io("copying", src))?;
    set_mode(dst, mode)
}

/// Packs `tree` into erofs at `out`, pads it to 4 KiB and appends the verity tree.
pub fn pack(
    tree: &Path,
    out: &Path,
    epoch: u64,
    uuid: &str,
    salt: &str,
    max_bytes: u64,
) -> Result<VerityRoot> {
    // Directories get fixed modes too: mkfs.erofs copies them.
    fix_dir_modes(tree)?;
    tools::run(
        tools::cmd("mkfs.erofs")?
            .arg("-zlz4hc")
            .arg(format!("-T{epoch}"))
            .arg(format!("-U{uuid}"))
            .args(["--all-root", "-x-1", "--quiet"])
            .arg(out)
            .arg(tree),
    )?;
    let len = std::fs::metadata(out).map_err(io("reading", out))?.len();
    let padded = len.div_ceil(4096) * 4096;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(io("opening", out))?;
    f.set_len(padded).map_err(io("padding", out))?;
    drop(f);
    let data_blocks = padded / 4096;
    let text = tools::run(
        tools::cmd("veritysetup")?
            .args([
                "format",
                "--no-superblock",
                "--hash=sha256",
                "--data-block-size=4096",
                "--hash-block-size=4096",
            ])
            .arg(format!("--salt={salt}"))
            .arg(format!("--data-blocks={data_blocks}"))
            .arg(format!("--hash-offset={padded}"))
            .arg(out)
            .arg(out),
    )?;
    let root_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:").map(|h| h.trim().to_string()))
        .ok_or_else(|| ImageError::Format {
            path: out.into(),
            msg: format!("veritysetup printed no root hash: {text}"),
        })?;
    let size = std::fs::metadata(out).map_err(io("reading", out))?.len();
    if size > max_bytes {
        return Err(ImageError::TooBig {
            what: "the root filesystem (erofs + verity)".into(),
            need_mib: size as f64 / 1048576.0,
            have_mib: max_bytes / 1048576,
            key: "sizes.root_mib",
        });
    }
    Ok(VerityRoot {
        path: out.into(),
        data_blocks,
        root_hash,
        salt: salt.into(),
        size,
    })
}

fn fix_dir_modes(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for e in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        let e = e.map_err(io("listing", dir))?;
        let ft = e.file_type().map_err(io("stat", e.path()))?;
        if ft.is_dir() {
            fix_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn service_users_have_their_own_ids_and_no_login() {
        let (passwd, group) = passwd_and_group();
        assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
        assert!(passwd.contains("\nnetd:x:100:100:"), "{passwd}");
        assert!(group.contains("\nnetd:x:100:\n"), "{group}");
        assert!(group.contains("nogroup:x:65534:"), "{group}");
        assert!(passwd.lines().all(|l| l.ends_with(":/usr/sbin/nologin")));
        // One id per user: no service shares another's.
        let mut ids: Vec<u32> = USERS.iter().map(|u| u.1).collect();
        ids.dedup();
        assert_eq!(ids.len(), USERS.len());
    }

    #[test]
    fn image_json_names_version_compatible_and_security_version() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("spec");
        let mut spec = Spec::load(&dir.join("default.toml")).unwrap();
        spec.security_version = 7;
        let v: serde_json::Value = serde_json::from_slice(&image_json(&spec)).unwrap();
        assert_eq!(v["version"], serde_json::json!(spec.version));
        assert_eq!(
            v["compatible"],
            serde_json::json!("fluxnode-x86_64-uefi-ab1")
        );
        assert_eq!(v["security_version"], serde_json::json!(7));
        assert_eq!(v.as_object().map(|o| o.len()), Some(3));
    }
}
