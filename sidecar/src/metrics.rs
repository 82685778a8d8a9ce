//! The one metrics registry (Prometheus): `/metrics` renders it, and the
//! JSON API, the live stream and the dashboard read the same counters and
//! histograms back, so no figure is counted twice.
//!
//! The data path never looks a label set up: every server, plugin and
//! table gets its handles once, and a statement only bumps atomics.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Metric};
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Statement latency buckets, in seconds: 50 µs to about 70 s, each 1.5
/// times the last, so that a quantile read from them is within 50% of the
/// truth at any scale (1-2-5 steps were 2.5 apart: a 202 ms p99 read as 492 ms).
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.00005, 1.5, 36).expect("static bucket definition")
}
/// Plugin call buckets, in seconds: 1 µs to 10 ms.
const PLUGIN_LATENCY: &[f64] =
    &[0.000001, 0.000002, 0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01];

/// What a statement did, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindLabel {
    Read,
    Write,
    Transaction,
    Session,
    Other,
}

impl KindLabel {
    pub const ALL: [KindLabel; 5] =
        [KindLabel::Read, KindLabel::Write, KindLabel::Transaction, KindLabel::Session, KindLabel::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            KindLabel::Read => "read",
            KindLabel::Write => "write",
            KindLabel::Transaction => "transaction",
            KindLabel::Session => "session",
            KindLabel::Other => "other",
        }
    }
}

/// Handles for one server (a shard's primary or a replica).
/// One shard's failover: statements waiting for a primary, their waits,
/// and changes of primary.
pub struct ShardMetrics {
    pub buffered: IntGauge,
    pub wait: Histogram,
    pub failovers: IntCounter,
}

pub struct NodeMetrics {
    statements: Vec<IntCounter>,
    errors: Vec<IntCounter>,
    pub duration: Histogram,
    pub checkout_wait: Histogram,
    pub up: IntGauge,
    pub primary: IntGauge,
    /// Bytes and seconds behind the primary (0 on the primary).
    pub lag: (IntGauge, Gauge),
    pub pool_idle: IntGauge,
    pub pool_in_use: IntGauge,
    pub pool_max: IntGauge,
    /// The fleet's budget for the server, this sidecar's share of it, and
    /// the sidecars sharing it (`shards[].max_server_connections`).
    pub budget: (IntGauge, IntGauge, IntGauge),
    pub pool_waiting: IntGauge,
    pub pool_longest_wait: Gauge,
    pub running: IntGauge,
    pub oldest_running: Gauge,
    /// The slowest statement since the last [`NodeMetrics::take_slowest`], in µs.
    slowest_us: AtomicU64,
}

