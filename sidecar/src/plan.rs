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

/// Reads outside a transaction may go to a replica (when `read_replicas` is
/// on, or a hint asks); inside a transaction everything stays on the primary
/// that holds it.
pub fn plan(decision: &Decision, in_transaction: bool, read_replicas: bool) -> Target {
    let replica = !in_transaction
        && match decision.role {
            Some(RoleHint::Primary) => false,
            Some(RoleHint::Replica) => true,
            None => read_replicas && decision.read_only,
        };
    Target { shard: decision.shard, role: if replica { Role::Replica } else { Role::Primary } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(role: Option<RoleHint>, read_only: bool) -> Decision {
        Decision { shard: 1, explicit: false, role, read_only }
    }

    #[test]
    fn replicas_only_for_reads_outside_transactions() {
        assert_eq!(plan(&decision(None, true), false, true).role, Role::Replica);
        assert_eq!(plan(&decision(None, true), false, false).role, Role::Primary);
        assert_eq!(plan(&decision(None, false), false, true).role, Role::Primary);
        assert_eq!(plan(&decision(None, true), true, true).role, Role::Primary);
        assert_eq!(plan(&decision(Some(RoleHint::Primary), true), false, true).role, Role::Primary);
        assert_eq!(plan(&decision(Some(RoleHint::Replica), true), false, false).role, Role::Replica);
    }
}
