//! Which rows a query combines: every appearance of a table (a table named
//! twice appears twice), the equalities that tie their columns together,
//! and the parts — subqueries, derived tables, CTEs, UNION ALL arms — that
//! compute over sets of rows (aggregates, LIMIT, DISTINCT, windows).
//!
//! Run shard by shard, a query gives one Postgres's answer when every row
//! it produces is made of rows that live on one shard, and every part that
//! computes over a set sees the whole set on that shard. Tables sharded by
//! one policy keep equal keys together, so the first holds when the keys of
//! all sharded appearances are equal — joined on their keys, directly or
//! through other columns, constants or parameters — and the second when a
//! part groups (or partitions, or is DISTINCT) by that key, or is pinned to
//! one key value by a condition from outside it. This module finds those
//! facts in the parse tree, independent of the config; `check` applies them
//! to the tables' rules. Anything it cannot read is refused, never guessed.

use std::collections::HashMap;

use pg_query::protobuf::{self, JoinType, SetOperation, SubLinkType, node::Node as N};

use super::shape::{Operand, Value};

/// Aggregate functions Postgres ships, by name.
pub const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

/// A function call's own name, lowercased.
pub fn function_name(f: &protobuf::FuncCall) -> Option<String> {
    match f.funcname.last().and_then(|n| n.node.as_ref()) {
        Some(N::String(s)) => Some(s.sval.to_lowercase()),
        _ => None,
    }
}

/// An aggregate call (not a window function's).
pub fn is_aggregate(f: &protobuf::FuncCall) -> bool {
    f.over.is_none() && (f.agg_star || function_name(f).is_some_and(|n| AGGREGATES.contains(&n.as_str())))
}

/// A value in the query: a column of one relation (a table's appearance or
/// a subquery), a constant, a parameter, or something unknown (never equal
/// to anything else).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Term {
    Column(usize, String),
    Const(Value),
    Param(usize),
    Unknown(usize),
}

/// One appearance of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appearance {
    pub table: String,
    /// Its schema, when written.
    pub schema: String,
    /// The relation its columns belong to.
    rel: usize,
    /// The top-level UNION ALL arm it is in (0 without one): arms are
    /// answered each on their own, so they need not be joined to each other.
    pub arm: usize,
}

impl Appearance {
    pub fn is_catalog(&self) -> bool {
        is_catalog(&self.schema, &self.table)
    }
}

/// A system catalog or information_schema view (pg_catalog comes first on
/// every search_path unless placed later).
pub fn is_catalog(schema: &str, table: &str) -> bool {
    match schema {
        "" => table.starts_with("pg_"),
        schema => schema == "pg_catalog" || schema == "information_schema",
    }
}

/// A part that computes over a set of rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// What it computes, for the refusal.
    pub what: &'static str,
    /// The relations of the part, nested ones included.
    rels: std::ops::Range<usize>,
    /// Any of these in the sharded tables' key class satisfies it.
    anchors: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Links {
    pub appearances: Vec<Appearance>,
    /// Each linked term's class (the smallest index of its class members).
    classes: HashMap<Term, usize>,
    pub needs: Vec<Need>,
    /// Why the query is never run shard by shard, whatever the config.
    pub unreadable: Option<String>,
    /// Queries of a top-level UNION ALL (1 without one).
    pub arms: usize,
}

/// How a table takes part, as the config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role<'r> {
    /// Sharded: its key column, and its colocation group (equal keys of one
    /// group are on one shard).
    Sharded { key: &'r str, group: usize },
    /// The same rows on every shard.
    Reference,
    /// Neither: a catalog, or a table shardcar does not shard.
    Plain,
}

/// Why a query cannot run shard by shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlinked {
    Unreadable(String),
    /// Sharded tables of different colocation groups.
    Groups(String, String),
    /// Two sharded appearances whose keys are not shown equal.
    Keys(String, String),
    /// A part computing over sets that is neither grouped by the key nor pinned to one key.
    Need {
        what: &'static str,
        table: String,
    },
}

impl Links {
    /// The links of a SELECT, UPDATE or DELETE; `None` for other statements
    /// and for a query reading one table with nothing computed over sets
    /// below the top (which the merge handles).
    pub fn of(node: &N) -> Option<Links> {
        let mut a = Analyzer::default();
        match node {
            N::SelectStmt(s) => {
                a.select(s, true);
            }
            N::UpdateStmt(u) => {
                let exprs = u.target_list.iter().chain(returning(&u.returning_clause));
                a.dml(u.relation.as_ref(), &u.from_clause, u.where_clause.as_deref(), exprs)
            }
            N::DeleteStmt(d) => {
                a.dml(d.relation.as_ref(), &d.using_clause, d.where_clause.as_deref(), returning(&d.returning_clause))
            }
            _ => return None,
        }
        // Every table and subquery must have been seen: a node kind the
        // walk does not know could hide one.
        let (range_vars, sublinks) = counts(node);
        if range_vars != a.range_vars.len() + a.unread.0 || sublinks != a.sublinks.len() + a.unread.1 {
            a.refuse("a table or subquery inside an expression shardcar does not read");
        }
        if a.appearances.len() <= 1 && a.needs.is_empty() && a.unreadable.is_none() && a.arms <= 1 {
            return None;
        }
        let classes = a.classes();
        let arms = a.arms.max(1);
        Some(Links { appearances: a.appearances, classes, needs: a.needs, unreadable: a.unreadable, arms })
    }

