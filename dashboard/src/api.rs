//! The admin API as the dashboard reads it: relative URLs (so the page works
//! behind a port-forward or a path prefix), with the page's own
//! `access_token` carried along when the sidecar wants one.

use gloo_net::http::Request;
use serde::de::DeserializeOwned;
use shardcar_api::ApiError;

/// `api/v1/<path>`, plus the page's access token if it has one.
pub fn url(path: &str, query: &[(&str, &str)]) -> String {
    let params = web_sys::UrlSearchParams::new().expect("URLSearchParams");
    for (k, v) in query {
        params.append(k, v);
    }
    if let Some(token) = page_token() {
        params.append("access_token", &token);
    }
    let query: String = params.to_string().into();
    if query.is_empty() { format!("api/v1/{path}") } else { format!("api/v1/{path}?{query}") }
}

fn page_token() -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search).ok()?.get("access_token")
}

/// GETs and decodes one endpoint; the error says what failed, in words.
pub async fn get<T: DeserializeOwned>(path: &str, query: &[(&str, &str)]) -> Result<T, String> {
    let url = url(path, query);
    let response = Request::get(&url).send().await.map_err(|e| format!("cannot reach the sidecar: {e}"))?;
    if !response.ok() {
        let status = response.status();
        let message = match response.json::<ApiError>().await {
            Ok(e) => e.error,
            Err(_) => response.status_text(),
        };
        return Err(format!("{path}: HTTP {status}: {message}"));
    }
    response.json::<T>().await.map_err(|e| format!("{path}: unexpected answer: {e}"))
}
