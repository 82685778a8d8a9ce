//! Health probes over the control plane (deadpool-postgres): every server is
//! asked for its WAL position on an interval, so a replica marked down by
//! the data path comes back once it answers, readiness reflects reachable
//! primaries, and each replica's lag behind its primary is known.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use shardcar_api::Lag;
use tokio_postgres::SimpleQueryMessage;

use super::{Node, Pools, Role};
use crate::tls::shard::SslMode;

/// A primary's WAL position (NULL if it is in recovery after all), and
/// whether the probe's own connection is encrypted.
const PRIMARY_PROBE: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     '0', (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())::text";
/// A replica's replayed position, the age of its last replayed transaction
/// while received WAL is still pending (else 0: caught up), and encryption.
const REPLICA_PROBE: &str = "SELECT pg_last_wal_replay_lsn()::text, \
     (CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
      ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END)::float8::text, \
     (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())::text";

/// The WAL position a server reported, and (replicas) its replay delay.
struct Position {
    lsn: Option<u64>,
    seconds: f64,
    encrypted: bool,
}

async fn probe(pool: &Pool, role: Role, timeout: Duration) -> Result<Position, String> {
    let attempt = async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        let sql = if role == Role::Primary { PRIMARY_PROBE } else { REPLICA_PROBE };
        let messages = client.simple_query(sql).await.map_err(|e| e.to_string())?;
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        // `try_get`: the primary's probe has one column, and `get` panics past the end.
        let column = |i: usize| row.and_then(|r| r.try_get(i).ok().flatten());
        Ok(Position {
            lsn: column(0).and_then(parse_lsn),
            seconds: column(1).and_then(|s| s.parse().ok()).unwrap_or(0.0),
            encrypted: column(2) == Some("true"),
        })
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// `16/B374D848` → a byte position.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Probes every server each `interval` until the task is dropped.
pub async fn run(pools: Arc<Pools>, interval: Duration, connect_timeout: Duration) {
    let probes: Vec<(Arc<Node>, Pool)> = pools.nodes().map(|n| (n.clone(), n.control.clone())).collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let rounds =
            probes.iter().map(|(node, pool)| async move { (node, probe(pool, node.role, connect_timeout).await) });
        let results = futures_util::future::join_all(rounds).await;
        let mut primary_lsn = HashMap::new();
        for (node, result) in &results {
            match result {
                Ok(position) => {
                    node.health.mark_up();
                    // The first probe runs at start: a server under `prefer`
                    // that answers in clear is reported then.
                    if !position.encrypted && node.endpoint.tls.mode == SslMode::Prefer {
                        node.tls.warn_plain_once(&node.label, &node.endpoint.address());
                    }
                    if node.role == Role::Primary
                        && let Some(lsn) = position.lsn
                    {
                        primary_lsn.insert(node.shard, lsn);
                    }
                }
                Err(e) => node.health.mark_down(format!("{}: {e}", node.label)),
            }
        }
        for (node, result) in results.iter().filter(|(n, _)| n.role == Role::Replica) {
            let lag = match (result, primary_lsn.get(&node.shard)) {
                (Ok(Position { lsn: Some(replayed), seconds, .. }), Some(primary)) => {
                    Some(Lag { bytes: primary.saturating_sub(*replayed), seconds: *seconds })
                }
                _ => None,
            };
            node.health.set_lag(lag);
            node.health.set_behind(pools.max_lag.exceeded_by(lag), &node.label, lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_is_a_byte_position() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x3000148));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("nope"), None);
    }
}
