//! The admin API's answers, read from the metrics registry, the hot-spot
//! view, the pools and the router.

use std::time::{SystemTime, UNIX_EPOCH};

use shardcar_api as api;

use crate::metrics::{buckets, quantile};
use crate::pool::Node;
use crate::shared::Shared;
use crate::telemetry::hotspots::as_ms;

pub fn overview(shared: &Shared) -> api::Overview {
    let m = &shared.telemetry.metrics;
    let view = shared.telemetry.hotspots.view();
    let tracer = shared.telemetry.tracer.as_ref().map(|t| &t.settings);
    api::Overview {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: shared.telemetry.started.elapsed().as_secs(),
        ready: shared.pools.shards.iter().all(|s| s.has_primary()),
        shards: shared.pools.shards.len(),
        clients: api::Clients {
            connected: m.clients_connected.get().max(0) as u64,
            accepted_total: m.clients_accepted.get(),
            refused_total: m.clients_refused.get(),
        },
        load: view.load,
        skew: view.skew,
        parse_cache: api::ParseCache {
            hits_total: m.parse_cache_hits.get(),
            misses_total: m.parse_cache_misses.get(),
            entries: shared.facts.len() as u64,
        },
        traces: api::Traces {
            enabled: tracer.is_some(),
            endpoint: tracer.map(|t| t.endpoint.clone()),
            protocol: tracer.map(|t| t.protocol.to_string()),
            sampler: tracer.map(|t| t.sampler.clone()),
            exported_spans_total: m.spans_exported.get(),
            dropped_spans_total: m.spans_dropped.get(),
            failed_spans_total: m.spans_failed.get(),
        },
        bytes: api::Bytes {
            from_clients_total: m.client_bytes_received.get(),
            to_clients_total: m.client_bytes_sent.get(),
        },
        rejected_total: m.rejected_total(),
    }
}

/// Every shard, with the last `series` seconds of its time series.
pub fn shards(shared: &Shared, series: usize) -> api::Shards {
    let view = shared.telemetry.hotspots.view();
    let shards = shared
        .pools
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let points = view.series.get(i);
            let skip = points.map_or(0, |p| p.len().saturating_sub(series));
            let name = shared.pools.topology.name(s.id);
            api::Shard {
                name: name.to_string(),
                healthy: s.has_primary(),
                hot: view.skew.hot && view.skew.busiest.as_deref() == Some(name),
                load: view.shard_loads.get(i).cloned().unwrap_or_default(),
                refused_per_s: view.refused_per_s.get(i).copied().unwrap_or_default(),
                in_flight: view.in_flight.get(i).cloned().unwrap_or_default(),
                servers: s.servers.iter().map(|n| server(n)).collect(),
                failovers: s.leader.events(),
                buffered: s.leader.buffered() as u64,
                series: points.map(|p| p.iter().skip(skip).copied().collect()).unwrap_or_default(),
            }
        })
        .collect();
    api::Shards { shards }
}

fn server(node: &Node) -> api::Server {
    api::Server {
        role: node.role_name().into(),
        label: node.label.clone(),
        timeline: node.state.timeline(),
        address: node.endpoint.address(),
        up: node.health.is_confirmed_up(),
        last_error: node.health.last_error(),
        lag: node.health.lag(),
    }
}

pub fn pools(shared: &Shared) -> Vec<api::Pool> {
    let view = shared.telemetry.hotspots.view();
    shared
        .pools
        .nodes()
        .enumerate()
        .map(|(i, n)| {
            let status = n.pool.status();
            let (running, waiting) = (n.running.now(), n.waiting.now());
            api::Pool {
                shard: shared.pools.topology.name(n.shard).to_string(),
                role: n.role_name().into(),
                address: n.endpoint.address(),
                sslmode: n.endpoint.tls.mode.as_str().into(),
                encrypted: n.tls.encrypted(),
                tls: n.tls.last(),
                max_size: status.max_size as u64,
                size: status.size as u64,
                idle: status.available as u64,
                in_use: status.size.saturating_sub(status.available) as u64,
                waiting: status.waiting as u64,
                longest_wait_ms: waiting.oldest.map(as_ms),
                running: running.count as u64,
                oldest_running_ms: running.oldest.map(as_ms),
                checkouts_total: n.metrics.checkout_wait.get_sample_count(),
                passthrough_users: n.passthrough().0,
                passthrough_connections: n.passthrough().1,
                checkout_wait_p99_ms: view.checkout_p99_ms.get(i).copied().flatten(),
                budget: n.budget.as_ref().map(|b| {
                    let v = b.view();
                    api::Budget {
                        limit: b.limit as u64,
                        sidecars: v.sidecars as u64,
                        share: v.share as u64,
                        held: v.held as u64,
                    }
                }),
            }
        })
        .collect()
}

