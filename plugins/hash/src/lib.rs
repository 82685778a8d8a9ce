//! `hash`: a shard key goes to the shard Postgres's own hash partitioning
//! would pick — the remainder of a `PARTITION BY HASH` table with
//! `MODULUS <number of shards>` (see `shardcar_sdk::pghash`).
//!
//! Config: `{ shards = ["s0", "s1", ...] }`, in remainder order.

use shardcar_sdk::{Decision, Facts, Policy, Shards, Value, config, pghash};

#[derive(serde::Deserialize)]
struct Hash {
    shards: Vec<String>,
}

impl Policy for Hash {
    fn init(json: &str) -> Result<Self, String> {
        let hash: Hash = config(json)?;
        if hash.shards.is_empty() {
            return Err("config needs `shards`, a non-empty list of shard names".into());
        }
        Ok(hash)
    }

    fn route(&self, _: &Facts, keys: &[Value], shards: &Shards) -> Result<Decision, String> {
        if keys.is_empty() {
            // No key in the statement: it concerns every shard of this policy.
            return Ok(Decision::shards(self.shards.iter().map(|s| shards.index(s)).collect::<Result<Vec<_>, _>>()?));
        }
        let targets = keys.iter().map(|k| shards.index(&self.shards[pghash::partition(k, self.shards.len())]));
        Ok(Decision::shards(targets.collect::<Result<Vec<_>, _>>()?))
    }
}

shardcar_sdk::export_policy!(Hash);
