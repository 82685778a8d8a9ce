//! Statements across shards: one connection per shard, the statement (as
//! the route's plan rewrites or splits it) sent to all of them at once, and
//! their answers merged as they arrive.
//!
//! A `Scatter` is pulled a row at a time: it holds one row per shard, the
//! client gets rows as they merge, a shard whose rows are not needed yet
//! waits behind TCP flow control, and a portal can stop after N rows and
//! go on later. What it cannot merge, or what a shard answers with an
//! error, comes back as a `Failure` for the session to report.

pub mod compare;
pub mod copy;
pub mod frames;
mod rows;

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;

pub use self::frames::{columns, command_tag, tag_count};
use self::rows::{Combiner, RowsMerge};
use crate::metrics::KindLabel;
use crate::pool::backend::BackendConn;
use crate::pool::in_flight::Ticket;
use crate::pool::{Pools, ShardConn};
use crate::route::merge::FanOut;
use crate::sqlerror::{SqlError, code};
use crate::wire::reply;

/// A statement the client sent with the extended protocol, bound: shards
/// get it the same way (Parse, Bind, Describe, Execute, Sync).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub params: Vec<Option<Bytes>>,
    pub param_formats: Vec<i16>,
    pub param_types: Vec<u32>,
    pub result_formats: Vec<i16>,
}

impl Bound {
    /// The parameters `picked` (0-based, in that order), with their types and formats.
    fn pick(&self, picked: &[usize]) -> Bound {
        // One format code applies to every parameter; none means text.
        let format = |i: usize| match self.param_formats.as_slice() {
            [] => 0,
            [one] => *one,
            all => all.get(i).copied().unwrap_or(0),
        };
        Bound {
            params: picked.iter().map(|&i| self.params.get(i).cloned().flatten()).collect(),
            param_formats: picked.iter().map(|&i| format(i)).collect(),
            param_types: picked.iter().map(|&i| self.param_types.get(i).copied().unwrap_or(0)).collect(),
            result_formats: self.result_formats.clone(),
        }
    }
}

/// Why a fanned-out statement did not complete.
#[derive(Debug)]
pub enum Failure {
    /// A shard's ErrorResponse, passed on as the shard sent it (after a
    /// WARNING saying where the statement ran, when that matters).
    Shard(BytesMut),
    /// shardcar's own error.
    Own(SqlError),
}

impl From<SqlError> for Failure {
    fn from(e: SqlError) -> Self {
        Failure::Own(e)
    }
}

/// One shard's connection for this statement.
pub struct Leg {
    conn: ShardConn,
    /// Its ReadyForQuery arrived: nothing more will come.
    done: bool,
    /// A message read ahead, returned by the next `frame`.
    pending: Option<BytesMut>,
    /// The shard's error, kept until its answer is read in full.
    errored: Option<BytesMut>,
    /// Counts it among the server's running statements until it is dropped.
    _running: Ticket,
}

impl Leg {
    pub fn new(conn: ShardConn) -> Leg {
        let _running = conn.node.running.begin();
        Leg { conn, done: false, pending: None, errored: None, _running }
    }

    pub fn conn(&mut self) -> &mut ShardConn {
        &mut self.conn
    }

    pub fn label(&self) -> &str {
        self.conn.label()
    }

    /// Its ReadyForQuery arrived.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The connection answered in full and can serve another statement.
    pub fn is_clean(&self) -> bool {
        self.done && !self.conn.conn.broken
    }

    /// The next message of the shard's answer (ParseComplete and
    /// BindComplete of a bound statement are not part of it).
    pub async fn frame(&mut self) -> Result<BytesMut, SqlError> {
        if let Some(f) = self.pending.take() {
            return Ok(f);
        }
        let read = loop {
            match self.conn.conn.read_frame().await {
                Ok(f) if matches!(f.first(), Some(b'1' | b'2')) => {}
                other => break other,
            }
        };
        match read {
            Ok(f) => {
                if f.first() == Some(&b'Z') {
                    self.done = true;
                    self.conn.conn.status = f.get(5).copied().unwrap_or(b'I');
                }
                Ok(f)
            }
            Err(e) => {
                self.conn.conn.broken = true;
                self.done = true;
                Err(self.conn.lost(e))
            }
        }
    }

