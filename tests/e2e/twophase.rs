//! Transactions across shards with `routing.two_phase_commit = true`: they
//! commit everywhere or nowhere, including when shardcar is killed between
//! PREPARE TRANSACTION and COMMIT PREPARED and started again.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::{Fleet, Sidecar, direct, eventually, sqlstate, two_phase};

/// `t` sharded by customer_id over s0 and s1, transactions across shards
/// allowed, decisions logged at `log`.
fn config(fleet: &Fleet, t: &str, log: &Path) -> String {
    two_phase(&fleet.hashed_config(t, ""), log)
}

/// A count with the simple protocol (fanned out when it goes through shardcar).
async fn count(c: &Client, t: &str) -> i64 {
    let rows = c.simple_query(&format!("SELECT count(*) FROM {t}")).await.unwrap();
    match rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
        _ => None,
    }) {
        Some(n) => n,
        None => panic!("no count in {rows:?}"),
    }
}

/// Rows of `t` on each shard, read directly.
async fn per_shard(fleet: &Fleet, t: &str) -> (i64, i64) {
    (count(&direct(&fleet.s0).await, t).await, count(&direct(&fleet.s1).await, t).await)
}

/// Prepared transactions of the shardcar whose decision log is `log`, on both shards.
async fn prepared(fleet: &Fleet, log: &Path) -> i64 {
    let header = std::fs::read_to_string(log).unwrap();
    let id = header.lines().next().and_then(|l| l.rsplit(' ').next()).unwrap().to_string();
    let mut n = 0;
    for shard in [&fleet.s0, &fleet.s1] {
        let c = direct(shard).await;
        let sql = "SELECT count(*) FROM pg_prepared_xacts WHERE starts_with(gid, $1)";
        n += c.query_one(sql, &[&format!("shardcar_{id}_")]).await.unwrap().get::<_, i64>(0);
    }
    n
}

/// One transaction inserting customers 1..=n, one statement each (the hash
/// plugin spreads them over both shards).
async fn insert_each(c: &Client, t: &str, n: i64) {
    c.batch_execute("BEGIN").await.unwrap();
    for id in 1..=n {
        c.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'row {id}')")).await.unwrap();
    }
}

