//! Statements shardcar answers itself: its own variables, transaction
//! control before any statement needed a server, DEALLOCATE, DISCARD ALL.

use std::sync::Arc;

use bytes::BytesMut;

use super::Session;
use super::prepared::Effect;
use super::state::{Deferred, Txn, TxnStatus};
use crate::classify::{Kind, Statement};
use crate::sqlerror::{SqlError, code};
use crate::wire::reply;

impl Session {
    /// True when shardcar answers this statement itself in the current state.
    pub(super) fn runs_locally(&self, kind: &Kind) -> bool {
        match kind {
            Kind::ShardcarSet { .. }
            | Kind::ShardcarShow(_)
            | Kind::Unsupported { .. }
            | Kind::Deallocate(_)
            | Kind::DiscardAll => true,
            Kind::Begin
            | Kind::Savepoint(_)
            | Kind::Release(_)
            | Kind::RollbackTo(_)
            | Kind::Commit
            | Kind::Rollback => self.conns.is_empty() && matches!(self.txn, Txn::Idle | Txn::Deferred(_)),
            Kind::TransactionOption => self.conns.is_empty() && matches!(self.txn, Txn::Deferred(_)),
            Kind::Read | Kind::Write | Kind::Session(_) => matches!(&self.txn, Txn::Deferred(d) if d.failed),
        }
    }

    /// Runs a statement shardcar answers itself; returns its replies and
    /// what to undo if a later error means it never happened.
    pub(super) fn local(
        &mut self,
        stmt: &Statement,
        with_row_description: bool,
    ) -> Result<(BytesMut, Vec<Effect>), SqlError> {
        let mut out = BytesMut::new();
        let mut undo = Vec::new();
        let in_failed = matches!(&self.txn, Txn::Deferred(d) if d.failed);
        let tag: String = match &stmt.kind {
            Kind::ShardcarSet { name, value } => {
                if name == "shard"
                    && let Some(v) = value
                {
                    self.shared.router.shard_named(v)?;
                }
                undo.push(Effect::RestoreSession(self.info.clone()));
                let vars = &mut Arc::make_mut(&mut self.info).vars;
                match value {
                    Some(v) => vars.insert(name.clone(), v.clone()),
                    None => vars.remove(name),
                };
                if value.is_some() { "SET" } else { "RESET" }.into()
            }
            Kind::ShardcarShow(name) => {
                let value = match (name.as_str(), self.info.vars.get(name)) {
                    (_, Some(v)) => v.clone(),
                    // Where statements without a target go.
                    ("shard", None) => {
                        let topology = &self.shared.pools.topology;
                        topology.name(topology.default_shard()).to_string()
                    }
                    (_, None) => {
                        return Err(SqlError::new(
                            code::UNDEFINED_OBJECT,
                            format!("unrecognized configuration parameter \"shardcar.{name}\""),
                        )
                        .hint(format!("set it first: SET shardcar.{name} = ...")));
                    }
                };
                if with_row_description {
                    reply::text_column(&mut out, &format!("shardcar.{name}"));
                }
                reply::text_row(&mut out, &value);
                "SHOW".into()
            }
            Kind::Unsupported { reason, hint } => {
                return Err(SqlError::new(code::FEATURE_NOT_SUPPORTED, reason.clone()).hint(hint.clone()));
            }
            Kind::Deallocate(Some(name)) => {
                let old = self.statements.remove(name).ok_or_else(|| {
                    SqlError::new(code::INVALID_STATEMENT_NAME, format!("prepared statement \"{name}\" does not exist"))
                })?;
                undo.push(Effect::RestoreStatement(name.clone(), old));
                "DEALLOCATE".into()
            }
            Kind::Deallocate(None) => {
                undo.extend(self.statements.take_all().into_iter().map(|(n, p)| Effect::RestoreStatement(n, p)));
                "DEALLOCATE ALL".into()
            }
            Kind::DiscardAll => {
                if self.status() != TxnStatus::Idle {
                    return Err(SqlError::new(
                        code::ACTIVE_TRANSACTION,
                        "DISCARD ALL cannot run inside a transaction block",
                    ));
                }
                self.statements.take_all();
                self.unnamed = None;
                self.clear_portals();
                self.settings = self.startup.clone();
                Arc::make_mut(&mut self.info).vars.clear();
                "DISCARD ALL".into()
            }
            _ if in_failed && !matches!(stmt.kind, Kind::Commit | Kind::Rollback | Kind::RollbackTo(_)) => {
                return Err(aborted());
            }
            Kind::Begin => {
                if let Txn::Deferred(_) = self.txn {
                    reply::notice(
                        &mut out,
                        "WARNING",
                        code::ACTIVE_TRANSACTION,
                        "there is already a transaction in progress",
                    );
                } else {
                    self.txn = Txn::Deferred(Deferred { statements: vec![stmt.text.clone()], ..Deferred::default() });
                }
                "BEGIN".into()
            }
            Kind::TransactionOption => {
                if let Txn::Deferred(d) = &mut self.txn {
                    d.statements.push(stmt.text.clone());
                }
                "SET".into()
            }
            Kind::Savepoint(name) => {
                let Txn::Deferred(d) = &mut self.txn else { return Err(no_transaction("SAVEPOINT")) };
                d.savepoints.push(name.clone());
                "SAVEPOINT".into()
            }
            Kind::Release(name) | Kind::RollbackTo(name) => {
                let release = matches!(stmt.kind, Kind::Release(_));
                let Txn::Deferred(d) = &mut self.txn else {
                    return Err(no_transaction(if release { "RELEASE SAVEPOINT" } else { "ROLLBACK TO SAVEPOINT" }));
                };
                let Some(pos) = d.savepoints.iter().rposition(|s| s == name) else {
                    d.failed = true;
                    return Err(SqlError::new(code::INVALID_SAVEPOINT, format!("savepoint \"{name}\" does not exist")));
                };
                // Nothing ran since the savepoint: releasing or rolling back to
                // it only forgets the later ones (and, for RELEASE, itself).
                d.savepoints.truncate(if release { pos } else { pos + 1 });
                if !release {
                    d.failed = false;
                }
                if release { "RELEASE" } else { "ROLLBACK" }.into()
            }
            Kind::Commit | Kind::Rollback => {
                let was_failed = in_failed;
                if !matches!(self.txn, Txn::Deferred(_)) {
                    reply::notice(
                        &mut out,
                        "WARNING",
                        code::NO_ACTIVE_TRANSACTION,
                        "there is no transaction in progress",
                    );
                }
                self.txn = Txn::Idle;
                if matches!(stmt.kind, Kind::Commit) && !was_failed { "COMMIT" } else { "ROLLBACK" }.into()
            }
            Kind::Read | Kind::Write | Kind::Session(_) => return Err(aborted()),
        };
        reply::command_complete(&mut out, &tag);
        Ok((out, undo))
    }
}

pub(super) fn aborted() -> SqlError {
    SqlError::new(
        code::IN_FAILED_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

pub(super) fn no_transaction(what: &str) -> SqlError {
    SqlError::new(code::NO_ACTIVE_TRANSACTION, format!("{what} can only be used in transaction blocks"))
}

pub(super) fn local_capable(kind: &Kind) -> bool {
    !matches!(kind, Kind::Read | Kind::Write | Kind::Session(_))
}