    /// Reads and drops what is left of the answer.
    pub async fn drain(&mut self) {
        while !self.done {
            if self.frame().await.is_err() {
                return;
            }
        }
    }

    /// Sends what is queued for the shard.
    pub async fn flush(&mut self) -> Result<(), SqlError> {
        let result = self.conn.conn.flush().await;
        result.map_err(|e| self.conn.lost(e))
    }

    /// Expects another answer on the same connection (shardcar's own query).
    fn reopen(&mut self) {
        self.done = false;
    }

    pub fn into_conn(self) -> ShardConn {
        self.conn
    }
}

/// What the shards' answers are becoming.
enum Answer {
    /// Sent; nothing read yet.
    Sent,
    /// The same statement's answers, one shard after another (DDL, UPDATE
    /// or DELETE everywhere, a split INSERT).
    Concat(Concat),
    /// Rows of a SELECT, merged in ORDER BY order (or concatenated).
    Rows(RowsMerge),
    /// Partial aggregates combined by Postgres on the first shard.
    Combined(Combiner),
}

/// Answers read shard by shard; rows from every shard, or only the first.
struct Concat {
    /// The shard being read.
    at: usize,
    /// Only the first shard's rows and tag count (DDL, reference-table writes).
    first_only: bool,
    description: Option<Bytes>,
    /// The verb of summed counts.
    verb: String,
    /// The first shard's tags, one per statement (DDL sent as one string).
    first_tags: Vec<String>,
    count: u64,
    errors: Vec<(String, BytesMut)>,
    succeeded: Vec<String>,
}

impl Concat {
    /// The answer is a COPY TO's data (its description a CopyOutResponse).
    fn copies_out(&self) -> bool {
        self.description.as_ref().is_some_and(|d| d.first() == Some(&b'H'))
    }
}

pub struct Scatter {
    legs: Vec<Leg>,
    plan: Arc<FanOut>,
    result_formats: Vec<i16>,
    answer: Answer,
    /// Notices from the shards, for the client.
    notices: BytesMut,
    /// Legs are one transaction's participants: a failure fails it as a
    /// whole (no warning about where the statement ran).
    in_transaction: bool,
    started: Instant,
    kind: KindLabel,
    failed: bool,
}

impl Scatter {
    /// Sends `sql` (or each shard's part of it) to every leg, in the order
    /// of the plan's shards. `text_in_c` is learnt from the legs first when
    /// the merge orders text and a shard's collation is not known yet.
    pub async fn start(
        legs: Vec<ShardConn>,
        pools: &Pools,
        sql: &str,
        bound: Option<&Bound>,
        plan: Arc<FanOut>,
        in_transaction: bool,
    ) -> Result<Scatter, (Failure, Vec<ShardConn>)> {
        let kind = if plan.is_read() { KindLabel::Read } else { KindLabel::Write };
        let mut scatter = Scatter {
            legs: legs.into_iter().map(Leg::new).collect(),
            plan,
            result_formats: bound.map(|b| b.result_formats.clone()).unwrap_or_default(),
            answer: Answer::Sent,
            notices: BytesMut::new(),
            in_transaction,
            started: Instant::now(),
            kind,
            failed: false,
        };
        let sent = scatter.send(pools, sql, bound).await;
        if let Err(e) = sent {
            // Some shards may be running it: their answers must not reach
            // the next user of these connections.
            for leg in &mut scatter.legs {
                leg.conn.conn.broken = true;
            }
            return Err((Failure::Own(e), scatter.legs.into_iter().map(Leg::into_conn).collect()));
        }
        Ok(scatter)
    }

