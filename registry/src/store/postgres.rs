//! The shared backend: PostgreSQL, for several registry instances behind a
//! load balancer. Every record is kept whole as JSONB (the types are
//! serde), next to the columns the once-only rules need, and each rule is
//! one statement or one transaction the database serializes:
//!
//! - a pending credential is taken by `DELETE ... RETURNING`: of two
//!   instances taking it at once, one gets the row, the other nothing;
//! - a node's id is the primary key and its EK digest is `UNIQUE`; an
//!   insert that hits either does nothing (`ON CONFLICT DO NOTHING`);
//! - a session changes by `UPDATE ... WHERE id = $id AND version = $v`:
//!   one row changed means this caller won;
//! - a heartbeat and an accepted verdict change a node's standing under
//!   `SELECT ... FOR UPDATE`, so concurrent ones apply one after the other.
//!
//! Unix-ms times and counters are `u64` in the records and `BIGINT` in the
//! columns: times beyond `i64::MAX` ms (the year 292 million) are clamped;
//! session versions are stored bit for bit (only compared for equality).

use std::time::Duration;

use fluxnode_protocol::cert::TierCertificate;
use fluxnode_protocol::messages::VerdictRecord;
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::{
    credit, from_json, HeartbeatOutcome, NodeRecord, NodeStanding, Pending, Policy, Result,
    SessionRecord, SessionState, Store, StoreError,
};

/// Connections one registry instance opens at most. With several instances
/// on one server, their sum must stay under the server's `max_connections`
/// (100 by default): 32 leaves room for three instances and an operator.
const MAX_CONNECTIONS: u32 = 32;

/// How long a request waits for a free connection before it fails (instead
/// of queueing without bound when the database is slow or gone).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The key of the advisory lock that serializes schema creation between
/// instances starting at once (`CREATE TABLE IF NOT EXISTS` alone is not
/// safe against a concurrent identical statement). Any fixed number: ASCII
/// "fluxnode".
const MIGRATION_LOCK: i64 = 0x666c_7578_6e6f_6465;

/// The schema. Keys are `COLLATE "C"` so that orders (nodes by id, a node's
/// verdicts) are byte orders, as in the redb backend, whatever the
/// database's locale.
const SCHEMA: &[&str] = &[
    r#"CREATE TABLE IF NOT EXISTS pending (
        node_id TEXT COLLATE "C" PRIMARY KEY,
        data JSONB NOT NULL
    )"#,
    r#"CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT COLLATE "C" PRIMARY KEY,
        ek_sha256 TEXT NOT NULL UNIQUE,
        data JSONB NOT NULL
    )"#,
    r#"CREATE TABLE IF NOT EXISTS standing (
        node_id TEXT COLLATE "C" PRIMARY KEY,
        data JSONB NOT NULL
    )"#,
    r#"CREATE TABLE IF NOT EXISTS verdicts (
        node_id TEXT COLLATE "C" NOT NULL,
        at_ms BIGINT NOT NULL,
        session_id TEXT COLLATE "C" NOT NULL,
        data JSONB NOT NULL,
        PRIMARY KEY (node_id, at_ms, session_id)
    )"#,
    r#"CREATE TABLE IF NOT EXISTS sessions (
        id TEXT COLLATE "C" PRIMARY KEY,
        node_id TEXT COLLATE "C" NOT NULL,
        state TEXT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        version BIGINT NOT NULL,
        data JSONB NOT NULL
    )"#,
    r#"CREATE INDEX IF NOT EXISTS sessions_open
        ON sessions (node_id, expires_at_ms) WHERE state <> 'closed'"#,
    r#"CREATE TABLE IF NOT EXISTS meta (
        key TEXT COLLATE "C" PRIMARY KEY,
        data JSONB NOT NULL
    )"#,
];

/// A registry database on a PostgreSQL server, shared by any number of
/// registry instances.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

/// An sqlx error, with the operation that hit it.
fn err(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Backend {
        backend: "postgres",
        message: format!("{op}: {e}"),
    }
}

