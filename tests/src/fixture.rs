//! Builds what the boot tests share, once per test process: the static
//! appliance binaries (cargo, `+crt-static`, into
//! target/x86_64-unknown-linux-gnu/release), hal (dynamic, into
//! target/release, when it builds), and the test images under
//! target/fluxnode-tests/. A plain `cargo test --workspace` on a fresh clone
//! thus builds everything it boots.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use fluxnode_image::{BuildOptions, Built, SlotB};

/// SOURCE_DATE_EPOCH of the test images.
pub const EPOCH: u64 = 1_700_000_000;

/// The workspace root.
pub fn workspace() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Where the static binaries land.
pub fn static_dir() -> PathBuf {
    target_dir().join("x86_64-unknown-linux-gnu/release")
}

/// Where host (dynamic) release binaries land.
pub fn host_release_dir() -> PathBuf {
    target_dir().join("release")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS");
    c
}

/// The packages whose static binaries go into the image.
pub const STATIC_PACKAGES: &[&str] = &[
    "fluxnode-init",
    "fluxnode-netd",
    "fluxnode-ota",
    "fluxnode-tests",
];

/// Where the fixture keeps its own copies of the binaries: the target
/// directory is shared with other builds, and an image must be built from
/// inputs that do not change under it (two builds must be comparable).
pub fn staged_dir() -> PathBuf {
    target_dir().join("fluxnode-tests/bin")
}

/// The binaries the images take (`bin:` names of the specs).
pub const IMAGE_BINARIES: &[&str] = &[
    "fluxnode-init",
    "fluxnode-stage1",
    "fluxnode-modload",
    "fluxnode-netd",
    "fluxnode-ota",
    "fluxnode-probe",
    "fluxnode-apps-probe",
    "fluxnode-hal",
    "fluxnode",
];

