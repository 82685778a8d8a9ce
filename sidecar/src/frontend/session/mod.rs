//! One client session under transaction pooling.
//!
//! The session is a state machine: `state::Txn` says where its transaction
//! stands, `state::Mode` how the next client message is taken. Client
//! messages are read into an inbox and handled in order; the simple and the
//! extended protocol both come to `dispatch::plan`, which routes a statement
//! once and says what happens to it: answered here, sent to one shard's
//! server, run on several and merged, or a COPY split by key. Servers are
//! held per shard (`conns`) for the batch in flight or the transaction, and
//! go back to the pool when both end. Every reply to the client — relayed
//! from a server or made here — goes through the one `outbox`, so replies
//! arrive in protocol order whichever servers answer. What must survive a
//! change of connection lives here and is replayed: settings, prepared
//! statements, a BEGIN not yet sent.

mod across;
mod conns;
mod copy_split;
mod cursors;
mod dispatch;
mod extended;
mod fan_out;
mod local;
mod outbox;
mod portals;
mod prepared;
mod revalidate;
mod simple;
mod state;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::extendedquery::Describe;
use tokio::sync::watch;

use self::conns::{Conns, Held};
use self::fan_out::ScatterPortal;
use self::outbox::{Entry, Event, Outbox, Reply};
use self::prepared::{Effect, Prepared, Statements};
use self::revalidate::Revalidate;
use self::state::{Block, Mode, Txn, TxnStatus};
use crate::cancel::{self, BackendKey, Registration};
use crate::classify::shape::CursorOp;
use crate::classify::{Facts, Kind, Statement};
use crate::passthrough::UserLogin;
use crate::policy::facts::SessionInfo;
use crate::pool::Role;
use crate::settings::Settings;
use crate::shared::{Shared, Stopping};
use crate::sqlerror::{SqlError, code};
use crate::telemetry::stages::{Stage, Stages};
use crate::topology::ShardId;
use crate::wire::{ClientConn, ClientMsg, Frame, encode, reply};

/// Client bytes read ahead of processing (pipelined messages, COPY data).
const INBOX_LIMIT: usize = 256 * 1024;
/// Server output is flushed once this much is queued (COPY streams).
const BACKEND_FLUSH_AT: usize = 64 * 1024;
/// Client output is flushed once this much is queued (large results).
const CLIENT_CHUNK: usize = 64 * 1024;
/// A portal name no client can create: describing it makes the server fail
/// the current transaction, the way an error from shardcar should.
const IMPOSSIBLE_PORTAL: &str = "shardcar\u{1}abort";

/// What a bound portal runs on.
enum PortalKind {
    /// shardcar answers it.
    Local,
    /// It lives on this shard's server.
    On(ShardId),
    /// It runs on several shards when executed.
    Scatter(Box<ScatterPortal>),
    /// COMMIT (`true`) or ROLLBACK of a transaction across shards.
    EndBlock(bool),
    /// SAVEPOINT, RELEASE or ROLLBACK TO in a transaction across shards.
    Savepoint,
    /// A COPY FROM STDIN whose rows are split over the shards when executed.
    CopySplit(Arc<crate::route::CopySplit>),
    /// DECLARE of a cursor kept across shards (`cursors`), with the
    /// parameters of its query.
    Declare(Box<(fan_out::Spread, crate::scatter::Bound)>),
    /// FETCH, MOVE or CLOSE of a cursor kept across shards.
    Cursor(crate::classify::shape::CursorUse),
}

impl PortalKind {
    /// shardcar runs it itself, at once, on connections of its choosing
    /// (rather than queueing a message behind what servers still owe).
    fn runs_here(&self) -> bool {
        !matches!(self, PortalKind::Local | PortalKind::On(_))
    }
}

/// A portal bound in the current transaction.
struct Portal {
    statement: Arc<Prepared>,
    kind: PortalKind,
    /// How its statement got here, for the first Execute to report.
    stages: Option<Stages>,
    /// What keeping it costs (`portals::cost`).
    cost: usize,
}

/// The statement parsed last, until it is bound or described.
struct Parsed {
    statement: Arc<Prepared>,
    stages: Stages,
    /// Its Parse is not sent yet: it goes where the next message shows.
    pending: bool,
    /// What undoes the client's Parse if it fails.
    undo: Vec<Effect>,
}

/// Client and connection settings before a transaction changed them.
struct SettingsSnapshot {
    client: Settings,
    /// The settings of the connection the SET ran on.
    conn: Option<(ShardId, Settings)>,
    /// The transaction is an explicit block (it ends with COMMIT or
    /// ROLLBACK); otherwise it is implicit and any error rolls it back.
    explicit: bool,
    failed: bool,
}

