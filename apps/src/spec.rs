//! The app spec: what a publisher asks a node to run.
//!
//! One schema, written as TOML or JSON (a document whose first non-blank
//! character is `{` is read as JSON). Unknown keys are refused, so a typo
//! such as `memroy_mib` is an error and not a silently missing limit.
//!
//! ```toml
//! name = "hello"
//! image = "127.0.0.1:5000/hello:1.0"   # or NAME@sha256:...
//! command = ["/bin/busybox", "httpd", "-f", "-p", "8080"]
//! env = { GREETING = "hi" }
//! restart = "always"                    # always | on-failure | never
//!
//! [resources]
//! cpu = 0.5          # cores, fractional
//! memory_mib = 64
//! disk_mib = 100
//! pids = 64
//!
//! [[ports]]
//! container = 8080
//! node = 30080
//! protocol = "tcp"   # tcp | udp
//!
//! [volumes]
//! data = "/data"     # name -> absolute path inside the app
//!
//! [health]
//! http = "/"         # or tcp = 8080
//! port = 8080
//! interval_s = 10
//! ```
//!
//! [`AppSpec::parse`] reads and validates; every refusal names the field
//! and says what would be accepted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::Reference;

/// The largest spec document read, in bytes.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// At most this many published ports per app.
pub const MAX_PORTS: usize = 64;
/// At most this many volumes per app.
pub const MAX_VOLUMES: usize = 32;
/// At most this many environment variables per app.
pub const MAX_ENV: usize = 256;
/// At most this many command words (command and args together).
pub const MAX_ARGV: usize = 256;
/// The smallest memory limit accepted: below it the runtime itself does
/// not start.
pub const MIN_MEMORY_MIB: u64 = 8;
/// The smallest CPU share accepted, in cores: cpu.max's period is 100 ms,
/// and a quota under 1 ms is refused by the kernel.
pub const MIN_CPU: f64 = 0.01;
/// The largest pids.max accepted.
pub const MAX_PIDS: u32 = 32_768;

/// Why a spec was refused. Each names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// The document is larger than [`MAX_SPEC_BYTES`].
    #[error("the spec is {0} bytes; at most {MAX_SPEC_BYTES} are read")]
    TooLarge(usize),
    /// The document is not valid TOML or JSON for the schema.
    #[error("the spec is not a valid app spec: {0}")]
    Syntax(String),
    /// A field holds a value outside what is accepted.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, as a dotted path (`resources.cpu`, `ports[2].node`).
        field: String,
        /// What is wrong and what would be accepted.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// An app, as its publisher describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The app's name: 1-63 of `a-z`, `0-9` and `-`, starting with a
    /// letter. It names the app's cgroup, volumes and log file.
    pub name: String,
    /// The image: `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`.
    pub image: String,
    /// The program and its first words; empty means the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Arguments after the command; empty means the image's `Cmd` (when
    /// `command` is empty too).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment, added to the image's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// What the app may use.
    pub resources: Resources,
    /// Named volumes: name → absolute path inside the app. Their data lives
    /// on /var and survives restarts, reboots and updates.
    #[serde(default)]
    pub volumes: BTreeMap<String, String>,
    /// When to restart the app after it exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// How to tell whether the app is healthy.
    #[serde(default)]
    pub health: Option<Health>,
}

/// A published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// The port the app listens on, inside its network namespace.
    pub container: u16,
    /// The port on the node's address that reaches it.
    pub node: u16,
    /// tcp (the default) or udp.
    #[serde(default)]
    pub protocol: Protocol,
}

/// A transport protocol.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// What an app may use; the node enforces each through cgroup v2 and a
/// disk quota.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in cores (0.5 is half of one core's time), cpu.max.
    pub cpu: f64,
    /// Memory in MiB, memory.max; swap is 0.
    pub memory_mib: u64,
    /// Disk in MiB: the app's writable layer and its volumes together.
    pub disk_mib: u64,
    /// The most processes and threads at once, pids.max.
    #[serde(default = "default_pids")]
    pub pids: u32,
}

fn default_pids() -> u32 {
    256
}

