//! Running a statement on several shards for the session: the shards'
//! connections (checked out for it, or the transaction's own, lent), the
//! merged answer written to the client a row at a time, and a portal that
//! stops after N rows and goes on at the next Execute.
//!
//! Replies of earlier statements are settled first, so the merged answer
//! can go straight to the client without overtaking them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Session;
use super::conns::Held;
use super::state::Txn;
use crate::cancel::{self, BackendKey};
use crate::pool::{Role, ShardConn};
use crate::route::merge::FanOut;
use crate::scatter::{Bound, Failure, Scatter};
use crate::sqlerror::{SqlError, code};
use crate::topology::ShardId;
use crate::wire::reply;

/// A statement across shards, bound (or a simple query's), run when executed.
pub(super) struct ScatterPortal {
    pub sql: String,
    pub bound: Option<Bound>,
    pub shards: Vec<ShardId>,
    pub plan: Arc<FanOut>,
    pub role: Role,
    /// Sent to the shards; rows are read from it.
    pub running: Option<Scatter>,
    /// Its RowDescription reached the client (a Describe of the portal).
    pub described: bool,
    /// It ran to completion: executing it again returns no rows.
    pub finished: bool,
    /// Runs on connections of its own, outside the session's transaction
    /// (a catalog read on the default shard while the transaction is
    /// elsewhere; one started before the transaction).
    pub detached: bool,
    /// Its RowDescription, kept for a cursor's every FETCH.
    pub description: Option<Bytes>,
}

/// Where a statement across shards runs.
#[derive(Clone)]
pub(super) struct Spread {
    pub shards: Vec<ShardId>,
    pub plan: Arc<FanOut>,
    pub role: Role,
    /// On connections of its own, outside the session's transaction.
    pub detached: bool,
}

/// How far reading rows got (`pump`).
enum Pumped {
    /// This many rows, up to the limit: the statement waits, parked.
    Limit(u64),
    /// This many, then the end: its CommandComplete.
    End(u64, BytesMut),
    /// It failed; the error went to the client.
    Failed,
}

/// How far an Execute got.
pub(super) enum Ran {
    /// Every row sent, and the CommandComplete.
    Complete,
    /// The row limit was reached; the portal goes on at the next Execute.
    Suspended,
    /// It failed; the error went to the client.
    Failed,
}

impl ScatterPortal {
    pub fn new(sql: String, bound: Option<Bound>, spread: Spread) -> Self {
        let Spread { shards, plan, role, detached } = spread;
        ScatterPortal {
            sql,
            bound,
            shards,
            plan,
            role,
            running: None,
            described: false,
            finished: false,
            detached,
            description: None,
        }
    }
}

impl Drop for ScatterPortal {
    /// A statement still running when its portal goes (the client left, or
    /// the transaction ended): its queries are cancelled and their
    /// connections closed, since what they still owe is unknown.
    fn drop(&mut self) {
        let Some(s) = self.running.take() else { return };
        for mut conn in s.abandon() {
            let key = BackendKey { addr: conn.conn.addr.clone(), pid: conn.conn.pid, secret: conn.conn.secret };
            conn.conn.broken = true;
            conn.close();
            tokio::spawn(async move { cancel::send(&key).await });
        }
    }
}

impl Session {
    /// Sends the statement to its shards, if not yet.
    async fn scatter_start(&mut self, sp: &mut ScatterPortal) -> Result<(), Failure> {
        if sp.running.is_some() {
            return Ok(());
        }
        self.settle().await?;
        // Started outside a transaction, it runs in its own on each shard
        // (committed at its Sync), and its connections stay its own even
        // if the client opens a block before reading the rest.
        let outside = sp.detached;
        sp.detached |= matches!(self.txn, Txn::Idle);
        let legs = if outside {
            let mut legs = Vec::with_capacity(sp.shards.len());
            for &shard in &sp.shards {
                match self.checkout(shard, sp.role).await {
                    Ok(held) => legs.push(held.conn),
                    Err(e) => {
                        legs.into_iter().for_each(ShardConn::release);
                        return Err(e.into());
                    }
                }
            }
            legs
        } else {
            self.legs(&sp.shards, sp.role).await?
        };
        let in_txn = !sp.detached && !matches!(self.txn, Txn::Idle);
        let pools = self.shared.pools.clone();
        match Scatter::start(legs, &pools, &sp.sql, sp.bound.as_ref(), sp.plan.clone(), in_txn).await {
            Ok(s) => {
                sp.running = Some(s);
                Ok(())
            }
            Err((failure, conns)) => {
                self.give_back_of(sp, conns)?;
                Err(failure)
            }
        }
    }

