//! What `ctl status` (and SIGUSR1) shows: every service's state, pid,
//! restarts and status text, as text or JSON. Pure functions of the
//! services, so the format is tested without a running init.

use std::fmt::Write as _;

use fluxnode_lowlevel::json::json_str;

use crate::service::{Service, State};

/// Facts about init as a whole, for the JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overview {
    /// The boot-complete condition has held (and its action ran or runs).
    pub boot_complete: bool,
    /// An ordered shutdown is under way.
    pub shutting_down: bool,
}

/// One line per service.
pub fn text(services: &[Service]) -> String {
    let mut o = String::new();
    for s in services {
        let pid = s.pid().map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let _ = write!(
            o,
            "{:<20} {:<9} pid {:<7} restarts {:<3}",
            s.spec.name,
            s.state.name(),
            pid,
            s.restarts
        );
        if s.spec.cfg.required {
            o.push_str(" required");
        }
        match &s.state {
            State::Failed(w) => {
                let _ = write!(o, " ({w})");
            }
            State::Exited(st) => {
                let _ = write!(o, " ({st})");
            }
            _ => {}
        }
        if !s.status_text.is_empty() {
            let _ = write!(o, " status: {}", s.status_text);
        }
        o.push('\n');
    }
    o
}

/// `{"boot_complete":…,"shutting_down":…,"services":[…]}` and a newline.
pub fn json(services: &[Service], overview: Overview) -> String {
    let mut o = format!(
        "{{\"boot_complete\":{},\"shutting_down\":{},\"services\":[",
        overview.boot_complete, overview.shutting_down
    );
    for (k, s) in services.iter().enumerate() {
        let reason = match &s.state {
            State::Failed(w) => json_str(w),
            State::Exited(st) => json_str(&st.to_string()),
            _ => "null".into(),
        };
        let _ = write!(
            o,
            "{}{{\"name\":{},\"state\":\"{}\",\"pid\":{},\"ready\":{},\"restarts\":{},\"failures\":{},\"required\":{},\"status\":{},\"reason\":{}}}",
            if k > 0 { "," } else { "" },
            json_str(&s.spec.name),
            s.state.name(),
            s.pid().map(|p| p.to_string()).unwrap_or_else(|| "null".into()),
            s.is_ready(),
            s.restarts,
            s.failures,
            s.spec.cfg.required,
            json_str(&s.status_text),
            reason
        );
    }
    o.push_str("]}\n");
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn svc(name: &str, extra: &str) -> Service {
        let spec = crate::config::parse_service(
            name,
            Path::new("/etc/x.toml"),
            &format!("argv = [\"/bin/true\"]\n{extra}"),
            Path::new("/"),
        )
        .unwrap();
        Service::new(spec, 10, 1024)
    }

    #[test]
    fn text_and_json() {
        let mut a = svc("a", "required = true");
        a.spawned(0, 12);
        a.status_text = "serving \"x\"".into();
        let mut b = svc("b", "");
        b.fail("start limit hit".into());
        let all = [a, b];
        let t = text(&all);
        assert!(t.starts_with("a                    running   pid 12      restarts 0   required status: serving \"x\"\n"), "{t}");
        assert!(
            t.contains(
                "b                    failed    pid -       restarts 0   (start limit hit)\n"
            ),
            "{t}"
        );
        let j = json(
            &all,
            Overview {
                boot_complete: false,
                shutting_down: true,
            },
        );
        assert!(j.starts_with("{\"boot_complete\":false,\"shutting_down\":true,\"services\":[{\"name\":\"a\",\"state\":\"running\",\"pid\":12,"), "{j}");
        assert!(j.contains("\"status\":\"serving \\\"x\\\"\""), "{j}");
        assert!(j.ends_with("\"reason\":\"start limit hit\"}]}\n"), "{j}");
    }
}
