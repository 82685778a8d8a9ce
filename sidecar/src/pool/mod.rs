//! Backend connection pools: one deadpool pool per (shard, role), health
//! state per server, and checkout with replica fallback. Every server also
//! has one small control-plane pool (deadpool-postgres) that health probes,
//! the catalog and directory lookups share.

pub mod backend;
pub mod budget;
mod conn;
pub mod failover;
pub mod health;
pub mod in_flight;
pub mod oids;

pub use conn::ShardConn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use deadpool::managed::{self, PoolError, RecycleError, RecycleResult, TimeoutType, Timeouts};

use crate::config::{self, Config, Endpoint};
use crate::metrics::{Metrics, NodeMetrics};
use crate::passthrough::UserLogin;
use crate::sqlerror::{SqlError, code};
use crate::topology::{ShardId, Topology};
use backend::{BackendConn, ConnectError};
use shardcar_api::Lag;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// Reachability of one server, as seen by health probes and by the data path.
#[derive(Debug, Default)]
pub struct Health {
    /// 0: not known yet, 1: up, 2: down.
    state: AtomicU8,
    last_error: Mutex<Option<String>>,
    /// Replicas: how far behind the primary, from the latest probe.
    lag: Mutex<Option<Lag>>,
    /// Replicas: further behind than `routing.max_replica_lag_*` (or not
    /// known to be within it), so reads skip it.
    behind: AtomicBool,
    /// Its latest failure was an answer — a refused login, a TLS or
    /// protocol error — not silence: nothing to wait out.
    refusing: AtomicBool,
}

impl Health {
    /// Not known to be down: a server is tried before it is skipped.
    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) != 2
    }

    /// Reached at least once, and not failed since.
    pub fn is_confirmed_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == 1
    }

    /// Reached: an error from before the server came back is no longer its state.
    pub fn mark_up(&self) {
        self.refusing.store(false, Ordering::Relaxed);
        if self.state.swap(1, Ordering::Relaxed) == 2 {
            tracing::info!("reachable again");
            if let Ok(mut e) = self.last_error.lock() {
                *e = None;
            }
        }
    }

    pub fn mark_down(&self, why: String) {
        if self.state.swap(2, Ordering::Relaxed) != 2 {
            tracing::warn!("marked down: {why}");
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why);
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn lag(&self) -> Option<Lag> {
        self.lag.lock().ok().and_then(|l| *l)
    }

    pub fn set_lag(&self, lag: Option<Lag>) {
        if let Ok(mut l) = self.lag.lock() {
            *l = lag;
        }
    }

    pub fn is_refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Whether reads skip this replica for its lag.
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// Records whether the replica is within the lag limit; says so when that changes.
    pub fn set_behind(&self, behind: bool, label: &str, lag: Option<Lag>) {
        if self.behind.swap(behind, Ordering::Relaxed) != behind {
            match (behind, lag) {
                (true, Some(l)) => tracing::warn!(
                    "{label}: {} bytes / {:.1} s behind its primary, over routing.max_replica_lag_*: reads go elsewhere",
                    l.bytes,
                    l.seconds
                ),
                (true, None) => tracing::warn!("{label}: lag unknown: reads go elsewhere until it is measured"),
                (false, _) => tracing::info!("{label}: within routing.max_replica_lag_* again: reads may use it"),
            }
        }
    }
}

