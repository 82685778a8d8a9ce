//! A shard's primary dies under load and its replica is promoted: writes
//! wait for the new primary rather than fail, none acknowledged is lost,
//! and the old primary, restarted, gets nothing. Reads see the session's
//! own writes while the replica lags.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::harness::{Fleet, Sidecar, connect, direct, eventually, metric, sqlstate};

const WRITERS: usize = 4;
const READERS: usize = 2;

/// What one client saw: the ids whose INSERT was acknowledged (with when),
/// the errors it got, and its slowest statement.
#[derive(Default)]
struct Seen {
    acked: Vec<(i64, Instant)>,
    errors: Vec<(Instant, String)>,
    /// The slowest statement: how long, and when it started.
    longest: (Duration, Option<Instant>),
}

async fn run_client(conninfo: String, stop: Arc<AtomicBool>, writer: Option<(i64, String)>, read: String) -> Seen {
    let mut seen = Seen::default();
    let mut client: Client = connect(&conninfo).await.expect("connect to shardcar");
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let result = match &writer {
            Some((w, insert)) => {
                let id = w * 1_000_000 + i;
                i += 1;
                client.execute(insert, &[&id]).await.map(|_| Some(id))
            }
            None => client.query_one(&read, &[]).await.map(|_| None),
        };
        if at.elapsed() > seen.longest.0 {
            seen.longest = (at.elapsed(), Some(at));
        }
        match result {
            Ok(Some(id)) => seen.acked.push((id, Instant::now())),
            Ok(None) => {}
            Err(e) => {
                seen.errors.push((at, format!("{}: {e}", sqlstate(&e))));
                if client.is_closed() {
                    client = connect(&conninfo).await.expect("connect to shardcar again");
                }
            }
        }
    }
    seen
}

fn server<'a>(shards: &'a shardcar_api::Shards, label: &str) -> &'a shardcar_api::Server {
    shards.shards[0].servers.iter().find(|s| s.label == label).unwrap_or_else(|| panic!("{label} in {shards:?}"))
}

