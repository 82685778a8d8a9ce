//! Aggregates across shards. Each shard runs the query grouped as the
//! client wrote it, sending its group keys and a partial value per
//! aggregate call (`avg` as a sum and a count). Postgres itself combines
//! them on one shard's connection, in two steps: an inner query that merges
//! the partial rows of each group, and the client's own select list, HAVING,
//! DISTINCT, ORDER BY, LIMIT and OFFSET over it, every aggregate call and
//! group key in them replaced by its combined column. So expressions over
//! aggregates, casts, FILTER and HAVING are Postgres's, with its types,
//! rounding and order.

use pg_query::protobuf::{self, a_const, node::Node as N};

use super::merge::{int_const, refuse, same_expr};
use crate::classify::links::{function_name, is_aggregate};
use crate::policy::Refusal;

/// How one partial column (or column group) of the shards' rows merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// A GROUP BY column: the same on every shard's row of a group.
    Group,
    /// A value an aggregate is DISTINCT over (not a shard key): the shards
    /// group by it too, so each sends its distinct values once per group.
    Values,
    Count,
    Sum,
    Min,
    Max,
    /// Spread over two partial columns: the sum, then the count.
    Avg,
    /// An aggregate that combines its own partial values: `bool_and`,
    /// `bool_or`, `bit_and`, `bit_or`, `bit_xor`.
    Same(&'static str),
    /// `string_agg` without an order of its own: the shards' strings joined
    /// (in no particular order, as one server's would be), over two partial
    /// columns: the string, then the delimiter.
    StringAgg,
    /// `count`, `sum` or `avg` (DISTINCT) over the values of the partial
    /// column group `of` (a `Values`); no column of its own.
    Distinct {
        of: usize,
        agg: DistinctAgg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistinctAgg {
    Count,
    Sum,
    Avg,
}

impl Combine {
    /// Columns of the shards' rows it takes.
    fn width(self) -> usize {
        match self {
            Combine::Avg | Combine::StringAgg => 2,
            Combine::Distinct { .. } => 0,
            _ => 1,
        }
    }

    /// How it merges, in words (explain); `None` for group keys.
    pub fn describe(&self) -> Option<&'static str> {
        Some(match self {
            Combine::Group | Combine::Values => return None,
            Combine::Count => "count: sum of counts",
            Combine::Sum => "sum: sum of sums",
            Combine::Min => "min: least",
            Combine::Max => "max: greatest",
            Combine::Avg => "avg: sum of sums / sum of counts",
            Combine::Same(_) => "bool_*/bit_*: of the shards' values",
            Combine::StringAgg => "string_agg: the shards' strings joined",
            Combine::Distinct { .. } => "DISTINCT: over every shard's distinct values of each group",
        })
    }
}

/// The combining step of an aggregate plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Combining {
    /// Per partial column group (group keys first, then the values of
    /// DISTINCT aggregates, then one per aggregate call): how it merges.
    pub partials: Vec<Combine>,
    /// `SELECT <the client's select list over q0, q1, ...>`.
    pub select: String,
    /// ` WHERE <HAVING> ORDER BY ... LIMIT ... OFFSET ...` over the same.
    pub tail: String,
}