    async fn send(&mut self, pools: &Pools, sql: &str, bound: Option<&Bound>) -> Result<(), SqlError> {
        let text_in_c = match &*self.plan {
            FanOut::Rows { order, .. } if !order.is_empty() => self.text_in_c(pools).await?,
            _ => true,
        };
        for (i, leg) in self.legs.iter_mut().enumerate() {
            // A split INSERT's part binds only its rows' parameters.
            let (leg_sql, picked) = match &*self.plan {
                FanOut::Everywhere | FanOut::Broadcast => (sql, None),
                FanOut::Split(parts) => {
                    let part = parts.get(i).ok_or_else(|| internal("an INSERT part per shard"))?;
                    (part.sql.as_str(), Some(&part.params))
                }
                FanOut::Rows { sql, .. } | FanOut::Aggregate { sql, .. } => (sql.as_str(), None),
            };
            match bound {
                None => frontend::query(leg_sql, &mut leg.conn.conn.wbuf).map_err(internal)?,
                Some(b) => {
                    let results: Vec<i16> = match &*self.plan {
                        // Partial aggregates come back as text; Postgres converts the combined row.
                        FanOut::Aggregate { .. } => vec![0],
                        // Hidden sort columns (text) follow the client's columns.
                        FanOut::Rows { junk, .. } if b.result_formats.len() > 1 => {
                            b.result_formats.iter().copied().chain(std::iter::repeat_n(0, *junk)).collect()
                        }
                        _ => b.result_formats.clone(),
                    };
                    let b = match picked {
                        Some(params) => &b.pick(params),
                        None => b,
                    };
                    extended(&mut leg.conn.conn, leg_sql, &b.param_types, &b.param_formats, b.params.iter(), &results)?;
                }
            }
            leg.flush().await?;
        }
        if let Answer::Sent = self.answer {
            self.answer = match &*self.plan {
                FanOut::Everywhere | FanOut::Broadcast | FanOut::Split(_) => Answer::Concat(Concat {
                    at: 0,
                    first_only: matches!(*self.plan, FanOut::Everywhere),
                    description: None,
                    verb: String::new(),
                    first_tags: Vec::new(),
                    count: 0,
                    errors: Vec::new(),
                    succeeded: Vec::new(),
                }),
                FanOut::Rows { .. } => Answer::Rows(RowsMerge::new(&self.plan, text_in_c)),
                FanOut::Aggregate { .. } => Answer::Combined(Combiner::new(&self.plan)),
            };
        }
        Ok(())
    }

    /// Whether every leg's shard orders text by bytes, asked of each shard once.
    async fn text_in_c(&mut self, pools: &Pools) -> Result<bool, SqlError> {
        let mut all = true;
        for leg in &mut self.legs {
            let shard = pools.shard(leg.conn.shard());
            let c = match shard.text_in_c() {
                Some(c) => c,
                None => {
                    let answer = leg.conn.conn.run_control("SHOW lc_collate").await.map_err(|e| leg.conn.lost(e))?;
                    let value = answer.rows.first().and_then(|r| r.first().cloned().flatten());
                    let c = matches!(value.as_deref(), Some("C" | "POSIX"));
                    shard.set_text_in_c(c);
                    c
                }
            };
            all &= c;
        }
        Ok(all)
    }

    /// The answer's RowDescription; `None` when it returns no rows.
    pub async fn describe(&mut self) -> Result<Option<Bytes>, Failure> {
        let result = self.describe_inner().await;
        self.failed |= result.is_err();
        result
    }

