//! Transactions across shards (`routing.two_phase_commit = true`).
//!
//! The session's transaction starts on one shard like any other. When a
//! statement belongs to another shard, or must run on several (DDL, a
//! fanned-out read or write), the other shards join: each gets a connection
//! of its own with the same BEGIN, parked in `others` while it is not the
//! one in use. COMMIT then goes through the coordinator (PREPARE everywhere,
//! decision logged, COMMIT PREPARED everywhere); ROLLBACK, an error or the
//! client leaving rolls back every participant.
//!
//! Shards join only between statements of an explicit transaction block,
//! and not after a SAVEPOINT (a savepoint on one shard cannot roll back the
//! others).

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::future::join_all;

use super::Session;
use super::local::aborted;
use crate::cancel::BackendKey;
use crate::classify::Facts;
use crate::classify::params::Params;
use crate::execute::{Attached, Entry, Reply};
use crate::metrics::KindLabel;
use crate::pool::{Checkout, Pooled, Role};
use crate::scatter::{self, Bound, Leg};
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::Stages;
use crate::twophase::{Outcome, Participant};
use crate::wire::reply;

impl Session {
    /// A transaction block is open (or about to be, deferred).
    pub(super) fn in_block(&self) -> bool {
        match &self.attached {
            Some(a) => a.conn.status != b'I',
            None => self.deferred.is_open(),
        }
    }

    /// The transaction has more than one shard.
    pub(super) fn is_across(&self) -> bool {
        !self.others.is_empty()
    }

    /// Why the open transaction cannot take in another shard now, if it cannot.
    pub(super) fn widening_refused(&self, shard_now: Option<usize>, wanted: &str) -> Option<SqlError> {
        let on = |s: usize| self.shared.router.shard_name(s).to_string();
        let pinned = |why: &str, hint: &str| {
            let message = match shard_now {
                Some(s) => format!("this transaction runs on shard {} and the statement needs {wanted}", on(s)),
                None => format!("the statement needs {wanted} inside a transaction"),
            };
            Some(SqlError::new(code::FEATURE_NOT_SUPPORTED, format!("{message}: {why}")).hint(hint.to_string()))
        };
        if self.shared.coordinator.is_none() {
            return pinned(
                "a transaction stays on one shard",
                "commit first and run it on its own, or set routing.two_phase_commit = true for transactions across shards",
            );
        }
        if self.deferred.failed || self.attached.as_ref().is_some_and(|a| a.conn.status == b'E') {
            return Some(aborted());
        }
        if self.txn_savepoint || !self.deferred.savepoints.is_empty() {
            return pinned(
                "a transaction with savepoints stays on one shard",
                "do without the SAVEPOINT, or keep the transaction on one shard",
            );
        }
        match &self.attached {
            // Pipelined statements: the ones sent so far finish first (then
            // the transaction's state is known).
            Some(a) if a.unsynced => Some(SqlError::new(code::AFTER_SYNC, "")),
            Some(a) if a.conn.status != b'T' => pinned(
                "only an explicit transaction block (BEGIN) can span shards",
                "wrap the statements in BEGIN ... COMMIT",
            ),
            Some(a) if a.pending_ready > 0 || !a.outbox.is_empty() => pinned(
                "statements sent together (before Sync) stay on one shard",
                "send a Sync before the statement for the other shard",
            ),
            _ => None,
        }
    }

    /// Moves the transaction's current statement to `shard`, which joins the
    /// transaction if it is not in it yet.
    pub(super) async fn switch_to(&mut self, shard: usize) -> Result<(), SqlError> {
        let now = self.attached.as_ref().map(|a| a.node.shard);
        let wanted = format!("shard {}", self.shared.router.shard_name(shard));
        match self.widening_refused(now, &wanted) {
            Some(e) if e.code == code::AFTER_SYNC => {
                self.sync_hidden();
                return Err(e);
            }
            Some(e) => return Err(e),
            None => {}
        }
        let joined = match self.others.iter().position(|o| o.node.shard == shard) {
            Some(i) => self.others.swap_remove(i),
            None => self.join(shard).await?,
        };
        if let Some(old) = self.attached.replace(joined) {
            self.others.push(old);
        }
        self.point_cancel_at_current();
        Ok(())
    }

