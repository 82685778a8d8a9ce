//! Route: where one statement runs, decided once from the facts its text
//! was classified into, its bound parameters and the session — one shard,
//! no preference, or several shards with the plan that merges their
//! answers (or places a COPY's rows). The session, explain, the dashboard
//! and telemetry all read this one value.

pub mod aggregate;
pub mod copy_format;
pub mod explain;
pub mod merge;
mod unnest;

use std::sync::Arc;

use quick_cache::sync::Cache;

use crate::classify::params::Params;
use crate::classify::{Facts, Kind, RoleHint, Statement, Verb};
use crate::policy::facts::{SessionInfo, TableRule};
use crate::policy::{Refusal, ResolveError, Router, StatementRoute, check_key_unchanged};
use crate::topology::ShardId;
use copy_format::{BinaryKey, Format};
use merge::FanOut;

/// Bytes of statement texts (and the plans rewritten from them) kept.
const PLANS_BYTES: u64 = 16 << 20;
/// Longer texts are planned each time, never kept.
const UNCACHED_TEXT: usize = 64 * 1024;

/// A plan's estimated memory: its text about three times over (the key
/// and the statements rewritten for shards and for the merge).
#[derive(Clone)]
struct PlanWeight;

impl quick_cache::Weighter<String, Result<Arc<FanOut>, Refusal>> for PlanWeight {
    fn weight(&self, text: &String, _: &Result<Arc<FanOut>, Refusal>) -> u64 {
        (3 * text.len() + 512) as u64
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub target: Target,
    /// A server role a hint or the policy asked for.
    pub role: Option<RoleHint>,
    /// Every statement only reads (a replica may serve it outside a transaction).
    pub read_only: bool,
    /// How each statement of the text was routed.
    pub statements: Vec<StatementRoute>,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// No statement cares: the shard the session is on, else the default shard.
    Anywhere,
    One(ShardId),
    /// Every shard listed runs its part; `plan` says what and how answers merge.
    Many {
        shards: Vec<ShardId>,
        plan: Arc<FanOut>,
    },
    /// `COPY ... FROM STDIN` whose rows go to several shards.
    CopySplit(Arc<CopySplit>),
}

/// Where the rows of a `COPY ... FROM STDIN` on every shard go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySplit {
    /// Each row to the shard its key routes to: the data is cut into rows.
    ByKey {
        rule: Arc<TableRule>,
        format: Format,
        /// Zero-based field of the shard key in each row.
        key_field: usize,
    },
    /// A reference table: all the data to every shard as it comes (any format).
    Everywhere { table: String },
}

impl CopySplit {
    pub fn table(&self) -> &str {
        match self {
            CopySplit::ByKey { rule, .. } => &rule.table,
            CopySplit::Everywhere { table } => table,
        }
    }
}

/// Decides routes, keeping merge plans per statement text so that a
/// statement that fans out is parsed for it once, not per execution.
pub struct Planner {
    pub router: Arc<Router>,
    plans: Cache<String, Result<Arc<FanOut>, Refusal>, PlanWeight>,
}

impl Planner {
    pub fn new(router: Arc<Router>) -> Planner {
        Planner { router, plans: Cache::with_weighter((PLANS_BYTES / 2048) as usize, PLANS_BYTES, PlanWeight) }
    }

