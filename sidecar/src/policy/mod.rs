//! Policy: which shard a statement belongs to.
//!
//! In order: explicit targeting (a `/* shardcar: shard=... */` comment or
//! `SET shardcar.shard`) — the operator's way to reach one shard on
//! purpose; else the routing plugin of the first sharded table the statement
//! names (`[[tables]]` → `[[policies]]`); else no preference, which means
//! the default shard (or the shard a transaction is already on).

pub mod catalog;
pub mod directory;
pub mod facts;
pub mod plugin;
pub mod reload;
mod ticker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::classify::params::Params;
use crate::classify::shape::{CopyIn, Insert, Operand, Value};
use crate::classify::{Facts, Kind, RoleHint, Verb};
use crate::config::{Config, PluginSource};
use crate::metrics::Metrics;
use crate::sqlerror::{SqlError, code};
use directory::Directory;
use facts::{FactsView, SessionInfo, TableRule};
use plugin::{CallError, Plugin, Runtime, TopologySnapshot};

/// The statements of one batch, with their parameters, to route together.
#[derive(Default)]
pub struct Request {
    items: Vec<Item>,
}

struct Item {
    facts: Arc<Facts>,
    params: Option<Arc<Params>>,
    /// Statements that only get prepared or described run anywhere; only an
    /// explicit target in their text counts.
    executes: bool,
}

impl Request {
    /// A statement that runs, with its parameters (`None` for a simple query).
    pub fn add(&mut self, facts: &Arc<Facts>, params: Option<Arc<Params>>) {
        self.items.push(Item { facts: facts.clone(), params, executes: true });
    }

    /// A statement that is only prepared or described here.
    pub fn add_unexecuted(&mut self, facts: &Arc<Facts>) {
        self.items.push(Item { facts: facts.clone(), params: None, executes: false });
    }

