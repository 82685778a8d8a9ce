//! Transaction pooling keeps clients apart: abandoned transactions roll
//! back, settings never leak between clients.

use std::time::Duration;

use crate::harness::{Fleet, Sidecar, direct, eventually, table};

#[tokio::test]
async fn an_abandoned_transaction_leaves_no_lock_behind() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let t = table("locked");
    let setup = sc.connect().await;
    // DDL runs on every shard, so it cannot share a query string with an INSERT.
    let mixed = format!("CREATE TABLE {t} (id int PRIMARY KEY, v int); INSERT INTO {t} VALUES (1, 0)");
    assert_eq!(crate::harness::sqlstate(&setup.batch_execute(&mixed).await.unwrap_err()), "0A000");
    setup.batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v int)")).await.unwrap();
    setup.batch_execute(&format!("INSERT INTO {t} VALUES (1, 0)")).await.unwrap();

    let quitter = sc.connect().await;
    quitter.batch_execute(&format!("BEGIN; UPDATE {t} SET v = 99 WHERE id = 1")).await.unwrap();
    drop(quitter); // closes the socket mid-transaction

    let other = sc.connect().await;
    other.batch_execute("SET lock_timeout = '5s'").await.unwrap();
    other.batch_execute(&format!("UPDATE {t} SET v = v + 1 WHERE id = 1")).await.expect("the row lock is gone");
    let v: i32 = other
        .query_one(&format!("/* shardcar: role=primary */ SELECT v FROM {t} WHERE id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1, "the abandoned update was rolled back");

    let s0 = direct(&fleet.s0).await;
    let clean = eventually(Duration::from_secs(5), async || {
        let n: i64 = s0
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND application_name <> 'shardcar-control'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;
    assert!(clean, "no server session is left idle in a transaction");
}

#[tokio::test]
async fn settings_never_leak_to_the_next_client() {
    let fleet = Fleet::shared();
    // One connection per role: both clients must share it.
    let sc = Sidecar::start(&fleet.config(1));
    let pid = async |c: &tokio_postgres::Client| -> i32 {
        c.query_one("/* shardcar: role=primary */ SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
    };
    let show = async |c: &tokio_postgres::Client, name: &str| -> String {
        c.query_one(&format!("/* shardcar: role=primary */ SHOW {name}"), &[]).await.unwrap().get(0)
    };

    let a = sc.connect().await;
    a.batch_execute("SET search_path = nowhere, public; SET work_mem = '1234kB'; SET statement_timeout = '7s'")
        .await
        .unwrap();
    let a_pid = pid(&a).await;
    assert_eq!(show(&a, "work_mem").await, "1234kB");

    let b = sc.connect().await;
    assert_eq!(pid(&b).await, a_pid, "same server connection");
    assert_eq!(show(&b, "work_mem").await, "4MB");
    assert_eq!(show(&b, "search_path").await, "\"$user\", public");
    assert_eq!(show(&b, "statement_timeout").await, "0");

    // a's settings come back when it runs again, on the same connection.
    assert_eq!(show(&a, "work_mem").await, "1234kB");
    assert_eq!(show(&a, "statement_timeout").await, "7s");
    a.batch_execute("RESET work_mem").await.unwrap();
    assert_eq!(show(&a, "work_mem").await, "4MB");
    assert_eq!(show(&b, "work_mem").await, "4MB");
}

#[tokio::test]
async fn a_rolled_back_set_is_undone() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(1));
    let a = sc.connect().await;
    let b = sc.connect().await;
    let show = async |c: &tokio_postgres::Client| -> String {
        c.query_one("/* shardcar: role=primary */ SHOW work_mem", &[]).await.unwrap().get(0)
    };
    a.batch_execute("BEGIN; SET work_mem = '2MB'; ROLLBACK").await.unwrap();
    assert_eq!(show(&a).await, "4MB");
    a.batch_execute("BEGIN; SET work_mem = '3MB'; COMMIT").await.unwrap();
    assert_eq!(show(&b).await, "4MB");
    assert_eq!(show(&a).await, "3MB");
    // A multi-statement query is one implicit transaction: an error undoes its SET.
    a.batch_execute("SET work_mem = '5MB'; SELECT 1/0").await.unwrap_err();
    assert_eq!(show(&b).await, "4MB");
    assert_eq!(show(&a).await, "3MB");
    // Inside a transaction, ROLLBACK TO a savepoint before a failure keeps the SET at COMMIT.
    a.batch_execute("BEGIN; SET work_mem = '6MB'; SAVEPOINT s").await.unwrap();
    a.batch_execute("SELECT 1/0").await.unwrap_err();
    a.batch_execute("ROLLBACK TO SAVEPOINT s; COMMIT").await.unwrap();
    assert_eq!(show(&b).await, "4MB");
    assert_eq!(show(&a).await, "6MB");
}

#[tokio::test]
async fn begin_is_deferred_and_savepoints_work() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let t = table("deferred");
    direct(&fleet.s1).await.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();
    let c = sc.connect().await;
    // BEGIN and SAVEPOINT before any routed statement, then the shard is chosen.
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").await.unwrap();
    c.batch_execute("SAVEPOINT a").await.unwrap();
    c.batch_execute(&format!("/* shardcar: shard=s1 */ INSERT INTO {t} VALUES (1)")).await.unwrap();
    let iso: String = c.query_one("SHOW transaction_isolation", &[]).await.unwrap().get(0);
    assert_eq!(iso, "repeatable read");
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} VALUES (2)")).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let ids: Vec<i32> = direct(&fleet.s1)
        .await
        .query(&format!("SELECT id FROM {t}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [2]);

    // A transaction with no statements never needs a server.
    c.batch_execute("BEGIN; COMMIT").await.unwrap();
    let err = c.batch_execute("BEGIN").await.and(c.batch_execute("RELEASE SAVEPOINT nope").await).unwrap_err();
    assert_eq!(crate::harness::sqlstate(&err), "3B001");
    c.batch_execute("ROLLBACK").await.unwrap();

    // tokio-postgres transactions (BEGIN, statements, COMMIT) through the pool.
    let mut c = sc.connect().await;
    let tx = c.transaction().await.unwrap();
    tx.execute(&format!("/* shardcar: shard=s1 */ INSERT INTO {t} VALUES ($1)"), &[&3i32]).await.unwrap();
    tx.commit().await.unwrap();
    let n: i64 = direct(&fleet.s1).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn session_reset_and_refused_statements() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let c = sc.connect().await;
    c.batch_execute("SET work_mem = '2MB'").await.unwrap();
    let stmt = c.prepare("SELECT 1").await.unwrap();
    c.batch_execute("DISCARD ALL").await.unwrap();
    let work_mem: String = c.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(work_mem, "4MB", "DISCARD ALL resets the session's settings");
    let err = c.query(&stmt, &[]).await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&err), "26000", "and drops its prepared statements");

    for (sql, hint) in [
        ("LISTEN channel", "NOTIFY works"),
        ("PREPARE p AS SELECT 1", "driver's prepared statements"),
        ("CREATE TEMP TABLE tmp (a int)", "ON COMMIT DROP"),
        ("SELECT 1; SET shardcar.shard = 's1'", ""),
    ] {
        let err = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(crate::harness::sqlstate(&err), "0A000", "{sql}");
        let db = err.as_db_error().unwrap();
        assert!(db.hint().unwrap_or("").contains(hint), "{sql}: {db:?}");
    }
    c.batch_execute("BEGIN; CREATE TEMP TABLE tmp (a int) ON COMMIT DROP; INSERT INTO tmp VALUES (1); COMMIT")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_transaction_keeps_its_server_connection() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(3));
    let a = sc.connect().await;
    let others: Vec<_> = futures_util::future::join_all((0..3).map(|_| sc.connect())).await;
    let pid =
        async |c: &tokio_postgres::Client| -> i32 { c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0) };
    a.batch_execute("BEGIN").await.unwrap();
    let first = pid(&a).await;
    for round in 0..5 {
        // Other clients take turns on the remaining connections meanwhile.
        for o in &others {
            assert_ne!(pid(o).await, first, "round {round}: a's connection is not lent out");
        }
        assert_eq!(pid(&a).await, first);
    }
    a.batch_execute("COMMIT").await.unwrap();
}
