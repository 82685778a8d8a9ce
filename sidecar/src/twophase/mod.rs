//! Transactions across shards: two-phase commit with shardcar as the
//! coordinator and the decision stored in Postgres.
//!
//! One participant, the decider, is committed one-phase; every other one is
//! prepared first. The decider's transaction writes a row naming the
//! transaction to `shardcar.decisions` and its commit is the decision, made
//! atomically with its own data (as Citus's coordinator commits its
//! `pg_dist_transaction` row with its local work). The prepared
//! transactions are named after the decider and its transaction id
//! (`gid.rs`), so any sidecar of the fleet — not only this one, and without
//! any file of this one — learns the outcome with `pg_xact_status` on the
//! decider (or from the row, once that id is too old to ask about) and
//! finishes them (`recovery.rs`). While a sidecar works on a transaction it
//! holds an advisory lock on the decider's id: a live coordinator is never
//! raced by another sidecar's recovery, and a dead one's lock goes with
//! its connection.

mod decisions;
mod gid;
mod recovery;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use futures_util::future::join_all;

pub use self::gid::Gid;
use crate::pool::Pools;
use crate::pool::backend::{Answer, BackendConn};
use crate::sqlerror::{SqlError, code};
use crate::topology::ShardId;

/// Test-only: `SHARDCAR_FAILPOINT=2pc-after-prepare` (or `2pc-after-decision`)
/// makes a commit stop there for good, so a test can kill the process at
/// that point.
const FAILPOINT_VAR: &str = "SHARDCAR_FAILPOINT";

/// One shard's connection in a transaction being finished.
pub struct Participant<'a> {
    pub conn: &'a mut BackendConn,
    pub label: &'a str,
    pub shard: ShardId,
}

/// How a COMMIT across shards ended.
pub enum Outcome {
    /// Committed. Shards listed could not be told yet: recovery finishes them.
    Committed { unfinished: Vec<String> },
    /// Rolled back everywhere because a shard refused to prepare or commit:
    /// its error, as it sent it.
    RolledBack { error: BytesMut },
}

pub struct Coordinator {
    pools: Arc<Pools>,
    /// Shards known to hold `shardcar.decisions`: those that can decide.
    ready: Mutex<HashSet<ShardId>>,
    /// Transactions this sidecar is committing now: its recovery leaves
    /// them alone (other sidecars are kept off by the advisory lock).
    in_flight: Mutex<HashSet<String>>,
    /// When decisions no longer needed were last deleted.
    last_cleanup: Mutex<Option<Instant>>,
    failpoint: Option<String>,
}

