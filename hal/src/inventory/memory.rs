//! Memory, from `/proc/meminfo`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Memory facts, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`: what a new workload can get without swapping.
    pub available_bytes: u64,
}

/// Reads `PROC/meminfo`; an unreadable file gives zeros.
pub fn read(proc_root: &Path) -> MemInfo {
    match std::fs::read_to_string(proc_root.join("meminfo")) {
        Ok(text) => parse(&text),
        Err(e) => {
            tracing::warn!("reading {}/meminfo: {e}", proc_root.display());
            MemInfo::default()
        }
    }
}

/// Parses the text of `/proc/meminfo` (values in kB). Total: any input gives an answer.
pub fn parse(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let Some(Ok(v)) = it.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match it.next() {
            Some("kB") => v.saturating_mul(1024),
            _ => v,
        };
        match key.trim() {
            "MemTotal" => m.total_bytes = bytes,
            "MemAvailable" => m.available_bytes = bytes,
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kb() {
        let m = parse("MemTotal:       24576000 kB\nMemFree: 1 kB\nMemAvailable:   1000 kB\n");
        assert_eq!(m.total_bytes, 24576000 * 1024);
        assert_eq!(m.available_bytes, 1024 * 1000);
    }

    #[test]
    fn nasty_inputs_do_not_panic() {
        for t in [
            "",
            "MemTotal:",
            "MemTotal: 99999999999999999999 kB",
            "MemTotal: -1 kB",
            ":::",
            "MemTotal: 18446744073709551615 kB",
        ] {
            let _ = parse(t);
        }
    }
}
