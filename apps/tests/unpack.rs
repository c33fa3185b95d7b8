//! Crafted layers against `unpack_layer`: every escape gives a clear
//! refusal and writes nothing outside; good layers give the exact tree.
//!
//! The hostile entries are written byte by byte (the `tar` crate's builder
//! refuses to make them), so these are the layers an attacker would push.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use fluxnode_apps::reference::Digest;
use fluxnode_apps::unpack::{unpack_layer, Compression, Options, Ownership, UnpackError};

/// One raw tar entry: a ustar header with the name and link written as
/// given, then the data padded to 512.
fn entry(kind: u8, name: &[u8], link: &[u8], data: &[u8], mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn file(name: &str, data: &str) -> Vec<u8> {
    entry(b'0', name.as_bytes(), b"", data.as_bytes(), 0o644)
}
fn dir(name: &str) -> Vec<u8> {
    entry(b'5', name.as_bytes(), b"", b"", 0o755)
}
fn symlink(name: &str, target: &str) -> Vec<u8> {
    entry(b'2', name.as_bytes(), target.as_bytes(), b"", 0o777)
}
fn hardlink(name: &str, target: &str) -> Vec<u8> {
    entry(b'1', name.as_bytes(), target.as_bytes(), b"", 0o644)
}

fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn unprivileged() -> Options {
    Options {
        ownership: Ownership::Ignore,
        ..Options::default()
    }
}

struct Case {
    _tmp: tempfile::TempDir,
    dest: std::path::PathBuf,
    outside: std::path::PathBuf,
}

/// A layer directory with a sibling "outside" directory that must stay
/// empty whatever the layer does.
fn case() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("layer");
    let outside = tmp.path().join("outside");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    Case {
        _tmp: tmp,
        dest,
        outside,
    }
}

impl Case {
    fn unpack(&self, layer: &[u8]) -> Result<fluxnode_apps::unpack::Report, UnpackError> {
        let r = unpack_layer(layer, &self.dest, &unprivileged());
        assert_eq!(
            fs::read_dir(&self.outside).unwrap().count(),
            0,
            "something was written outside the layer"
        );
        r
    }
}

/// The tree as sorted lines: `path kind mode detail`.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, p: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            let m = fs::symlink_metadata(&n).unwrap();
            let rel = n.strip_prefix(root).unwrap().display().to_string();
            let mode = m.permissions().mode() & 0o7777;
            let ft = m.file_type();
            if ft.is_symlink() {
                out.push(format!(
                    "{rel} link -> {}",
                    fs::read_link(&n).unwrap().display()
                ));
            } else if ft.is_dir() {
                out.push(format!("{rel} dir {mode:o}"));
                walk(root, &n, out);
            } else if ft.is_char_device() {
                out.push(format!("{rel} char {}", m.rdev()));
            } else {
                out.push(format!(
                    "{rel} file {mode:o} {:?} links={}",
                    fs::read_to_string(&n).unwrap(),
                    m.nlink()
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn dot_dot_traversal_is_refused() {
    for name in ["../evil", "a/../../evil", "a/b/../../../outside/evil", ".."] {
        let c = case();
        let err = c.unpack(&tar(&[file(name, "x")])).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Path { why, .. } if why.contains("'..'")),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("the layer was refused"), "{err}");
    }
}

#[test]
fn absolute_paths_are_refused() {
    let c = case();
    let target = format!("{}/evil", c.outside.display());
    let err = c.unpack(&tar(&[file(&target, "x")])).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Path { why, .. } if why.contains("absolute")),
        "{err}"
    );
}

#[test]
fn a_relative_symlink_that_climbs_out_is_refused() {
    let c = case();
    let err = c
        .unpack(&tar(&[dir("a"), symlink("a/up", "../../outside")]))
        .unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkEscape { .. }), "{err}");
    // Within the layer it is fine, and so is an absolute target (it
    // resolves inside the app's root, and is never followed here).
    let c = case();
    c.unpack(&tar(&[
        dir("a"),
        symlink("a/up", "../b"),
        symlink("sh", "/bin/busybox"),
    ]))
    .unwrap();
    assert_eq!(
        tree(&c.dest),
        vec!["a dir 755", "a/up link -> ../b", "sh link -> /bin/busybox"]
    );
}