    /// Statements in the request.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Where a request goes, before transaction state and replicas are considered.
#[derive(Debug, Clone)]
pub struct Decision {
    /// `None`: no statement cares (the default shard, or the transaction's).
    pub shard: Option<usize>,
    pub role: Option<RoleHint>,
    pub read_only: bool,
    /// How the statements of the request's first item were routed.
    pub routes: Vec<StatementRoute>,
}

/// How one statement was routed (for explain and for merging).
#[derive(Debug, Clone)]
pub struct StatementRoute {
    pub shards: Vec<usize>,
    pub role: Option<RoleHint>,
    pub via: Via,
}

#[derive(Debug, Clone)]
pub enum Via {
    /// A hint or `SET shardcar.shard`.
    Explicit,
    /// The policy (an index into `Router::policies`) of a table's rule, the
    /// plugin version that decided, and the keys it used.
    Policy { policy: usize, plugin: Arc<str>, rule: Arc<TableRule>, keys: Vec<plugin::Value> },
    /// No sharded table: no preference.
    Unsharded,
}

/// A policy and the plugin currently serving it (swapped on hot reload).
pub struct PolicySlot {
    pub name: String,
    pub source: PluginSource,
    /// The policy's `config` table, as the JSON the plugin receives.
    pub config: String,
    pub plugin: ArcSwap<Plugin>,
    /// The last reload failure, if the newest file was refused.
    pub last_error: Mutex<Option<String>>,
}

pub struct Router {
    shard_names: Vec<String>,
    default_shard: usize,
    allow_broadcast_writes: bool,
    reference_tables: std::collections::HashSet<String>,
    tables: HashMap<String, Arc<TableRule>>,
    pub policies: Vec<PolicySlot>,
    topology: ArcSwap<TopologySnapshot>,
    topology_version: AtomicU64,
    pub runtime: Arc<Runtime>,
    pub directory: Arc<Directory>,
    catalog: catalog::Catalog,
}

/// Routing failed: an error for the client, or directory entries to fetch first.
#[derive(Debug)]
pub enum RouteError {
    Sql(SqlError),
    Lookups(Vec<(String, String)>),
    /// The key column's position in this table is needed (INSERT without columns).
    KeyPosition(Arc<TableRule>),
}

impl From<SqlError> for RouteError {
    fn from(e: SqlError) -> Self {
        RouteError::Sql(e)
    }
}

impl Router {
    /// Loads every policy's plugin; any that fails to load is an error naming it.
    pub fn new(cfg: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Router> {
        let directory = Arc::new(Directory::new(cfg)?);
        let limits = plugin::Limits {
            call_timeout: std::time::Duration::from_millis(cfg.plugins.call_timeout_ms),
            memory_bytes: (cfg.plugins.memory_limit_mb as usize) << 20,
        };
        let runtime = Runtime::new(limits, cfg.plugins.cache_dir.clone(), directory.clone(), metrics.clone())?;
        let topology = TopologySnapshot { version: 1, topology: topology(cfg, None) };
        let mut policies = Vec::new();
        for (i, p) in cfg.policies.iter().enumerate() {
            let source = cfg.plugin_source(&p.plugin).map_err(|e| anyhow::anyhow!("policies[{i}].plugin: {e}"))?;
            let config = serde_json::to_string(&p.config)?;
            let bytes = read(&source).map_err(|e| anyhow::anyhow!("policies[{i}].plugin: {e}"))?;
            let plugin = Plugin::load(&runtime, &p.name, &bytes, config.clone(), &topology)
                .map_err(|e| anyhow::anyhow!("policies[{i}] ({}): plugin {}: {e}", p.name, p.plugin))?;
            tracing::info!("policy {} uses plugin {}", p.name, plugin.version());
            policies.push(PolicySlot {
                name: p.name.clone(),
                source,
                config,
                plugin: ArcSwap::from_pointee(plugin),
                last_error: Mutex::new(None),
            });
        }
        let tables = cfg
            .tables
            .iter()
            .filter_map(|t| {
                let policy = cfg.policies.iter().position(|p| p.name == t.policy)?;
                let rule = TableRule { table: t.name.clone(), key: t.key.clone(), key_type: t.key_type, policy };
                Some((t.name.clone(), Arc::new(rule)))
            })
            .collect();
        let shard_names = cfg.shards.iter().map(|s| s.name.clone()).collect();
        let default_shard = cfg.shard_index(&cfg.routing.default_shard).unwrap_or(0);
        Ok(Router {
            shard_names,
            default_shard,
            allow_broadcast_writes: cfg.routing.allow_broadcast_writes,
            reference_tables: cfg.routing.reference_tables.iter().cloned().collect(),
            tables,
            policies,
            topology: ArcSwap::from_pointee(topology),
            topology_version: AtomicU64::new(1),
            runtime,
            directory,
            catalog: catalog::Catalog::new(cfg),
        })
    }

    pub fn shard_index(&self, name: &str) -> Result<usize, SqlError> {
        self.shard_names.iter().position(|n| n == name).ok_or_else(|| {
            SqlError::new(code::INVALID_PARAMETER_VALUE, format!("unknown shard `{name}`"))
                .hint(format!("known shards: {}", self.shard_names.join(", ")))
        })
    }

    pub fn shard_count(&self) -> usize {
        self.shard_names.len()
    }

    pub fn shard_name(&self, index: usize) -> &str {
        &self.shard_names[index]
    }

    pub fn default_shard(&self) -> usize {
        self.default_shard
    }

    /// The `[[tables]]` rule for a table, if it is sharded.
    pub fn rule(&self, table: &str) -> Option<&Arc<TableRule>> {
        self.tables.get(table)
    }

    pub fn topology(&self) -> Arc<TopologySnapshot> {
        self.topology.load_full()
    }

    /// Tells plugins which primaries are healthy, when that changed.
    pub fn set_health(&self, cfg: &Config, healthy: &[bool]) {
        let current = self.topology.load();
        let changed = current.topology.shards.iter().zip(healthy).any(|(s, h)| s.healthy != *h);
        if changed {
            let version = self.topology_version.fetch_add(1, Ordering::Relaxed) + 1;
            self.topology.store(Arc::new(TopologySnapshot { version, topology: topology(cfg, Some(healthy)) }));
        }
    }

    /// Routes a batch, fetching what plugins need from servers first.
    pub async fn decide(
        &self,
        req: &Request,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
    ) -> Result<Decision, SqlError> {
        self.resolving(|| self.decide_now(req, session, in_transaction)).await
    }

    /// Runs `route` until it no longer needs directory entries or catalog
    /// facts, fetching them in between.
    pub async fn resolving<T>(&self, route: impl Fn() -> Result<T, RouteError>) -> Result<T, SqlError> {
        // Each round can only add entries; a plugin looking up ever new keys is cut short.
        for _ in 0..4 {
            match route() {
                Err(RouteError::Lookups(misses)) => self.directory.fetch(&misses).await?,
                Err(RouteError::KeyPosition(rule)) => self.catalog.fetch(&rule.table, &rule.key).await?,
                Err(RouteError::Sql(e)) => return Err(e),
                Ok(d) => return Ok(d),
            }
        }
        Err(SqlError::new(code::INTERNAL_ERROR, "a plugin kept asking for new directory entries"))
    }

    fn decide_now(
        &self,
        req: &Request,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
    ) -> Result<Decision, RouteError> {
        let mut decision = Decision { shard: None, role: None, read_only: true, routes: Vec::new() };
        for (n, item) in req.items.iter().enumerate() {
            decision.read_only &= item.facts.is_read_only();
            let routes = if item.executes {
                self.route_facts(&item.facts, &item.params, session, in_transaction)?
            } else {
                self.explicit(&item.facts, session)?.into_iter().collect()
            };
            for route in &routes {
                let shard = match route.shards.as_slice() {
                    [] => None,
                    [one] => Some(*one),
                    _ => unreachable!("route_statement refuses several shards"),
                };
                if let (Some(a), Some(b)) = (decision.shard, shard)
                    && a != b
                {
                    return Err(SqlError::new(
                        code::FEATURE_NOT_SUPPORTED,
                        format!(
                            "statements sent together go to different shards ({} and {})",
                            self.shard_name(a),
                            self.shard_name(b)
                        ),
                    )
                    .hint("send them separately, each in its own transaction")
                    .into());
                }
                decision.shard = decision.shard.or(shard);
                decision.role = match (decision.role, route.role) {
                    (Some(RoleHint::Primary), _) | (_, Some(RoleHint::Primary)) => Some(RoleHint::Primary),
                    (a, b) => a.or(b),
                };
            }
            if n == 0 {
                decision.routes = routes;
            }
        }
        Ok(decision)
    }

    /// Routes every statement of one SQL text.
    pub fn route_facts(
        &self,
        facts: &Arc<Facts>,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
    ) -> Result<Vec<StatementRoute>, RouteError> {
        if let Some(first) = facts.hints.errors.first() {
            return Err(SqlError::new(code::INVALID_PARAMETER_VALUE, format!("cannot route: {first}"))
                .hint("hints look like /* shardcar: shard=s1, role=primary */")
                .into());
        }
        if facts.statements.is_empty() {
            // Unreadable SQL: routed by its hints, else anywhere; the server reports the error.
            return Ok(vec![self.explicit(facts, session)?.unwrap_or(StatementRoute {
                shards: vec![],
                role: facts.hints.role,
                via: Via::Unsharded,
            })]);
        }
        (0..facts.statements.len())
            .map(|i| self.route_statement(facts, i, params, session, in_transaction, None))
            .collect()
    }

    fn explicit(&self, facts: &Facts, session: &SessionInfo) -> Result<Option<StatementRoute>, SqlError> {
        let Some(name) = facts.hints.shard.as_ref().or(session.vars.get("shard")) else { return Ok(None) };
        Ok(Some(StatementRoute { shards: vec![self.shard_index(name)?], role: facts.hints.role, via: Via::Explicit }))
    }

    /// Routes one statement; `candidate` stands in for its policy's current
    /// plugin (a new version under test).
    pub fn route_statement(
        &self,
        facts: &Arc<Facts>,
        index: usize,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
        candidate: Option<&Plugin>,
    ) -> Result<StatementRoute, RouteError> {
        if let Some(route) = self.explicit(facts, session)? {
            return Ok(route);
        }
        let stmt = &facts.statements[index];
        if self.reference_write(stmt) {
            let table =
                stmt.shape.tables.iter().find(|t| self.reference_tables.contains(*t)).cloned().unwrap_or_default();
            return Err(SqlError::new(
                code::FEATURE_NOT_SUPPORTED,
                format!("{table} is a reference table: writes to it go to every shard, which needs a statement of its own outside a transaction"),
            )
            .hint("send it as a simple query outside a transaction (COPY into a reference table is not supported yet)")
            .into());
        }
        let rule = match &stmt.kind {
            // Statements shardcar answers, or that concern the session, have no table to route by.
            Kind::Read | Kind::Write => stmt.shape.tables.iter().find_map(|t| self.tables.get(t)),
            _ => None,
        };
        let Some(rule) = rule else {
            return Ok(StatementRoute { shards: vec![], role: facts.hints.role, via: Via::Unsharded });
        };
        check_key_unchanged(stmt, rule)?;
        let route = self.policy_route(facts, index, params, session, in_transaction, candidate, rule)?;
        if route.shards.len() != 1 {
            return Err(self.spans_shards(stmt.shape.verb, rule, &route.shards).into());
        }
        Ok(route)
    }

    /// A single statement that runs on every shard, the same everywhere:
    /// DDL, and writes to reference tables (not COPY), without an explicit target.
    pub fn runs_everywhere(&self, facts: &Facts, session: &SessionInfo) -> bool {
        let Some(stmt) = facts.single() else { return false };
        let explicit = facts.hints.shard.is_some() || session.vars.contains_key("shard");
        !explicit && stmt.shape.verb != Verb::Copy && (stmt.shape.verb == Verb::Ddl || self.reference_write(stmt))
    }

    fn reference_write(&self, stmt: &crate::classify::Statement) -> bool {
        let t = &stmt.shape.tables;
        matches!(stmt.shape.verb, Verb::Insert | Verb::Update | Verb::Delete | Verb::Copy)
            && t.iter().any(|t| self.reference_tables.contains(t))
            && !t.iter().any(|t| self.tables.contains_key(t))
    }

    /// The shard of each row of a multi-row INSERT ... VALUES into a sharded
    /// table, when its rows belong to several shards: `(shard, row indexes)`.
    /// `None`: not such a statement (routing as usual refuses or runs it).
    pub async fn split_insert(
        &self,
        facts: &Arc<Facts>,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
    ) -> Result<Option<Vec<(usize, Vec<usize>)>>, SqlError> {
        let [stmt] = facts.statements.as_slice() else { return Ok(None) };
        if stmt.shape.verb != Verb::Insert || self.explicit(facts, session)?.is_some() {
            return Ok(None);
        }
        let Some(rule) = stmt.shape.tables.iter().find_map(|t| self.tables.get(t)) else { return Ok(None) };
        let Some(insert) = stmt.shape.insert.as_ref().filter(|i| i.rows.len() > 1) else { return Ok(None) };
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, row) in insert.rows.iter().enumerate() {
            // The row alone, routed as an INSERT of one row.
            let mut one = (**facts).clone();
            if let Some(ins) = one.statements[0].shape.insert.as_mut() {
                ins.rows = vec![row.clone()];
            }
            let one = Arc::new(one);
            let route = self.resolving(|| self.policy_route(&one, 0, params, session, false, None, rule)).await?;
            let [shard] = route.shards.as_slice() else {
                return Err(self.spans_shards(Verb::Insert, rule, &route.shards));
            };
            match groups.iter_mut().find(|(s, _)| s == shard) {
                Some((_, rows)) => rows.push(i),
                None => groups.push((*shard, vec![i])),
            }
        }
        Ok((groups.len() > 1).then_some(groups))
    }

