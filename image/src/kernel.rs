//! The kernel: Debian's `linux-image-*` package, downloaded (not installed)
//! into a cache, unpacked, and given a modules.dep by `depmod -b`, so the
//! build never touches the host's own /boot or /lib/modules.

use std::path::{Path, PathBuf};

use crate::error::{io, ImageError, Result};
use crate::tools;

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The versioned package (`linux-image-6.1.0-56-amd64`).
    pub package: String,
    /// The package version (`6.1.192-2`).
    pub package_version: String,
    /// The kernel release (`6.1.0-56-amd64`), `uname -r` on the device.
    pub release: String,
    /// The compressed kernel.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` with modules.dep.
    pub modules: PathBuf,
}

/// Resolves a meta-package (`linux-image-amd64`) to the versioned one it depends on.
pub fn resolve_package(package: &str) -> Result<String> {
    let kerr = |msg: String| ImageError::Kernel {
        package: package.into(),
        msg,
    };
    let depends = || tools::run(tools::cmd("apt-cache")?.args(["depends", package]));
    let out = match depends() {
        Ok(o) => o,
        Err(e) if have_package_lists() => {
            return Err(kerr(format!(
                "apt-cache does not know it ({e}); check the spec's kernel.package"
            )))
        }
        Err(_) => {
            // A fresh machine may have no package lists yet: fetch them once.
            let _ = tools::run(tools::cmd("apt-get")?.args(["update", "-qq"]));
            depends().map_err(|e| {
                kerr(format!("apt-cache does not know it ({e}); check the spec's kernel.package and that apt can reach the archive"))
            })?
        }
    };
    for line in out.lines() {
        if let Some(dep) = line.trim().strip_prefix("Depends: ") {
            if dep.starts_with("linux-image-") {
                return Ok(dep.trim().to_string());
            }
        }
    }
    // A versioned package has no linux-image dependency: it is the one.
    if out.lines().next().map(str::trim) == Some(package) && package.starts_with("linux-image-") {
        return Ok(package.to_string());
    }
    Err(kerr("no linux-image dependency found".into()))
}

