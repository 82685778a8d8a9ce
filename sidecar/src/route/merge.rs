//! How a statement that runs on several shards is split and merged: the
//! SQL each shard runs (rewritten from the parse tree) and what shardcar
//! does with the shards' answers. Shapes whose merge would not be exactly
//! what one Postgres would answer are refused here, with the reason.

use pg_query::protobuf::{self, a_const, node::Node as N};

use super::aggregate::{Combine, Keys};
use crate::classify::lexer::renumber_params;
use crate::classify::links::is_aggregate;
use crate::policy::Refusal;

/// One ORDER BY item, resolved against the shards' result columns.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub column: Column,
    pub descending: bool,
    pub nulls_first: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// Zero-based position in the shards' rows.
    At(usize),
    /// An output column's name, found in the shards' RowDescription (for
    /// `SELECT *`, whose columns are known only then).
    Named(String),
}

/// One shard's INSERT of a split multi-row INSERT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertPart {
    pub sql: String,
    /// The statement's parameters (0-based) this part uses, in the order of
    /// its own `$1`, `$2`, ...
    pub params: Vec<usize>,
    /// Parameters given this part's own values (by the statement's index):
    /// the part of each array an `INSERT ... FROM unnest(...)` takes.
    pub values: Vec<(usize, Option<bytes::Bytes>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FanOut {
    /// The same statement on every shard (DDL); the first shard's answer.
    Everywhere,
    /// The same UPDATE or DELETE on every target shard: RETURNING rows
    /// concatenated, counts summed.
    Broadcast,
    /// A multi-row INSERT split by shard: one INSERT per target shard with
    /// that shard's rows (in `Targets` order); answered as `Broadcast`,
    /// except that RETURNING rows follow `order` when it is given: the part
    /// each input row went to, in input order.
    Split { parts: Vec<InsertPart>, order: Vec<usize> },
    /// Rows from every shard, merged in `order` (concatenated without one),
    /// then `offset` and `limit` applied. Each shard runs `sql`, which asks
    /// for `limit + offset` rows and has `junk` extra columns at the end
    /// (sort keys that are not output columns), stripped before the client.
    /// With `distinct`, `order` covers every output column and equal
    /// neighbours after the merge are sent once.
    /// `window`: LIMIT and OFFSET given as parameters, filled in per
    /// execution (`bind_window`).
    Rows {
        sql: String,
        order: Vec<SortKey>,
        limit: Option<u64>,
        offset: u64,
        junk: usize,
        distinct: bool,
        window: Window,
    },
    /// Rows of partial aggregates from every shard (one, or one per group:
    /// the group keys, then a partial value per aggregate call), combined
    /// by Postgres on one shard (see `aggregate`).
    Aggregate { sql: String, combining: super::aggregate::Combining },
}

/// Prefix of the sort-key columns shardcar adds.
const JUNK: &str = "shardcar_sort_";

impl FanOut {
    /// The plan for a SELECT (or another statement, run everywhere) whose
    /// rows live on several shards; `keys` gives a sharded table's key.
    pub fn of(sql: &str, keys: Keys) -> Result<FanOut, Refusal> {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
            .map_err(|e| refuse(format!("the statement cannot be parsed: {e}")))?;
        let mut tree = parsed.protobuf;
        let [raw] = tree.stmts.as_mut_slice() else { return Err(refuse("send one statement at a time".into())) };
        let select = match raw.stmt.as_mut().and_then(|s| s.node.as_mut()) {
            Some(N::SelectStmt(select)) => select,
            Some(N::UpdateStmt(_) | N::DeleteStmt(_)) => return Ok(FanOut::Broadcast),
            Some(N::CopyStmt(copy)) if !copy.is_from => return copy_to(copy),
            _ => return Ok(FanOut::Everywhere),
        };
        let plan = plan_select(select, keys)?;
        let sql = pg_query::deparse(&tree, pg_query::DeparseOptions::default())
            .map_err(|e| Refusal::NotMergeable(format!("the statement cannot be rewritten for the shards: {e}")))?;
        Ok(match plan {
            Planned::Rows { order, limit, offset, junk, distinct, window } => {
                FanOut::Rows { sql, order, limit, offset, junk, distinct, window }
            }
            Planned::Aggregate(combining) => FanOut::Aggregate { sql, combining },
        })
    }
}

/// LIMIT and OFFSET given as parameters (zero-based), bound per execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

impl Window {
    pub fn is_bound(&self) -> bool {
        self.limit.is_some() || self.offset.is_some()
    }
}

impl FanOut {
    /// This plan with its LIMIT and OFFSET parameters' values from `params`.
    pub fn bind_window(&self, params: Option<&crate::classify::params::Params>) -> Result<FanOut, Refusal> {
        let FanOut::Rows { sql, order, limit, offset, junk, distinct, window } = self else { return Ok(self.clone()) };
        let value = |i: usize| count_param(params, i);
        Ok(FanOut::Rows {
            sql: sql.clone(),
            order: order.clone(),
            limit: window.limit.map(value).transpose()?.or(*limit),
            offset: window.offset.map(value).transpose()?.unwrap_or(*offset),
            junk: *junk,
            distinct: *distinct,
            window: Window::default(),
        })
    }

    /// The SQL every shard runs, when the plan rewrote it.
    pub fn shard_sql(&self) -> Option<&str> {
        match self {
            FanOut::Rows { sql, .. } | FanOut::Aggregate { sql, .. } => Some(sql),
            _ => None,
        }
    }

    /// The shards only read (the merges of a SELECT).
    pub fn is_read(&self) -> bool {
        matches!(self, FanOut::Rows { .. } | FanOut::Aggregate { .. })
    }

    /// How the shards' answers become one, in words (for explain).
    pub fn describe(&self) -> String {
        let window = |limit: &Option<u64>, offset: u64| {
            let mut w = String::new();
            if offset > 0 {
                w.push_str(&format!(", then OFFSET {offset}"));
            }
            if let Some(l) = limit {
                w.push_str(&format!(", then LIMIT {l}"));
            }
            w
        };
        match self {
            FanOut::Everywhere => "the same statement on every shard; the first shard's answer".into(),
            FanOut::Broadcast => "the same statement on every shard; returned rows concatenated, counts summed".into(),
            FanOut::Split { parts, .. } => {
                format!("the rows split into {} INSERTs, one per shard; counts summed", parts.len())
            }
            FanOut::Rows { order, limit, offset, .. } => {
                let how = if order.is_empty() { "rows concatenated" } else { "rows merged in ORDER BY order" };
                let pushed = match limit {
                    Some(l) => format!(" (each shard sends at most {})", l + offset),
                    None => String::new(),
                };
                format!("{how}{pushed}{}", window(limit, *offset))
            }
            FanOut::Aggregate { combining, .. } => {
                let grouped = combining.partials.contains(&Combine::Group);
                let names: Vec<&str> = combining.partials.iter().filter_map(Combine::describe).collect();
                let rows = if grouped {
                    "one row of partial aggregates per group and shard"
                } else {
                    "one row of partial aggregates per shard"
                };
                format!("{rows}, combined ({}), then: {}", names.join("; "), combining.select)
            }
        }
    }
}

impl FanOut {
    /// One INSERT per group of VALUES rows (`rows`: indexes, per shard):
    /// of `INSERT ... VALUES`, or of `INSERT ... SELECT ... FROM (VALUES ...)`.
    pub fn split_insert(sql: &str, groups: &[Vec<usize>]) -> Result<FanOut, Refusal> {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
            .map_err(|e| refuse(format!("the statement cannot be parsed: {e}")))?;
        let mut tree = parsed.protobuf;
        let rows = values(&mut tree)
            .map(|v| v.clone())
            .ok_or_else(|| refuse("only INSERT ... VALUES is split by shard".into()))?;
        let mut parts = Vec::with_capacity(groups.len());
        for group in groups {
            let mut part = tree.clone();
            if let Some(values) = values(&mut part) {
                *values = group.iter().filter_map(|&i| rows.get(i).cloned()).collect();
            }
            let sql = pg_query::deparse(&part, pg_query::DeparseOptions::default())
                .map_err(|e| refuse(format!("the INSERT cannot be split: {e}")))?;
            // A server refuses parameters a statement does not use when their
            // type is left to it: each part numbers the ones it keeps from $1.
            let (sql, params) = renumber_params(&sql);
            parts.push(InsertPart { sql, params, values: Vec::new() });
        }
        Ok(FanOut::Split { parts, order: Vec::new() })
    }
}

/// The VALUES rows of an INSERT: its own, or those of the subquery it
/// selects from.
fn values(tree: &mut protobuf::ParseResult) -> Option<&mut Vec<protobuf::Node>> {
    let Some(N::InsertStmt(insert)) = tree.stmts.first_mut()?.stmt.as_mut()?.node.as_mut() else { return None };
    let Some(N::SelectStmt(select)) = insert.select_stmt.as_deref_mut()?.node.as_mut() else { return None };
    if !select.values_lists.is_empty() {
        return Some(&mut select.values_lists);
    }
    let Some(N::RangeSubselect(sub)) = select.from_clause.first_mut()?.node.as_mut() else { return None };
    let Some(N::SelectStmt(inner)) = sub.subquery.as_deref_mut()?.node.as_mut() else { return None };
    Some(&mut inner.values_lists)
}

enum Planned {
    Rows { order: Vec<SortKey>, limit: Option<u64>, offset: u64, junk: usize, distinct: bool, window: Window },
    Aggregate(super::aggregate::Combining),
}

pub(super) fn refuse(why: String) -> Refusal {
    Refusal::NotMergeable(why)
}

/// `COPY ... TO` on several shards: their data one after the other, which
/// is the whole answer when no order, limit, DISTINCT or aggregate applies.
fn copy_to(copy: &mut protobuf::CopyStmt) -> Result<FanOut, Refusal> {
    let Some(N::SelectStmt(select)) = copy.query.as_mut().and_then(|q| q.node.as_mut()) else {
        return Ok(FanOut::Broadcast);
    };
    match plan_select(select, &|_| None)? {
        Planned::Rows { order, limit: None, offset: 0, junk: 0, distinct: false, window }
            if order.is_empty() && !window.is_bound() =>
        {
            Ok(FanOut::Broadcast)
        }
        _ => Err(refuse(
            "COPY (query) TO concatenates what each shard sends: its query cannot have ORDER BY, LIMIT, OFFSET, \
             DISTINCT or aggregates"
                .into(),
        )),
    }
}

/// Checks the shape, rewrites `select` in place for the shards, and says
/// how to merge.
fn plan_select(select: &mut protobuf::SelectStmt, keys: Keys) -> Result<Planned, Refusal> {
    // Which tables may be read together, and what below the top computes
    // over sets, was checked against the config when the statement was
    // routed (`policy::colocation`); what is left is merging the top.
    if select.op != protobuf::SetOperation::SetopNone as i32 {
        return union_all(select);
    }
    if select.into_clause.is_some() {
        return Err(refuse("SELECT INTO creates a table: use CREATE TABLE, which runs on every shard".into()));
    }
    if !select.locking_clause.is_empty() {
        return Err(refuse("FOR UPDATE/SHARE locks rows on several shards without a transaction across them".into()));
    }
    // Plain DISTINCT is a list holding one empty node; DISTINCT ON lists expressions.
    let distinct = match select.distinct_clause.as_slice() {
        [] => false,
        [only] if only.node.is_none() => true,
        _ => return Err(refuse("DISTINCT ON is not merged across shards yet".into())),
    };
    if select.group_clause.iter().any(|g| {
        !matches!(g.node, Some(N::ColumnRef(_) | N::AConst(_) | N::FuncCall(_) | N::TypeCast(_) | N::AExpr(_)))
    }) {
        return Err(refuse("GROUPING SETS, ROLLUP and CUBE are not merged across shards".into()));
    }
    let (limit, offset) = limits(select)?;
    let constant = |c: Count| match c {
        Count::Value(v) => Ok(v),
        Count::Param(_) => Err(refuse("LIMIT and OFFSET of aggregates across shards must be constants".into())),
    };

    let aggregated = select.target_list.iter().chain(select.having_clause.as_deref()).any(contains_aggregate);
    if aggregated || !select.group_clause.is_empty() {
        if !select.window_clause.is_empty() || select.target_list.iter().chain(&select.sort_clause).any(has_window) {
            return Err(refuse("window functions over aggregates are not merged across shards".into()));
        }
        let limit = limit.map(constant).transpose()?;
        return super::aggregate::plan(select, keys, limit, constant(offset)?, distinct).map(Planned::Aggregate);
    }
    if select.having_clause.is_some() {
        return Err(refuse("HAVING without aggregates or GROUP BY is not merged across shards".into()));
    }

    let mut order = sort_keys(select)?;
    if distinct {
        distinct_order(select, &mut order)?;
    }
    // Junk columns sit after the visible ones, found by name in the shards' RowDescription.
    let junk = order.iter().filter(|k| matches!(&k.column, Column::Named(n) if n.starts_with(JUNK))).count();
    Ok(rows(select, order, limit, offset, junk, distinct))
}

/// Rows merged in `order`: each shard sends LIMIT + OFFSET rows — a
/// constant, or the sum of the parameters (and constants) as an
/// expression bound like the rest — and the merge applies both.
fn rows(
    select: &mut protobuf::SelectStmt,
    order: Vec<SortKey>,
    limit: Option<Count>,
    offset: Count,
    junk: usize,
    distinct: bool,
) -> Planned {
    select.limit_offset = None;
    let window = Window {
        limit: match limit {
            Some(Count::Param(i)) => Some(i),
            _ => None,
        },
        offset: match offset {
            Count::Param(i) => Some(i),
            Count::Value(_) => None,
        },
    };
    let node = |c: Count| match c {
        Count::Value(v) => int_const(v),
        Count::Param(i) => param_ref(i),
    };
    select.limit_count = match (limit, offset) {
        (None, _) => None,
        (Some(Count::Value(l)), Count::Value(o)) => Some(Box::new(int_const(l.saturating_add(o)))),
        (Some(l), Count::Value(0)) => Some(Box::new(node(l))),
        (Some(l), o) => Some(Box::new(plus(node(l), node(o)))),
    };
    let value = |c: Count| match c {
        Count::Value(v) => v,
        Count::Param(_) => 0,
    };
    Planned::Rows { order, limit: limit.map(value), offset: value(offset), junk, distinct, window }
}

/// Two expressions are the same, wherever they were written.
pub(super) fn same_expr(a: &protobuf::Node, b: &protobuf::Node) -> bool {
    fn without_locations(n: &protobuf::Node) -> String {
        let text = format!("{n:?}");
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find("location: ") {
            out.push_str(&rest[..at]);
            rest = rest[at + "location: ".len()..].trim_start_matches(|c: char| c == '-' || c.is_ascii_digit());
        }
        out.push_str(rest);
        out
    }
    without_locations(a) == without_locations(b)
}

/// SELECT DISTINCT: shards sort by the client's ORDER BY and then by every
/// other output column, so equal rows meet in the merge.
fn distinct_order(select: &mut protobuf::SelectStmt, order: &mut Vec<SortKey>) -> Result<(), Refusal> {
    if select.target_list.iter().any(is_star) {
        return Err(refuse("SELECT DISTINCT * is not merged across shards; name the columns".into()));
    }
    if order.iter().any(|k| !matches!(k.column, Column::At(_))) {
        return Err(refuse("with DISTINCT, ORDER BY must name output columns".into()));
    }
    for i in 0..select.target_list.len() {
        if order.iter().any(|k| k.column == Column::At(i)) {
            continue;
        }
        order.push(SortKey { column: Column::At(i), descending: false, nulls_first: false });
        select.sort_clause.push(protobuf::Node {
            node: Some(N::SortBy(Box::new(protobuf::SortBy {
                node: Some(Box::new(int_const(i as u64 + 1))),
                sortby_dir: protobuf::SortByDir::SortbyDefault as i32,
                sortby_nulls: protobuf::SortByNulls::SortbyNullsDefault as i32,
                use_op: vec![],
                location: -1,
            }))),
        });
    }
    Ok(())
}

/// `*` or `t.*` in a select list.
pub(super) fn is_star(target: &protobuf::Node) -> bool {
    matches!(&target.node, Some(N::ResTarget(r)) if matches!(r.val.as_deref().and_then(|v| v.node.as_ref()), Some(N::ColumnRef(c)) if c.fields.iter().any(|f| matches!(f.node, Some(N::AStar(_))))))
}

/// A window function outside subqueries.
fn has_window(node: &protobuf::Node) -> bool {
    outside_subqueries(node).iter().any(|f| f.over.is_some())
}

/// The function calls in a node that are not inside a subquery (whose
/// aggregates and windows are the subquery's own).
pub(super) fn outside_subqueries(node: &protobuf::Node) -> Vec<&protobuf::FuncCall> {
    let all = walk(node);
    let inner: std::collections::HashSet<*const protobuf::FuncCall> = all
        .iter()
        .filter_map(|n| match n {
            pg_query::NodeRef::SubLink(l) => l.subselect.as_deref(),
            _ => None,
        })
        .flat_map(walk)
        .filter_map(|n| match n {
            pg_query::NodeRef::FuncCall(f) => Some(f as *const _),
            _ => None,
        })
        .collect();
    all.into_iter()
        .filter_map(|n| match n {
            pg_query::NodeRef::FuncCall(f) if !inner.contains(&(f as *const _)) => Some(f),
            _ => None,
        })
        .collect()
}

/// A top-level UNION ALL: each shard answers every query of it, and the
/// rows are concatenated, or merged by its ORDER BY (output columns by
/// position or name, as Postgres allows there), LIMIT and OFFSET applied
/// after the merge (the route checked that each query reads a sharded
/// table and merges nothing of its own).
fn union_all(select: &mut protobuf::SelectStmt) -> Result<Planned, Refusal> {
    fn all_unions(s: &protobuf::SelectStmt) -> bool {
        s.op == protobuf::SetOperation::SetopNone as i32
            || (s.op == protobuf::SetOperation::SetopUnion as i32
                && s.all
                && [&s.larg, &s.rarg].into_iter().all(|a| a.as_deref().is_some_and(all_unions)))
    }
    if !all_unions(select) {
        return Err(refuse("UNION, INTERSECT and EXCEPT are merged across shards only as UNION ALL".into()));
    }
    // The output columns are named by the first query.
    let mut first = &*select;
    while let Some(l) = first.larg.as_deref() {
        first = l;
    }
    let names: Vec<Option<String>> = first.target_list.iter().map(target_name).collect();
    let star = first.target_list.iter().any(is_star);
    let mut order = Vec::new();
    for item in &select.sort_clause {
        let Some(N::SortBy(sort)) = &item.node else { continue };
        let descending = sort.sortby_dir == protobuf::SortByDir::SortbyDesc as i32;
        let nulls_first = match protobuf::SortByNulls::try_from(sort.sortby_nulls) {
            Ok(protobuf::SortByNulls::SortbyNullsFirst) => true,
            Ok(protobuf::SortByNulls::SortbyNullsLast) => false,
            _ => descending,
        };
        let column = match sort.node.as_deref().and_then(|n| n.node.as_ref()) {
            Some(N::AConst(protobuf::AConst { val: Some(a_const::Val::Ival(i)), .. }))
                if i.ival >= 1 && (i.ival as usize) <= names.len() && !star =>
            {
                Column::At(i.ival as usize - 1)
            }
            Some(N::ColumnRef(c)) if c.fields.len() == 1 && sort.use_op.is_empty() => {
                let name = column_name(c).unwrap_or_default();
                match names.iter().position(|n| n.as_deref() == Some(name.as_str())) {
                    Some(i) => Column::At(i),
                    None if star => Column::Named(name),
                    None => return Err(refuse(format!("ORDER BY {name} is not an output column of the UNION ALL"))),
                }
            }
            _ => {
                return Err(refuse(
                    "ORDER BY over a UNION ALL is merged across shards by output column names or positions".into(),
                ));
            }
        };
        order.push(SortKey { column, descending, nulls_first });
    }
    let (limit, offset) = limits(select)?;
    Ok(rows(select, order, limit, offset, 0, false))
}

/// A node and everything below it.
fn walk(node: &protobuf::Node) -> Vec<pg_query::NodeRef<'_>> {
    node.node.as_ref().map(|n| n.nodes().into_iter().map(|(n, ..)| n).collect()).unwrap_or_default()
}