pub struct Session {
    shared: Arc<Shared>,
    client: ClientConn,
    registration: Registration,
    shutdown: watch::Receiver<Stopping>,
    /// Settings from the startup packet: what RESET returns to.
    startup: Settings,
    settings: Settings,
    /// Who the client is and its `shardcar.*` variables, as plugins see them.
    info: Arc<SessionInfo>,
    /// Passthrough: the shards are asked as this user, not the URLs'.
    login: Option<Arc<UserLogin>>,
    statements: Statements,
    unnamed: Option<Arc<Prepared>>,
    parsed: Option<Parsed>,
    portals: portals::Portals,
    inbox: VecDeque<ClientMsg>,
    inbox_bytes: usize,
    client_eof: bool,
    conns: Conns,
    outbox: Outbox,
    events: Vec<Event>,
    txn: Txn,
    mode: Mode,
    /// Shards whose transaction connections a statement across shards is
    /// using, while it runs (between the client's messages it parks them).
    lent: Vec<ShardId>,
    /// Cursors the client declared in SQL (`DECLARE`), by name: portals on
    /// the server that ran it (which protocol messages may name too), or
    /// kept here across shards.
    cursors: std::collections::HashMap<String, cursors::Cursor>,
    /// The pool checkout of the statement being attached, for its trace.
    checkout_stage: Option<Stage>,
    /// Settings before the first SET of the current transaction (explicit,
    /// or the implicit one of a query or batch), restored if it rolls back.
    txn_snapshot: Option<SettingsSnapshot>,
    /// A BEGIN completed in the batch in flight; the block opens on its ReadyForQuery.
    began: Option<String>,
    /// A lost replica's batch, to run again on the primary.
    rerun: Option<(ShardId, BytesMut)>,
    /// `pool.idle_transaction_timeout_ms`, when set.
    idle_transaction_timeout: Option<Duration>,
    /// DDL was sent: the OID maps are read again once its transaction ends,
    /// before the client hears the outcome.
    schema_changed: bool,
    /// The last statement a server completed was a COMMIT that committed.
    last_committed: bool,
    done: bool,
}

/// The shutdown state once it is other than `now` (never, if nothing can change it).
/// Sleeps for `d`, if any. `select!` builds every branch's future on every
/// turn, disabled or not: a timer made here is made only when polled (a
/// `tokio::time::sleep` per turn read the clock and the runtime's handle
/// twice per statement).
async fn sleep_for(d: Option<Duration>) {
    if let Some(d) = d {
        tokio::time::sleep(d).await;
    }
}

