//! The shared libraries a dynamic binary needs (what `ldd` resolves from its
//! DT_NEEDED entries, recursively), so the root carries exactly those.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{io, ImageError, Result};
use crate::tools;

/// True when `path` starts with the ELF magic.
pub fn is_elf(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).map_err(io("opening", path))?;
    let mut magic = [0u8; 4];
    Ok(f.read(&mut magic).map_err(io("reading", path))? == 4 && magic == *b"\x7fELF")
}

/// The libraries (and the dynamic loader) `binary` needs; empty for a static one.
pub fn needed(binary: &Path) -> Result<Vec<PathBuf>> {
    if !is_elf(binary)? {
        return Ok(Vec::new());
    }
    let mut c = tools::cmd("ldd")?;
    c.arg(binary);
    let out = c.output().map_err(io("running ldd on", binary))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_ldd(&text).map_err(|msg| ImageError::Format {
        path: binary.into(),
        msg,
    })
}

/// Parses `ldd` output into library paths.
pub fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(format!("needs a library the host lacks: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let t = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibtss2-esys.so.0 => /lib/x86_64-linux-gnu/libtss2-esys.so.0 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let l = parse_ldd(t).unwrap();
        assert_eq!(l.len(), 3);
        assert!(l.contains(&PathBuf::from("/lib64/ld-linux-x86-64.so.2")));
        assert!(parse_ldd("\tnot a dynamic executable\n")
            .unwrap()
            .is_empty());
        assert!(parse_ldd("libfoo.so => not found\n").is_err());
        for nasty in ["", "=>", " => ", "\0", "a => b => c"] {
            let _ = parse_ldd(nasty);
        }
    }

    #[test]
    fn host_binary_has_libc() {
        let Ok(ls) = crate::tools::find("mke2fs") else {
            fluxnode_testkit::skip("mke2fs not installed (Debian package e2fsprogs)");
            return;
        };
        let libs = needed(&ls).unwrap();
        assert!(
            libs.iter().any(|p| p.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }
}