#[tokio::test]
async fn commit_and_rollback_reach_every_shard() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("tpc").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let sc = Sidecar::start(&config(fleet, &t, &log));
    let c = sc.connect().await;

    insert_each(&c, &t, 20).await;
    // Inside the transaction its rows are visible through shardcar (a
    // fan-out on the transaction's connections), not yet to anyone else.
    assert_eq!(count(&c, &t).await, 20);
    assert_eq!(per_shard(fleet, &t).await, (0, 0));
    c.batch_execute("COMMIT").await.unwrap();
    let (s0, s1) = per_shard(fleet, &t).await;
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == 20, "rows on both shards: {s0} + {s1}");
    assert_eq!(prepared(fleet, &log).await, 0);

    c.batch_execute(&format!("BEGIN; DELETE FROM {t} WHERE customer_id = 1")).await.unwrap();
    c.batch_execute(&format!("DELETE FROM {t} WHERE customer_id = 2")).await.unwrap();
    c.batch_execute(&format!("DELETE FROM {t} WHERE customer_id = 3")).await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(per_shard(fleet, &t).await, (s0, s1), "ROLLBACK undoes every shard's part");

    // An error on one shard fails the whole transaction: COMMIT rolls back.
    insert_each(&c, &t, 3).await;
    let err = c.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let err = c.batch_execute(&format!("INSERT INTO {t} VALUES (99, 'x')")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02", "no statement runs after the error, on any shard");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(per_shard(fleet, &t).await, (s0, s1));

    // The session goes on normally afterwards, and keeps its connections apart.
    assert_eq!(count(&c, &t).await, 20);
    let metrics = sc.admin_get("/metrics").1;
    assert!(metrics.contains("shardcar_distributed_transactions_total{outcome=\"committed\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_shard_that_cannot_prepare_rolls_back_all() {
    let fleet = Fleet::shared();
    let t = crate::harness::table("tpcdef");
    for shard in [&fleet.s0, &fleet.s1] {
        let create =
            format!("CREATE TABLE {t} (customer_id bigint, note text, UNIQUE (note) DEFERRABLE INITIALLY DEFERRED)");
        direct(shard).await.batch_execute(&create).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let sc = Sidecar::start(&config(fleet, &t, &log));
    let c = sc.connect().await;
    insert_each(&c, &t, 10).await;
    // A second row with customer 1's note, on customer 1's shard: the
    // deferred constraint fails there only at PREPARE.
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'row 1')")).await.unwrap();
    let err = c.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(sqlstate(&err), "23505", "the shard's own error: {err:?}");
    assert_eq!(per_shard(fleet, &t).await, (0, 0), "nothing committed anywhere");
    assert_eq!(prepared(fleet, &log).await, 0, "nothing left prepared");
    assert_eq!(count(&c, &t).await, 0);
}

#[tokio::test]
async fn ddl_and_reads_inside_a_transaction_across_shards() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("tpcddl").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let sc = Sidecar::start(&config(fleet, &t, &log));
    let c = sc.connect().await;
    // DDL in the transaction runs on every shard, and goes away with it.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("CREATE INDEX {t}_note ON {t} (note)")).await.unwrap();
    insert_each_more(&c, &t).await;
    c.batch_execute("ROLLBACK").await.unwrap();
    for shard in [&fleet.s0, &fleet.s1] {
        let n: i64 = direct(shard)
            .await
            .query_one(&format!("SELECT count(*) FROM pg_indexes WHERE indexname = '{t}_note'"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")).await.unwrap();
    c.batch_execute(&format!("TRUNCATE {t}")).await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} VALUES (5, 'e'), (6, 'f')")).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let (s0, s1) = per_shard(fleet, &t).await;
    assert_eq!(s0 + s1, 2, "the TRUNCATE and both INSERTs committed together");
}

async fn insert_each_more(c: &Client, t: &str) {
    for id in 1..=6 {
        c.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'x')")).await.unwrap();
    }
    assert_eq!(count(c, t).await, 6);
}

#[tokio::test]
async fn without_two_phase_commit_a_second_shard_is_refused() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("tpcoff").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    c.batch_execute("BEGIN").await.unwrap();
    let mut refused = None;
    for id in 1..=20 {
        if let Err(e) = c.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'x')")).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("some customer lives on the other shard");
    assert_eq!(sqlstate(&err), "0A000");
    let hint = err.as_db_error().unwrap().hint().unwrap_or_default().to_string();
    assert!(hint.contains("two_phase_commit"), "{hint}");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(per_shard(fleet, &t).await, (0, 0));
}

/// Kills shardcar (SIGKILL) at `failpoint` during a COMMIT across shards,
/// starts it again, and returns the rows each shard holds afterwards.
async fn crash_at(failpoint: &str) -> (i64, i64) {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("tpcrash").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let cfg = config(fleet, &t, &log);
    let sc = Sidecar::start_with_env(&cfg, &[("SHARDCAR_FAILPOINT", failpoint.to_string())]);
    let c = sc.connect().await;
    insert_each(&c, &t, 10).await;
    let committing = tokio::spawn(async move { c.batch_execute("COMMIT").await });
    let stopped = eventually(Duration::from_secs(20), async || sc.log_text().contains("failpoint")).await;
    assert!(stopped, "the failpoint was reached:\n{}", sc.log_text());
    assert_eq!(prepared(fleet, &log).await, 2, "prepared on both shards, not finished");
    drop(sc); // SIGKILL: no cleanup of any kind
    assert!(committing.await.unwrap().is_err(), "the client saw its connection go");
    assert_eq!(per_shard(fleet, &t).await, (0, 0), "nothing visible while prepared");

    let _restarted = Sidecar::start(&cfg);
    let resolved = eventually(Duration::from_secs(30), async || prepared(fleet, &log).await == 0).await;
    assert!(resolved, "recovery resolved every prepared transaction");
    per_shard(fleet, &t).await
}

#[tokio::test]
async fn killed_after_prepare_recovery_rolls_back() {
    let (s0, s1) = crash_at("2pc-after-prepare").await;
    assert_eq!((s0, s1), (0, 0), "no decision was logged: all rolled back");
}

#[tokio::test]
async fn killed_after_the_decision_recovery_commits() {
    let (s0, s1) = crash_at("2pc-after-decision").await;
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == 10, "the logged decision commits every shard: {s0} + {s1}");
}

