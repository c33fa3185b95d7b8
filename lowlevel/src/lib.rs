//! # fluxnode-lowlevel
//!
//! The small pieces of plumbing that every fluxnode daemon needs and that
//! must behave the same in all of them: init (PID 1), netd, and the node
//! and update daemons to come.
//!
//! - [`cmdline`]: the kernel command line, split exactly as the kernel's
//!   own `next_arg()` splits it, so a quoted `key="a b"` means the same
//!   thing to every reader;
//! - [`signals`]: a signalfd for a blocked set of signals, and `poll(2)`
//!   over raw descriptors — the core of a one-thread event loop with no
//!   signal handlers;
//! - [`log`]: a `tracing` subscriber that writes one line per event, for
//!   a console or for init to capture;
//! - [`secret`]: key and identity files written 0600, atomically and
//!   durably (fsync the file, rename, fsync the directory);
//! - [`disk`]: the boot disk, its GPT and its partitions (stage 1, blessing
//!   and the update client find them the same way);
//! - [`tpmnv`]: the anti-rollback minimum in a TPM NV index, read with a
//!   raw TPM client (stage 1 has no TPM software stack);
//! - [`notify`]: the sd_notify client (READY=1, STATUS=, the watchdog)
//!   that netd and the update daemon send init, non-blocking;
//! - [`json`]: JSON string escaping for the few hand-written JSON outputs
//!   (a JSON library is not worth its code size in PID 1).
//!
//! Why one crate and not copies: the copies drifted. init honoured double
//! quotes on the command line and netd split on whitespace, so
//! `fluxnode.net.hostname="a b"` meant two different things on one boot.
//!
//! The crate depends only on what PID 1 already links (libc,
//! tracing-core, thiserror): init's resident memory tracks the code it
//! maps, and it is within a few hundred KiB of its 2 MiB goal.
//!
//! Why raw libc calls (each with a SAFETY comment) and not rustix or nix,
//! as issue 10 asked to weigh: rustix has no signalfd and no stable way to
//! set the signal mask, so it would remove only the one `poll` block; nix
//! would bring a second dependency tree into PID 1, whose resident memory
//! tracks its binary's size (1.86 MiB of the 2 MiB goal after this round).
//! The unsafe blocks that mattered were made safe by checks instead: the
//! notify socket's control-message walk now drops a message whose control
//! data or bytes were cut (`MSG_CTRUNC`, `MSG_TRUNC`).
#![deny(missing_docs)]

pub mod cmdline;
pub mod disk;
pub mod json;
pub mod log;
pub mod notify;
pub mod secret;
pub mod signals;
pub mod tpmnv;
