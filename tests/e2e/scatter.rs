//! Statements across shards (simple protocol, outside a transaction): the
//! same answers as one plain Postgres holding all the rows, DDL on every
//! shard, clear refusals, and rows that stream without the sidecar's memory
//! growing with the result.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shardcar::localpg::{Cluster, Workspace};
use tokio_postgres::SimpleQueryMessage;

use crate::harness::{Fleet, Sidecar, direct, sqlstate, table, text_rows as rows};

/// A count answered by one shard directly.
async fn count_on(shard: &Cluster, sql: &str) -> i64 {
    direct(shard).await.query_one(sql, &[]).await.unwrap().get(0)
}

/// A random statement of a shape shardcar merges, and whether its order is
/// total (so the order itself must match, not only the multiset).
fn query(rng: &mut StdRng, t: &str) -> (String, bool) {
    let conditions = [
        String::new(),
        format!(" WHERE grp = {}", rng.random_range(0..8)),
        format!(" WHERE amount > {}.{:02}", rng.random_range(0..900), rng.random_range(0..100)),
        " WHERE name LIKE 'a%'".to_string(),
        " WHERE flag".to_string(),
        " WHERE created >= '2024-03-01'".to_string(),
        format!(" WHERE customer_id IN ({}, {})", rng.random_range(1..400), rng.random_range(1..400)),
    ];
    let cond = &conditions[rng.random_range(0..conditions.len())];
    if rng.random_bool(0.35) {
        let aggregates = [
            "count(*)",
            "count(amount)",
            "sum(grp)",
            "sum(customer_id)",
            "sum(amount)",
            "avg(grp)",
            "avg(amount)",
            "avg(customer_id)",
            "min(name)",
            "max(name)",
            "min(amount)",
            "max(created)",
            "min(customer_id)",
            "count(DISTINCT grp)",
            "count(DISTINCT name)",
        ];
        let n = rng.random_range(1..4);
        let list: Vec<&str> = (0..n).map(|_| aggregates[rng.random_range(0..aggregates.len())]).collect();
        return (format!("SELECT {} FROM {t}{cond}", list.join(", ")), true);
    }
    if rng.random_bool(0.2) {
        // GROUP BY with the mergeable aggregates; ordered by the keys (a
        // total order, groups being unique), by an aggregate then the keys,
        // or not at all.
        let (keys, order) = [
            ("grp", "grp"),
            ("flag", "flag DESC"),
            ("grp, flag", "grp, flag"),
            ("created", "created DESC"),
            ("name", "name NULLS FIRST"),
        ][rng.random_range(0..5)];
        let aggregates = ["count(*)", "sum(amount)", "avg(amount)", "min(name)", "max(created)", "count(amount)"];
        let n = rng.random_range(1..3);
        let list: Vec<&str> = (0..n).map(|_| aggregates[rng.random_range(0..aggregates.len())]).collect();
        let list = list.join(", ");
        return match rng.random_range(0..4) {
            0 => (format!("SELECT {keys}, {list} FROM {t}{cond} GROUP BY {keys}"), false),
            1 => (format!("SELECT {keys}, {list} FROM {t}{cond} GROUP BY {keys} ORDER BY {order}"), true),
            2 => (
                format!(
                    "SELECT {list}, {keys} FROM {t}{cond} GROUP BY {keys} ORDER BY 1 DESC, {order} LIMIT {}",
                    rng.random_range(1..6)
                ),
                true,
            ),
            _ => (format!("SELECT count(*) AS n FROM {t}{cond} GROUP BY {keys} ORDER BY {order}"), true),
        };
    }
    if rng.random_bool(0.15) {
        let (cols, order) =
            [("grp", "grp"), ("name, flag", "name, flag"), ("flag, grp", "grp DESC, flag"), ("created", "created")]
                [rng.random_range(0..4)];
        return match rng.random_range(0..3) {
            0 => (format!("SELECT DISTINCT {cols} FROM {t}{cond}"), false),
            1 => (format!("SELECT DISTINCT {cols} FROM {t}{cond} ORDER BY {order}"), true),
            _ => (
                format!("SELECT DISTINCT {cols} FROM {t}{cond} ORDER BY {order} LIMIT {}", rng.random_range(1..6)),
                true,
            ),
        };
    }
    let columns = ["*", "customer_id, name", "name, amount, grp", "customer_id, created, flag", "grp"];
    let cols = columns[rng.random_range(0..columns.len())];
    let orders = [
        ("", false),
        (" ORDER BY customer_id", true),
        (" ORDER BY customer_id DESC", true),
        (" ORDER BY grp, customer_id", true),
        (" ORDER BY amount DESC NULLS LAST, customer_id", true),
        (" ORDER BY name, customer_id DESC", true),
        (" ORDER BY created, customer_id", true),
        (" ORDER BY amount NULLS FIRST, customer_id", true),
        (" ORDER BY grp", false),
    ];
    let (order, total) = orders[rng.random_range(0..orders.len())];
    // A limit needs a total order, or each side may pick other rows.
    let limit = if total && rng.random_bool(0.5) {
        match rng.random_range(0..3) {
            0 => format!(" LIMIT {}", rng.random_range(0..30)),
            1 => format!(" LIMIT {} OFFSET {}", rng.random_range(1..30), rng.random_range(0..50)),
            _ => format!(" OFFSET {}", rng.random_range(0..500)),
        }
    } else {
        String::new()
    };
    (format!("SELECT {cols} FROM {t}{cond}{order}{limit}"), total)
}