    /// Describe of the portal: its RowDescription, or NoData. True when
    /// it failed (the error went to the client).
    pub(super) async fn scatter_describe(&mut self, sp: &mut ScatterPortal) -> Result<bool, SqlError> {
        self.unpark(sp).await?;
        let Some(d) = self.opened(sp).await? else { return Ok(true) };
        match d {
            // A COPY TO has no row description: its CopyOutResponse
            // comes with Execute.
            Some(t) if t.first() != Some(&b'H') => {
                self.client.out.extend_from_slice(&t);
                sp.described = true;
            }
            _ => reply::no_data(&mut self.client.out),
        }
        Ok(false)
    }

    /// Starts a cursor's statement and keeps its RowDescription (errors in
    /// the query come now, as Postgres reports them at DECLARE). True
    /// when it failed (the error went to the client).
    pub(super) async fn scatter_open(&mut self, sp: &mut ScatterPortal) -> Result<bool, SqlError> {
        let Some(d) = self.opened(sp).await? else { return Ok(true) };
        sp.description = d;
        Ok(false)
    }

    /// Starts the statement if not yet, reads its description (notices
    /// before it go to the client) and parks it; `None` when it failed
    /// (the error went to the client).
    async fn opened(&mut self, sp: &mut ScatterPortal) -> Result<Option<Option<Bytes>>, SqlError> {
        let described = match self.scatter_start(sp).await {
            Ok(()) => sp.running.as_mut().expect("started").describe().await,
            Err(f) => Err(f),
        };
        match described {
            Ok(d) => {
                if let Some(s) = sp.running.as_mut() {
                    self.client.out.extend_from_slice(&s.take_notices());
                }
                self.park(sp).await?;
                Ok(Some(d))
            }
            Err(f) => {
                self.scatter_failed(sp, f).await?;
                Ok(None)
            }
        }
    }

    /// A cursor's FETCH (`send`) or MOVE of up to `count` rows
    /// (`u64::MAX`: all), its RowDescription first when `describe`: how
    /// many rows it read, or `None` when it failed (the error went to the
    /// client).
    pub(super) async fn scatter_fetch(
        &mut self,
        sp: &mut ScatterPortal,
        count: u64,
        describe: bool,
        send: bool,
    ) -> Result<Option<u64>, SqlError> {
        if describe && let Some(t) = &sp.description {
            self.client.out.extend_from_slice(t);
        }
        if sp.finished || count == 0 {
            return Ok(Some(0));
        }
        self.unpark(sp).await?;
        Ok(match self.pump(sp, count, send).await? {
            Pumped::Limit(n) | Pumped::End(n, _) => Some(n),
            Pumped::Failed => None,
        })
    }

    /// Rows of a started statement to the client (`send`; else only
    /// counted), up to `limit`. At the limit it parks; at the end it is
    /// finished (its CommandComplete returned); a failure is reported.
    async fn pump(&mut self, sp: &mut ScatterPortal, limit: u64, send: bool) -> Result<Pumped, SqlError> {
        let mut n = 0;
        loop {
            let Some(s) = sp.running.as_mut() else { return Ok(Pumped::End(n, BytesMut::new())) };
            if n == limit {
                self.client.out.extend_from_slice(&s.take_notices());
                self.park(sp).await?;
                return Ok(Pumped::Limit(n));
            }
            match s.next_row().await {
                Ok(Some(row)) => {
                    self.client.out.extend_from_slice(&s.take_notices());
                    if send {
                        self.client.out.extend_from_slice(&row);
                    }
                    n += 1;
                    if self.client.out.len() >= super::CLIENT_CHUNK {
                        self.client.flush().await?;
                    }
                }
                Ok(None) => {
                    self.client.out.extend_from_slice(&s.take_notices());
                    let tag = match s.complete() {
                        Ok(tag) => tag,
                        Err(f) => {
                            self.scatter_failed(sp, f).await?;
                            return Ok(Pumped::Failed);
                        }
                    };
                    sp.finished = true;
                    self.scatter_end(sp).await?;
                    return Ok(Pumped::End(n, tag));
                }
                Err(f) => {
                    self.scatter_failed(sp, f).await?;
                    return Ok(Pumped::Failed);
                }
            }
        }
    }

