//! The OCI runtime spec (`config.json`) an app runs under, from its app
//! spec and its image's config: what crun is told to build.
//!
//! The isolation, point by point against Docker's defaults (docs/APPS.md
//! has the table):
//! - namespaces: user, mount, pid, ipc, uts, network, cgroup. Docker
//!   leaves out the user namespace by default. Here container root is an
//!   unprivileged range of host ids;
//! - `no_new_privs`, which Docker leaves off unless asked;
//! - capabilities: Docker's default 14, bounding, effective and
//!   permitted for root. A non-root user keeps them in the bounding set
//!   only, and nothing is inheritable or ambient;
//! - seccomp: Debian's default profile, cut for those capabilities
//!   ([`crate::seccomp`]);
//! - masked and read-only /proc and /sys paths: Docker's lists;
//! - Docker's default mounts (proc, a tmpfs /dev, devpts, mqueue, a
//!   read-only sysfs and cgroup, a 64 MiB /dev/shm);
//! - resources through cgroup v2: cpu.max, memory.max with no swap,
//!   pids.max, io.weight.
//!
//! The output is [`oci_spec::runtime::Spec`]. Here it is built as JSON in
//! the spec's own field names and read through oci-spec's types, which
//! refuse any unknown capability, namespace or action.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{LinuxSeccomp, Spec};
use serde_json::json;

use crate::spec::AppSpec;

/// Docker's default capabilities (moby's `oci/caps/defaults.go`).
pub const DOCKER_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Docker's masked paths: bind-mounted over with nothing.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// cpu.max's period, µs: a core's worth of quota per period is 100000.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Why a runtime spec cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// Neither the app spec nor the image says what to run.
    #[error("app {0:?}: the image has no entrypoint or cmd, and the spec gives no command; add `command = [...]` to the spec")]
    NoCommand(String),
    /// The image's `User` names a user this node cannot resolve.
    #[error("app {app:?}: the image runs as user {user:?}, which is not in the image's /etc/passwd; give a numeric uid[:gid]")]
    User {
        /// The app.
        app: String,
        /// The user as written in the image.
        user: String,
    },
    /// oci-spec refused what was built (a bug, or a hostile value).
    #[error("app {app:?}: the runtime spec is not valid: {why}")]
    Invalid {
        /// The app.
        app: String,
        /// What oci-spec said.
        why: String,
    },
}

/// The host ids an app's container ids map onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// Host id of container id 0.
    pub host_base: u32,
    /// How many ids.
    pub size: u32,
}

/// Everything the node decided about one app's container.
#[derive(Debug)]
pub struct Bundle<'a> {
    /// The app.
    pub spec: &'a AppSpec,
    /// Its image's config.
    pub image: &'a ImageConfiguration,
    /// The mounted root (the overlay of the layers and the app's upper dir).
    pub rootfs: PathBuf,
    /// The app's id range.
    pub ids: IdRange,
    /// Where the app's volumes live: `DIR/NAME` is volume NAME.
    pub volumes_dir: PathBuf,
    /// A prepared network namespace to join (veth set up by the node);
    /// `None` makes a new, empty one.
    pub netns: Option<PathBuf>,
    /// A directory with `hosts`, `hostname` and `resolv.conf` to bind
    /// read-only over the image's.
    pub etc_dir: Option<PathBuf>,
    /// The cgroup, relative to the cgroup2 root.
    pub cgroup: String,
    /// The seccomp filter, from [`crate::seccomp::for_app`].
    pub seccomp: Option<LinuxSeccomp>,
    /// `/etc/passwd` of the image, to resolve a named `User`.
    pub passwd: Option<&'a str>,
}

/// The argv, as Docker resolves it: the spec's command (and args), or the
/// image's entrypoint followed by the spec's args or else the image's cmd.
pub fn argv(spec: &AppSpec, image: &ImageConfiguration) -> Result<Vec<String>, RuntimeError> {
    let cfg = image.config().as_ref();
    let entrypoint: Vec<String> = cfg.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd: Vec<String> = cfg.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let v: Vec<String> = if !spec.command.is_empty() {
        spec.command.iter().chain(&spec.args).cloned().collect()
    } else if !spec.args.is_empty() {
        entrypoint
            .into_iter()
            .chain(spec.args.iter().cloned())
            .collect()
    } else {
        entrypoint.into_iter().chain(cmd).collect()
    };
    if v.is_empty() {
        return Err(RuntimeError::NoCommand(spec.name.clone()));
    }
    Ok(v)
}

