//! Where load concentrates: per-shard time series, per-table hot keys, and
//! skew with a hot flag.
//!
//! Hot keys are counted per table over a sliding window and since start
//! ([`KeyCounts`]): memory is bounded by `telemetry.hot_key_capacity`
//! whatever the number of distinct keys, and every reported count comes
//! with its error bounds.
//!
//! Once a second, [`Hotspots::tick`] samples the metrics registry (statement
//! counters and latency histograms of every server, per-table counters):
//! differences between samples give each shard's point for that second,
//! and between the newest and the oldest sample the windowed rates,
//! latency quantiles and skew. Nothing here counts statements itself.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use shardcar_api as api;
use tokio::sync::watch;

use super::key_counts::{Counted, KeyCounts};
use crate::config::Config;
use crate::metrics::{Metrics, buckets, quantile};
use crate::policy::plugin::Value;
use crate::policy::{StatementRoute, Via};
use crate::pool::{Node, Pools, in_flight};
use crate::topology::ShardId;

/// Seconds of per-shard history kept: an hour.
pub const SERIES_SECONDS: usize = 3600;

/// A key as the sketch keeps it: the value, or only its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Null,
    Int(i64),
    Text(Box<str>),
    Hashed(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Item {
    key: Key,
    shard: u32,
}

struct Table {
    name: String,
    key_column: String,
    policy: String,
    /// Statements routed to each shard (registry counters).
    per_shard: Vec<IntCounter>,
    keys: KeyCounts<Item>,
}

/// The raw counters of one second.
#[derive(Clone)]
struct Sample {
    t: u64,
    /// Per server, in `Pools::nodes` order.
    nodes: Vec<NodeSample>,
    /// Per table, per shard.
    tables: Vec<Vec<u64>>,
    /// `shardcar_client_errors_total`: labels and count.
    errors: Vec<([String; 5], u64)>,
}

#[derive(Clone)]
struct NodeSample {
    shard: usize,
    statements: u64,
    reads: u64,
    writes: u64,
    errors: u64,
    duration: Vec<(f64, u64)>,
    duration_sum: f64,
    /// The slowest statement that finished since the previous sample, in seconds.
    slowest: f64,
    checkout: Vec<(f64, u64)>,
}

/// Whether a skew figure has stayed over the threshold long enough.
#[derive(Default, Clone)]
struct HotState {
    seconds_over: u64,
}

/// What the last tick computed, for the API.
#[derive(Clone)]
pub struct View {
    pub series: Vec<VecDeque<api::Point>>,
    pub shard_loads: Vec<api::Load>,
    pub load: api::Load,
    pub skew: api::Skew,
    pub table_skews: Vec<api::Skew>,
    /// Checkout wait p99 per server over the window, in `Pools::nodes` order.
    pub checkout_p99_ms: Vec<Option<f64>>,
    /// Errors clients got over the window, most first.
    pub errors: Vec<api::ClientErrors>,
    /// Per shard: errors shardcar raised about it, per second over the window.
    pub refused_per_s: Vec<f64>,
    /// Per shard: what runs and waits on its servers now.
    pub in_flight: Vec<api::InFlight>,
    /// Per shard: clients told the pool had no free connection (53300) in
    /// the last second.
    pub pool_full: Vec<u64>,
}

pub struct Hotspots {
    shard_names: Vec<String>,
    tables: Vec<Table>,
    by_name: foldhash::HashMap<String, usize>,
    show_keys: bool,
    top_keys: usize,
    hot_key_window_s: u64,
    /// Unix seconds at the last tick: the slice hot keys are counted in,
    /// without a clock read per statement.
    now_s: AtomicU64,
    window_s: u64,
    hot_skew: f64,
    hot_after_s: u64,
    hot_min_rate: f64,
    stall_after: Duration,
    hasher: RandomState,
    history: Mutex<History>,
    view: Mutex<View>,
    /// Bumped after every tick: the live stream sends a snapshot then.
    pub ticks: watch::Sender<u64>,
}

#[derive(Default)]
struct History {
    samples: VecDeque<Sample>,
    series: Vec<VecDeque<api::Point>>,
    overall: HotState,
    tables: Vec<HotState>,
    /// Per shard: the last second it was down or stalled.
    impaired_at: Vec<Option<u64>>,
}

impl Hotspots {
    pub fn new(cfg: &Config, metrics: &Metrics) -> Hotspots {
        let t = &cfg.telemetry;
        let shard_names: Vec<String> = cfg.shards.iter().map(|s| s.name.clone()).collect();
        let tables: Vec<Table> = cfg
            .tables
            .iter()
            .map(|table| Table {
                name: table.name.clone(),
                key_column: table.key.clone(),
                policy: table.policy.clone(),
                per_shard: metrics.table(&table.name, &shard_names),
                keys: KeyCounts::new(t.hot_key_capacity, t.hot_key_window_s),
            })
            .collect();
        let by_name = tables.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let history = History {
            series: vec![VecDeque::new(); shard_names.len()],
            tables: vec![HotState::default(); tables.len()],
            ..History::default()
        };
        let mut hotspots = Hotspots {
            view: Mutex::new(View {
                series: vec![VecDeque::new(); shard_names.len()],
                shard_loads: vec![api::Load::default(); shard_names.len()],
                load: api::Load::default(),
                skew: api::Skew {
                    ratio: 1.0,
                    busiest: None,
                    excluded: Vec::new(),
                    hot: false,
                    threshold: t.hot_skew,
                    window_s: 0,
                    hot_after_s: t.hot_after_s,
                    shards: Vec::new(),
                },
                table_skews: Vec::new(),
                checkout_p99_ms: Vec::new(),
                errors: Vec::new(),
                refused_per_s: Vec::new(),
                in_flight: Vec::new(),
                pool_full: Vec::new(),
            }),
            shard_names,
            tables,
            by_name,
            show_keys: t.show_keys,
            top_keys: t.top_keys,
            hot_key_window_s: t.hot_key_window_s,
            now_s: AtomicU64::new(unix_s()),
            window_s: t.skew_window_s,
            hot_skew: t.hot_skew,
            hot_after_s: t.hot_after_s,
            hot_min_rate: t.hot_min_rate,
            stall_after: Duration::from_millis(t.stall_after_ms),
            hasher: RandomState::new(),
            history: Mutex::new(history),
            ticks: watch::channel(0).0,
        };
        // Until the first tick: nothing ran anywhere.
        let idle = hotspots.skew(&vec![0; hotspots.shard_names.len()], &[], 0, false);
        let tables = vec![idle.clone(); hotspots.tables.len()];
        if let Ok(v) = hotspots.view.get_mut() {
            v.skew = idle;
            v.table_skews = tables;
        }
        hotspots
    }

    /// Counts the keys a statement was routed by.
    pub fn record(&self, routes: &[StatementRoute]) {
        for route in routes {
            if let Via::Rows(rows) = &route.via {
                self.record(rows);
                continue;
            }
            let (Via::Policy { rule, keys, .. }, [shard]) = (&route.via, route.shards.as_slice()) else { continue };
            let Some(table) = self.by_name.get(&rule.table).map(|&i| &self.tables[i]) else { continue };
            if let Some(c) = table.per_shard.get(shard.index()) {
                c.inc();
            }
            let items = keys.iter().map(|key| Item { key: self.key(key), shard: shard.index() as u32 });
            table.keys.record(items, self.now_s.load(Ordering::Relaxed));
        }
    }

    fn key(&self, value: &Value) -> Key {
        match value {
            Value::Null => Key::Null,
            v if !self.show_keys => Key::Hashed(self.hasher.hash_one(display(v))),
            Value::Int(i) => Key::Int(*i),
            Value::Text(t) => Key::Text(t.as_str().into()),
        }
    }

    pub fn shard_name(&self, shard: ShardId) -> &str {
        self.shard_names.get(shard.index()).map_or("", String::as_str)
    }

    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.iter().map(|t| t.name.as_str())
    }

    /// The hottest keys of `table` over the window and since start (top
    /// `limit`, default `telemetry.top_keys`).
    pub fn hot_keys(&self, table: &str, limit: Option<usize>) -> Option<api::HotKeys> {
        let index = *self.by_name.get(table)?;
        let t = &self.tables[index];
        let limit = limit.unwrap_or(self.top_keys);
        let window = t.keys.window(self.now_s.load(Ordering::Relaxed));
        let lifetime = t.keys.lifetime();
        let skew = self.view().table_skews.get(index).cloned().unwrap_or_else(|| self.skew(&[], &[], 0, false));
        Some(api::HotKeys {
            table: t.name.clone(),
            key_column: t.key_column.clone(),
            policy: t.policy.clone(),
            show_keys: self.show_keys,
            window: self.ranking(Some(self.hot_key_window_s), window, limit),
            lifetime: self.ranking(None, lifetime, limit),
            skew,
        })
    }

    /// Each table's hottest keys as clients sent them (none when keys are
    /// kept only as hashes, `telemetry.show_keys = false`).
    pub fn recent_keys(&self, limit: usize) -> HashMap<String, Vec<String>> {
        if !self.show_keys {
            return HashMap::new();
        }
        let now = self.now_s.load(Ordering::Relaxed);
        self.tables
            .iter()
            .map(|t| {
                let (window, lifetime) = (t.keys.window(now), t.keys.lifetime());
                let mut keys: Vec<String> = Vec::new();
                for row in window.rows.into_iter().chain(lifetime.rows).take(2 * limit) {
                    let key = match &row.item.key {
                        Key::Int(i) => i.to_string(),
                        Key::Text(s) => s.to_string(),
                        Key::Null | Key::Hashed(_) => continue,
                    };
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                (t.name.clone(), keys)
            })
            .collect()
    }

    fn ranking(&self, seconds: Option<u64>, counted: Counted<Item>, limit: usize) -> api::KeyRanking {
        let keys = counted
            .rows
            .into_iter()
            .take(limit)
            .map(|row| api::HotKey {
                key: match &row.item.key {
                    Key::Null => "NULL".into(),
                    Key::Int(i) => i.to_string(),
                    Key::Text(s) => s.to_string(),
                    Key::Hashed(h) => format!("#{h:016x}"),
                },
                shard: self.shard_names.get(row.item.shard as usize).cloned().unwrap_or_default(),
                count: row.estimate,
                lower_bound: row.lower_bound,
                upper_bound: row.upper_bound,
            })
            .collect();
        api::KeyRanking { seconds, statements: counted.total, max_error: counted.max_error, keys }
    }

    pub fn view(&self) -> View {
        match self.view.lock() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Samples the registry and recomputes series, rates and skew.
    pub fn tick(&self, pools: &Pools, metrics: &Metrics) {
        let t = unix_s();
        self.now_s.store(t, Ordering::Relaxed);
        let sample = Sample {
            t,
            nodes: pools
                .nodes()
                .map(|n| {
                    let (reads, writes) = n.metrics.reads_writes();
                    NodeSample {
                        shard: n.shard.index(),
                        statements: n.metrics.statements_total(),
                        reads,
                        writes,
                        errors: n.metrics.errors_total(),
                        duration: buckets(&n.metrics.duration),
                        duration_sum: n.metrics.duration.get_sample_sum(),
                        slowest: n.metrics.take_slowest(),
                        checkout: buckets(&n.metrics.checkout_wait),
                    }
                })
                .collect(),
            tables: self.tables.iter().map(|t| t.per_shard.iter().map(IntCounter::get).collect()).collect(),
            errors: metrics.client_errors(),
        };
        let Ok(mut h) = self.history.lock() else { return };
        let previous = h.samples.back().cloned();
        h.samples.push_back(sample);
        while h.samples.len() > self.window_s as usize + 1 {
            h.samples.pop_front();
        }
        let (Some(newest), Some(oldest)) = (h.samples.back().cloned(), h.samples.front().cloned()) else { return };

        // This second's point, per shard.
        if let Some(previous) = &previous {
            for shard in 0..self.shard_names.len() {
                let point = point(shard, &newest, previous);
                let series = &mut h.series[shard];
                series.push_back(point);
                while series.len() > SERIES_SECONDS {
                    series.pop_front();
                }
            }
        }

        // The window: rates, quantiles, skew.
        let seconds = newest.t.saturating_sub(oldest.t).max(1);
        let shards = self.shard_names.len();
        let shard_loads: Vec<api::Load> = (0..shards).map(|s| load(&h.samples, seconds, |n| n.shard == s)).collect();
        let overall_load = load(&h.samples, seconds, |_| true);
        let per_shard: Vec<u64> = (0..shards)
            .map(|s| {
                let count = |x: &Sample| x.nodes.iter().filter(|n| n.shard == s).map(|n| n.statements).sum::<u64>();
                count(&newest).saturating_sub(count(&oldest))
            })
            .collect();
        let in_flight: Vec<api::InFlight> = pools
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let finished = h.series.get(i).and_then(|p| p.back()).map_or(0, |p| p.statements);
                in_flight(s.servers.iter(), finished, self.stall_after)
            })
            .collect();
        // A shard down or stalled in the window carries less than its
        // share for that reason alone: skew is measured among the others,
        // so that an outage or a stall elsewhere does not make a shard hot.
        h.impaired_at.resize(shards, None);
        for (i, s) in pools.shards.iter().enumerate() {
            if s.current_primary().is_none_or(|p| !p.health.is_up()) || in_flight[i].stalled {
                h.impaired_at[i] = Some(t);
            }
        }
        let window_s = self.window_s;
        let impaired: Vec<bool> =
            h.impaired_at.iter().map(|at| at.is_some_and(|at| t.saturating_sub(at) <= window_s)).collect();
        let overall_hot = self.hot(&mut h.overall, &per_shard, &impaired, seconds);
        let skew = self.skew(&per_shard, &impaired, seconds, overall_hot);
        self.export_skew(metrics, "", &skew);
        let mut table_skews = Vec::new();
        for (i, table) in self.tables.iter().enumerate() {
            let counts: Vec<u64> = (0..shards)
                .map(|s| {
                    let at = |x: &Sample| x.tables.get(i).and_then(|c| c.get(s)).copied().unwrap_or(0);
                    at(&newest).saturating_sub(at(&oldest))
                })
                .collect();
            let hot = self.hot(&mut h.tables[i], &counts, &impaired, seconds);
            let skew = self.skew(&counts, &impaired, seconds, hot);
            self.export_skew(metrics, &table.name, &skew);
            table_skews.push(skew);
        }
        let checkout_p99_ms = newest
            .nodes
            .iter()
            .zip(&oldest.nodes)
            .map(|(n, o)| quantile(&n.checkout, &o.checkout, 0.99).map(ms))
            .collect();
        let this_second = previous.as_ref().map(|p| errors_in_window(&newest, p, 1)).unwrap_or_default();
        let pool_full = self
            .shard_names
            .iter()
            .map(|name| {
                let full = this_second.iter().filter(|e| e.sqlstate == "53300" && e.shard == *name);
                full.map(|e| e.in_window).sum()
            })
            .collect();
        let errors = errors_in_window(&newest, &oldest, seconds);
        let refused_per_s = self
            .shard_names
            .iter()
            .map(|name| errors.iter().filter(|e| e.by == "shardcar" && e.shard == *name).map(|e| e.per_s).sum())
            .collect();
        let series = h.series.clone();
        drop(h);
        if let Ok(mut v) = self.view.lock() {
            *v = View {
                series,
                shard_loads,
                load: overall_load,
                skew,
                table_skews,
                checkout_p99_ms,
                errors,
                refused_per_s,
                in_flight,
                pool_full,
            };
        }
        self.ticks.send_modify(|n| *n += 1);
    }

    /// Advances a hot flag: over the threshold (with enough load, among
    /// at least two shards not impaired) for `hot_after_s` consecutive seconds.
    fn hot(&self, state: &mut HotState, counts: &[u64], impaired: &[bool], seconds: u64) -> bool {
        let total: u64 = counts.iter().sum();
        let busy = total as f64 / seconds as f64 >= self.hot_min_rate && total > 0;
        let compared = impaired.iter().filter(|i| !**i).count();
        if busy && compared >= 2 && ratio(counts, impaired) >= self.hot_skew {
            state.seconds_over += 1;
        } else {
            state.seconds_over = 0;
        }
        state.seconds_over >= self.hot_after_s
    }

    fn skew(&self, counts: &[u64], impaired: &[bool], seconds: u64, hot: bool) -> api::Skew {
        let total: u64 = counts.iter().sum();
        let busiest = counts
            .iter()
            .enumerate()
            .filter(|(i, _)| !impaired.get(*i).copied().unwrap_or(false))
            .max_by_key(|(_, c)| **c)
            .filter(|(_, c)| **c > 0)
            .map(|(i, _)| i);
        api::Skew {
            ratio: ratio(counts, impaired),
            excluded: (0..counts.len())
                .filter(|i| impaired.get(*i).copied().unwrap_or(false))
                .map(|i| self.shard_names[i].clone())
                .collect(),
            busiest: busiest.map(|i| self.shard_names[i].clone()),
            hot,
            threshold: self.hot_skew,
            window_s: seconds.min(self.window_s),
            hot_after_s: self.hot_after_s,
            shards: counts
                .iter()
                .enumerate()
                .map(|(i, &c)| api::ShardShare {
                    shard: self.shard_names[i].clone(),
                    statements: c,
                    share: if total == 0 { 0.0 } else { c as f64 / total as f64 },
                })
                .collect(),
        }
    }

    fn export_skew(&self, metrics: &Metrics, table: &str, skew: &api::Skew) {
        metrics.skew_ratio.with_label_values(&[table]).set(skew.ratio);
        for share in &skew.shards {
            let hot = skew.hot && skew.busiest.as_deref() == Some(share.shard.as_str());
            metrics.hot.with_label_values(&[table, &share.shard]).set(i64::from(hot));
        }
    }
}

