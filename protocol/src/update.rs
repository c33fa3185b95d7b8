//! The update manifest: what a publisher signs (as a TUF target) and a node
//! checks before it writes a byte of an update.
//!
//! A manifest names one version's two payloads (the root slot image with
//! its verity tree, and the UKI), each cut into content-defined chunks
//! ([`chunk_boundaries`], FastCDC with fixed parameters, so publisher and
//! node cut the same bytes at the same places) with the sha256 of every
//! chunk. The node verifies each chunk against this list before writing
//! it, reuses chunks it already has (by hash), and may rebuild changed
//! chunks from a zstd patch against the version it runs ([`Patch`]).
//!
//! Everything here is pure: parsing with bounds ([`UpdateManifest::parse`]),
//! version order ([`cmp_versions`], systemd-boot's), the node's wave
//! ([`wave_position`], [`Waves::start_at`]) and the installability checks
//! ([`check_installable`]). The TUF metadata that carries the manifest is
//! verified by the `ota` crate (with `tough`) before this parser sees it.

use std::cmp::Ordering;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Manifest format this code writes and reads.
pub const FORMAT: u32 = 1;

/// The largest manifest accepted (bytes). A 2 GiB payload at the average
/// chunk size is ~32,768 chunks of ~90 bytes of JSON each: 3 MiB.
pub const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;

/// FastCDC parameters. Changing any of them changes every chunk boundary:
/// they are part of the format (format 1).
pub const CHUNK_MIN: usize = 16 * 1024;
/// Average chunk size (FastCDC 2020, normalization level 1).
pub const CHUNK_AVG: usize = 64 * 1024;
/// Largest chunk: also the largest buffer a node needs per chunk.
pub const CHUNK_MAX: usize = 256 * 1024;

/// The most chunks one payload may have (bounds the node's bitmap and
/// index; at the average size this is 4 GiB).
pub const MAX_CHUNKS: usize = 65_536;

/// How many wave positions there are: a node's position is in
/// `0..WAVE_POSITIONS`.
pub const WAVE_POSITIONS: u32 = 1024;

/// The signed description of one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The version (the UKI's IMAGE_VERSION).
    pub version: String,
    /// The oldest running version this update may be installed over: a
    /// node running an older one needs an intermediate update first.
    pub min_version: String,
    /// Anti-rollback: the version's security version, also on its UKI's
    /// command line (`fluxnode.secver=`), where stage 1 checks it against
    /// the node's minimum (a TPM NV counter).
    pub security_version: u64,
    /// Raise the node's minimum security version to [`Self::security_version`]
    /// once this version is blessed.
    #[serde(default)]
    pub raise_security_version: bool,
    /// Hardware and partition layout this version is built for; a node
    /// refuses any other string.
    pub compatible: String,
    /// When the release started (seconds since the Unix epoch): waves
    /// count from here.
    pub released_at: u64,
    /// Rollout waves; empty means everyone at once.
    #[serde(default)]
    pub waves: Vec<Wave>,
    /// The root slot image (erofs + verity tree).
    pub root: Payload,
    /// The unified kernel images, one per slot: a UKI's command line names
    /// its slot's partition and root hash, so the node installs the one
    /// for the slot it writes.
    pub ukis: Vec<SlotUki>,
}

/// The UKI for one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotUki {
    /// `a` or `b`.
    pub slot: String,
    /// Expected sha256-bank PCR 11 once systemd-stub measured this UKI
    /// (hex), as the image build predicts it; empty when unknown.
    #[serde(default)]
    pub pcr11_sha256: String,
    /// Expected sha256-bank PCR 12 (the command line as load options);
    /// empty when unknown.
    #[serde(default)]
    pub pcr12_sha256: String,
    /// Expected sha256-bank PCR 9 (the initrd and the kernel's load
    /// options); empty when unknown.
    #[serde(default)]
    pub pcr9_sha256: String,
    /// The UKI file.
    pub payload: Payload,
}

/// One rollout wave: nodes whose position is below `below_position` (and
/// not in an earlier wave) may start `start_after_s` after the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Exclusive upper bound of the positions in this wave (at most
    /// [`WAVE_POSITIONS`]).
    pub below_position: u32,
    /// Seconds after `released_at`.
    pub start_after_s: u64,
}

