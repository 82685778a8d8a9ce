//! Pool behaviour when servers are busy, killed or down.

use std::time::{Duration, Instant};

use crate::harness::{Fleet, Sidecar, direct, eventually, sqlstate};

#[tokio::test]
async fn an_exhausted_pool_gives_53300_and_recovers() {
    let fleet = Fleet::shared();
    let config = fleet.config(1).replace("checkout_timeout_ms = 2000", "checkout_timeout_ms = 300");
    let sc = Sidecar::start(&config);
    let holder = sc.connect().await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = sc.connect().await;
    let started = Instant::now();
    let err = waiter.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(err.as_db_error().unwrap().message().contains("no free connection to s0 primary"));
    holder.batch_execute("COMMIT").await.unwrap();
    waiter.batch_execute("SELECT 1").await.expect("works once the connection is free");
}

#[tokio::test]
async fn killed_server_connections_are_replaced() {
    let fleet = Fleet::new();
    let sc = Sidecar::start(&fleet.config(4));
    let c = sc.connect().await;
    let before: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let killed: i64 = direct(&fleet.s0)
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
               AND application_name <> 'shardcar-control'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    // The session survives. A connection terminated while idle is noticed
    // at checkout and replaced (or, when only asked to describe, asked
    // again); one terminated just as it ran a statement fails that one
    // statement, with an ERROR (not FATAL: the client's session goes on) —
    // the server's 57P01, or 08006 when the socket closed before its
    // message was read — and a hint. Later statements run on fresh connections.
    let mut failures = 0;
    for _ in 0..5 {
        match c.query_one("SELECT pg_backend_pid()", &[]).await {
            Ok(row) => assert_ne!(row.get::<_, i32>(0), before),
            Err(e) => {
                failures += 1;
                let db = e.as_db_error().expect("an error from the server, passed on");
                assert!(["57P01", "08006"].contains(&db.code().code()), "{db:?}");
                assert_eq!(db.severity(), "ERROR", "{db:?}");
                assert!(db.hint().is_some_and(|h| h.contains("new")), "{db:?}");
            }
        }
    }
    assert!(failures <= 1, "at most the statement that met the dying connection fails");
    c.query_one("SELECT 1", &[]).await.expect("the session is alive");
}

#[tokio::test]
async fn a_shard_that_is_down_fails_only_its_statements() {
    let mut fleet = Fleet::new();
    // Its statements wait half a second for a new primary, then fail.
    let sc = Sidecar::start(&fleet.config_with(4, "[failover]\nbuffer_ms = 500"));
    let c = sc.connect().await;
    c.batch_execute("/* shardcar: shard=s1 */ SELECT 1").await.unwrap();
    fleet.s1.stop().unwrap();
    let err = c.batch_execute("/* shardcar: shard=s1 */ SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "57P03", "{err:?}");
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("shard s1 has no primary") && message.contains("s1 primary"), "{err:?}");
    c.batch_execute("SELECT 1").await.expect("s0 keeps serving, on the same session");
    // One shard down leaves the sidecar ready (it serves the others), and says which is down.
    let (status, body) = sc.admin_get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(10), async || sc.admin_get("/readyz").1.contains("\"shard\":\"s1\"")).await,
        "the unreachable primary is named"
    );
    fleet.s1.start().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || c
            .batch_execute("/* shardcar: shard=s1 */ SELECT 1")
            .await
            .is_ok())
        .await
    );
    assert!(eventually(Duration::from_secs(10), async || sc.admin_get("/readyz").0 == 200).await);
}
