//! Statements across shards, outside a transaction, sent as a simple query:
//! one connection per target shard, the (rewritten) statement sent to all
//! of them at once, and the answers merged as they arrive.
//!
//! Rows stream: shardcar holds one row per shard at a time and writes to
//! the client as it goes, so memory does not grow with the result; a shard
//! whose rows are not wanted yet waits behind TCP flow control.

pub mod compare;
pub mod copy;

use std::cmp::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use self::compare::Order;
use crate::metrics::KindLabel;
use crate::pool::{Checkout, Pools, Role};
use crate::route::merge::{Column, Combine, FanOut, SortKey};
use crate::settings::Settings;
use crate::sqlerror::{SqlError, code};
use crate::wire::{ClientConn, reply};

/// A statement the client sent with the extended protocol, bound: shards
/// get it the same way (Parse, Bind, Describe, Execute, Sync).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub params: Vec<Option<Bytes>>,
    pub param_formats: Vec<i16>,
    pub param_types: Vec<u32>,
    pub result_formats: Vec<i16>,
    /// The client described the portal: it is owed a RowDescription or NoData.
    pub describe: bool,
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
            describe: self.describe,
        }
    }
}

/// Where a fanned-out statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub shards: Vec<usize>,
    pub role: Role,
    pub kind: KindLabel,
}

/// Client bytes buffered before shardcar waits for the client to take them.
const CLIENT_CHUNK: usize = 64 * 1024;

/// One shard's connection for this statement.
pub struct Leg {
    checkout: Checkout,
    /// Its ReadyForQuery arrived: nothing more will come.
    done: bool,
}

impl Leg {
    pub fn new(checkout: Checkout) -> Leg {
        Leg { checkout, done: false }
    }

    pub fn into_checkout(self) -> Checkout {
        self.checkout
    }

    pub fn conn(&mut self) -> &mut crate::pool::Pooled {
        &mut self.checkout.conn
    }

    pub fn node(&self) -> &Arc<crate::pool::Node> {
        &self.checkout.node
    }

