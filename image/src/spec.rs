//! The TOML image spec: what goes into an image (version, sizes, kernel
//! modules, files and services). A spec may name a `base` spec and add to it,
//! which is how the test variant extends the default one.
//!
//! ```toml
//! base = "default.toml"          # optional, relative to this file
//! version = "0.1.0"              # IMAGE_VERSION in .osrel and the manifest
//! compatible = "fluxnode-x86_64-uefi-ab1"  # what updates must be built for
//! security_version = 1           # fluxnode.secver= (anti-rollback)
//! tuf_root = "spec:keys/root.json"  # optional: the update repository's trusted root
//! cmdline = "console=ttyS0,115200 quiet panic=5"
//! [kernel]
//! package = "linux-image-amd64"  # resolved to the versioned package
//! initrd_modules = ["virtio_blk", "dm-verity", "erofs", "ext4"]
//! late_modules = ["vfat", "button"]
//! [sizes]
//! esp_mib = 64
//! root_mib = 128
//! data_mib = 64
//! [[file]]
//! src = "bin:fluxnode-init"      # bin:NAME | host:/abs/path | spec:relative/path
//! dst = "/sbin/init"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{io, ImageError, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    base: Option<String>,
    version: Option<String>,
    cmdline: Option<String>,
    compatible: Option<String>,
    security_version: Option<u64>,
    tuf_root: Option<String>,
    kernel: Option<RawKernel>,
    sizes: Option<RawSizes>,
    #[serde(default)]
    file: Vec<RawFile>,
    #[serde(default)]
    link: Vec<RawLink>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    path: String,
    target: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    package: Option<String>,
    #[serde(default)]
    initrd_modules: Vec<String>,
    #[serde(default)]
    initrd_drivers: Vec<String>,
    #[serde(default)]
    initrd_fallback_drivers: Vec<String>,
    #[serde(default)]
    late_modules: Vec<String>,
    strip_module_signatures: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSizes {
    esp_mib: Option<u64>,
    root_mib: Option<u64>,
    data_mib: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    src: String,
    dst: String,
    mode: Option<u32>,
    #[serde(default)]
    optional: bool,
}

/// Where a file of the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A release binary of this workspace, looked up in the binary directory.
    Bin(String),
    /// A file of the build host (its shared libraries come along).
    Host(PathBuf),
    /// A file shipped with the spec (path already made absolute).
    Spec(PathBuf),
}

/// One file to put into the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Where it comes from.
    pub src: Source,
    /// Absolute path in the image.
    pub dst: String,
    /// Permission bits.
    pub mode: u32,
    /// Skip with a warning when the source is missing.
    pub optional: bool,
}

/// Partition sizes in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// The FAT32 ESP.
    pub esp_mib: u64,
    /// Each root slot (erofs + verity tree).
    pub root_mib: u64,
    /// The data partition as laid out in the image (grown on the device later).
    pub data_mib: u64,
}

/// `compatible` when a spec names none: x86-64, UEFI, the A/B layout of
/// `disk.rs` (format 1 of that layout).
pub const DEFAULT_COMPATIBLE: &str = "fluxnode-x86_64-uefi-ab1";

/// Where [`Spec::tuf_root`] goes in the root filesystem.
pub const TUF_ROOT_PATH: &str = "/usr/lib/fluxnode/tuf/root.json";

/// Where the image's identity (version, compatible, security version) goes
/// in the root filesystem.
pub const IMAGE_JSON_PATH: &str = "/usr/lib/fluxnode/image.json";

/// A resolved image spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The spec file it was read from.
    pub path: PathBuf,
    /// IMAGE_VERSION.
    pub version: String,
    /// Kernel command line (slot and verity keys are appended by the builder).
    pub cmdline: String,
    /// The hardware and partition layout this image is built for: an update
    /// manifest names it and a node refuses any other (`compatible`,
    /// default [`DEFAULT_COMPATIBLE`]).
    pub compatible: String,
    /// Anti-rollback generation (`security_version`, default 1): on every
    /// UKI's command line as `fluxnode.secver=`, in `/usr/lib/fluxnode/image.json`
    /// and in the update manifest.
    pub security_version: u64,
    /// The update repository's trusted TUF root metadata to bake into the
    /// root filesystem at [`TUF_ROOT_PATH`] (`tuf_root = "spec:REL"` or
    /// `"host:/ABS"`); checked at build time to be a root that its own
    /// root keys signed.
    pub tuf_root: Option<PathBuf>,
    /// The kernel's Debian meta-package (or a versioned package).
    pub kernel_package: String,
    /// Modules stage 1 always loads (dependencies are resolved, not listed).
    pub initrd_modules: Vec<String>,
    /// Disk drivers in the initramfs that stage 1 loads only when a present
    /// device matches one of their modules.alias patterns.
    pub initrd_drivers: Vec<String>,
    /// Drivers tried only when the root partition has not appeared shortly
    /// after the first group loaded (slow probes, e.g. AHCI's port scan).
    pub initrd_fallback_drivers: Vec<String>,
    /// Modules loaded after switch_root (from the root filesystem).
    pub late_modules: Vec<String>,
    /// Remove the modules' appended signatures (see default.toml for why).
    pub strip_module_signatures: bool,
    /// Partition sizes.
    pub sizes: Sizes,
    /// Files of the root filesystem.
    pub files: Vec<FileEntry>,
    /// Symbolic links (path, target) of the root filesystem.
    pub links: Vec<(String, String)>,
}

