//! The cost of routing one statement: parsing (facts cache miss and hit,
//! and a simple query's template hit) and the plugin step (extract-key + route, reused instances) for the
//! built-in hash plugin. `cargo bench -p shardcar --bench routing`.
//!
//! Besides criterion's estimates, prints the median and p99 of single
//! calls and their allocations (a counting allocator).

#[path = "common/counting.rs"]
mod counting;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use shardcar::classify::params::Params;
use shardcar::classify::{FactsCache, classify};
use shardcar::config::Config;
use shardcar::policy::Router;
use shardcar::policy::facts::SessionInfo;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const CONFIG: &str = r#"
[[users]]
name = "app"
trust = true
[[shards]]
name = "s0"
primary = "postgres://u@127.0.0.1:1/app"
[[shards]]
name = "s1"
primary = "postgres://u@127.0.0.1:2/app"
[routing]
default_shard = "s0"
[[policies]]
name = "by-account"
plugin = "hash"
config = { shards = ["s0", "s1"] }
[[tables]]
name = "pgbench_accounts"
key = "aid"
policy = "by-account"
"#;

const SQL: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// Median and p99 of `f`, one call per sample, in nanoseconds, and its
/// allocations per call.
fn percentiles(mut f: impl FnMut()) -> (u128, u128, f64) {
    for _ in 0..10_000 {
        f();
    }
    let mut samples: Vec<u128> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    let allocations = counting::per_call(10_000, f);
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100], allocations)
}

fn routing(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let cfg = Config::parse(CONFIG).unwrap();
    let metrics = Arc::new(shardcar::metrics::Metrics::new());
    let topology = Arc::new(shardcar::topology::Topology::new(&cfg));
    let pools = shardcar::pool::Pools::new(&cfg, topology, &metrics).unwrap();
    let router = Router::new(&cfg, &pools, &metrics).unwrap();
    let facts = Arc::new(classify(SQL));
    let session = Arc::new(SessionInfo::default());
    let mut aid = 0i64;
    let mut route = || {
        aid = (aid + 7919) % 100_000;
        let params =
            Some(Arc::new(Params { values: vec![Some(aid.to_string().into())], formats: vec![], types: vec![23] }));
        black_box(router.route_statement(&facts, 0, &params, &session, false, None).unwrap());
    };
    let (median, p99, allocs) = percentiles(&mut route);
    println!("plugin step (extract-key + route, hash): median {median} ns, p99 {p99} ns, {allocs:.1} allocations");
    c.bench_function("plugin step: hash extract-key + route", |b| b.iter(&mut route));

    let cache = FactsCache::new(16 << 20, &Default::default());
    cache.get(SQL);
    let (median, p99, allocs) = percentiles(|| {
        black_box(cache.get(SQL));
    });
    println!("parse, cache hit: median {median} ns, p99 {p99} ns, {allocs:.1} allocations");
    c.bench_function("parse: cache hit", |b| b.iter(|| black_box(cache.get(SQL))));

    let mut n = 0u64;
    let mut miss = || {
        n += 1;
        black_box(classify(&format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n}")));
    };
    let (median, p99, allocs) = percentiles(&mut miss);
    println!("parse, cache miss (pg_query): median {median} ns, p99 {p99} ns, {allocs:.1} allocations");
    c.bench_function("parse: cache miss", |b| b.iter(&mut miss));

    // A simple query with a new literal: lexed, its template found in the cache.
    let mut n = 0u64;
    let mut lifted = || {
        n += 1;
        black_box(cache.lookup_lifted(&format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n}")));
    };
    let (median, p99, allocs) = percentiles(&mut lifted);
    println!("parse, new literal (template hit): median {median} ns, p99 {p99} ns, {allocs:.1} allocations");
    c.bench_function("parse: new literal", |b| b.iter(&mut lifted));
}

criterion_group!(benches, routing);
criterion_main!(benches);
