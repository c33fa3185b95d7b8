//! Stage 1's last child: it reads stage 2's files ahead, then frees the
//! initramfs, both off the boot's critical path.
//!
//! - **Reading ahead.** Every first read of a root page is a dm-verity hash
//!   check and a decompression, slow under emulation; otherwise it all
//!   happens in exec's page faults, on the critical path. The child reads
//!   the files so their pages are in the page cache when stage 2 runs them.
//! - **Freeing the initramfs.** Its files are RAM, so stage 1 deletes them
//!   before leaving, as switch_root(8) does. That took 30-130 ms of stage
//!   1's time under TCG (freeing the modules' pages). The child does it
//!   once stage 1 says the files are no longer needed (the /var child has
//!   opened its modules), at nice 19, while stage 2 starts.
//!
//! A process rather than a thread, so it outlives the exec of stage 2 (which
//! reaps it as an orphan). It works on descriptors opened before the fork:
//! the files under the new root, and the initramfs's own root, which stays
//! reachable through its descriptor after the new root is moved over `/`.
//! It makes only raw system calls and allocates nothing, so it is safe
//! whatever other threads of stage 1 held at the fork.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The child, or what stage 1 does itself when it could not start one.
#[derive(Debug)]
pub struct ReadAhead {
    /// The child's pid; `None` when the fork failed.
    pid: Option<libc::pid_t>,
    /// Closing this tells the child to free the initramfs.
    go: Option<OwnedFd>,
    /// The initramfs's root, for freeing it here when there is no child.
    old_root: Option<OwnedFd>,
    /// How many files the child reads.
    files: usize,
    /// Why there is no child.
    error: Option<String>,
}

impl ReadAhead {
    /// Opens `files` (relative to `new_root`; a directory stands for the
    /// files under it) and `old_root` (the initramfs's `/`), then forks the
    /// child that reads the first and, once told, empties the second.
    pub fn start(old_root: &Path, new_root: &Path, files: &[&str]) -> ReadAhead {
        let mut paths = Vec::new();
        for f in files {
            files_under(&new_root.join(f), &mut paths);
        }
        // Opened here: the root is moved to / while the child reads, and a
        // path under the new root's mount point would no longer resolve.
        let open: Vec<std::fs::File> = paths
            .iter()
            .filter_map(|f| std::fs::File::open(f).ok())
            .collect();
        let old_root = open_dir(old_root);
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        let piped = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0;
        let (rd, wr) = if piped {
            // SAFETY: two fresh descriptors, each owned once.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        } else {
            return ReadAhead::without_child(old_root, "no pipe");
        };
        let mut buf = [0u8; 64 * 1024];
        // SAFETY: the child only makes raw system calls on descriptors and
        // a buffer made before the fork, then _exit(2)s.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: raw calls on descriptors this process holds.
                unsafe {
                    libc::close(wr.as_raw_fd());
                    for f in &open {
                        while libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) > 0 {}
                    }
                    libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                    // Until stage 1 closes its end (or execs stage 2).
                    while libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), 1) > 0 {}
                    if let Some(dir) = &old_root {
                        wipe_root(dir.as_raw_fd());
                    }
                    libc::_exit(0)
                }
            }
            -1 => ReadAhead::without_child(old_root, &std::io::Error::last_os_error().to_string()),
            pid => ReadAhead {
                pid: Some(pid),
                go: Some(wr),
                old_root: None,
                files: open.len(),
                error: None,
            },
        }
    }

    fn without_child(old_root: Option<OwnedFd>, why: &str) -> ReadAhead {
        ReadAhead {
            pid: None,
            go: None,
            old_root,
            files: 0,
            error: Some(why.to_string()),
        }
    }

    /// Stage 1 no longer needs the initramfs's files: the child frees them
    /// (or this does, with no child).
    pub fn free_initramfs(&mut self) {
        self.go = None;
        if let Some(dir) = self.old_root.take() {
            wipe_root(dir.as_raw_fd());
        }
    }

    /// What to say about it in stage 1's summary line.
    pub fn describe(&self) -> String {
        match (self.pid, &self.error) {
            (Some(pid), _) => format!(
                "reading ahead {} files, then freeing the initramfs (pid {pid})",
                self.files
            ),
            (None, why) => format!("no read-ahead ({})", why.as_deref().unwrap_or("?")),
        }
    }
}

/// `path` if it is a file, else the files under it (sorted, depth first).
fn files_under(path: &Path, out: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(rd) => {
            let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            for e in entries {
                files_under(&e, out);
            }
        }
        Err(_) => out.push(path.to_path_buf()),
    }
}

