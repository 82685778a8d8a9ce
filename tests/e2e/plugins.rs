//! Routing by plugins, end to end: rows land where the strategy says
//! (checked on the shards directly) and reads find them again.

use crate::harness::{Fleet, Sidecar, direct, sqlstate, table};

/// Which shard holds each key, read from the shards themselves.
async fn placement(fleet: &Fleet, t: &str) -> Vec<(i64, usize)> {
    let mut out = Vec::new();
    for (i, shard) in [&fleet.s0, &fleet.s1].into_iter().enumerate() {
        for row in direct(shard).await.query(&format!("SELECT customer_id FROM {t}"), &[]).await.unwrap() {
            out.push((row.get::<_, i64>(0), i));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn hash_routes_like_postgres_hash_partitioning() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("hashed").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    for key in 1..=10i64 {
        c.batch_execute(&format!("INSERT INTO {t} VALUES ({key}, 'literal {key}')")).await.unwrap();
    }
    let insert = c.prepare(&format!("INSERT INTO {t} (customer_id, note) VALUES ($1, $2)")).await.unwrap();
    for key in 11..=20i64 {
        c.execute(&insert, &[&key, &format!("bound {key}")]).await.unwrap();
    }
    // Text-format parameters too (as psql, node-postgres and others send them).
    c.execute(&format!("INSERT INTO {t} VALUES ($1::text::bigint, 'text param')"), &[&"21"]).await.unwrap();

    // Postgres's own placement for a PARTITION BY HASH (bigint) table with MODULUS 2.
    let p = direct(&fleet.s0).await;
    let pt = table("pcheck");
    p.batch_execute(&format!(
        "CREATE TABLE {pt} (k bigint) PARTITION BY HASH (k);
         CREATE TABLE {pt}_0 PARTITION OF {pt} FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE {pt}_1 PARTITION OF {pt} FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         INSERT INTO {pt} SELECT generate_series(1, 21);"
    ))
    .await
    .unwrap();
    let mut expected: Vec<(i64, usize)> = p
        .query(&format!("SELECT k, right(tableoid::regclass::text, 1)::int FROM {pt}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i32>(1) as usize))
        .collect();
    expected.sort();
    assert_eq!(placement(fleet, &t).await, expected, "shard index = Postgres's hash partition remainder");
    assert!(expected.iter().any(|(_, s)| *s == 0) && expected.iter().any(|(_, s)| *s == 1));

    // Reads find every row again, by literal and by bound key.
    let read = c.prepare(&format!("SELECT note FROM {t} WHERE customer_id = $1")).await.unwrap();
    for key in 1..=21i64 {
        let by_param: String = c.query_one(&read, &[&key]).await.unwrap().get(0);
        let by_literal: String =
            c.query_one(&format!("SELECT note FROM {t} WHERE customer_id = {key}"), &[]).await.unwrap().get(0);
        assert_eq!(by_param, by_literal);
    }
}

#[tokio::test]
async fn statements_spanning_shards_run_merged_or_are_refused_with_a_reason() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("spanned").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    // Keys 1 and 2 are on s0, 3 on s1 (see the test above).
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'a'); INSERT INTO {t} VALUES (2, 'b')")).await.unwrap();
    let rows = c.query(&format!("SELECT note FROM {t} WHERE customer_id IN (1, 2) ORDER BY note"), &[]).await.unwrap();
    assert_eq!(rows.len(), 2, "an IN list within one shard runs there");

    // Reads across shards run on both, with either protocol (merging is
    // tested in tests/e2e/scatter.rs).
    let across = c.simple_query(&format!("SELECT * FROM {t} WHERE customer_id IN (1, 3)")).await.unwrap();
    assert_eq!(across.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count(), 1);
    let both = format!("SELECT note FROM {t} WHERE customer_id IN (1, 3)");
    assert_eq!(c.query(&both, &[]).await.unwrap().len(), 1);
    assert_eq!(c.query(&format!("SELECT * FROM {t}"), &[]).await.unwrap().len(), 2);
    // A multi-row INSERT with parameters is split, each shard binding its rows' parameters.
    let insert = format!("INSERT INTO {t} VALUES ($1, $2), ($3, $4), ($5, $2)");
    assert_eq!(c.execute(&insert, &[&5i64, &"p", &3i64, &"q", &1i64]).await.unwrap(), 3);
    for (shard, key, note) in [(&fleet.s1, 3, "q"), (&fleet.s0, 1, "p")] {
        let sql = format!("SELECT count(*) FROM {t} WHERE customer_id = {key} AND note = '{note}'");
        let n: i64 = crate::harness::direct(shard).await.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "key {key}");
    }
    for (sql, words) in [
        (format!("INSERT INTO {t} (note) VALUES ('no key')"), "give customer_id in every row"),
        (format!("UPDATE {t} SET customer_id = 3 WHERE customer_id = 1"), "shard key"),
    ] {
        let err = c.batch_execute(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), "0A000", "{sql}");
        let db = err.as_db_error().unwrap();
        let text = format!("{} {}", db.message(), db.hint().unwrap_or(""));
        assert!(text.contains(words), "{sql}: {text}");
    }
    // Nothing was written by the refused statements (s1 holds the split
    // INSERT's keys 3 and 5 only); an explicit target still works.
    let n: i64 = c.query_one(&format!("/* shardcar: shard=s1 */ SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

/// Creates `t (id bigint, key <key_type>, region text, note text)` on both shards.
async fn create(fleet: &Fleet, t: &str, key_type: &str) {
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard)
            .await
            .batch_execute(&format!("CREATE TABLE {t} (id bigint, k {key_type}, region text, note text)"))
            .await
            .unwrap();
    }
}

/// Where each row is, by id: read from the shards directly.
async fn shard_of_ids(fleet: &Fleet, t: &str) -> std::collections::BTreeMap<i64, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (i, shard) in [&fleet.s0, &fleet.s1].into_iter().enumerate() {
        for row in direct(shard).await.query(&format!("SELECT id FROM {t}"), &[]).await.unwrap() {
            assert!(out.insert(row.get::<_, i64>(0), i).is_none(), "a row is on one shard only");
        }
    }
    out
}