/// Creates and recycles raw backend connections for one server, as the
/// URL's user or (passthrough) as a client's own.
#[derive(Clone)]
pub struct Manager {
    endpoint: Endpoint,
    connect_timeout: Duration,
    server_params: Arc<RwLock<Vec<(String, String)>>>,
    health: Arc<Health>,
    oids: Option<Arc<oids::ShardOids>>,
    label: String,
    tls: Arc<crate::tls::shard::Usage>,
    login: Option<Arc<UserLogin>>,
    /// The server's budget count of open connections (not for passthrough pools).
    open: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl managed::Manager for Manager {
    /// Boxed: the pool, the session and its tables move a checked-out
    /// connection several times per statement; a pointer is cheap to move.
    type Type = Box<BackendConn>;
    type Error = ConnectError;

    async fn create(&self) -> Result<Box<BackendConn>, ConnectError> {
        let counted = self.open.as_ref().map(budget::Counted::new);
        let mut conn = BackendConn::connect(&self.endpoint, self.login.as_deref(), self.connect_timeout).await?;
        conn.counted = counted;
        conn.oids = self.oids.clone();
        conn.encrypted = self.tls.opened(conn.encryption());
        if conn.encrypted.is_none() && self.endpoint.tls.mode == crate::tls::shard::SslMode::Prefer {
            self.tls.warn_plain_once(&self.label, &self.endpoint.address());
        }
        self.health.mark_up();
        if let Ok(mut params) = self.server_params.write()
            && params.is_empty()
        {
            *params = conn.server_params.clone();
        }
        Ok(Box::new(conn))
    }

    async fn recycle(&self, conn: &mut Box<BackendConn>, _: &managed::Metrics) -> RecycleResult<ConnectError> {
        if conn.is_reusable() {
            Ok(())
        } else {
            Err(RecycleError::message("connection closed or left in an unknown state"))
        }
    }
}

pub type Pooled = managed::Object<Manager>;

/// One server of a shard: its primary or one of its replicas, as the
/// latest health probe found.
pub struct Node {
    pub shard: ShardId,
    /// Listed under `primary` or `replicas` in the config.
    pub configured: Role,
    /// Its role, timeline and freshness from the latest probe.
    pub state: failover::ServerState,
    /// "s0 primary", "s0 replica 1" (as configured): used in every message
    /// about this server.
    pub label: String,
    pub endpoint: Endpoint,
    pub pool: managed::Pool<Manager>,
    /// shardcar's own queries to this server (probes, catalog, directory).
    pub control: deadpool_postgres::Pool,
    pub health: Arc<Health>,
    /// Which of its connections are encrypted, and with what.
    pub tls: Arc<crate::tls::shard::Usage>,
    pub metrics: NodeMetrics,
    /// Statements running on this server now.
    pub running: Arc<in_flight::Tracker>,
    /// Sessions waiting for one of its connections now.
    pub waiting: Arc<in_flight::Tracker>,
    /// The fleet's connection budget for this server, when it has one: the
    /// pool's size then follows the slots this sidecar holds.
    pub budget: Option<Arc<budget::Budget>>,
    /// What `pool`'s connections are made with, for the passthrough pools.
    manager: Manager,
    /// Passthrough users' own pools, by user name, each with the login it
    /// makes its connections with.
    users: Mutex<HashMap<String, UserPool>>,
    user_pool_size: usize,
}

impl Node {
    /// Its role as the latest probe found, else as configured.
    pub fn role(&self) -> Role {
        self.state.learned().unwrap_or(self.configured)
    }

    /// Takes its shard's writes now.
    pub fn is_primary(&self) -> bool {
        self.state.is_leader()
    }

    /// `primary`, `replica` or `fenced`, for the API and the console.
    pub fn role_name(&self) -> &'static str {
        if self.state.is_fenced() { "fenced" } else { self.role().as_str() }
    }

    /// Drops its idle connections: it stopped being what they were opened for.
    fn drain(&self) {
        for pool in self.all_pools() {
            pool.retain(|_, _| false);
        }
    }

    /// The pool for `login`'s user, made (or made again, when the user's
    /// credentials changed) on first use.
    fn user_pool(&self, login: &Arc<UserLogin>, timeouts: Timeouts) -> Result<managed::Pool<Manager>, String> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, pool)) = users.get(&login.user)
            && known.same_as(login)
        {
            return Ok(pool.clone());
        }
        let manager = Manager { login: Some(login.clone()), open: None, ..self.manager.clone() };
        let pool = build_pool(manager, self.user_pool_size, timeouts)?;
        users.insert(login.user.clone(), (login.clone(), pool.clone()));
        Ok(pool)
    }

    /// Passthrough users with a pool here, and their open connections.
    pub fn passthrough(&self) -> (u64, u64) {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        (users.len() as u64, users.values().map(|(_, p)| p.status().size as u64).sum())
    }

    /// The URL user's pool and every passthrough user's.
    fn all_pools(&self) -> Vec<managed::Pool<Manager>> {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        std::iter::once(self.pool.clone()).chain(users.values().map(|(_, p)| p.clone())).collect()
    }
}

/// A passthrough user's pool, with the login its connections are made with.
type UserPool = (Arc<UserLogin>, managed::Pool<Manager>);

