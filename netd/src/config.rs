//! Configuration: the kernel command line over `/etc/fluxnode/netd.toml`.
//!
//! The appliance's root is read-only and identical on every machine, so the
//! per-machine choice (DHCP or a static address) is made where the operator
//! can reach it: the boot entry's command line, or a file on /etc when an
//! image builder bakes one in. The command line wins, key by key.
//!
//! Command line keys:
//! - `fluxnode.net=dhcp` (default), `fluxnode.net=off`, or
//!   `fluxnode.net=static:ADDR/PREFIX[,GATEWAY[,DNS[,DNS...]]]`
//!   (an empty GATEWAY means no default route);
//! - `fluxnode.net.iface=NAME` picks the interface instead of the first wired one;
//! - `fluxnode.net.hostname=NAME` is sent to the DHCP server (option 12);
//! - `fluxnode.net.classless_routes=1` (or `0`; also `true`/`false`,
//!   `yes`/`no`, `on`/`off`) asks for and uses DHCP option 121.
//!
//! The line is split as the kernel splits it (quotes group spaces:
//! `fluxnode.net.hostname="a b"`); when a key repeats, the last one wins.
//!
//! File keys (all optional): `mode` ("dhcp" | "static" | "off"), `interface`,
//! `address` ("ADDR/PREFIX"), `gateway`, `dns` (list), `hostname`,
//! `release_on_stop` (bool, default true), `request_broadcast` (bool,
//! default true: ask servers to broadcast replies until the link has an
//! address; replies unicast anyway are caught by a packet socket),
//! `arp_check` (bool, default true: ARP-probe a new address before use and
//! decline it when another host answers), `classless_routes` (bool,
//! default false: ask for and install DHCP option 121's classless static
//! routes, filtered; off, a server cannot add routes — see docs/NETD.md,
//! TunnelVision).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use fluxnode_lowlevel::cmdline::Cmdline;

/// A configuration problem, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: toml::de::Error,
    },
    /// A value that does not mean anything.
    #[error("{origin}: {key}={value:?}: {why}")]
    Invalid {
        /// "kernel command line" or the file path.
        origin: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is expected.
        why: String,
    },
}

/// A static IPv4 setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Static {
    /// Our address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
}

/// How the wired link gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// DHCPv4 (default).
    Dhcp,
    /// A fixed address.
    Static(Static),
    /// Only loopback; the service is ready once `lo` is up.
    Off,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// DHCP, static or off.
    pub mode: Mode,
    /// The interface to configure; `None` = the first wired link.
    pub interface: Option<String>,
    /// Host name sent to the DHCP server.
    pub hostname: Option<String>,
    /// Send DHCPRELEASE and remove the address on SIGTERM.
    pub release_on_stop: bool,
    /// Set the broadcast flag in DISCOVER/REQUEST.
    pub request_broadcast: bool,
    /// ARP-probe a new address before using it.
    pub arp_check: bool,
    /// Ask for and install classless static routes (DHCP option 121).
    pub classless_routes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Dhcp,
            interface: None,
            hostname: None,
            release_on_stop: true,
            request_broadcast: true,
            arp_check: true,
            classless_routes: false,
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    mode: Option<String>,
    interface: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    dns: Vec<String>,
    hostname: Option<String>,
    release_on_stop: Option<bool>,
    request_broadcast: Option<bool>,
    arp_check: Option<bool>,
    classless_routes: Option<bool>,
}

fn invalid(origin: &str, key: &str, value: &str, why: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.into(),
        key: key.into(),
        value: value.into(),
        why: why.into(),
    }
}

fn parse_ip(origin: &str, key: &str, v: &str) -> Result<Ipv4Addr, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| invalid(origin, key, v, "expected an IPv4 address like 10.0.2.15"))
}

/// Parses `ADDR/PREFIX`.
fn parse_cidr(origin: &str, key: &str, v: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || invalid(origin, key, v, "expected ADDR/PREFIX like 10.0.2.15/24");
    let (a, p) = v.trim().split_once('/').ok_or_else(bad)?;
    let address = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((address, prefix))
}

/// Parses the value of `fluxnode.net`.
pub fn parse_mode(origin: &str, v: &str) -> Result<Mode, ConfigError> {
    const KEY: &str = "fluxnode.net";
    match v {
        "dhcp" => return Ok(Mode::Dhcp),
        "off" | "none" => return Ok(Mode::Off),
        _ => {}
    }
    let Some(spec) = v.strip_prefix("static:") else {
        return Err(invalid(
            origin,
            KEY,
            v,
            "expected dhcp, off, or static:ADDR/PREFIX[,GATEWAY[,DNS...]]",
        ));
    };
    let mut parts = spec.split(',');
    let (address, prefix) = parse_cidr(origin, KEY, parts.next().unwrap_or(""))?;
    let gateway = match parts.next().map(str::trim) {
        None | Some("") => None,
        Some(g) => Some(parse_ip(origin, KEY, g)?),
    };
    let dns = parts
        .filter(|d| !d.trim().is_empty())
        .map(|d| parse_ip(origin, KEY, d))
        .collect::<Result<_, _>>()?;
    Ok(Mode::Static(Static {
        address,
        prefix,
        gateway,
        dns,
    }))
}

