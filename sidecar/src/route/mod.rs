//! Route: where a statement runs — one shard and role, or several shards
//! with the plan that merges their answers.

pub mod explain;
pub mod merge;

use std::sync::Arc;

use crate::classify::Facts;
use crate::classify::params::Params;
use crate::policy::Router;
use crate::policy::facts::SessionInfo;
use crate::sqlerror::SqlError;
use merge::FanOut;

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

/// Where a single statement runs when it needs more than one shard, and how
/// its answers merge: `None` when it needs one shard (or is refused by
/// routing as usual). One place for the session and for explain.
pub async fn plan_for(
    router: &Router,
    facts: &Arc<Facts>,
    params: &Option<Arc<Params>>,
    session: &Arc<SessionInfo>,
) -> Result<Option<(Vec<usize>, FanOut)>, SqlError> {
    let Some(text) = facts.single().map(|s| s.text.as_str()) else { return Ok(None) };
    if router.runs_everywhere(facts, session) {
        return Ok(Some(((0..router.shard_count()).collect(), FanOut::Everywhere)));
    }
    if let Some(groups) = router.split_insert(facts, params, session).await? {
        let (shards, rows): (Vec<usize>, Vec<Vec<usize>>) = groups.into_iter().unzip();
        return Ok(Some((shards, FanOut::split_insert(text, &rows)?)));
    }
    match router.fan_out(facts, params, session).await? {
        Some(shards) => Ok(Some((shards, FanOut::of(text)?))),
        None => Ok(None),
    }
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