#[test]
fn nothing_is_written_through_a_symlink() {
    let c = case();
    // The classic: a link to somewhere else, then a file "inside" it.
    let outside = c.outside.display().to_string();
    let err = c
        .unpack(&tar(&[symlink("lib", &outside), file("lib/evil", "x")]))
        .unwrap_err();
    match err {
        UnpackError::BeneathSymlink { entry, link } => {
            assert_eq!((entry.as_str(), link.as_str()), ("lib/evil", "lib"));
        }
        other => panic!("{other}"),
    }
    // A directory entry through a link is refused the same way.
    let c = case();
    let err = c
        .unpack(&tar(&[symlink("d", "/"), dir("d/etc")]))
        .unwrap_err();
    assert!(matches!(err, UnpackError::BeneathSymlink { .. }), "{err}");
}

#[test]
fn hard_links_outside_the_layer_are_refused() {
    let outside_file = {
        let c = case();
        fs::write(c.outside.join("secret"), "s").unwrap();
        let abs = format!("{}/secret", c.outside.display());
        let err =
            unpack_layer(&tar(&[hardlink("h", &abs)])[..], &c.dest, &unprivileged()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::HardLink { why, .. } if why.contains("absolute")),
            "{err}"
        );
        c
    };
    drop(outside_file);
    for target in ["../outside/secret", "a/../../x"] {
        let c = case();
        let err = c.unpack(&tar(&[hardlink("h", target)])).unwrap_err();
        assert!(
            matches!(&err, UnpackError::HardLink { why, .. } if why.contains("outside")),
            "{target}: {err}"
        );
    }
    // A target this layer has not written (a lower layer's file, or one
    // placed in the directory by someone else) is refused too.
    let c = case();
    fs::write(c.dest.join("planted"), "p").unwrap();
    let err = c.unpack(&tar(&[hardlink("h", "planted")])).unwrap_err();
    assert!(
        matches!(&err, UnpackError::HardLink { why, .. } if why.contains("not a regular file this layer wrote")),
        "{err}"
    );
    // One to an earlier file of the layer is the same inode.
    let c = case();
    c.unpack(&tar(&[file("bin/a", "data"), hardlink("bin/b", "bin/a")]))
        .unwrap();
    assert_eq!(
        fs::metadata(c.dest.join("bin/a")).unwrap().ino(),
        fs::metadata(c.dest.join("bin/b")).unwrap().ino()
    );
}

#[test]
fn device_nodes_are_refused() {
    for kind in [b'3', b'4'] {
        let c = case();
        let err = c
            .unpack(&tar(&[
                dir("dev"),
                entry(kind, b"dev/sda", b"", b"", 0o600),
            ]))
            .unwrap_err();
        assert!(matches!(err, UnpackError::Device { .. }), "{err}");
        assert!(err.to_string().contains("device node"), "{err}");
        assert!(!c.dest.join("dev/sda").exists());
    }
}

#[test]
fn a_later_entry_replaces_an_earlier_one() {
    let c = case();
    c.unpack(&tar(&[
        file("x", "old"),
        dir("x"),
        file("x/inner", "in"),
        file("y", "one"),
        file("y", "two"),
        entry(b'0', b"./z", b"", b"mode", 0o4755),
    ]))
    .unwrap();
    assert_eq!(
        tree(&c.dest),
        vec![
            "x dir 755",
            "x/inner file 644 \"in\" links=1",
            "y file 644 \"two\" links=1",
            "z file 4755 \"mode\" links=1",
        ]
    );
}

