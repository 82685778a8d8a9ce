//! Traces at a real OTLP receiver (opentelemetry-proto's gRPC service, run
//! here over the wire): one span per statement with the database
//! conventions' attributes, a child per stage, the application's span as
//! parent when the statement carries a sqlcommenter traceparent; and a
//! collector that is down or hung costs statements nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::{mpsc, oneshot};

use crate::harness::{Fleet, Sidecar, eventually, metric};

/// An OTLP/gRPC trace receiver on 127.0.0.1.
pub struct Collector {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    spans: Vec<Span>,
    service_names: Vec<String>,
}

struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Receiver(tx)))
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
        Collector { addr, rx, stop: Some(stop_tx), task, spans: Vec::new(), service_names: Vec::new() }
    }

    /// The same receiver over OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    async fn start_http() -> Collector {
        use http_body_util::BodyExt;
        use prost::Message;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap().0,
                    _ = &mut stop_rx => return,
                };
                let tx = tx.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let protobuf = req.headers().get("content-type").is_some_and(|v| v == "application/x-protobuf");
                        let path_ok = req.uri().path() == "/v1/traces";
                        let body = req.into_body().collect().await?.to_bytes();
                        let status = match ExportTraceServiceRequest::decode(body) {
                            Ok(msg) if protobuf && path_ok => {
                                let _ = tx.send(msg);
                                200
                            }
                            _ => 400,
                        };
                        let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        resp.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Collector { addr, rx, stop: Some(stop_tx), task, spans: Vec::new(), service_names: Vec::new() }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Collects spans until `done` holds for what arrived, or 20 s pass.
    pub async fn until(&mut self, done: impl Fn(&[Span]) -> bool) -> &[Span] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&self.spans) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(req)) => {
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.as_ref()?.value.as_ref())
                            .map(render);
                        self.service_names.extend(service);
                        for ss in rs.scope_spans {
                            self.spans.extend(ss.spans);
                        }
                    }
                }
                _ => break,
            }
        }
        &self.spans
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes.iter().filter_map(|kv| Some((kv.key.clone(), render(kv.value.as_ref()?.value.as_ref()?)))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The statement span whose query text contains `marker`, and its children.
fn tree<'a>(spans: &'a [Span], marker: &str) -> Option<(&'a Span, Vec<&'a Span>)> {
    let root = spans.iter().find(|s| attrs(s).get("db.query.text").is_some_and(|q| q.contains(marker)))?;
    let children = spans.iter().filter(|s| s.parent_span_id == root.span_id && s.trace_id == root.trace_id).collect();
    Some((root, children))
}

const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

