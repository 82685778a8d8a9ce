//! One client session under transaction pooling.
//!
//! Client messages are read into an inbox and processed in order. A message
//! that needs a server attaches a pooled connection — routed by the whole
//! batch it belongs to (up to Sync) — which stays attached while a
//! transaction or batch is open and goes back to the pool at the first idle
//! ReadyForQuery. What must survive a change of connection lives here and is
//! replayed: settings, prepared statements, a BEGIN not yet sent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::extendedquery::{Bind, Close, Describe, Parse};
use tokio::sync::watch;

use super::wire::{ClientConn, ClientMsg, Frame, reply};
use crate::cancel::{self, BackendKey, Registration};
use crate::classify::params::Params;
use crate::classify::{Facts, Kind, Statement};
use crate::execute::{Attached, Effect, Entry, Event, Prepared, Reply};
use crate::plan::plan;
use crate::policy::Request;
use crate::policy::facts::SessionInfo;
use crate::pool::Checkout;
use crate::server::Shared;
use crate::settings::Settings;
use crate::sqlerror::{SqlError, code};

/// Client bytes read ahead of processing (pipelined messages, COPY data).
const INBOX_LIMIT: usize = 256 * 1024;
/// Backend output is flushed once this much is queued (COPY streams).
const BACKEND_FLUSH_AT: usize = 64 * 1024;
/// A portal name no client can create: describing it makes the backend fail
/// the current transaction, the way an error from shardcar should.
const IMPOSSIBLE_PORTAL: &str = "shardcar\u{1}abort";

/// A portal bound in the current transaction.
struct Portal {
    statement: Arc<Prepared>,
    local: bool,
}

/// Transaction statements the client sent before any statement needed a
/// server: answered here, sent ahead of the first routed statement.
#[derive(Default)]
struct Deferred {
    /// `BEGIN ...`, `SET TRANSACTION ...`, `SAVEPOINT ...`, in order.
    statements: Vec<String>,
    /// Savepoint names among them, in order.
    savepoints: Vec<String>,
    /// Shardcar refused a statement inside the deferred transaction: it is
    /// failed until ROLLBACK, as Postgres would have it.
    failed: bool,
}

/// Client and connection settings before a transaction changed them.
struct SettingsSnapshot {
    client: Settings,
    conn: Settings,
    /// The transaction is an explicit block (it ends with COMMIT or ROLLBACK);
    /// otherwise it is implicit and any error rolls it back.
    explicit: bool,
    failed: bool,
}

impl Deferred {
    fn is_open(&self) -> bool {
        !self.statements.is_empty() || self.failed
    }
}