/// A LIMIT or OFFSET: a constant, or a parameter (zero-based) bound per execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Value(u64),
    Param(usize),
}

/// LIMIT and OFFSET: constants or parameters.
fn limits(select: &protobuf::SelectStmt) -> Result<(Option<Count>, Count), Refusal> {
    if select.limit_option == protobuf::LimitOption::WithTies as i32 {
        return Err(refuse("FETCH ... WITH TIES is not merged across shards".into()));
    }
    let value = |node: &Option<Box<protobuf::Node>>, what: &str| -> Result<Option<Count>, Refusal> {
        match node.as_deref().and_then(|n| n.node.as_ref()) {
            None => Ok(None),
            Some(N::AConst(c)) if c.isnull => Ok(None),
            Some(N::AConst(protobuf::AConst { val: Some(a_const::Val::Ival(i)), .. })) if i.ival >= 0 => {
                Ok(Some(Count::Value(i.ival as u64)))
            }
            Some(N::ParamRef(p)) if p.number >= 1 => Ok(Some(Count::Param(p.number as usize - 1))),
            _ => Err(refuse(format!("{what} must be a non-negative number or a parameter to merge shards' rows"))),
        }
    };
    let offset = value(&select.limit_offset, "OFFSET")?.unwrap_or(Count::Value(0));
    Ok((value(&select.limit_count, "LIMIT")?, offset))
}