#[tokio::test]
async fn statements_become_span_trees_inside_the_applications_trace() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("traced").await;
    let mut collector = Collector::start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_SERVICE_NAME", "shardcar-under-test".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let sc = Sidecar::start_with_env(&fleet.hashed_config(&t, ""), &env);
    let c = sc.connect().await;
    let explain: shardcar_api::Explanation =
        sc.admin_json(&format!("/api/v1/explain?sql=SELECT+1+FROM+{t}+WHERE+customer_id+%3D+42"));
    let shard_of_42 = explain.target.unwrap().shard;

    // An application's span, as Django/SQLAlchemy/node sqlcommenter put it.
    let (trace_id, parent_id) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let comment = format!("/*traceparent='00-{trace_id}-{parent_id}-01',tracestate='congo%3Dt61rcWkgMzE'*/");
    c.batch_execute(&format!("SELECT note AS m_simple FROM {t} WHERE customer_id = 42 {comment}")).await.unwrap();
    c.query(&format!("SELECT note AS m_extended FROM {t} WHERE customer_id = $1 {comment}"), &[&42i64]).await.unwrap();
    // No comment: a trace of its own.
    c.batch_execute(&format!("INSERT INTO {t} AS m_rooted VALUES (7, 'x')")).await.unwrap();
    // A server error, and a statement shardcar refuses.
    c.batch_execute(&format!("SELECT 1 / 0 AS m_failing FROM {t} WHERE customer_id = 42")).await.unwrap_err();
    c.batch_execute(&format!("SELECT array_agg(note) AS m_refused FROM {t}")).await.unwrap_err();

    // Literals become placeholders in the exported text: aliases mark the statements.
    let markers = ["m_simple", "m_extended", "m_rooted", "m_failing", "m_refused"];
    let spans = collector.until(|s| markers.iter().all(|m| tree(s, m).is_some_and(|(_, c)| !c.is_empty()))).await;
    for marker in markers {
        assert!(
            tree(spans, marker).is_some(),
            "no span for {marker}; got {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
    }

    for marker in ["m_simple", "m_extended"] {
        let (root, children) = tree(spans, marker).unwrap();
        let a = attrs(root);
        assert_eq!(hex(&root.trace_id), trace_id, "{marker}: the application's trace");
        assert_eq!(hex(&root.parent_span_id), parent_id, "{marker}: the application's span is the parent");
        assert_eq!(root.trace_state, "congo=t61rcWkgMzE");
        assert_eq!(root.kind, KIND_SERVER);
        assert_eq!(root.name, format!("SELECT {t}"));
        assert_eq!(a["db.system.name"], "postgresql");
        assert_eq!(a["db.namespace"], "app");
        assert_eq!(a["db.operation.name"], "SELECT");
        assert_eq!(a["db.collection.name"], t);
        // Literals are placeholders; the comment is not part of the text.
        let text = &a["db.query.text"];
        // (The table's name has a number of its own: look for the literal itself.)
        assert!(text.contains("customer_id = $") && !text.contains("= 42") && !text.contains("traceparent"), "{text}");
        assert_eq!(a["shardcar.shard"], shard_of_42);
        assert_eq!(a["shardcar.role"], "primary");
        assert_eq!(a["shardcar.policy"], "by-customer");
        assert!(a["shardcar.plugin_version"].starts_with("hash@"), "{a:?}");
        let port = if shard_of_42 == "s0" { fleet.s0.port } else { fleet.s1.port };
        assert_eq!((a["server.address"].as_str(), a["server.port"].clone()), ("127.0.0.1", port.to_string()));
        let mut names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            ["classify", &format!("execute {shard_of_42} primary"), "policy", "pool checkout"],
            "{marker}"
        );
        let execute = children.iter().find(|s| s.name.starts_with("execute")).unwrap();
        assert_eq!(execute.kind, KIND_CLIENT);
        assert_eq!(attrs(execute)["server.port"], port.to_string());
        let classify = children.iter().find(|s| s.name == "classify").unwrap();
        assert!(["hit", "miss"].contains(&attrs(classify)["shardcar.parse_cache"].as_str()));
        for child in &children {
            assert!(child.start_time_unix_nano >= root.start_time_unix_nano, "{} starts inside its parent", child.name);
            assert!(
                child.end_time_unix_nano <= root.end_time_unix_nano + 1_000,
                "{} ends inside its parent",
                child.name
            );
        }
    }

    let (rooted, _) = tree(spans, "m_rooted").unwrap();
    assert!(rooted.parent_span_id.is_empty(), "without a comment the statement starts a trace");
    assert_ne!(hex(&rooted.trace_id), trace_id);
    assert_eq!(attrs(rooted)["db.operation.name"], "INSERT");

    let (failing, _) = tree(spans, "m_failing").unwrap();
    assert_eq!(attrs(failing)["error.type"], "22012");
    assert_eq!(failing.status.as_ref().unwrap().code, STATUS_ERROR);

    let (refused, children) = tree(spans, "m_refused").unwrap();
    assert_eq!(attrs(refused)["error.type"], "0A000");
    assert!(children.iter().all(|s| !s.name.starts_with("execute")), "a refused statement reached no server");
    assert!(collector.service_names.iter().all(|n| n == "shardcar-under-test"), "{:?}", collector.service_names);
    collector.stop().await;
}

