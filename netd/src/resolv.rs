//! Writes the resolver configuration the DHCP server (or static config) gave.
//!
//! The root file system is read-only erofs, so the file lives on the tmpfs
//! at /run (`/run/netd/resolv.conf` by default); the image links
//! `/etc/resolv.conf` to it. Written to a temporary file and renamed, so a
//! reader never sees half of it.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

/// The file's text.
pub fn render(dns: &[Ipv4Addr], domain: Option<&str>) -> String {
    let mut s = String::from("# written by fluxnode-netd\n");
    if let Some(d) = domain.filter(|d| is_domain(d)) {
        s.push_str(&format!("search {d}\n"));
    }
    for ip in dns {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    s
}

/// A server-sent domain is outside input: keep only plausible names so it
/// cannot inject other resolver directives.
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Writes `path` atomically, creating its directory.
pub fn write(path: &Path, dns: &[Ipv4Addr], domain: Option<&str>) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, render(dns, domain))?;
    std::fs::rename(&tmp, path)
}

/// Removes `path`; absent is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn renders_and_refuses_injection() {
        let dns = [Ipv4Addr::new(10, 213, 0, 1)];
        assert_eq!(
            render(&dns, Some("lan")),
            "# written by fluxnode-netd\nsearch lan\nnameserver 10.213.0.1\n"
        );
        assert!(!render(&dns, Some("x\nnameserver 6.6.6.6")).contains("6.6.6.6"));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/fluxnode/resolv.conf");
        write(&p, &dns, None).unwrap();
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("nameserver 10.213.0.1"));
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(!p.exists());
    }
}