impl Spec {
    /// Reads a spec and its bases.
    pub fn load(path: &Path) -> Result<Spec> {
        let mut chain = Vec::new();
        let mut next = Some(path.to_path_buf());
        while let Some(p) = next.take() {
            if chain.len() > 8 {
                return Err(ImageError::Spec {
                    path: path.into(),
                    msg: "`base` chain deeper than 8 (a loop?)".into(),
                });
            }
            let text = std::fs::read_to_string(&p).map_err(io("reading image spec", &p))?;
            let raw = parse_raw(&text).map_err(|msg| ImageError::Spec {
                path: p.clone(),
                msg,
            })?;
            if let Some(b) = &raw.base {
                next = Some(p.parent().unwrap_or(Path::new(".")).join(b));
            }
            chain.push((p, raw));
        }
        chain.reverse();
        let mut version = None;
        let mut cmdline = None;
        let mut compatible = None;
        let mut security_version = None;
        let mut tuf_root = None;
        let mut package = None;
        let mut initrd = Vec::new();
        let mut drivers = Vec::new();
        let mut fallback = Vec::new();
        let mut strip = None;
        let mut late = Vec::new();
        let (mut esp, mut root, mut data) = (None, None, None);
        let mut files: Vec<FileEntry> = Vec::new();
        let mut links: Vec<(String, String)> = Vec::new();
        for (p, raw) in chain {
            version = raw.version.or(version);
            cmdline = raw.cmdline.or(cmdline);
            compatible = raw.compatible.or(compatible);
            security_version = raw.security_version.or(security_version);
            let dir = p.parent().unwrap_or(Path::new(".")).to_path_buf();
            if let Some(t) = raw.tuf_root {
                tuf_root = Some(resolve_source_path(&p, &dir, "tuf_root", &t)?);
            }
            if let Some(k) = raw.kernel {
                package = k.package.or(package);
                initrd.extend(k.initrd_modules);
                drivers.extend(k.initrd_drivers);
                fallback.extend(k.initrd_fallback_drivers);
                strip = k.strip_module_signatures.or(strip);
                late.extend(k.late_modules);
            }
            if let Some(s) = raw.sizes {
                esp = s.esp_mib.or(esp);
                root = s.root_mib.or(root);
                data = s.data_mib.or(data);
            }
            for f in raw.file {
                let entry = resolve_file(&p, &dir, f)?;
                files.retain(|e| e.dst != entry.dst);
                files.push(entry);
            }
            for l in raw.link {
                if !l.path.starts_with('/')
                    || l.path.split('/').any(|c| c == "..")
                    || l.target.is_empty()
                {
                    return Err(ImageError::Spec { path: p.clone(), msg: format!("link {:?} -> {:?}: path must be absolute without `..`, target non-empty", l.path, l.target) });
                }
                links.retain(|(path, _)| *path != l.path);
                links.push((l.path, l.target));
            }
        }
        let need = |v: Option<String>, key: &str| {
            v.ok_or_else(|| ImageError::Spec {
                path: path.into(),
                msg: format!("missing `{key}`"),
            })
        };
        let spec = Spec {
            path: path.to_path_buf(),
            version: need(version, "version")?,
            cmdline: cmdline.unwrap_or_default(),
            compatible: compatible.unwrap_or_else(|| DEFAULT_COMPATIBLE.into()),
            security_version: security_version.unwrap_or(1),
            tuf_root,
            kernel_package: package.unwrap_or_else(|| "linux-image-amd64".into()),
            initrd_modules: initrd,
            initrd_drivers: drivers,
            initrd_fallback_drivers: fallback,
            late_modules: late,
            strip_module_signatures: strip.unwrap_or(false),
            sizes: Sizes {
                esp_mib: esp.unwrap_or(64),
                root_mib: root.unwrap_or(128),
                data_mib: data.unwrap_or(64),
            },
            files,
            links,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| {
            Err(ImageError::Spec {
                path: self.path.clone(),
                msg,
            })
        };
        if self.version.is_empty()
            || !self
                .version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".~_".contains(c))
        {
            return bad(format!(
                "version {:?} must be non-empty and use only letters, digits, '.', '~', '_'",
                self.version
            ));
        }
        if self.compatible.is_empty()
            || self.compatible.len() > 128
            || !self.compatible.bytes().all(|b| b.is_ascii_graphic())
        {
            return bad(format!(
                "compatible {:?} must be 1 to 128 printable ASCII characters without spaces",
                self.compatible
            ));
        }
        if self.sizes.esp_mib < 40 {
            return bad(format!(
                "sizes.esp_mib = {} is below FAT32's minimum here (40 MiB)",
                self.sizes.esp_mib
            ));
        }
        if self.sizes.root_mib == 0 || self.sizes.data_mib < 16 {
            return bad("sizes.root_mib must be > 0 and sizes.data_mib ≥ 16".into());
        }
        for (path, what) in [(IMAGE_JSON_PATH, "the builder writes it")]
            .into_iter()
            .chain(
                self.tuf_root
                    .as_ref()
                    .map(|_| (TUF_ROOT_PATH, "`tuf_root` puts the trusted root there")),
            )
        {
            if self.files.iter().any(|f| f.dst == path) || self.links.iter().any(|(p, _)| p == path)
            {
                return bad(format!("a file or link installs {path}, but {what}"));
            }
        }
        if !self.files.iter().any(|f| f.dst == "/sbin/init")
            && !self.links.iter().any(|(p, _)| p == "/sbin/init")
        {
            return bad("no file installs /sbin/init (stage 2 of fluxnode-init)".into());
        }
        Ok(())
    }
}