impl Resources {
    /// CPU in thousandths of a core, the unit capacity is counted in
    /// (whole numbers add up exactly).
    pub fn cpu_milli(&self) -> u64 {
        // Validated finite and within [MIN_CPU, 1024]: the cast is exact
        // enough and cannot overflow.
        (self.cpu * 1000.0).round() as u64
    }
}

/// When to restart an app after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Always, whatever the exit status (with backoff).
    #[default]
    Always,
    /// Only after a non-zero exit or a kill.
    OnFailure,
    /// Never: an exited app stays stopped.
    Never,
}

/// A health check. Exactly one of `http` and `tcp` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// An HTTP path (starting with `/`) that must answer 2xx or 3xx on
    /// `port`.
    #[serde(default)]
    pub http: Option<String>,
    /// The port for `http`.
    #[serde(default)]
    pub port: Option<u16>,
    /// A port that must accept a TCP connection.
    #[serde(default)]
    pub tcp: Option<u16>,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    pub interval_s: u32,
    /// Seconds one check may take.
    #[serde(default = "default_timeout")]
    pub timeout_s: u32,
    /// Failed checks in a row before the app is restarted.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_interval() -> u32 {
    10
}
fn default_timeout() -> u32 {
    3
}
fn default_retries() -> u32 {
    3
}

/// Which health probe a [`Health`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// GET this path on this port.
    Http {
        /// The container port.
        port: u16,
        /// The path.
        path: String,
    },
    /// Connect to this port.
    Tcp(u16),
}

impl Health {
    /// The probe, once validated.
    pub fn probe(&self) -> Option<Probe> {
        match (&self.http, self.port, self.tcp) {
            (Some(path), Some(port), None) => Some(Probe::Http {
                port,
                path: path.clone(),
            }),
            (None, None, Some(port)) => Some(Probe::Tcp(port)),
            _ => None,
        }
    }
}

