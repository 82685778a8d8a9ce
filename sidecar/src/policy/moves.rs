//! Keys that move: before a new version of a policy's plugin serves, it and
//! the serving version both route the keys of a sample of each table's
//! rows (read from every shard's primary) and the hot keys. Rows the serving
//! version finds where they are, and the new one would look for elsewhere,
//! would be stranded: the swap is refused unless the operator allowed it
//! (`plugins.moving_rows = "allow"`, or that one digest through the admin
//! API). Moving the rows themselves is resharding, which is not shardcar's.
//!
//! Only the key decides here (a `WHERE key = $1` per key): a plugin that
//! also routes by hints or session variables is checked for none of them.

use std::collections::HashMap;
use std::sync::Arc;

use shardcar_api::MoveReport;

use super::Router;
use super::facts::{SessionInfo, TableRule};
use super::plugin::Plugin;
use crate::classify::params::Params;
use crate::classify::{Facts, classify};
use crate::topology::ShardId;

/// Examples kept in a report.
const EXAMPLES: usize = 5;
/// Keys routed between yields, so that a long check does not hold an async thread.
const KEYS_PER_YIELD: usize = 256;

/// Routes a key of one table, as `WHERE key = $1` with the key as text.
struct KeyRouter {
    facts: Arc<Facts>,
    session: Arc<SessionInfo>,
}

impl KeyRouter {
    fn new(rule: &TableRule) -> KeyRouter {
        let sql = format!("SELECT 1 FROM {} WHERE {} = $1", rule.table, rule.key);
        KeyRouter { facts: Arc::new(classify(&sql)), session: Arc::new(SessionInfo::default()) }
    }

    async fn shards(&self, router: &Router, plugin: &Plugin, key: Option<&str>) -> Result<Vec<ShardId>, String> {
        let params = Some(Arc::new(Params { values: vec![key.map(|k| k.to_string().into())], ..Params::default() }));
        router
            .resolving(|| router.route_statement(&self.facts, 0, &params, &self.session, false, Some(plugin)))
            .await
            .map(|route| route.shards)
            .map_err(|e| crate::sqlerror::SqlError::from(e).message)
    }
}

/// Recent keys by table (text, as clients sent them).
pub type HotKeys = HashMap<String, Vec<String>>;

/// One distinct key found on one shard, and its rows there.
struct Found {
    shard: ShardId,
    key: Option<String>,
    rows: u64,
}

/// Routes a sample of real keys with both versions of policy `slot`.
pub async fn check(
    router: &Router,
    slot: usize,
    serving: &Plugin,
    candidate: &Plugin,
    hot_keys: &HotKeys,
) -> Result<MoveReport, String> {
    let mut report = MoveReport {
        candidate: candidate.version().to_string(),
        digest: candidate.digest.clone(),
        serving: serving.version().to_string(),
        rows_sampled: 0,
        keys_sampled: 0,
        complete: true,
        moved_rows: 0,
        moved_keys: 0,
        unroutable_rows: 0,
        hot_keys_checked: 0,
        hot_keys_moved: 0,
        examples: Vec::new(),
        verdict: String::new(),
    };
    let mut rules: Vec<&Arc<TableRule>> = router.rules().filter(|r| r.policy.index() == slot).collect();
    rules.sort_by(|a, b| a.table.cmp(&b.table));
    let names = |shards: &[ShardId]| router.topology().names(shards);
    for rule in rules {
        let keys = KeyRouter::new(rule);
        let mut found = Vec::new();
        for shard in router.topology().ids() {
            let (rows, complete) = read(router, shard, rule).await?;
            report.complete &= complete;
            found.extend(rows.into_iter().map(|(key, rows)| Found { shard, key, rows }));
        }
        for (n, f) in found.iter().enumerate() {
            if n % KEYS_PER_YIELD == KEYS_PER_YIELD - 1 {
                tokio::task::yield_now().await;
            }
            report.rows_sampled += f.rows;
            report.keys_sampled += 1;
            let shown = f.key.as_deref().map_or("NULL".to_string(), |k| format!("'{k}'"));
            let before = keys.shards(router, serving, f.key.as_deref()).await;
            if !before.as_ref().is_ok_and(|s| s.contains(&f.shard)) {
                // The serving version does not look for these rows here either: not this change's doing.
                continue;
            }
            match keys.shards(router, candidate, f.key.as_deref()).await {
                Ok(after) if after.contains(&f.shard) => {}
                Ok(after) => {
                    report.moved_rows += f.rows;
                    report.moved_keys += 1;
                    if report.examples.len() < EXAMPLES {
                        report.examples.push(format!(
                            "{} {shown}: {} → {} ({} row(s))",
                            rule.table,
                            router.topology().name(f.shard),
                            names(&after),
                            f.rows
                        ));
                    }
                }
                Err(e) => {
                    report.unroutable_rows += f.rows;
                    if report.examples.len() < EXAMPLES {
                        report.examples.push(format!("{} {shown}: the new version fails: {e}", rule.table));
                    }
                }
            }
        }
        for key in hot_keys.get(&rule.table).into_iter().flatten() {
            report.hot_keys_checked += 1;
            let before = keys.shards(router, serving, Some(key)).await;
            let after = keys.shards(router, candidate, Some(key)).await;
            if let (Ok(before), Ok(after)) = (&before, &after)
                && before != after
            {
                report.hot_keys_moved += 1;
            }
        }
    }
    Ok(report)
}

