//! Finishing transactions across shards that a coordinator left prepared:
//! one that was killed, lost a shard while committing, or belonged to a
//! sidecar long gone. Every sidecar runs this, for every shardcar
//! transaction on every shard; the advisory lock on the decider keeps two
//! of them (and a live coordinator) from acting on one transaction at once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use super::decisions::{Verdict, cleanup_sql, verdict};
use super::{Coordinator, Gid};
use crate::metrics::Metrics;
use crate::pool::backend::{Answer, frame_error_text};
use crate::pool::{Role, ShardConn};
use crate::topology::ShardId;

/// How often prepared transactions left behind are looked for.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(10);

impl Coordinator {
    /// Recovers now, then every few seconds, until the server stops.
    pub async fn run_recovery(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(RECOVERY_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = self.recover(&metrics).await {
                tracing::warn!("two-phase commit recovery: {e}");
            }
        }
    }

    /// One round: makes `shardcar.decisions` where it is missing, finishes
    /// every shardcar transaction prepared on any shard as its decider
    /// decided, and now and then deletes decisions no longer needed.
    pub async fn recover(&self, metrics: &Metrics) -> Result<(), String> {
        let topology = self.pools.topology.clone();
        let mut problems = Vec::new();
        for shard in topology.ids() {
            if let Err(e) = self.ensure_table(shard).await {
                problems.push(e);
            }
        }
        let list = format!(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE '{}'",
            Gid::like_pattern()
        );
        let mut deciders: HashMap<ShardId, ShardConn> = HashMap::new();
        let mut still_prepared = Vec::new();
        let mut listed_all = true;
        for shard in topology.ids() {
            let name = topology.name(shard);
            let mut checkout = match self.pools.checkout(shard, Role::Primary, None, None).await {
                Ok(c) => c,
                Err(e) => {
                    listed_all = false;
                    problems.push(format!("{name}: {}", e.message));
                    continue;
                }
            };
            let gids: Vec<String> = match checkout.conn.run_control(&list).await {
                Ok(Answer { rows, error: None }) => {
                    rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect()
                }
                Ok(Answer { error: Some(frame), .. }) => {
                    listed_all = false;
                    problems.push(format!("{name}: cannot list prepared transactions: {}", frame_error_text(frame)));
                    continue;
                }
                Err(e) => {
                    listed_all = false;
                    problems.push(format!("{name}: cannot list prepared transactions: {e}"));
                    continue;
                }
            };
            for gname in gids {
                if self.in_flight().contains(&gname) {
                    still_prepared.push(gname);
                    continue;
                }
                let Some(gid) = Gid::parse(&gname, &topology) else {
                    problems.push(format!("{name}: {gname} is not a transaction of this fleet's shards; left alone"));
                    still_prepared.push(gname);
                    continue;
                };
                let decider = match deciders.entry(gid.decider) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => match self.pools.checkout(gid.decider, Role::Primary, None, None).await {
                        Ok(c) => e.insert(c),
                        Err(e) => {
                            problems.push(format!("{}: {} (deciding {gname})", topology.name(gid.decider), e.message));
                            still_prepared.push(gname);
                            continue;
                        }
                    },
                };
                match self.resolve(&gid, &gname, decider, &mut checkout).await {
                    Ok(Some(commit)) => {
                        metrics.distributed(if commit { "recovered_commit" } else { "recovered_rollback" });
                        tracing::info!(
                            "{name}: {} {gname} left by an interrupted commit",
                            if commit { "committed" } else { "rolled back" }
                        );
                    }
                    Ok(None) => still_prepared.push(gname),
                    Err(e) => {
                        problems.push(format!("{name}: cannot resolve {gname}: {e}"));
                        still_prepared.push(gname);
                    }
                }
            }
        }
        if listed_all && self.cleanup_due() {
            let sql = cleanup_sql(&still_prepared);
            for shard in topology.ids().filter(|s| self.is_ready(*s)) {
                if let Ok(mut c) = self.pools.checkout(shard, Role::Primary, None, None).await
                    && let Ok(Err(e)) = c.conn.run_hidden(&sql).await
                {
                    problems.push(format!("{}: cannot delete old decisions: {e}", topology.name(shard)));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// Finishes `gid` on `holder` if its decider has decided and nobody
    /// else is working on it: Some(committed?), None when left for later.
    async fn resolve(
        &self,
        gid: &Gid,
        name: &str,
        decider: &mut ShardConn,
        holder: &mut ShardConn,
    ) -> Result<Option<bool>, String> {
        // Read before locking: an outcome other than "in progress" is final.
        let commit = match verdict(&mut decider.conn, gid, name).await? {
            Verdict::Commit => true,
            Verdict::Rollback => false,
            Verdict::Undecided => return Ok(None),
        };
        let try_lock = format!("SELECT pg_try_advisory_lock({})", gid.lock_args());
        match decider.conn.run_control(&try_lock).await {
            Ok(answer @ Answer { error: None, .. }) if answer.first_value() == Some("t") => {}
            // Its coordinator (or another sidecar's recovery) is on it.
            Ok(Answer { error: None, .. }) => return Ok(None),
            Ok(Answer { error: Some(frame), .. }) => {
                return Err(format!("cannot lock it: {}", frame_error_text(frame)));
            }
            Err(e) => return Err(format!("cannot lock it: {e}")),
        }
        let sql = if commit { format!("COMMIT PREPARED '{name}'") } else { format!("ROLLBACK PREPARED '{name}'") };
        let done = holder.conn.run_hidden(&sql).await;
        let unlock = format!("SELECT pg_advisory_unlock({})", gid.lock_args());
        if !matches!(decider.conn.run_hidden(&unlock).await, Ok(Ok(()))) {
            decider.conn.broken = true;
        }
        match done {
            Ok(Ok(())) => Ok(Some(commit)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        }
    }
}
