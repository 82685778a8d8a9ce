//! `directory`: each key's shard is written in a directory table, read
//! through the host's `lookup` (a `[[directories]]` namespace in shardcar's
//! config; shardcar caches entries for `cache_ttl_ms`, so edits to the table
//! show without a restart).
//!
//! Config: `{ namespace = "customers", fallback = "s0" }` (fallback
//! optional: without it, a key missing from the directory is an error).

use shardcar_sdk::{Decision, Facts, Policy, Shards, Value, config, lookup};

#[derive(serde::Deserialize)]
struct Directory {
    namespace: String,
    fallback: Option<String>,
}

impl Directory {
    fn shard_for(&self, key: &Value) -> Result<String, String> {
        let text = key.as_text().ok_or("a NULL key has no directory entry")?;
        match (lookup(&self.namespace, &text), &self.fallback) {
            (Some(shard), _) => Ok(shard),
            (None, Some(fallback)) => Ok(fallback.clone()),
            (None, None) => Err(format!("key {text} is not in directory `{}`", self.namespace)),
        }
    }
}

impl Policy for Directory {
    fn init(json: &str) -> Result<Self, String> {
        config(json)
    }

    fn route(&self, _: &Facts, keys: &[Value], shards: &Shards) -> Result<Decision, String> {
        if keys.is_empty() {
            return Ok(Decision::all());
        }
        let names = keys.iter().map(|k| self.shard_for(k)).collect::<Result<Vec<_>, _>>()?;
        Ok(Decision::shards(names.iter().map(|n| shards.index(n)).collect::<Result<Vec<_>, _>>()?))
    }
}

shardcar_sdk::export_policy!(Directory);
