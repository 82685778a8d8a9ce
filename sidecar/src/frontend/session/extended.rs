//! The extended query protocol: Parse, Bind, Describe, Execute, Close,
//! Sync, with prepared statements kept per client and prepared on whichever
//! server connection needs them.
//!
//! A Parse is held back until the next message shows where its statement
//! runs (its Bind routes it with the parameters; a Describe needs some
//! server). Any legal order of messages works: a Describe before Bind with
//! a Flush (asyncpg), a row limit on Execute (pgjdbc), portals executed in
//! pieces, pipelines of many statements before one Sync.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pgwire::messages::extendedquery::{Bind, Close, Describe, Parse};

use super::cursors::Cursor;
use super::dispatch::Action;
use super::fan_out::{Ran, ScatterPortal};
use super::local::local_capable;
use super::outbox::{Entry, Reply};
use super::prepared::{Effect, Prepared};
use super::revalidate::Revalidate;
use super::state::{Mode, Txn};
use super::{Parsed, Portal, PortalKind, Session};
use crate::classify::params::Params;
use crate::classify::shape::CursorOp;
use crate::classify::{Kind, Statement};
use crate::pool::{Role, ShardConn};
use crate::scatter::Bound;
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::{Classified, InFlight, Stage, Stages};
use crate::topology::ShardId;
use crate::wire::{encode, put_bind_renamed, reply};

