//! The TOML configuration: its serde shape, defaults, and the semantic checks
//! `shardcar check` reports (every problem, each with its field path).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::secret::Secret;
use crate::watched::{Watched, read_secret};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

pub use crate::secret::AuthMethod;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub pool: Pool,
    #[serde(default)]
    pub shards: Vec<Shard>,
    pub routing: Routing,
    /// Routing policies: a plugin and its config.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Sharded tables: their key column and policy.
    #[serde(default)]
    pub tables: Vec<Table>,
    /// Directory namespaces plugins can `lookup` in.
    #[serde(default)]
    pub directories: Vec<Directory>,
    #[serde(default)]
    pub plugins: Plugins,
    #[serde(default)]
    pub telemetry: Telemetry,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub fleet: Fleet,
    #[serde(default)]
    pub failover: Failover,
    /// Where relative paths in the config are resolved from.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Postgres protocol listener for application clients.
    pub addr: String,
    /// HTTP admin listener: probes, `/metrics`, the JSON API.
    pub admin: String,
    /// When set, `/metrics` and `/api/...` want `Authorization: Bearer <token>`
    /// (or `?access_token=<token>`, for browsers' EventSource); the probes stay open.
    pub admin_token: Option<String>,
    /// Logged-in clients beyond this many get `53300 too_many_connections`.
    pub max_client_connections: usize,
    /// Time a client has for its startup packet and authentication
    /// (Postgres's `authentication_timeout`, PgBouncer's `client_login_timeout`).
    pub login_timeout_ms: u64,
    /// Connections still logging in beyond this many are turned away at once,
    /// so that half-open logins cannot hold logged-in clients' slots.
    pub max_pending_logins: usize,
    /// The largest message a client may send (Postgres allows up to 1 GiB).
    pub max_message_bytes: usize,
    /// All clients' partly received large messages together (a client
    /// declaring a large message takes its size from this before it is read).
    pub client_buffer_budget_bytes: usize,
    /// The client's named prepared statements together (text and Parse
    /// message); a Parse beyond it gets 54000 and the session goes on.
    pub max_prepared_bytes_per_client: usize,
    /// On SIGTERM/SIGINT: how long open transactions may take to finish.
    pub shutdown_grace_s: u64,
    /// Certificate chain and private key (PEM) for clients' TLS; files
    /// relative to the config file. Read again when they change.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse clients that did not negotiate TLS (28000), except from
    /// loopback while `plain_loopback` is true (the per-pod case).
    pub require_tls: bool,
    pub plain_loopback: bool,
    /// Threads serving clients; 0: half the CPUs available, at least one.
    /// On a box shared with its servers and clients, fewer threads mean
    /// fewer wakeups and context switches per statement (see the README's
    /// benchmark).
    pub threads: usize,
}

/// Postgres's own ceiling for a message (`PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_MESSAGE_CEILING: usize = 0x3fff_ffff - 1;

impl Listen {
    pub fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.login_timeout_ms)
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            addr: "127.0.0.1:6432".into(),
            admin: "127.0.0.1:9930".into(),
            admin_token: None,
            max_client_connections: 1000,
            login_timeout_ms: 60_000,
            max_pending_logins: 1000,
            max_message_bytes: 64 << 20,
            client_buffer_budget_bytes: 512 << 20,
            max_prepared_bytes_per_client: 16 << 20,
            shutdown_grace_s: 10,
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            plain_loopback: true,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Cleartext, or a Postgres SCRAM verifier (`SCRAM-SHA-256$...`), or an
    /// md5 hash (`md5` + md5(password || user)).
    pub password: Option<String>,
    /// The password (in any of those forms) from a file, read again when it
    /// changes (a mounted Secret); relative to the config file.
    pub password_file: Option<PathBuf>,
    /// How the client proves the password. Defaults to SCRAM-SHA-256.
    pub auth: Option<AuthMethod>,
    /// No password; only accepted from loopback clients.
    #[serde(default)]
    pub trust: bool,
    /// May connect to the admin console (database `shardcar_admin`):
    /// read-only `SHOW` commands over the Postgres protocol.
    #[serde(default)]
    pub console: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    /// Backend connections per shard and role (primary, each replica).
    pub size: usize,
    /// How long a statement waits for a free backend connection.
    pub checkout_timeout_ms: u64,
    /// Idle backend connections older than this are closed.
    pub idle_timeout_s: u64,
    /// Time allowed to open and authenticate one backend connection.
    pub connect_timeout_ms: u64,
    /// How often every primary and replica is probed (`SELECT 1`).
    pub health_check_interval_ms: u64,
    /// Prepared statements kept per backend connection before the oldest are closed.
    pub max_prepared_per_connection: usize,
    /// A client's unnamed statement whose text the server connection's
    /// unnamed statement already holds is not parsed again (PgCat's cache
    /// does the same). Postgres then plans it as it plans a named one:
    /// after five runs it may keep a generic plan. Off: every unnamed Parse
    /// reaches the server, as it does without a pooler.
    pub reuse_unnamed_statements: bool,
    /// A client idle this long inside a transaction is disconnected (25P03)
    /// and its transaction rolled back, freeing the server connections it
    /// holds (PgBouncer's `idle_transaction_timeout`). 0: never.
    pub idle_transaction_timeout_ms: u64,
    /// Every client's default `statement_timeout` on the shards (57014 when
    /// a statement runs longer); a client may `SET statement_timeout` its
    /// own. 0: the servers' own default.
    pub query_timeout_ms: u64,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            size: 20,
            checkout_timeout_ms: 3000,
            idle_timeout_s: 300,
            connect_timeout_ms: 5000,
            health_check_interval_ms: 2000,
            max_prepared_per_connection: 1000,
            reuse_unnamed_statements: false,
            idle_transaction_timeout_ms: 0,
            query_timeout_ms: 0,
        }
    }
}