async fn next_stop(mut shutdown: watch::Receiver<Stopping>, now: Stopping) -> Stopping {
    loop {
        let state = *shutdown.borrow_and_update();
        if state != now {
            return state;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        client: ClientConn,
        registration: Registration,
        startup: Settings,
        info: SessionInfo,
        login: Option<Arc<UserLogin>>,
    ) -> Session {
        let shutdown = shared.shutdown.clone();
        let idle_transaction_timeout = match shared.config.pool.idle_transaction_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        Session {
            shared,
            client,
            registration,
            shutdown,
            settings: startup.clone(),
            startup,
            info: Arc::new(info),
            login,
            statements: Statements::default(),
            unnamed: None,
            parsed: None,
            portals: portals::Portals::default(),
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            client_eof: false,
            conns: Conns::default(),
            outbox: Outbox::surviving_fatal(),
            events: Vec::new(),
            txn: Txn::Idle,
            mode: Mode::Normal,
            lent: Vec::new(),
            cursors: Default::default(),
            checkout_stage: None,
            txn_snapshot: None,
            began: None,
            schema_changed: false,
            idle_transaction_timeout,
            rerun: None,
            last_committed: false,
            done: false,
        }
    }

    /// Serves the client until it leaves; a FATAL error is written before returning.
    pub async fn run(mut self) {
        if let Err(e) = self.serve().await {
            tracing::debug!(client = self.registration.pid, "session ended: {e}");
            self.shared.telemetry.client_error(&e, &self.info);
            // The client may be gone already; then there is no one to tell.
            reply::error(&mut self.client.out, &e);
            let _ = self.client.flush().await;
        }
        self.finish();
    }

    async fn serve(&mut self) -> Result<(), SqlError> {
        let mut stopping = *self.shutdown.borrow();
        // One wait for the whole session, not a new waiter at every turn.
        let mut stop_changed = Box::pin(next_stop(self.shutdown.clone(), stopping));
        loop {
            if let Some((shard, bytes)) = self.rerun.take() {
                self.rerun_on_primary(shard, bytes).await?;
            }
            self.process().await?;
            // Replies made here that reached the head go out, so that what
            // the queue waits on next is a server's.
            self.release_synthetic();
            if self.schema_changed && matches!(self.txn, Txn::Idle) && self.outbox.waiting_on().is_none() {
                self.schema_changed = false;
                self.shared.pools.refresh_oids().await;
            }
            self.flush().await?;
            if self.done {
                return Ok(());
            }
            let idle = self.conns.is_empty() && matches!(self.txn, Txn::Idle) && self.inbox.is_empty();
            if stopping != Stopping::No && idle {
                return Err(SqlError::fatal(
                    code::ADMIN_SHUTDOWN,
                    "terminating connection because shardcar is shutting down",
                ));
            }
            if let Some(s) = self.outbox.waiting_on()
                && self.conns.get(s).is_none()
                && self.rerun.as_ref().is_none_or(|(r, _)| *r != s)
            {
                // The server owes replies but its connection is gone: nothing
                // would wake the session for them.
                self.backend_lost(s, "the connection was closed")?;
                continue;
            }
            let want_client = !self.client_eof && self.inbox_bytes < INBOX_LIMIT;
            let waiting_on = self.outbox.waiting_on();
            // A server holds its replies until a Sync or Flush the client has not sent.
            let held_back = waiting_on.is_some_and(|s| self.conns.get(s).is_some_and(|h| h.unflushed));
            if !want_client && waiting_on.is_none() || self.client_eof && (self.inbox.is_empty() || held_back) {
                // The client is gone, and what it sent is sent on (or waits
                // behind replies that will not come): nobody will read what
                // is still owed. `finish` cancels it and closes those
                // connections, so their servers roll back.
                return Ok(());
            }
            let backend = waiting_on.and_then(|s| self.conns.get_mut(s)).map(|h| &mut h.conn.conn);
            let want_backend = backend.is_some();
            self.client.busy = want_backend;
            // Idle in a transaction: the client's turn, nothing queued or owed.
            let idle_in_transaction = self
                .idle_transaction_timeout
                .filter(|_| !matches!(self.txn, Txn::Idle) && !want_backend && self.inbox.is_empty() && want_client);
            tokio::select! {
                _ = sleep_for(idle_in_transaction), if idle_in_transaction.is_some() => {
                    return Err(SqlError::fatal(
                        code::IDLE_IN_TRANSACTION_TIMEOUT,
                        "terminating connection due to idle-in-transaction timeout",
                    )
                    .hint("shardcar's pool.idle_transaction_timeout_ms: the transaction was rolled back"));
                }
                frame = self.client.read_frame(), if want_client => match frame? {
                    Some(frame) => self.receive(frame)?,
                    None => self.client_eof = true,
                },
                frame = async { backend.expect("guarded by want_backend").read_frame().await }, if want_backend => {
                    let shard = waiting_on.expect("guarded by want_backend");
                    match frame {
                        Ok(frame) => self.relay(shard, frame)?,
                        Err(e) => self.backend_lost(shard, &e.to_string())?,
                    }
                }
                changed = &mut stop_changed, if stopping != Stopping::Now => {
                    stopping = changed;
                    stop_changed = Box::pin(next_stop(self.shutdown.clone(), stopping));
                    if stopping == Stopping::Now {
                        return Err(SqlError::fatal(
                            code::ADMIN_SHUTDOWN,
                            "terminating connection due to administrator command: shardcar's shutdown grace period is over",
                        ));
                    }
                }
            }
        }
    }

    /// Queues a client message, and every further one already read, so that
    /// a batch written at once is handled at once.
    fn receive(&mut self, frame: Frame) -> Result<(), SqlError> {
        let mut next = Some(frame);
        while let Some(frame) = next {
            let msg = ClientMsg::decode(frame)?;
            tracing::trace!(client = self.registration.pid, "<- {}", msg.name());
            self.inbox_bytes += msg.size();
            self.inbox.push_back(msg);
            next = if self.inbox_bytes < INBOX_LIMIT { self.client.buffered_frame()? } else { None };
        }
        Ok(())
    }

    /// Sends what is queued for servers and for the client.
    async fn flush(&mut self) -> Result<(), SqlError> {
        let mut lost = None;
        for held in self.conns.iter_mut() {
            if let Some(replay) = held.replay.as_mut() {
                replay.extend_from_slice(&held.conn.conn.wbuf);
            }
            if let Some(r) = held.revalidate.as_mut() {
                r.record(&held.conn.conn.wbuf);
            }
            if let Err(e) = held.conn.conn.flush().await {
                lost = Some((held.shard(), e.to_string()));
                break;
            }
        }
        if let Some((shard, why)) = lost {
            self.backend_lost(shard, &why)?;
        }
        self.client.flush().await
    }

    /// Relays a server frame and every further one already buffered, up to
    /// a ReadyForQuery (the session acts on it before anything more), then
    /// acts on what happened.
    fn relay(&mut self, shard: ShardId, first: BytesMut) -> Result<(), SqlError> {
        let mut frame = Some(first);
        while let Some(f) = frame {
            let Some(held) = self.conns.get_mut(shard) else { break };
            let swallowed = match (held.revalidate.take(), f[0]) {
                // Asynchronous messages say nothing of the statement.
                (r @ Some(_), b'N' | b'S' | b'A') => {
                    held.revalidate = r;
                    false
                }
                // The end of the batch that failed, which was sent again.
                (Some(Revalidate::Resent), b'Z') => true,
                (r, b'E') if revalidate::is_stale_plan(&f) => {
                    match r.and_then(|r| r.resend(shard, &mut held.conn.conn)) {
                        Some(entries) => {
                            tracing::debug!(
                                client = self.registration.pid,
                                "{}: stale plan, prepared again",
                                held.conn.label()
                            );
                            held.revalidate = Some(Revalidate::Resent);
                            // What was sent is no longer one batch to run elsewhere.
                            held.replay = None;
                            self.outbox.push_front(entries);
                            true
                        }
                        // The error reaches the client. Other plans on that
                        // server may be stale too: it is not lent again.
                        None => {
                            held.conn.conn.broken = true;
                            false
                        }
                    }
                }
                _ => false,
            };
            if swallowed {
                frame = held.conn.conn.buffered_frame().map_err(|e| {
                    SqlError::fatal(code::CONNECTION_FAILURE, format!("lost {}: {e}", held.conn.label()))
                })?;
                continue;
            }
            if held.replay.is_some() && f[0] == b'E' && outbox::is_fatal(&f) {
                // The replica ends the connection (shut down, crashed)
                // before answering: its batch can run on the primary.
                let why = crate::pool::backend::frame_error_text(f);
                return self.backend_lost(shard, &why);
            }
            // A simple query's RowDescription and notices come before its
            // work is done: they are held back, so that the query can still
            // run again; anything else means its answer has begun.
            let hold_back = matches!(f[0], b'T' | b'N') && held.replayable().is_some_and(|b| b[0] == b'Q');
            if !hold_back {
                held.replay = None;
                self.client.out.extend_from_slice(&std::mem::take(&mut held.held_back));
            }
            let out = if hold_back { &mut held.held_back } else { &mut self.client.out };
            tracing::trace!(client = self.registration.pid, "{} -> '{}'", held.conn.label(), f[0] as char);
            let ready = match self.outbox.on_frame(shard, &f, out, &mut self.events) {
                Ok(ready) => ready,
                Err(desync) => {
                    tracing::error!(client = self.registration.pid, "{}: {desync}", held.conn.label());
                    held.conn.conn.broken = true;
                    return Err(SqlError::fatal(
                        code::PROTOCOL_VIOLATION,
                        format!("shardcar lost track of the protocol with {}: {desync}", held.conn.label()),
                    ));
                }
            };
            if ready || self.outbox.waiting_on() != Some(shard) {
                break;
            }
            frame =
                held.conn.conn.buffered_frame().map_err(|e| {
                    SqlError::fatal(code::CONNECTION_FAILURE, format!("lost {}: {e}", held.conn.label()))
                })?;
        }
        self.release_synthetic();
        Ok(())
    }

    /// Writes replies made here that reached the head, and acts on events.
    fn release_synthetic(&mut self) {
        loop {
            self.outbox.release_synthetic(&mut self.client.out, &mut self.events);
            if self.events.is_empty() {
                break;
            }
            self.apply_events();
        }
        self.release_idle();
    }

    fn apply_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                Event::Succeeded(effect) | Event::Undone(effect) => self.apply(effect),
                Event::StatementDone { facts, index, committed, shard } => {
                    if let Some(stmt) = facts.statements.get(index) {
                        self.statement_done(shard, stmt);
                    }
                    self.last_committed = committed;
                }
                Event::Ready { shard, status, client } => self.ready(shard, status, client),
                Event::CopyIn { shard, extended } => {
                    self.mode = Mode::CopyIn(shard);
                    if let Some(h) = self.conns.get_mut(shard) {
                        h.unsynced |= extended;
                    }
                }
                Event::Finished(flight) => self.shared.telemetry.finished(flight),
                Event::Error { shard, fatal, skips } => {
                    // An error ends COPY IN on the server; what the client
                    // still sends is dropped, as Postgres does.
                    self.mode = if skips { Mode::SkipToSync } else { Mode::Normal };
                    if let Some(s) = self.txn_snapshot.as_mut() {
                        s.failed = true;
                    }
                    if fatal && let Some(h) = self.conns.get_mut(shard) {
                        h.conn.conn.broken = true;
                    }
                }
            }
        }
        // Its buffer is kept for the next statement's events.
        if self.events.is_empty() {
            self.events = events;
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Validated(p) => p.validated.store(true, Ordering::Relaxed),
            Effect::ForgetUnvalidated(p) if !p.is_validated() => {
                let current = if p.client_name.is_empty() {
                    self.unnamed.clone()
                } else {
                    self.statements.get(&p.client_name).cloned()
                };
                if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &p)) {
                    self.apply(Effect::ForgetStatement(p.client_name.clone()));
                }
            }
            Effect::ForgetUnvalidated(_) => {}
            Effect::Unprepare(shard, name) => {
                if let Some(h) = self.conns.get_mut(shard) {
                    h.conn.conn.prepared.unsure(&name);
                }
            }
            Effect::UnnamedLost(shard) => {
                if let Some(h) = self.conns.get_mut(shard) {
                    h.conn.conn.unnamed = None;
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

    /// Session bookkeeping for a statement a server completed.
    fn statement_done(&mut self, shard: ShardId, stmt: &Statement) {
        if let Some(declared) = &stmt.shape.cursor {
            self.cursors.insert(declared.name.clone(), cursors::Cursor::On(shard));
        }
        if let Some(used) = stmt.shape.uses_cursor.as_ref().filter(|u| u.op == CursorOp::Close) {
            self.cursors.remove(&used.name);
        }
        match &stmt.kind {
            Kind::Begin => self.began = Some(stmt.text.clone()),
            Kind::Savepoint(name) => {
                if let Txn::Block(b) = &mut self.txn {
                    b.savepoints.push(name.clone());
                }
            }
            Kind::Release(name) | Kind::RollbackTo(name) => {
                let release = matches!(stmt.kind, Kind::Release(_));
                if let Txn::Block(b) = &mut self.txn
                    && b.unwind(name, release)
                    && !release
                {
                    // Rolled back to a savepoint: what failed after it is undone.
                    b.failed = false;
                }
            }
            Kind::Session(change) => {
                let Some(held) = self.conns.get_mut(shard) else { return };
                if self.txn_snapshot.is_none() {
                    let explicit = !matches!(self.txn, Txn::Idle) || self.began.is_some();
                    self.txn_snapshot = Some(SettingsSnapshot {
                        client: self.settings.clone(),
                        conn: Some((shard, held.conn.conn.settings.clone())),
                        explicit,
                        failed: false,
                    });
                }
                self.settings.apply(change, &self.startup);
                let conn_startup = held.conn.conn.startup_settings.clone();
                held.conn.conn.settings.apply(change, &conn_startup);
            }
            _ => {}
        }
        if let Some(held) = self.conns.get_mut(shard)
            && !matches!(stmt.kind, Kind::Read)
        {
            held.wrote = true;
        }
    }

    /// A ReadyForQuery: a server's (its transaction status) or the client's
    /// (written now, with the status of the whole session).
    fn ready(&mut self, shard: Option<ShardId>, status: u8, client: bool) {
        if let Some(shard) = shard {
            self.server_ready(shard, TxnStatus::from_byte(status));
        }
        if client {
            let status = self.status();
            reply::ready(&mut self.client.out, status.byte());
        }
    }

    fn server_ready(&mut self, shard: ShardId, status: TxnStatus) {
        let Some(held) = self.conns.get_mut(shard) else { return };
        held.conn.conn.status = status.byte();
        // `unsynced` and `unflushed` describe what was written since the
        // last Sync, Flush or Query, and change only when something is
        // written: this ReadyForQuery may answer a Query that messages
        // written since (pipelined) came after.
        if status == TxnStatus::Idle {
            let committed_write = held.wrote && !held.on_replica;
            held.wrote = false;
            held.in_block = false;
            if held.on_replica {
                held.replay = Some(BytesMut::new());
            }
            if committed_write {
                self.conns.note_write(shard);
            }
        } else {
            held.in_block = true;
        }
        let began = self.began.take();
        match (&mut self.txn, status) {
            // A BEGIN ran on the server (in a query string or a batch).
            (Txn::Idle, TxnStatus::InBlock | TxnStatus::Failed) => {
                self.txn =
                    Txn::Block(Block { begin: vec![began.unwrap_or_else(|| "BEGIN".into())], ..Block::default() });
                if let Some(s) = self.txn_snapshot.as_mut() {
                    s.explicit = true;
                }
            }
            (Txn::Block(_), TxnStatus::Idle) => {
                // The block ended on this shard (COMMIT, ROLLBACK, or an
                // error that ended it): it ends everywhere.
                self.end_of_transaction();
            }
            (Txn::Idle, TxnStatus::Idle) => self.end_of_batch(),
            _ => {}
        }
    }

    /// A transaction block ended on its server: the session is idle again.
    fn end_of_transaction(&mut self) {
        self.txn = Txn::Idle;
        self.clear_portals();
        for held in self.conns.iter_mut() {
            held.in_block = false;
        }
        self.roll_back_others();
        self.end_of_batch();
    }

    /// An implicit transaction (a query or batch) ended: SETs stay only if
    /// it committed.
    fn end_of_batch(&mut self) {
        let Some(s) = self.txn_snapshot.take() else { return };
        let committed = if s.explicit { self.last_committed } else { !s.failed };
        if !committed {
            // Postgres undoes the SETs of a transaction that rolls back.
            self.settings = s.client;
            if let Some((shard, conn)) = s.conn
                && let Some(h) = self.conns.get_mut(shard)
            {
                h.conn.conn.settings = conn;
            }
        }
    }

    /// Connections that serve nothing go back to the pool.
    fn release_idle(&mut self) {
        if !matches!(self.txn, Txn::Idle) || matches!(self.mode, Mode::CopyIn(_)) {
            return;
        }
        let outbox = &self.outbox;
        self.conns.release_where(
            |h| !outbox.owes(h.shard()) && !h.unsynced && h.conn.conn.status == b'I',
            |h| h.conn.release(),
        );
        self.point_cancel();
    }

    /// Cancel requests reach the server running the session's statement.
    fn point_cancel(&self) {
        let conn = self.conns.current().and_then(|s| self.conns.get(s)).map(|h| &h.conn.conn);
        let Ok(mut slot) = self.registration.slot.lock() else { return };
        let same = match (slot.as_ref(), conn) {
            (Some(k), Some(c)) => k.pid == c.pid && k.secret == c.secret && k.addr == c.addr,
            (None, None) => true,
            _ => false,
        };
        // Most statements go to the server the last one went to.
        if !same {
            *slot = conn.map(|c| BackendKey { addr: c.addr.clone(), pid: c.pid, secret: c.secret });
        }
    }

    /// The transaction status the client should see.
    fn status(&self) -> TxnStatus {
        match &self.txn {
            Txn::Idle => TxnStatus::Idle,
            Txn::Deferred(d) if d.failed => TxnStatus::Failed,
            Txn::Deferred(_) => TxnStatus::InBlock,
            Txn::Block(b) => {
                let failed = self.conns.iter().any(|h| h.conn.conn.status == b'E');
                if b.failed || failed { TxnStatus::Failed } else { TxnStatus::InBlock }
            }
        }
    }

    /// The server connection of `shard` failed under this session.
    fn backend_lost(&mut self, shard: ShardId, why: &str) -> Result<(), SqlError> {
        let in_txn = matches!(self.txn, Txn::Block(_)) || self.mode == Mode::CopyIn(shard);
        if !in_txn
            && let Some(bytes) = self.conns.get(shard).and_then(Held::replayable).cloned()
            && let Some(held) = self.conns.remove(shard)
        {
            // A replica went before it answered a read outside a
            // transaction: it runs again on the primary (next, in `serve`).
            tracing::warn!(
                client = self.registration.pid,
                "lost {} ({why}); its read runs on the primary",
                held.conn.label()
            );
            held.conn.close();
            self.rerun = Some((shard, bytes));
            return Ok(());
        }
        let held = self.conns.remove(shard);
        let ready_owed = self.outbox.abandon(shard, &mut self.events);
        self.apply_events();
        let label = held
            .as_ref()
            .map_or_else(|| self.shared.pools.topology.name(shard).to_string(), |h| h.conn.label().to_string());
        let unsynced = held.as_ref().is_some_and(|h| h.unsynced);
        if let Some(h) = held {
            h.conn.close();
        }
        self.point_cancel();
        tracing::warn!(client = self.registration.pid, "lost the connection to {label}: {why}");
        if in_txn {
            self.roll_back_others();
            self.txn = Txn::Idle;
            return Err(SqlError::fatal(
                code::CONNECTION_FAILURE,
                format!("lost the connection to {label} inside a transaction ({why}); the transaction was rolled back"),
            )
            .on(shard));
        }
        if !self.outbox.fatal_told {
            let err = SqlError::new(
                code::CONNECTION_FAILURE,
                format!("lost the connection to {label} ({why}); the statement may not have run"),
            )
            .hint("retry; shardcar opens a new connection")
            .on(shard);
            self.shared.telemetry.client_error(&err, &self.info);
            self.emit_error(&err);
        }
        self.outbox.fatal_told = false;
        if ready_owed {
            self.emit_ready();
        } else if unsynced {
            self.mode = Mode::SkipToSync;
        }
        Ok(())
    }

    /// Sends a lost replica's unanswered batch to its shard's primary, whose
    /// answer the replies still owed then read; if no primary connection
    /// can be had, the batch fails as a lost connection.
    async fn rerun_on_primary(&mut self, shard: ShardId, bytes: BytesMut) -> Result<(), SqlError> {
        match self.checkout(shard, Role::Primary).await {
            Ok(mut held) => {
                held.conn.conn.wbuf.extend_from_slice(&bytes);
                self.conns.insert(held);
                self.conns.set_current(shard);
                self.point_cancel();
                Ok(())
            }
            Err(e) => self.backend_lost(shard, &e.message),
        }
    }

    /// Drops every portal; connections a portal across shards still reads
    /// from are closed (what they owe is unknown).
    fn clear_portals(&mut self) {
        self.portals.clear();
        self.lent.clear();
        self.cursors.clear();
    }

    /// Returns every held connection to a clean state, or drops it, when
    /// the client goes away.
    fn finish(&mut self) {
        self.clear_portals();
        for held in self.conns.take_all() {
            let busy = self.outbox.owes(held.shard()) || self.mode == Mode::CopyIn(held.shard());
            let mut conn = held.conn;
            if busy || held.unsynced {
                // Mid-statement or mid-batch: stop what still runs and close the
                // connection, so the server rolls back; a Sync here could commit.
                let key = BackendKey { addr: conn.conn.addr.clone(), pid: conn.conn.pid, secret: conn.conn.secret };
                conn.conn.broken = true;
                conn.close();
                if busy {
                    tokio::spawn(async move { cancel::send(&key).await });
                }
            } else if conn.conn.status != b'I' {
                // Idle in a transaction: roll it back, then the connection is clean.
                across::roll_back_in_background(conn);
            } else {
                conn.release();
            }
        }
        if let Ok(mut slot) = self.registration.slot.lock() {
            *slot = None;
        }
    }

    // ---- processing client messages ----------------------------------

    async fn process(&mut self) -> Result<(), SqlError> {
        while !self.done {
            match self.mode {
                // COPY data is sent on once this much is queued, here: what
                // is left in the inbox may be all the client sends before it
                // waits for the answer, so nothing else would wake the session.
                Mode::CopyIn(shard)
                    if self.conns.get(shard).is_some_and(|h| h.conn.conn.wbuf.len() >= BACKEND_FLUSH_AT) =>
                {
                    self.flush().await?;
                    continue;
                }
                Mode::CopyIn(_) => {}
                // A batch's end is owed: its outcome decides where the next goes.
                _ if self.outbox.owes_ready() => return Ok(()),
                _ => {}
            }
            let Some(msg) = self.inbox.pop_front() else { return Ok(()) };
            self.inbox_bytes -= msg.size();
            self.handle(msg).await?;
            if self.client.out.len() >= CLIENT_CHUNK {
                self.client.flush().await?;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, msg: ClientMsg) -> Result<(), SqlError> {
        match self.mode {
            Mode::CopyIn(shard) => return self.copy_message(shard, msg),
            Mode::SkipToSync => match msg {
                ClientMsg::Sync { .. } => self.mode = Mode::Normal,
                ClientMsg::Terminate => {
                    self.done = true;
                    return Ok(());
                }
                _ => return Ok(()),
            },
            Mode::Normal => {}
        }
        // A Parse waits for the message that shows where its statement runs.
        let for_pending = match (&msg, &self.parsed) {
            (ClientMsg::Bind { msg: b, .. }, Some(p)) => {
                b.statement_name.as_deref().unwrap_or_default() == p.statement.client_name
            }
            (ClientMsg::Describe { msg: d, .. }, Some(p)) => {
                d.target_type == b'S' && d.name.as_deref().unwrap_or_default() == p.statement.client_name
            }
            _ => false,
        };
        if !for_pending {
            self.send_pending_parse().await?;
        }
        match msg {
            ClientMsg::Query { raw, sql } => self.query(raw, sql).await,
            ClientMsg::Parse { raw, msg } => self.parse(raw, msg).await,
            ClientMsg::Bind { raw, msg } => self.bind(raw, msg).await,
            ClientMsg::Describe { raw, msg } => self.describe(raw, msg).await,
            ClientMsg::Execute { raw, portal, max_rows } => self.execute(raw, portal, max_rows).await,
            ClientMsg::Close { raw, msg } => self.close(raw, msg).await,
            ClientMsg::Sync { .. } => self.sync().await,
            ClientMsg::Flush { .. } => {
                self.flush_servers();
                Ok(())
            }
            // Outside COPY, Postgres ignores these too.
            ClientMsg::CopyData { .. } | ClientMsg::CopyDone { .. } | ClientMsg::CopyFail { .. } => Ok(()),
            ClientMsg::Terminate => {
                self.done = true;
                Ok(())
            }
            ClientMsg::Invalid { tag, error } => self.fail(error, ClientMsg::is_extended(tag)),
        }
    }

    fn copy_message(&mut self, shard: ShardId, msg: ClientMsg) -> Result<(), SqlError> {
        let Some(held) = self.conns.get_mut(shard) else {
            self.mode = Mode::Normal;
            return Ok(());
        };
        let wbuf = &mut held.conn.conn.wbuf;
        match msg {
            ClientMsg::CopyData { raw } => wbuf.extend_from_slice(&raw),
            ClientMsg::CopyDone { raw } | ClientMsg::CopyFail { raw, .. } => {
                wbuf.extend_from_slice(&raw);
                self.mode = Mode::Normal;
            }
            // The server ignores these during COPY IN.
            ClientMsg::Flush { .. } | ClientMsg::Sync { .. } => {}
            // As on Postgres: the COPY fails (the server reports it), the
            // message is dropped, the session goes on.
            other => {
                let why = copy_split::unexpected_during_copy(&other).message;
                let _ = postgres_protocol::message::frontend::copy_fail(&why, wbuf);
                self.mode = Mode::Normal;
            }
        }
        Ok(())
    }

    /// Asks every server with messages not yet answered to send its replies
    /// (a Flush: Postgres holds extended-protocol replies until Sync or Flush).
    fn flush_servers(&mut self) {
        for held in self.conns.iter_mut().filter(|h| h.unflushed) {
            postgres_protocol::message::frontend::flush(&mut held.conn.conn.wbuf);
            held.unflushed = false;
        }
    }

    /// Makes every server deliver what it owes and relays it: afterwards no
    /// reply is outstanding, and a statement may use the connections or
    /// other shards without its replies overtaking earlier ones.
    pub(super) async fn settle(&mut self) -> Result<(), SqlError> {
        self.flush_servers();
        self.flush().await?;
        loop {
            // A reply made here at the head (say, the ParseComplete of a
            // statement the server held already) goes out first: server
            // replies may be owed behind it.
            self.release_synthetic();
            let Some(shard) = self.outbox.waiting_on() else { break };
            let Some(held) = self.conns.get_mut(shard) else {
                self.backend_lost(shard, "the connection was closed")?;
                continue;
            };
            match held.conn.conn.read_frame().await {
                Ok(frame) => self.relay(shard, frame)?,
                Err(e) => self.backend_lost(shard, &e.to_string())?,
            }
            if self.client.out.len() >= CLIENT_CHUNK {
                self.client.flush().await?;
            }
        }
        Ok(())
    }

    /// Relays every reply owed so far, before a message shardcar acts on
    /// itself at once; false when one of them was an error that makes
    /// Postgres skip to Sync — this message is then skipped too.
    pub(super) async fn caught_up(&mut self) -> Result<bool, SqlError> {
        self.settle().await?;
        Ok(self.mode != Mode::SkipToSync)
    }

    /// Reports an error shardcar raised for a statement it did not send,
    /// with what the statement went through.
    fn refuse(&mut self, err: SqlError, extended: bool, stages: Stages, facts: &Arc<Facts>) -> Result<(), SqlError> {
        self.shared.telemetry.refused(stages, facts.clone(), self.info.clone(), &err);
        self.fail(err, extended)
    }

    /// Counts a shard's error in a statement across shards, passed on to
    /// the client (`frames` may start with a WARNING saying where it ran).
    fn count_shard_error(&self, frames: &[u8]) {
        let Some(error) = crate::scatter::frames::split(frames).find(|f| f.first() == Some(&b'E')) else { return };
        let code = outbox::server_error(error).code;
        let (user, application) = (&self.info.user, &self.info.application_name);
        self.shared.telemetry.metrics.client_error("", &code, "server", user, application);
    }

    /// Reports an error shardcar raised for the current message. The batch
    /// or transaction it belongs to fails with it, as on one Postgres.
    fn fail(&mut self, err: SqlError, extended: bool) -> Result<(), SqlError> {
        if err.fatal {
            // Counted where the session ends with it (`run`).
            return Err(err);
        }
        self.shared.telemetry.client_error(&err, &self.info);
        if let Txn::Deferred(d) = &mut self.txn {
            d.failed = true;
        }
        match self.conns.current() {
            Some(shard) => {
                // Fail the server's transaction (or batch) exactly where the
                // client's message failed, so COMMIT cannot keep what came before.
                let held = self.conns.get_mut(shard).expect("current is held");
                let mut describe = BytesMut::new();
                encode(&mut describe, Describe::new(b'P', Some(IMPOSSIBLE_PORTAL.into())));
                held.conn.conn.wbuf.extend_from_slice(&describe);
                held.unsynced = true;
                held.unflushed = true;
                self.outbox.push(Entry::abort(shard, Some(err)), &mut self.events);
                if extended {
                    // The server skips what follows until Sync, and so
                    // does the session (a Query included, as on Postgres).
                    self.mode = Mode::SkipToSync;
                } else {
                    self.sync_servers();
                    self.push_ready();
                }
                self.apply_events();
            }
            None => {
                self.emit_error(&err);
                if extended {
                    self.mode = Mode::SkipToSync;
                } else {
                    self.emit_ready();
                }
            }
        }
        Ok(())
    }

    /// Ends the batch on every server that has messages since its last Sync.
    fn sync_servers(&mut self) {
        let mut events = Vec::new();
        for held in self.conns.iter_mut().filter(|h| h.unsynced) {
            postgres_protocol::message::frontend::sync(&mut held.conn.conn.wbuf);
            held.unsynced = false;
            held.unflushed = false;
            self.outbox.push(Entry::hidden(held.shard(), Reply::Sync), &mut events);
        }
        self.events.extend(events);
    }

    /// The client's ReadyForQuery, once everything before it is out.
    fn push_ready(&mut self) {
        self.outbox.push(Entry::ready(), &mut self.events);
    }

    /// Queues replies shardcar makes itself, behind whatever servers owe.
    fn emit(&mut self, frames: BytesMut, undo: Vec<Effect>) {
        if self.outbox.is_empty() {
            self.client.out.extend_from_slice(&frames);
        } else {
            self.outbox.push(Entry::synthetic(frames).undo(undo), &mut self.events);
            self.release_synthetic();
        }
    }

    fn emit_error(&mut self, err: &SqlError) {
        let mut out = BytesMut::new();
        reply::error(&mut out, err);
        self.emit(out, vec![]);
    }

    /// ReadyForQuery, after what is queued.
    fn emit_ready(&mut self) {
        if self.outbox.is_empty() {
            let status = self.status();
            reply::ready(&mut self.client.out, status.byte());
        } else {
            self.push_ready();
            self.release_synthetic();
        }
    }
}
