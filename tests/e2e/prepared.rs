//! Prepared statements under transaction pooling.

use crate::harness::{Fleet, Sidecar, direct, run_tool, sqlstate, table};

#[tokio::test]
async fn a_prepared_statement_survives_a_change_of_server_connection() {
    let fleet = Fleet::shared();
    // Two connections to s0's primary: while one is pinned by another
    // client's transaction, the next statement must use the other.
    let sc = Sidecar::start(&fleet.config(2));
    let a = sc.connect().await;
    let b = sc.connect().await;
    let stmt = a.prepare("/* shardcar: role=primary */ SELECT pg_backend_pid()").await.unwrap();
    let first: i32 = a.query_one(&stmt, &[]).await.unwrap().get(0);

    b.batch_execute("BEGIN").await.unwrap();
    let pinned: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let second: i32 = a.query_one(&stmt, &[]).await.unwrap().get(0);
    assert_ne!(second, pinned, "b's transaction holds its connection");
    assert_ne!(first, second, "the statement ran on a connection that had not prepared it");
    b.batch_execute("COMMIT").await.unwrap();

    // And it keeps working on every connection afterwards.
    for _ in 0..10 {
        a.query_one(&stmt, &[]).await.unwrap();
    }
}

#[tokio::test]
async fn statement_errors_are_reported_and_forgotten() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let c = sc.connect().await;
    let err = c.prepare("SELEKT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42601");
    let err = c.prepare("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42P01");
    // The session is fine, and the same texts prepare cleanly once valid.
    let t = table("later");
    c.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();
    let s = c.prepare(&format!("SELECT count(*) FROM {t}")).await.unwrap();
    assert_eq!(c.query_one(&s, &[]).await.unwrap().get::<_, i64>(0), 0);
    // Bind parameters of several types pass through in binary.
    let row = c
        .query_one(
            "SELECT $1::int8 + 1, $2::text || '!', $3::float8 * 2, $4::bytea",
            &[&41i64, &"hi", &1.5f64, &vec![0u8, 255]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, f64>(2), 3.0);
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0u8, 255]);
}

#[tokio::test]
async fn pgbench_prepared_with_more_clients_than_connections() {
    let fleet = Fleet::shared();
    // pgbench's tables are global: run this on s1 so other tests on s0 are not disturbed.
    let config = fleet.config(2).replace("default_shard = \"s0\"", "default_shard = \"s1\"");
    // pgbench -i truncates its tables inside a transaction: TRUNCATE runs on
    // every shard, which in a transaction needs two-phase commit...
    let sc = Sidecar::start(&config);
    let (ok, out) = run_tool(&sc, "pgbench", &["-i", "-s", "1", "-q"], None);
    assert!(!ok && out.contains("two_phase_commit"), "refused, saying how:\n{out}");
    drop(sc);
    // ...and with it, the whole load works.
    let sc = Sidecar::start(&crate::harness::two_phase(&config));
    let (ok, out) = run_tool(&sc, "pgbench", &["-i", "-s", "1", "-q"], None);
    assert!(ok, "pgbench -i through shardcar failed:\n{out}");
    let (ok, out) = run_tool(&sc, "pgbench", &["-M", "prepared", "-c", "8", "-j", "2", "-T", "5"], None);
    assert!(ok, "pgbench -M prepared failed:\n{out}");
    assert!(out.contains("number of failed transactions: 0 (0.000%)"), "{out}");
    let processed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(processed > 0, "{out}");
    // Every transaction's history row landed on s1; the sum of deltas matches the balances.
    let s1 = crate::harness::direct(&fleet.s1).await;
    let history: i64 = s1.query_one("SELECT count(*) FROM pgbench_history", &[]).await.unwrap().get(0);
    assert_eq!(history as u64, processed);
    let consistent: bool = s1
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(consistent);
}

#[tokio::test]
async fn statements_the_server_holds_are_parsed_again_after_their_result_type_changes() {
    let fleet = Fleet::shared();
    let t = table("reshaped");
    let ddl = direct(&fleet.s0).await;
    ddl.batch_execute(&format!("CREATE TABLE {t} (id int); INSERT INTO {t} VALUES (1)")).await.unwrap();
    // One server connection, so that every statement finds it holding the
    // same text from before the change.
    let config = fleet
        .config(1)
        .replace("health_check_interval_ms = 200", "health_check_interval_ms = 200\nreuse_unnamed_statements = true");
    let sc = Sidecar::start(&config);
    let c = sc.connect().await;
    let sql = format!("SELECT * FROM {t}");
    let own = c.prepare(&sql).await.unwrap();
    for columns in 1..=3 {
        // The unnamed statement, parsed by the client every time.
        for _ in 0..3 {
            let rows = c.query_typed(&sql, &[]).await.unwrap();
            assert_eq!(rows[0].len(), columns);
        }
        // A named one of the same text, another client's.
        let other = sc.connect().await;
        let rows = other.query(&sql, &[]).await.unwrap();
        assert_eq!(rows[0].len(), columns);
        ddl.batch_execute(&format!("ALTER TABLE {t} ADD COLUMN c{columns} int")).await.unwrap();
    }
    // The client's own statement from before the changes fails as it does
    // without shardcar: the client holds the result type it was told.
    let err = c.query(&own, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err}");
    let rows = c.query_typed(&sql, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 4);
}
