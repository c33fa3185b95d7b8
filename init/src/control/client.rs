//! `fluxnode-init ctl`: the client of the control socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::protocol::{decode_answer, Request};

/// Sends `req` to the socket at `path`: the body, or the error init gave.
pub fn call(path: &Path, req: &Request) -> Result<String, String> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach init at {}: {e} (is fluxnode-init running? try --socket)",
            path.display()
        )
    })?;
    s.write_all(format!("{}\n", req.to_line()).as_bytes())
        .map_err(|e| format!("sending to {}: {e}", path.display()))?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("reading from {}: {e}", path.display()))?;
    decode_answer(&out).unwrap_or_else(|| Err(format!("no answer from {}", path.display())))
}

const CTL_HELP: &str = "\
fluxnode-init ctl: talk to the running init

USAGE:
    fluxnode-init ctl [--socket PATH] COMMAND

COMMANDS:
    status [--json]    every service: state, pid, readiness, restarts, status text
    logs NAME          the last lines NAME wrote to stdout/stderr
    restart NAME       stop NAME (its stop signal, then SIGKILL after its timeout) and start it again
    stop NAME          stop NAME; it stays stopped until `start`
    start NAME         start a stopped or failed NAME
    reboot             ordered reboot: services stop in reverse dependency order
    poweroff           ordered poweroff

OPTIONS:
    --socket PATH      the control socket (default /run/fluxnode/control.sock,
                       or $FLUXNODE_CONTROL_SOCKET)
    --json             machine-readable output (status)
";

/// `fluxnode-init ctl ARGS`: returns the process exit code.
pub fn ctl_main(args: &[String]) -> i32 {
    let mut socket = std::env::var("FLUXNODE_CONTROL_SOCKET")
        .unwrap_or_else(|_| "/run/fluxnode/control.sock".into());
    let mut words = Vec::new();
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => match it.next() {
                Some(s) => socket = s.clone(),
                None => {
                    eprintln!("ctl: --socket needs a path");
                    return 2;
                }
            },
            "--json" => json = true,
            "-h" | "--help" | "help" => {
                print!("{CTL_HELP}");
                return 0;
            }
            w => words.push(w.to_string()),
        }
    }
    if json && words.first().map(String::as_str) == Some("status") && words.len() == 1 {
        words.push("json".into());
    }
    let req = match Request::parse(&words.join(" ")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ctl: {e}\n\n{CTL_HELP}");
            return 2;
        }
    };
    match call(Path::new(&socket), &req) {
        Ok(body) => {
            print!("{body}");
            0
        }
        Err(e) => {
            eprintln!("ctl: {e}");
            1
        }
    }
}
