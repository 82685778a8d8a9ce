//! Shadow rollout: a second plugin routes the same statements beside the
//! live one and only its disagreements are counted; promoted, it takes the
//! routing over without a failed statement.

use std::collections::BTreeSet;
use std::time::Duration;

use shardcar::localpg::Workspace;
use shardcar_api as api;

use crate::harness::{Fleet, Sidecar, direct, eventually, table};

fn plugin(sc: &Sidecar) -> api::Plugin {
    let plugins: api::Plugins = sc.admin_json("/api/v1/plugins");
    plugins.plugins.into_iter().find(|p| p.policy == "by-customer").expect("the policy's plugin")
}

#[tokio::test]
async fn a_shadow_counts_the_keys_it_would_move_and_takes_over_when_promoted() {
    let fleet = Fleet::shared();
    let ws = Workspace::new().unwrap();
    let s2 = ws.primary("s2").unwrap();
    let t = table("shadowed");
    for shard in [&fleet.s0, &fleet.s1, &s2] {
        direct(shard).await.batch_execute(&format!("CREATE TABLE {t} (customer_id bigint, note text)")).await.unwrap();
    }
    let config = fleet
        .config_with(
            4,
            &format!(
                r#"
{}
[[policies]]
name = "by-customer"
plugin = "hash"
config = {{ shards = ["s0", "s1"] }}
shadow = {{ plugin = "hash", config = {{ shards = ["s0", "s1", "s2"] }}, sample = 1.0 }}

[[tables]]
name = "{t}"
key = "customer_id"
policy = "by-customer"
"#,
                crate::harness::third_shard(&s2)
            ),
        )
        .replace("call_timeout_ms = 100", "call_timeout_ms = 100\nmoving_rows = \"allow\"");
    let sc = Sidecar::start(&config);
    let c = sc.connect().await;

    // Traffic routed by the live plugin: an INSERT and a read per key.
    const KEYS: i64 = 150;
    for k in 1..=KEYS {
        c.execute(&format!("INSERT INTO {t} VALUES ($1, 'x')"), &[&k]).await.unwrap();
        c.query(&format!("SELECT note FROM {t} WHERE customer_id = $1"), &[&k]).await.unwrap();
    }
    // Where each key goes over two shards and over three, as Postgres hash
    // partitioning places it (what the hash plugin follows), asked of a server.
    let pg = direct(&fleet.s0).await;
    pg.batch_execute("CREATE TABLE IF NOT EXISTS shadow_hp (k bigint) PARTITION BY HASH (k)").await.unwrap();
    let remainder = async |modulus: i32, k: i64| -> i32 {
        for r in 0..modulus {
            let sql = "SELECT satisfies_hash_partition('shadow_hp'::regclass, $1, $2, $3::bigint)";
            let fits: bool = pg.query_one(sql, &[&modulus, &r, &k]).await.unwrap().get(0);
            if fits {
                return r;
            }
        }
        panic!("key {k} fits no remainder of {modulus}");
    };
    let mut moving = BTreeSet::new();
    for k in 1..=KEYS {
        if remainder(2, k).await != remainder(3, k).await {
            moving.insert(k.to_string());
        }
    }
    assert!(!moving.is_empty() && moving.len() < KEYS as usize, "some keys move, not all: {}", moving.len());

    // Every statement compared (off the statements' path, so soon after).
    let statements = 2 * KEYS as u64;
    let compared = eventually(Duration::from_secs(20), async || {
        plugin(&sc).shadow.is_some_and(|s| s.agreed + s.disagreed == statements)
    })
    .await;
    let report = plugin(&sc).shadow.expect("a shadow report");
    assert!(compared, "{report:?}");
    assert_eq!((report.dropped, report.failed), (0, 0), "{report:?}");
    assert_eq!(report.disagreed, 2 * moving.len() as u64, "two statements per moving key: {report:?}");
    let table = report.tables.iter().find(|x| x.table == t).expect("the table's tally");
    assert_eq!(table.keys_moving, moving.len() as u64);
    assert!(!table.examples.is_empty());
    for e in &table.examples {
        assert!(moving.contains(&e.key), "{e:?}");
        assert_ne!(e.live, e.shadow, "{e:?}");
    }
    println!(
        "shadow: {} agreed, {} disagreed over {} keys that move ({:.1}% agreement)",
        report.agreed,
        report.disagreed,
        table.keys_moving,
        100.0 * report.agreed as f64 / statements as f64
    );

    // Promoted under traffic: no statement fails, and new keys follow the shadow.
    let writer = {
        let c = sc.connect().await;
        let t = t.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for k in 1000..1400i64 {
                if let Err(e) = c.execute(&format!("INSERT INTO {t} VALUES ($1, 'after')"), &[&k]).await {
                    failures.push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let wrong = sc.admin_request("POST", "/api/v1/plugins/by-customer/promote?digest=nope", &[]);
    assert_eq!(wrong.0, 409, "a promotion names the shadow's digest: {wrong:?}");
    let (status, _, body) =
        sc.admin_request("POST", &format!("/api/v1/plugins/by-customer/promote?digest={}", report.digest), &[]);
    assert_eq!(status, 200, "{body}");
    let failures = writer.await.unwrap();
    assert!(failures.is_empty(), "statements failed during the promotion: {failures:?}");
    let promoted = plugin(&sc);
    assert!(promoted.shadow.is_none() && promoted.promoted.is_some(), "{promoted:?}");
    // Keys sent after the promotion are where three shards put them.
    for k in 2000..2060i64 {
        c.execute(&format!("INSERT INTO {t} VALUES ($1, 'new')"), &[&k]).await.unwrap();
    }
    let on_s2: i64 =
        direct(&s2).await.query_one(&format!("SELECT count(*) FROM {t} WHERE note = 'new'"), &[]).await.unwrap().get(0);
    let mut expected_on_s2 = 0;
    for k in 2000..2060i64 {
        expected_on_s2 += i64::from(remainder(3, k).await == 2);
    }
    assert!(expected_on_s2 > 0);
    assert_eq!(on_s2, expected_on_s2, "new keys routed by the promoted plugin");
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    }
}
