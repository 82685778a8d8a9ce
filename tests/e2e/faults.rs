//! A bounded fault suite: what clients see, and what the shards hold, when
//! things break under load — half-open logins and a client storm, a shard
//! primary killed, a replica stopped, shardcar stopped (SIGTERM) and
//! killed (SIGKILL) under two-phase load. Each prints its figures; the
//! assertions are about correctness (who gets errors, which data survives),
//! never about time.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::harness::{Fleet, Sidecar, connect, direct, eventually, sqlstate, two_phase};

/// The SQLSTATE of an error, or "closed" when the connection went.
fn code(e: &tokio_postgres::Error) -> String {
    if e.as_db_error().is_some() { sqlstate(e) } else { "closed".into() }
}

/// Median and 99th percentile of durations, in ms.
fn median_p99(mut d: Vec<Duration>) -> (f64, f64) {
    if d.is_empty() {
        return (0.0, 0.0);
    }
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

#[tokio::test]
async fn half_open_logins_and_a_client_storm_leave_clients_served() {
    let fleet = Fleet::shared();
    let config = fleet.config(4).replace("[listen]", "[listen]\nmax_client_connections = 200\nlogin_timeout_ms = 3000");
    let sc = Sidecar::start(&config);
    let local = format!("host=127.0.0.1 port={} user=local dbname=app", sc.port);
    let bystander = connect(&local).await.unwrap();

    // 500 connections that send half a startup packet and stop.
    let mut half_open = Vec::new();
    for _ in 0..500 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sc.port)).await.unwrap();
        s.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
        half_open.push(s);
    }

    // The bystander keeps querying while 2,000 clients arrive at once and hold on.
    let storming = Arc::new(AtomicBool::new(true));
    let watch = storming.clone();
    let bystander_task = tokio::spawn(async move {
        let (mut ok, mut took) = (0, Vec::new());
        while watch.load(Ordering::Relaxed) {
            let at = Instant::now();
            bystander.query_one("SELECT 1", &[]).await.expect("the bystander is served");
            took.push(at.elapsed());
            ok += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok, took)
    });
    let started = Instant::now();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut storm = Vec::new();
    for _ in 0..2000 {
        let (local, release, answered) = (local.clone(), release.clone(), answered.clone());
        storm.push(tokio::spawn(async move {
            let client = connect(&local).await;
            let outcome = match &client {
                Ok(c) => match c.query_one("SELECT 1", &[]).await {
                    Ok(_) => "ok".to_string(),
                    Err(e) => code(&e),
                },
                Err(e) => code(e),
            };
            answered.fetch_add(1, Ordering::Relaxed);
            // Held (connected) until every client has its answer.
            let _ = release.acquire().await;
            drop(client);
            outcome
        }));
    }
    let all = eventually(Duration::from_secs(120), async || answered.load(Ordering::Relaxed) == 2000).await;
    assert!(all, "every client got an answer");
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    release.add_permits(2000);
    for t in storm {
        *outcomes.entry(t.await.unwrap()).or_default() += 1;
    }
    let storm_took = started.elapsed();
    storming.store(false, Ordering::Relaxed);
    let (bystander_ok, took) = bystander_task.await.unwrap();
    let (median, p99) = median_p99(took);

    // The half-open logins are cut off at the login timeout.
    let mut cut_off = 0;
    for mut s in half_open {
        let mut rest = Vec::new();
        if tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await.is_ok() {
            cut_off += 1;
        }
    }
    eprintln!(
        "storm: 500 half-open logins, then 2000 clients at once (200 slots) in {storm_took:?}: {outcomes:?}; \
         bystander {bystander_ok} queries, median {median:.2} ms, p99 {p99:.2} ms; half-open cut off: {cut_off}/500"
    );
    assert_eq!(outcomes.keys().cloned().collect::<Vec<_>>(), ["53300", "ok"], "served or told why");
    assert!(outcomes["ok"] >= 190, "the free slots were used although 500 logins hung");
    assert_eq!(cut_off, 500);
}

