//! Transactions across shards with `routing.two_phase_commit = true`: they
//! commit everywhere or nowhere, including when the sidecar committing is
//! killed between PREPARE TRANSACTION and COMMIT PREPARED and another one
//! finishes its work.

use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::{Fleet, Sidecar, direct, eventually, sqlstate, two_phase};

/// `t` sharded by customer_id over s0 and s1, transactions across shards
/// allowed.
pub(crate) fn config(fleet: &Fleet, t: &str) -> String {
    two_phase(&fleet.hashed_config(t, ""))
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

/// Prepared transactions holding locks on table `t`, on both shards (other
/// tests' transactions, prepared at the same time, hold none).
pub(crate) async fn prepared(fleet: &Fleet, t: &str) -> i64 {
    let mut n = 0;
    for shard in [&fleet.s0, &fleet.s1] {
        let c = direct(shard).await;
        // A prepared transaction's locks keep the virtual transaction its
        // transaction-id lock has.
        let sql = "SELECT count(DISTINCT p.gid) FROM pg_prepared_xacts p \
                   JOIN pg_locks x ON x.locktype = 'transactionid' AND x.transactionid = p.transaction \
                   JOIN pg_locks l ON l.virtualtransaction = x.virtualtransaction AND l.pid IS NULL \
                   WHERE l.relation = to_regclass($1)";
        n += c.query_one(sql, &[&t]).await.unwrap().get::<_, i64>(0);
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
    let sc = Sidecar::start(&config(fleet, &t));
    let c = sc.connect().await;

    insert_each(&c, &t, 20).await;
    // Inside the transaction its rows are visible through shardcar (a
    // fan-out on the transaction's connections), not yet to anyone else.
    assert_eq!(count(&c, &t).await, 20);
    assert_eq!(per_shard(fleet, &t).await, (0, 0));
    c.batch_execute("COMMIT").await.unwrap();
    let (s0, s1) = per_shard(fleet, &t).await;
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == 20, "rows on both shards: {s0} + {s1}");
    assert_eq!(prepared(fleet, &t).await, 0);

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
    let sc = Sidecar::start(&config(fleet, &t));
    let c = sc.connect().await;
    insert_each(&c, &t, 10).await;
    // A second row with customer 1's note, on customer 1's shard: the
    // deferred constraint fails there only at PREPARE.
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'row 1')")).await.unwrap();
    let err = c.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(sqlstate(&err), "23505", "the shard's own error: {err:?}");
    assert_eq!(per_shard(fleet, &t).await, (0, 0), "nothing committed anywhere");
    assert_eq!(prepared(fleet, &t).await, 0, "nothing left prepared");
    assert_eq!(count(&c, &t).await, 0);
}

#[tokio::test]
async fn ddl_and_reads_inside_a_transaction_across_shards() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("tpcddl").await;
    let sc = Sidecar::start(&config(fleet, &t));
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

/// What a crash during a COMMIT across shards left, and what another
/// sidecar made of it.
struct Crash {
    /// Rows of the transaction on each shard while the commit was stuck.
    while_stuck: (i64, i64),
    /// Rows on each shard once every prepared transaction was resolved.
    after: (i64, i64),
    /// The log and metrics of the sidecar that resolved them.
    resolver_log: String,
    resolver_metrics: String,
}

/// Sidecar A commits a transaction across both shards and stops for good
/// at `failpoint`, where it is SIGKILLed; sidecar B — another process with
/// a config file of its own and no state from A — then finishes it. On a
/// fleet of its own, so that no other test's sidecar resolves it first.
async fn crash_at(failpoint: &str) -> Crash {
    let fleet = Fleet::new();
    let t = fleet.hashed_table("tpcrash").await;
    let a = Sidecar::start_with_env(&config(&fleet, &t), &[("SHARDCAR_FAILPOINT", failpoint.to_string())]);
    let c = a.connect().await;
    insert_each(&c, &t, 10).await;
    let committing = tokio::spawn(async move { c.batch_execute("COMMIT").await });
    let stopped = eventually(Duration::from_secs(20), async || a.log_text().contains("failpoint")).await;
    assert!(stopped, "the failpoint was reached:\n{}", a.log_text());
    // The decider (customer 1's shard) commits in one phase: only the other is prepared.
    assert_eq!(prepared(&fleet, &t).await, 1, "prepared on the shard that does not decide");
    let while_stuck = per_shard(&fleet, &t).await;
    drop(a); // SIGKILL: no cleanup of any kind
    assert!(committing.await.unwrap().is_err(), "the client saw its connection go");

    let b = Sidecar::start(&config(&fleet, &t));
    let resolved = eventually(Duration::from_secs(30), async || prepared(&fleet, &t).await == 0).await;
    assert!(resolved, "B resolved every prepared transaction:\n{}", b.log_text());
    Crash {
        while_stuck,
        after: per_shard(&fleet, &t).await,
        resolver_log: b.log_text(),
        resolver_metrics: b.admin_get("/metrics").1,
    }
}

#[tokio::test]
async fn killed_after_prepare_another_sidecar_rolls_back() {
    let crash = crash_at("2pc-after-prepare").await;
    assert_eq!(crash.while_stuck, (0, 0), "nothing visible before the decision");
    assert_eq!(crash.after, (0, 0), "the decider never committed: all rolled back");
    assert!(crash.resolver_log.contains("rolled back shardcar_"), "{}", crash.resolver_log);
    let rolled_back = "shardcar_distributed_transactions_total{outcome=\"recovered_rollback\"} 1";
    assert!(crash.resolver_metrics.contains(rolled_back), "{}", crash.resolver_metrics);
}

#[tokio::test]
async fn killed_after_the_decision_another_sidecar_commits() {
    let crash = crash_at("2pc-after-decision").await;
    let (s0, s1) = crash.while_stuck;
    assert!((s0 == 0) != (s1 == 0), "the decider's rows are committed, the other's prepared: {s0} + {s1}");
    let (s0, s1) = crash.after;
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == 10, "the decision commits every shard: {s0} + {s1}");
    assert!(crash.resolver_log.contains("committed shardcar_"), "{}", crash.resolver_log);
    let committed = "shardcar_distributed_transactions_total{outcome=\"recovered_commit\"} 1";
    assert!(crash.resolver_metrics.contains(committed), "{}", crash.resolver_metrics);
}

#[tokio::test]
async fn reference_tables_are_written_on_every_shard_inside_the_transaction() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("tpcref").await;
    let r = crate::harness::table("tpcrefdata");
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("CREATE TABLE {r} (code text PRIMARY KEY)")).await.unwrap();
    }
    let cfg = config(fleet, &t)
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
    assert_eq!(prepared(fleet, &t).await, 0);
}

#[tokio::test]
async fn a_cursor_is_fetched_from_its_shard_after_the_transaction_widens() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("cursor").await;
    let sc = Sidecar::start(&config(fleet, &t));
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