    /// Where the statements of `facts` run, with `params` bound. One plugin
    /// call per statement, one per row when a multi-row INSERT is split.
    /// `written`: the text as the client wrote it, when `facts` are a simple
    /// query's template with its literals lifted into `params` — a plan
    /// across shards rewrites the written text, literals and all.
    pub async fn route(
        &self,
        facts: &Arc<Facts>,
        params: Option<&Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
        written: Option<&str>,
    ) -> Result<Route, ResolveError> {
        let router = &self.router;
        let topology = router.topology();
        let read_only = facts.is_read_only();
        let params = params.cloned();
        let explicit = router.explicit(facts, session).map_err(ResolveError::Refused)?;
        let route = |target: Target, statements: Vec<StatementRoute>| {
            let role = facts.hints.role.or_else(|| {
                statements.iter().filter_map(|s| s.role).reduce(|a, b| match (a, b) {
                    (RoleHint::Primary, _) | (_, RoleHint::Primary) => RoleHint::Primary,
                    _ => RoleHint::Replica,
                })
            });
            Route { target, role, read_only, statements }
        };
        let explicit_route = |shard: ShardId| StatementRoute {
            shards: vec![shard],
            role: facts.hints.role,
            via: crate::policy::Via::Explicit,
        };
        if let Some(shard) = explicit {
            let each = facts.statements.iter().map(|_| explicit_route(shard)).collect();
            return Ok(route(Target::One(shard), each));
        }
        let all: Vec<ShardId> = topology.ids().collect();
        let everywhere =
            |statements| route(Target::Many { shards: all.clone(), plan: Arc::new(FanOut::Everywhere) }, statements);
        match facts.statements.as_slice() {
            // Unreadable SQL: anywhere; the server reports the error.
            [] => Ok(route(Target::Anywhere, vec![])),
            [stmt] => self.single(facts, stmt, &params, session, in_transaction, written).await.map(|r| match r {
                Single::Target(target, statements) => route(target, statements),
                Single::Everywhere => everywhere(vec![]),
            }),
            many => {
                // DDL belongs on every shard; so does the whole string when
                // it is all DDL, and nothing else may ride along.
                if many.iter().any(|s| s.shape.verb == Verb::Ddl) {
                    return match many.iter().all(|s| s.shape.verb == Verb::Ddl) {
                        true => Ok(everywhere(vec![])),
                        false => Err(ResolveError::Refused(Refusal::DdlWithOthers)),
                    };
                }
                let mut shard: Option<ShardId> = None;
                let mut statements = Vec::with_capacity(many.len());
                for (i, stmt) in many.iter().enumerate() {
                    if router.is_reference_write(stmt) {
                        return Err(ResolveError::Refused(Refusal::Alone(stmt.text.clone())));
                    }
                    let r = router
                        .resolving(|| router.route_statement(facts, i, &params, session, in_transaction, None))
                        .await?;
                    if matches!(r.via, crate::policy::Via::Policy { .. }) {
                        router.check_links(stmt, r.shards.len() > 1).map_err(ResolveError::Refused)?;
                    }
                    match r.shards.as_slice() {
                        [] => {}
                        [one] => match shard {
                            Some(s) if s != *one => {
                                return Err(ResolveError::Refused(Refusal::Together {
                                    first: topology.name(s).to_string(),
                                    second: topology.name(*one).to_string(),
                                }));
                            }
                            _ => shard = Some(*one),
                        },
                        several => return Err(ResolveError::Refused(spans(router, stmt, several))),
                    }
                    statements.push(r);
                }
                let target = shard.map_or(Target::Anywhere, Target::One);
                Ok(route(target, statements))
            }
        }
    }