    /// Execute: up to `max_rows` rows (0: all), with the RowDescription
    /// first when `describe` and it was not sent yet.
    pub(super) async fn scatter_run(
        &mut self,
        sp: &mut ScatterPortal,
        max_rows: usize,
        describe: bool,
    ) -> Result<Ran, SqlError> {
        if sp.finished {
            reply::command_complete(&mut self.client.out, "SELECT 0");
            return Ok(Ran::Complete);
        }
        self.unpark(sp).await?;
        if let Err(f) = self.scatter_start(sp).await {
            self.scatter_failed(sp, f).await?;
            return Ok(Ran::Failed);
        }
        if !sp.described {
            let s = sp.running.as_mut().expect("started");
            match s.describe().await {
                // The RowDescription of a simple query, or a COPY TO's
                // CopyOutResponse, which belongs to the answer itself.
                Ok(Some(t)) if describe || t.first() == Some(&b'H') => {
                    self.client.out.extend_from_slice(&s.take_notices());
                    self.client.out.extend_from_slice(&t);
                }
                Ok(_) => {}
                Err(f) => {
                    self.scatter_failed(sp, f).await?;
                    return Ok(Ran::Failed);
                }
            }
            sp.described = true;
        }
        // A COPY TO runs to its end whatever the limit, as on Postgres.
        let copies = sp.running.as_ref().is_some_and(|s| s.copies_out());
        let limit = if max_rows == 0 || copies { u64::MAX } else { max_rows as u64 };
        Ok(match self.pump(sp, limit, true).await? {
            Pumped::Limit(_) => {
                reply::portal_suspended(&mut self.client.out);
                Ran::Suspended
            }
            Pumped::End(_, tag) => {
                self.client.out.extend_from_slice(&tag);
                Ran::Complete
            }
            Pumped::Failed => Ran::Failed,
        })
    }

    /// Reads what the shards have left and takes the connections back.
    pub(super) async fn scatter_end(&mut self, sp: &mut ScatterPortal) -> Result<(), SqlError> {
        self.unpark(sp).await?;
        let Some(s) = sp.running.take() else { return Ok(()) };
        let conns = s.finish().await;
        self.give_back_of(sp, conns)
    }

    /// Between the client's messages a statement across shards in a
    /// transaction leaves its connections to the transaction, so that the
    /// client's other statements run on them (`scatter::leg`).
    async fn park(&mut self, sp: &mut ScatterPortal) -> Result<(), SqlError> {
        let Some(s) = sp.running.as_mut().filter(|_| !sp.detached) else { return Ok(()) };
        let conns = s.park().await;
        self.give_back(conns)
    }

    /// Takes a parked statement's connections back from the transaction,
    /// once what the client sent on them before is answered.
    async fn unpark(&mut self, sp: &mut ScatterPortal) -> Result<(), SqlError> {
        let Some(shards) = sp.running.as_ref().map(|s| s.parked_on()).filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        self.settle().await?;
        let mut conns = Vec::with_capacity(shards.len());
        for &shard in &shards {
            match self.conns.remove(shard) {
                Some(held) => {
                    conns.push(held.conn);
                    self.lent.push(shard);
                }
                None => {
                    self.give_back(conns)?;
                    let labels = sp.running.as_ref().map(|s| s.labels()).unwrap_or_default();
                    return Err(SqlError::fatal(
                        code::CONNECTION_FAILURE,
                        format!(
                            "the transaction no longer holds a connection to every shard of this portal ({labels})"
                        ),
                    ));
                }
            }
        }
        if let Some(s) = sp.running.as_mut() {
            s.resume(conns);
        }
        Ok(())
    }

    /// Takes back `sp`'s connections: to the pool when they were its own.
    fn give_back_of(&mut self, sp: &ScatterPortal, conns: Vec<ShardConn>) -> Result<(), SqlError> {
        if sp.detached {
            conns.into_iter().for_each(ShardConn::release);
            return Ok(());
        }
        self.give_back(conns)
    }

