//! The fleet view: every sidecar's metrics added up, read back from the
//! Prometheus server that scrapes them (its HTTP API, PromQL), so that any
//! one sidecar's dashboard shows the whole fleet's load, hot keys and
//! sidecars.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use shardcar_api as api;

/// How long one question to Prometheus may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Hot keys shown per table.
const TOP_KEYS: usize = 10;

/// Where Prometheus's HTTP API is: `http://host:port[/prefix]`.
pub struct Endpoint {
    authority: String,
    prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// is supported".into());
        }
        let authority = uri.authority().ok_or("no host")?.to_string();
        Ok(Endpoint { authority, prefix: uri.path().trim_end_matches('/').to_string() })
    }

    /// One instant query: each series' labels and value.
    async fn query(&self, promql: &str) -> Result<Vec<(HashMap<String, String>, f64)>, String> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let path = format!("{}/api/v1/query?query={q}", self.prefix);
        let body = tokio::time::timeout(TIMEOUT, self.get(&path)).await.map_err(|_| "timed out".to_string())??;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))?;
        if answer.status != "success" {
            return Err(answer.error.unwrap_or_else(|| answer.status.clone()));
        }
        Ok(answer
            .data
            .map(|d| d.result)
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.metric, s.value.1.parse().unwrap_or(f64::NAN)))
            .collect())
    }

    async fn get(&self, path: &str) -> Result<Bytes, String> {
        let stream = tokio::net::TcpStream::connect(&self.authority).await.map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = send.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() && !status.is_client_error() {
            return Err(format!("HTTP {status}"));
        }
        Ok(body)
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    error: Option<String>,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: HashMap<String, String>,
    value: (f64, String),
}

/// What `/api/v1/fleet` answers without `[fleet] prometheus_url`.
pub fn none() -> api::Fleet {
    api::Fleet { prometheus: None, sidecars: Vec::new(), shards: Vec::new(), tables: Vec::new() }
}

/// The fleet as the Prometheus at `url` sees it; `selector`: label matchers
/// (`job="shardcar"`) that pick this fleet's series.
pub async fn read(url: &str, selector: &str) -> Result<api::Fleet, String> {
    let endpoint = Endpoint::parse(url)?;
    let of = |metric: &str| format!("{metric}{{{selector}}}");
    let queries = [
        of("shardcar_build_info"),
        of("shardcar_plugin_info"),
        format!("sum by (shard) ({})", of("shardcar_statements_total")),
        format!("sum by (shard) (rate({}[1m]))", of("shardcar_statements_total")),
        format!("sum by (shard) (rate({}[1m]))", of("shardcar_statement_errors_total")),
        of("shardcar_hot_key_statements"),
    ];
    let answers = futures_util::future::try_join_all(queries.iter().map(|q| endpoint.query(q))).await?;
    let [info, plugins, totals, rates, errors, keys] = &answers[..] else {
        return Err("Prometheus answered fewer questions than it was asked".into());
    };
    Ok(api::Fleet {
        prometheus: Some(url.to_string()),
        sidecars: sidecars(info, plugins),
        shards: shards(totals, rates, errors),
        tables: tables(keys),
    })
}

type Samples = [(HashMap<String, String>, f64)];

fn label<'a>(labels: &'a HashMap<String, String>, name: &str) -> &'a str {
    labels.get(name).map_or("", String::as_str)
}

/// Each sidecar with the plugins it serves; behind where another sidecar
/// loaded a newer version of a policy.
fn sidecars(info: &Samples, plugins: &Samples) -> Vec<api::FleetSidecar> {
    let mut newest: HashMap<&str, (&str, f64)> = HashMap::new();
    for (labels, loaded) in plugins {
        let entry = newest.entry(label(labels, "policy")).or_insert((label(labels, "plugin"), *loaded));
        if *loaded > entry.1 {
            *entry = (label(labels, "plugin"), *loaded);
        }
    }
    let mut out: Vec<api::FleetSidecar> = info
        .iter()
        .map(|(labels, _)| {
            let instance = label(labels, "instance");
            let mut serving: Vec<(String, String)> = plugins
                .iter()
                .filter(|(l, _)| label(l, "instance") == instance)
                .map(|(l, _)| (label(l, "policy").to_string(), label(l, "plugin").to_string()))
                .collect();
            serving.sort();
            let behind = serving
                .iter()
                .filter(|(policy, plugin)| newest.get(policy.as_str()).is_some_and(|(n, _)| n != plugin))
                .map(|(policy, _)| policy.clone())
                .collect();
            api::FleetSidecar {
                instance: instance.to_string(),
                version: label(labels, "version").to_string(),
                plugins: serving,
                behind,
            }
        })
        .collect();
    out.sort_by(|a, b| a.instance.cmp(&b.instance));
    out
}

