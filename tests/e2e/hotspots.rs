//! Hot keys and skew under a skewed (Zipf) workload: the sketch reports the
//! true top keys with bounds that hold, and the skew figure flags the shard
//! that holds them.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shardcar_api as api;

use crate::harness::{Fleet, Sidecar, direct, eventually};

/// Ranks 0..n drawn with probability proportional to 1/(rank+1)^s.
fn zipf(n: usize, s: f64, mut rng: StdRng) -> impl FnMut() -> usize {
    let mut cumulative = Vec::with_capacity(n);
    let mut total = 0.0;
    for rank in 0..n {
        total += 1.0 / ((rank + 1) as f64).powf(s);
        cumulative.push(total);
    }
    move || {
        let x = rng.random::<f64>() * total;
        cumulative.partition_point(|&c| c < x).min(n - 1)
    }
}

#[tokio::test]
async fn the_sketch_finds_the_true_top_keys_and_skew_flags_their_shard() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("zipf").await;
    let telemetry = "[telemetry]
hot_key_capacity = 256
top_keys = 10
skew_window_s = 5
hot_skew = 1.3
hot_after_s = 2
hot_min_rate = 1.0
";
    let config = fleet.hashed_config(&t, telemetry);
    let sc = Sidecar::start(&config);
    let c = sc.connect().await;

    // Which keys live on s1, read from s1 itself after inserting through shardcar.
    for key in 1..=200i64 {
        c.execute(&format!("INSERT INTO {t} VALUES ($1, 'seed')"), &[&key]).await.unwrap();
    }
    let mut on_s1: Vec<i64> = direct(&fleet.s1)
        .await
        .query(&format!("SELECT customer_id FROM {t}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    on_s1.sort();
    assert!(on_s1.len() >= 50, "hashing put {} of 200 keys on s1", on_s1.len());

    // The 50 hottest ranks are keys on s1; the long tail spreads over both shards.
    let mut rank = zipf(20_000, 1.2, StdRng::seed_from_u64(20261121));
    let keys: Vec<i64> =
        (0..5000).map(|_| rank()).map(|r| if r < 50 { on_s1[r] } else { 1_000_000 + r as i64 }).collect();
    // Every statement counts, the seed inserts too.
    let mut truth: HashMap<i64, u64> = (1..=200).map(|k| (k, 1)).collect();
    for k in &keys {
        *truth.entry(*k).or_default() += 1;
    }
    let lookup = c.prepare(&format!("SELECT note FROM {t} WHERE customer_id = $1")).await.unwrap();
    for chunk in keys.chunks(100) {
        // Pipelined on one connection, so the sketch sees a fixed order.
        let queries = chunk.iter().map(|k| {
            let (c, lookup) = (&c, &lookup);
            async move { c.query(lookup, &[k]).await }
        });
        for r in futures_util::future::join_all(queries).await {
            r.unwrap();
        }
    }

    let hot_keys = || sc.admin_json::<api::HotKeys>(&format!("/api/v1/hotkeys?table={t}"));
    assert!(
        eventually(Duration::from_secs(15), async || hot_keys().skew.hot).await,
        "the skew stays over 1.3 for 2 s: {:?}",
        hot_keys().skew
    );
    let hot = hot_keys();
    assert_eq!(hot.skew.busiest.as_deref(), Some("s1"), "{:?}", hot.skew);
    assert!(hot.skew.ratio >= 1.3, "{:?}", hot.skew);
    // The run took seconds: its window and its lifetime are the same.
    assert_eq!(hot.lifetime.statements, 5000 + 200, "every routed statement was counted once");
    let hot = hot.lifetime;

    let mut ranked: Vec<(i64, u64)> = truth.iter().map(|(k, c)| (*k, *c)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    // Estimates lie within max_error above the true count; where the true
    // counts of rank k and k+1 differ by more than that, the top k are exact.
    let exact = (1..=10).take_while(|&k| ranked[k - 1].1 > ranked[k].1 + hot.max_error).last().unwrap_or(0);
    eprintln!(
        "true top: {:?}; reported: {:?}; max error {}; exact top {exact}",
        &ranked[..10],
        hot.keys.iter().map(|k| (k.key.as_str(), k.count)).collect::<Vec<_>>(),
        hot.max_error
    );
    assert!(exact >= 5, "the sketch's error bound ({}) is too loose to separate the top 5", hot.max_error);
    let mut reported: Vec<i64> = hot.keys[..exact].iter().map(|k| k.key.parse().unwrap()).collect();
    let mut expected: Vec<i64> = ranked[..exact].iter().map(|(k, _)| *k).collect();
    reported.sort();
    expected.sort();
    assert_eq!(reported, expected, "the true top {exact} keys");
    for key in &hot.keys {
        let k: i64 = key.key.parse().unwrap();
        let real = truth[&k];
        assert!(key.lower_bound <= real && real <= key.upper_bound, "bounds hold for {key:?} (true {real})");
        if on_s1.contains(&k) {
            assert_eq!(key.shard, "s1");
        }
    }

    // All statements together point at the same shard, and Prometheus shows it.
    let overview: api::Overview = sc.admin_json("/api/v1/overview");
    assert_eq!(overview.skew.busiest.as_deref(), Some("s1"), "{:?}", overview.skew);
    let metrics = sc.admin_get("/metrics").1;
    let flag = format!("shardcar_hot_shard{{shard=\"s1\",table=\"{t}\"}} 1");
    assert!(metrics.contains(&flag), "/metrics lacks {flag}");
}
