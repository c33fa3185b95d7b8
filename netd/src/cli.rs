//! Command-line arguments (hand-parsed: five flags do not need a parser crate).

use std::path::PathBuf;

use fluxnode_lowlevel::json::json_str;

use crate::config::{Config, Mode};
use crate::daemon::Paths;

/// The help text.
pub const HELP: &str = "\
fluxnode-netd: bring up the appliance's network and tell init when it is usable

Brings `lo` up, then configures one link: the one named by
fluxnode.net.iface=NAME, else the first wired link (one with a device
behind it, not wireless, lowest ifindex). By DHCPv4 (default), or a
static address. Sends READY=1 over $NOTIFY_SOCKET once the link has its
address and a default route; WATCHDOG=1 every $WATCHDOG_USEC/2. SIGTERM
releases the DHCP lease, removes the address and exits 0.

USAGE:
    fluxnode-netd [OPTIONS]

KERNEL COMMAND LINE (wins over the file):
    fluxnode.net=dhcp                         the default
    fluxnode.net=static:ADDR/PREFIX[,GW[,DNS...]]
                                              e.g. static:192.168.1.20/24,192.168.1.1,192.168.1.1
    fluxnode.net=off                          loopback only
    fluxnode.net.iface=NAME                   the link to configure
    fluxnode.net.hostname=NAME                sent to the DHCP server
    fluxnode.net.classless_routes=1           use DHCP option 121 routes (off by default)

FILE /etc/fluxnode/netd.toml (optional):
    mode = \"static\"   interface = \"eth0\"   address = \"192.168.1.20/24\"
    gateway = \"192.168.1.1\"   dns = [\"192.168.1.1\"]   hostname = \"node1\"
    release_on_stop = true   request_broadcast = true   arp_check = true
    classless_routes = false

OPTIONS:
    --cmdline PATH      kernel command line to read   [/proc/cmdline]
    --config PATH       config file                   [/etc/fluxnode/netd.toml]
    --sys PATH          sysfs root                    [/sys]
    --resolv-conf PATH  resolver file to write        [/run/netd/resolv.conf]
    --print-config      print the effective configuration and exit
    --json              with --print-config: as JSON
    -v, --verbose       debug logging (also RUST_LOG=debug)
    -h, --help          this text
    -V, --version       the version

EXAMPLES:
    fluxnode-netd --print-config              what would netd do on this machine?
    fluxnode-netd --cmdline /tmp/c --print-config --json
";

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run the service.
    Run {
        /// Paths.
        paths: Paths,
        /// Debug logging.
        verbose: bool,
    },
    /// Print the effective configuration.
    PrintConfig {
        /// Paths.
        paths: Paths,
        /// As JSON.
        json: bool,
    },
    /// Print help.
    Help,
    /// Print the version.
    Version,
}

/// A bad argument.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Unknown flag.
    #[error("unknown argument {0:?}; see --help")]
    Unknown(String),
    /// A flag without its value.
    #[error("{0} needs a value; see --help")]
    MissingValue(String),
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, CliError> {
    let mut paths = Paths::default();
    let (mut verbose, mut print, mut json) = (false, false, false);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .map(PathBuf::from)
                .ok_or_else(|| CliError::MissingValue(flag.into()))
        };
        match a.as_str() {
            "--cmdline" => paths.cmdline = value(&a)?,
            "--config" => paths.config = value(&a)?,
            "--sys" => paths.sys = value(&a)?,
            "--resolv-conf" => paths.resolv_conf = value(&a)?,
            "--print-config" => print = true,
            "--json" => json = true,
            "-v" | "--verbose" => verbose = true,
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => return Err(CliError::Unknown(a)),
        }
    }
    Ok(if print {
        Command::PrintConfig { paths, json }
    } else {
        Command::Run { paths, verbose }
    })
}

fn opt_json(s: Option<impl ToString>) -> String {
    s.map(|v| json_str(&v.to_string()))
        .unwrap_or_else(|| "null".into())
}

/// The configuration as text for `--print-config`.
pub fn render_config(c: &Config, json: bool) -> String {
    let (mode, addr, gw, dns) = match &c.mode {
        Mode::Dhcp => ("dhcp", None, None, Vec::new()),
        Mode::Off => ("off", None, None, Vec::new()),
        Mode::Static(s) => (
            "static",
            Some(format!("{}/{}", s.address, s.prefix)),
            s.gateway,
            s.dns.clone(),
        ),
    };
    if json {
        let dns: Vec<String> = dns.iter().map(|d| json_str(&d.to_string())).collect();
        format!(
            "{{\"mode\":{},\"interface\":{},\"address\":{},\"gateway\":{},\"dns\":[{}],\"hostname\":{},\"release_on_stop\":{},\"request_broadcast\":{},\"arp_check\":{},\"classless_routes\":{}}}",
            json_str(mode),
            opt_json(c.interface.as_deref()),
            opt_json(addr),
            opt_json(gw),
            dns.join(","),
            opt_json(c.hostname.as_deref()),
            c.release_on_stop,
            c.request_broadcast,
            c.arp_check,
            c.classless_routes
        )
    } else {
        let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
        format!(
            "mode: {mode}\ninterface: {}\naddress: {}\ngateway: {}\ndns: {}\nhostname: {}\nrelease_on_stop: {}\nrequest_broadcast: {}\narp_check: {}\nclassless_routes: {}",
            c.interface.as_deref().unwrap_or("(first wired link)"),
            addr.as_deref().unwrap_or("(dhcp)"),
            gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
            if dns.is_empty() { "-".into() } else { dns.join(" ") },
            c.hostname.as_deref().unwrap_or("-"),
            c.release_on_stop,
            c.request_broadcast,
            c.arp_check,
            c.classless_routes
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags() {
        match parse(args(&["--cmdline", "/tmp/c", "-v"])).unwrap() {
            Command::Run { paths, verbose } => {
                assert_eq!(paths.cmdline, PathBuf::from("/tmp/c"));
                assert!(verbose);
            }
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            parse(args(&["--print-config", "--json"])).unwrap(),
            Command::PrintConfig { json: true, .. }
        ));
        assert!(matches!(
            parse(args(&["--bogus"])),
            Err(CliError::Unknown(_))
        ));
        assert!(matches!(
            parse(args(&["--sys"])),
            Err(CliError::MissingValue(_))
        ));
    }

    #[test]
    fn renders_json() {
        let c = crate::config::from_texts(
            None,
            "fluxnode.net=static:10.213.0.5/24,10.213.0.1 fluxnode.net.iface=a\"b",
        )
        .unwrap();
        assert_eq!(
            render_config(&c, true),
            "{\"mode\":\"static\",\"interface\":\"a\\\"b\",\"address\":\"10.213.0.5/24\",\"gateway\":\"10.213.0.1\",\"dns\":[],\"hostname\":null,\"release_on_stop\":true,\"request_broadcast\":true,\"arp_check\":true,\"classless_routes\":false}"
        );
        assert!(render_config(&Config::default(), false).starts_with("mode: dhcp\n"));
    }
}
