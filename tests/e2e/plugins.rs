//! Routing by plugins, end to end: rows land where the strategy says
//! (checked on the shards directly) and reads find them again.

use crate::harness::{Fleet, Sidecar, direct, sqlstate, table};

const HASH_POLICY: &str = r#"
[[policies]]
name = "by-customer"
plugin = "hash"
config = { shards = ["s0", "s1"] }
"#;

fn hash_config(fleet: &Fleet, t: &str) -> String {
    fleet.config_with(
        4,
        &format!("{HASH_POLICY}\n[[tables]]\nname = \"{t}\"\nkey = \"customer_id\"\npolicy = \"by-customer\"\n"),
    )
}

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
    let t = table("hashed");
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("CREATE TABLE {t} (customer_id bigint, note text)")).await.unwrap();
    }
    let sc = Sidecar::start(&hash_config(fleet, &t));
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
async fn statements_spanning_shards_are_refused_with_a_reason() {
    let fleet = Fleet::shared();
    let t = table("spanned");
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("CREATE TABLE {t} (customer_id bigint, note text)")).await.unwrap();
    }
    let sc = Sidecar::start(&hash_config(fleet, &t));
    let c = sc.connect().await;
    // Keys 1 and 2 are on s0, 3 on s1 (see the test above).
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'a'); INSERT INTO {t} VALUES (2, 'b')")).await.unwrap();
    let rows = c.query(&format!("SELECT note FROM {t} WHERE customer_id IN (1, 2) ORDER BY note"), &[]).await.unwrap();
    assert_eq!(rows.len(), 2, "an IN list within one shard runs there");

    for (sql, words) in [
        (format!("SELECT * FROM {t} WHERE customer_id IN (1, 3)"), "several shards (s0, s1)"),
        (format!("SELECT * FROM {t}"), "no single customer_id"),
        (format!("INSERT INTO {t} VALUES (1, 'x'), (3, 'y')"), "rows for several shards"),
        (format!("INSERT INTO {t} (note) VALUES ('no key')"), "give customer_id in every row"),
        (format!("UPDATE {t} SET customer_id = 3 WHERE customer_id = 1"), "shard key"),
    ] {
        let err = c.batch_execute(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), "0A000", "{sql}");
        let db = err.as_db_error().unwrap();
        let text = format!("{} {}", db.message(), db.hint().unwrap_or(""));
        assert!(text.contains(words), "{sql}: {text}");
    }
    // Nothing was written by the refused statements; an explicit target still works.
    let n: i64 = c.query_one(&format!("/* shardcar: shard=s1 */ SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}
