//! `range`: ordered, non-overlapping key ranges, each on a shard. A range is
//! `[from, to)`; a missing `from` or `to` leaves that end open. A key in no
//! range is an error, never a guess.
//!
//! Config:
//! ```toml
//! config = { ranges = [
//!     { to = 1000, shard = "s0" },
//!     { from = 1000, to = 5000, shard = "s1" },
//!     { from = 5000, shard = "s2" },
//! ] }
//! ```
//! Bounds are integers, or strings compared byte by byte.

use std::cmp::Ordering;

use shardcar_sdk::{Decision, Facts, Policy, Shards, Value, config};

#[derive(serde::Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
enum Bound {
    Int(i64),
    Text(String),
}

#[derive(serde::Deserialize)]
struct Range {
    from: Option<Bound>,
    to: Option<Bound>,
    shard: String,
}

#[derive(serde::Deserialize)]
struct Ranges {
    ranges: Vec<Range>,
}

fn compare(key: &Value, bound: &Bound) -> Option<Ordering> {
    match (key, bound) {
        (Value::Int(k), Bound::Int(b)) => Some(k.cmp(b)),
        (Value::Text(k), Bound::Text(b)) => Some(k.as_bytes().cmp(b.as_bytes())),
        _ => None,
    }
}

impl Ranges {
    fn shard_for(&self, key: &Value) -> Result<&str, String> {
        let inside = |r: &Range| {
            let above = r.from.as_ref().is_none_or(|f| compare(key, f).is_some_and(Ordering::is_ge));
            let below = r.to.as_ref().is_none_or(|t| compare(key, t).is_some_and(Ordering::is_lt));
            above && below
        };
        let shown = key.as_text().unwrap_or_else(|| "NULL".into());
        self.ranges
            .iter()
            .find(|r| inside(r))
            .map(|r| r.shard.as_str())
            .ok_or_else(|| format!("key {shown} is in no configured range"))
    }

    /// Ranges must be in order and must not overlap.
    fn check(&self) -> Result<(), String> {
        for pair in self.ranges.windows(2) {
            let ordered = match (&pair[0].to, &pair[1].from) {
                (Some(Bound::Int(a)), Some(Bound::Int(b))) => a <= b,
                (Some(Bound::Text(a)), Some(Bound::Text(b))) => a <= b,
                _ => false,
            };
            if !ordered {
                return Err(
                    "ranges must be ordered, of one type, and only the first may lack `from`, the last `to`".into()
                );
            }
        }
        Ok(())
    }
}

impl Policy for Ranges {
    fn init(json: &str) -> Result<Self, String> {
        let ranges: Ranges = config(json)?;
        if ranges.ranges.is_empty() {
            return Err("config needs `ranges`".into());
        }
        ranges.check()?;
        Ok(ranges)
    }

    fn route(&self, _: &Facts, keys: &[Value], shards: &Shards) -> Result<Decision, String> {
        let names: Vec<&str> = match keys {
            [] => self.ranges.iter().map(|r| r.shard.as_str()).collect(),
            keys => keys.iter().map(|k| self.shard_for(k)).collect::<Result<_, _>>()?,
        };
        Ok(Decision::shards(names.into_iter().map(|n| shards.index(n)).collect::<Result<Vec<_>, _>>()?))
    }
}

shardcar_sdk::export_policy!(Ranges);

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(json: &str) -> Result<Ranges, String> {
        <Ranges as Policy>::init(json)
    }

    #[test]
    fn open_ended_half_open_ranges() {
        let r = ranges(
            r#"{"ranges":[{"to":1000,"shard":"s0"},{"from":1000,"to":5000,"shard":"s1"},{"from":5000,"shard":"s2"}]}"#,
        )
        .unwrap();
        for (k, s) in [(i64::MIN, "s0"), (999, "s0"), (1000, "s1"), (4999, "s1"), (5000, "s2"), (i64::MAX, "s2")] {
            assert_eq!(r.shard_for(&Value::Int(k)).unwrap(), s, "{k}");
        }
        assert!(r.shard_for(&Value::Text("x".into())).is_err(), "a text key never matches integer ranges");
        assert!(r.shard_for(&Value::Null).unwrap_err().contains("NULL"));
    }

    #[test]
    fn gaps_are_errors_and_bad_configs_are_refused() {
        let r = ranges(r#"{"ranges":[{"from":"a","to":"m","shard":"s0"},{"from":"n","shard":"s1"}]}"#).unwrap();
        assert_eq!(r.shard_for(&Value::Text("kiwi".into())).unwrap(), "s0");
        assert!(r.shard_for(&Value::Text("mango".into())).unwrap_err().contains("no configured range"));
        assert!(ranges(r#"{"ranges":[{"from":10,"shard":"s0"},{"to":5,"shard":"s1"}]}"#).is_err());
        assert!(ranges(r#"{"ranges":[]}"#).is_err());
    }
}
