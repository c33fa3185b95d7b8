//! Unpacking one OCI layer into its own directory, refusing anything that
//! could write outside it.
//!
//! Layers are unpacked once each, into `layers/HEX` of the store, and an
//! app's root is an overlay of them with its own upper directory. So OCI
//! whiteouts become overlayfs whiteouts here:
//! - `DIR/.wh.NAME` becomes a character device 0:0 named `DIR/NAME`;
//! - `DIR/.wh..wh..opq` sets `trusted.overlay.opaque=y` on `DIR`;
//! - other `.wh..wh.*` names (aufs metadata) are skipped.
//!
//! What is refused, with the entry's name:
//! - absolute paths and any `..` component;
//! - an entry under a symlink (the classic `lib -> /etc` then
//!   `lib/passwd`): every parent directory is opened with `O_NOFOLLOW`, one
//!   component at a time, so nothing is ever written through a link;
//! - a relative symlink whose target climbs out of the layer, or has a
//!   `..` after a name (which could climb through another symlink). Absolute
//!   targets (`/bin/sh -> /bin/busybox`) are kept: inside the app they
//!   resolve within its root, and they are never followed here;
//! - a hard link to an absolute path, through `..`, to a symlink, or to
//!   anything this layer has not itself written;
//! - a whiteout of `.` or `..` (`.wh..`, `.wh...`);
//! - character and block devices (whiteouts aside), and entry types with
//!   no meaning in a root filesystem;
//! - more bytes or entries than the limits allow (a decompression bomb).
//!
//! The compression is read from the first bytes (gzip, zstd or none), not
//! trusted from the media type, and the uncompressed stream is hashed: the
//! caller compares it with the config's `diff_id`.
//!
//! Host code that reads an unpacked tree (an image's /etc/passwd, say) must
//! never follow its symlinks: absolute ones point at the host's root when
//! seen from the host. Read such files with `openat2(RESOLVE_IN_ROOT)`.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::reference::Digest;

