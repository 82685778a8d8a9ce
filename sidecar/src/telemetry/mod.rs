//! Telemetry: what every statement did and where load concentrates.
//!
//! A statement is accounted for once, when its last reply arrives
//! ([`Telemetry::finished`]) or when shardcar refuses it
//! ([`Telemetry::refused`]): metrics, hot keys and, when sampled, spans
//! all come from that one place.

pub mod events;
pub mod hotspots;
pub mod key_counts;
pub mod stages;
pub mod traces;

use std::sync::Arc;
use std::time::Instant;

use crate::classify::{Facts, FactsCache, Kind};
use crate::config::Config;
use crate::metrics::{KindLabel, Metrics};
use crate::policy::Router;
use crate::policy::facts::SessionInfo;
use crate::pool::Pools;
use crate::sqlerror::SqlError;
use events::{Condition, Events, Family};
use hotspots::Hotspots;
use stages::{InFlight, Stages};
use traces::{Flusher, Names, Settings, Tracer};

pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub hotspots: Hotspots,
    pub events: Events,
    /// `None` when trace export is off.
    pub tracer: Option<Tracer>,
    pub started: Instant,
}

impl Telemetry {
    /// Metrics and hot spots; traces when configured (needs a tokio runtime).
    pub fn start(cfg: &Config, metrics: Arc<Metrics>) -> anyhow::Result<(Telemetry, Option<Flusher>)> {
        let (tracer, flusher) = match Settings::resolve(&cfg.telemetry.traces) {
            Some(settings) => {
                let names = Names {
                    shards: cfg.shards.iter().map(|s| s.name.clone()).collect(),
                    policies: cfg.policies.iter().map(|p| p.name.clone()).collect(),
                };
                let (tracer, flusher) = Tracer::start(settings, metrics.clone(), names)?;
                (Some(tracer), Some(flusher))
            }
            None => (None, None),
        };
        let telemetry = Telemetry {
            hotspots: Hotspots::new(cfg, &metrics),
            events: Events::default(),
            metrics,
            tracer,
            started: Instant::now(),
        };
        Ok((telemetry, flusher))
    }

    /// A statement's last reply arrived.
    pub fn finished(&self, flight: Box<InFlight>) {
        let ended = Instant::now();
        let m = &flight.node.metrics;
        let statements = &flight.facts.statements;
        if statements.is_empty() {
            m.statements(KindLabel::Other).inc();
        }
        for s in statements {
            m.statements(kind_label(&s.kind)).inc();
        }
        m.observe_duration(ended.duration_since(flight.stages.started).as_secs_f64());
        if let Some(e) = &flight.error {
            m.errors(statements.first().map_or(KindLabel::Other, |s| kind_label(&s.kind))).inc();
            let (user, application) = (&flight.session.user, &flight.session.application_name);
            self.metrics.client_error(
                self.hotspots.shard_name(flight.node.shard),
                &e.code,
                "server",
                user,
                application,
            );
        }
        if let Some(p) = &flight.stages.policy {
            self.hotspots.record(&p.routes);
        }
        if let Some(t) = &self.tracer {
            t.ran(flight, ended);
        }
    }

    /// A client got `err`, raised by shardcar (a refusal, a pool or
    /// connection failure): counted as a refusal, and by shard, SQLSTATE,
    /// user and application.
    pub fn client_error(&self, err: &SqlError, session: &SessionInfo) {
        self.metrics.rejected(err.code);
        let shard = err.shard.map_or("", |s| self.hotspots.shard_name(s));
        self.metrics.client_error(shard, err.code, "shardcar", &session.user, &session.application_name);
    }

    /// Shardcar answered a statement with an error before any server ran it
    /// (counted where every such error is reported: the session's `fail`).
    pub fn refused(&self, stages: Stages, facts: Arc<Facts>, session: Arc<SessionInfo>, error: &SqlError) {
        if let Some(t) = &self.tracer {
            t.refused(stages, facts, session, error.clone());
        }
    }