fn stage() -> Result<(), String> {
    let dir = staged_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for name in IMAGE_BINARIES {
        let src = [static_dir(), host_release_dir()]
            .into_iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file());
        if let Some(src) = src {
            std::fs::copy(&src, dir.join(name))
                .map_err(|e| format!("copying {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

/// Builds the static binaries (and hal, best effort) and stages them. Once per process.
pub fn binaries() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var_os("FLUXNODE_TESTS_PREBUILT").is_some() {
            return stage();
        }
        let mut c = cargo();
        c.args(["build", "--release", "--target", "x86_64-unknown-linux-gnu"])
            .env("RUSTFLAGS", "-C target-feature=+crt-static");
        for p in STATIC_PACKAGES {
            c.args(["-p", p]);
        }
        eprintln!(
            "fixture: building the static appliance binaries ({})",
            STATIC_PACKAGES.join(", ")
        );
        let st = c.status().map_err(|e| format!("running cargo: {e}"))?;
        if !st.success() {
            return Err(format!("building the static binaries failed ({st})"));
        }
        eprintln!("fixture: building fluxnode-hal and the node agent (dynamic, they link libtss2)");
        let st = cargo()
            .args([
                "build",
                "--release",
                "-p",
                "fluxnode-hal",
                "-p",
                "fluxnode-node",
            ])
            .status()
            .map_err(|e| format!("running cargo: {e}"))?;
        if !st.success() {
            return Err(format!(
                "building fluxnode-hal and fluxnode-node failed ({st}); they need libtss2-dev"
            ));
        }
        stage()
    })
    .clone()
}

/// Options for a test image named `name` under target/fluxnode-tests/images.
pub fn options(name: &str, spec: &str) -> BuildOptions {
    BuildOptions {
        spec: workspace().join("image/spec").join(spec),
        out: target_dir().join("fluxnode-tests/images").join(name),
        bin_dirs: vec![staged_dir()],
        cache_dir: target_dir().join("fluxnode-image/cache"),
        source_date_epoch: EPOCH,
        kernel_deb: None,
        slot_a_tries: None,
        slot_b: None,
        extra_cmdline: String::new(),
    }
}

/// Builds an image with a progress line per step on stderr.
pub fn build(opts: &BuildOptions) -> Result<Built, String> {
    // Builds share the kernel cache: one at a time.
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    fluxnode_image::build(opts, &mut |l| eprintln!("fixture: image {name}: {l}"))
        .map_err(|e| format!("building image {name}: {e}"))
}

/// The "main" test image: slot a unblessed (`+3`), slot b newer but broken
/// (`+3`, wrong root hash). One boot sequence of it shows the rollback
/// (b fails three times), then a boot of a, its blessing, and every
/// in-guest fact; a second boot of the same disk shows persistence.
pub fn main_image() -> Result<Built, String> {
    static IMG: OnceLock<Result<Built, String>> = OnceLock::new();
    IMG.get_or_init(|| {
        binaries()?;
        let mut o = options("main", "test.toml");
        o.slot_a_tries = Some(3);
        o.slot_b = Some(SlotB {
            version: "0.2.0".into(),
            tries: Some(3),
            corrupt_root_hash: true,
        });
        build(&o)
    })
    .clone()
}

/// The "two-slot" test image: slot a blessed, slot b newer (0.2.0, `+3`)
/// with its true root hash, so b boots first and reaches stage 2 (the same
/// root as a). The run-time verity test corrupts a block of b's root that
/// only a late service reads.
pub fn two_slot_image() -> Result<Built, String> {
    static IMG: OnceLock<Result<Built, String>> = OnceLock::new();
    IMG.get_or_init(|| {
        binaries()?;
        let mut o = options("two-slot", "test.toml");
        o.slot_b = Some(SlotB {
            version: "0.2.0".into(),
            tries: Some(3),
            corrupt_root_hash: false,
        });
        build(&o)
    })
    .clone()
}

/// The apps test image (image/spec/apps-test.toml): the test image, the
/// test apps' specs and their in-guest driver; slot a only, blessed.
pub fn apps_image() -> Result<Built, String> {
    static IMG: OnceLock<Result<Built, String>> = OnceLock::new();
    IMG.get_or_init(|| {
        binaries()?;
        build(&options("apps", "apps-test.toml"))
    })
    .clone()
}

/// The "plain" test image: slot a only, blessed.
pub fn plain_image() -> Result<Built, String> {
    static IMG: OnceLock<Result<Built, String>> = OnceLock::new();
    IMG.get_or_init(|| {
        binaries()?;
        build(&options("plain", "test.toml"))
    })
    .clone()
}

/// Where `cargo xtask demo` writes its image: `fluxnode.img`, with
/// `manifest.json` and the payloads next to it (the README's commands use
/// this path).
pub fn demo_dir() -> PathBuf {
    target_dir().join("fluxnode-demo/image")
}

/// The demo's update repository: publisher keys and root metadata v1
/// under target/fluxnode-demo/tuf (`keys/`, `repo/`), made on first use
/// and kept: the demo image bakes this root, and the same root keeps two
/// builds of the image bit-identical.
pub fn demo_tuf() -> Result<PathBuf, String> {
    use fluxnode_image::publish::roles::{self, Expiry, Repo};
    use fluxnode_image::publish::trust::{self, InitOptions};
    static DONE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = target_dir().join("fluxnode-demo/tuf");
        let repo = Repo::new(dir.join("repo"));
        if repo.latest_root_version() == 0 {
            let _ = std::fs::remove_dir_all(&dir);
            trust::init_repo(
                &repo,
                Some(&dir.join("keys")),
                &InitOptions {
                    threshold: 1,
                    keys_per_role: 1,
                    expiry: Expiry::from_now(roles::now()),
                },
            )
            .map_err(|e| format!("making the demo's TUF repository in {}: {e}", dir.display()))?;
        }
        Ok(dir)
    })
    .clone()
}

