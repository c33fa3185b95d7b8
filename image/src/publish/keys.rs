//! Signing keys: ed25519, generated with ring, stored one per file as
//! PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, what `openssl genpkey
//! -algorithm ed25519` writes too) in a keystore directory.
//!
//! A key's TUF id is the sha256 of its canonical public key JSON (tough's
//! `Key::key_id`); which roles it signs for is what the root metadata
//! lists. File names (`<role>-<first 16 hex of the id>.pem`) are for
//! people.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};
use tough::schema::{RoleType, Root};
use tough::sign::Sign;

use super::{file_err, io, PublishError, Result};

/// One signing key.
#[derive(Clone)]
pub struct KeyFile {
    /// Where it was read from or written to (empty for a key only in memory).
    pub path: PathBuf,
    pkcs8: Arc<Vec<u8>>,
    pair: Arc<Ed25519KeyPair>,
    key: Key,
    id: Decoded<Hex>,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("KeyFile")
            .field("path", &self.path)
            .field("id", &self.id_hex())
            .finish()
    }
}

impl KeyFile {
    /// A new random ed25519 key, in memory only (see [`KeyFile::save`]).
    pub fn generate() -> Result<KeyFile> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| PublishError::Invalid("generating an ed25519 key failed".into()))?;
        KeyFile::from_pkcs8(doc.as_ref().to_vec(), PathBuf::new())
    }

    /// A key from PKCS#8 DER bytes.
    pub fn from_pkcs8(der: Vec<u8>, path: PathBuf) -> Result<KeyFile> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|e| file_err(&path, format!("not a PKCS#8 ed25519 private key: {e}")))?;
        let key = Key::Ed25519 {
            keyval: Ed25519Key {
                public: pair.public_key().as_ref().to_vec().into(),
                _extra: HashMap::new(),
            },
            scheme: Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        };
        let id = key
            .key_id()
            .map_err(|e| file_err(&path, format!("computing the key id: {e}")))?;
        Ok(KeyFile {
            path,
            pkcs8: Arc::new(der),
            pair: Arc::new(pair),
            key,
            id,
        })
    }

    /// Reads a PEM key file.
    pub fn read(path: &Path) -> Result<KeyFile> {
        let text = std::fs::read(path).map_err(io("reading key", path))?;
        let p = pem::parse(&text).map_err(|e| file_err(path, format!("not a PEM file: {e}")))?;
        if p.tag() != "PRIVATE KEY" {
            return Err(file_err(
                path,
                format!(
                    "PEM block is {:?}, not an ed25519 \"PRIVATE KEY\" (PKCS#8)",
                    p.tag()
                ),
            ));
        }
        KeyFile::from_pkcs8(p.contents().to_vec(), path.into())
    }

    /// The key as PKCS#8 PEM text.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.pkcs8.as_slice().to_vec(),
        ))
    }

    /// Writes the key as `dir/<role>-<id prefix>.pem` (mode 0600), never
    /// over an existing file; returns the key with its path set.
    pub fn save(mut self, dir: &Path, role: &str) -> Result<KeyFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(io("creating keystore", dir))?;
        let path = dir.join(format!("{role}-{}.pem", &self.id_hex()[..16]));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("creating key file", &path))?;
        f.write_all(self.to_pem().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io("writing key file", &path))?;
        self.path = path;
        Ok(self)
    }

    /// The TUF public key.
    pub fn tuf_key(&self) -> &Key {
        &self.key
    }

    /// The TUF key id.
    pub fn id(&self) -> &Decoded<Hex> {
        &self.id
    }

    /// The key id in hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id.as_ref())
    }

    /// Signs `msg` (the canonical JSON of a role).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// The key as a tough key source (for `RepositoryEditor::sign`).
    pub fn source(&self) -> Box<dyn KeySource> {
        Box::new(self.clone())
    }
}

#[tough::async_trait]
impl KeySource for KeyFile {
    async fn as_sign(
        &self,
    ) -> std::result::Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>>
    {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.pkcs8)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(Box::new(pair))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("fluxnode-image key files are written by KeyFile::save".into())
    }
}

/// The keys at hand: every `*.pem` in one or more keystore directories
/// (e.g. the online one with timestamp and snapshot keys, and an offline
/// medium with the root keys).
#[derive(Debug, Clone, Default)]
pub struct Keystore {
    /// The keys, in file name order.
    pub keys: Vec<KeyFile>,
    /// Where they were read from (the first is where new keys go).
    pub dirs: Vec<PathBuf>,
}