    fn class(&self, t: &Term) -> Result<usize, Term> {
        self.classes.get(t).copied().ok_or_else(|| t.clone())
    }

    /// Whether the query gives one Postgres's answer run on each shard its
    /// route names, given each table's role. `fanned_out`: it runs on
    /// several shards, where a table that is neither sharded nor a
    /// reference table is not the same everywhere, and an arm without a
    /// sharded table would be answered by every shard.
    pub fn check<'r>(&self, role: impl Fn(&Appearance) -> Role<'r>, fanned_out: bool) -> Result<(), Unlinked> {
        if let Some(why) = &self.unreadable {
            return Err(Unlinked::Unreadable(why.clone()));
        }
        let roles: Vec<Role> = self.appearances.iter().map(&role).collect();
        let mut group: Option<(usize, &Appearance)> = None;
        // Per arm: the key class of its first sharded appearance.
        let mut keys: HashMap<usize, (Result<usize, Term>, &Appearance)> = HashMap::new();
        for (a, r) in self.appearances.iter().zip(&roles) {
            match r {
                Role::Sharded { key, group: g } => {
                    match group {
                        Some((first, t)) if first != *g => {
                            return Err(Unlinked::Groups(t.table.clone(), a.table.clone()));
                        }
                        _ => group = Some((*g, a)),
                    }
                    let class = self.class(&Term::Column(a.rel, key.to_string()));
                    match keys.get(&a.arm) {
                        Some((k, first)) if *k != class => {
                            return Err(Unlinked::Keys(first.table.clone(), a.table.clone()));
                        }
                        Some(_) => {}
                        None => {
                            keys.insert(a.arm, (class, a));
                        }
                    }
                }
                Role::Plain if fanned_out => {
                    return Err(Unlinked::Unreadable(format!(
                        "{} is neither sharded nor a reference table, so its rows are not the same on every shard",
                        a.table
                    )));
                }
                _ => {}
            }
        }
        if fanned_out && (0..self.arms).any(|arm| !keys.contains_key(&arm)) {
            return Err(Unlinked::Unreadable(
                "a query of the UNION ALL reads no sharded table, so every shard would answer it".into(),
            ));
        }
        for need in &self.needs {
            let sharded = self
                .appearances
                .iter()
                .zip(&roles)
                .find(|(a, r)| need.rels.contains(&a.rel) && matches!(r, Role::Sharded { .. }));
            let Some((a, _)) = sharded else { continue };
            let Some((key, _)) = keys.get(&a.arm) else { continue };
            if !need.anchors.iter().any(|t| self.class(t) == *key) {
                return Err(Unlinked::Need { what: need.what, table: a.table.clone() });
            }
        }
        Ok(())
    }
}

/// A relation a query reads from.
#[derive(Debug, Clone)]
enum Rel {
    /// A table's appearance: its columns are its own.
    Table,
    /// A subquery or CTE: its output columns by name, and the one relation
    /// its `*` stands for.
    Derived { columns: Vec<(String, Term)>, star: Option<usize> },
    /// A function or a relation whose columns are not followed.
    Opaque,
}

/// A query level's relations by the names it refers to them with.
#[derive(Default)]
struct Frame {
    rels: Vec<(String, usize)>,
}

/// What a SELECT gives its reader.
#[derive(Default)]
struct Outputs {
    columns: Vec<(String, Term)>,
    star: Option<usize>,
}

#[derive(Default)]
struct Analyzer<'a> {
    appearances: Vec<Appearance>,
    rels: Vec<Rel>,
    frames: Vec<Frame>,
    ctes: Vec<(String, &'a protobuf::SelectStmt)>,
    equal: Vec<(Term, Term)>,
    needs: Vec<Need>,
    unknowns: usize,
    arm: usize,
    arms: usize,
    unreadable: Option<String>,
    /// RangeVar and SubLink nodes walked (by address: a CTE read twice is
    /// walked twice), and those of CTEs never read (which never run).
    range_vars: std::collections::HashSet<usize>,
    sublinks: std::collections::HashSet<usize>,
    unread: (usize, usize),
    read_ctes: std::collections::HashSet<usize>,
}

/// What one query level found in its expressions.
#[derive(Default)]
struct Level {
    aggregates: bool,
    /// Each window function's PARTITION BY terms.
    windows: Vec<Vec<Term>>,
}

impl<'a> Analyzer<'a> {
    fn refuse(&mut self, why: &str) {
        self.unreadable.get_or_insert_with(|| why.to_string());
    }

    fn unknown(&mut self) -> Term {
        self.unknowns += 1;
        Term::Unknown(self.unknowns)
    }

