//! Routing policies written in Python (plugins/python/hash, built with
//! componentize-py) and JavaScript (plugins/js/hash, componentize-js): each
//! loads in the sidecar, passes its test cases, and places every pgbench
//! account where Postgres's hash partitioning — and the built-in `hash` —
//! does; its call time is measured next to the built-in's on the same
//! statements.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Fleet, Sidecar, direct, hashed_tables, metric_total, run_tool, two_phase};

/// Builds a language's example policy with its build tool; its test cases
/// are copied beside it.
fn build(language: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join(format!("shardcar-{language}-{}", std::process::id())).join("hash.wasm");
    let mut tool = match language {
        "python" => Command::new(repo.join("plugins/python/build.sh")),
        _ => {
            let mut node = Command::new("node");
            node.arg(repo.join("plugins/js/build.mjs"));
            node
        }
    };
    let built = tool.arg(repo.join("plugins").join(language).join("hash")).arg(&out).output().expect("run the build");
    assert!(built.status.success(), "building the {language} plugin: {}", String::from_utf8_lossy(&built.stderr));
    out
}

fn config(fleet: &Fleet, plugin: &str) -> String {
    let tables = [("pgbench_accounts", "aid"), ("pgbench_branches", "bid"), ("pgbench_tellers", "tid")];
    // Every call made (no remembered decisions), and time for a debug-built host.
    // pgbench -i fills its tables in a transaction across the shards.
    let config = fleet
        .config_with(8, &hashed_tables(&tables).replace("plugin = \"hash\"", &format!("plugin = \"{plugin}\"")))
        .replace("call_timeout_ms = 100", "call_timeout_ms = 1000\nremembered_decisions = 0");
    two_phase(&config)
}

/// The median and 99th percentile of a policy's plugin calls, in µs (the
/// upper bounds of the histogram buckets they fall in).
fn call_quantiles(metrics: &str) -> (f64, f64) {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("shardcar_plugin_call_duration_seconds_bucket{") && l.contains("policy=\"by-customer\"")
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let n = l.rsplit(' ').next()?.parse().ok()?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, n))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let at = |q: f64| buckets.iter().find(|b| b.1 >= q * total).map_or(f64::NAN, |b| b.0 * 1e6);
    (at(0.5), at(0.99))
}

#[tokio::test]
async fn a_python_policy_routes_pgbench_like_the_built_in_hash() {
    routes_pgbench_like_the_built_in_hash("python", "hash-py").await;
}

#[tokio::test]
async fn a_javascript_policy_routes_pgbench_like_the_built_in_hash() {
    routes_pgbench_like_the_built_in_hash("js", "hash-js").await;
}

async fn routes_pgbench_like_the_built_in_hash(language: &str, name: &str) {
    let wasm = build(language);
    let fleet = Fleet::new();
    // At start the plugin file's test cases gate it: a failing case stops the sidecar.
    let sidecar = Sidecar::start(&config(&fleet, &wasm.display().to_string()));
    let plugins: shardcar_api::Plugins = sidecar.admin_json("/api/v1/plugins");
    assert!(plugins.plugins[0].plugin == name && plugins.plugins[0].status == "ok", "{plugins:?}");

    let (ok, out) = run_tool(&sidecar, "pgbench", &["-i", "-s", "1", "-q"], None);
    assert!(ok, "pgbench -i through the {language} policy:\n{out}");
    // Each shard holds exactly the accounts Postgres's own hash partitioning
    // (MODULUS 2) gives its remainder, all of them between the two.
    let mut total = 0;
    for (remainder, shard) in [&fleet.s0, &fleet.s1].into_iter().enumerate() {
        let c = direct(shard).await;
        c.batch_execute("CREATE TABLE python_hp (k bigint) PARTITION BY HASH (k)").await.unwrap();
        let sql = format!(
            "SELECT count(*), count(*) FILTER (WHERE NOT satisfies_hash_partition('python_hp'::regclass, 2, {remainder}, aid::bigint)) FROM pgbench_accounts"
        );
        let row = c.query_one(&sql, &[]).await.unwrap();
        let (rows, misplaced): (i64, i64) = (row.get(0), row.get(1));
        assert!(rows > 0 && misplaced == 0, "shard {remainder}: {rows} accounts, {misplaced} not its own");
        total += rows;
    }
    assert_eq!(total, 100_000);

    // The same select-only load through this policy and the built-in.
    let mut measured = Vec::new();
    for (name, sidecar) in [(language, sidecar), ("built-in", Sidecar::start(&config(&fleet, "hash")))] {
        let (ok, out) = run_tool(&sidecar, "pgbench", &["-S", "-n", "-c", "4", "-T", "5", "-M", "prepared"], None);
        assert!(ok && out.contains("number of failed transactions: 0"), "{name}:\n{out}");
        let metrics = sidecar.admin_get("/metrics").1;
        let (p50, p99) = call_quantiles(&metrics);
        let retired = metric_total(&metrics, "shardcar_plugin_instances_retired_total");
        let plugins: shardcar_api::Plugins = sidecar.admin_json("/api/v1/plugins");
        measured.push(format!(
            "{name}: plugin call p50 ≤ {p50:.0} µs, p99 ≤ {p99:.0} µs, {:.1} MiB per instance, sidecar RSS {} MiB, {retired} instances retired",
            plugins.plugins[0].instance_memory_bytes as f64 / (1 << 20) as f64,
            sidecar.rss_kib() / 1024
        ));
    }
    println!("{}", measured.join("; "));
}
