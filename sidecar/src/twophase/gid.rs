//! What a prepared transaction's name says: `shardcar_<decider>_<xid>`,
//! the shard whose one-phase commit decides the transaction and that
//! commit's transaction id there. Any sidecar can read the outcome from
//! the name alone: `pg_xact_status(xid)` on the decider.

use crate::topology::{ShardId, Topology};

const PREFIX: &str = "shardcar_";

/// Advisory lock class (two-int form) under which the decider's
/// transaction id is locked while a sidecar finishes that transaction —
/// the coordinator from its first PREPARE to its last COMMIT PREPARED,
/// recovery while it resolves — so no two of them act on it at once.
pub(super) const LOCK_CLASS: i32 = 0x7363_6172; // "scar"

/// A transaction across shards, by its decider and transaction id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gid {
    pub decider: ShardId,
    pub xid: u64,
}

impl Gid {
    /// The name to PREPARE with (shard names are `[A-Za-z0-9_-]`, so it
    /// needs no quoting).
    pub fn name(&self, topology: &Topology) -> String {
        format!("{PREFIX}{}_{}", topology.name(self.decider), self.xid)
    }

    /// Reads a prepared transaction's name; None for one that is not a
    /// shardcar transaction of this topology (another fleet's, an older
    /// format, a name someone else chose).
    pub fn parse(name: &str, topology: &Topology) -> Option<Gid> {
        let (shard, xid) = name.strip_prefix(PREFIX)?.rsplit_once('_')?;
        let gid = Gid { decider: topology.find(shard)?, xid: xid.parse().ok()? };
        (gid.name(topology) == name).then_some(gid)
    }

    /// `pg_advisory_lock`'s arguments for this transaction.
    pub fn lock_args(&self) -> String {
        format!("{LOCK_CLASS}, {}", self.xid % (1 << 31))
    }

    /// The SQL that, in the decider's open transaction, gives it a
    /// transaction id and locks it (held past the commit, until unlocked).
    pub fn begin_sql() -> String {
        format!(
            "SELECT x::text, pg_advisory_lock({LOCK_CLASS}, (x::text::bigint % {}::bigint)::int) FROM pg_current_xact_id() AS x",
            1u64 << 31
        )
    }

    /// A `LIKE` pattern matching every shardcar transaction's name.
    pub fn like_pattern() -> &'static str {
        "shardcar\\_%"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_foreign_names_are_not_ours() {
        let topology = Topology::from_names(&["s0", "eu_west-1"], "s0");
        let gid = Gid { decider: topology.find("eu_west-1").unwrap(), xid: 4_294_967_302 };
        assert_eq!(gid.name(&topology), "shardcar_eu_west-1_4294967302");
        assert_eq!(Gid::parse(&gid.name(&topology), &topology), Some(gid));
        for foreign in ["shardcar_3f2a_17", "shardcar_s0_", "shardcar_s0_01", "shardcar_s0_1'", "other_s0_1", "s0_1"] {
            assert_eq!(Gid::parse(foreign, &topology), None, "{foreign}");
        }
        assert_eq!(gid.lock_args(), format!("{LOCK_CLASS}, 6"));
    }
}
