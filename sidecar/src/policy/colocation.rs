//! Colocation: which sharded tables keep equal keys on the same shard, and
//! whether a query reading several tables (or computing over sets below
//! its top level) gives one Postgres's answer on each shard it runs on.
//!
//! Tables are colocated when they are routed by the same plugin with the
//! same config (one `[[policies]]` entry, or two that say the same) and
//! their keys have the same type: the plugin then sends equal keys to the
//! same shard. That assumes the policy decides from the key alone, not
//! from the table's name — true of the built-ins; a plugin that routes
//! tables differently must be given policies of its own.

use crate::classify::Statement;
use crate::classify::links::{Role, Unlinked};
use crate::config::Config;

use super::{Refusal, Router};

/// Each `[[tables]]` entry's colocation group, by position: equal numbers
/// for the same plugin, config and key type.
pub fn groups(cfg: &Config) -> Vec<usize> {
    let policy = |name: &str| cfg.policies.iter().find(|p| p.name == name);
    let mut seen: Vec<(String, String, crate::config::KeyType)> = Vec::new();
    cfg.tables
        .iter()
        .map(|t| {
            let (plugin, config) = policy(&t.policy)
                .map(|p| (p.plugin.clone(), serde_json::to_string(&p.config).unwrap_or_default()))
                .unwrap_or_default();
            let id = (plugin, config, t.key_type);
            match seen.iter().position(|s| *s == id) {
                Some(at) => at,
                None => {
                    seen.push(id);
                    seen.len() - 1
                }
            }
        })
        .collect()
}

impl Router {
    /// Refuses a statement whose tables are not read together on each
    /// shard it runs on (`fanned_out`: more than one).
    pub fn check_links(&self, stmt: &Statement, fanned_out: bool) -> Result<(), Refusal> {
        let Some(links) = &stmt.shape.links else { return Ok(()) };
        let role = |a: &crate::classify::links::Appearance| match self.rule(&a.table) {
            Some(rule) if !a.is_catalog() => Role::Sharded { key: &rule.key, group: rule.colocation },
            _ if self.reference_tables.contains(&a.table) => Role::Reference,
            _ => Role::Plain,
        };
        links.check(role, fanned_out).map_err(|u| self.unlinked(u))
    }

    /// Every table colocated with `table`, itself included, in config order.
    pub fn colocated_with(&self, table: &str) -> Vec<String> {
        let Some(rule) = self.rule(table) else { return Vec::new() };
        let mut tables: Vec<&std::sync::Arc<super::TableRule>> =
            self.rules().filter(|r| r.colocation == rule.colocation).collect();
        tables.sort_by_key(|r| (r.policy.index(), r.table.clone()));
        tables.into_iter().map(|r| r.table.clone()).collect()
    }

    /// Every colocation group of two or more tables, each as `table.key`
    /// in config order.
    pub fn colocation_groups(&self) -> Vec<Vec<String>> {
        let mut rules: Vec<&std::sync::Arc<super::TableRule>> = self.rules().collect();
        rules.sort_by_key(|r| (r.colocation, r.policy.index(), r.table.clone()));
        let mut groups: Vec<Vec<String>> = Vec::new();
        for pair in rules.chunk_by(|a, b| a.colocation == b.colocation) {
            if pair.len() > 1 {
                groups.push(pair.iter().map(|r| format!("{}.{}", r.table, r.key)).collect());
            }
        }
        groups
    }

    fn described(&self, table: &str) -> String {
        match self.rule(table) {
            Some(r) => {
                let p = self.policy(r.policy);
                format!("{table} (key {}, policy {}, plugin {})", r.key, p.name, p.source)
            }
            None => table.to_string(),
        }
    }

    fn unlinked(&self, u: Unlinked) -> Refusal {
        const TARGET: &str = "or target one shard with /* shardcar: shard=... */";
        let (why, hint) = match u {
            Unlinked::Unreadable(why) => {
                (why, format!("run it on one shard: add a condition on the shard key, {TARGET}"))
            }
            Unlinked::Groups(a, b) => (
                format!(
                    "it reads {} and {}, which are not colocated: equal keys of the two may be on different shards",
                    self.described(&a),
                    self.described(&b)
                ),
                format!(
                    "tables are colocated when one policy (the same plugin and config) routes both, on keys of the same type; \
                     or make one a reference table (routing.reference_tables), {TARGET}"
                ),
            ),
            Unlinked::Keys(a, b) => {
                let key = |t: &str| self.rule(t).map_or(String::new(), |r| format!("{t}.{}", r.key));
                (
                    format!(
                        "it combines rows of {} and {} that are not shown to have equal shard keys, so they may be on different shards",
                        self.described(&a),
                        self.described(&b)
                    ),
                    format!(
                        "join them on their keys ({} = {}), or make one a reference table (routing.reference_tables), {TARGET}",
                        key(&a),
                        key(&b)
                    ),
                )
            }
            Unlinked::Need { what, table } => {
                let key = self.rule(&table).map_or(String::new(), |r| r.key.clone());
                (
                    format!("its {what} over {table} would be computed by each shard over its own rows only"),
                    format!(
                        "group (or partition) it by {key}, or tie the subquery to one {key} of the outer query \
                         (WHERE {table}.{key} = outer.{key}), {TARGET}"
                    ),
                )
            }
        };
        Refusal::NotColocated { why, hint }
    }
}
