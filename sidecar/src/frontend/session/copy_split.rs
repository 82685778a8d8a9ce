//! `COPY table FROM STDIN` on every shard: into a sharded table with no
//! shard named, every row goes to the shard its key routes to; into a
//! reference table, all the data goes to every shard.
//!
//! A COPY is opened on every shard, each in a transaction: the transaction
//! across shards the client has open (with two-phase commit), or one of
//! shardcar's own that commits only when every shard took its rows
//! (two-phase when configured, else one shard after the other). The
//! client's data is cut into rows (text, CSV or binary: `scatter::copy`)
//! and passed on byte for byte — a header to every shard — or passed on
//! whole to each shard.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::future::join_all;
use postgres_protocol::message::frontend;

use super::Session;
use super::state::Txn;
use crate::classify::Facts;
use crate::metrics::KindLabel;
use crate::pool::{Role, ShardConn};
use crate::route::CopySplit;
use crate::scatter::copy::{Piece, RowSplitter};
use crate::scatter::{Leg, internal};
use crate::sqlerror::{SqlError, code};
use crate::topology::ShardId;
use crate::twophase::{Outcome, Participant};
use crate::wire::{ClientMsg, reply};

/// Bytes queued for one shard before they are sent.
const SHARD_FLUSH_AT: usize = 64 * 1024;
/// Keys whose shard a COPY remembers: a bulk load often brings many rows
/// of one key (a tenant's, a customer's), and a policy must route the same
/// facts the same way, so a key is routed once per COPY (bounded memory).
const KEYS_REMEMBERED: usize = 65_536;

/// Why a split COPY did not complete.
enum Failure {
    /// A shard's error, to pass on as it is.
    Shard(BytesMut),
    /// Shardcar's own (bad row, routing).
    Own(SqlError),
    /// The client left or broke the protocol: nothing more to tell it.
    Client(SqlError),
}

impl Session {
    /// Runs a COPY FROM STDIN whose rows belong to several shards. From a
    /// simple query, its end is the client's ReadyForQuery; from an
    /// Execute (`extended`), the client's Sync ends it, and after a failure
    /// what it sends up to that Sync is skipped, as Postgres does.
    pub(super) async fn copy_split(
        &mut self,
        sql: &str,
        facts: &Arc<Facts>,
        split: Arc<CopySplit>,
        extended: bool,
    ) -> Result<(), SqlError> {
        self.settle().await?;
        let shards: Vec<_> = self.shared.pools.topology.ids().collect();
        let within = !matches!(self.txn, Txn::Idle);
        let conns = match self.legs(&shards, Role::Primary).await {
            Ok(conns) => conns,
            Err(e) => return self.fail(e, extended),
        };
        let mut legs: Vec<Leg> = conns.into_iter().map(Leg::new).collect();
        if !within && let Err(e) = begin_own(&mut legs).await {
            release(legs, true);
            return self.fail(e, extended);
        }
        let result = self.copy_rows(&mut legs, sql, facts, &split, within).await;
        for leg in legs.iter_mut() {
            let m = &leg.conn().node.metrics;
            m.statements(KindLabel::Write).inc();
            if result.is_err() {
                m.errors(KindLabel::Write).inc();
            }
        }
        let mut out = BytesMut::new();
        let mut failed = false;
        if within {
            let (rows, failure) = match result {
                Ok(n) => (Some(n), None),
                Err(f) => (None, Some(f)),
            };
            self.give_back(legs.into_iter().map(Leg::into_conn).collect())?;
            match failure {
                None => {}
                Some(Failure::Client(e)) => return Err(e),
                Some(f) => {
                    if let Txn::Block(b) = &mut self.txn {
                        b.failed = true;
                    }
                    self.report(f, &mut out);
                    failed = true;
                }
            }
            if let Some(rows) = rows {
                reply::command_complete(&mut out, &format!("COPY {rows}"));
            }
        } else {
            match result {
                Ok(rows) => match self.commit_own(&mut legs).await {
                    Ok(()) => reply::command_complete(&mut out, &format!("COPY {rows}")),
                    Err(f) => {
                        self.report(f, &mut out);
                        failed = true;
                    }
                },
                Err(Failure::Client(e)) => {
                    release(legs, true);
                    return Err(e);
                }
                Err(f) => {
                    join_all(legs.iter_mut().map(|l| l.conn().conn.run_hidden("ROLLBACK"))).await;
                    self.report(f, &mut out);
                    failed = true;
                }
            }
            release(legs, false);
        }
        self.client.out.extend_from_slice(&out);
        match (extended, failed) {
            (false, _) => self.emit_ready(),
            (true, true) => self.mode = super::Mode::SkipToSync,
            (true, false) => {}
        }
        Ok(())
    }