impl Combining {
    /// The combining query over `rows` partial rows of `types` (one row of
    /// NULLs filtered out when `empty`, as VALUES needs a row):
    /// `SELECT <client's list> FROM (SELECT c0 AS q0, sum(c1)::int8 AS q1
    /// FROM (VALUES ($1, $2), ...) AS p(c0, c1) GROUP BY c0) AS q <tail>`.
    pub fn sql(&self, types: &[u32], rows: usize, empty: bool) -> String {
        const INT8: u32 = 20;
        let width = types.len();
        let starts: Vec<usize> = self
            .partials
            .iter()
            .scan(0, |col, c| {
                let at = *col;
                *col += c.width();
                Some(at)
            })
            .collect();
        let mut exprs = Vec::with_capacity(self.partials.len());
        let mut groups = Vec::new();
        for (i, (c, &col)) in self.partials.iter().zip(&starts).enumerate() {
            let int8 = types.get(col) == Some(&INT8);
            let expr = match c {
                Combine::Group => {
                    groups.push(format!("c{col}"));
                    format!("c{col}")
                }
                Combine::Values => continue,
                // No rows at all (a DISTINCT's values grouped away): a count of 0.
                Combine::Count => format!("coalesce(sum(c{col}), 0)::int8"),
                Combine::Sum if int8 => format!("sum(c{col})::int8"),
                Combine::Sum => format!("sum(c{col})"),
                Combine::Min => format!("min(c{col})"),
                Combine::Max => format!("max(c{col})"),
                Combine::Avg if int8 => format!("sum(c{col})::numeric / nullif(sum(c{}), 0)", col + 1),
                Combine::Avg => format!("sum(c{col}) / nullif(sum(c{}), 0)", col + 1),
                Combine::Same(name) => format!("{name}(c{col})"),
                Combine::StringAgg => format!("string_agg(c{col}, c{})", col + 1),
                Combine::Distinct { of, agg } => {
                    let values = starts.get(*of).copied().unwrap_or_default();
                    match agg {
                        DistinctAgg::Count => format!("count(DISTINCT c{values})"),
                        DistinctAgg::Sum => format!("sum(DISTINCT c{values})"),
                        DistinctAgg::Avg => format!("avg(DISTINCT c{values})"),
                    }
                }
            };
            exprs.push(format!("{expr} AS q{i}"));
        }
        let rows: Vec<String> = (0..rows)
            .map(|s| {
                let params: Vec<String> = (0..width).map(|c| format!("${}", s * width + c + 1)).collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let cols: Vec<String> = (0..width).map(|c| format!("c{c}")).collect();
        let filter = if empty { " WHERE false" } else { "" };
        let group_by = if groups.is_empty() { String::new() } else { format!(" GROUP BY {}", groups.join(", ")) };
        format!(
            "{} FROM (SELECT {} FROM (VALUES {}) AS p({}){filter}{group_by}) AS q{}",
            self.select,
            exprs.join(", "),
            rows.join(", "),
            cols.join(", "),
            self.tail
        )
    }
}

/// Table name → its shard key column, for the sharded tables of a query.
pub type Keys<'k> = &'k dyn Fn(&str) -> Option<String>;

/// Rewrites `select` into the shards' partial query and says how to combine.
pub fn plan(
    select: &mut protobuf::SelectStmt,
    keys: Keys,
    limit: Option<u64>,
    offset: u64,
    distinct: bool,
) -> Result<Combining, Refusal> {
    if select.target_list.iter().any(super::merge::is_star) {
        return Err(refuse("SELECT * with GROUP BY is not merged across shards; name the columns".into()));
    }
    let targets: Vec<(String, protobuf::Node)> = select
        .target_list
        .iter()
        .map(|t| match &t.node {
            Some(N::ResTarget(r)) => {
                let val = r.val.as_deref().cloned().unwrap_or_default();
                let name = if r.name.is_empty() { column_name(&val) } else { r.name.clone() };
                (name, val)
            }
            _ => (String::new(), protobuf::Node::default()),
        })
        .collect();
    // GROUP BY items by position or output name stand for that output's expression.
    let groups: Vec<protobuf::Node> = select
        .group_clause
        .iter()
        .map(|item| match &item.node {
            Some(N::AConst(protobuf::AConst { val: Some(a_const::Val::Ival(i)), .. })) => usize::try_from(i.ival)
                .ok()
                .filter(|&k| k >= 1 && k <= targets.len())
                .map(|k| targets[k - 1].1.clone())
                .ok_or_else(|| refuse(format!("GROUP BY position {} is not in the select list", i.ival))),
            Some(N::ColumnRef(c)) if c.fields.len() == 1 => {
                let name = target_name_of(c);
                Ok(targets
                    .iter()
                    .find(|(n, _)| Some(n) == name.as_ref())
                    .map_or_else(|| item.clone(), |(_, e)| e.clone()))
            }
            _ => Ok(item.clone()),
        })
        .collect::<Result<_, _>>()?;

    // Every aggregate call of the select list, HAVING and ORDER BY, once.
    let mut calls: Vec<protobuf::FuncCall> = Vec::new();
    let sorted = select.sort_clause.iter().filter_map(|s| match &s.node {
        Some(N::SortBy(b)) => b.node.as_deref(),
        _ => None,
    });
    for expr in targets.iter().map(|(_, e)| e).chain(select.having_clause.as_deref()).chain(sorted) {
        for f in super::merge::outside_subqueries(expr) {
            if is_aggregate(f) && !calls.iter().any(|c| same_call(c, f)) {
                calls.push(f.clone());
            }
        }
    }
    // DISTINCT over a column that is not a shard key: its values become
    // group keys of the shards' query (after the client's).
    let mut values: Vec<protobuf::Node> = Vec::new();
    let mut combines: Vec<Result<Combine, DistinctAgg>> =
        calls.iter().map(|call| combine_of(call, select, keys)).collect::<Result<_, _>>()?;
    // Grouped by those values too, the shards' groups split a key's rows:
    // a DISTINCT over a key is then merged from values as well.
    if combines.iter().any(Result::is_err) {
        for (call, c) in calls.iter().zip(combines.iter_mut()) {
            if call.agg_distinct
                && let Ok(combine) = *c
            {
                *c = distinct_values(combine).map_or(Ok(combine), Err);
            }
        }
    }
    let combines: Vec<Combine> = calls
        .iter()
        .zip(combines)
        .map(|(call, c)| match c {
            Ok(c) => c,
            Err(agg) => {
                let arg = &call.args[0];
                let at = values.iter().position(|v| same_expr(v, arg)).unwrap_or_else(|| {
                    values.push(arg.clone());
                    values.len() - 1
                });
                Combine::Distinct { of: groups.len() + at, agg }
            }
        })
        .collect();
    let mut partials: Vec<Combine> = vec![Combine::Group; groups.len()];
    partials.extend(values.iter().map(|_| Combine::Values));
    let mut shard_targets: Vec<protobuf::Node> =
        groups.iter().chain(&values).map(|g| res_target(g.clone(), "")).collect();
    for (call, combine) in calls.iter().zip(combines) {
        partials.push(combine);
        match combine {
            Combine::Avg => {
                shard_targets.push(res_target(call_named(call, "sum"), ""));
                shard_targets.push(res_target(call_named(call, "count"), ""));
            }
            Combine::StringAgg => {
                shard_targets.push(res_target(func(call.clone()), ""));
                shard_targets.push(res_target(call.args[1].clone(), ""));
            }
            Combine::Distinct { .. } => {}
            _ => shard_targets.push(res_target(func(call.clone()), "")),
        }
    }
    let first_call = groups.len() + values.len();

    // The client's select list, HAVING and ORDER BY over the combined columns.
    let rewrite = |node: &protobuf::Node| -> Result<protobuf::Node, Refusal> {
        let mut node = node.clone();
        replace(&mut node, &groups, &calls, first_call);
        leftover(&node)?;
        Ok(node)
    };
    // Enums left at 0 (undefined) make the deparser abort the process.
    let mut outer = protobuf::SelectStmt {
        op: protobuf::SetOperation::SetopNone as i32,
        limit_option: protobuf::LimitOption::Default as i32,
        ..Default::default()
    };
    for (name, expr) in &targets {
        outer.target_list.push(res_target(rewrite(expr)?, name));
    }
    if distinct {
        outer.distinct_clause = vec![protobuf::Node { node: None }];
    }
    let mut tail = protobuf::SelectStmt {
        target_list: vec![res_target(int_const(1), "")],
        where_clause: select.having_clause.as_deref().map(&rewrite).transpose()?.map(Box::new),
        limit_count: limit.map(|l| Box::new(int_const(l))),
        limit_offset: (offset > 0).then(|| Box::new(int_const(offset))),
        op: protobuf::SetOperation::SetopNone as i32,
        limit_option: if limit.is_some() { protobuf::LimitOption::Count } else { protobuf::LimitOption::Default }
            as i32,
        ..Default::default()
    };
    for item in &select.sort_clause {
        let Some(N::SortBy(sort)) = &item.node else { continue };
        let mut sort = (**sort).clone();
        if !sort.use_op.is_empty() {
            return Err(refuse("ORDER BY ... USING is not merged across shards".into()));
        }
        // A position, or a name of an output column, means the same over the combined rows.
        let output = match sort.node.as_deref().and_then(|n| n.node.as_ref()) {
            Some(N::AConst(_)) => true,
            Some(N::ColumnRef(c)) if c.fields.len() == 1 => {
                let name = target_name_of(c);
                targets.iter().any(|(n, _)| Some(n) == name.as_ref())
            }
            _ => false,
        };
        if !output && let Some(expr) = sort.node.as_deref() {
            sort.node = Some(Box::new(rewrite(expr)?));
        }
        tail.sort_clause.push(protobuf::Node { node: Some(N::SortBy(Box::new(sort))) });
    }
    let select_sql = deparse(outer)?;
    let tail_sql = deparse(tail)?;
    let tail_sql = tail_sql.strip_prefix("SELECT 1").unwrap_or(&tail_sql).to_string();

    select.target_list = shard_targets;
    select.group_clause = groups.into_iter().chain(values).collect();
    select.having_clause = None;
    select.sort_clause.clear();
    select.distinct_clause.clear();
    select.limit_count = None;
    select.limit_offset = None;
    Ok(Combining { partials, select: select_sql, tail: tail_sql })
}

/// How an aggregate call's partial values merge (`Err`: DISTINCT over a
/// column that is not a shard key, merged from the shards' distinct
/// values); a refusal for one that cannot be merged exactly.
fn combine_of(
    call: &protobuf::FuncCall,
    select: &protobuf::SelectStmt,
    keys: Keys,
) -> Result<Result<Combine, DistinctAgg>, Refusal> {
    let name = function_name(call).unwrap_or_default();
    let combine = match name.as_str() {
        "count" => Combine::Count,
        "sum" => Combine::Sum,
        "min" => Combine::Min,
        "max" => Combine::Max,
        "avg" => Combine::Avg,
        "bool_and" | "every" => Combine::Same("bool_and"),
        "bool_or" => Combine::Same("bool_or"),
        "bit_and" => Combine::Same("bit_and"),
        "bit_or" => Combine::Same("bit_or"),
        "bit_xor" => Combine::Same("bit_xor"),
        // Its delimiter is a constant or a parameter: the shards send it with the string.
        "string_agg" if call.agg_order.is_empty() && matches!(call.args.get(1), Some(d) if is_constant(d)) => {
            Combine::StringAgg
        }
        "string_agg" => {
            return Err(refuse(
                "string_agg(...) is merged across shards only without ORDER BY (the shards' order would be lost) \
                 and with a constant delimiter"
                    .into(),
            ));
        }
        _ => {
            return Err(refuse(format!(
                "{name}(...) is not merged across shards: count, sum, min, max, avg, bool_and, bool_or, every, \
                 bit_and, bit_or, bit_xor and string_agg are (also inside expressions, with FILTER and DISTINCT)"
            )));
        }
    };
    if call.agg_within_group {
        return Err(refuse(format!("{name}(...) WITHIN GROUP is not merged across shards")));
    }
    if call
        .args
        .iter()
        .chain(call.agg_filter.as_deref())
        .any(|a| super::merge::outside_subqueries(a).iter().any(|f| is_aggregate(f)))
    {
        return Err(refuse("nested aggregates are not merged across shards".into()));
    }
    // A value of the shard key lives on one shard only: its distinct values
    // per shard never meet another shard's, and each shard's DISTINCT
    // aggregate is combined as a plain one.
    if !call.agg_distinct || idempotent(combine) || matches!(call.args.as_slice(), [arg] if is_key(arg, select, keys)) {
        return Ok(Ok(combine));
    }
    match distinct_values(combine) {
        Some(agg) if call.args.len() == 1 && call.agg_filter.is_none() => Ok(Err(agg)),
        _ => Err(refuse(format!(
            "{name}(DISTINCT ...) is merged across shards over the shard key, or as count, sum or avg of one \
             column without FILTER"
        ))),
    }
}

/// An aggregate that gives the same over repeated values (DISTINCT changes nothing).
fn idempotent(combine: Combine) -> bool {
    matches!(combine, Combine::Min | Combine::Max | Combine::Same("bool_and" | "bool_or" | "bit_and" | "bit_or"))
}

/// A constant or a parameter (a cast of one included).
fn is_constant(node: &protobuf::Node) -> bool {
    match &node.node {
        Some(N::AConst(_) | N::ParamRef(_)) => true,
        Some(N::TypeCast(t)) => t.arg.as_deref().is_some_and(is_constant),
        _ => false,
    }
}

/// The DISTINCT aggregate merged from the shards' distinct values.
fn distinct_values(combine: Combine) -> Option<DistinctAgg> {
    match combine {
        Combine::Count => Some(DistinctAgg::Count),
        Combine::Sum => Some(DistinctAgg::Sum),
        Combine::Avg => Some(DistinctAgg::Avg),
        _ => None,
    }
}

/// Whether `node` is the shard key column of a sharded table this query
/// reads at its top level.
fn is_key(node: &protobuf::Node, select: &protobuf::SelectStmt, keys: Keys) -> bool {
    let Some(N::ColumnRef(c)) = &node.node else { return false };
    let names = crate::classify::shape::column_names(c);
    let mut tables: Vec<(String, String)> = Vec::new();
    fn gather(node: &protobuf::Node, out: &mut Vec<(String, String)>) {
        match &node.node {
            Some(N::RangeVar(r)) => {
                let refname = r.alias.as_ref().map_or(r.relname.clone(), |a| a.aliasname.clone());
                out.push((refname, r.relname.clone()));
            }
            Some(N::JoinExpr(j)) => {
                for side in [&j.larg, &j.rarg].into_iter().flatten() {
                    gather(side, out);
                }
            }
            _ => {}
        }
    }
    for item in &select.from_clause {
        gather(item, &mut tables);
    }
    match names.as_slice() {
        [column] => tables.iter().any(|(_, t)| keys(t).as_deref() == Some(column)),
        [.., q, column] => tables.iter().any(|(r, t)| r == q && keys(t).as_deref() == Some(column)),
        [] => false,
    }
}

/// Replaces group keys and aggregate calls (outside subqueries) with the
/// combined columns `q<i>`: group keys are the first columns, the calls
/// from `first_call` on.
fn replace(node: &mut protobuf::Node, groups: &[protobuf::Node], calls: &[protobuf::FuncCall], first_call: usize) {
    if let Some(i) = groups.iter().position(|g| same_expr(g, node)) {
        *node = column_ref(&format!("q{i}"));
        return;
    }
    if let Some(N::FuncCall(f)) = &node.node
        && let Some(i) = calls.iter().position(|c| same_call(c, f))
    {
        *node = column_ref(&format!("q{}", first_call + i));
        return;
    }
    let each = |n: &mut protobuf::Node| replace(n, groups, calls, first_call);
    let Some(n) = node.node.as_mut() else { return };
    match n {
        N::AExpr(e) => [&mut e.lexpr, &mut e.rexpr].into_iter().flatten().for_each(|b| each(b)),
        N::BoolExpr(b) => b.args.iter_mut().for_each(each),
        N::FuncCall(f) => f.args.iter_mut().for_each(each),
        N::TypeCast(t) => t.arg.iter_mut().for_each(|b| each(b)),
        N::CaseExpr(c) => {
            c.arg.iter_mut().chain(c.defresult.iter_mut()).for_each(|b| each(b));
            c.args.iter_mut().for_each(each);
        }
        N::CaseWhen(w) => w.expr.iter_mut().chain(w.result.iter_mut()).for_each(|b| each(b)),
        N::CoalesceExpr(c) => c.args.iter_mut().for_each(each),
        N::MinMaxExpr(m) => m.args.iter_mut().for_each(each),
        N::RowExpr(r) => r.args.iter_mut().for_each(each),
        N::AArrayExpr(a) => a.elements.iter_mut().for_each(each),
        N::List(l) => l.items.iter_mut().for_each(each),
        N::NullTest(t) => t.arg.iter_mut().for_each(|b| each(b)),
        N::BooleanTest(t) => t.arg.iter_mut().for_each(|b| each(b)),
        N::CollateClause(c) => c.arg.iter_mut().for_each(|b| each(b)),
        N::NamedArgExpr(a) => a.arg.iter_mut().for_each(|b| each(b)),
        _ => {}
    }
}

/// What the combining query cannot evaluate: a column that is neither a
/// group key nor aggregated, or a subquery (it would read the combining
/// shard's tables only).
fn leftover(node: &protobuf::Node) -> Result<(), Refusal> {
    for n in node.node.as_ref().map(|n| n.nodes()).unwrap_or_default() {
        match n.0 {
            pg_query::NodeRef::SubLink(_) => {
                return Err(refuse(
                    "a subquery in the select list, HAVING or ORDER BY of aggregates across shards".into(),
                ));
            }
            pg_query::NodeRef::ColumnRef(c) if !is_combined(c) => {
                return Err(refuse(
                    "an output column, HAVING or ORDER BY uses a column that is neither aggregated nor in GROUP BY"
                        .into(),
                ));
            }
            pg_query::NodeRef::FuncCall(f) if is_aggregate(f) => {
                return Err(refuse("an aggregate shardcar cannot place in the combining query".into()));
            }
            _ => {}
        }
    }
    Ok(())
}

fn is_combined(c: &protobuf::ColumnRef) -> bool {
    matches!(c.fields.as_slice(), [f] if matches!(&f.node, Some(N::String(s)) if s.sval.starts_with('q') && s.sval[1..].parse::<usize>().is_ok()))
}

/// Two aggregate calls are the same, wherever they were written.
fn same_call(a: &protobuf::FuncCall, b: &protobuf::FuncCall) -> bool {
    same_expr(&func(a.clone()), &func(b.clone()))
}

fn func(f: protobuf::FuncCall) -> protobuf::Node {
    protobuf::Node { node: Some(N::FuncCall(Box::new(f))) }
}

/// `avg(x)` as `sum(x)` or `count(x)`, FILTER and DISTINCT kept.
fn call_named(call: &protobuf::FuncCall, name: &str) -> protobuf::Node {
    let mut f = call.clone();
    f.funcname = vec![protobuf::Node { node: Some(N::String(protobuf::String { sval: name.to_string() })) }];
    func(f)
}

fn res_target(val: protobuf::Node, name: &str) -> protobuf::Node {
    protobuf::Node {
        node: Some(N::ResTarget(Box::new(protobuf::ResTarget {
            name: name.to_string(),
            indirection: vec![],
            val: Some(Box::new(val)),
            location: -1,
        }))),
    }
}

fn column_ref(name: &str) -> protobuf::Node {
    protobuf::Node {
        node: Some(N::ColumnRef(protobuf::ColumnRef {
            fields: vec![protobuf::Node { node: Some(N::String(protobuf::String { sval: name.to_string() })) }],
            location: -1,
        })),
    }
}

fn deparse(select: protobuf::SelectStmt) -> Result<String, Refusal> {
    N::SelectStmt(Box::new(select))
        .deparse(pg_query::DeparseOptions::default())
        .map_err(|e| refuse(format!("the combining query cannot be written: {e}")))
}

fn target_name_of(c: &protobuf::ColumnRef) -> Option<String> {
    match c.fields.last().and_then(|f| f.node.as_ref()) {
        Some(N::String(s)) => Some(s.sval.clone()),
        _ => None,
    }
}

/// The name Postgres gives an unnamed output column (its FigureColname).
pub fn column_name(node: &protobuf::Node) -> String {
    let name = match &node.node {
        Some(N::ColumnRef(c)) => target_name_of(c),
        Some(N::FuncCall(f)) => function_name(f),
        Some(N::TypeCast(t)) => {
            let inner = t.arg.as_deref().map(column_name).filter(|n| n != "?column?");
            inner.or_else(|| {
                t.type_name.as_ref().and_then(|t| t.names.last()).and_then(|n| match &n.node {
                    Some(N::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
            })
        }
        Some(N::CaseExpr(_)) => Some("case".into()),
        Some(N::CoalesceExpr(_)) => Some("coalesce".into()),
        Some(N::AArrayExpr(_)) => Some("array".into()),
        Some(N::RowExpr(_)) => Some("row".into()),
        Some(N::MinMaxExpr(m)) => {
            Some(if m.op == protobuf::MinMaxOp::IsGreatest as i32 { "greatest" } else { "least" }.into())
        }
        Some(N::AExpr(e)) if e.kind == protobuf::AExprKind::AexprNullif as i32 => Some("nullif".into()),
        _ => None,
    };
    name.unwrap_or_else(|| "?column?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_are_combined_by_postgres_under_the_clients_select_list() {
        let combining = Combining {
            partials: vec![Combine::Group, Combine::Count, Combine::Avg, Combine::Max],
            select: "SELECT q0 AS region, q1 AS count, round(q2, 2) AS round, q3::int4 AS max".into(),
            tail: " WHERE q1 > 1 LIMIT 1".into(),
        };
        assert_eq!(
            combining.sql(&[25, 20, 1700, 20, 23], 2, false),
            "SELECT q0 AS region, q1 AS count, round(q2, 2) AS round, q3::int4 AS max FROM (SELECT c0 AS q0, \
             coalesce(sum(c1), 0)::int8 AS q1, sum(c2) / nullif(sum(c3), 0) AS q2, max(c4) AS q3 FROM (VALUES \
             ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)) AS p(c0, c1, c2, c3, c4) GROUP BY c0) AS q WHERE q1 > 1 LIMIT 1"
        );
        // A DISTINCT over another column: its values grouped by on the shards, counted here.
        let combining = Combining {
            partials: vec![
                Combine::Values,
                Combine::Count,
                Combine::Distinct { of: 0, agg: DistinctAgg::Count },
                Combine::Distinct { of: 0, agg: DistinctAgg::Avg },
            ],
            select: "SELECT q1 AS count, q2 AS count, q3 AS avg".into(),
            tail: String::new(),
        };
        assert_eq!(
            combining.sql(&[25, 20], 1, false),
            "SELECT q1 AS count, q2 AS count, q3 AS avg FROM (SELECT coalesce(sum(c1), 0)::int8 AS q1, \
             count(DISTINCT c0) AS q2, avg(DISTINCT c0) AS q3 FROM (VALUES ($1, $2)) AS p(c0, c1)) AS q"
        );
    }
}