    async fn describe_inner(&mut self) -> Result<Option<Bytes>, Failure> {
        match &mut self.answer {
            Answer::Sent => Err(Failure::Own(internal("described before it was sent"))),
            Answer::Concat(c) => {
                if c.at == 0 && c.description.is_none() && !self.legs.is_empty() {
                    // The first shard's first message says whether rows come
                    // (after its NoData for the Describe shardcar sent: a COPY
                    // TO's CopyOutResponse follows that).
                    loop {
                        let frame = self.legs[0].frame().await?;
                        match frame[0] {
                            // A RowDescription, or a COPY TO's CopyOutResponse.
                            b'T' | b'H' => {
                                c.description = Some(frame.freeze());
                                break;
                            }
                            b'N' => self.notices.extend_from_slice(&frame),
                            b'n' => {}
                            b'C' | b'E' | b'Z' | b'I' | b'D' | b's' => {
                                self.legs[0].pending = Some(frame);
                                break;
                            }
                            _ => {}
                        }
                    }
                }
                Ok(c.description.clone())
            }
            Answer::Rows(m) => m.describe(&mut self.legs, &mut self.notices).await.map(Some),
            Answer::Combined(c) => c.describe(&mut self.legs, &mut self.notices, &self.result_formats).await.map(Some),
        }
    }

    /// The next row for the client; `None` after the last.
    pub async fn next_row(&mut self) -> Result<Option<BytesMut>, Failure> {
        let result = self.next_inner().await;
        self.failed |= result.is_err();
        result
    }

    async fn next_inner(&mut self) -> Result<Option<BytesMut>, Failure> {
        if let Answer::Sent = self.answer {
            return Err(Failure::Own(internal("read before it was sent")));
        }
        if let Answer::Concat(_) = self.answer {
            return self.next_concat().await;
        }
        self.describe_inner().await?;
        match &mut self.answer {
            Answer::Rows(m) => m.next(&mut self.legs, &mut self.notices).await,
            Answer::Combined(c) => c.next(&mut self.legs, &mut self.notices).await,
            Answer::Sent | Answer::Concat(_) => Ok(None),
        }
    }