    /// Where the shard key sits among the fields of a COPY's rows.
    pub async fn copy_key_field(&self, copy: &CopyIn, rule: &Arc<TableRule>) -> Result<usize, SqlError> {
        if !copy.columns.is_empty() {
            return copy.columns.iter().position(|c| *c == rule.key).ok_or_else(|| {
                SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!(
                        "this COPY into {} leaves out {}, its shard key: its rows cannot be placed",
                        rule.table, rule.key
                    ),
                )
                .hint(format!("list {} among the COPY's columns", rule.key))
            });
        }
        self.resolving(|| {
            self.catalog.position(&rule.table, &rule.key).ok_or_else(|| RouteError::KeyPosition(rule.clone()))
        })
        .await
    }

    /// The shard of one row of the COPY in `facts` whose key field holds
    /// `key` (as COPY's text has it; `None`: NULL), routed like an INSERT of
    /// that row.
    pub async fn copy_row_shard(
        &self,
        facts: &Arc<Facts>,
        rule: &Arc<TableRule>,
        key: Option<String>,
        session: &Arc<SessionInfo>,
    ) -> Result<usize, SqlError> {
        let mut one = (**facts).clone();
        one.statements[0].shape.insert = Some(Insert {
            table: rule.table.clone(),
            columns: vec![rule.key.clone()],
            rows: vec![vec![Operand::Const(key.map_or(Value::Null, Value::Text))]],
        });
        let one = Arc::new(one);
        let route = self.resolving(|| self.policy_route(&one, 0, &None, session, false, None, rule)).await?;
        match route.shards.as_slice() {
            [shard] => Ok(*shard),
            shards => Err(self.spans_shards(Verb::Copy, rule, shards)),
        }
    }