impl Session {
    pub(super) async fn parse(&mut self, raw: Bytes, mut msg: Parse) -> Result<(), SqlError> {
        let started = Instant::now();
        let name = msg.name.take().unwrap_or_default();
        if !name.is_empty() && self.statements.contains(&name) {
            let e = SqlError::new(
                code::DUPLICATE_PREPARED_STATEMENT,
                format!("prepared statement \"{name}\" already exists"),
            );
            return self.fail(e, true);
        }
        let (facts, cached) = self.shared.facts.lookup(&msg.query);
        let mut stages = Stages::new(started);
        stages.classify = Some(Classified::new(cached, Stage::since(started)));
        let prepared = Arc::new(Prepared::new(name.clone(), msg, &raw, facts.clone()));
        let limit = self.shared.config.listen.max_prepared_bytes_per_client;
        if !name.is_empty() && self.statements.bytes_with(&prepared) > limit {
            self.shared.limits.hit("prepared_bytes");
            let e = SqlError::new(
                code::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "prepared statement \"{name}\" would make this session's prepared statements hold {} bytes, over shardcar's listen.max_prepared_bytes_per_client ({limit})",
                    self.statements.bytes_with(&prepared)
                ),
            )
            .hint("close statements no longer used (Close or DEALLOCATE), use the unnamed statement for one-off text, or raise the limit");
            return self.fail(e, true);
        }
        let undo = self.remember(&prepared);
        if facts.single().is_some_and(|s| local_capable(&s.kind)) {
            // Answered here, or sent to a server when it first runs there.
            let mut out = BytesMut::new();
            reply::parse_complete(&mut out);
            self.emit(out, undo);
            self.parsed = Some(Parsed { statement: prepared, stages, pending: false, undo: vec![] });
            return Ok(());
        }
        self.parsed = Some(Parsed { statement: prepared, stages, pending: true, undo });
        Ok(())
    }

    /// Answers the Parse held back when the next message does not use its
    /// statement.
    pub(super) async fn send_pending_parse(&mut self) -> Result<(), SqlError> {
        let Some(parsed) = self.parsed.as_mut().filter(|p| p.pending) else { return Ok(()) };
        parsed.pending = false;
        let p = parsed.statement.clone();
        let undo = std::mem::take(&mut parsed.undo);
        self.parse_anywhere(&p, undo).await
    }

    /// Answers a client's Parse without a particular server: ParseComplete
    /// now when the grammar accepts the text (the first server to see it
    /// confirms it), else on the server the session is on (or the default
    /// shard's), which reports its error exactly.
    async fn parse_anywhere(&mut self, p: &Arc<Prepared>, undo: Vec<Effect>) -> Result<(), SqlError> {
        if p.facts.parse_error.is_none() {
            let mut out = BytesMut::new();
            reply::parse_complete(&mut out);
            self.emit(out, undo);
            return Ok(());
        }
        let shard = self.anywhere();
        if let Err(e) = self.attach(shard, Role::Primary).await {
            for effect in undo {
                self.apply(effect);
            }
            return self.fail(e, true);
        }
        self.send_parse(shard, p, undo, false);
        Ok(())
    }

    /// The statement's stages so far and, when its Parse is still held
    /// back, what undoes that Parse.
    fn take_parsed(&mut self, p: &Arc<Prepared>) -> (Stages, Option<Vec<Effect>>) {
        match self.parsed.take() {
            Some(parsed) if Arc::ptr_eq(&parsed.statement, p) => (parsed.stages, parsed.pending.then_some(parsed.undo)),
            other => {
                self.parsed = other;
                (Stages::new(Instant::now()), None)
            }
        }
    }

    /// Sends a Parse for `p` to `shard`'s server unless it holds it already
    /// and the skip can be undone (see `revalidate`).
    /// `hidden`: shardcar's own re-prepare, whose reply the client never sees.
    fn send_parse(&mut self, shard: ShardId, p: &Arc<Prepared>, mut undo: Vec<Effect>, hidden: bool) {
        let max = self.shared.config.pool.max_prepared_per_connection;
        let reuse_unnamed = self.shared.config.pool.reuse_unnamed_statements;
        let undoable = !hidden && self.batch_starts_on(shard);
        let Some(held) = self.conns.get_mut(shard) else { return };
        let conn = &mut held.conn.conn;
        held.unsynced = true;
        held.unflushed = true;
        let held_there = (reuse_unnamed || !p.backend_name.is_empty()) && conn.holds(&p.backend_name, &p.text);
        if held_there && undoable {
            held.revalidate = Some(Revalidate::watch(p.clone(), conn));
            let mut out = BytesMut::new();
            reply::parse_complete(&mut out);
            let entry = Entry::synthetic(out).undo(undo).on_success(Effect::Validated(p.clone()));
            self.outbox.push(entry, &mut self.events);
            self.apply_events();
            return;
        }
        if p.backend_name.is_empty() {
            conn.unnamed = Some(p.text.clone());
            undo.push(Effect::UnnamedLost(shard));
        } else {
            let mut stale = conn.prepared.evict_for_one_more(max);
            if conn.prepared.contains_name(&p.backend_name) {
                // The same name: another text (a hash collision), or this
                // one where its plan could not be checked; prepared afresh.
                stale.push(p.backend_name.clone());
            }
            for old in stale {
                let mut close = BytesMut::new();
                encode(&mut close, Close::new(b'S', Some(old)));
                conn.wbuf.extend_from_slice(&close);
                self.outbox.push(Entry::hidden(shard, Reply::Close), &mut self.events);
            }
            conn.prepared.insert(p.backend_name.clone(), p.text.clone());
            undo.push(Effect::Unprepare(shard, p.backend_name.clone()));
        }
        conn.write_parse(&p.parse);
        let entry = if hidden {
            undo.push(Effect::ForgetUnvalidated(p.clone()));
            Entry::hidden(shard, Reply::Parse)
        } else {
            Entry::backend(shard, Reply::Parse)
        };
        self.outbox.push(entry.undo(undo).on_success(Effect::Validated(p.clone())), &mut self.events);
        self.apply_events();
    }

    /// What is next sent to `shard`'s server starts a batch outside any
    /// transaction: nothing has run in it, so it can be sent again.
    fn batch_starts_on(&self, shard: ShardId) -> bool {
        matches!(self.txn, Txn::Idle)
            && !self.outbox.owes(shard)
            && self.conns.get(shard).is_some_and(|h| !h.unsynced && !h.in_block && h.conn.conn.status == b'I')
    }

    /// Makes sure `shard`'s server holds `p` before it is used there; the
    /// client's Parse, if still held back, goes there now.
    fn prepare_on(&mut self, shard: ShardId, p: &Arc<Prepared>, pending: Option<Vec<Effect>>) {
        if let Some(undo) = pending {
            return self.send_parse(shard, p, undo, false);
        }
        let Some(held) = self.conns.get(shard) else { return };
        let conn = &held.conn.conn;
        let present = conn.holds(&p.backend_name, &p.text);
        // Parsed by the client in an earlier batch: a stale plan fails as
        // the client's own would, since the client may keep the result
        // type it was told (see `revalidate`).
        if !present {
            self.send_parse(shard, p, vec![], true);
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

    /// Keeps a statement the client just prepared; what undoes that.
    fn remember(&mut self, p: &Arc<Prepared>) -> Vec<Effect> {
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

    pub(super) async fn bind(&mut self, raw: Bytes, mut msg: Bind) -> Result<(), SqlError> {
        // The message's parts move out (the frame itself is what is forwarded).
        let stmt_name = msg.statement_name.take().unwrap_or_default();
        let portal = msg.portal_name.take().unwrap_or_default();
        let p = match self.resolve(&stmt_name) {
            Ok(p) => p,
            Err(e) => return self.fail(e, true),
        };
        let (mut stages, pending) = self.take_parsed(&p);
        // Refused before anything runs (the Parse held back is answered first):
        // a Bind must supply every parameter, as Postgres checks first (a
        // portal shardcar runs itself would otherwise run short of them); a
        // named portal (or SQL cursor) stays until closed, so its name cannot
        // be bound again; open portals share the session's byte budget.
        let cost = super::portals::cost(&portal, &msg.parameters);
        let limit = self.shared.config.listen.max_prepared_bytes_per_client;
        let held = self.statements.bytes() + self.portals.bytes() + cost;
        let refusal = match p.param_count() {
            Some(expected) if msg.parameters.len() != expected => Some(SqlError::new(
                code::PROTOCOL_VIOLATION,
                format!(
                    "bind message supplies {} parameters, but prepared statement \"{stmt_name}\" requires {expected}",
                    msg.parameters.len()
                ),
            )),
            _ if !portal.is_empty() && (self.portals.contains(&portal) || self.cursors.contains_key(&portal)) => {
                Some(SqlError::new(code::DUPLICATE_CURSOR, format!("cursor \"{portal}\" already exists")))
            }
            _ if !portal.is_empty() && held > limit => {
                self.shared.limits.hit("prepared_bytes");
                Some(SqlError::new(
                    code::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "portal \"{portal}\" would make this session's prepared statements and open portals hold {held} bytes, over shardcar's listen.max_prepared_bytes_per_client ({limit})"
                    ),
                )
                .hint("close portals no longer used (Close), or end the transaction that keeps them"))
            }
            _ => None,
        };
        if let Some(e) = refusal {
            if let Some(undo) = pending {
                self.parse_anywhere(&p, undo).await?;
            }
            return self.fail(e, true);
        }
        // The unnamed portal is replaced, as Postgres replaces it.
        if let Some(old) = self.portals.remove(&portal) {
            self.drop_portal(old).await?;
        }
        let params = bind_params(&p, &mut msg);
        let action = match self.plan(&p.facts, Some(&params), &mut stages, None).await {
            Ok(a) => a,
            Err(e) => {
                if let Some(undo) = pending {
                    self.parse_anywhere(&p, undo).await?;
                }
                return self.refuse(e, true, stages, &p.facts);
            }
        };
        let kind = match action {
            Action::Forward { shard, role } => {
                if let Err(e) = self.attach(shard, role).await {
                    if let Some(undo) = pending {
                        self.parse_anywhere(&p, undo).await?;
                    }
                    return self.refuse(e, true, stages, &p.facts);
                }
                stages.checkout = self.checkout_stage.take();
                self.prepare_on(shard, &p, pending);
                let held = self.conns.get_mut(shard).expect("attached");
                if p.backend_name.is_empty() {
                    held.conn.conn.wbuf.extend_from_slice(&raw);
                } else {
                    put_bind_renamed(&mut held.conn.conn.wbuf, &raw, &p.backend_name);
                }
                held.unsynced = true;
                held.unflushed = true;
                self.outbox.push(Entry::backend(shard, Reply::Bind), &mut self.events);
                self.apply_events();
                let on = Portal { statement: p, kind: PortalKind::On(shard), stages: Some(stages), cost };
                self.portals.insert(portal, on);
                return Ok(());
            }
            Action::CopySplit(split) => PortalKind::CopySplit(split),
            Action::Local => PortalKind::Local,
            Action::EndBlock(commit) => PortalKind::EndBlock(commit),
            Action::Savepoint => PortalKind::Savepoint,
            Action::Declare(spread) => {
                // The DECLARE's own result formats are not its rows': those are text.
                let bound = Bound::new(&params, vec![]);
                PortalKind::Declare(Box::new((spread, bound)))
            }
            Action::Cursor(used) => {
                // Its rows come from the shards in the format DECLARE gave them.
                let binary = msg.result_column_format_codes.iter().any(|f| *f != 0);
                if binary && matches!(used.op, CursorOp::Fetch { is_move: false, .. }) {
                    if let Some(undo) = pending {
                        self.parse_anywhere(&p, undo).await?;
                    }
                    let e = SqlError::new(
                        code::FEATURE_NOT_SUPPORTED,
                        format!("cursor \"{}\" spans shards: its rows come in text only", used.name),
                    )
                    .hint("FETCH with text results, or read with a row limit on Execute (a driver's portal) instead of DECLARE");
                    return self.refuse(e, true, stages, &p.facts);
                }
                PortalKind::Cursor(used)
            }
            Action::Scatter(spread) => {
                let bound = Bound::new(&params, std::mem::take(&mut msg.result_column_format_codes));
                PortalKind::Scatter(Box::new(ScatterPortal::new(p.text.sql.clone(), Some(bound), spread)))
            }
        };
        // Answered here: the Parse and Bind too.
        if let Some(undo) = pending {
            self.parse_anywhere(&p, undo).await?;
        }
        let mut out = BytesMut::new();
        reply::bind_complete(&mut out);
        self.emit(out, vec![]);
        self.portals.insert(portal, Portal { statement: p, kind, stages: None, cost });
        Ok(())
    }

    pub(super) async fn describe(&mut self, raw: Bytes, msg: Describe) -> Result<(), SqlError> {
        let name = msg.name.clone().unwrap_or_default();
        if msg.target_type == b'S' {
            return self.describe_statement(&name).await;
        }
        let Some(mut portal) = self.portals.remove(&name) else {
            // A cursor declared in SQL is a portal on its server, or kept here.
            let mut out = BytesMut::new();
            let on = match self.cursors.get(&name) {
                Some(Cursor::On(shard)) => Some(*shard),
                Some(Cursor::Across(sp)) => {
                    match &sp.description {
                        Some(t) => out.extend_from_slice(t),
                        None => reply::no_data(&mut out),
                    }
                    None
                }
                None => None,
            };
            if let Some(shard) = on
                && self.send_to(shard, &raw, Reply::DescribePortal)
            {
                return Ok(());
            }
            if out.is_empty() {
                return self.fail(no_portal(&name), true);
            }
            self.emit(out, vec![]);
            return Ok(());
        };
        if portal.kind.runs_here() && !self.caught_up().await? {
            self.portals.insert(name, portal);
            return Ok(());
        }
        let mut out = BytesMut::new();
        match &mut portal.kind {
            PortalKind::Local => {
                if let Some(stmt) = portal.statement.facts.single() {
                    describe_local(&mut out, stmt);
                }
            }
            PortalKind::EndBlock(_) | PortalKind::Savepoint | PortalKind::CopySplit(_) | PortalKind::Declare(_) => {
                reply::no_data(&mut out)
            }
            PortalKind::Cursor(used) => {
                let used = used.clone();
                self.portals.insert(name, portal);
                return self.cursor_describe(&used).await;
            }
            PortalKind::On(shard) => {
                let shard = *shard;
                self.portals.insert(name.clone(), portal);
                if !self.send_to(shard, &raw, Reply::DescribePortal) {
                    return self.fail(no_portal(&name), true);
                }
                return Ok(());
            }
            PortalKind::Scatter(sp) => {
                let failed = self.scatter_describe(sp).await?;
                if failed {
                    self.mode = Mode::SkipToSync;
                    return Ok(());
                }
            }
        }
        self.portals.insert(name, portal);
        if !out.is_empty() {
            self.emit(out, vec![]);
        }
        Ok(())
    }

    /// Describe of a statement: its parameter types and columns, from the
    /// server the session is on, else from one lent for the question.
    async fn describe_statement(&mut self, name: &str) -> Result<(), SqlError> {
        let p = match self.resolve(name) {
            Ok(p) => p,
            Err(e) => return self.fail(e, true),
        };
        let (stages, pending) = self.take_parsed(&p);
        if let Some(stmt) = p.facts.single().filter(|s| self.runs_locally(&s.kind)) {
            if let Some(undo) = pending {
                self.parse_anywhere(&p, undo).await?;
            }
            let mut out = BytesMut::new();
            reply::parameter_description(&mut out);
            describe_local(&mut out, stmt);
            self.emit(out, vec![]);
            self.parsed = Some(Parsed { statement: p, stages, pending: false, undo: vec![] });
            return Ok(());
        }
        // A FETCH describes as its cursor's query, known where the cursor is.
        let cursor =
            p.facts.single().and_then(|s| s.shape.uses_cursor.as_ref()).map(|u| (u, self.cursors.get(&u.name)));
        let on_cursor = match cursor {
            Some((used, Some(Cursor::Across(sp)))) => {
                let mut out = BytesMut::new();
                reply::parameter_description(&mut out);
                match &sp.description {
                    Some(t) if matches!(used.op, CursorOp::Fetch { is_move: false, .. }) => out.extend_from_slice(t),
                    _ => reply::no_data(&mut out),
                }
                if let Some(undo) = pending {
                    self.parse_anywhere(&p, undo).await?;
                }
                self.emit(out, vec![]);
                self.parsed = Some(Parsed { statement: p, stages, pending: false, undo: vec![] });
                return Ok(());
            }
            Some((_, Some(Cursor::On(shard)))) => Some(*shard).filter(|s| self.conns.get(*s).is_some()),
            _ => None,
        };
        let Some(shard) = on_cursor.or(self.conns.current()) else {
            self.parsed = Some(Parsed { statement: p.clone(), stages, pending: false, undo: vec![] });
            return self.probe_describe(&p, pending).await;
        };
        self.prepare_on(shard, &p, pending);
        let held = self.conns.get_mut(shard).expect("current is held");
        let mut buf = BytesMut::new();
        encode(&mut buf, Describe::new(b'S', Some(p.backend_name.clone())));
        held.conn.conn.wbuf.extend_from_slice(&buf);
        held.unsynced = true;
        held.unflushed = true;
        self.outbox.push(Entry::backend(shard, Reply::DescribeStatement(Some(p.clone()))), &mut self.events);
        self.apply_events();
        self.parsed = Some(Parsed { statement: p, stages, pending: false, undo: vec![] });
        Ok(())
    }

    /// Describes a statement on a connection lent for just that (Parse,
    /// Describe, Sync), when the session holds none: where the statement
    /// runs is known only at its Bind, and asking must not open the
    /// session's transaction on some shard.
    async fn probe_describe(&mut self, p: &Arc<Prepared>, pending: Option<Vec<Effect>>) -> Result<(), SqlError> {
        let role = match self.txn {
            Txn::Idle if self.shared.config.routing.read_replicas && p.facts.is_read_only() => Role::Replica,
            _ => Role::Primary,
        };
        // Every shard has the same schema, except where a statement names
        // its shard itself.
        let shard = match self.shared.router.explicit(&p.facts, &self.info) {
            Ok(Some(shard)) => shard,
            _ => self.anywhere(),
        };
        // Asking has no effects, so a connection the server ended before it
        // answered (terminated while idle in the pool, and not yet noticed)
        // is replaced once rather than failing the client's statement.
        let mut tries = 0;
        let (mut conn, out, failed) = loop {
            tries += 1;
            let mut conn =
                match self.shared.pools.checkout(shard, role, self.conns.wrote_at(shard), self.login.as_ref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        for effect in pending.unwrap_or_default() {
                            self.apply(effect);
                        }
                        return self.fail(e, true);
                    }
                };
            match Self::ask_describe(&mut conn, p, pending.is_some()).await {
                Ok((out, failed)) => break (conn, out, failed),
                Err(e) => {
                    let e = conn.lost(e);
                    conn.close();
                    if tries < 2 {
                        tracing::warn!(client = self.registration.pid, "{}; asking again", e.message);
                        continue;
                    }
                    for effect in pending.unwrap_or_default() {
                        self.apply(effect);
                    }
                    return self.fail(e, true);
                }
            }
        };
        let c = &mut conn.conn;
        let has = !p.backend_name.is_empty() && c.prepared.has(&p.backend_name, &p.text);
        if !failed && !has {
            if p.backend_name.is_empty() {
                c.unnamed = Some(p.text.clone());
            } else {
                let max = self.shared.config.pool.max_prepared_per_connection;
                // Kept where there is room; the next user re-prepares otherwise.
                if c.prepared.evict_for_one_more(max).is_empty() {
                    c.prepared.insert(p.backend_name.clone(), p.text.clone());
                } else {
                    c.broken = true;
                }
            }
        }
        conn.release();
        if failed {
            self.emit(out, pending.unwrap_or_default());
            self.mode = Mode::SkipToSync;
        } else {
            p.validated.store(true, std::sync::atomic::Ordering::Relaxed);
            self.emit(out, vec![]);
        }
        Ok(())
    }

    /// Parse (unless prepared there), Describe and Sync on `conn`: the
    /// client's replies, and whether the server refused the statement. A
    /// FATAL error counts as a lost connection.
    async fn ask_describe(
        conn: &mut ShardConn,
        p: &Arc<Prepared>,
        parse_owed: bool,
    ) -> Result<(BytesMut, bool), std::io::Error> {
        let c = &mut conn.conn;
        if c.prepared.contains_name(&p.backend_name) {
            // Parsed afresh: a plan prepared before a schema change cannot
            // be described (and nothing here could send the batch again).
            encode(&mut c.wbuf, Close::new(b'S', Some(p.backend_name.clone())));
            c.prepared.unsure(&p.backend_name);
        }
        c.write_parse(&p.parse);
        postgres_protocol::message::frontend::describe(b'S', &p.backend_name, &mut c.wbuf)?;
        postgres_protocol::message::frontend::sync(&mut c.wbuf);
        let mut out = BytesMut::new();
        if parse_owed {
            reply::parse_complete(&mut out);
        }
        let mut failed = false;
        c.flush().await?;
        loop {
            let frame = c.read_frame().await?;
            match frame[0] {
                b'Z' => {
                    c.status = frame.get(5).copied().unwrap_or(b'I');
                    return Ok((out, failed));
                }
                b'1' | b'3' => {}
                b'E' if super::outbox::is_fatal(&frame) => {
                    let e = super::outbox::server_error(&frame);
                    return Err(std::io::Error::other(format!("{} {}", e.code, e.message)));
                }
                b'E' => {
                    failed = true;
                    out.clear();
                    out.extend_from_slice(&frame);
                }
                b't' => {
                    if let Some(types) = super::outbox::parameter_types(&frame) {
                        let _ = p.described_types.set(types);
                    }
                    out.extend_from_slice(&frame);
                }
                b'S' | b'N' | b'A' => {}
                _ => out.extend_from_slice(&frame),
            }
        }
    }

    pub(super) async fn execute(&mut self, raw: Bytes, portal: String, max_rows: usize) -> Result<(), SqlError> {
        let Some(mut p) = self.portals.remove(&portal) else { return self.fail(no_portal(&portal), true) };
        if p.kind.runs_here() && !self.caught_up().await? {
            self.portals.insert(portal, p);
            return Ok(());
        }
        match &mut p.kind {
            PortalKind::Local => {
                let statement = p.statement.clone();
                self.portals.insert(portal, p);
                let Some(stmt) = statement.facts.single() else { return Ok(()) };
                match self.local(stmt, false) {
                    Ok((frames, undo)) => {
                        self.emit(frames, undo);
                        Ok(())
                    }
                    Err(e) => self.fail(e, true),
                }
            }
            PortalKind::EndBlock(commit) => {
                let commit = *commit;
                self.end_block(commit).await
            }
            PortalKind::On(shard) => {
                let shard = *shard;
                // A portal executed again (a fetch of more rows) is timed from now.
                let stages = p.stages.take().unwrap_or_else(|| Stages::new(Instant::now()));
                let facts = p.statement.facts.clone();
                self.portals.insert(portal.clone(), p);
                let Some(held) = self.conns.get_mut(shard) else { return self.fail(no_portal(&portal), true) };
                held.conn.conn.wbuf.extend_from_slice(&raw);
                held.unsynced = true;
                held.unflushed = true;
                held.wrote |= !facts.is_read_only();
                let flight = InFlight::new(stages, facts, held.conn.node.clone(), self.info.clone());
                self.outbox.push(Entry::backend(shard, Reply::Execute(flight)), &mut self.events);
                self.apply_events();
                Ok(())
            }
            PortalKind::Savepoint => {
                let Some(stmt) = p.statement.facts.single().cloned() else { return Ok(()) };
                match self.across_savepoint(&stmt).await {
                    Ok(()) => Ok(()),
                    Err(e) => self.fail(e, true),
                }
            }
            PortalKind::Declare(declare) => {
                let (spread, bound) = (declare.0.clone(), declare.1.clone());
                let statement = p.statement.clone();
                self.portals.insert(portal, p);
                let Some(declared) = statement.facts.single().and_then(|s| s.shape.cursor.as_ref()) else {
                    return Ok(());
                };
                let query = crate::classify::shape::cursor_query(&statement.text.sql).unwrap_or_default();
                self.declare(&declared.name, query, spread, bound, true).await
            }
            PortalKind::Cursor(used) => {
                let used = used.clone();
                self.portals.insert(portal, p);
                self.cursor_op(&used, false, true).await
            }
            PortalKind::CopySplit(split) => {
                // Run once: the portal is used up, as Postgres's is.
                let (sql, facts, split) = (p.statement.text.sql.clone(), p.statement.facts.clone(), split.clone());
                self.copy_split(&sql, &facts, split, true).await
            }
            PortalKind::Scatter(sp) => {
                match self.scatter_run(sp, max_rows, false).await? {
                    Ran::Suspended | Ran::Complete => {
                        self.portals.insert(portal, p);
                    }
                    Ran::Failed => self.mode = Mode::SkipToSync,
                }
                Ok(())
            }
        }
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
        } else if let Some(portal) = self.portals.remove(&name) {
            if let PortalKind::On(shard) = portal.kind
                && self.send_to(shard, &raw, Reply::Close)
            {
                return Ok(());
            }
            self.drop_portal(portal).await?;
        }
        let mut out = BytesMut::new();
        reply::close_complete(&mut out);
        self.emit(out, undo);
        Ok(())
    }

    /// Sync: the batch ends on every server that has part of it, and the
    /// client gets its ReadyForQuery after their replies.
    pub(super) async fn sync(&mut self) -> Result<(), SqlError> {
        if matches!(&self.txn, Txn::Block(b) if b.implicit) {
            // The batch ends: its transaction across shards commits (or
            // rolls back after an error), and the client sees no block.
            self.finish_block(true, false).await?;
            self.emit_ready();
            return Ok(());
        }
        if matches!(self.txn, Txn::Idle) {
            self.end_portals().await?;
        }
        self.sync_servers();
        self.emit_ready();
        Ok(())
    }

    /// Passes a client message on to `shard`'s held server, whose reply
    /// the client gets in turn; `false` when no server of `shard` is held.
    fn send_to(&mut self, shard: ShardId, raw: &[u8], reply: Reply) -> bool {
        let Some(held) = self.conns.get_mut(shard) else { return false };
        held.conn.conn.wbuf.extend_from_slice(raw);
        held.unsynced = true;
        held.unflushed = true;
        self.outbox.push(Entry::backend(shard, reply), &mut self.events);
        self.apply_events();
        true
    }

    /// Portals end with the implicit transaction.
    pub(super) async fn end_portals(&mut self) -> Result<(), SqlError> {
        self.end_cursors().await?;
        // What is not ended yet stays if one fails.
        while let Some(p) = self.portals.pop() {
            self.drop_portal(p).await?;
        }
        Ok(())
    }

    /// A portal that goes away: a statement across shards still running
    /// is read to its end (its connections are the transaction's).
    pub(super) async fn drop_portal(&mut self, portal: Portal) -> Result<(), SqlError> {
        if let PortalKind::Scatter(mut sp) = portal.kind {
            self.scatter_end(&mut sp).await?;
        }
        Ok(())
    }
}

/// The Bind's parameters, moved out of it.
pub(super) fn bind_params(p: &Prepared, bind: &mut Bind) -> Arc<Params> {
    Arc::new(Params {
        values: std::mem::take(&mut bind.parameters),
        formats: std::mem::take(&mut bind.parameter_format_codes),
        types: p.param_types(),
    })
}

pub(super) fn no_portal(name: &str) -> SqlError {
    SqlError::new(code::INVALID_CURSOR_NAME, format!("portal \"{name}\" does not exist"))
}

pub(super) fn describe_local(out: &mut BytesMut, stmt: &Statement) {
    match &stmt.kind {
        Kind::ShardcarShow(name) => reply::text_column(out, &format!("shardcar.{name}")),
        _ => reply::no_data(out),
    }
}