    async fn next_concat(&mut self) -> Result<Option<BytesMut>, Failure> {
        self.describe_inner().await?;
        let Answer::Concat(c) = &mut self.answer else { return Ok(None) };
        while c.at < self.legs.len() {
            let leg = &mut self.legs[c.at];
            if leg.done {
                match leg.errored.take() {
                    Some(e) => c.errors.push((leg.label().to_string(), e)),
                    None => c.succeeded.push(leg.label().to_string()),
                }
                c.at += 1;
                continue;
            }
            let frame = leg.frame().await?;
            let first = c.at == 0;
            match frame[0] {
                b'D' | b'd' if first || !c.first_only => return Ok(Some(frame)),
                b'C' => {
                    let tag = command_tag(&frame);
                    if c.first_only {
                        if first {
                            c.first_tags.push(tag);
                        }
                    } else {
                        let (verb, n) = tag_count(&tag);
                        c.verb = verb.to_string();
                        c.count += n;
                    }
                }
                b'E' => leg.errored = Some(frame),
                b'N' if first => self.notices.extend_from_slice(&frame),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Its answer is a COPY TO's data (which a row limit does not cut: Postgres
    /// runs a COPY to its end whatever an Execute's limit).
    pub fn copies_out(&self) -> bool {
        matches!(&self.answer, Answer::Concat(c) if c.copies_out())
    }

    /// Notices from the shards since the last call.
    pub fn take_notices(&mut self) -> BytesMut {
        std::mem::take(&mut self.notices)
    }

    /// After the last row: the CommandComplete, or the failure it ended in.
    pub fn complete(&mut self) -> Result<BytesMut, Failure> {
        let mut out = BytesMut::new();
        match &mut self.answer {
            Answer::Concat(c) => {
                if let Some((_, first)) = c.errors.first() {
                    self.failed = true;
                    if !self.in_transaction {
                        let ran = if c.succeeded.is_empty() { "no shard".to_string() } else { c.succeeded.join(", ") };
                        let failed: Vec<&str> = c.errors.iter().map(|(l, _)| l.as_str()).collect();
                        let message = format!(
                            "the statement runs on every shard, without a transaction across them: it succeeded on {ran} \
                             and failed on {}; the error of {} follows",
                            failed.join(", "),
                            failed[0]
                        );
                        reply::notice(&mut out, "WARNING", code::WARNING, &message);
                    }
                    out.extend_from_slice(first);
                    return Err(Failure::Shard(out));
                }
                if c.copies_out() {
                    // Each shard's COPY TO ended its data; the client gets one end.
                    out.extend_from_slice(&[b'c', 0, 0, 0, 4]);
                }
                if c.first_only {
                    for tag in &c.first_tags {
                        reply::command_complete(&mut out, tag);
                    }
                } else {
                    reply::command_complete(&mut out, &format!("{} {}", c.verb, c.count));
                }
            }
            Answer::Rows(m) => reply::command_complete(&mut out, &format!("SELECT {}", m.sent())),
            Answer::Combined(c) => reply::command_complete(&mut out, &format!("SELECT {}", c.sent())),
            Answer::Sent => return Err(Failure::Own(internal("completed before it was sent"))),
        }
        Ok(out)
    }

    /// Reads what each shard has left (rows a LIMIT did not need: bounded
    /// by LIMIT + OFFSET per shard), counts the statement per shard, and
    /// gives the connections back. One that did not answer in full is
    /// marked broken (closed, or the transaction it belongs to is lost).
    pub async fn finish(mut self) -> Vec<ShardConn> {
        let elapsed = self.started.elapsed().as_secs_f64();
        for leg in &mut self.legs {
            if !self.failed || self.in_transaction {
                leg.drain().await;
            }
            if !leg.is_clean() {
                leg.conn.conn.broken = true;
            }
            let m = &leg.conn.node.metrics;
            m.statements(self.kind).inc();
            m.observe_duration(elapsed);
            if self.failed {
                m.errors(self.kind).inc();
            }
        }
        self.legs.into_iter().map(Leg::into_conn).collect()
    }

    /// Gives the connections back without reading on (the client left, or
    /// shardcar gave up): they are closed or lose their transaction.
    pub fn abandon(self) -> Vec<ShardConn> {
        self.legs
            .into_iter()
            .map(|mut leg| {
                if !leg.is_clean() {
                    leg.conn.conn.broken = true;
                }
                leg.into_conn()
            })
            .collect()
    }

    /// The shards' labels, for messages.
    pub fn labels(&self) -> String {
        self.legs.iter().map(Leg::label).collect::<Vec<_>>().join(", ")
    }
}

/// Parse, Bind, Describe, Execute and Sync of the unnamed statement and
/// portal, with the parameters given as bytes (`None`: NULL).
fn extended<'a>(
    conn: &mut BackendConn,
    sql: &str,
    param_types: &[u32],
    param_formats: &[i16],
    params: impl ExactSizeIterator<Item = &'a Option<impl AsRef<[u8]> + 'a>>,
    result_formats: &[i16],
) -> Result<(), SqlError> {
    let mut parse = BytesMut::new();
    frontend::parse("", sql, param_types.iter().copied(), &mut parse).map_err(internal)?;
    conn.write_parse(&parse);
    let buf = &mut conn.wbuf;
    frontend::bind(
        "",
        "",
        param_formats.iter().copied(),
        params,
        |p, buf| match p {
            Some(v) => {
                buf.extend_from_slice(v.as_ref());
                Ok(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        result_formats.iter().copied(),
        buf,
    )
    .map_err(|_| internal("cannot encode the statement's parameters"))?;
    frontend::describe(b'P', "", buf).map_err(internal)?;
    frontend::execute("", 0, buf).map_err(internal)?;
    frontend::sync(buf);
    Ok(())
}

/// shardcar's own failure, with its reason.
pub(crate) fn internal(e: impl std::fmt::Display) -> SqlError {
    SqlError::new(code::INTERNAL_ERROR, e.to_string())
}
