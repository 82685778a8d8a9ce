//! Statements across shards sent with the extended protocol.
//!
//! Drivers send one statement as Parse, Bind, Describe, Execute, Sync (or
//! Bind, Execute, Sync for a statement prepared earlier). When such a batch
//! needs several shards, shardcar answers the whole batch itself: the
//! statement runs on the shards, bound to the client's parameters, and the
//! answers merge as for a simple query.

use std::sync::Arc;

use bytes::BytesMut;
use pgwire::messages::extendedquery::Bind;

use super::Session;
use super::extended::bind_params;
use crate::classify::Kind;
use crate::execute::{Effect, Prepared};
use crate::scatter::Bound;
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::Stages;
use crate::wire::{ClientMsg, reply};

impl Session {
    /// A statement that runs on every shard (DDL), here.
    pub(super) fn fans_out_everywhere(&self, facts: &crate::classify::Facts) -> bool {
        let here = self.attached.is_none() && !self.deferred.is_open();
        let within = self.shared.coordinator.is_some() && self.in_block();
        (here || within) && self.shared.router.runs_everywhere(facts, &self.info)
    }

    /// Runs the batch this statement begins across shards, if it is one
    /// statement (Parse and Bind unless given, Describe, Execute, Sync) and
    /// routing refused it (`refusal`) because it needs several shards.
    /// False: not such a batch; nothing was consumed or answered.
    pub(super) async fn fan_out_batch(
        &mut self,
        parsed: Option<Arc<Prepared>>,
        bound: Option<(Arc<Prepared>, Bind)>,
        stages: Stages,
        refusal: SqlError,
    ) -> Result<bool, SqlError> {
        if refusal.code != code::FEATURE_NOT_SUPPORTED {
            return Ok(false);
        }
        let here = self.attached.is_none() && !self.deferred.is_open();
        let within = self.shared.coordinator.is_some() && self.in_block();
        if !here && !within {
            return Ok(false);
        }
        let Some((p, bind, describe)) = self.one_statement_batch(parsed.as_ref(), bound) else { return Ok(false) };
        if let Some(p) = &parsed {
            let mut out = BytesMut::new();
            reply::parse_complete(&mut out);
            let undo = self.remember(p);
            self.emit(out, undo);
        }
        let mut out = BytesMut::new();
        reply::bind_complete(&mut out);
        self.emit(out, vec![]);
        let params = bind_params(&p, &bind);
        let bound = Bound {
            params: bind.parameters.clone(),
            param_formats: bind.parameter_format_codes.clone(),
            param_types: p.param_types(),
            result_formats: bind.result_column_format_codes.clone(),
            describe,
        };
        let sql = p.text.sql.clone();
        let facts = p.facts.clone();
        if within {
            self.fan_out_within(&sql, &facts, stages, refusal, Some((bound, params))).await?;
        } else {
            self.fan_out(&sql, &facts, stages, refusal, Some((bound, params))).await?;
        }
        Ok(true)
    }

    /// COMMIT or ROLLBACK of a transaction across shards sent with the
    /// extended protocol (Bind, Execute, Sync); other transaction control
    /// is refused there, as with a simple query.
    pub(super) async fn end_across_batch(&mut self, p: Arc<Prepared>, bind: Bind, kind: Kind) -> Result<(), SqlError> {
        let commit = match kind {
            Kind::Commit => true,
            Kind::Rollback => false,
            _ => {
                let err = SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("`{}` cannot run in a transaction across shards", p.text.sql),
                )
                .hint("savepoints and SET need a transaction on one shard");
                return self.fail(err, true);
            }
        };
        let Some((_, _, describe)) = self.one_statement_batch(None, Some((p, bind))) else {
            let err = SqlError::new(
                code::FEATURE_NOT_SUPPORTED,
                "in a transaction across shards, COMMIT and ROLLBACK must be a batch of their own (Bind, Execute, Sync)",
            )
            .hint("send COMMIT as a simple query, or follow its Execute with Sync");
            return self.fail(err, true);
        };
        let mut out = BytesMut::new();
        reply::bind_complete(&mut out);
        if describe {
            reply::no_data(&mut out);
        }
        self.emit(out, vec![]);
        self.end_across(commit).await
    }

    /// Takes the rest of a one-statement batch from the inbox: the
    /// statement, its Bind, and whether the portal is described. `None`
    /// (and nothing taken) when the batch is shaped otherwise.
    fn one_statement_batch(
        &mut self,
        parsed: Option<&Arc<Prepared>>,
        bound: Option<(Arc<Prepared>, Bind)>,
    ) -> Option<(Arc<Prepared>, Bind, bool)> {
        let bind_in_inbox = bound.is_none();
        let portal = match (&bound, parsed) {
            (Some((_, b)), _) => b.portal_name.clone().unwrap_or_default(),
            (None, Some(p)) => match self.inbox.front() {
                Some(ClientMsg::Bind { msg, .. })
                    if msg.statement_name.as_deref().unwrap_or_default() == p.client_name =>
                {
                    msg.portal_name.clone().unwrap_or_default()
                }
                _ => return None,
            },
            (None, None) => return None,
        };
        let next = usize::from(bind_in_inbox);
        let describe = matches!(self.inbox.get(next), Some(ClientMsg::Describe { msg, .. })
            if msg.target_type == b'P' && msg.name.as_deref().unwrap_or_default() == portal);
        let at = next + usize::from(describe);
        // All rows at once (a row limit of 0: the last four bytes of Execute).
        let executes = matches!(self.inbox.get(at), Some(ClientMsg::Execute { portal: e, raw })
            if *e == portal && raw.ends_with(&[0, 0, 0, 0]));
        let syncs = matches!(self.inbox.get(at + 1), Some(ClientMsg::Sync { .. }));
        if !executes || !syncs {
            return None;
        }
        let mut taken = Vec::with_capacity(at + 2);
        for _ in 0..at + 2 {
            if let Some(m) = self.inbox.pop_front() {
                self.inbox_bytes -= m.size();
                taken.push(m);
            }
        }
        let (p, bind) = match (bound, parsed) {
            (Some(b), _) => b,
            (None, Some(p)) => match taken.into_iter().next() {
                Some(ClientMsg::Bind { msg, .. }) => (p.clone(), msg),
                _ => return None,
            },
            (None, None) => return None,
        };
        Some((p, bind, describe))
    }

    /// Keeps a statement the client just prepared; what undoes that.
    pub(super) fn remember(&mut self, p: &Arc<Prepared>) -> Vec<Effect> {
        let name = p.client_name.clone();
        if name.is_empty() {
            match self.unnamed.replace(p.clone()) {
                Some(old) => vec![Effect::RestoreStatement(String::new(), old)],
                None => vec![Effect::ForgetStatement(name)],
            }
        } else {
            self.statements.insert(name.clone(), p.clone());
            vec![Effect::ForgetStatement(name)]
        }
    }
}
