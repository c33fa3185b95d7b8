//! Host tools the build runs, each mapped to the Debian package that ships it,
//! so a missing one fails with the package to install rather than "not found".

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{ImageError, Result};

/// (tool, Debian package) for every program the build may run.
pub const TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    ("depmod", "kmod"),
    ("mkfs.erofs", "erofs-utils"),
    ("veritysetup", "cryptsetup-bin"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("sfdisk", "fdisk"),
    ("objcopy", "binutils"),
    ("ldd", "libc-bin"),
    ("gzip", "gzip"),
];

/// The Debian package that provides `tool` (or "?" when unknown).
pub fn package_of(tool: &str) -> &'static str {
    TOOLS
        .iter()
        .find(|(t, _)| *t == tool)
        .map(|(_, p)| *p)
        .unwrap_or("?")
}

/// Finds `tool` on PATH (plus the sbin directories root's PATH may lack).
pub fn find(tool: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.iter()
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::MissingTool {
            tool: tool.to_string(),
            package: package_of(tool).to_string(),
        })
}

/// Checks every tool the build needs up front, so a missing one fails before any work.
pub fn check_all() -> Result<()> {
    for (tool, _) in TOOLS {
        find(tool)?;
    }
    Ok(())
}

/// A command for `tool`, resolved on PATH, with a pinned locale and time zone.
pub fn cmd(tool: &str) -> Result<Command> {
    let mut c = Command::new(find(tool)?);
    c.env("LC_ALL", "C").env("TZ", "UTC");
    Ok(c)
}

/// Runs `c`, returning its stdout; a failure carries the command line and stderr tail.
pub fn run(c: &mut Command) -> Result<String> {
    run_with_input(c, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_with_input(c: &mut Command, input: Option<&[u8]>) -> Result<String> {
    use std::io::Write;
    let shown = format!("{c:?}");
    let start_err = |e: std::io::Error| ImageError::ToolFailed {
        cmd: shown.clone(),
        status: "could not start".into(),
        stderr: e.to_string(),
    };
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(start_err)?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(data).map_err(|e| ImageError::ToolFailed {
            cmd: shown.clone(),
            status: "stdin".into(),
            stderr: e.to_string(),
        })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ImageError::ToolFailed {
            cmd: shown.clone(),
            status: "wait".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .chars()
            .rev()
            .take(600)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ImageError::ToolFailed {
            cmd: shown,
            status: out.status.to_string(),
            stderr: tail.trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The system-wide file a Debian package installs, or an error naming the package.
pub fn host_file(path: &Path, package: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ImageError::Missing {
            what: "host file",
            path: path.to_path_buf(),
            hint: format!(": install the Debian package `{package}`"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        assert_eq!(package_of("mkfs.erofs"), "erofs-utils");
        assert_eq!(package_of("veritysetup"), "cryptsetup-bin");
        let e = find("fluxnode-no-such-tool").map(|_| ()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("missing tool `fluxnode-no-such-tool`"),
            "{e}"
        );
        // Every tool the build runs has a package to name.
        assert!(TOOLS.iter().all(|(_, p)| !p.is_empty() && *p != "?"));
    }
}
