//! `tenant`: named tenants pinned to dedicated shards, every other tenant
//! hashed over the shared shards (as `hash` does). The tenant is the table's
//! shard key; a statement without one may name it in a hint
//! (`/* shardcar: tenant=acme */`, sqlcommenter `tenant='acme'`) or in the
//! session (`SET shardcar.tenant = 'acme'`).
//!
//! Config: `{ pinned = { acme = "s2" }, shared = ["s0", "s1"] }`.

use std::collections::BTreeMap;

use shardcar_sdk::{Decision, Extractor, Facts, Policy, Shards, Value, config, hint_or_session, pghash};

#[derive(serde::Deserialize)]
struct Tenants {
    #[serde(default)]
    pinned: BTreeMap<String, String>,
    shared: Vec<String>,
}

impl Tenants {
    fn shard_for(&self, tenant: &Value) -> &str {
        let pinned = tenant.as_text().and_then(|t| self.pinned.get(&t));
        pinned.unwrap_or_else(|| &self.shared[pghash::partition(tenant, self.shared.len())])
    }
}

impl Policy for Tenants {
    fn init(json: &str) -> Result<Self, String> {
        let t: Tenants = config(json)?;
        if t.shared.is_empty() {
            return Err("config needs `shared`, the shards for tenants that are not pinned".into());
        }
        Ok(t)
    }

    fn route(&self, _: &Facts, keys: &[Value], shards: &Shards) -> Result<Decision, String> {
        if keys.is_empty() {
            return Ok(Decision::all());
        }
        Ok(Decision::shards(keys.iter().map(|k| shards.index(self.shard_for(k))).collect::<Result<Vec<_>, _>>()?))
    }
}

impl Extractor for Tenants {
    fn extract_key(&self, facts: &Facts) -> Result<Vec<Value>, String> {
        let keys = facts.key_values();
        if !keys.is_empty() {
            return Ok(keys);
        }
        Ok(hint_or_session(facts, "tenant").map(|t| vec![Value::Text(t)]).unwrap_or_default())
    }
}

shardcar_sdk::export_policy!(Tenants, extractor);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_tenants_stay_the_rest_hash() {
        let t = <Tenants as Policy>::init(r#"{"pinned":{"acme":"s2"},"shared":["s0","s1"]}"#).unwrap();
        assert_eq!(t.shard_for(&Value::Text("acme".into())), "s2");
        // As Postgres hash partitions text with MODULUS 2.
        for tenant in ["globex", "initech", "umbrella"] {
            assert_ne!(t.shard_for(&Value::Text(tenant.into())), "s2");
        }
        assert!(<Tenants as Policy>::init(r#"{"shared":[]}"#).is_err());
    }
}
