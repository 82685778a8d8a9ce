//! The extended query protocol: Parse, Bind, Describe, Execute, Close,
//! with prepared statements kept per client and prepared on whichever
//! server connection needs them.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pgwire::messages::extendedquery::{Bind, Close, Describe, Parse};

use super::local::local_capable;
use super::{Portal, Session};
use crate::classify::params::Params;
use crate::classify::{Kind, Statement};
use crate::execute::{Effect, Entry, Prepared, Reply};
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::{Classified, InFlight, Stage, Stages};
use crate::wire::encode;
use crate::wire::{ClientMsg, reply};

impl Session {
    pub(super) async fn parse(&mut self, raw: Bytes, msg: Parse) -> Result<(), SqlError> {
        let started = Instant::now();
        let name = msg.name.clone().unwrap_or_default();
        if !name.is_empty() && self.statements.contains_key(&name) {
            return self.fail(
                SqlError::new(
                    code::DUPLICATE_PREPARED_STATEMENT,
                    format!("prepared statement \"{name}\" already exists"),
                ),
                true,
            );
        }
        let (facts, cached) = self.shared.facts.lookup(&msg.query);
        let mut stages = Stages::new(started);
        stages.classify = Some(Classified::new(cached, Stage::since(started)));
        let local = facts.single().is_some_and(|s| local_capable(&s.kind));
        // A batch that only prepares (libpq's PQprepare: Parse, Sync) is
        // answered without a server when the grammar accepts the text: a
        // client may block on it while holding other work, and needs no
        // connection until it runs the statement.
        let lazy = !local && self.attached.is_none() && facts.parse_error.is_none() && self.batch_only_prepares();
        let prepared = Arc::new(Prepared::new(&name, &msg, &raw, facts.clone()));
        if !local && !lazy {
            if self.fans_out_everywhere(&facts) {
                let taken = std::mem::replace(&mut stages, Stages::new(started));
                if self.fan_out_batch(Some(prepared.clone()), None, taken, everywhere()).await? {
                    return Ok(());
                }
            }
            if let Err(e) = self.attach_batch(&facts, None, Some(&prepared), &mut stages).await {
                if e.code == code::AFTER_SYNC {
                    self.requeue(ClientMsg::Parse { raw, msg });
                    return Ok(());
                }
                let taken = std::mem::replace(&mut stages, Stages::new(started));
                if !self.fan_out_batch(Some(prepared), None, taken, e.clone()).await? {
                    self.refuse_batch(e, &mut stages, &facts)?;
                }
                return Ok(());
            }
        }
        self.parsed = Some((prepared.clone(), stages));
        let undo = self.remember(&prepared);
        if local || lazy {
            // Sent to a server when it first runs there.
            let mut out = BytesMut::new();
            reply::parse_complete(&mut out);
            self.emit(out, undo);
            return Ok(());
        }
        self.send_parse(&prepared, undo, false);
        Ok(())
    }

    /// Sends a Parse for `p` unless the attached connection already has it.
    /// `hidden`: shardcar's own re-prepare, whose reply the client never sees.
    pub(super) fn send_parse(&mut self, p: &Arc<Prepared>, mut undo: Vec<Effect>, hidden: bool) {
        let max = self.shared.config.pool.max_prepared_per_connection;
        let Some(a) = self.attached.as_mut() else { return };
        let already = if p.backend_name.is_empty() { false } else { a.conn.prepared.has(&p.backend_name, &p.text) };
        if already {
            if !hidden {
                let mut out = BytesMut::new();
                reply::parse_complete(&mut out);
                let entry = Entry::synthetic(out).undo(undo).on_success(Effect::Validated(p.clone()));
                a.outbox.push(entry, &mut self.events);
            }
        } else {
            if p.backend_name.is_empty() {
                a.conn.unnamed = Some(p.text.clone());
                undo.push(Effect::UnnamedLost);
            } else {
                for old in a.conn.prepared.evict_for_one_more(max) {
                    let mut close = BytesMut::new();
                    encode(&mut close, Close::new(b'S', Some(old)));
                    a.conn.wbuf.extend_from_slice(&close);
                    a.outbox.push(Entry::hidden(Reply::Close), &mut self.events);
                }
                if a.conn.prepared.contains_name(&p.backend_name) {
                    // Same name, other text: a hash collision; replace it.
                    let mut close = BytesMut::new();
                    encode(&mut close, Close::new(b'S', Some(p.backend_name.clone())));
                    a.conn.wbuf.extend_from_slice(&close);
                    a.outbox.push(Entry::hidden(Reply::Close), &mut self.events);
                }
                a.conn.prepared.insert(p.backend_name.clone(), p.text.clone());
                undo.push(Effect::Unprepare(p.backend_name.clone()));
            }
            a.conn.wbuf.extend_from_slice(&p.parse);
            let entry = if hidden {
                undo.push(Effect::ForgetUnvalidated(p.clone()));
                Entry::hidden(Reply::Parse)
            } else {
                Entry::backend(Reply::Parse)
            };
            a.outbox.push(entry.undo(undo).on_success(Effect::Validated(p.clone())), &mut self.events);
        }
        a.unsynced = true;
        self.apply_events();
    }