fn strategy_config(fleet: &Fleet, t: &str, plugin: &str, config: &str, extra: &str) -> String {
    fleet.config_with(
        4,
        &format!(
            "[[policies]]\nname = \"p\"\nplugin = \"{plugin}\"\nconfig = {config}\n\
             [[tables]]\nname = \"{t}\"\nkey = \"k\"\npolicy = \"p\"\n{extra}"
        ),
    )
}

#[tokio::test]
async fn range_places_keys_by_range_and_refuses_gaps() {
    let fleet = Fleet::shared();
    let t = table("ranged");
    create(fleet, &t, "bigint").await;
    let config = r#"{ ranges = [ { to = 100, shard = "s0" }, { from = 100, to = 200, shard = "s1" }, { from = 300, shard = "s0" } ] }"#;
    let sc = Sidecar::start(&strategy_config(fleet, &t, "range", config, ""));
    let c = sc.connect().await;
    let insert = c.prepare(&format!("INSERT INTO {t} (id, k) VALUES ($1, $2)")).await.unwrap();
    for (id, key) in [(1i64, 5i64), (2, 99), (3, 100), (4, 199), (5, 300), (6, 1_000_000)] {
        if id % 2 == 0 {
            c.execute(&insert, &[&id, &key]).await.unwrap();
        } else {
            c.batch_execute(&format!("INSERT INTO {t} (id, k) VALUES ({id}, {key})")).await.unwrap();
        }
    }
    let want: std::collections::BTreeMap<i64, usize> = [(1, 0), (2, 0), (3, 1), (4, 1), (5, 0), (6, 0)].into();
    assert_eq!(shard_of_ids(fleet, &t).await, want);
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM {t} WHERE k = $1"), &[&199i64]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let err = c.batch_execute(&format!("INSERT INTO {t} (id, k) VALUES (7, 250)")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    assert!(err.as_db_error().unwrap().message().contains("key 250 is in no configured range"), "{err:?}");
}

