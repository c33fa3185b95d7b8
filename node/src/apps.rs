//! The node's side of apps: where apps and images live on /var, this
//! machine's capacity, and the checks and pulls that `fluxnode app check`
//! and `pull` run without the app daemon. Running apps is `crate::appd`.

use std::path::{Path, PathBuf};

use fluxnode_apps::capacity::{fit, Capacity, FitError, Guarantee};
use fluxnode_apps::spec::{AppSpec, SpecError};

/// What lives under the state directory for apps.
#[derive(Debug, Clone)]
pub struct AppsDir {
    root: PathBuf,
}

impl AppsDir {
    /// Apps under `state_dir` (`/var/lib/fluxnode` on the appliance).
    pub fn new(state_dir: &Path) -> AppsDir {
        AppsDir {
            root: state_dir.to_path_buf(),
        }
    }

    /// The OCI content store.
    pub fn store(&self) -> PathBuf {
        self.root.join("oci")
    }

    /// One directory per placed app, holding its `spec.json`.
    pub fn apps(&self) -> PathBuf {
        self.root.join("apps")
    }

    /// App NAME's volumes: `volumes/NAME/VOLUME`.
    pub fn volumes(&self, app: &str) -> PathBuf {
        self.root.join("volumes").join(app)
    }

    /// The specs of the apps placed on this node. An unreadable record
    /// is skipped with a warning (it will be reported by `app ls`), so one
    /// damaged file does not make the node refuse every deploy.
    pub fn placed(&self) -> Vec<AppSpec> {
        let Ok(dir) = std::fs::read_dir(self.apps()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            // `.seeded`, `.rm-NAME` tombstones: not apps.
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path().join("spec.json");
            match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| AppSpec::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(s) => out.push(s),
                Err(err) => tracing::warn!("{}: {err}", p.display()),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// This machine's capacity for apps: its hardware threads, memory and the
/// filesystem under `var`, less the node's reserve.
/// `var` need not exist yet: the filesystem that will hold it is measured.
pub fn machine_capacity(var: &Path) -> std::io::Result<Capacity> {
    let var = var
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    // SAFETY: sysconf has no preconditions.
    let threads = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let c = std::ffi::CString::new(var.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let disk_mib = (st.f_blocks as u64).saturating_mul(st.f_frsize as u64) >> 20;
    Ok(Capacity::for_machine(threads, mem_kib >> 10, disk_mib))
}

/// What the tier this node last proved guarantees: the tier named by the
/// agent's certificate in `state_dir`, with its figures from Flux's
/// published table (hal's `DEFAULT_POLICY`). `None` when the node holds
/// no certificate, was ranked below every tier, or holds a tier that table
/// does not name (a private registry's own, like the demo's): then the
/// machine's figures are the capacity. The certificate is read, not
/// verified: the agent wrote it to the node's own /var after checking it.
pub fn tier_guarantee(state_dir: &Path) -> Option<Guarantee> {
    #[derive(serde::Deserialize)]
    struct TierOnly {
        tier: Option<String>,
    }
    let cert = crate::state::StateDir::new(state_dir).certificate()?;
    let name = serde_json::from_str::<TierOnly>(&cert.body).ok()?.tier?;
    let policy = fluxnode_hal::tier::Policy::flux();
    let t = policy.tier.iter().find(|t| t.name == name)?;
    // GB of 10^9 bytes (hal's units) to MiB.
    let mib = |gb: f64| (gb * 1e9 / 1_048_576.0) as u64;
    Some(Guarantee {
        tier: name,
        threads: t.threads.or(t.cores).map(|v| v as u64),
        memory_mib: t.ram_gb.map(mib),
        disk_mib: t.ssd_gb.map(mib),
    })
}

/// This node's capacity for apps: the machine's ([`machine_capacity`]),
/// held to its tier's guarantee ([`tier_guarantee`]) when it has one.
pub fn node_capacity(state_dir: &Path) -> std::io::Result<(Capacity, Option<Guarantee>)> {
    let machine = machine_capacity(state_dir)?;
    let g = tier_guarantee(state_dir);
    Ok((g.as_ref().map_or(machine, |g| machine.within(g)), g))
}

/// Why a spec was refused by `fluxnode app check`.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The spec itself is wrong.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// It does not fit on this node.
    #[error(transparent)]
    Fit(#[from] FitError),
}

/// Validates a spec and checks it fits beside the placed apps (a spec of
/// the same name is a redeploy: the old one's share is counted free).
pub fn check(text: &str, placed: &[AppSpec], cap: &Capacity) -> Result<AppSpec, CheckError> {
    let spec = AppSpec::parse(text)?;
    let others: Vec<&AppSpec> = placed.iter().filter(|p| p.name != spec.name).collect();
    fit(cap, &others, &spec)?;
    Ok(spec)
}

/// The JSON `fluxnode app check --json` prints.
pub fn check_json(r: &Result<AppSpec, CheckError>, cap: &Capacity) -> serde_json::Value {
    match r {
        Ok(s) => serde_json::json!({"ok": true, "app": s.name, "capacity": cap}),
        Err(CheckError::Spec(SpecError::Invalid { field, problem })) => {
            serde_json::json!({"ok": false, "reason": "invalid", "field": field, "problem": problem, "message": r.as_ref().err().map(|e| e.to_string())})
        }
        Err(CheckError::Fit(FitError::Short {
            resource,
            need,
            free,
            total,
        })) => serde_json::json!({
            "ok": false, "reason": "short", "resource": resource.to_string(),
            "need": need, "free": free, "total": total, "short_by": need - free,
            "message": r.as_ref().err().map(|e| e.to_string()),
        }),
        Err(e) => serde_json::json!({"ok": false, "reason": "refused", "message": e.to_string()}),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const WEB: &str =
        "name = \"web\"\nimage = \"x\"\n[resources]\ncpu = 0.5\nmemory_mib = 512\ndisk_mib = 100\n";

    /// A certificate file as the agent stores it, naming `tier`.
    fn certify(dir: &Path, tier: Option<&str>) {
        let body = serde_json::json!({"version": 1, "tier": tier}).to_string();
        let cert = serde_json::json!({"body": body, "signature": "00"});
        std::fs::write(dir.join("tier-certificate.json"), cert.to_string()).unwrap();
    }

    #[test]
    fn the_certified_tier_caps_the_capacity() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(tier_guarantee(t.path()), None, "no certificate");
        certify(t.path(), Some("Cumulus"));
        let g = tier_guarantee(t.path()).unwrap();
        // Flux's table: 4 threads, 8 GB, 220 GB (10^9 bytes).
        assert_eq!(g.threads, Some(4));
        assert_eq!(g.memory_mib, Some(7_629));
        assert_eq!(g.disk_mib, Some(209_808));
        let (cap, used) = node_capacity(t.path()).unwrap();
        assert_eq!(used.as_ref().map(|g| g.tier.as_str()), Some("Cumulus"));
        let machine = machine_capacity(t.path()).unwrap();
        assert_eq!(cap, machine.within(&g));
        assert!(cap.memory_mib <= 7_629 - fluxnode_apps::capacity::RESERVED.memory_mib);
        // Below every tier, or a tier Flux's table does not name: the machine's.
        certify(t.path(), None);
        assert_eq!(tier_guarantee(t.path()), None);
        certify(t.path(), Some("Demo"));
        assert_eq!(tier_guarantee(t.path()), None);
        assert_eq!(node_capacity(t.path()).unwrap().0, machine);
        std::fs::write(t.path().join("tier-certificate.json"), "{ damaged").unwrap();
        assert_eq!(tier_guarantee(t.path()), None);
    }

    #[test]
    fn placed_apps_count_and_a_redeploy_replaces_its_own_share() {
        let t = tempfile::tempdir().unwrap();
        let d = AppsDir::new(t.path());
        std::fs::create_dir_all(d.apps().join("web")).unwrap();
        std::fs::write(
            d.apps().join("web/spec.json"),
            serde_json::to_string(&AppSpec::parse(WEB).unwrap()).unwrap(),
        )
        .unwrap();
        std::fs::create_dir_all(d.apps().join("junk")).unwrap();
        std::fs::write(d.apps().join("junk/spec.json"), "{ not json").unwrap();
        let placed = d.placed();
        assert_eq!(placed.len(), 1, "the damaged record is skipped");
        let cap = Capacity::for_machine(2, 1024, 10_000);
        // The same app again, bigger: only its own old share is freed.
        let bigger = WEB.replace("memory_mib = 512", "memory_mib = 700");
        check(&bigger, &placed, &cap).unwrap();
        let other = bigger.replace("name = \"web\"", "name = \"api\"");
        let r = check(&other, &placed, &cap);
        let v = check_json(&r, &cap);
        assert_eq!(v["reason"], "short");
        assert_eq!(v["resource"], "memory");
        assert_eq!(v["short_by"], 700 - (768 - 512));
        let bad = check(&WEB.replace("cpu = 0.5", "cpu = -1"), &placed, &cap);
        assert_eq!(check_json(&bad, &cap)["field"], "resources.cpu");
    }

    #[test]
    fn this_machine_has_a_capacity() {
        let t = tempfile::tempdir().unwrap();
        let c = machine_capacity(t.path()).unwrap();
        assert!(
            c.memory_mib > 0 && c.disk_mib > 0 && c.cpu_milli > 0,
            "{c:?}"
        );
    }
}
