//! shardcar logs in to shards with whatever they ask: md5, SCRAM, cleartext.

use crate::harness::{Fleet, Sidecar};

#[tokio::test]
async fn shards_asking_for_md5_scram_and_cleartext() {
    let fleet = Fleet::new();
    let s0 = crate::harness::direct(&fleet.s0).await;
    s0.batch_execute(
        "SET password_encryption = 'md5'; CREATE ROLE md5_role LOGIN PASSWORD 'md5pw';
         SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_role LOGIN PASSWORD 'scrampw';
         CREATE ROLE clear_role LOGIN PASSWORD 'clearpw';",
    )
    .await
    .unwrap();
    let hba = fleet.s0.data.join("pg_hba.conf");
    let rules = "host all md5_role 127.0.0.1/32 md5\nhost all scram_role 127.0.0.1/32 scram-sha-256\nhost all clear_role 127.0.0.1/32 password\n";
    let text = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("{rules}{text}")).unwrap();
    s0.batch_execute("SELECT pg_reload_conf()").await.unwrap();

    for (role, password) in [("md5_role", "md5pw"), ("scram_role", "scrampw"), ("clear_role", "clearpw")] {
        let url = format!("postgres://{role}:{password}@127.0.0.1:{}/app", fleet.s0.port);
        let config = fleet.config(2).replace(&fleet.s0.url(), &url);
        let sc = Sidecar::start(&config);
        let user: String = sc.connect().await.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(user, role);

        // With a wrong password, statements for s0 fail with the shard's
        // reason; clients still log in (s1 is reachable) and s1 serves.
        let wrong = fleet.config(2).replace(&fleet.s0.url(), &url.replace(password, "nope"));
        let sc = Sidecar::start(&wrong);
        let c = sc.connect().await;
        let err = c.batch_execute("SELECT 1").await.expect_err("s0 refuses shardcar's login");
        let msg = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
        assert!(msg.contains("refused the login") && msg.contains("password authentication failed"), "{role}: {msg}");
        c.batch_execute("/* shardcar: shard=s1 */ SELECT 1").await.unwrap();
    }
}
