//! OpenTelemetry traces over OTLP: one span per client statement, with a
//! child per stage (classify, policy, pool checkout, the server's part).
//!
//! The data path only decides sampling and queues the timed record; spans
//! are built and exported in batches by a background task. The queue is
//! bounded in spans: when the collector is down or slow, records beyond it
//! are dropped and counted (`shardcar_otlp_dropped_spans_total`), and no
//! statement ever waits for the exporter. That is why shardcar feeds the
//! OTLP exporter itself instead of using the SDK's batch processor, whose
//! drop count is not observable.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanExporter as _, SpanLinks,
};
use tokio::sync::{mpsc, oneshot};

use super::stages::{Classified, InFlight, Stage, Stages};
use crate::classify::{Facts, Verb};
use crate::config;
use crate::metrics::Metrics;
use crate::policy::Via;
use crate::policy::facts::SessionInfo;
use crate::sqlerror::SqlError;

/// Longest `db.query.text` exported.
const MAX_QUERY_TEXT: usize = 4096;

/// The exporter's settings, resolved from the config and `OTEL_*` variables.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: String,
    pub protocol: &'static str,
    pub service_name: String,
    pub sampler: String,
    sample_ratio: Option<f64>,
    pub queue_size: usize,
    pub batch_size: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Settings {
    /// `None` when traces are off: no endpoint anywhere, or switched off.
    pub fn resolve(cfg: &config::Traces) -> Option<Settings> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let env_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let switched_off = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let enabled = cfg.enabled.unwrap_or((cfg.endpoint.is_some() || env_endpoint.is_some()) && !switched_off);
        if !enabled {
            return None;
        }
        let protocol = match cfg
            .protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            Some("http/protobuf") => "http/protobuf",
            Some("grpc") | None => "grpc",
            Some(other) => {
                tracing::warn!("OTLP protocol `{other}` is not supported (grpc, http/protobuf); using grpc");
                "grpc"
            }
        };
        let default_endpoint = if protocol == "grpc" { "http://localhost:4317" } else { "http://localhost:4318" };
        let number = |configured: Option<u64>, var: &str, default: u64| -> u64 {
            configured.or_else(|| env(var).and_then(|v| v.trim().parse().ok())).unwrap_or(default)
        };
        let sampler = match cfg.sample_ratio {
            Some(r) => format!("parentbased_traceidratio({r})"),
            None => match (env("OTEL_TRACES_SAMPLER"), env("OTEL_TRACES_SAMPLER_ARG")) {
                (Some(s), Some(arg)) => format!("{s}({arg})"),
                (Some(s), None) => s,
                (None, _) => "parentbased_always_on".into(),
            },
        };
        Some(Settings {
            endpoint: cfg.endpoint.clone().or(env_endpoint).unwrap_or_else(|| default_endpoint.into()),
            protocol,
            service_name: cfg.service_name.clone().or_else(|| env("OTEL_SERVICE_NAME")).unwrap_or("shardcar".into()),
            sampler,
            sample_ratio: cfg.sample_ratio,
            queue_size: number(cfg.queue_size.map(|v| v as u64), "OTEL_BSP_MAX_QUEUE_SIZE", 2048).max(1) as usize,
            batch_size: number(cfg.batch_size.map(|v| v as u64), "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).max(1) as usize,
            interval: Duration::from_millis(number(cfg.export_interval_ms, "OTEL_BSP_SCHEDULE_DELAY", 1000).max(1)),
            timeout: Duration::from_millis(number(cfg.export_timeout_ms, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000).max(1)),
        })
    }

    fn sampler(&self) -> Box<dyn ShouldSample> {
        match self.sample_ratio {
            Some(r) => Box::new(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))),
            // The SDK reads OTEL_TRACES_SAMPLER and its argument.
            None => opentelemetry_sdk::trace::Config::default().sampler,
        }
    }

    fn exporter(&self) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
        let exporter = if self.protocol == "grpc" {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&self.endpoint)
                .with_timeout(self.timeout)
                .build()?
        } else {
            // A configured base URL gets the traces path, as the variables do.
            let endpoint = match self.endpoint.trim_end_matches('/') {
                e if e.ends_with("/v1/traces") => e.to_string(),
                e => format!("{e}/v1/traces"),
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(self.timeout)
                .build()?
        };
        Ok(exporter)
    }
}