/// A record as JSON text, bound as `$n::jsonb`.
fn json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
        key: "(encoding)".into(),
        message: e.to_string(),
    })
}

/// A Unix-ms time as a `BIGINT` (clamped; see the module's doc).
fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// A session version as a `BIGINT`, bit for bit (compared only for
/// equality, so the mapping only has to be one-to-one).
fn version(v: u64) -> i64 {
    v as i64
}

fn state(s: SessionState) -> &'static str {
    match s {
        SessionState::Offered => "offered",
        SessionState::Challenged => "challenged",
        SessionState::Closed => "closed",
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:pass@host/db`)
    /// and creates the schema if it is not there yet. Safe when several
    /// instances start at once: schema creation runs under an advisory
    /// lock.
    pub async fn connect(url: &str) -> Result<Self> {
        // Bounded: MAX_CONNECTIONS per instance, and a request that finds
        // all of them busy for ACQUIRE_TIMEOUT fails instead of waiting.
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(err("connecting to the database"))?;
        let store = PgStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        const OP: &str = "creating the schema";
        let mut tx = self.pool.begin().await.map_err(err(OP))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(err(OP))?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&mut *tx).await.map_err(err(OP))?;
        }
        tx.commit().await.map_err(err(OP))
    }

    async fn begin(&self, op: &'static str) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(err(op))
    }
}

/// Reads a node's standing and locks its row until `tx` ends, creating the
/// row (default standing) if there is none, so that there is always a row
/// to lock.
async fn lock_standing(
    tx: &mut Transaction<'static, Postgres>,
    node_id: &str,
    op: &'static str,
) -> Result<NodeStanding> {
    sqlx::query(
        "INSERT INTO standing (node_id, data) VALUES ($1, $2::jsonb) ON CONFLICT (node_id) DO NOTHING",
    )
    .bind(node_id)
    .bind(json(&NodeStanding::default())?)
    .execute(&mut **tx)
    .await
    .map_err(err(op))?;
    let row = sqlx::query("SELECT data::text FROM standing WHERE node_id = $1 FOR UPDATE")
        .bind(node_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(err(op))?;
    let data: String = row.try_get(0).map_err(err(op))?;
    from_json(node_id, data.as_bytes())
}

async fn write_standing(
    tx: &mut Transaction<'static, Postgres>,
    node_id: &str,
    s: &NodeStanding,
    op: &'static str,
) -> Result<()> {
    sqlx::query("UPDATE standing SET data = $2::jsonb WHERE node_id = $1")
        .bind(node_id)
        .bind(json(s)?)
        .execute(&mut **tx)
        .await
        .map_err(err(op))?;
    Ok(())
}

impl Store for PgStore {
    async fn put_pending(&self, p: &Pending) -> Result<()> {
        sqlx::query(
            "INSERT INTO pending (node_id, data) VALUES ($1, $2::jsonb)
             ON CONFLICT (node_id) DO UPDATE SET data = EXCLUDED.data",
        )
        .bind(&p.node_id)
        .bind(json(p)?)
        .execute(&self.pool)
        .await
        .map_err(err("put_pending"))?;
        Ok(())
    }

    async fn take_pending(&self, node_id: &str) -> Result<Option<Pending>> {
        const OP: &str = "take_pending";
        let row = sqlx::query("DELETE FROM pending WHERE node_id = $1 RETURNING data::text")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err(OP))?;
        match row {
            Some(r) => {
                let data: String = r.try_get(0).map_err(err(OP))?;
                Ok(Some(from_json(node_id, data.as_bytes())?))
            }
            None => Ok(None),
        }
    }

    async fn insert_node(&self, n: &NodeRecord) -> Result<bool> {
        // No conflict target: a clash on the id (primary key) or on the EK
        // (UNIQUE) both make it do nothing.
        let done = sqlx::query(
            "INSERT INTO nodes (node_id, ek_sha256, data) VALUES ($1, $2, $3::jsonb)
             ON CONFLICT DO NOTHING",
        )
        .bind(&n.node_id)
        .bind(n.ek_sha256.to_string())
        .bind(json(n)?)
        .execute(&self.pool)
        .await;
        match done {
            Ok(r) => Ok(r.rows_affected() == 1),
            // Not expected (ON CONFLICT covers both constraints), but a
            // unique violation means the same whatever raised it.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
            Err(e) => Err(err("insert_node")(e)),
        }
    }

    async fn node(&self, node_id: &str) -> Result<Option<NodeRecord>> {
        const OP: &str = "node";
        let row = sqlx::query("SELECT data::text FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err(OP))?;
        match row {
            Some(r) => {
                let data: String = r.try_get(0).map_err(err(OP))?;
                Ok(Some(from_json(node_id, data.as_bytes())?))
            }
            None => Ok(None),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        const OP: &str = "nodes";
        let rows = sqlx::query("SELECT node_id, data::text FROM nodes ORDER BY node_id")
            .fetch_all(&self.pool)
            .await
            .map_err(err(OP))?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0).map_err(err(OP))?;
                let data: String = r.try_get(1).map_err(err(OP))?;
                from_json(&id, data.as_bytes())
            })
            .collect()
    }

    async fn standing(&self, node_id: &str) -> Result<NodeStanding> {
        const OP: &str = "standing";
        let row = sqlx::query("SELECT data::text FROM standing WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err(OP))?;
        match row {
            Some(r) => {
                let data: String = r.try_get(0).map_err(err(OP))?;
                from_json(node_id, data.as_bytes())
            }
            None => Ok(NodeStanding::default()),
        }
    }

    async fn record_verdict(
        &self,
        node_id: &str,
        verdict: &VerdictRecord,
        accepted: Option<(Option<String>, Option<TierCertificate>)>,
    ) -> Result<()> {
        const OP: &str = "record_verdict";
        let data = json(verdict)?;
        let mut tx = self.begin(OP).await?;
        sqlx::query(
            "INSERT INTO verdicts (node_id, at_ms, session_id, data) VALUES ($1, $2, $3, $4::jsonb)
             ON CONFLICT (node_id, at_ms, session_id) DO UPDATE SET data = EXCLUDED.data",
        )
        .bind(node_id)
        .bind(ms(verdict.at_ms))
        .bind(&verdict.session_id)
        .bind(data)
        .execute(&mut *tx)
        .await
        .map_err(err(OP))?;
        if let Some((tier, certificate)) = accepted {
            let mut s = lock_standing(&mut tx, node_id, OP).await?;
            s.tier = tier;
            s.certificate = certificate;
            s.image = verdict.image.clone();
            s.pcr11 = verdict.pcr11.clone();
            write_standing(&mut tx, node_id, &s, OP).await?;
        }
        tx.commit().await.map_err(err(OP))
    }

    async fn verdicts(&self, node_id: &str, limit: usize) -> Result<Vec<VerdictRecord>> {
        const OP: &str = "verdicts";
        let rows = sqlx::query(
            "SELECT data::text FROM verdicts WHERE node_id = $1
             ORDER BY at_ms DESC, session_id DESC LIMIT $2",
        )
        .bind(node_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(err(OP))?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get(0).map_err(err(OP))?;
                from_json(node_id, data.as_bytes())
            })
            .collect()
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        seq: u64,
        boot_id: &str,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<HeartbeatOutcome> {
        const OP: &str = "heartbeat";
        let mut tx = self.begin(OP).await?;
        let known = sqlx::query("SELECT 1 FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err(OP))?
            .is_some();
        if !known {
            tx.rollback().await.map_err(err(OP))?;
            return Ok(HeartbeatOutcome::UnknownNode);
        }
        // The row stays locked until commit: a concurrent heartbeat (or
        // verdict) for this node waits here and then reads what this one
        // wrote, so a replayed sequence number is seen as stale.
        let mut s = lock_standing(&mut tx, node_id, OP).await?;
        if s.last_seen_ms.is_some() && seq <= s.last_seq {
            // Release the row now (dropping `tx` would too, but only when
            // the pool gets the connection back).
            tx.rollback().await.map_err(err(OP))?;
            return Ok(HeartbeatOutcome::Stale {
                last_seq: s.last_seq,
            });
        }
        s.uptime_ms = s
            .uptime_ms
            .saturating_add(credit(s.last_seen_ms, now_ms, grace_ms));
        s.last_seen_ms = Some(now_ms);
        s.last_seq = seq;
        s.boot_id = boot_id.to_string();
        write_standing(&mut tx, node_id, &s, OP).await?;
        tx.commit().await.map_err(err(OP))?;
        Ok(HeartbeatOutcome::Recorded {
            uptime_ms: s.uptime_ms,
        })
    }

    async fn put_session(&self, s: &SessionRecord) -> Result<()> {
        // Replaces a session of the same id, as the redb backend does.
        sqlx::query(
            "INSERT INTO sessions (id, node_id, state, expires_at_ms, version, data)
             VALUES ($1, $2, $3, $4, $5, $6::jsonb)
             ON CONFLICT (id) DO UPDATE SET node_id = EXCLUDED.node_id, state = EXCLUDED.state,
               expires_at_ms = EXCLUDED.expires_at_ms, version = EXCLUDED.version,
               data = EXCLUDED.data",
        )
        .bind(&s.session_id)
        .bind(&s.node_id)
        .bind(state(s.state))
        .bind(ms(s.expires_at_ms))
        .bind(version(s.version))
        .bind(json(s)?)
        .execute(&self.pool)
        .await
        .map_err(err("put_session"))?;
        Ok(())
    }

    async fn session(&self, id: &str) -> Result<Option<SessionRecord>> {
        const OP: &str = "session";
        let row = sqlx::query("SELECT data::text FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(err(OP))?;
        match row {
            Some(r) => {
                let data: String = r.try_get(0).map_err(err(OP))?;
                Ok(Some(from_json(id, data.as_bytes())?))
            }
            None => Ok(None),
        }
    }

    async fn swap_session(&self, s: &SessionRecord, expected_version: u64) -> Result<bool> {
        let mut next = s.clone();
        next.version = expected_version.wrapping_add(1);
        let r = sqlx::query(
            "UPDATE sessions SET node_id = $2, state = $3, expires_at_ms = $4, version = $5,
               data = $6::jsonb
             WHERE id = $1 AND version = $7",
        )
        .bind(&next.session_id)
        .bind(&next.node_id)
        .bind(state(next.state))
        .bind(ms(next.expires_at_ms))
        .bind(version(next.version))
        .bind(json(&next)?)
        .bind(version(expected_version))
        .execute(&self.pool)
        .await
        .map_err(err("swap_session"))?;
        Ok(r.rows_affected() == 1)
    }

    async fn open_sessions(&self, node_id: &str, now_ms: u64) -> Result<usize> {
        const OP: &str = "open_sessions";
        let row = sqlx::query(
            "SELECT count(*) FROM sessions
             WHERE node_id = $1 AND state <> 'closed' AND expires_at_ms > $2",
        )
        .bind(node_id)
        .bind(ms(now_ms))
        .fetch_one(&self.pool)
        .await
        .map_err(err(OP))?;
        let n: i64 = row.try_get(0).map_err(err(OP))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn policy(&self) -> Result<Policy> {
        const OP: &str = "policy";
        let row = sqlx::query("SELECT data::text FROM meta WHERE key = 'policy'")
            .fetch_optional(&self.pool)
            .await
            .map_err(err(OP))?;
        match row {
            Some(r) => {
                let data: String = r.try_get(0).map_err(err(OP))?;
                from_json("policy", data.as_bytes())
            }
            None => Ok(Policy::default()),
        }
    }

    async fn set_policy(&self, p: &Policy) -> Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, data) VALUES ('policy', $1::jsonb)
             ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data",
        )
        .bind(json(p)?)
        .execute(&self.pool)
        .await
        .map_err(err("set_policy"))?;
        Ok(())
    }
}
