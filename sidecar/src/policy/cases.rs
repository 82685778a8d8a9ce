//! A plugin's own test cases: they sit beside the component
//! (`by-customer.wasm` → `by-customer.tests.toml`) and gate every version
//! before it serves (at start, on reload, in `shardcar check`).
//!
//! ```toml
//! [[case]]
//! sql = "SELECT * FROM {table} WHERE {key} = $1"  # any table of the policy
//! params = ["42"]                 # text values, optional
//! shard = "s1"                    # where it must go; or
//! # shards = ["s0", "s1"]         # exactly these shards; or "all"
//! # error = "no range"            # part of the error it must fail with
//! role = "replica"                # optional: the role it must ask for
//! session = { region = "eu" }     # optional: SET shardcar.<name> values
//! in_transaction = true           # optional
//! ```
//!
//! `{table}` and `{key}` stand for each table the policy routes in this
//! deployment and its key column, so the same cases serve every deployment
//! of a policy; a case without them must name a table the policy routes.
//! Every case runs, and every failure is reported.

use std::sync::Arc;

use serde::Deserialize;

use super::facts::{SessionInfo, TableRule};
use super::plugin::Plugin;
use super::{RouteError, Router, StatementRoute};
use crate::classify::params::Params;
use crate::classify::{Facts, RoleHint, classify};
use crate::sqlerror::SqlError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    sql: String,
    #[serde(default)]
    params: Vec<Option<String>>,
    shard: Option<String>,
    shards: Option<Shards>,
    error: Option<String>,
    role: Option<ExpectedRole>,
    #[serde(default)]
    session: std::collections::BTreeMap<String, String>,
    user: Option<String>,
    #[serde(default)]
    in_transaction: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Shards {
    /// `"all"`: every shard of the deployment.
    All(String),
    List(Vec<String>),
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum ExpectedRole {
    Primary,
    Replica,
    /// The plugin leaves the role to shardcar.
    Any,
}

/// What a case expects.
enum Expect {
    Shards(Vec<String>),
    Error(String),
}

impl Case {
    fn expect(&self, router: &Router) -> Result<Expect, String> {
        match (&self.shard, &self.shards, &self.error) {
            (Some(one), None, None) => Ok(Expect::Shards(vec![one.clone()])),
            (None, Some(Shards::List(list)), None) => Ok(Expect::Shards(list.clone())),
            (None, Some(Shards::All(all)), None) if all == "all" => Ok(Expect::Shards(router.topology().all_names())),
            (None, Some(Shards::All(other)), None) => Err(format!("shards = {other:?}: give a list or \"all\"")),
            (None, None, Some(e)) => Ok(Expect::Error(e.clone())),
            _ => Err("give exactly one of `shard`, `shards` and `error`".into()),
        }
    }
}

/// Runs `tests` (a version's test cases, if any) against `plugin`, serving
/// policy `slot`: the number of cases run, or every failure, one per line.
pub async fn verify(
    router: &Router,
    slot: usize,
    plugin: &Plugin,
    tests: Option<&str>,
    origin: &str,
) -> Result<usize, String> {
    let Some(text) = tests else { return Ok(0) };
    let manifest: Manifest = toml::from_str(text).map_err(|e| format!("{origin}: {}", e.message()))?;
    let tables: Vec<&Arc<TableRule>> = router.rules().filter(|r| r.policy.index() == slot).collect();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (i, case) in manifest.case.iter().enumerate() {
        let at = |sql: &str| format!("{origin} case {} ({sql})", i + 1);
        let expect = match case.expect(router) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{}: {e}", at(&case.sql)));
                continue;
            }
        };
        let templated = case.sql.contains("{table}") || case.sql.contains("{key}");
        let texts: Vec<String> = if templated {
            tables.iter().map(|r| case.sql.replace("{table}", &r.table).replace("{key}", &r.key)).collect()
        } else {
            vec![case.sql.clone()]
        };
        if texts.is_empty() {
            failures.push(format!("{}: the policy routes no table here to put in {{table}}", at(&case.sql)));
        }
        for sql in texts {
            ran += 1;
            if let Err(e) = run(router, slot, plugin, case, &expect, &sql).await {
                failures.push(format!("{}: {e}", at(&sql)));
            }
        }
    }
    match failures.len() {
        0 => Ok(ran),
        1 => Err(failures.remove(0)),
        n => Err(format!("{n} of {ran} cases failed:\n{}", failures.join("\n"))),
    }
}