/// `spec:RELATIVE` (next to the spec) or `host:/ABSOLUTE` for a key that
/// names one file.
fn resolve_source_path(spec: &Path, dir: &Path, key: &str, v: &str) -> Result<PathBuf> {
    match v.split_once(':') {
        Some(("spec", p)) if !p.is_empty() => Ok(dir.join(p)),
        Some(("host", p)) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => Err(ImageError::Spec {
            path: spec.into(),
            msg: format!("{key} = {v:?}: use spec:RELATIVE/PATH or host:/ABS/PATH"),
        }),
    }
}

fn parse_raw(text: &str) -> std::result::Result<RawSpec, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
}

fn resolve_file(spec: &Path, dir: &Path, f: RawFile) -> Result<FileEntry> {
    let bad = |msg: String| ImageError::Spec {
        path: spec.into(),
        msg,
    };
    if !f.dst.starts_with('/') || f.dst.split('/').any(|c| c == "..") || f.dst.ends_with('/') {
        return Err(bad(format!(
            "file dst {:?} must be an absolute path to a file, without `..`",
            f.dst
        )));
    }
    let (src, default_mode) = match f.src.split_once(':') {
        Some(("bin", name)) if !name.is_empty() && !name.contains('/') => {
            (Source::Bin(name.into()), 0o755)
        }
        Some(("host", p)) if p.starts_with('/') => (Source::Host(p.into()), 0o755),
        Some(("spec", p)) if !p.is_empty() => (Source::Spec(dir.join(p)), 0o644),
        _ => {
            return Err(bad(format!(
                "file src {:?}: use bin:NAME, host:/ABS/PATH or spec:RELATIVE/PATH",
                f.src
            )))
        }
    };
    let mode = f.mode.unwrap_or(default_mode);
    if mode > 0o7777 {
        return Err(bad(format!(
            "file {}: mode {mode:o} is not a permission mode",
            f.dst
        )));
    }
    Ok(FileEntry {
        src,
        dst: f.dst,
        mode,
        optional: f.optional,
    })
}