fn build_pool(manager: Manager, size: usize, timeouts: Timeouts) -> Result<managed::Pool<Manager>, String> {
    managed::Pool::builder(manager)
        .max_size(size)
        // Most recently used first, as PgBouncer does: the same few
        // server processes stay hot and the rest can idle out.
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .timeouts(timeouts)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

pub struct Shard {
    pub id: ShardId,
    /// Every server, as configured: primary hosts first, then replicas.
    pub servers: Vec<Arc<Node>>,
    /// Which of them takes the writes now.
    pub leader: failover::Leader,
    pub metrics: crate::metrics::ShardMetrics,
    next_replica: AtomicUsize,
    /// The shard's text order is byte order (`lc_collate` is C), asked once.
    text_in_c: OnceLock<bool>,
}

impl Shard {
    /// The server taking the writes, if one does now.
    pub fn current_primary(&self) -> Option<&Arc<Node>> {
        self.leader.current().and_then(|i| self.servers.get(i))
    }

    /// A primary takes the writes and answered its latest probe.
    pub fn has_primary(&self) -> bool {
        self.current_primary().is_some_and(|p| p.health.is_confirmed_up())
    }

    /// The server taking the writes, else (none does now) the last one
    /// that did (at first, the first configured as primary): for shardcar's
    /// own queries, which fail if it cannot take them.
    pub fn primary(&self) -> &Arc<Node> {
        self.current_primary().unwrap_or_else(|| self.last_primary())
    }

    /// The last server that took the writes (at first, the first configured as primary).
    pub fn last_primary(&self) -> &Arc<Node> {
        &self.servers[self.leader.last()]
    }

    /// Servers that are replicas now (in recovery, or configured as one until probed).
    pub fn replicas(&self) -> impl Iterator<Item = &Arc<Node>> + Clone {
        self.servers.iter().filter(|n| n.role() == Role::Replica && !n.is_primary())
    }

    /// Every probe round applies what it learned here: who leads, who is
    /// fenced. Drains the pools of a server that stops leading.
    pub fn elect(&self) {
        let claims: Vec<(usize, u32)> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(_, n)| n.health.is_confirmed_up() && n.state.learned() == Some(Role::Primary))
            .map(|(i, n)| (i, n.state.timeline().unwrap_or(0)))
            .collect();
        let election = failover::elect(&claims, self.leader.newest_timeline());
        let before = self.current_primary().cloned();
        for (i, node) in self.servers.iter().enumerate() {
            let fenced = election.fenced.contains(&i);
            if node.state.set_fenced(fenced) && fenced {
                tracing::error!(
                    "{} claims to be a primary on timeline {}, but {}: nothing is sent to it",
                    node.label,
                    node.state.timeline().unwrap_or(0),
                    match election.leader {
                        Some(l) => format!("{} leads on timeline {}", self.servers[l].label, election.newest),
                        None if claims.len() > 1 => "another primary is on the same timeline (split brain)".into(),
                        None => format!("the shard has been on timeline {} since", election.newest),
                    }
                );
            }
            node.state.set_leader(election.leader == Some(i));
        }
        let to = election.leader.map(|i| &self.servers[i]);
        let changed = self.leader.set(election.leader, election.newest, || shardcar_api::Failover {
            at_ms: failover::unix_ms(std::time::SystemTime::now()),
            from: before.as_ref().map(|n| n.label.clone()),
            to: to.map(|n| n.label.clone()),
            timeline: to.and_then(|n| n.state.timeline()),
        });
        if changed {
            self.metrics.failovers.inc();
            match (before, to) {
                (_, Some(to)) => tracing::warn!(
                    "{} takes the writes of shard {} now (timeline {})",
                    to.label,
                    self.id,
                    to.state.timeline().unwrap_or(0)
                ),
                (Some(from), None) => {
                    tracing::warn!("{} no longer takes writes: statements that need a primary wait", from.label);
                }
                (None, None) => {}
            }
        }
        for node in self.servers.iter().filter(|n| !n.is_primary() && n.state.learned() != Some(Role::Replica)) {
            node.drain();
        }
    }

    /// Whether text sorts by its bytes on this shard, once known.
    pub fn text_in_c(&self) -> Option<bool> {
        self.text_in_c.get().copied()
    }

    pub fn set_text_in_c(&self, c: bool) {
        let _ = self.text_in_c.set(c);
    }
}

