//! The default backend: one redb file. redb commits are crash-safe (a power
//! cut leaves the last committed state) and write transactions are
//! serialized, so each compare-and-swap below is one write transaction.
//! Calls run on tokio's blocking pool: a commit waits for fsync.

use std::path::Path;
use std::sync::Arc;

use fluxnode_protocol::cert::TierCertificate;
use fluxnode_protocol::messages::VerdictRecord;
use redb::{Database, ReadableTable, TableDefinition};

use super::{
    credit, from_json, to_json, HeartbeatOutcome, NodeRecord, NodeStanding, Pending, Policy,
    Result, SessionRecord, SessionState, Store, StoreError,
};

const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const EKS: TableDefinition<&str, &str> = TableDefinition::new("eks");
const STANDING: TableDefinition<&str, &[u8]> = TableDefinition::new("standing");
/// Key: `node_id/at_ms (20 digits)/session_id`, so a prefix range is a
/// node's verdicts in time order.
const VERDICTS: TableDefinition<&str, &[u8]> = TableDefinition::new("verdicts");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Key: `node_id/session_id`, value: expiry (Unix ms).
const NODE_SESSIONS: TableDefinition<&str, u64> = TableDefinition::new("node_sessions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend: "redb",
        message: e.to_string(),
    }
}

/// A registry database in one file.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbStore")
    }
}

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| StoreError::Backend {
            backend: "redb",
            message: format!("opening {}: {e}", path.display()),
        })?;
        let tx = db.begin_write().map_err(err)?;
        {
            tx.open_table(PENDING).map_err(err)?;
            tx.open_table(NODES).map_err(err)?;
            tx.open_table(EKS).map_err(err)?;
            tx.open_table(STANDING).map_err(err)?;
            tx.open_table(VERDICTS).map_err(err)?;
            tx.open_table(SESSIONS).map_err(err)?;
            tx.open_table(NODE_SESSIONS).map_err(err)?;
            tx.open_table(META).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| err(format!("storage task: {e}")))?
    }
}

/// A write transaction; `durable = false` commits without waiting for
/// fsync (redb's `Durability::Eventual`: the commit is on disk with the
/// next durable one, and a crash loses at most such commits, never the
/// file's consistency). Each commit's fsync costs 4-9 ms on the build
/// machine's disk, which capped sessions/s (docs/BENCHMARKS.md).
fn begin(db: &Database, durable: bool) -> Result<redb::WriteTransaction> {
    let mut tx = db.begin_write().map_err(err)?;
    if !durable {
        tx.set_durability(redb::Durability::Eventual);
    }
    Ok(tx)
}