    /// Refreshes gauges read from elsewhere (pools, caches) and samples the
    /// registry for the time series: once a second, and before `/metrics`.
    pub fn refresh(&self, pools: &Pools, facts: &FactsCache) {
        for node in pools.nodes() {
            let status = node.pool.status();
            let m = &node.metrics;
            m.pool_max.set(status.max_size as i64);
            if let Some(b) = &node.budget {
                let v = b.view();
                m.budget.0.set(b.limit as i64);
                m.budget.1.set(v.share as i64);
                m.budget.2.set(v.sidecars as i64);
            }
            m.pool_idle.set(status.available as i64);
            m.pool_in_use.set(status.size.saturating_sub(status.available) as i64);
            m.pool_waiting.set(status.waiting as i64);
            let (running, waiting) = (node.running.now(), node.waiting.now());
            m.running.set(running.count as i64);
            m.oldest_running.set(running.oldest.unwrap_or_default().as_secs_f64());
            m.pool_longest_wait.set(waiting.oldest.unwrap_or_default().as_secs_f64());
            m.up.set(i64::from(node.health.is_confirmed_up()));
            m.primary.set(i64::from(node.is_primary()));
            let lag = node.health.lag();
            m.lag.0.set(lag.map_or(0, |l| l.bytes as i64));
            m.lag.1.set(lag.map_or(0.0, |l| l.seconds));
        }
        for shard in &pools.shards {
            shard.metrics.buffered.set(shard.leader.buffered() as i64);
        }
        self.metrics.parse_cache_entries.set(facts.len() as i64);
        self.metrics.parse_cache_bytes.set(facts.weight() as i64);
    }

    /// Runs once a second until the task is dropped.
    pub async fn sample(self: Arc<Self>, pools: Arc<Pools>, facts: Arc<FactsCache>, router: Arc<Router>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh(&pools, &facts);
            self.hotspots.tick(&pools, &self.metrics);
            let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            self.events.observe(at as u64, self.conditions(&pools, &router));
        }
    }

    /// Each server, shard and policy as it is now, for the events.
    fn conditions(&self, pools: &Pools, router: &Router) -> Vec<Condition> {
        let view = self.hotspots.view();
        let mut out = Vec::new();
        for node in pools.nodes() {
            let down = !node.health.is_up();
            out.push(Condition {
                family: Family::Server,
                subject: node.label.clone(),
                state: down.then(|| "down".into()),
                detail: if down { node.health.last_error().unwrap_or_default() } else { "answers again".into() },
            });
        }
        for (i, shard) in pools.shards.iter().enumerate() {
            let name = pools.topology.name(shard.id).to_string();
            let hot = view.skew.hot && view.skew.busiest.as_deref() == Some(&name);
            out.push(Condition {
                family: Family::Hot,
                subject: name.clone(),
                state: hot.then(|| "hot".into()),
                detail: format!("{:.2}× the mean load over {} s", view.skew.ratio, view.skew.window_s),
            });
            let work = view.in_flight.get(i).cloned().unwrap_or_default();
            out.push(Condition {
                family: Family::Stall,
                subject: name.clone(),
                state: work.stalled.then(|| "stalled".into()),
                detail: match work.stalled {
                    true => format!(
                        "{} running (oldest {:.0} ms), {} waiting for a connection (longest {:.0} ms)",
                        work.running,
                        work.oldest_running_ms.unwrap_or_default(),
                        work.waiting,
                        work.longest_wait_ms.unwrap_or_default()
                    ),
                    false => "statements finish again".into(),
                },
            });
            let full = view.pool_full.get(i).copied().unwrap_or_default();
            out.push(Condition {
                family: Family::PoolFull,
                subject: name,
                state: (full > 0).then(|| "full".into()),
                detail: format!("{full} client(s) got 53300 (no free connection) in the last second"),
            });
        }
        for slot in router.policies.iter() {
            let plugin = slot.plugin.load();
            out.push(Condition {
                family: Family::PluginServing,
                subject: slot.name.clone(),
                state: Some(plugin.digest.clone()),
                detail: format!("serving {} {} ({})", plugin.info.name, plugin.info.version, plugin.digest),
            });
            let refused = slot.last_error.lock().ok().and_then(|e| e.clone());
            out.push(Condition {
                family: Family::PluginRefused,
                subject: slot.name.clone(),
                detail: refused.clone().unwrap_or_default(),
                state: refused,
            });
        }
        out
    }
}

/// The metrics label of a statement kind.
pub fn kind_label(kind: &Kind) -> KindLabel {
    match kind {
        Kind::Read => KindLabel::Read,
        Kind::Write => KindLabel::Write,
        Kind::Begin
        | Kind::TransactionOption
        | Kind::Savepoint(_)
        | Kind::Release(_)
        | Kind::RollbackTo(_)
        | Kind::Commit
        | Kind::Rollback => KindLabel::Transaction,
        Kind::Session(_) | Kind::DiscardAll | Kind::Deallocate(_) => KindLabel::Session,
        Kind::ShardcarSet { .. } | Kind::ShardcarShow(_) | Kind::Unsupported { .. } => KindLabel::Other,
    }
}