#[tokio::test]
async fn reference_tables_are_written_on_every_shard_inside_the_transaction() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("tpcref").await;
    let r = crate::harness::table("tpcrefdata");
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("CREATE TABLE {r} (code text PRIMARY KEY)")).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.log");
    let cfg = config(fleet, &t, &log)
        .replace("read_replicas = false", &format!("read_replicas = false\nreference_tables = [\"{r}\"]"));
    let sc = Sidecar::start(&cfg);
    let c = sc.connect().await;
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'a')")).await.unwrap();
    c.batch_execute(&format!("INSERT INTO {r} VALUES ('EUR')")).await.unwrap();
    c.execute(&format!("INSERT INTO {r} VALUES ($1)"), &[&"USD"]).await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("INSERT INTO {r} VALUES ('EUR')")).await.unwrap();
    c.execute(&format!("INSERT INTO {r} VALUES ($1)"), &[&"USD"]).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    for shard in [&fleet.s0, &fleet.s1] {
        let n = count(&direct(shard).await, &r).await;
        assert_eq!(n, 2, "both rows on every shard, once (the rolled-back ones nowhere)");
    }
    assert_eq!(prepared(fleet, &log).await, 0);
}

/// The outcome of each statement (its SQLSTATE when it failed), and the
/// rows at the end: run through shardcar and on one plain Postgres table,
/// with the simple protocol or the extended one.
async fn savepoint_script(c: &Client, t: &str, extended: bool) -> (Vec<String>, Vec<(i64, String)>) {
    let script = [
        "BEGIN".to_string(),
        format!("INSERT INTO {t} VALUES (1, 'a')"), // s0
        "SAVEPOINT a".into(),
        format!("INSERT INTO {t} VALUES (3, 'b')"), // s1 joins after the savepoint
        format!("INSERT INTO {t} VALUES (2, 'c')"), // s0
        "ROLLBACK TO SAVEPOINT a".into(),           // undoes 3 and 2, on both shards
        format!("INSERT INTO {t} VALUES (4, 'd')"), // s1
        "SAVEPOINT b".into(),
        format!("INSERT INTO {t} VALUES (8, 'e')"), // s1
        "RELEASE SAVEPOINT b".into(),
        "SAVEPOINT c".into(),
        format!("INSERT INTO {t} VALUES (1, 'dup')"), // s0: a unique violation
        format!("INSERT INTO {t} VALUES (42, 'x')"),  // refused: the transaction failed
        "RELEASE SAVEPOINT c".into(),                 // so is this
        "ROLLBACK TO SAVEPOINT c".into(),             // but this recovers it
        format!("INSERT INTO {t} VALUES (42, 'f')"),  // s0
        "SAVEPOINT d".into(),
        "ROLLBACK TO SAVEPOINT nope".into(),        // no such savepoint: failed again
        "ROLLBACK TO SAVEPOINT d".into(),           // d is still there
        format!("INSERT INTO {t} VALUES (3, 'g')"), // s1
        "COMMIT".into(),
    ];
    let mut outcomes = Vec::new();
    for sql in &script {
        let result = if extended { c.execute(sql.as_str(), &[]).await.map(|_| ()) } else { c.batch_execute(sql).await };
        outcomes.push(match result {
            Ok(()) => "ok".to_string(),
            Err(e) => sqlstate(&e).to_string(),
        });
    }
    let rows = c.query(&format!("SELECT customer_id, note FROM {t} ORDER BY 1"), &[]).await.unwrap();
    (outcomes, rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[tokio::test]
async fn savepoints_across_shards_behave_as_on_one_postgres() {
    let fleet = Fleet::shared();
    for extended in [false, true] {
        let t = fleet.hashed_table("savepoints").await;
        let one = format!("{t}_one");
        for shard in [&fleet.s0, &fleet.s1] {
            direct(shard).await.batch_execute(&format!("CREATE UNIQUE INDEX ON {t} (customer_id)")).await.unwrap();
        }
        let plain = direct(&fleet.s0).await;
        plain.batch_execute(&format!("CREATE TABLE {one} (customer_id bigint UNIQUE, note text)")).await.unwrap();
        let log = tempfile::tempdir().unwrap();
        let sc = Sidecar::start(&config(fleet, &t, &log.path().join("decisions.log")));
        let c = sc.connect().await;
        let through = savepoint_script(&c, &t, extended).await;
        let expected = savepoint_script(&plain, &one, extended).await;
        assert_eq!(through, expected, "extended: {extended}");
        assert_eq!(expected.1.len(), 5, "{expected:?}");
        // Both shards took part, and each holds its own rows.
        assert_eq!(per_shard(fleet, &t).await, (2, 3));
    }
}

#[tokio::test]
async fn a_cursor_is_fetched_from_its_shard_after_the_transaction_widens() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("cursor").await;
    let log = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(&config(fleet, &t, &log.path().join("decisions.log")));
    let c = sc.connect().await;
    for (id, note) in [(3, "a"), (3, "b"), (3, "c")] {
        c.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, '{note}')")).await.unwrap();
    }
    c.batch_execute("BEGIN").await.unwrap();
    // Customer 3 lives on s1; the INSERT of customer 1 brings s0 in, after it.
    c.batch_execute(&format!("DECLARE c CURSOR FOR SELECT note FROM {t} WHERE customer_id = 3 ORDER BY note"))
        .await
        .unwrap();
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'x')")).await.unwrap();
    let fetch = async |sql: &str| -> Vec<String> {
        let rows = c.simple_query(sql).await.unwrap();
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect()
    };
    assert_eq!(fetch("FETCH 2 FROM c").await, ["a", "b"]);
    c.batch_execute("MOVE 0 IN c").await.unwrap();
    assert_eq!(fetch("FETCH NEXT FROM c").await, ["c"]);
    c.batch_execute("CLOSE c").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(per_shard(fleet, &t).await, (1, 3));
}

