//! # fluxnode-init
//!
//! The same binary is three things, chosen at start:
//!
//! - **stage 1** — PID 1 in the initramfs (it finds `/etc/initrd-release`):
//!   loads modules, opens the verity root, switch_roots (see [`stage1`]);
//! - **stage 2** — PID 1 of the real root: mounts, supervises services,
//!   reaps, watches, shuts down in order (see [`supervisor`]);
//! - **`fluxnode-init ctl ...`** — the client of stage 2's control socket.
//!
//! PID 1 must never panic out and never exit: the kernel panics if it does.
//! Every fallible step returns a typed error; the top level logs it and, as
//! PID 1 of a machine, reboots instead of returning. In a child PID
//! namespace (tests, the demo) the same code ends by exiting 0.
#![deny(missing_docs)]

pub mod bless;
pub mod boot;
pub mod cgroup;
pub mod cmdline;
pub mod config;
pub mod control;
pub mod graph;
pub mod log;
pub mod mounts;
pub mod notify;
pub mod output;
pub mod powerbutton;
pub mod sandbox;
pub mod service;
pub mod shutdown;
pub mod spawn;
pub mod stage1;
pub mod supervisor;
pub mod sys;
pub mod sysctl;
pub mod watchdog;

use std::path::{Path, PathBuf};

use sys::Mode;

const HELP: &str = "\
fluxnode-init: fluxnode's PID 1

USAGE:
    fluxnode-init [OPTIONS]          run as the service supervisor (stage 2)
    fluxnode-init ctl COMMAND        talk to a running init (see `ctl --help`)
    fluxnode-init notify KEY=VALUE.. send sd_notify messages (READY=1, STATUS=..,
                                     WATCHDOG=1) from a script, like systemd-notify

Stage 1 (the initramfs's /init) is the separate binary fluxnode-stage1.

OPTIONS (stage 2; the kernel command line's fluxnode.* keys give the same;
as PID 1 of a machine only the logging ones are honoured):
    --services DIR     service files           [fluxnode.services=, /etc/fluxnode/services.d]
    --config FILE      init's settings         [/etc/fluxnode/init.toml]
    --run-dir DIR      control socket (0700)   [/run/fluxnode; notify socket in DIR-notify]
    --debug            debug logging           [fluxnode.debug]
    --timestamps       console lines stamped with seconds since boot
                                               [fluxnode.timestamps]

SIGNALS:
    SIGTERM, SIGPWR    ordered poweroff (in a test namespace: ordered exit 0)
    SIGINT             ordered reboot (Ctrl-Alt-Del)
    SIGUSR1            print every service's status to the console
    SIGUSR2            toggle debug logging
    SIGHUP             ignored (service files are read at boot)
";

/// The process entry point of the `fluxnode-stage1` binary: the
/// initramfs's `/init`. Anywhere else it explains itself and exits.
pub fn stage1_entry() {
    if std::process::id() == 1 && Path::new("/etc/initrd-release").exists() {
        stage1::run();
    }
    eprintln!(
        "fluxnode-stage1: this is the initramfs's /init (stage 1 of fluxnode-init): it runs \
         only as PID 1 of an initramfs with /etc/initrd-release. Stage 2 is fluxnode-init."
    );
    std::process::exit(2);
}

/// The process entry point of the `fluxnode-init` binary.
pub fn main_entry() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("ctl") {
        std::process::exit(control::ctl_main(&args[1..]));
    }
    if args.first().map(String::as_str) == Some(bless::CHILD_ARG) {
        // The child the supervisor starts to mark the boot good.
        log::init(false);
        std::process::exit(bless::child_main());
    }
    if args.first().map(String::as_str) == Some("notify") {
        std::process::exit(notify::notify_main(&args[1..]));
    }
    // Stage 1 is `fluxnode-stage1`, the initramfs's /init: this binary is
    // stage 2 only, and never runs from an initramfs.
    let mode = Mode::detect();
    match parse_args(&args) {
        Ok(Some((paths, debug, timestamps))) => {
            log::set_timestamps(timestamps);
            stage2(mode, paths, debug)
        }
        Ok(None) => print!("{HELP}"),
        Err(e) if mode == Mode::Machine => {
            // Never exit as PID 1: report and go on with the defaults.
            sys::console_write(&format!("fluxnode-init: {e}; using defaults\n"));
            stage2(mode, supervisor::Paths::default(), false);
        }
        Err(e) => {
            eprintln!("fluxnode-init: {e}\n\n{HELP}");
            std::process::exit(2);
        }
    }
}

/// The paths, `--debug` and `--timestamps`; `None` for `--help`.
type Args = (supervisor::Paths, bool, bool);

fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    let mut paths = supervisor::Paths::default();
    let (mut debug, mut timestamps) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |flag: &str| {
            it.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--services" => paths.services_dir = Some(val(a)?),
            "--config" => paths.init_config = val(a)?,
            "--run-dir" => paths.run_dir = val(a)?,
            "--debug" => debug = true,
            "--timestamps" => timestamps = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // Sockets are handed to services by path: it must be absolute.
    paths.run_dir = std::path::absolute(&paths.run_dir).map_err(|e| format!("--run-dir: {e}"))?;
    Ok(Some((paths, debug, timestamps)))
}