#[tokio::test]
async fn consistent_hash_spreads_keys_and_finds_them_again() {
    let fleet = Fleet::shared();
    let t = table("ring");
    create(fleet, &t, "text").await;
    let sc = Sidecar::start(&strategy_config(fleet, &t, "consistent-hash", r#"{ shards = ["s0", "s1"] }"#, ""));
    let c = sc.connect().await;
    let insert = c.prepare(&format!("INSERT INTO {t} (id, k, note) VALUES ($1, $2, $3)")).await.unwrap();
    for id in 0..40i64 {
        c.execute(&insert, &[&id, &format!("user-{id}"), &format!("note {id}")]).await.unwrap();
    }
    let placed = shard_of_ids(fleet, &t).await;
    assert_eq!(placed.len(), 40);
    let on_s1 = placed.values().filter(|&&s| s == 1).count();
    assert!((8..=32).contains(&on_s1), "both shards get keys: {on_s1} of 40 on s1");
    for id in 0..40i64 {
        let note: String =
            c.query_one(&format!("SELECT note FROM {t} WHERE k = 'user-{id}'"), &[]).await.unwrap().get(0);
        assert_eq!(note, format!("note {id}"));
    }
}

#[tokio::test]
async fn directory_follows_its_table_without_a_restart() {
    let fleet = Fleet::shared();
    let t = table("dir");
    let map = table("shard_map");
    create(fleet, &t, "bigint").await;
    let s0 = direct(&fleet.s0).await;
    s0.batch_execute(&format!(
        "CREATE TABLE {map} (key bigint PRIMARY KEY, shard text); INSERT INTO {map} VALUES (1, 's1'), (2, 's0'), (3, 's0')"
    ))
    .await
    .unwrap();
    let extra = format!(
        "[[directories]]\nnamespace = \"customers\"\nshard = \"s0\"\ncache_ttl_ms = 100\n\
         query = \"SELECT shard FROM {map} WHERE key = $1::bigint\"\n"
    );
    let sc = Sidecar::start(&strategy_config(fleet, &t, "directory", r#"{ namespace = "customers" }"#, &extra));
    let c = sc.connect().await;
    for (id, key) in [(1i64, 1i64), (2, 2), (3, 3)] {
        c.execute(&format!("INSERT INTO {t} (id, k) VALUES ($1, $2)"), &[&id, &key]).await.unwrap();
    }
    s0.batch_execute(&format!("UPDATE {map} SET shard = 's1' WHERE key = 3")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    c.batch_execute(&format!("INSERT INTO {t} (id, k) VALUES (4, 3)")).await.unwrap();
    let want: std::collections::BTreeMap<i64, usize> = [(1, 1), (2, 0), (3, 0), (4, 1)].into();
    assert_eq!(shard_of_ids(fleet, &t).await, want, "the moved key follows the directory");
    let err = c.batch_execute(&format!("INSERT INTO {t} (id, k) VALUES (5, 99)")).await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("key 99 is not in directory `customers`"), "{err:?}");
}

#[tokio::test]
async fn geo_sends_rows_to_their_region() {
    let fleet = Fleet::shared();
    let t = table("geo");
    create(fleet, &t, "bigint").await;
    let config = strategy_config(fleet, &t, "geo", r#"{ column = "region", fallback = "eu" }"#, "")
        .replace("name = \"s0\"\n", "name = \"s0\"\nlabels = { region = \"eu\" }\n")
        .replace("name = \"s1\"\n", "name = \"s1\"\nlabels = { region = \"us\" }\n");
    let sc = Sidecar::start(&config);
    let c = sc.connect().await;
    c.batch_execute(&format!("INSERT INTO {t} (id, k, region) VALUES (1, 10, 'eu'), (2, 11, 'eu')")).await.unwrap();
    c.execute(&format!("INSERT INTO {t} (id, k, region) VALUES ($1, $2, $3)"), &[&3i64, &12i64, &"us"]).await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} (id, k, region) VALUES (4, 13, 'apac')")).await.unwrap();
    // No region column in the statement: the session says where.
    c.batch_execute("SET shardcar.region = 'us'").await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} (id, k) VALUES (5, 14)")).await.unwrap();
    let want: std::collections::BTreeMap<i64, usize> = [(1, 0), (2, 0), (3, 1), (4, 0), (5, 1)].into();
    assert_eq!(shard_of_ids(fleet, &t).await, want, "apac has no shard: the fallback (eu) takes it");
    // Reads of the session's region go to its shard: rows 3 and 5.
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn tenant_pins_named_tenants_and_hashes_the_rest() {
    let fleet = Fleet::shared();
    let t = table("tenant");
    create(fleet, &t, "text").await;
    let config = r#"{ pinned = { acme = "s1" }, shared = ["s0"] }"#;
    let sc = Sidecar::start(&strategy_config(fleet, &t, "tenant", config, ""));
    let c = sc.connect().await;
    for (id, tenant) in [(1i64, "acme"), (2, "globex"), (3, "initech"), (4, "acme")] {
        c.execute(&format!("INSERT INTO {t} (id, k) VALUES ($1, $2)"), &[&id, &tenant]).await.unwrap();
    }
    let want: std::collections::BTreeMap<i64, usize> = [(1, 1), (2, 0), (3, 0), (4, 1)].into();
    assert_eq!(shard_of_ids(fleet, &t).await, want);
    // A statement without the tenant column, told the tenant by a hint.
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {t} WHERE id > 0 /* shardcar: tenant=acme */"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn explain_shows_facts_keys_decision_and_plugin() {
    let fleet = Fleet::shared();
    let config = fleet.hashed_config("orders_explained", "");
    let sc = Sidecar::start(&config);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config.replace("{PORT}", "1").replace("{ADMIN}", "2")).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcar"))
            .args(["explain", "--config"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&["SELECT * FROM orders_explained WHERE customer_id = $1 AND note = 'x'", "--param", "3"]);
    assert!(ok, "{text}");
    for expected in [
        "condition:  orders_explained.customer_id = $1=3",
        "routed by:  policy by-customer",
        "plugin:     hash@0.1.0",
        "keys:       3 of orders_explained",
        "runs on:      s1 primary",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let (ok, text) = run(&["SELECT * FROM orders_explained WHERE customer_id IN (1, 3) ORDER BY note LIMIT 5"]);
    assert!(ok && text.contains("runs on:      s0, s1\n"), "{text}");
    // Each key alone, and the rows of an INSERT one by one.
    assert!(text.contains("  key 1:       s0\n  key 3:       s1\n"), "{text}");
    assert!(text.contains("merged:       rows merged in ORDER BY order (each shard sends at most 5)"), "{text}");
    let (ok, text) = run(&["INSERT INTO orders_explained (customer_id, note) VALUES (1, 'a'), (3, 'b')"]);
    assert!(ok && text.contains("merged:       the rows split into 2 INSERTs, one per shard"), "{text}");
    for expected in
        ["routed by:  policy by-customer, row by row", "keys:       1, 3 of", "key 1:       s0", "key 3:       s1"]
    {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let (ok, text) = run(&["SELECT array_agg(note) FROM orders_explained"]);
    assert!(ok && text.contains("refused:") && text.contains("array_agg"), "{text}");

    // The admin API answers the same, as JSON.
    let (status, body) =
        sc.admin_get("/api/v1/explain?sql=SELECT%20*%20FROM%20orders_explained%20WHERE%20customer_id%20%3D%2042");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["statements"][0]["keys"], serde_json::json!(["42"]));
    assert_eq!(v["statements"][0]["routed_by"], "policy by-customer");
    assert_eq!(v["target"]["shard"], "s0");
}

#[test]
fn check_loads_plugins_and_reports_their_config_errors() {
    let fleet = Fleet::shared();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let bad =
        fleet.hashed_config("t", "").replace("config = { shards = [\"s0\", \"s1\"] }", "config = { shards = [] }");
    std::fs::write(&path, bad.replace("{PORT}", "1").replace("{ADMIN}", "2")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcar"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("policies[0] (by-customer)") && text.contains("non-empty list of shard names"), "{text}");
}

/// A counter summed over policies and plugin versions.
fn plugin_counter(sc: &Sidecar, name: &str) -> u64 {
    let metrics = sc.admin_get("/metrics").1;
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Statements a plugin routed so far: by a call, or by a decision it made
/// before for the same table, kind and keys.
pub fn plugin_routings(sc: &Sidecar) -> u64 {
    plugin_counter(sc, "shardcar_plugin_calls_total") + plugin_counter(sc, "shardcar_plugin_remembered_total")
}

#[tokio::test]
async fn a_decision_from_the_keys_alone_is_remembered() {
    // (One that read more is not: `directory_follows_its_table_without_a_restart` re-routes a key
    // whose directory entry moved.)
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("remember").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    let calls = || plugin_counter(&sc, "shardcar_plugin_calls_total");
    let remembered = || plugin_counter(&sc, "shardcar_plugin_remembered_total");
    let select = format!("SELECT note FROM {t} WHERE customer_id = $1");
    for _ in 0..20 {
        c.query(&select, &[&7i64]).await.unwrap();
    }
    // Remembered from its second time on: the hash plugin read only the keys.
    assert_eq!((calls(), remembered()), (2, 18), "key 7, twenty times");
    c.query(&select, &[&8i64]).await.unwrap();
    c.execute(&format!("INSERT INTO {t} VALUES ($1, 'x')"), &[&7i64]).await.unwrap();
    assert_eq!((calls(), remembered()), (4, 18), "another key, and another kind of statement, are new decisions");
    // Same answers as a plugin called every time: the rows are where a fresh sidecar routes them.
    let fresh =
        Sidecar::start(&fleet.hashed_config(&t, "").replace("[plugins]\n", "[plugins]\nremembered_decisions = 0\n"));
    let f = fresh.connect().await;
    for key in [7i64, 8] {
        let there: Vec<String> = c.query(&select, &[&key]).await.unwrap().iter().map(|r| r.get(0)).collect();
        let called: Vec<String> = f.query(&select, &[&key]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(there, called, "key {key}");
    }
    assert_eq!(plugin_counter(&fresh, "shardcar_plugin_remembered_total"), 0, "remembered_decisions = 0 turns it off");
}

#[tokio::test]
async fn one_plugin_call_per_routed_statement() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("calls").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    let before = plugin_routings(&sc);
    // (statement, plugin calls it takes): one per statement, whether it runs
    // on one shard or fans out; a multi-row INSERT routes each row.
    let simple = [
        (format!("INSERT INTO {t} VALUES (1, 'a')"), 1),
        (format!("SELECT note FROM {t} WHERE customer_id = 1"), 1),
        (format!("SELECT count(*) FROM {t}"), 1),
        (format!("SELECT * FROM {t} WHERE customer_id IN (1, 2, 3) ORDER BY customer_id"), 1),
        (format!("INSERT INTO {t} VALUES (10, 'x'), (11, 'y'), (12, 'z')"), 3),
        (format!("UPDATE {t} SET note = 'b' WHERE customer_id = 1"), 1),
    ];
    let mut expected = 0;
    for (sql, calls) in &simple {
        c.simple_query(sql).await.unwrap();
        expected += calls;
        assert_eq!(plugin_routings(&sc) - before, expected, "after {sql}");
    }
    // The extended protocol: the Parse and Describe route nothing; the Bind routes once.
    let one: i64 =
        c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = $1"), &[&1i64]).await.unwrap().get(0);
    assert_eq!(one, 1);
    expected += 1;
    assert_eq!(plugin_routings(&sc) - before, expected, "a bound statement on one shard");
    let rows = c
        .query(&format!("SELECT note FROM {t} WHERE customer_id IN ($1, $2) ORDER BY note"), &[&10i64, &11i64])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    expected += 1;
    assert_eq!(plugin_routings(&sc) - before, expected, "a bound statement that fans out");
}