pub struct Pools {
    pub topology: Arc<Topology>,
    /// Shared with what queries a shard's primary on its own (the catalog,
    /// directories), so that they follow it too.
    pub shards: Vec<Arc<Shard>>,
    server_params: Arc<RwLock<Vec<(String, String)>>>,
    timeouts: Timeouts,
    pool_size: usize,
    /// Descriptions from every shard in the default shard's OIDs.
    pub oids: Arc<oids::Oids>,
    /// `routing.max_replica_lag_bytes` and `_ms`.
    pub max_lag: MaxLag,
    /// `[failover]`: how long and how many statements wait for a primary.
    failover: config::Failover,
    /// Asks the health probes for a round now (a primary was lost).
    pub probe_now: tokio::sync::Notify,
}

/// A checkout that failed; `lost`: the server did not answer at all.
struct Failed {
    error: SqlError,
    lost: bool,
}

/// How far behind its primary a replica may be and still get reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaxLag {
    pub bytes: Option<u64>,
    pub ms: Option<u64>,
}

impl MaxLag {
    /// Whether a replica `lag` behind (None: not known) is too far behind.
    pub fn exceeded_by(&self, lag: Option<Lag>) -> bool {
        if self.bytes.is_none() && self.ms.is_none() {
            return false;
        }
        match lag {
            None => true,
            Some(l) => {
                self.bytes.is_some_and(|b| l.bytes > b) || self.ms.is_some_and(|ms| l.seconds * 1000.0 > ms as f64)
            }
        }
    }
}

impl Pools {
    pub fn new(cfg: &Config, topology: Arc<Topology>, metrics: &Metrics) -> Result<Pools, config::Invalid> {
        let server_params = Arc::new(RwLock::new(Vec::new()));
        let oids = Arc::new(oids::Oids::new(topology.default_shard(), cfg.shards.len()));
        let timeouts = Timeouts {
            wait: Some(cfg.pool.checkout_timeout()),
            create: Some(cfg.pool.connect_timeout()),
            recycle: Some(Duration::from_secs(1)),
        };
        let node = |shard: ShardId, s: &config::Shard, server: config::Server| {
            let config::Server { endpoint, configured_primary, label } = server;
            let role = if configured_primary { Role::Primary } else { Role::Replica };
            let invalid = |message: String| config::Invalid(vec![config::Problem { path: label.clone(), message }]);
            let control = control_pool(&endpoint, cfg.pool.connect_timeout()).map_err(invalid)?;
            let health = Arc::new(Health::default());
            let tls = Arc::new(crate::tls::shard::Usage::default());
            if endpoint.tls.mode == crate::tls::shard::SslMode::Disable
                && !crate::tls::shard::is_loopback(&endpoint.host)
            {
                tracing::warn!(
                    "{label} ({}) is not encrypted: sslmode=disable for a host that is not loopback",
                    endpoint.address()
                );
            }
            let budget = s.max_server_connections.map(|limit| Arc::new(budget::Budget::new(limit)));
            let manager = Manager {
                open: budget.as_ref().map(|b| b.open.clone()),
                endpoint: endpoint.clone(),
                connect_timeout: cfg.pool.connect_timeout(),
                server_params: server_params.clone(),
                health: health.clone(),
                oids: oids.for_shard(shard),
                label: label.clone(),
                tls: tls.clone(),
                login: None,
            };
            let pool = build_pool(manager.clone(), cfg.pool.size, timeouts).map_err(invalid)?;
            let metrics = metrics.node(topology.name(shard), role.as_str(), &endpoint.address());
            Ok(Arc::new(Node {
                shard,
                configured: role,
                state: failover::ServerState::default(),
                label,
                endpoint,
                pool,
                control,
                health,
                tls,
                metrics,
                running: Arc::default(),
                waiting: Arc::default(),
                budget,
                manager,
                users: Mutex::default(),
                user_pool_size: cfg.auth.user_pool_size,
            }))
        };
        let mut shards = Vec::new();
        for (id, s) in topology.ids().zip(&cfg.shards) {
            let servers =
                cfg.servers(s).map_err(|(path, message)| config::Invalid(vec![config::Problem { path, message }]))?;
            let servers = servers.into_iter().map(|server| node(id, s, server)).collect::<Result<Vec<_>, _>>()?;
            servers[0].state.set_leader(true);
            let next_replica = AtomicUsize::new(0);
            shards.push(Arc::new(Shard {
                id,
                servers,
                leader: failover::Leader::new(0),
                metrics: metrics.shard(&s.name),
                next_replica,
                text_in_c: OnceLock::new(),
            }));
        }
        let max_lag = MaxLag { bytes: cfg.routing.max_replica_lag_bytes, ms: cfg.routing.max_replica_lag_ms };
        Ok(Pools {
            topology,
            shards,
            server_params,
            timeouts,
            pool_size: cfg.pool.size,
            oids,
            max_lag,
            failover: cfg.failover.clone(),
            probe_now: tokio::sync::Notify::new(),
        })
    }

