//! The simple query protocol: one Query message, one ReadyForQuery.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::Session;
use super::dispatch::Action;
use super::fan_out::ScatterPortal;
use super::outbox::{Entry, Reply};
use crate::sqlerror::SqlError;
use crate::telemetry::stages::{Classified, InFlight, Stage, Stages};
use crate::wire::reply;

impl Session {
    pub(super) async fn query(&mut self, raw: Bytes, sql: String) -> Result<(), SqlError> {
        self.run_query(raw, sql).await?;
        // Outside a transaction block the query ends its implicit
        // transaction, and with it the portals that extended messages
        // before it opened (Postgres commits at the query's end).
        if matches!(self.txn, super::state::Txn::Idle) {
            self.end_portals().await?;
        }
        Ok(())
    }

    async fn run_query(&mut self, raw: Bytes, sql: String) -> Result<(), SqlError> {
        let started = Instant::now();
        // Routed by the facts of its template when it has one (see
        // `lookup_lifted`), with its literals as parameters; a plan across
        // shards rewrites the text as written.
        let (facts, literals, cached) = match self.shared.facts.lookup_lifted(&sql) {
            Some((facts, literals)) => (facts, Some(literals), true),
            None => {
                let (facts, cached) = self.shared.facts.lookup(&sql);
                (facts, None, cached)
            }
        };
        let mut stages = Stages::new(started);
        stages.classify = Some(Classified::new(cached, Stage::since(started)));
        // Extended messages before it, not yet synced: their replies come
        // first, whatever answers this query (on Postgres its ReadyForQuery
        // sends them). If one of them failed, a server skips to its Sync and
        // ignores this query — no reply at all — and so does the session.
        if self.conns.iter().any(|h| h.unsynced) && !self.caught_up().await? {
            return Ok(());
        }
        // A simple query destroys the unnamed statement and portal.
        self.unnamed = None;
        if let Some(old) = self.portals.remove("") {
            self.drop_portal(old).await?;
        }
        if facts.statements.is_empty() && facts.parse_error.is_none() {
            let mut out = BytesMut::new();
            reply::empty_query(&mut out);
            self.emit(out, vec![]);
            self.emit_ready();
            return Ok(());
        }
        let written = literals.as_ref().map(|_| sql.as_str());
        let action = match self.plan(&facts, literals.as_ref(), &mut stages, written).await {
            Ok(a) => a,
            Err(e) => return self.refuse(e, false, stages, &facts),
        };
        match action {
            Action::Local => {
                let Some(stmt) = facts.single() else { return Ok(()) };
                match self.local(stmt, true) {
                    Ok((frames, _)) => {
                        self.emit(frames, vec![]);
                        self.emit_ready();
                        Ok(())
                    }
                    Err(e) => self.fail(e, false),
                }
            }
            Action::EndBlock(commit) => {
                self.end_block(commit).await?;
                self.emit_ready();
                Ok(())
            }
            Action::Savepoint => {
                let Some(stmt) = facts.single() else { return Ok(()) };
                match self.across_savepoint(stmt).await {
                    Ok(()) => {
                        self.emit_ready();
                        Ok(())
                    }
                    Err(e) => self.fail(e, false),
                }
            }
            Action::Forward { shard, role } => {
                if let Err(e) = self.attach(shard, role).await {
                    return self.refuse(e, false, stages, &facts);
                }
                stages.checkout = self.checkout_stage.take();
                let held = self.conns.get_mut(shard).expect("attached");
                held.conn.conn.wbuf.extend_from_slice(&raw);
                // Its ReadyForQuery sends every reply before it, as a Flush
                // does; it does not end the batch: after an error, the
                // server ignores it and skips on to the next Sync.
                held.unflushed = false;
                held.conn.conn.unnamed = None;
                held.wrote |= !facts.is_read_only();
                let flight = Some(InFlight::new(stages, facts.clone(), held.conn.node.clone(), self.info.clone()));
                self.outbox.push(Entry::backend(shard, Reply::Query { facts, done: 0, flight }), &mut self.events);
                self.apply_events();
                Ok(())
            }
            Action::Scatter(spread) => {
                let mut sp = ScatterPortal::new(sql.clone(), None, spread);
                self.scatter_run(&mut sp, 0, true).await?;
                self.emit_ready();
                Ok(())
            }
            Action::CopySplit(split) => self.copy_split(&sql, &facts, split, false).await,
            Action::Declare(spread) => {
                let Some(declared) = facts.single().and_then(|s| s.shape.cursor.as_ref()) else { return Ok(()) };
                let query = crate::classify::shape::cursor_query(&sql).unwrap_or_default();
                self.declare(&declared.name, query, spread, crate::scatter::Bound::default(), false).await
            }
            Action::Cursor(used) => self.cursor_op(&used, true, false).await,
        }
    }
}