/// One payload of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Its TUF target name (the file the repository serves).
    pub target: String,
    /// Bytes.
    pub size: u64,
    /// sha256 of the whole payload (hex).
    pub sha256: String,
    /// Content-defined chunks in order; their lengths add up to `size`.
    pub chunks: Vec<Chunk>,
    /// Binary patches that rebuild this payload from an older version's.
    #[serde(default)]
    pub patches: Vec<Patch>,
}

/// One chunk: its length and hash; its offset is the sum of the lengths
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// Bytes (1 to [`CHUNK_MAX`]).
    pub len: u32,
    /// sha256 (hex in JSON).
    #[serde(with = "hex_array")]
    pub sha256: [u8; 32],
}

/// A zstd patch (`--patch-from`, long-distance matching) that turns the
/// payload of `from_version` into this payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// The version whose payload is the reference.
    pub from_version: String,
    /// Size of the reference payload (the node reads this many bytes of its
    /// running slot).
    pub from_size: u64,
    /// sha256 of the reference payload (hex): the node applies the patch
    /// only over exactly these bytes.
    pub from_sha256: String,
    /// TUF target name of the patch file.
    pub target: String,
    /// Bytes of the patch file.
    pub size: u64,
    /// sha256 of the patch file (hex).
    pub sha256: String,
    /// zstd window log the patch needs (the decoder's limit).
    pub window_log: u32,
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge(usize),
    /// Not valid JSON of this shape.
    #[error("manifest is not valid: {0}")]
    Json(String),
    /// A format this code does not know.
    #[error("manifest format {0} is not supported (this node reads format {FORMAT})")]
    Format(u32),
    /// A field's value is not allowed.
    #[error("manifest field {field}: {msg}")]
    Field {
        /// The field.
        field: String,
        /// What is wrong.
        msg: String,
    },
}

fn field(field: impl Into<String>, msg: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field: field.into(),
        msg: msg.into(),
    }
}

impl UpdateManifest {
    /// Parses and validates a manifest: every bound checked, every name safe
    /// to use as a file name, the chunk lengths adding up to each payload.
    pub fn parse(bytes: &[u8]) -> Result<UpdateManifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let m: UpdateManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// The checks [`Self::parse`] makes, for a manifest built in memory.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        check_version("version", &self.version)?;
        check_version("min_version", &self.min_version)?;
        if cmp_versions(&self.min_version, &self.version) == Ordering::Greater {
            return Err(field("min_version", "is newer than the version itself"));
        }
        if self.compatible.is_empty()
            || self.compatible.len() > 128
            || !self.compatible.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(field(
                "compatible",
                "must be 1 to 128 printable ASCII characters without spaces",
            ));
        }
        let mut last = 0u32;
        for (i, w) in self.waves.iter().enumerate() {
            if w.below_position <= last || w.below_position > WAVE_POSITIONS {
                return Err(field(
                    format!("waves[{i}].below_position"),
                    format!("must grow and be at most {WAVE_POSITIONS}"),
                ));
            }
            last = w.below_position;
        }
        if !self.waves.is_empty() && last != WAVE_POSITIONS {
            return Err(field(
                "waves",
                format!("the last wave must reach position {WAVE_POSITIONS} (every node)"),
            ));
        }
        self.root.validate("root")?;
        if self.ukis.is_empty() || self.ukis.len() > 2 {
            return Err(field("ukis", "must hold one UKI per slot (a, b)"));
        }
        for (i, u) in self.ukis.iter().enumerate() {
            let at = format!("ukis[{i}]");
            if !matches!(u.slot.as_str(), "a" | "b")
                || self.ukis[..i].iter().any(|o| o.slot == u.slot)
            {
                return Err(field(format!("{at}.slot"), "must be a or b, each once"));
            }
            if [&u.pcr11_sha256, &u.pcr12_sha256, &u.pcr9_sha256]
                .iter()
                .any(|p| !p.is_empty() && !is_hex_sha256(p))
            {
                return Err(field(
                    format!("{at}.pcr11_sha256"),
                    "is not 64 lowercase hex digits",
                ));
            }
            u.payload.validate(&format!("{at}.payload"))?;
            if u.payload.target == self.root.target {
                return Err(field(
                    format!("{at}.payload.target"),
                    "is the root's target too",
                ));
            }
        }
        Ok(())
    }

    /// The manifest as pretty JSON (what the publisher writes).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these plain types cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The UKI for a slot.
    pub fn uki_for(&self, slot: &str) -> Option<&SlotUki> {
        self.ukis.iter().find(|u| u.slot == slot)
    }
}