impl Keystore {
    /// Reads every `*.pem` of `dirs` (each must exist).
    pub fn load(dirs: &[PathBuf]) -> Result<Keystore> {
        let mut keys: Vec<KeyFile> = Vec::new();
        for d in dirs {
            let rd = std::fs::read_dir(d).map_err(io("listing keystore", d))?;
            let mut paths = Vec::new();
            for e in rd {
                let e = e.map_err(io("listing keystore", d))?;
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pem") && p.is_file() {
                    paths.push(p);
                }
            }
            paths.sort();
            for p in paths {
                let k = KeyFile::read(&p)?;
                if !keys.iter().any(|o| o.id == k.id) {
                    keys.push(k);
                }
            }
        }
        Ok(Keystore {
            keys,
            dirs: dirs.to_vec(),
        })
    }

    /// A keystore of keys in memory (tests).
    pub fn from_keys(keys: Vec<KeyFile>) -> Keystore {
        Keystore {
            keys,
            dirs: Vec::new(),
        }
    }

    /// Where new keys are written.
    pub fn dir(&self) -> Result<&Path> {
        self.dirs
            .first()
            .map(PathBuf::as_path)
            .ok_or_else(|| PublishError::Invalid("no keystore directory given (--keys)".into()))
    }

    /// The keys `root` lists for `role`, of those at hand.
    pub fn for_role(&self, root: &Root, role: RoleType) -> Vec<KeyFile> {
        let Some(rk) = root.roles.get(&role) else {
            return Vec::new();
        };
        self.keys
            .iter()
            .filter(|k| rk.keyids.contains(&k.id) && root.keys.contains_key(&k.id))
            .cloned()
            .collect()
    }

    /// The keys `root` lists for `role`, at least its threshold of them.
    pub fn for_role_threshold(&self, root: &Root, role: RoleType) -> Result<Vec<KeyFile>> {
        let keys = self.for_role(root, role);
        let need = root.roles.get(&role).map_or(1, |r| r.threshold.get());
        if (keys.len() as u64) < need {
            return Err(PublishError::Keys {
                role: role.to_string(),
                msg: format!(
                    "root version {} needs {need} signature(s), {} of its keys are in {}",
                    root.version,
                    keys.len(),
                    self.describe_dirs()
                ),
            });
        }
        Ok(keys)
    }

    /// The key with this id, or the only one whose id starts with it.
    pub fn find(&self, id_prefix: &str) -> Option<&KeyFile> {
        let id_prefix = id_prefix.to_ascii_lowercase();
        let mut m = self
            .keys
            .iter()
            .filter(|k| k.id_hex().starts_with(&id_prefix));
        match (m.next(), m.next()) {
            (Some(k), None) => Some(k),
            _ => None,
        }
    }

    /// The keystore directories, for messages.
    pub fn describe_dirs(&self) -> String {
        if self.dirs.is_empty() {
            "the keys given".into()
        } else {
            self.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// Every key as a tough key source.
    pub fn sources(&self) -> Vec<Box<dyn KeySource>> {
        self.keys.iter().map(KeyFile::source).collect()
    }
}

/// The four top-level roles, in the order they are listed.
pub const ROLES: [RoleType; 4] = [
    RoleType::Root,
    RoleType::Targets,
    RoleType::Snapshot,
    RoleType::Timestamp,
];

/// A role from its name (`root`, `targets`, `snapshot`, `timestamp`).
pub fn role_from_name(name: &str) -> Result<RoleType> {
    ROLES
        .into_iter()
        .find(|r| r.to_string() == name)
        .ok_or_else(|| {
            PublishError::Invalid(format!(
                "unknown role {name:?}: use root, targets, snapshot or timestamp"
            ))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn keys_round_trip_through_pem_files() {
        let d = tempfile::tempdir().unwrap();
        let k = KeyFile::generate().unwrap().save(d.path(), "root").unwrap();
        assert!(k.to_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let name = k.path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("root-{}.pem", &k.id_hex()[..16]));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are not world-readable");
        let back = KeyFile::read(&k.path).unwrap();
        assert_eq!(back.id_hex(), k.id_hex());
        assert_eq!(back.sign(b"x"), k.sign(b"x"), "ed25519 is deterministic");
        // Saving twice never overwrites.
        assert!(k.clone().save(d.path(), "root").is_err());
        let other = KeyFile::generate().unwrap();
        assert_ne!(other.id_hex(), k.id_hex());
        let ks = Keystore::load(&[d.path().to_path_buf()]).unwrap();
        assert_eq!(ks.keys.len(), 1);
        assert!(ks.find(&k.id_hex()[..8]).is_some());
        assert!(ks.find("zz").is_none());
        // tough's signer from this key source signs the same bytes.
        let sign = crate::publish::block_on(k.as_sign()).unwrap().unwrap();
        assert_eq!(&sign.tuf_key(), k.tuf_key());
    }

    #[test]
    fn bad_key_files_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pem");
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = KeyFile::read(&p).unwrap_err().to_string();
        assert!(e.contains("x.pem") && e.contains("PRIVATE KEY"), "{e}");
        std::fs::write(&p, "not pem").unwrap();
        assert!(Keystore::load(&[d.path().to_path_buf()]).is_err());
        let e = Keystore::load(&[d.path().join("missing")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        assert!(role_from_name("root").is_ok());
        assert!(role_from_name("mirrors").is_err());
    }
}
