//! Policy: which shard a statement belongs to.
//!
//! In order: explicit targeting (a `/* shardcar: shard=... */` comment or
//! `SET shardcar.shard`) — the operator's way to reach one shard on
//! purpose; else the routing plugin of the first sharded table the statement
//! names (`[[tables]]` → `[[policies]]`); else no preference, which means
//! the default shard (or the shard a transaction is already on).

pub mod cases;
pub mod catalog;
pub mod colocation;
pub mod directory;
pub mod facts;
pub mod last_good;
pub mod moves;
pub mod plugin;
pub mod refusal;
pub mod reload;
pub mod shadow;
mod ticker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::classify::params::Params;
use crate::classify::shape::{CopyIn, Insert, Operand};
use crate::classify::{Facts, Kind, RoleHint, Statement, Verb};
use crate::config::{Config, PluginSource};
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::sqlerror::SqlError;
use crate::topology::{PolicyId, ShardId, Topology};
use directory::Directory;
use facts::{FactsView, SessionInfo, TableRule};
use last_good::LastGood;
use plugin::{CallError, Plugin, Runtime, TopologySnapshot};
pub use refusal::{Pinned, Refusal};

/// How one statement was routed: the shards its policy (or an explicit
/// target) named — several when its rows live on several — and why.
#[derive(Debug, Clone)]
pub struct StatementRoute {
    pub shards: Vec<ShardId>,
    pub role: Option<RoleHint>,
    pub via: Via,
}

#[derive(Debug, Clone)]
pub enum Via {
    /// A hint or `SET shardcar.shard`.
    Explicit,
    /// The policy of a table's rule, the plugin version that decided, and
    /// the keys it used.
    Policy { policy: PolicyId, plugin: Arc<str>, rule: Arc<TableRule>, keys: Vec<plugin::Value> },
    /// No sharded table: no preference.
    Unsharded,
    /// A multi-row INSERT: each row routed on its own, in order.
    Rows(Vec<StatementRoute>),
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
    /// The file's stamp when it was read at start (the watcher goes on from there).
    pub loaded_stamp: Option<last_good::Stamp>,
    /// A version reloaded lately, on probation: rolled back if it fails.
    pub probation: Mutex<Option<reload::Probation>>,
    /// The digest of a version the operator allowed to move rows.
    pub moves_allowed: Mutex<Option<String>>,
    /// Set to check the file again although it did not change.
    pub recheck: std::sync::atomic::AtomicBool,
    /// The latest check of the rows a new version would move.
    pub last_moves: Mutex<Option<shardcar_api::MoveReport>>,
    /// The shadow plugin routing a sample of statements beside this one.
    pub shadow: arc_swap::ArcSwapOption<shadow::Shadow>,
    /// Why the configured shadow is not running.
    pub shadow_error: Mutex<Option<String>>,
    /// Set once the shadow was promoted: what serves, and that the file
    /// the config names is no longer watched.
    pub promoted: Mutex<Option<String>>,
}

/// When a version on probation is rolled back: more than `failure_ratio`
/// of at least `min_calls` calls failed.
#[derive(Debug, Clone, Copy)]
pub struct Rollback {
    pub failure_ratio: f64,
    pub min_calls: u64,
}

pub struct Router {
    topology: Arc<Topology>,
    allow_broadcast_writes: bool,
    reference_tables: foldhash::HashSet<String>,
    tables: foldhash::HashMap<String, Arc<TableRule>>,
    pub policies: Vec<PolicySlot>,
    plugin_topology: ArcSwap<TopologySnapshot>,
    plugin_topology_version: AtomicU64,
    pub runtime: Arc<Runtime>,
    pub directory: Arc<Directory>,
    catalog: catalog::Catalog,
    /// Each file-based policy's last version that passed its tests.
    pub last_good: LastGood,
    /// How long a reloaded version is on probation, and when it is rolled back.
    pub probation: std::time::Duration,
    pub rollback: Rollback,
    /// Every shard primary's control-plane pool: the keys-that-move check reads rows there.
    shards: Vec<Arc<crate::pool::Shard>>,
    moving_rows_allowed: bool,
    move_check_rows: u64,
    /// Routes sampled statements with shadow plugins (when any is configured).
    shadow_worker: Option<shadow::Worker>,
}