/// A portal read a page at a time while the transaction writes on the same
/// shards between pages — rows read, then the table at the end — through
/// shardcar and on one plain Postgres table. Its pages are over 1,024 rows
/// per shard, so each shard's part is fetched in several (`scatter::leg`).
async fn portal_between_writes(c: &mut Client, t: &str) -> (Vec<(i64, String)>, Vec<(i64, String)>) {
    let txn = c.transaction().await.unwrap();
    let portal = txn.bind(&format!("SELECT customer_id, note FROM {t} ORDER BY customer_id"), &[]).await.unwrap();
    let mut read = Vec::new();
    let between = [
        format!("UPDATE {t} SET note = 'one' WHERE customer_id = 2999"),
        format!("INSERT INTO {t} VALUES (5001, 'new'), (5002, 'new'), (5003, 'new')"),
        format!("UPDATE {t} SET note = 'many' WHERE customer_id > 2990"),
        format!("DELETE FROM {t} WHERE customer_id = 4000"),
    ];
    for (page, sql) in (0..).zip(between.iter().chain(std::iter::repeat(&String::new()))) {
        let rows = txn.query_portal(&portal, 700).await.unwrap();
        if rows.is_empty() {
            break;
        }
        read.extend(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))));
        if !sql.is_empty() {
            txn.batch_execute(sql).await.unwrap_or_else(|e| panic!("page {page}: {sql}: {e:?}"));
        }
    }
    txn.commit().await.unwrap();
    let rows = c.query(&format!("SELECT customer_id, note FROM {t} ORDER BY 1, 2"), &[]).await.unwrap();
    (read, rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[tokio::test]
async fn a_portal_across_shards_waits_while_its_transaction_writes_on_them() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("paged").await;
    let one = format!("{t}_one");
    let mut plain = direct(&fleet.s0).await;
    plain.batch_execute(&format!("CREATE TABLE {one} (customer_id bigint, note text)")).await.unwrap();
    let log = tempfile::tempdir().unwrap();
    let config = config(fleet, &t, &log.path().join("decisions.log"))
        .replace("read_replicas = false", "read_replicas = false\nallow_broadcast_writes = true");
    let sc = Sidecar::start(&config);
    let mut c = sc.connect().await;
    for (client, table) in [(&c, &t), (&plain, &one)] {
        for chunk in (1..=4000).collect::<Vec<i64>>().chunks(500) {
            let values: Vec<String> = chunk.iter().map(|id| format!("({id}, 'row {id}')")).collect();
            client.batch_execute(&format!("INSERT INTO {table} VALUES {}", values.join(", "))).await.unwrap();
        }
    }
    let (s0, s1) = per_shard(fleet, &t).await;
    assert!(s0 > 1024 && s1 > 1024, "several pages on each shard: {s0}, {s1}");
    let through = portal_between_writes(&mut c, &t).await;
    let expected = portal_between_writes(&mut plain, &one).await;
    assert_eq!(through.0.len(), 4000);
    assert_eq!(through, expected);
    assert_eq!(prepared(fleet, &log.path().join("decisions.log")).await, 0);
}