impl Pool {
    pub fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.checkout_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }
    pub fn health_check_interval(&self) -> Duration {
        Duration::from_millis(self.health_check_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub name: String,
    /// The server writes go to; libpq's multi-host form
    /// (`postgres://u@h1:5432,h2:5432/db`) lists several, and whichever of
    /// them is the primary (`pg_is_in_recovery()`) gets the writes.
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
    /// The password of the URLs' user, from a file read again when it
    /// changes (a mounted Secret); the URLs then carry none.
    pub password_file: Option<PathBuf>,
    /// Free-form labels plugins see in the topology (`region = "eu"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Data connections the whole fleet of sidecars may open to each of this
    /// shard's servers (primary, each replica); each sidecar's pool takes
    /// its part (`pool::budget`), never more than `pool.size`. Unset: every
    /// sidecar opens up to `pool.size`.
    pub max_server_connections: Option<usize>,
}

/// What statements that need a shard's primary do while it has none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Failover {
    /// How long such a statement waits for a primary to appear (a
    /// promotion, or the old one answering again) before it fails with
    /// 57P03. 0: it fails at once.
    pub buffer_ms: u64,
    /// Statements waiting per shard at most; more fail at once (57P03).
    pub max_buffered: usize,
}

impl Default for Failover {
    fn default() -> Self {
        // As vtgate's default buffer window: long enough for an operator's
        // or Patroni's promotion, short enough for a client's own timeout.
        Failover { buffer_ms: 10_000, max_buffered: 1000 }
    }
}

impl Failover {
    pub fn buffer(&self) -> Duration {
        Duration::from_millis(self.buffer_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    /// A built-in plugin name, or a path to a `.wasm` component.
    pub plugin: String,
    /// The plugin's own config, handed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Another plugin (or version, or config) routing the same statements
    /// beside the live one, its answers only compared.
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// A built-in plugin name, or a path to a `.wasm` component.
    pub plugin: String,
    /// Its config; the live plugin's when left out.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// The share of statements it also routes (0 to 1).
    #[serde(default = "default_shadow_sample")]
    pub sample: f64,
}

fn default_shadow_sample() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub name: String,
    /// The shard key column.
    pub key: String,
    pub policy: String,
    #[serde(default)]
    pub key_type: KeyType,
}

/// How key values are made canonical before a plugin sees them, so that
/// `42`, `'42'` and a bound 42 are one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// Integers as integers, text that reads as an integer too, UUIDs lowercased.
    #[default]
    Auto,
    Int,
    Text,
    Uuid,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub namespace: String,
    /// The shard whose primary holds the directory table.
    pub shard: String,
    /// Returns the shard name for `$1` (the key, as text) in its first column.
    pub query: String,
    /// Entries are re-read after this long, so edits show without a restart.
    #[serde(default = "default_directory_ttl")]
    pub cache_ttl_ms: u64,
}

fn default_directory_ttl() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plugins {
    /// CPU time one plugin call may take before it is interrupted.
    pub call_timeout_ms: u64,
    /// Memory one plugin instance may grow to.
    pub memory_limit_mb: u64,
    /// Compiled plugins are kept here, keyed by content, wasmtime version and settings.
    pub cache_dir: Option<PathBuf>,
    /// How often plugin files are checked for a new version.
    pub reload_interval_ms: u64,
    /// After a reload, the new version is on probation this long: if more
    /// than `rollback_failure_ratio` of its calls (at least
    /// `rollback_min_calls` of them) trap, time out or run out of memory,
    /// the previous version is swapped back. 0: no probation.
    pub probation_s: u64,
    pub rollback_failure_ratio: f64,
    pub rollback_min_calls: u64,
    /// Whether a new version that would look for existing rows on another
    /// shard than where they are may go live (`refuse` or `allow`); the
    /// admin API can allow one version at a time instead.
    pub moving_rows: MovingRows,
    /// Rows of each table read from each shard to find the keys a new
    /// version would move.
    pub move_check_rows: u64,
    /// Decisions each plugin version remembers, made from nothing but the
    /// table, the statement's kind and its keys (and the topology): the
    /// same statement for the same key is then routed without a call.
    /// 0: every statement calls the plugin.
    pub remembered_decisions: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MovingRows {
    Refuse,
    Allow,
}

impl Default for Plugins {
    fn default() -> Self {
        Plugins {
            call_timeout_ms: 10,
            memory_limit_mb: 64,
            cache_dir: None,
            reload_interval_ms: 1000,
            probation_s: 300,
            rollback_failure_ratio: 0.001,
            rollback_min_calls: 100,
            moving_rows: MovingRows::Refuse,
            move_check_rows: 100_000,
            remembered_decisions: 10_000,
        }
    }
}

/// Users not listed in `[[users]]`, looked up on a shard (PgBouncer's
/// `auth_query`), and logging in to the shards as themselves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Returns (user name, SCRAM verifier or md5 hash) for `$1`, the
    /// client's user: `SELECT usename, passwd FROM pg_shadow WHERE usename = $1`
    /// needs a superuser; a SECURITY DEFINER function does not.
    pub query: Option<String>,
    /// The shard whose primary answers it (default: `routing.default_shard`),
    /// over shardcar's own connection as its URL user.
    pub shard: Option<String>,
    /// How long an answer is used before the query runs again.
    pub cache_ttl_s: u64,
    /// Users found by the query open their own connections to the shards,
    /// proving themselves with what their login proved, so each user's
    /// grants apply. Otherwise their statements run as the shard URL's user.
    pub passthrough: bool,
    /// Server connections per shard server and passthrough user.
    pub user_pool_size: usize,
}

