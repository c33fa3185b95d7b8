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
pub mod service;
pub mod shutdown;
pub mod spawn;
pub mod stage1;
pub mod supervisor;
pub mod sys;
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

As PID 1 in an initramfs (with /etc/initrd-release) it runs stage 1 instead.

OPTIONS (stage 2; the kernel command line's fluxnode.* keys give the same):
    --services DIR     service files           [fluxnode.services=, /etc/fluxnode/services.d]
    --config FILE      init's settings         [/etc/fluxnode/init.toml]
    --run-dir DIR      sockets                 [/run/fluxnode]
    --debug            debug logging           [fluxnode.debug]
                       console lines stamped with seconds since boot
                                               [fluxnode.timestamps]

SIGNALS:
    SIGTERM, SIGPWR    ordered poweroff (in a test namespace: ordered exit 0)
    SIGINT             ordered reboot (Ctrl-Alt-Del)
    SIGUSR1            print every service's status to the console
    SIGUSR2            toggle debug logging
    SIGHUP             ignored (service files are read at boot)
";

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
    if std::process::id() == 1 && Path::new("/etc/initrd-release").exists() {
        stage1::run();
    }
    let mode = Mode::detect();
    match parse_args(&args) {
        Ok(Some(paths_debug)) => stage2(mode, paths_debug.0, paths_debug.1),
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

fn parse_args(args: &[String]) -> Result<Option<(supervisor::Paths, bool)>, String> {
    let mut paths = supervisor::Paths::default();
    let mut debug = false;
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
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // Sockets are handed to services by path: it must be absolute.
    paths.run_dir = std::path::absolute(&paths.run_dir).map_err(|e| format!("--run-dir: {e}"))?;
    Ok(Some((paths, debug)))
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
    log::set_timestamps(cmdline.flag("fluxnode.timestamps"));
    if let (Some(dir), None) = (cmdline.get("fluxnode.services"), &paths.services_dir) {
        paths.services_dir = Some(dir.into());
    }
    if mode == Mode::Machine {
        log::set_console_nonblocking(true);
        // Ctrl-Alt-Del then arrives as SIGINT instead of an instant reboot.
        // SAFETY: reboot with a plain command.
        unsafe { libc::reboot(libc::RB_DISABLE_CAD) };
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