    /// The shards a single statement outside a transaction must run on, when
    /// that is more than one: DDL runs on every shard; a SELECT (and, with
    /// `routing.allow_broadcast_writes`, an UPDATE or DELETE) on a sharded
    /// table where its policy says so. `None`: routing as usual.
    pub async fn fan_out(
        &self,
        facts: &Arc<Facts>,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
    ) -> Result<Option<Vec<usize>>, SqlError> {
        let [stmt] = facts.statements.as_slice() else { return Ok(None) };
        if self.explicit(facts, session)?.is_some() || !facts.hints.errors.is_empty() {
            return Ok(None);
        }
        if stmt.shape.verb == Verb::Ddl {
            return Ok(Some((0..self.shard_names.len()).collect()));
        }
        let read = stmt.kind == Kind::Read && stmt.shape.verb == Verb::Select;
        let broadcast = matches!(stmt.shape.verb, Verb::Update | Verb::Delete) && self.allow_broadcast_writes;
        if !read && !broadcast {
            return Ok(None);
        }
        let Some(rule) = stmt.shape.tables.iter().find_map(|t| self.tables.get(t)) else { return Ok(None) };
        check_key_unchanged(stmt, rule)?;
        let route = self.resolving(|| self.policy_route(facts, 0, params, session, false, None, rule)).await?;
        Ok((route.shards.len() > 1).then_some(route.shards))
    }