/// The bound value of a LIMIT or OFFSET parameter.
fn count_param(params: Option<&crate::classify::params::Params>, i: usize) -> Result<u64, Refusal> {
    let bad = || refuse(format!("LIMIT and OFFSET must be non-negative numbers (parameter ${} is not)", i + 1));
    let params = params.ok_or_else(bad)?;
    let raw = params.values.get(i).cloned().flatten().ok_or_else(bad)?;
    let binary = match params.formats.as_slice() {
        [] => false,
        [one] => *one == 1,
        all => all.get(i) == Some(&1),
    };
    let n: i64 = if binary {
        match raw.len() {
            8 => i64::from_be_bytes(raw[..].try_into().map_err(|_| bad())?),
            4 => i64::from(i32::from_be_bytes(raw[..].try_into().map_err(|_| bad())?)),
            2 => i64::from(i16::from_be_bytes(raw[..].try_into().map_err(|_| bad())?)),
            _ => return Err(bad()),
        }
    } else {
        std::str::from_utf8(&raw).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(bad)?
    };
    u64::try_from(n).map_err(|_| bad())
}

fn param_ref(i: usize) -> protobuf::Node {
    protobuf::Node { node: Some(N::ParamRef(protobuf::ParamRef { number: i as i32 + 1, location: -1 })) }
}