/// What the export task turns into spans.
enum Job {
    /// A statement a server answered.
    Ran { flight: Box<InFlight>, ended: Instant, trace: TraceStart },
    /// A statement shardcar refused before any server ran it.
    Refused(Box<Refused>),
}

struct Refused {
    stages: Stages,
    facts: Arc<Facts>,
    session: Arc<SessionInfo>,
    error: SqlError,
    ended: Instant,
    trace: TraceStart,
}

/// The trace a statement's spans belong to.
struct TraceStart {
    trace_id: TraceId,
    /// The application's span, from the statement's sqlcommenter comment.
    parent: Option<SpanContext>,
}

/// The data path's side: samples, and queues what is kept.
pub struct Tracer {
    pub settings: Settings,
    sampler: Box<dyn ShouldSample>,
    propagator: TraceContextPropagator,
    queue: mpsc::UnboundedSender<(Job, usize)>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// Names the export task needs to label spans.
pub struct Names {
    pub shards: Vec<String>,
    pub policies: Vec<String>,
}

/// Stops the export task after a last export of what is queued.
pub struct Flusher {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Flusher {
    pub async fn flush_and_stop(self, within: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(within, self.task).await.is_err() {
            tracing::warn!("trace export did not finish within {within:?}; queued spans are lost");
        }
    }
}

impl Tracer {
    /// Builds the exporter and starts its task (needs a tokio runtime).
    pub fn start(settings: Settings, metrics: Arc<Metrics>, names: Names) -> anyhow::Result<(Tracer, Flusher)> {
        let mut exporter = settings.exporter()?;
        exporter.set_resource(&Resource::builder().with_service_name(settings.service_name.clone()).build());
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let exporting = Exporting {
            exporter,
            rx,
            queued: queued.clone(),
            metrics: metrics.clone(),
            names,
            scope: InstrumentationScope::builder("shardcar").with_version(env!("CARGO_PKG_VERSION")).build(),
            batch_size: settings.batch_size,
            interval: settings.interval,
            timeout: settings.timeout,
            failing: false,
        };
        let task = tokio::spawn(exporting.run(stop_rx));
        tracing::info!(
            "exporting traces to {} over {} (sampler {}, queue {} spans)",
            settings.endpoint,
            settings.protocol,
            settings.sampler,
            settings.queue_size
        );
        let tracer = Tracer {
            sampler: settings.sampler(),
            settings,
            propagator: TraceContextPropagator::new(),
            queue: tx,
            queued,
            metrics,
        };
        Ok((tracer, Flusher { stop: stop_tx, task }))
    }

    /// Queues a finished statement's spans if its trace is sampled.
    pub fn ran(&self, flight: Box<InFlight>, ended: Instant) {
        let spans = flight.span_count();
        if let Some(trace) = self.sample(&flight.facts) {
            self.enqueue(Job::Ran { flight, ended, trace }, spans);
        }
    }

    /// Queues the spans of a statement shardcar refused.
    pub fn refused(&self, stages: Stages, facts: Arc<Facts>, session: Arc<SessionInfo>, error: SqlError) {
        let spans = 1
            + usize::from(stages.classify.is_some())
            + usize::from(stages.policy.is_some())
            + usize::from(stages.checkout.is_some());
        if let Some(trace) = self.sample(&facts) {
            let ended = Instant::now();
            self.enqueue(Job::Refused(Box::new(Refused { stages, facts, session, error, ended, trace })), spans);
        }
    }

    fn sample(&self, facts: &Facts) -> Option<TraceStart> {
        let parent = parent_context(&self.propagator, &facts.hints.pairs);
        let trace_id = parent.as_ref().map_or_else(|| TraceId::from(rand::random::<u128>()), |p| p.trace_id());
        let cx = parent.as_ref().map(|p| Context::new().with_remote_span_context(p.clone()));
        let result = self.sampler.should_sample(cx.as_ref(), trace_id, "statement", &SpanKind::Server, &[], &[]);
        match result.decision {
            SamplingDecision::RecordAndSample => Some(TraceStart { trace_id, parent }),
            _ => None,
        }
    }

