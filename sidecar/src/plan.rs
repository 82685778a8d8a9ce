//! Plan: a routing decision plus the session's transaction state → the
//! server role that runs it.

use crate::classify::RoleHint;
use crate::policy::Decision;
use crate::pool::Role;

/// The shard and role a batch runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub shard: usize,
    pub role: Role,
}

/// The decided shard, or `default_shard` when no statement cared. Reads
/// outside a transaction may go to a replica (when `read_replicas` is on, or
/// a hint asks); inside a transaction everything stays on the primary that
/// holds it.
pub fn plan(decision: &Decision, default_shard: usize, in_transaction: bool, read_replicas: bool) -> Target {
    let replica = !in_transaction
        && match decision.role {
            Some(RoleHint::Primary) => false,
            Some(RoleHint::Replica) => true,
            None => read_replicas && decision.read_only,
        };
    Target { shard: decision.shard.unwrap_or(default_shard), role: if replica { Role::Replica } else { Role::Primary } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(role: Option<RoleHint>, read_only: bool) -> Decision {
        Decision { shard: Some(1), role, read_only, routes: vec![] }
    }

    #[test]
    fn no_preference_means_the_default_shard() {
        let d = Decision { shard: None, role: None, read_only: false, routes: vec![] };
        assert_eq!(plan(&d, 3, false, true).shard, 3);
    }

    #[test]
    fn replicas_only_for_reads_outside_transactions() {
        assert_eq!(plan(&decision(None, true), 0, false, true).role, Role::Replica);
        assert_eq!(plan(&decision(None, true), 0, false, false).role, Role::Primary);
        assert_eq!(plan(&decision(None, false), 0, false, true).role, Role::Primary);
        assert_eq!(plan(&decision(None, true), 0, true, true).role, Role::Primary);
        assert_eq!(plan(&decision(Some(RoleHint::Primary), true), 0, false, true).role, Role::Primary);
        assert_eq!(plan(&decision(Some(RoleHint::Replica), true), 0, false, false).role, Role::Replica);
    }
}