    fn classes(&self) -> HashMap<Term, usize> {
        let mut index: HashMap<Term, usize> = HashMap::new();
        let mut parent: Vec<usize> = Vec::new();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let mut id = |t: &Term, parent: &mut Vec<usize>| {
            *index.entry(t.clone()).or_insert_with(|| {
                parent.push(parent.len());
                parent.len() - 1
            })
        };
        let pairs: Vec<(usize, usize)> =
            self.equal.iter().map(|(a, b)| (id(a, &mut parent), id(b, &mut parent))).collect();
        for (a, b) in pairs {
            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            parent[hi] = lo;
        }
        index.into_iter().map(|(t, i)| (t, root(&mut parent, i))).collect()
    }

    /// UPDATE or DELETE: the target and its FROM/USING tables, one level.
    fn dml(
        &mut self,
        target: Option<&'a protobuf::RangeVar>,
        from: &'a [protobuf::Node],
        filter: Option<&'a protobuf::Node>,
        exprs: impl Iterator<Item = &'a protobuf::Node>,
    ) {
        let start = self.rels.len();
        self.frames.push(Frame::default());
        if let Some(r) = target {
            self.range_var(r);
        }
        for item in from {
            self.read_from(item, &mut Vec::new());
        }
        let mut level = Level::default();
        if let Some(w) = filter {
            self.condition(w, start, &mut level);
        }
        for e in exprs {
            self.expr(e, false, &mut level);
        }
        self.frames.pop();
    }

    /// A SELECT (or set operation); its outputs.
    fn select(&mut self, s: &'a protobuf::SelectStmt, top: bool) -> Outputs {
        let ctes_before = self.ctes.len();
        if let Some(with) = &s.with_clause {
            if with.recursive {
                self.refuse("WITH RECURSIVE is not run shard by shard");
            }
            for cte in &with.ctes {
                let Some(N::CommonTableExpr(c)) = &cte.node else { continue };
                match c.ctequery.as_deref().and_then(|q| q.node.as_ref()) {
                    Some(N::SelectStmt(q)) => self.ctes.push((c.ctename.clone(), q)),
                    _ => self.refuse("a WITH part that writes is not run shard by shard"),
                }
            }
        }
        let out = if s.op != SetOperation::SetopNone as i32 { self.set_operation(s, top) } else { self.level(s, top) };
        for (_, q) in self.ctes.split_off(ctes_before) {
            if !self.read_ctes.contains(&(q as *const _ as usize)) {
                let (r, l) = counts_in(q);
                self.unread.0 += r;
                self.unread.1 += l;
            }
        }
        out
    }

    fn set_operation(&mut self, s: &'a protobuf::SelectStmt, top: bool) -> Outputs {
        if !(s.op == SetOperation::SetopUnion as i32 && s.all) {
            self.refuse("UNION, INTERSECT and EXCEPT (other than UNION ALL) are not run shard by shard");
        }
        let mut arms = Vec::new();
        for arm in [&s.larg, &s.rarg].into_iter().flatten() {
            // Each query of a top-level UNION ALL is answered on its own.
            if top && arm.op == SetOperation::SetopNone as i32 {
                self.arm = self.arms;
                self.arms += 1;
            }
            arms.push(self.select(arm, top));
        }
        // A row of the union comes from one arm: its column is that arm's.
        let width = arms.iter().map(|a| a.columns.len()).min().unwrap_or(0);
        let mut columns = Vec::with_capacity(width);
        for i in 0..width {
            let term = self.unknown();
            for arm in &arms {
                self.equal.push((term.clone(), arm.columns[i].1.clone()));
            }
            columns.push((arms[0].columns[i].0.clone(), term));
        }
        Outputs { columns, star: None }
    }