    fn enqueue(&self, job: Job, spans: usize) {
        let before = self.queued.fetch_add(spans, Ordering::Relaxed);
        if before + spans > self.settings.queue_size || self.queue.send((job, spans)).is_err() {
            self.queued.fetch_sub(spans, Ordering::Relaxed);
            self.metrics.spans_dropped.inc_by(spans as u64);
        }
    }
}

/// The W3C trace context in a statement's trailing sqlcommenter comment.
fn parent_context(propagator: &TraceContextPropagator, pairs: &[(String, String)]) -> Option<SpanContext> {
    struct Pairs<'a>(&'a [(String, String)]);
    impl Extractor for Pairs<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k.as_str()).collect()
        }
    }
    if !pairs.iter().any(|(k, _)| k == "traceparent") {
        return None;
    }
    let cx = propagator.extract(&Pairs(pairs));
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

struct Exporting {
    exporter: opentelemetry_otlp::SpanExporter,
    rx: mpsc::UnboundedReceiver<(Job, usize)>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    names: Names,
    scope: InstrumentationScope,
    batch_size: usize,
    interval: Duration,
    timeout: Duration,
    /// The last export failed (logged once until one succeeds).
    failing: bool,
}

impl Exporting {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let first = tokio::select! {
                job = self.rx.recv() => job,
                _ = &mut stop => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            let mut spans = batch[0].1;
            let deadline = tokio::time::Instant::now() + self.interval;
            while spans < self.batch_size {
                tokio::select! {
                    job = self.rx.recv() => match job {
                        Some(job) => {
                            spans += job.1;
                            batch.push(job);
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.export(batch).await;
        }
        // Shutting down: one last export of what is queued.
        let mut rest = Vec::new();
        while let Ok(job) = self.rx.try_recv() {
            rest.push(job);
        }
        if !rest.is_empty() {
            self.export(rest).await;
        }
    }

    async fn export(&mut self, batch: Vec<(Job, usize)>) {
        let count: usize = batch.iter().map(|(_, n)| n).sum();
        self.queued.fetch_sub(count, Ordering::Relaxed);
        let clock = Clock::now();
        let spans: Vec<SpanData> = batch.into_iter().flat_map(|(job, _)| self.spans(job, &clock)).collect();
        let n = spans.len() as u64;
        match tokio::time::timeout(self.timeout, self.exporter.export(spans)).await {
            Ok(Ok(())) => {
                self.metrics.spans_exported.inc_by(n);
                if std::mem::take(&mut self.failing) {
                    tracing::info!("trace export works again");
                }
            }
            outcome => {
                self.metrics.spans_failed.inc_by(n);
                if !std::mem::replace(&mut self.failing, true) {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    tracing::warn!("trace export failed ({why}); spans are dropped until the collector answers");
                }
            }
        }
    }

    fn spans(&self, job: Job, clock: &Clock) -> Vec<SpanData> {
        match job {
            Job::Ran { flight, ended, trace } => {
                let f = *flight;
                let node = &f.node;
                let mut b = Builder::new(&trace, &self.scope, clock);
                let mut attrs = statement_attributes(&f.facts, &f.session);
                attrs.extend([
                    KeyValue::new("server.address", node.endpoint.host.clone()),
                    KeyValue::new("server.port", i64::from(node.endpoint.port)),
                    KeyValue::new("shardcar.shard", self.shard(node.shard)),
                    KeyValue::new("shardcar.role", node.role_name()),
                ]);
                attrs.extend(self.route_attributes(&f.stages));
                let status = match &f.error {
                    Some(e) => {
                        attrs.push(KeyValue::new("db.response.status_code", e.code.clone()));
                        attrs.push(KeyValue::new("error.type", e.code.clone()));
                        Status::error(e.message.clone())
                    }
                    None => Status::Unset,
                };
                let root = b.root(statement_name(&f.facts), f.stages.started, ended, attrs, status);
                self.stage_spans(&mut b, root, &f.stages);
                let server = vec![
                    KeyValue::new("db.system.name", "postgresql"),
                    KeyValue::new("server.address", node.endpoint.host.clone()),
                    KeyValue::new("server.port", i64::from(node.endpoint.port)),
                    KeyValue::new("shardcar.shard", self.shard(node.shard)),
                    KeyValue::new("shardcar.role", node.role_name()),
                ];
                let name = format!("execute {}", node.label);
                b.child(root, name.into(), SpanKind::Client, f.sent, ended, server);
                b.spans
            }
            Job::Refused(refused) => {
                let Refused { stages, facts, session, error, ended, trace } = *refused;
                let mut b = Builder::new(&trace, &self.scope, clock);
                let mut attrs = statement_attributes(&facts, &session);
                attrs.extend(self.route_attributes(&stages));
                attrs.push(KeyValue::new("error.type", error.code.to_string()));
                attrs.push(KeyValue::new("shardcar.refused", true));
                let root =
                    b.root(statement_name(&facts), stages.started, ended, attrs, Status::error(error.message.clone()));
                self.stage_spans(&mut b, root, &stages);
                b.spans
            }
        }
    }

    fn stage_spans(&self, b: &mut Builder<'_>, root: SpanId, stages: &Stages) {
        if let Some(c) = stages.classify {
            let (stage, cache) = match c {
                Classified::Hit(s) => (s, "hit"),
                Classified::Miss(s) => (s, "miss"),
            };
            let attrs = vec![KeyValue::new("shardcar.parse_cache", cache)];
            b.child(root, "classify".into(), SpanKind::Internal, stage.at, stage.at + stage.took, attrs);
        }
        if let Some(p) = &stages.policy {
            let attrs = self.route_attributes(stages);
            b.child(root, "policy".into(), SpanKind::Internal, p.stage.at, end(p.stage), attrs);
        }
        if let Some(c) = stages.checkout {
            b.child(root, "pool checkout".into(), SpanKind::Internal, c.at, end(c), vec![]);
        }
    }

    /// How the statement was routed: by a policy's plugin, by an explicit
    /// target, or to the default shard.
    fn route_attributes(&self, stages: &Stages) -> Vec<KeyValue> {
        let mut route = stages.policy.as_ref().and_then(|p| p.routes.first());
        // A multi-row INSERT is named by its first row's policy.
        if let Some(Via::Rows(rows)) = route.map(|r| &r.via) {
            route = rows.first();
        }
        match route.map(|r| &r.via) {
            Some(Via::Policy { policy, plugin, .. }) => vec![
                KeyValue::new("shardcar.route", "policy"),
                KeyValue::new("shardcar.policy", self.names.policies.get(policy.index()).cloned().unwrap_or_default()),
                KeyValue::new("shardcar.plugin_version", plugin.to_string()),
            ],
            Some(Via::Explicit) => vec![KeyValue::new("shardcar.route", "explicit")],
            Some(Via::Unsharded | Via::Rows(_)) | None => vec![KeyValue::new("shardcar.route", "default")],
        }
    }

    fn shard(&self, shard: crate::topology::ShardId) -> String {
        self.names.shards.get(shard.index()).cloned().unwrap_or_default()
    }
}

fn end(stage: Stage) -> Instant {
    stage.at + stage.took
}

/// Turns monotonic instants into wall-clock times, anchored once per batch.
struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        Clock { instant: Instant::now(), wall: SystemTime::now() }
    }

