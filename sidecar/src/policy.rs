//! Routing policy: which shard a statement belongs to.
//!
//! Today the policy is explicit targeting — a `/* shardcar: shard=... */`
//! comment or `SET shardcar.shard` — and otherwise `routing.default_shard`.
//! Explicit targeting stays when policies become plugins: it is how an
//! operator reaches one shard on purpose.

use crate::classify::{Facts, RoleHint};
use crate::sqlerror::{SqlError, code};

/// What one batch of statements asks of routing, merged over its statements.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub shard: Option<String>,
    pub role: Option<RoleHint>,
    /// False as soon as one statement may write.
    pub read_only: bool,
    pub errors: Vec<String>,
    statements: usize,
}

impl Request {
    pub fn new() -> Request {
        Request { read_only: true, ..Request::default() }
    }

    pub fn add(&mut self, facts: &Facts) {
        self.statements += 1;
        self.read_only &= facts.is_read_only();
        self.errors.extend(facts.hints.errors.iter().cloned());
        if let Some(s) = &facts.hints.shard {
            match &self.shard {
                Some(old) if old != s => self.errors.push(format!(
                    "statements sent together target different shards (`{old}` and `{s}`); send them separately"
                )),
                _ => self.shard = Some(s.clone()),
            }
        }
        // Any statement that insists on the primary wins.
        match (self.role, facts.hints.role) {
            (_, Some(RoleHint::Primary)) => self.role = Some(RoleHint::Primary),
            (None, r) => self.role = r,
            _ => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.statements == 0
    }
}

/// Session variables set with `SET shardcar.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionTarget {
    pub shard: Option<String>,
}

/// Where a request goes, before transaction state and replicas are considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub shard: usize,
    /// The shard was named by the client rather than defaulted.
    pub explicit: bool,
    pub role: Option<RoleHint>,
    pub read_only: bool,
}

pub struct Policy {
    shard_names: Vec<String>,
    default_shard: usize,
}

impl Policy {
    pub fn new(shard_names: Vec<String>, default_shard: usize) -> Policy {
        Policy { shard_names, default_shard }
    }

    pub fn shard_index(&self, name: &str) -> Result<usize, SqlError> {
        self.shard_names.iter().position(|n| n == name).ok_or_else(|| {
            SqlError::new(code::INVALID_PARAMETER_VALUE, format!("unknown shard `{name}`"))
                .hint(format!("known shards: {}", self.shard_names.join(", ")))
        })
    }

    pub fn shard_name(&self, index: usize) -> &str {
        &self.shard_names[index]
    }

    pub fn decide(&self, req: &Request, session: &SessionTarget) -> Result<Decision, SqlError> {
        if let Some(first) = req.errors.first() {
            return Err(SqlError::new(code::INVALID_PARAMETER_VALUE, format!("cannot route: {first}"))
                .hint("hints look like /* shardcar: shard=s1, role=primary */"));
        }
        let named = req.shard.as_ref().or(session.shard.as_ref());
        let (shard, explicit) = match named {
            Some(name) => (self.shard_index(name)?, true),
            None => (self.default_shard, false),
        };
        Ok(Decision { shard, explicit, role: req.role, read_only: req.read_only })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn policy() -> Policy {
        Policy::new(vec!["s0".into(), "s1".into()], 0)
    }

    fn request(sqls: &[&str]) -> Request {
        let mut r = Request::new();
        for s in sqls {
            r.add(&classify(s));
        }
        r
    }

    #[test]
    fn comment_beats_session_beats_default() {
        let p = policy();
        let none = SessionTarget::default();
        let s1 = SessionTarget { shard: Some("s1".into()) };
        assert_eq!(p.decide(&request(&["SELECT 1"]), &none).unwrap().shard, 0);
        assert_eq!(p.decide(&request(&["SELECT 1"]), &s1).unwrap().shard, 1);
        let d = p.decide(&request(&["/* shardcar: shard=s0 */ SELECT 1"]), &s1).unwrap();
        assert_eq!((d.shard, d.explicit), (0, true));
    }

    #[test]
    fn unknown_shard_names_the_known_ones() {
        let err =
            policy().decide(&request(&["/* shardcar: shard=s9 */ SELECT 1"]), &SessionTarget::default()).unwrap_err();
        assert_eq!(err.code, code::INVALID_PARAMETER_VALUE);
        assert!(err.message.contains("s9") && err.hint.unwrap().contains("s0, s1"));
    }

    #[test]
    fn conflicting_targets_in_one_batch_are_refused() {
        let req = request(&["/* shardcar: shard=s0 */ SELECT 1", "/* shardcar: shard=s1 */ SELECT 1"]);
        assert!(policy().decide(&req, &SessionTarget::default()).is_err());
    }

    #[test]
    fn primary_hint_wins_and_writes_clear_read_only() {
        let req = request(&["/* shardcar: role=replica */ SELECT 1", "/* shardcar: role=primary */ SELECT 2"]);
        assert_eq!(req.role, Some(RoleHint::Primary));
        assert!(req.read_only);
        assert!(!request(&["SELECT 1", "INSERT INTO t VALUES (1)"]).read_only);
    }
}