/// `uid[:gid]` or a name looked up in the image's passwd.
fn user(b: &Bundle<'_>) -> Result<(u32, u32), RuntimeError> {
    let raw = b
        .image
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let bad = || RuntimeError::User {
        app: b.spec.name.clone(),
        user: raw.clone(),
    };
    if raw.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = raw
        .split_once(':')
        .map(|(u, g)| (u, Some(g)))
        .unwrap_or((raw.as_str(), None));
    let lookup = |name: &str| -> Option<(u32, u32)> {
        b.passwd?.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    };
    // As Docker: a numeric uid takes its primary group from the image's
    // passwd when it is there, else group 0.
    let by_uid = |uid: u32| -> u32 {
        b.passwd
            .and_then(|p| {
                p.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
                        .then(|| f[3].parse().ok())?
                })
            })
            .unwrap_or(0)
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(n) => (n, by_uid(n)),
        Err(_) => lookup(u).ok_or_else(bad)?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => g.parse::<u32>().map_err(|_| bad())?,
    };
    if uid >= b.ids.size || gid >= b.ids.size {
        return Err(bad());
    }
    Ok((uid, gid))
}

/// Builds the runtime spec.
pub fn runtime_spec(b: &Bundle<'_>) -> Result<Spec, RuntimeError> {
    let s = b.spec;
    let args = argv(s, b.image)?;
    let (uid, gid) = user(b)?;
    let cfg = b.image.config().as_ref();
    let mut env: Vec<String> = cfg.and_then(|c| c.env().clone()).unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    for (k, v) in &s.env {
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    env.retain(|e| !e.starts_with("HOSTNAME="));
    env.push(format!("HOSTNAME={}", s.name));
    let cwd = cfg
        .and_then(|c| c.working_dir().clone())
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    let caps: Vec<String> = DOCKER_CAPS.iter().map(|c| format!("CAP_{c}")).collect();
    let effective = if uid == 0 { caps.clone() } else { Vec::new() };

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (name, target) in &s.volumes {
        mounts.push(json!({
            "destination": target,
            "type": "bind",
            "source": b.volumes_dir.join(name),
            "options": ["rbind", "rw", "nosuid", "nodev"],
        }));
    }
    if let Some(etc) = &b.etc_dir {
        for f in ["hosts", "hostname", "resolv.conf"] {
            mounts.push(json!({
                "destination": format!("/etc/{f}"),
                "type": "bind",
                "source": etc.join(f),
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
            }));
        }
    }

    let mut namespaces = vec![
        json!({"type": "user"}),
        json!({"type": "mount"}),
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "cgroup"}),
    ];
    namespaces.push(match &b.netns {
        Some(p) => json!({"type": "network", "path": p}),
        None => json!({"type": "network"}),
    });
    let r = &s.resources;
    let memory = r.memory_mib * 1024 * 1024;
    let mut linux = json!({
        "namespaces": namespaces,
        "uidMappings": [{"containerID": 0, "hostID": b.ids.host_base, "size": b.ids.size}],
        "gidMappings": [{"containerID": 0, "hostID": b.ids.host_base, "size": b.ids.size}],
        "cgroupsPath": b.cgroup,
        "resources": {
            "devices": [{"allow": false, "access": "rwm"}],
            // memory+swap equal to memory: memory.swap.max is 0.
            "memory": {"limit": memory, "swap": memory},
            "cpu": {"quota": r.cpu_milli() * CPU_PERIOD_US / 1000, "period": CPU_PERIOD_US},
            "pids": {"limit": r.pids},
            "blockIO": {"weight": 100},
        },
        "maskedPaths": MASKED_PATHS,
        "readonlyPaths": READONLY_PATHS,
        // No `sysctl` here: the app's network namespace belongs to the
        // node's user namespace (the node wires it before the app starts),
        // so the app's root may not write its net.* settings; the node sets
        // net.ipv4.ip_unprivileged_port_start=0 (as Docker does) itself.
    });
    if let Some(f) = &b.seccomp {
        linux["seccomp"] = serde_json::to_value(f).map_err(|e| RuntimeError::Invalid {
            app: s.name.clone(),
            why: e.to_string(),
        })?;
    }
    let doc = json!({
        "ociVersion": "1.0.2",
        "root": {"path": b.rootfs, "readonly": false},
        "hostname": s.name,
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": caps,
                "effective": effective,
                "permitted": effective,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536}],
            // Apps go before the node's own daemons when the machine (not
            // the app's cgroup) runs out of memory.
            "oomScoreAdj": 500,
        },
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(doc).map_err(|e| RuntimeError::Invalid {
        app: s.name.clone(),
        why: e.to_string(),
    })
}

/// The capabilities an app holds (for [`crate::seccomp::for_app`]).
pub fn app_caps() -> BTreeSet<String> {
    DOCKER_CAPS.iter().map(|c| format!("CAP_{c}")).collect()
}