/// Why a layer was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry's path is absolute or holds `..`.
    #[error("entry {entry:?}: {why}; the layer was refused")]
    Path {
        /// The entry's name as in the archive.
        entry: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The entry would be written beneath a symlink.
    #[error("entry {entry:?} lies beneath the symlink {link:?}; the layer was refused")]
    BeneathSymlink {
        /// The entry.
        entry: String,
        /// The symlink on its way.
        link: String,
    },
    /// A symlink's relative target climbs out of the layer.
    #[error("symlink {entry:?} -> {target:?} leads outside the layer; the layer was refused")]
    SymlinkEscape {
        /// The symlink.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A hard link's target is outside the layer or not written by it.
    #[error("hard link {entry:?} -> {target:?}: {why}; the layer was refused")]
    HardLink {
        /// The link.
        entry: String,
        /// Its target.
        target: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A device node.
    #[error("entry {entry:?} is a device node; apps get no devices from their image, the layer was refused")]
    Device {
        /// The entry.
        entry: String,
    },
    /// An entry type that has no place in a root filesystem.
    #[error("entry {entry:?} has type {kind:?}, which is not unpacked; the layer was refused")]
    Unsupported {
        /// The entry.
        entry: String,
        /// Its tar type byte.
        kind: char,
    },
    /// An owner outside the id range apps are given.
    #[error("entry {entry:?} is owned by id {id}; ids 0 to {} are mapped for apps", max - 1)]
    Owner {
        /// The entry.
        entry: String,
        /// The id.
        id: u64,
        /// The size of the mapped range.
        max: u32,
    },
    /// A limit was passed.
    #[error("the layer unpacks to more than {limit} {what}; it was refused")]
    Limit {
        /// Bytes or entries.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The archive cannot be read.
    #[error("the layer is not a readable tar stream: {0}")]
    Archive(io::Error),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
}

/// How entries' owners are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// As in the archive (the node maps ids when it mounts).
    Keep,
    /// Shifted into the id range `base .. base + size` apps run as; an id
    /// at or above `size` is refused.
    Shift {
        /// The first host id.
        base: u32,
        /// How many ids.
        size: u32,
    },
    /// Left to whoever unpacks (tests without root).
    Ignore,
}

/// Limits and ownership for one unpack.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The most bytes of file content written.
    pub max_bytes: u64,
    /// The most entries read.
    pub max_entries: u64,
    /// Owners.
    pub ownership: Ownership,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
            ownership: Ownership::Keep,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Entries read.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// The SHA-256 of the uncompressed tar stream (the layer's diff_id).
    pub diff_id: Digest,
    /// How the blob was compressed.
    pub compression: Compression,
}

/// A layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Hashes what passes through (the uncompressed stream).
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The largest tar extension header (GNU long name or link, PAX) read.
pub const MAX_EXT_HEADER: u64 = 64 * 1024;

/// Sits between the stream and the tar crate, which reads a GNU long-name,
/// long-link or PAX header whole into memory before we see its entry: a
/// header claiming gigabytes (a few MB gzipped) would be read whole. This
/// reader follows the 512-byte header structure itself (honouring a PAX
/// `size` override, as the tar crate does) and refuses such a header
/// first.
struct HeaderGuard<R> {
    inner: R,
    header: [u8; 512],
    have: usize,
    /// Bytes left in the current entry's body (padded to 512).
    body_left: u64,
    /// The body of a PAX header being passed through, for its `size`.
    pax: Option<Vec<u8>>,
    /// A `size` a PAX header set for the next entry.
    next_size: Option<u64>,
}

impl<R> HeaderGuard<R> {
    fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            header: [0; 512],
            have: 0,
            body_left: 0,
            pax: None,
            next_size: None,
        }
    }

    fn bad(why: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// A complete header: where its body ends.
    fn on_header(&mut self) -> io::Result<()> {
        let h = &self.header;
        let kind = h[156];
        let field = &h[124..136];
        let size = if field[0] & 0x80 != 0 {
            field[1..]
                .iter()
                .try_fold(0u64, |v, b| v.checked_mul(256)?.checked_add(u64::from(*b)))
        } else {
            let t: Vec<u8> = field
                .iter()
                .copied()
                .filter(|b| *b != 0 && *b != b' ')
                .collect();
            if t.is_empty() {
                Some(0)
            } else {
                std::str::from_utf8(&t)
                    .ok()
                    .and_then(|t| u64::from_str_radix(t, 8).ok())
            }
        };
        // An unreadable size: let the tar crate say what is wrong.
        let Some(size) = size else { return Ok(()) };
        let extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if extension && size > MAX_EXT_HEADER {
            return Err(Self::bad(format!(
                "a tar extension header ('{}') of {size} bytes; at most {MAX_EXT_HEADER} are read",
                kind as char
            )));
        }
        let size = if extension {
            size
        } else {
            self.next_size.take().unwrap_or(size)
        };
        self.pax = (kind == b'x').then(Vec::new);
        self.body_left = size
            .checked_add(511)
            .map(|v| v / 512 * 512)
            .ok_or_else(|| Self::bad("a tar entry size past 2^64".into()))?;
        self.finish_body();
        Ok(())
    }

    /// A body ended: a PAX header's `size` applies to the next entry.
    fn finish_body(&mut self) {
        if self.body_left != 0 {
            return;
        }
        if let Some(pax) = self.pax.take() {
            for rec in pax.split(|b| *b == b'\n') {
                let Some(sp) = rec.iter().position(|b| *b == b' ') else {
                    continue;
                };
                if let Some(v) = rec[sp + 1..].strip_prefix(b"size=") {
                    self.next_size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
                }
            }
        }
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.body_left > 0 {
            let want = buf
                .len()
                .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut buf[..want])?;
            if let Some(pax) = &mut self.pax {
                pax.extend_from_slice(&buf[..n]);
            }
            self.body_left -= n as u64;
            self.finish_body();
            return Ok(n);
        }
        let want = buf.len().min(512 - self.have);
        let n = self.inner.read(&mut buf[..want])?;
        self.header[self.have..self.have + n].copy_from_slice(&buf[..n]);
        self.have += n;
        if self.have == 512 {
            self.have = 0;
            self.on_header()?;
        }
        Ok(n)
    }
}