    /// Its ReadyForQuery arrived.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// As a participant in a commit across shards.
    pub fn participant(&mut self) -> crate::twophase::Participant<'_> {
        crate::twophase::Participant { conn: &mut self.checkout.conn, label: &self.checkout.node.label }
    }

    /// Gives the connection back to the pool, or closes it (so its server
    /// stops what it runs) when it did not answer in full, is left in a
    /// transaction, or `close` says so.
    pub fn release(self, close: bool) {
        let clean = self.is_clean() && self.checkout.conn.status == b'I';
        if close || !clean {
            drop(deadpool::managed::Object::take(self.checkout.conn));
        }
    }

    /// The connection answered in full and can serve another statement.
    pub fn is_clean(&self) -> bool {
        self.done && !self.checkout.conn.broken
    }

    /// The next message of the shard's answer (ParseComplete and
    /// BindComplete of a bound statement are not part of it).
    pub async fn frame(&mut self) -> Result<BytesMut, SqlError> {
        let read = loop {
            match self.checkout.conn.read_frame().await {
                Ok(f) if matches!(f.first(), Some(b'1' | b'2')) => {}
                other => break other,
            }
        };
        match read {
            Ok(f) => {
                if f.first() == Some(&b'Z') {
                    self.done = true;
                    self.checkout.conn.status = f.get(5).copied().unwrap_or(b'I');
                }
                Ok(f)
            }
            Err(e) => {
                self.checkout.conn.broken = true;
                self.done = true;
                Err(SqlError::new(code::CONNECTION_FAILURE, format!("lost {}: {e}", self.checkout.node.label)))
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

    pub fn label(&self) -> &str {
        &self.checkout.node.label
    }
}

/// Runs `plan` for `sql` on `targets`, each on a connection of its own
/// outside a transaction, and writes the answer (without ReadyForQuery) to
/// the client. A shard's error goes to the client as the shard sent it; an
/// error of shardcar's own is returned.
pub async fn run(
    pools: &Pools,
    settings: &Settings,
    client: &mut ClientConn,
    sql: &str,
    bound: Option<&Bound>,
    plan: &FanOut,
    targets: &Targets,
) -> Result<(), SqlError> {
    let mut legs = Vec::with_capacity(targets.shards.len());
    for &shard in &targets.shards {
        let mut checkout = pools.checkout(shard, targets.role).await?;
        checkout.adopt(settings).await?;
        legs.push(Leg::new(checkout));
    }
    let result = execute(&mut legs, client, sql, bound, plan, targets.kind, false).await;
    for leg in legs {
        // The client may be gone or shardcar gave up mid-answer: then the
        // connection is closed rather than read on or reused.
        leg.release(false);
    }
    result
}

/// Runs `plan` for `sql` on the given connections (one per shard, in the
/// order of the plan's shards) and writes the merged answer to the client.
/// `in_transaction`: the legs are participants of one transaction, so a
/// failure fails it as a whole (no warning about partial effects).
pub async fn execute(
    legs: &mut [Leg],
    client: &mut ClientConn,
    sql: &str,
    bound: Option<&Bound>,
    plan: &FanOut,
    kind: KindLabel,
    in_transaction: bool,
) -> Result<(), SqlError> {
    let started = Instant::now();
    // Merging compares values as text; a combined aggregate is converted by Postgres.
    let describe = bound.is_none_or(|b| b.describe);
    let text_in_c = match plan {
        FanOut::Rows { order, .. } if !order.is_empty() => collation_is_c(&mut legs[0]).await?,
        _ => true,
    };
    if let Err(e) = send(legs, sql, bound, plan).await {
        // Some shards may be running it: their answers must not reach the
        // next user of these connections.
        for leg in legs.iter_mut() {
            leg.checkout.conn.broken = true;
        }
        return Err(e);
    }
    let result = match plan {
        FanOut::Everywhere => everywhere(legs, client, false, describe, in_transaction).await,
        FanOut::Broadcast | FanOut::Split(_) => everywhere(legs, client, true, describe, in_transaction).await,
        FanOut::Rows { order, limit, offset, junk, distinct, .. } => {
            let merge =
                Merge { order, window: Window { offset: *offset, limit: *limit }, junk: *junk, distinct: *distinct };
            rows(legs, client, &merge, describe, text_in_c).await
        }
        FanOut::Aggregate { combine, names, casts, tail, .. } => {
            let formats = bound.map(|b| b.result_formats.clone()).unwrap_or_default();
            let shape = Combined { combine, names, casts, tail };
            aggregate(legs, client, &shape, describe, &formats).await
        }
    };
    for leg in legs.iter_mut() {
        if result.is_ok() {
            // What a LIMIT left unread: bounded by LIMIT + OFFSET rows per shard.
            leg.drain().await;
        }
        let m = &leg.checkout.node.metrics;
        m.statements(kind).inc();
        m.duration.observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            m.errors(kind).inc();
        }
    }
    result
}

/// Sends each leg its statement.
async fn send(legs: &mut [Leg], sql: &str, bound: Option<&Bound>, plan: &FanOut) -> Result<(), SqlError> {
    for (i, leg) in legs.iter_mut().enumerate() {
        // A split INSERT's part binds only its rows' parameters.
        let (shard_sql, picked) = match plan {
            FanOut::Everywhere | FanOut::Broadcast => (sql, None),
            FanOut::Split(parts) => {
                let part = parts.get(i).ok_or_else(|| internal("an INSERT part per shard"))?;
                (part.sql.as_str(), Some(&part.params))
            }
            FanOut::Rows { sql, .. } | FanOut::Aggregate { sql, .. } => (sql.as_str(), None),
        };
        let buf = &mut leg.checkout.conn.wbuf;
        match bound {
            None => frontend::query(shard_sql, buf).map_err(internal)?,
            Some(b) => {
                let results: Vec<i16> = match plan {
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
                frontend::parse("", shard_sql, b.param_types.iter().copied(), buf).map_err(internal)?;
                frontend::bind(
                    "",
                    "",
                    b.param_formats.iter().copied(),
                    b.params.iter(),
                    |p, buf| match p {
                        Some(v) => {
                            buf.extend_from_slice(v);
                            Ok(postgres_protocol::IsNull::No)
                        }
                        None => Ok(postgres_protocol::IsNull::Yes),
                    },
                    results,
                    buf,
                )
                .map_err(|_| internal("cannot encode the statement's parameters"))?;
                frontend::describe(b'P', "", buf).map_err(internal)?;
                frontend::execute("", 0, buf).map_err(internal)?;
                frontend::sync(buf);
            }
        }
        if let Err(e) = leg.checkout.conn.flush().await {
            return Err(SqlError::new(code::CONNECTION_FAILURE, format!("lost {}: {e}", leg.label())));
        }
    }
    Ok(())
}

/// shardcar's own failure, with its reason.
pub(crate) fn internal(e: impl std::fmt::Display) -> SqlError {
    SqlError::new(code::INTERNAL_ERROR, e.to_string())
}

/// The shards' collation, asked once: byte order is text order only under C.
async fn collation_is_c(leg: &mut Leg) -> Result<bool, SqlError> {
    static IS_C: OnceLock<bool> = OnceLock::new();
    if let Some(c) = IS_C.get() {
        return Ok(*c);
    }
    frontend::query("SHOW lc_collate", &mut leg.checkout.conn.wbuf).map_err(internal)?;
    leg.checkout.conn.flush().await.map_err(|e| SqlError::new(code::CONNECTION_FAILURE, e.to_string()))?;
    let mut value = None;
    loop {
        let frame = leg.frame().await?;
        if frame[0] == b'D' {
            value = columns(&frame).first().cloned().flatten().map(|v| v.to_vec());
        }
        if frame[0] == b'Z' {
            break;
        }
    }
    leg.done = false;
    let c = matches!(value.as_deref(), Some(b"C" | b"POSIX"));
    Ok(*IS_C.get_or_init(|| c))
}

/// OFFSET and LIMIT over the merged rows.
#[derive(Clone, Copy)]
struct Window {
    offset: u64,
    limit: Option<u64>,
}

impl Window {
    /// Whether the `n`-th merged row (zero-based) is sent; `None` once the
    /// limit is reached.
    fn take(&self, n: u64) -> Option<bool> {
        match self.limit {
            Some(l) if n >= self.offset + l => None,
            _ => Some(n >= self.offset),
        }
    }
}

/// The same statement on every target shard. DDL: the first shard's
/// answer. `broadcast` (UPDATE/DELETE): every shard's RETURNING rows, as
/// they come, and one CommandComplete with the counts summed. When a shard
/// fails: a warning saying where it ran and failed, then the first failing
/// shard's error as it sent it.
async fn everywhere(
    legs: &mut [Leg],
    client: &mut ClientConn,
    broadcast: bool,
    describe: bool,
    in_transaction: bool,
) -> Result<(), SqlError> {
    let mut answer = BytesMut::new();
    let mut first_error = None;
    let (mut succeeded, mut failed) = (Vec::new(), Vec::new());
    let (mut described, mut tag, mut count) = (false, String::new(), 0u64);
    for (i, leg) in legs.iter_mut().enumerate() {
        let mut error = None;
        while !leg.done {
            let frame = leg.frame().await?;
            match frame[0] {
                b'E' => error = Some(frame),
                b'Z' => {}
                b'T' | b'n' if !describe => {}
                b'T' | b'n' if broadcast && !described => {
                    client.out.extend_from_slice(&frame);
                    described = true;
                }
                b'D' if broadcast => {
                    client.out.extend_from_slice(&frame);
                    if client.out.len() >= CLIENT_CHUNK {
                        client.flush().await?;
                    }
                }
                b'C' if broadcast => {
                    let text = String::from_utf8_lossy(&frame[5..frame.len() - 1]).into_owned();
                    let (verb, n) = text.rsplit_once(' ').unwrap_or((text.as_str(), "0"));
                    tag = verb.to_string();
                    count += n.parse::<u64>().unwrap_or(0);
                }
                _ if i == 0 && !broadcast => answer.extend_from_slice(&frame),
                _ => {}
            }
        }
        match error {
            Some(e) => {
                failed.push(leg.label().to_string());
                first_error.get_or_insert(e);
            }
            None => succeeded.push(leg.label().to_string()),
        }
    }
    let Some(error) = first_error else {
        if broadcast {
            reply::command_complete(&mut client.out, &format!("{tag} {count}"));
        } else {
            client.out.extend_from_slice(&answer);
        }
        return Ok(());
    };
    if in_transaction {
        // The transaction fails as a whole: nothing needs explaining.
        client.out.extend_from_slice(&error);
        return Ok(());
    }
    let ran = if succeeded.is_empty() { "no shard".to_string() } else { succeeded.join(", ") };
    let message = format!(
        "the statement runs on every shard, without a transaction across them: it succeeded on {ran} \
         and failed on {}; the error of {} follows",
        failed.join(", "),
        failed[0]
    );
    reply::notice(&mut client.out, "WARNING", code::WARNING, &message);
    client.out.extend_from_slice(&error);
    Ok(())
}

/// The columns of a DataRow frame (type, length, count, then per column a
/// length and the bytes; -1 is NULL).
fn columns(frame: &[u8]) -> Vec<Option<&[u8]>> {
    let mut out = Vec::new();
    let Some(count) = frame.get(5..7) else { return out };
    let count = i16::from_be_bytes([count[0], count[1]]).max(0) as usize;
    let mut pos = 7;
    for _ in 0..count {
        let Some(len) = frame.get(pos..pos + 4) else { break };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = pos + len as usize;
            out.push(frame.get(pos..end));
            pos = end;
        }
    }
    out
}

/// A DataRow frame with only its first `visible` columns.
fn without_junk(frame: &[u8], visible: usize) -> BytesMut {
    let cols = columns(frame);
    let mut data = BytesMut::new();
    for col in cols.iter().take(visible) {
        match col {
            Some(v) => {
                data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                data.extend_from_slice(v);
            }
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let mut out = BytesMut::new();
    crate::wire::encode(&mut out, DataRow::new(data, visible as i16));
    out
}

/// The fields of a RowDescription frame.
fn fields(frame: &[u8]) -> Result<Vec<FieldDescription>, SqlError> {
    let mut buf = BytesMut::from(frame);
    let Ok(Some(Message::RowDescription(body))) = Message::parse(&mut buf) else {
        return Err(internal("a shard sent a malformed RowDescription"));
    };
    body.fields()
        .map(|f| {
            Ok(FieldDescription::new(
                f.name().to_string(),
                f.table_oid() as i32,
                f.column_id(),
                f.type_oid(),
                f.type_size(),
                f.type_modifier(),
                f.format(),
            ))
        })
        .collect()
        .map_err(internal)
}

/// The first message of each shard's answer: its RowDescription, or the
/// shard's error (sent to the client; `None` returned).
async fn descriptions(legs: &mut [Leg], client: &mut ClientConn) -> Result<Option<Vec<Bytes>>, SqlError> {
    let mut out = Vec::with_capacity(legs.len());
    for leg in legs.iter_mut() {
        loop {
            let frame = leg.frame().await?;
            match frame[0] {
                b'T' => {
                    out.push(frame.freeze());
                    break;
                }
                b'E' => {
                    client.out.extend_from_slice(&frame);
                    return Ok(None);
                }
                b'N' => client.out.extend_from_slice(&frame),
                b'C' | b'I' => {
                    return Err(internal(format!("{} answered a SELECT without rows", leg.label())));
                }
                _ => {}
            }
        }
    }
    Ok(Some(out))
}

/// The next row of a shard; `None` at its end (or its error, which goes to
/// the client: `Err(None)`).
async fn next_row(leg: &mut Leg, client: &mut ClientConn) -> Result<Option<BytesMut>, Option<SqlError>> {
    loop {
        if leg.done {
            return Ok(None);
        }
        let frame = leg.frame().await.map_err(Some)?;
        match frame[0] {
            b'D' => return Ok(Some(frame)),
            b'E' => {
                client.out.extend_from_slice(&frame);
                return Err(None);
            }
            b'N' => client.out.extend_from_slice(&frame),
            _ => {}
        }
    }
}

/// How shards' rows become the client's.
struct Merge<'a> {
    order: &'a [SortKey],
    window: Window,
    junk: usize,
    distinct: bool,
}

async fn rows(
    legs: &mut [Leg],
    client: &mut ClientConn,
    merge: &Merge<'_>,
    describe: bool,
    text_in_c: bool,
) -> Result<(), SqlError> {
    let Merge { order, window, junk, distinct } = *merge;
    let Some(descriptions) = descriptions(legs, client).await? else { return Ok(()) };
    let all = fields(&descriptions[0])?;
    for (d, leg) in descriptions.iter().zip(legs.iter()).skip(1) {
        let other = fields(d)?;
        let same = other.len() == all.len() && other.iter().zip(&all).all(|(a, b)| a.type_id == b.type_id);
        if !same {
            return Err(SqlError::new(
                code::FEATURE_NOT_SUPPORTED,
                format!("{} answers with other columns than {}", leg.label(), legs[0].label()),
            )
            .hint("the table differs between shards; make its definition the same on every shard"));
        }
    }
    let visible = all.len().saturating_sub(junk);
    let mut keys = Vec::with_capacity(order.len());
    for key in order {
        let at = match &key.column {
            Column::At(i) => *i,
            Column::Named(name) => all.iter().position(|f| f.name == *name).ok_or_else(|| {
                SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("cannot merge shards' rows: ORDER BY {name} is not a column of the result"),
                )
            })?,
        };
        let field = all.get(at).ok_or_else(|| internal("ORDER BY past the result's columns"))?;
        let how = Order::of(field.type_id, text_in_c, field.format_code == 1).map_err(|why| {
            SqlError::new(code::FEATURE_NOT_SUPPORTED, format!("cannot merge shards' rows by {}: {why}", field.name))
                .hint("target one shard with /* shardcar: shard=... */, or order by another column")
        })?;
        keys.push((at, how, key));
    }
    if !describe {
    } else if junk == 0 {
        client.out.extend_from_slice(&descriptions[0]);
    } else {
        let shown = RowDescription::new(all.into_iter().take(visible).collect());
        crate::wire::encode(&mut client.out, shown);
    }

    let mut sent = 0u64;
    let mut merged = 0u64;
    let mut last: Option<BytesMut> = None;
    let mut heads: Vec<Option<BytesMut>> = Vec::with_capacity(legs.len());
    for leg in legs.iter_mut() {
        match next_row(leg, client).await {
            Ok(row) => heads.push(row),
            Err(None) => return Ok(()),
            Err(Some(e)) => return Err(e),
        }
    }
    loop {
        // Without ORDER BY any row will do: take them shard by shard.
        let pick = if keys.is_empty() {
            heads.iter().position(Option::is_some)
        } else {
            let mut best: Option<usize> = None;
            for (i, head) in heads.iter().enumerate() {
                let Some(row) = head else { continue };
                best = match best {
                    Some(b) if compare(&keys, heads[b].as_deref().unwrap_or_default(), row) != Ordering::Greater => {
                        Some(b)
                    }
                    _ => Some(i),
                };
            }
            best
        };
        let Some(i) = pick else { break };
        let Some(row) = heads[i].take() else { break };
        // DISTINCT: a row equal to the last one merged is dropped.
        let duplicate = distinct && last.as_ref().is_some_and(|l| compare(&keys, l, &row) == Ordering::Equal);
        if !duplicate {
            match window.take(merged) {
                None => break,
                Some(true) => {
                    if junk == 0 {
                        client.out.extend_from_slice(&row);
                    } else {
                        client.out.extend_from_slice(&without_junk(&row, visible));
                    }
                    sent += 1;
                }
                Some(false) => {}
            }
            merged += 1;
            if distinct {
                last = Some(row);
            }
            if client.out.len() >= CLIENT_CHUNK {
                client.flush().await?;
            }
        }
        match next_row(&mut legs[i], client).await {
            Ok(row) => heads[i] = row,
            Err(None) => return Ok(()),
            Err(Some(e)) => return Err(e),
        }
    }
    reply::command_complete(&mut client.out, &format!("SELECT {sent}"));
    Ok(())
}

/// Orders two DataRow frames by the sort keys.
fn compare(keys: &[(usize, Order, &SortKey)], a: &[u8], b: &[u8]) -> Ordering {
    let (ca, cb) = (columns(a), columns(b));
    for (at, how, key) in keys {
        let (x, y) = (ca.get(*at).copied().flatten(), cb.get(*at).copied().flatten());
        let o = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => {
                if key.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some(_), None) => {
                if key.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(x), Some(y)) => {
                let o = how.compare(x, y);
                if key.descending { o.reverse() } else { o }
            }
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// One row of partial aggregates per shard, combined by Postgres itself on
/// the first shard's connection (an extended-protocol query over the
/// partials as typed parameters), so results have Postgres's types,
/// rounding and scale.
/// How partial aggregates become the client's row(s).
struct Combined<'a> {
    combine: &'a [Combine],
    names: &'a [String],
    casts: &'a [Option<String>],
    tail: &'a str,
}

async fn aggregate(
    legs: &mut [Leg],
    client: &mut ClientConn,
    shape: &Combined<'_>,
    describe: bool,
    result_formats: &[i16],
) -> Result<(), SqlError> {
    let Combined { combine, names, casts, tail } = *shape;
    let Some(descriptions) = descriptions(legs, client).await? else { return Ok(()) };
    let described = fields(&descriptions[0])?;
    let types: Vec<u32> = described.iter().map(|f| f.type_id).collect();
    let width = types.len().max(1);
    // Every shard's partial rows (one per group): as many as there are groups, not rows.
    let mut params: Vec<Option<Vec<u8>>> = Vec::new();
    for leg in legs.iter_mut() {
        loop {
            match next_row(leg, client).await {
                Ok(Some(row)) => params.extend(columns(&row).into_iter().map(|c| c.map(<[u8]>::to_vec))),
                Ok(None) => break,
                Err(None) => return Ok(()),
                Err(Some(e)) => return Err(e),
            }
            if params.len() > MAX_PARAMS {
                return Err(SqlError::new(
                    code::PROGRAM_LIMIT_EXCEEDED,
                    format!("too many groups to merge across shards (more than {} partial rows)", MAX_PARAMS / width),
                )
                .hint("narrow the query with a condition, or target one shard with /* shardcar: shard=... */"));
            }
        }
        leg.drain().await;
    }
    let rows = params.len() / width;
    let mut names = names.to_vec();
    let mut col = 0;
    for (c, name) in combine.iter().zip(names.iter_mut()) {
        if *c == Combine::Group {
            *name = described.get(col).map(|f| f.name.clone()).unwrap_or_default();
        }
        col += if *c == Combine::Avg { 2 } else { 1 };
    }
    let empty = rows == 0;
    if empty {
        // VALUES needs a row: one of NULLs, filtered out.
        params = vec![None; width];
    }
    let sql = combine_sql(&Combined { combine, names: &names, casts, tail }, &types, rows.max(1), empty);
    let param_types: Vec<u32> = std::iter::repeat_n(types.iter().copied(), rows.max(1)).flatten().collect();

    let leg = &mut legs[0];
    leg.done = false;
    let conn = &mut leg.checkout.conn;
    frontend::parse("", &sql, param_types, &mut conn.wbuf).map_err(internal)?;
    frontend::bind(
        "",
        "",
        Some(0),
        params.iter(),
        |p, buf| match p {
            Some(v) => {
                buf.extend_from_slice(v);
                Ok(postgres_protocol::IsNull::No)
            }
            None => Ok(postgres_protocol::IsNull::Yes),
        },
        result_formats.iter().copied(),
        &mut conn.wbuf,
    )
    .map_err(|_| internal("cannot encode the partial aggregates"))?;
    frontend::describe(b'P', "", &mut conn.wbuf).map_err(internal)?;
    frontend::execute("", 0, &mut conn.wbuf).map_err(internal)?;
    frontend::sync(&mut conn.wbuf);
    if let Err(e) = conn.flush().await {
        conn.broken = true;
        return Err(SqlError::new(code::CONNECTION_FAILURE, e.to_string()));
    }
    let mut sent = 0;
    while !leg.done {
        let frame = leg.frame().await?;
        match frame[0] {
            b'T' if !describe => {}
            b'T' | b'E' | b'N' => client.out.extend_from_slice(&frame),
            b'D' => {
                client.out.extend_from_slice(&frame);
                sent += 1;
                if client.out.len() >= CLIENT_CHUNK {
                    client.flush().await?;
                }
            }
            b'C' => reply::command_complete(&mut client.out, &format!("SELECT {sent}")),
            _ => {}
        }
    }
    Ok(())
}

/// Parameters one Bind can carry (the protocol counts them in 16 bits).
const MAX_PARAMS: usize = 65_535;

/// `SELECT sum(c0)::int8 AS "count", ... FROM (VALUES ($1, $2), ...) AS p(c0, c1)`.
fn combine_sql(shape: &Combined<'_>, types: &[u32], rows: usize, empty: bool) -> String {
    let Combined { combine, names, casts, tail } = *shape;
    const INT8: u32 = 20;
    let width = types.len();
    let mut exprs = Vec::with_capacity(combine.len());
    let mut col = 0;
    for (c, name) in combine.iter().zip(names) {
        let int8 = types.get(col) == Some(&INT8);
        let expr = match c {
            Combine::Group => format!("c{col}"),
            Combine::Count => format!("sum(c{col})::int8"),
            Combine::Sum if int8 => format!("sum(c{col})::int8"),
            Combine::Sum => format!("sum(c{col})"),
            Combine::Min => format!("min(c{col})"),
            Combine::Max => format!("max(c{col})"),
            Combine::Avg if int8 => format!("sum(c{col})::numeric / nullif(sum(c{}), 0)", col + 1),
            Combine::Avg => format!("sum(c{col}) / nullif(sum(c{}), 0)", col + 1),
        };
        col += if *c == Combine::Avg { 2 } else { 1 };
        let expr = match casts.get(exprs.len()).cloned().flatten() {
            Some(t) => format!("({expr})::{t}"),
            None => expr,
        };
        exprs.push(format!("{expr} AS \"{}\"", name.replace('"', "\"\"")));
    }
    let rows: Vec<String> = (0..rows)
        .map(|s| {
            let params: Vec<String> = (0..width).map(|c| format!("${}", s * width + c + 1)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let cols: Vec<String> = (0..width).map(|c| format!("c{c}")).collect();
    let filter = if empty { " WHERE false" } else { "" };
    format!("SELECT {} FROM (VALUES {}) AS p({}){filter}{tail}", exprs.join(", "), rows.join(", "), cols.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_are_combined_by_postgres_with_the_original_names() {
        let names = ["count".to_string(), "mean \"x\"".into(), "max".into()];
        let shape = Combined {
            combine: &[Combine::Count, Combine::Avg, Combine::Max],
            names: &names,
            casts: &[None, None, Some("\"int4\"".into())],
            tail: " LIMIT 1",
        };
        let sql = combine_sql(&shape, &[20, 1700, 20, 23], 2, false);
        assert_eq!(
            sql,
            "SELECT sum(c0)::int8 AS \"count\", sum(c1) / nullif(sum(c2), 0) AS \"mean \"\"x\"\"\", (max(c3))::\"int4\" AS \"max\" \
             FROM (VALUES ($1, $2, $3, $4), ($5, $6, $7, $8)) AS p(c0, c1, c2, c3) LIMIT 1"
        );
    }

    #[test]
    fn data_rows_lose_their_junk_columns() {
        let mut row = BytesMut::new();
        let mut data = BytesMut::new();
        for v in [Some(&b"1"[..]), None, Some(b"xyz")] {
            match v {
                Some(v) => {
                    data.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    data.extend_from_slice(v);
                }
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        crate::wire::encode(&mut row, DataRow::new(data, 3));
        assert_eq!(columns(&row), [Some(&b"1"[..]), None, Some(b"xyz")]);
        assert_eq!(columns(&without_junk(&row, 2)), [Some(&b"1"[..]), None]);
    }

    #[test]
    fn the_window_skips_the_offset_and_stops_at_the_limit() {
        let w = Window { offset: 2, limit: Some(1) };
        assert_eq!((0..4).map(|n| w.take(n)).collect::<Vec<_>>(), [Some(false), Some(false), Some(true), None]);
    }
}
