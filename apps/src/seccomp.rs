//! The seccomp filter apps run under: the default profile of Docker's
//! lineage, as Debian ships it for podman (`containers-common`,
//! `/usr/share/containers/seccomp.json`), turned into the OCI runtime
//! spec's `linux.seccomp` for x86-64 and the capabilities an app holds.
//!
//! The profile's own format is not the OCI one: entries apply only to some
//! architectures (`includes.arches`) or only when a capability is held or
//! not (`includes.caps`, `excludes.caps`). This module keeps the entries
//! that apply and drops the rest, as podman and Docker do before they hand
//! the filter to the runtime. The profile is read from the file, not
//! copied into our code: the image bakes Debian's, and an update of that
//! package updates the filter.

use std::collections::BTreeSet;

use oci_spec::runtime::LinuxSeccomp;
use serde::Deserialize;

/// Where Debian's `containers-common` puts the profile.
pub const DEBIAN_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// The profile cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("seccomp profile: {0}")]
pub struct SeccompError(String);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    args: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
    #[serde(default)]
    errno_ret: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Syscalls Docker's default profile allows only to a holder of a
/// capability, which Debian's (podman's) profile allows to everyone and
/// leaves to the user namespace. Apps get Docker's gate on top: a second
/// wall if a kernel bug lets a user namespace's capabilities reach too far.
pub const DOCKER_GATES: [(&str, &str); 20] = [
    ("mount", "CAP_SYS_ADMIN"),
    ("umount", "CAP_SYS_ADMIN"),
    ("umount2", "CAP_SYS_ADMIN"),
    ("mount_setattr", "CAP_SYS_ADMIN"),
    ("move_mount", "CAP_SYS_ADMIN"),
    ("open_tree", "CAP_SYS_ADMIN"),
    ("fsopen", "CAP_SYS_ADMIN"),
    ("fsconfig", "CAP_SYS_ADMIN"),
    ("fsmount", "CAP_SYS_ADMIN"),
    ("fspick", "CAP_SYS_ADMIN"),
    ("pivot_root", "CAP_SYS_ADMIN"),
    ("setns", "CAP_SYS_ADMIN"),
    ("unshare", "CAP_SYS_ADMIN"),
    ("sethostname", "CAP_SYS_ADMIN"),
    ("setdomainname", "CAP_SYS_ADMIN"),
    ("reboot", "CAP_SYS_BOOT"),
    ("syslog", "CAP_SYSLOG"),
    ("keyctl", "CAP_SYS_ADMIN"),
    ("add_key", "CAP_SYS_ADMIN"),
    ("request_key", "CAP_SYS_ADMIN"),
];

/// The namespace flags of `clone(2)` (CLONE_NEWNS | NEWCGROUP | NEWUTS |
/// NEWIPC | NEWUSER | NEWPID | NEWNET), as Docker masks them.
pub const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

/// The architecture names the profile uses for an x86-64 node.
const OUR_ARCHES: [&str; 3] = ["amd64", "x32", "x86"];

/// Turns a profile (the JSON text) into the OCI filter for an x86-64 app
/// holding `caps` (`CAP_...` names).
pub fn for_app(profile_json: &str, caps: &BTreeSet<String>) -> Result<LinuxSeccomp, SeccompError> {
    if profile_json.len() > 1 << 20 {
        return Err(SeccompError("larger than 1 MiB".into()));
    }
    let p: Profile = serde_json::from_str(profile_json).map_err(|e| SeccompError(e.to_string()))?;
    let mut syscalls = Vec::new();
    for e in p.syscalls {
        let inc = e.includes.unwrap_or_default();
        let exc = e.excludes.unwrap_or_default();
        if inc.min_kernel.is_some() || exc.min_kernel.is_some() {
            // Entries gated on a kernel version allow syscalls only newer
            // kernels have; leaving them out only narrows the filter.
            continue;
        }
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| OUR_ARCHES.contains(&a.as_str())) {
            continue;
        }
        if exc.arches.iter().any(|a| OUR_ARCHES.contains(&a.as_str())) {
            continue;
        }
        if !inc.caps.iter().all(|c| caps.contains(c)) {
            continue;
        }
        if exc.caps.iter().any(|c| caps.contains(c)) {
            continue;
        }
        let admin = caps.contains("CAP_SYS_ADMIN");
        let names: Vec<String> = if e.action == "SCMP_ACT_ALLOW" {
            e.names
                .into_iter()
                .filter(|n| {
                    !DOCKER_GATES
                        .iter()
                        .any(|(g, cap)| g == n && !caps.contains(*cap))
                })
                // Replaced below by Docker's argument-checked rules.
                .filter(|n| admin || (n != "clone" && n != "clone3"))
                .collect()
        } else {
            e.names
        };
        if names.is_empty() {
            continue;
        }
        let mut s = serde_json::json!({"names": names, "action": e.action});
        if let Some(args) = e.args.filter(|a| !a.is_empty()) {
            s["args"] = serde_json::Value::Array(args);
        }
        if let Some(n) = e.errno_ret {
            s["errnoRet"] = n.into();
        }
        syscalls.push(s);
    }
    if !caps.contains("CAP_SYS_ADMIN") {
        // Debian's profile allows clone and clone3 whatever their flags: a
        // new user namespace, and in it the capabilities to drive
        // nf_tables and other namespaced kernel code (the route of several
        // kernel escapes). As Docker: clone without namespace flags only,
        // and clone3 (whose flags a filter cannot read) fails with ENOSYS,
        // so libc falls back to clone.
        syscalls.push(serde_json::json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        syscalls.push(serde_json::json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS,
        }));
    }
    let mut out = serde_json::json!({
        "defaultAction": p.default_action,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    });
    if let Some(n) = p.default_errno_ret {
        out["defaultErrnoRet"] = n.into();
    }
    serde_json::from_value(out)
        .map_err(|e| SeccompError(format!("not expressible in the runtime spec: {e}")))
}

