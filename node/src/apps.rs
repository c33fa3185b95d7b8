//! The node's side of apps: where apps and images live on /var, this
//! machine's capacity, and the checks and pulls that `fluxnode app check`
//! and `pull` run without the app daemon. Running apps is `crate::appd`.

use std::path::{Path, PathBuf};

use fluxnode_apps::capacity::{fit, Capacity, FitError};
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
