//! Statements reach the shard and role they are routed to.

use std::time::Duration;

use crate::harness::{Fleet, Sidecar, direct, eventually, first_column, metric, sqlstate, table};

#[tokio::test]
async fn targeted_statements_reach_their_shard() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(4));
    let t = table("routed");
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("CREATE TABLE {t} (id int, via text)")).await.unwrap();
    }
    let c = sc.connect().await;
    c.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'default')")).await.unwrap();
    c.batch_execute(&format!("/* shardcar: shard=s1 */ INSERT INTO {t} VALUES (2, 'comment')")).await.unwrap();
    c.execute(&format!("/* shardcar: shard=s1 */ INSERT INTO {t} VALUES ($1, 'bind')"), &[&3i32]).await.unwrap();
    c.batch_execute("SET shardcar.shard = 's1'").await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} VALUES (4, 'session')")).await.unwrap();
    c.batch_execute("RESET shardcar.shard").await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} VALUES (5, 'after reset')")).await.unwrap();

    let rows = |client: tokio_postgres::Client| {
        let t = t.clone();
        async move {
            client
                .query(&format!("SELECT id FROM {t} ORDER BY id"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, i32>(0))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(rows(direct(&fleet.s0).await).await, [1, 5]);
    assert_eq!(rows(direct(&fleet.s1).await).await, [2, 3, 4]);
}

#[tokio::test]
async fn reads_use_the_replica_and_writes_the_primary() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config_reading_replicas(4));
    let c = sc.connect().await;
    let in_recovery = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, bool>(0) }
    };
    assert!(in_recovery("SELECT pg_is_in_recovery()").await, "a plain read goes to the replica");
    assert!(!in_recovery("/* shardcar: role=primary */ SELECT pg_is_in_recovery()").await);
    // Inside a transaction everything stays on the primary.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(!in_recovery("SELECT pg_is_in_recovery()").await);
    c.batch_execute("COMMIT").await.unwrap();

    let t = table("rw");
    c.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();
    c.batch_execute(&format!("INSERT INTO {t} VALUES (7)")).await.unwrap();
    let on_primary: i64 =
        direct(&fleet.s0).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(on_primary, 1, "the write ran on s0's primary");
    // The replica catches up, and a read through shardcar then finds the row there.
    let replica = direct(&fleet.s0_replica).await;
    let replicated = eventually(Duration::from_secs(10), async || {
        replica.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.is_ok_and(|r| r.get::<_, i64>(0) == 1)
    })
    .await;
    assert!(replicated);
    // The session's reads go to the replica once a probe has seen it replay its write.
    let read = async || {
        let row = c.query_one(&format!("SELECT count(*), pg_is_in_recovery() FROM {t}"), &[]).await.unwrap();
        (row.get::<_, i64>(0), row.get::<_, bool>(1))
    };
    assert!(eventually(Duration::from_secs(10), async || read().await == (1, true)).await, "{:?}", read().await);
}

#[tokio::test]
async fn reads_fall_back_to_the_primary_while_the_replica_is_down() {
    let mut fleet = Fleet::new();
    let sc = Sidecar::start(&fleet.config_reading_replicas(4));
    let c = sc.connect().await;
    let recovery = async |c: &tokio_postgres::Client| -> bool {
        c.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("reads keep working").get(0)
    };
    assert!(recovery(&c).await);
    fleet.s0_replica.stop().unwrap();
    for _ in 0..5 {
        assert!(!recovery(&c).await, "with the replica down, reads go to the primary");
    }
    fleet.s0_replica.start().unwrap();
    assert!(
        eventually(Duration::from_secs(15), async || recovery(&c).await).await,
        "reads return to the replica once it is back"
    );
}

#[tokio::test]
async fn unknown_shard_is_a_clear_error_and_the_session_goes_on() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(4));
    let c = sc.connect().await;
    let err = c.batch_execute("/* shardcar: shard=nope */ SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("unknown shard `nope`"), "{}", db.message());
    assert!(db.hint().unwrap().contains("s0, s1"));
    let err = c.batch_execute("SET shardcar.shard = 'nope'").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    let err = c.query("/* shardcar: shard=nope */ SELECT $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test]
async fn a_transaction_stays_on_its_shard() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(4));
    let c = sc.connect().await;
    let t = table("pinned");
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();
    }
    // BEGIN is deferred until the first routed statement, so it may pick s1.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("/* shardcar: shard=s1 */ INSERT INTO {t} VALUES (1)")).await.unwrap();
    let err = c.batch_execute(&format!("/* shardcar: shard=s0 */ INSERT INTO {t} VALUES (2)")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    // Like any error in a transaction, it aborted it: COMMIT rolls back.
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "25P02");
    c.batch_execute("COMMIT").await.unwrap();
    for shard in [&fleet.s0, &fleet.s1] {
        let n: i64 = direct(shard).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "nothing committed on {}", shard.name);
    }
}