/// Unpacks a layer blob into `dest`, an empty directory that must exist.
pub fn unpack_layer(blob: impl Read, dest: &Path, opts: &Options) -> Result<Report, UnpackError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, blob);
    let head = buffered.fill_buf().map_err(UnpackError::Archive)?;
    let compression = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let stream: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(UnpackError::Archive)?,
        ),
        Compression::None => Box::new(buffered),
    };
    let hashing = Hashing {
        inner: stream,
        hasher: Sha256::new(),
    };
    let mut archive = tar::Archive::new(HeaderGuard::new(hashing));
    let root = open_root(dest)?;
    let mut u = Unpacker {
        dest,
        root,
        opts,
        bytes: 0,
        entries: 0,
        files: HashSet::new(),
    };
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let entry = entry.map_err(UnpackError::Archive)?;
        u.entries += 1;
        if u.entries > opts.max_entries {
            return Err(UnpackError::Limit {
                what: "entries",
                limit: opts.max_entries,
            });
        }
        u.entry(entry)?;
    }
    // The diff_id covers the whole stream, the end-of-archive blocks and
    // any padding after them too: read it to the end (bounded).
    let mut rest = archive.into_inner().inner;
    let drained =
        io::copy(&mut (&mut rest).take(16 << 20), &mut io::sink()).map_err(UnpackError::Archive)?;
    if drained >= 16 << 20 {
        return Err(UnpackError::Limit {
            what: "bytes after the end of the archive",
            limit: 16 << 20,
        });
    }
    Ok(Report {
        entries: u.entries,
        bytes: u.bytes,
        diff_id: Digest(rest.hasher.finalize().into()),
        compression,
    })
}

struct Unpacker<'a> {
    dest: &'a Path,
    root: OwnedFd,
    opts: &'a Options,
    bytes: u64,
    entries: u64,
    /// Regular files (and fifos) this layer wrote: what a hard link may
    /// point at. Symlinks are not in it: a hard link to a symlink would
    /// copy it to another depth, past the escape check.
    files: HashSet<Vec<Vec<u8>>>,
}

