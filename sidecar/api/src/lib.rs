//! The JSON shapes of shardcar's admin API (`/api/v1/...`), shared by the
//! sidecar that serves them and the dashboard that reads them, so the two
//! cannot drift. Plain serde types only: this crate also builds for wasm.
//!
//! Durations are milliseconds (`_ms`), timestamps are Unix milliseconds
//! (`_unix_ms`) or seconds (`t`), rates are per second (`_per_s`).

use serde::{Deserialize, Serialize};

/// Every error the API returns: a message that says what went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `GET /api/v1/overview`: the sidecar at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// shardcar's version.
    pub version: String,
    pub uptime_s: u64,
    /// Every shard's primary answered its latest health probe (shard
    /// health; `/readyz` says whether the sidecar can serve, which it can
    /// with a shard down).
    pub ready: bool,
    pub shards: usize,
    pub clients: Clients,
    /// All statements run on shards: totals, and rates over the recent window.
    pub load: Load,
    /// How unevenly statements spread over shards, all tables together.
    pub skew: Skew,
    pub parse_cache: ParseCache,
    pub traces: Traces,
    pub bytes: Bytes,
    /// Statements shardcar refused or failed itself, without a shard running them.
    pub rejected_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clients {
    pub connected: u64,
    /// Connections accepted since start.
    pub accepted_total: u64,
    /// Connections refused at startup (too many clients, failed login, bad startup packet).
    pub refused_total: u64,
}

/// Statement counts and latency. Rates and quantiles cover the last
/// `window_s` seconds; totals count since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub statements_total: u64,
    pub errors_total: u64,
    pub window_s: u64,
    pub statements_per_s: f64,
    /// Of `statements_per_s`: reads (SELECT without locking clauses) and
    /// writes (INSERT/UPDATE/DELETE/MERGE, locking SELECTs); the rest are
    /// transaction control, SET and other utility statements.
    pub reads_per_s: f64,
    pub writes_per_s: f64,
    pub errors_per_s: f64,
    /// Latency quantiles, from histogram buckets; `None` without statements.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The slowest statement that finished in the window.
    pub max_ms: Option<f64>,
}

/// Busiest shard over the mean of all shards, over the last `window_s`
/// seconds. 1.0 is perfectly even; the number of shards is the most it can be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skew {
    pub ratio: f64,
    pub busiest: Option<String>,
    /// Shards left out of `ratio` and `busiest`: down or stalled in the
    /// window, they carry less than their share for that reason alone.
    pub excluded: Vec<String>,
    /// The ratio has stayed at or above `threshold` for `hot_after_s` seconds
    /// (with at least the configured minimum load): `busiest` is hot.
    pub hot: bool,
    pub threshold: f64,
    pub window_s: u64,
    pub hot_after_s: u64,
    /// Statements counted in the window, per shard, in shard order.
    pub shards: Vec<ShardShare>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardShare {
    pub shard: String,
    pub statements: u64,
    /// Fraction of the window's statements, 0..1.
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParseCache {
    pub hits_total: u64,
    pub misses_total: u64,
    pub entries: u64,
}

/// The OTLP trace exporter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traces {
    pub enabled: bool,
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<String>,
    pub sampler: Option<String>,
    pub exported_spans_total: u64,
    /// Spans dropped because the export queue was full (collector down or slow).
    pub dropped_spans_total: u64,
    /// Spans lost in exports the collector did not accept.
    pub failed_spans_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bytes {
    pub from_clients_total: u64,
    pub to_clients_total: u64,
}

/// `GET /api/v1/shards`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shards {
    pub shards: Vec<Shard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub name: String,
    /// The primary answered its latest health probe.
    pub healthy: bool,
    /// This shard is the hot one (overall skew).
    pub hot: bool,
    pub load: Load,
    /// What runs and waits on the shard's servers now.
    pub in_flight: InFlight,
    /// Errors shardcar raised about this shard (cannot connect, connection
    /// lost, no free connection) per second over the window: the
    /// statements that never reached it.
    pub refused_per_s: f64,
    pub servers: Vec<Server>,
    /// Changes of which server takes the shard's writes, newest last (up to 20).
    #[serde(default)]
    pub failovers: Vec<Failover>,
    /// Statements waiting for the shard to have a primary now.
    #[serde(default)]
    pub buffered: u64,
    /// One point per second, oldest first (up to 15 minutes; `?series=N`
    /// asks for the last N seconds, and the live stream carries the last one).
    pub series: Vec<Point>,
}

