//! Route: where one statement runs, decided once from the facts its text
//! was classified into, its bound parameters and the session — one shard,
//! no preference, or several shards with the plan that merges their
//! answers (or places a COPY's rows). The session, explain, the dashboard
//! and telemetry all read this one value.

pub mod copy_format;
pub mod explain;
pub mod merge;

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
            for (i, row) in insert.rows.iter().enumerate() {
                let route = router
                    .row_route(facts, rule, insert.columns.clone(), row.clone(), params, session, in_transaction)
                    .await?;
                let shard = route.shards[0];
                routes.push(route);
                match groups.iter_mut().find(|(s, _)| *s == shard) {
                    Some((_, rows)) => rows.push(i),
                    None => groups.push((shard, vec![i])),
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
            let (shards, rows): (Vec<ShardId>, Vec<Vec<usize>>) = groups.into_iter().unzip();
            let plan = FanOut::split_insert(text, &rows).map_err(ResolveError::Refused)?;
            return Ok(Single::Target(Target::Many { shards, plan: Arc::new(plan) }, statements));
        }
        let r = router.resolving(|| router.policy_route(facts, 0, params, session, in_transaction, None, rule)).await?;
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

    /// The merge plan of a statement that runs on several shards, kept per text.
    fn plan(&self, text: &str) -> Result<Arc<FanOut>, Refusal> {
        if let Some(plan) = self.plans.get(text) {
            return plan;
        }
        let plan = FanOut::of(text).map(Arc::new);
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
