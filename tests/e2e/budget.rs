//! A fleet of sidecars in front of one server with a connection budget
//! (`shards[].max_server_connections`): together they never open more than
//! the budget, each gets its share, and the share of sidecars that leave
//! goes to those that stay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Fleet, Sidecar, connect, direct, eventually};

const BUDGET: i64 = 20;
/// Clients of each sidecar, each keeping one statement running on s0.
const CLIENTS: usize = 8;
/// How soon the sidecars that stay take the share of those that left (README).
const REGROW: Duration = Duration::from_secs(10);

/// This test's sidecars' data connections on s0 (not their control-plane
/// ones, not this query's).
const DATA_CONNECTIONS: &str = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
    AND application_name <> 'shardcar-control' AND pid <> pg_backend_pid()";

fn held(sc: &Sidecar) -> shardcar_api::Budget {
    budget_of(sc, "primary")
}

fn budget_of(sc: &Sidecar, role: &str) -> shardcar_api::Budget {
    let pools: shardcar_api::Pools = sc.admin_json("/api/v1/pools");
    let p = pools.pools.iter().find(|p| p.shard == "s0" && p.role == role).unwrap();
    p.budget.expect("s0's servers have a budget")
}

/// `CLIENTS` clients of `sc` running short statements on s0 until `running` clears.
fn load(sc: &Sidecar, running: Arc<AtomicBool>, errors: Arc<AtomicI64>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|_| {
            let (conninfo, running, errors) = (sc.conninfo("app", "secret"), running.clone(), errors.clone());
            tokio::spawn(async move {
                let Ok(c) = connect(&conninfo).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                while running.load(Ordering::Relaxed) && !c.is_closed() {
                    if c.batch_execute("SELECT pg_sleep(0.02)").await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn four_sidecars_share_a_budget_and_two_that_leave_free_theirs() {
    // A fleet of its own: every client connection on s0 is this test's.
    let fleet = Fleet::new();
    let config = fleet
        .config(16)
        .replace("name = \"s0\"", &format!("name = \"s0\"\nmax_server_connections = {BUDGET}"))
        .replace("checkout_timeout_ms = 2000", "checkout_timeout_ms = 20000");
    let sidecars: Vec<Sidecar> = (0..4).map(|_| Sidecar::start(&config)).collect();

    // Sample what s0 sees, as often as it answers, for the whole test.
    let (sampling, most) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicI64::new(0)));
    let sampler = {
        let (s0, sampling, most) = (direct(&fleet.s0).await, sampling.clone(), most.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while sampling.load(Ordering::Relaxed) {
                let n: i64 = s0.query_one(DATA_CONNECTIONS, &[]).await.unwrap().get(0);
                most.fetch_max(n, Ordering::Relaxed);
                samples += 1;
            }
            samples
        })
    };

    let (running, errors) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicI64::new(0)));
    let mut clients: Vec<_> = sidecars.iter().map(|sc| load(sc, running.clone(), errors.clone())).collect();
    let shared = eventually(Duration::from_secs(20), async || {
        sidecars.iter().all(|sc| {
            let b = held(sc);
            b.sidecars == 4 && b.share == 5 && b.held == 5
        })
    })
    .await;
    let views: Vec<_> = sidecars.iter().map(held).collect();
    assert!(shared, "each of the four holds its share, 5: {views:?}");
    // The replica (a hot standby, idle here) has a budget of its own, leased the same way.
    let replica = budget_of(&sidecars[0], "replica");
    assert_eq!((replica.limit, replica.sidecars, replica.share), (20, 4, 5), "{replica:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let most_with_four = most.load(Ordering::Relaxed);

    // Two leave (killed: their connections close with them).
    let mut sidecars = sidecars;
    let staying = sidecars.split_off(2);
    for (gone, c) in sidecars.into_iter().zip(clients.drain(..2)) {
        for task in c {
            task.abort();
        }
        drop(gone);
    }
    let left = Instant::now();
    let regrown = eventually(REGROW, async || {
        staying.iter().all(|sc| {
            let b = held(sc);
            b.sidecars == 2 && b.held >= CLIENTS as u64
        })
    })
    .await;
    let took = left.elapsed();
    let views: Vec<_> = staying.iter().map(held).collect();
    assert!(regrown, "the two that stay grow to their clients' 8 within {REGROW:?}: {views:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    running.store(false, Ordering::Relaxed);
    for task in clients.into_iter().flatten() {
        task.await.unwrap();
    }
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let most = most.load(Ordering::Relaxed);
    eprintln!(
        "budget {BUDGET}: at most {most_with_four} data connections with four sidecars, {most} overall \
         ({samples} samples); the two left took {took:?} to hold 8 each; {} client errors",
        errors.load(Ordering::Relaxed)
    );
    assert!(most <= BUDGET, "never more than the budget on s0: {most}");
    assert!(most_with_four >= BUDGET - 2, "the load used the budget: {most_with_four}");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no statement failed for want of a connection");
}