/// The fleet view: every sidecar's metrics, read back from the Prometheus
/// server that scrapes them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fleet {
    /// `http://host:port` of Prometheus's HTTP API. Unset: no fleet view.
    pub prometheus_url: Option<String>,
    /// Label matchers that pick this fleet's series out of everything the
    /// server scrapes, e.g. `job="shardcar"`. Empty: every `shardcar_*` series.
    pub selector: String,
}

impl Default for Auth {
    fn default() -> Self {
        Auth { query: None, shard: None, cache_ttl_s: 60, passthrough: false, user_pool_size: 4 }
    }
}

/// Hot keys, skew, and trace export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Show shard key values in hot-key reports; `false` shows a keyed hash
    /// instead, and the values are never kept.
    pub show_keys: bool,
    /// Keys each table's hot-key sketch tracks at once (a power of two);
    /// memory is bounded by it, whatever the number of distinct keys.
    pub hot_key_capacity: usize,
    /// Hot keys reported per table.
    pub top_keys: usize,
    /// Seconds the ranking of hot keys covers (counted in 5-second slices;
    /// a lifetime ranking is kept beside it).
    pub hot_key_window_s: u64,
    /// Seconds of load the skew figures and windowed rates cover.
    pub skew_window_s: u64,
    /// A busiest/mean ratio at or above this...
    pub hot_skew: f64,
    /// ...for this many consecutive seconds flags the busiest shard as hot.
    pub hot_after_s: u64,
    /// Below this many statements per second over the window, nothing is hot.
    pub hot_min_rate: f64,
    /// A shard is stalled when a session has waited this long for one of
    /// its connections, or a statement has run this long while none
    /// finished there in the last second.
    pub stall_after_ms: u64,
    pub traces: Traces,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            show_keys: true,
            hot_key_capacity: 1024,
            top_keys: 10,
            hot_key_window_s: 10,
            skew_window_s: 60,
            hot_skew: 1.5,
            hot_after_s: 30,
            hot_min_rate: 1.0,
            stall_after_ms: 1000,
            traces: Traces::default(),
        }
    }
}

/// OTLP trace export. Every field left out falls back to the standard
/// `OTEL_*` environment variable, then to the OpenTelemetry default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traces {
    /// Default: on when an endpoint is set here or in
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`).
    pub enabled: Option<bool>,
    /// `http://host:port` of the collector.
    pub endpoint: Option<String>,
    /// `grpc` (default) or `http/protobuf`.
    pub protocol: Option<String>,
    /// Default `OTEL_SERVICE_NAME`, else `shardcar`.
    pub service_name: Option<String>,
    /// Fraction of new traces kept; statements inside an application's trace
    /// follow its sampling flag. Default `OTEL_TRACES_SAMPLER(_ARG)`, else all.
    pub sample_ratio: Option<f64>,
    /// Spans waiting for export; more are dropped and counted
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048).
    pub queue_size: Option<usize>,
    /// Spans per export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512).
    pub batch_size: Option<usize>,
    /// Longest wait before a partial batch is sent (`OTEL_BSP_SCHEDULE_DELAY`, default 1000).
    pub export_interval_ms: Option<u64>,
    /// Time one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10000).
    pub export_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// Where statements without a routing decision go.
    pub default_shard: String,
    /// Plain reads outside a transaction may use a healthy replica.
    #[serde(default = "yes")]
    pub read_replicas: bool,
    /// A replica further behind its primary than this (WAL bytes not yet
    /// replayed, from the health probes' LSNs) gets no reads until it
    /// catches up; nor does one whose lag is not known. Unset: no limit.
    #[serde(default)]
    pub max_replica_lag_bytes: Option<u64>,
    /// The same in time: how old the last replayed transaction is while
    /// WAL is waiting to be replayed.
    #[serde(default)]
    pub max_replica_lag_ms: Option<u64>,
    /// UPDATE/DELETE without a shard key run on every shard their policy
    /// names (counts summed); off: they are refused.
    #[serde(default)]
    pub allow_broadcast_writes: bool,
    /// Tables with the same rows on every shard: reads run on any one shard
    /// (the default shard, or the transaction's), writes on every shard.
    #[serde(default)]
    pub reference_tables: Vec<String>,
    /// A transaction may touch several shards: it commits with PREPARE
    /// TRANSACTION / COMMIT PREPARED on all but one, whose own commit is the
    /// decision (stored in its `shardcar.decisions`). Off: a transaction
    /// stays on one shard (others are refused). The shards need
    /// `max_prepared_transactions` > 0.
    #[serde(default)]
    pub two_phase_commit: bool,
    /// No longer used (decisions are stored on the shards); accepted so that
    /// a config written for an older shardcar still starts, with a warning.
    #[serde(default)]
    pub decision_log: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// Where a plugin's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    Builtin(String),
    File(PathBuf),
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Builtin(name) => write!(f, "builtin:{name}"),
            PluginSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One thing wrong with a config, located by its field path (`shards[1].primary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A config that could not be used, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", format_problems(.0))]
pub struct Invalid(pub Vec<Problem>);

fn format_problems(problems: &[Problem]) -> String {
    problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")
}

/// Where one backend server is and how to log in to it, from a `postgres://` URL.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// From the URL, or from the shard's `password_file` (read again when
    /// it changes).
    pub password: Option<Arc<Watched<String>>>,
    pub dbname: String,
    /// The URL without its TLS parameters, for the control plane.
    pub control: tokio_postgres::Config,
    pub tls: crate::tls::shard::ShardTls,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        write!(f, "{}:{}/{} as {} ({:?})", self.host, self.port, self.dbname, self.user, self.tls)
    }
}