    /// What a table's policy says about one statement: one shard or several.
    #[allow(clippy::too_many_arguments)]
    fn policy_route(
        &self,
        facts: &Arc<Facts>,
        index: usize,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
        candidate: Option<&Plugin>,
        rule: &Arc<TableRule>,
    ) -> Result<StatementRoute, RouteError> {
        let stmt = &facts.statements[index];
        let key_position = if stmt.shape.inserts_without_columns(&rule.table) {
            match self.catalog.position(&rule.table, &rule.key) {
                Some(p) => Some(p),
                None => return Err(RouteError::KeyPosition(rule.clone())),
            }
        } else {
            None
        };
        let view = FactsView::new(
            facts.clone(),
            index,
            params.clone(),
            rule.clone(),
            session.clone(),
            in_transaction,
            key_position,
        )
        .map_err(|e| SqlError::new(code::INVALID_PARAMETER_VALUE, format!("cannot route on {}: {e}", rule.table)))?;
        let slot = &self.policies[rule.policy];
        let current;
        let plugin: &Plugin = match candidate {
            Some(p) => p,
            None => {
                current = slot.plugin.load();
                &current
            }
        };
        let (keys, decision) = plugin.route(view, &self.topology.load()).map_err(|e| match e {
            CallError::Lookups(misses) => RouteError::Lookups(misses),
            other => RouteError::Sql(plugin_error(slot, plugin, &other)),
        })?;
        let shards: Vec<usize> = match decision.target {
            plugin::Target::All => (0..self.shard_names.len()).collect(),
            plugin::Target::Shards(list) => list.into_iter().map(|i| i as usize).collect(),
        };
        if let Some(bad) = shards.iter().find(|&&i| i >= self.shard_names.len()) {
            return Err(SqlError::new(
                code::INTERNAL_ERROR,
                format!("policy {} ({}) chose shard #{bad}, which does not exist", slot.name, plugin.version()),
            )
            .into());
        }
        let role = facts.hints.role.or(match decision.role {
            plugin::Role::Primary => Some(RoleHint::Primary),
            plugin::Role::Replica => Some(RoleHint::Replica),
            plugin::Role::Any => None,
        });
        let via = Via::Policy { policy: rule.policy, plugin: plugin.version().clone(), rule: rule.clone(), keys };
        Ok(StatementRoute { shards, role, via })
    }

