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
    mgr.ensure_network()?;
    if let (Some(why), false) = (&mgr.quota_off, mgr.cfg.settings.allow_unlimited_disk) {
        return Err(format!(
            "{why}; to run apps without disk limits, set allow_unlimited_disk = true in /etc/fluxnode/appd.toml"
        ));
    }
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
    let opts = Options {
        ownership: Ownership::Shift {
            base: ID_BASE,
            size: ID_SIZE,
        },
        // No more than /var can spare beyond the node's reserve.
        max_bytes: spare_bytes(&mgr.cfg.state_dir).min(Options::default().max_bytes),
        ..Options::default()
    };
    let layers = {
        let _one = mgr.unpack_lock.lock().unwrap_or_else(|p| p.into_inner());
        fluxnode_apps::rootfs::prepare_layers(&mgr.store, image, &opts)
            .map_err(|e| e.to_string())?
    };
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
/// without following a link out of it, and only if it is a regular file:
/// a FIFO there would block the open (and the app's supervisor) forever.
fn read_passwd(rootfs: &Path) -> Option<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let open_at = |dir: libc::c_int, name: &std::ffi::CStr, flags: libc::c_int| {
        // SAFETY: a valid directory fd (or AT_FDCWD) and C string.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        // SAFETY: a fresh descriptor nothing else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let root = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()).ok()?;
    let root = open_at(libc::AT_FDCWD, &root, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let etc = open_at(root.as_raw_fd(), c"etc", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let f = open_at(
        etc.as_raw_fd(),
        c"passwd",
        libc::O_RDONLY | libc::O_NONBLOCK,
    )?;
    let f = std::fs::File::from(f);
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(f, 1 << 20), &mut s).ok()?;
    Some(s)
}

/// Bytes /var can give images beyond the node's reserve.
pub fn spare_bytes(var: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(var.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs fills the struct; a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    free.saturating_sub(fluxnode_apps::capacity::RESERVED.disk_mib << 20)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn passwd_is_read_only_as_a_regular_file_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        assert_eq!(read_passwd(&root), None);
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        assert_eq!(
            read_passwd(&root).as_deref(),
            Some("root:x:0:0::/:/bin/sh\n")
        );
        // A FIFO: refused at once, not an open that blocks forever.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        let fifo =
            std::ffi::CString::new(root.join("etc/passwd").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let t0 = std::time::Instant::now();
        assert_eq!(read_passwd(&root), None);
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        // Links out of the root are not followed.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::fs::write(t.path().join("secret"), "host\n").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("etc/passwd")).unwrap();
        assert_eq!(read_passwd(&root), None);
        std::fs::remove_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("etc")).unwrap();
        std::fs::write(t.path().join("passwd"), "host\n").unwrap();
        assert_eq!(read_passwd(&root), None);
    }
}
