//! A simple query routed by its template (literals lifted out as `$n`)
//! must give plugins exactly the facts the text as written gives: keys,
//! predicates, INSERT rows, hints and statement kind.
#![no_main]

mod common;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use shardcar::classify::params::Params;
use shardcar::classify::{Facts, FactsCache};
use shardcar::config::KeyType;
use shardcar::policy::facts::{FactsView, SessionInfo, TableRule};
use shardcar::topology::PolicyId;

fn cache() -> &'static FactsCache {
    static CACHE: OnceLock<FactsCache> = OnceLock::new();
    CACHE.get_or_init(|| FactsCache::new(8 << 20, &Default::default()))
}

fuzz_target!(|data: &[u8]| {
    common::setup();
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let Some((template, params)) = cache().lookup_lifted(sql) else { return };
    let written = cache().get(sql);
    // Text Postgres cannot parse is sent as written and fails there.
    if written.statements.is_empty() || template.statements.is_empty() {
        return;
    }
    for key_type in [KeyType::Auto, KeyType::Int, KeyType::Text] {
        let rule = Arc::new(TableRule {
            table: "orders".into(),
            key: "customer_id".into(),
            key_type,
            policy: PolicyId::at(0),
            colocation: 0,
        });
        assert_eq!(seen(&template, Some(&params), &rule), seen(&written, None, &rule), "{sql:?}");
    }
});

type Seen =
    Result<(Vec<shardcar::classify::Value>, Vec<(String, String, Vec<shardcar::classify::Value>)>, String), String>;

/// What a plugin routing `orders` by `customer_id` is given.
fn seen(facts: &Arc<Facts>, params: Option<&Arc<Params>>, rule: &Arc<TableRule>) -> Seen {
    let view =
        FactsView::new(facts.clone(), 0, params.cloned(), rule.clone(), Arc::new(SessionInfo::default()), false, None)
            .map_err(|e| format!("{e:?}"))?;
    let rest = format!("{:?} {:?} {:?}", view.rows(), view.facts.hints, view.statement().kind);
    Ok((view.key_values.clone(), view.predicates(), rest))
}