impl Coordinator {
    pub fn new(pools: Arc<Pools>) -> Coordinator {
        Coordinator {
            pools,
            ready: Mutex::default(),
            in_flight: Mutex::default(),
            last_cleanup: Mutex::default(),
            failpoint: std::env::var(FAILPOINT_VAR).ok(),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_ready(&self, shard: ShardId) -> bool {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).contains(&shard)
    }

    async fn failpoint(&self, name: &str) {
        if self.failpoint.as_deref() == Some(name) {
            tracing::error!("failpoint {name} reached: stopping this commit here for good");
            std::future::pending::<()>().await;
        }
    }

    /// Commits the transaction open on every participant (all idle in it).
    pub async fn commit(&self, parts: &mut [Participant<'_>]) -> Result<Outcome, SqlError> {
        let Some(decider) = self.decider(parts).await else {
            rollback_all(parts).await;
            let names: Vec<&str> = parts.iter().map(|p| p.label).collect();
            return Err(SqlError::new(
                code::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "none of {} holds shardcar.decisions, where a commit across shards is decided; shardcar creates it when it can (see its log); the transaction was rolled back",
                    names.join(", ")
                ),
            ));
        };
        parts.swap(0, decider);
        let (decider, others) = parts.split_first_mut().expect("the decider is a participant");
        let gid = match begin(decider).await {
            Ok(xid) => Gid { decider: decider.shard, xid },
            Err(e) => {
                rollback_all(others).await;
                let _ = decider.conn.run_control("ROLLBACK").await;
                return Err(e);
            }
        };
        let name = gid.name(&self.pools.topology);
        self.in_flight().insert(name.clone());
        let result = self.run_commit(gid, &name, decider, others).await;
        self.in_flight().remove(&name);
        result
    }

    /// The participant to decide: one on a shard that holds
    /// `shardcar.decisions` (made there now if none is known to).
    async fn decider(&self, parts: &[Participant<'_>]) -> Option<usize> {
        if let Some(i) = parts.iter().position(|p| self.is_ready(p.shard)) {
            return Some(i);
        }
        for (i, p) in parts.iter().enumerate() {
            if self.ensure_table(p.shard).await.is_ok() {
                return Some(i);
            }
        }
        None
    }

    async fn run_commit(
        &self,
        gid: Gid,
        name: &str,
        decider: &mut Participant<'_>,
        others: &mut [Participant<'_>],
    ) -> Result<Outcome, SqlError> {
        let unlock = format!("SELECT pg_advisory_unlock({})", gid.lock_args());
        let abandon = format!("ROLLBACK; {unlock}");
        let prepared = on_all(others, &format!("PREPARE TRANSACTION '{name}'")).await;
        let refusal = prepared.iter().enumerate().find_map(|(i, r)| match r {
            Ok(a) => a.error.clone().map(|e| (i, Ok(e))),
            Err(e) => Some((i, Err(e.to_string()))),
        });
        if let Some((i, why)) = refusal {
            // Undo where PREPARE worked; where it failed the server already rolled back.
            let ok: Vec<bool> = prepared.iter().map(|r| matches!(r, Ok(a) if a.error.is_none())).collect();
            let mut rest: Vec<&mut Participant<'_>> =
                others.iter_mut().zip(&ok).filter(|(_, ok)| **ok).map(|(p, _)| p).collect();
            let undo = format!("ROLLBACK PREPARED '{name}'");
            let undone = join_all(rest.iter_mut().map(|p| p.conn.run_control(&undo))).await;
            for (p, r) in rest.iter().zip(undone) {
                if !matches!(r, Ok(ref a) if a.error.is_none()) {
                    tracing::warn!("{}: could not roll back {name}; recovery will", p.label);
                }
            }
            let _ = decider.conn.run_control(&abandon).await;
            return match why {
                Ok(error) => Ok(Outcome::RolledBack { error }),
                Err(lost) => Err(SqlError::new(
                    code::CONNECTION_FAILURE,
                    format!(
                        "lost {} while preparing the commit ({lost}); the transaction was rolled back",
                        others[i].label
                    ),
                )),
            };
        }
        self.failpoint("2pc-after-prepare").await;
        match decider.conn.run_control(&decisions::decide_sql(name)).await {
            Ok(Answer { error: None, .. }) => {}
            Ok(Answer { error: Some(error), .. }) => {
                // The decider refused (a deferred constraint, a serialization
                // failure): nothing committed, the others roll back.
                let _ = decider.conn.run_control(&abandon).await;
                on_all(others, &format!("ROLLBACK PREPARED '{name}'")).await;
                return Ok(Outcome::RolledBack { error });
            }
            Err(lost) => {
                return Err(SqlError::new(
                    code::TRANSACTION_RESOLUTION_UNKNOWN,
                    format!(
                        "lost {} while committing ({lost}): whether the transaction committed is unknown until it answers again; shardcar's recovery then commits or rolls back the other shards as it did",
                        decider.label
                    ),
                ));
            }
        }
        self.failpoint("2pc-after-decision").await;
        let commit = format!("COMMIT PREPARED '{name}'");
        let (done, _) = tokio::join!(on_all(others, &commit), decider.conn.run_control(&unlock));
        let unfinished = others
            .iter()
            .zip(done)
            .filter(|(_, r)| !matches!(r, Ok(a) if a.error.is_none()))
            .map(|(p, _)| p.label.to_string())
            .collect();
        Ok(Outcome::Committed { unfinished })
    }
}

/// Gives the decider's transaction its id and locks it; the id.
async fn begin(decider: &mut Participant<'_>) -> Result<u64, SqlError> {
    let lost = |why: String| {
        SqlError::new(
            code::CONNECTION_FAILURE,
            format!("{} could not begin the commit ({why}); the transaction was rolled back", decider.label),
        )
    };
    match decider.conn.run_control(&Gid::begin_sql()).await {
        Ok(answer @ Answer { error: None, .. }) => {
            answer.first_value().and_then(|x| x.parse().ok()).ok_or_else(|| lost("no transaction id".into()))
        }
        Ok(Answer { error: Some(frame), .. }) => Err(lost(crate::pool::backend::frame_error_text(frame))),
        Err(e) => Err(lost(e.to_string())),
    }
}

async fn rollback_all(parts: &mut [Participant<'_>]) {
    on_all(parts, "ROLLBACK").await;
}

/// Runs one statement on every participant at once.
async fn on_all(parts: &mut [Participant<'_>], sql: &str) -> Vec<std::io::Result<Answer>> {
    join_all(parts.iter_mut().map(|p| p.conn.run_control(sql))).await
}