    /// `shard`'s user tables and types by name, from its primary.
    pub async fn catalog_names(&self, shard: ShardId) -> Result<oids::Names, String> {
        let client = self.shard(shard).primary().control.get().await.map_err(|e| e.to_string())?;
        let rows = client.query(oids::NAMES_SQL, &[]).await.map_err(|e| e.to_string())?;
        let mut names = oids::Names::default();
        for row in rows {
            let (Ok(oid), Ok(kind), Ok(name)) = (row.try_get::<_, u32>(0), row.try_get::<_, &str>(1), row.try_get(2))
            else {
                return Err("unexpected answer to the catalog query".into());
            };
            match kind {
                "r" => names.tables.push((oid, name)),
                _ => names.types.push((oid, name)),
            }
        }
        Ok(names)
    }

    /// Reads every shard's OIDs again (after DDL, before its client is told).
    pub async fn refresh_oids(&self) {
        self.oids.refresh(|shard| self.catalog_names(shard)).await;
    }

    pub fn shard(&self, id: ShardId) -> &Arc<Shard> {
        &self.shards[id.index()]
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.shards.iter().flat_map(|s| &s.servers)
    }

    /// A connection to `shard`: a healthy replica when `role` allows one
    /// (one that has replayed the session's writes on the shard, when it
    /// made some: acknowledged at `wrote_at`), else (or when every replica
    /// fails) the primary; as `login`'s user (passthrough), else as the URL's.
    pub async fn checkout(
        &self,
        shard: ShardId,
        role: Role,
        wrote_at: Option<Instant>,
        login: Option<&Arc<UserLogin>>,
    ) -> Result<ShardConn, SqlError> {
        let s = self.shard(shard);
        if role == Role::Replica {
            // Round robin, starting one further each time (no allocation: this is every read).
            let count = s.replicas().count();
            let start = s.next_replica.fetch_add(1, Ordering::Relaxed) % count.max(1);
            for node in s.replicas().cycle().skip(start).take(count) {
                if !node.health.is_up() || node.health.is_behind() {
                    continue;
                }
                if wrote_at.is_some_and(|at| !node.state.has_replayed(at)) {
                    continue;
                }
                match self.get(node, login).await {
                    Ok(c) => return Ok(c),
                    Err(e) if e.code == code::TOO_MANY_CONNECTIONS => return Err(e),
                    Err(e) => {
                        // Reads fall back to the primary; health probes bring the replica back.
                        node.health.mark_down(format!("{}: {}", node.label, e.message));
                    }
                }
            }
        }
        self.primary_conn(s, login).await
    }

