//! `geo`: rows live in the region their region column names. Each region is
//! a group of shards — those whose `labels.region` in shardcar's config is
//! that region — and within a group, the table's shard key is hashed (as
//! `hash` does). A region without shards uses the fallback region.
//!
//! The region comes from the statement (`region = 'eu'` in WHERE, or the
//! INSERT's region column), else a hint (`region=eu`) or the session
//! (`SET shardcar.region = 'eu'`).
//!
//! Config: `{ column = "region", fallback = "eu" }`.

use shardcar_sdk::{Decision, Facts, Policy, Shards, Value, config, hint_or_session, pghash};

#[derive(serde::Deserialize)]
struct Geo {
    column: String,
    fallback: String,
}

impl Geo {
    /// The regions the statement names.
    fn regions(&self, facts: &Facts) -> Vec<String> {
        let mut regions: Vec<String> = facts
            .predicates()
            .into_iter()
            .filter(|p| p.column == self.column)
            .flat_map(|p| p.values)
            .chain(facts.rows().into_iter().flatten().filter(|(c, _)| *c == self.column).map(|(_, v)| v))
            .filter_map(|v| v.as_text())
            .collect();
        if regions.is_empty() {
            regions.extend(hint_or_session(facts, "region"));
        }
        regions.sort();
        regions.dedup();
        regions
    }

    /// Shard indexes of a region's group (the fallback's if it has none).
    fn group(&self, region: &str, shards: &Shards) -> Result<Vec<u32>, String> {
        let members = |r: &str| -> Vec<u32> {
            (0..shards.len())
                .filter(|&i| shards.list[i].labels.iter().any(|(k, v)| k == "region" && v == r))
                .map(|i| i as u32)
                .collect()
        };
        let group = members(region);
        let group = if group.is_empty() { members(&self.fallback) } else { group };
        if group.is_empty() {
            return Err(format!("no shard has labels.region = {region:?} or the fallback {:?}", self.fallback));
        }
        Ok(group)
    }
}

impl Policy for Geo {
    fn init(json: &str) -> Result<Self, String> {
        config(json)
    }

    fn route(&self, facts: &Facts, keys: &[Value], shards: &Shards) -> Result<Decision, String> {
        let regions = self.regions(facts);
        let [region] = regions.as_slice() else {
            return match regions.len() {
                0 => Ok(Decision::all()),
                _ => Err(format!(
                    "the statement names several regions ({}); send one region at a time",
                    regions.join(", ")
                )),
            };
        };
        let group = self.group(region, shards)?;
        if keys.is_empty() {
            return Ok(Decision::shards(group));
        }
        Ok(Decision::shards(keys.iter().map(|k| group[pghash::partition(k, group.len())])))
    }
}

shardcar_sdk::export_policy!(Geo);
