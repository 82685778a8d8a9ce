//! The shards as configured, resolved once: typed ids, each name stored
//! once, the default shard. Every other part refers to a shard by its
//! `ShardId` and asks here for its name.

use std::fmt;
use std::sync::Arc;

use crate::config::Config;

/// A shard: its position in `[[shards]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(u16);

impl ShardId {
    /// The shard at `index` in `[[shards]]` (config validation bounds the count).
    pub const fn at(index: usize) -> ShardId {
        ShardId(if index > u16::MAX as usize { u16::MAX } else { index as u16 })
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A routing policy: its position in `[[policies]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(u16);

impl PolicyId {
    pub fn at(index: usize) -> PolicyId {
        PolicyId(u16::try_from(index).unwrap_or(u16::MAX))
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

pub struct Topology {
    names: Vec<Arc<str>>,
    default_shard: ShardId,
}

impl Topology {
    pub fn new(cfg: &Config) -> Topology {
        let names = cfg.shards.iter().map(|s| Arc::from(s.name.as_str())).collect();
        let default_shard = ShardId::at(cfg.shard_index(&cfg.routing.default_shard).unwrap_or(0));
        Topology { names, default_shard }
    }

    #[cfg(test)]
    pub fn from_names(names: &[&str], default_shard: &str) -> Topology {
        let default_shard = ShardId::at(names.iter().position(|n| *n == default_shard).unwrap_or(0));
        Topology { names: names.iter().map(|n| Arc::from(*n)).collect(), default_shard }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every shard, in configuration order.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = ShardId> + use<> {
        (0..self.names.len()).map(ShardId::at)
    }

    pub fn name(&self, id: ShardId) -> &str {
        self.names.get(id.index()).map_or("?", |n| n)
    }

    /// Names of several shards, comma-separated (for messages).
    pub fn names(&self, ids: &[ShardId]) -> String {
        ids.iter().map(|&s| self.name(s)).collect::<Vec<_>>().join(", ")
    }

    pub fn find(&self, name: &str) -> Option<ShardId> {
        self.names.iter().position(|n| &**n == name).map(ShardId::at)
    }

    /// A shard index a plugin returned, if it exists.
    pub fn checked(&self, index: u32) -> Option<ShardId> {
        let i = usize::try_from(index).ok()?;
        (i < self.names.len()).then(|| ShardId::at(i))
    }

    /// Where statements without a decision go.
    pub fn default_shard(&self) -> ShardId {
        self.default_shard
    }

    /// Every shard's name, in order.
    pub fn all_names(&self) -> Vec<String> {
        self.names.iter().map(|n| n.to_string()).collect()
    }
}