#[tokio::test]
async fn fanned_out_reads_answer_like_one_postgres() {
    let fleet = Fleet::shared();
    let t = table("diff");
    let sidecar = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sidecar.connect().await;
    let ws = Workspace::new().unwrap();
    let reference = ws.primary("reference").unwrap();
    let one = direct(&reference).await;

    // DDL through shardcar runs on every shard.
    let ddl = format!(
        "CREATE TABLE {t} (customer_id bigint PRIMARY KEY, grp int, amount numeric(10,2), name text, created date, flag bool)"
    );
    c.batch_execute(&ddl).await.unwrap();
    one.batch_execute(&ddl).await.unwrap();
    for shard in [&fleet.s0, &fleet.s1] {
        let n = count_on(shard, &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{t}'")).await;
        assert_eq!(n, 1, "the table exists on every shard");
    }

    // The same rows on both sides, through shardcar routed by key.
    let mut rng = StdRng::seed_from_u64(20261121);
    for id in 1..=400i64 {
        let grp = rng.random_range(0..8);
        let amount = if rng.random_bool(0.1) {
            "NULL".into()
        } else {
            format!("{}.{:02}", rng.random_range(0..1000), rng.random_range(0..100))
        };
        let name = if rng.random_bool(0.05) {
            "NULL".into()
        } else {
            format!("'{}{}'", ["a", "b", "c", "A", "z"][rng.random_range(0..5)], rng.random_range(0..50))
        };
        let created = format!("'2024-{:02}-{:02}'", rng.random_range(1..13), rng.random_range(1..29));
        let flag = rng.random_bool(0.5);
        let insert = format!("INSERT INTO {t} VALUES ({id}, {grp}, {amount}, {name}, {created}, {flag})");
        c.batch_execute(&insert).await.unwrap();
        one.batch_execute(&insert).await.unwrap();
    }
    let count = format!("SELECT count(*) FROM {t}");
    let (n0, n1) = (count_on(&fleet.s0, &count).await, count_on(&fleet.s1, &count).await);
    assert!(n0 > 100 && n1 > 100 && n0 + n1 == 400, "rows spread over both shards: {n0} + {n1}");

    let mut compared = 0;
    for _ in 0..300 {
        let (sql, total) = query(&mut rng, &t);
        crate::harness::assert_same_rows(&c, &one, &sql, total).await;
        compared += 1;
    }
    assert_eq!(compared, 300);
    // The session is fine for ordinary statements afterwards.
    assert_eq!(rows(&c, &format!("SELECT name FROM {t} WHERE customer_id = 7")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn shapes_that_cannot_be_merged_are_refused_and_the_session_carries_on() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("refuse").await;
    let sidecar = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sidecar.connect().await;
    for (sql, why) in [
        (format!("SELECT count(DISTINCT note) FILTER (WHERE note > 'a') FROM {t}"), "without FILTER"),
        (format!("SELECT note, array_agg(note) FROM {t} GROUP BY note"), "array_agg"),
        (format!("SELECT customer_id, rank() OVER (ORDER BY customer_id) FROM {t}"), "window"),
        (format!("SELECT * FROM {t} a JOIN {t} b USING (note)"), "equal shard keys"),
        (format!("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY customer_id) FROM {t}"), "percentile"),
    ] {
        let e = c.simple_query(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{sql}");
        let db = e.as_db_error().unwrap();
        assert!(db.message().contains(why), "{sql}: {}", db.message());
        assert!(db.hint().unwrap_or_default().contains("shard="), "{sql}");
    }
    // Inside a transaction a statement across shards is still refused.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c.simple_query(&format!("SELECT * FROM {t}")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows(&c, &format!("SELECT count(*) FROM {t}")).await.unwrap(), [[Some("0".to_string())]]);
}

#[tokio::test]
async fn ddl_that_fails_on_one_shard_says_where_it_ran() {
    let fleet = Fleet::shared();
    let t = table("ddl");
    let sidecar = Sidecar::start(&fleet.config(2));
    direct(&fleet.s1).await.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();
    let c = sidecar.connect().await;
    let e = c.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P07", "the shard's own error: {e}");
    // It did run on s0; IF NOT EXISTS completes it everywhere.
    c.batch_execute(&format!("CREATE TABLE IF NOT EXISTS {t} (id int)")).await.unwrap();
    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    for shard in [&fleet.s0, &fleet.s1] {
        let n = count_on(shard, &format!("SELECT count(*) FROM pg_tables WHERE tablename = '{t}'")).await;
        assert_eq!(n, 0);
    }
}

#[tokio::test]
async fn a_large_fanned_out_result_streams_in_flat_memory() {
    const PER_SHARD: i64 = 1_000_000;
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("big").await;
    // Unlogged and dropped at the end: 230 MiB of rows should not also sit in
    // WAL and on the replica, on a disk the build and other tests share.
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard)
            .await
            .batch_execute(&format!(
                "ALTER TABLE {t} SET UNLOGGED; \
                 INSERT INTO {t} SELECT g, repeat('x', 100) FROM generate_series(1, {PER_SHARD}) g"
            ))
            .await
            .unwrap();
    }
    let sidecar = Sidecar::start(&fleet.hashed_config(&t, ""));
    // A client that reads rows as they come and keeps none.
    let crate::harness::Streamed { rows, bytes, before_kib: before, peak_kib: peak } =
        crate::harness::stream_measuring_rss(&sidecar, &format!("SELECT * FROM {t} ORDER BY customer_id")).await;
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
    assert_eq!(rows, 2 * PER_SHARD as u64);
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "fan-out of {rows} rows ({} MiB on the wire): sidecar RSS {} MiB before, {} MiB after (+{growth_mib} MiB)",
        bytes >> 20,
        before / 1024,
        peak / 1024
    );
    assert!(growth_mib < 64, "memory grew with the result: +{growth_mib} MiB for {} MiB of rows", bytes >> 20);
}

#[tokio::test]
async fn updates_and_deletes_without_a_key_run_on_every_shard_when_allowed() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("bcast").await;
    let refusing = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = refusing.connect().await;
    for id in 1..=10 {
        c.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'x')")).await.unwrap();
    }
    let e = c.batch_execute(&format!("UPDATE {t} SET note = 'y'")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    assert!(e.as_db_error().unwrap().hint().unwrap_or_default().contains("allow_broadcast_writes"), "{e}");

    let config = fleet
        .hashed_config(&t, "")
        .replace("read_replicas = false", "read_replicas = false\nallow_broadcast_writes = true");
    let allowing = Sidecar::start(&config);
    let c = allowing.connect().await;
    let answer = c
        .simple_query(&format!("UPDATE {t} SET note = 'y' WHERE customer_id > 3 RETURNING customer_id"))
        .await
        .unwrap();
    let mut returned: Vec<i64> = answer
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    returned.sort();
    assert_eq!(returned, (4..=10).collect::<Vec<i64>>(), "RETURNING rows of both shards");
    assert!(answer.iter().any(|m| matches!(m, SimpleQueryMessage::CommandComplete(7))), "counts summed: {answer:?}");
    // With the extended protocol too, bound parameters and all.
    let deleted = c.execute(&format!("DELETE FROM {t} WHERE note = $1"), &[&"y"]).await.unwrap();
    assert_eq!(deleted, 7, "counts summed");
    let mut left = 0;
    for shard in [&fleet.s0, &fleet.s1] {
        let n = count_on(shard, &format!("SELECT count(*) FROM {t}")).await;
        left += n;
    }
    assert_eq!(left, 3);
    // Changing the shard key stays refused.
    let e = c.batch_execute(&format!("UPDATE {t} SET customer_id = customer_id + 100")).await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("shard key"), "{e}");
}