async fn run(
    router: &Router,
    slot: usize,
    plugin: &Plugin,
    case: &Case,
    expect: &Expect,
    sql: &str,
) -> Result<(), String> {
    let facts = Arc::new(classify(sql));
    let routed_here = facts
        .statements
        .first()
        .and_then(|s| s.shape.tables.iter().find_map(|t| router.rule(t)))
        .is_some_and(|rule| rule.policy.index() == slot);
    if !routed_here {
        return Err("names no table routed by this policy".into());
    }
    let session = Arc::new(SessionInfo {
        user: case.user.clone().unwrap_or_default(),
        vars: case.session.clone(),
        ..SessionInfo::default()
    });
    let params = Some(Arc::new(Params {
        values: case.params.iter().map(|p| p.clone().map(Into::into)).collect(),
        ..Params::default()
    }));
    let routed = route(router, &facts, &params, &session, case.in_transaction, Some(plugin)).await;
    let names = |route: &StatementRoute| -> Vec<String> {
        route.shards.iter().map(|&s| router.topology().name(s).to_string()).collect()
    };
    match (routed, expect) {
        (Ok(route), Expect::Shards(want)) => {
            let got = names(&route);
            let (mut sorted_got, mut sorted_want) = (got.clone(), want.clone());
            sorted_got.sort();
            sorted_want.sort();
            if sorted_got != sorted_want {
                return Err(format!("went to {got:?}, expected {}", shown(want)));
            }
            let role = match route.role {
                Some(RoleHint::Primary) => ExpectedRole::Primary,
                Some(RoleHint::Replica) => ExpectedRole::Replica,
                None => ExpectedRole::Any,
            };
            match case.role {
                Some(want) if want != role => Err(format!("asked for role {role:?}, expected {want:?}")),
                _ => Ok(()),
            }
        }
        (Err(e), Expect::Error(want)) if e.message.contains(want.as_str()) => Ok(()),
        (Err(e), Expect::Error(want)) => Err(format!("failed with `{}`, expected `{want}`", e.message)),
        (Ok(route), Expect::Error(want)) => {
            Err(format!("went to shards {:?}, expected an error `{want}`", names(&route)))
        }
        (Err(e), Expect::Shards(want)) => Err(format!("failed with `{}`, expected {}", e.message, shown(want))),
    }
}

/// Where the first statement of `facts` goes, lookups resolved, as a
/// client would meet it; with `plugin` in its policy's place when given.
pub async fn route(
    router: &Router,
    facts: &Arc<Facts>,
    params: &Option<Arc<Params>>,
    session: &Arc<SessionInfo>,
    in_transaction: bool,
    plugin: Option<&Plugin>,
) -> Result<StatementRoute, SqlError> {
    router
        .resolving(|| -> Result<_, RouteError> {
            router.route_statement(facts, 0, params, session, in_transaction, plugin)
        })
        .await
        .map_err(SqlError::from)
}

fn shown(shards: &[String]) -> String {
    match shards {
        [one] => one.clone(),
        many => format!("{many:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::router;
    use super::*;

    async fn check(tests: &str) -> Result<usize, String> {
        let r = router("");
        let plugin = r.policies[0].plugin.load_full();
        verify(&r, 0, &plugin, Some(tests), "t.tests.toml").await
    }

    #[tokio::test]
    async fn cases_can_expect_several_shards_a_role_and_use_any_table_of_the_policy() {
        let passed = check(
            r#"
            [[case]]
            sql = "SELECT * FROM {table} WHERE {key} = $1"
            params = ["42"]
            shard = "s0"
            role = "any"
            [[case]]
            sql = "SELECT * FROM orders WHERE customer_id IN (1, 3)"
            shards = ["s1", "s0"]
            [[case]]
            sql = "SELECT count(*) FROM {table}"
            shards = "all"
            session = { region = "eu" }
            in_transaction = true
            [[case]]
            sql = "/* shardcar: role=replica */ SELECT * FROM orders WHERE customer_id = 3"
            shard = "s1"
            role = "replica"
            [[case]]
            sql = "UPDATE orders SET customer_id = 5 WHERE customer_id = 1"
            error = "customer_id"
            "#,
        )
        .await;
        assert_eq!(passed, Ok(5));
    }

    #[tokio::test]
    async fn every_failing_case_is_reported() {
        let e = check(
            r#"
            [[case]]
            sql = "SELECT * FROM orders WHERE customer_id = 42"
            shard = "s1"
            [[case]]
            sql = "SELECT * FROM orders WHERE customer_id = 3"
            shard = "s1"
            [[case]]
            sql = "SELECT * FROM orders WHERE customer_id = 3"
            shard = "s1"
            role = "primary"
            [[case]]
            sql = "SELECT * FROM customers WHERE id = 3"
            shard = "s1"
            [[case]]
            sql = "SELECT * FROM orders"
            shards = "some"
            "#,
        )
        .await
        .unwrap_err();
        assert!(e.starts_with("4 of 4 cases failed"), "{e}");
        assert!(
            e.contains("case 1 (SELECT * FROM orders WHERE customer_id = 42): went to [\"s0\"], expected s1"),
            "{e}"
        );
        assert!(e.contains("case 3") && e.contains("asked for role Any, expected Primary"), "{e}");
        assert!(e.contains("case 4") && e.contains("names no table routed by this policy"), "{e}");
        assert!(e.contains("case 5") && e.contains("give a list or \"all\""), "{e}");
        assert!(!e.contains("case 2"), "{e}");
    }
}