/// Parses a spec text without bases (for the fuzz target and tests).
pub fn parse_for_fuzz(text: &str) -> bool {
    parse_raw(text).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn base_and_override() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.toml",
            "version = \"1.0\"\ncmdline = \"quiet\"\n[kernel]\ninitrd_modules = [\"erofs\"]\n[[file]]\nsrc = \"bin:fluxnode-init\"\ndst = \"/sbin/init\"\n",
        );
        let child = write(
            d.path(),
            "child.toml",
            "base = \"base.toml\"\nversion = \"1.1\"\n[kernel]\ninitrd_modules = [\"ext4\"]\n[sizes]\nroot_mib = 64\n[[file]]\nsrc = \"spec:x.toml\"\ndst = \"/etc/x.toml\"\n",
        );
        let s = Spec::load(&child).unwrap();
        assert_eq!(s.version, "1.1");
        assert_eq!(s.cmdline, "quiet");
        assert_eq!(s.initrd_modules, vec!["erofs", "ext4"]);
        assert_eq!(s.sizes.root_mib, 64);
        assert_eq!(s.files.len(), 2);
        assert_eq!(s.files[1].src, Source::Spec(d.path().join("x.toml")));
        assert_eq!(s.files[1].mode, 0o644);
    }

    #[test]
    fn rejects_bad_specs() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            "version = \"1\"\n", // no /sbin/init
            "version = \"1 2\"\n[[file]]\nsrc=\"bin:a\"\ndst=\"/sbin/init\"\n", // bad version
            "version = \"1\"\n[[file]]\nsrc=\"nope:a\"\ndst=\"/sbin/init\"\n", // bad source
            "version = \"1\"\n[[file]]\nsrc=\"bin:a\"\ndst=\"../x\"\n", // bad dst
            "version = \"1\"\nunknown = 1\n", // unknown key
            "version = \"1\"\n[sizes]\nesp_mib = 1\n[[file]]\nsrc=\"bin:a\"\ndst=\"/sbin/init\"\n", // tiny esp
            "base = \"loop.toml\"\nversion = \"1\"\n", // base loop
        ];
        for (i, text) in cases.iter().enumerate() {
            let p = write(d.path(), "loop.toml", text);
            let err = Spec::load(&p).expect_err(&format!("case {i} should fail"));
            assert!(err.to_string().contains("image spec"), "case {i}: {err}");
        }
    }

    #[test]
    fn nasty_inputs_do_not_panic() {
        for t in [
            "",
            "[[file]]",
            "base = 1",
            "version = [",
            "\u{0}",
            "[sizes]\nesp_mib = -1",
            "[[file]]\nsrc=\"bin:\"\ndst=\"/\"",
        ] {
            let _ = parse_for_fuzz(t);
        }
    }

    #[test]
    fn compatible_security_version_and_tuf_root() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.toml",
            "version = \"1.0\"\nsecurity_version = 3\ntuf_root = \"spec:keys/root.json\"\n[[file]]\nsrc = \"bin:fluxnode-init\"\ndst = \"/sbin/init\"\n",
        );
        let s = Spec::load(&d.path().join("base.toml")).unwrap();
        assert_eq!(s.compatible, DEFAULT_COMPATIBLE);
        assert_eq!(s.security_version, 3);
        assert_eq!(s.tuf_root, Some(d.path().join("keys/root.json")));
        let child = write(
            d.path(),
            "child.toml",
            "base = \"base.toml\"\ncompatible = \"acme-box-v2\"\ntuf_root = \"host:/etc/acme/root.json\"\n",
        );
        let s = Spec::load(&child).unwrap();
        assert_eq!(s.compatible, "acme-box-v2");
        assert_eq!(s.security_version, 3, "inherited from the base");
        assert_eq!(s.tuf_root, Some(PathBuf::from("/etc/acme/root.json")));
        let plain = write(
            d.path(),
            "plain.toml",
            "version = \"1\"\n[[file]]\nsrc = \"bin:a\"\ndst = \"/sbin/init\"\n",
        );
        let s = Spec::load(&plain).unwrap();
        assert_eq!((s.security_version, s.tuf_root), (1, None));
        for (i, bad) in [
            "base = \"base.toml\"\ncompatible = \"two words\"\n",
            "base = \"base.toml\"\ncompatible = \"\"\n",
            "base = \"base.toml\"\ntuf_root = \"keys/root.json\"\n",
            "base = \"base.toml\"\nsecurity_version = -1\n",
            "base = \"base.toml\"\n[[file]]\nsrc = \"spec:x\"\ndst = \"/usr/lib/fluxnode/tuf/root.json\"\n",
            "base = \"base.toml\"\n[[file]]\nsrc = \"spec:x\"\ndst = \"/usr/lib/fluxnode/image.json\"\n",
        ]
        .iter()
        .enumerate()
        {
            let p = write(d.path(), "bad.toml", bad);
            let err = Spec::load(&p).expect_err(&format!("case {i} should fail"));
            assert!(err.to_string().contains("image spec"), "case {i}: {err}");
        }
    }

    #[test]
    fn repository_specs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("spec");
        for name in ["default.toml", "test.toml", "bench-noarp.toml"] {
            let s = Spec::load(&dir.join(name)).unwrap();
            assert!(s.initrd_modules.iter().any(|m| m == "dm-verity"), "{name}");
        }
    }
}