/// Each policy's plugin: what serves now, and why a newer file was refused.
pub fn plugins(shared: &Shared) -> api::Plugins {
    let plugins = shared
        .router
        .policies
        .iter()
        .map(|slot| {
            let plugin = slot.plugin.load();
            let last_error = slot.last_error.lock().ok().and_then(|e| e.clone());
            api::Plugin {
                policy: slot.name.clone(),
                source: slot.source.to_string(),
                plugin: plugin.info.name.clone(),
                version: plugin.info.version.clone(),
                digest: plugin.digest.clone(),
                status: if last_error.is_some() { "reload failed".into() } else { "ok".into() },
                calls_total: plugin.metrics.calls.get(),
                errors_total: plugin.metrics.errors.get(),
                p99_us: quantile(&buckets(&plugin.metrics.duration), &[], 0.99).map(|s| s * 1e6),
                instance_memory_bytes: plugin.instance_memory as u64,
                loaded_unix_ms: unix_ms(plugin.loaded_at),
                last_error,
                last_moves: slot.last_moves.lock().ok().and_then(|m| m.clone()),
                shadow: slot.shadow.load().as_ref().map(|s| s.report()),
                shadow_error: slot.shadow_error.lock().ok().and_then(|e| e.clone()),
                promoted: slot.promoted.lock().ok().and_then(|p| p.clone()),
            }
        })
        .collect();
    api::Plugins { plugins, colocated: shared.router.colocation_groups() }
}

/// What the fleet view reads from every sidecar's `/metrics`: the plugin
/// serving each policy, and each table's hottest keys since start (only as
/// clients sent them: hashed keys differ from one sidecar to the next).
pub fn export_for_fleet(shared: &Shared) {
    let metrics = &shared.telemetry.metrics;
    let plugins = plugins(shared).plugins;
    metrics.set_plugins(plugins.iter().map(|p| {
        (p.policy.as_str(), format!("{}@{} ({})", p.plugin, p.version, p.digest), p.loaded_unix_ms as f64 / 1000.0)
    }));
    let hot = &shared.telemetry.hotspots;
    metrics.set_hot_keys(
        hot.table_names()
            .filter_map(|t| hot.hot_keys(t, None))
            .filter(|h| h.show_keys)
            .flat_map(|h| {
                let table = h.table;
                h.lifetime.keys.into_iter().map(move |k| (table.clone(), k.key, k.shard, k.count))
            })
            .collect::<Vec<_>>(),
    );
}

/// One second of the live stream.
pub fn snapshot(shared: &Shared) -> api::Snapshot {
    let shards = shards(shared, 1);
    let view = shared.telemetry.hotspots.view();
    api::Snapshot {
        at_unix_ms: unix_ms(SystemTime::now()),
        overview: overview(shared),
        shards: shards.shards,
        pools: pools(shared),
        tables: shared
            .telemetry
            .hotspots
            .table_names()
            .zip(view.table_skews)
            .map(|(table, skew)| api::TableSkew { table: table.to_string(), skew })
            .collect(),
        errors: view.errors.into_iter().take(ERRORS_SHOWN).collect(),
        events: shared.telemetry.events.recent(EVENTS_SHOWN),
    }
}

/// Rows of attributed errors, and events, the live stream carries.
const ERRORS_SHOWN: usize = 20;
const EVENTS_SHOWN: usize = 50;

/// Errors clients got over the window, attributed, most first.
pub fn errors(shared: &Shared) -> api::Errors {
    let view = shared.telemetry.hotspots.view();
    api::Errors { window_s: view.load.window_s, errors: view.errors }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
