//! Merging the rows of a SELECT that ran on several shards: a k-way merge
//! in ORDER BY order (or concatenation), with OFFSET, LIMIT and DISTINCT
//! applied after it; and aggregates, whose partial rows Postgres itself
//! combines on the first shard's connection.

use std::cmp::Ordering;

use bytes::{Bytes, BytesMut};
use pgwire::messages::data::{FieldDescription, RowDescription};

use super::compare::Order;
use super::frames::{columns, fields, without_junk};
use super::{Failure, Leg, Statement, extended, internal};
use crate::route::aggregate::Combining;
use crate::route::merge::{Column, FanOut, SortKey};
use crate::sqlerror::{SqlError, code};
use crate::wire::encode;

/// Parameters one Bind can carry (the protocol counts them in 16 bits).
const MAX_PARAMS: usize = 65_535;

/// OFFSET and LIMIT over the merged rows.
#[derive(Debug, Clone, Copy)]
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

/// The next row of a shard; `None` at its end.
async fn next_row(leg: &mut Leg, notices: &mut BytesMut) -> Result<Option<BytesMut>, Failure> {
    loop {
        if leg.is_done() {
            return Ok(None);
        }
        let frame = leg.frame().await?;
        match frame[0] {
            b'D' => return Ok(Some(frame)),
            b'E' => return Err(Failure::Shard(frame)),
            b'N' => notices.extend_from_slice(&frame),
            _ => {}
        }
    }
}

