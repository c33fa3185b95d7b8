//! Which link to configure: the named one, or the first wired one.
//!
//! "Wired" is read from sysfs: a link backed by a device (it has
//! `/sys/class/net/NAME/device`) that is not wireless (no `wireless/` or
//! `phy80211/`). Bridges, veths, tunnels, dummies and `lo` have no device.
//! Links are ordered by ifindex, which follows the order the kernel found
//! them: stable for one machine's hardware. The sysfs root is a parameter so
//! the tests build a fake tree.

use std::path::Path;

use crate::netlink::Link;

/// What kind of link it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkClass {
    /// `lo`.
    Loopback,
    /// Backed by a device and not wireless: ours to configure.
    Wired,
    /// Wi-Fi: needs credentials netd does not have.
    Wireless,
    /// Software link (bridge, veth, tunnel, ...).
    Virtual,
}

/// Classifies a link by its flags and its sysfs entry under `sys`.
pub fn classify(sys: &Path, link: &Link) -> LinkClass {
    if link.is_loopback() {
        return LinkClass::Loopback;
    }
    let dir = sys.join("class/net").join(&link.name);
    if dir.join("wireless").exists() || dir.join("phy80211").exists() {
        LinkClass::Wireless
    } else if dir.join("device").exists() {
        LinkClass::Wired
    } else {
        LinkClass::Virtual
    }
}

/// The link to configure: `wanted` by name if given (any kind but
/// loopback), otherwise the wired link with the lowest ifindex.
pub fn pick(sys: &Path, links: &[Link], wanted: Option<&str>) -> Option<Link> {
    if let Some(name) = wanted {
        return links
            .iter()
            .find(|l| l.name == name && !l.is_loopback())
            .cloned();
    }
    let mut wired: Vec<&Link> = links
        .iter()
        .filter(|l| classify(sys, l) == LinkClass::Wired)
        .collect();
    wired.sort_by_key(|l| l.index);
    wired.first().map(|l| (*l).clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn link(index: u32, name: &str, flags: u32) -> Link {
        Link {
            index,
            name: name.into(),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            flags,
        }
    }

    #[test]
    fn picks_the_first_wired_link_by_ifindex() {
        let d = tempfile::tempdir().unwrap();
        let net = d.path().join("class/net");
        for (name, sub) in [
            ("lo", None),
            ("wlan0", Some("device")),
            ("br0", None),
            ("enp3s0", Some("device")),
            ("eth9", Some("device")),
        ] {
            std::fs::create_dir_all(net.join(name)).unwrap();
            if let Some(s) = sub {
                std::fs::create_dir_all(net.join(name).join(s)).unwrap();
            }
        }
        std::fs::create_dir_all(net.join("wlan0/wireless")).unwrap();
        let links = vec![
            link(1, "lo", libc::IFF_LOOPBACK as u32),
            link(5, "eth9", 0),
            link(2, "wlan0", 0),
            link(3, "br0", 0),
            link(4, "enp3s0", 0),
        ];
        assert_eq!(classify(d.path(), &links[0]), LinkClass::Loopback);
        assert_eq!(classify(d.path(), &links[2]), LinkClass::Wireless);
        assert_eq!(classify(d.path(), &links[3]), LinkClass::Virtual);
        assert_eq!(pick(d.path(), &links, None).unwrap().name, "enp3s0");
        assert_eq!(pick(d.path(), &links, Some("br0")).unwrap().name, "br0");
        assert_eq!(pick(d.path(), &links, Some("lo")), None);
        assert_eq!(pick(d.path(), &links, Some("eth7")), None);
        assert_eq!(pick(d.path(), &links[..4], None).unwrap().name, "eth9");
        assert_eq!(pick(d.path(), &links[..1], None), None);
    }
}