    /// One statement without an explicit target.
    async fn single(
        &self,
        facts: &Arc<Facts>,
        stmt: &Statement,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
        written: Option<&str>,
    ) -> Result<Single, ResolveError> {
        let text = written.unwrap_or(&stmt.text);
        let router = &self.router;
        if stmt.shape.verb == Verb::Ddl || (stmt.shape.verb != Verb::Copy && router.is_reference_write(stmt)) {
            return Ok(Single::Everywhere);
        }
        if stmt.shape.verb == Verb::Copy && router.is_reference_write(stmt) {
            return reference_copy(stmt);
        }
        let Some(rule) = router.rule_of(stmt) else { return Ok(Single::Target(Target::Anywhere, vec![])) };
        check_key_unchanged(stmt, rule).map_err(ResolveError::Refused)?;
        if let Some(copy) = &stmt.shape.copy_in {
            return self.copy_split(copy, rule).await;
        }
        if let Some(insert) = stmt.shape.insert.as_ref().filter(|i| i.rows.len() > 1) {
            // Each row routed on its own: one plugin call per row.
            let mut groups: Vec<(ShardId, Vec<usize>)> = Vec::new();
            let mut routes = Vec::with_capacity(insert.rows.len());
            // The group each row went to, for RETURNING in input order.
            let mut order = Vec::with_capacity(insert.rows.len());
            for (i, row) in insert.rows.iter().enumerate() {
                let route = router
                    .row_route(facts, rule, insert.columns.clone(), row.clone(), params, session, in_transaction)
                    .await?;
                let shard = route.shards[0];
                routes.push(route);
                match groups.iter().position(|(s, _)| *s == shard) {
                    Some(at) => {
                        groups[at].1.push(i);
                        order.push(at);
                    }
                    None => {
                        order.push(groups.len());
                        groups.push((shard, vec![i]));
                    }
                }
            }
            let statements = vec![StatementRoute {
                shards: groups.iter().map(|(s, _)| *s).collect(),
                role: None,
                via: crate::policy::Via::Rows(routes),
            }];
            if let [(shard, _)] = groups.as_slice() {
                return Ok(Single::Target(Target::One(*shard), statements));
            }
            if !rises(&insert.sorted_by, params.as_deref()) {
                return Err(ResolveError::Refused(Refusal::NotMergeable(
                    "its VALUES are sorted in another order than written (by a column that does not rise row by row), which each shard's part would not keep".into(),
                )));
            }
            let (shards, rows): (Vec<ShardId>, Vec<Vec<usize>>) = groups.into_iter().unzip();
            let mut plan = FanOut::split_insert(text, &rows).map_err(ResolveError::Refused)?;
            if let FanOut::Split { order: in_order, .. } = &mut plan
                && insert.in_order
            {
                *in_order = order;
            }
            return Ok(Single::Target(Target::Many { shards, plan: Arc::new(plan) }, statements));
        }
        if let Some(insert) = &stmt.shape.insert
            && let Some(from) = &insert.from_unnest
            && let Some(params) = params
        {
            // A simple query's arrays are its own literals (`written`), which
            // a part would have to rewrite in its text: not done.
            if written.is_some() {
                return Err(ResolveError::Refused(Refusal::NotMergeable(
                    "an INSERT ... SELECT FROM unnest(...) whose arrays are written in the query text is not split by shard; bind them as parameters".into(),
                )));
            }
            return self.unnest_split(facts, text, insert, from, rule, params, session, in_transaction).await;
        }
        let r = router
            .resolving(|| router.policy_route(facts, 0, params, session, in_transaction, None, rule, true))
            .await?;
        router.check_links(stmt, r.shards.len() > 1).map_err(ResolveError::Refused)?;
        router.shadow(facts, 0, params, session, in_transaction, rule, &r);
        let target = match r.shards.as_slice() {
            [one] => Target::One(*one),
            [] => return Err(ResolveError::Refused(spans(router, stmt, &[]))),
            several if let Some(declared) = &stmt.shape.cursor => {
                // Kept by shardcar over a portal on each shard, read forwards.
                let refuse = |what: &str| {
                    ResolveError::Refused(Refusal::NotMergeable(format!(
                        "a {what} cursor over a query that needs {} is not kept across shards; a cursor without it is",
                        router.topology().names(several)
                    )))
                };
                if declared.scroll {
                    return Err(refuse("SCROLL"));
                }
                if declared.binary {
                    return Err(refuse("BINARY"));
                }
                let query = crate::classify::shape::cursor_query(text).unwrap_or_default();
                let mut plan = self.plan(query).map_err(ResolveError::Refused)?;
                if let FanOut::Rows { window, .. } = &*plan
                    && window.is_bound()
                {
                    plan = Arc::new(plan.bind_window(params.as_deref()).map_err(ResolveError::Refused)?);
                }
                Target::Many { shards: several.to_vec(), plan }
            }
            several => {
                let spread = match stmt.shape.verb {
                    // COPY ... TO: every shard's rows, one after the other.
                    Verb::Select | Verb::Copy => true,
                    Verb::Update | Verb::Delete => router.allow_broadcast_writes(),
                    _ => false,
                };
                if !spread {
                    return Err(ResolveError::Refused(spans(router, stmt, several)));
                }
                let mut plan = self.plan(text).map_err(ResolveError::Refused)?;
                if let FanOut::Rows { window, .. } = &*plan
                    && window.is_bound()
                {
                    plan = Arc::new(plan.bind_window(params.as_deref()).map_err(ResolveError::Refused)?);
                }
                Target::Many { shards: several.to_vec(), plan }
            }
        };
        Ok(Single::Target(target, vec![r]))
    }

