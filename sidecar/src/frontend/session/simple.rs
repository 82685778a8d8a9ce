//! The simple query protocol: one Query message, one ReadyForQuery.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::Session;
use super::local::aborted;

use crate::classify::params::Params;
use crate::classify::{Facts, Kind, RoleHint};
use crate::execute::{Entry, Reply};
use crate::metrics::KindLabel;
use crate::policy::Request;
use crate::pool::Role;
use crate::scatter::{self, Bound, Targets};
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::{Classified, InFlight, Stage, Stages};
use crate::wire::reply;

impl Session {
    pub(super) async fn query(&mut self, raw: Bytes, sql: String) -> Result<(), SqlError> {
        let started = Instant::now();
        // Routed by the facts of its template when it has one (see
        // `lookup_lifted`); the paths that rewrite or split the statement
        // take the facts of the text as written (`as_written`).
        let (facts, literals, cached) = match self.shared.facts.lookup_lifted(&sql) {
            Some((facts, literals)) => (facts, Some(literals), true),
            None => {
                let (facts, cached) = self.shared.facts.lookup(&sql);
                (facts, None, cached)
            }
        };
        let as_written = |s: &Self| match literals {
            Some(_) => s.shared.facts.get(&sql),
            None => facts.clone(),
        };
        let mut stages = Stages::new(started);
        stages.classify = Some(Classified::new(cached, Stage::since(started)));
        // A simple query destroys the unnamed statement.
        self.unnamed = None;
        if facts.statements.is_empty() && facts.parse_error.is_none() {
            let mut out = BytesMut::new();
            reply::empty_query(&mut out);
            self.emit(out, vec![]);
            return self.simple_ready();
        }
        if self.is_across() {
            match facts.single().map(|s| &s.kind) {
                Some(Kind::Commit) => return self.end_across(true).await,
                Some(Kind::Rollback) => return self.end_across(false).await,
                _ => {}
            }
            if let Some(bad) = facts.statements.iter().find(|s| !matches!(s.kind, Kind::Read | Kind::Write)) {
                let err = SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("`{}` cannot run in a transaction across shards", bad.text),
                )
                .hint("send COMMIT or ROLLBACK as a statement of its own; savepoints and SET need a transaction on one shard");
                return self.refuse(err, false, stages, &facts);
            }
        }
        if let Some(stmt) = facts.single()
            && self.runs_locally(&stmt.kind)
        {
            return match self.local(stmt, true) {
                Ok((frames, _)) => {
                    self.emit(frames, vec![]);
                    self.simple_ready()
                }
                Err(e) => self.fail(e, false),
            };
        }
        if let Some(bad) = facts.statements.iter().find(|s| must_stand_alone(&s.kind)) {
            let err = match &bad.kind {
                Kind::Unsupported { reason, hint } => {
                    SqlError::new(code::FEATURE_NOT_SUPPORTED, reason.clone()).hint(hint.clone())
                }
                _ => SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("`{}` must be sent as a statement of its own", bad.text),
                ),
            };
            return self.refuse(err, false, stages, &facts);
        }
        if self.deferred.failed {
            return self.fail(aborted(), false);
        }
        // Outside a transaction, DDL runs on every shard, and a statement
        // its policy sends to several shards runs on them all, merged.
        let outside = !self.deferred.is_open() && self.attached.is_none();
        let everywhere = self.shared.router.runs_everywhere(&facts, &self.info);
        if outside && everywhere {
            let never = SqlError::new(code::INTERNAL_ERROR, "a statement for every shard found none");
            return self.fan_out(&sql, &as_written(self), stages, never, None).await;
        }
        // Inside a transaction that may span shards, the same, on the transaction's connections.
        let within = self.shared.coordinator.is_some() && self.in_block();
        if within && everywhere {
            let never = SqlError::new(code::INTERNAL_ERROR, "a statement for every shard found none");
            return self.fan_out_within(&sql, &as_written(self), stages, never, None).await;
        }
        let mut req = Request::default();
        req.add(&facts, literals.clone());
        if let Err(e) = self.attach_for(&req, &mut stages).await {
            let copy_in = facts.single().is_some_and(|s| s.shape.copy_in.is_some());
            if copy_in && (outside || within) && e.code == code::FEATURE_NOT_SUPPORTED {
                return self.copy_split(&sql, &facts, stages, e).await;
            }
            if outside && e.code == code::FEATURE_NOT_SUPPORTED {
                return self.fan_out(&sql, &as_written(self), stages, e, None).await;
            }
            if within && e.code == code::FEATURE_NOT_SUPPORTED {
                return self.fan_out_within(&sql, &as_written(self), stages, e, None).await;
            }
            return self.refuse(e, false, stages, &facts);
        }
        let Some(a) = self.attached.as_mut() else { return Ok(()) };
        a.conn.wbuf.extend_from_slice(&raw);
        a.conn.unnamed = None;
        let flight = Some(InFlight::new(stages, facts.clone(), a.node.clone(), self.info.clone()));
        a.outbox.push(Entry::backend(Reply::Query { facts, done: 0, flight }), &mut self.events);
        a.pending_ready += 1;
        self.apply_events();
        Ok(())
    }

    /// Runs a statement on the shards it needs, merged; `refusal` is the
    /// error to give when it needs only one after all (routing refused it).
    /// `bound`: it came with the extended protocol, with these parameters.
    pub(super) async fn fan_out(
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
        let read = facts.is_read_only();
        let replica = match facts.hints.role {
            Some(RoleHint::Primary) => false,
            Some(RoleHint::Replica) => true,
            None => read && self.shared.config.routing.read_replicas,
        };
        let targets = Targets {
            shards,
            role: if replica { Role::Replica } else { Role::Primary },
            kind: if read { KindLabel::Read } else { KindLabel::Write },
        };
        let bound = bound.map(|(b, _)| b);
        let run =
            scatter::run(&self.shared.pools, &self.settings, &mut self.client, sql, bound.as_ref(), &plan, &targets);
        match run.await {
            Ok(()) => self.simple_ready(),
            Err(e) => self.fail(e, false),
        }
    }

    /// Where a statement that needs several shards runs and how its answers
    /// merge; else the error to refuse it with (`refusal` when routing
    /// finds it needs one shard after all).
    pub(super) async fn fan_out_plan(
        &self,
        facts: &Arc<Facts>,
        bound: &Option<(Bound, Arc<Params>)>,
        refusal: SqlError,
    ) -> Result<(Vec<usize>, crate::route::merge::FanOut), SqlError> {
        let params = bound.as_ref().map(|(_, p)| p.clone());
        match crate::route::plan_for(&self.shared.router, facts, &params, &self.info).await {
            Ok(Some(planned)) => Ok(planned),
            Ok(None) => Err(refusal),
            Err(e) => Err(e),
        }
    }

    /// ReadyForQuery after a simple query answered here.
    pub(super) fn simple_ready(&mut self) -> Result<(), SqlError> {
        let mut z = BytesMut::new();
        reply::ready(&mut z, self.status());
        self.emit(z, vec![]);
        Ok(())
    }
}

pub(super) fn must_stand_alone(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::ShardcarSet { .. }
            | Kind::ShardcarShow(_)
            | Kind::Unsupported { .. }
            | Kind::Deallocate(_)
            | Kind::DiscardAll
    )
}