/// Keys 1..=40 of `t` inserted through `sc`; the ones that landed on s1.
async fn seeded(sc: &Sidecar, fleet: &Fleet, t: &str) -> HashSet<i64> {
    let c = sc.connect().await;
    let values: Vec<String> = (1..=40).map(|k| format!("({k}, '')")).collect();
    c.batch_execute(&format!("INSERT INTO {t} VALUES {}", values.join(", "))).await.unwrap();
    let rows = direct(&fleet.s1).await.query(&format!("SELECT customer_id FROM {t}"), &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Statements that succeeded, and errors by SQLSTATE.
type Outcomes = (usize, BTreeMap<String, usize>);

/// What the workers saw, per phase and shard.
#[derive(Default, Debug)]
struct Tally {
    by: BTreeMap<(String, &'static str), Outcomes>,
    /// Per key: updates acknowledged, and updates that failed (may or may not have committed).
    acked: BTreeMap<i64, (usize, usize)>,
}

#[tokio::test]
async fn a_shard_primary_killed_mid_load_fails_only_its_statements() {
    let mut fleet = Fleet::new();
    // Test clusters acknowledge commits before their WAL is written (for
    // speed); a crash would lose those on any Postgres. Here it must not.
    for shard in [&fleet.s0, &fleet.s1] {
        let c = direct(shard).await;
        c.batch_execute("ALTER SYSTEM SET synchronous_commit = on").await.unwrap();
        c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    }
    let t = fleet.hashed_table("killed").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let on_s1 = Arc::new(seeded(&sc, &fleet, &t).await);
    let phase = Arc::new(std::sync::Mutex::new("before".to_string()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let running = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for w in 0..6i64 {
        let (conninfo, t, on_s1, phase, tally, running) =
            (sc.conninfo("app", "secret"), t.clone(), on_s1.clone(), phase.clone(), tally.clone(), running.clone());
        workers.push(tokio::spawn(async move {
            let mut client = connect(&conninfo).await.unwrap();
            let mut i = 0i64;
            while running.load(Ordering::Relaxed) {
                let k = 1 + (w * 7 + i) % 40;
                i += 1;
                let shard = if on_s1.contains(&k) { "s1" } else { "s0" };
                let result =
                    client.execute(&format!("UPDATE {t} SET note = note || '.' WHERE customer_id = $1"), &[&k]).await;
                let now = phase.lock().unwrap().clone();
                let mut tally = tally.lock().await;
                let entry = tally.by.entry((now, shard)).or_default();
                match &result {
                    Ok(_) => entry.0 += 1,
                    Err(e) => *entry.1.entry(code(e)).or_default() += 1,
                }
                let acked = tally.acked.entry(k).or_default();
                match result {
                    Ok(_) => acked.0 += 1,
                    Err(_) => acked.1 += 1,
                }
                drop(tally);
                if client.is_closed() {
                    while connect(&conninfo).await.map(|c| client = c).is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *phase.lock().unwrap() = "s1 down".into();
    fleet.s1.stop().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    *phase.lock().unwrap() = "s1 back".into();
    let down_at = Instant::now();
    fleet.s1.start().unwrap();
    let back = eventually(Duration::from_secs(30), async || {
        tally.lock().await.by.get(&("s1 back".to_string(), "s1")).is_some_and(|(ok, _)| *ok > 20)
    })
    .await;
    let recovered_in = down_at.elapsed();
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let tally = tally.lock().await;
    let lines: Vec<String> = tally
        .by
        .iter()
        .map(|((phase, shard), (ok, errors))| format!("{phase}, {shard}: {ok} ok, errors {errors:?}"))
        .collect();
    eprintln!("shard primary killed under load: {lines:#?}; s1 served again {recovered_in:?} after its restart began");
    assert!(back, "s1's statements succeed again once it is back");
    let outage = |shard| tally.by.get(&("s1 down".to_string(), shard)).cloned().unwrap_or_default();
    let (s0_ok, s0_errors) = outage("s0");
    assert!(s0_ok > 0 && s0_errors.is_empty(), "s0 served throughout: {s0_ok} ok, {s0_errors:?}");
    let (_, s1_errors) = outage("s1");
    assert!(
        s1_errors.keys().all(|c| c.starts_with("08") || c.starts_with("57") || c == "closed"),
        "s1's statements failed as a lost or unreachable server: {s1_errors:?}"
    );
    // Committed data is never lost: every acknowledged update is there.
    let rows = {
        let c = direct(&fleet.s0).await;
        let mut rows = c.query(&format!("SELECT customer_id, length(note) FROM {t}"), &[]).await.unwrap();
        rows.extend(
            direct(&fleet.s1).await.query(&format!("SELECT customer_id, length(note) FROM {t}"), &[]).await.unwrap(),
        );
        rows
    };
    for row in rows {
        let (k, dots): (i64, i32) = (row.get(0), row.get(1));
        let (acked, failed) = tally.acked.get(&k).copied().unwrap_or_default();
        let dots = dots as usize;
        assert!(
            acked <= dots && dots <= acked + failed,
            "key {k}: {dots} updates on the shard, {acked} acknowledged, {failed} failed"
        );
    }
}

/// A fleet of the test's own, reads going to s0's replica, table `t` seeded
/// (`seeded`): the fleet, `t`, the sidecar, and the keys on s1.
async fn reading_replicas(prefix: &str) -> (Fleet, String, Sidecar, HashSet<i64>) {
    let fleet = Fleet::new();
    let t = fleet.hashed_table(prefix).await;
    let config = fleet.hashed_config(&t, "").replace("read_replicas = false", "read_replicas = true");
    let sc = Sidecar::start(&config);
    let on_s1 = seeded(&sc, &fleet, &t).await;
    (fleet, t, sc, on_s1)
}

#[tokio::test]
async fn a_replica_stopped_under_reads_sends_them_to_the_primary() {
    let (mut fleet, t, sc, _) = reading_replicas("replica").await;
    let c = sc.connect().await;
    // The replica has the rows before reads go to it.
    let caught_up = eventually(Duration::from_secs(20), async || {
        c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = 1"), &[])
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) == 1)
    })
    .await;
    assert!(caught_up);
    let mut outcomes: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let started = Instant::now();
    let mut stopped = false;
    while started.elapsed() < Duration::from_secs(6) {
        if !stopped && started.elapsed() > Duration::from_secs(2) {
            fleet.s0_replica.stop().unwrap();
            stopped = true;
        }
        let phase = if stopped { "replica down" } else { "replica up" };
        let k: i64 = 1 + (started.elapsed().as_millis() as i64 % 40);
        let got = c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = $1"), &[&k]).await;
        let key = match got {
            Ok(r) => {
                assert_eq!(r.get::<_, i64>(0), 1, "key {k}'s row");
                "ok".to_string()
            }
            Err(e) => code(&e),
        };
        *outcomes.entry(phase).or_default().entry(key).or_default() += 1;
    }
    eprintln!("replica stopped under reads: {outcomes:?}");
    let down = &outcomes["replica down"];
    assert!(down.get("ok").copied().unwrap_or(0) > 0, "reads go on, on the primary");
    let failed: usize = down.iter().filter(|(k, _)| *k != "ok").map(|(_, n)| n).sum();
    assert!(down.keys().all(|k| k == "ok" || k.starts_with("08")), "{down:?}");
    assert!(failed <= 1, "at most the read in flight when it stopped fails: {down:?}");
}

#[tokio::test]
async fn a_read_in_flight_on_a_replica_that_stops_runs_again_on_the_primary() {
    let (mut fleet, t, sc, on_s1) = reading_replicas("rerun").await;
    let k = (1..=40).find(|k| !on_s1.contains(k)).expect("a key on s0, which has the replica");
    let c = sc.connect().await;
    let count = format!("SELECT count(*) FROM {t} WHERE customer_id = {k}");
    let caught_up = eventually(Duration::from_secs(20), async || {
        c.simple_query(&count).await.is_ok_and(|m| crate::harness::first_column(&m) == ["1"])
    })
    .await;
    assert!(caught_up, "the replica has the row");
    // A slow read on the replica; the replica stops while it runs.
    let slow = format!("SELECT pg_sleep(2), count(*) FROM {t} WHERE customer_id = {k}");
    let reading = tokio::spawn(async move { c.simple_query(&slow).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    fleet.s0_replica.stop().unwrap();
    let answer = reading.await.unwrap().expect("the read ran again on the primary");
    let rows: Vec<_> = answer
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(rows, ["1"]);
    assert!(sc.log_text().contains("its read runs on the primary"), "{}", sc.log_text());
}

/// Two-phase load: each transaction writes one row on each shard, tagged;
/// afterwards every tag must be on both shards or on neither.
async fn two_phase_load(
    sc: &Sidecar,
    t: &str,
    k0: i64,
    k1: i64,
    tag: &str,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let (conninfo, t, tag) = (sc.conninfo("app", "secret"), t.to_string(), tag.to_string());
    tokio::spawn(async move {
        let (mut committed, mut failed) = (0, 0);
        let Ok(c) = connect(&conninfo).await else { return (0, 0) };
        let mut i = 0;
        while running.load(Ordering::Relaxed) && !c.is_closed() {
            i += 1;
            let insert = |k: i64| format!("INSERT INTO {t} VALUES ({k}, '{tag}-{i}')");
            let done = async {
                c.batch_execute("BEGIN").await?;
                c.batch_execute(&insert(k0)).await?;
                c.batch_execute(&insert(k1)).await?;
                c.batch_execute("COMMIT").await
            };
            match done.await {
                Ok(()) => committed += 1,
                Err(_) => {
                    failed += 1;
                    let _ = c.batch_execute("ROLLBACK").await;
                }
            }
        }
        (committed, failed)
    })
}

/// Tags on s0 and on s1 that are not on the other.
async fn torn(fleet: &Fleet, t: &str) -> (usize, Vec<String>) {
    let tags = async |shard| -> HashSet<String> {
        let rows = direct(shard).await.query(&format!("SELECT note FROM {t}"), &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    };
    let (a, b) = (tags(&fleet.s0).await, tags(&fleet.s1).await);
    (a.intersection(&b).count(), a.symmetric_difference(&b).cloned().collect())
}

#[tokio::test]
async fn shardcar_stopped_and_killed_under_two_phase_load_leaves_no_torn_transaction() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("torn").await;
    let config = two_phase(&fleet.hashed_config(&t, "")).replace("[listen]", "[listen]\nshutdown_grace_s = 2");
    let first = Sidecar::start(&config);
    let on_s1 = seeded(&first, fleet, &t).await;
    let k1 = *on_s1.iter().next().unwrap();
    let k0 = (1..=40).find(|k| !on_s1.contains(k)).unwrap();

    let mut figures = Vec::new();
    let mut sidecar = first;
    for (round, signal) in [("sigterm", libc::SIGTERM), ("sigkill", libc::SIGKILL)] {
        let running = Arc::new(AtomicBool::new(true));
        let mut load = Vec::new();
        for w in 0..4 {
            load.push(two_phase_load(&sidecar, &t, k0, k1, &format!("{round}{w}"), running.clone()).await);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let clean = sidecar.signal_and_wait(signal).await;
        running.store(false, Ordering::Relaxed);
        let (mut committed, mut failed) = (0, 0);
        for l in load {
            let (c, f) = l.await.unwrap();
            committed += c;
            failed += f;
        }
        // Started again: recovery finishes whatever was prepared.
        sidecar = Sidecar::start(&config);
        let prepared = async |shard| -> i64 {
            let c = direct(shard).await;
            c.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).await.unwrap().get(0)
        };
        let resolved = eventually(Duration::from_secs(30), async || {
            prepared(&fleet.s0).await == 0 && prepared(&fleet.s1).await == 0
        })
        .await;
        let (whole, torn) = torn(fleet, &t).await;
        figures.push(format!(
            "{round}: exited cleanly {clean}; {committed} committed, {failed} failed as seen by clients; \
             transactions on both shards {whole}, torn {}",
            torn.len()
        ));
        assert!(resolved, "{round}: no prepared transaction left behind");
        assert!(torn.is_empty(), "{round}: transactions on one shard only: {torn:?}");
        assert!(whole >= committed, "{round}: every acknowledged commit is on both shards");
        if round == "sigterm" {
            assert!(clean, "SIGTERM is a clean exit");
        }
    }
    eprintln!("two-phase load under shardcar stops: {figures:#?}");
}