pub struct Session {
    shared: Arc<Shared>,
    client: ClientConn,
    registration: Registration,
    shutdown: watch::Receiver<bool>,
    /// Settings from the startup packet: what RESET returns to.
    startup: Settings,
    settings: Settings,
    /// Who the client is and its `shardcar.*` variables, as plugins see them.
    info: Arc<SessionInfo>,
    statements: HashMap<String, Arc<Prepared>>,
    unnamed: Option<Arc<Prepared>>,
    portals: HashMap<String, Portal>,
    inbox: VecDeque<ClientMsg>,
    inbox_bytes: usize,
    client_eof: bool,
    attached: Option<Attached>,
    events: Vec<Event>,
    deferred: Deferred,
    /// Shardcar raised an error in the extended protocol with no server
    /// attached: messages are dropped until Sync, as Postgres does.
    skipping: bool,
    copy_in: bool,
    /// Settings before the first SET of the current transaction (explicit,
    /// or the implicit one of a query or batch), restored if it rolls back.
    txn_snapshot: Option<SettingsSnapshot>,
    /// A BEGIN completed in the current simple query (status not yet reported).
    block_opened: bool,
    last_tag: String,
    done: bool,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        client: ClientConn,
        registration: Registration,
        startup: Settings,
        info: SessionInfo,
    ) -> Session {
        let shutdown = shared.shutdown.clone();
        Session {
            shared,
            client,
            registration,
            shutdown,
            settings: startup.clone(),
            startup,
            info: Arc::new(info),
            statements: HashMap::new(),
            unnamed: None,
            portals: HashMap::new(),
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            client_eof: false,
            attached: None,
            events: Vec::new(),
            deferred: Deferred::default(),
            skipping: false,
            copy_in: false,
            txn_snapshot: None,
            block_opened: false,
            last_tag: String::new(),
            done: false,
        }
    }

    /// Serves the client until it leaves; a FATAL error is written before returning.
    pub async fn run(mut self) {
        if let Err(e) = self.serve().await {
            tracing::debug!(client = self.registration.pid, "session ended: {e}");
            // The client may be gone already; then there is no one to tell.
            reply::error(&mut self.client.out, &e);
            let _ = self.client.flush().await;
        }
        self.finish();
    }

    async fn serve(&mut self) -> Result<(), SqlError> {
        let mut shutting_down = *self.shutdown.borrow();
        loop {
            self.process().await?;
            self.flush().await?;
            if self.done || (self.client_eof && self.inbox.is_empty() && self.attached.is_none()) {
                return Ok(());
            }
            if shutting_down && self.attached.is_none() && !self.deferred.is_open() {
                return Err(SqlError::fatal(
                    code::ADMIN_SHUTDOWN,
                    "terminating connection because shardcar is shutting down",
                ));
            }
            let want_client = !self.client_eof && self.inbox_bytes < INBOX_LIMIT;
            let want_backend = self.attached.as_ref().is_some_and(|a| a.outbox.awaits_backend());
            if !want_client && !want_backend {
                // The client is gone and nothing is owed: stop.
                return Ok(());
            }
            let backend = self.attached.as_mut().map(|a| &mut a.conn);
            tokio::select! {
                frame = self.client.read_frame(), if want_client => match frame? {
                    Some(frame) => self.receive(frame)?,
                    None => self.client_eof = true,
                },
                frame = async { backend.expect("guarded by want_backend").read_frame().await }, if want_backend => {
                    match frame {
                        Ok(frame) => self.on_backend_frames(frame)?,
                        Err(e) => self.backend_lost(&e.to_string())?,
                    }
                }
                _ = self.shutdown.changed(), if !shutting_down => shutting_down = true,
            }
        }
    }

    /// Queues a client message, and every further one already read, so that
    /// routing sees the whole batch the client wrote.
    fn receive(&mut self, frame: Frame) -> Result<(), SqlError> {
        let mut next = Some(frame);
        while let Some(frame) = next {
            let msg = ClientMsg::decode(frame)?;
            tracing::trace!(client = self.registration.pid, "<- {}", message_name(&msg));
            self.inbox_bytes += msg.size();
            self.inbox.push_back(msg);
            next = if self.inbox_bytes < INBOX_LIMIT { self.client.buffered_frame()? } else { None };
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SqlError> {
        if let Some(a) = &mut self.attached
            && let Err(e) = a.conn.flush().await
        {
            self.backend_lost(&e.to_string())?;
        }
        self.client.flush().await
    }

    /// Relays a backend frame and every further one already buffered, then
    /// acts on what happened.
    fn on_backend_frames(&mut self, first: BytesMut) -> Result<(), SqlError> {
        let Some(a) = self.attached.as_mut() else { return Ok(()) };
        let mut frame = Some(first);
        while let Some(f) = frame {
            tracing::trace!(client = self.registration.pid, "{} -> '{}'", a.node.label, f[0] as char);
            if let Err(desync) = a.outbox.on_frame(&f, &mut self.client.out, &mut self.events) {
                tracing::error!(client = self.registration.pid, "{}: {desync}", a.node.label);
                a.conn.broken = true;
                return Err(SqlError::fatal(
                    code::PROTOCOL_VIOLATION,
                    format!("shardcar lost track of the protocol with {}: {desync}", a.node.label),
                ));
            }
            if !a.outbox.awaits_backend() {
                break;
            }
            frame = a
                .conn
                .buffered_frame()
                .map_err(|e| SqlError::fatal(code::CONNECTION_FAILURE, format!("lost {}: {e}", a.node.label)))?;
        }
        if let Some(a) = self.attached.as_mut() {
            a.outbox.release_synthetic(&mut self.client.out, &mut self.events);
        }
        self.apply_events();
        self.release_if_idle();
        Ok(())
    }

    fn apply_events(&mut self) {
        for event in std::mem::take(&mut self.events) {
            match event {
                Event::Succeeded(effect) | Event::Undone(effect) => self.apply(effect),
                Event::StatementDone { facts, index, tag } => {
                    if let Some(stmt) = facts.statements.get(index) {
                        self.statement_done(stmt);
                    }
                    self.last_tag = tag;
                }
                Event::Ready { status, hidden } => self.ready(status, hidden),
                Event::CopyIn { ignored_syncs } => {
                    self.copy_in = true;
                    if let Some(a) = self.attached.as_mut() {
                        a.pending_ready -= ignored_syncs;
                    }
                }
                Event::Error { fatal } => {
                    // An error ends COPY IN on the server; what the client
                    // still sends is dropped, as Postgres does.
                    self.copy_in = false;
                    if let Some(s) = self.txn_snapshot.as_mut() {
                        s.failed = true;
                    }
                    if fatal && let Some(a) = self.attached.as_mut() {
                        a.conn.broken = true;
                    }
                }
            }
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Validated(p) => p.validated.store(true, Ordering::Relaxed),
            Effect::ForgetUnvalidated(p) if !p.is_validated() => {
                let current = if p.client_name.is_empty() {
                    &self.unnamed
                } else {
                    &self.statements.get(&p.client_name).cloned()
                };
                if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &p)) {
                    self.apply(Effect::ForgetStatement(p.client_name.clone()));
                }
            }
            Effect::ForgetUnvalidated(_) => {}
            Effect::Unprepare(name) => {
                if let Some(a) = self.attached.as_mut() {
                    a.conn.prepared.remove(&name);
                }
            }
            Effect::UnnamedLost => {
                if let Some(a) = self.attached.as_mut() {
                    a.conn.unnamed = None;
                }
            }
            Effect::ForgetStatement(name) if name.is_empty() => self.unnamed = None,
            Effect::ForgetStatement(name) => {
                self.statements.remove(&name);
            }
            Effect::RestoreStatement(name, p) if name.is_empty() => self.unnamed = Some(p),
            Effect::RestoreStatement(name, p) => {
                self.statements.insert(name, p);
            }
            Effect::RestoreSession(info) => self.info = info,
        }
    }

    /// Session bookkeeping for a statement the server completed.
    fn statement_done(&mut self, stmt: &Statement) {
        match &stmt.kind {
            Kind::Begin => self.block_opened = true,
            Kind::Session(change) => {
                let Some(a) = self.attached.as_mut() else { return };
                if self.txn_snapshot.is_none() {
                    self.txn_snapshot = Some(SettingsSnapshot {
                        client: self.settings.clone(),
                        conn: a.conn.settings.clone(),
                        explicit: a.conn.status != b'I' || self.block_opened,
                        failed: false,
                    });
                }
                self.settings.apply(change, &self.startup);
                let conn_startup = a.conn.startup_settings.clone();
                a.conn.settings.apply(change, &conn_startup);
            }
            _ => {}
        }
    }

    fn ready(&mut self, status: u8, hidden: bool) {
        self.block_opened = false;
        let Some(a) = self.attached.as_mut() else { return };
        a.conn.status = status;
        a.outbox.survive_fatal = status == b'I';
        if !hidden {
            a.pending_ready = a.pending_ready.saturating_sub(1);
        }
        if status != b'I' {
            if let Some(s) = self.txn_snapshot.as_mut() {
                s.explicit = true;
            }
            return;
        }
        self.portals.clear();
        if let Some(s) = self.txn_snapshot.take() {
            let committed = if s.explicit { self.last_tag == "COMMIT" } else { !s.failed };
            if !committed {
                // Postgres undoes the SETs of a transaction that rolls back.
                self.settings = s.client;
                a.conn.settings = s.conn;
            }
        }
    }

    fn release_if_idle(&mut self) {
        if self.copy_in || !self.attached.as_ref().is_some_and(Attached::is_idle) {
            return;
        }
        if let Some(a) = self.attached.take() {
            self.set_cancel_key(None);
            if a.conn.broken {
                drop(deadpool::managed::Object::take(a.conn));
            }
        }
    }

    fn set_cancel_key(&self, key: Option<BackendKey>) {
        if let Ok(mut slot) = self.registration.slot.lock() {
            *slot = key;
        }
    }

    /// The transaction status the client should see.
    fn status(&self) -> u8 {
        match &self.attached {
            Some(a) if a.conn.status != b'I' => a.conn.status,
            _ if self.deferred.failed => b'E',
            _ if self.deferred.is_open() => b'T',
            _ => b'I',
        }
    }

    /// The server connection failed under this session.
    fn backend_lost(&mut self, why: &str) -> Result<(), SqlError> {
        let Some(mut a) = self.attached.take() else { return Ok(()) };
        self.set_cancel_key(None);
        a.outbox.abandon(&mut self.events);
        self.apply_events();
        let in_txn = a.conn.status != b'I' || self.copy_in;
        let label = a.node.label.clone();
        tracing::warn!(client = self.registration.pid, "lost the connection to {label}: {why}");
        drop(deadpool::managed::Object::take(a.conn));
        if in_txn {
            return Err(SqlError::fatal(
                code::CONNECTION_FAILURE,
                format!("lost the connection to {label} inside a transaction ({why}); the transaction was rolled back"),
            ));
        }
        if !a.outbox.fatal_told {
            let err = SqlError::new(
                code::CONNECTION_FAILURE,
                format!("lost the connection to {label} ({why}); the statement may not have run"),
            )
            .hint("retry; shardcar opens a new connection");
            reply::error(&mut self.client.out, &err);
        }
        if a.pending_ready > 0 {
            reply::ready(&mut self.client.out, b'I');
        } else if a.unsynced {
            self.skipping = true;
        }
        Ok(())
    }

    /// Returns the attached connection to a clean state, or drops it, when
    /// the client goes away.
    fn finish(&mut self) {
        let Some(a) = self.attached.take() else { return };
        self.set_cancel_key(None);
        let busy = a.outbox.awaits_backend() || self.copy_in;
        let mut conn = a.conn;
        if busy || a.unsynced {
            // Mid-statement or mid-batch: stop what still runs and close the
            // connection, so the server rolls back; a Sync here could commit.
            let key = BackendKey { addr: conn.addr.clone(), pid: conn.pid, secret: conn.secret };
            conn.broken = true;
            drop(deadpool::managed::Object::take(conn));
            if busy {
                tokio::spawn(async move { cancel::send(&key).await });
            }
            return;
        }
        if conn.status != b'I' {
            // Idle in a transaction: roll it back, then the connection is clean.
            tokio::spawn(async move {
                let rollback =
                    tokio::time::timeout(std::time::Duration::from_secs(5), conn.run_hidden("ROLLBACK")).await;
                if !matches!(rollback, Ok(Ok(Ok(())))) || conn.status != b'I' {
                    drop(deadpool::managed::Object::take(conn));
                }
            });
        }
    }

    // ---- processing client messages ----------------------------------

    async fn process(&mut self) -> Result<(), SqlError> {
        while !self.done {
            if !self.copy_in && self.attached.as_ref().is_some_and(|a| a.pending_ready > 0) {
                // The next message may route elsewhere: wait for the server to finish this batch.
                return Ok(());
            }
            if self.copy_in && self.attached.as_ref().is_some_and(|a| a.conn.wbuf.len() >= BACKEND_FLUSH_AT) {
                return Ok(());
            }
            let Some(msg) = self.inbox.pop_front() else { return Ok(()) };
            self.inbox_bytes -= msg.size();
            self.handle(msg).await?;
            if self.attached.as_ref().is_some_and(|a| a.conn.broken) {
                self.release_if_idle();
            }
        }
        Ok(())
    }

    async fn handle(&mut self, msg: ClientMsg) -> Result<(), SqlError> {
        if self.copy_in {
            return self.copy_message(msg);
        }
        let backend_skipping = self.attached.as_ref().is_some_and(|a| a.outbox.skipping());
        if self.skipping || backend_skipping {
            match msg {
                ClientMsg::Sync { .. } => self.skipping = false,
                ClientMsg::Terminate => {
                    self.done = true;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        match msg {
            ClientMsg::Query { raw, sql } => self.query(raw, sql).await,
            ClientMsg::Parse { raw, msg } => self.parse(raw, msg).await,
            ClientMsg::Bind { raw, msg } => self.bind(raw, msg).await,
            ClientMsg::Describe { raw, msg } => self.describe(raw, msg).await,
            ClientMsg::Execute { raw, portal } => self.execute(raw, portal).await,
            ClientMsg::Close { raw, msg } => self.close(raw, msg).await,
            ClientMsg::Sync { raw } => {
                match self.attached.as_mut() {
                    Some(a) => {
                        a.conn.wbuf.extend_from_slice(&raw);
                        a.outbox.push(Entry::backend(Reply::Sync), &mut self.events);
                        a.pending_ready += 1;
                        a.unsynced = false;
                    }
                    None => {
                        let status = self.status();
                        reply::ready(&mut self.client.out, status);
                    }
                }
                self.apply_events();
                Ok(())
            }
            ClientMsg::Flush { raw } => {
                if let Some(a) = self.attached.as_mut() {
                    a.conn.wbuf.extend_from_slice(&raw);
                }
                Ok(())
            }
            // Outside COPY, Postgres ignores these too.
            ClientMsg::CopyData { .. } | ClientMsg::CopyDone { .. } | ClientMsg::CopyFail { .. } => Ok(()),
            ClientMsg::Terminate => {
                self.done = true;
                Ok(())
            }
        }
    }

    fn copy_message(&mut self, msg: ClientMsg) -> Result<(), SqlError> {
        let Some(a) = self.attached.as_mut() else {
            self.copy_in = false;
            return Ok(());
        };
        match msg {
            ClientMsg::CopyData { raw } => a.conn.wbuf.extend_from_slice(&raw),
            ClientMsg::CopyDone { raw } | ClientMsg::CopyFail { raw, .. } => {
                a.conn.wbuf.extend_from_slice(&raw);
                self.copy_in = false;
            }
            // The server ignores these during COPY IN.
            ClientMsg::Flush { .. } | ClientMsg::Sync { .. } => {}
            other => {
                let mut fail = BytesMut::new();
                let _ = postgres_protocol::message::frontend::copy_fail("client sent a non-COPY message", &mut fail);
                a.conn.wbuf.extend_from_slice(&fail);
                self.copy_in = false;
                return Err(SqlError::fatal(
                    code::PROTOCOL_VIOLATION,
                    format!("unexpected message during COPY FROM STDIN: {}", message_name(&other)),
                ));
            }
        }
        Ok(())
    }

    /// Reports an error shardcar raised for the current message.
    fn fail(&mut self, err: SqlError, extended: bool) -> Result<(), SqlError> {
        if err.fatal {
            return Err(err);
        }
        match self.attached.as_mut() {
            Some(a) => {
                // Fail the server's transaction (or batch) exactly where the
                // client's message failed, so COMMIT cannot keep what came before.
                let mut describe = BytesMut::new();
                encode(&mut describe, Describe::new(b'P', Some(IMPOSSIBLE_PORTAL.into())));
                a.conn.wbuf.extend_from_slice(&describe);
                a.outbox.push(Entry::abort(err), &mut self.events);
                a.unsynced = true;
                if !extended {
                    postgres_protocol::message::frontend::sync(&mut a.conn.wbuf);
                    a.outbox.push(Entry::backend(Reply::Sync), &mut self.events);
                    a.pending_ready += 1;
                    a.unsynced = false;
                }
                self.apply_events();
            }
            None => {
                reply::error(&mut self.client.out, &err);
                if self.deferred.is_open() {
                    self.deferred.failed = true;
                }
                if extended {
                    self.skipping = true;
                } else {
                    let status = self.status();
                    reply::ready(&mut self.client.out, status);
                }
            }
        }
        Ok(())
    }

    /// Queues replies shardcar makes itself, behind whatever the server owes.
    fn emit(&mut self, frames: BytesMut, undo: Vec<Effect>) {
        match self.attached.as_mut() {
            Some(a) => {
                a.outbox.push(Entry::synthetic(frames).undo(undo), &mut self.events);
                a.outbox.release_synthetic(&mut self.client.out, &mut self.events);
                self.apply_events();
            }
            None => self.client.out.extend_from_slice(&frames),
        }
    }

    async fn query(&mut self, raw: Bytes, sql: String) -> Result<(), SqlError> {
        let facts = self.shared.facts.get(&sql);
        // A simple query destroys the unnamed statement.
        self.unnamed = None;
        if facts.statements.is_empty() && facts.parse_error.is_none() {
            let mut out = BytesMut::new();
            reply::empty_query(&mut out);
            self.emit(out, vec![]);
            return self.simple_ready();
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
            return self.fail(err, false);
        }
        if self.deferred.failed {
            return self.fail(aborted(), false);
        }
        let mut req = Request::default();
        req.add(&facts, None);
        if let Err(e) = self.attach_for(&req).await {
            return self.fail(e, false);
        }
        let Some(a) = self.attached.as_mut() else { return Ok(()) };
        a.conn.wbuf.extend_from_slice(&raw);
        a.conn.unnamed = None;
        a.outbox.push(Entry::backend(Reply::Query { facts, done: 0 }), &mut self.events);
        a.pending_ready += 1;
        self.apply_events();
        Ok(())
    }

    /// ReadyForQuery after a simple query answered here.
    fn simple_ready(&mut self) -> Result<(), SqlError> {
        let mut z = BytesMut::new();
        reply::ready(&mut z, self.status());
        self.emit(z, vec![]);
        Ok(())
    }

    async fn parse(&mut self, raw: Bytes, msg: Parse) -> Result<(), SqlError> {
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
        let facts = self.shared.facts.get(&msg.query);
        let local = facts.single().is_some_and(|s| local_capable(&s.kind));
        // A batch that only prepares (libpq's PQprepare: Parse, Sync) is
        // answered without a server when the grammar accepts the text: a
        // client may block on it while holding other work, and needs no
        // connection until it runs the statement.
        let lazy = !local && self.attached.is_none() && facts.parse_error.is_none() && self.batch_only_prepares();
        if !local && !lazy && !self.attach_batch(&facts, None, Some(&name)).await? {
            return Ok(());
        }
        let prepared = Arc::new(Prepared::new(&name, &msg, &raw, facts));
        let mut undo = vec![Effect::ForgetStatement(name.clone())];
        if name.is_empty() {
            if let Some(old) = self.unnamed.replace(prepared.clone()) {
                undo = vec![Effect::RestoreStatement(String::new(), old)];
            }
        } else {
            self.statements.insert(name, prepared.clone());
        }
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
    fn send_parse(&mut self, p: &Arc<Prepared>, mut undo: Vec<Effect>, hidden: bool) {
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
    fn ensure_prepared(&mut self, p: &Arc<Prepared>) {
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

    fn resolve(&self, name: &str) -> Result<Arc<Prepared>, SqlError> {
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

    async fn bind(&mut self, raw: Bytes, msg: Bind) -> Result<(), SqlError> {
        let stmt_name = msg.statement_name.clone().unwrap_or_default();
        let portal = msg.portal_name.clone().unwrap_or_default();
        let p = match self.resolve(&stmt_name) {
            Ok(p) => p,
            Err(e) => return self.fail(e, true),
        };
        let local = p.facts.single().is_some_and(|s| self.runs_locally(&s.kind));
        if local {
            self.portals.insert(portal, Portal { statement: p, local: true });
            let mut out = BytesMut::new();
            reply::bind_complete(&mut out);
            self.emit(out, vec![]);
            return Ok(());
        }
        if !self.attach_batch(&p.facts, Some(bind_params(&p, &msg)), None).await? {
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
        self.portals.insert(portal, Portal { statement: p, local: false });
        self.apply_events();
        Ok(())
    }

    async fn describe(&mut self, raw: Bytes, msg: Describe) -> Result<(), SqlError> {
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
            if !self.attach_batch(&p.facts, None, None).await? {
                return Ok(());
            }
            self.ensure_prepared(&p);
            let Some(a) = self.attached.as_mut() else { return Ok(()) };
            let mut buf = BytesMut::new();
            encode(&mut buf, Describe::new(b'S', Some(p.backend_name.clone())));
            a.conn.wbuf.extend_from_slice(&buf);
            a.outbox.push(Entry::backend(Reply::DescribeStatement(Some(p.clone()))), &mut self.events);
            a.unsynced = true;
        } else {
            match self.portals.get(&name) {
                Some(Portal { statement, local: true }) => {
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

    async fn execute(&mut self, raw: Bytes, portal: String) -> Result<(), SqlError> {
        let (statement, local) = match self.portals.get(&portal) {
            Some(p) => (p.statement.clone(), p.local),
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
        let facts = Some(statement.facts.clone());
        a.outbox.push(Entry::backend(Reply::Execute(facts)), &mut self.events);
        a.unsynced = true;
        self.apply_events();
        Ok(())
    }

    async fn close(&mut self, raw: Bytes, msg: Close) -> Result<(), SqlError> {
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

    // ---- routing and attaching ----------------------------------------

    /// Attaches a connection for the extended-protocol batch whose current
    /// message carries `facts` and `params` (and prepares `parse_name`, if a
    /// Parse), routed by every statement of the batch received so far; or
    /// checks that an attached connection's shard fits the statement. False
    /// when that failed and the client was told.
    async fn attach_batch(
        &mut self,
        facts: &Arc<Facts>,
        params: Option<Arc<Params>>,
        parse_name: Option<&str>,
    ) -> Result<bool, SqlError> {
        let req = if self.attached.is_some() {
            let mut req = Request::default();
            match params {
                Some(params) => req.add(facts, Some(params)),
                None => req.add_unexecuted(facts),
            }
            req
        } else {
            self.batch_request(facts, params, parse_name)
        };
        match self.attach_for(&req).await {
            Ok(()) => Ok(true),
            Err(e) => {
                self.fail(e, true)?;
                Ok(false)
            }
        }
    }

    /// The routing request of the batch whose current message carries
    /// `current` (with `params` when it is a Bind) and which continues in the
    /// inbox up to Sync. Clients write a batch at once, so the inbox holds it;
    /// shardcar does not wait for a Sync, because a client may wait for a
    /// reply first (COPY FROM STDIN).
    fn batch_request(&self, current: &Arc<Facts>, params: Option<Arc<Params>>, parse_name: Option<&str>) -> Request {
        let mut req = Request::default();
        let mut parsed: HashMap<String, Arc<Prepared>> = HashMap::new();
        let add = |req: &mut Request, facts: &Arc<Facts>, params: Option<Arc<Params>>| {
            if !facts.single().is_some_and(|s| local_capable(&s.kind)) {
                req.add(facts, params);
            }
        };
        match params {
            Some(params) => add(&mut req, current, Some(params)),
            None => req.add_unexecuted(current),
        }
        for msg in &self.inbox {
            match msg {
                ClientMsg::Parse { raw, msg } => {
                    let name = msg.name.clone().unwrap_or_default();
                    let p = Arc::new(Prepared::new(&name, msg, raw, self.shared.facts.get(&msg.query)));
                    parsed.insert(name, p);
                }
                ClientMsg::Bind { msg, .. } => {
                    let name = msg.statement_name.clone().unwrap_or_default();
                    let known = parsed.get(&name).cloned().or_else(|| self.resolve(&name).ok());
                    if let Some(p) = known.filter(|_| Some(name.as_str()) != parse_name) {
                        add(&mut req, &p.facts, Some(bind_params(&p, msg)));
                    }
                }
                ClientMsg::Sync { .. } | ClientMsg::Flush { .. } | ClientMsg::Query { .. } => break,
                _ => {}
            }
        }
        req
    }

    /// True when the rest of the current batch holds only more Parse messages.
    fn batch_only_prepares(&self) -> bool {
        for msg in &self.inbox {
            match msg {
                ClientMsg::Parse { .. } => {}
                ClientMsg::Sync { .. } | ClientMsg::Flush { .. } => return true,
                _ => return false,
            }
        }
        true
    }

    /// Refuses a statement that belongs to a shard other than the one this
    /// session's transaction (or batch) is on.
    async fn check_pinned(&self, req: &Request) -> Result<(), SqlError> {
        let Some(a) = &self.attached else { return Ok(()) };
        let decision = self.shared.router.decide(req, &self.info, true).await?;
        match decision.shard {
            Some(shard) if shard != a.node.shard => Err(SqlError::new(
                code::FEATURE_NOT_SUPPORTED,
                format!(
                    "this transaction runs on shard {} and the statement belongs to shard {}",
                    self.shared.router.shard_name(a.node.shard),
                    self.shared.router.shard_name(shard)
                ),
            )
            .hint("a transaction stays on one shard; commit first, then run it on its own")),
            _ => Ok(()),
        }
    }

    /// Routes `req`, checks out a connection, and brings it to this
    /// session's state (settings, deferred BEGIN).
    async fn attach_for(&mut self, req: &Request) -> Result<(), SqlError> {
        if self.attached.is_some() {
            return self.check_pinned(req).await;
        }
        let in_transaction = self.deferred.is_open();
        let decision = self.shared.router.decide(req, &self.info, in_transaction).await?;
        let default_shard = self.shared.router.default_shard();
        let target = plan(&decision, default_shard, in_transaction, self.shared.config.routing.read_replicas);
        let Checkout { mut conn, node } = self.shared.pools.checkout(target.shard, target.role).await?;
        if let Some(sql) = self.settings.diff_sql(&conn.settings) {
            // Run to completion before the client's statement: it must not
            // run with another client's settings if this fails.
            match conn.run_hidden(&sql).await {
                Ok(Ok(())) => conn.settings = self.settings.clone(),
                Ok(Err(e)) => {
                    conn.broken = true;
                    return Err(settings_error(&node.label, e));
                }
                Err(e) => {
                    conn.broken = true;
                    return Err(SqlError::new(code::CONNECTION_FAILURE, format!("lost {}: {e}", node.label)));
                }
            }
        }
        self.set_cancel_key(Some(BackendKey { addr: conn.addr.clone(), pid: conn.pid, secret: conn.secret }));
        let mut a = Attached::new(conn, node);
        a.outbox.survive_fatal = !in_transaction;
        if self.deferred.is_open() {
            let begin = std::mem::take(&mut self.deferred).statements.join("; ");
            postgres_protocol::message::frontend::query(&begin, &mut a.conn.wbuf)
                .map_err(|e| SqlError::new(code::INTERNAL_ERROR, e.to_string()))?;
            a.conn.unnamed = None;
            let facts = self.shared.facts.get(&begin);
            a.outbox.push(Entry::hidden(Reply::Query { facts, done: 0 }), &mut self.events);
        }
        self.attached = Some(a);
        Ok(())
    }

    // ---- statements answered by shardcar ------------------------------

    /// True when shardcar answers this statement itself in the current state.
    fn runs_locally(&self, kind: &Kind) -> bool {
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
            | Kind::Rollback => self.attached.is_none(),
            Kind::TransactionOption => self.attached.is_none() && self.deferred.is_open(),
            Kind::Read | Kind::Write | Kind::Session(_) => self.attached.is_none() && self.deferred.failed,
        }
    }

    /// Runs a statement shardcar answers itself; returns its replies and
    /// what to undo if a later error means it never happened.
    fn local(&mut self, stmt: &Statement, with_row_description: bool) -> Result<(BytesMut, Vec<Effect>), SqlError> {
        let mut out = BytesMut::new();
        let mut undo = Vec::new();
        let in_failed = self.deferred.failed;
        let tag: String = match &stmt.kind {
            Kind::ShardcarSet { name, value } => {
                if name == "shard"
                    && let Some(v) = value
                {
                    self.shared.router.shard_index(v)?;
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
                    ("shard", None) => self.shared.router.shard_name(self.shared.router.default_shard()).to_string(),
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
                undo.extend(self.statements.drain().map(|(n, p)| Effect::RestoreStatement(n, p)));
                "DEALLOCATE ALL".into()
            }
            Kind::DiscardAll => {
                if self.status() != b'I' {
                    return Err(SqlError::new(
                        code::ACTIVE_TRANSACTION,
                        "DISCARD ALL cannot run inside a transaction block",
                    ));
                }
                self.statements.clear();
                self.unnamed = None;
                self.portals.clear();
                self.settings = self.startup.clone();
                Arc::make_mut(&mut self.info).vars.clear();
                "DISCARD ALL".into()
            }
            _ if in_failed && !matches!(stmt.kind, Kind::Commit | Kind::Rollback | Kind::RollbackTo(_)) => {
                return Err(aborted());
            }
            Kind::Begin => {
                if self.deferred.is_open() {
                    reply::notice(
                        &mut out,
                        "WARNING",
                        code::ACTIVE_TRANSACTION,
                        "there is already a transaction in progress",
                    );
                } else {
                    self.deferred.statements.push(stmt.text.clone());
                }
                "BEGIN".into()
            }
            Kind::TransactionOption => {
                self.deferred.statements.push(stmt.text.clone());
                "SET".into()
            }
            Kind::Savepoint(name) => {
                if !self.deferred.is_open() {
                    return Err(no_transaction("SAVEPOINT"));
                }
                self.deferred.statements.push(stmt.text.clone());
                self.deferred.savepoints.push(name.clone());
                "SAVEPOINT".into()
            }
            Kind::Release(name) | Kind::RollbackTo(name) => {
                let release = matches!(stmt.kind, Kind::Release(_));
                if !self.deferred.is_open() {
                    return Err(no_transaction(if release { "RELEASE SAVEPOINT" } else { "ROLLBACK TO SAVEPOINT" }));
                }
                let Some(pos) = self.deferred.savepoints.iter().rposition(|s| s == name) else {
                    self.deferred.failed = true;
                    return Err(SqlError::new(code::INVALID_SAVEPOINT, format!("savepoint \"{name}\" does not exist")));
                };
                // Nothing ran since the savepoint: releasing or rolling back to
                // it only forgets the later ones (and, for RELEASE, itself).
                let keep = if release { pos } else { pos + 1 };
                let dropped = self.deferred.savepoints.len() - keep;
                self.deferred.savepoints.truncate(keep);
                let statements_keep = self.deferred.statements.len() - dropped;
                self.deferred.statements.truncate(statements_keep);
                if !release {
                    self.deferred.failed = false;
                }
                if release { "RELEASE" } else { "ROLLBACK" }.into()
            }
            Kind::Commit | Kind::Rollback => {
                let was_failed = self.deferred.failed;
                if !self.deferred.is_open() {
                    reply::notice(
                        &mut out,
                        "WARNING",
                        code::NO_ACTIVE_TRANSACTION,
                        "there is no transaction in progress",
                    );
                }
                self.deferred = Deferred::default();
                if matches!(stmt.kind, Kind::Commit) && !was_failed { "COMMIT" } else { "ROLLBACK" }.into()
            }
            Kind::Read | Kind::Write | Kind::Session(_) => return Err(aborted()),
        };
        reply::command_complete(&mut out, &tag);
        Ok((out, undo))
    }
}

/// The parameters of a Bind, typed by the statement they bind.
fn bind_params(p: &Prepared, bind: &Bind) -> Arc<Params> {
    Arc::new(Params {
        values: bind.parameters.clone(),
        formats: bind.parameter_format_codes.clone(),
        types: p.param_types(),
    })
}

fn aborted() -> SqlError {
    SqlError::new(
        code::IN_FAILED_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

fn no_transaction(what: &str) -> SqlError {
    SqlError::new(code::NO_ACTIVE_TRANSACTION, format!("{what} can only be used in transaction blocks"))
}

fn no_portal(name: &str) -> SqlError {
    SqlError::new("34000", format!("portal \"{name}\" does not exist"))
}

fn settings_error(label: &str, e: String) -> SqlError {
    SqlError::new(code::CONNECTION_FAILURE, format!("could not apply this session's settings on {label}: {e}"))
        .hint("a SET that worked on one server failed on another; check that shards are configured alike")
}

/// Statements prepared here without a server: they may run locally.
fn local_capable(kind: &Kind) -> bool {
    !matches!(kind, Kind::Read | Kind::Write | Kind::Session(_))
}

/// Statements shardcar must see alone to handle (not inside a multi-statement string).
fn must_stand_alone(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::ShardcarSet { .. }
            | Kind::ShardcarShow(_)
            | Kind::Unsupported { .. }
            | Kind::Deallocate(_)
            | Kind::DiscardAll
    )
}

/// The Describe reply of a statement answered locally.
fn describe_local(out: &mut BytesMut, stmt: &Statement) {
    match &stmt.kind {
        Kind::ShardcarShow(name) => reply::text_column(out, &format!("shardcar.{name}")),
        _ => reply::no_data(out),
    }
}

fn encode<M: Message>(buf: &mut BytesMut, msg: M) {
    if let Err(e) = msg.encode(buf) {
        tracing::error!("cannot encode a message: {e}");
    }
}

fn message_name(msg: &ClientMsg) -> &'static str {
    match msg {
        ClientMsg::Query { .. } => "Query",
        ClientMsg::Parse { .. } => "Parse",
        ClientMsg::Bind { .. } => "Bind",
        ClientMsg::Describe { .. } => "Describe",
        ClientMsg::Close { .. } => "Close",
        ClientMsg::Execute { .. } => "Execute",
        ClientMsg::Sync { .. } => "Sync",
        ClientMsg::Flush { .. } => "Flush",
        ClientMsg::CopyData { .. } => "CopyData",
        ClientMsg::CopyDone { .. } => "CopyDone",
        ClientMsg::CopyFail { .. } => "CopyFail",
        ClientMsg::Terminate => "Terminate",
    }
}