/// Busiest over mean; 1.0 when nothing ran.
/// The busiest shard's count over the mean, among shards not `impaired`.
fn ratio(counts: &[u64], impaired: &[bool]) -> f64 {
    let compared: Vec<u64> = counts
        .iter()
        .enumerate()
        .filter(|(i, _)| !impaired.get(*i).copied().unwrap_or(false))
        .map(|(_, c)| *c)
        .collect();
    let total: u64 = compared.iter().sum();
    if total == 0 || compared.is_empty() {
        return 1.0;
    }
    let max = compared.iter().copied().max().unwrap_or(0);
    max as f64 / (total as f64 / compared.len() as f64)
}

fn display(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::Text(t) => t.clone(),
    }
}

fn ms(seconds: f64) -> f64 {
    seconds * 1000.0
}

/// Merged cumulative buckets of the servers `pick` selects.
fn merged(sample: &Sample, pick: &impl Fn(&NodeSample) -> bool) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = Vec::new();
    for n in sample.nodes.iter().filter(|n| pick(n)) {
        if out.is_empty() {
            out = n.duration.clone();
        } else {
            for (o, b) in out.iter_mut().zip(&n.duration) {
                o.1 += b.1;
            }
        }
    }
    out
}

/// What runs and waits on `nodes` now, and whether that is a stall:
/// `finished` statements ended on them in the last second.
fn in_flight<'a>(nodes: impl Iterator<Item = &'a Arc<Node>>, finished: u64, stall_after: Duration) -> api::InFlight {
    let (mut running, mut waiting) = (in_flight::Now::default(), in_flight::Now::default());
    for n in nodes {
        for (sum, now) in [(&mut running, n.running.now()), (&mut waiting, n.waiting.now())] {
            sum.count += now.count;
            sum.oldest = sum.oldest.max(now.oldest);
        }
    }
    let over = |age: Option<Duration>| age.is_some_and(|a| a >= stall_after);
    api::InFlight {
        running: running.count as u64,
        oldest_running_ms: running.oldest.map(as_ms),
        waiting: waiting.count as u64,
        longest_wait_ms: waiting.oldest.map(as_ms),
        stalled: over(waiting.oldest) || over(running.oldest) && finished == 0,
    }
}

