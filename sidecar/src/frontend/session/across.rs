//! The end of a transaction across shards.
//!
//! A transaction starts on one shard like any other; other shards join it
//! when a statement needs them (`dispatch::attach`, `fan_out`), each with
//! the same BEGIN. COMMIT then goes through the coordinator (PREPARE
//! but on the decider, its commit as the decision, COMMIT PREPARED on
//! the others) — or, for a
//! READ ONLY transaction without two-phase commit, a COMMIT on each;
//! ROLLBACK, an error or the client leaving rolls back every shard.
//! SAVEPOINT, RELEASE and ROLLBACK TO run on every shard in the
//! transaction, in step; a shard that joins later makes the savepoints
//! still open right after its BEGIN (`Block::opening`).

use bytes::BytesMut;
use futures_util::future::join_all;

use super::Session;
use super::local::no_transaction;
use super::state::{Txn, TxnStatus};
use crate::classify::{Kind, Statement};
use crate::policy::Refusal;
use crate::pool::ShardConn;
use crate::sqlerror::code;
use crate::twophase::{Outcome, Participant};
use crate::wire::reply;

impl Session {
    /// COMMIT (two-phase) or ROLLBACK of a transaction across shards; the
    /// client gets the CommandComplete or the error.
    pub(super) async fn end_block(&mut self, commit: bool) -> Result<(), crate::sqlerror::SqlError> {
        self.finish_block(commit, true).await
    }

    /// Ends the transaction on every shard. `tell`: the client asked (COMMIT
    /// or ROLLBACK) and gets the CommandComplete; otherwise (a batch's own
    /// block) it hears only of a commit that failed.
    pub(super) async fn finish_block(&mut self, commit: bool, tell: bool) -> Result<(), crate::sqlerror::SqlError> {
        self.end_portals().await?;
        self.sync_servers();
        self.settle().await?;
        let failed = self.status() == TxnStatus::Failed;
        let mut parts: Vec<ShardConn> = self.conns.take_all().into_iter().map(|h| h.conn).collect();
        self.point_cancel();
        let metrics = self.shared.telemetry.metrics.clone();
        let mut out = BytesMut::new();
        let committed = match (&self.shared.coordinator, commit && !failed) {
            (Some(coordinator), true) => {
                let mut participants: Vec<Participant<'_>> = parts
                    .iter_mut()
                    .map(|p| Participant { conn: &mut p.conn, label: &p.node.label, shard: p.node.shard })
                    .collect();
                match coordinator.commit(&mut participants).await {
                    Ok(Outcome::Committed { unfinished }) => {
                        if !unfinished.is_empty() {
                            let message = format!(
                                "the transaction is committed; {} could not be told yet and will be by shardcar's recovery",
                                unfinished.join(", ")
                            );
                            reply::notice(&mut out, "WARNING", code::WARNING, &message);
                        }
                        if tell {
                            reply::command_complete(&mut out, "COMMIT");
                        }
                        metrics.distributed("committed");
                        true
                    }
                    Ok(Outcome::RolledBack { error }) => {
                        out.extend_from_slice(&error);
                        metrics.distributed("failed");
                        false
                    }
                    Err(e) => {
                        reply::error(&mut out, &e);
                        metrics.distributed("failed");
                        false
                    }
                }
            }
            // Without two-phase commit only a READ ONLY transaction spans
            // shards: nothing to commit atomically.
            (None, true) => {
                let answers = join_all(parts.iter_mut().map(|p| p.conn.run_hidden("COMMIT"))).await;
                match answers.into_iter().zip(&parts).find_map(|(a, p)| match a {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{}: {e}", p.label())),
                    Err(e) => Some(format!("{}: {e}", p.label())),
                }) {
                    None => {
                        if tell {
                            reply::command_complete(&mut out, "COMMIT");
                        }
                        true
                    }
                    Some(why) => {
                        let e = crate::sqlerror::SqlError::new(
                            code::CONNECTION_FAILURE,
                            format!("COMMIT of a read-only transaction across shards failed on {why}"),
                        );
                        reply::error(&mut out, &e);
                        false
                    }
                }
            }
            (_, false) => {
                join_all(parts.iter_mut().map(|p| p.conn.run_hidden("ROLLBACK"))).await;
                if tell {
                    reply::command_complete(&mut out, "ROLLBACK");
                }
                metrics.distributed("rolled_back");
                false
            }
        };
        // Settings changed inside the transaction are kept only if it
        // committed; the servers' own record of them is not kept at all.
        let changed_settings = match self.txn_snapshot.take() {
            Some(s) if !committed => {
                self.settings = s.client;
                true
            }
            Some(_) => true,
            None => false,
        };
        for p in parts {
            if commit {
                // Committed, or (08007) perhaps: reads after it must see it either way.
                self.conns.note_write(p.node.shard);
            }
            if changed_settings {
                p.close();
            } else {
                p.release();
            }
        }
        self.txn = Txn::Idle;
        self.clear_portals();
        self.emit(out, vec![]);
        Ok(())
    }

