//! `[auth] query`: users not in `[[users]]`, looked up on a shard, and
//! passthrough: their statements run on the shards as themselves, so each
//! role's own grants apply (Postgres's own 42501 comes back through shardcar).

use crate::harness::{Fleet, Sidecar, sqlstate, table};

const LOOKUP: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1";

async fn login(sc: &Sidecar, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    sc.connect_as(user, password).await
}

#[tokio::test]
async fn users_from_the_database_keep_their_own_grants_on_every_shard() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("authq").await;
    let (alice, bob, carol) = (table("alice"), table("bob"), table("carol"));
    // alice: SCRAM, the same verifier on both shards (copied from s0).
    // bob: md5, on both shards, no grant on the table.
    // carol: SCRAM, created separately on each shard: another salt on s1.
    fleet
        .s0
        .psql(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {alice} LOGIN PASSWORD 'alice-pw';
             CREATE ROLE {carol} LOGIN PASSWORD 'carol-pw'"
        ))
        .unwrap();
    let verifier = fleet.s0.psql(&format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{alice}'")).unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    fleet
        .s1
        .psql(&format!(
            "CREATE ROLE {alice} LOGIN PASSWORD '{verifier}';
             SET password_encryption = 'scram-sha-256'; CREATE ROLE {carol} LOGIN PASSWORD 'carol-pw'"
        ))
        .unwrap();
    for shard in [&fleet.s0, &fleet.s1] {
        shard
            .psql(&format!(
                "SET password_encryption = 'md5'; CREATE ROLE {bob} LOGIN PASSWORD 'bob-pw';
                 GRANT SELECT, INSERT ON {t} TO {alice}, {carol}"
            ))
            .unwrap();
        // md5 in pg_hba accepts SCRAM from roles stored with SCRAM.
        shard.prepend_hba(&format!("host all {alice},{bob},{carol} 127.0.0.1/32 md5")).unwrap();
    }
    let auth = format!("[auth]\nquery = \"{LOOKUP}\"\npassthrough = true\n");
    let sc = Sidecar::start(&fleet.hashed_config(&t, &auth));

    // alice works on both shards as herself.
    let a = login(&sc, &alice, "alice-pw").await.expect("alice's password, checked against the stored verifier");
    for key in 1..=20i64 {
        a.execute(&format!("INSERT INTO {t} VALUES ($1, 'from alice')"), &[&key]).await.unwrap();
    }
    let n: i64 = a.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 20);
    for (shard, cluster) in [("s0", &fleet.s0), ("s1", &fleet.s1)] {
        let who = a.simple_query(&format!("/* shardcar: shard={shard} */ SELECT current_user::text")).await.unwrap();
        assert_eq!(crate::harness::first_column(&who), vec![alice.clone()], "on {shard}");
        let rows = crate::harness::direct(cluster).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await;
        assert!(rows.unwrap().get::<_, i64>(0) > 0, "alice's rows reached {shard}");
    }

    // bob logs in (md5) but may not read the table: Postgres says so.
    let b = login(&sc, &bob, "bob-pw").await.expect("bob's md5 password");
    let e = b.query(&format!("SELECT note FROM {t} WHERE customer_id = 3"), &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    assert!(e.as_db_error().unwrap().message().contains("permission denied for table"), "{e:?}");
    let who = b.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(who.get::<_, String>(0), bob);

    // Each passed-through user has a pool of its own, shown per server.
    let pools: shardcar_api::Pools = sc.admin_json("/api/v1/pools");
    let p = pools.pools.iter().find(|p| p.shard == "s0" && p.role == "primary").unwrap();
    assert!(p.passthrough_users >= 2 && p.passthrough_connections >= 1, "{p:?}");

    // Wrong passwords and unknown users are refused alike.
    for (user, password) in [(&alice, "nope"), (&bob, "nope"), (&table("nobody"), "x")] {
        let e = login(&sc, user, password).await.expect_err("refused");
        assert_eq!(sqlstate(&e), "28P01", "{user}: {e:?}");
    }

    // carol's verifier differs on s1: s0 serves her, s1 fails with why.
    let c = login(&sc, &carol, "carol-pw").await.unwrap();
    c.simple_query("/* shardcar: shard=s0 */ SELECT 1").await.unwrap();
    let e = c.simple_query("/* shardcar: shard=s1 */ SELECT 1").await.unwrap_err();
    let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(message.contains("s1 primary") && message.contains("same verifier"), "{message}");
    drop(sc);

    // Without passthrough the same users run as the shard URL's user.
    let sc = Sidecar::start(&fleet.hashed_config(&t, &auth.replace("passthrough = true", "passthrough = false")));
    let b = login(&sc, &bob, "bob-pw").await.unwrap();
    let who = b.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(who.get::<_, String>(0), "postgres");
}
