//! README command 1's `shardcar demo`: three shards and a replica, the
//! sample schema behind the built-in plugins, the skewed workload, and
//! cleanup on Ctrl-C.

use std::time::Duration;

use crate::harness::{Demo, admin_json, connect, eventually};

#[tokio::test]
async fn demo_runs_a_sharded_workload_and_cleans_up_on_ctrl_c() {
    let demo = Demo::start(&["--rate", "300"]).await;
    assert!(demo.banner.contains(&format!("psql -h 127.0.0.1 -p {} -U app app", demo.port)), "{}", demo.banner);
    assert!(demo.banner.contains(&format!("http://127.0.0.1:{}/", demo.admin_port)), "{}", demo.banner);
    let names: Vec<&str> = demo.primaries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["s0", "s1", "s2"], "{}", demo.banner);
    let workspace = demo.config.parent().unwrap().to_path_buf();
    assert!(demo.config.exists());

    // The workload seeds customers 1..=2000 through shardcar, then runs its mix.
    let c = connect(&demo.conninfo()).await.unwrap();
    let seeded = eventually(Duration::from_secs(60), async || {
        c.query("SELECT 1 FROM customers WHERE id = 2000", &[]).await.is_ok_and(|r| r.len() == 1)
    })
    .await;
    assert!(seeded, "the workload seeds customers");

    // Every customer is on exactly one shard, the one the hash policy names,
    // and each shard holds some.
    let mut total = 0;
    for (shard, _) in &demo.primaries {
        let direct = demo.shard(shard).await;
        let ids: Vec<i64> =
            direct.query("SELECT id FROM customers ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert!(!ids.is_empty(), "{shard} holds customers");
        total += ids.len();
        for id in ids.iter().take(20) {
            let x: shardcar_api::Explanation =
                admin_json(demo.admin_port, &format!("/api/v1/explain?sql=SELECT+1+FROM+customers+WHERE+id={id}"));
            assert_eq!(x.target.unwrap().shard, *shard, "customer {id}");
        }
    }
    assert_eq!(total, 2000, "no customer is on two shards");
    // acme's events are only on its pinned shard.
    let acme_on = async |shard: &str| -> i64 {
        demo.shard(shard)
            .await
            .query_one("SELECT count(*) FROM tenant_events WHERE tenant = 'acme'", &[])
            .await
            .unwrap()
            .get(0)
    };
    assert!(eventually(Duration::from_secs(30), async || acme_on("s2").await > 0).await, "acme events reach s2");
    assert_eq!(acme_on("s0").await + acme_on("s1").await, 0);

    let overview: shardcar_api::Overview = admin_json(demo.admin_port, "/api/v1/overview");
    assert!(overview.ready);
    assert_eq!(overview.shards, 3);
    // Load figures come from the once-a-second sample of the registry.
    let counted = eventually(Duration::from_secs(10), async || {
        admin_json::<shardcar_api::Overview>(demo.admin_port, "/api/v1/overview").load.statements_total > 2000
    })
    .await;
    assert!(counted, "the seeding and the workload are counted");
    drop(c);

    let (clean, stderr) = demo.interrupt().await;
    assert!(clean, "{stderr}");
    let summary = stderr.lines().find(|l| l.starts_with("workload: ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(summary.ends_with(" 0 errors"), "the workload ran without errors: {stderr}");
    assert!(!workspace.exists(), "the demo's data is removed: {}", workspace.display());
}
