//! The admin API against real traffic: every endpoint parses as its shared
//! type (`shardcar-api`) and reports what the traffic did; Prometheus
//! `/metrics` carries the same figures; the live stream pushes snapshots;
//! the bearer token guards everything but the probes.

use std::io::{Read, Write};
use std::time::Duration;

use shardcar_api as api;

use crate::harness::{Fleet, Sidecar, direct, eventually};

const TOKEN: &str = "test-token-0123456789";

fn config(fleet: &Fleet, t: &str) -> String {
    fleet
        .hashed_config(t, "[telemetry]\nshow_keys = false\n")
        .replace("[listen]\n", &format!("[listen]\nadmin_token = \"{TOKEN}\"\n"))
        .replace("read_replicas = false", "read_replicas = true")
}

/// GET with the token; the body parsed as the endpoint's type.
fn get<T: serde::de::DeserializeOwned>(sc: &Sidecar, path: &str) -> T {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = sc.admin_request("GET", path, &[("Authorization", &auth)]);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}\n{body}"))
}

/// The first `n` events of the live stream.
fn stream(sc: &Sidecar, n: usize) -> Vec<api::Snapshot> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", sc.admin_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /api/v1/stream?access_token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 65536];
    let mut events = Vec::new();
    while events.len() < n {
        let read = s.read(&mut buf).expect("the stream keeps sending");
        assert!(read > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..read]));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{text}");
        events = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|json| serde_json::from_str::<api::Snapshot>(json).ok())
            .collect();
    }
    events
}

