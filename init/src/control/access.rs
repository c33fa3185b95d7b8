//! Who may ask what of the control socket.
//!
//! Two fences. The file system: the socket is 0600 in a 0700 directory
//! (0660 and 0710 with group `control_group`), so only root, and that
//! group's members, can connect at all. Then the kernel's word on the
//! client (`SO_PEERCRED`, `SO_PEERGROUPS`, taken at connect): requests that
//! change something (stop, start, restart, reboot, poweroff) need uid 0 or
//! membership of `control_admin_group`; status and logs need neither.

use super::protocol::Request;

/// A client, as the kernel saw it connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its pid (in init's PID namespace; 0 from outside it).
    pub pid: i32,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
    /// Its supplementary groups (empty where the kernel cannot say).
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the credentials of the client on `fd`.
    pub fn of(fd: std::os::fd::RawFd) -> Option<Peer> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        // Supplementary groups (Linux 4.13); a client in more than 64 is
        // judged by its primary group alone.
        let mut groups = [0u32; 64];
        let mut glen = std::mem::size_of_val(&groups) as libc::socklen_t;
        // SAFETY: as above, into `groups`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut glen,
            )
        };
        let n = if rc == 0 { glen as usize / 4 } else { 0 };
        Some(Peer {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            groups: groups.get(..n).unwrap_or_default().to_vec(),
        })
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// `SO_PEERGROUPS` (x86-64; libc names it for some targets only).
const SO_PEERGROUPS: libc::c_int = 59;

/// A group by name and number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// As written in init.toml.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

/// The control socket's rules, from init.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// May connect (status, logs): `control_group`.
    pub group: Option<Group>,
    /// May also change things: `control_admin_group`.
    pub admin_group: Option<Group>,
}

impl Request {
    /// Whether the request changes something (and so needs privilege).
    pub fn changes_something(&self) -> bool {
        !matches!(
            self,
            Request::Status | Request::StatusJson | Request::Logs(_)
        )
    }

    fn verb(&self) -> String {
        self.to_line()
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

impl Access {
    /// The group that owns the socket and its directory, if any: the
    /// connect group, else the admin group (its members must reach the
    /// socket to use it).
    pub fn socket_group(&self) -> Option<u32> {
        self.group
            .as_ref()
            .or(self.admin_group.as_ref())
            .map(|g| g.gid)
    }

    /// May `peer` make `req`? `Err` is the answer to send.
    pub fn check(&self, req: &Request, peer: Option<&Peer>) -> Result<(), String> {
        if !req.changes_something() {
            return Ok(());
        }
        let Some(peer) = peer else {
            return Err(format!(
                "{} refused: the client's credentials could not be read",
                req.verb()
            ));
        };
        if peer.uid == 0 {
            return Ok(());
        }
        if let Some(g) = &self.admin_group {
            if peer.in_group(g.gid) {
                return Ok(());
            }
        }
        let who = match &self.admin_group {
            Some(g) => format!("root or a member of group {} (control_admin_group)", g.name),
            None => "root".to_string(),
        };
        Err(format!(
            "{} refused: only {who} may change services or power; you are uid {} (status and logs are open to you)",
            req.verb(),
            peer.uid
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: 7,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn only_root_or_the_admin_group_may_change_things() {
        let open = Access::default();
        let stop = Request::Stop("netd".into());
        assert!(open
            .check(&Request::Status, Some(&peer(1000, 1000, &[])))
            .is_ok());
        assert!(open.check(&Request::Logs("x".into()), None).is_ok());
        assert!(open.check(&stop, Some(&peer(0, 0, &[]))).is_ok());
        let e = open.check(&stop, Some(&peer(1000, 1000, &[]))).unwrap_err();
        assert!(e.starts_with("stop refused: only root may"), "{e}");
        assert!(open.check(&Request::Reboot, None).is_err());
        let admins = Access {
            group: None,
            admin_group: Some(Group {
                name: "ops".into(),
                gid: 50,
            }),
        };
        assert_eq!(admins.socket_group(), Some(50));
        assert!(admins.check(&stop, Some(&peer(1000, 50, &[]))).is_ok());
        assert!(admins
            .check(&Request::Poweroff, Some(&peer(1000, 1000, &[4, 50])))
            .is_ok());
        let e = admins
            .check(&stop, Some(&peer(1000, 1000, &[4])))
            .unwrap_err();
        assert!(e.contains("member of group ops"), "{e}");
    }

    #[test]
    fn peer_credentials_are_read() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = Peer::of(std::os::fd::AsRawFd::as_raw_fd(&a)).unwrap();
        assert_eq!(p.pid, std::process::id() as i32);
        // SAFETY: getuid has no preconditions.
        assert_eq!(p.uid, unsafe { libc::getuid() });
    }
}