/// The first message of each shard's answer: its RowDescription.
async fn descriptions(legs: &mut [Leg], notices: &mut BytesMut) -> Result<Vec<Bytes>, Failure> {
    let mut out = Vec::with_capacity(legs.len());
    for leg in legs.iter_mut() {
        loop {
            let frame = leg.frame().await?;
            match frame[0] {
                b'T' => {
                    out.push(frame.freeze());
                    break;
                }
                b'E' => return Err(Failure::Shard(frame)),
                b'N' => notices.extend_from_slice(&frame),
                b'C' | b'I' | b'Z' => {
                    return Err(Failure::Own(internal(format!("{} answered a SELECT without rows", leg.label()))));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The shards' columns, checked to agree.
fn agreed(descriptions: &[Bytes], legs: &[Leg]) -> Result<Vec<FieldDescription>, Failure> {
    let all = fields(&descriptions[0])?;
    for (d, leg) in descriptions.iter().zip(legs).skip(1) {
        let other = fields(d)?;
        let same = other.len() == all.len() && other.iter().zip(&all).all(|(a, b)| a.type_id == b.type_id);
        if !same {
            return Err(Failure::Own(
                SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("{} answers with other columns than {}", leg.label(), legs[0].label()),
                )
                .hint("the table differs between shards; make its definition the same on every shard"),
            ));
        }
    }
    Ok(all)
}

/// A k-way merge of the shards' rows.
pub struct RowsMerge {
    order: Vec<SortKey>,
    window: Window,
    junk: usize,
    distinct: bool,
    text_in_c: bool,
    /// Set once the descriptions are read.
    ready: Option<Ready>,
}

struct Ready {
    description: Bytes,
    keys: Vec<(usize, Order, SortKey)>,
    visible: usize,
    heads: Vec<Option<BytesMut>>,
    merged: u64,
    sent: u64,
    last: Option<BytesMut>,
    ended: bool,
}

impl RowsMerge {
    pub fn new(plan: &FanOut, text_in_c: bool) -> RowsMerge {
        let (order, window, junk, distinct) = match plan {
            FanOut::Rows { order, limit, offset, junk, distinct, .. } => {
                (order.clone(), Window { offset: *offset, limit: *limit }, *junk, *distinct)
            }
            _ => (Vec::new(), Window { offset: 0, limit: None }, 0, false),
        };
        RowsMerge { order, window, junk, distinct, text_in_c, ready: None }
    }

    pub fn sent(&self) -> u64 {
        self.ready.as_ref().map_or(0, |r| r.sent)
    }

    /// Reads every shard's RowDescription and first row; the client's RowDescription.
    pub async fn describe(&mut self, legs: &mut [Leg], notices: &mut BytesMut) -> Result<Bytes, Failure> {
        if let Some(r) = &self.ready {
            return Ok(r.description.clone());
        }
        let descriptions = descriptions(legs, notices).await?;
        let all = agreed(&descriptions, legs)?;
        let visible = all.len().saturating_sub(self.junk);
        let mut keys = Vec::with_capacity(self.order.len());
        for key in &self.order {
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
            let how = Order::of(field.type_id, self.text_in_c, field.format_code == 1).map_err(|why| {
                SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("cannot merge shards' rows by {}: {why}", field.name),
                )
                .hint("target one shard with /* shardcar: shard=... */, or order by another column")
            })?;
            keys.push((at, how, key.clone()));
        }
        let description = if self.junk == 0 {
            descriptions[0].clone()
        } else {
            let mut out = BytesMut::new();
            encode(&mut out, RowDescription::new(all.into_iter().take(visible).collect()));
            out.freeze()
        };
        let mut heads = Vec::with_capacity(legs.len());
        for leg in legs.iter_mut() {
            heads.push(next_row(leg, notices).await?);
        }
        let ready = Ready { description, keys, visible, heads, merged: 0, sent: 0, last: None, ended: false };
        let description = ready.description.clone();
        self.ready = Some(ready);
        Ok(description)
    }

    /// The next merged row, after OFFSET and DISTINCT; `None` at the end or the LIMIT.
    pub async fn next(&mut self, legs: &mut [Leg], notices: &mut BytesMut) -> Result<Option<BytesMut>, Failure> {
        let (window, junk, distinct) = (self.window, self.junk, self.distinct);
        let Some(r) = self.ready.as_mut() else { return Err(Failure::Own(internal("merged before described"))) };
        while !r.ended {
            // Without ORDER BY any row will do: take them shard by shard.
            let pick = if r.keys.is_empty() {
                r.heads.iter().position(Option::is_some)
            } else {
                let mut best: Option<usize> = None;
                for (i, head) in r.heads.iter().enumerate() {
                    let Some(row) = head else { continue };
                    best = match best {
                        Some(b)
                            if compare(&r.keys, r.heads[b].as_deref().unwrap_or_default(), row)
                                != Ordering::Greater =>
                        {
                            Some(b)
                        }
                        _ => Some(i),
                    };
                }
                best
            };
            let Some(i) = pick else {
                r.ended = true;
                break;
            };
            let Some(row) = r.heads[i].take() else { break };
            r.heads[i] = next_row(&mut legs[i], notices).await?;
            // DISTINCT: a row equal to the last one merged is dropped.
            if distinct && r.last.as_ref().is_some_and(|l| compare(&r.keys, l, &row) == Ordering::Equal) {
                continue;
            }
            let take = window.take(r.merged);
            r.merged += 1;
            match take {
                None => {
                    r.ended = true;
                    break;
                }
                Some(false) => {
                    if distinct {
                        r.last = Some(row);
                    }
                }
                Some(true) => {
                    r.sent += 1;
                    let out = if junk == 0 { row.clone() } else { without_junk(&row, r.visible) };
                    if distinct {
                        r.last = Some(row);
                    }
                    return Ok(Some(out));
                }
            }
        }
        Ok(None)
    }
}

/// Orders two DataRow frames by the sort keys.
fn compare(keys: &[(usize, Order, SortKey)], a: &[u8], b: &[u8]) -> Ordering {
    let (ca, cb) = (columns(a), columns(b));
    for (at, how, key) in keys {
        let (x, y) = (ca.get(*at).copied().flatten(), cb.get(*at).copied().flatten());
        let o = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) if key.nulls_first => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) if key.nulls_first => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
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

/// Aggregates across shards: one row of partial aggregates per shard (or
/// per group and shard), combined by Postgres itself on the first shard's
/// connection — an extended-protocol query over the partials as typed
/// parameters — so results have Postgres's types, rounding and scale.
pub struct Combiner {
    combining: Option<Combining>,
    description: Option<Bytes>,
    sent: u64,
}

impl Combiner {
    pub fn new(plan: &FanOut) -> Combiner {
        let combining = match plan {
            FanOut::Aggregate { combining, .. } => Some(combining.clone()),
            _ => None,
        };
        Combiner { combining, description: None, sent: 0 }
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Reads every shard's partial rows, sends the combining query to the
    /// first shard, and returns its RowDescription.
    pub async fn describe(
        &mut self,
        legs: &mut [Leg],
        notices: &mut BytesMut,
        result_formats: &[i16],
    ) -> Result<Bytes, Failure> {
        if let Some(d) = &self.description {
            return Ok(d.clone());
        }
        let descriptions = descriptions(legs, notices).await?;
        let described = agreed(&descriptions, legs)?;
        let types: Vec<u32> = described.iter().map(|f| f.type_id).collect();
        let width = types.len().max(1);
        // Every shard's partial rows (one per group): as many as there are groups, not rows.
        let mut params: Vec<Option<Vec<u8>>> = Vec::new();
        for leg in legs.iter_mut() {
            while let Some(row) = next_row(leg, notices).await? {
                params.extend(columns(&row).into_iter().map(|c| c.map(<[u8]>::to_vec)));
                if params.len() > MAX_PARAMS {
                    return Err(Failure::Own(
                        SqlError::new(
                            code::PROGRAM_LIMIT_EXCEEDED,
                            format!(
                                "too many groups (or distinct values) to merge across shards (more than {} partial rows)",
                                MAX_PARAMS / width
                            ),
                        )
                        .hint("narrow the query with a condition, or target one shard with /* shardcar: shard=... */"),
                    ));
                }
            }
            leg.drain().await;
        }
        let rows = params.len() / width;
        let empty = rows == 0;
        if empty {
            // VALUES needs a row: one of NULLs, filtered out.
            params = vec![None; width];
        }
        let combining = self.combining.as_ref().ok_or_else(|| Failure::Own(internal("not an aggregate plan")))?;
        let sql = combining.sql(&types, rows.max(1), empty);
        let param_types: Vec<u32> = std::iter::repeat_n(types.iter().copied(), rows.max(1)).flatten().collect();
        let leg = &mut legs[0];
        leg.reopen();
        let statement = Statement { sql: &sql, param_types: &param_types, portal: None };
        extended(&mut leg.conn().conn, statement, &[0], params.iter(), result_formats)?;
        leg.flush().await?;
        loop {
            let frame = leg.frame().await?;
            match frame[0] {
                b'T' => {
                    let d = frame.freeze();
                    self.description = Some(d.clone());
                    return Ok(d);
                }
                b'E' => return Err(Failure::Shard(frame)),
                b'N' => notices.extend_from_slice(&frame),
                b'Z' => return Err(Failure::Own(internal("the combining query returned no rows"))),
                _ => {}
            }
        }
    }

    /// The next combined row from the first shard; `None` at the end.
    pub async fn next(&mut self, legs: &mut [Leg], notices: &mut BytesMut) -> Result<Option<BytesMut>, Failure> {
        let row = next_row(&mut legs[0], notices).await?;
        self.sent += u64::from(row.is_some());
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_skips_the_offset_and_stops_at_the_limit() {
        let w = Window { offset: 2, limit: Some(1) };
        assert_eq!((0..4).map(|n| w.take(n)).collect::<Vec<_>>(), [Some(false), Some(false), Some(true), None]);
    }
}
