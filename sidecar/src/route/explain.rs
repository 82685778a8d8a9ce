//! Explain: what shardcar knows about a statement and where it would go —
//! the facts, the keys, the decision and which plugin made it — without
//! running it. Served by `shardcar explain` and `GET /api/v1/explain`.

use std::sync::Arc;

use shardcar_api::{Explanation, FanOutPlan, KeyRoute, Refusal, StatementExplanation, Target as ApiTarget};

use super::{CopySplit, Planner, Target};
use crate::classify::params::Params;
use crate::classify::{Facts, Kind, Operand, RoleHint, Value};
use crate::policy::facts::SessionInfo;
use crate::policy::{Router, StatementRoute, Via};
use crate::pool::Role;
use crate::sqlerror::SqlError;

pub async fn explain(
    planner: &Planner,
    facts: Arc<Facts>,
    params: Vec<Option<String>>,
    read_replicas: bool,
) -> Explanation {
    let router = &planner.router;
    let topology = router.topology();
    let session = Arc::new(SessionInfo::default());
    let bound =
        Arc::new(Params { values: params.iter().map(|p| p.clone().map(Into::into)).collect(), ..Params::default() });
    let routed = planner.route(&facts, Some(&bound), &session, false, None).await;
    let mut statements = Vec::with_capacity(facts.statements.len());
    for (i, s) in facts.statements.iter().enumerate() {
        let route = routed.as_ref().ok().and_then(|r| r.statements.get(i));
        let mut explained = statement(router, s, &params, route);
        explained.per_key = per_key(router, &facts, i, &Some(bound.clone()), &session, route).await;
        statements.push(explained);
    }
    let (mut target, mut fan_out, mut error) = (None, None, None);
    match routed {
        Ok(route) => match &route.target {
            Target::Anywhere | Target::One(_) => {
                let shard = match route.target {
                    Target::One(s) => s,
                    _ => topology.default_shard(),
                };
                let replicas = router.plugin_topology().topology.shards.get(shard.index()).map_or(0, |s| s.replicas);
                let role = match super::role(&route, false, read_replicas) {
                    Role::Replica if replicas > 0 => "replica",
                    Role::Replica => "primary (the shard has no replica)",
                    Role::Primary => "primary",
                };
                target = Some(ApiTarget { shard: topology.name(shard).to_string(), role: role.into() });
            }
            Target::Many { shards, plan } => {
                let shards = shards.iter().map(|&s| topology.name(s).to_string()).collect();
                fan_out =
                    Some(FanOutPlan { shards, merge: plan.describe(), sql: plan.shard_sql().map(str::to_string) });
            }
            Target::CopySplit(split) => {
                let merge = match &**split {
                    CopySplit::ByKey { rule, key_field, .. } => {
                        format!(
                            "each row placed by its {} (field {}) on its shard; COPY n summed",
                            rule.key,
                            key_field + 1
                        )
                    }
                    CopySplit::Everywhere { .. } => {
                        "every row to every shard (a reference table); COPY n of one".into()
                    }
                };
                fan_out = Some(FanOutPlan { shards: topology.all_names(), merge, sql: None });
            }
        },
        Err(e) => {
            let e = SqlError::from(e);
            error = Some(Refusal { code: e.code.to_string(), message: e.message, hint: e.hint });
        }
    }
    Explanation {
        sql: facts.statements.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("; "),
        params,
        parse_error: facts.parse_error.clone(),
        hints: facts.hints.pairs.clone(),
        statements,
        target,
        fan_out,
        error,
    }
}