fn have_package_lists() -> bool {
    std::fs::read_dir("/var/lib/apt/lists")
        .map(|r| {
            r.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
        .unwrap_or(false)
}

/// Downloads (once) and unpacks (once) the kernel package into `cache`.
pub fn fetch(package: &str, cache: &Path, deb: Option<&Path>) -> Result<Kernel> {
    let kerr = |msg: String| ImageError::Kernel {
        package: package.into(),
        msg,
    };
    let dl = cache.join("debs");
    std::fs::create_dir_all(&dl).map_err(io("creating", &dl))?;
    let deb = match deb {
        Some(d) => d.to_path_buf(),
        None => {
            let versioned = resolve_package(package)?;
            download_verified(&versioned, &dl)?
        }
    };
    let field = |f: &str| -> Result<String> {
        Ok(
            tools::run(tools::cmd("dpkg-deb")?.args(["-f"]).arg(&deb).arg(f))?
                .trim()
                .to_string(),
        )
    };
    let name = field("Package")?;
    let version = field("Version")?;
    let release = name
        .strip_prefix("linux-image-")
        .unwrap_or(&name)
        .trim_end_matches("-unsigned")
        .to_string();
    let tree = cache.join(format!("{name}_{version}"));
    let done = tree.join(".unpacked");
    if !done.exists() {
        if tree.exists() {
            std::fs::remove_dir_all(&tree).map_err(io("removing", &tree))?;
        }
        tools::run(tools::cmd("dpkg-deb")?.arg("-x").arg(&deb).arg(&tree))?;
        tools::run(tools::cmd("depmod")?.arg("-b").arg(&tree).arg(&release))?;
        std::fs::write(&done, b"").map_err(io("writing", &done))?;
    }
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    let modules = tree.join("lib/modules").join(&release);
    if !vmlinuz.is_file() || !modules.join("modules.dep").is_file() {
        return Err(kerr(format!(
            "{} lacks boot/vmlinuz-{release} or a modules.dep",
            tree.display()
        )));
    }
    Ok(Kernel {
        package: name,
        package_version: version,
        release,
        vmlinuz,
        modules,
    })
}

/// What apt's metadata says about the candidate version of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AptDeb {
    package: String,
    version: String,
    architecture: String,
    /// The lowercase hex SHA256 of the .deb.
    sha256: String,
}

impl AptDeb {
    /// The file name `apt-get download` stores the package under:
    /// `package_version_arch.deb`, with `_`, `:` (and `.` in the
    /// architecture), `%` and non-printable bytes written as `%xx`.
    fn file_name(&self) -> String {
        fn quote(s: &str, bad: &[u8]) -> String {
            let mut out = String::with_capacity(s.len());
            for &b in s.as_bytes() {
                if bad.contains(&b) || b == b'%' || b <= 0x20 || b >= 0x7f {
                    out.push_str(&format!("%{b:02x}"));
                } else {
                    out.push(b as char);
                }
            }
            out
        }
        format!(
            "{}_{}_{}.deb",
            quote(&self.package, b"_:"),
            quote(&self.version, b"_:"),
            quote(&self.architecture, b"_:.")
        )
    }
}

/// Parses `apt-cache show --no-all-versions PKG`: the first record for
/// `package` (continuation lines, which start with a space, are skipped).
fn parse_apt_show(text: &str, package: &str) -> std::result::Result<AptDeb, String> {
    for record in text.split("\n\n") {
        let field = |key: &str| {
            record.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (!l.starts_with([' ', '\t']) && k == key).then(|| v.trim().to_string())
            })
        };
        if field("Package").as_deref() != Some(package) {
            continue;
        }
        let need = |key: &str| field(key).ok_or_else(|| format!("apt's record has no {key} field"));
        let sha256 = need("SHA256")?.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("apt's SHA256 field is not a SHA256: {sha256:?}"));
        }
        return Ok(AptDeb {
            package: package.to_string(),
            version: need("Version")?,
            architecture: need("Architecture")?,
            sha256,
        });
    }
    Err("apt-cache show printed no record for it".into())
}

/// The candidate version of `package` (the one `apt-get download` fetches)
/// and its SHA256, from apt's verified package lists.
fn apt_candidate(package: &str) -> Result<AptDeb> {
    let out = tools::run(tools::cmd("apt-cache")?.args(["show", "--no-all-versions", package]))?;
    parse_apt_show(&out, package).map_err(|msg| ImageError::Kernel {
        package: package.into(),
        msg,
    })
}