/// The spec the demo builds: image/spec/`spec` plus the demo's update
/// repository (its root baked, image/services/demo/ota.toml as the update
/// client's settings) and its sample app, at `version` when given.
fn demo_spec(spec: &str, version: Option<&str>) -> Result<PathBuf, String> {
    let tuf = demo_tuf()?;
    let mut text =
        format!(
        "# Written by the demo (tests/src/fixture.rs): {spec} and the demo's update repository.\n\
         base = {:?}\n\
         tuf_root = \"host:{}\"\n",
        workspace().join("image/spec").join(spec).display().to_string(),
        tuf.join("repo/metadata/1.root.json").display()
    );
    if let Some(v) = version {
        text.push_str(&format!("version = {v:?}\n"));
    }
    text.push_str(&format!(
        "[[file]]\nsrc = \"host:{}\"\ndst = \"/etc/fluxnode/ota.toml\"\nmode = 0o644\n",
        workspace().join("image/services/demo/ota.toml").display()
    ));
    // The sample app, deployed by the app daemon on the first boot, and
    // its registry's settings (plain HTTP at 10.0.2.100:5000, which the
    // demo forwards to a docker-registry on the host).
    for (src, dst) in [
        (
            "image/services/demo/apps/hello.toml",
            "/etc/fluxnode/apps.d/hello.toml",
        ),
        ("image/services/demo/appd.toml", "/etc/fluxnode/appd.toml"),
    ] {
        text.push_str(&format!(
            "[[file]]\nsrc = \"host:{}\"\ndst = \"{dst}\"\nmode = 0o644\n",
            workspace().join(src).display()
        ));
    }
    let p = target_dir()
        .join("fluxnode-demo/spec")
        .join(format!("{}-{spec}", version.unwrap_or("image")));
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

/// The demo appliance image, built exactly as `cargo xtask demo` builds it
/// (the static binaries, then image/spec/`spec` with the demo's update
/// repository, into [`demo_dir`] with [`EPOCH`]): the demo and the
/// README's test call this one function, so they cannot drift apart. Two
/// calls with the same inputs give a bit-identical image. Each call builds
/// (the build itself reuses its kernel cache); a test that wants it once
/// keeps the result.
pub fn demo_image(spec: &str) -> Result<Built, String> {
    binaries()?;
    let mut opts = options("demo", spec);
    opts.spec = demo_spec(spec, None)?;
    opts.out = demo_dir();
    build(&opts)
}

/// The demo's next version: [`demo_image`]'s spec at `version`, into
/// target/fluxnode-demo/image-`version` (what the demo publishes).
pub fn demo_update_image(spec: &str, version: &str) -> Result<Built, String> {
    binaries()?;
    let mut opts = options("demo", spec);
    opts.spec = demo_spec(spec, Some(version))?;
    opts.out = target_dir().join(format!("fluxnode-demo/image-{version}"));
    build(&opts)
}

/// A fresh copy of `image` in `dir` (boots write to their disk).
pub fn copy_disk(image: &Path, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let dst = dir.join("disk.img");
    // cp --sparse keeps the 400 MiB image's holes.
    let st = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(image)
        .arg(&dst)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if !st.success() {
        return Err(format!("copying {} failed", image.display()));
    }
    Ok(dst)
}

/// Makes `disk` `extra` bytes longer (sparse: nothing written), as if
/// the image had been flashed onto a larger disk; stage 1 grows /var into
/// the room on the first boot.
pub fn grow_disk(disk: &Path, extra: u64) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(|e| format!("opening {}: {e}", disk.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", disk.display()))?
        .len();
    f.set_len(len + extra)
        .map_err(|e| format!("growing {}: {e}", disk.display()))
}

/// A run directory for one boot under target/fluxnode-tests/runs (emptied).
pub fn run_dir(name: &str) -> PathBuf {
    let d = target_dir().join("fluxnode-tests/runs").join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}