/// Where each key of a statement with several goes on its own: the rows of
/// a multi-row INSERT as they were routed, or each value of an `IN` list
/// routed alone (explain only: the statement itself is routed once).
async fn per_key(
    router: &Router,
    facts: &Arc<Facts>,
    index: usize,
    params: &Option<Arc<Params>>,
    session: &Arc<SessionInfo>,
    route: Option<&StatementRoute>,
) -> Vec<KeyRoute> {
    let names =
        |shards: &[crate::topology::ShardId]| shards.iter().map(|&s| router.topology().name(s).to_string()).collect();
    let keys = |route: &StatementRoute| match &route.via {
        Via::Policy { keys, .. } => {
            keys.iter().map(|k| value(&crate::policy::plugin::sql_value(k))).collect::<Vec<_>>().join(", ")
        }
        _ => String::new(),
    };
    match route.map(|r| &r.via) {
        Some(Via::Rows(rows)) => {
            rows.iter().map(|r| KeyRoute { key: keys(r), shards: names(&r.shards), error: None }).collect()
        }
        Some(Via::Policy { rule, keys: k, .. }) if k.len() > 1 => {
            let mut out = Vec::new();
            for (_, one) in router.each_key(facts, index, rule) {
                let routed = router
                    .resolving(|| router.policy_route(&one, index, params, session, false, None, rule, true))
                    .await;
                out.push(match routed {
                    Ok(r) => KeyRoute { key: keys(&r), shards: names(&r.shards), error: None },
                    Err(e) => {
                        let key = String::new();
                        KeyRoute { key, shards: Vec::new(), error: Some(SqlError::from(e).message) }
                    }
                });
            }
            out
        }
        _ => Vec::new(),
    }
}

fn statement(
    router: &Router,
    s: &crate::classify::Statement,
    params: &[Option<String>],
    route: Option<&StatementRoute>,
) -> StatementExplanation {
    let operand = |o: &Operand| match o {
        Operand::Const(v) => value(v),
        Operand::Param(i) => match params.get(*i) {
            Some(Some(p)) => format!("${}={p}", i + 1),
            _ => format!("${}", i + 1),
        },
        Operand::Opaque => "(expression)".into(),
    };
    let predicates = s
        .shape
        .predicates
        .iter()
        .map(|p| {
            let column = match &p.table {
                Some(t) => format!("{t}.{}", p.column),
                None => p.column.clone(),
            };
            match p.operands.as_slice() {
                [one] => format!("{column} = {}", operand(one)),
                many => format!("{column} IN ({})", many.iter().map(operand).collect::<Vec<_>>().join(", ")),
            }
        })
        .collect();
    let mut out = StatementExplanation {
        text: s.text.clone(),
        kind: kind(&s.kind),
        tables: s.shape.tables.clone(),
        predicates,
        insert_rows: s.shape.insert.as_ref().map_or(0, |i| i.rows.len()),
        routed_by: String::new(),
        plugin: None,
        table: None,
        keys: Vec::new(),
        shards: Vec::new(),
        role: None,
        per_key: Vec::new(),
        colocated: Vec::new(),
    };
    if let Some(route) = route {
        out.shards = route.shards.iter().map(|&i| router.topology().name(i).to_string()).collect();
        out.role = route.role.map(|r| match r {
            RoleHint::Primary => "primary".into(),
            RoleHint::Replica => "replica".into(),
        });
        out.routed_by = match &route.via {
            Via::Explicit => "explicit".into(),
            Via::Unsharded => "unsharded".into(),
            Via::Rows(rows) => {
                let first = rows.iter().find_map(|r| match &r.via {
                    Via::Policy { policy, rule, .. } => Some((*policy, rule.clone())),
                    _ => None,
                });
                if let Some((policy, rule)) = &first {
                    let slot = router.policy(*policy);
                    out.plugin = Some(slot.plugin.load().version().to_string());
                    out.table = Some(rule.table.clone());
                }
                out.keys = rows
                    .iter()
                    .flat_map(|r| match &r.via {
                        Via::Policy { keys, .. } => keys.clone(),
                        _ => Vec::new(),
                    })
                    .map(|k| value(&crate::policy::plugin::sql_value(&k)))
                    .collect();
                match first {
                    Some((policy, _)) => format!("policy {}, row by row", router.policy(policy).name),
                    None => "row by row".into(),
                }
            }
            Via::Policy { policy, rule, keys, .. } => {
                if s.shape.links.is_some() {
                    out.colocated = router.colocated_with(&rule.table);
                }
                let slot = router.policy(*policy);
                out.plugin = Some(slot.plugin.load().version().to_string());
                out.table = Some(rule.table.clone());
                out.keys = keys.iter().map(|k| value(&crate::policy::plugin::sql_value(k))).collect();
                format!("policy {}", slot.name)
            }
        };
    }
    out
}