/// Routing could not finish: a refusal, or something to fetch first.
#[derive(Debug)]
pub enum RouteError {
    Refused(Refusal),
    /// Directory entries the plugin needs.
    Lookups(Vec<(String, String)>),
    /// The key column's position in this table (INSERT without columns).
    KeyPosition(Arc<TableRule>),
}

impl From<Refusal> for RouteError {
    fn from(r: Refusal) -> Self {
        RouteError::Refused(r)
    }
}

impl Router {
    /// Loads every policy's plugin; any that fails to load is an error naming it.
    pub fn new(cfg: &Config, pools: &Pools, metrics: &Arc<Metrics>) -> anyhow::Result<Router> {
        Router::build(cfg, pools, metrics, false)
    }

    /// As `new`, for serving: a plugin file that fails to load gives way to
    /// the policy's last good version, when one was kept (`last_good`); its
    /// refusal is the policy's `last_error`, and `reload::start_all` checks
    /// the last good version's own tests.
    pub fn serving(cfg: &Config, pools: &Pools, metrics: &Arc<Metrics>) -> anyhow::Result<Router> {
        Router::build(cfg, pools, metrics, true)
    }

    fn build(cfg: &Config, pools: &Pools, metrics: &Arc<Metrics>, fallback: bool) -> anyhow::Result<Router> {
        let directory = Arc::new(Directory::new(cfg, pools)?);
        let limits = plugin::Limits {
            call_timeout: std::time::Duration::from_millis(cfg.plugins.call_timeout_ms),
            memory_bytes: (cfg.plugins.memory_limit_mb as usize) << 20,
            remembered_decisions: cfg.plugins.remembered_decisions,
        };
        let runtime = Runtime::new(limits, cfg.plugins.cache_dir.clone(), directory.clone(), metrics.clone())?;
        let last_good = LastGood::new(cfg.plugins.cache_dir.as_deref());
        let snapshot = TopologySnapshot { version: 1, topology: plugin_topology(cfg, None) };
        let mut policies = Vec::new();
        for (i, p) in cfg.policies.iter().enumerate() {
            let source = cfg.plugin_source(&p.plugin).map_err(|e| anyhow::anyhow!("policies[{i}].plugin: {e}"))?;
            let config = serde_json::to_string(&p.config)?;
            let loaded_stamp = match &source {
                PluginSource::File(path) => last_good::stamp(path),
                PluginSource::Builtin(_) => None,
            };
            let loaded = read(&source)
                .map_err(|e| format!("policies[{i}].plugin: {e}"))
                .and_then(|bytes| Plugin::load(&runtime, &p.name, &bytes, config.clone(), &snapshot));
            let mut refused = None;
            let plugin = match loaded {
                Ok(plugin) => plugin,
                Err(e) => {
                    let why = format!("plugin {} does not load: {e}", p.plugin);
                    let good = (fallback && matches!(source, PluginSource::File(_)))
                        .then(|| last_good.load(&p.name))
                        .flatten()
                        .ok_or_else(|| anyhow::anyhow!("policies[{i}] ({}): {why}", p.name))?;
                    let plugin =
                        Plugin::load(&runtime, &p.name, &good.wasm, config.clone(), &snapshot).map_err(|e| {
                            anyhow::anyhow!(
                                "policies[{i}] ({}): {why}; its last good version does not load either: {e}",
                                p.name
                            )
                        })?;
                    refused = Some(why);
                    plugin
                }
            };
            tracing::info!("policy {} uses plugin {}", p.name, plugin.version());
            let (shadow, shadow_error) = match &p.shadow {
                None => (None, None),
                Some(s) => match load_shadow(cfg, &runtime, p, s, &snapshot) {
                    Ok(shadow) => {
                        tracing::info!(
                            "policy {}: shadow plugin {} routes {} of statements",
                            p.name,
                            shadow.plugin.version(),
                            s.sample
                        );
                        (Some(Arc::new(shadow)), None)
                    }
                    // A shadow only compares: the live plugin serves without it.
                    Err(e) => {
                        tracing::error!("policy {}: the shadow plugin does not run: {e}", p.name);
                        (None, Some(e))
                    }
                },
            };
            policies.push(PolicySlot {
                name: p.name.clone(),
                source,
                config,
                plugin: ArcSwap::from_pointee(plugin),
                last_error: Mutex::new(refused),
                loaded_stamp,
                probation: Mutex::new(None),
                moves_allowed: Mutex::new(None),
                recheck: Default::default(),
                last_moves: Mutex::new(None),
                shadow: arc_swap::ArcSwapOption::new(shadow),
                shadow_error: Mutex::new(shadow_error),
                promoted: Mutex::new(None),
            });
        }
        let groups = colocation::groups(cfg);
        let tables = cfg
            .tables
            .iter()
            .zip(groups)
            .filter_map(|(t, colocation)| {
                let policy = PolicyId::at(cfg.policies.iter().position(|p| p.name == t.policy)?);
                let rule =
                    TableRule { table: t.name.clone(), key: t.key.clone(), key_type: t.key_type, policy, colocation };
                Some((t.name.clone(), Arc::new(rule)))
            })
            .collect();
        let topology = pools.topology.clone();
        let catalog = catalog::Catalog::new(pools.shard(topology.default_shard()).clone());
        Ok(Router {
            topology,
            allow_broadcast_writes: cfg.routing.allow_broadcast_writes,
            reference_tables: cfg.routing.reference_tables.iter().cloned().collect(),
            tables,
            policies,
            plugin_topology: ArcSwap::from_pointee(snapshot),
            plugin_topology_version: AtomicU64::new(1),
            runtime,
            directory,
            catalog,
            last_good,
            probation: std::time::Duration::from_secs(cfg.plugins.probation_s),
            rollback: Rollback {
                failure_ratio: cfg.plugins.rollback_failure_ratio,
                min_calls: cfg.plugins.rollback_min_calls,
            },
            shards: pools.shards.clone(),
            moving_rows_allowed: cfg.plugins.moving_rows == crate::config::MovingRows::Allow,
            move_check_rows: cfg.plugins.move_check_rows,
            shadow_worker: match cfg.policies.iter().any(|p| p.shadow.is_some()) {
                true => Some(shadow::Worker::start()?),
                false => None,
            },
        })
    }

    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// A shard by name, as a hint or `SET shardcar.shard` gives it.
    pub fn shard_named(&self, name: &str) -> Result<ShardId, Refusal> {
        self.topology.find(name).ok_or_else(|| Refusal::UnknownShard {
            name: name.to_string(),
            known: self.topology.all_names().join(", "),
        })
    }