/// What each step of a cursor script gives (rows, or the count of a MOVE
/// or CLOSE, or the SQLSTATE), through shardcar and on one plain Postgres.
async fn cursor_script(c: &Client, t: &str) -> Vec<String> {
    let script = [
        "BEGIN".to_string(),
        format!("DECLARE c CURSOR FOR SELECT customer_id, note FROM {t} WHERE customer_id > 2 ORDER BY customer_id"),
        // Written after DECLARE: the cursor does not see them (its snapshot).
        format!("INSERT INTO {t} VALUES (100, 'late'), (101, 'late')"),
        "FETCH 3 FROM c".into(),
        "MOVE 2 IN c".into(),
        "FETCH NEXT FROM c".into(),
        format!("UPDATE {t} SET note = 'changed' WHERE customer_id = 9"),
        "FETCH FORWARD 2 FROM c".into(),
        "FETCH ALL FROM c".into(),
        "FETCH 1 FROM c".into(),
        "CLOSE c".into(),
        "FETCH 1 FROM c".into(),
        "ROLLBACK".into(),
        "BEGIN".into(),
        format!("DECLARE d CURSOR FOR SELECT count(*), max(note) FROM {t}"),
        "FETCH ALL IN d".into(),
        "DECLARE d CURSOR FOR SELECT 1".into(), // its name is taken
        "ROLLBACK".into(),
        "BEGIN".into(),
        format!("DECLARE e CURSOR FOR SELECT nope FROM {t}"),
        "ROLLBACK".into(),
        format!("DECLARE outside CURSOR FOR SELECT * FROM {t}"),
    ];
    let mut out = Vec::new();
    for sql in &script {
        out.push(match c.simple_query(sql).await {
            Ok(messages) => messages
                .iter()
                .map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|")
                    }
                    tokio_postgres::SimpleQueryMessage::CommandComplete(n) => format!("#{n}"),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => sqlstate(&e).to_string(),
        });
    }
    out
}

#[tokio::test]
async fn a_cursor_across_shards_reads_as_on_one_postgres() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("cursors").await;
    let one = format!("{t}_one");
    let plain = direct(&fleet.s0).await;
    plain.batch_execute(&format!("CREATE TABLE {one} (customer_id bigint, note text)")).await.unwrap();
    let log = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(&config(fleet, &t, &log.path().join("decisions.log")));
    let c = sc.connect().await;
    let values: Vec<String> = (1..=20).map(|id| format!("({id}, 'row {id}')")).collect();
    for (client, table) in [(&c, &t), (&plain, &one)] {
        client.batch_execute(&format!("INSERT INTO {table} VALUES {}", values.join(", "))).await.unwrap();
    }
    let through = cursor_script(&c, &t).await;
    let expected = cursor_script(&plain, &one).await;
    assert_eq!(through, expected);
    assert_eq!(expected[3].trim(), "3|row 3 4|row 4 5|row 5 #3", "{expected:?}");
    assert!(expected.iter().any(|o| o == "42P03"), "a taken name refused: {expected:?}");
    // A driver's DECLARE with parameters (the extended protocol).
    for (client, table) in [(&c, &t), (&plain, &one)] {
        client.batch_execute("BEGIN").await.unwrap();
        let declare =
            format!("DECLARE x CURSOR FOR SELECT customer_id FROM {table} WHERE customer_id >= $1 ORDER BY 1");
        client.execute(&declare, &[&15i64]).await.unwrap();
        let rows = client.simple_query("FETCH 4 FROM x").await.unwrap();
        let ids: Vec<&str> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
                _ => None,
            })
            .collect();
        assert_eq!(ids, ["15", "16", "17", "18"], "{table}");
        // Binary results of a FETCH: Postgres converts them; shardcar
        // has its shards' text and says so.
        let binary = client.query("FETCH 1 FROM x", &[]).await;
        match table == &t {
            true => assert_eq!(sqlstate(&binary.unwrap_err()), "0A000"),
            false => assert_eq!(binary.unwrap()[0].get::<_, i64>(0), 19),
        }
        client.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// An ORM's bulk insert, arrays bound, through shardcar and on one plain
