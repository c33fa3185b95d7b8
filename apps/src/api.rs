//! The app daemon's local API, as types: one JSON request per line on a
//! Unix socket, one JSON reply per line. Here so the parser sits with the
//! other outside-input parsers (and its fuzz target, `apps/fuzz`
//! `api_request`); the node serves it (`fluxnode_node::appd::api`).
//!
//! Requests: `{"op":"deploy","spec":{...}}`, `{"op":"ls"}`,
//! `{"op":"inspect","name":N}`, `{"op":"logs","name":N,"lines":K,"follow":B}`,
//! `{"op":"stop","name":N}`, `{"op":"start","name":N}`, `{"op":"rm","name":N}`.
//! Replies: `{"ok":true, ...}` or `{"ok":false,"error":"..."}`.

use serde::{Deserialize, Serialize};

use crate::spec::AppSpec;

/// The longest request line, newline included.
pub const MAX_REQUEST: usize = 256 * 1024;
/// The most log lines one `logs` request returns.
pub const MAX_LOG_LINES: usize = 10_000;

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Place (or replace) an app and start it.
    Deploy {
        /// The spec.
        spec: Box<AppSpec>,
    },
    /// Every app.
    Ls {},
    /// One app in detail.
    Inspect {
        /// The app.
        name: String,
    },
    /// An app's output.
    Logs {
        /// The app.
        name: String,
        /// The last this many lines (default 100, at most [`MAX_LOG_LINES`]).
        #[serde(default)]
        lines: Option<usize>,
        /// Keep sending new lines.
        #[serde(default)]
        follow: bool,
    },
    /// Stop an app.
    Stop {
        /// The app.
        name: String,
    },
    /// Start a stopped app.
    Start {
        /// The app.
        name: String,
    },
    /// Remove an app, its writable layer and volumes.
    Rm {
        /// The app.
        name: String,
    },
}

/// A request line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Over [`MAX_REQUEST`] or without its newline.
    #[error("a request is one JSON line of at most {MAX_REQUEST} bytes")]
    Framing,
    /// Not a request.
    #[error("bad request: {0}")]
    Parse(String),
    /// A deploy whose spec is invalid.
    #[error("the spec: {0}")]
    Spec(String),
}

/// Parses one request line (with its newline). A deploy's spec is
/// validated field by field, as `fluxnode app check` does.
pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST || !line.ends_with(b"\n") {
        return Err(RequestError::Framing);
    }
    let r: Request =
        serde_json::from_slice(line).map_err(|e| RequestError::Parse(e.to_string()))?;
    if let Request::Deploy { spec } = &r {
        spec.validate()
            .map_err(|e| RequestError::Spec(e.to_string()))?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn requests_parse_and_refuse() {
        assert_eq!(parse(b"{\"op\":\"ls\"}\n"), Ok(Request::Ls {}));
        assert_eq!(
            parse(b"{\"op\":\"logs\",\"name\":\"web\",\"follow\":true}\n"),
            Ok(Request::Logs {
                name: "web".into(),
                lines: None,
                follow: true
            })
        );
        assert_eq!(parse(b"{\"op\":\"ls\"}"), Err(RequestError::Framing));
        let mut big = vec![b' '; MAX_REQUEST];
        big.push(b'\n');
        assert_eq!(parse(&big), Err(RequestError::Framing));
        assert!(matches!(
            parse(b"{\"op\":\"reboot\"}\n"),
            Err(RequestError::Parse(_))
        ));
        assert!(matches!(
            parse(b"{\"op\":\"ls\",\"extra\":1}\n"),
            Err(RequestError::Parse(_))
        ));
        let bad = br#"{"op":"deploy","spec":{"name":"Web","image":"x","resources":{"cpu":1,"memory_mib":64,"disk_mib":10}}}
"#;
        match parse(bad) {
            Err(RequestError::Spec(why)) => assert!(why.contains("name"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