fn open_dir(path: &Path) -> Option<OwnedFd> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a NUL-terminated path; the descriptor is owned at once.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    // SAFETY: a fresh descriptor.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Deletes everything under the directory `dir` that is on its filesystem,
/// leaving the mounts under it (and what is in them) alone.
pub fn wipe_root(dir: RawFd) {
    // SAFETY: fstat writes into `st`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(dir, &mut st) } == 0 {
        wipe(dir, st.st_dev, 0);
    }
}

/// Subdirectories deeper than this are left: no initramfs nests so deep,
/// and the recursion keeps a buffer per level on the stack.
const MAX_DEPTH: u32 = 32;

/// Deletes the entries of `dir` that are on device `dev`, depth first. Raw
/// system calls only, no allocation: it runs in a forked child.
fn wipe(dir: RawFd, dev: libc::dev_t, depth: u32) {
    // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
    const NAME: usize = 19;
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { return };
        if n == 0 {
            return;
        }
        let mut off = 0;
        while off + NAME < n {
            let reclen = usize::from(u16::from_ne_bytes([buf[off + 16], buf[off + 17]]));
            if reclen <= NAME || off + reclen > n {
                return;
            }
            let name = &buf[off + NAME..off + reclen];
            off += reclen;
            if name.starts_with(b".\0") || name.starts_with(b"..\0") || !name.contains(&0) {
                continue;
            }
            let name = name.as_ptr().cast::<libc::c_char>();
            // SAFETY: `name` is NUL-terminated inside buf; st is written by fstatat.
            unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::fstatat(dir, name, &mut st, libc::AT_SYMLINK_NOFOLLOW) != 0
                    || st.st_dev != dev
                {
                    // Gone already, or a mount point: not ours to delete.
                    continue;
                }
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    if depth >= MAX_DEPTH {
                        continue;
                    }
                    let sub = libc::openat(
                        dir,
                        name,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    );
                    if sub >= 0 {
                        wipe(sub, dev, depth + 1);
                        libc::close(sub);
                    }
                    libc::unlinkat(dir, name, libc::AT_REMOVEDIR);
                } else {
                    libc::unlinkat(dir, name, 0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tree(root: &Path) {
        for d in ["lib/modules/6.1/kernel/fs/ext4", "etc/fluxnode", "empty"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // More entries than one getdents64 buffer holds.
        for i in 0..200 {
            std::fs::write(
                root.join(format!("lib/file-with-a-longish-name-{i:03}")),
                b"x",
            )
            .unwrap();
        }
        std::fs::write(root.join("lib/modules/6.1/kernel/fs/ext4/ext4.ko"), b"elf").unwrap();
        std::fs::write(root.join("etc/initrd-release"), b"").unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink("lib", root.join("lib64")).unwrap();
    }

    fn dir_fd(p: &Path) -> OwnedFd {
        open_dir(p).unwrap()
    }

    #[test]
    fn wipes_everything_on_the_filesystem_and_keeps_the_top() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        let fd = dir_fd(tmp.path());
        wipe_root(fd.as_raw_fd());
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        assert!(tmp.path().is_dir());
    }

    #[test]
    fn leaves_what_is_on_another_device() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        let dev = std::fs::metadata(tmp.path()).unwrap().dev();
        let fd = dir_fd(tmp.path());
        // As if every entry were a mount point of another filesystem.
        wipe(fd.as_raw_fd(), dev.wrapping_add(1), 0);
        assert!(tmp
            .path()
            .join("lib/modules/6.1/kernel/fs/ext4/ext4.ko")
            .exists());
        assert!(tmp.path().join("dangling").symlink_metadata().is_ok());
    }

    #[test]
    fn the_child_reads_then_frees_only_when_told() {
        let tmp = tempfile::tempdir().unwrap();
        let newroot = tmp.path().join("newroot");
        std::fs::create_dir_all(newroot.join("etc/fluxnode")).unwrap();
        std::fs::write(newroot.join("etc/fluxnode/init.toml"), b"x").unwrap();
        let old = tmp.path().join("old");
        tree(&old);
        let mut ra = ReadAhead::start(&old, &newroot, &["etc/fluxnode", "missing"]);
        let pid = ra.pid.expect("a child");
        assert!(
            ra.describe().starts_with("reading ahead 1 files"),
            "{}",
            ra.describe()
        );
        // The child has read and waits for the word: nothing is freed yet.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(old.join("etc/initrd-release").exists());
        ra.free_initramfs();
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(std::fs::read_dir(&old).unwrap().count(), 0);
        assert!(newroot.join("etc/fluxnode/init.toml").exists());
    }

    #[test]
    fn without_a_child_stage_1_frees_it_itself() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        let mut ra = ReadAhead::without_child(Some(dir_fd(tmp.path())), "test");
        assert_eq!(ra.describe(), "no read-ahead (test)");
        ra.free_initramfs();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
