//! What init says is holding a boot back: its control socket's
//! `status json`, read once when a new version's boot is not blessed in
//! time, so the failure's reason names the service instead of "timed out".

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The most of init's answer read (its JSON is a few hundred bytes per
/// service).
const MAX_ANSWER: u64 = 256 * 1024;

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    services: Vec<Service>,
}

#[derive(Deserialize)]
struct Service {
    name: String,
    state: String,
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

/// The required services that are not ready, in words, from init's answer
/// to `status json` (`ok` line, then the JSON).
pub fn describe(answer: &str) -> String {
    let Some(body) = answer.strip_prefix("ok\n") else {
        return format!(
            "init's control socket answered {:?}",
            answer.lines().next().unwrap_or("")
        );
    };
    let Ok(st) = serde_json::from_str::<Status>(body.trim()) else {
        return "init's status was unreadable".into();
    };
    let waiting: Vec<String> = st
        .services
        .iter()
        .filter(|s| s.required && !s.ready)
        .map(|s| {
            let mut w = format!("{} ({}", s.name, s.state);
            if let Some(r) = s.reason.as_deref().filter(|r| !r.is_empty()) {
                w.push_str(": ");
                w.push_str(r);
            } else if !s.status.is_empty() {
                w.push_str(": ");
                w.push_str(&s.status);
            }
            w.push(')');
            w
        })
        .collect();
    if waiting.is_empty() {
        "every required service is ready, but the boot is not blessed".into()
    } else {
        format!("required services not ready: {}", waiting.join(", "))
    }
}

/// Asks init at `socket`; never fails (the answer is for a reason text).
pub fn not_ready(socket: &Path) -> String {
    let ask = || -> std::io::Result<String> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"status json\n")?;
        let mut buf = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match ask() {
        Ok(a) => describe(&a),
        Err(e) => format!(
            "a required service is not ready (init's control socket {}: {e})",
            socket.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_required_services_not_ready() {
        let a = "ok\n{\"boot_complete\":false,\"shutting_down\":false,\"services\":[\
            {\"name\":\"netd\",\"state\":\"running\",\"pid\":3,\"ready\":true,\"restarts\":0,\"failures\":0,\"required\":true,\"status\":\"\",\"reason\":null},\
            {\"name\":\"stuck\",\"state\":\"running\",\"pid\":4,\"ready\":false,\"restarts\":0,\"failures\":0,\"required\":true,\"status\":\"starting\",\"reason\":null},\
            {\"name\":\"gone\",\"state\":\"failed\",\"pid\":null,\"ready\":false,\"restarts\":5,\"failures\":5,\"required\":true,\"status\":\"\",\"reason\":\"start limit hit\"},\
            {\"name\":\"extra\",\"state\":\"running\",\"pid\":5,\"ready\":false,\"restarts\":0,\"failures\":0,\"required\":false,\"status\":\"\",\"reason\":null}]}\n";
        assert_eq!(
            describe(a),
            "required services not ready: stuck (running: starting), gone (failed: start limit hit)"
        );
        assert!(describe("error: no\n").contains("\"error: no\""));
        assert_eq!(describe("ok\nnot json"), "init's status was unreadable");
    }

    #[test]
    fn a_missing_socket_is_a_reason_not_a_failure() {
        let r = not_ready(Path::new("/nonexistent/control.sock"));
        assert!(r.contains("/nonexistent/control.sock"), "{r}");
    }
}