    /// One query level: FROM, WHERE, GROUP BY, HAVING, the select list,
    /// ORDER BY, DISTINCT and LIMIT.
    fn level(&mut self, s: &'a protobuf::SelectStmt, top: bool) -> Outputs {
        if s.into_clause.is_some() {
            self.refuse("SELECT INTO creates a table: use CREATE TABLE ... AS, which runs on every shard");
        }
        // FOR UPDATE OF t names a relation already read.
        for lock in &s.locking_clause {
            if let Some(N::LockingClause(l)) = &lock.node {
                for rel in &l.locked_rels {
                    if let Some(N::RangeVar(r)) = &rel.node {
                        self.range_vars.insert(r as *const _ as usize);
                    }
                }
            }
        }
        let start = self.rels.len();
        self.frames.push(Frame::default());
        let mut nullable = Vec::new();
        for item in &s.from_clause {
            self.read_from(item, &mut nullable);
        }
        let mut level = Level::default();
        let pinned = match s.where_clause.as_deref() {
            Some(w) => self.condition(w, start, &mut level),
            None => Vec::new(),
        };
        for list in &s.values_lists {
            self.expr(list, false, &mut level);
        }
        let mut out = Outputs::default();
        for target in &s.target_list {
            let Some(N::ResTarget(r)) = &target.node else { continue };
            let Some(val) = r.val.as_deref() else { continue };
            self.expr(val, false, &mut level);
            if let Some(N::ColumnRef(c)) = &val.node
                && matches!(c.fields.last().and_then(|f| f.node.as_ref()), Some(N::AStar(_)))
            {
                out.star = self.star(c);
                continue;
            }
            let term = self.term(val).unwrap_or_else(|| self.unknown());
            out.columns.push((output_name(r, val), term));
        }
        if s.target_list.len() > 1 {
            out.star = None;
        }
        let mut grouped = Vec::new();
        let mut grouping_sets = false;
        for g in &s.group_clause {
            if matches!(g.node, Some(N::GroupingSet(_))) {
                grouping_sets = true;
            }
            self.expr(g, false, &mut level);
            grouped.extend(self.term(g));
        }
        if let Some(h) = s.having_clause.as_deref() {
            self.expr(h, false, &mut level);
        }
        for node in &s.sort_clause {
            self.expr(node, false, &mut level);
        }
        let mut distinct = Vec::new();
        for d in &s.distinct_clause {
            if d.node.is_none() {
                distinct.extend(out.columns.iter().map(|(_, t)| t.clone()));
            } else {
                self.expr(d, false, &mut level);
                distinct.extend(self.term(d));
            }
        }
        for l in [&s.limit_count, &s.limit_offset].into_iter().flatten() {
            self.expr(l, false, &mut level);
        }
        let rels = start..self.rels.len();
        let outside = |t: &Term| match t {
            Term::Column(rel, _) => nullable.contains(rel),
            _ => true,
        };
        let keyed = |terms: &[Term]| -> Vec<Term> {
            pinned.iter().chain(terms.iter().filter(|t| !outside(t))).cloned().collect()
        };
        // The top level's aggregates, DISTINCT and LIMIT are merged by the
        // route's plan; below it, and in a UNION ALL's arms, they are not.
        let below = !top || self.arms > 0;
        let limited = [&s.limit_count, &s.limit_offset]
            .into_iter()
            .flatten()
            .any(|l| !matches!(&l.node, Some(N::AConst(c)) if c.isnull));
        if below && limited {
            self.needs.push(Need { what: "LIMIT or OFFSET", rels: rels.clone(), anchors: pinned.clone() });
        }
        if below && (level.aggregates || !s.group_clause.is_empty() || s.having_clause.is_some()) {
            let anchors = if grouping_sets || s.group_clause.is_empty() { pinned.clone() } else { keyed(&grouped) };
            self.needs.push(Need { what: "aggregates", rels: rels.clone(), anchors });
        }
        if below && !s.distinct_clause.is_empty() {
            self.needs.push(Need { what: "DISTINCT", rels: rels.clone(), anchors: keyed(&distinct) });
        }
        for partition in &level.windows {
            self.needs.push(Need { what: "window functions", rels: rels.clone(), anchors: keyed(partition) });
        }
        self.frames.pop();
        out
    }

    /// A WHERE clause: its equalities, and the terms of this level it pins
    /// to a value from outside the level (a constant, a parameter, a column
    /// of an enclosing query).
    fn condition(&mut self, w: &'a protobuf::Node, start: usize, level: &mut Level) -> Vec<Term> {
        self.expr(w, true, level);
        let mut pinned = Vec::new();
        for (a, b) in self.equalities(w) {
            let inside = |t: &Term| matches!(t, Term::Column(rel, _) if *rel >= start);
            if inside(&a) && !inside(&b) && !matches!(b, Term::Unknown(_)) {
                pinned.push(a.clone());
            }
            if inside(&b) && !inside(&a) && !matches!(a, Term::Unknown(_)) {
                pinned.push(b.clone());
            }
            self.equal.push((a, b));
        }
        pinned
    }

    /// `a = b` pairs of the top-level AND of a condition.
    fn equalities(&mut self, node: &'a protobuf::Node) -> Vec<(Term, Term)> {
        let mut out = Vec::new();
        match &node.node {
            Some(N::BoolExpr(b)) if b.boolop == protobuf::BoolExprType::AndExpr as i32 => {
                for arg in &b.args {
                    out.extend(self.equalities(arg));
                }
            }
            Some(N::AExpr(e)) if e.kind == protobuf::AExprKind::AexprOp as i32 && is_equals(&e.name) => {
                let (Some(l), Some(r)) = (e.lexpr.as_deref(), e.rexpr.as_deref()) else { return out };
                if let (Some(a), Some(b)) = (self.term(l), self.term(r)) {
                    out.push((a, b));
                }
            }
            _ => {}
        }
        out
    }

    /// The term a plain column reference, constant or parameter stands for.
    fn term(&mut self, node: &protobuf::Node) -> Option<Term> {
        match &node.node {
            Some(N::ColumnRef(c)) => Some(self.column(c)),
            Some(N::AConst(_) | N::ParamRef(_)) => match super::shape::operand(node.node.as_ref()) {
                Operand::Const(v) => Some(Term::Const(v)),
                Operand::Param(i) => Some(Term::Param(i)),
                Operand::Opaque => None,
            },
            _ => None,
        }
    }

