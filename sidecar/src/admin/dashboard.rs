//! The dashboard's static files, built by `build.rs` from `dashboard/` and
//! embedded, so the binary serves them with nothing beside it.

use hyper::Response;
use hyper::header::{self, HeaderValue};

use super::{Body, full};

include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// Only this origin; WebAssembly may compile; no inline scripts. The page
/// fetches nothing from elsewhere, and the browser enforces that.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The file at `path`, if the dashboard has one.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let path = if path == "/index.html" { "/" } else { path };
    let (_, kind, bytes) = DASHBOARD.iter().find(|(p, _, _)| *p == path)?;
    let mut resp = Response::new(full(*bytes));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Assets change with the binary: revalidate rather than serve a stale app.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    Some(resp)
}