impl Payload {
    fn validate(&self, name: &str) -> Result<(), ManifestError> {
        check_target(&format!("{name}.target"), &self.target)?;
        if !is_hex_sha256(&self.sha256) {
            return Err(field(
                format!("{name}.sha256"),
                "is not 64 lowercase hex digits",
            ));
        }
        if self.size == 0 {
            return Err(field(format!("{name}.size"), "is zero"));
        }
        if self.chunks.len() > MAX_CHUNKS {
            return Err(field(
                format!("{name}.chunks"),
                format!("{} chunks, more than {MAX_CHUNKS}", self.chunks.len()),
            ));
        }
        let mut total = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            if c.len == 0 || c.len as usize > CHUNK_MAX {
                return Err(field(
                    format!("{name}.chunks[{i}].len"),
                    format!("must be 1 to {CHUNK_MAX}"),
                ));
            }
            total += u64::from(c.len);
        }
        if total != self.size {
            return Err(field(
                format!("{name}.chunks"),
                format!("lengths add up to {total}, not the size {}", self.size),
            ));
        }
        if self.patches.len() > 16 {
            return Err(field(format!("{name}.patches"), "more than 16 patches"));
        }
        for (i, p) in self.patches.iter().enumerate() {
            let at = format!("{name}.patches[{i}]");
            check_version(&format!("{at}.from_version"), &p.from_version)?;
            check_target(&format!("{at}.target"), &p.target)?;
            if !is_hex_sha256(&p.from_sha256) || !is_hex_sha256(&p.sha256) {
                return Err(field(at, "a sha256 is not 64 lowercase hex digits"));
            }
            if p.from_size == 0 || p.size == 0 {
                return Err(field(at, "a size is zero"));
            }
            if !(10..=MAX_WINDOW_LOG).contains(&p.window_log) {
                return Err(field(
                    format!("{at}.window_log"),
                    format!("must be 10 to {MAX_WINDOW_LOG}"),
                ));
            }
        }
        Ok(())
    }

    /// Each chunk with its offset.
    pub fn spans(&self) -> impl Iterator<Item = (u64, &Chunk)> + '_ {
        self.chunks.iter().scan(0u64, |off, c| {
            let at = *off;
            *off += u64::from(c.len);
            Some((at, c))
        })
    }
}

/// The largest zstd window a patch may ask for: 2 GiB of memory on the
/// node is never acceptable; 256 MiB (2^28) covers a root payload of that
/// size, and `--long=27` is what the publisher uses by default.
pub const MAX_WINDOW_LOG: u32 = 28;

fn check_version(name: &str, v: &str) -> Result<(), ManifestError> {
    // A version becomes part of a file name on the ESP
    // (`fluxnode-<version>+3.efi`) and of the boot menu: keep it to
    // characters systemd-boot and FAT take without escaping, and never a
    // '+' (the boot counter's separator).
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        || !v.as_bytes()[0].is_ascii_alphanumeric()
    {
        return Err(field(
            name,
            "must be 1 to 64 characters of [A-Za-z0-9._~-], starting with a letter or digit",
        ));
    }
    Ok(())
}

fn check_target(name: &str, t: &str) -> Result<(), ManifestError> {
    // A TUF target name the node requests as a URL path segment and may
    // store under /var: no directories, no dot files.
    if t.is_empty()
        || t.len() > 128
        || t.starts_with('.')
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
    {
        return Err(field(
            name,
            "must be 1 to 128 characters of [A-Za-z0-9._+-], not starting with '.'",
        ));
    }
    Ok(())
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Compares two versions the way systemd-boot orders its entries
/// (`strverscmp_improved`, restricted to the characters [`UpdateManifest`]
/// allows): runs of digits compare as numbers, `~` sorts before
/// everything (a pre-release), `-` and `_`… separate, letters compare as
/// bytes. "0.10.0" > "0.9.1"; "1.0~rc1" < "1.0".
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        // Skip separators that are neither alphanumeric nor '~' (systemd
        // ignores them, except that a run ends at them).
        let skip = |s: &[u8]| -> usize {
            s.iter()
                .take_while(|c| !c.is_ascii_alphanumeric() && **c != b'~' && **c != b'-')
                .count()
        };
        a = &a[skip(a)..];
        b = &b[skip(b)..];
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(b'-'), Some(b'-')) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (Some(b'-'), _) => return Ordering::Less,
            (_, Some(b'-')) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = trim_zeros(&a[..da]);
                let nb = trim_zeros(&b[..db]);
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(_)) if x.is_ascii_digit() => return Ordering::Greater,
            (Some(_), Some(y)) if y.is_ascii_digit() => return Ordering::Less,
            (Some(_), Some(_)) => {
                let la = a.iter().take_while(|c| c.is_ascii_alphabetic()).count();
                let lb = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
                let ord = a[..la].cmp(&b[..lb]);
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[la..];
                b = &b[lb..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|c| **c == b'0').count();
    &d[z..]
}