    /// Reports a failure of the statement; the transaction it is in fails with it.
    async fn scatter_failed(&mut self, sp: &mut ScatterPortal, failure: Failure) -> Result<(), SqlError> {
        self.scatter_end(sp).await?;
        let mut out = BytesMut::new();
        match failure {
            Failure::Shard(frames) => {
                self.count_shard_error(&frames);
                out = frames;
            }
            Failure::Own(e) if e.fatal => return Err(e),
            Failure::Own(e) => {
                self.shared.telemetry.client_error(&e, &self.info);
                reply::error(&mut out, &e);
            }
        }
        self.client.out.extend_from_slice(&out);
        if let Txn::Block(b) = &mut self.txn {
            b.failed = true;
        }
        if let Some(s) = self.txn_snapshot.as_mut() {
            s.failed = true;
        }
        Ok(())
    }

    /// The connections a statement on `shards` runs on, in that order:
    /// checked out for it outside a transaction; inside one, the
    /// transaction's, with shards not in it yet joining.
    pub(super) async fn legs(&mut self, shards: &[ShardId], role: Role) -> Result<Vec<ShardConn>, SqlError> {
        let mut legs = Vec::with_capacity(shards.len());
        let result = self.gather(shards, role, &mut legs).await;
        if let Err(e) = result {
            self.give_back(legs)?;
            return Err(e);
        }
        Ok(legs)
    }

    async fn gather(&mut self, shards: &[ShardId], role: Role, legs: &mut Vec<ShardConn>) -> Result<(), SqlError> {
        match self.txn {
            Txn::Idle => {
                // A batch in flight on other servers ends first (or is refused
                // when it wrote: one implicit transaction).
                if let Some(wrote) = self.conns.iter().find(|h| h.wrote) {
                    let topology = &self.shared.pools.topology;
                    return Err(crate::policy::Refusal::Together {
                        first: topology.name(wrote.shard()).to_string(),
                        second: topology.names(shards),
                    }
                    .into());
                }
                let held = self.conns.shards();
                self.leave(&held).await?;
                for &shard in shards {
                    legs.push(self.checkout(shard, role).await?.conn);
                }
            }
            Txn::Deferred(_) => {
                // The first statement of the transaction: it opens on every shard it needs.
                let Txn::Deferred(d) = std::mem::replace(&mut self.txn, Txn::Idle) else { unreachable!() };
                self.txn = Txn::Block(super::state::Block {
                    begin: d.statements,
                    savepoints: d.savepoints,
                    ..Default::default()
                });
                for &shard in shards {
                    if !legs.is_empty() {
                        self.may_widen(shard)?;
                    }
                    legs.push(self.join(shard).await?.conn);
                    self.lent.push(shard);
                }
            }
            Txn::Block(_) => {
                for &shard in shards {
                    let held = match self.conns.remove(shard) {
                        Some(h) => h.conn,
                        None => {
                            self.may_widen(shard)?;
                            self.join(shard).await?.conn
                        }
                    };
                    legs.push(held);
                    self.lent.push(shard);
                }
            }
        }
        Ok(())
    }

    /// Takes back connections a statement across shards used. Outside a
    /// transaction they go back to the pool; inside, to the transaction —
    /// and one that did not answer in full loses it: FATAL, rolled back.
    pub(super) fn give_back(&mut self, conns: Vec<ShardConn>) -> Result<(), SqlError> {
        let in_txn = !matches!(self.txn, Txn::Idle);
        if !in_txn {
            for c in conns {
                c.release();
            }
            return Ok(());
        }
        let mut lost = Vec::new();
        for c in conns {
            self.lent.retain(|s| *s != c.shard());
            if c.conn.broken {
                lost.push(c.label().to_string());
                c.close();
                continue;
            }
            let mut held = Held::new(c);
            held.in_block = true;
            self.conns.insert(held);
        }
        self.point_cancel();
        if lost.is_empty() {
            return Ok(());
        }
        self.roll_back_others();
        self.txn = Txn::Idle;
        Err(SqlError::fatal(
            code::CONNECTION_FAILURE,
            format!("lost {} inside a transaction across shards; the transaction was rolled back", lost.join(", ")),
        ))
    }
}
