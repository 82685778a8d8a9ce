//! Transactions across shards with `routing.two_phase_commit = true`: they
//! commit everywhere or nowhere, including when shardcar is killed between
//! PREPARE TRANSACTION and COMMIT PREPARED and started again.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::{Fleet, Sidecar, direct, eventually, sqlstate, two_phase};

/// `t` sharded by customer_id over s0 and s1, transactions across shards
/// allowed, decisions logged at `log`.
pub(crate) fn config(fleet: &Fleet, t: &str, log: &Path) -> String {
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
pub(crate) async fn per_shard(fleet: &Fleet, t: &str) -> (i64, i64) {
    (count(&direct(&fleet.s0).await, t).await, count(&direct(&fleet.s1).await, t).await)
}

/// Prepared transactions of the shardcar whose decision log is `log`, on both shards.
pub(crate) async fn prepared(fleet: &Fleet, log: &Path) -> i64 {
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