    /// `INSERT ... SELECT ... FROM unnest(...)` of bound arrays: each
    /// element of the key's array routed as a row (one plugin call per
    /// distinct key), each shard bound its rows' elements of every array.
    #[allow(clippy::too_many_arguments)]
    async fn unnest_split(
        &self,
        facts: &Arc<Facts>,
        text: &str,
        insert: &crate::classify::shape::Insert,
        from: &crate::classify::shape::Unnest,
        rule: &Arc<TableRule>,
        params: &Arc<Params>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
    ) -> Result<Single, ResolveError> {
        let refuse = |why: String| ResolveError::Refused(Refusal::NotMergeable(why));
        let key_array = insert
            .columns
            .iter()
            .position(|c| *c == rule.key)
            .and_then(|at| from.columns.get(at).copied().flatten())
            .ok_or_else(|| {
                refuse(format!(
                    "this INSERT ... SELECT FROM unnest(...) does not take {} as one array's elements, so its rows cannot be placed",
                    rule.key
                ))
            })?;
        let arrays: Vec<unnest::Array> =
            from.arrays.iter().map(|&p| unnest::Array::of(params, p)).collect::<Result<_, _>>().map_err(refuse)?;
        let rows = arrays[key_array].elements.len();
        if arrays.iter().any(|a| a.elements.len() != rows) {
            return Err(refuse("the arrays of unnest(...) differ in length; split by shard they must not".into()));
        }
        let columns = vec![rule.key.clone()];
        let mut routed: std::collections::HashMap<crate::classify::Value, StatementRoute> = Default::default();
        let mut groups: Vec<(ShardId, Vec<usize>)> = Vec::new();
        let mut order = Vec::with_capacity(rows);
        let mut routes = Vec::with_capacity(rows);
        for row in 0..rows {
            let key = arrays[key_array].value(row).map_err(refuse)?;
            let route = match routed.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let operand = crate::classify::shape::Operand::Const(key.clone());
                    let r = self
                        .router
                        .row_route(facts, rule, columns.clone(), vec![operand], &None, session, in_transaction)
                        .await?;
                    routed.insert(key, r.clone());
                    r
                }
            };
            let shard = route.shards[0];
            let at = match groups.iter().position(|(s, _)| *s == shard) {
                Some(at) => at,
                None => {
                    groups.push((shard, Vec::new()));
                    groups.len() - 1
                }
            };
            groups[at].1.push(row);
            order.push(at);
            routes.push(route);
        }
        let statements = vec![StatementRoute {
            shards: groups.iter().map(|(s, _)| *s).collect(),
            role: None,
            via: crate::policy::Via::Rows(routes),
        }];
        match groups.as_slice() {
            [] => return Ok(Single::Target(Target::Anywhere, statements)),
            [(shard, _)] => return Ok(Single::Target(Target::One(*shard), statements)),
            _ => {}
        }
        let all: Vec<usize> = (0..params.values.len()).collect();
        let parts = groups
            .iter()
            .map(|(_, picked)| merge::InsertPart {
                sql: text.to_string(),
                params: all.clone(),
                values: from.arrays.iter().zip(&arrays).map(|(&p, a)| (p, Some(a.pick(picked)))).collect(),
            })
            .collect();
        let order = if insert.in_order { order } else { Vec::new() };
        let plan = Arc::new(FanOut::Split { parts, order });
        Ok(Single::Target(Target::Many { shards: groups.iter().map(|(s, _)| *s).collect(), plan }, statements))
    }

    /// The merge plan of a statement that runs on several shards, kept per text.
    fn plan(&self, text: &str) -> Result<Arc<FanOut>, Refusal> {
        if let Some(plan) = self.plans.get(text) {
            return plan;
        }
        let keys = |table: &str| self.router.rule(table).map(|r| r.key.clone());
        let plan = FanOut::of(text, &keys).map(Arc::new);
        if text.len() <= UNCACHED_TEXT {
            self.plans.insert(text.to_string(), plan.clone());
        }
        plan
    }

    /// A COPY FROM STDIN into a sharded table: its rows are cut and placed.
    async fn copy_split(
        &self,
        copy: &crate::classify::shape::CopyIn,
        rule: &Arc<TableRule>,
    ) -> Result<Single, ResolveError> {
        let refuse = |why: String| ResolveError::Refused(Refusal::CopySplit { table: rule.table.clone(), why });
        let byte = |name: &str, given: &Option<String>, default: u8| match given.as_deref().map(str::as_bytes) {
            None => Ok(default),
            Some([b]) => Ok(*b),
            Some(_) => Err(refuse(format!("its {name} is not one byte"))),
        };
        // Keys are read as UTF-8 (what shardcar's sessions use).
        if copy.encoding.as_deref().is_some_and(|e| !matches!(e.to_lowercase().as_str(), "utf8" | "utf-8" | "unicode"))
        {
            return Err(refuse("its ENCODING is not UTF8, and shardcar reads keys as UTF-8".into()));
        }
        let format = match copy.format.as_str() {
            "text" => Format::Text {
                delimiter: byte("delimiter", &copy.delimiter, b'\t')?,
                null: copy.null.clone().unwrap_or_else(|| "\\N".into()).into_bytes(),
                header: copy.header,
            },
            "csv" => {
                let quote = byte("quote", &copy.quote, b'"')?;
                Format::Csv(copy_format::Csv {
                    delimiter: byte("delimiter", &copy.delimiter, b',')?,
                    quote,
                    escape: byte("escape", &copy.escape, quote)?,
                    null: copy.null.clone().unwrap_or_default().into_bytes(),
                    header: copy.header,
                    key_force_not_null: copy.force_not_null.contains(&rule.key),
                    key_force_null: copy.force_null.contains(&rule.key),
                })
            }
            "binary" => {
                let column = self.router.key_column(rule).await?;
                let key = BinaryKey::of_type(&column.type_name).ok_or_else(|| {
                    refuse(format!(
                        "a binary COPY's key is read by its type, and {} is {}; shardcar reads smallint, integer, bigint, text, varchar, char and uuid",
                        rule.key, column.type_name
                    ))
                })?;
                Format::Binary { key }
            }
            other => return Err(refuse(format!("its format {other} is not text, csv or binary"))),
        };
        let key_field = self.router.copy_key_field(copy, rule).await?;
        let split = CopySplit::ByKey { rule: rule.clone(), format, key_field };
        Ok(Single::Target(Target::CopySplit(Arc::new(split)), vec![]))
    }
}