    /// Why a statement that would touch several shards is refused (for now).
    fn spans_shards(&self, verb: Verb, rule: &TableRule, shards: &[usize]) -> SqlError {
        let names = shards.iter().map(|&i| self.shard_name(i)).collect::<Vec<_>>().join(", ");
        let target = "target one shard with /* shardcar: shard=... */";
        let (message, hint) = match verb {
            Verb::Copy => (
                format!("this COPY into {} needs several shards ({names})", rule.table),
                format!(
                    "outside a transaction shardcar splits COPY FROM STDIN rows by {}; inside one that needs routing.two_phase_commit = true; or {target}",
                    rule.key
                ),
            ),
            Verb::Insert => (
                format!("this INSERT into {} has rows for several shards ({names})", rule.table),
                format!("insert rows of one shard per statement, and give {} in every row", rule.key),
            ),
            Verb::Update | Verb::Delete => (
                format!(
                    "this statement on {} would change rows on several shards ({names}): it has no single {} = ... or IN (...) on one shard",
                    rule.table, rule.key
                ),
                format!(
                    "add a condition on {}, or {target}; routing.allow_broadcast_writes = true runs it on every shard (outside a transaction)",
                    rule.key
                ),
            ),
            _ => (
                format!(
                    "this statement on {} would need several shards ({names}): it has no single {} = ... or IN (...) on one shard",
                    rule.table, rule.key
                ),
                format!("add a condition on {}, or {target}; statements across shards are not supported yet", rule.key),
            ),
        };
        SqlError::new(code::FEATURE_NOT_SUPPORTED, message).hint(hint)
    }
}

/// An UPDATE may not change the shard key: the row could belong elsewhere.
fn check_key_unchanged(stmt: &crate::classify::Statement, rule: &TableRule) -> Result<(), SqlError> {
    if !stmt.shape.updated.contains(&rule.key) {
        return Ok(());
    }
    Err(SqlError::new(
        code::FEATURE_NOT_SUPPORTED,
        format!(
            "this UPDATE changes {}.{}, the shard key, which could move the row to another shard",
            rule.table, rule.key
        ),
    )
    .hint("delete the row and insert it again with the new key"))
}