pub fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Errors clients got between two samples, by their labels, most first.
fn errors_in_window(newest: &Sample, oldest: &Sample, seconds: u64) -> Vec<api::ClientErrors> {
    let before: HashMap<&[String; 5], u64> = oldest.errors.iter().map(|(l, n)| (l, *n)).collect();
    let mut errors: Vec<api::ClientErrors> = newest
        .errors
        .iter()
        .filter_map(|(labels, total)| {
            let in_window = total.saturating_sub(before.get(labels).copied().unwrap_or(0));
            let [shard, sqlstate, by, user, application] = labels.clone();
            (in_window > 0).then(|| api::ClientErrors {
                shard,
                sqlstate,
                by,
                user,
                application,
                in_window,
                per_s: in_window as f64 / seconds as f64,
                total: *total,
            })
        })
        .collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.in_window));
    errors
}

/// The load over the window of `samples` (oldest first) of the servers `pick` takes.
fn load(samples: &VecDeque<Sample>, seconds: u64, pick: impl Fn(&NodeSample) -> bool) -> api::Load {
    let (Some(newest), Some(oldest)) = (samples.back(), samples.front()) else { return api::Load::default() };
    // Each sample's slowest covers the second before it: the oldest's is outside.
    let slowest =
        samples.iter().skip(1).flat_map(|s| &s.nodes).filter(|n| pick(n)).map(|n| n.slowest).fold(0.0, f64::max);
    let sum = |s: &Sample, f: fn(&NodeSample) -> u64| s.nodes.iter().filter(|n| pick(n)).map(f).sum::<u64>();
    let statements = sum(newest, |n| n.statements);
    let errors = sum(newest, |n| n.errors);
    let (now, before) = (merged(newest, &pick), merged(oldest, &pick));
    let rate = |f: fn(&NodeSample) -> u64| sum(newest, f).saturating_sub(sum(oldest, f)) as f64 / seconds as f64;
    api::Load {
        statements_total: statements,
        errors_total: errors,
        window_s: seconds,
        statements_per_s: rate(|n| n.statements),
        reads_per_s: rate(|n| n.reads),
        writes_per_s: rate(|n| n.writes),
        errors_per_s: rate(|n| n.errors),
        p50_ms: quantile(&now, &before, 0.5).map(ms),
        p99_ms: quantile(&now, &before, 0.99).map(ms),
        max_ms: (slowest > 0.0).then(|| ms(slowest)),
    }
}

