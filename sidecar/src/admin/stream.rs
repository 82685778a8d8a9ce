//! `GET /api/v1/stream`: a snapshot every second as Server-Sent Events
//! (event `snapshot`, data: JSON `shardcar_api::Snapshot`), sent right after
//! each telemetry tick so it carries that second's figures.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::{Body, views};
use crate::shared::Shared;

pub fn snapshots(shared: Arc<Shared>) -> Response<Body> {
    let ticks = shared.telemetry.hotspots.ticks.subscribe();
    let events = futures_util::stream::unfold((shared, ticks, true), |(shared, mut ticks, first)| async move {
        // The first snapshot goes out at once; then one per tick.
        if !first && ticks.changed().await.is_err() {
            return None;
        }
        let event = match serde_json::to_string(&views::snapshot(&shared)) {
            Ok(json) => format!("event: snapshot\ndata: {json}\n\n"),
            Err(e) => format!("event: error\ndata: {{\"error\":\"cannot encode a snapshot: {e}\"}}\n\n"),
        };
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), (shared, ticks, false)))
    });
    let mut resp = Response::new(StreamBody::new(events).boxed());
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