/// Work in flight on a shard's servers now: a stall shows here while it
/// lasts, before any statement finishes to say so in latencies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    /// Statements running on the shard's servers.
    pub running: u64,
    /// Age of the oldest of them.
    pub oldest_running_ms: Option<f64>,
    /// Sessions waiting for one of the shard's connections.
    pub waiting: u64,
    /// How long the longest of them has waited.
    pub longest_wait_ms: Option<f64>,
    /// A session has waited for a connection, or a statement has run with
    /// nothing finishing on the shard, for `telemetry.stall_after_ms`.
    pub stalled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// What the latest probe found: `primary` (takes the writes), `replica`,
    /// or `fenced` (claims to be a primary, but another one on a newer
    /// timeline is: nothing is sent to it). Before the first probe, as configured.
    pub role: String,
    /// "s0 primary", "s0 replica 0": as listed in the config.
    #[serde(default)]
    pub label: String,
    /// The server's WAL timeline, from the latest probe.
    #[serde(default)]
    pub timeline: Option<u32>,
    pub address: String,
    pub up: bool,
    pub last_error: Option<String>,
    /// Replicas only, from the latest probe.
    pub lag: Option<Lag>,
}

/// The server taking a shard's writes changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The label of the server that took the writes before, if one did.
    pub from: Option<String>,
    /// The one that takes them now; None while the shard has no primary.
    pub to: Option<String>,
    pub timeline: Option<u32>,
}

/// How far a replica is behind its primary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// WAL not yet replayed.
    pub bytes: u64,
    /// Age of the last replayed transaction when WAL is pending, else 0.
    pub seconds: f64,
}

/// One second of one shard's load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Unix seconds at the end of the second.
    pub t: u64,
    pub statements: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// The slowest statement that finished in this second.
    pub max_ms: Option<f64>,
}

/// `GET /api/v1/pools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pools {
    pub pools: Vec<Pool>,
}

/// The backend connection pool of one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub shard: String,
    pub role: String,
    pub address: String,
    /// The `sslmode` in effect for this server (libpq's names).
    pub sslmode: String,
    /// Open connections that are encrypted (of `size`).
    pub encrypted: u64,
    /// Protocol and cipher of the latest encrypted connection, e.g.
    /// "TLSv1.3 TLS13_AES_256_GCM_SHA384".
    pub tls: Option<String>,
    pub max_size: u64,
    /// Open connections.
    pub size: u64,
    pub idle: u64,
    pub in_use: u64,
    /// Sessions waiting for a connection right now.
    pub waiting: u64,
    /// How long the longest of them has waited.
    pub longest_wait_ms: Option<f64>,
    /// Statements running on the server now, and the age of the oldest.
    pub running: u64,
    pub oldest_running_ms: Option<f64>,
    pub checkouts_total: u64,
    /// Passthrough (`[auth] passthrough`): users with connections of their
    /// own to this server, and those connections (not counted in `size`).
    pub passthrough_users: u64,
    pub passthrough_connections: u64,
    /// Time sessions waited for a connection (incl. bringing it to the
    /// session's settings), over the recent window.
    pub checkout_wait_p99_ms: Option<f64>,
    /// The fleet's connection budget for this server
    /// (`shards[].max_server_connections`), when it has one.
    #[serde(default)]
    pub budget: Option<Budget>,
}

/// A server's connection budget shared by the sidecars of a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Data connections the fleet may open to the server.
    pub limit: u64,
    /// Sidecars sharing it now (this one included).
    pub sidecars: u64,
    /// limit / sidecars.
    pub share: u64,
    /// Slots this sidecar holds: how many connections it may have open.
    pub held: u64,
}

/// `GET /api/v1/hotkeys?table=...`: the hottest shard keys of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotKeys {
    pub table: String,
    pub key_column: String,
    pub policy: String,
    /// False: keys are shown as a keyed hash (`#...`), stable while the
    /// process runs, never the value.
    pub show_keys: bool,
    /// Over the last `telemetry.hot_key_window_s` seconds: what is hot now.
    pub window: KeyRanking,
    /// Since start.
    pub lifetime: KeyRanking,
    /// This table's statements per shard over the recent window.
    pub skew: Skew,
}

/// The hottest keys over a span, with the statements counted in it (a
/// key's share is its count over `statements`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRanking {
    /// The span in seconds; `None`: since start.
    pub seconds: Option<u64>,
    pub statements: u64,
    /// Counts may be over by at most this much (the sketch's error bound).
    pub max_error: u64,
    pub keys: Vec<HotKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotKey {
    pub key: String,
    pub shard: String,
    /// Estimated statements with this key; the true count lies in
    /// `lower_bound..=upper_bound`.
    pub count: u64,
    pub lower_bound: u64,
    pub upper_bound: u64,
}