/// A boolean kernel command line value.
fn parse_bool(origin: &str, key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(origin, key, v, "expected 1 or 0")),
    }
}

/// True for the keys netd owns: `fluxnode.net` and `fluxnode.net.*`.
fn is_netd_key(k: &str) -> bool {
    k == "fluxnode.net" || k.starts_with("fluxnode.net.")
}

fn apply_file(cfg: &mut Config, path: &Path, text: &str) -> Result<(), ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Toml {
        path: path.into(),
        source,
    })?;
    let origin = path.display().to_string();
    let mode = f.mode.as_deref().unwrap_or(if f.address.is_some() {
        "static"
    } else {
        "dhcp"
    });
    cfg.mode = match mode {
        "dhcp" => Mode::Dhcp,
        "off" => Mode::Off,
        "static" => {
            let a = f.address.as_deref().ok_or_else(|| {
                invalid(
                    &origin,
                    "address",
                    "",
                    "static mode needs address = \"ADDR/PREFIX\"",
                )
            })?;
            let (address, prefix) = parse_cidr(&origin, "address", a)?;
            let gateway = f
                .gateway
                .as_deref()
                .map(|g| parse_ip(&origin, "gateway", g))
                .transpose()?;
            let dns = f
                .dns
                .iter()
                .map(|d| parse_ip(&origin, "dns", d))
                .collect::<Result<_, _>>()?;
            Mode::Static(Static {
                address,
                prefix,
                gateway,
                dns,
            })
        }
        other => {
            return Err(invalid(
                &origin,
                "mode",
                other,
                "expected \"dhcp\", \"static\" or \"off\"",
            ))
        }
    };
    if f.interface.is_some() {
        cfg.interface = f.interface;
    }
    if f.hostname.is_some() {
        cfg.hostname = f.hostname;
    }
    if let Some(b) = f.request_broadcast {
        cfg.request_broadcast = b;
    }
    if let Some(a) = f.arp_check {
        cfg.arp_check = a;
    }
    if let Some(r) = f.release_on_stop {
        cfg.release_on_stop = r;
    }
    if let Some(c) = f.classless_routes {
        cfg.classless_routes = c;
    }
    Ok(())
}

/// Applies the `fluxnode.net*` keys. The line is split by the kernel's
/// rules, shared with init (`fluxnode_lowlevel::cmdline`): a value may be
/// quoted (`fluxnode.net.hostname="a b"`), and a repeated key's last
/// value wins.
fn apply_cmdline(cfg: &mut Config, text: &str) -> Result<(), ConfigError> {
    const ORIGIN: &str = "kernel command line";
    let cmdline = Cmdline::parse(text);
    for (k, v) in cmdline.iter().filter(|(k, _)| is_netd_key(k)) {
        let Some(v) = v else {
            tracing::warn!(key = k, "kernel command line key without a value; ignored");
            continue;
        };
        match k {
            "fluxnode.net" => cfg.mode = parse_mode(ORIGIN, v)?,
            "fluxnode.net.iface" => cfg.interface = Some(v.to_string()).filter(|s| !s.is_empty()),
            "fluxnode.net.hostname" => cfg.hostname = Some(v.to_string()).filter(|s| !s.is_empty()),
            "fluxnode.net.classless_routes" => cfg.classless_routes = parse_bool(ORIGIN, k, v)?,
            _ => tracing::warn!(key = k, "unknown kernel command line key; ignored"),
        }
    }
    Ok(())
}

/// Builds the configuration from texts (for tests) — file first, then command line.
pub fn from_texts(file: Option<(&Path, &str)>, cmdline: &str) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();
    if let Some((path, text)) = file {
        apply_file(&mut cfg, path, text)?;
    }
    apply_cmdline(&mut cfg, cmdline)?;
    Ok(cfg)
}