    fn report(&self, failure: Failure, out: &mut BytesMut) {
        match failure {
            Failure::Shard(frame) => {
                self.count_shard_error(&frame);
                out.extend_from_slice(&frame);
            }
            Failure::Own(e) | Failure::Client(e) => {
                self.shared.telemetry.client_error(&e, &self.info);
                reply::error(out, &e);
            }
        }
    }

    /// Commits shardcar's own transactions of a split COPY.
    async fn commit_own(&self, legs: &mut [Leg]) -> Result<(), Failure> {
        if let Some(coordinator) = &self.shared.coordinator {
            let mut conns: Vec<&mut ShardConn> = legs.iter_mut().map(Leg::conn).collect();
            let mut parts: Vec<Participant<'_>> = conns
                .iter_mut()
                .map(|c| Participant { conn: &mut c.conn, label: &c.node.label, shard: c.node.shard })
                .collect();
            return match coordinator.commit(&mut parts).await {
                Ok(Outcome::Committed { .. }) => Ok(()),
                Ok(Outcome::RolledBack { error }) => Err(Failure::Shard(error)),
                Err(e) => Err(Failure::Own(e)),
            };
        }
        let mut committed = Vec::new();
        for leg in legs.iter_mut() {
            match leg.conn().conn.run_control("COMMIT").await {
                Ok(answer) if answer.error.is_none() => committed.push(leg.label().to_string()),
                Ok(answer) if committed.is_empty() => return Err(Failure::Shard(answer.error.unwrap_or_default())),
                other => {
                    let why = match other {
                        Ok(a) => crate::pool::backend::frame_error_text(a.error.unwrap_or_default()),
                        Err(e) => e.to_string(),
                    };
                    return Err(Failure::Own(SqlError::new(
                        code::CONNECTION_FAILURE,
                        format!(
                            "the COPY committed on {} but not on {} ({why}); without routing.two_phase_commit its shards commit one by one",
                            committed.join(", "),
                            leg.label()
                        ),
                    )));
                }
            }
        }
        Ok(())
    }

