//! One client session under transaction pooling.
//!
//! This module holds the session's state, its event loop and the replies
//! coming back from servers; `simple` and `extended` take the client's
//! messages, `attach` routes them to a server connection, `local` answers
//! what needs no server.
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

use bytes::BytesMut;
use pgwire::messages::extendedquery::Describe;
use tokio::sync::watch;

mod across;
mod attach;
mod bound_fan_out;
mod copy_split;
mod extended;
mod local;
mod simple;

use crate::cancel::{self, BackendKey, Registration};
use crate::classify::{Facts, Kind, Statement};
use crate::execute::{Attached, Effect, Entry, Event, Prepared, Reply};
use crate::policy::facts::SessionInfo;
use crate::settings::Settings;
use crate::shared::Shared;
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::Stages;
use crate::wire::{ClientConn, ClientMsg, Frame, encode, reply};

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
    /// How its statement got here, for the first Execute to report.
    stages: Option<Stages>,
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
    /// The stages of the statement parsed last, until it is bound.
    parsed: Option<(Arc<Prepared>, Stages)>,
    portals: HashMap<String, Portal>,
    inbox: VecDeque<ClientMsg>,
    inbox_bytes: usize,
    client_eof: bool,
    attached: Option<Attached>,
    /// The other shards' connections of a transaction across shards, idle
    /// in it while `attached` serves the statement at hand.
    others: Vec<Attached>,
    /// The statements that opened the transaction (BEGIN ...), for shards
    /// that join it later.
    txn_begin: Option<String>,
    /// A SAVEPOINT ran in the transaction: it stays on its shard.
    txn_savepoint: bool,
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
    /// The message at hand was routed with its batch (`Attached::routed_ahead`).
    routed_with_batch: bool,
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
            parsed: None,
            portals: HashMap::new(),
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            client_eof: false,
            attached: None,
            others: Vec::new(),
            txn_begin: None,
            txn_savepoint: false,
            events: Vec::new(),
            deferred: Deferred::default(),
            skipping: false,
            copy_in: false,
            txn_snapshot: None,
            block_opened: false,
            routed_with_batch: false,
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
            // Boxed: a statement's future is a few KiB, which an idle
            // session would otherwise carry while it waits for the client.
            Box::pin(self.process()).await?;
            self.flush().await?;
            if self.done || (self.client_eof && self.inbox.is_empty() && self.attached.is_none()) {
                return Ok(());
            }
            if self.copy_in && !self.inbox.is_empty() {
                // process() paused COPY data at the flush threshold; it is
                // flushed now. The client may have sent all of it already and
                // be waiting: go on without waiting for it.
                continue;
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

    /// Puts a message back to be handled again first (see `code::AFTER_SYNC`).
    fn requeue(&mut self, msg: ClientMsg) {
        self.inbox_bytes += msg.size();
        self.inbox.push_front(msg);
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
                Event::Finished(flight) => self.shared.telemetry.finished(flight),
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
            Kind::Savepoint(_) => self.txn_savepoint = true,
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
        self.txn_begin = None;
        self.txn_savepoint = false;
        // The transaction ended on this shard (a ROLLBACK, or an error that
        // ended it): it ends on the others too.
        self.abandon_transaction();
        let Some(a) = self.attached.as_mut() else { return };
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
        if self.others.iter().any(|o| o.conn.status == b'E') {
            return b'E';
        }
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
        let in_txn = a.conn.status != b'I' || self.copy_in || !self.others.is_empty();
        self.abandon_transaction();
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
        self.abandon_transaction();
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
            across::roll_back_in_background(conn);
        }
    }

    // ---- processing client messages ----------------------------------

    async fn process(&mut self) -> Result<(), SqlError> {
        while !self.done {
            // The next message may route elsewhere: wait for the server to
            // finish this batch (ended by the client's Sync or shardcar's own).
            if let Some(a) = self.attached.as_mut() {
                a.resyncing &= !a.outbox.is_empty();
            }
            let batch_owed = |a: &Attached| a.pending_ready > 0 || a.resyncing;
            if !self.copy_in && self.attached.as_ref().is_some_and(batch_owed) {
                return Ok(());
            }
            if self.copy_in && self.attached.as_ref().is_some_and(|a| a.conn.wbuf.len() >= BACKEND_FLUSH_AT) {
                return Ok(());
            }
            let Some(msg) = self.inbox.pop_front() else { return Ok(()) };
            self.inbox_bytes -= msg.size();
            self.routed_with_batch = self.attached.as_mut().is_some_and(|a| {
                let covered = a.routed_ahead > 0;
                a.routed_ahead = a.routed_ahead.saturating_sub(1);
                covered
            });
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

    /// Reports an error shardcar raised for a statement it did not send,
    /// with what the statement went through.
    fn refuse(&mut self, err: SqlError, extended: bool, stages: Stages, facts: &Arc<Facts>) -> Result<(), SqlError> {
        self.shared.telemetry.refused(stages, facts.clone(), self.info.clone(), &err);
        self.fail(err, extended)
    }

    /// Reports an error shardcar raised for the current message.
    fn fail(&mut self, err: SqlError, extended: bool) -> Result<(), SqlError> {
        self.shared.telemetry.metrics.rejected(err.code);
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
}

pub(super) fn message_name(msg: &ClientMsg) -> &'static str {
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