    /// The term a column reference stands for, as Postgres resolves it:
    /// by qualifier, or (unqualified) the only relation of the nearest level
    /// that has any; several there is ambiguous to shardcar, which does not
    /// know their columns: unknown.
    fn column(&mut self, c: &protobuf::ColumnRef) -> Term {
        let names = super::shape::column_names(c);
        let rel = match names.as_slice() {
            [_] => self.frames.iter().rev().find(|f| !f.rels.is_empty()).and_then(|f| match f.rels.as_slice() {
                [(_, rel)] => Some(*rel),
                _ => None,
            }),
            [.., q, _] => self.frames.iter().rev().find_map(|f| f.rels.iter().find(|(n, _)| n == q).map(|(_, r)| *r)),
            [] => None,
        };
        match (rel, names.last()) {
            (Some(rel), Some(name)) => self.resolve(rel, name),
            _ => self.unknown(),
        }
    }

    fn resolve(&mut self, rel: usize, name: &str) -> Term {
        match &self.rels[rel] {
            Rel::Table => Term::Column(rel, name.to_string()),
            Rel::Derived { columns, star } => match columns.iter().find(|(n, _)| n == name) {
                Some((_, t)) => t.clone(),
                None => match *star {
                    Some(inner) => self.resolve(inner, name),
                    None => self.unknown(),
                },
            },
            Rel::Opaque => self.unknown(),
        }
    }

    /// The relation `*` or `q.*` stands for, when it is one.
    fn star(&mut self, c: &protobuf::ColumnRef) -> Option<usize> {
        match c.fields.as_slice() {
            [_] => match self.frames.last().map(|f| f.rels.as_slice()) {
                Some([(_, rel)]) => Some(*rel),
                _ => None,
            },
            [.., q, _] => {
                let Some(N::String(q)) = &q.node else { return None };
                self.frames.last()?.rels.iter().find(|(n, _)| *n == q.sval).map(|(_, r)| *r)
            }
            [] => None,
        }
    }

    fn range_var(&mut self, r: &'a protobuf::RangeVar) -> usize {
        self.range_vars.insert(r as *const _ as usize);
        let refname = r.alias.as_ref().map_or(r.relname.clone(), |a| a.aliasname.clone());
        let cte = (r.schemaname.is_empty()).then(|| self.ctes.iter().rposition(|(n, _)| *n == r.relname)).flatten();
        let rel = match cte {
            // A CTE read here: its rows as if written here (each read is
            // a relation of its own, as two reads are two sets of rows).
            Some(at) => {
                let query = self.ctes[at].1;
                self.read_ctes.insert(query as *const _ as usize);
                let hidden = self.ctes.split_off(at);
                let out = self.select(query, false);
                self.ctes.extend(hidden);
                self.derived(out, r.alias.as_ref())
            }
            None => {
                let rel = self.rels.len();
                self.rels.push(Rel::Table);
                self.appearances.push(Appearance {
                    table: r.relname.clone(),
                    schema: r.schemaname.clone(),
                    rel,
                    arm: self.arm,
                });
                rel
            }
        };
        if let Some(f) = self.frames.last_mut() {
            f.rels.push((refname, rel));
        }
        rel
    }

    fn derived(&mut self, mut out: Outputs, alias: Option<&protobuf::Alias>) -> usize {
        if let Some(alias) = alias {
            for (i, name) in alias.colnames.iter().enumerate() {
                if let (Some(N::String(s)), Some(col)) = (&name.node, out.columns.get_mut(i)) {
                    col.0 = s.sval.clone();
                }
            }
        }
        let rel = self.rels.len();
        self.rels.push(Rel::Derived { columns: out.columns, star: out.star });
        rel
    }

    /// A FROM item; `nullable` gathers the relations on the NULL-filled side
    /// of an outer join.
    fn read_from(&mut self, item: &'a protobuf::Node, nullable: &mut Vec<usize>) {
        match &item.node {
            Some(N::RangeVar(r)) => {
                self.range_var(r);
            }
            Some(N::RangeSubselect(sub)) => {
                let Some(N::SelectStmt(q)) = sub.subquery.as_deref().and_then(|q| q.node.as_ref()) else {
                    self.refuse("a subquery in FROM shardcar does not read");
                    return;
                };
                // A LATERAL subquery sees this level's relations: it is a level below it.
                let out = self.select(q, false);
                let rel = self.derived(out, sub.alias.as_ref());
                let refname = sub.alias.as_ref().map(|a| a.aliasname.clone()).unwrap_or_default();
                if let Some(f) = self.frames.last_mut() {
                    f.rels.push((refname, rel));
                }
            }
            Some(N::JoinExpr(j)) => self.join(j, nullable),
            Some(N::RangeFunction(f)) => {
                let mut level = Level::default();
                for func in &f.functions {
                    self.expr(func, false, &mut level);
                }
                self.opaque(f.alias.as_ref());
            }
            _ => {
                self.refuse("a FROM item shardcar does not read");
            }
        }
    }

    fn opaque(&mut self, alias: Option<&protobuf::Alias>) {
        let rel = self.rels.len();
        self.rels.push(Rel::Opaque);
        let refname = alias.map(|a| a.aliasname.clone()).unwrap_or_default();
        if let Some(f) = self.frames.last_mut() {
            f.rels.push((refname, rel));
        }
    }

