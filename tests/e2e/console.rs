//! The admin console with psql itself: `psql -d shardcar_admin -c 'SHOW ...'`.

use std::process::Command;

use crate::harness::{Fleet, Sidecar, eventually};

const OPS: &str = "\n[[users]]\nname = \"ops\"\npassword = \"opspw\"\nconsole = true\n";

/// psql's unaligned output of `sql` as user `user`: (succeeded, rows as
/// `|`-separated fields, stderr).
fn psql(sc: &Sidecar, user: &str, password: &str, sql: &str) -> (bool, Vec<String>, String) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &sc.port.to_string(), "-U", user, "-d", "shardcar_admin"])
        .args(["-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (Debian package postgresql-client)");
    let rows = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    (out.status.success(), rows, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn psql_reads_pools_clients_servers_and_shards_from_the_console() {
    let mut fleet = Fleet::new();
    let sc = Sidecar::start(&fleet.config_with(4, OPS));
    let app = sc.connect().await;
    app.batch_execute("/* shardcar: shard=s1 */ SELECT 1").await.unwrap();

    let (ok, pools, err) = psql(&sc, "ops", "opspw", "SHOW POOLS");
    assert!(ok, "{err}");
    let shards_and_roles: Vec<String> =
        pools.iter().map(|r| r.split('|').take(2).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(shards_and_roles, ["s0 primary", "s0 replica", "s1 primary"], "{pools:?}");
    assert!(pools.iter().all(|r| r.split('|').nth(3) == Some("4")), "pool.size is each max: {pools:?}");

    // The application's session is listed, with its user and address.
    let (ok, clients, err) = psql(&sc, "ops", "opspw", "show clients;");
    assert!(ok, "{err}");
    assert!(clients.iter().any(|r| r.contains("|app|") && r.contains("127.0.0.1:")), "{clients:?}");
    assert!(clients.iter().any(|r| r.contains("|ops|shardcar_admin|")), "the console's own session: {clients:?}");

    // A shard down: the console still answers, and says so.
    fleet.s1.stop().unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(10), async || {
            let (_, servers, _) = psql(&sc, "ops", "opspw", "SHOW SERVERS");
            servers.iter().any(|r| r.starts_with("s1|primary|") && r.contains("|down|"))
        })
        .await,
        "s1's primary is shown down"
    );
    // And the event timeline has it.
    assert!(
        eventually(std::time::Duration::from_secs(5), async || {
            let (_, events, _) = psql(&sc, "ops", "opspw", "SHOW EVENTS");
            events.iter().any(|r| r.contains("|down|s1 primary|"))
        })
        .await,
        "SHOW EVENTS tells s1's primary went down"
    );
    let (ok, shards, err) = psql(&sc, "ops", "opspw", "SHOW SHARDS");
    assert!(ok, "{err}");
    println!("SHOW POOLS:\n{}\nSHOW SHARDS:\n{}", pools.join("\n"), shards.join("\n"));
    assert!(shards.iter().any(|r| r.starts_with("s1|down|")), "{shards:?}");
    assert!(shards.iter().any(|r| r.starts_with("s0|ok|")), "{shards:?}");

    // What the console does not know is an error that lists what it does.
    let (ok, _, err) = psql(&sc, "ops", "opspw", "DROP TABLE t");
    assert!(!ok);
    assert!(err.contains("does not know") && err.contains("SHOW POOLS"), "{err}");
    // Only users with console = true may open it.
    let (ok, _, err) = psql(&sc, "app", "secret", "SHOW POOLS");
    assert!(!ok);
    assert!(err.contains("may not use the admin console"), "{err}");
    fleet.s1.start().unwrap();
}