#[tokio::test]
async fn several_statements_in_one_query_string() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(4));
    let c = sc.connect().await;
    let t = table("multi");
    let msgs = c
        .simple_query(&format!(
            "/* shardcar: shard=s1 */ CREATE TABLE {t} (id int); INSERT INTO {t} VALUES (1), (2); SELECT count(*) FROM {t}"
        ))
        .await
        .unwrap();
    assert_eq!(first_column(&msgs), ["2"]);
    let n: i64 = direct(&fleet.s1).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    // An error mid-string stops the rest and leaves the session usable.
    let err = c
        .batch_execute(&format!(
            "/* shardcar: shard=s1 */ INSERT INTO {t} VALUES (3); SELECT 1/0; INSERT INTO {t} VALUES (4)"
        ))
        .await;
    assert_eq!(sqlstate(&err.unwrap_err()), "22012");
    let n: i64 = direct(&fleet.s1).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "a multi-statement string is one implicit transaction");
}

/// Simple queries that differ only in their literals share one parse (the
/// template with literals lifted out) and still each reach their key's shard.
#[tokio::test]
async fn simple_queries_share_a_parse_and_route_by_their_literals() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("lifted").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    let misses = || metric(&sc.admin_get("/metrics").1, "shardcar_parse_cache_misses_total");
    c.batch_execute(&format!("INSERT INTO {t} VALUES (0, 'warm')")).await.unwrap();
    c.batch_execute(&format!("SELECT note FROM {t} WHERE customer_id = 0")).await.unwrap();
    let before = misses();
    for id in 1..=40i64 {
        c.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'n''{id}')")).await.unwrap();
        let rows = c.simple_query(&format!("SELECT note FROM {t} WHERE customer_id = {id}")).await.unwrap();
        assert_eq!(first_column(&rows), [format!("n'{id}")], "key {id} reads back the row it wrote");
    }
    assert_eq!(misses(), before, "80 statements, no new parse");
    // Each row is on one shard, the one the extended protocol routes its key to.
    for id in 0..=40i64 {
        let via_bind: Vec<String> = c
            .query(&format!("SELECT note FROM {t} WHERE customer_id = $1"), &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(via_bind.len(), 1, "key {id}");
    }
    let mut total = 0;
    for shard in [&fleet.s0, &fleet.s1] {
        let n: i64 = direct(shard).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
        assert!(n > 0, "both shards hold rows");
        total += n;
    }
    assert_eq!(total, 41);
}

#[tokio::test]
async fn a_replica_held_back_gets_no_reads_until_it_catches_up() {
    let fleet = Fleet::new();
    let t = crate::harness::table("lag");
    direct(&fleet.s0).await.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();
    // The table is on the replica before any read can go there.
    let replica = direct(&fleet.s0_replica).await;
    let count = format!("SELECT count(*) FROM {t}");
    assert!(eventually(Duration::from_secs(10), async || replica.query_one(&count, &[]).await.is_ok()).await);
    let config = fleet
        .config_reading_replicas(4)
        .replace("read_replicas = true", "read_replicas = true\nmax_replica_lag_ms = 1000");
    let sc = Sidecar::start(&config);
    let c = sc.connect().await;
    // Rows seen, and whether the server that answered is a replica.
    let sql = format!("SELECT count(*), pg_is_in_recovery() FROM {t}");
    let read = async || {
        let row = c.query_one(&sql, &[]).await.unwrap();
        (row.get::<_, i64>(0), row.get::<_, bool>(1))
    };
    assert!(
        eventually(Duration::from_secs(10), async || read().await == (0, true)).await,
        "caught up: the replica reads"
    );

    // Held back: it receives the WAL but replays nothing for an hour.
    replica.batch_execute("ALTER SYSTEM SET recovery_min_apply_delay = '1h'").await.unwrap();
    replica.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    direct(&fleet.s0).await.batch_execute(&format!("INSERT INTO {t} VALUES (1)")).await.unwrap();
    let skipped = eventually(Duration::from_secs(10), async || read().await == (1, false)).await;
    assert!(skipped, "over max_replica_lag_ms the primary reads: {:?}", read().await);
    for _ in 0..50 {
        assert_eq!(read().await, (1, false), "no read reaches the replica while it lags");
    }
    let servers: shardcar_api::Shards = sc.admin_json("/api/v1/shards");
    let lag = servers.shards[0].servers.iter().find_map(|s| s.lag).expect("the replica's lag is measured");
    assert!(lag.bytes > 0 && lag.seconds > 1.0, "{lag:?}");

    // Released, it catches up and reads go to it again.
    replica.batch_execute("ALTER SYSTEM RESET recovery_min_apply_delay").await.unwrap();
    replica.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let back = eventually(Duration::from_secs(20), async || read().await == (1, true)).await;
    assert!(back, "caught up again, the replica reads: {:?}", read().await);
    assert!(sc.log_text().contains("over routing.max_replica_lag_"), "the log says why it was skipped");
}