    /// Makes sure the attached connection holds `p` before it is used.
    pub(super) fn ensure_prepared(&mut self, p: &Arc<Prepared>) {
        let Some(a) = self.attached.as_ref() else { return };
        let present = if p.backend_name.is_empty() {
            a.conn.unnamed.as_ref().is_some_and(|t| Arc::ptr_eq(t, &p.text) || **t == *p.text)
        } else {
            a.conn.prepared.has(&p.backend_name, &p.text)
        };
        if !present {
            self.send_parse(p, vec![], true);
        }
    }

    pub(super) fn resolve(&self, name: &str) -> Result<Arc<Prepared>, SqlError> {
        let found = if name.is_empty() { self.unnamed.clone() } else { self.statements.get(name).cloned() };
        found.ok_or_else(|| {
            let what = if name.is_empty() {
                "unnamed prepared statement".to_string()
            } else {
                format!("prepared statement \"{name}\"")
            };
            SqlError::new(code::INVALID_STATEMENT_NAME, format!("{what} does not exist"))
        })
    }

    /// The stages of `p` so far: from its Parse when that came just before,
    /// else a statement prepared earlier, starting now.
    fn stages_of(&mut self, p: &Arc<Prepared>) -> Stages {
        match self.parsed.take() {
            Some((parsed, stages)) if Arc::ptr_eq(&parsed, p) => stages,
            _ => Stages::new(Instant::now()),
        }
    }

    pub(super) async fn bind(&mut self, raw: Bytes, msg: Bind) -> Result<(), SqlError> {
        let stmt_name = msg.statement_name.clone().unwrap_or_default();
        let portal = msg.portal_name.clone().unwrap_or_default();
        let p = match self.resolve(&stmt_name) {
            Ok(p) => p,
            Err(e) => return self.fail(e, true),
        };
        let mut stages = self.stages_of(&p);
        if self.is_across()
            && let Some(kind) = p.facts.single().map(|s| s.kind.clone())
            && !matches!(kind, Kind::Read | Kind::Write)
        {
            return self.end_across_batch(p, msg, kind).await;
        }
        let local = p.facts.single().is_some_and(|s| self.runs_locally(&s.kind));
        if local {
            self.portals.insert(portal, Portal { statement: p, local: true, stages: None });
            let mut out = BytesMut::new();
            reply::bind_complete(&mut out);
            self.emit(out, vec![]);
            return Ok(());
        }
        let started = stages.started;
        // A statement for every shard, or one routing refused because it needs several.
        let routed = match self.fans_out_everywhere(&p.facts) {
            true => Err(everywhere()),
            false => self.attach_batch(&p.facts, Some(bind_params(&p, &msg)), None, &mut stages).await,
        };
        if let Err(e) = routed {
            if e.code == code::AFTER_SYNC {
                self.requeue(ClientMsg::Bind { raw, msg });
                return Ok(());
            }
            if !self.fan_out_batch(None, Some((p.clone(), msg)), stages, e.clone()).await? {
                self.refuse_batch(e, &mut Stages::new(started), &p.facts)?;
            }
            return Ok(());
        }
        self.ensure_prepared(&p);
        let Some(a) = self.attached.as_mut() else { return Ok(()) };
        if p.backend_name.is_empty() {
            a.conn.wbuf.extend_from_slice(&raw);
        } else {
            let mut renamed = msg;
            renamed.statement_name = Some(p.backend_name.clone());
            let mut buf = BytesMut::new();
            encode(&mut buf, renamed);
            a.conn.wbuf.extend_from_slice(&buf);
        }
        a.outbox.push(Entry::backend(Reply::Bind), &mut self.events);
        a.unsynced = true;
        self.portals.insert(portal, Portal { statement: p, local: false, stages: Some(stages) });
        self.apply_events();
        Ok(())
    }

