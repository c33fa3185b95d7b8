//! Service files and init's own settings.
//!
//! One TOML file per service in a directory (`/etc/fluxnode/services.d` by
//! default); the file stem is the service name. Unknown keys are errors, and
//! every error names the file and, where the TOML parser or we can tell, the
//! line. A bad file takes out only its own service: [`load_dir`] returns the
//! good services and the errors side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How a service tells init it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceType {
    /// Ready as soon as it runs.
    #[default]
    Simple,
    /// Ready when it sends `READY=1` over `NOTIFY_SOCKET`.
    Notify,
    /// Ready when it has exited with status 0.
    Oneshot,
}

/// When a service that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Whatever the exit status.
    Always,
    /// On a non-zero exit, a signal or a missed watchdog.
    #[default]
    OnFailure,
    /// Never.
    Never,
}

/// What init does when a required service fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Ordered reboot (the default: boot counting can then fall back).
    #[default]
    Reboot,
    /// Ordered poweroff.
    Poweroff,
    /// Log it and carry on.
    None,
}

/// Exponential backoff between restarts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial_ms: u64,
    /// The cap.
    pub max_ms: u64,
    /// Growth per consecutive failure.
    pub factor: f64,
    /// Random spread, as a fraction of the delay (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 100,
            max_ms: 30_000,
            factor: 2.0,
            jitter: 0.2,
        }
    }
}

/// More than `burst` starts within `interval_s` marks the service failed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartLimit {
    /// Starts allowed in the interval.
    pub burst: u32,
    /// The interval, in seconds.
    pub interval_s: u64,
}

impl Default for StartLimit {
    fn default() -> Self {
        StartLimit {
            burst: 5,
            interval_s: 10,
        }
    }
}

/// How a service is stopped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stop {
    /// The first signal, by name (`SIGTERM`, `SIGINT`, ...).
    pub signal: String,
    /// Then SIGKILL after this long.
    pub timeout_ms: u64,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: "SIGTERM".into(),
            timeout_ms: 5000,
        }
    }
}

/// Which processes may send sd_notify messages for a service (systemd's
/// `NotifyAccess=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyAccess {
    /// Only the main process.
    Main,
    /// Any process of the service: in its cgroup (or, without cgroups, in
    /// its process group), so `systemd-notify` and forking libraries work.
    #[default]
    All,
}

fn yes() -> bool {
    true
}

fn default_filter() -> Vec<String> {
    vec![crate::sandbox::seccomp::DEFAULT_GROUP.into()]
}

/// cgroup v2 limits, written as given into the service's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `memory.max`, e.g. `"64M"` or `"max"`.
    pub memory_max: Option<String>,
    /// `cpu.max`, e.g. `"50000 100000"`.
    pub cpu_max: Option<String>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
}

/// A service file as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Program and arguments; the program must be an absolute path.
    pub argv: Vec<String>,
    /// Readiness type.
    #[serde(rename = "type", default)]
    pub kind: ServiceType,
    /// Start after these (ordering only).
    #[serde(default)]
    pub after: Vec<String>,
    /// Start after these are ready; fail if they fail.
    #[serde(default)]
    pub requires: Vec<String>,
    /// May start before /var is mounted (stage 1 mounts it in the
    /// background). Off by default: a service waits for /var, like
    /// systemd's default dependency on local-fs.target.
    #[serde(default)]
    pub early: bool,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub working_dir: Option<PathBuf>,
    /// User, by name or number.
    pub user: Option<String>,
    /// Group, by name or number (default: the user's).
    pub group: Option<String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: Restart,
    /// Required for boot success; escalation when it fails for good.
    #[serde(default)]
    pub required: bool,
    /// The escalation.
    #[serde(default)]
    pub failure_action: FailureAction,
    /// Software watchdog: the service must send `WATCHDOG=1` this often (0 = off).
    #[serde(default)]
    pub watchdog_ms: u64,
    /// Backoff.
    #[serde(default)]
    pub backoff: Backoff,
    /// Start limit.
    #[serde(default)]
    pub start_limit: StartLimit,
    /// Stop.
    #[serde(default)]
    pub stop: Stop,
    /// cgroup limits.
    #[serde(default)]
    pub limits: Limits,
    /// Who may send sd_notify messages for it.
    #[serde(default)]
    pub notify_access: NotifyAccess,
    /// Capabilities it keeps (the bounding set; also ambient when `user`
    /// is not root). None by default, whatever the user.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `PR_SET_NO_NEW_PRIVS` (on by default).
    #[serde(default = "yes")]
    pub no_new_privileges: bool,
    /// The seccomp allow-list: groups (`@system-service`) and call names;
    /// `["@all"]` turns the filter off.
    #[serde(default = "default_filter")]
    pub system_call_filter: Vec<String>,
    /// Read-only in its mount namespace.
    #[serde(default)]
    pub read_only_paths: Vec<PathBuf>,
    /// Hidden in its mount namespace.
    #[serde(default)]
    pub inaccessible_paths: Vec<PathBuf>,
    /// A /tmp of its own.
    #[serde(default)]
    pub private_tmp: bool,
    /// A /dev of its own with only these nodes (and null, zero, full,
    /// random, urandom); absent: the machine's /dev.
    pub device_allow: Option<Vec<PathBuf>>,
    /// A directory under /run created for it, owned by its user.
    pub runtime_directory: Option<String>,
}

