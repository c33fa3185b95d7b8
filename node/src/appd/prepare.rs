//! Everything an app needs before the runtime starts it: its layers
//! unpacked, its root mounted, its volumes, quota, cgroup, network
//! namespace, and the bundle (`config.json`) for crun. [`cleanup`] undoes
//! what a run leaves.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use fluxnode_apps::network;
use fluxnode_apps::pull::Image;
use fluxnode_apps::runtime::{self, Bundle, IdRange};
use fluxnode_apps::unpack::{Options, Ownership};

use super::manager::{App, Manager, ID_BASE, ID_SIZE, PROJECT_BASE};

/// What [`prepare`] made.
#[derive(Debug)]
pub struct Prepared {
    /// The bundle directory (config.json).
    pub bundle: PathBuf,
    /// The app's address.
    pub address: Ipv4Addr,
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))
}

/// Owned by the app's root (host id [`ID_BASE`]).
fn own(p: &Path, mode: u32) -> Result<(), String> {
    std::os::unix::fs::chown(p, Some(ID_BASE), Some(ID_BASE))
        .map_err(|e| format!("chown {}: {e}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

fn write(p: &Path, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))
}

/// Prepares `app` to run `image`.
pub fn prepare(mgr: &Manager, app: &App, image: &Image) -> Result<Prepared, String> {
    let name = &app.spec.name;
    let index = app.state().record.index;
    let address = network::address(index).ok_or("no address for this app's number")?;
    let dir = app.dir();
    let (upper, work, rootfs, bundle, etc) = (
        dir.join("upper"),
        dir.join("work"),
        dir.join("rootfs"),
        dir.join("bundle"),
        dir.join("etc"),
    );
    for d in [&upper, &work, &rootfs, &bundle, &etc] {
        mkdir(d)?;
    }
    own(&upper, 0o755)?;
    let vols = mgr.dir.volumes(name);
    mkdir(&vols)?;
    let mut quota_dirs = vec![dir.to_path_buf(), upper.clone(), work.clone(), vols.clone()];
    for v in app.spec.volumes.keys() {
        let p = vols.join(v);
        mkdir(&p)?;
        own(&p, 0o755)?;
        quota_dirs.push(p);
    }
    if mgr.quota_off.is_none() {
        let project = PROJECT_BASE + index;
        for d in &quota_dirs {
            super::quota::assign(d, project).map_err(|e| e.to_string())?;
        }
        super::quota::set_limit(&mgr.cfg.state_dir, project, app.spec.resources.disk_mib)
            .map_err(|e| e.to_string())?;
    }

    // The layers (shared by apps, unpacked once) and the root.
    let store = fluxnode_apps::store::Store::open(&mgr.dir.store()).map_err(|e| e.to_string())?;
    let opts = Options {
        ownership: Ownership::Shift {
            base: ID_BASE,
            size: ID_SIZE,
        },
        ..Options::default()
    };
    let layers =
        fluxnode_apps::rootfs::prepare_layers(&store, image, &opts).map_err(|e| e.to_string())?;
    // A fresh work directory each time: overlayfs refuses one left busy.
    let _ = fluxnode_apps::store::remove_tree(&work);
    mkdir(&work)?;
    let options = fluxnode_apps::rootfs::overlay_options(&layers, &upper, &work)
        .map_err(|e| e.to_string())?;
    super::sys::unmount(&rootfs);
    super::sys::mount_overlay(&rootfs, &options)
        .map_err(|e| format!("mounting the overlay at {}: {e}", rootfs.display()))?;

    // /etc/hosts, hostname, resolv.conf.
    write(
        &etc.join("hosts"),
        &format!("127.0.0.1 localhost\n::1 localhost\n{address} {name}\n"),
    )?;
    write(&etc.join("hostname"), &format!("{name}\n"))?;
    let mut resolv = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::fs::File::open(&mgr.cfg.resolv_conf)
                .map_err(|e| format!("reading {}: {e}", mgr.cfg.resolv_conf.display()))?,
            64 * 1024,
        ),
        &mut resolv,
    );
    write(&etc.join("resolv.conf"), &resolv)?;

    // The cgroup: the app's limits on its own group (which keeps its
    // counters across restarts); crun makes `ctr` below it for the run.
    let cg = mgr.cgroup_dir(name);
    mkdir(&cg)?;
    let r = &app.spec.resources;
    let cg_write = |f: &str, v: String| {
        std::fs::write(cg.join(f), v).map_err(|e| format!("{}/{f}: {e}", cg.display()))
    };
    cg_write("cgroup.subtree_control", "+cpu +memory +pids +io".into())?;
    cg_write(
        "cpu.max",
        format!(
            "{} {}",
            r.cpu_milli() * runtime::CPU_PERIOD_US / 1000,
            runtime::CPU_PERIOD_US
        ),
    )?;
    cg_write("memory.max", (r.memory_mib << 20).to_string())?;
    cg_write("memory.swap.max", "0".into())?;
    cg_write("pids.max", r.pids.to_string())?;

    // The network namespace.
    let netns = {
        let _g = mgr.net_lock.lock().unwrap_or_else(|p| p.into_inner());
        mgr.cfg
            .tools
            .setup_app(name, index, address)
            .map_err(|e| e.to_string())?
    };

    // The bundle.
    let profile = std::fs::read_to_string(&mgr.cfg.seccomp_profile).map_err(|e| {
        format!(
            "reading the seccomp profile {}: {e}",
            mgr.cfg.seccomp_profile.display()
        )
    })?;
    let seccomp = fluxnode_apps::seccomp::for_app(&profile, &runtime::app_caps())
        .map_err(|e| e.to_string())?;
    let passwd = read_passwd(&rootfs);
    let spec = runtime::runtime_spec(&Bundle {
        spec: &app.spec,
        image: &image.config_json,
        rootfs: rootfs.clone(),
        ids: IdRange {
            host_base: ID_BASE,
            size: ID_SIZE,
        },
        volumes_dir: vols,
        netns: Some(netns),
        etc_dir: Some(etc),
        cgroup: format!("/{}/{name}/ctr", fluxnode_apps::cgroup::APPS_GROUP),
        seccomp: Some(seccomp),
        passwd: passwd.as_deref(),
    })
    .map_err(|e| e.to_string())?;
    runtime::write_bundle(&bundle, &spec)
        .map_err(|e| format!("writing {}/config.json: {e}", bundle.display()))?;
    super::supervise::delete(mgr, name);
    Ok(Prepared { bundle, address })
}

/// The image's /etc/passwd (bounded), read through the mounted root
/// without following a link out of it.
fn read_passwd(rootfs: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let etc = rootfs.join("etc");
    if std::fs::symlink_metadata(&etc)
        .ok()?
        .file_type()
        .is_symlink()
    {
        return None;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(etc.join("passwd"))
        .ok()?;
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, 1 << 20), &mut s).ok()?;
    Some(s)
}

/// Undoes a run: the container's runtime state, its root mount, network
/// namespace and veth.
pub fn cleanup(mgr: &Manager, app: &App) {
    let name = &app.spec.name;
    super::supervise::delete(mgr, name);
    super::sys::unmount(&app.dir().join("rootfs"));
    let index = app.state().record.index;
    let _g = mgr.net_lock.lock().unwrap_or_else(|p| p.into_inner());
    mgr.cfg.tools.teardown_app(name, index);
}