    /// Opens the COPY on every leg, streams the client's rows to their
    /// shards and ends it; the rows copied.
    async fn copy_rows(
        &mut self,
        legs: &mut [Leg],
        sql: &str,
        facts: &Arc<Facts>,
        split: &CopySplit,
        in_transaction: bool,
    ) -> Result<u64, Failure> {
        let max_row = self.shared.config.listen.max_message_bytes;
        let mut splitter = match split {
            CopySplit::ByKey { rule, format, key_field } => Some((rule, RowSplitter::new(format, *key_field, max_row))),
            CopySplit::Everywhere { .. } => None,
        };
        let lost = |e: SqlError| Failure::Client(e);
        let mut copy_in_response = None;
        for leg in legs.iter_mut() {
            let conn = &mut leg.conn().conn;
            frontend::query(sql, &mut conn.wbuf).map_err(|e| Failure::Own(internal(e)))?;
            conn.flush().await.map_err(|e| Failure::Own(internal(e)))?;
        }
        for i in 0..legs.len() {
            loop {
                let frame = legs[i].frame().await.map_err(Failure::Own)?;
                match frame[0] {
                    b'G' => {
                        copy_in_response.get_or_insert(frame);
                        break;
                    }
                    b'E' => {
                        legs[i].drain().await;
                        abort(legs, "another shard refused the COPY").await;
                        return Err(Failure::Shard(frame));
                    }
                    _ => {}
                }
            }
        }
        self.client.out.extend_from_slice(&copy_in_response.unwrap_or_default());
        self.client.flush().await.map_err(lost)?;

        let info = self.info.clone();
        let template = splitter.as_ref().map(|(rule, _)| self.shared.router.key_insert(facts, rule));
        let mut placed: HashMap<Option<String>, ShardId> = HashMap::new();
        let mut chunks: Vec<Vec<u8>> = vec![Vec::new(); legs.len()];
        let mut pieces: Vec<Collected> = Vec::new();
        loop {
            let (last, parsed) = match self.next_message().await.map_err(lost)? {
                Some(ClientMsg::CopyData { raw }) => match splitter.as_mut() {
                    Some((_, rows_of)) => (false, rows_of.push(&raw[5..], collect(&mut pieces))),
                    None => {
                        chunks.iter_mut().for_each(|c| c.extend_from_slice(&raw[5..]));
                        (false, Ok(()))
                    }
                },
                Some(ClientMsg::CopyDone { .. }) => match splitter.as_mut() {
                    Some((_, rows_of)) => (true, rows_of.finish(collect(&mut pieces))),
                    None => (true, Ok(())),
                },
                Some(ClientMsg::CopyFail { raw, .. }) => {
                    // Every shard fails its COPY with the client's message.
                    for leg in legs.iter_mut() {
                        leg.conn().conn.wbuf.extend_from_slice(&raw);
                    }
                    return Err(finish(legs).await.err().unwrap_or_else(|| Failure::Own(internal("COPY failed"))));
                }
                Some(ClientMsg::Flush { .. } | ClientMsg::Sync { .. }) => continue,
                // As on Postgres: the COPY fails, the message is dropped, the session goes on.
                Some(other) => {
                    abort(legs, "the client broke off the COPY").await;
                    return Err(Failure::Own(unexpected_during_copy(&other)));
                }
                None => {
                    for leg in legs.iter_mut() {
                        leg.conn().conn.broken = true;
                    }
                    return Err(Failure::Client(SqlError::fatal(
                        code::CONNECTION_FAILURE,
                        "the client left during COPY",
                    )));
                }
            };
            if let Err(e) = parsed {
                abort(legs, &e.message).await;
                return Err(Failure::Own(e));
            }
            for piece in pieces.drain(..) {
                let (Some((rule, _)), Some(template)) = (splitter.as_ref(), template.as_ref()) else { break };
                let (bytes, key) = match piece {
                    Collected::Row(bytes, key) => (bytes, key),
                    Collected::Everyone(bytes) => {
                        chunks.iter_mut().for_each(|c| c.extend_from_slice(&bytes));
                        continue;
                    }
                };
                let routed = match placed.get(&key) {
                    Some(&shard) => Ok(shard),
                    None => {
                        let routed =
                            self.shared.router.route_key(template, rule, key.clone(), &info, in_transaction).await;
                        if let Ok(shard) = routed {
                            if placed.len() == KEYS_REMEMBERED {
                                placed.clear();
                            }
                            placed.insert(key, shard);
                        }
                        routed
                    }
                };
                match routed {
                    Ok(shard) => chunks[shard.index()].extend_from_slice(&bytes),
                    Err(e) => {
                        let e = SqlError::from(e);
                        abort(legs, &e.message).await;
                        return Err(Failure::Own(e));
                    }
                }
            }
            for (leg, chunk) in legs.iter_mut().zip(chunks.iter_mut()) {
                let conn = &mut leg.conn().conn;
                if !chunk.is_empty() {
                    conn.wbuf.extend_from_slice(b"d");
                    conn.wbuf.extend_from_slice(&(chunk.len() as u32 + 4).to_be_bytes());
                    conn.wbuf.extend_from_slice(chunk);
                    chunk.clear();
                }
                if conn.wbuf.len() >= SHARD_FLUSH_AT || last {
                    conn.flush().await.map_err(|e| Failure::Own(internal(e)))?;
                }
            }
            if last {
                break;
            }
        }
        for leg in legs.iter_mut() {
            frontend::copy_done(&mut leg.conn().conn.wbuf);
        }
        let copied = finish(legs).await?;
        Ok(match split {
            CopySplit::ByKey { .. } => copied.iter().sum(),
            // Every shard took the same rows.
            CopySplit::Everywhere { .. } => copied.first().copied().unwrap_or(0),
        })
    }

