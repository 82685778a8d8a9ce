//! Transactions across shards: two-phase commit with shardcar as the
//! coordinator.
//!
//! COMMIT of a transaction that touched several shards runs `PREPARE
//! TRANSACTION` on every participant; only when all have prepared is the
//! decision written to the decision log (and forced to disk), then `COMMIT
//! PREPARED` runs on each. A crash before the log write leaves prepared
//! transactions with no decision: recovery rolls them back. A crash after it
//! leaves a logged decision: recovery commits them. Recovery runs at start
//! and then periodically, so a shard that was down when told to commit is
//! finished once it is back.

mod log;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::future::join_all;

pub use self::log::DecisionLog;
use crate::metrics::Metrics;
use crate::pool::backend::{Answer, BackendConn};
use crate::pool::{Pools, Role};
use crate::sqlerror::{SqlError, code};

/// How often prepared transactions left behind are looked for.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(10);

/// Test-only: `SHARDCAR_FAILPOINT=2pc-after-prepare` (or `2pc-after-decision`)
/// makes a commit stop there for good, so a test can kill the process at
/// that point.
const FAILPOINT_VAR: &str = "SHARDCAR_FAILPOINT";

/// One shard's connection in a transaction being finished.
pub struct Participant<'a> {
    pub conn: &'a mut BackendConn,
    pub label: &'a str,
}

/// How a COMMIT across shards ended.
pub enum Outcome {
    /// Committed. Shards listed could not be told yet: recovery finishes them.
    Committed { unfinished: Vec<String> },
    /// Rolled back everywhere because a shard refused to prepare: its error,
    /// as it sent it.
    RolledBack { error: BytesMut },
}

pub struct Coordinator {
    log: Arc<DecisionLog>,
    next: AtomicU64,
    /// Transactions between their first PREPARE and their last COMMIT
    /// PREPARED: recovery leaves them alone.
    in_flight: Mutex<HashSet<String>>,
    failpoint: Option<String>,
}

impl Coordinator {
    pub fn open(path: &Path) -> anyhow::Result<Coordinator> {
        let log = DecisionLog::open(path).map_err(|e| {
            anyhow::anyhow!("cannot open the decision log {} (routing.decision_log): {e}", path.display())
        })?;
        // Ids stay unique across restarts: a transaction left prepared by an
        // earlier run must not share its id with a new one.
        let start = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or_default();
        Ok(Coordinator {
            log: Arc::new(log),
            next: AtomicU64::new(start),
            in_flight: Mutex::new(HashSet::new()),
            failpoint: std::env::var(FAILPOINT_VAR).ok(),
        })
    }