impl Endpoint {
    /// Parses a shard URL and reads the TLS files it names.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (url, tls_params) = crate::tls::shard::TlsParams::split_url(url)?;
        let cfg = tokio_postgres::Config::from_str(&url).map_err(|e| e.to_string())?;
        let host = match cfg.get_hosts() {
            [tokio_postgres::config::Host::Tcp(h)] => h.clone(),
            [] => return Err("no host in URL".into()),
            [_] => return Err("unix-socket hosts are not supported; use a TCP host".into()),
            _ => return Err("exactly one host per URL".into()),
        };
        let port = match cfg.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Err("exactly one port per URL".into()),
        };
        let user = cfg.get_user().ok_or("no user in URL (postgres://USER@host/db)")?.to_string();
        let password = cfg.get_password().map(|p| Arc::new(Watched::fixed(String::from_utf8_lossy(p).into_owned())));
        let dbname = cfg.get_dbname().unwrap_or(&user).to_string();
        let tls = crate::tls::shard::ShardTls::new(&host, &tls_params)?;
        Ok(Endpoint { host, port, user, password, dbname, control: cfg, tls })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Takes the password from `file` instead of the URL (which must have none).
    pub fn with_password_file(mut self, file: &Path) -> Result<Endpoint, String> {
        if self.password.is_some() {
            return Err("a password in the URL and a password_file: give one".into());
        }
        let watched = Watched::new(vec![file.to_path_buf()], |files| read_secret(&files[0], "password_file"))?;
        self.password = Some(Arc::new(watched));
        Ok(self)
    }

    /// The password as it is now.
    pub fn password(&self) -> Option<Arc<String>> {
        self.password.as_ref().map(|p| p.get())
    }
}

/// One server of a shard, as configured.
pub struct Server {
    pub endpoint: Endpoint,
    /// Listed under `primary` (else under `replicas`): until the first
    /// health probe says otherwise, the first of these takes the writes.
    pub configured_primary: bool,
    pub label: String,
}

/// `postgres://u@h1:5432,h2:5433/db?x=y` → one URL per host, each with the
/// rest of the URL (libpq's multi-host form); any other URL as it is.
fn split_hosts(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else { return vec![url.to_string()] };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return vec![url.to_string()];
    }
    hosts.split(',').map(|host| format!("{scheme}://{userinfo}{host}{tail}")).collect()
}