/// `GET /api/v1/hotkeys` without `table`: every sharded table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HotTables {
    pub tables: Vec<HotKeys>,
}

/// `GET /api/v1/plugins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plugins {
    pub plugins: Vec<Plugin>,
    /// Groups of colocated tables (`table.key`): routed by one plugin with
    /// one config, on keys of one type, so equal keys share a shard and
    /// joins on those keys run shard by shard.
    #[serde(default)]
    pub colocated: Vec<Vec<String>>,
}

/// The plugin serving one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plugin {
    pub policy: String,
    /// `builtin:<name>` or the file's path.
    pub source: String,
    pub plugin: String,
    pub version: String,
    /// First hex digits of the component's SHA-256.
    pub digest: String,
    /// `ok`, or `reload failed` when a newer file was refused (the old one serves).
    pub status: String,
    pub calls_total: u64,
    pub errors_total: u64,
    pub p99_us: Option<f64>,
    /// Linear memory of one instance once started; each concurrent call
    /// has an instance of its own.
    #[serde(default)]
    pub instance_memory_bytes: u64,
    /// When the serving version was loaded (start or last hot reload).
    pub loaded_unix_ms: u64,
    pub last_error: Option<String>,
    /// The latest check of which keys a new version would move.
    pub last_moves: Option<MoveReport>,
    /// The shadow plugin routing beside this one, and what it found.
    #[serde(default)]
    pub shadow: Option<ShadowReport>,
    /// Why the configured shadow plugin is not running.
    #[serde(default)]
    pub shadow_error: Option<String>,
    /// What was promoted from the shadow to serve, while it holds.
    #[serde(default)]
    pub promoted: Option<String>,
}

/// A shadow plugin's answers compared with the live plugin's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    /// `builtin:<name>` or the file's path.
    pub source: String,
    /// `name@version (digest)`.
    pub plugin: String,
    /// What `POST /api/v1/plugins/<policy>/promote?digest=` names.
    pub digest: String,
    /// The share of statements it also routes.
    pub sample: f64,
    pub agreed: u64,
    pub disagreed: u64,
    /// Sampled statements not compared: the shadow's queue was full.
    pub dropped: u64,
    /// Calls of the shadow plugin that failed.
    pub failed: u64,
    pub tables: Vec<ShadowTable>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowTable {
    pub table: String,
    pub agreed: u64,
    pub disagreed: u64,
    /// Distinct keys the shadow places elsewhere: their rows would move.
    pub keys_moving: u64,
    /// The count stopped there (at least this many).
    pub keys_moving_capped: bool,
    /// The latest disagreements, newest first.
    pub examples: Vec<ShadowExample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowExample {
    pub key: String,
    pub live: Vec<String>,
    pub shadow: Vec<String>,
}

/// What a new version would do to the rows already on the shards: it and
/// the serving version routed every key of a sample of each table's rows
/// (read from every shard) and the hot keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveReport {
    /// The version checked, `name@version (digest)`, and its digest (what
    /// `allow-moves` names).
    pub candidate: String,
    pub digest: String,
    pub serving: String,
    /// Rows read from the shards, and their distinct keys.
    pub rows_sampled: u64,
    pub keys_sampled: u64,
    /// Every row of every table was read (else a sample of each).
    pub complete: bool,
    /// Rows where the serving version finds them that the new one would
    /// look for elsewhere, and their keys.
    pub moved_rows: u64,
    pub moved_keys: u64,
    /// Rows whose key the new version fails to route.
    pub unroutable_rows: u64,
    /// Hot keys routed by both, and those the new version sends elsewhere.
    pub hot_keys_checked: u64,
    pub hot_keys_moved: u64,
    /// A few keys that move: `table key: s0 → s1 (n rows)`.
    pub examples: Vec<String>,
    /// `allowed` (nothing moves, or the operator allowed it) or `refused`.
    pub verdict: String,
}

/// One second of the live stream (`GET /api/v1/stream`, Server-Sent Events,
/// event `snapshot`): shards carry only their latest point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub at_unix_ms: u64,
    pub overview: Overview,
    pub shards: Vec<Shard>,
    pub pools: Vec<Pool>,
    /// Per sharded table: its skew (keys are fetched with `hotkeys`).
    pub tables: Vec<TableSkew>,
    /// Who got errors over the window, most first.
    pub errors: Vec<ClientErrors>,
    /// The latest events, newest first.
    pub events: Vec<Event>,
}