fn shards(totals: &Samples, rates: &Samples, errors: &Samples) -> Vec<api::FleetShard> {
    let by_shard = |samples: &Samples| -> HashMap<String, f64> {
        samples.iter().map(|(l, v)| (label(l, "shard").to_string(), *v)).collect()
    };
    let (rates, errors) = (by_shard(rates), by_shard(errors));
    let mut out: Vec<api::FleetShard> = totals
        .iter()
        .map(|(l, total)| {
            let shard = label(l, "shard").to_string();
            api::FleetShard {
                statements_total: *total,
                statements_per_s: rates.get(&shard).copied().unwrap_or_default(),
                errors_per_s: errors.get(&shard).copied().unwrap_or_default(),
                shard,
            }
        })
        .filter(|s| !s.shard.is_empty())
        .collect();
    out.sort_by(|a, b| a.shard.cmp(&b.shard));
    out
}

/// Per table, per (key, shard): statements added up, and the sidecars that counted it.
type Merged<'a> = BTreeMap<&'a str, HashMap<(&'a str, &'a str), (f64, u64)>>;

/// Per table, each sidecar's top keys added up, hottest first.
fn tables(keys: &Samples) -> Vec<api::FleetTable> {
    let mut merged: Merged<'_> = BTreeMap::new();
    for (l, n) in keys {
        let key = merged.entry(label(l, "table")).or_default().entry((label(l, "key"), label(l, "shard"))).or_default();
        key.0 += n;
        key.1 += 1;
    }
    merged
        .into_iter()
        .map(|(table, keys)| {
            let mut keys: Vec<api::FleetKey> = keys
                .into_iter()
                .map(|((key, shard), (statements, sidecars))| api::FleetKey {
                    key: key.to_string(),
                    shard: shard.to_string(),
                    statements,
                    sidecars,
                })
                .collect();
            keys.sort_by(|a, b| b.statements.total_cmp(&a.statements).then_with(|| a.key.cmp(&b.key)));
            keys.truncate(TOP_KEYS);
            api::FleetTable { table: table.to_string(), keys }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pairs: &[(&str, &str)], v: f64) -> (HashMap<String, String>, f64) {
        (pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), v)
    }

    #[test]
    fn keys_add_up_across_sidecars_and_an_older_plugin_is_flagged() {
        let keys = [
            sample(&[("table", "t"), ("key", "1"), ("shard", "s0"), ("instance", "a")], 100.0),
            sample(&[("table", "t"), ("key", "2"), ("shard", "s1"), ("instance", "a")], 60.0),
            sample(&[("table", "t"), ("key", "2"), ("shard", "s1"), ("instance", "b")], 60.0),
        ];
        let t = &tables(&keys)[0];
        assert_eq!((t.keys[0].key.as_str(), t.keys[0].statements, t.keys[0].sidecars), ("2", 120.0, 2));
        let info = [sample(&[("instance", "a"), ("version", "0.1.0")], 1.0), sample(&[("instance", "b")], 1.0)];
        let plugins = [
            sample(&[("instance", "a"), ("policy", "p"), ("plugin", "hash@1 (aa)")], 100.0),
            sample(&[("instance", "b"), ("policy", "p"), ("plugin", "hash@2 (bb)")], 200.0),
        ];
        let s = sidecars(&info, &plugins);
        assert_eq!((s[0].behind.clone(), s[1].behind.clone()), (vec!["p".to_string()], vec![]));
        assert!(Endpoint::parse("https://x:9090").is_err() && Endpoint::parse("http://x:9090/prom").is_ok());
    }
}