/// Cuts bytes into content-defined chunks with the format's parameters:
/// `(offset, length)` of each, in order.
pub fn chunk_boundaries(data: &[u8]) -> Vec<(u64, u32)> {
    fastcdc::v2020::FastCDC::new(data, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
        .map(|c| (c.offset as u64, c.length as u32))
        .collect()
}

/// Cuts a stream into chunks and hashes each: the publisher's and the
/// node's index of a payload. Reads at most `limit` bytes.
pub fn chunk_stream<R: Read>(reader: R, limit: u64) -> std::io::Result<Vec<Chunk>> {
    let mut out = Vec::new();
    for c in fastcdc::v2020::StreamCDC::new(reader.take(limit), CHUNK_MIN, CHUNK_AVG, CHUNK_MAX) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => std::io::Error::other(other.to_string()),
        })?;
        out.push(Chunk {
            len: c.length as u32,
            sha256: Sha256::digest(&c.data).into(),
        });
    }
    Ok(out)
}

/// A node's wave position, stable for its identity (e.g. its node id):
/// the first four bytes of sha256(identity) modulo [`WAVE_POSITIONS`].
pub fn wave_position(identity: &[u8]) -> u32 {
    let h = Sha256::digest(identity);
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % WAVE_POSITIONS
}

/// Rollout waves of a manifest.
#[derive(Debug, Clone, Copy)]
pub struct Waves<'a>(pub &'a UpdateManifest);

impl Waves<'_> {
    /// The earliest time (Unix seconds) a node at `position` may start
    /// installing.
    pub fn start_at(&self, position: u32) -> u64 {
        let m = self.0;
        let after = m
            .waves
            .iter()
            .find(|w| position < w.below_position)
            .map_or(0, |w| w.start_after_s);
        m.released_at.saturating_add(after)
    }
}

/// What the node knows about itself when it decides whether to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts<'a> {
    /// The version it runs.
    pub running_version: &'a str,
    /// Its compatibility string (from its image).
    pub compatible: &'a str,
    /// Bytes in the inactive root slot.
    pub slot_size: u64,
    /// Its minimum security version (the TPM NV counter), if it has one.
    pub min_security_version: u64,
}

/// Why a node refuses an update (each with a stable code for `--json`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The version is not newer than the one running.
    #[error("version {offered} is not newer than the running {running}: a downgrade is refused")]
    Downgrade {
        /// Offered version.
        offered: String,
        /// Running version.
        running: String,
    },
    /// The version is older than the node's minimum security version.
    #[error("version {offered} has security version {secver}, below this node's minimum {min}: an old, superseded version is never installed again")]
    BelowSecurityMinimum {
        /// Offered version.
        offered: String,
        /// Its security version.
        secver: u64,
        /// The node's minimum.
        min: u64,
    },
    /// The running version is older than the update's `min_version`.
    #[error("version {offered} can only be installed over {min_version} or newer; this node runs {running}: install an intermediate version first")]
    RunningTooOld {
        /// Offered version.
        offered: String,
        /// Its min_version.
        min_version: String,
        /// Running version.
        running: String,
    },
    /// Another compatibility string.
    #[error(
        "version {offered} is built for {offered_compatible:?}, this node is {node_compatible:?}"
    )]
    Incompatible {
        /// Offered version.
        offered: String,
        /// The manifest's string.
        offered_compatible: String,
        /// The node's string.
        node_compatible: String,
    },
    /// The root payload does not fit the slot.
    #[error("version {offered}'s root payload is {size} bytes, larger than the {slot} bytes of the slot")]
    TooBig {
        /// Offered version.
        offered: String,
        /// Payload bytes.
        size: u64,
        /// Slot bytes.
        slot: u64,
    },
}