#[tokio::test]
async fn the_primary_dies_and_its_promoted_replica_takes_the_writes_losing_none() {
    let mut fleet = Fleet::new();
    let t = crate::harness::table("failover");
    let s0 = direct(&fleet.s0).await;
    s0.batch_execute(&format!("CREATE TABLE {t} (id bigint PRIMARY KEY)")).await.unwrap();
    // Acknowledged means on the replica too. With asynchronous replication
    // a promotion loses the last commits whatever a proxy does (README).
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "ALTER SYSTEM SET synchronous_commit = 'on'",
        "SELECT pg_reload_conf()",
    ] {
        s0.batch_execute(sql).await.unwrap();
    }
    let replica = direct(&fleet.s0_replica).await;
    let count = format!("SELECT count(*) FROM {t}");
    assert!(eventually(Duration::from_secs(10), async || replica.query_one(&count, &[]).await.is_ok()).await);
    // s0's two servers in libpq's multi-host form: whichever is the primary takes the writes.
    let both = format!(
        "primary = \"postgres://postgres@127.0.0.1:{},127.0.0.1:{}/app\"\nreplicas = []",
        fleet.s0.port, fleet.s0_replica.port
    );
    let config = fleet
        .config_reading_replicas(8)
        .replace(&format!("primary = \"{}\"\nreplicas = [\"{}\"]", fleet.s0.url(), fleet.s0_replica.url()), &both);
    assert!(config.contains(&both));
    let sc = Sidecar::start(&config);
    let roles = || {
        let shards: shardcar_api::Shards = sc.admin_json("/api/v1/shards");
        shards.shards[0].servers.iter().map(|s| format!("{} {}", s.label, s.role)).collect::<Vec<_>>()
    };
    let probed =
        eventually(Duration::from_secs(10), async || roles() == ["s0 primary primary", "s0 primary 1 replica"]).await;
    assert!(probed, "the second host is in recovery: {:?}", roles());
    let conninfo = sc.conninfo("app", "secret");
    let insert = format!("INSERT INTO {t} VALUES ($1)");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..WRITERS + READERS)
        .map(|k| {
            let writer = (k < WRITERS).then(|| (k as i64, insert.clone()));
            tokio::spawn(run_client(conninfo.clone(), stop.clone(), writer, count.clone()))
        })
        .collect();
    // A transaction open at the kill, and a statement running then.
    let open = connect(&conninfo).await.unwrap();
    open.batch_execute(&format!("BEGIN; INSERT INTO {t} VALUES (-2)")).await.unwrap();
    let running = connect(&conninfo).await.unwrap();
    let slow = format!("INSERT INTO {t} SELECT -1 FROM pg_sleep(3)");
    let running = tokio::spawn(async move { running.batch_execute(&slow).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    fleet.s0.kill().unwrap();
    let killed = Instant::now();
    // The time an operator (or Patroni) takes to decide.
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.s0_replica.promote().unwrap();
    let promoted = Instant::now();
    let took_over = eventually(Duration::from_secs(10), async || {
        let shards: shardcar_api::Shards = sc.admin_json("/api/v1/shards");
        let new = server(&shards, "s0 primary 1");
        new.role == "primary" && new.timeline == Some(2)
    })
    .await;
    assert!(took_over, "{}", sc.admin_get("/api/v1/shards").1);
    let took_over_at = Instant::now();
    // Both fail, clearly; neither is run again (either might have committed).
    let e = running.await.unwrap().expect_err("the statement running at the kill fails");
    println!("running at the kill: {}", sqlstate(&e));
    assert!(sqlstate(&e).starts_with("08"), "{e:?}");
    let e = open.batch_execute("COMMIT").await.expect_err("the transaction open at the kill fails");
    println!("open at the kill, COMMIT: {}", sqlstate(&e));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The old primary comes back as a primary, on the old timeline (its
    // standby setting removed, so a write sent to it would commit there).
    let auto = fleet.s0.data.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).unwrap();
    std::fs::write(&auto, text.lines().filter(|l| !l.starts_with("synchronous_")).collect::<Vec<_>>().join("\n"))
        .unwrap();
    fleet.s0.start().unwrap();
    let fenced = eventually(Duration::from_secs(10), async || {
        let shards: shardcar_api::Shards = sc.admin_json("/api/v1/shards");
        server(&shards, "s0 primary").role == "fenced"
    })
    .await;
    assert!(fenced, "{}", sc.admin_get("/api/v1/shards").1);
    let old = direct(&fleet.s0).await;
    let on_old = old.query_one(&count, &[]).await.unwrap().get::<_, i64>(0);
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for c in clients {
        seen.push(c.await.unwrap());
    }

    // Nothing reached the old primary once it was back.
    assert_eq!(old.query_one(&count, &[]).await.unwrap().get::<_, i64>(0), on_old, "writes reached the old primary");
    // Every acknowledged write is on the new primary.
    let new = direct(&fleet.s0_replica).await;
    let rows: HashSet<i64> =
        new.query(&format!("SELECT id FROM {t}"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let acked: Vec<(i64, Instant)> = seen.iter().flat_map(|s| s.acked.iter().copied()).collect();
    assert!(!rows.contains(&-1) && !rows.contains(&-2), "what failed at the kill was not run again");
    let lost: Vec<i64> = acked.iter().map(|(id, _)| *id).filter(|id| !rows.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let after_restart = acked.iter().filter(|(_, at)| *at > restarted).count();
    assert!(after_restart > 0, "writes went on after the old primary came back");
    // Errors: only statements in flight at the kill (one per client at most).
    let errors: Vec<&(Instant, String)> = seen.iter().flat_map(|s| &s.errors).collect();
    for (at, e) in &errors {
        assert!(*at < killed + Duration::from_millis(100), "an error after the kill: {e}");
    }
    assert!(seen.iter().all(|s| s.errors.len() <= 1), "{errors:?}");
    let (longest, longest_at) = seen.iter().map(|s| s.longest).max().unwrap_or_default();
    let since_kill = |at: Option<Instant>| at.map_or(0, |at| at.saturating_duration_since(killed).as_millis());
    let metrics = sc.admin_get("/metrics").1;
    let waited = metric(&metrics, "shardcar_failover_wait_seconds_count{shard=\"s0\"}");
    println!(
        "failover: {} writes acknowledged ({} after the old primary came back), 0 lost; {} errors ({errors:?}); \
         longest statement {} ms, from {} ms after the kill (promoted {} ms after it, seen as primary {} ms after it); \
         {waited} statements waited for a primary",
        acked.len(),
        after_restart,
        errors.len(),
        longest.as_millis(),
        since_kill(longest_at),
        (promoted - killed).as_millis(),
        (took_over_at - killed).as_millis(),
    );
    assert!(waited > 0.0, "statements waited for the new primary");
    assert!(metric(&metrics, "shardcar_failovers_total{shard=\"s0\"}") >= 2.0, "lost, then replaced");
    let shards: shardcar_api::Shards = sc.admin_json("/api/v1/shards");
    let events = &shards.shards[0].failovers;
    let last = events.last().expect("failovers are listed");
    assert_eq!((last.to.as_deref(), last.timeline), (Some("s0 primary 1"), Some(2)), "{events:?}");
    assert!(sc.log_text().contains("nothing is sent to it"), "the log says the old primary is fenced");
}

#[tokio::test]
async fn a_session_reads_its_own_writes_while_the_replica_lags() {
    let fleet = Fleet::new();
    let t = crate::harness::table("ryw");
    direct(&fleet.s0).await.batch_execute(&format!("CREATE TABLE {t} (id bigint)")).await.unwrap();
    let replica = direct(&fleet.s0_replica).await;
    let count = format!("SELECT count(*) FROM {t}");
    assert!(eventually(Duration::from_secs(10), async || replica.query_one(&count, &[]).await.is_ok()).await);
    replica.batch_execute("ALTER SYSTEM SET recovery_min_apply_delay = '300ms'").await.unwrap();
    replica.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let sc = Sidecar::start(&fleet.config_reading_replicas(4));
    let c = sc.connect().await;
    let read = format!("SELECT count(*), pg_is_in_recovery() FROM {t} WHERE id = $1");
    let (mut on_replica, mut replica_behind) = (0, 0);
    for i in 0..24i64 {
        c.execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&i]).await.unwrap();
        let seen_there = replica.query_one(&format!("{count} WHERE id = $1"), &[&i]).await.unwrap().get::<_, i64>(0);
        replica_behind += usize::from(seen_there == 0);
        // From at once to long after the replica has replayed it.
        tokio::time::sleep(Duration::from_millis(200 * (i as u64 % 8))).await;
        let row = c.query_one(&read, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 1, "write {i} not seen by its own session");
        on_replica += usize::from(row.get::<_, bool>(1));
    }
    println!(
        "read-your-writes: 24 of 24 seen; {on_replica} read on the replica; replica behind at the write {replica_behind} times"
    );
    assert!(replica_behind > 0, "the replica really lagged");
    assert!(on_replica > 0, "reads are not pinned to the primary: once replayed, the replica reads");
}