/// What stage 2 runs from, given the mode: the paths from the arguments
/// (`--services`, `--config`, `--run-dir`) and the kernel command line's
/// `fluxnode.services=`, and which of those were ignored.
///
/// They are for development: tests and the demo run init in a namespace
/// or the foreground against their own files. As PID 1 of a machine they
/// are refused: the kernel command line is not always measured (a type #1
/// boot entry can pass one as load options), and the kernel hands its
/// unknown words to init as arguments, so either would let whoever edits
/// the boot entry choose what the appliance runs. Logging switches
/// (`fluxnode.debug`, `fluxnode.timestamps`, `--debug`, `--timestamps`) change only what is
/// printed, and stay.
pub fn development_overrides(
    mode: Mode,
    paths: supervisor::Paths,
    cmdline_services: Option<&str>,
) -> (supervisor::Paths, Vec<String>) {
    let defaults = supervisor::Paths::default();
    if mode != Mode::Machine {
        let mut paths = paths;
        if let (Some(dir), None) = (cmdline_services, &paths.services_dir) {
            paths.services_dir = Some(dir.into());
        }
        return (paths, Vec::new());
    }
    let mut ignored = Vec::new();
    if let Some(dir) = cmdline_services {
        ignored.push(format!(
            "fluxnode.services={dir} on the kernel command line"
        ));
    }
    if let Some(dir) = &paths.services_dir {
        ignored.push(format!("--services {}", dir.display()));
    }
    if paths.init_config != defaults.init_config {
        ignored.push(format!("--config {}", paths.init_config.display()));
    }
    if paths.run_dir != defaults.run_dir {
        ignored.push(format!("--run-dir {}", paths.run_dir.display()));
    }
    (defaults, ignored)
}

/// Stage 2: mounts, supervises, shuts down. Returns only outside PID 1 of a machine.
pub fn stage2(mode: Mode, mut paths: supervisor::Paths, debug: bool) {
    if mode != Mode::Foreground {
        // Mounts come before reading /proc/cmdline and any config.
        log::init(debug);
        mounts::mount_early();
    }
    let cmdline = cmdline::Cmdline::from_file(Path::new("/proc/cmdline"));
    log::init(debug || cmdline.flag("fluxnode.debug"));
    if cmdline.flag("fluxnode.timestamps") {
        // `--timestamps` may have turned them on already.
        log::set_timestamps(true);
    }
    let ignored;
    (paths, ignored) = development_overrides(mode, paths, cmdline.get("fluxnode.services"));
    for what in ignored {
        tracing::warn!(
            "{what} ignored: development overrides apply only outside PID 1 of a machine"
        );
    }
    if mode == Mode::Machine {
        // Mounts made later (/var, efivarfs) must reach services that
        // started earlier in mount namespaces of their own (`sandbox`).
        // SAFETY: mount with constant strings and no data.
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SHARED,
                std::ptr::null(),
            )
        };
        log::set_console_nonblocking(true);
        // Ctrl-Alt-Del then arrives as SIGINT instead of an instant reboot.
        // SAFETY: reboot with a plain command.
        unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
        // Before any service: no router advertisement may be taken in
        // before netd runs (see sysctl.rs).
        sysctl::apply_all();
        std::panic::set_hook(Box::new(|info| {
            sys::console_write(&format!("fluxnode-init: internal error: {info}\n"));
        }));
    }
    tracing::info!("stage 2 starting ({mode:?} mode)");
    let mut sup = match supervisor::Supervisor::new(&paths, mode) {
        Ok(s) => s,
        Err(e) if mode == Mode::Machine => {
            sys::fatal_reboot(&format!("cannot start the supervisor: {e}"))
        }
        Err(e) => {
            tracing::error!("cannot start the supervisor: {e}");
            std::process::exit(1);
        }
    };
    // Stage 1's child that is still preparing /var, if any (as PID 1 only:
    // nobody else can be its parent). Tests stand in a child of their own.
    if let (false, Some(pid)) = (
        mode == Mode::Foreground,
        std::env::var(stage1::var::PID_ENV)
            .ok()
            .and_then(|p| p.parse().ok()),
    ) {
        sup.await_var(pid);
    }
    let kind = sup.run();
    sup.finish();
    match mode {
        Mode::Machine => {
            log::set_console_nonblocking(false);
            shutdown::final_step(kind)
        }
        _ => {
            tracing::info!("{kind:?} requested outside PID 1 of a machine: exiting 0");
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dev_paths() -> supervisor::Paths {
        supervisor::Paths {
            services_dir: Some("/tmp/svc".into()),
            init_config: "/tmp/init.toml".into(),
            run_dir: "/tmp/run".into(),
            ..supervisor::Paths::default()
        }
    }

    #[test]
    fn a_machine_ignores_every_development_override() {
        let (p, ignored) = development_overrides(Mode::Machine, dev_paths(), Some("/tmp/evil"));
        let d = supervisor::Paths::default();
        assert_eq!(p.services_dir, None);
        assert_eq!((p.init_config, p.run_dir), (d.init_config, d.run_dir));
        assert_eq!(ignored.len(), 4, "{ignored:?}");
        assert!(
            ignored[0].starts_with("fluxnode.services=/tmp/evil"),
            "{ignored:?}"
        );
        // Nothing given, nothing to say.
        let (_, none) = development_overrides(Mode::Machine, supervisor::Paths::default(), None);
        assert!(none.is_empty());
    }

    #[test]
    fn namespace_and_foreground_honour_them() {
        for mode in [Mode::Namespace, Mode::Foreground] {
            let (p, ignored) = development_overrides(mode, dev_paths(), Some("/x"));
            assert!(ignored.is_empty());
            // An argument beats the command line.
            assert_eq!(p.services_dir, Some("/tmp/svc".into()));
            assert_eq!(p.run_dir, PathBuf::from("/tmp/run"));
            let (p, _) = development_overrides(mode, supervisor::Paths::default(), Some("/x"));
            assert_eq!(p.services_dir, Some("/x".into()));
        }
    }
}