impl AppSpec {
    /// Reads a spec from TOML or JSON and validates it.
    pub fn parse(text: &str) -> Result<AppSpec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge(text.len()));
        }
        let spec: AppSpec = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The parsed image reference (valid after [`AppSpec::validate`]).
    pub fn reference(&self) -> Result<Reference, SpecError> {
        Reference::parse(&self.image).map_err(|e| invalid("image", e.to_string()))
    }

    /// Checks every field; the first fault found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("name", &self.name)?;
        self.reference()?;
        if self.command.len() + self.args.len() > MAX_ARGV {
            return Err(invalid(
                "command",
                format!(
                    "command and args hold {} words; at most {MAX_ARGV}",
                    self.command.len() + self.args.len()
                ),
            ));
        }
        for (i, w) in self.command.iter().chain(self.args.iter()).enumerate() {
            if w.contains('\0') {
                return Err(invalid(format!("command[{i}]"), "contains a NUL byte"));
            }
        }
        if self.env.len() > MAX_ENV {
            return Err(invalid(
                "env",
                format!("{} variables; at most {MAX_ENV}", self.env.len()),
            ));
        }
        for (k, v) in &self.env {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(invalid(
                    format!("env.{k}"),
                    "a variable name is letters, digits and '_', not starting with a digit",
                ));
            }
            if v.contains('\0') {
                return Err(invalid(format!("env.{k}"), "the value contains a NUL byte"));
            }
        }
        self.validate_resources()?;
        self.validate_ports()?;
        self.validate_volumes()?;
        if let Some(h) = &self.health {
            self.validate_health(h)?;
        }
        Ok(())
    }

    fn validate_resources(&self) -> Result<(), SpecError> {
        let r = &self.resources;
        if !r.cpu.is_finite() || r.cpu < MIN_CPU || r.cpu > 1024.0 {
            return Err(invalid(
                "resources.cpu",
                format!(
                    "{} cores; give a number of cores from {MIN_CPU} to 1024 (0.5 is half a core)",
                    r.cpu
                ),
            ));
        }
        if r.memory_mib < MIN_MEMORY_MIB || r.memory_mib > 16 * 1024 * 1024 {
            return Err(invalid(
                "resources.memory_mib",
                format!("{} MiB; give at least {MIN_MEMORY_MIB} MiB", r.memory_mib),
            ));
        }
        if r.disk_mib == 0 || r.disk_mib > 1024 * 1024 * 1024 {
            return Err(invalid(
                "resources.disk_mib",
                format!("{} MiB; give at least 1 MiB", r.disk_mib),
            ));
        }
        if r.pids == 0 || r.pids > MAX_PIDS {
            return Err(invalid(
                "resources.pids",
                format!("{}; give 1 to {MAX_PIDS}", r.pids),
            ));
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), SpecError> {
        if self.ports.len() > MAX_PORTS {
            return Err(invalid(
                "ports",
                format!("{} ports; at most {MAX_PORTS}", self.ports.len()),
            ));
        }
        let mut seen_node = std::collections::BTreeSet::new();
        let mut seen_container = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.container == 0 {
                return Err(invalid(
                    format!("ports[{i}].container"),
                    "port 0; give 1 to 65535",
                ));
            }
            if p.node < 1024 {
                return Err(invalid(
                    format!("ports[{i}].node"),
                    format!(
                        "port {}; node ports below 1024 belong to the node, give 1024 to 65535",
                        p.node
                    ),
                ));
            }
            if !seen_node.insert((p.node, p.protocol)) {
                return Err(invalid(
                    format!("ports[{i}].node"),
                    format!("{}/{} is published twice", p.node, p.protocol),
                ));
            }
            if !seen_container.insert((p.container, p.protocol)) {
                return Err(invalid(
                    format!("ports[{i}].container"),
                    format!("{}/{} is published twice", p.container, p.protocol),
                ));
            }
        }
        Ok(())
    }

    fn validate_volumes(&self) -> Result<(), SpecError> {
        if self.volumes.len() > MAX_VOLUMES {
            return Err(invalid(
                "volumes",
                format!("{} volumes; at most {MAX_VOLUMES}", self.volumes.len()),
            ));
        }
        let mut targets = std::collections::BTreeSet::new();
        for (name, path) in &self.volumes {
            check_name(&format!("volumes.{name}"), name)?;
            let field = format!("volumes.{name}");
            if !path.starts_with('/') || path == "/" {
                return Err(invalid(
                    field,
                    format!("{path:?}: give an absolute path inside the app, not /"),
                ));
            }
            if path.len() > 1024 || path.contains('\0') {
                return Err(invalid(
                    field,
                    "the path is longer than 1024 bytes or holds a NUL",
                ));
            }
            if path.split('/').any(|c| c == ".." || c == ".") {
                return Err(invalid(
                    field,
                    format!("{path:?}: '.' and '..' are not allowed"),
                ));
            }
            let norm: String = path
                .split('/')
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join("/");
            for fs in ["proc", "sys", "dev"] {
                if norm == fs || norm.starts_with(&format!("{fs}/")) {
                    return Err(invalid(
                        field,
                        format!("{path:?}: /{fs} belongs to the runtime"),
                    ));
                }
            }
            if !targets.insert(norm.clone()) {
                return Err(invalid(
                    field,
                    format!("{path:?} is the target of two volumes"),
                ));
            }
        }
        Ok(())
    }

    fn validate_health(&self, h: &Health) -> Result<(), SpecError> {
        let Some(probe) = h.probe() else {
            return Err(invalid(
                "health",
                "set either `http` (a path) with `port`, or `tcp` (a port); not both",
            ));
        };
        if let Probe::Http { path, port } = &probe {
            if !path.starts_with('/')
                || path.len() > 1024
                || path.chars().any(|c| c.is_ascii_control() || c == ' ')
            {
                return Err(invalid(
                    "health.http",
                    format!("{path:?}: give a path starting with '/', without spaces"),
                ));
            }
            if *port == 0 {
                return Err(invalid("health.port", "port 0; give 1 to 65535"));
            }
        }
        if let Probe::Tcp(0) = probe {
            return Err(invalid("health.tcp", "port 0; give 1 to 65535"));
        }
        if h.interval_s == 0 || h.interval_s > 3600 {
            return Err(invalid(
                "health.interval_s",
                format!("{}; give 1 to 3600 seconds", h.interval_s),
            ));
        }
        if h.timeout_s == 0 || h.timeout_s > h.interval_s {
            return Err(invalid(
                "health.timeout_s",
                format!(
                    "{}; give 1 second up to interval_s ({})",
                    h.timeout_s, h.interval_s
                ),
            ));
        }
        if h.retries == 0 || h.retries > 100 {
            return Err(invalid(
                "health.retries",
                format!("{}; give 1 to 100", h.retries),
            ));
        }
        Ok(())
    }
}