fn plugin_error(slot: &PolicySlot, plugin: &Plugin, e: &CallError) -> SqlError {
    let code = match e {
        CallError::Refused(_) => code::INVALID_PARAMETER_VALUE,
        CallError::Timeout => "57014",
        CallError::OutOfMemory => "53200",
        CallError::Crashed(_) | CallError::Lookups(_) => code::INTERNAL_ERROR,
    };
    SqlError::new(
        code,
        format!("routing plugin of policy {} ({}): {}", slot.name, plugin.version(), plugin::describe(e)),
    )
}

/// The bytes of a plugin.
pub fn read(source: &PluginSource) -> Result<Vec<u8>, String> {
    match source {
        PluginSource::Builtin(name) => {
            crate::builtin::bytes(name).map(<[u8]>::to_vec).ok_or_else(|| format!("no built-in plugin `{name}`"))
        }
        PluginSource::File(path) => std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())),
    }
}

/// The topology plugins see: shards with their health and labels.
fn topology(cfg: &Config, healthy: Option<&[bool]>) -> plugin::Topology {
    plugin::Topology {
        shards: cfg
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| plugin::Shard {
                name: s.name.clone(),
                healthy: healthy.and_then(|h| h.get(i).copied()).unwrap_or(true),
                replicas: s.replicas.len() as u32,
                labels: s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn router(extra: &str) -> Router {
        let text = format!(
            r#"
            [[users]]
            name = "app"
            trust = true
            [[shards]]
            name = "s0"
            primary = "postgres://u@127.0.0.1:1/app"
            [[shards]]
            name = "s1"
            primary = "postgres://u@127.0.0.1:2/app"
            [routing]
            default_shard = "s0"
            [[policies]]
            name = "by-customer"
            plugin = "hash"
            config = {{ shards = ["s0", "s1"] }}
            [[tables]]
            name = "orders"
            key = "customer_id"
            policy = "by-customer"
            {extra}
            "#
        );
        Router::new(&Config::parse(&text).unwrap(), &Arc::new(Metrics::new())).unwrap()
    }

    fn route(r: &Router, sql: &str) -> Result<Decision, SqlError> {
        let mut req = Request::default();
        req.add(&Arc::new(classify(sql)), None);
        match r.decide_now(&req, &Arc::new(SessionInfo::default()), false) {
            Ok(d) => Ok(d),
            Err(RouteError::Sql(e)) => Err(e),
            Err(other) => panic!("needs a server: {other:?}"),
        }
    }

    #[test]
    fn hash_plugin_places_keys_like_postgres_partitioning() {
        let r = router("");
        let started = std::time::Instant::now();
        // Remainders of PARTITION BY HASH (bigint) MODULUS 2, from Postgres 15.
        for (key, shard) in [(1, 0), (2, 0), (3, 1), (4, 1), (8, 1), (42, 0)] {
            let d = route(&r, &format!("SELECT * FROM orders WHERE customer_id = {key}")).unwrap();
            assert_eq!(d.shard, Some(shard), "key {key}");
        }
        eprintln!("5 routes in {:?}", started.elapsed());
        assert_eq!(route(&r, "SELECT 1").unwrap().shard, None, "no sharded table: no preference");
    }

    #[test]
    fn spanning_statements_and_key_updates_are_refused() {
        let r = router("");
        let e = route(&r, "SELECT * FROM orders").unwrap_err();
        assert!(e.message.contains("several shards (s0, s1)"), "{e:?}");
        let e = route(&r, "UPDATE orders SET customer_id = 5 WHERE customer_id = 1").unwrap_err();
        assert!(e.message.contains("shard key"), "{e:?}");
        assert_eq!(route(&r, "/* shardcar: shard=s1 */ SELECT * FROM orders").unwrap().shard, Some(1));
    }
}
