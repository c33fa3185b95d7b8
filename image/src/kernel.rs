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
            match find_deb(&dl, &versioned)? {
                Some(d) => d,
                None => {
                    tools::run(
                        tools::cmd("apt-get")?
                            .current_dir(&dl)
                            .args(["download", "-q", &versioned]),
                    )
                    .map_err(|e| kerr(format!("download failed: {e}")))?;
                    find_deb(&dl, &versioned)?
                        .ok_or_else(|| kerr("apt-get download left no .deb".into()))?
                }
            }
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

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}
