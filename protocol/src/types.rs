//! Wire types: what node and registry exchange, as JSON. Binary TPM
//! structures travel as hex strings, exactly as the TPM produced them
//! (the verifier hashes and checks the bytes it was sent, never a
//! re-encoding).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SHA-256 digest, hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sha256Digest(pub [u8; 32]);

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(Sha256Digest(out))
    }
}

/// A quote as the TPM returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedQuote {
    /// TPMS_ATTEST, the signed bytes.
    #[serde(with = "hex::serde")]
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE over `attest`.
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

/// PCR values a node claims (the quote carries only their digest).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PcrValues {
    /// The SHA-256 bank: index → value.
    pub sha256: BTreeMap<u8, Sha256Digest>,
}

/// What the verifier accepts as the measured software.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PcrPolicy {
    /// SHA-256 PCRs every quote must cover (e.g. 9, 11, 12).
    pub required: Vec<u8>,
    /// For each pinned PCR, the values allowed (golden values from released
    /// manifests). A pinned PCR is required as well.
    pub allowed: BTreeMap<u8, Vec<Sha256Digest>>,
}

impl PcrPolicy {
    /// Every PCR a quote must cover: `required` and the pinned ones,
    /// ascending, without duplicates.
    pub fn covered(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self
            .required
            .iter()
            .chain(self.allowed.keys())
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// A refusal as the registry sends it: a stable code for machines, a
/// message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// [`crate::verdict::Verdict::code`].
    pub code: String,
    /// The verdict's `Display`.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_types_round_trip_json() -> Result<(), serde_json::Error> {
        let q = SignedQuote {
            attest: vec![0xff, 0x54, 0x43, 0x47],
            signature: vec![0, 0x14],
        };
        let j = serde_json::to_string(&q)?;
        assert_eq!(j, r#"{"attest":"ff544347","signature":"0014"}"#);
        assert_eq!(serde_json::from_str::<SignedQuote>(&j)?, q);

        let mut v = PcrValues::default();
        v.sha256.insert(11, Sha256Digest([0xab; 32]));
        let j = serde_json::to_string(&v)?;
        assert!(j.starts_with(r#"{"sha256":{"11":"abab"#), "{j}");
        assert_eq!(serde_json::from_str::<PcrValues>(&j)?, v);

        let mut p = PcrPolicy {
            required: vec![9, 12],
            ..PcrPolicy::default()
        };
        p.allowed.insert(11, vec![Sha256Digest([1; 32])]);
        let j = serde_json::to_string(&p)?;
        assert_eq!(serde_json::from_str::<PcrPolicy>(&j)?, p);
        assert_eq!(p.covered(), vec![9, 11, 12]);

        let r = Rejection {
            code: "bad_magic".into(),
            message: "m".into(),
        };
        let j = serde_json::to_string(&r)?;
        assert_eq!(serde_json::from_str::<Rejection>(&j)?, r);
        Ok(())
    }

    #[test]
    fn bad_hex_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<Sha256Digest>(r#""abcd""#).is_err());
        assert!(serde_json::from_str::<Sha256Digest>(&format!("\"{}\"", "zz".repeat(32))).is_err());
        assert!(serde_json::from_str::<SignedQuote>(r#"{"attest":"f","signature":""}"#).is_err());
    }
}