/// The syscalls a filter lets through unconditionally (no argument
/// checks), for tests and `fluxnode app inspect`.
pub fn allowed(f: &LinuxSeccomp) -> BTreeSet<String> {
    f.syscalls()
        .iter()
        .flatten()
        .filter(|s| {
            s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
                && s.args().as_ref().is_none_or(|a| a.is_empty())
        })
        .flat_map(|s| s.names().iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const SMALL: &str = r#"{
      "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
      "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm"]}},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["setns"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_ADMIN"]}, "errnoRet": 1},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
      ]}"#;

    #[test]
    fn entries_apply_by_architecture_and_capability() {
        let caps: BTreeSet<String> = ["CAP_CHOWN".to_string()].into();
        let f = for_app(SMALL, &caps).unwrap();
        assert_eq!(f.default_errno_ret(), Some(38));
        let a = allowed(&f);
        assert_eq!(a, ["arch_prctl", "read", "write"].map(String::from).into());
        let json = serde_json::to_string(&f).unwrap();
        assert!(
            json.contains("\"setns\""),
            "the ERRNO entry for apps without CAP_SYS_ADMIN stays"
        );
        assert!(json.contains("SCMP_CMP_EQ"), "argument checks are kept");
        let admin: BTreeSet<String> = ["CAP_SYS_ADMIN".to_string()].into();
        let f = for_app(SMALL, &admin).unwrap();
        assert!(allowed(&f).contains("mount"));
        assert!(!serde_json::to_string(&f).unwrap().contains("\"setns\""));
    }

    #[test]
    fn debians_profile_gives_dockers_refusals() {
        let Ok(text) = std::fs::read_to_string(DEBIAN_PROFILE) else {
            fluxnode_testkit::skip("no /usr/share/containers/seccomp.json (Debian package golang-github-containers-common, a dependency of skopeo)");
            return;
        };
        let caps: BTreeSet<String> = crate::runtime::DOCKER_CAPS
            .iter()
            .map(|c| format!("CAP_{c}"))
            .collect();
        let f = for_app(&text, &caps).unwrap();
        let a = allowed(&f);
        for ok in ["read", "write", "openat", "execve", "chown", "ptrace"] {
            assert!(a.contains(ok), "{ok} should be allowed");
        }
        // clone only without namespace flags; clone3 refused with ENOSYS.
        assert!(!a.contains("clone") && !a.contains("clone3"));
        let json = serde_json::to_value(&f).unwrap();
        let rules = json["syscalls"].as_array().unwrap();
        let clone = rules
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone"]))
            .expect("a clone rule");
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NS_FLAGS);
        let clone3 = rules
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone3"]))
            .expect("a clone3 rule");
        assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3["errnoRet"], libc::ENOSYS);
        for refused in [
            "mount",
            "umount2",
            "reboot",
            "kexec_load",
            "init_module",
            "bpf",
            "setns",
            "unshare",
            "keyctl",
            "pivot_root",
            "syslog",
            "open_by_handle_at",
            "swapon",
            "acct",
            "settimeofday",
        ] {
            assert!(
                !a.contains(refused),
                "{refused} must not be allowed to an app"
            );
        }
    }
}