/// `${NAME}` → the variable's value; `$$` → `$`; a lone `$` stays.
fn expand_vars(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or("`${` without a closing `}`")?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{name}}}` is not an environment variable name"));
            }
            out.push_str(&lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Invalid> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Invalid(vec![Problem { path: path.display().to_string(), message: format!("cannot read: {e}") }])
        })?;
        let mut cfg = Config::parse_in(&text, path.parent().unwrap_or(Path::new(".")))?;
        cfg.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(cfg)
    }

    /// Parses and validates config text whose relative paths are relative
    /// to the current directory.
    pub fn parse(text: &str) -> Result<Config, Invalid> {
        Config::parse_in(text, Path::new("."))
    }

    /// Parses and validates config text. A structural error (syntax, unknown
    /// field, wrong type) stops parsing and is reported alone; semantic
    /// problems are all collected.
    pub fn parse_in(text: &str, base_dir: &Path) -> Result<Config, Invalid> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            Invalid(vec![Problem {
                path: "(toml)".into(),
                message: e.message().to_string() + &location(text, e.span()),
            }])
        })?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Invalid(vec![Problem {
                path: if path == "." { "(root)".into() } else { path },
                message: inner.message().to_string() + &location(text, inner.span()),
            }])
        })?;
        let mut cfg = cfg;
        cfg.base_dir = base_dir.to_path_buf();
        let mut problems = cfg.expand_env(|name| std::env::var(name).ok());
        problems.extend(cfg.problems());
        if problems.is_empty() { Ok(cfg) } else { Err(Invalid(problems)) }
    }

    /// Replaces `${NAME}` with the environment variable NAME in the fields
    /// that carry secrets (`users[].password`, `shards[].primary`,
    /// `shards[].replicas[]`, `listen.admin_token`), so the file itself can
    /// live in a ConfigMap and the secrets in a Secret. `$$` is a literal `$`.
    fn expand_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut expand = |path: String, value: &mut String| match expand_vars(value, &lookup) {
            Ok(v) => *value = v,
            Err(message) => problems.push(Problem { path, message }),
        };
        if let Some(token) = self.listen.admin_token.as_mut() {
            expand("listen.admin_token".into(), token);
        }
        for (i, u) in self.users.iter_mut().enumerate() {
            if let Some(p) = u.password.as_mut() {
                expand(format!("users[{i}].password"), p);
            }
        }
        for (i, s) in self.shards.iter_mut().enumerate() {
            expand(format!("shards[{i}].primary"), &mut s.primary);
            for (j, r) in s.replicas.iter_mut().enumerate() {
                expand(format!("shards[{i}].replicas[{j}]"), r);
            }
        }
        problems
    }

    /// Every semantic problem: names, references, addresses, limits.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: String, message: String| out.push(Problem { path, message });

        for (field, value) in [("listen.addr", &self.listen.addr), ("listen.admin", &self.listen.admin)] {
            if let Err(e) = value.parse::<SocketAddr>() {
                bad(field.into(), format!("`{value}` is not an IP:port address ({e})"));
            }
        }
        if self.listen.addr == self.listen.admin {
            bad("listen.admin".into(), "must differ from listen.addr".into());
        }
        for (name, value) in [
            ("max_client_connections", self.listen.max_client_connections),
            ("max_pending_logins", self.listen.max_pending_logins),
            ("login_timeout_ms", self.listen.login_timeout_ms as usize),
        ] {
            if value == 0 {
                bad(format!("listen.{name}"), "must be at least 1".into());
            }
        }
        if !(1 << 20..=MAX_MESSAGE_CEILING).contains(&self.listen.max_message_bytes) {
            bad(
                "listen.max_message_bytes".into(),
                format!("must be between 1 MiB and {MAX_MESSAGE_CEILING} (Postgres's limit)"),
            );
        }
        if self.listen.client_buffer_budget_bytes < self.listen.max_message_bytes {
            bad("listen.client_buffer_budget_bytes".into(), "must be at least listen.max_message_bytes".into());
        }
        if let Err(e) = self.client_tls() {
            bad("listen.tls_cert".into(), e);
        }
        if self.listen.max_prepared_bytes_per_client < 64 << 10 {
            bad("listen.max_prepared_bytes_per_client".into(), "must be at least 64 KiB".into());
        }

        if self.users.is_empty() && self.auth.query.is_none() {
            bad("users".into(), "at least one [[users]] entry (or auth.query) is needed to connect".into());
        }
        let mut names = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let at = format!("users[{i}]");
            if u.name.is_empty() {
                bad(format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(u.name.as_str()) {
                bad(format!("{at}.name"), format!("user `{}` is defined twice", u.name));
            }
            let given = [u.password.is_some(), u.password_file.is_some(), u.trust].iter().filter(|g| **g).count();
            if given != 1 {
                bad(at.clone(), "needs exactly one of `password`, `password_file` and `trust = true`".into());
            } else if u.trust && u.auth.is_some() {
                bad(format!("{at}.auth"), "a trust user has no password to check".into());
            } else if let Err(e) = u.secret(&self.base_dir) {
                let field = if u.password_file.is_some() { "password_file" } else { "password" };
                bad(format!("{at}.{field}"), e);
            }
        }

        if self.pool.size == 0 {
            bad("pool.size".into(), "must be at least 1".into());
        }
        if self.pool.checkout_timeout_ms == 0 {
            bad("pool.checkout_timeout_ms".into(), "must be at least 1".into());
        }
        if self.pool.connect_timeout_ms == 0 {
            bad("pool.connect_timeout_ms".into(), "must be at least 1".into());
        }
        if self.pool.health_check_interval_ms < 100 {
            bad("pool.health_check_interval_ms".into(), "must be at least 100".into());
        }
        if self.pool.max_prepared_per_connection == 0 {
            bad("pool.max_prepared_per_connection".into(), "must be at least 1".into());
        }

        if self.shards.is_empty() {
            bad("shards".into(), "at least one [[shards]] entry is needed".into());
        }
        let mut shard_names = HashSet::new();
        for (i, s) in self.shards.iter().enumerate() {
            let at = format!("shards[{i}]");
            if !valid_name(&s.name) {
                bad(format!("{at}.name"), format!("`{}` must be letters, digits, `_` or `-`", s.name));
            } else if !shard_names.insert(s.name.as_str()) {
                bad(format!("{at}.name"), format!("shard `{}` is defined twice", s.name));
            }
            if s.max_server_connections == Some(0) {
                bad(format!("{at}.max_server_connections"), "must be at least 1".into());
            }
            if let Err(e) = self.servers(s) {
                bad(e.0, e.1);
            }
        }
        self.routing_problems(&shard_names, &mut bad);
        if let Some(shard) = &self.auth.shard
            && !shard_names.contains(shard.as_str())
        {
            bad("auth.shard".into(), format!("`{shard}` is not a shard"));
        }
        if self.auth.passthrough && self.auth.query.is_none() {
            bad("auth.passthrough".into(), "passthrough is for users found by auth.query: set query".into());
        }
        if self.auth.user_pool_size == 0 {
            bad("auth.user_pool_size".into(), "must be at least 1".into());
        }
        if let Some(url) = &self.fleet.prometheus_url
            && crate::fleet::Endpoint::parse(url).is_err()
        {
            bad(
                "fleet.prometheus_url".into(),
                format!("`{url}` is not http://host:port (TLS to Prometheus is not supported)"),
            );
        }
        if self.fleet.selector.contains(['{', '}']) {
            bad("fleet.selector".into(), "label matchers without braces, e.g. job=\"shardcar\"".into());
        }
        self.telemetry_problems(&mut bad);
        if !self.shards.is_empty() && !shard_names.contains(self.routing.default_shard.as_str()) {
            bad(
                "routing.default_shard".into(),
                format!(
                    "`{}` is not a shard; known: {}",
                    self.routing.default_shard,
                    self.shards.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            );
        }
        out
    }

    fn routing_problems(&self, shard_names: &HashSet<&str>, bad: &mut impl FnMut(String, String)) {
        let mut policies = HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            let at = format!("policies[{i}]");
            if !valid_name(&p.name) {
                bad(format!("{at}.name"), format!("`{}` must be letters, digits, `_` or `-`", p.name));
            } else if !policies.insert(p.name.as_str()) {
                bad(format!("{at}.name"), format!("policy `{}` is defined twice", p.name));
            }
            if let Err(e) = self.plugin_source(&p.plugin) {
                bad(format!("{at}.plugin"), e);
            }
            if let Some(shadow) = &p.shadow {
                if let Err(e) = self.plugin_source(&shadow.plugin) {
                    bad(format!("{at}.shadow.plugin"), e);
                }
                if !(0.0..=1.0).contains(&shadow.sample) {
                    bad(format!("{at}.shadow.sample"), "must be between 0 and 1".into());
                }
            }
        }
        let mut tables = HashSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let at = format!("tables[{i}]");
            if !tables.insert(t.name.as_str()) {
                bad(format!("{at}.name"), format!("table `{}` is mapped twice", t.name));
            }
            if !policies.contains(t.policy.as_str()) {
                bad(format!("{at}.policy"), format!("`{}` is not a policy in [[policies]]", t.policy));
            }
            if t.key.is_empty() {
                bad(format!("{at}.key"), "must name the shard key column".into());
            }
        }
        for (i, name) in self.routing.reference_tables.iter().enumerate() {
            if tables.contains(name.as_str()) {
                bad(format!("routing.reference_tables[{i}]"), format!("`{name}` is also sharded in [[tables]]"));
            }
        }
        let mut namespaces = HashSet::new();
        for (i, d) in self.directories.iter().enumerate() {
            let at = format!("directories[{i}]");
            if !namespaces.insert(d.namespace.as_str()) {
                bad(format!("{at}.namespace"), format!("namespace `{}` is defined twice", d.namespace));
            }
            if !shard_names.contains(d.shard.as_str()) {
                bad(format!("{at}.shard"), format!("`{}` is not a shard", d.shard));
            }
            if !d.query.contains("$1") {
                bad(format!("{at}.query"), "must use $1 for the key".into());
            }
        }
        if self.plugins.call_timeout_ms == 0 {
            bad("plugins.call_timeout_ms".into(), "must be at least 1".into());
        }
        if self.plugins.memory_limit_mb == 0 {
            bad("plugins.memory_limit_mb".into(), "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.plugins.rollback_failure_ratio) {
            bad("plugins.rollback_failure_ratio".into(), "must be between 0 and 1".into());
        }
        if self.plugins.reload_interval_ms < 100 {
            bad("plugins.reload_interval_ms".into(), "must be at least 100".into());
        }
    }

    fn telemetry_problems(&self, bad: &mut impl FnMut(String, String)) {
        let t = &self.telemetry;
        if t.hot_key_capacity < 8 || !t.hot_key_capacity.is_power_of_two() {
            bad("telemetry.hot_key_capacity".into(), "must be a power of two, at least 8".into());
        }
        if !(5..=3600).contains(&t.hot_key_window_s) {
            bad("telemetry.hot_key_window_s".into(), "must be between 5 and 3600".into());
        }
        if t.top_keys == 0 || t.top_keys > t.hot_key_capacity {
            bad("telemetry.top_keys".into(), "must be between 1 and telemetry.hot_key_capacity".into());
        }
        if !(1..=900).contains(&t.skew_window_s) {
            bad("telemetry.skew_window_s".into(), "must be between 1 and 900 (the 15 minutes kept)".into());
        }
        if t.hot_skew.is_nan() || t.hot_skew < 1.0 {
            bad("telemetry.hot_skew".into(), "must be at least 1.0 (1.0 is perfectly even)".into());
        }
        if t.hot_min_rate.is_nan() || t.hot_min_rate < 0.0 {
            bad("telemetry.hot_min_rate".into(), "must not be negative".into());
        }
        if self.listen.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            bad("listen.admin_token".into(), "use at least 16 characters".into());
        }
        let tr = &t.traces;
        if let Some(e) = &tr.endpoint {
            if e.starts_with("https://") {
                bad(
                    "telemetry.traces.endpoint".into(),
                    "TLS to the collector is not supported yet; use http:// (a collector beside the pod)".into(),
                );
            } else if !e.starts_with("http://") {
                bad("telemetry.traces.endpoint".into(), format!("`{e}` is not an http://host:port URL"));
            }
        }
        if let Some(p) = &tr.protocol
            && p != "grpc"
            && p != "http/protobuf"
        {
            bad("telemetry.traces.protocol".into(), format!("`{p}` is not `grpc` or `http/protobuf`"));
        }
        if let Some(r) = tr.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            bad("telemetry.traces.sample_ratio".into(), "must be between 0.0 and 1.0".into());
        }
        for (field, value) in [("queue_size", tr.queue_size), ("batch_size", tr.batch_size)] {
            if value == Some(0) {
                bad(format!("telemetry.traces.{field}"), "must be at least 1".into());
            }
        }
        for (field, value) in
            [("export_interval_ms", tr.export_interval_ms), ("export_timeout_ms", tr.export_timeout_ms)]
        {
            if value == Some(0) {
                bad(format!("telemetry.traces.{field}"), "must be at least 1".into());
            }
        }
    }

    /// Where a policy's plugin comes from: a built-in name or a file.
    pub fn plugin_source(&self, plugin: &str) -> Result<PluginSource, String> {
        if crate::builtin::bytes(plugin).is_some() {
            return Ok(PluginSource::Builtin(plugin.to_string()));
        }
        if !plugin.ends_with(".wasm") {
            return Err(format!(
                "`{plugin}` is neither a built-in plugin ({}) nor a path to a .wasm file",
                crate::builtin::names().join(", ")
            ));
        }
        let path = self.base_dir.join(plugin);
        if !path.is_file() {
            return Err(format!("{} does not exist", path.display()));
        }
        Ok(PluginSource::File(path))
    }

    /// One of `shard`'s servers, with the shard's password file if it has one.
    pub fn endpoint(&self, shard: &Shard, url: &str) -> Result<Endpoint, String> {
        let endpoint = Endpoint::parse(url)?;
        match &shard.password_file {
            Some(file) => endpoint.with_password_file(&self.base_dir.join(file)),
            None => Ok(endpoint),
        }
    }

    /// Every server of `shard`, primary hosts first, each with the role it
    /// was configured in and its label ("s0 primary", "s0 primary 1", "s0
    /// replica 0"); on error, the field at fault and why.
    pub fn servers(&self, shard: &Shard) -> Result<Vec<Server>, (String, String)> {
        let at = |field: String| format!("shards[{}].{field}", self.shard_index(&shard.name).unwrap_or(0));
        let mut out = Vec::new();
        for (k, url) in split_hosts(&shard.primary).into_iter().enumerate() {
            let endpoint = self.endpoint(shard, &url).map_err(|e| (at("primary".into()), e))?;
            let label = if k == 0 { format!("{} primary", shard.name) } else { format!("{} primary {k}", shard.name) };
            out.push(Server { endpoint, configured_primary: true, label });
        }
        for (j, url) in shard.replicas.iter().enumerate() {
            let endpoint = self.endpoint(shard, url).map_err(|e| (at(format!("replicas[{j}]")), e))?;
            out.push(Server { endpoint, configured_primary: false, label: format!("{} replica {j}", shard.name) });
        }
        Ok(out)
    }

    /// Clients' TLS from `[listen]`, its files read; None when not configured.
    pub fn client_tls(&self) -> Result<Option<crate::tls::listener::Listener>, String> {
        match (&self.listen.tls_cert, &self.listen.tls_key) {
            (Some(cert), Some(key)) => {
                crate::tls::listener::Listener::load(self.base_dir.join(cert), self.base_dir.join(key)).map(Some)
            }
            (None, None) if self.listen.require_tls => Err("require_tls needs tls_cert and tls_key".into()),
            (None, None) => Ok(None),
            _ => Err("tls_cert and tls_key go together: give both or neither".into()),
        }
    }

    pub fn shard_index(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

impl User {
    pub fn method(&self) -> AuthMethod {
        self.auth.unwrap_or(AuthMethod::ScramSha256)
    }

    /// What this user's password is checked against (`Trust` without
    /// one); from `password_file`, prepared again when the file changes.
    pub fn secret(&self, base_dir: &Path) -> Result<Watched<Secret>, String> {
        let (name, method) = (self.name.clone(), self.method());
        match (&self.password, &self.password_file) {
            (Some(pw), _) => Secret::parse(&name, pw, method).map(Watched::fixed),
            (None, Some(file)) => Watched::new(vec![base_dir.join(file)], move |files| {
                Secret::parse(&name, &read_secret(&files[0], "password_file")?, method)
            }),
            (None, None) => Ok(Watched::fixed(Secret::Trust)),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// " (line L, column C)" for a byte span of the source text.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else { return String::new() };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {column})")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[users]]
        name = "app"
        password = "secret"
        [[shards]]
        name = "s0"
        primary = "postgres://postgres@127.0.0.1:5433/app"
        replicas = ["postgres://postgres@127.0.0.1:5434/app"]
        [[shards]]
        name = "s1"
        primary = "postgres://postgres@127.0.0.1:5435/app"
        [routing]
        default_shard = "s0"
    "#;

    #[test]
    fn a_multi_host_url_is_one_server_per_host() {
        assert_eq!(
            split_hosts("postgres://u:p@a:1,b:2,[::1]:3/db?sslmode=disable"),
            [
                "postgres://u:p@a:1/db?sslmode=disable",
                "postgres://u:p@b:2/db?sslmode=disable",
                "postgres://u:p@[::1]:3/db?sslmode=disable"
            ]
        );
        assert_eq!(split_hosts("postgres://u@a/db"), ["postgres://u@a/db"]);
        let cfg = Config::parse(&GOOD.replace("127.0.0.1:5433/app", "127.0.0.1:5433,127.0.0.1:5436/app")).unwrap();
        let labels: Vec<_> = cfg
            .servers(&cfg.shards[0])
            .unwrap()
            .into_iter()
            .map(|s| (s.label, s.endpoint.port, s.configured_primary))
            .collect();
        assert_eq!(
            labels,
            [
                ("s0 primary".into(), 5433, true),
                ("s0 primary 1".into(), 5436, true),
                ("s0 replica 0".into(), 5434, false)
            ]
        );
    }

    #[test]
    fn defaults_are_loopback_and_documented_values() {
        let cfg = Config::parse(GOOD).unwrap();
        assert_eq!(cfg.listen.addr, "127.0.0.1:6432");
        assert_eq!(cfg.listen.admin, "127.0.0.1:9930");
        assert_eq!(cfg.pool.size, 20);
        assert!(cfg.routing.read_replicas);
        assert_eq!(cfg.shards[0].replicas.len(), 1);
    }

    #[test]
    fn unknown_field_is_reported_with_its_path() {
        let text = GOOD.replace("[routing]", "[pool]\nsise = 3\n[routing]");
        let err = Config::parse(&text).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].path, "pool.sise");
        assert!(err.0[0].message.contains("unknown field"), "{}", err.0[0].message);
        assert!(err.0[0].message.contains("line"), "{}", err.0[0].message);
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let text = GOOD
            .replace("default_shard = \"s0\"", "default_shard = \"s9\"")
            .replace("127.0.0.1:5435", "[::1")
            .replace("password = \"secret\"", "password = \"secret\"\ntrust = true");
        let err = Config::parse(&text).unwrap_err();
        let paths: Vec<_> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["users[0]", "shards[1].primary", "routing.default_shard"], "{err}");
    }

    #[test]
    fn telemetry_settings_are_checked() {
        let text = format!(
            "{GOOD}\n[telemetry]\nhot_key_capacity = 100\nhot_skew = 0.5\n[telemetry.traces]\nendpoint = \"https://collector:4317\"\nprotocol = \"thrift\"\nsample_ratio = 2.0\n"
        );
        let err = Config::parse(&text).unwrap_err();
        let paths: Vec<_> = err.0.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "telemetry.hot_key_capacity",
                "telemetry.hot_skew",
                "telemetry.traces.endpoint",
                "telemetry.traces.protocol",
                "telemetry.traces.sample_ratio"
            ],
            "{err}"
        );
        let cfg = Config::parse(GOOD).unwrap();
        assert!(cfg.telemetry.show_keys && cfg.telemetry.traces.endpoint.is_none());
    }

    #[test]
    fn client_tls_needs_both_files_and_reads_them() {
        let with = |listen: &str| Config::parse(&format!("[listen]\n{listen}\n{GOOD}")).unwrap_err().to_string();
        assert!(with("tls_cert = \"c.pem\"").contains("go together"));
        assert!(with("require_tls = true").contains("require_tls needs tls_cert"));
        let missing = with("tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"");
        assert!(missing.contains("listen.tls_cert") && missing.contains("/nonexistent/c.pem"), "{missing}");
    }

    #[test]
    fn endpoint_needs_a_user_and_a_tcp_host() {
        assert!(Endpoint::parse("postgres://127.0.0.1:5432/app").unwrap_err().contains("no user"));
        let e = Endpoint::parse("postgres://u:pw@db.local/app").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.dbname.as_str()), ("db.local", 5432, "app"));
        assert!(!format!("{e:?}").contains("pw"));
    }

    #[test]
    fn secrets_come_from_the_environment() {
        let env = |name: &str| match name {
            "APP_PASSWORD" => Some("s3cret".to_string()),
            "S0_PASSWORD" => Some("pw".to_string()),
            _ => None,
        };
        assert_eq!(expand_vars("a$b$$c", env).unwrap(), "a$b$c");
        let text = GOOD
            .replace("password = \"secret\"", "password = \"${APP_PASSWORD}\"")
            .replace("postgres://postgres@", "postgres://postgres:${S0_PASSWORD}@");
        let mut cfg: Config = toml::from_str(&text).unwrap();
        assert!(cfg.expand_env(env).is_empty());
        assert_eq!(cfg.users[0].password.as_deref(), Some("s3cret"));
        assert!(cfg.shards[0].primary.contains("postgres:pw@"), "{}", cfg.shards[0].primary);

        let mut cfg: Config = toml::from_str(&text.replace("${S0_PASSWORD}", "${MISSING}")).unwrap();
        let problems = cfg.expand_env(env);
        assert_eq!(problems[0].path, "shards[0].primary");
        assert_eq!(problems[0].message, "environment variable MISSING is not set");
        let mut cfg: Config = toml::from_str(&text.replace("${S0_PASSWORD}", "${S0")).unwrap();
        assert!(cfg.expand_env(env)[0].message.contains("closing"));
    }
}