/// The lowercase hex SHA256 of a file.
fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io("opening", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether a hex digest matches the expected one (case does not matter).
fn hash_matches(actual: &str, expected: &str) -> bool {
    actual.eq_ignore_ascii_case(expected)
}

/// The candidate `.deb` of `package` in `dl`: a cached copy when its SHA256
/// is the one apt's metadata gives, else a fresh `apt-get download`, checked
/// the same way. (`apt-get download` itself only compares a cached file's
/// size.)
fn download_verified(package: &str, dl: &Path) -> Result<PathBuf> {
    let kerr = |msg: String| ImageError::Kernel {
        package: package.into(),
        msg,
    };
    let want = apt_candidate(package)?;
    let deb = dl.join(want.file_name());
    if deb.exists() {
        let have = sha256_file(&deb)?;
        if hash_matches(&have, &want.sha256) {
            return Ok(deb);
        }
        eprintln!(
            "fluxnode-image: warning: cached {} has SHA256 {have}, apt expects {}: deleting it and downloading again",
            deb.display(),
            want.sha256
        );
        std::fs::remove_file(&deb).map_err(io("removing", &deb))?;
    }
    tools::run(
        tools::cmd("apt-get")?
            .current_dir(dl)
            .args(["download", "-q"])
            .arg(format!("{package}={}", want.version)),
    )
    .map_err(|e| kerr(format!("download failed: {e}")))?;
    if !deb.is_file() {
        return Err(kerr(format!("apt-get download left no {}", deb.display())));
    }
    let have = sha256_file(&deb)?;
    if !hash_matches(&have, &want.sha256) {
        return Err(kerr(format!(
            "downloaded {} has SHA256 {have}, but apt's metadata says {}; it is left there for inspection",
            deb.display(),
            want.sha256
        )));
    }
    Ok(deb)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// `apt-cache show --no-all-versions linux-image-6.1.0-57-amd64`, trimmed.
    const SHOW: &str = "\
Package: linux-image-6.1.0-57-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Installed-Size: 408632
Maintainer: Debian Kernel Team <kernel@example.org>
Architecture: amd64
Provides: linux-image, wireguard-modules (= 1.0.0)
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux 6.1 for 64-bit PCs (signed)
 The Linux kernel 6.1 and modules for use on PCs with AMD64, Intel 64 or
 SHA256: 0000000000000000000000000000000000000000000000000000000000000000
Description-md5: 2d1d7f4e3b6b2a1c1f0e9d8c7b6a5f4e
Section: kernel
Priority: optional
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb
Size: 70591024
MD5sum: 0123456789abcdef0123456789abcdef
SHA256: 14D219D01E1283261817D961DBB3895CB5B4288D0DE10E0BA0632A0D993E15BF

";

    #[test]
    fn parses_apt_cache_show() {
        let d = parse_apt_show(SHOW, "linux-image-6.1.0-57-amd64").unwrap();
        assert_eq!(
            d,
            AptDeb {
                package: "linux-image-6.1.0-57-amd64".into(),
                version: "6.1.192-3".into(),
                architecture: "amd64".into(),
                sha256: "14d219d01e1283261817d961dbb3895cb5b4288d0de10e0ba0632a0d993e15bf".into(),
            }
        );
        assert_eq!(
            d.file_name(),
            "linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb"
        );
    }

    #[test]
    fn apt_show_without_the_package_or_hash_is_an_error() {
        assert!(parse_apt_show(SHOW, "linux-image-other").is_err());
        assert!(parse_apt_show("", "linux-image-6.1.0-57-amd64").is_err());
        let no_hash: String = SHOW
            .lines()
            .filter(|l| !l.starts_with("SHA256:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = parse_apt_show(&no_hash, "linux-image-6.1.0-57-amd64").unwrap_err();
        assert!(e.contains("SHA256"), "{e}");
        let short = SHOW.replace("SHA256: 14D2", "SHA256: zz");
        assert!(parse_apt_show(&short, "linux-image-6.1.0-57-amd64").is_err());
    }

    #[test]
    fn picks_the_record_of_the_package_asked_for() {
        let two = format!(
            "Package: linux-image-other\nVersion: 1\nArchitecture: amd64\nSHA256: {}\n\n{SHOW}",
            "a".repeat(64)
        );
        let d = parse_apt_show(&two, "linux-image-6.1.0-57-amd64").unwrap();
        assert_eq!(d.version, "6.1.192-3");
    }

    #[test]
    fn file_name_quotes_like_apt() {
        let d = AptDeb {
            package: "linux-image-x".into(),
            version: "1:6.1_2".into(),
            architecture: "amd64".into(),
            sha256: String::new(),
        };
        assert_eq!(d.file_name(), "linux-image-x_1%3a6.1%5f2_amd64.deb");
    }

    #[test]
    fn hashes_and_compares() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.deb");
        std::fs::write(&f, b"abc").unwrap();
        let h = sha256_file(&f).unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hash_matches(&h, &h.to_ascii_uppercase()));
        assert!(!hash_matches(&h, &"0".repeat(64)));
        assert!(!hash_matches(&h, ""));
    }
}