/// Reads `config_file` (absent is fine) and `cmdline_file` (unreadable is
/// treated as empty, with a warning), and merges them.
pub fn load(config_file: &Path, cmdline_file: &Path) -> Result<Config, ConfigError> {
    let file = match std::fs::read_to_string(config_file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ConfigError::Read {
                path: config_file.into(),
                source,
            })
        }
    };
    // Bytes, read lossily: the kernel does not promise UTF-8, and one
    // stray byte must not cost every key.
    let cmdline = match std::fs::read(cmdline_file) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            tracing::warn!(path = %cmdline_file.display(), error = %e, "cannot read the kernel command line; using none");
            String::new()
        }
    };
    from_texts(file.as_deref().map(|t| (config_file, t)), &cmdline)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn default_is_dhcp_on_the_first_wired_link() {
        assert_eq!(
            from_texts(None, "quiet root=/dev/vda2").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn static_from_the_command_line() {
        let c = from_texts(None, "fluxnode.net=static:10.213.0.5/24,10.213.0.1,10.213.0.53,1.1.1.1 fluxnode.net.iface=eth1")
            .unwrap();
        assert_eq!(
            c.mode,
            Mode::Static(Static {
                address: Ipv4Addr::new(10, 213, 0, 5),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 213, 0, 1)),
                dns: vec![Ipv4Addr::new(10, 213, 0, 53), Ipv4Addr::new(1, 1, 1, 1)],
            })
        );
        assert_eq!(c.interface.as_deref(), Some("eth1"));
        let c = from_texts(None, "fluxnode.net=static:10.213.0.5/32").unwrap();
        assert!(matches!(c.mode, Mode::Static(Static { gateway: None, .. })));
    }

    #[test]
    fn command_line_wins_over_the_file() {
        let p = Path::new("/etc/fluxnode/netd.toml");
        let file = "address = \"192.168.7.2/24\"\ngateway = \"192.168.7.1\"\ninterface = \"eth0\"\nrelease_on_stop = false\n";
        let c = from_texts(Some((p, file)), "").unwrap();
        assert!(matches!(c.mode, Mode::Static(_)));
        assert!(!c.release_on_stop);
        assert!(c.request_broadcast);
        let c = from_texts(Some((p, "request_broadcast = false")), "").unwrap();
        assert!(!c.request_broadcast);
        let c = from_texts(Some((p, file)), "fluxnode.net=dhcp").unwrap();
        assert_eq!((c.mode, c.interface.as_deref()), (Mode::Dhcp, Some("eth0")));
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        for bad in [
            "fluxnode.net=dchp",
            "fluxnode.net=static:10.0.0.1",
            "fluxnode.net=static:10.0.0.1/33",
            "fluxnode.net=static:10.0.0.1/24,gw",
            "fluxnode.net=static:/24",
        ] {
            let e = from_texts(None, bad).unwrap_err().to_string();
            assert!(e.starts_with("kernel command line: fluxnode.net="), "{e}");
            assert!(e.contains("expected"), "{e}");
        }
        let p = Path::new("netd.toml");
        assert!(matches!(
            from_texts(Some((p, "mood = \"dhcp\"")), ""),
            Err(ConfigError::Toml { .. })
        ));
        assert!(matches!(
            from_texts(Some((p, "mode = \"static\"")), ""),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn command_line_quotes_and_repeats_follow_the_kernel() {
        let c = from_texts(
            None,
            "fluxnode.net.hostname=\"node 1\" fluxnode.net=\"static:10.0.0.2/24\"\n",
        )
        .unwrap();
        assert_eq!(c.hostname.as_deref(), Some("node 1"));
        assert!(matches!(c.mode, Mode::Static(_)));
        // The last value wins; an earlier bad one is not looked at.
        let c = from_texts(None, "fluxnode.net=dchp fluxnode.net=off").unwrap();
        assert_eq!(c.mode, Mode::Off);
        // Bare keys and empty values change nothing.
        let c = from_texts(None, "fluxnode.net fluxnode.net.iface= fluxnode.netx=1").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn classless_routes_are_opt_in_by_file_or_command_line() {
        let p = Path::new("netd.toml");
        assert!(!from_texts(None, "").unwrap().classless_routes);
        let on = from_texts(Some((p, "classless_routes = true")), "").unwrap();
        assert!(on.classless_routes);
        let c = from_texts(None, "fluxnode.net.classless_routes=1").unwrap();
        assert!(c.classless_routes);
        // The command line wins, both ways.
        let c = from_texts(
            Some((p, "classless_routes = true")),
            "fluxnode.net.classless_routes=0",
        )
        .unwrap();
        assert!(!c.classless_routes);
        let e = from_texts(None, "fluxnode.net.classless_routes=maybe")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fluxnode.net.classless_routes=\"maybe\": expected 1 or 0"),
            "{e}"
        );
    }

    #[test]
    fn load_reads_files_and_tolerates_missing_ones() {
        let d = tempfile::tempdir().unwrap();
        let cmdline = d.path().join("cmdline");
        std::fs::write(&cmdline, "ro fluxnode.net=off\n").unwrap();
        let c = load(&d.path().join("absent.toml"), &cmdline).unwrap();
        assert_eq!(c.mode, Mode::Off);
        let c = load(&d.path().join("absent.toml"), &d.path().join("absent")).unwrap();
        assert_eq!(c.mode, Mode::Dhcp);
    }
}