    pub fn policy(&self, id: PolicyId) -> &PolicySlot {
        &self.policies[id.index()]
    }

    /// The `[[tables]]` rule for a table, if it is sharded.
    pub fn rule(&self, table: &str) -> Option<&Arc<TableRule>> {
        self.tables.get(table)
    }

    /// Every `[[tables]]` rule.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<TableRule>> {
        self.tables.values()
    }

    /// The sharded table a read or write is routed by: the first it names,
    /// or, of tables read together, the first with a key condition.
    pub fn rule_of(&self, stmt: &Statement) -> Option<&Arc<TableRule>> {
        if !matches!(stmt.kind, Kind::Read | Kind::Write) {
            return None;
        }
        let mut sharded = stmt.shape.tables.iter().filter_map(|t| self.tables.get(t));
        let first = sharded.next()?;
        if stmt.shape.links.is_none() {
            return Some(first);
        }
        // Tables read together are colocated and joined on their keys (or
        // the statement is refused): a key condition on any of them places all.
        let keyed = |r: &&Arc<TableRule>| stmt.shape.operands_for(&r.table, &r.key, None).next().is_some();
        std::iter::once(first).chain(sharded).find(keyed).or(Some(first))
    }

    pub fn allow_broadcast_writes(&self) -> bool {
        self.allow_broadcast_writes
    }

    /// A write (INSERT, UPDATE, DELETE, COPY) to reference tables only: it
    /// belongs on every shard.
    pub fn is_reference_write(&self, stmt: &Statement) -> bool {
        let t = &stmt.shape.tables;
        matches!(stmt.shape.verb, Verb::Insert | Verb::Update | Verb::Delete | Verb::Copy)
            && t.iter().any(|t| self.reference_tables.contains(t))
            && !t.iter().any(|t| self.tables.contains_key(t))
    }

    /// The topology plugins see.
    pub fn plugin_topology(&self) -> Arc<TopologySnapshot> {
        self.plugin_topology.load_full()
    }

    /// Tells plugins which primaries are healthy, when that changed.
    pub fn set_health(&self, cfg: &Config, healthy: &[bool]) {
        let current = self.plugin_topology.load();
        let changed = current.topology.shards.iter().zip(healthy).any(|(s, h)| s.healthy != *h);
        if changed {
            let version = self.plugin_topology_version.fetch_add(1, Ordering::Relaxed) + 1;
            let topology = plugin_topology(cfg, Some(healthy));
            self.plugin_topology.store(Arc::new(TopologySnapshot { version, topology }));
        }
    }

    /// Runs `route` until it no longer needs directory entries or catalog
    /// facts, fetching them in between.
    pub async fn resolving<T>(&self, route: impl Fn() -> Result<T, RouteError>) -> Result<T, ResolveError> {
        // Each round can only add entries; a plugin looking up ever new keys is cut short.
        for _ in 0..4 {
            match route() {
                Err(RouteError::Lookups(misses)) => self.directory.fetch(&misses).await?,
                Err(RouteError::KeyPosition(rule)) => self.catalog.fetch(&rule.table, &rule.key).await?,
                Err(RouteError::Refused(r)) => return Err(ResolveError::Refused(r)),
                Ok(d) => return Ok(d),
            }
        }
        Err(ResolveError::Refused(Refusal::LookupLoop))
    }

    /// An explicit target: a hint in the text, else `SET shardcar.shard`.
    pub fn explicit(&self, facts: &Facts, session: &SessionInfo) -> Result<Option<ShardId>, Refusal> {
        if let Some(first) = facts.hints.errors.first() {
            return Err(Refusal::Hint(first.clone()));
        }
        let Some(name) = facts.hints.shard.as_ref().or(session.vars.get("shard")) else { return Ok(None) };
        self.shard_named(name).map(Some)
    }

    /// What routing says about statement `index` of `facts` on its own: an
    /// explicit target, its table's policy (`candidate` standing in for the
    /// policy's current plugin, a new version under test), or no preference.
    pub fn route_statement(
        &self,
        facts: &Arc<Facts>,
        index: usize,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
        candidate: Option<&Plugin>,
    ) -> Result<StatementRoute, RouteError> {
        if let Some(shard) = self.explicit(facts, session)? {
            return Ok(StatementRoute { shards: vec![shard], role: facts.hints.role, via: Via::Explicit });
        }
        let stmt = &facts.statements[index];
        let Some(rule) = self.rule_of(stmt) else {
            return Ok(StatementRoute { shards: vec![], role: facts.hints.role, via: Via::Unsharded });
        };
        check_key_unchanged(stmt, rule)?;
        self.policy_route(facts, index, params, session, in_transaction, candidate, rule, true)
    }

    /// Where the shard key sits among the fields of a COPY's rows.
    pub async fn copy_key_field(&self, copy: &CopyIn, rule: &Arc<TableRule>) -> Result<usize, ResolveError> {
        if !copy.columns.is_empty() {
            return copy.columns.iter().position(|c| *c == rule.key).ok_or_else(|| {
                ResolveError::Refused(Refusal::CopySplit {
                    table: rule.table.clone(),
                    why: format!("it leaves out {}, its shard key, so its rows cannot be placed", rule.key),
                })
            });
        }
        self.resolving(|| {
            self.catalog.position(&rule.table, &rule.key).ok_or_else(|| RouteError::KeyPosition(rule.clone()))
        })
        .await
    }

    /// The key column of `rule`'s table as the catalog has it (its type reads binary COPY keys).
    pub async fn key_column(&self, rule: &Arc<TableRule>) -> Result<catalog::Column, ResolveError> {
        self.resolving(|| {
            self.catalog.column(&rule.table, &rule.key).ok_or_else(|| RouteError::KeyPosition(rule.clone()))
        })
        .await
    }

    /// The route of one row, routed like an INSERT of that row alone:
    /// `columns` and `row` are its values (a COPY row gives only its key).
    /// A row belongs on one shard.
    #[allow(clippy::too_many_arguments)]
    pub async fn row_route(
        &self,
        facts: &Arc<Facts>,
        rule: &Arc<TableRule>,
        columns: Vec<String>,
        row: Vec<Operand>,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
    ) -> Result<StatementRoute, ResolveError> {
        let mut one = (**facts).clone();
        one.statements.truncate(1);
        let shape = &mut one.statements[0].shape;
        shape.verb = Verb::Insert;
        shape.predicates.clear();
        shape.insert = Some(Insert { table: rule.table.clone(), columns, rows: vec![row], ..Insert::default() });
        let one = Arc::new(one);
        let route =
            self.resolving(|| self.policy_route(&one, 0, params, session, in_transaction, None, rule, true)).await?;
        self.shadow(&one, 0, params, session, in_transaction, rule, &route);
        match route.shards.as_slice() {
            [_] => Ok(route),
            shards => Err(ResolveError::Refused(Refusal::Spans {
                verb: Verb::Insert,
                table: rule.table.clone(),
                key: rule.key.clone(),
                shards: self.topology.names(shards),
            })),
        }
    }

    /// The statement each row of a COPY into `rule`'s table is routed as:
    /// an INSERT of its key alone as `$1`, with the COPY's hints. Made once
    /// per COPY; each row then only binds its key ([`Router::route_key`]).
    pub fn key_insert(&self, facts: &Facts, rule: &TableRule) -> Arc<Facts> {
        let mut one = facts.clone();
        one.statements.truncate(1);
        let shape = &mut one.statements[0].shape;
        shape.verb = Verb::Insert;
        shape.predicates.clear();
        shape.copy_in = None;
        shape.insert = Some(Insert {
            table: rule.table.clone(),
            columns: vec![rule.key.clone()],
            rows: vec![vec![Operand::Param(0)]],
            ..Insert::default()
        });
        Arc::new(one)
    }

    /// Where a row with `key` (text, as a COPY has it) goes: `template`
    /// from [`Router::key_insert`] with the key bound. A row belongs on one shard.
    pub async fn route_key(
        &self,
        template: &Arc<Facts>,
        rule: &Arc<TableRule>,
        key: Option<String>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
    ) -> Result<ShardId, ResolveError> {
        let params = Some(Arc::new(Params { values: vec![key.map(Into::into)], ..Params::default() }));
        // A COPY remembers its keys itself, for the COPY only: a load of new
        // keys would push every statement's decisions out of the plugin's.
        let route = self
            .resolving(|| self.policy_route(template, 0, &params, session, in_transaction, None, rule, false))
            .await?;
        match route.shards.as_slice() {
            [shard] => Ok(*shard),
            shards => Err(ResolveError::Refused(Refusal::Spans {
                verb: Verb::Insert,
                table: rule.table.clone(),
                key: rule.key.clone(),
                shards: self.topology.names(shards),
            })),
        }
    }

    /// Statement `index` once per value its key column is compared with
    /// (`key IN (a, b)` → `key = a`, `key = b`): how each key alone routes.
    pub fn each_key(&self, facts: &Facts, index: usize, rule: &TableRule) -> Vec<(Operand, Arc<Facts>)> {
        let shape = &facts.statements[index].shape;
        let on_key = |p: &crate::classify::shape::Predicate| {
            p.column == rule.key && p.table.as_deref().is_none_or(|t| t == rule.table)
        };
        let operands: Vec<Operand> =
            shape.predicates.iter().filter(|p| on_key(p)).flat_map(|p| p.operands.clone()).collect();
        operands
            .into_iter()
            .map(|op| {
                let mut one = facts.clone();
                let preds = &mut one.statements[index].shape.predicates;
                preds.retain(|p| !on_key(p));
                preds.push(crate::classify::shape::Predicate {
                    table: Some(rule.table.clone()),
                    column: rule.key.clone(),
                    operands: vec![op.clone()],
                });
                (op, Arc::new(one))
            })
            .collect()
    }

    /// What a plugin sees of statement `index` routed by `rule`.
    fn view(
        &self,
        facts: &Arc<Facts>,
        index: usize,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
        rule: &Arc<TableRule>,
    ) -> Result<FactsView, RouteError> {
        let key_position = if facts.statements[index].shape.inserts_without_columns(&rule.table) {
            match self.catalog.position(&rule.table, &rule.key) {
                Some(p) => Some(p),
                None => return Err(RouteError::KeyPosition(rule.clone())),
            }
        } else {
            None
        };
        FactsView::new(
            facts.clone(),
            index,
            params.clone(),
            rule.clone(),
            session.clone(),
            in_transaction,
            key_position,
        )
        .map_err(|why| RouteError::Refused(Refusal::KeyValue { table: rule.table.clone(), why }))
    }

    /// What a table's policy says about one statement: one shard or several.
    /// One plugin call.
    #[allow(clippy::too_many_arguments)]
    pub fn policy_route(
        &self,
        facts: &Arc<Facts>,
        index: usize,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
        candidate: Option<&Plugin>,
        rule: &Arc<TableRule>,
        remember: bool,
    ) -> Result<StatementRoute, RouteError> {
        let view = self.view(facts, index, params, session, in_transaction, rule)?;
        let slot = self.policy(rule.policy);
        let current;
        let plugin: &Plugin = match candidate {
            Some(p) => p,
            None => {
                current = slot.plugin.load();
                &current
            }
        };
        let refused = |error| Refusal::Plugin { policy: slot.name.clone(), version: plugin.version().clone(), error };
        let (keys, decision) = plugin.route(view, &self.plugin_topology.load(), remember).map_err(|e| match e {
            CallError::Lookups(misses) => RouteError::Lookups(misses),
            other => RouteError::Refused(refused(other)),
        })?;
        let shards: Vec<ShardId> = match decision.target {
            plugin::Target::All => self.topology.ids().collect(),
            plugin::Target::Shards(list) => list
                .into_iter()
                .map(|i| {
                    self.topology.checked(i).ok_or_else(|| Refusal::PluginShard {
                        policy: slot.name.clone(),
                        version: plugin.version().clone(),
                        index: i,
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let role = facts.hints.role.or(match decision.role {
            plugin::Role::Primary => Some(RoleHint::Primary),
            plugin::Role::Replica => Some(RoleHint::Replica),
            plugin::Role::Any => None,
        });
        let via = Via::Policy { policy: rule.policy, plugin: plugin.version().clone(), rule: rule.clone(), keys };
        Ok(StatementRoute { shards, role, via })
    }
}

impl Router {
    /// Hands a statement the live plugin routed (`live`) to the policy's
    /// shadow plugin, when it has one and the statement is in its sample.
    #[allow(clippy::too_many_arguments)]
    pub fn shadow(
        &self,
        facts: &Arc<Facts>,
        index: usize,
        params: &Option<Arc<Params>>,
        session: &Arc<SessionInfo>,
        in_transaction: bool,
        rule: &Arc<TableRule>,
        live: &StatementRoute,
    ) {
        let Some(worker) = &self.shadow_worker else { return };
        let Some(shadow) = self.policy(rule.policy).shadow.load_full() else { return };
        if !matches!(live.via, Via::Policy { .. }) || !shadow.wants() {
            return;
        }
        let Ok(view) = self.view(facts, index, params, session, in_transaction, rule) else { return };
        worker.offer(shadow::Job {
            shadow,
            view,
            topology: self.plugin_topology.load_full(),
            names: self.topology.clone(),
            live: live.shards.clone(),
        });
    }
}

/// Routing that needed the network and could not finish.
#[derive(Debug)]
pub enum ResolveError {
    Refused(Refusal),
    /// A directory or catalog read failed.
    Fetch(SqlError),
}

impl From<SqlError> for ResolveError {
    fn from(e: SqlError) -> Self {
        ResolveError::Fetch(e)
    }
}

impl From<ResolveError> for SqlError {
    fn from(e: ResolveError) -> SqlError {
        match e {
            ResolveError::Refused(r) => r.into(),
            ResolveError::Fetch(e) => e,
        }
    }
}

/// An UPDATE may not change the shard key: the row could belong elsewhere.
pub fn check_key_unchanged(stmt: &Statement, rule: &TableRule) -> Result<(), Refusal> {
    if !stmt.shape.updated.contains(&rule.key) {
        return Ok(());
    }
    Err(Refusal::KeyUpdate { table: rule.table.clone(), key: rule.key.clone() })
}

/// The bytes of a plugin.
/// A policy's shadow plugin, loaded under its own label (`<policy>/shadow`)
/// so that its calls are not counted as the live plugin's.
fn load_shadow(
    cfg: &Config,
    runtime: &Arc<Runtime>,
    policy: &crate::config::PolicyConfig,
    s: &crate::config::ShadowConfig,
    snapshot: &TopologySnapshot,
) -> Result<shadow::Shadow, String> {
    let source = cfg.plugin_source(&s.plugin)?;
    let config = serde_json::to_string(s.config.as_ref().unwrap_or(&policy.config)).map_err(|e| e.to_string())?;
    let plugin = Plugin::load(runtime, &format!("{}/shadow", policy.name), &read(&source)?, config.clone(), snapshot)?;
    Ok(shadow::Shadow::new(source, config, plugin, s.sample))
}

pub fn read(source: &PluginSource) -> Result<Vec<u8>, String> {
    match source {
        PluginSource::Builtin(name) => {
            crate::builtin::bytes(name).map(<[u8]>::to_vec).ok_or_else(|| format!("no built-in plugin `{name}`"))
        }
        PluginSource::File(path) => std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())),
    }
}

/// The topology plugins see: shards with their health and labels.
fn plugin_topology(cfg: &Config, healthy: Option<&[bool]>) -> plugin::Topology {
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

    pub(crate) fn router(extra: &str) -> Router {
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
        let cfg = Config::parse(&text).unwrap();
        let metrics = Arc::new(Metrics::new());
        let pools = Pools::new(&cfg, Arc::new(Topology::new(&cfg)), &metrics).unwrap();
        Router::new(&cfg, &pools, &metrics).unwrap()
    }

    fn shards(r: &Router, sql: &str) -> Result<Vec<usize>, Refusal> {
        let session = Arc::new(SessionInfo::default());
        match r.route_statement(&Arc::new(classify(sql)), 0, &None, &session, false, None) {
            Ok(route) => Ok(route.shards.iter().map(|s| s.index()).collect()),
            Err(RouteError::Refused(e)) => Err(e),
            Err(other) => panic!("needs a server: {other:?}"),
        }
    }

    #[tokio::test]
    async fn hash_plugin_places_keys_like_postgres_partitioning() {
        let r = router("");
        // Remainders of PARTITION BY HASH (bigint) MODULUS 2, from Postgres 15.
        for (key, shard) in [(1, 0), (2, 0), (3, 1), (4, 1), (8, 1), (42, 0)] {
            let got = shards(&r, &format!("SELECT * FROM orders WHERE customer_id = {key}")).unwrap();
            assert_eq!(got, [shard], "key {key}");
        }
        assert_eq!(shards(&r, "SELECT 1").unwrap(), Vec::<usize>::new(), "no sharded table: no preference");
        assert_eq!(shards(&r, "SELECT * FROM orders").unwrap(), [0, 1], "no key: every shard");
    }

    #[tokio::test]
    async fn key_updates_and_bad_hints_are_refused() {
        let r = router("");
        let e = shards(&r, "UPDATE orders SET customer_id = 5 WHERE customer_id = 1").unwrap_err();
        assert!(matches!(e, Refusal::KeyUpdate { .. }), "{e:?}");
        assert_eq!(shards(&r, "/* shardcar: shard=s1 */ SELECT * FROM orders").unwrap(), [1]);
        let e = shards(&r, "/* shardcar: shard=s9 */ SELECT 1").unwrap_err();
        assert_eq!(SqlError::from(e).code, "22023");
    }
}