/// Postgres: RETURNING rows, tags, and what the table holds at the end.
async fn unnest_script(c: &mut Client, t: &str) -> Vec<String> {
    let ids: Vec<i64> = vec![5, 1, 4, 2, 3, 8, 7, 6];
    let notes: Vec<Option<&str>> =
        vec![Some("e"), Some("a"), None, Some("b"), Some("c, \"quoted\""), Some("h"), Some("g"), Some("f")];
    let mut out = Vec::new();
    let rows = |rows: Vec<tokio_postgres::Row>| -> String {
        rows.iter()
            .map(|r| format!("{}:{:?}", r.get::<_, i64>(0), r.get::<_, Option<String>>(1)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let insert = format!(
        "INSERT INTO {t} (customer_id, note) SELECT * FROM unnest($1::bigint[], $2::text[]) RETURNING customer_id, note"
    );
    out.push(rows(c.query(&insert, &[&ids, &notes]).await.unwrap()));
    // Columns named through an alias, in another order; no RETURNING: a count.
    let insert =
        format!("INSERT INTO {t} (note, customer_id) SELECT n, k FROM unnest($1::text[], $2::bigint[]) AS u(n, k)");
    let more: Vec<i64> = (20..30).collect();
    let notes: Vec<String> = more.iter().map(|i| format!("n{i}")).collect();
    out.push(c.execute(&insert, &[&notes, &more]).await.unwrap().to_string());
    // In a transaction that rolls back: nothing anywhere.
    let txn = c.transaction().await.unwrap();
    let insert =
        format!("INSERT INTO {t} (customer_id, note) SELECT * FROM unnest($1::bigint[], $2::text[]) RETURNING note");
    let rolled: Vec<i64> = vec![100, 101, 102];
    let gone = txn.query(&insert, &[&rolled, &vec!["x", "y", "z"]]).await.unwrap();
    out.push(gone.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join(" "));
    txn.rollback().await.unwrap();
    let all = c.query(&format!("SELECT customer_id, note FROM {t} ORDER BY 1"), &[]).await.unwrap();
    out.push(rows(all));
    out
}

#[tokio::test]
async fn a_bulk_insert_from_unnest_is_split_by_key_and_returns_rows_in_input_order() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("unnest").await;
    let one = format!("{t}_one");
    let mut plain = direct(&fleet.s0).await;
    plain.batch_execute(&format!("CREATE TABLE {one} (customer_id bigint, note text)")).await.unwrap();
    let log = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(&config(fleet, &t, &log.path().join("decisions.log")));
    let mut c = sc.connect().await;
    let through = unnest_script(&mut c, &t).await;
    let expected = unnest_script(&mut plain, &one).await;
    assert_eq!(through, expected);
    assert!(expected[0].starts_with("5:Some(\"e\") 1:Some(\"a\") 4:None"), "{expected:?}");
    // Every row on the shard its key routes to.
    let (s0, s1) = per_shard(fleet, &t).await;
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == 18, "{s0} + {s1}");
    for id in [1i64, 2, 3, 4, 5, 6, 7, 8, 20, 29] {
        let n: i64 =
            c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = $1"), &[&id]).await.unwrap().get(0);
        assert_eq!(n, 1, "customer {id} is found where its key routes");
    }
    // Arrays of different lengths: Postgres pads the shorter ones with
    // NULLs; split by shard they would not line up, so it is refused.
    let insert = format!("INSERT INTO {t} (customer_id, note) SELECT * FROM unnest($1::bigint[], $2::text[])");
    let e = c.execute(&insert, &[&vec![1i64, 2], &vec!["a"]]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    // Arrays written in a simple query's text: refused, never sent whole to each shard.
    let literal = format!(
        "INSERT INTO {t} (customer_id, note) SELECT * FROM unnest('{{1,2,3,4}}'::bigint[], '{{a,b,c,d}}'::text[])"
    );
    let e = c.simple_query(&literal).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    assert_eq!(per_shard(fleet, &t).await, (s0, s1), "nothing written");
}

/// Bulk inserts whose rows are VALUES: plain, and selected from a VALUES
/// list as SQLAlchemy's bulk insert with RETURNING sends it (sorted by a
/// counter) — RETURNING rows as Postgres gives them, in the order written.
async fn values_script(c: &Client, t: &str) -> Vec<String> {
    let rows = |messages: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(format!("{}:{}", r.get(0).unwrap(), r.get(1).unwrap_or("NULL")))
                }
                tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(format!("#{n}")),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = Vec::new();
    let plain = format!("INSERT INTO {t} VALUES (7, 'g'), (1, 'a'), (6, 'f'), (2, 'b') RETURNING customer_id, note");
    out.push(rows(c.simple_query(&plain).await.unwrap()));
    let sorted = format!(
        "INSERT INTO {t} (note, customer_id) SELECT p0::text, p1::bigint FROM (VALUES ('e', 5, 0), ('c', 3, 1), (NULL, 4, 2), ('h', 8, 3)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING customer_id, note"
    );
    out.push(rows(c.simple_query(&sorted).await.unwrap()));
    let bound = format!(
        "INSERT INTO {t} (note, customer_id) SELECT p0::text, p1::bigint FROM (VALUES ($1, $2, 0), ($3, $4, 1), ($5, $6, 2)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING customer_id, note"
    );
    // VALUES columns of parameters are text to Postgres: the casts make the key.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [&"k", &"11", &"i", &"9", &"j", &"10"];
    let got = c.query(&bound, &params).await.unwrap();
    out.push(
        got.iter().map(|r| format!("{}:{}", r.get::<_, i64>(0), r.get::<_, String>(1))).collect::<Vec<_>>().join(" "),
    );
    out.push(rows(c.simple_query(&format!("SELECT customer_id, note FROM {t} ORDER BY 1")).await.unwrap()));
    out
}

#[tokio::test]
async fn bulk_inserts_of_values_return_rows_in_the_order_written() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("values").await;
    let one = format!("{t}_one");
    let plain = direct(&fleet.s0).await;
    plain.batch_execute(&format!("CREATE TABLE {one} (customer_id bigint, note text)")).await.unwrap();
    let log = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(&config(fleet, &t, &log.path().join("decisions.log")));
    let c = sc.connect().await;
    let through = values_script(&c, &t).await;
    let expected = values_script(&plain, &one).await;
    assert_eq!(through, expected);
    assert_eq!(expected[1], "5:e 3:c 4:NULL 8:h #4");
    let (s0, s1) = per_shard(fleet, &t).await;
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == 11, "{s0} + {s1}");
    for id in 1i64..=11 {
        let n: i64 =
            c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = $1"), &[&id]).await.unwrap().get(0);
        assert_eq!(n, 1, "customer {id} is found where its key routes");
    }
    // Sorted by a column that does not rise as written: refused, nothing written.
    let min = format!("SELECT min(customer_id) FROM {t}");
    let on0: i64 = direct(&fleet.s0).await.query_one(&min, &[]).await.unwrap().get(0);
    let on1: i64 = direct(&fleet.s1).await.query_one(&min, &[]).await.unwrap().get(0);
    let shuffled = format!(
        "INSERT INTO {t} (note, customer_id) SELECT n, k FROM (VALUES ('x', {on0}, 2), ('y', {on1}, 1)) AS v(n, k, s) ORDER BY s"
    );
    assert_eq!(sqlstate(&c.simple_query(&shuffled).await.unwrap_err()), "0A000");
    assert_eq!(per_shard(fleet, &t).await, (s0, s1));
}
