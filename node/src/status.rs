//! `fluxnode status`: "is my node ranked, and why not?" — identity, tier,
//! each figure against each tier's thresholds, the last verdict with its
//! reason, the next session, whether the registry is reachable, and the
//! uptime the registry has recorded.

use fluxnode_hal::tier::Classification;
use fluxnode_protocol::messages::NodeView;
use serde::Serialize;

use crate::agent::now_ms;
use crate::state::{AgentState, StateDir};

/// What `fluxnode status --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Node id, if registered.
    pub node_id: Option<String>,
    /// The registry.
    pub registry: String,
    /// Whether the registry answered just now (None: not asked).
    pub registry_reachable: Option<bool>,
    /// The tier, per the last verdict.
    pub tier: Option<String>,
    /// Whether the last session was accepted.
    pub last_accepted: Option<bool>,
    /// Its reason code when refused.
    pub last_reason_code: Option<String>,
    /// Its reason.
    pub last_reason: Option<String>,
    /// When (Unix ms).
    pub last_verdict_ms: Option<u64>,
    /// Each tier and what fell short.
    pub classification: Option<Classification>,
    /// Bandwidth the registry measured, Mb/s.
    pub bandwidth_mbps: Option<f64>,
    /// Next session (Unix ms).
    pub next_session_ms: Option<u64>,
    /// Last agent error.
    pub last_error: Option<String>,
    /// Uptime the registry recorded, s.
    pub uptime_s: Option<u64>,
    /// `online`/`offline` as the registry sees it.
    pub registry_state: Option<String>,
    /// Whether a tier certificate is on disk.
    pub certificate: bool,
    /// The last heartbeat the registry acknowledged (Unix ms): the update
    /// client's health check reads it ("registered and heartbeating").
    pub last_heartbeat_ms: Option<u64>,
}

/// Builds the status from the agent's state and, when given, the
/// registry's view of the node.
pub fn status(
    dir: &StateDir,
    st: &AgentState,
    view: Option<&NodeView>,
    reachable: Option<bool>,
) -> Status {
    let v = st.last_verdict.as_ref();
    Status {
        node_id: st.node_id.clone(),
        registry: st.registry.clone(),
        registry_reachable: reachable.or(st.registry_reachable),
        tier: view
            .and_then(|v| v.tier.clone())
            .or_else(|| v.and_then(|v| v.tier.clone())),
        last_accepted: v.map(|v| v.accepted),
        last_reason_code: v.and_then(|v| v.rejection.as_ref().map(|r| r.code.clone())),
        last_reason: v.and_then(|v| v.rejection.as_ref().map(|r| r.message.clone())),
        last_verdict_ms: st.last_verdict_ms,
        classification: v.and_then(|v| v.classification.clone()),
        bandwidth_mbps: v.and_then(|v| v.bandwidth_mbps),
        next_session_ms: st.next_session_ms,
        last_error: st.last_error.clone(),
        uptime_s: view.map(|v| v.uptime_s).or(st.registry_uptime_s),
        registry_state: view.map(|v| v.state.clone()),
        certificate: dir.certificate().is_some(),
        last_heartbeat_ms: st.last_heartbeat_ms,
    }
}

fn when(ms: Option<u64>) -> String {
    let Some(t) = ms else { return "-".into() };
    let now = now_ms();
    if t >= now {
        format!("in {} s", (t - now) / 1000)
    } else {
        format!("{} s ago", (now - t) / 1000)
    }
}

/// The human form.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<14}{v}\n"));
    line(
        "node:",
        s.node_id
            .clone()
            .unwrap_or_else(|| "not registered yet".into()),
    );
    line(
        "registry:",
        format!(
            "{} ({})",
            s.registry,
            match s.registry_reachable {
                Some(true) => "reachable",
                Some(false) => "UNREACHABLE",
                None => "not asked",
            }
        ),
    );
    line("tier:", s.tier.clone().unwrap_or_else(|| "none".into()));
    match (s.last_accepted, &s.last_reason_code) {
        (Some(true), _) => line(
            "last session:",
            format!("accepted {}", when(s.last_verdict_ms)),
        ),
        (Some(false), Some(code)) => line(
            "last session:",
            format!(
                "REFUSED {} ({code}): {}",
                when(s.last_verdict_ms),
                s.last_reason.clone().unwrap_or_default()
            ),
        ),
        _ => line("last session:", "none yet".into()),
    }
    line("next session:", when(s.next_session_ms));
    line(
        "uptime:",
        s.uptime_s.map_or("-".into(), |u| {
            format!(
                "{u} s as the registry recorded ({})",
                s.registry_state.clone().unwrap_or_else(|| "?".into())
            )
        }),
    );
    if let Some(bw) = s.bandwidth_mbps {
        line(
            "bandwidth:",
            format!("{bw:.1} Mb/s (measured by the registry)"),
        );
    }
    if let Some(e) = &s.last_error {
        line("last error:", e.clone());
    }
    if let Some(c) = &s.classification {
        o.push_str("figures against each tier:\n");
        for t in &c.tiers {
            if t.met {
                o.push_str(&format!("  {:<9} met\n", t.name));
            } else {
                for (i, sf) in t.shortfalls.iter().enumerate() {
                    let name = if i == 0 { t.name.as_str() } else { "" };
                    o.push_str(&format!("  {name:<9} {}\n", sf.text));
                }
            }
        }
    }
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use fluxnode_protocol::messages::SessionVerdict;
    use fluxnode_protocol::types::Rejection;

    #[test]
    fn a_refusal_shows_its_code_and_reason_and_the_shortfalls() {
        let d = tempfile::tempdir().unwrap();
        let dir = StateDir::new(d.path());
        let facts = fluxnode_hal::tier::Facts {
            threads: Some(2.0),
            ..Default::default()
        };
        let st = AgentState {
            node_id: Some("ab".repeat(16)),
            registry: "https://r:8443".into(),
            registry_reachable: Some(true),
            last_verdict: Some(SessionVerdict {
                session_id: "s".into(),
                accepted: false,
                rejection: Some(Rejection {
                    code: "image_not_allowed".into(),
                    message: "image not allowed: PCR 11 = 00 is not that of any image".into(),
                }),
                tier: None,
                classification: Some(fluxnode_hal::tier::classify(
                    &fluxnode_hal::tier::Policy::flux(),
                    &facts,
                )),
                bandwidth_mbps: None,
                certificate: None,
            }),
            ..AgentState::default()
        };
        let s = status(&dir, &st, None, None);
        assert_eq!(s.last_reason_code.as_deref(), Some("image_not_allowed"));
        let text = render(&s);
        assert!(
            text.contains("REFUSED")
                && text.contains("image_not_allowed")
                && text.contains("image not allowed"),
            "{text}"
        );
        assert!(
            text.contains("Cumulus") && text.contains("threads: 2 < 4"),
            "{text}"
        );
        assert!(text.contains("(reachable)"), "{text}");
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["last_reason_code"], "image_not_allowed");
    }
}