#[tokio::test]
async fn spans_also_go_over_otlp_http_as_configured() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("http_traced").await;
    let mut collector = Collector::start_http().await;
    let traces = format!(
        "[telemetry.traces]\nendpoint = \"{}\"\nprotocol = \"http/protobuf\"\nservice_name = \"from-config\"\nexport_interval_ms = 100\n",
        collector.endpoint()
    );
    // The config wins over the environment.
    let env = [("OTEL_SERVICE_NAME", "from-env".to_string()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string())];
    let sc = Sidecar::start_with_env(&fleet.hashed_config(&t, &traces), &env);
    let c = sc.connect().await;
    c.query(&format!("SELECT note AS m_http FROM {t} WHERE customer_id = $1"), &[&5i64]).await.unwrap();
    let spans = collector.until(|s| tree(s, "m_http").is_some_and(|(_, c)| c.len() == 4)).await;
    let (root, children) = tree(spans, "m_http").expect("the statement's span arrived over HTTP");
    assert_eq!(attrs(root)["db.collection.name"], t);
    assert_eq!(children.len(), 4);
    assert_eq!(collector.service_names.first().map(String::as_str), Some("from-config"));
    let traces = || sc.admin_json::<shardcar_api::Overview>("/api/v1/overview").traces;
    assert_eq!(traces().protocol.as_deref(), Some("http/protobuf"));
    // Counted once the exporter has the collector's answer.
    let counted = eventually(Duration::from_secs(5), async || traces().exported_spans_total >= 5).await;
    assert!(counted, "{:?}", traces());
    collector.stop().await;
}

/// Runs `n` statements, each timed; every one must succeed.
async fn timed_loop(c: &tokio_postgres::Client, t: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        c.query(&format!("SELECT note FROM {t} WHERE customer_id = $1"), &[&(i as i64)])
            .await
            .expect("statements keep working");
        times.push(started.elapsed());
    }
    times.sort();
    times
}

#[tokio::test]
async fn a_collector_that_is_stopped_or_hung_costs_statements_nothing() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("untraced").await;
    let mut collector = Collector::start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "200".to_string()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".to_string()),
    ];
    let sc = Sidecar::start_with_env(&fleet.hashed_config(&t, ""), &env);
    let c = sc.connect().await;
    let up = timed_loop(&c, &t, 300).await;
    collector.until(|s| s.len() >= 300).await;

    // The receiver stops: exports fail, the queue fills, spans are dropped.
    collector.stop().await;
    let stopped = timed_loop(&c, &t, 600).await;
    let text = sc.admin_get("/metrics").1;
    let lost = metric(&text, "shardcar_otlp_dropped_spans_total") + metric(&text, "shardcar_otlp_failed_spans_total");
    assert!(lost > 0.0, "spans for the stopped collector are counted as lost:\n{text}");

    // A collector that accepts connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", hung.local_addr().unwrap())),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "200".to_string()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".to_string()),
    ];
    let hung_sc = Sidecar::start_with_env(&fleet.hashed_config(&t, ""), &hung_env);
    let hc = hung_sc.connect().await;
    let against_hung = timed_loop(&hc, &t, 600).await;
    let text = hung_sc.admin_get("/metrics").1;
    assert!(metric(&text, "shardcar_otlp_dropped_spans_total") > 0.0, "a full queue drops spans:\n{text}");
    assert_eq!(metric(&text, "shardcar_otlp_exported_spans_total"), 0.0);

    // Reported, not asserted: machines here are too noisy for timing thresholds.
    let median = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "statement latency, median (p99): collector up {:?} ({:?}), stopped {:?} ({:?}), hung {:?} ({:?})",
        median(&up),
        up[up.len() * 99 / 100],
        median(&stopped),
        stopped[stopped.len() * 99 / 100],
        median(&against_hung),
        against_hung[against_hung.len() * 99 / 100],
    );
    drop(hung);
}
