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
//! PID 1 of a machine, powers off or reboots instead of returning.
#![deny(missing_docs)]

pub mod bless;
pub mod cmdline;
pub mod log;
pub mod powerbutton;
pub mod stage1;
pub mod sys;

/// The process entry point of the `fluxnode-init` binary.
pub fn main_entry() {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 && std::path::Path::new("/etc/initrd-release").exists() {
        stage1::run();
    }
    eprintln!("fluxnode-init: stage 2 not built yet ({} args)", args.len());
}