    pub(super) async fn describe(&mut self, raw: Bytes, msg: Describe) -> Result<(), SqlError> {
        let name = msg.name.clone().unwrap_or_default();
        if msg.target_type == b'S' {
            let p = match self.resolve(&name) {
                Ok(p) => p,
                Err(e) => return self.fail(e, true),
            };
            if let Some(stmt) = p.facts.single().filter(|s| self.runs_locally(&s.kind)) {
                let mut out = BytesMut::new();
                reply::parameter_description(&mut out);
                describe_local(&mut out, stmt);
                self.emit(out, vec![]);
                return Ok(());
            }
            // A Describe may attach the connection its statement then runs on.
            let mut stages = self.stages_of(&p);
            if let Err(e) = self.attach_batch(&p.facts, None, None, &mut stages).await {
                if e.code == code::AFTER_SYNC {
                    self.requeue(ClientMsg::Describe { raw, msg });
                    return Ok(());
                }
                return self.refuse_batch(e, &mut stages, &p.facts);
            }
            self.parsed = Some((p.clone(), stages));
            self.ensure_prepared(&p);
            let Some(a) = self.attached.as_mut() else { return Ok(()) };
            let mut buf = BytesMut::new();
            encode(&mut buf, Describe::new(b'S', Some(p.backend_name.clone())));
            a.conn.wbuf.extend_from_slice(&buf);
            a.outbox.push(Entry::backend(Reply::DescribeStatement(Some(p.clone()))), &mut self.events);
            a.unsynced = true;
        } else {
            match self.portals.get(&name) {
                Some(Portal { statement, local: true, .. }) => {
                    let mut out = BytesMut::new();
                    if let Some(stmt) = statement.facts.single() {
                        describe_local(&mut out, stmt);
                    }
                    self.emit(out, vec![]);
                    return Ok(());
                }
                Some(_) if self.attached.is_some() => {}
                _ => return self.fail(no_portal(&name), true),
            }
            let Some(a) = self.attached.as_mut() else { return Ok(()) };
            a.conn.wbuf.extend_from_slice(&raw);
            a.outbox.push(Entry::backend(Reply::DescribePortal), &mut self.events);
            a.unsynced = true;
        }
        self.apply_events();
        Ok(())
    }

    pub(super) async fn execute(&mut self, raw: Bytes, portal: String) -> Result<(), SqlError> {
        let (statement, local, stages) = match self.portals.get_mut(&portal) {
            Some(p) => (p.statement.clone(), p.local, p.stages.take()),
            None => return self.fail(no_portal(&portal), true),
        };
        if local {
            let Some(stmt) = statement.facts.single() else { return Ok(()) };
            return match self.local(stmt, false) {
                Ok((frames, undo)) => {
                    self.emit(frames, undo);
                    Ok(())
                }
                Err(e) => self.fail(e, true),
            };
        }
        let Some(a) = self.attached.as_mut() else { return self.fail(no_portal(&portal), true) };
        a.conn.wbuf.extend_from_slice(&raw);
        // A portal executed again (a fetch of more rows) is timed from now.
        let stages = stages.unwrap_or_else(|| Stages::new(Instant::now()));
        let flight = InFlight::new(stages, statement.facts.clone(), a.node.clone(), self.info.clone());
        a.outbox.push(Entry::backend(Reply::Execute(flight)), &mut self.events);
        a.unsynced = true;
        self.apply_events();
        Ok(())
    }

    pub(super) async fn close(&mut self, raw: Bytes, msg: Close) -> Result<(), SqlError> {
        let name = msg.name.clone().unwrap_or_default();
        let mut undo = Vec::new();
        if msg.target_type == b'S' {
            // Statements stay prepared on servers (content-addressed, shared);
            // only the client's name goes away.
            let old = if name.is_empty() { self.unnamed.take() } else { self.statements.remove(&name) };
            if let Some(old) = old {
                undo.push(Effect::RestoreStatement(name, old));
            }
        } else if let Some(Portal { local: false, .. }) = self.portals.get(&name)
            && let Some(a) = self.attached.as_mut()
        {
            self.portals.remove(&name);
            a.conn.wbuf.extend_from_slice(&raw);
            a.outbox.push(Entry::backend(Reply::Close), &mut self.events);
            a.unsynced = true;
            self.apply_events();
            return Ok(());
        } else {
            self.portals.remove(&name);
        }
        let mut out = BytesMut::new();
        reply::close_complete(&mut out);
        self.emit(out, undo);
        Ok(())
    }
}

pub(super) fn bind_params(p: &Prepared, bind: &Bind) -> Arc<Params> {
    Arc::new(Params {
        values: bind.parameters.clone(),
        formats: bind.parameter_format_codes.clone(),
        types: p.param_types(),
    })
}

/// Why a statement for every shard (DDL) was not run on them all.
fn everywhere() -> SqlError {
    SqlError::new(
        code::FEATURE_NOT_SUPPORTED,
        "this statement runs on every shard, which shardcar does for a batch of one statement (Bind, Execute, Sync)",
    )
    .hint("send it as a simple query, or with a Sync of its own")
}

pub(super) fn no_portal(name: &str) -> SqlError {
    SqlError::new("34000", format!("portal \"{name}\" does not exist"))
}

pub(super) fn describe_local(out: &mut BytesMut, stmt: &Statement) {
    match &stmt.kind {
        Kind::ShardcarShow(name) => reply::text_column(out, &format!("shardcar.{name}")),
        _ => reply::no_data(out),
    }
}