#[tokio::test]
async fn a_multi_row_insert_is_split_by_shard() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("split").await;
    let sidecar = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sidecar.connect().await;
    let answer = c
        .simple_query(&format!(
            "INSERT INTO {t} (customer_id, note) VALUES (1, 'a'), (3, 'b'), (2, 'c'), (4, 'd') RETURNING customer_id"
        ))
        .await
        .unwrap();
    let returned = answer.iter().filter(|m| matches!(m, SimpleQueryMessage::Row(_))).count();
    assert_eq!(returned, 4);
    assert!(answer.iter().any(|m| matches!(m, SimpleQueryMessage::CommandComplete(4))), "{answer:?}");
    // Without a column list the key's position comes from the catalog.
    c.batch_execute(&format!("INSERT INTO {t} VALUES (5, 'e'), (6, 'f'), (7, 'g')")).await.unwrap();
    // Each row is where routing by its key finds it, and only there.
    for id in 1..=7i64 {
        let rows = c.query(&format!("SELECT note FROM {t} WHERE customer_id = $1"), &[&id]).await.unwrap();
        assert_eq!(rows.len(), 1, "customer {id}");
    }
    let mut total = 0;
    for shard in [&fleet.s0, &fleet.s1] {
        let n = count_on(shard, &format!("SELECT count(*) FROM {t}")).await;
        assert!(n > 0, "both shards got rows");
        total += n;
    }
    assert_eq!(total, 7);
    // INSERT ... SELECT cannot be split: refused.
    let e = c.batch_execute(&format!("INSERT INTO {t} SELECT customer_id + 100, note FROM {t}")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
}

