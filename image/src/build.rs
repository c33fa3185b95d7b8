//! The build, step by step: spec → kernel → root tree → erofs + verity →
//! initramfs → UKI per slot → ESP → GPT image → manifest. Everything is
//! written into a temporary directory next to the output and renamed into
//! place at the end, so a failed build leaves no partial image behind.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{io, ImageError, Result};
use crate::manifest::{self, KernelInfo, Manifest, RootInfo, SlotInfo, UpdateInfo, UpdateUki};
use crate::spec::Spec;
use crate::{disk, esp, initramfs, kernel, measure, modules, rootfs, tools, uki};

/// The image file's name in the output directory.
pub const IMAGE_FILE: &str = "fluxnode.img";
/// The manifest's name in the output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Slot b of a test image: populated with slot a's root, a newer version, and
/// optionally a wrong root hash (a slot that can never boot).
#[derive(Debug, Clone)]
pub struct SlotB {
    /// IMAGE_VERSION of slot b (make it newer than a's so it boots first).
    pub version: String,
    /// Boot counter (`+N`) on its UKI.
    pub tries: Option<u32>,
    /// Put a wrong root hash on its command line.
    pub corrupt_root_hash: bool,
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The TOML spec.
    pub spec: PathBuf,
    /// Output directory (replaced atomically).
    pub out: PathBuf,
    /// Where `bin:` files are looked up, in order (the static release
    /// binaries first, then e.g. the host release dir for dynamic ones).
    pub bin_dirs: Vec<PathBuf>,
    /// Download and unpack cache.
    pub cache_dir: PathBuf,
    /// Timestamp for every file (SOURCE_DATE_EPOCH).
    pub source_date_epoch: u64,
    /// Use this kernel .deb instead of downloading the spec's package.
    pub kernel_deb: Option<PathBuf>,
    /// Boot counter (`+N`) on slot a's UKI; `None` = already blessed.
    pub slot_a_tries: Option<u32>,
    /// Populate slot b too (test images).
    pub slot_b: Option<SlotB>,
    /// Appended to every slot's kernel command line.
    pub extra_cmdline: String,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The output directory.
    pub dir: PathBuf,
    /// The disk image.
    pub image: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Seconds the build took.
    pub seconds: f64,
}

/// A progress line for the terminal.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// The default SOURCE_DATE_EPOCH: the environment's, or a fixed date.
pub fn default_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_700_000_000)
}