/// Writes `config.json` into a bundle directory, atomically.
pub fn write_bundle(dir: &Path, spec: &Spec) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    let tmp = dir.join("config.json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, dir.join("config.json"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn image(extra: serde_json::Value) -> ImageConfiguration {
        let mut v = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Entrypoint": ["/bin/busybox"], "Cmd": ["httpd", "-f"], "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/www"}});
        if let serde_json::Value::Object(m) = extra {
            for (k, val) in m {
                v["config"][k] = val;
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn spec(extra: &str) -> AppSpec {
        AppSpec::parse(&format!(
            "name = \"web\"\nimage = \"x\"\n{extra}\n[resources]\ncpu = 0.5\nmemory_mib = 64\ndisk_mib = 10\npids = 32\n[volumes]\ndata = \"/data\"\n"
        ))
        .unwrap()
    }

    fn bundle<'a>(s: &'a AppSpec, i: &'a ImageConfiguration) -> Bundle<'a> {
        Bundle {
            spec: s,
            image: i,
            rootfs: "/run/fluxnode/apps/web/rootfs".into(),
            ids: IdRange {
                host_base: 100_000,
                size: 65_536,
            },
            volumes_dir: "/var/lib/fluxnode/volumes/web".into(),
            netns: Some("/run/netns/web".into()),
            etc_dir: None,
            cgroup: "/fluxnode/apps/web".into(),
            seccomp: None,
            passwd: None,
        }
    }

    #[test]
    fn the_command_resolves_as_docker_resolves_it() {
        let i = image(json!({}));
        assert_eq!(
            argv(&spec(""), &i).unwrap(),
            ["/bin/busybox", "httpd", "-f"]
        );
        assert_eq!(
            argv(&spec("args = [\"sh\"]"), &i).unwrap(),
            ["/bin/busybox", "sh"]
        );
        assert_eq!(
            argv(&spec("command = [\"/x\"]\nargs = [\"y\"]"), &i).unwrap(),
            ["/x", "y"]
        );
        let bare = image(json!({"Entrypoint": null, "Cmd": null}));
        assert_eq!(
            argv(&spec(""), &bare),
            Err(RuntimeError::NoCommand("web".into()))
        );
    }

    #[test]
    fn the_spec_isolates_and_limits_the_app() {
        let s = spec("env = { A = \"2\" }");
        let i = image(json!({}));
        let rt = runtime_spec(&bundle(&s, &i)).unwrap();
        let v = serde_json::to_value(&rt).unwrap();
        let ns: BTreeSet<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            ns,
            ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"].into()
        );
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 100_000);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(
            v["process"]["capabilities"]["ambient"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0),
            0
        );
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["memory"]["swap"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 32);
        assert_eq!(
            v["linux"]["maskedPaths"].as_array().unwrap().len(),
            MASKED_PATHS.len()
        );
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"A=2") && !env.contains(&"A=1"), "{env:?}");
        assert_eq!(v["process"]["cwd"], "/www");
        let vol = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(vol["source"], "/var/lib/fluxnode/volumes/web/data");
        assert_eq!(
            v["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["type"] == "network")
                .unwrap()["path"],
            "/run/netns/web"
        );
    }

    #[test]
    fn a_named_user_is_looked_up_and_kept_in_range() {
        let s = spec("");
        let i = image(json!({"User": "www"}));
        let mut b = bundle(&s, &i);
        assert!(matches!(runtime_spec(&b), Err(RuntimeError::User { .. })));
        b.passwd = Some("root:x:0:0::/root:/bin/sh\nwww:x:33:34::/www:/bin/false\n");
        let v = serde_json::to_value(runtime_spec(&b).unwrap()).unwrap();
        assert_eq!(
            (
                v["process"]["user"]["uid"].as_u64(),
                v["process"]["user"]["gid"].as_u64()
            ),
            (Some(33), Some(34))
        );
        assert_eq!(
            v["process"]["capabilities"]["effective"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0),
            0
        );
        let i = image(json!({"User": "70000"}));
        let b = bundle(&s, &i);
        assert!(
            matches!(runtime_spec(&b), Err(RuntimeError::User { .. })),
            "a uid outside the mapped range"
        );
    }

    #[test]
    fn the_seccomp_filter_is_carried() {
        let s = spec("");
        let i = image(json!({}));
        let mut b = bundle(&s, &i);
        b.seccomp = Some(
            crate::seccomp::for_app(
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
                &app_caps(),
            )
            .unwrap(),
        );
        let v = serde_json::to_value(runtime_spec(&b).unwrap()).unwrap();
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["linux"]["seccomp"]["syscalls"][0]["names"][0], "read");
    }
}