impl Refusal {
    /// Stable code for machines.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Downgrade { .. } => "downgrade",
            Refusal::BelowSecurityMinimum { .. } => "below_security_minimum",
            Refusal::RunningTooOld { .. } => "running_too_old",
            Refusal::Incompatible { .. } => "incompatible",
            Refusal::TooBig { .. } => "too_big",
        }
    }
}

/// Whether a node may install this manifest; the first refusal otherwise.
/// `allow_downgrade` lets an operator go back to an older version, never
/// below the security minimum.
pub fn check_installable(
    m: &UpdateManifest,
    node: &NodeFacts<'_>,
    allow_downgrade: bool,
) -> Result<(), Refusal> {
    if m.compatible != node.compatible {
        return Err(Refusal::Incompatible {
            offered: m.version.clone(),
            offered_compatible: m.compatible.clone(),
            node_compatible: node.compatible.to_string(),
        });
    }
    if m.security_version < node.min_security_version {
        return Err(Refusal::BelowSecurityMinimum {
            offered: m.version.clone(),
            secver: m.security_version,
            min: node.min_security_version,
        });
    }
    if !allow_downgrade && cmp_versions(&m.version, node.running_version) != Ordering::Greater {
        return Err(Refusal::Downgrade {
            offered: m.version.clone(),
            running: node.running_version.to_string(),
        });
    }
    if cmp_versions(node.running_version, &m.min_version) == Ordering::Less {
        return Err(Refusal::RunningTooOld {
            offered: m.version.clone(),
            min_version: m.min_version.clone(),
            running: node.running_version.to_string(),
        });
    }
    if m.root.size > node.slot_size {
        return Err(Refusal::TooBig {
            offered: m.version.clone(),
            size: m.root.size,
            slot: node.slot_size,
        });
    }
    Ok(())
}

mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <&str>::deserialize(d)?;
        if !super::is_hex_sha256(s) {
            return Err(serde::de::Error::custom("not 64 lowercase hex digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Incompressible, non-periodic test bytes (xorshift64).
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn payload(target: &str, data: &[u8]) -> Payload {
        let chunks = chunk_stream(data, u64::MAX).unwrap_or_default();
        Payload {
            target: target.into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
            chunks,
            patches: vec![],
        }
    }

    fn manifest() -> UpdateManifest {
        let root = noise(300_000, 1);
        UpdateManifest {
            format: FORMAT,
            version: "0.2.0".into(),
            min_version: "0.1.0".into(),
            security_version: 2,
            raise_security_version: false,
            compatible: "fluxnode-x86_64-uefi-ab1".into(),
            released_at: 1_000,
            waves: vec![
                Wave {
                    below_position: 100,
                    start_after_s: 0,
                },
                Wave {
                    below_position: WAVE_POSITIONS,
                    start_after_s: 3600,
                },
            ],
            root: payload("root-0.2.0.img", &root),
            ukis: vec![
                SlotUki {
                    slot: "a".into(),
                    pcr11_sha256: String::new(),
                    pcr12_sha256: String::new(),
                    pcr9_sha256: String::new(),
                    payload: payload("uki-a-0.2.0.efi", b"MZ uki a"),
                },
                SlotUki {
                    slot: "b".into(),
                    pcr11_sha256: "ab".repeat(32),
                    pcr12_sha256: "cd".repeat(32),
                    pcr9_sha256: String::new(),
                    payload: payload("uki-b-0.2.0.efi", b"MZ uki b"),
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_validates() {
        let m = manifest();
        assert!(
            m.root.chunks.len() > 1,
            "300 KB must cut into several chunks"
        );
        let back = UpdateManifest::parse(&m.to_json()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn rejects_lengths_that_do_not_add_up_and_bad_names() {
        let mut m = manifest();
        m.root.chunks[0].len += 1;
        assert!(
            matches!(m.validate(), Err(ManifestError::Field { field, .. }) if field == "root.chunks")
        );
        let mut m = manifest();
        m.ukis[0].payload.target = "../etc/passwd".into();
        assert!(m.validate().is_err());
        let mut m = manifest();
        m.ukis[1].slot = "a".into();
        assert!(m.validate().is_err());
        let mut m = manifest();
        m.version = "1.0+3".into();
        assert!(m.validate().is_err(), "a '+' would read as a boot counter");
        let mut m = manifest();
        m.waves.pop();
        assert!(m.validate().is_err(), "waves must cover every node");
        let mut m = manifest();
        m.format = 2;
        assert_eq!(m.validate(), Err(ManifestError::Format(2)));
        assert!(matches!(
            UpdateManifest::parse(&vec![b' '; MAX_MANIFEST_BYTES + 1]),
            Err(ManifestError::TooLarge(_))
        ));
        let text = String::from_utf8(manifest().to_json()).unwrap().replacen(
            "\"len\"",
            "\"extra\": 1, \"len\"",
            1,
        );
        assert!(
            UpdateManifest::parse(text.as_bytes()).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn versions_order_like_systemd_boot() {
        use Ordering::*;
        for (a, b, o) in [
            ("0.10.0", "0.9.1", Greater),
            ("0.2.0", "0.2.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0.1", Less),
            ("1.0a", "1.0", Greater),
            ("2", "10", Less),
            ("007", "7", Equal),
            ("1.0-2", "1.0.2", Less),
        ] {
            assert_eq!(cmp_versions(a, b), o, "{a} vs {b}");
            assert_eq!(cmp_versions(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn chunks_are_content_defined() {
        // Insert bytes near the start: only the chunks around the edit
        // change, the rest keep their hashes.
        let data = noise(2_000_000, 2);
        let mut edited = data.clone();
        edited.splice(1000..1000, b"one string changed".iter().copied());
        let a = chunk_stream(&data[..], u64::MAX).unwrap();
        let b = chunk_stream(&edited[..], u64::MAX).unwrap();
        let known: std::collections::HashSet<_> = a.iter().map(|c| c.sha256).collect();
        let new = b.iter().filter(|c| !known.contains(&c.sha256)).count();
        assert!(a.len() > 10);
        assert!(new <= 2, "{new} of {} chunks changed", b.len());
        let bounds = chunk_boundaries(&data);
        assert_eq!(bounds.len(), a.len());
        assert!(bounds.iter().all(|(_, l)| (*l as usize) <= CHUNK_MAX));
    }

    #[test]
    fn waves_and_positions() {
        let m = manifest();
        let w = Waves(&m);
        assert_eq!(w.start_at(0), 1_000);
        assert_eq!(w.start_at(99), 1_000);
        assert_eq!(w.start_at(100), 4_600);
        assert_eq!(w.start_at(1023), 4_600);
        assert_eq!(wave_position(b"node-1"), wave_position(b"node-1"));
        let spread: std::collections::HashSet<_> = (0..200u32)
            .map(|i| wave_position(&i.to_le_bytes()) / 128)
            .collect();
        assert_eq!(spread.len(), 8, "positions spread over the range");
    }

    #[test]
    fn refusals() {
        let m = manifest();
        let ok = NodeFacts {
            running_version: "0.1.0",
            compatible: "fluxnode-x86_64-uefi-ab1",
            slot_size: 1 << 20,
            min_security_version: 1,
        };
        assert_eq!(check_installable(&m, &ok, false), Ok(()));
        let code =
            |n: NodeFacts<'_>, down: bool| check_installable(&m, &n, down).unwrap_err().code();
        assert_eq!(
            code(
                NodeFacts {
                    running_version: "0.2.0",
                    ..ok.clone()
                },
                false
            ),
            "downgrade"
        );
        assert_eq!(
            code(
                NodeFacts {
                    running_version: "0.3",
                    ..ok.clone()
                },
                false
            ),
            "downgrade"
        );
        assert!(check_installable(
            &m,
            &NodeFacts {
                running_version: "0.3",
                ..ok.clone()
            },
            true
        )
        .is_ok());
        assert_eq!(
            code(
                NodeFacts {
                    min_security_version: 3,
                    ..ok.clone()
                },
                true
            ),
            "below_security_minimum"
        );
        assert_eq!(
            code(
                NodeFacts {
                    running_version: "0.0.9",
                    ..ok.clone()
                },
                false
            ),
            "running_too_old"
        );
        assert_eq!(
            code(
                NodeFacts {
                    compatible: "other",
                    ..ok.clone()
                },
                false
            ),
            "incompatible"
        );
        assert_eq!(
            code(
                NodeFacts {
                    slot_size: 1000,
                    ..ok.clone()
                },
                false
            ),
            "too_big"
        );
    }
}