#[test]
fn gzip_zstd_and_plain_give_one_tree_and_one_diff_id() {
    let plain = tar(&[
        dir("etc"),
        file("etc/hostname", "app\n"),
        symlink("bin", "usr/bin"),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let mut trees = Vec::new();
    for (blob, want) in [
        (&plain, Compression::None),
        (&gz, Compression::Gzip),
        (&zst, Compression::Zstd),
    ] {
        let c = case();
        let r = c.unpack(blob).unwrap();
        assert_eq!(r.compression, want);
        assert_eq!(r.diff_id, Digest::of(&plain), "{want:?}");
        assert_eq!(r.entries, 3);
        trees.push(tree(&c.dest));
    }
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

#[test]
fn a_decompression_bomb_stops_at_the_limit() {
    let big = vec![0u8; 8 << 20];
    let plain = tar(&[entry(b'0', b"zeros", b"", &big, 0o644)]);
    let zst = zstd::encode_all(&plain[..], 19).unwrap();
    assert!(zst.len() < 4096, "the bomb is small: {}", zst.len());
    let c = case();
    let opts = Options {
        max_bytes: 1 << 20,
        ..unprivileged()
    };
    let err = unpack_layer(&zst[..], &c.dest, &opts).unwrap_err();
    assert!(
        matches!(err, UnpackError::Limit { what: "bytes", .. }),
        "{err}"
    );
    let opts = Options {
        max_entries: 2,
        ..unprivileged()
    };
    let many = tar(&[file("a", ""), file("b", ""), file("c", "")]);
    let err = unpack_layer(&many[..], &c.dest, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                what: "entries",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn garbage_is_not_a_layer() {
    let c = case();
    let mut junk = vec![0x1f, 0x8b];
    junk.extend_from_slice(&[0xAA; 600]);
    assert!(matches!(c.unpack(&junk), Err(UnpackError::Archive(_))));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn whiteouts_and_opaque_directories_become_overlayfs_ones() {
    if !is_root() {
        fluxnode_testkit::skip(
            "whiteouts are 0:0 character devices and trusted.* xattrs: needs root",
        );
        return;
    }
    let c = case();
    let opts = Options {
        ownership: Ownership::Keep,
        ..Options::default()
    };
    unpack_layer(
        &tar(&[
            dir("etc"),
            file("etc/.wh.motd", ""),
            dir("var/cache"),
            file("var/cache/.wh..wh..opq", ""),
            file("var/cache/new", "n"),
            file(".wh..wh.plnk", ""),
        ])[..],
        &c.dest,
        &opts,
    )
    .unwrap();
    assert_eq!(
        tree(&c.dest),
        vec![
            "etc dir 755",
            "etc/motd char 0",
            "var dir 755",
            "var/cache dir 755",
            "var/cache/new file 644 \"n\" links=1",
        ]
    );
    let mut v = [0u8; 4];
    let key = std::ffi::CString::new("trusted.overlay.opaque").unwrap();
    let p = std::ffi::CString::new(c.dest.join("var/cache").to_str().unwrap()).unwrap();
    // SAFETY: valid C strings and buffer.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), key.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    assert_eq!(n, 1, "opaque xattr: {}", std::io::Error::last_os_error());
    assert_eq!(v[0], b'y');
}

#[test]
fn owners_are_shifted_into_the_apps_range_and_bounded() {
    if !is_root() {
        fluxnode_testkit::skip("chown to other ids needs root");
        return;
    }
    let mut e = entry(b'0', b"owned", b"", b"x", 0o4755);
    {
        let mut h = tar::Header::from_byte_slice(&e[..512]).clone();
        h.set_uid(1000);
        h.set_gid(50);
        h.set_cksum();
        e[..512].copy_from_slice(h.as_bytes());
    }
    let c = case();
    let opts = Options {
        ownership: Ownership::Shift {
            base: 200_000,
            size: 65_536,
        },
        ..Options::default()
    };
    unpack_layer(&tar(&[e.clone()])[..], &c.dest, &opts).unwrap();
    let m = fs::metadata(c.dest.join("owned")).unwrap();
    assert_eq!((m.uid(), m.gid()), (201_000, 200_050));
    assert_eq!(m.mode() & 0o7777, 0o4755, "set-id bits survive the chown");
    let opts = Options {
        ownership: Ownership::Shift {
            base: 200_000,
            size: 1000,
        },
        ..Options::default()
    };
    let c = case();
    let err = unpack_layer(&tar(&[e])[..], &c.dest, &opts).unwrap_err();
    assert!(matches!(err, UnpackError::Owner { id: 1000, .. }), "{err}");
}

#[test]
fn a_whiteout_of_dot_dot_deletes_nothing() {
    // `.wh...` hides "..": before the fix it removed the directory that
    // holds the layer, every other unpacked layer with it.
    let c = case();
    fs::write(c.outside.join("keep"), "k").unwrap();
    for name in [".wh...", ".wh..", "a/.wh..."] {
        let err = unpack_layer(&tar(&[file(name, "")])[..], &c.dest, &unprivileged()).unwrap_err();
        assert!(
            matches!(&err, UnpackError::Path { why, .. } if why.contains("whiteout")),
            "{name}: {err}"
        );
        assert!(c.outside.join("keep").exists(), "{name} removed a sibling");
        assert!(c.dest.exists());
    }
}

#[test]
fn a_huge_extension_header_is_refused_before_it_is_read() {
    // A GNU long-name header claiming 1 GiB: the tar crate would read it
    // whole into memory. The stream is never materialised here either.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 30);
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    let stream = std::io::Read::chain(
        &h.as_bytes()[..],
        std::io::Read::take(std::io::repeat(b'a'), 1 << 30),
    );
    let c = case();
    let t0 = std::time::Instant::now();
    let err = unpack_layer(stream, &c.dest, &unprivileged()).unwrap_err();
    assert!(err.to_string().contains("extension header"), "{err}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "it read the header: {:?}",
        t0.elapsed()
    );
    // A long name of reasonable size still works (the guard follows the
    // structure: the entry after it is found).
    let long = format!("{}/file", "d".repeat(200));
    let mut b = tar::Builder::new(Vec::new());
    for name in [long.as_str(), "after"] {
        let mut hh = tar::Header::new_gnu();
        hh.set_size(2);
        hh.set_mode(0o644);
        hh.set_uid(0);
        hh.set_gid(0);
        hh.set_mtime(0);
        b.append_data(&mut hh, name, &b"ok"[..]).unwrap();
    }
    let c = case();
    c.unpack(&b.into_inner().unwrap()).unwrap();
    assert_eq!(fs::read_to_string(c.dest.join(&long)).unwrap(), "ok");
    assert_eq!(fs::read_to_string(c.dest.join("after")).unwrap(), "ok");
}

#[test]
fn a_pax_size_override_is_followed() {
    // A PAX header setting the next entry's size (as for files over 8 GiB)
    // must not throw the guard off the archive's structure.
    let mut pax = tar::Header::new_ustar();
    let rec = b"11 size=10\n";
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(rec.len() as u64);
    pax.set_cksum();
    let mut out = pax.as_bytes().to_vec();
    out.extend_from_slice(rec);
    out.resize(1024, 0);
    // The ustar header says 0 bytes; PAX says 10.
    let mut e = entry(b'0', b"sized", b"", b"", 0o644);
    e.truncate(512);
    e.extend_from_slice(b"0123456789");
    e.resize(1024, 0);
    out.extend_from_slice(&e);
    out.extend_from_slice(&file("next", "n"));
    let c = case();
    c.unpack(&tar(&[out])).unwrap();
    assert_eq!(
        fs::read_to_string(c.dest.join("sized")).unwrap(),
        "0123456789"
    );
    assert_eq!(fs::read_to_string(c.dest.join("next")).unwrap(), "n");
}

#[test]
fn symlinks_cannot_be_moved_or_chained_out_of_the_layer() {
    // A symlink deep enough to be inside, hard-linked to the top.
    let c = case();
    let err = c
        .unpack(&tar(&[
            dir("a/b/c"),
            symlink("a/b/c/l", "../../../etc"),
            hardlink("top", "a/b/c/l"),
        ]))
        .unwrap_err();
    assert!(matches!(err, UnpackError::HardLink { .. }), "{err}");
    // A chain: `up -> ..` and then a link through it and up again.
    let c = case();
    let err = c
        .unpack(&tar(&[
            dir("s"),
            symlink("s/up", ".."),
            symlink("s/x", "up/../outside"),
        ]))
        .unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkEscape { .. }), "{err}");
}
