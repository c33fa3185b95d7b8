//! Capability names and the system calls that set a child's sets.
//!
//! The service file names the capabilities a service keeps
//! (`capabilities = ["CAP_NET_ADMIN"]`); everything else leaves the
//! bounding set before exec, so neither the service nor anything it runs
//! (a setuid binary, a file with capabilities) can get it back. For a
//! service with a `user` other than root the same set is raised as ambient
//! capabilities, so it survives the exec of an ordinary program, as with
//! systemd's `CapabilityBoundingSet=` plus `AmbientCapabilities=`.

/// Capability names in number order (linux/capability.h).
pub const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The mask of the named capabilities; `Err` names the first unknown one.
pub fn mask(names: &[String]) -> Result<u64, String> {
    names.iter().try_fold(0u64, |m, n| {
        NAMES
            .iter()
            .position(|c| c == n)
            .map(|bit| m | 1 << bit)
            .ok_or_else(|| n.clone())
    })
}

/// The names in a mask, for messages.
pub fn names(mask: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, n)| *n)
        .collect()
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Removes every capability outside `keep` from the bounding set.
/// Capabilities this kernel does not know give EINVAL: the end of the list.
///
/// # Safety
/// Plain system calls; safe in a forked child.
pub unsafe fn drop_bounding(keep: u64) -> std::io::Result<()> {
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(());
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets to `set`.
///
/// # Safety
/// Plain system calls; safe in a forked child.
pub unsafe fn set(set: u64) -> std::io::Result<()> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |w: u64| CapData {
        effective: w as u32,
        permitted: w as u32,
        inheritable: w as u32,
    };
    let data = [word(set), word(set >> 32)];
    // SAFETY: capset reads a version-3 header and two data words.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises each capability of `set` in the ambient set (it must be in the
/// permitted and inheritable sets already).
///
/// # Safety
/// Plain system calls; safe in a forked child.
pub unsafe fn raise_ambient(set: u64) -> std::io::Result<()> {
    for cap in 0..64u64 {
        if set & (1 << cap) == 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap,
                0,
                0,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_masks() {
        assert_eq!(NAMES[12], "CAP_NET_ADMIN");
        assert_eq!(NAMES[40], "CAP_CHECKPOINT_RESTORE");
        let m = mask(&["CAP_NET_ADMIN".into(), "CAP_NET_RAW".into()]).unwrap();
        assert_eq!(m, 1 << 12 | 1 << 13);
        assert_eq!(names(m), ["CAP_NET_ADMIN", "CAP_NET_RAW"]);
        assert_eq!(mask(&["net_admin".into()]), Err("net_admin".into()));
    }
}