/// A validated service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// The name (file stem).
    pub name: String,
    /// Where it came from.
    pub file: PathBuf,
    /// The file's settings.
    pub cfg: ServiceFile,
    /// The stop signal number.
    pub stop_signal: i32,
    /// uid and gid to run as, if not root.
    pub ids: Option<(u32, u32)>,
    /// What it may do ([`crate::sandbox`]).
    pub sandbox: crate::sandbox::Sandbox,
}

/// What is wrong with a service file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {reason}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("{file}:{line}: {reason}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// The parser's words.
        reason: String,
    },
    /// A value is wrong.
    #[error("{file}:{line}: {reason}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the key (0 when unknown).
        line: usize,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Services that depend on each other in a circle.
    #[error("{file}:{line}: dependency cycle: {cycle}; none of these services is started")]
    Cycle {
        /// The file of the first service in the cycle.
        file: PathBuf,
        /// The line of its `after`/`requires`.
        line: usize,
        /// `a -> b -> a`.
        cycle: String,
    },
}

/// init's own settings (`/etc/fluxnode/init.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitConfig {
    /// `"bless"` or `"none"`: what to do once boot is complete.
    pub boot_complete: BootComplete,
    /// How long required services must stay ready.
    pub boot_complete_grace_ms: u64,
    /// Boot-complete must hold within this many seconds of stage 2's
    /// start, or init logs what is not ready and reboots in order (a
    /// counted try). 0 (the default) = no limit.
    pub boot_complete_timeout_s: u64,
    /// Hardware watchdog timeout in seconds (0 = do not use it).
    pub hardware_watchdog_s: u32,
    /// Lines kept per service.
    pub log_lines: usize,
    /// Bytes kept per service (the ring holds at most `log_lines` lines and
    /// at most this many bytes, whatever the service prints).
    pub log_bytes: usize,
    /// The service directory (`--services` wins outside PID 1 of a machine).
    pub services_dir: PathBuf,
    /// Members of this group may connect to the control socket (status,
    /// logs); without it only root can.
    pub control_group: Option<String>,
    /// Members of this group may also make the requests that change
    /// something (stop, start, restart, reboot, poweroff); without it only
    /// root can.
    pub control_admin_group: Option<String>,
}

/// The boot-complete action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BootComplete {
    /// Do nothing beyond logging it.
    #[default]
    None,
    /// Rename the counted boot entry (systemd-boot boot counting).
    Bless,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            boot_complete: BootComplete::None,
            boot_complete_grace_ms: 2000,
            boot_complete_timeout_s: 0,
            hardware_watchdog_s: 30,
            log_lines: 200,
            log_bytes: 16 * 1024,
            services_dir: PathBuf::from("/etc/fluxnode/services.d"),
            control_group: None,
            control_admin_group: None,
        }
    }
}

impl InitConfig {
    /// Reads `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(ConfigError::Read {
                    file: path.into(),
                    reason: e.to_string(),
                })
            }
        };
        toml::from_str(&text).map_err(|e| parse_error(path, &text, &e))
    }
}

fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of_offset(text, s.start)).unwrap_or(0);
    ConfigError::Parse {
        file: path.into(),
        line,
        reason: e.message().to_string(),
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The 1-based line where `key = ...` is written, or 0.
pub fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// Parses and validates one service file's text.
pub fn parse_service(
    name: &str,
    file: &Path,
    text: &str,
    root: &Path,
) -> Result<ServiceSpec, ConfigError> {
    let cfg: ServiceFile = toml::from_str(text).map_err(|e| parse_error(file, text, &e))?;
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        file: file.into(),
        line: line_of_key(text, key),
        reason,
    };
    let Some(prog) = cfg.argv.first() else {
        return Err(invalid(
            "argv",
            "argv is empty: give the program's absolute path and its arguments".into(),
        ));
    };
    if !prog.starts_with('/') {
        return Err(invalid(
            "argv",
            format!("program {prog:?} is not an absolute path"),
        ));
    }
    let on_root = root.join(prog.trim_start_matches('/'));
    match std::fs::metadata(&on_root) {
        Ok(m)
            if m.is_file()
                && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0 => {}
        Ok(_) => {
            return Err(invalid(
                "argv",
                format!("program {prog} is not an executable file"),
            ))
        }
        Err(e) => return Err(invalid("argv", format!("program {prog} is missing: {e}"))),
    }
    let stop_signal = signal_number(&cfg.stop.signal).ok_or_else(|| {
        invalid(
            "signal",
            format!(
                "unknown stop signal {:?}; use e.g. \"SIGTERM\"",
                cfg.stop.signal
            ),
        )
    })?;
    if cfg.start_limit.burst == 0 {
        return Err(invalid(
            "burst",
            "start_limit.burst must be at least 1".into(),
        ));
    }
    if !(cfg.backoff.factor >= 1.0 && (0.0..=1.0).contains(&cfg.backoff.jitter)) {
        return Err(invalid(
            "factor",
            "backoff needs factor >= 1 and 0 <= jitter <= 1".into(),
        ));
    }
    if cfg.after.iter().chain(&cfg.requires).any(|d| d == name) {
        return Err(invalid(
            "after",
            format!("service {name} depends on itself"),
        ));
    }
    let ids = resolve_ids(root, cfg.user.as_deref(), cfg.group.as_deref())
        .map_err(|r| invalid(if cfg.user.is_some() { "user" } else { "group" }, r))?;
    let sandbox = crate::sandbox::Sandbox::from_file(&cfg).map_err(|(k, r)| invalid(k, r))?;
    if let Some(d) = &cfg.runtime_directory {
        let p = Path::new(d);
        let plain = !d.is_empty()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(invalid(
                "runtime_directory",
                format!(
                    "runtime_directory {d:?} must be a relative path under /run, without \"..\""
                ),
            ));
        }
    }
    Ok(ServiceSpec {
        name: name.into(),
        file: file.into(),
        cfg,
        stop_signal,
        ids,
        sandbox,
    })
}

/// Maps a signal name to its number.
pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.strip_prefix("SIG").unwrap_or(name);
    Some(match n {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "ABRT" => libc::SIGABRT,
        "PWR" => libc::SIGPWR,
        _ => return None,
    })
}

/// A group's number, by name (from `root`/etc/group) or as a number.
pub fn resolve_group(root: &Path, name: &str) -> Result<u32, String> {
    resolve_ids(root, None, Some(name)).map(|ids| ids.map_or(0, |(_, g)| g))
}

/// Resolves user and group by reading `root`/etc/passwd and group files
/// (no NSS: init is a static binary).
fn resolve_ids(
    root: &Path,
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<(u32, u32)>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let lookup = |file: &str, name: &str| -> Result<(u32, u32), String> {
        if let Ok(n) = name.parse::<u32>() {
            return Ok((n, n));
        }
        let path = root.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot resolve {name:?}: {}: {e}", path.display()))?;
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| {
                Some((
                    f.get(2)?.parse().ok()?,
                    f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0),
                ))
            })
            .ok_or_else(|| {
                format!(
                    "no such {}: {name:?} (not in {})",
                    if file.ends_with("passwd") {
                        "user"
                    } else {
                        "group"
                    },
                    path.display()
                )
            })
    };
    let (uid, user_gid) = match user {
        Some(u) => lookup("etc/passwd", u)?,
        None => (0, 0),
    };
    let gid = match group {
        Some(g) => lookup("etc/group", g)?.0,
        None => user_gid,
    };
    Ok(Some((uid, gid)))
}

