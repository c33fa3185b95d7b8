//! The EFI system partition: systemd-boot, its loader.conf, and one UKI per
//! populated slot in EFI/Linux/. Made with `mkfs.vfat --invariant` and
//! `mcopy` from a tree whose every timestamp is SOURCE_DATE_EPOCH.

use std::path::{Path, PathBuf};

use crate::error::{io, Result};
use crate::tools;

/// systemd-boot as systemd-boot-efi installs it.
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// `loader.conf`: no menu, no editor, newest entry first (systemd-boot's order).
pub const LOADER_CONF: &str =
    "timeout 0\nconsole-mode keep\neditor no\nauto-entries no\nauto-firmware no\n";

/// Builds the FAT32 image at `out` (`size_mib`) from `ukis` (file name, path).
pub fn build(
    boot: &Path,
    ukis: &[(String, PathBuf)],
    work: &Path,
    out: &Path,
    size_mib: u64,
    epoch: u64,
) -> Result<()> {
    let tree = work.join("esp");
    let put = |rel: &str, src: Option<&Path>, text: &str| -> Result<()> {
        let p = tree.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        match src {
            Some(s) => std::fs::copy(s, &p).map(|_| ()).map_err(io("copying", s)),
            None => std::fs::write(&p, text).map_err(io("writing", &p)),
        }
    };
    put("EFI/BOOT/BOOTX64.EFI", Some(boot), "")?;
    put("EFI/systemd/systemd-bootx64.efi", Some(boot), "")?;
    put("loader/loader.conf", None, LOADER_CONF)?;
    std::fs::create_dir_all(tree.join("loader/entries")).map_err(io("creating", &tree))?;
    for (name, src) in ukis {
        put(&format!("EFI/Linux/{name}"), Some(src), "")?;
    }
    touch_tree(&tree, epoch)?;
    if out.exists() {
        std::fs::remove_file(out).map_err(io("removing", out))?;
    }
    tools::run(
        tools::cmd("mkfs.vfat")?
            .args([
                "-F",
                "32",
                "-s",
                "1",
                "-S",
                "512",
                "--invariant",
                "-i",
                "464c5558",
                "-n",
                "ESP",
                "-C",
            ])
            .arg(out)
            .arg((size_mib * 1024).to_string()),
    )?;
    let mut c = tools::cmd("mcopy")?;
    c.env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-p", "-m", "-Q", "-i"])
        .arg(out);
    for top in ["EFI", "loader"] {
        c.arg(tree.join(top));
    }
    c.arg("::/");
    tools::run(&mut c)?;
    Ok(())
}

/// Sets atime and mtime of everything under `dir` (and itself) to `epoch`.
pub fn touch_tree(dir: &Path, epoch: u64) -> Result<()> {
    for e in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        let e = e.map_err(io("listing", dir))?;
        if e.file_type().map_err(io("stat", e.path()))?.is_dir() {
            touch_tree(&e.path(), epoch)?;
        } else {
            touch(&e.path(), epoch)?;
        }
    }
    touch(dir, epoch)
}

fn touch(p: &Path, epoch: u64) -> Result<()> {
    let f = std::fs::File::open(p).map_err(io("opening", p))?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .map_err(io("touching", p))
}
