//! The HTTP admin listener (hyper): probes, Prometheus `/metrics`, and the
//! JSON API under `/api/v1/` (types in the `shardcar-api` crate), with a
//! Server-Sent Events stream of snapshots.
//!
//! `/healthz`, `/readyz` and the dashboard's files are always open
//! (orchestrators probe the first two; the page holds no data); with
//! `listen.admin_token` set, everything else wants the token.

mod dashboard;
mod stream;
pub mod views;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use shardcar_api::ApiError;
use tokio::net::TcpListener;

use crate::shared::{Shared, Stopping};

type Body = BoxBody<Bytes, Infallible>;

/// Time a client has to send a request's head.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts admin connections until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, &req).await) }
            });
            // A client that does not finish its request head in time is cut
            // off; without a deadline, half-sent requests would pile up.
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("admin connection: {e}");
            }
        });
    }
}

async fn route(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    if req.method() == Method::GET
        && let Some(page) = dashboard::asset(path)
    {
        return page;
    }
    let open = matches!(path, "/healthz" | "/readyz");
    if !open && let Some(denied) = check_token(shared, req) {
        return denied;
    }
    if req.method() == Method::POST
        && let Some(policy) = path.strip_prefix("/api/v1/plugins/").and_then(|p| p.strip_suffix("/allow-moves"))
    {
        return allow_moves(shared, policy, query);
    }
    if req.method() == Method::POST
        && let Some(policy) = path.strip_prefix("/api/v1/plugins/").and_then(|p| p.strip_suffix("/promote"))
    {
        let Some(digest) = param(query, "digest").filter(|d| !d.is_empty()) else {
            return error(StatusCode::BAD_REQUEST, "name the shadow version promoted: ?digest=<its digest>".into());
        };
        return match crate::policy::reload::promote(&shared.router, policy, &digest).await {
            Ok(serving) => json(StatusCode::OK, &serde_json::json!({"policy": policy, "serving": serving})),
            Err(e) => error(StatusCode::CONFLICT, e),
        };
    }
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, format!("{path} answers GET only"));
    }
    match path {
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => readiness(shared),
        "/metrics" => metrics(shared),
        "/api/v1/overview" => json(StatusCode::OK, &views::overview(shared)),
        "/api/v1/shards" => match param(query, "series").map(|s| s.parse::<usize>()) {
            Some(Err(_)) => error(StatusCode::BAD_REQUEST, "series must be a number of seconds".into()),
            Some(Ok(n)) => json(StatusCode::OK, &views::shards(shared, n)),
            None => json(StatusCode::OK, &views::shards(shared, crate::telemetry::hotspots::SERIES_SECONDS)),
        },
        "/api/v1/pools" => json(StatusCode::OK, &shardcar_api::Pools { pools: views::pools(shared) }),
        "/api/v1/hotkeys" => hot_keys(shared, query),
        "/api/v1/plugins" => json(StatusCode::OK, &views::plugins(shared)),
        "/api/v1/errors" => json(StatusCode::OK, &views::errors(shared)),
        "/api/v1/events" => {
            json(StatusCode::OK, &shardcar_api::Events { events: shared.telemetry.events.recent(usize::MAX) })
        }
        "/api/v1/explain" => explain(shared, query).await,
        "/api/v1/fleet" => match &shared.config.fleet.prometheus_url {
            None => json(StatusCode::OK, &crate::fleet::none()),
            Some(url) => match crate::fleet::read(url, &shared.config.fleet.selector).await {
                Ok(fleet) => json(StatusCode::OK, &fleet),
                Err(e) => {
                    error(StatusCode::BAD_GATEWAY, format!("cannot read the fleet from Prometheus at {url}: {e}"))
                }
            },
        },
        "/api/v1/stream" => stream::snapshots(shared.clone()),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// `None` when the request may pass.
fn check_token(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Body>> {
    let expected = shared.config.listen.admin_token.as_ref()?;
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    // Browsers' EventSource cannot send headers: the token may come as a parameter.
    let given = bearer.or_else(|| param(req.uri().query().unwrap_or(""), "access_token"));
    // Digests are compared, so the comparison's timing says nothing about the token.
    let digest = |s: &str| Sha256::digest(s.as_bytes());
    if given.as_deref().is_some_and(|g| digest(g) == digest(expected)) {
        return None;
    }
    let mut resp =
        error(StatusCode::UNAUTHORIZED, "this endpoint wants `Authorization: Bearer <listen.admin_token>`".into());
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
}

/// Ready when every shard's primary has answered its latest health probe.
/// Whether this sidecar can serve: its config and plugins are loaded (it
/// would not have started otherwise) and it is not shutting down. Shard
/// health is reported, not required: one shard down must not take every
/// application pod out of its Service — clients of the other shards would
/// lose a sidecar that serves them, and a partial outage would become a
/// total one.
fn readiness(shared: &Shared) -> Response<Body> {
    let unreachable: Vec<_> = shared
        .pools
        .shards
        .iter()
        .filter(|s| !s.has_primary())
        .map(|s| {
            serde_json::json!({
                "shard": shared.pools.topology.name(s.id),
                "primary": s.primary().endpoint.address(),
                "error": s.primary().health.last_error(),
            })
        })
        .collect();
    if *shared.shutdown.borrow() != Stopping::No {
        let body = serde_json::json!({"status": "shutting down", "unreachable_primaries": unreachable});
        return json(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    json(StatusCode::OK, &serde_json::json!({"status": "ready", "unreachable_primaries": unreachable}))
}

fn metrics(shared: &Shared) -> Response<Body> {
    shared.telemetry.refresh(&shared.pools, &shared.facts);
    views::export_for_fleet(shared);
    let mut resp = Response::new(full(shared.telemetry.metrics.render()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
    resp
}

/// `?table=...&limit=N`: one table's hottest keys; without `table`, every table's.
fn hot_keys(shared: &Shared, query: &str) -> Response<Body> {
    let limit = match param(query, "limit").map(|l| l.parse::<usize>()) {
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be a positive number".into()),
        None => None,
    };
    let hotspots = &shared.telemetry.hotspots;
    match param(query, "table") {
        Some(table) => match hotspots.hot_keys(&table, limit) {
            Some(keys) => json(StatusCode::OK, &keys),
            None => error(
                StatusCode::NOT_FOUND,
                format!(
                    "`{table}` is not a sharded table; sharded tables: {}",
                    hotspots.table_names().collect::<Vec<_>>().join(", ")
                ),
            ),
        },
        None => {
            let tables = hotspots.table_names().filter_map(|t| hotspots.hot_keys(t, limit)).collect();
            json(StatusCode::OK, &shardcar_api::HotTables { tables })
        }
    }
}

/// `?sql=...&param=...&param=...`: where the statement would go, and why.
async fn explain(shared: &Shared, query: &str) -> Response<Body> {
    let mut sql = None;
    let mut params = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "sql" => sql = Some(v.into_owned()),
            "param" => params.push(Some(v.into_owned())),
            _ => {}
        }
    }
    let Some(sql) = sql else {
        return error(StatusCode::BAD_REQUEST, "give the statement as ?sql=...".into());
    };
    let facts = shared.facts.get(&sql);
    let explanation =
        crate::route::explain::explain(&shared.planner, facts, params, shared.config.routing.read_replicas).await;
    json(StatusCode::OK, &explanation)
}

/// `POST /api/v1/plugins/<policy>/allow-moves?digest=<digest>`: the
/// operator allows that one version of the policy's plugin to go live
/// although it moves rows (the file is checked again at the next tick). The
/// digest ties the permission to the build whose report was read.
fn allow_moves(shared: &Shared, policy: &str, query: &str) -> Response<Body> {
    let Some(slot) = shared.router.policies.iter().find(|s| s.name == policy) else {
        return error(StatusCode::NOT_FOUND, format!("no policy named {policy}"));
    };
    let Some(digest) = param(query, "digest").filter(|d| !d.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "name the version allowed: ?digest=<its digest>".into());
    };
    tracing::warn!("policy {policy}: the operator allows version {digest} to move rows");
    *slot.moves_allowed.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest.clone());
    slot.recheck.store(true, std::sync::atomic::Ordering::Relaxed);
    json(StatusCode::ACCEPTED, &serde_json::json!({"policy": policy, "allowed": digest}))
}

fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let (status, text) = match serde_json::to_string(body) {
        Ok(text) => (status, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{{\"error\":\"cannot encode the answer: {e}\"}}")),
    };
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    json(status, &ApiError { error: message })
}