#[tokio::test]
async fn reference_tables_are_written_everywhere_and_read_anywhere() {
    let fleet = Fleet::shared();
    let r = table("ref");
    let config = fleet
        .config(2)
        .replace("read_replicas = false", &format!("read_replicas = false\nreference_tables = [\"{r}\"]"));
    let sidecar = Sidecar::start(&config);
    let c = sidecar.connect().await;
    c.batch_execute(&format!("CREATE TABLE {r} (code text PRIMARY KEY, name text)")).await.unwrap();
    let answer = c.simple_query(&format!("INSERT INTO {r} VALUES ('EUR', 'Euro'), ('USD', 'Dollar')")).await.unwrap();
    assert!(
        answer.iter().any(|m| matches!(m, SimpleQueryMessage::CommandComplete(2))),
        "one shard's count: {answer:?}"
    );
    c.batch_execute(&format!("UPDATE {r} SET name = 'Euro €' WHERE code = 'EUR'")).await.unwrap();
    for shard in [&fleet.s0, &fleet.s1] {
        let got = rows(&direct(shard).await, &format!("SELECT code, name FROM {r} ORDER BY code")).await.unwrap();
        assert_eq!(
            got,
            [[Some("EUR".to_string()), Some("Euro €".to_string())], [Some("USD".into()), Some("Dollar".into())]]
        );
    }
    assert_eq!(rows(&c, &format!("SELECT count(*) FROM {r}")).await.unwrap(), [[Some("2".to_string())]]);
    // Writes that could reach only one shard are refused: in a transaction, or extended protocol.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c.batch_execute(&format!("INSERT INTO {r} VALUES ('JPY', 'Yen')")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    assert!(e.as_db_error().unwrap().hint().unwrap_or("").contains("two_phase_commit"), "{e}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // With the extended protocol it runs everywhere too.
    assert_eq!(c.execute(&format!("DELETE FROM {r} WHERE code = $1"), &[&"XXX"]).await.unwrap(), 0);
    for shard in [&fleet.s0, &fleet.s1] {
        let n = count_on(shard, &format!("SELECT count(*) FROM {r}")).await;
        assert_eq!(n, 2, "nothing written by the refused statements");
    }
}