/// The path's components, or why it is refused. `./a//b/` is `[a, b]`.
fn components(raw: &[u8], entry: &str) -> Result<Vec<Vec<u8>>, UnpackError> {
    let bad = |why| UnpackError::Path {
        entry: entry.to_string(),
        why,
    };
    if raw.first() == Some(&b'/') {
        return Err(bad("an absolute path"));
    }
    if raw.len() > 4096 {
        return Err(bad("a path longer than 4096 bytes"));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(bad("a '..' component")),
            c if c.len() > 255 => return Err(bad("a name longer than 255 bytes")),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn cstr(b: &[u8]) -> CString {
    // Tar names hold no NUL (the header field ends at one); a name with
    // one cannot reach here, but never panic on it.
    CString::new(b.to_vec()).unwrap_or_default()
}

fn last_os_error() -> io::Error {
    io::Error::last_os_error()
}

fn open_root(dest: &Path) -> Result<OwnedFd, UnpackError> {
    let c = CString::new(dest.as_os_str().as_bytes()).map_err(|_| UnpackError::Io {
        path: dest.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(UnpackError::Io {
            path: dest.to_path_buf(),
            source: last_os_error(),
        });
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn show(comps: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

impl Unpacker<'_> {
    fn io(&self, comps: &[Vec<u8>], source: io::Error) -> UnpackError {
        let mut p = self.dest.to_path_buf();
        for c in comps {
            p.push(OsStr::from_bytes(c));
        }
        UnpackError::Io { path: p, source }
    }

    /// Opens the directory `comps` beneath the root, creating missing ones
    /// (0755), never following a symlink.
    fn open_dir(&self, comps: &[Vec<u8>], entry: &str) -> Result<OwnedFd, UnpackError> {
        // SAFETY: dup of a valid fd.
        let fd = unsafe { libc::fcntl(self.root.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(self.io(&[], last_os_error()));
        }
        // SAFETY: fd is fresh.
        let mut cur = unsafe { OwnedFd::from_raw_fd(fd) };
        for (i, c) in comps.iter().enumerate() {
            let name = cstr(c);
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: valid fd and C string.
            let mut fd = unsafe { libc::openat(cur.as_raw_fd(), name.as_ptr(), flags) };
            if fd < 0 && last_os_error().raw_os_error() == Some(libc::ENOENT) {
                // SAFETY: as above.
                if unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
                    return Err(self.io(&comps[..=i], last_os_error()));
                }
                // SAFETY: as above.
                fd = unsafe { libc::openat(cur.as_raw_fd(), name.as_ptr(), flags) };
            }
            if fd < 0 {
                let err = last_os_error();
                if self.kind_at(&cur, c) == Some(libc::S_IFLNK) {
                    return Err(UnpackError::BeneathSymlink {
                        entry: entry.to_string(),
                        link: show(&comps[..=i]),
                    });
                }
                return Err(self.io(&comps[..=i], err));
            }
            // SAFETY: fd was just opened.
            cur = unsafe { OwnedFd::from_raw_fd(fd) };
        }
        Ok(cur)
    }

    /// The file type (`S_IFMT` bits) of `name` in `dir`, not following it.
    fn kind_at(&self, dir: &OwnedFd, name: &[u8]) -> Option<libc::mode_t> {
        let c = cstr(name);
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and out-pointer.
        let r = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        (r == 0).then_some(st.st_mode & libc::S_IFMT)
    }

    /// Removes whatever is at `name` in `dir` (a tree, for a directory), as
    /// a later entry of the same path replaces an earlier one.
    fn clear(&mut self, dir: &OwnedFd, comps: &[Vec<u8>]) -> Result<(), UnpackError> {
        let Some(name) = comps.last() else {
            return Ok(());
        };
        if name.is_empty() || name.as_slice() == b"." || name.as_slice() == b".." {
            // components() and the whiteout check keep these out; never
            // let a bug here turn into removing a parent directory.
            return Err(UnpackError::Path {
                entry: show(comps),
                why: "'.' or '..' as a name",
            });
        }
        match self.kind_at(dir, name) {
            None => Ok(()),
            Some(libc::S_IFDIR) => {
                // The parents were opened without following links, so this
                // path names the same directory; remove_dir_all does not
                // follow links inside it.
                let mut p = self.dest.to_path_buf();
                for c in comps {
                    p.push(OsStr::from_bytes(c));
                }
                std::fs::remove_dir_all(&p).map_err(|e| self.io(comps, e))?;
                self.files.retain(|f| !f.starts_with(comps));
                Ok(())
            }
            Some(_) => {
                let c = cstr(name);
                // SAFETY: valid fd and C string.
                if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } < 0 {
                    return Err(self.io(comps, last_os_error()));
                }
                self.files.remove(comps);
                Ok(())
            }
        }
    }

    fn owner(&self, id: u64, entry: &str) -> Result<Option<u32>, UnpackError> {
        match self.opts.ownership {
            Ownership::Ignore => Ok(None),
            Ownership::Keep => u32::try_from(id).map(Some).map_err(|_| UnpackError::Owner {
                entry: entry.to_string(),
                id,
                max: u32::MAX,
            }),
            Ownership::Shift { base, size } => {
                if id >= u64::from(size) {
                    return Err(UnpackError::Owner {
                        entry: entry.to_string(),
                        id,
                        max: size,
                    });
                }
                base.checked_add(id as u32)
                    .map(Some)
                    .ok_or(UnpackError::Owner {
                        entry: entry.to_string(),
                        id,
                        max: size,
                    })
            }
        }
    }

    fn chown_at(
        &self,
        dir: &OwnedFd,
        comps: &[Vec<u8>],
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), UnpackError> {
        let (Some(uid), Some(gid)) = (uid, gid) else {
            return Ok(());
        };
        let name = comps.last().map(|c| cstr(c)).unwrap_or_else(|| cstr(b"."));
        // SAFETY: valid fd and C string.
        let r = unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r < 0 {
            return Err(self.io(comps, last_os_error()));
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = e.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw)
            .chars()
            .take(300)
            .collect::<String>();
        let kind = e.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = components(&raw, &shown)?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer's root itself ("./"): nothing to create.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(UnpackError::Path {
                    entry: shown,
                    why: "a non-directory at the layer's root",
                })
            };
        };
        let uid = self.owner(e.header().uid().map_err(UnpackError::Archive)?, &shown)?;
        let gid = self.owner(e.header().gid().map_err(UnpackError::Archive)?, &shown)?;
        let mode = e.header().mode().map_err(UnpackError::Archive)? & 0o7777;

        // Whiteouts.
        if name.as_slice() == b".wh..wh..opq" {
            let dir = self.open_dir(parents, &shown)?;
            let key = cstr(b"trusted.overlay.opaque");
            // SAFETY: valid fd, C string and 1-byte value.
            let r = unsafe {
                libc::fsetxattr(dir.as_raw_fd(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0)
            };
            if r < 0 {
                return Err(self.io(parents, last_os_error()));
            }
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(UnpackError::Path {
                    entry: shown,
                    why: "a whiteout of '', '.' or '..'",
                });
            }
            let mut target = parents.to_vec();
            target.push(hidden.to_vec());
            let dir = self.open_dir(parents, &shown)?;
            self.clear(&dir, &target)?;
            let c = cstr(hidden);
            // SAFETY: valid fd and C string; 0:0 char device is overlayfs's
            // whiteout.
            if unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), libc::S_IFCHR, 0) } < 0 {
                return Err(self.io(&target, last_os_error()));
            }
            return Ok(());
        }

        let dir = self.open_dir(parents, &shown)?;
        let cname = cstr(name);
        match kind {
            tar::EntryType::Directory => {
                if self.kind_at(&dir, name) != Some(libc::S_IFDIR) {
                    self.clear(&dir, &comps)?;
                    // SAFETY: valid fd and C string.
                    if unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o700) } < 0 {
                        return Err(self.io(&comps, last_os_error()));
                    }
                }
                self.chown_at(&dir, &comps, uid, gid)?;
                // SAFETY: valid fd and C string.
                if unsafe {
                    libc::fchmodat(dir.as_raw_fd(), cname.as_ptr(), mode as libc::mode_t, 0)
                } < 0
                {
                    return Err(self.io(&comps, last_os_error()));
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.clear(&dir, &comps)?;
                let flags = libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_CLOEXEC;
                // SAFETY: valid fd and C string.
                let fd = unsafe { libc::openat(dir.as_raw_fd(), cname.as_ptr(), flags, 0o600) };
                if fd < 0 {
                    return Err(self.io(&comps, last_os_error()));
                }
                // SAFETY: fd was just opened.
                let mut f = unsafe { File::from_raw_fd(fd) };
                let room = self.opts.max_bytes - self.bytes;
                let n = io::copy(&mut (&mut e).take(room.saturating_add(1)), &mut f)
                    .map_err(|err| self.io(&comps, err))?;
                if n > room {
                    return Err(UnpackError::Limit {
                        what: "bytes",
                        limit: self.opts.max_bytes,
                    });
                }
                self.bytes += n;
                if let (Some(u), Some(g)) = (uid, gid) {
                    // SAFETY: valid fd.
                    if unsafe { libc::fchown(f.as_raw_fd(), u, g) } < 0 {
                        return Err(self.io(&comps, last_os_error()));
                    }
                }
                // After chown: chown clears set-id bits.
                // SAFETY: valid fd.
                if unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) } < 0 {
                    return Err(self.io(&comps, last_os_error()));
                }
                let mtime = e.header().mtime().unwrap_or(0) as i64;
                let ts = [
                    libc::timespec {
                        tv_sec: mtime,
                        tv_nsec: 0,
                    },
                    libc::timespec {
                        tv_sec: mtime,
                        tv_nsec: 0,
                    },
                ];
                // SAFETY: valid fd and a two-element array.
                unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) };
                self.files.insert(comps.clone());
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.contains(&0) {
                    return Err(UnpackError::SymlinkEscape {
                        entry: shown,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                if target[0] != b'/' && escapes(parents.len(), &target) {
                    return Err(UnpackError::SymlinkEscape {
                        entry: shown,
                        target: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                self.clear(&dir, &comps)?;
                let t = cstr(&target);
                // SAFETY: valid fd and C strings.
                if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), cname.as_ptr()) } < 0 {
                    return Err(self.io(&comps, last_os_error()));
                }
                self.chown_at(&dir, &comps, uid, gid)?;
            }
            tar::EntryType::Link => {
                let target_raw = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_shown = String::from_utf8_lossy(&target_raw).into_owned();
                let hl = |why| UnpackError::HardLink {
                    entry: shown.clone(),
                    target: target_shown.clone(),
                    why,
                };
                if target_raw.first() == Some(&b'/') {
                    return Err(hl("an absolute target"));
                }
                let target = components(&target_raw, &shown)
                    .map_err(|_| hl("a target outside the layer"))?;
                if !self.files.contains(&target) {
                    return Err(hl(
                        "the target is not a regular file this layer wrote before the link",
                    ));
                }
                if target == comps {
                    return Ok(());
                }
                let Some((tname, tparents)) = target.split_last() else {
                    return Err(hl("an empty target"));
                };
                let tdir = self.open_dir(tparents, &shown)?;
                self.clear(&dir, &comps)?;
                let tc = cstr(tname);
                // SAFETY: valid fds and C strings; flags 0: a symlink target
                // is linked itself, never followed.
                if unsafe {
                    libc::linkat(
                        tdir.as_raw_fd(),
                        tc.as_ptr(),
                        dir.as_raw_fd(),
                        cname.as_ptr(),
                        0,
                    )
                } < 0
                {
                    return Err(self.io(&comps, last_os_error()));
                }
                self.files.insert(comps.clone());
            }
            tar::EntryType::Fifo => {
                self.clear(&dir, &comps)?;
                // SAFETY: valid fd and C string.
                if unsafe {
                    libc::mknodat(
                        dir.as_raw_fd(),
                        cname.as_ptr(),
                        libc::S_IFIFO | mode as libc::mode_t,
                        0,
                    )
                } < 0
                {
                    return Err(self.io(&comps, last_os_error()));
                }
                self.chown_at(&dir, &comps, uid, gid)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(UnpackError::Device { entry: shown });
            }
            other => {
                return Err(UnpackError::Unsupported {
                    entry: shown,
                    kind: other.as_byte() as char,
                });
            }
        }
        Ok(())
    }
}