    fn join(&mut self, j: &'a protobuf::JoinExpr, nullable: &mut Vec<usize>) {
        let left_start = self.rels.len();
        if let Some(l) = j.larg.as_deref() {
            self.read_from(l, nullable);
        }
        let right_start = self.rels.len();
        if let Some(r) = j.rarg.as_deref() {
            self.read_from(r, nullable);
        }
        let end = self.rels.len();
        let (left, right) = (left_start..right_start, right_start..end);
        let kind = JoinType::try_from(j.jointype).unwrap_or(JoinType::Undefined);
        match kind {
            JoinType::JoinLeft => nullable.extend(right.clone()),
            JoinType::JoinRight => nullable.extend(left.clone()),
            JoinType::JoinFull => nullable.extend(left_start..end),
            _ => {}
        }
        // An outer join's condition holds only where the NULL-filled side
        // has a row: an equality counts when it involves that side (both
        // sides for FULL), and then only such rows are tied by it.
        let side = |t: &Term, range: &std::ops::Range<usize>| matches!(t, Term::Column(rel, _) if range.contains(rel));
        let counts = |a: &Term, b: &Term| match kind {
            JoinType::JoinInner => true,
            JoinType::JoinLeft => side(a, &right) || side(b, &right),
            JoinType::JoinRight => side(a, &left) || side(b, &left),
            JoinType::JoinFull => (side(a, &left) && side(b, &right)) || (side(a, &right) && side(b, &left)),
            _ => false,
        };
        // USING (c): the left's c equals the right's, each side one relation.
        let single = |item: &Option<Box<protobuf::Node>>, range: &std::ops::Range<usize>| {
            matches!(item.as_deref().and_then(|n| n.node.as_ref()), Some(N::RangeVar(_) | N::RangeSubselect(_)))
                .then(|| range.end.checked_sub(1))
                .flatten()
        };
        if let (Some(l), Some(r)) = (single(&j.larg, &left), single(&j.rarg, &right)) {
            for name in &j.using_clause {
                let Some(N::String(s)) = &name.node else { continue };
                let (a, b) = (self.resolve(l, &s.sval), self.resolve(r, &s.sval));
                self.equal.push((a, b));
            }
        }
        if let Some(q) = j.quals.as_deref() {
            let mut level = Level::default();
            self.expr(q, true, &mut level);
            for (a, b) in self.equalities(q) {
                if counts(&a, &b) {
                    self.equal.push((a, b));
                }
            }
        }
        if let Some(alias) = &j.alias {
            self.opaque(Some(alias));
        }
    }

    /// Walks an expression for subqueries, aggregates and windows.
    /// `positive`: a truth value that only AND and OR lie between it and
    /// a WHERE or ON, where `x IN (SELECT ...)` may tie x to the subquery's
    /// column (no NOT, where a missing NULL would change the answer).
    fn expr(&mut self, node: &'a protobuf::Node, positive: bool, level: &mut Level) {
        let Some(n) = &node.node else { return };
        match n {
            N::BoolExpr(b) => {
                let keep = positive && b.boolop != protobuf::BoolExprType::NotExpr as i32;
                for a in &b.args {
                    self.expr(a, keep, level);
                }
            }
            N::SubLink(l) => self.sublink(l, positive, level),
            N::FuncCall(f) => {
                if is_aggregate(f) {
                    level.aggregates = true;
                }
                for a in &f.args {
                    self.expr(a, false, level);
                }
                for a in &f.agg_order {
                    self.expr(a, false, level);
                }
                if let Some(filter) = f.agg_filter.as_deref() {
                    self.expr(filter, false, level);
                }
                if let Some(w) = &f.over {
                    let mut partition = Vec::new();
                    for p in &w.partition_clause {
                        self.expr(p, false, level);
                        partition.extend(self.term(p));
                    }
                    for o in &w.order_clause {
                        self.expr(o, false, level);
                    }
                    level.windows.push(partition);
                }
            }
            N::AExpr(e) => {
                for side in [&e.lexpr, &e.rexpr].into_iter().flatten() {
                    self.expr(side, false, level);
                }
            }
            N::TypeCast(t) => {
                if let Some(a) = t.arg.as_deref() {
                    self.expr(a, false, level);
                }
            }
            N::CaseExpr(c) => {
                for part in c.arg.iter().chain(&c.defresult) {
                    self.expr(part, false, level);
                }
                for a in &c.args {
                    self.expr(a, false, level);
                }
            }
            N::CaseWhen(w) => {
                for part in w.expr.iter().chain(&w.result) {
                    self.expr(part, false, level);
                }
            }
            N::CoalesceExpr(c) => self.exprs(&c.args, level),
            N::MinMaxExpr(m) => self.exprs(&m.args, level),
            N::RowExpr(r) => self.exprs(&r.args, level),
            N::AArrayExpr(a) => self.exprs(&a.elements, level),
            N::List(l) => self.exprs(&l.items, level),
            N::NullTest(t) => self.opt(t.arg.as_deref(), level),
            N::BooleanTest(t) => self.opt(t.arg.as_deref(), level),
            N::AIndirection(i) => self.opt(i.arg.as_deref(), level),
            N::CollateClause(c) => self.opt(c.arg.as_deref(), level),
            N::NamedArgExpr(a) => self.opt(a.arg.as_deref(), level),
            N::SortBy(s) => self.opt(s.node.as_deref(), level),
            N::ResTarget(r) => self.opt(r.val.as_deref(), level),
            N::GroupingSet(g) => self.exprs(&g.content, level),
            _ => {}
        }
    }