/// `left + right`.
fn plus(left: protobuf::Node, right: protobuf::Node) -> protobuf::Node {
    let op = protobuf::Node { node: Some(N::String(protobuf::String { sval: "+".into() })) };
    protobuf::Node {
        node: Some(N::AExpr(Box::new(protobuf::AExpr {
            kind: protobuf::AExprKind::AexprOp as i32,
            name: vec![op],
            lexpr: Some(Box::new(left)),
            rexpr: Some(Box::new(right)),
            location: -1,
            ..Default::default()
        }))),
    }
}

pub(super) fn int_const(n: u64) -> protobuf::Node {
    protobuf::Node {
        node: Some(N::AConst(protobuf::AConst {
            isnull: false,
            location: -1,
            val: Some(a_const::Val::Ival(protobuf::Integer { ival: n.min(i32::MAX as u64) as i32 })),
        })),
    }
}

/// An aggregate call outside subqueries. A user-defined aggregate is not
/// recognised and would be run per shard and concatenated (the README says so).
fn contains_aggregate(node: &protobuf::Node) -> bool {
    outside_subqueries(node).iter().any(|f| is_aggregate(f))
}

/// ORDER BY items as sort keys; expressions that are not output columns
/// become extra (junk) output columns of the shards' query.
fn sort_keys(select: &mut protobuf::SelectStmt) -> Result<Vec<SortKey>, Refusal> {
    let visible = select.target_list.len();
    let star = select.target_list.iter().any(is_star);
    let names: Vec<Option<String>> = select.target_list.iter().map(target_name).collect();
    let mut keys = Vec::new();
    let mut junk = Vec::new();
    for item in &select.sort_clause {
        let Some(N::SortBy(sort)) = &item.node else { continue };
        if !sort.use_op.is_empty() {
            return Err(refuse("ORDER BY ... USING is not merged across shards".into()));
        }
        let descending = sort.sortby_dir == protobuf::SortByDir::SortbyDesc as i32;
        let nulls_first = match protobuf::SortByNulls::try_from(sort.sortby_nulls) {
            Ok(protobuf::SortByNulls::SortbyNullsFirst) => true,
            Ok(protobuf::SortByNulls::SortbyNullsLast) => false,
            _ => descending,
        };
        let expr = sort.node.as_deref().and_then(|n| n.node.as_ref());
        let column = match expr {
            Some(N::AConst(protobuf::AConst { val: Some(a_const::Val::Ival(i)), .. })) => {
                let k = i.ival;
                if k < 1 || (k as usize > visible && !star) {
                    return Err(refuse(format!("ORDER BY position {k} is not in the select list")));
                }
                if star {
                    return Err(refuse(
                        "ORDER BY a position with SELECT * is not merged across shards; name the column".into(),
                    ));
                }
                Column::At(k as usize - 1)
            }
            // A name alone is an output column's first; a qualified one
            // (`c.id`) is a table's column, whatever the outputs are named.
            Some(N::ColumnRef(c)) if c.fields.len() == 1 && column_name(c).is_some() => {
                let name = column_name(c).unwrap_or_default();
                match names.iter().position(|n| n.as_deref() == Some(name.as_str())) {
                    Some(i) => Column::At(i),
                    None if star => Column::Named(name),
                    None => junk_column(&mut junk, sort.node.as_deref().cloned()),
                }
            }
            Some(N::ColumnRef(_)) => {
                let expr = sort.node.as_deref();
                let same = select.target_list.iter().position(|t| match &t.node {
                    Some(N::ResTarget(r)) => r.val.as_deref().zip(expr).is_some_and(|(a, b)| same_expr(a, b)),
                    _ => false,
                });
                match same {
                    Some(i) if i < visible => Column::At(i),
                    _ => junk_column(&mut junk, expr.cloned()),
                }
            }
            _ => junk_column(&mut junk, sort.node.as_deref().cloned()),
        };
        keys.push(SortKey { column, descending, nulls_first });
    }
    select.target_list.extend(junk);
    Ok(keys)
}