    /// Ends the batch sent so far on the attached connection with a Sync of
    /// shardcar's own, so its replies complete before another shard's.
    fn sync_hidden(&mut self) {
        let Some(a) = self.attached.as_mut() else { return };
        postgres_protocol::message::frontend::sync(&mut a.conn.wbuf);
        a.outbox.push(Entry::hidden(Reply::Sync), &mut self.events);
        a.unsynced = false;
        a.resyncing = true;
        self.apply_events();
    }

    fn point_cancel_at_current(&self) {
        let key = self.attached.as_ref().map(|a| BackendKey {
            addr: a.conn.addr.clone(),
            pid: a.conn.pid,
            secret: a.conn.secret,
        });
        self.set_cancel_key(key);
    }

    /// A connection to `shard`'s primary with this transaction opened on it.
    async fn join(&mut self, shard: usize) -> Result<Attached, SqlError> {
        let mut checkout = self.shared.pools.checkout(shard, Role::Primary).await?;
        checkout.adopt(&self.settings).await?;
        let begin = self.txn_begin.clone().unwrap_or_else(|| "BEGIN".to_string());
        let Checkout { mut conn, node } = checkout;
        match conn.run_hidden(&begin).await {
            Ok(Ok(())) if conn.status == b'T' => Ok(Attached::new(conn, node)),
            other => {
                let why = match other {
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                    Ok(Ok(())) => "the server did not open a transaction".to_string(),
                };
                drop(Pooled::take(conn));
                Err(SqlError::new(
                    code::CONNECTION_FAILURE,
                    format!("cannot open the transaction on {}: {why}", node.label),
                ))
            }
        }
    }

    /// Runs a statement that needs several shards inside the transaction:
    /// every shard it needs joins, and the answers merge as outside one.
    /// `refusal`: the error to give if it needs one shard after all.
    pub(super) async fn fan_out_within(
        &mut self,
        sql: &str,
        facts: &Arc<Facts>,
        stages: Stages,
        refusal: SqlError,
        bound: Option<(Bound, Arc<Params>)>,
    ) -> Result<(), SqlError> {
        let (shards, plan) = match self.fan_out_plan(facts, &bound, refusal).await {
            Ok(planned) => planned,
            Err(e) => return self.refuse(e, false, stages, facts),
        };
        let now = self.attached.as_ref().map(|a| a.node.shard);
        if let Some(e) = self.widening_refused(now, "several shards") {
            return self.refuse(e, false, stages, facts);
        }
        let mut legs = match self.gather(&shards).await {
            Ok(legs) => legs,
            Err(e) => return self.fail(e, false),
        };
        let kind = if facts.is_read_only() { KindLabel::Read } else { KindLabel::Write };
        let bound = bound.map(|(b, _)| b);
        let result = scatter::execute(&mut legs, &mut self.client, sql, bound.as_ref(), &plan, kind, true).await;
        self.give_back(legs)?;
        match result {
            Ok(()) => self.simple_ready(),
            Err(e) => self.fail(e, false),
        }
    }

    /// The transaction's connections to `shards` (in that order), joining
    /// the shards not in it yet, for a statement that runs on them all.
    /// Hand them back with `give_back`.
    pub(super) async fn gather(&mut self, shards: &[usize]) -> Result<Vec<Leg>, SqlError> {
        if self.attached.is_none() {
            // The first statement of the transaction: its BEGIN goes to every shard that joins.
            let deferred = std::mem::take(&mut self.deferred);
            self.txn_begin = Some(deferred.statements.join("; "));
        }
        let mut legs = Vec::with_capacity(shards.len());
        for &shard in shards {
            let held = match self.attached.as_ref().filter(|a| a.node.shard == shard) {
                Some(_) => self.attached.take(),
                None => self.others.iter().position(|o| o.node.shard == shard).map(|i| self.others.swap_remove(i)),
            };
            let a = match held {
                Some(a) => a,
                None => match self.join(shard).await {
                    Ok(a) => a,
                    Err(e) => {
                        for leg in legs {
                            let Checkout { conn, node } = Leg::into_checkout(leg);
                            self.others.push(Attached::new(conn, node));
                        }
                        self.restore_current();
                        return Err(e);
                    }
                },
            };
            legs.push(Leg::new(Checkout { conn: a.conn, node: a.node }));
        }
        if let Some(a) = self.attached.take() {
            self.others.push(a);
        }
        Ok(legs)
    }

