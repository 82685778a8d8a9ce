//! Health probes over the control plane (deadpool-postgres): every server is
//! asked its role, timeline and WAL position on an interval, so a server
//! marked down by the data path comes back once it answers, the shard's
//! primary is the one that is (`failover`), and each replica's lag behind
//! it, and the writes it has replayed, are known.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use shardcar_api::Lag;
use tokio_postgres::SimpleQueryMessage;

use super::{Pools, Shard};
use crate::tls::shard::SslMode;

/// One question for every server, whatever it was configured as: is it in
/// recovery; its WAL position (a primary's insert position — past every
/// commit acknowledged so far, even with `synchronous_commit = off`, which
/// its write position is not — a replica's replayed one); the age of a replica's last replayed transaction while
/// received WAL is still pending (else 0: caught up); whether the probe's
/// own connection is encrypted; and its timeline (a primary's from its
/// current WAL file, a replica's from its last restartpoint).
const PROBE: &str = "SELECT pg_is_in_recovery()::text, \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text, \
     (CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
      ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END)::float8::text, \
     (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())::text, \
     (CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END)::text";

/// What a server answered.
struct Position {
    in_recovery: bool,
    lsn: Option<u64>,
    seconds: f64,
    encrypted: bool,
    timeline: Option<u32>,
}

/// Why a probe failed, and whether the server answered (refused the
/// login, failed TLS, sent an error) rather than stayed silent.
struct Failure {
    why: String,
    answered: bool,
}

/// The server answered, or the TLS handshake failed (a refusal as well):
/// not a server that is gone.
fn answered(e: &tokio_postgres::Error) -> bool {
    if e.as_db_error().is_some() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<rustls::Error>()
            || s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return true;
        }
        source = s.source();
    }
    false
}

async fn probe(pool: &Pool, timeout: Duration) -> Result<Position, Failure> {
    let silent = |why: String| Failure { why, answered: false };
    let failed = |e: tokio_postgres::Error| Failure { why: e.to_string(), answered: answered(&e) };
    let attempt = async {
        let client = pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => failed(e),
            other => silent(other.to_string()),
        })?;
        let messages = client.simple_query(PROBE).await.map_err(failed)?;
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        let column = |i: usize| row.and_then(|r| r.try_get(i).ok().flatten());
        Ok(Position {
            in_recovery: column(0).ok_or_else(|| silent("no answer to the health probe".into()))? == "true",
            lsn: column(1).and_then(parse_lsn),
            seconds: column(2).and_then(|s| s.parse().ok()).unwrap_or(0.0),
            encrypted: column(3) == Some("true"),
            timeline: column(4).and_then(|s| s.parse().ok()),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(silent(format!("no answer within {timeout:?}"))))
}

/// `16/B374D848` → a byte position.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// How often servers are probed while a shard has no primary: a promotion
/// is seen within this, whatever `health_check_interval_ms` is.
const WHILE_FAILING_OVER: Duration = Duration::from_millis(100);

/// Probes every server each `interval` (more often while a shard has no
/// primary, and at once when the data path lost one) until dropped.
pub async fn run(pools: Arc<Pools>, interval: Duration, connect_timeout: Duration) {
    loop {
        let started = Instant::now();
        let rounds = pools.shards.iter().map(|shard| probe_shard(&pools, shard, started, connect_timeout));
        futures_util::future::join_all(rounds).await;
        let failing_over = pools.shards.iter().any(|s| s.current_primary().is_none_or(|p| !p.health.is_up()));
        let pause = if failing_over { interval.min(WHILE_FAILING_OVER) } else { interval };
        tokio::select! {
            _ = tokio::time::sleep(pause.saturating_sub(started.elapsed())) => {}
            _ = pools.probe_now.notified() => {
                // Not more often than while failing over.
                tokio::time::sleep(WHILE_FAILING_OVER.saturating_sub(started.elapsed())).await;
            }
        }
    }
}

async fn probe_shard(pools: &Pools, shard: &Shard, started: Instant, connect_timeout: Duration) {
    let results = futures_util::future::join_all(
        shard.servers.iter().map(|n| async move { probe(&n.control, connect_timeout).await }),
    )
    .await;
    for (node, result) in shard.servers.iter().zip(&results) {
        match result {
            Ok(position) => {
                node.health.mark_up();
                node.state.learn(position.in_recovery, position.timeline);
                // The first probe runs at start: a server under `prefer`
                // that answers in clear is reported then.
                if !position.encrypted && node.endpoint.tls.mode == SslMode::Prefer {
                    node.tls.warn_plain_once(&node.label, &node.endpoint.address());
                }
            }
            Err(e) => {
                node.health.mark_down(format!("{}: {}", node.label, e.why));
                node.health.set_refusing(e.answered);
            }
        }
    }
    shard.elect();
    let primary_lsn = shard.leader.current().and_then(|i| results[i].as_ref().ok()).and_then(|p| p.lsn);
    if let Some(lsn) = primary_lsn {
        shard.leader.record_round(started, lsn);
    }
    for (node, result) in shard.servers.iter().zip(&results) {
        if node.is_primary() {
            node.health.set_lag(None);
            continue;
        }
        let replayed = match result {
            Ok(Position { in_recovery: true, lsn: Some(replayed), seconds, .. }) => Some((*replayed, *seconds)),
            _ => None,
        };
        let lag = match (replayed, primary_lsn) {
            (Some((replayed, seconds)), Some(primary)) => {
                Some(Lag { bytes: primary.saturating_sub(replayed), seconds })
            }
            _ => None,
        };
        if let Some((replayed, _)) = replayed {
            node.state.set_caught_up(shard.leader.caught_up_as_of(replayed));
        }
        node.health.set_lag(lag);
        node.health.set_behind(pools.max_lag.exceeded_by(lag), &node.label, lag);
    }
    if shard.leader.buffered() > 0 {
        // Statements waiting for a primary look again: it may be back up.
        shard.leader.wake();
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
