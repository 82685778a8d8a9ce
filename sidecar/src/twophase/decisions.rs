//! `shardcar.decisions` on every shard: one row per transaction across
//! shards that this shard decided to commit, written in that transaction.
//! `pg_xact_status` answers for recent transactions; the row answers for
//! those too old for it (Postgres forgets commit status after freezing),
//! and is deleted once no shard still holds the transaction prepared.

use std::time::{Duration, Instant};

use super::gid::LOCK_CLASS;
use super::{Coordinator, Gid};
use crate::pool::Role;
use crate::pool::backend::{Answer, BackendConn, frame_error_text};
use crate::topology::ShardId;

/// Made by the first sidecar to get the lock; readable by the URL's user,
/// written by whichever user the client's transaction runs as
/// (passthrough users included).
fn create_sql() -> String {
    format!("SELECT pg_advisory_xact_lock({LOCK_CLASS}, -1); {CREATE}")
}

const CREATE: &str = "\
    CREATE SCHEMA IF NOT EXISTS shardcar; \
    CREATE TABLE IF NOT EXISTS shardcar.decisions (gid text PRIMARY KEY, decided_at timestamptz NOT NULL DEFAULT now()); \
    CREATE INDEX IF NOT EXISTS decisions_decided_at ON shardcar.decisions (decided_at); \
    GRANT USAGE ON SCHEMA shardcar TO PUBLIC; \
    GRANT INSERT ON shardcar.decisions TO PUBLIC";

/// How long a decision is kept at least: longer than any commit takes
/// between its first PREPARE and its decision, so a commit still under way
/// never loses its row.
const KEEP: &str = "10 minutes";

/// How often each sidecar deletes decisions no longer needed.
pub(super) const CLEANUP_INTERVAL: Duration = Duration::from_secs(300);

/// In the decider's transaction: the decision, then the commit that makes it.
pub(super) fn decide_sql(name: &str) -> String {
    format!("INSERT INTO shardcar.decisions (gid) VALUES ('{name}'); COMMIT")
}

/// What the decider says of a transaction.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Commit,
    Rollback,
    /// Its transaction is still open there: ask again later.
    Undecided,
}

/// Asks the decider (on `conn`) how transaction `gid` ended.
pub(super) async fn verdict(conn: &mut BackendConn, gid: &Gid, name: &str) -> Result<Verdict, String> {
    let sql = format!(
        "SELECT pg_xact_status('{}'::xid8)::text, EXISTS (SELECT 1 FROM shardcar.decisions WHERE gid = '{name}')",
        gid.xid
    );
    let answer = conn.run_control(&sql).await.map_err(|e| e.to_string())?;
    if let Some(frame) = answer.error {
        return Err(frame_error_text(frame));
    }
    let row = answer.rows.into_iter().next().ok_or("no answer")?;
    Ok(match (row.first().cloned().flatten().as_deref(), row.get(1).cloned().flatten().as_deref()) {
        (Some("committed"), _) => Verdict::Commit,
        (Some("aborted"), _) => Verdict::Rollback,
        (Some("in progress"), _) => Verdict::Undecided,
        // Too old for the commit log: the row is the decision.
        (None, Some("t")) => Verdict::Commit,
        (None, _) => Verdict::Rollback,
        (Some(other), _) => return Err(format!("pg_xact_status said {other}")),
    })
}

/// Deletes, on a decider, decisions older than `KEEP` that name none of
/// `prepared` (every shardcar transaction still prepared on any shard).
pub(super) fn cleanup_sql(prepared: &[String]) -> String {
    let list = prepared.iter().map(|g| format!("'{g}'")).collect::<Vec<_>>().join(", ");
    let keep = if prepared.is_empty() { String::new() } else { format!(" AND gid NOT IN ({list})") };
    format!("DELETE FROM shardcar.decisions WHERE decided_at < now() - interval '{KEEP}'{keep}")
}

impl Coordinator {
    /// Makes sure `shard` holds `shardcar.decisions`.
    pub(super) async fn ensure_table(&self, shard: ShardId) -> Result<(), String> {
        if self.is_ready(shard) {
            return Ok(());
        }
        let name = self.pools.topology.name(shard).to_string();
        let mut checkout = self
            .pools
            .checkout(shard, Role::Primary, None, None)
            .await
            .map_err(|e| format!("{name}: {}", e.message))?;
        let exists = "SELECT to_regclass('shardcar.decisions') IS NOT NULL";
        let made = match checkout.conn.run_control(exists).await {
            Ok(answer @ Answer { error: None, .. }) if answer.first_value() == Some("t") => Ok(()),
            Ok(_) => match checkout.conn.run_hidden(&create_sql()).await {
                Ok(r) => r,
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match made {
            Ok(()) => {
                self.ready.lock().unwrap_or_else(|p| p.into_inner()).insert(shard);
                Ok(())
            }
            Err(e) => Err(format!(
                "{name}: cannot create shardcar.decisions ({e}); transactions across shards cannot be decided there until it exists — let the shard URL's user create a schema, or run as an owner: {CREATE}"
            )),
        }
    }

    /// Whether it is time to delete decisions no longer needed.
    pub(super) fn cleanup_due(&self) -> bool {
        let mut last = self.last_cleanup.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(at) if at.elapsed() < CLEANUP_INTERVAL => false,
            _ => {
                *last = Some(Instant::now());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_keeps_what_is_still_prepared() {
        assert_eq!(
            cleanup_sql(&["shardcar_s0_7".into(), "shardcar_s1_9".into()]),
            "DELETE FROM shardcar.decisions WHERE decided_at < now() - interval '10 minutes' AND gid NOT IN ('shardcar_s0_7', 'shardcar_s1_9')"
        );
        assert!(!cleanup_sql(&[]).contains("NOT IN"));
    }
}