/// Whether a relative symlink target, read from a directory `depth` levels
/// below the layer's root, climbs above that root.
///
/// A `..` after a name is refused as escaping too: the name may be another
/// symlink of the layer (`up -> ..`, then `x -> up/../secret`), and then
/// counting levels by words says nothing. Targets are `..`s, then names.
fn escapes(depth: usize, target: &[u8]) -> bool {
    let mut level = depth as i64;
    let mut named = false;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if named {
                    return true;
                }
                level -= 1;
                if level < 0 {
                    return true;
                }
            }
            _ => {
                named = true;
                level += 1;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn relative_symlinks_that_climb_out_are_caught() {
        assert!(!escapes(0, b"a/b"));
        assert!(escapes(0, b"../etc"));
        assert!(!escapes(2, b"../../etc"));
        assert!(escapes(2, b"../../../etc"));
        assert!(escapes(1, b"x/../../.."));
        assert!(!escapes(1, b"./.././x"));
        // Through another symlink: `up -> ..` then `x -> up/../secret`.
        assert!(escapes(3, b"up/../secret"));
        assert!(!escapes(3, b"../../lib/x86_64-linux-gnu/libc.so.6"));
    }

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(
            components(b"./a//b/", "e").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(components(b"/etc/passwd", "e").is_err());
        assert!(components(b"a/../../b", "e").is_err());
        assert!(components(b"", "e").unwrap().is_empty());
    }
}