    fn prefix(&self) -> String {
        format!("shardcar_{}_", self.log.id)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn failpoint(&self, name: &str) {
        if self.failpoint.as_deref() == Some(name) {
            tracing::error!("failpoint {name} reached: stopping this commit here for good");
            std::future::pending::<()>().await;
        }
    }

    /// Commits the transaction open on every participant (all idle in it).
    pub async fn commit(&self, parts: &mut [Participant<'_>]) -> Result<Outcome, SqlError> {
        let gid = format!("{}{}", self.prefix(), self.next.fetch_add(1, Ordering::Relaxed));
        self.in_flight().insert(gid.clone());
        let result = self.run_commit(&gid, parts).await;
        self.in_flight().remove(&gid);
        result
    }

    async fn run_commit(&self, gid: &str, parts: &mut [Participant<'_>]) -> Result<Outcome, SqlError> {
        let prepare = format!("PREPARE TRANSACTION '{gid}'");
        let prepared = on_all(parts, &prepare).await;
        let refusal = prepared.iter().enumerate().find_map(|(i, r)| match r {
            Ok(a) => a.error.clone().map(|e| (i, Ok(e))),
            Err(e) => Some((i, Err(e.to_string()))),
        });
        if let Some((i, why)) = refusal {
            // Undo where PREPARE worked; where it failed the server already rolled back.
            let undo = format!("ROLLBACK PREPARED '{gid}'");
            let ok: Vec<bool> = prepared.iter().map(|r| matches!(r, Ok(a) if a.error.is_none())).collect();
            let mut rest: Vec<Participant<'_>> = parts
                .iter_mut()
                .zip(&ok)
                .filter(|(_, ok)| **ok)
                .map(|(p, _)| Participant { conn: p.conn, label: p.label })
                .collect();
            let undone = on_all(&mut rest, &undo).await;
            for (p, r) in rest.iter().zip(undone) {
                if !matches!(r, Ok(ref a) if a.error.is_none()) {
                    tracing::warn!("{}: could not roll back {gid}; recovery will", p.label);
                }
            }
            return match why {
                Ok(error) => Ok(Outcome::RolledBack { error }),
                Err(lost) => Err(SqlError::new(
                    code::CONNECTION_FAILURE,
                    format!(
                        "lost {} while preparing the commit ({lost}); the transaction was rolled back",
                        parts[i].label
                    ),
                )),
            };
        }
        self.failpoint("2pc-after-prepare").await;
        if let Err(e) = self.record(gid).await {
            let undo = format!("ROLLBACK PREPARED '{gid}'");
            on_all(parts, &undo).await;
            return Err(SqlError::new(
                code::IO_ERROR,
                format!("cannot write the commit decision to the decision log: {e}; the transaction was rolled back"),
            ));
        }
        self.failpoint("2pc-after-decision").await;
        let commit = format!("COMMIT PREPARED '{gid}'");
        let done = on_all(parts, &commit).await;
        let unfinished = parts
            .iter()
            .zip(done)
            .filter(|(_, r)| !matches!(r, Ok(a) if a.error.is_none()))
            .map(|(p, _)| p.label.to_string())
            .collect();
        Ok(Outcome::Committed { unfinished })
    }

    /// Writes the decision to commit `gid` to disk (off the async workers: fsync blocks).
    async fn record(&self, gid: &str) -> std::io::Result<()> {
        let (log, gid) = (self.log.clone(), gid.to_string());
        tokio::task::spawn_blocking(move || log.record_commit(&gid)).await.map_err(std::io::Error::other)?
    }

    /// Finishes what earlier runs (or a shard that was down) left prepared:
    /// commits what the log decided to commit, rolls back the rest, and
    /// drops decisions that are fully carried out from the log.
    pub async fn recover(&self, pools: &Pools, metrics: &Metrics) -> Result<(), String> {
        let committed = self.log.committed().map_err(|e| e.to_string())?;
        let busy = self.in_flight().clone();
        let mut still_prepared = HashSet::new();
        let mut reached_all = true;
        let list = format!(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, '{}')",
            self.prefix()
        );
        for shard in &pools.shards {
            let mut checkout = match pools.checkout(shard.primary.shard, Role::Primary, None).await {
                Ok(c) => c,
                Err(_) => {
                    reached_all = false;
                    continue;
                }
            };
            let rows = match checkout.conn.run_control(&list).await {
                Ok(Answer { rows, error: None }) => rows,
                _ => {
                    reached_all = false;
                    continue;
                }
            };
            for gid in rows.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
                if busy.contains(&gid) || self.in_flight().contains(&gid) {
                    still_prepared.insert(gid);
                    continue;
                }
                let commit = committed.contains(&gid);
                let sql =
                    if commit { format!("COMMIT PREPARED '{gid}'") } else { format!("ROLLBACK PREPARED '{gid}'") };
                match checkout.conn.run_hidden(&sql).await {
                    Ok(Ok(())) => {
                        let outcome = if commit { "recovered_commit" } else { "recovered_rollback" };
                        metrics.distributed(outcome);
                        tracing::info!(
                            "{}: {} {gid} left by an interrupted commit",
                            pools.topology.name(shard.id),
                            if commit { "committed" } else { "rolled back" }
                        );
                    }
                    other => {
                        tracing::warn!("{}: cannot resolve {gid}: {other:?}", pools.topology.name(shard.id));
                        still_prepared.insert(gid);
                    }
                }
            }
        }
        if reached_all {
            // Decisions read before the look (and not running then) that no
            // shard still holds are carried out everywhere.
            let finished: HashSet<String> =
                committed.into_iter().filter(|g| !busy.contains(g) && !still_prepared.contains(g)).collect();
            self.log.forget(&finished).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Recovers now, then every few seconds, until the server stops.
    pub async fn run_recovery(self: Arc<Self>, pools: Arc<Pools>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(RECOVERY_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = self.recover(&pools, &metrics).await {
                tracing::warn!("two-phase commit recovery: {e}");
            }
        }
    }
}

/// Runs one statement on every participant at once.
async fn on_all(parts: &mut [Participant<'_>], sql: &str) -> Vec<std::io::Result<Answer>> {
    join_all(parts.iter_mut().map(|p| p.conn.run_control(sql))).await
}