    fn at(&self, i: Instant) -> SystemTime {
        match self.instant.checked_duration_since(i) {
            Some(ago) => self.wall - ago,
            None => self.wall + (i - self.instant),
        }
    }
}

/// Assembles the spans of one statement.
struct Builder<'a> {
    trace_id: TraceId,
    parent: Option<&'a SpanContext>,
    state: TraceState,
    scope: &'a InstrumentationScope,
    clock: &'a Clock,
    spans: Vec<SpanData>,
}

impl<'a> Builder<'a> {
    fn new(trace: &'a TraceStart, scope: &'a InstrumentationScope, clock: &'a Clock) -> Builder<'a> {
        let state = trace.parent.as_ref().map(|p| p.trace_state().clone()).unwrap_or_default();
        Builder { trace_id: trace.trace_id, parent: trace.parent.as_ref(), state, scope, clock, spans: Vec::new() }
    }

    fn root(&mut self, name: String, start: Instant, end: Instant, attrs: Vec<KeyValue>, status: Status) -> SpanId {
        let parent = self.parent.map_or(SpanId::INVALID, |p| p.span_id());
        let remote = self.parent.is_some();
        self.push(parent, remote, name.into(), SpanKind::Server, start, end, attrs, status)
    }

    fn child(
        &mut self,
        parent: SpanId,
        name: Cow<'static, str>,
        kind: SpanKind,
        start: Instant,
        end: Instant,
        attrs: Vec<KeyValue>,
    ) -> SpanId {
        self.push(parent, false, name, kind, start, end, attrs, Status::Unset)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        parent: SpanId,
        parent_remote: bool,
        name: Cow<'static, str>,
        kind: SpanKind,
        start: Instant,
        end: Instant,
        attributes: Vec<KeyValue>,
        status: Status,
    ) -> SpanId {
        let id = SpanId::from(rand::random::<u64>().max(1));
        self.spans.push(SpanData {
            span_context: SpanContext::new(self.trace_id, id, TraceFlags::SAMPLED, false, self.state.clone()),
            parent_span_id: parent,
            parent_span_is_remote: parent_remote,
            span_kind: kind,
            name,
            start_time: self.clock.at(start),
            end_time: self.clock.at(end.max(start)),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
        id
    }
}

/// `db.*` attributes of a statement (OpenTelemetry database conventions).
fn statement_attributes(facts: &Facts, session: &SessionInfo) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("db.namespace", session.database.clone()),
        KeyValue::new("db.operation.name", operation_name(facts)),
    ];
    if let Some(table) = facts.statements.first().and_then(|s| s.shape.tables.first()) {
        attrs.push(KeyValue::new("db.collection.name", table.clone()));
    }
    if facts.statements.len() > 1 {
        attrs.push(KeyValue::new("db.operation.batch.size", facts.statements.len() as i64));
    }
    if let Some(text) = facts.normalized() {
        let mut text = text.to_string();
        if text.len() > MAX_QUERY_TEXT {
            let cut = (0..=MAX_QUERY_TEXT).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(cut);
        }
        attrs.push(KeyValue::new("db.query.text", text));
    }
    attrs
}

/// `SELECT orders`, as the conventions name database spans.
fn statement_name(facts: &Facts) -> String {
    let op = operation_name(facts);
    match facts.statements.first().and_then(|s| s.shape.tables.first()) {
        Some(table) if facts.statements.len() == 1 => format!("{op} {table}"),
        _ => op,
    }
}

/// The statement's command (`SELECT`, `BEGIN`, ...); `BATCH ...` for several.
fn operation_name(facts: &Facts) -> String {
    let ops: Vec<String> = facts.statements.iter().map(|s| command(s.shape.verb, &s.text)).collect();
    match ops.as_slice() {
        [] => "UNKNOWN".into(),
        [one] => one.clone(),
        [first, rest @ ..] if rest.iter().all(|o| o == first) => format!("BATCH {first}"),
        _ => "BATCH".into(),
    }
}

fn command(verb: Verb, text: &str) -> String {
    match verb {
        Verb::Select => "SELECT".into(),
        Verb::Insert => "INSERT".into(),
        Verb::Update => "UPDATE".into(),
        Verb::Delete => "DELETE".into(),
        Verb::Copy => "COPY".into(),
        Verb::Ddl | Verb::Other => first_keyword(text),
    }
}

/// The first word of a statement, past leading comments.
fn first_keyword(text: &str) -> String {
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else {
            break;
        }
    }
    let word: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    if word.is_empty() { "UNKNOWN".into() } else { word.to_ascii_uppercase() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    #[test]
    fn operation_names_follow_the_conventions() {
        assert_eq!(statement_name(&classify("SELECT * FROM orders WHERE id = 1")), "SELECT orders");
        assert_eq!(statement_name(&classify("/* hi */ begin")), "BEGIN");
        assert_eq!(operation_name(&classify("INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)")), "BATCH INSERT");
        assert_eq!(operation_name(&classify("SET x = 1; SELECT 1")), "BATCH");
        assert_eq!(operation_name(&classify("CREATE TABLE t (a int)")), "CREATE");
    }

    #[test]
    fn the_parent_comes_from_a_valid_traceparent_only() {
        let p = TraceContextPropagator::new();
        let pairs = |tp: &str| vec![("traceparent".to_string(), tp.to_string())];
        let good = parent_context(&p, &pairs("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")).unwrap();
        assert_eq!(good.trace_id(), TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap());
        assert!(good.is_remote() && good.is_sampled());
        assert!(parent_context(&p, &pairs("00-zz-b7ad6b7169203331-01")).is_none());
        assert!(parent_context(&p, &[]).is_none());
    }
}