    /// The client's next message: read ahead already, or from the socket.
    async fn next_message(&mut self) -> Result<Option<ClientMsg>, SqlError> {
        if let Some(msg) = self.inbox.pop_front() {
            self.inbox_bytes -= msg.size();
            return Ok(Some(msg));
        }
        if self.client_eof {
            return Ok(None);
        }
        match self.client.read_frame().await? {
            Some(frame) => Ok(Some(ClientMsg::decode(frame)?)),
            None => {
                self.client_eof = true;
                Ok(None)
            }
        }
    }
}

/// Sends what is queued (CopyDone or CopyFail) and reads every leg's answer
/// to its ReadyForQuery: the rows each copied, or the first shard error.
async fn finish(legs: &mut [Leg]) -> Result<Vec<u64>, Failure> {
    let mut rows = Vec::with_capacity(legs.len());
    let mut error = None;
    for leg in legs.iter_mut() {
        if let Err(e) = leg.conn().conn.flush().await {
            error.get_or_insert(Failure::Own(internal(e)));
            continue;
        }
        while !leg.is_done() {
            match leg.frame().await {
                Ok(frame) if frame[0] == b'C' => {
                    let tag = String::from_utf8_lossy(&frame[5..frame.len() - 1]).into_owned();
                    rows.push(tag.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0));
                }
                Ok(frame) if frame[0] == b'E' => {
                    error.get_or_insert(Failure::Shard(frame));
                }
                Ok(_) => {}
                Err(e) => {
                    error.get_or_insert(Failure::Own(e));
                }
            }
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(rows),
    }
}

/// Ends the COPY on every leg still in it, so nothing is copied.
async fn abort(legs: &mut [Leg], why: &str) {
    for leg in legs.iter_mut().filter(|l| !l.is_done()) {
        let _ = frontend::copy_fail(why, &mut leg.conn().conn.wbuf);
    }
    let _ = finish(legs).await;
}

/// Opens a transaction of shardcar's own on every leg.
async fn begin_own(legs: &mut [Leg]) -> Result<(), SqlError> {
    for leg in legs.iter_mut() {
        if !matches!(leg.conn().conn.run_hidden("BEGIN").await, Ok(Ok(()))) {
            leg.conn().conn.broken = true;
            return Err(SqlError::new(
                code::CONNECTION_FAILURE,
                format!("cannot open a transaction on {}", leg.label()),
            ));
        }
    }
    Ok(())
}

/// Returns connections to the pool, or closes them.
fn release(legs: Vec<Leg>, close: bool) {
    for leg in legs {
        let conn = leg.into_conn();
        if close { conn.close() } else { conn.release() }
    }
}

/// A piece of the data, kept until its row is placed.
enum Collected {
    Row(Vec<u8>, Option<String>),
    Everyone(Vec<u8>),
}

/// Keeps each piece handed over.
fn collect(pieces: &mut Vec<Collected>) -> impl FnMut(Piece<'_>) -> Result<(), SqlError> + '_ {
    |p: Piece<'_>| {
        pieces.push(match p {
            Piece::Row { bytes, key } => Collected::Row(bytes.to_vec(), key),
            Piece::Everyone(bytes) => Collected::Everyone(bytes.to_vec()),
        });
        Ok(())
    }
}

pub(super) fn unexpected_during_copy(msg: &ClientMsg) -> SqlError {
    SqlError::new(code::PROTOCOL_VIOLATION, format!("unexpected message during COPY FROM STDIN: {}", msg.name()))
}