#[tokio::test]
async fn a_shard_that_is_down_fails_the_fanned_out_statement_only() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("down").await;
    // A third shard nobody listens on, in the policy.
    let config = fleet
        .hashed_config(&t, "")
        .replace("config = { shards = [\"s0\", \"s1\"] }", "config = { shards = [\"s0\", \"s1\", \"s2\"] }")
        .replace(
            "[routing]",
            "[[shards]]\nname = \"s2\"\nprimary = \"postgres://postgres@127.0.0.1:1/app\"\n\n[routing]",
        );
    let sidecar = Sidecar::start(&config);
    let c = sidecar.connect().await;
    let e = c.simple_query(&format!("SELECT count(*) FROM {t}")).await.unwrap_err();
    assert_eq!(sqlstate(&e), "08001", "{e}");
    assert!(e.as_db_error().unwrap().message().contains("s2"), "names the shard: {e}");
    // Statements for the live shards carry on, on the same session.
    c.batch_execute(&format!("/* shardcar: shard=s0 */ INSERT INTO {t} VALUES (1, 'a')")).await.unwrap();
    assert_eq!(rows(&c, &format!("/* shardcar: shard=s0 */ SELECT note FROM {t}")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_stops_the_shards_queries() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("leave").await;
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard)
            .await
            .batch_execute(&format!("INSERT INTO {t} SELECT g, repeat('y', 200) FROM generate_series(1, 300000) g"))
            .await
            .unwrap();
    }
    let sidecar = Sidecar::start(&fleet.hashed_config(&t, ""));
    let (mut socket, _) = crate::harness::logged_in(sidecar.port).await;
    let mut query = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query(&format!("SELECT * FROM {t} ORDER BY customer_id"), &mut query)
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut socket, &query).await.unwrap();
    let mut some = [0u8; 4096];
    tokio::io::AsyncReadExt::read(&mut socket, &mut some).await.unwrap();
    drop(socket);
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%FROM {t} ORDER BY%'"
    );
    for shard in [&fleet.s0, &fleet.s1] {
        let d = direct(shard).await;
        let stopped = crate::harness::eventually(Duration::from_secs(20), async || {
            d.query_one(&active, &[]).await.map(|r| r.get::<_, i64>(0) == 0).unwrap_or(false)
        })
        .await;
        assert!(stopped, "{} still runs the abandoned query", shard.name);
    }
    let c = sidecar.connect().await;
    // The sidecar and its pools carry on: the next fan-out reads both shards.
    let n = rows(&c, &format!("SELECT count(*) FROM {t} WHERE customer_id <= 5")).await.unwrap();
    assert_eq!(n, [[Some("10".to_string())]]);
}

