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
mod leg;
mod rows;

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;

pub use self::frames::{columns, command_tag, tag_count};
pub use self::leg::Leg;
use self::leg::Reading;
use self::rows::{Combiner, RowsMerge};
use crate::metrics::KindLabel;
use crate::pool::backend::BackendConn;
use crate::pool::{Pools, ShardConn};
use crate::route::merge::FanOut;
use crate::sqlerror::{SqlError, code};
use crate::topology::ShardId;
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
    /// A Bind's parameters, kept to run its statement on each shard.
    pub fn new(params: &crate::classify::params::Params, result_formats: Vec<i16>) -> Bound {
        Bound {
            params: params.values.clone(),
            param_formats: params.formats.clone(),
            param_types: params.types.clone(),
            result_formats,
        }
    }

    /// The parameters `picked` (0-based, in that order), with their types
    /// and formats, and the values `replaced` (by the same index) instead of
    /// the client's.
    fn pick(&self, picked: &[usize], replaced: &[(usize, Option<Bytes>)]) -> Bound {
        // One format code applies to every parameter; none means text.
        let format = |i: usize| match self.param_formats.as_slice() {
            [] => 0,
            [one] => *one,
            all => all.get(i).copied().unwrap_or(0),
        };
        Bound {
            params: picked
                .iter()
                .map(|&i| match replaced.iter().find(|(r, _)| *r == i) {
                    Some((_, v)) => v.clone(),
                    None => self.params.get(i).cloned().flatten(),
                })
                .collect(),
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
    /// Rows read in this order of shards first (a split INSERT's RETURNING
    /// in input order), `next` the place in it.
    order: Vec<usize>,
    next: usize,
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
    /// While parked (see `leg`): the legs' answers so far, their
    /// connections back with the transaction; `legs` is empty.
    parked: Vec<Reading>,
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
        // A bound statement in a transaction block may wait between the
        // client's Executes while the transaction goes on: paged portals.
        let paged = in_transaction && bound.is_some();
        let leg = |conn| if paged { Leg::paged(conn, leg::portal_name()) } else { Leg::new(conn) };
        let mut scatter = Scatter {
            legs: legs.into_iter().map(leg).collect(),
            parked: Vec::new(),
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
                leg.conn().conn.broken = true;
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
                FanOut::Split { parts, .. } => {
                    let part = parts.get(i).ok_or_else(|| internal("an INSERT part per shard"))?;
                    (part.sql.as_str(), Some(part))
                }
                FanOut::Rows { sql, .. } | FanOut::Aggregate { sql, .. } => (sql.as_str(), None),
            };
            match bound {
                None => frontend::query(leg_sql, &mut leg.conn().conn.wbuf).map_err(internal)?,
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
                        Some(part) => &b.pick(&part.params, &part.values),
                        None => b,
                    };
                    let portal = leg.portal().map(str::to_string);
                    let statement = Statement { sql: leg_sql, param_types: &b.param_types, portal: portal.as_deref() };
                    extended(&mut leg.conn().conn, statement, &b.param_formats, b.params.iter(), &results)?;
                }
            }
            leg.flush().await?;
        }
        if let Answer::Sent = self.answer {
            self.answer = match &*self.plan {
                FanOut::Everywhere | FanOut::Broadcast | FanOut::Split { .. } => Answer::Concat(Concat {
                    at: 0,
                    order: match &*self.plan {
                        FanOut::Split { order, .. } => order.clone(),
                        _ => Vec::new(),
                    },
                    next: 0,
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
            let shard = pools.shard(leg.conn().shard());
            let c = match shard.text_in_c() {
                Some(c) => c,
                None => {
                    let conn = leg.conn();
                    let answer = conn.conn.run_control("SHOW lc_collate").await.map_err(|e| conn.lost(e))?;
                    let c = matches!(answer.first_value(), Some("C" | "POSIX"));
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
                                self.legs[0].reading().pending = Some(frame);
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
        while let Some(&at) = c.order.get(c.next) {
            let Some(leg) = self.legs.get_mut(at) else { break };
            if leg.is_done() {
                // It ended short (it failed): its rows are missing.
                c.next += 1;
                continue;
            }
            let frame = leg.frame().await?;
            match frame[0] {
                b'D' => {
                    c.next += 1;
                    return Ok(Some(frame));
                }
                b'C' => {
                    let tag = command_tag(&frame);
                    let (verb, n) = tag_count(&tag);
                    c.verb = verb.to_string();
                    c.count += n;
                }
                b'E' => leg.reading().errored = Some(frame),
                b'N' => self.notices.extend_from_slice(&frame),
                _ => {}
            }
        }
        while c.at < self.legs.len() {
            let leg = &mut self.legs[c.at];
            if leg.is_done() {
                match leg.reading().errored.take() {
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
                            c.first_tags.push(tag.into_owned());
                        }
                    } else {
                        let (verb, n) = tag_count(&tag);
                        c.verb = verb.to_string();
                        c.count += n;
                    }
                }
                b'E' => leg.reading().errored = Some(frame),
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
    /// by LIMIT + OFFSET per shard; a paged portal is closed instead),
    /// counts the statement per shard, and gives the connections back. One
    /// that did not answer in full is marked broken (closed, or the
    /// transaction it belongs to is lost). A parked scatter has none to give.
    pub async fn finish(mut self) -> Vec<ShardConn> {
        let elapsed = self.started.elapsed().as_secs_f64();
        for leg in &mut self.legs {
            if !self.failed || self.in_transaction {
                leg.drain().await;
            }
            if !leg.is_clean() {
                leg.conn().conn.broken = true;
            }
        }
        let nodes = self.legs.iter_mut().map(|l| l.reading().node().clone());
        for node in nodes.chain(self.parked.iter().map(|r| r.node().clone())) {
            let m = &node.metrics;
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
                    leg.conn().conn.broken = true;
                }
                leg.into_conn()
            })
            .collect()
    }

    /// Lets the connections go back to the transaction between the
    /// client's Executes, keeping each leg's place (see `leg`).
    pub async fn park(&mut self) -> Vec<ShardConn> {
        let mut conns = Vec::with_capacity(self.legs.len());
        for leg in std::mem::take(&mut self.legs) {
            let (conn, reading) = leg.park().await;
            conns.push(conn);
            self.parked.push(reading);
        }
        conns
    }

    /// The shards of a parked scatter, in its legs' order.
    pub fn parked_on(&self) -> Vec<ShardId> {
        self.parked.iter().map(Reading::shard).collect()
    }

    /// Goes on with the connections of `parked_on`, in that order.
    pub fn resume(&mut self, conns: Vec<ShardConn>) {
        self.legs = conns.into_iter().zip(self.parked.drain(..)).map(|(c, r)| Leg::resume(c, r)).collect();
    }

    /// The shards' labels, for messages.
    pub fn labels(&self) -> String {
        let legs = self.legs.iter().map(Leg::label);
        legs.chain(self.parked.iter().map(Reading::label)).collect::<Vec<_>>().join(", ")
    }
}

/// The statement a leg runs: its text, parameter types, and the portal
/// it is bound to (`None`: the unnamed portal, executed to its end).
struct Statement<'a> {
    sql: &'a str,
    param_types: &'a [u32],
    portal: Option<&'a str>,
}

/// Parse of the unnamed statement, Bind, Describe, Execute and Sync, with
/// the parameters given as bytes (`None`: NULL). A named portal is
/// executed a page at a time (`leg::PAGE`).
fn extended<'a>(
    conn: &mut BackendConn,
    statement: Statement<'_>,
    param_formats: &[i16],
    params: impl ExactSizeIterator<Item = &'a Option<impl AsRef<[u8]> + 'a>>,
    result_formats: &[i16],
) -> Result<(), SqlError> {
    let mut parse = BytesMut::new();
    frontend::parse("", statement.sql, statement.param_types.iter().copied(), &mut parse).map_err(internal)?;
    conn.write_parse(&parse);
    let buf = &mut conn.wbuf;
    let (portal, rows) = match statement.portal {
        Some(name) => (name, leg::PAGE),
        None => ("", 0),
    };
    frontend::bind(
        portal,
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
    frontend::describe(b'P', portal, buf).map_err(internal)?;
    frontend::execute(portal, rows, buf).map_err(internal)?;
    frontend::sync(buf);
    Ok(())
}

/// shardcar's own failure, with its reason.
pub(crate) fn internal(e: impl std::fmt::Display) -> SqlError {
    SqlError::new(code::INTERNAL_ERROR, e.to_string())
}
