//! PCR selections as tpm2-tools writes them: `sha256:0,1,7` or
//! `sha1:0+sha256:0,1,2`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{PcrSelectionList, PcrSelectionListBuilder, PcrSlot};

use crate::error::{Error, Result};

/// A hash bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bank {
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Bank {
    /// tpm2-tools' name.
    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha1 => "sha1",
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
            Bank::Sha512 => "sha512",
        }
    }

    pub(crate) fn alg(self) -> HashingAlgorithm {
        match self {
            Bank::Sha1 => HashingAlgorithm::Sha1,
            Bank::Sha256 => HashingAlgorithm::Sha256,
            Bank::Sha384 => HashingAlgorithm::Sha384,
            Bank::Sha512 => HashingAlgorithm::Sha512,
        }
    }
}

/// A PCR selection: banks in the order given, indices ascending and unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrSelection(pub Vec<(Bank, Vec<u8>)>);

impl FromStr for PcrSelection {
    type Err = Error;

    /// Parses `bank:i,j,k[+bank:...]`. Outside input: never panics.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::parse(
                "pcr selection",
                format!("{s:?}: {why}; expected e.g. sha256:0,1,7"),
            )
        };
        let mut out: Vec<(Bank, Vec<u8>)> = Vec::new();
        for part in s.split('+') {
            let (bank, list) = part
                .split_once(':')
                .ok_or_else(|| bad("missing ':'".into()))?;
            let bank = match bank.trim().to_ascii_lowercase().as_str() {
                "sha1" => Bank::Sha1,
                "sha256" => Bank::Sha256,
                "sha384" => Bank::Sha384,
                "sha512" => Bank::Sha512,
                other => return Err(bad(format!("unknown bank {other:?}"))),
            };
            if out.iter().any(|(b, _)| *b == bank) {
                return Err(bad(format!("bank {} twice", bank.name())));
            }
            let mut idx = Vec::new();
            for i in list.split(',') {
                let i: u8 = i
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("{i:?} is not a PCR index")))?;
                if i > 23 {
                    return Err(bad(format!("PCR {i} > 23")));
                }
                idx.push(i);
            }
            idx.sort_unstable();
            idx.dedup();
            out.push((bank, idx));
        }
        Ok(PcrSelection(out))
    }
}

impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(b, i)| {
                format!(
                    "{}:{}",
                    b.name(),
                    i.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
                )
            })
            .collect();
        f.write_str(&parts.join("+"))
    }
}

impl PcrSelection {
    pub(crate) fn to_tss(&self) -> Result<PcrSelectionList> {
        let mut b = PcrSelectionListBuilder::new();
        for (bank, idx) in &self.0 {
            let slots: Vec<PcrSlot> = idx
                .iter()
                .map(|i| PcrSlot::try_from(1u32 << i).map_err(|e| Error::tpm("PCR selection", e)))
                .collect::<Result<_>>()?;
            b = b.with_selection(bank.alg(), &slots);
        }
        b.build().map_err(|e| Error::tpm("PCR selection", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s: PcrSelection = "sha256:7,0,1".parse().unwrap_or(PcrSelection(vec![]));
        assert_eq!(s.to_string(), "sha256:0,1,7");
        let s: PcrSelection = "sha1:0+sha256:16".parse().unwrap_or(PcrSelection(vec![]));
        assert_eq!(s.0.len(), 2);
    }

    #[test]
    fn nasty_inputs_are_errors() {
        for t in [
            "",
            ":",
            "sha256",
            "sha256:",
            "sha256:24",
            "md5:1",
            "sha256:1+sha256:2",
            "sha256:-1",
            "sha256:1,,2",
            "sha256:999999999999",
        ] {
            assert!(t.parse::<PcrSelection>().is_err(), "{t:?} accepted");
        }
    }
}