fn value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::Text(t) => format!("'{t}'"),
    }
}

fn kind(k: &Kind) -> String {
    match k {
        Kind::Read => "read".into(),
        Kind::Write => "write".into(),
        Kind::Begin => "begin".into(),
        Kind::TransactionOption => "set transaction".into(),
        Kind::Savepoint(_) | Kind::Release(_) | Kind::RollbackTo(_) => "savepoint".into(),
        Kind::Commit => "commit".into(),
        Kind::Rollback => "rollback".into(),
        Kind::Session(_) => "session setting".into(),
        Kind::DiscardAll => "discard all".into(),
        Kind::Deallocate(_) => "deallocate".into(),
        Kind::ShardcarSet { .. } | Kind::ShardcarShow(_) => "shardcar variable".into(),
        Kind::Unsupported { reason, .. } => format!("refused: {reason}"),
    }
}

/// Spaces that line a key's shards up with the other fields.
fn pad(key: &str) -> String {
    " ".repeat(7usize.saturating_sub(key.chars().count()))
}

/// A readable report for the terminal.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    if let Some(err) = &e.parse_error {
        out.push_str(&format!("parse error: {err} (routed by hints or to the default shard)\n"));
    }
    if !e.hints.is_empty() {
        let hints: Vec<String> = e.hints.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("hints: {}\n", hints.join(", ")));
    }
    for (i, s) in e.statements.iter().enumerate() {
        out.push_str(&format!("statement {}: {}\n", i + 1, s.text));
        out.push_str(&format!("  kind:       {}\n", s.kind));
        if !s.tables.is_empty() {
            out.push_str(&format!("  tables:     {}\n", s.tables.join(", ")));
        }
        for p in &s.predicates {
            out.push_str(&format!("  condition:  {p}\n"));
        }
        if s.insert_rows > 0 {
            out.push_str(&format!("  rows:       {}\n", s.insert_rows));
        }
        if !s.routed_by.is_empty() {
            out.push_str(&format!("  routed by:  {}\n", s.routed_by));
        }
        if let Some(p) = &s.plugin {
            out.push_str(&format!("  plugin:     {p}\n"));
        }
        if let Some(t) = &s.table {
            out.push_str(&format!("  keys:       {} of {t}\n", s.keys.join(", ")));
        }
        if !s.shards.is_empty() {
            out.push_str(&format!("  shards:     {}\n", s.shards.join(", ")));
        }
        if !s.colocated.is_empty() {
            out.push_str(&format!("  colocated:  {} (equal keys on one shard)\n", s.colocated.join(", ")));
        }
        for k in &s.per_key {
            match &k.error {
                None => out.push_str(&format!("  key {}:{} {}\n", k.key, pad(&k.key), k.shards.join(", "))),
                Some(e) => out.push_str(&format!("  key {}:{} refused: {e}\n", k.key, pad(&k.key))),
            }
        }
    }
    match (&e.target, &e.error) {
        (Some(t), _) => out.push_str(&format!("runs on:      {} {}\n", t.shard, t.role)),
        (None, None) if e.fan_out.is_some() => {
            let f = e.fan_out.as_ref().expect("checked");
            out.push_str(&format!("runs on:      {}\n", f.shards.join(", ")));
            if let Some(sql) = &f.sql {
                out.push_str(&format!("each shard:   {sql}\n"));
            }
            out.push_str(&format!("merged:       {}\n", f.merge));
        }
        (_, Some(r)) => {
            out.push_str(&format!("refused:      {} ({})\n", r.message, r.code));
            if let Some(h) = &r.hint {
                out.push_str(&format!("hint:         {h}\n"));
            }
        }
        _ => {}
    }
    out
}
