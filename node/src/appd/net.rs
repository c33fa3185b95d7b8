//! Applies apps' networking (the model is `fluxnode_apps::network`): the
//! bridge, one network namespace and veth per app, the nftables table.
//! Through Debian's `ip` and `nft`, baked into the image: their netlink
//! code is what every distribution runs, and each step is one command a
//! person can repeat by hand when something looks wrong.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use fluxnode_apps::network::{self, Published, BRIDGE, GATEWAY, PREFIX};

/// A networking step failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command could not start or exited non-zero.
    #[error("`{cmd}`: {why}")]
    Command {
        /// The command line.
        cmd: String,
        /// What went wrong (its stderr, or why it did not start).
        why: String,
    },
    /// A kernel setting could not be written.
    #[error("{path}: {source}")]
    Sysctl {
        /// The /proc/sys file.
        path: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// Where `ip` and `nft` are, and where `ip netns` keeps namespaces.
#[derive(Debug, Clone)]
pub struct Tools {
    /// iproute2's `ip`.
    pub ip: PathBuf,
    /// nftables' `nft`.
    pub nft: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            ip: "/usr/sbin/ip".into(),
            nft: "/usr/sbin/nft".into(),
        }
    }
}

/// The network namespace of app `name`, as `ip netns` names it.
pub fn netns_name(name: &str) -> String {
    format!("app-{name}")
}

/// Its path (what the runtime joins).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(netns_name(name))
}

fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    use std::io::Write as _;
    let cmd = format!("{} {}", program.display(), args.join(" "));
    let mut c = Command::new(program);
    c.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().map_err(|e| NetError::Command {
        cmd: cmd.clone(),
        why: e.to_string(),
    })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| NetError::Command {
                cmd: cmd.clone(),
                why: format!("writing its input: {e}"),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| NetError::Command {
        cmd: cmd.clone(),
        why: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    why.truncate(2000);
    Err(NetError::Command {
        cmd,
        why: format!("{} ({})", why, out.status),
    })
}

fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|source| NetError::Sysctl { path, source })
}

/// Writes a net.* setting of the network namespace at `netns`, from a
/// thread that enters it (a thread's network namespace is its own; the
/// daemon's other threads stay where they are).
pub fn sysctl_in(netns: &Path, key: &str, value: &str) -> Result<(), NetError> {
    use std::os::fd::AsRawFd as _;
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    let ns = std::fs::File::open(netns).map_err(|source| NetError::Sysctl {
        path: netns.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread with a namespace fd we own.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(NetError::Sysctl {
                    path: netns.to_path_buf(),
                    source: std::io::Error::last_os_error(),
                });
            }
            std::fs::write(&path, value).map_err(|source| NetError::Sysctl {
                path: path.clone(),
                source,
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetError::Sysctl {
                path: path.clone(),
                source: std::io::Error::other("the thread panicked"),
            })
        })
    })
}

impl Tools {
    fn ip(&self, args: &[&str]) -> Result<(), NetError> {
        run(&self.ip, args, None)
    }

    /// The bridge with the gateway address, forwarding on, and the table
    /// with `published`. Safe to repeat (after a restart of the daemon).
    pub fn setup_node(&self, published: &[Published]) -> Result<(), NetError> {
        if !Path::new("/sys/class/net").join(BRIDGE).exists() {
            self.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        }
        let gw = format!("{GATEWAY}/{PREFIX}");
        // `replace`: the same address again is not an error.
        self.ip(&["addr", "replace", &gw, "dev", BRIDGE])?;
        self.ip(&["link", "set", BRIDGE, "up"])?;
        sysctl("net.ipv4.ip_forward", "1")?;
        self.load_rules(published)
    }

    /// Replaces the whole table in one transaction.
    pub fn load_rules(&self, published: &[Published]) -> Result<(), NetError> {
        run(&self.nft, &["-f", "-"], Some(&network::ruleset(published)))
    }

    /// A fresh namespace for app `name` (number `n`): its veth on the
    /// bridge, isolated from the other apps' ports, `eth0` with its address
    /// and the default route. Whatever an earlier run left is removed first.
    pub fn setup_app(&self, name: &str, n: u32, addr: Ipv4Addr) -> Result<PathBuf, NetError> {
        self.teardown_app(name, n);
        let ns = netns_name(name);
        let veth = network::veth(n);
        self.ip(&["netns", "add", &ns])?;
        self.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        self.ip(&["link", "set", &veth, "master", BRIDGE])?;
        self.ip(&[
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "isolated",
            "on",
        ])?;
        self.ip(&["link", "set", &veth, "up"])?;
        let a = format!("{addr}/{PREFIX}");
        self.ip(&["-n", &ns, "addr", "add", &a, "dev", "eth0"])?;
        self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        self.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        self.ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
        ])?;
        // As Docker: any user in the app may bind low ports in its own
        // namespace (the app's root cannot set this: the namespace is the
        // node's).
        let path = netns_path(name);
        sysctl_in(&path, "net.ipv4.ip_unprivileged_port_start", "0")?;
        Ok(path)
    }

    /// Removes app `name`'s namespace and veth (errors ignored: either may
    /// be gone already).
    pub fn teardown_app(&self, name: &str, n: u32) {
        let _ = self.ip(&["link", "del", &network::veth(n)]);
        let _ = self.ip(&["netns", "del", &netns_name(name)]);
    }
}