#[tokio::test]
async fn every_endpoint_reports_real_traffic() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("observed").await;
    let replica = direct(&fleet.s0_replica).await;
    let replicated = async || replica.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.is_ok();
    assert!(eventually(Duration::from_secs(10), replicated).await, "the table reached s0's replica");
    let sc = Sidecar::start(&config(fleet, &t));
    let c = sc.connect().await;
    let insert = c.prepare(&format!("INSERT INTO {t} VALUES ($1, 'n')")).await.unwrap();
    for key in 1..=40i64 {
        c.execute(&insert, &[&key]).await.unwrap();
    }
    // Plain reads of a session that wrote nothing: s0's go to its replica
    // (the writer's own would wait for the replica to replay its writes).
    let reader = sc.connect().await;
    for key in 1..=40i64 {
        reader.query(&format!("SELECT note FROM {t} WHERE customer_id = $1"), &[&key]).await.unwrap();
    }
    c.batch_execute("SELECT 1/0").await.unwrap_err();
    c.batch_execute(&format!("SELECT array_agg(note) FROM {t}")).await.unwrap_err();

    // Probes are open; everything else wants the token.
    assert_eq!(sc.admin_get("/healthz").0, 200);
    assert!(eventually(Duration::from_secs(10), async || sc.admin_get("/readyz").0 == 200).await);
    for path in ["/metrics", "/api/v1/overview", "/api/v1/stream"] {
        let (status, head, body) = sc.admin_request("GET", path, &[]);
        assert_eq!(status, 401, "{path}");
        assert!(head.contains("www-authenticate: Bearer"), "{head}");
        serde_json::from_str::<api::ApiError>(&body).unwrap();
        let (status, _, _) = sc.admin_request("GET", path, &[("Authorization", "Bearer wrong-token-0123456")]);
        assert_eq!(status, 401, "{path}");
    }

    // Let two telemetry ticks pass, so windows and series hold the traffic.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let overview: api::Overview = get(&sc, "/api/v1/overview");
    assert!(overview.ready);
    assert_eq!(overview.shards, 2);
    assert!(overview.clients.connected >= 1 && overview.clients.accepted_total >= 1, "{overview:?}");
    assert!(overview.load.statements_total >= 81, "{:?}", overview.load);
    assert!(overview.load.errors_total >= 1, "{:?}", overview.load);
    assert!(overview.load.p50_ms.is_some() && overview.load.statements_per_s > 0.0, "{:?}", overview.load);
    assert!(overview.parse_cache.hits_total > 0 && overview.parse_cache.entries > 0, "{:?}", overview.parse_cache);
    assert!(overview.rejected_total >= 1, "the statement that spans shards was refused");
    assert!(!overview.traces.enabled);
    assert!(overview.bytes.from_clients_total > 0 && overview.bytes.to_clients_total > 0);
    let shares: u64 = overview.skew.shards.iter().map(|s| s.statements).sum();
    assert!(shares >= 81 && overview.skew.ratio >= 1.0, "{:?}", overview.skew);

    let shards: api::Shards = get(&sc, "/api/v1/shards");
    assert_eq!(shards.shards.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["s0", "s1"]);
    let s0 = &shards.shards[0];
    assert!(s0.healthy);
    assert_eq!(s0.servers.iter().map(|s| s.role.as_str()).collect::<Vec<_>>(), ["primary", "replica"]);
    assert_eq!(s0.servers[1].address, format!("127.0.0.1:{}", fleet.s0_replica.port));
    assert!(s0.servers[1].lag.is_some(), "the replica's lag is probed: {:?}", s0.servers[1]);
    assert!(s0.servers[0].lag.is_none());
    let in_series: u64 = shards.shards.iter().flat_map(|s| &s.series).map(|p| p.statements).sum();
    assert!(in_series >= 81, "the per-second series holds the traffic: {in_series}");
    assert!(shards.shards.iter().all(|s| s.load.statements_total > 0), "both shards ran statements");
    let short: api::Shards = get(&sc, "/api/v1/shards?series=1");
    assert!(short.shards.iter().all(|s| s.series.len() <= 1));

    let pools: api::Pools = get(&sc, "/api/v1/pools");
    assert_eq!(pools.pools.len(), 3, "s0 primary, s0 replica, s1 primary");
    let replica = pools.pools.iter().find(|p| p.role == "replica").unwrap();
    assert!(replica.checkouts_total > 0 && replica.size > 0, "reads used the replica's pool: {replica:?}");
    assert!(pools.pools.iter().all(|p| p.max_size == 4 && p.in_use + p.idle == p.size), "{pools:?}");

    let plugins: api::Plugins = get(&sc, "/api/v1/plugins");
    let hash = &plugins.plugins[0];
    assert_eq!((hash.policy.as_str(), hash.plugin.as_str(), hash.status.as_str()), ("by-customer", "hash", "ok"));
    assert!(hash.calls_total >= 80 && hash.p99_us.is_some(), "{hash:?}");

    let hot: api::HotKeys = get(&sc, &format!("/api/v1/hotkeys?table={t}&limit=5"));
    assert_eq!((hot.key_column.as_str(), hot.policy.as_str(), hot.show_keys), ("customer_id", "by-customer", false));
    assert_eq!(hot.window.keys.len(), 5);
    assert!(hot.lifetime.statements >= 80, "{hot:?}");
    assert_eq!(hot.window.seconds, Some(10));
    for key in hot.window.keys.iter().chain(&hot.lifetime.keys) {
        assert!(key.key.starts_with('#') && key.key.len() == 17, "keys are hashed when show_keys = false: {key:?}");
        assert!(key.count >= 2 && key.lower_bound <= key.count && key.count <= key.upper_bound, "{key:?}");
    }
    let all: api::HotTables = get(&sc, "/api/v1/hotkeys");
    assert_eq!(all.tables.len(), 1);

    let explain: api::Explanation =
        get(&sc, &format!("/api/v1/explain?sql=SELECT+1+FROM+{t}+WHERE+customer_id+%3D+$1&param=3"));
    assert_eq!(explain.statements[0].routed_by, "policy by-customer");

    // Errors are JSON with a message.
    let auth = format!("Bearer {TOKEN}");
    for (path, status) in [
        ("/api/v1/nope", 404),
        ("/api/v1/hotkeys?table=nope", 404),
        ("/api/v1/hotkeys?limit=0", 400),
        ("/api/v1/shards?series=x", 400),
        ("/api/v1/explain", 400),
    ] {
        let (got, _, body) = sc.admin_request("GET", path, &[("Authorization", &auth)]);
        assert_eq!(got, status, "{path}: {body}");
        let e: api::ApiError = serde_json::from_str(&body).unwrap();
        assert!(!e.error.is_empty());
    }
    assert_eq!(sc.admin_request("POST", "/api/v1/overview", &[("Authorization", &auth)]).0, 405);

    // Prometheus text: the same counters.
    let (status, head, metrics) = sc.admin_request("GET", "/metrics", &[("Authorization", &auth)]);
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for name in [
        "shardcar_statements_total{kind=\"read\",role=\"replica\"",
        "shardcar_statements_total{kind=\"write\",role=\"primary\"",
        "shardcar_statement_errors_total{",
        "shardcar_statement_duration_seconds_bucket{",
        "shardcar_pool_connections{",
        "shardcar_pool_checkout_wait_seconds_count{",
        "shardcar_pool_waiting_sessions{",
        "shardcar_plugin_calls_total{plugin=\"hash\",policy=\"by-customer\"",
        "shardcar_plugin_call_duration_seconds_bucket{",
        "shardcar_parse_cache_hits_total ",
        "shardcar_parse_cache_misses_total ",
        "shardcar_client_received_bytes_total ",
        "shardcar_client_sent_bytes_total ",
        "shardcar_client_connections ",
        "shardcar_otlp_dropped_spans_total ",
        "shardcar_rejected_statements_total{sqlstate=\"0A000\"} 1",
        "shardcar_replica_lag_bytes{",
        "shardcar_server_up{",
        "shardcar_skew_ratio{",
        &format!("shardcar_table_statements_total{{shard=\"s0\",table=\"{t}\"}}"),
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    let statements: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("shardcar_statements_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(statements as u64, overview.load.statements_total, "one registry feeds both");

    // The live stream: a snapshot at once, then one per second.
    let events = stream(&sc, 2);
    assert_eq!(events[0].shards.len(), 2);
    assert!(events[1].at_unix_ms > events[0].at_unix_ms);
    assert!(events[1].shards.iter().all(|s| s.series.len() <= 1));
    assert_eq!(events[1].tables[0].table, t);
    assert!(events[1].overview.load.statements_total >= 81);
}

#[test]
fn a_request_head_not_sent_in_time_is_cut_off() {
    let sc = Sidecar::start(&Fleet::shared().config(2));
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", sc.admin_port)).unwrap();
    stalled.write_all(b"GET /api/v1/overview HTTP/1.1\r\nHost: x\r\n").unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    let read = stalled.read_to_end(&mut rest);
    assert!(read.is_ok(), "closed by the admin listener (10 s header timeout), not by our 30 s wait: {read:?}");
    assert_eq!(sc.admin_get("/healthz").0, 200, "the listener serves others");
}
