//! Health probes over the control plane (deadpool-postgres): every server is
//! asked `SELECT 1` on an interval, so a replica marked down by the data path
//! comes back once it answers, and readiness reflects reachable primaries.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{Node, Pools};

/// A control-plane pool of one connection for one server.
fn probe_pool(node: &Node, connect_timeout: Duration) -> Option<Pool> {
    let mut cfg = tokio_postgres::Config::from_str(&node.endpoint.url).ok()?;
    cfg.connect_timeout(connect_timeout);
    cfg.application_name("shardcar-health");
    let manager = Manager::from_config(cfg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager).max_size(1).build().ok()
}

async fn probe(pool: &Pool, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client.simple_query("SELECT 1").await.map_err(|e| e.to_string())?;
        Ok(())
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// Probes every server each `interval` until the task is dropped.
pub async fn run(pools: Arc<Pools>, interval: Duration, connect_timeout: Duration) {
    let probes: Vec<(Arc<Node>, Pool)> =
        pools.nodes().filter_map(|n| probe_pool(n, connect_timeout).map(|p| (n.clone(), p))).collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let rounds = probes.iter().map(|(node, pool)| async move {
            match probe(pool, connect_timeout).await {
                Ok(()) => node.health.mark_up(),
                Err(e) => node.health.mark_down(format!("{}: {e}", node.label)),
            }
        });
        futures_util::future::join_all(rounds).await;
    }
}
