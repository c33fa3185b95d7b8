//! The control protocol, without I/O: one request line per connection,
//! `VERB [ARG]`; the answer is `ok` or `error: WHY` on the first line, then
//! the body. Text on purpose: an operator can talk to it with `socat` when
//! the client is not at hand.

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
    /// Test seam, debug builds only (`__lose-exit NAME`): kill the
    /// service's process, reap it and panic before its exit is routed: the
    /// half-updated state a bug could leave, for the namespace test of the
    /// loop's recovery. Release builds (the appliance's) do not know it.
    #[cfg(debug_assertions)]
    InjectLostExit(String),
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
            #[cfg(debug_assertions)]
            "__lose-exit" => Request::InjectLostExit(need(arg)?),
            "" => return Err("empty request".into()),
            v => return Err(format!("unknown request {v:?}")),
        };
        Ok(r)
    }

    /// The request as a line (without the newline).
    pub fn to_line(&self) -> String {
        match self {
            Request::Status => "status".into(),
            Request::StatusJson => "status json".into(),
            Request::Logs(n) => format!("logs {n}"),
            Request::Restart(n) => format!("restart {n}"),
            Request::Stop(n) => format!("stop {n}"),
            Request::Start(n) => format!("start {n}"),
            Request::Reboot => "reboot".into(),
            Request::Poweroff => "poweroff".into(),
            #[cfg(debug_assertions)]
            Request::InjectLostExit(n) => format!("__lose-exit {n}"),
        }
    }
}

/// What a connection's bytes so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Not a whole line yet: read more.
    Partial,
    /// A whole request line (or the client closed its side after one).
    Request(Result<Request, String>),
    /// The client closed without sending anything.
    Nothing,
}

/// Looks for the request in `buf` (`eof`: the client has closed its
/// side). A line longer than [`MAX_REQUEST`] is refused rather than
/// buffered without end.
pub fn received(buf: &[u8], eof: bool) -> Received {
    let line = match buf.iter().position(|&b| b == b'\n') {
        Some(end) => &buf[..end],
        None if buf.len() >= MAX_REQUEST => {
            return Received::Request(Err(format!("request longer than {MAX_REQUEST} bytes")))
        }
        None if !eof => return Received::Partial,
        None if buf.is_empty() => return Received::Nothing,
        None => buf,
    };
    Received::Request(match std::str::from_utf8(line) {
        Ok(text) => Request::parse(text.trim()),
        Err(_) => Err("request is not UTF-8".into()),
    })
}

/// The bytes of an answer.
pub fn encode_answer(result: Result<String, String>) -> Vec<u8> {
    match result {
        Ok(body) => {
            let mut out = Vec::with_capacity(body.len() + 3);
            out.extend_from_slice(b"ok\n");
            out.extend_from_slice(body.as_bytes());
            out
        }
        Err(e) => format!("error: {e}\n").into_bytes(),
    }
}

/// Splits an answer into the body or the error init gave.
pub fn decode_answer(out: &str) -> Option<Result<String, String>> {
    match out.split_once('\n') {
        Some(("ok", body)) => Some(Ok(body.to_string())),
        Some((err, _)) => Some(Err(err.strip_prefix("error: ").unwrap_or(err).to_string())),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
    fn finds_the_request_in_what_came() {
        assert_eq!(received(b"sta", false), Received::Partial);
        assert_eq!(received(b"", true), Received::Nothing);
        assert_eq!(
            received(b"status\nrest", false),
            Received::Request(Ok(Request::Status))
        );
        // A client that closes its side after the line, without a newline.
        assert_eq!(
            received(b"logs a", true),
            Received::Request(Ok(Request::Logs("a".into())))
        );
        let long = vec![b'x'; MAX_REQUEST];
        assert!(matches!(received(&long, false), Received::Request(Err(_))));
        assert!(matches!(
            received(b"\xff\n", false),
            Received::Request(Err(_))
        ));
    }

    #[test]
    fn answers_round_trip() {
        let ok = String::from_utf8(encode_answer(Ok("a\nb\n".into()))).unwrap();
        assert_eq!(decode_answer(&ok), Some(Ok("a\nb\n".into())));
        let err = String::from_utf8(encode_answer(Err("no".into()))).unwrap();
        assert_eq!(decode_answer(&err), Some(Err("no".into())));
        assert_eq!(decode_answer(""), None);
    }
}