/// Loads every `*.toml` in `dir`: the good services and the errors.
///
/// Dependency problems are checked across files: an unknown dependency or a
/// cycle takes out the services involved, not the others.
pub fn load_dir(dir: &Path, root: &Path) -> (Vec<ServiceSpec>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    let mut texts = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ConfigError::Read {
                file: dir.into(),
                reason: e.to_string(),
            });
            return (specs, errors);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for file in files {
        let Some(name) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError::Read {
                    file,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        match parse_service(&name, &file, &text, root) {
            Ok(s) => {
                texts.insert(name, text);
                specs.push(s);
            }
            Err(e) => errors.push(e),
        }
    }
    let (specs, dep_errors) = crate::graph::check_dependencies(specs, &texts);
    errors.extend(dep_errors);
    (specs, errors)
}

impl ServiceSpec {
    /// The stop timeout.
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.stop.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn parse(text: &str) -> Result<ServiceSpec, ConfigError> {
        parse_service("svc", Path::new("/etc/svc.toml"), text, Path::new("/"))
    }

    #[test]
    fn full_file_parses() {
        let s = parse(
            r#"
argv = ["/bin/sh", "-c", "true"]
type = "notify"
after = ["a"]
requires = ["b"]
env = { X = "1" }
restart = "always"
required = true
failure_action = "poweroff"
watchdog_ms = 500
[backoff]
initial_ms = 10
[start_limit]
burst = 3
interval_s = 5
[stop]
signal = "SIGINT"
timeout_ms = 100
[limits]
memory_max = "64M"
pids_max = 10
"#,
        )
        .unwrap();
        assert_eq!(s.cfg.kind, ServiceType::Notify);
        assert_eq!(s.stop_signal, libc::SIGINT);
        assert_eq!(s.cfg.backoff.initial_ms, 10);
        assert_eq!(s.cfg.backoff.max_ms, 30_000);
        assert_eq!(s.cfg.limits.pids_max, Some(10));
        assert_eq!(s.cfg.failure_action, FailureAction::Poweroff);
    }

    #[test]
    fn unknown_key_names_line() {
        let e = parse("argv = [\"/bin/true\"]\n\nbogus = 1\n").unwrap_err();
        match e {
            ConfigError::Parse { line, reason, .. } => {
                assert_eq!(line, 3);
                assert!(reason.contains("bogus"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_toml_names_line() {
        let e = parse("argv = [\"/bin/true\"]\ntype = \n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { line: 2, .. }), "{e:?}");
        assert!(e.to_string().starts_with("/etc/svc.toml:2: "), "{e}");
    }

    #[test]
    fn missing_binary_names_argv_line() {
        let e = parse("# x\nargv = [\"/nonexistent/prog\"]\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { line: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn relative_program_and_bad_signal_rejected() {
        assert!(parse("argv = [\"true\"]").is_err());
        let e = parse("argv = [\"/bin/true\"]\n[stop]\nsignal = \"SIGFOO\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { line: 3, .. }), "{e:?}");
    }

    #[test]
    fn nasty_inputs_do_not_panic() {
        for t in [
            "",
            "argv = 1",
            "[[[",
            "argv = [\"/bin/true\"]\n[limits]\npids_max = -1",
            "\u{0}",
            "argv=[\"/\"]",
        ] {
            let _ = parse(t);
        }
    }

    #[test]
    fn init_config_defaults_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init.toml");
        assert_eq!(InitConfig::load(&p).unwrap(), InitConfig::default());
        std::fs::write(
            &p,
            "boot_complete = \"bless\"\nboot_complete_grace_ms = 10\nboot_complete_timeout_s = 900\n",
        )
        .unwrap();
        let c = InitConfig::load(&p).unwrap();
        assert_eq!(c.boot_complete, BootComplete::Bless);
        assert_eq!(c.boot_complete_grace_ms, 10);
        assert_eq!(c.boot_complete_timeout_s, 900);
        assert_eq!(InitConfig::default().boot_complete_timeout_s, 0);
        std::fs::write(&p, "boot_complete_timeout_s = -1\n").unwrap();
        assert!(InitConfig::load(&p).is_err());
        std::fs::write(&p, "nope = 1\n").unwrap();
        assert!(InitConfig::load(&p).is_err());
    }
}