fn get(db: &Database, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>> {
    let tx = db.begin_read().map_err(err)?;
    let t = tx.open_table(table).map_err(err)?;
    let v = t.get(key).map_err(err)?.map(|g| g.value().to_vec());
    Ok(v)
}

impl Store for RedbStore {
    async fn put_pending(&self, p: &Pending) -> Result<()> {
        let (k, v) = (p.node_id.clone(), to_json(p)?);
        self.run(move |db| {
            let tx = db.begin_write().map_err(err)?;
            tx.open_table(PENDING)
                .map_err(err)?
                .insert(k.as_str(), v.as_slice())
                .map_err(err)?;
            tx.commit().map_err(err)
        })
        .await
    }

    async fn take_pending(&self, node_id: &str) -> Result<Option<Pending>> {
        let k = node_id.to_string();
        let v = self
            .run(move |db| {
                let tx = db.begin_write().map_err(err)?;
                let v = tx
                    .open_table(PENDING)
                    .map_err(err)?
                    .remove(k.as_str())
                    .map_err(err)?
                    .map(|g| g.value().to_vec());
                tx.commit().map_err(err)?;
                Ok(v)
            })
            .await?;
        v.map(|b| from_json(node_id, &b)).transpose()
    }

    async fn insert_node(&self, n: &NodeRecord) -> Result<bool> {
        let (id, ek, v) = (n.node_id.clone(), n.ek_sha256.to_string(), to_json(n)?);
        self.run(move |db| {
            let tx = db.begin_write().map_err(err)?;
            {
                let mut eks = tx.open_table(EKS).map_err(err)?;
                let mut nodes = tx.open_table(NODES).map_err(err)?;
                if eks.get(ek.as_str()).map_err(err)?.is_some()
                    || nodes.get(id.as_str()).map_err(err)?.is_some()
                {
                    return Ok(false);
                }
                eks.insert(ek.as_str(), id.as_str()).map_err(err)?;
                nodes.insert(id.as_str(), v.as_slice()).map_err(err)?;
            }
            tx.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }

    async fn node(&self, node_id: &str) -> Result<Option<NodeRecord>> {
        let k = node_id.to_string();
        let v = self.run(move |db| get(db, NODES, &k)).await?;
        v.map(|b| from_json(node_id, &b)).transpose()
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let all = self
            .run(|db| {
                let tx = db.begin_read().map_err(err)?;
                let t = tx.open_table(NODES).map_err(err)?;
                let mut out = Vec::new();
                for row in t.iter().map_err(err)? {
                    let (k, v) = row.map_err(err)?;
                    out.push((k.value().to_string(), v.value().to_vec()));
                }
                Ok(out)
            })
            .await?;
        all.iter().map(|(k, v)| from_json(k, v)).collect()
    }

    async fn standing(&self, node_id: &str) -> Result<NodeStanding> {
        let k = node_id.to_string();
        let v = self.run(move |db| get(db, STANDING, &k)).await?;
        Ok(v.map(|b| from_json(node_id, &b))
            .transpose()?
            .unwrap_or_default())
    }

    async fn record_verdict(
        &self,
        node_id: &str,
        verdict: &VerdictRecord,
        accepted: Option<(Option<String>, Option<TierCertificate>)>,
    ) -> Result<()> {
        let id = node_id.to_string();
        let key = format!("{node_id}/{:020}/{}", verdict.at_ms, verdict.session_id);
        let v = to_json(verdict)?;
        let verdict = verdict.clone();
        self.run(move |db| {
            let tx = db.begin_write().map_err(err)?;
            {
                tx.open_table(VERDICTS)
                    .map_err(err)?
                    .insert(key.as_str(), v.as_slice())
                    .map_err(err)?;
                if let Some((tier, certificate)) = accepted {
                    let mut t = tx.open_table(STANDING).map_err(err)?;
                    let mut s: NodeStanding = match t.get(id.as_str()).map_err(err)? {
                        Some(g) => from_json(&id, g.value())?,
                        None => NodeStanding::default(),
                    };
                    s.tier = tier;
                    s.certificate = certificate;
                    s.image = verdict.image;
                    s.pcr11 = verdict.pcr11;
                    let b = to_json(&s)?;
                    t.insert(id.as_str(), b.as_slice()).map_err(err)?;
                }
            }
            tx.commit().map_err(err)
        })
        .await
    }

    async fn verdicts(&self, node_id: &str, limit: usize) -> Result<Vec<VerdictRecord>> {
        let lo = format!("{node_id}/");
        let hi = format!("{node_id}0"); // '0' follows '/' in ASCII
        let rows = self
            .run(move |db| {
                let tx = db.begin_read().map_err(err)?;
                let t = tx.open_table(VERDICTS).map_err(err)?;
                let mut out = Vec::new();
                for row in t.range(lo.as_str()..hi.as_str()).map_err(err)?.rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, v) = row.map_err(err)?;
                    out.push((k.value().to_string(), v.value().to_vec()));
                }
                Ok(out)
            })
            .await?;
        rows.iter().map(|(k, v)| from_json(k, v)).collect()
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        seq: u64,
        boot_id: &str,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<HeartbeatOutcome> {
        let (id, boot) = (node_id.to_string(), boot_id.to_string());
        self.run(move |db| {
            // A heartbeat lost in a crash is a minute of uptime not
            // credited; it need not wait for fsync.
            let tx = begin(db, false)?;
            let out = {
                if tx
                    .open_table(NODES)
                    .map_err(err)?
                    .get(id.as_str())
                    .map_err(err)?
                    .is_none()
                {
                    return Ok(HeartbeatOutcome::UnknownNode);
                }
                let mut t = tx.open_table(STANDING).map_err(err)?;
                let mut s: NodeStanding = match t.get(id.as_str()).map_err(err)? {
                    Some(g) => from_json(&id, g.value())?,
                    None => NodeStanding::default(),
                };
                if s.last_seen_ms.is_some() && seq <= s.last_seq {
                    return Ok(HeartbeatOutcome::Stale {
                        last_seq: s.last_seq,
                    });
                }
                s.uptime_ms += credit(s.last_seen_ms, now_ms, grace_ms);
                s.last_seen_ms = Some(now_ms);
                s.last_seq = seq;
                s.boot_id = boot;
                let b = to_json(&s)?;
                t.insert(id.as_str(), b.as_slice()).map_err(err)?;
                HeartbeatOutcome::Recorded {
                    uptime_ms: s.uptime_ms,
                }
            };
            tx.commit().map_err(err)?;
            Ok(out)
        })
        .await
    }

    async fn put_session(&self, s: &SessionRecord) -> Result<()> {
        let (id, ix, exp, open, v) = (
            s.session_id.clone(),
            format!("{}/{}", s.node_id, s.session_id),
            s.expires_at_ms,
            s.state != SessionState::Closed,
            to_json(s)?,
        );
        self.run(move |db| {
            // A new offer: losing it in a crash costs the node a retry
            // (session_unknown), so it need not wait for fsync.
            let tx = begin(db, !open)?;
            tx.open_table(SESSIONS)
                .map_err(err)?
                .insert(id.as_str(), v.as_slice())
                .map_err(err)?;
            let mut index = tx.open_table(NODE_SESSIONS).map_err(err)?;
            if open {
                index.insert(ix.as_str(), exp).map_err(err)?;
            } else {
                index.remove(ix.as_str()).map_err(err)?;
            }
            drop(index);
            tx.commit().map_err(err)
        })
        .await
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let k = id.to_string();
        let v = self.run(move |db| get(db, SESSIONS, &k)).await?;
        v.map(|b| from_json(id, &b)).transpose()
    }

    async fn swap_session(&self, s: &SessionRecord, expected_version: u64) -> Result<bool> {
        let mut next = s.clone();
        next.version = expected_version + 1;
        let (id, ix, closed, exp, v) = (
            s.session_id.clone(),
            format!("{}/{}", s.node_id, s.session_id),
            s.state == SessionState::Closed,
            s.expires_at_ms,
            to_json(&next)?,
        );
        // Changes that stay in `offered` are the bandwidth measurement:
        // losing one in a crash makes the session end as
        // bandwidth_not_measured and the node retries. Every change of
        // state (evidence taken, verdict) is single use and waits for fsync.
        let durable = s.state != SessionState::Offered;
        self.run(move |db| {
            let tx = begin(db, durable)?;
            {
                let mut t = tx.open_table(SESSIONS).map_err(err)?;
                let current: Option<SessionRecord> = match t.get(id.as_str()).map_err(err)? {
                    Some(g) => Some(from_json(&id, g.value())?),
                    None => None,
                };
                match current {
                    Some(c) if c.version == expected_version => {}
                    _ => return Ok(false),
                }
                t.insert(id.as_str(), v.as_slice()).map_err(err)?;
                // The index follows the session's state and deadline.
                let mut index = tx.open_table(NODE_SESSIONS).map_err(err)?;
                if closed {
                    index.remove(ix.as_str()).map_err(err)?;
                } else {
                    index.insert(ix.as_str(), exp).map_err(err)?;
                }
            }
            tx.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }

    async fn open_sessions(&self, node_id: &str, now_ms: u64) -> Result<usize> {
        let lo = format!("{node_id}/");
        let hi = format!("{node_id}0");
        self.run(move |db| {
            let tx = db.begin_read().map_err(err)?;
            let t = tx.open_table(NODE_SESSIONS).map_err(err)?;
            let mut n = 0;
            for row in t.range(lo.as_str()..hi.as_str()).map_err(err)? {
                let (_, exp) = row.map_err(err)?;
                if exp.value() > now_ms {
                    n += 1;
                }
            }
            Ok(n)
        })
        .await
    }

    async fn policy(&self) -> Result<Policy> {
        let v = self.run(|db| get(db, META, "policy")).await?;
        Ok(v.map(|b| from_json("policy", &b))
            .transpose()?
            .unwrap_or_default())
    }

    async fn set_policy(&self, p: &Policy) -> Result<()> {
        let v = to_json(p)?;
        self.run(move |db| {
            let tx = db.begin_write().map_err(err)?;
            tx.open_table(META)
                .map_err(err)?
                .insert("policy", v.as_slice())
                .map_err(err)?;
            tx.commit().map_err(err)
        })
        .await
    }
}