    fn exprs(&mut self, nodes: &'a [protobuf::Node], level: &mut Level) {
        for n in nodes {
            self.expr(n, false, level);
        }
    }

    fn opt(&mut self, node: Option<&'a protobuf::Node>, level: &mut Level) {
        if let Some(n) = node {
            self.expr(n, false, level);
        }
    }

    /// A subquery: a level below this one (its correlated conditions see
    /// this level's relations). `x IN (SELECT c ...)` in a positive place
    /// ties x to c: a row of x's shard finds c's equal values only there.
    fn sublink(&mut self, l: &'a protobuf::SubLink, positive: bool, level: &mut Level) {
        self.sublinks.insert(l as *const _ as usize);
        if let Some(t) = l.testexpr.as_deref() {
            self.expr(t, false, level);
        }
        let Some(N::SelectStmt(q)) = l.subselect.as_deref().and_then(|q| q.node.as_ref()) else {
            self.refuse("a subquery shardcar does not read");
            return;
        };
        let out = self.select(q, false);
        let is_in =
            l.sub_link_type == SubLinkType::AnySublink as i32 && (l.oper_name.is_empty() || is_equals(&l.oper_name));
        if !(is_in && positive) {
            return;
        }
        let tested: Vec<&protobuf::Node> = match l.testexpr.as_deref().and_then(|t| t.node.as_ref()) {
            Some(N::RowExpr(r)) => r.args.iter().collect(),
            Some(_) => l.testexpr.as_deref().into_iter().collect(),
            None => Vec::new(),
        };
        for (node, (_, column)) in tested.into_iter().zip(&out.columns) {
            if let Some(t) = self.term(node) {
                self.equal.push((t, column.clone()));
            }
        }
    }
}

/// RangeVar and SubLink nodes anywhere below a node, by its debug text
/// (which shows every field, so nothing can hide from it).
fn counts(node: &N) -> (usize, usize) {
    let text = format!("{node:?}");
    (text.matches("RangeVar {").count(), text.matches("SubLink {").count())
}

fn counts_in(q: &protobuf::SelectStmt) -> (usize, usize) {
    let text = format!("{q:?}");
    (text.matches("RangeVar {").count(), text.matches("SubLink {").count())
}

fn returning(r: &Option<protobuf::ReturningClause>) -> std::slice::Iter<'_, protobuf::Node> {
    r.as_ref().map_or(&[][..], |r| &r.exprs[..]).iter()
}

fn is_equals(name: &[protobuf::Node]) -> bool {
    matches!(name, [op] if matches!(&op.node, Some(N::String(s)) if s.sval == "="))
}