/// Builds an image. On error nothing is left at `opts.out` that was not there before.
pub fn build(opts: &BuildOptions, progress: Progress) -> Result<Built> {
    let t0 = Instant::now();
    let parent = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("removing", &tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    let res = build_into(opts, &tmp, progress);
    match res {
        Ok(manifest) => {
            let _ = std::fs::remove_dir_all(tmp.join("work"));
            if opts.out.exists() {
                std::fs::remove_dir_all(&opts.out).map_err(io("replacing", &opts.out))?;
            }
            std::fs::rename(&tmp, &opts.out).map_err(io("renaming into", &opts.out))?;
            Ok(Built {
                dir: opts.out.clone(),
                image: opts.out.join(IMAGE_FILE),
                manifest,
                seconds: t0.elapsed().as_secs_f64(),
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn salt_for(version: &str, slot: &str) -> String {
    hex::encode(Sha256::digest(
        format!("fluxnode-verity-salt:{version}:{slot}").as_bytes(),
    ))
}

/// The UKI's file name in EFI/Linux, with the boot counter when given.
pub fn uki_name(version: &str, slot: &str, tries: Option<u32>) -> String {
    match tries {
        Some(n) => format!("fluxnode-{version}-{slot}+{n}.efi"),
        None => format!("fluxnode-{version}-{slot}.efi"),
    }
}

fn build_into(opts: &BuildOptions, dir: &Path, progress: Progress) -> Result<Manifest> {
    let total = 9;
    let mut step = 0;
    let mut say = |msg: &str| {
        step += 1;
        progress(&format!("[{step}/{total}] {msg}"));
    };
    say("checking host tools");
    tools::check_all()?;
    let stub = tools::host_file(Path::new(uki::STUB), "systemd-boot-efi")?;
    let boot = tools::host_file(Path::new(esp::SYSTEMD_BOOT), "systemd-boot-efi")?;
    say(&format!("reading spec {}", opts.spec.display()));
    let spec = Spec::load(&opts.spec)?;
    let init = rootfs::find_bin(&opts.bin_dirs, "fluxnode-stage1");
    if !init.is_file() {
        return Err(ImageError::Missing {
            what: "stage-1 binary",
            path: init,
            hint: ": build it with `RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target x86_64-unknown-linux-gnu -p fluxnode-init`".into(),
        });
    }
    say(&format!("fetching kernel ({})", spec.kernel_package));
    let k = kernel::fetch(
        &spec.kernel_package,
        &opts.cache_dir.join("kernel"),
        opts.kernel_deb.as_deref(),
    )?;
    let db = modules::ModDb::load(&k.modules)?;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).map_err(io("creating", &work))?;

    say("assembling the root filesystem");
    let tree = work.join("root");
    let mut warn = |m: &str| progress_warn(m);
    rootfs::assemble(&spec, &k, &db, &opts.bin_dirs, &tree, &mut warn)?;
    say("packing erofs (lz4hc) and the dm-verity tree");
    let root_a_path = dir.join("root_a.img");
    let (parts, total_size) = disk::layout(&spec.sizes);
    let root_max = spec.sizes.root_mib * 1024 * 1024;
    let salt_a = salt_for(&spec.version, "a");
    let uuid = disk::fixed_guid(&format!("erofs:{}", spec.version)).to_lowercase();
    let root_a = rootfs::pack(
        &tree,
        &root_a_path,
        opts.source_date_epoch,
        &uuid,
        &salt_a,
        root_max,
    )?;

    say("building the initramfs (stage 1 and its modules)");
    let (initrd, initrd_order) = initramfs::build(&init, &k, &db, &spec, opts.source_date_epoch)?;
    let late_order = db.closure(&spec.late_modules)?;

    say("building the unified kernel images");
    let uki_inputs = UkiInputs {
        stub: &stub,
        spec: &spec,
        parts: &parts,
        vmlinuz: &k.vmlinuz,
        initrd: &initrd,
        work: &work,
        extra_cmdline: &opts.extra_cmdline,
        epoch: opts.source_date_epoch,
    };
    let mut slots = Vec::new();
    let mut slot_specs = vec![(
        "a",
        spec.version.clone(),
        opts.slot_a_tries,
        root_a.clone(),
        false,
    )];
    if let Some(b) = &opts.slot_b {
        let root_b_path = dir.join("root_b.img");
        std::fs::copy(&root_a.path, &root_b_path).map_err(io("copying", &root_b_path))?;
        let rb = rootfs::VerityRoot {
            path: root_b_path,
            ..root_a.clone()
        };
        slot_specs.push(("b", b.version.clone(), b.tries, rb, b.corrupt_root_hash));
    }
    let mut ukis = Vec::new();
    for (slot, version, tries, root, corrupt) in slot_specs {
        let hash = if corrupt {
            flip_hex(&root.root_hash)
        } else {
            root.root_hash.clone()
        };
        let uki_path = dir.join(format!("uki_{slot}.efi"));
        let made = uki_inputs.build(slot, &version, &root, &hash, &uki_path)?;
        let esp_name = uki_name(&version, slot, tries);
        ukis.push((esp_name.clone(), uki_path.clone()));
        slots.push((
            slot.to_string(),
            SlotInfo {
                version,
                esp_name,
                uki: made.uki,
                root: RootInfo {
                    payload: manifest::payload(&root.path)?,
                    root_hash: hash,
                    salt: root.salt.clone(),
                    data_blocks: root.data_blocks,
                },
                cmdline: made.cmdline,
                pcr11_sha256: made.pcr11_sha256,
                pcr12_sha256: made.pcr12_sha256,
                pcr9_sha256: made.pcr9_sha256,
            },
        ));
    }
    // The update payloads: this version's UKI for each slot (a node running
    // slot a installs the `b` one), whether or not the disk populates it.
    // A populated slot of this version with the true root hash already has
    // exactly that UKI; otherwise it is built next to the others (slot b of
    // a default image: `uki_b.efi`, not on the ESP).
    let mut update_ukis = Vec::new();
    for slot in ["a", "b"] {
        let same = slots.iter().find(|(s, info)| {
            s == slot && info.version == spec.version && info.root.root_hash == root_a.root_hash
        });
        let u = match same {
            Some((_, info)) => UpdateUki {
                uki: info.uki.clone(),
                cmdline: info.cmdline.clone(),
                pcr11_sha256: info.pcr11_sha256.clone(),
                pcr12_sha256: info.pcr12_sha256.clone(),
                pcr9_sha256: info.pcr9_sha256.clone(),
            },
            None => {
                let mut path = dir.join(format!("uki_{slot}.efi"));
                if path.exists() {
                    path = dir.join(format!("uki_{slot}-update.efi"));
                }
                uki_inputs.build(slot, &spec.version, &root_a, &root_a.root_hash, &path)?
            }
        };
        update_ukis.push((slot.to_string(), u));
    }
    let update = UpdateInfo {
        version: spec.version.clone(),
        compatible: spec.compatible.clone(),
        security_version: spec.security_version,
        root: RootInfo {
            payload: manifest::payload(&root_a.path)?,
            root_hash: root_a.root_hash.clone(),
            salt: root_a.salt.clone(),
            data_blocks: root_a.data_blocks,
        },
        ukis: update_ukis,
    };
    say("building the ESP (systemd-boot, loader.conf, UKIs)");
    let esp_img = work.join("esp.img");
    let esp_need: u64 = ukis
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum::<u64>()
        + 2 * 1024 * 1024;
    if esp_need > spec.sizes.esp_mib * 1024 * 1024 * 9 / 10 {
        return Err(ImageError::TooBig {
            what: "the ESP (systemd-boot and the UKIs)".into(),
            need_mib: esp_need as f64 / 1048576.0 * 10.0 / 9.0,
            have_mib: spec.sizes.esp_mib,
            key: "sizes.esp_mib",
        });
    }
    esp::build(
        &boot,
        &ukis,
        &work,
        &esp_img,
        spec.sizes.esp_mib,
        opts.source_date_epoch,
    )?;

    say("writing the GPT disk image");
    let image = dir.join(IMAGE_FILE);
    let mut contents: Vec<(&str, &Path)> = vec![("esp", &esp_img), ("root_a", &root_a.path)];
    let root_b_path = dir.join("root_b.img");
    if opts.slot_b.is_some() {
        contents.push(("root_b", &root_b_path));
    }
    disk::write(&image, &parts, total_size, &contents)?;
    let (size, sha256, chunks) = manifest::hash_file(&image, manifest::CHUNK)?;
    let m = Manifest {
        format: 1,
        version: spec.version.clone(),
        source_date_epoch: opts.source_date_epoch,
        kernel: KernelInfo {
            package: k.package.clone(),
            package_version: k.package_version.clone(),
            release: k.release.clone(),
        },
        image: manifest::ImageInfo {
            payload: manifest::Payload {
                file: IMAGE_FILE.into(),
                size,
                sha256,
            },
            chunk_size: manifest::CHUNK,
            chunks,
        },
        partitions: parts,
        slots,
        initrd_modules: initrd_order,
        late_modules: late_order,
        initramfs_size: initrd.len() as u64,
        update: Some(update),
    };
    let mp = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&m).map_err(|e| ImageError::Format {
        path: mp.clone(),
        msg: e.to_string(),
    })?;
    std::fs::write(&mp, text + "\n").map_err(io("writing", &mp))?;
    Ok(m)
}

/// What every UKI of a build shares.
struct UkiInputs<'a> {
    stub: &'a Path,
    spec: &'a Spec,
    parts: &'a [disk::Part],
    vmlinuz: &'a Path,
    initrd: &'a [u8],
    work: &'a Path,
    extra_cmdline: &'a str,
    epoch: u64,
}

impl UkiInputs<'_> {
    /// Builds the UKI of `version` for `slot` at `out`, its command line
    /// naming the slot's partition, `hash` as the root hash and the spec's
    /// security version; returns its payload, command line and predicted PCRs.
    fn build(
        &self,
        slot: &str,
        version: &str,
        root: &rootfs::VerityRoot,
        hash: &str,
        out: &Path,
    ) -> Result<UpdateUki> {
        let cmdline = format!(
            "{} fluxnode.slot={slot} fluxnode.roothash={hash} fluxnode.salt={} fluxnode.datablocks={} fluxnode.secver={} {} {}",
            self.spec.cmdline,
            root.salt,
            root.data_blocks,
            self.spec.security_version,
            disk::cmdline_keys(self.parts, slot)?,
            self.extra_cmdline
        )
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
        let osrel = rootfs::os_release(version, Some(slot));
        let name = out
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("uki_{slot}"));
        let uw = self.work.join(name);
        std::fs::create_dir_all(&uw).map_err(io("creating", &uw))?;
        uki::build(
            self.stub,
            &osrel,
            &cmdline,
            self.vmlinuz,
            self.initrd,
            &uw,
            out,
            self.epoch,
        )?;
        // PCR 11 from the UKI's sections; PCR 12 and 9 from its .cmdline
        // and .initrd as systemd-boot, the stub and the kernel measure them.
        let pcrs = measure::predict_file(out)?;
        Ok(UpdateUki {
            uki: manifest::payload(out)?,
            cmdline,
            pcr11_sha256: hex::encode(pcrs.pcr11),
            pcr12_sha256: hex::encode(pcrs.pcr12),
            pcr9_sha256: hex::encode(pcrs.pcr9),
        })
    }
}

fn progress_warn(m: &str) {
    eprintln!("fluxnode-image: warning: {m}");
}

/// The same hex string with its first digit changed (a wrong root hash).
pub fn flip_hex(h: &str) -> String {
    let mut c: Vec<char> = h.chars().collect();
    if let Some(first) = c.first_mut() {
        *first = if *first == '0' { '1' } else { '0' };
    }
    c.into_iter().collect()
}