impl Router {
    /// Whether `report` may go live: nothing it read moves, or the operator
    /// allowed it for this digest or for every version.
    pub fn allows_moves(&self, report: &MoveReport, accepted: bool) -> bool {
        self.allows_any_moves() || accepted || (report.moved_rows == 0 && report.unroutable_rows == 0)
    }

    /// `plugins.moving_rows = "allow"`.
    pub fn allows_any_moves(&self) -> bool {
        self.moving_rows_allowed
    }
}

/// The keys of up to `plugins.move_check_rows` rows of `rule`'s table on
/// `shard`, with their counts, and whether that was every row. A table
/// not created on the shard yet has no rows there.
async fn read(router: &Router, shard: ShardId, rule: &TableRule) -> Result<(Vec<(Option<String>, u64)>, bool), String> {
    let limit = router.move_check_rows;
    let sql = format!(
        "SELECT k::text, count(*) FROM (SELECT {} AS k FROM {} LIMIT {limit}) s GROUP BY 1",
        quote(&rule.key),
        quote(&rule.table)
    );
    let on = router.topology().name(shard);
    let failed = |e: &dyn std::fmt::Display| format!("cannot read the keys of {} on {on}: {e}", rule.table);
    let client = router.shards[shard.index()].primary().control.get().await.map_err(|e| failed(&e))?;
    let rows = match client.query(&sql, &[]).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => return Ok((Vec::new(), true)),
        Err(e) => return Err(failed(&e)),
    };
    let mut keys = Vec::with_capacity(rows.len());
    let mut total = 0;
    for row in rows {
        let key: Option<String> = row.try_get(0).map_err(|e| failed(&e))?;
        let count: i64 = row.try_get(1).map_err(|e| failed(&e))?;
        total += count as u64;
        keys.push((key, count as u64));
    }
    Ok((keys, total < limit))
}

/// `schema.table` as quoted identifiers.
fn quote(name: &str) -> String {
    name.split('.').map(|part| format!("\"{}\"", part.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// One line for the log and the API: what moves, with examples.
pub fn summary(r: &MoveReport) -> String {
    let scope = if r.complete { "all" } else { "a sample of" };
    let mut line = format!(
        "{} would strand {} row(s) ({} key(s)) of {scope} {} row(s) read from the shards, and fails to route {} row(s); {} of {} hot key(s) change shard",
        r.candidate,
        r.moved_rows,
        r.moved_keys,
        r.rows_sampled,
        r.unroutable_rows,
        r.hot_keys_moved,
        r.hot_keys_checked
    );
    if !r.examples.is_empty() {
        line.push_str(&format!("; e.g. {}", r.examples.join("; ")));
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_quoted_part_by_part() {
        assert_eq!(super::quote("orders"), "\"orders\"");
        assert_eq!(super::quote("app.Orders"), "\"app\".\"Orders\"");
        assert_eq!(super::quote("we\"ird"), "\"we\"\"ird\"");
    }
}