/// Adds a sort expression as an output column the client will not see.
fn junk_column(junk: &mut Vec<protobuf::Node>, expr: Option<protobuf::Node>) -> Column {
    let name = format!("{JUNK}{}", junk.len());
    junk.push(protobuf::Node {
        node: Some(N::ResTarget(Box::new(protobuf::ResTarget {
            name: name.clone(),
            indirection: vec![],
            val: expr.map(Box::new),
            location: -1,
        }))),
    });
    Column::Named(name)
}

/// The output name of a target: its alias, or the column it reads.
fn target_name(target: &protobuf::Node) -> Option<String> {
    let Some(N::ResTarget(t)) = &target.node else { return None };
    if !t.name.is_empty() {
        return Some(t.name.clone());
    }
    match t.val.as_deref().and_then(|v| v.node.as_ref()) {
        Some(N::ColumnRef(c)) => column_name(c),
        _ => None,
    }
}

/// The last name of a column reference (`t.col` → `col`); `None` for `*`.
fn column_name(c: &protobuf::ColumnRef) -> Option<String> {
    match c.fields.last().and_then(|f| f.node.as_ref()) {
        Some(N::String(s)) => Some(s.sval.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(sql: &str) -> (String, Vec<SortKey>, Option<u64>, u64, usize) {
        match of(sql).unwrap() {
            FanOut::Rows { sql, order, limit, offset, junk, .. } => (sql, order, limit, offset, junk),
            other => panic!("{other:?}"),
        }
    }

    fn of(sql: &str) -> Result<FanOut, Refusal> {
        FanOut::of(sql, &|_| None)
    }

    fn refused(sql: &str) -> String {
        crate::sqlerror::SqlError::from(of(sql).unwrap_err()).message
    }

    #[test]
    fn parameter_limits_are_bound_per_execution() {
        let plan = of("SELECT id FROM t ORDER BY id LIMIT $1 OFFSET $2").unwrap();
        let FanOut::Rows { sql, window, .. } = &plan else { panic!("{plan:?}") };
        assert_eq!(sql, "SELECT id FROM t ORDER BY id LIMIT $1 + $2");
        assert_eq!(*window, Window { limit: Some(0), offset: Some(1) });
        let text = |v: &[&str]| crate::classify::params::Params {
            values: v.iter().map(|s| Some(bytes::Bytes::from(s.to_string()))).collect(),
            ..Default::default()
        };
        let FanOut::Rows { limit, offset, .. } = plan.bind_window(Some(&text(&["5", "2"]))).unwrap() else { panic!() };
        assert_eq!((limit, offset), (Some(5), 2));
        let binary = crate::classify::params::Params {
            values: vec![
                Some(bytes::Bytes::from(7i64.to_be_bytes().to_vec())),
                Some(bytes::Bytes::from(0i32.to_be_bytes().to_vec())),
            ],
            formats: vec![1],
            types: vec![],
        };
        let FanOut::Rows { limit, offset, .. } = plan.bind_window(Some(&binary)).unwrap() else { panic!() };
        assert_eq!((limit, offset), (Some(7), 0));
        assert!(plan.bind_window(Some(&text(&["-1", "0"]))).is_err());
    }

    #[test]
    fn limits_are_pushed_down_as_limit_plus_offset() {
        let (sql, order, limit, offset, junk) = rows("SELECT id, name FROM t ORDER BY name DESC, 1 LIMIT 10 OFFSET 5");
        assert_eq!(sql, "SELECT id, name FROM t ORDER BY name DESC, 1 LIMIT 15");
        assert_eq!(
            order,
            [
                SortKey { column: Column::At(1), descending: true, nulls_first: true },
                SortKey { column: Column::At(0), descending: false, nulls_first: false },
            ]
        );
        assert_eq!((limit, offset, junk), (Some(10), 5, 0));
    }

    #[test]
    fn sort_keys_outside_the_select_list_become_junk_columns() {
        let (sql, order, _, _, junk) = rows("SELECT name FROM t ORDER BY id + 1 NULLS FIRST");
        assert_eq!(sql, "SELECT name, id + 1 AS shardcar_sort_0 FROM t ORDER BY id + 1 NULLS FIRST");
        assert_eq!(order[0].column, Column::Named("shardcar_sort_0".into()));
        assert!(order[0].nulls_first);
        assert_eq!(junk, 1);
        // With *, a plain column is found by name in the shards' columns.
        let (_, order, _, _, junk) = rows("SELECT * FROM t ORDER BY created_at");
        assert_eq!((order[0].column.clone(), junk), (Column::Named("created_at".into()), 0));
    }

    #[test]
    fn distinct_sorts_by_every_output_column() {
        let (sql, order, limit, _, _) = rows("SELECT DISTINCT b, a FROM t ORDER BY a DESC LIMIT 3");
        assert_eq!(sql, "SELECT DISTINCT b, a FROM t ORDER BY a DESC, 1 LIMIT 3");
        assert_eq!(order.iter().map(|k| k.column.clone()).collect::<Vec<_>>(), [Column::At(1), Column::At(0)]);
        assert_eq!(limit, Some(3));
        assert!(refused("SELECT DISTINCT * FROM t").contains("name the columns"));
    }

    fn aggregate(sql: &str) -> (String, crate::route::aggregate::Combining) {
        match of(sql).unwrap() {
            FanOut::Aggregate { sql, combining } => (sql, combining),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn averages_are_split_into_sums_and_counts() {
        let (sql, c) = aggregate("SELECT count(*), avg(amount) AS mean, max(id) FROM orders WHERE x > 1 LIMIT 1");
        assert_eq!(sql, "SELECT count(*), sum(amount), count(amount), max(id) FROM orders WHERE x > 1");
        assert_eq!(c.partials, [Combine::Count, Combine::Avg, Combine::Max]);
        assert_eq!(c.select, "SELECT q0 AS count, q1 AS mean, q2 AS max");
        assert_eq!(c.tail, " LIMIT 1");
    }

    #[test]
    fn groups_are_combined_by_their_keys_then_the_clients_clauses_apply() {
        let (sql, c) = aggregate(
            "SELECT region, avg(amount), count(*) AS n FROM orders GROUP BY 1, day ORDER BY n DESC, region LIMIT 5 OFFSET 2",
        );
        assert_eq!(
            sql, "SELECT region, day, sum(amount), count(amount), count(*) FROM orders GROUP BY region, day",
            "group keys first, positions as expressions, then one partial per aggregate call"
        );
        assert_eq!(c.partials, [Combine::Group, Combine::Group, Combine::Avg, Combine::Count]);
        assert_eq!(c.select, "SELECT q0 AS region, q2 AS avg, q3 AS n");
        assert_eq!(c.tail, " ORDER BY n DESC, region LIMIT 5 OFFSET 2");
        // Casts, expressions over aggregates, FILTER and HAVING: Postgres evaluates them on the combined columns.
        let (sql, c) = aggregate(
            "SELECT c, count(*)::int, round(avg(x)::numeric, 2), sum(x) FILTER (WHERE y > 0) AS pos, max(y) - min(y) \
             FROM t GROUP BY c HAVING count(*) > 1 ORDER BY lower(c), 2",
        );
        assert_eq!(
            sql,
            "SELECT c, count(*), sum(x), count(x), sum(x) FILTER (WHERE y > 0), max(y), min(y) FROM t GROUP BY c"
        );
        assert_eq!(
            c.select,
            "SELECT q0 AS c, q1::int AS count, round(q2::numeric, 2) AS round, q3 AS pos, q4 - q5 AS \"?column?\""
        );
        assert_eq!(c.tail, " WHERE q1 > 1 ORDER BY lower(q0), 2");
        // DISTINCT over the shard key is exact: a key's value is on one shard only.
        let keyed = |t: &str| (t == "orders").then(|| "customer_id".to_string());
        let FanOut::Aggregate { sql, .. } =
            FanOut::of("SELECT count(DISTINCT o.customer_id) FROM orders o", &keyed).unwrap()
        else {
            panic!()
        };
        assert_eq!(sql, "SELECT count(DISTINCT o.customer_id) FROM orders o");
        // Next to a DISTINCT over another column, the shards' groups split a
        // key's rows: then the key's values are merged too.
        let FanOut::Aggregate { sql, .. } =
            FanOut::of("SELECT count(DISTINCT o.customer_id), count(DISTINCT o.status) FROM orders o", &keyed).unwrap()
        else {
            panic!()
        };
        assert_eq!(sql, "SELECT o.customer_id, o.status FROM orders o GROUP BY o.customer_id, o.status");
        // DISTINCT over another column: the shards group by its values too.
        let (sql, c) = aggregate("SELECT g, count(DISTINCT c), count(*) FROM t GROUP BY g");
        assert_eq!(sql, "SELECT g, c, count(*) FROM t GROUP BY g, c");
        assert_eq!(
            c.partials,
            [
                Combine::Group,
                Combine::Values,
                Combine::Distinct { of: 1, agg: crate::route::aggregate::DistinctAgg::Count },
                Combine::Count
            ]
        );
        assert_eq!(c.select, "SELECT q0 AS g, q2 AS count, q3 AS count");
        assert!(refused("SELECT count(DISTINCT c) FILTER (WHERE x) FROM t").contains("without FILTER"));
        assert!(refused("SELECT c, d, count(*) FROM t GROUP BY c").contains("neither aggregated nor in GROUP BY"));
        assert!(refused("SELECT c, count(*) FROM t GROUP BY ROLLUP (c)").contains("ROLLUP"));
        let (sql, c) = aggregate("SELECT g, string_agg(c, '; '), bool_and(b) FROM t GROUP BY g");
        assert_eq!(sql, "SELECT g, string_agg(c, '; '), '; ', bool_and(b) FROM t GROUP BY g");
        assert_eq!(c.partials, [Combine::Group, Combine::StringAgg, Combine::Same("bool_and")]);
        assert!(refused("SELECT string_agg(c, ',' ORDER BY c) FROM t").contains("without ORDER BY"));
        assert!(refused("SELECT string_agg(c, d) FROM t").contains("constant delimiter"));
        assert!(refused("SELECT array_agg(c) FROM t").contains("array_agg"));
    }

    #[test]
    fn shapes_that_cannot_be_merged_are_refused_with_the_reason() {
        assert!(refused("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t").contains("percentile"));
        assert!(refused("SELECT x, count(*), rank() OVER (ORDER BY x) FROM t GROUP BY x").contains("window"));
        assert!(refused("SELECT a FROM t UNION SELECT a FROM u").contains("UNION ALL"));
        assert!(refused("SELECT a FROM t UNION ALL SELECT a FROM u ORDER BY lower(a)").contains("UNION ALL"));
        assert!(refused("SELECT * FROM t LIMIT random()::int").contains("LIMIT"));
        assert!(refused("SELECT count(*) FROM t LIMIT $1").contains("constants"));
        let e = crate::sqlerror::SqlError::from(of("SELECT DISTINCT ON (c) c FROM t").unwrap_err());
        assert_eq!(e.code, crate::sqlerror::code::FEATURE_NOT_SUPPORTED);
        assert!(e.hint.unwrap().contains("shard="));
    }

    /// Which tables may be read together is the route's to check; the plan
    /// merges the top: a qualified sort key is the table's column, not an
    /// output column of the same name, and aggregates in subqueries are theirs.
    #[test]
    fn queries_reading_several_tables_merge_their_top() {
        let (sql, order, ..) = rows("SELECT o.id, c.name FROM o JOIN c ON c.id = o.cid ORDER BY c.id");
        assert_eq!(sql, "SELECT o.id, c.name, c.id AS shardcar_sort_0 FROM o JOIN c ON c.id = o.cid ORDER BY c.id");
        assert_eq!(order[0].column, Column::Named("shardcar_sort_0".into()));
        let (_, order, ..) = rows("SELECT o.id, c.name FROM o JOIN c ON c.id = o.cid ORDER BY o.id DESC");
        assert_eq!(order[0].column, Column::At(0));
        let (_, order, ..) = rows("SELECT c.id, (SELECT max(x) FROM o WHERE o.cid = c.id) FROM c ORDER BY 2");
        assert_eq!(order[0].column, Column::At(1));
        assert!(matches!(of("SELECT a FROM t UNION ALL SELECT b FROM u").unwrap(), FanOut::Rows { .. }));
        // UNION ALL sorted by its output columns: each shard sorts and cuts, the merge too.
        let (sql, order, limit, offset, _) =
            rows("SELECT a, b FROM t UNION ALL SELECT c, d FROM u ORDER BY b DESC, 1 LIMIT 5 OFFSET 2");
        assert_eq!(sql, "SELECT a, b FROM t UNION ALL SELECT c, d FROM u ORDER BY b DESC, 1 LIMIT 7");
        assert_eq!(order.iter().map(|k| k.column.clone()).collect::<Vec<_>>(), [Column::At(1), Column::At(0)]);
        assert_eq!((limit, offset), (Some(5), 2));
        assert!(matches!(
            of("SELECT c.region, count(*) FROM c JOIN o ON o.cid = c.id GROUP BY c.region").unwrap(),
            FanOut::Aggregate { .. }
        ));
    }

    #[test]
    fn other_statements_run_everywhere() {
        assert_eq!(of("CREATE INDEX ON t (c)").unwrap(), FanOut::Everywhere);
        assert_eq!(of("DELETE FROM t WHERE x > 1").unwrap(), FanOut::Broadcast);
        let split = FanOut::split_insert(
            "INSERT INTO t (k, v) VALUES (1, 'a'), (2, 'b'), (3, DEFAULT) RETURNING k",
            &[vec![0, 2], vec![1]],
        );
        let part =
            |sql: &str, params: &[usize]| InsertPart { sql: sql.into(), params: params.to_vec(), values: vec![] };
        let split_of = |parts| FanOut::Split { parts, order: vec![] };
        assert_eq!(
            split.unwrap(),
            split_of(vec![
                part("INSERT INTO t (k, v) VALUES (1, 'a'), (3, DEFAULT) RETURNING k", &[]),
                part("INSERT INTO t (k, v) VALUES (2, 'b') RETURNING k", &[]),
            ])
        );
        assert_eq!(
            renumber_params("SELECT '$3', \"$2\", $12, $3"),
            ("SELECT '$3', \"$2\", $1, $2".into(), vec![11, 2])
        );
        // Each part numbers the parameters it keeps from $1.
        let split = FanOut::split_insert(
            "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $4), ($5, $2) ON CONFLICT (k) DO UPDATE SET v = $6",
            &[vec![1], vec![0, 2]],
        );
        assert_eq!(
            split.unwrap(),
            split_of(vec![
                part("INSERT INTO t (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = $3", &[2, 3, 5]),
                part(
                    "INSERT INTO t (k, v) VALUES ($1, $2), ($3, $2) ON CONFLICT (k) DO UPDATE SET v = $4",
                    &[0, 1, 4, 5]
                ),
            ])
        );
    }
}