    /// SAVEPOINT, RELEASE or ROLLBACK TO in a transaction across shards:
    /// run on every shard in it; the client gets the CommandComplete.
    pub(super) async fn across_savepoint(&mut self, stmt: &Statement) -> Result<(), crate::sqlerror::SqlError> {
        let (name, tag) = match &stmt.kind {
            Kind::Savepoint(n) => (n, "SAVEPOINT"),
            Kind::Release(n) => (n, "RELEASE"),
            Kind::RollbackTo(n) => (n, "ROLLBACK"),
            _ => return Err(Refusal::NotAcross(stmt.text.clone()).into()),
        };
        let Txn::Block(b) = &self.txn else { return Err(no_transaction(tag)) };
        if b.implicit {
            return Err(no_transaction(tag));
        }
        if !matches!(stmt.kind, Kind::Savepoint(_)) && !b.savepoints.contains(name) {
            return Err(crate::sqlerror::SqlError::new(
                code::INVALID_SAVEPOINT,
                format!("savepoint \"{name}\" does not exist"),
            ));
        }
        self.sync_servers();
        self.settle().await?;
        let answers = join_all(self.conns.iter_mut().map(|h| h.conn.conn.run_hidden(&stmt.text))).await;
        let labels: Vec<String> = self.conns.iter().map(|h| h.conn.label().to_string()).collect();
        if let Some(why) = answers.into_iter().zip(labels).find_map(|(a, label)| match a {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{label}: {e}")),
            Err(e) => Some(format!("{label}: {e}")),
        }) {
            // The shards no longer agree on where the transaction stands: it can only roll back.
            if let Txn::Block(b) = &mut self.txn {
                b.failed = true;
            }
            return Err(crate::sqlerror::SqlError::new(
                code::INTERNAL_ERROR,
                format!("{} failed on {why}; the transaction across shards can only roll back", stmt.text),
            ));
        }
        if let Txn::Block(b) = &mut self.txn {
            match &stmt.kind {
                Kind::Savepoint(_) => b.savepoints.push(name.clone()),
                Kind::Release(_) => {
                    b.unwind(name, true);
                }
                _ => {
                    b.unwind(name, false);
                    b.failed = false;
                }
            }
        }
        let mut out = BytesMut::new();
        reply::command_complete(&mut out, tag);
        self.emit(out, vec![]);
        Ok(())
    }

    /// Rolls back what held servers still have open (the transaction ended
    /// elsewhere or was lost); one that owes replies is closed.
    pub(super) fn roll_back_others(&mut self) {
        for shard in self.conns.shards() {
            // An idle one goes back to the pool once it owes nothing (`release_idle`).
            if self.conns.get(shard).is_none_or(|h| h.conn.conn.status == b'I') {
                continue;
            }
            let owed = self.outbox.owes(shard);
            let Some(h) = self.conns.remove(shard) else { continue };
            if owed {
                self.outbox.abandon(shard, &mut self.events);
                h.conn.close();
            } else {
                roll_back_in_background(h.conn);
            }
        }
    }
}

/// Rolls back what a connection has open, then returns it to the pool (or
/// closes it when that fails).
pub(super) fn roll_back_in_background(mut conn: ShardConn) {
    tokio::spawn(async move {
        let rollback = tokio::time::timeout(std::time::Duration::from_secs(5), conn.conn.run_hidden("ROLLBACK")).await;
        if !matches!(rollback, Ok(Ok(Ok(())))) {
            conn.conn.broken = true;
        }
        conn.release();
    });
}
