//! Looking into and changing a test machine's disk image from the host,
//! between boots: the ESP with mtools, /var with e2fsprogs (`?offset=`),
//! the erofs roots with erofs-utils.

use std::path::Path;
use std::process::Command;

use fluxnode_image::Built;

/// The byte offset of partition `name` (esp, root_a, root_b, data) of a built image.
pub fn part_offset(built: &Built, name: &str) -> Result<u64, String> {
    built
        .manifest
        .partitions
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.offset)
        .ok_or_else(|| format!("the image has no partition {name:?}"))
}

fn mtools(tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1");
    c
}

/// The `.efi` files in the ESP's EFI/Linux, sorted.
pub fn esp_listing(disk: &Path, esp_offset: u64) -> Result<Vec<String>, String> {
    let out = mtools("mdir")
        .args(["-b", "-i"])
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg("::/EFI/Linux")
        .output()
        .map_err(|e| format!("mdir: {e} (Debian package mtools)"))?;
    if !out.status.success() {
        return Err(format!(
            "mdir failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next().map(|s| s.trim().to_string()))
        .filter(|s| s.ends_with(".efi"))
        .collect();
    v.sort();
    Ok(v)
}

/// Copies the host file `src` into the ESP at `esp_offset` of `disk` as
/// `dst` (replacing it).
pub fn esp_put_file(disk: &Path, esp_offset: u64, src: &Path, dst: &str) -> Result<(), String> {
    let out = mtools("mcopy")
        .args(["-o", "-i"])
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg(src)
        .arg(format!("::{dst}"))
        .output()
        .map_err(|e| format!("mcopy: {e} (Debian package mtools)"))?;
    if !out.status.success() {
        return Err(format!(
            "mcopy {dst} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Writes `text` into the ESP as `dst` through the scratch file `scratch`.
pub fn esp_put(
    disk: &Path,
    offset: u64,
    dst: &str,
    text: &str,
    scratch: &Path,
) -> Result<(), String> {
    std::fs::write(scratch, text).map_err(|e| format!("{}: {e}", scratch.display()))?;
    esp_put_file(disk, offset, scratch, dst)
}

/// A file of the ext4 /var at `data_offset` of `disk` (debugfs), `None`
/// when it does not exist.
pub fn var_read(disk: &Path, data_offset: u64, path: &str) -> Result<Option<String>, String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={data_offset}", disk.display()))
        .output()
        .map_err(|e| format!("debugfs: {e} (Debian package e2fsprogs)"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File not found") {
        return Ok(None);
    }
    if !out.status.success() {
        return Err(format!("debugfs cat {path}: {err}"));
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `e2fsck -fn` of the /var at `data_offset`: `Ok` when it is clean,
/// else its report.
pub fn var_fsck(disk: &Path, data_offset: u64) -> Result<(), String> {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={data_offset}", disk.display()))
        .output()
        .map_err(|e| format!("e2fsck: {e} (Debian package e2fsprogs)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "e2fsck -fn of /var ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The byte offset, inside the erofs image `root_img`, where the data of
/// `path` starts (the physical start of its first extent: for a compressed
/// file its first compressed cluster, which any read of the file's first
/// page, as exec's, decompresses).
pub fn file_data_offset(root_img: &Path, path: &str) -> Result<u64, String> {
    let out = Command::new("dump.erofs")
        .arg("-e")
        .arg(format!("--path={path}"))
        .arg(root_img)
        .output()
        .map_err(|e| format!("dump.erofs: {e} (Debian package erofs-utils)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "   0:        0..   14760 |   14760 :    6033408..   6037504 |    4096"
    for line in text.lines() {
        let cols: Vec<&str> = line.split('|').collect();
        if line.trim_start().starts_with("0:") && cols.len() >= 2 {
            if let Some(phys) = cols[1].split(':').nth(1).and_then(|s| s.split("..").next()) {
                return phys
                    .trim()
                    .parse()
                    .map_err(|e| format!("dump.erofs offset {phys:?}: {e}"));
            }
        }
    }
    Err(format!(
        "no extent 0 of {path} in dump.erofs output:\n{text}"
    ))
}

/// Flips the lowest bit of the byte at `at` in `disk`.
pub fn flip_byte(disk: &Path, at: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).map_err(|e| e.to_string())?;
    b[0] ^= 0x01;
    f.write_all_at(&b, at).map_err(|e| e.to_string())
}
