//! `consistent-hash`: a hash ring with virtual nodes. Adding a shard moves
//! about 1/(n+1) of the keys (to the new shard), and removing one moves only
//! its own keys; plain `hash` moves most keys when the shard count changes.
//!
//! Config: `{ shards = ["s0", "s1", ...], vnodes = 256 }` (vnodes optional).

use shardcar_sdk::{Decision, Facts, Policy, Shards, Value, config, pghash};

#[derive(serde::Deserialize)]
struct Config {
    shards: Vec<String>,
    #[serde(default = "default_vnodes")]
    vnodes: u32,
}

fn default_vnodes() -> u32 {
    256
}

struct Ring {
    shards: Vec<String>,
    /// (point on the ring, index into `shards`), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn new(shards: Vec<String>, vnodes: u32) -> Ring {
        let mut points: Vec<(u64, usize)> = shards
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                (0..vnodes).map(move |v| (pghash::bytes_extended(format!("{name}#{v}").as_bytes(), 0), i))
            })
            .collect();
        points.sort_unstable();
        Ring { shards, points }
    }

    /// The shard owning the first point at or after the key's hash.
    fn shard_for(&self, key: &Value) -> &str {
        let h = pghash::extended(key, pghash::PARTITION_SEED);
        let at = self.points.partition_point(|(p, _)| *p < h) % self.points.len();
        &self.shards[self.points[at].1]
    }
}

impl Policy for Ring {
    fn init(json: &str) -> Result<Self, String> {
        let c: Config = config(json)?;
        if c.shards.is_empty() || c.vnodes == 0 {
            return Err("config needs a non-empty `shards` list and vnodes > 0".into());
        }
        Ok(Ring::new(c.shards, c.vnodes))
    }

    fn route(&self, _: &Facts, keys: &[Value], shards: &Shards) -> Result<Decision, String> {
        let names: Vec<&str> = match keys {
            [] => self.shards.iter().map(String::as_str).collect(),
            keys => keys.iter().map(|k| self.shard_for(k)).collect(),
        };
        Ok(Decision::shards(names.into_iter().map(|n| shards.index(n)).collect::<Result<Vec<_>, _>>()?))
    }
}

shardcar_sdk::export_policy!(Ring);

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(n: usize) -> Ring {
        Ring::new((0..n).map(|i| format!("s{i}")).collect(), 256)
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one_keys() {
        const KEYS: i64 = 100_000;
        for n in [2, 4, 8] {
            let (before, after) = (ring(n), ring(n + 1));
            let moved =
                (0..KEYS).filter(|k| before.shard_for(&Value::Int(*k)) != after.shard_for(&Value::Int(*k))).count();
            let share = moved as f64 / KEYS as f64;
            let ideal = 1.0 / (n + 1) as f64;
            eprintln!("{n} → {} shards: {:.1}% of keys moved (ideal {:.1}%)", n + 1, share * 100.0, ideal * 100.0);
            assert!((share - ideal).abs() < 0.25 * ideal, "{n}→{}: moved {share:.3}, ideal {ideal:.3}", n + 1);
            // Every moved key moved to the new shard.
            let new = format!("s{n}");
            assert!((0..KEYS).all(|k| {
                let (a, b) = (before.shard_for(&Value::Int(k)), after.shard_for(&Value::Int(k)));
                a == b || b == new
            }));
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let r = ring(4);
        let mut counts = [0usize; 4];
        for k in 0..40_000 {
            counts[r.shard_for(&Value::Int(k))[1..].parse::<usize>().unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| (8_000..12_000).contains(&c)), "{counts:?}");
    }
}
