//! Image references and content digests, as the OCI distribution spec
//! writes them: `[REGISTRY/]REPOSITORY[:TAG][@sha256:HEX]`.
//!
//! A reference without a registry means Docker Hub, and a one-component
//! repository there is under `library/` (`busybox` is
//! `docker.io/library/busybox:latest`), as every Docker-compatible client
//! reads it.

use std::fmt;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A reference or digest that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// The reference does not follow the grammar.
    #[error("{reference:?} is not an image reference: {why}")]
    Reference {
        /// The text given.
        reference: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The digest does not follow `sha256:` and 64 lower-case hex digits.
    #[error("{0:?} is not a digest: give sha256: and 64 lower-case hex digits (only sha256 is accepted)")]
    Digest(String),
}

/// A SHA-256 content digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Reads `sha256:HEX`.
    pub fn parse(s: &str) -> Result<Digest, ReferenceError> {
        let bad = || ReferenceError::Digest(s.chars().take(100).collect());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad())?;
        Ok(Digest(out))
    }

    /// The digest of these bytes.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(bytes).into())
    }

    /// The 64 hex digits, without `sha256:` (file names in the store).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`docker.io` when none was).
    pub registry: String,
    /// The repository path (`library/busybox`).
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// The pinned digest of the manifest (or index), when given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Reads a reference.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let err = |why| ReferenceError::Reference {
            reference: s.chars().take(300).collect(),
            why,
        };
        if s.is_empty() || s.len() > 512 {
            return Err(err("give 1 to 512 characters"));
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(err("a tag is 1-128 of letters, digits, '_', '.', '-', not starting with '.' or '-'"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        check_registry(&registry).map_err(err)?;
        if repository.is_empty() || repository.len() > 255 {
            return Err(err("the repository is 1 to 255 characters"));
        }
        for comp in repository.split('/') {
            if !path_component_ok(comp) {
                return Err(err("a repository is '/'-separated lower-case letters and digits, joined by '.', '_', '__' or '-'"));
            }
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) that serves the registry API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest when
    /// pinned (the tag is then only a label), else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_registry(r: &str) -> Result<(), &'static str> {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            return Err("a registry port is 1 to 65535");
        }
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err("a registry is a host name or address, with an optional :PORT")
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_names_expand_as_docker_reads_them() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), DOCKER_HUB_API);
        let r = Reference::parse("someone/app:1.2").unwrap();
        assert_eq!(r.repository, "someone/app");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
    }

    #[test]
    fn a_registry_with_a_port_is_not_read_as_a_tag() {
        let r = Reference::parse("127.0.0.1:5000/hello").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "hello");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = Reference::parse("localhost/a/b:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost", "a/b")
        );
    }

    #[test]
    fn a_pinned_digest_is_what_is_asked_for() {
        let r = Reference::parse(&format!("reg.example:443/app:1@sha256:{HEX}")).unwrap();
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert_eq!(r.tag.as_deref(), Some("1"));
        let r = Reference::parse(&format!("app@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag, None);
    }

    #[test]
    fn bad_references_and_digests_are_refused() {
        for bad in [
            "",
            "UPPER",
            "app:",
            "app:-x",
            "a//b",
            "a/-b",
            "a..b",
            "reg:0/app",
            "app@sha256:xyz",
            "app@sha512:00",
            &format!("app@sha256:{}", HEX.to_uppercase()),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Reference::parse("a__b-c--d/f_g.h").is_ok());
    }

    #[test]
    fn digests_round_trip() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