#[tokio::test]
async fn the_extended_protocol_fans_out_too() {
    let fleet = Fleet::shared();
    let t = table("extfan");
    let sidecar = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sidecar.connect().await;
    // DDL prepared and executed with the extended protocol runs on every shard.
    c.execute(&format!("CREATE TABLE {t} (customer_id bigint, note text, score float8)"), &[]).await.unwrap();
    c.execute(&format!("CREATE INDEX {t}_note ON {t} (note)"), &[]).await.unwrap();
    for shard in [&fleet.s0, &fleet.s1] {
        let sql = format!("SELECT count(*) FROM pg_indexes WHERE indexname = '{t}_note'");
        assert_eq!(count_on(shard, &sql).await, 1, "the index exists on every shard");
    }
    for id in 1..=60i64 {
        let insert = format!("INSERT INTO {t} VALUES ($1, $2, $3)");
        c.execute(&insert, &[&id, &format!("n{}", id % 7), &((id % 10) as f64 - 4.5)]).await.unwrap();
    }
    let (n0, n1) = (
        count_on(&fleet.s0, &format!("SELECT count(*) FROM {t}")).await,
        count_on(&fleet.s1, &format!("SELECT count(*) FROM {t}")).await,
    );
    assert!(n0 > 0 && n1 > 0, "{n0} + {n1}");

    // Bound parameters, binary results (tokio-postgres asks for binary),
    // merged in order: ints, floats, and the same statement run twice.
    let ids = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>();
    let q = format!("SELECT customer_id, score FROM {t} WHERE customer_id > $1 ORDER BY customer_id DESC LIMIT 5");
    let stmt = c.prepare(&q).await.unwrap();
    assert_eq!(ids(c.query(&stmt, &[&10i64]).await.unwrap()), [60, 59, 58, 57, 56]);
    assert_eq!(ids(c.query(&stmt, &[&0i64]).await.unwrap()), [60, 59, 58, 57, 56]);
    let by_score = c
        .query(
            &format!("SELECT score, customer_id FROM {t} WHERE customer_id <= $1 ORDER BY score, customer_id"),
            &[&20i64],
        )
        .await
        .unwrap();
    let scores: Vec<f64> = by_score.iter().map(|r| r.get(0)).collect();
    assert_eq!(scores.len(), 20);
    assert!(scores.windows(2).all(|w| w[0] <= w[1]), "{scores:?}");

    // Aggregates and GROUP BY, combined by Postgres in the client's formats.
    let row = c
        .query_one(&format!("SELECT count(*), max(customer_id) FROM {t} WHERE customer_id > $1"), &[&50i64])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (10, 60));
    let groups = c
        .query(
            &format!("SELECT note, count(*) AS n FROM {t} WHERE customer_id >= $1 GROUP BY note ORDER BY note"),
            &[&1i64],
        )
        .await
        .unwrap();
    let groups: Vec<(String, i64)> = groups.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(groups.len(), 7);
    assert_eq!(groups.iter().map(|g| g.1).sum::<i64>(), 60);
    assert_eq!(groups[0], ("n0".to_string(), 8));

    // A broadcast statement's count, and a shape that cannot be merged.
    let err = c.query(&format!("SELECT array_agg(note) FROM {t} WHERE customer_id > $1"), &[&0i64]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    // The connection is in step afterwards.
    let one: i64 =
        c.query_one(&format!("SELECT customer_id FROM {t} WHERE customer_id = $1"), &[&7i64]).await.unwrap().get(0);
    assert_eq!(one, 7);
}