    /// A connection to `s`'s primary. While it has none because the one it
    /// had is lost (it stopped answering; not a refused login or a shard
    /// never reached), waits for one up to `failover.buffer_ms`.
    async fn primary_conn(&self, s: &Shard, login: Option<&Arc<UserLogin>>) -> Result<ShardConn, SqlError> {
        let started = Instant::now();
        let mut slot = None;
        let mut last_error: Option<SqlError> = None;
        loop {
            let target = s.current_primary().filter(|n| n.health.is_up());
            if target.is_none() {
                let last = s.last_primary();
                if !s.leader.had_one() || last.health.is_refusing() {
                    // Never reached, or refusing rather than gone: its own
                    // error, at once, as for any server.
                    return self.get(last, login).await;
                }
            }
            if let Some(node) = target {
                match self.try_get(node, login, started).await {
                    Ok(conn) => return Ok(conn),
                    Err(Failed { error, lost: true }) => {
                        // A probe round now says whether it is gone for good.
                        self.probe_now.notify_one();
                        last_error = Some(error);
                    }
                    Err(Failed { error, lost: false }) => return Err(error),
                }
            }
            let left = self.failover.buffer().saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(self.no_primary(s, last_error, self.failover.buffer_ms > 0));
            }
            if slot.is_none() {
                let Some(taken) = s.leader.wait_slot(self.failover.max_buffered, started, &s.metrics.wait) else {
                    return Err(self.no_primary(s, last_error, true));
                };
                slot = Some(taken);
                // Watching from now on: look once more before the first wait.
                continue;
            }
            if let Some(slot) = slot.as_mut() {
                slot.changed(left).await;
            }
        }
    }

    /// The error of a statement that found no primary: `57P03` when it
    /// waited for one (or found too many waiting), else the last error as it was.
    fn no_primary(&self, s: &Shard, last_error: Option<SqlError>, waited: bool) -> SqlError {
        let name = self.topology.name(s.id);
        let why = last_error
            .as_ref()
            .map(|e| e.message.clone())
            .or_else(|| s.primary().health.last_error())
            .unwrap_or_else(|| "no server says it is the primary".into());
        if !waited {
            return last_error.unwrap_or_else(|| {
                SqlError::new(code::CANNOT_CONNECT, format!("shard {name} has no primary: {why}")).on(s.id)
            });
        }
        let message = if s.leader.buffered() >= self.failover.max_buffered {
            format!(
                "shard {name} has no primary and {} statements already wait for one (failover.max_buffered); last error: {why}",
                self.failover.max_buffered
            )
        } else {
            format!(
                "shard {name} has no primary: none took the writes within {} ms; last error: {why}",
                self.failover.buffer_ms
            )
        };
        SqlError::new(code::CANNOT_CONNECT_NOW, message)
            .hint("failover.buffer_ms is how long statements wait for a promotion")
            .on(s.id)
    }

    async fn get(&self, node: &Arc<Node>, login: Option<&Arc<UserLogin>>) -> Result<ShardConn, SqlError> {
        self.try_get(node, login, Instant::now()).await.map_err(|f| f.error)
    }

    /// A connection from `node`'s pool for a statement waiting since `asked`.
    async fn try_get(
        &self,
        node: &Arc<Node>,
        login: Option<&Arc<UserLogin>>,
        asked: Instant,
    ) -> Result<ShardConn, Failed> {
        let failed = |error: SqlError| Failed { error, lost: false };
        let _waiting = node.waiting.begin(asked);
        let pool = match login {
            None => &node.pool,
            Some(login) => &node
                .user_pool(login, self.timeouts)
                .map_err(|e| failed(SqlError::new(code::INTERNAL_ERROR, format!("pool for {}: {e}", node.label))))?,
        };
        // Within the fleet's budget: a slot's permit first, held with the connection.
        let slot = match (&node.budget, login) {
            (Some(budget), None) => Some(self.budget_permit(node, budget).await.map_err(failed)?),
            _ => None,
        };
        match pool.timeout_get(&self.timeouts).await {
            Ok(conn) => Ok(ShardConn { conn, node: node.clone(), _slot: slot }),
            Err(e) => {
                // Not there (refused, unreachable, silent): a failover may be under way.
                let lost = matches!(
                    e,
                    PoolError::Timeout(TimeoutType::Create)
                        | PoolError::Backend(ConnectError::Io { .. } | ConnectError::Timeout(..))
                );
                if matches!(e, PoolError::Backend(_) | PoolError::Timeout(TimeoutType::Create)) {
                    node.health.set_refusing(!lost);
                }
                Err(Failed { error: self.checkout_error(node, e).on(node.shard), lost })
            }
        }
    }

    async fn budget_permit(
        &self,
        node: &Node,
        budget: &budget::Budget,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, SqlError> {
        let wait = self.timeouts.wait.unwrap_or_default();
        match tokio::time::timeout(wait, budget.gate.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                let v = budget.view();
                Err(SqlError::new(
                    code::TOO_MANY_CONNECTIONS,
                    format!(
                        "no free connection to {} within {} ms: this sidecar holds {} of the {} connections {} sidecars share (max_server_connections)",
                        node.label,
                        wait.as_millis(),
                        v.held,
                        budget.limit,
                        v.sidecars
                    ),
                )
                .hint("raise shards[].max_server_connections (and the server's max_connections), or look for long transactions holding connections")
                .on(node.shard))
            }
        }
    }

    fn checkout_error(&self, node: &Node, e: PoolError<ConnectError>) -> SqlError {
        let wait_ms = self.timeouts.wait.unwrap_or_default().as_millis();
        match e {
            PoolError::Timeout(TimeoutType::Wait) => SqlError::new(
                code::TOO_MANY_CONNECTIONS,
                format!("no free connection to {} within {wait_ms} ms (pool.size = {})", node.label, self.pool_size),
            )
            .hint("raise pool.size or pool.checkout_timeout_ms, or look for long transactions holding connections"),
            PoolError::Timeout(_) => {
                let e = SqlError::new(
                    code::CANNOT_CONNECT,
                    format!("timed out connecting to {} ({})", node.label, node.endpoint.address()),
                );
                node.health.mark_down(e.message.clone());
                e
            }
            PoolError::Backend(err) => {
                let e = SqlError::new(code::CANNOT_CONNECT, format!("cannot connect to {}: {err}", node.label));
                node.health.mark_down(e.message.clone());
                e
            }
            PoolError::Closed => SqlError::fatal(code::ADMIN_SHUTDOWN, "shardcar is shutting down"),
            other => SqlError::new(code::INTERNAL_ERROR, format!("pool for {}: {other:?}", node.label)),
        }
    }

    /// ParameterStatus values to show clients, from the first server reached;
    /// if none was reached yet, connects to a primary (the default shard's first).
    pub async fn server_params(&self) -> Result<Vec<(String, String)>, SqlError> {
        if let Some(p) = self.cached_params() {
            return Ok(p);
        }
        let first = self.topology.default_shard();
        let order = std::iter::once(first).chain(self.topology.ids().filter(|&i| i != first));
        let mut last_error = None;
        for shard in order {
            match self.get(self.shard(shard).primary(), None).await {
                Ok(conn) => {
                    drop(conn);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (self.cached_params(), last_error) {
            (Some(p), _) => Ok(p),
            (None, Some(e)) => Err(e),
            (None, None) => Err(SqlError::new(code::INTERNAL_ERROR, "server parameters unknown after connecting")),
        }
    }

    pub fn cached_params(&self) -> Option<Vec<(String, String)>> {
        self.server_params.read().ok().filter(|p| !p.is_empty()).map(|p| p.clone())
    }

    /// Closes connections idle for longer than `idle`.
    pub fn close_idle(&self, idle: Duration) {
        for pool in self.nodes().flat_map(|n| n.all_pools()) {
            pool.retain(|_, m| m.last_used() < idle);
        }
    }

    pub fn close(&self) {
        for pool in self.nodes().flat_map(|n| n.all_pools()) {
            pool.close();
        }
    }
}

/// A control-plane pool for one server: a few connections for shardcar's
/// own queries, named so that they can be told apart in `pg_stat_activity`.
fn control_pool(endpoint: &Endpoint, connect_timeout: Duration) -> Result<deadpool_postgres::Pool, String> {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    let mut cfg = endpoint.control.clone();
    cfg.connect_timeout(connect_timeout);
    cfg.application_name("shardcar-control");
    let (ssl_mode, tls) = endpoint.tls.control();
    cfg.ssl_mode(ssl_mode);
    let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let connect = ControlConnect { endpoint: endpoint.clone(), tls };
    let manager = Manager::from_connect(cfg, connect, recycling);
    Pool::builder(manager).max_size(4).build().map_err(|e| e.to_string())
}

/// Opens control-plane connections with the endpoint's TLS and its
/// password as it is now (a rotated password file applies to new ones).
struct ControlConnect {
    endpoint: Endpoint,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl deadpool_postgres::Connect for ControlConnect {
    fn connect(
        &self,
        cfg: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let mut cfg = cfg.clone();
        if let Some(password) = self.endpoint.password() {
            cfg.password(password.as_bytes());
        }
        let tls = self.tls.clone();
        // The connection's task ends with it; its error is the client's next one.
        Box::pin(async move {
            Ok(match tls {
                Some(tls) => {
                    let (client, conn) = cfg.connect(tls).await?;
                    (client, tokio::spawn(async move { drop(conn.await) }))
                }
                None => {
                    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                    (client, tokio::spawn(async move { drop(conn.await) }))
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn a_server_that_came_back_has_no_last_error() {
        let h = Health::default();
        h.mark_down("connection refused".into());
        assert_eq!(h.last_error().as_deref(), Some("connection refused"));
        h.mark_up();
        assert!(h.is_confirmed_up());
        assert_eq!(h.last_error(), None);
    }
}