impl NodeMetrics {
    /// A statement took `seconds`, from its arrival to its last reply.
    pub fn observe_duration(&self, seconds: f64) {
        self.duration.observe(seconds);
        self.slowest_us.fetch_max((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// The slowest statement since the last call, in seconds (0 without any).
    pub fn take_slowest(&self) -> f64 {
        self.slowest_us.swap(0, Ordering::Relaxed) as f64 / 1e6
    }

    pub fn statements(&self, kind: KindLabel) -> &IntCounter {
        &self.statements[kind as usize]
    }

    pub fn errors(&self, kind: KindLabel) -> &IntCounter {
        &self.errors[kind as usize]
    }

    pub fn statements_total(&self) -> u64 {
        self.statements.iter().map(IntCounter::get).sum()
    }

    /// Reads and writes (the other kinds are neither).
    pub fn reads_writes(&self) -> (u64, u64) {
        (self.statements(KindLabel::Read).get(), self.statements(KindLabel::Write).get())
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.iter().map(IntCounter::get).sum()
    }
}

/// Handles for one plugin version serving one policy.
#[derive(Clone)]
pub struct PluginMetrics {
    pub calls: IntCounter,
    /// Statements routed by a remembered decision, without a call.
    pub remembered: IntCounter,
    /// Instances dropped for having grown past half their memory cap.
    pub retired: IntCounter,
    pub errors: IntCounter,
    pub duration: Histogram,
}

impl PluginMetrics {
    /// Handles counted nowhere, until the plugin has said who it is.
    pub fn detached() -> PluginMetrics {
        PluginMetrics {
            calls: counter("detached", "-"),
            remembered: counter("detached", "-"),
            retired: counter("detached", "-"),
            errors: counter("detached", "-"),
            duration: Histogram::with_opts(HistogramOpts::new("detached", "-")).expect("static metric definition"),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    statements: IntCounterVec,
    statement_errors: IntCounterVec,
    statement_duration: HistogramVec,
    rejected: IntCounterVec,
    client_errors: IntCounterVec,
    /// Users and applications named in `client_errors` (clients choose
    /// them: bounded, the rest are `other`).
    error_users: BoundedLabels,
    error_applications: BoundedLabels,
    checkout_wait: HistogramVec,
    pool_connections: IntGaugeVec,
    pool_max: IntGaugeVec,
    budget: [IntGaugeVec; 3],
    pool_waiting: IntGaugeVec,
    pool_longest_wait: GaugeVec,
    running: IntGaugeVec,
    oldest_running: GaugeVec,
    server_up: IntGaugeVec,
    server_primary: IntGaugeVec,
    failover_buffered: IntGaugeVec,
    failover_wait: HistogramVec,
    failovers: IntCounterVec,
    replica_lag_seconds: GaugeVec,
    replica_lag_bytes: IntGaugeVec,
    plugin_calls: IntCounterVec,
    plugin_remembered: IntCounterVec,
    plugin_retired: IntCounterVec,
    plugin_errors: IntCounterVec,
    plugin_duration: HistogramVec,
    table_statements: IntCounterVec,
    distributed: IntCounterVec,
    /// For the fleet view: what this sidecar runs, and its hottest keys.
    build_info: IntGaugeVec,
    plugin_info: GaugeVec,
    hot_keys: IntGaugeVec,
    /// The label sets last exported of each: replaced, never emptied, so a
    /// scrape that renders meanwhile sees all of them (a series missing
    /// from one scrape is stale to Prometheus).
    exported: Mutex<(LabelSets, LabelSets)>,
    pub skew_ratio: GaugeVec,
    pub hot: IntGaugeVec,
    pub parse_cache_hits: IntCounter,
    pub parse_cache_misses: IntCounter,
    pub parse_cache_entries: IntGauge,
    pub parse_cache_bytes: IntGauge,
    pub client_buffered_bytes: IntGauge,
    pub client_limit_hits: IntCounterVec,
    pub client_bytes_received: IntCounter,
    pub client_bytes_sent: IntCounter,
    pub clients_connected: IntGauge,
    pub clients_accepted: IntCounter,
    pub clients_refused: IntCounter,
    pub spans_exported: IntCounter,
    pub spans_dropped: IntCounter,
    pub spans_failed: IntCounter,
}

const SERVER: &[&str] = &["shard", "role", "server"];

/// Distinct users, and applications, named in metric labels.
const LABEL_VALUES: usize = 50;

/// Label values a client chooses, bounded: the first `max` distinct values
/// are kept, later ones are counted as `other`.
struct BoundedLabels {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl BoundedLabels {
    fn new(max: usize) -> BoundedLabels {
        BoundedLabels { max, seen: Mutex::default() }
    }

    fn label(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) || seen.len() < self.max && seen.insert(value.to_string()) {
            value.to_string()
        } else {
            "other".into()
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let labels = |extra: &[&'static str]| -> Vec<&'static str> { SERVER.iter().chain(extra).copied().collect() };
        Metrics {
            statements: register(
                &r,
                counter_vec("shardcar_statements_total", "Statements run on a server", &labels(&["kind"])),
            ),
            statement_errors: register(
                &r,
                counter_vec(
                    "shardcar_statement_errors_total",
                    "Statements a server answered with an error",
                    &labels(&["kind"]),
                ),
            ),
            statement_duration: register(
                &r,
                histogram_vec(
                    "shardcar_statement_duration_seconds",
                    "Time from a statement's arrival to its last reply",
                    SERVER,
                    &latency_buckets(),
                ),
            ),
            rejected: register(
                &r,
                counter_vec(
                    "shardcar_rejected_statements_total",
                    "Statements shardcar answered with an error itself (routing, pool, plugin)",
                    &["sqlstate"],
                ),
            ),
            client_errors: register(
                &r,
                counter_vec(
                    "shardcar_client_errors_total",
                    "Errors clients got, by the shard they concern (\"\": none or several), SQLSTATE, who raised them (server or shardcar), user and application_name",
                    &["shard", "sqlstate", "by", "user", "application"],
                ),
            ),
            error_users: BoundedLabels::new(LABEL_VALUES),
            error_applications: BoundedLabels::new(LABEL_VALUES),
            checkout_wait: register(
                &r,
                histogram_vec(
                    "shardcar_pool_checkout_wait_seconds",
                    "Time to get a server connection and bring it to the session's settings",
                    SERVER,
                    &latency_buckets(),
                ),
            ),
            pool_connections: register(
                &r,
                gauge_vec("shardcar_pool_connections", "Open server connections by state", &labels(&["state"])),
            ),
            pool_max: register(&r, gauge_vec("shardcar_pool_max_connections", "Pool size limit", SERVER)),
            budget: [
                ("shardcar_pool_budget_connections", "The fleet's connection budget for the server (0: none)"),
                ("shardcar_pool_budget_share_connections", "This sidecar's fair share of the budget"),
                ("shardcar_pool_budget_sidecars", "Sidecars sharing the budget"),
            ]
            .map(|(name, help)| register(&r, gauge_vec(name, help, SERVER))),
            pool_waiting: register(
                &r,
                gauge_vec("shardcar_pool_waiting_sessions", "Sessions waiting for a connection", SERVER),
            ),
            pool_longest_wait: register(
                &r,
                float_gauge_vec(
                    "shardcar_pool_longest_wait_seconds",
                    "How long the session waiting longest for a connection has waited (0: none waits)",
                    SERVER,
                ),
            ),
            running: register(
                &r,
                gauge_vec("shardcar_server_running_statements", "Statements running on the server now", SERVER),
            ),
            oldest_running: register(
                &r,
                float_gauge_vec(
                    "shardcar_server_oldest_running_seconds",
                    "Age of the oldest statement running on the server (0: none runs)",
                    SERVER,
                ),
            ),
            server_up: register(
                &r,
                gauge_vec("shardcar_server_up", "1 when the server answered its latest health probe", SERVER),
            ),
            server_primary: register(
                &r,
                gauge_vec(
                    "shardcar_server_primary",
                    "1 when the server takes its shard's writes now (`role` is the role it was configured in)",
                    SERVER,
                ),
            ),
            failover_buffered: register(
                &r,
                gauge_vec(
                    "shardcar_failover_buffered_statements",
                    "Statements waiting now for their shard to have a primary",
                    &["shard"],
                ),
            ),
            failover_wait: register(
                &r,
                histogram_vec(
                    "shardcar_failover_wait_seconds",
                    "How long statements waited for their shard to have a primary (those that waited)",
                    &["shard"],
                    &latency_buckets(),
                ),
            ),
            failovers: register(
                &r,
                counter_vec(
                    "shardcar_failovers_total",
                    "Changes of the server taking a shard's writes (to another, or to none)",
                    &["shard"],
                ),
            ),
            replica_lag_seconds: register(
                &r,
                float_gauge_vec(
                    "shardcar_replica_lag_seconds",
                    "Age of the last replayed transaction while WAL is pending",
                    SERVER,
                ),
            ),
            replica_lag_bytes: register(
                &r,
                gauge_vec("shardcar_replica_lag_bytes", "WAL the replica has not replayed yet", SERVER),
            ),
            plugin_calls: register(
                &r,
                counter_vec("shardcar_plugin_calls_total", "Routing plugin calls", &["policy", "plugin", "version"]),
            ),
            plugin_remembered: register(
                &r,
                counter_vec(
                    "shardcar_plugin_remembered_total",
                    "Statements routed by a decision the plugin made before for the same table, kind and keys (no call)",
                    &["policy", "plugin", "version"],
                ),
            ),
            plugin_retired: register(
                &r,
                counter_vec(
                    "shardcar_plugin_instances_retired_total",
                    "Plugin instances dropped after a call for having grown past half of plugins.memory_limit_mb (replaced on demand)",
                    &["policy", "plugin", "version"],
                ),
            ),
            build_info: register(
                &r,
                gauge_vec("shardcar_build_info", "1, labelled with shardcar's version", &["version"]),
            ),
            plugin_info: register(
                &r,
                float_gauge_vec(
                    "shardcar_plugin_info",
                    "The plugin version serving each policy; the value is when it was loaded (Unix seconds)",
                    &["policy", "plugin"],
                ),
            ),
            hot_keys: register(
                &r,
                gauge_vec(
                    "shardcar_hot_key_statements",
                    "Statements since start for each table's hottest keys (telemetry.top_keys per table; only with telemetry.show_keys)",
                    &["table", "key", "shard"],
                ),
            ),
            exported: Mutex::default(),
            plugin_errors: register(
                &r,
                counter_vec(
                    "shardcar_plugin_errors_total",
                    "Routing plugin calls that trapped, timed out or refused",
                    &["policy", "plugin", "version"],
                ),
            ),
            plugin_duration: register(
                &r,
                histogram_vec(
                    "shardcar_plugin_call_duration_seconds",
                    "Time in one routing plugin call",
                    &["policy", "plugin", "version"],
                    PLUGIN_LATENCY,
                ),
            ),
            table_statements: register(
                &r,
                counter_vec(
                    "shardcar_table_statements_total",
                    "Statements routed by a sharded table's policy, by shard",
                    &["table", "shard"],
                ),
            ),
            distributed: register(
                &r,
                counter_vec(
                    "shardcar_distributed_transactions_total",
                    "Transactions across shards by how they ended (committed, rolled_back, failed, recovered_commit, recovered_rollback)",
                    &["outcome"],
                ),
            ),
            skew_ratio: register(
                &r,
                float_gauge_vec(
                    "shardcar_skew_ratio",
                    "Busiest shard's statements over the mean of all shards (table=\"\": all statements)",
                    &["table"],
                ),
            ),
            hot: register(
                &r,
                gauge_vec(
                    "shardcar_hot_shard",
                    "1 while the shard's share stays over telemetry.hot_skew (table=\"\": all statements)",
                    &["table", "shard"],
                ),
            ),
            parse_cache_hits: register(
                &r,
                counter("shardcar_parse_cache_hits_total", "SQL texts found in the parse cache"),
            ),
            parse_cache_misses: register(
                &r,
                counter("shardcar_parse_cache_misses_total", "SQL texts parsed because they were not cached"),
            ),
            parse_cache_entries: register(&r, gauge("shardcar_parse_cache_entries", "SQL texts in the parse cache")),
            parse_cache_bytes: register(
                &r,
                gauge("shardcar_parse_cache_bytes", "Estimated bytes the parse cache holds (bounded by its budget)"),
            ),
            client_buffered_bytes: register(
                &r,
                gauge("shardcar_client_buffered_bytes", "Bytes reserved for clients' large messages being received"),
            ),
            client_limit_hits: register(
                &r,
                counter_vec(
                    "shardcar_client_limit_hits_total",
                    "Clients turned away or cut off by a limit (client_slots, pending_logins, login_timeout, message_size, buffer_budget, prepared_bytes)",
                    &["limit"],
                ),
            ),
            client_bytes_received: register(
                &r,
                counter("shardcar_client_received_bytes_total", "Bytes read from clients"),
            ),
            client_bytes_sent: register(&r, counter("shardcar_client_sent_bytes_total", "Bytes written to clients")),
            clients_connected: register(&r, gauge("shardcar_client_connections", "Client connections open now")),
            clients_accepted: register(&r, counter("shardcar_client_connections_total", "Client connections accepted")),
            clients_refused: register(
                &r,
                counter(
                    "shardcar_client_connections_refused_total",
                    "Client connections refused at startup (limit, login, protocol)",
                ),
            ),
            spans_exported: register(&r, counter("shardcar_otlp_exported_spans_total", "Spans the collector accepted")),
            spans_dropped: register(
                &r,
                counter("shardcar_otlp_dropped_spans_total", "Spans dropped because the export queue was full"),
            ),
            spans_failed: register(&r, counter("shardcar_otlp_failed_spans_total", "Spans in exports that failed")),
            registry: r,
        }
    }

    /// Handles for one server.
    pub fn node(&self, shard: &str, role: &str, server: &str) -> NodeMetrics {
        let at = [shard, role, server];
        let per_kind = |vec: &IntCounterVec| {
            KindLabel::ALL.iter().map(|k| vec.with_label_values(&[shard, role, server, k.as_str()])).collect()
        };
        let state = |s: &str| self.pool_connections.with_label_values(&[shard, role, server, s]);
        NodeMetrics {
            statements: per_kind(&self.statements),
            errors: per_kind(&self.statement_errors),
            duration: self.statement_duration.with_label_values(&at),
            checkout_wait: self.checkout_wait.with_label_values(&at),
            up: self.server_up.with_label_values(&at),
            primary: self.server_primary.with_label_values(&at),
            lag: (self.replica_lag_bytes.with_label_values(&at), self.replica_lag_seconds.with_label_values(&at)),
            pool_idle: state("idle"),
            pool_in_use: state("in_use"),
            pool_max: self.pool_max.with_label_values(&at),
            budget: (
                self.budget[0].with_label_values(&at),
                self.budget[1].with_label_values(&at),
                self.budget[2].with_label_values(&at),
            ),
            pool_waiting: self.pool_waiting.with_label_values(&at),
            pool_longest_wait: self.pool_longest_wait.with_label_values(&at),
            running: self.running.with_label_values(&at),
            oldest_running: self.oldest_running.with_label_values(&at),
            slowest_us: AtomicU64::new(0),
        }
    }

    /// Handles for one shard's failover.
    pub fn shard(&self, shard: &str) -> ShardMetrics {
        ShardMetrics {
            buffered: self.failover_buffered.with_label_values(&[shard]),
            wait: self.failover_wait.with_label_values(&[shard]),
            failovers: self.failovers.with_label_values(&[shard]),
        }
    }

    /// Handles for one plugin version of one policy.
    pub fn plugin(&self, policy: &str, plugin: &str, version: &str) -> PluginMetrics {
        let at = [policy, plugin, version];
        PluginMetrics {
            calls: self.plugin_calls.with_label_values(&at),
            remembered: self.plugin_remembered.with_label_values(&at),
            retired: self.plugin_retired.with_label_values(&at),
            errors: self.plugin_errors.with_label_values(&at),
            duration: self.plugin_duration.with_label_values(&at),
        }
    }

    /// Statements of `table` routed to each shard, in shard order.
    pub fn table(&self, table: &str, shards: &[String]) -> Vec<IntCounter> {
        shards.iter().map(|s| self.table_statements.with_label_values(&[table, s])).collect()
    }

    /// Counts a statement shardcar refused itself.
    pub fn distributed(&self, outcome: &str) {
        self.distributed.with_label_values(&[outcome]).inc();
    }

    /// Counts an error a client got (`by`: `server` or `shardcar`).
    pub fn client_error(&self, shard: &str, sqlstate: &str, by: &str, user: &str, application: &str) {
        let user = self.error_users.label(user);
        let application = self.error_applications.label(application);
        self.client_errors.with_label_values(&[shard, sqlstate, by, &user, &application]).inc();
    }

    /// Every `shardcar_client_errors_total` series: its labels (shard,
    /// sqlstate, by, user, application) and count.
    pub fn client_errors(&self) -> Vec<([String; 5], u64)> {
        self.client_errors
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| {
                let mut labels: [String; 5] = Default::default();
                for pair in m.get_label() {
                    let at = ["shard", "sqlstate", "by", "user", "application"].iter().position(|n| *n == pair.name());
                    if let Some(i) = at {
                        labels[i] = pair.value().to_string();
                    }
                }
                (labels, m.get_counter().get_value() as u64)
            })
            .collect()
    }

    pub fn rejected(&self, sqlstate: &str) {
        self.rejected.with_label_values(&[sqlstate]).inc();
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
    }

    /// The plugin serving each policy: `(policy, "name@version (digest)", loaded at)`.
    pub fn set_plugins<'a>(&self, plugins: impl IntoIterator<Item = (&'a str, String, f64)>) {
        self.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        let series = plugins.into_iter().map(|(policy, plugin, loaded_s)| (vec![policy.to_string(), plugin], loaded_s));
        exported.0 = replace_series(&self.plugin_info, &exported.0, series);
    }

    /// Each table's hottest keys now: `(table, key, shard, statements)`;
    /// keys that left the top lists leave the metric.
    pub fn set_hot_keys(&self, keys: impl IntoIterator<Item = (String, String, String, u64)>) {
        let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        let series = keys.into_iter().map(|(table, key, shard, n)| (vec![table, key, shard], n as i64));
        exported.1 = replace_series(&self.hot_keys, &exported.1, series);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The label values of a metric vector's series.
type LabelSets = HashSet<Vec<String>>;

/// Sets `series` on `vec`, then removes the label sets of `before` that
/// are not among them; returns the label sets now exported.
fn replace_series<P: prometheus::core::Atomic>(
    vec: &prometheus::core::GenericGaugeVec<P>,
    before: &LabelSets,
    series: impl Iterator<Item = (Vec<String>, P::T)>,
) -> LabelSets {
    let mut now = HashSet::new();
    for (labels, value) in series {
        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        vec.with_label_values(&refs).set(value);
        now.insert(labels);
    }
    for gone in before.difference(&now) {
        let refs: Vec<&str> = gone.iter().map(String::as_str).collect();
        let _ = vec.remove_label_values(&refs);
    }
    now
}

/// A histogram's cumulative bucket counts (upper bound, count), ending with +Inf.
pub fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let m = h.metric();
    let hist = m.get_histogram();
    let mut out: Vec<(f64, u64)> = hist.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
    out.push((f64::INFINITY, hist.get_sample_count()));
    out
}

/// The `q` quantile of the observations between two bucket snapshots
/// (`before` may be empty: since start), interpolated inside the bucket as
/// Prometheus's `histogram_quantile` does; `None` without observations.
pub fn quantile(now: &[(f64, u64)], before: &[(f64, u64)], q: f64) -> Option<f64> {
    let count = |i: usize| now[i].1 - before.get(i).map_or(0, |b| b.1.min(now[i].1));
    let total = count(now.len().checked_sub(1)?);
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for (i, &(upper, _)) in now.iter().enumerate() {
        let at = count(i);
        if at as f64 >= rank {
            if upper.is_infinite() {
                // Above the last bound: the best estimate is that bound.
                return Some(lower);
            }
            let inside = (at - below) as f64;
            let fraction = if inside > 0.0 { (rank - below as f64) / inside } else { 1.0 };
            return Some(lower + (upper - lower) * fraction.clamp(0.0, 1.0));
        }
        lower = upper;
        below = at;
    }
    Some(lower)
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("static metric definition")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("static metric definition")
}

fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
        .expect("static metric definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_clients_choose_are_bounded() {
        let labels = BoundedLabels::new(2);
        assert_eq!(labels.label("a"), "a");
        assert_eq!(labels.label("b"), "b");
        assert_eq!(labels.label("c"), "other", "a third value has no label of its own");
        assert_eq!(labels.label("a"), "a", "values seen keep theirs");
    }

    #[test]
    fn errors_clients_got_are_counted_by_who_got_them() {
        let m = Metrics::new();
        m.client_error("s1", "08001", "shardcar", "app", "web");
        m.client_error("s1", "08001", "shardcar", "app", "web");
        let labels = ["s1", "08001", "shardcar", "app", "web"].map(String::from);
        assert_eq!(m.client_errors(), vec![(labels, 2)]);
    }

    #[test]
    fn quantiles_come_from_bucket_differences() {
        let m = Metrics::new();
        let node = m.node("s0", "primary", "127.0.0.1:1");
        for _ in 0..90 {
            node.duration.observe(0.0003);
        }
        let before = buckets(&node.duration);
        for _ in 0..99 {
            node.duration.observe(0.004);
        }
        node.duration.observe(0.8);
        let now = buckets(&node.duration);
        let p50 = quantile(&now, &before, 0.5).unwrap();
        assert!((0.002..=0.005).contains(&p50), "{p50}");
        let p999 = quantile(&now, &before, 0.999).unwrap();
        assert!((0.5..=1.0).contains(&p999), "{p999}");
        assert_eq!(quantile(&now, &now, 0.5), None);
    }

    #[test]
    fn exposition_has_conventional_names_and_labels() {
        let m = Metrics::new();
        let node = m.node("s0", "replica", "127.0.0.1:5433");
        node.statements(KindLabel::Read).inc();
        m.rejected("0A000");
        let text = m.render();
        assert!(
            text.contains(
                r#"shardcar_statements_total{kind="read",role="replica",server="127.0.0.1:5433",shard="s0"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE shardcar_statement_duration_seconds histogram"), "{text}");
        assert_eq!(m.rejected_total(), 1);
    }
}
