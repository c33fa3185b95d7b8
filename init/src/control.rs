//! The control socket and its client, `fluxnode-init ctl`.
//!
//! A stream socket (`/run/fluxnode/control.sock`), one request per
//! connection: a single line, `VERB [ARG]`. The answer is `ok` or
//! `error: WHY` on the first line, then the body. Text on purpose: an
//! operator can talk to it with `socat` when the client is not at hand.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Every service, as text.
    Status,
    /// Every service, as JSON.
    StatusJson,
    /// A service's captured output.
    Logs(String),
    /// Stop then start a service.
    Restart(String),
    /// Stop a service (it stays stopped).
    Stop(String),
    /// Start a stopped or failed service.
    Start(String),
    /// Ordered reboot.
    Reboot,
    /// Ordered poweroff.
    Poweroff,
}

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 512;

impl Request {
    /// Parses a request line.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut w = line.split_whitespace();
        let verb = w.next().unwrap_or("");
        let arg = w.next().map(str::to_owned);
        let need = |a: Option<String>| a.ok_or_else(|| format!("{verb} needs a service name"));
        let r = match verb {
            "status" => match arg.as_deref() {
                Some("json") => Request::StatusJson,
                None => Request::Status,
                Some(x) => return Err(format!("status takes no argument but json, got {x:?}")),
            },
            "logs" => Request::Logs(need(arg)?),
            "restart" => Request::Restart(need(arg)?),
            "stop" => Request::Stop(need(arg)?),
            "start" => Request::Start(need(arg)?),
            "reboot" => Request::Reboot,
            "poweroff" => Request::Poweroff,
            "" => return Err("empty request".into()),
            v => return Err(format!("unknown request {v:?}")),
        };
        Ok(r)
    }

    fn to_line(&self) -> String {
        match self {
            Request::Status => "status".into(),
            Request::StatusJson => "status json".into(),
            Request::Logs(n) => format!("logs {n}"),
            Request::Restart(n) => format!("restart {n}"),
            Request::Stop(n) => format!("stop {n}"),
            Request::Start(n) => format!("start {n}"),
            Request::Reboot => "reboot".into(),
            Request::Poweroff => "poweroff".into(),
        }
    }
}

/// Reads one request from a freshly accepted connection (with a short
/// timeout, so a silent client cannot hold PID 1).
pub fn read_request(stream: &UnixStream) -> Result<Request, String> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    let mut r = BufReader::new(stream.take(MAX_REQUEST as u64));
    r.read_line(&mut line)
        .map_err(|e| format!("reading request: {e}"))?;
    Request::parse(line.trim())
}

/// Writes an answer.
pub fn answer(mut stream: &UnixStream, result: Result<String, String>) {
    let text = match result {
        Ok(body) => format!("ok\n{body}"),
        Err(e) => format!("error: {e}\n"),
    };
    let _ = stream.write_all(text.as_bytes());
}

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
    match out.split_once('\n') {
        Some(("ok", body)) => Ok(body.to_string()),
        Some((err, _)) => Err(err.strip_prefix("error: ").unwrap_or(err).to_string()),
        None => Err(format!("no answer from {}", path.display())),
    }
}

/// Escapes a string for JSON.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(Request::parse("status"), Ok(Request::Status));
        assert_eq!(Request::parse("status json"), Ok(Request::StatusJson));
        assert_eq!(
            Request::parse("logs netd"),
            Ok(Request::Logs("netd".into()))
        );
        assert!(Request::parse("logs").is_err());
        assert!(Request::parse("format c:").is_err());
        assert!(Request::parse("").is_err());
        for r in [
            Request::Restart("a".into()),
            Request::Poweroff,
            Request::StatusJson,
        ] {
            assert_eq!(Request::parse(&r.to_line()), Ok(r));
        }
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
