//! The HTTP admin listener (hyper): liveness and readiness probes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::server::Shared;

/// Accepts admin connections until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, &req).await) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!("admin connection: {e}");
            }
        });
    }
}

async fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => respond(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readiness(shared),
        (&Method::GET, "/api/v1/plugins") => plugins(shared),
        (&Method::GET, "/api/v1/explain") => explain(shared, req.uri().query().unwrap_or("")).await,
        (_, "/healthz" | "/readyz") => respond(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "use GET"})),
        (_, path) => respond(StatusCode::NOT_FOUND, json!({"error": format!("no such endpoint: {path}")})),
    }
}

/// Ready when every shard's primary has answered its latest health probe.
fn readiness(shared: &Shared) -> Response<Full<Bytes>> {
    let waiting: Vec<_> = shared
        .pools
        .shards
        .iter()
        .filter(|s| !s.primary.health.is_confirmed_up())
        .map(|s| {
            json!({
                "shard": s.name,
                "primary": s.primary.endpoint.address(),
                "error": s.primary.health.last_error(),
            })
        })
        .collect();
    if waiting.is_empty() {
        respond(StatusCode::OK, json!({"status": "ready"}))
    } else {
        respond(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "not ready", "unreachable_primaries": waiting}))
    }
}

/// `?sql=...&param=...&param=...`: where the statement would go, and why.
async fn explain(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
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
        return respond(StatusCode::BAD_REQUEST, json!({"error": "give the statement as ?sql=..."}));
    };
    let facts = shared.facts.get(&sql);
    let explanation =
        crate::policy::explain::explain(&shared.router, facts, params, shared.config.routing.read_replicas).await;
    match serde_json::to_value(explanation) {
        Ok(body) => respond(StatusCode::OK, body),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e.to_string()})),
    }
}

/// Each policy's plugin: what serves now, and why a newer file was refused.
fn plugins(shared: &Shared) -> Response<Full<Bytes>> {
    let list: Vec<_> = shared
        .router
        .policies
        .iter()
        .map(|slot| {
            let plugin = slot.plugin.load();
            let source = match &slot.source {
                crate::config::PluginSource::Builtin(name) => format!("builtin:{name}"),
                crate::config::PluginSource::File(path) => path.display().to_string(),
            };
            json!({
                "policy": slot.name,
                "source": source,
                "plugin": plugin.info.name,
                "version": plugin.info.version,
                "digest": plugin.digest,
                "calls": plugin.calls.load(std::sync::atomic::Ordering::Relaxed),
                "errors": plugin.errors.load(std::sync::atomic::Ordering::Relaxed),
                "last_error": slot.last_error.lock().ok().and_then(|e| e.clone()),
            })
        })
        .collect();
    respond(StatusCode::OK, json!({ "plugins": list }))
}

fn respond(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}