/// The name Postgres gives an output column.
fn output_name(r: &protobuf::ResTarget, val: &protobuf::Node) -> String {
    if !r.name.is_empty() {
        return r.name.clone();
    }
    match &val.node {
        Some(N::ColumnRef(c)) => match c.fields.last().and_then(|f| f.node.as_ref()) {
            Some(N::String(s)) => s.sval.clone(),
            _ => "?column?".into(),
        },
        Some(N::FuncCall(f)) => function_name(f).unwrap_or_default(),
        Some(N::TypeCast(t)) => match t.arg.as_deref() {
            Some(inner) => output_name(r, inner),
            None => "?column?".into(),
        },
        _ => "?column?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(sql: &str) -> Option<Links> {
        let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap();
        Links::of(parsed.protobuf.stmts[0].stmt.as_ref().unwrap().node.as_ref().unwrap())
    }

    /// orders, customers and lines colocated; products on its own; countries everywhere.
    fn role(a: &Appearance) -> Role<'static> {
        match a.table.as_str() {
            "orders" => Role::Sharded { key: "customer_id", group: 0 },
            "customers" => Role::Sharded { key: "id", group: 0 },
            "lines" => Role::Sharded { key: "customer_id", group: 0 },
            "products" => Role::Sharded { key: "id", group: 1 },
            "countries" => Role::Reference,
            _ => Role::Plain,
        }
    }

    fn check(sql: &str) -> Result<(), Unlinked> {
        links(sql).map_or(Ok(()), |l| l.check(role, true))
    }

    #[test]
    fn joins_on_the_keys_of_colocated_tables_run_shard_by_shard() {
        for sql in [
            "SELECT * FROM orders o JOIN customers c ON o.customer_id = c.id",
            "SELECT c.name, count(*) FROM customers c JOIN orders o ON c.id = o.customer_id JOIN countries k ON k.code = c.country GROUP BY c.name",
            "SELECT * FROM orders o, lines l, customers c WHERE o.customer_id = l.customer_id AND l.customer_id = c.id",
            "SELECT * FROM orders JOIN lines USING (customer_id)",
            "SELECT * FROM customers c LEFT JOIN orders o ON o.customer_id = c.id AND o.total > 5",
            "SELECT * FROM orders a JOIN orders b ON a.customer_id = b.customer_id",
            "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE total > 10)",
            "SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
            "SELECT * FROM customers c WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
            "SELECT c.id, (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) FROM customers c",
            "SELECT * FROM customers c JOIN (SELECT customer_id, sum(total) AS s FROM orders GROUP BY customer_id) t ON t.customer_id = c.id",
            "SELECT count(*) FROM (SELECT DISTINCT customer_id FROM orders) d",
            "SELECT * FROM customers c, LATERAL (SELECT * FROM orders o WHERE o.customer_id = c.id ORDER BY total DESC LIMIT 2) top",
            "WITH big AS (SELECT * FROM orders WHERE total > 100) SELECT * FROM big b JOIN customers c ON c.id = b.customer_id",
            "SELECT customer_id, rank() OVER (PARTITION BY customer_id ORDER BY total) FROM orders",
            "SELECT id FROM customers UNION ALL SELECT customer_id FROM orders",
            "SELECT * FROM orders o JOIN countries k ON k.code = o.country",
            "SELECT * FROM orders WHERE customer_id = 5 AND total > (SELECT avg(total) FROM orders WHERE customer_id = 5)",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn combinations_that_may_span_shards_are_refused() {
        let keys = |sql: &str| matches!(check(sql), Err(Unlinked::Keys(..)));
        let need = |sql: &str| matches!(check(sql), Err(Unlinked::Need { .. }));
        let unreadable = |sql: &str| matches!(check(sql), Err(Unlinked::Unreadable(_)));
        assert!(keys("SELECT * FROM orders o JOIN customers c ON o.note = c.name"));
        assert!(keys("SELECT * FROM orders a JOIN orders b ON a.total = b.total"));
        assert!(keys("SELECT * FROM orders, customers"));
        assert!(keys("SELECT * FROM orders o WHERE o.total > (SELECT avg(total) FROM orders)"));
        // NOT IN misses a NULL another shard holds; only a positive IN ties columns.
        assert!(keys("SELECT * FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)"));
        assert!(keys("SELECT id IN (SELECT customer_id FROM orders) FROM customers"));
        // An outer join's condition on the kept side alone ties nothing.
        assert!(keys(
            "SELECT * FROM orders a LEFT JOIN lines b ON a.customer_id = 5 AND b.customer_id = 5 JOIN customers c ON c.id = 5"
        ));
        // Two reads of one CTE are two sets of rows.
        assert!(keys("WITH t AS (SELECT customer_id FROM orders) SELECT * FROM t a, t b"));
        assert!(matches!(
            check("SELECT * FROM orders o JOIN products p ON p.id = o.customer_id"),
            Err(Unlinked::Groups(..))
        ));
        assert!(need(
            "SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders ORDER BY total DESC LIMIT 5)"
        ));
        assert!(need("SELECT count(*) FROM (SELECT DISTINCT total FROM orders) d"));
        assert!(need("SELECT * FROM (SELECT customer_id, sum(total) FROM orders GROUP BY note) t"));
        assert!(need(
            "SELECT * FROM (SELECT customer_id FROM orders GROUP BY customer_id ORDER BY count(*) LIMIT 3) t"
        ));
        assert!(need("SELECT customer_id, rank() OVER (ORDER BY total) FROM orders"));
        assert!(need("SELECT count(*) FROM orders UNION ALL SELECT count(*) FROM customers"));
        // The NULL group of an outer join's missing rows is on every shard.
        assert!(need(
            "SELECT * FROM (SELECT o.customer_id FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY o.customer_id) g"
        ));
        assert!(unreadable("SELECT * FROM orders o JOIN notes n ON n.customer_id = o.customer_id"));
        assert!(unreadable("SELECT customer_id FROM orders UNION ALL SELECT code FROM countries"));
        assert!(unreadable("SELECT 1 UNION ALL SELECT customer_id FROM orders"));
        assert!(unreadable("WITH RECURSIVE r AS (SELECT 1) SELECT * FROM orders, r"));
        assert!(unreadable("SELECT * FROM orders INTERSECT SELECT * FROM orders"));
        // On one shard, a table shardcar does not shard is the server's business.
        let plain = links("SELECT * FROM orders o JOIN notes n ON n.customer_id = o.customer_id").unwrap();
        assert_eq!(plain.check(role, false), Ok(()));
    }

    #[test]
    fn tables_hidden_in_expressions_are_found() {
        let l = links("SELECT ARRAY[(SELECT max(total) FROM orders)] FROM customers").unwrap();
        let tables: Vec<&str> = l.appearances.iter().map(|a| a.table.as_str()).collect();
        assert_eq!(tables, ["customers", "orders"]);
        assert!(matches!(l.check(role, true), Err(Unlinked::Keys(..))));
        // A single table with nothing below its top needs no links.
        assert!(links("SELECT count(*) FROM orders WHERE total > 5 ORDER BY 1 LIMIT 3").is_none());
        assert!(links("INSERT INTO orders VALUES (1)").is_none());
    }
}
