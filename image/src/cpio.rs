//! A deterministic cpio "newc" writer for the initramfs: entries sorted by
//! path, inode numbers assigned in order, owner root, one pinned mtime. No
//! host state leaks in, so the same inputs give the same bytes.

use std::collections::BTreeMap;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A character device (major, minor).
    Char(u32, u32),
    /// A symbolic link and its target.
    Symlink(String),
}

/// An archive under construction.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, (Node, u32)>,
}

impl Archive {
    /// Adds `path` (relative, no leading '/') with its parent directories.
    pub fn add(&mut self, path: &str, node: Node, perm: u32) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for comp in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p.to_vec())
            .unwrap_or_default()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries
                .entry(parent.clone())
                .or_insert((Node::Dir, 0o755));
        }
        self.entries.insert(path, (node, perm));
    }

    /// The archive's bytes, every entry stamped with `mtime`.
    pub fn write(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, (node, perm))) in (1u32..).zip(self.entries.iter()) {
            let (kind, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match node {
                Node::Dir => (0o040000, &[], 2, (0, 0)),
                Node::File(d) => (0o100000, d, 1, (0, 0)),
                Node::Char(a, b) => (0o020000, &[], 1, (*a, *b)),
                Node::Symlink(t) => (0o120000, t.as_bytes(), 1, (0, 0)),
            };
            header(
                &mut out,
                ino,
                kind | (perm & 0o7777),
                nlink,
                mtime,
                data.len() as u32,
                rdev,
                path,
            );
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!");
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        mtime,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn layout_matches_newc_and_is_sorted() {
        let mut a = Archive::default();
        a.add("/init", Node::File(b"hi".to_vec()), 0o755);
        a.add("dev/console", Node::Char(5, 1), 0o600);
        let out = a.write(7);
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let (d, c, i) = (
            text.find("dev\0").unwrap(),
            text.find("dev/console\0").unwrap(),
            text.find("init\0").unwrap(),
        );
        assert!(d < c && c < i, "sorted: dev, dev/console, init");
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!"));
        // same input, same bytes
        assert_eq!(out, a.write(7));
    }

    #[test]
    fn cpio_tool_reads_it() {
        let Ok(cpio) = crate::tools::find("cpio") else {
            fluxnode_testkit::skip("cpio is not installed (Debian package cpio)");
            return;
        };
        let mut a = Archive::default();
        a.add(
            "etc/initrd-release",
            Node::File(b"ID=fluxnode\n".to_vec()),
            0o644,
        );
        a.add("bin/x", Node::Symlink("../init".into()), 0o777);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.cpio");
        std::fs::write(&f, a.write(0)).unwrap();
        let out = std::process::Command::new(cpio)
            .args(["-t", "-F"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(out.status.success());
        let list = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            list.lines().collect::<Vec<_>>(),
            vec!["bin", "bin/x", "etc", "etc/initrd-release"]
        );
    }
}