fn point(shard: usize, newest: &Sample, previous: &Sample) -> api::Point {
    let pick = |n: &NodeSample| n.shard == shard;
    let of = |s: &Sample| {
        s.nodes
            .iter()
            .filter(|n| pick(n))
            .fold((0, 0, 0.0), |(a, b, c), n| (a + n.statements, b + n.errors, c + n.duration_sum))
    };
    let (statements, errors, sum) = of(newest);
    let slowest = newest.nodes.iter().filter(|n| pick(n)).map(|n| n.slowest).fold(0.0, f64::max);
    let (statements0, errors0, sum0) = of(previous);
    let (now, before) = (merged(newest, &pick), merged(previous, &pick));
    let count = statements.saturating_sub(statements0);
    // Durations are observed once per statement message; a simple query
    // with several statements counts them all but is timed once.
    let timed = now.last().map_or(0, |l| l.1).saturating_sub(before.last().map_or(0, |l| l.1));
    api::Point {
        t: newest.t,
        statements: count,
        errors: errors.saturating_sub(errors0),
        p50_ms: quantile(&now, &before, 0.5).map(ms),
        p99_ms: quantile(&now, &before, 0.99).map(ms),
        mean_ms: (timed > 0).then(|| ms((sum - sum0).max(0.0) / timed as f64)),
        max_ms: (slowest > 0.0).then(|| ms(slowest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_busiest_over_mean() {
        assert_eq!(ratio(&[0, 0], &[]), 1.0);
        assert_eq!(ratio(&[50, 50], &[]), 1.0);
        assert_eq!(ratio(&[100, 0], &[]), 2.0);
        assert!((ratio(&[60, 20, 20], &[]) - 1.8).abs() < 1e-9);
        // A shard down carries nothing: the others are compared among themselves.
        assert_eq!(ratio(&[60, 60, 0], &[false, false, true]), 1.0);
    }
}