/// `GET /api/v1/events`: what happened, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Events {
    pub events: Vec<Event>,
}

/// Something that changed: a server down or up (`down`, `up`), a plugin
/// serving or refused (`plugin_serving`, `plugin_refused`), a shard hot or
/// cooled (`hot`, `cooled`), stalled or flowing again (`stalled`,
/// `flowing`), out of connections or recovered (`pool_full`,
/// `pool_recovered`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_unix_ms: u64,
    pub kind: String,
    /// The server, shard or policy it is about.
    pub subject: String,
    pub message: String,
}

/// `GET /api/v1/errors`: errors clients got, attributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    pub window_s: u64,
    pub errors: Vec<ClientErrors>,
}

/// Errors clients got with the same shard, SQLSTATE, source, user and
/// application (`other` beyond the first 50 users or applications).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientErrors {
    /// The shard they concern; empty when none or several.
    pub shard: String,
    pub sqlstate: String,
    /// `server` (a shard's own error, passed on) or `shardcar` (a refusal,
    /// or a failure to reach or keep a server).
    pub by: String,
    pub user: String,
    pub application: String,
    /// Over the window, and since start.
    pub in_window: u64,
    pub per_s: f64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSkew {
    pub table: String,
    pub skew: Skew,
}

/// `GET /api/v1/explain?sql=...&param=...`: where a statement would go, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub sql: String,
    pub params: Vec<Option<String>>,
    /// Why the parser could not read the text, if it could not.
    pub parse_error: Option<String>,
    pub hints: Vec<(String, String)>,
    pub statements: Vec<StatementExplanation>,
    /// Where the whole text would run (outside a transaction).
    pub target: Option<Target>,
    /// Or the shards it would run on, merged (a simple query outside a transaction).
    pub fan_out: Option<FanOutPlan>,
    /// Why it would be refused.
    pub error: Option<Refusal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementExplanation {
    pub text: String,
    pub kind: String,
    pub tables: Vec<String>,
    /// `table.column = value` / `IN (...)` conditions, values as written or bound.
    pub predicates: Vec<String>,
    pub insert_rows: usize,
    /// `explicit`, `policy <name>`, or `unsharded`.
    pub routed_by: String,
    pub plugin: Option<String>,
    pub table: Option<String>,
    pub keys: Vec<String>,
    pub shards: Vec<String>,
    pub role: Option<String>,
    /// Where each key alone goes, when there are several (an `IN` list, the
    /// rows of a multi-row INSERT).
    #[serde(default)]
    pub per_key: Vec<KeyRoute>,
    /// For a statement reading several tables: the tables colocated with
    /// the one it is routed by (equal keys on one shard), itself included.
    #[serde(default)]
    pub colocated: Vec<String>,
}

/// One key of a statement with several, and its shards (or the error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRoute {
    pub key: String,
    pub shards: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub shard: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanOutPlan {
    pub shards: Vec<String>,
    /// How the shards' answers become one, in words.
    pub merge: String,
    /// What each shard runs, when it is rewritten from the client's text.
    #[serde(default)]
    pub sql: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

/// `GET /api/v1/fleet`: every sidecar's metrics added up, read from the
/// Prometheus server at `[fleet] prometheus_url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// The Prometheus server asked; None (and nothing else) when the sidecar
    /// has no fleet view.
    pub prometheus: Option<String>,
    /// Sidecars it scrapes (`shardcar_build_info` series), this one included.
    pub sidecars: Vec<FleetSidecar>,
    /// Per shard, every sidecar's statements added up.
    pub shards: Vec<FleetShard>,
    /// Per sharded table, its hottest keys across the fleet.
    pub tables: Vec<FleetTable>,
}

/// One sidecar as Prometheus sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSidecar {
    /// Prometheus's `instance` label (the admin address it scrapes).
    pub instance: String,
    pub version: String,
    /// The plugin version serving each policy: `(policy, "name@version (digest)")`.
    pub plugins: Vec<(String, String)>,
    /// Policies on which it serves something other than the newest version
    /// any sidecar loaded.
    pub behind: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetShard {
    pub shard: String,
    /// Statements since each sidecar started, added up.
    pub statements_total: f64,
    /// Over the last minute.
    pub statements_per_s: f64,
    pub errors_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetTable {
    pub table: String,
    /// Hottest first: each sidecar's own top keys (since its start), added
    /// up. A key below every sidecar's own top list is not seen.
    pub keys: Vec<FleetKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetKey {
    pub key: String,
    pub shard: String,
    pub statements: f64,
    /// Sidecars that counted it among their top keys.
    pub sidecars: u64,
}
