//! Directory lookups for plugins: `lookup(namespace, key)` answered from a
//! cache that is filled from a Postgres table (deadpool-postgres, the
//! control plane) and re-read after its TTL, so edits show without a restart.
//!
//! Plugin calls are synchronous; a lookup the cache cannot answer is
//! recorded as a miss, fetched asynchronously, and the call is made again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;

use crate::config::{self, Config};
use crate::pool::{Pools, Shard};
use crate::sqlerror::{SqlError, code};

/// Beyond this many cached entries, expired ones are dropped before adding more.
const MAX_ENTRIES: usize = 100_000;

/// A looked-up value (`None`: not in the directory) and when it was read.
type Entry = (Option<String>, Instant);

pub enum Cached {
    Hit(Option<String>),
    Miss,
}

struct Source {
    /// Asked through its primary's control-plane pool, wherever that is now.
    shard: Arc<Shard>,
    query: String,
    ttl: Duration,
}

#[derive(Default)]
pub struct Directory {
    sources: HashMap<String, Source>,
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl Directory {
    /// Each `[[directories]]` source reads through its shard primary's control-plane pool.
    pub fn new(cfg: &Config, pools: &Pools) -> Result<Directory, config::Invalid> {
        let mut sources = HashMap::new();
        for (i, d) in cfg.directories.iter().enumerate() {
            let invalid =
                |message: String| config::Invalid(vec![config::Problem { path: format!("directories[{i}]"), message }]);
            let shard =
                pools.topology.find(&d.shard).ok_or_else(|| invalid(format!("`{}` is not a shard", d.shard)))?;
            let source = Source {
                shard: pools.shard(shard).clone(),
                query: d.query.clone(),
                ttl: Duration::from_millis(d.cache_ttl_ms),
            };
            sources.insert(d.namespace.clone(), source);
        }
        Ok(Directory { sources, entries: Mutex::new(HashMap::new()) })
    }

    /// What the cache knows of `key` in `namespace`, if still fresh.
    pub fn cached(&self, namespace: &str, key: &str) -> Cached {
        let Some(source) = self.sources.get(namespace) else {
            tracing::warn!("a plugin looked up namespace `{namespace}`, which no [[directories]] entry defines");
            return Cached::Hit(None);
        };
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&(namespace.to_string(), key.to_string())) {
            Some((value, at)) if at.elapsed() < source.ttl => Cached::Hit(value.clone()),
            _ => Cached::Miss,
        }
    }

    /// Reads the missed entries from their directory tables into the cache.
    pub async fn fetch(&self, misses: &[(String, String)]) -> Result<(), SqlError> {
        for (namespace, key) in misses {
            let Some(source) = self.sources.get(namespace) else { continue };
            let failed = |e: String| {
                SqlError::new(
                    code::CONNECTION_FAILURE,
                    format!("directory `{namespace}` lookup of `{key}` failed: {e}"),
                )
            };
            let client = source.shard.primary().control.get().await.map_err(|e| failed(e.to_string()))?;
            let row = client
                .query_typed(&source.query, &[(key, Type::TEXT)])
                .await
                .map_err(|e| failed(e.to_string()))?
                .into_iter()
                .next();
            let value = match row {
                Some(row) => row.try_get::<_, Option<String>>(0).map_err(|e| failed(e.to_string()))?,
                None => None,
            };
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if entries.len() >= MAX_ENTRIES {
                entries.retain(|(ns, _), (_, at)| self.sources.get(ns).is_some_and(|s| at.elapsed() < s.ttl));
            }
            entries.insert((namespace.clone(), key.clone()), (value, Instant::now()));
        }
        Ok(())
    }
}