    /// Takes back the connections `gather` lent out. A connection that did
    /// not answer in full loses the transaction: FATAL, everything rolled back.
    pub(super) fn give_back(&mut self, legs: Vec<Leg>) -> Result<(), SqlError> {
        let lost: Vec<String> = legs.iter().filter(|l| !l.is_clean()).map(|l| l.label().to_string()).collect();
        for leg in legs {
            let Checkout { conn, node } = leg.into_checkout();
            self.others.push(Attached::new(conn, node));
        }
        self.restore_current();
        if lost.is_empty() {
            return Ok(());
        }
        self.abandon_transaction();
        if let Some(a) = self.attached.take() {
            drop(Pooled::take(a.conn));
        }
        Err(SqlError::fatal(
            code::CONNECTION_FAILURE,
            format!("lost {} inside a transaction across shards; the transaction was rolled back", lost.join(", ")),
        ))
    }

    /// Makes one participant the current one again after a fan-out.
    fn restore_current(&mut self) {
        if self.attached.is_none() {
            self.attached = self.others.pop();
        }
        self.point_cancel_at_current();
    }

    /// COMMIT (two-phase) or ROLLBACK of a transaction across shards, sent
    /// as a statement of its own.
    pub(super) async fn end_across(&mut self, commit: bool) -> Result<(), SqlError> {
        let mut parts: Vec<Attached> = std::mem::take(&mut self.others);
        parts.extend(self.attached.take());
        self.set_cancel_key(None);
        let failed = self.deferred.failed || parts.iter().any(|p| p.conn.status == b'E');
        let metrics = self.shared.telemetry.metrics.clone();
        let mut out = BytesMut::new();
        let committed = match (&self.shared.coordinator, commit && !failed) {
            (Some(coordinator), true) => {
                let mut participants: Vec<Participant<'_>> =
                    parts.iter_mut().map(|p| Participant { conn: &mut p.conn, label: &p.node.label }).collect();
                match coordinator.commit(&mut participants).await {
                    Ok(Outcome::Committed { unfinished }) => {
                        if !unfinished.is_empty() {
                            let message = format!(
                                "the transaction is committed; {} could not be told yet and will be by shardcar's recovery",
                                unfinished.join(", ")
                            );
                            reply::notice(&mut out, "WARNING", code::WARNING, &message);
                        }
                        reply::command_complete(&mut out, "COMMIT");
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
            _ => {
                join_all(parts.iter_mut().map(|p| p.conn.run_hidden("ROLLBACK"))).await;
                reply::command_complete(&mut out, "ROLLBACK");
                metrics.distributed("rolled_back");
                false
            }
        };
        // Settings changed inside the transaction are kept only if it committed;
        // the participants' own record of them is not kept at all.
        let changed_settings = match self.txn_snapshot.take() {
            Some(s) if !committed => {
                self.settings = s.client;
                true
            }
            Some(_) => true,
            None => false,
        };
        for p in parts {
            if changed_settings || p.conn.broken || p.conn.status != b'I' {
                drop(Pooled::take(p.conn));
            }
        }
        self.end_transaction_state();
        self.client.out.extend_from_slice(&out);
        reply::ready(&mut self.client.out, b'I');
        Ok(())
    }

    /// Forgets what belonged to the transaction that just ended.
    pub(super) fn end_transaction_state(&mut self) {
        self.txn_begin = None;
        self.txn_savepoint = false;
        self.deferred = Default::default();
        self.block_opened = false;
        self.portals.clear();
    }

    /// Rolls back the parked participants (the transaction is over or lost).
    pub(super) fn abandon_transaction(&mut self) {
        for a in self.others.drain(..) {
            roll_back_in_background(a.conn);
        }
    }
}

/// Rolls back what a connection has open, then returns it to the pool (or
/// closes it when that fails).
pub(super) fn roll_back_in_background(mut conn: Pooled) {
    tokio::spawn(async move {
        let rollback = tokio::time::timeout(std::time::Duration::from_secs(5), conn.run_hidden("ROLLBACK")).await;
        if !matches!(rollback, Ok(Ok(Ok(())))) || conn.status != b'I' {
            drop(Pooled::take(conn));
        }
    });
}