/// Checks an app or volume name: `[a-z][a-z0-9-]{0,62}`, not ending in '-'.
fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{name:?}: give 1-63 of a-z, 0-9 and '-', starting with a letter and not ending in '-'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const GOOD: &str = r#"
name = "hello"
image = "127.0.0.1:5000/hello:1.0"
command = ["/bin/busybox", "httpd", "-f", "-p", "8080"]
env = { GREETING = "hi" }
restart = "on-failure"

[resources]
cpu = 0.5
memory_mib = 64
disk_mib = 100
pids = 64

[[ports]]
container = 8080
node = 30080

[volumes]
data = "/data"

[health]
http = "/"
port = 8080
interval_s = 5
"#;

    fn field_of(e: SpecError) -> String {
        match e {
            SpecError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_good_spec_reads_the_same_from_toml_and_json() {
        let a = AppSpec::parse(GOOD).unwrap();
        assert_eq!(a.resources.cpu_milli(), 500);
        assert_eq!(a.ports[0].protocol, Protocol::Tcp);
        assert_eq!(a.restart, RestartPolicy::OnFailure);
        assert_eq!(
            a.health.as_ref().unwrap().probe(),
            Some(Probe::Http {
                port: 8080,
                path: "/".into()
            })
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(AppSpec::parse(&json).unwrap(), a);
    }

    #[test]
    fn a_typo_is_refused_not_ignored() {
        let bad = GOOD.replace("memory_mib = 64", "memroy_mib = 64");
        match AppSpec::parse(&bad) {
            Err(SpecError::Syntax(m)) => assert!(m.contains("memroy_mib"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (GOOD.replace("name = \"hello\"", "name = \"Hello\""), "name"),
            (GOOD.replace("cpu = 0.5", "cpu = 0.001"), "resources.cpu"),
            (GOOD.replace("cpu = 0.5", "cpu = nan"), "resources.cpu"),
            (
                GOOD.replace("memory_mib = 64", "memory_mib = 1"),
                "resources.memory_mib",
            ),
            (GOOD.replace("pids = 64", "pids = 0"), "resources.pids"),
            (GOOD.replace("node = 30080", "node = 80"), "ports[0].node"),
            (
                GOOD.replace("data = \"/data\"", "data = \"data\""),
                "volumes.data",
            ),
            (
                GOOD.replace("data = \"/data\"", "data = \"/proc/x\""),
                "volumes.data",
            ),
            (
                GOOD.replace("data = \"/data\"", "data = \"/a/../b\""),
                "volumes.data",
            ),
            (
                GOOD.replace(
                    "image = \"127.0.0.1:5000/hello:1.0\"",
                    "image = \"UPPER/x\"",
                ),
                "image",
            ),
            (GOOD.replace("http = \"/\"", "tcp = 8080"), "health"),
            (GOOD.replace("GREETING", "\"1X\""), "env.1X"),
        ];
        for (text, field) in cases {
            let e = AppSpec::parse(&text).expect_err(field);
            assert_eq!(field_of(e), field);
        }
    }

    #[test]
    fn a_port_published_twice_is_refused() {
        let twice = format!("{GOOD}\n[[ports]]\ncontainer = 9090\nnode = 30080\n");
        // The [[ports]] table after [health] is still a top-level array.
        let e = AppSpec::parse(&twice).unwrap_err();
        assert_eq!(field_of(e), "ports[1].node");
        // The same node port on udp is another port.
        let udp =
            format!("{GOOD}\n[[ports]]\ncontainer = 9090\nnode = 30080\nprotocol = \"udp\"\n");
        AppSpec::parse(&udp).unwrap();
    }

    #[test]
    fn an_oversized_document_is_refused_before_parsing() {
        let big = "#".repeat(MAX_SPEC_BYTES + 1);
        assert_eq!(
            AppSpec::parse(&big),
            Err(SpecError::TooLarge(MAX_SPEC_BYTES + 1))
        );
    }
}