/// A COPY naming a reference table: COPY TO reads it on one shard; COPY
/// FROM STDIN writes every shard; COPY FROM a server file or program is
/// refused, since each server would read its own.
fn reference_copy(stmt: &Statement) -> Result<Single, ResolveError> {
    let table = stmt.shape.tables.first().cloned().unwrap_or_default();
    match &stmt.shape.copy_in {
        Some(_) => Ok(Single::Target(Target::CopySplit(Arc::new(CopySplit::Everywhere { table })), vec![])),
        None if stmt.shape.copy_from => Err(ResolveError::Refused(Refusal::CopySplit {
            table,
            why: "a reference table takes COPY FROM STDIN only: a file or program would be read by each server".into(),
        })),
        None => Ok(Single::Target(Target::Anywhere, vec![])),
    }
}

/// What one statement needs.
enum Single {
    Target(Target, Vec<StatementRoute>),
    /// The same statement on every shard (DDL, reference-table writes).
    Everywhere,
}

/// Whether `sorted_by` (an ORDER BY column of VALUES rows) rises row by
/// row, its parameters bound: the order written is the order inserted.
fn rises(sorted_by: &[crate::classify::shape::Operand], params: Option<&Params>) -> bool {
    use crate::classify::{Value, shape::Operand};
    let number = |op: &Operand| -> Option<i64> {
        let value = match op {
            Operand::Const(v) => v.clone(),
            Operand::Param(i) => params?.value(*i).ok()?,
            Operand::Opaque => return None,
        };
        match value {
            Value::Int(n) => Some(n),
            Value::Text(t) => t.trim().parse().ok(),
            Value::Null => None,
        }
    };
    let numbers: Option<Vec<i64>> = sorted_by.iter().map(number).collect();
    numbers.is_some_and(|n| n.windows(2).all(|w| w[0] < w[1]))
}

/// A statement whose rows live on several shards and that cannot run there.
fn spans(router: &Router, stmt: &Statement, shards: &[ShardId]) -> Refusal {
    let rule = router.rule_of(stmt);
    let from_select = stmt.shape.verb == Verb::Insert && stmt.shape.insert.as_ref().is_none_or(|i| i.rows.is_empty());
    if let (true, Some(rule)) = (from_select, rule) {
        return Refusal::InsertSelect { table: rule.table.clone() };
    }
    Refusal::Spans {
        verb: stmt.shape.verb,
        table: rule.map(|r| r.table.clone()).unwrap_or_default(),
        key: rule.map(|r| r.key.clone()).unwrap_or_default(),
        shards: router.topology().names(shards),
    }
}

/// Statements shardcar answers itself, whatever their route.
pub fn is_local(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::ShardcarSet { .. }
            | Kind::ShardcarShow(_)
            | Kind::Unsupported { .. }
            | Kind::Deallocate(_)
            | Kind::DiscardAll
    )
}

/// The server role that runs a route: a replica for plain reads outside a
/// transaction (when `read_replicas` is on, or a hint or the policy asks),
/// else the primary.
pub fn role(route: &Route, in_transaction: bool, read_replicas: bool) -> crate::pool::Role {
    let replica = !in_transaction
        && match route.role {
            Some(RoleHint::Primary) => false,
            Some(RoleHint::Replica) => true,
            None => read_replicas && route.read_only,
        };
    if replica { crate::pool::Role::Replica } else { crate::pool::Role::Primary }
}
