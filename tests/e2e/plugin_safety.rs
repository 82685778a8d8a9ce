//! Plugins that trap, loop or hog memory fail one statement only; new
//! versions are swapped in under load without a failed statement, and broken
//! ones are refused while the old version keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::harness::{Fleet, Sidecar, direct, eventually, fixture_plugin, metric_total, sqlstate, table};

/// Table `t` routed by policy `guarded` with the component at `plugin`.
/// Each test that refuses versions keeps its last good ones in a cache dir
/// of its own (`own_cache`), so that no other test's can stand in.
fn config(fleet: &Fleet, t: &str, plugin: &Path, own_cache: Option<&Path>) -> String {
    let shared_cache = crate::harness::plugin_cache().display().to_string();
    let cache = own_cache.map_or(shared_cache.clone(), |c| c.display().to_string());
    fleet
        .config_with(
            4,
            &format!(
                "[[policies]]\nname = \"guarded\"\nplugin = \"{}\"\n\
             [[tables]]\nname = \"{t}\"\nkey = \"k\"\npolicy = \"guarded\"\n",
                plugin.display()
            ),
        )
        .replace("call_timeout_ms = 100\n", "")
        .replace("[plugins]\n", "[plugins]\ncall_timeout_ms = 50\nmemory_limit_mb = 16\nreload_interval_ms = 100\n")
        .replace(&shared_cache, &cache)
}

async fn create(fleet: &Fleet, t: &str) {
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("CREATE TABLE {t} (id bigserial, k bigint)")).await.unwrap();
    }
}

#[tokio::test]
async fn trapping_looping_and_hungry_plugins_fail_one_statement() {
    let fleet = Fleet::shared();
    for (fixture, code, words) in [
        // The plugin's own panic message reaches the client.
        ("trap", "XX000", "key 13 is unlucky"),
        ("spin", "57014", "CPU time"),
        ("hog", "53200", "memory"),
        ("noisy", "XX000", "cannot use stdout"),
    ] {
        let t = table(fixture);
        create(fleet, &t).await;
        let sc = Sidecar::start(&config(fleet, &t, &fixture_plugin(fixture), None));
        let bystander = sc.connect().await;
        let stop = Arc::new(AtomicBool::new(false));
        let (running, bystander_t) = (stop.clone(), t.clone());
        let loop_task = tokio::spawn(async move {
            let mut n = 0u64;
            while !running.load(Ordering::Relaxed) {
                bystander.batch_execute(&format!("INSERT INTO {bystander_t} (k) VALUES (1)")).await.expect("bystander");
                n += 1;
            }
            n
        });
        let c = sc.connect().await;
        for _ in 0..3 {
            c.batch_execute(&format!("INSERT INTO {t} (k) VALUES (2)")).await.unwrap();
            let err = c.batch_execute(&format!("INSERT INTO {t} (k) VALUES (13)")).await.unwrap_err();
            assert_eq!(sqlstate(&err), code, "{fixture}: {err:?}");
            let message = err.as_db_error().unwrap().message().to_string();
            assert!(message.contains("policy guarded") && message.contains(words), "{fixture}: {message}");
            assert!(!message.contains('\n') && !message.contains("backtrace"), "one line, no backtrace: {message}");
            // The same session, and a fresh instance, carry on.
            c.batch_execute(&format!("INSERT INTO {t} (k) VALUES (3)")).await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(loop_task.await.unwrap() > 0);
        let rows: i64 = direct(&fleet.s0)
            .await
            .query_one(&format!("SELECT count(*) FROM {t} WHERE k = 13"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "{fixture}: the failed statements wrote nothing");
    }
}

#[tokio::test]
async fn a_plugin_that_leaks_is_replaced_before_it_fails_a_statement() {
    // 1 MiB leaked per call under a 16 MiB cap: an instance kept for good
    // would fail about the 16th statement.
    let fleet = Fleet::shared();
    let t = table("leaky");
    create(fleet, &t).await;
    let sc = Sidecar::start(
        &config(fleet, &t, &fixture_plugin("leak"), None)
            .replace("[plugins]\n", "[plugins]\nremembered_decisions = 0\n"),
    );
    let c = sc.connect().await;
    for k in 0..100 {
        c.batch_execute(&format!("INSERT INTO {t} (k) VALUES ({k})")).await.unwrap();
    }
    let metrics = sc.admin_get("/metrics").1;
    let retired = metric_total(&metrics, "shardcar_plugin_instances_retired_total");
    // Retired once past 8 MiB: not so late that a call failed (every 16
    // calls at least), nor after every few calls.
    assert!((100.0 / 16.0..=100.0 / 4.0).contains(&retired), "{retired}");
}

#[test]
fn a_plugin_that_cannot_start_stops_shardcar_with_the_reason() {
    let fleet = Fleet::shared();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let cache = tempfile::tempdir().unwrap();
    let text = config(fleet, "anything", &fixture_plugin("bad-init"), Some(cache.path()))
        .replace("{PORT}", "1")
        .replace("{ADMIN}", "2");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcar"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policies[0] (guarded)") && err.contains("init failed: this version cannot start"), "{err}");
}

/// Replaces a file in one step, as a deployment should.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("partial");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test]
async fn hot_reload_under_load_and_refusing_broken_versions() {
    let fleet = Fleet::shared();
    let t = table("reloaded");
    create(fleet, &t).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("policy.wasm");
    install(&fixture_plugin("to-first"), &plugin);
    // Rows move with each swap here: that gate has a test of its own.
    let config = config(fleet, &t, &plugin, Some(&dir.path().join("cache")))
        .replace("[plugins]\n", "[plugins]\nmoving_rows = \"allow\"\n");
    let sc = Sidecar::start(&config);
    let version = || {
        let (_, body) = sc.admin_get("/api/v1/plugins");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (v["plugins"][0]["version"].as_str().unwrap_or("").to_string(), v["plugins"][0]["last_error"].clone())
    };
    assert_eq!(version().0, "1.0.0");

    // A client loop keeps writing through every change below.
    let writer = sc.connect().await;
    let (stop, failures, written) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, f, w, tt) = (stop.clone(), failures.clone(), written.clone(), t.clone());
    let loop_task = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            match writer.batch_execute(&format!("INSERT INTO {tt} (k) VALUES (7)")).await {
                Ok(()) => w.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("write failed: {e:?}");
                    f.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    });
    let on = async |shard: &shardcar::localpg::Cluster| -> i64 {
        direct(shard).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0)
    };
    assert!(eventually(Duration::from_secs(10), async || on(&fleet.s0).await > 20).await);

    install(&fixture_plugin("to-last"), &plugin);
    assert!(eventually(Duration::from_secs(20), async || version().0 == "2.0.0").await, "v2 is swapped in");
    let s1_before = on(&fleet.s1).await;
    assert!(
        eventually(Duration::from_secs(10), async || on(&fleet.s1).await > s1_before + 20).await,
        "rows now go to s1"
    );

    // A version that cannot start is refused; v2 keeps serving.
    install(&fixture_plugin("bad-init"), &plugin);
    assert!(eventually(Duration::from_secs(10), async || version().1.to_string().contains("init failed")).await);
    // So is a file that is not a component.
    std::fs::write(dir.path().join("junk"), b"not wasm at all").unwrap();
    install(&dir.path().join("junk"), &plugin);
    assert!(
        eventually(Duration::from_secs(10), async || version().1.to_string().contains("not a valid component")).await
    );
    // And a version that fails its own test cases.
    std::fs::write(
        plugin.with_extension("tests.toml"),
        format!("[[case]]\nsql = \"INSERT INTO {t} (k) VALUES (1)\"\nshard = \"s1\"\n"),
    )
    .unwrap();
    install(&fixture_plugin("to-first"), &plugin);
    assert!(eventually(Duration::from_secs(10), async || version().1.to_string().contains("expected s1")).await);
    assert!(version().1.to_string().contains("@1.0.0 ("), "the refused build is named: {}", version().1);
    assert_eq!(version().0, "2.0.0");
    let (s0_now, s1_now) = (on(&fleet.s0).await, on(&fleet.s1).await);
    assert!(eventually(Duration::from_secs(10), async || on(&fleet.s1).await > s1_now + 20).await);
    assert_eq!(on(&fleet.s0).await, s0_now, "nothing went to s0 after v2 took over");

    stop.store(true, Ordering::Relaxed);
    loop_task.await.unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no statement failed through all the swaps");
    assert!(written.load(Ordering::Relaxed) > 60);
}

#[tokio::test]
async fn a_restart_after_a_refused_version_serves_the_last_good_one() {
    let fleet = Fleet::shared();
    let t = table("lastgood");
    create(fleet, &t).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("policy.wasm");
    // The last good versions live in this test's own cache dir.
    let cache = dir.path().join("cache");
    let config = config(fleet, &t, &plugin, Some(&cache));
    let plugins = |sc: &Sidecar| -> (String, String) {
        let v: serde_json::Value = serde_json::from_str(&sc.admin_get("/api/v1/plugins").1).unwrap();
        (v["plugins"][0]["version"].as_str().unwrap_or("").into(), v["plugins"][0]["last_error"].to_string())
    };

    install(&fixture_plugin("to-first"), &plugin);
    let sc = Sidecar::start(&config);
    install(&fixture_plugin("to-last"), &plugin);
    assert!(eventually(Duration::from_secs(20), async || plugins(&sc).0 == "2.0.0").await, "v2 swapped in");
    // v1 again, with tests it fails: refused at the reload, and on disk.
    std::fs::write(
        plugin.with_extension("tests.toml"),
        format!("[[case]]\nsql = \"INSERT INTO {t} (k) VALUES (1)\"\nshard = \"s1\"\n"),
    )
    .unwrap();
    install(&fixture_plugin("to-first"), &plugin);
    assert!(eventually(Duration::from_secs(10), async || plugins(&sc).1.contains("expected s1")).await);
    drop(sc);

    // The pod restarts: v2 serves, the refusal is reported.
    let sc = Sidecar::start(&config);
    let (version, error) = plugins(&sc);
    assert_eq!(version, "2.0.0", "{error}");
    assert!(error.contains("expected s1") && error.contains("serving the last version that passed"), "{error}");
    let c = sc.connect().await;
    c.batch_execute(&format!("INSERT INTO {t} (k) VALUES (42)")).await.unwrap();
    let on_s1: i64 =
        direct(&fleet.s1).await.query_one(&format!("SELECT count(*) FROM {t} WHERE k = 42"), &[]).await.unwrap().get(0);
    assert_eq!(on_s1, 1, "routed by v2 (everything to the last shard)");
    drop(sc);

    // A file that does not even load: the same.
    std::fs::write(&plugin, b"not wasm").unwrap();
    let sc = Sidecar::start(&config);
    let (version, error) = plugins(&sc);
    assert_eq!(version, "2.0.0");
    assert!(error.contains("does not load"), "{error}");
    drop(sc);

    // `shardcar check` still fails on the file as it is.
    let path = dir.path().join("check.toml");
    std::fs::write(&path, config.replace("{PORT}", "1").replace("{ADMIN}", "2")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcar"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "check reports the file on disk");
}

#[tokio::test]
async fn a_version_that_traps_under_traffic_is_rolled_back_and_not_served_again() {
    let fleet = Fleet::shared();
    let t = table("rollback");
    create(fleet, &t).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("policy.wasm");
    // The keys-that-move check would refuse this version already (it cannot
    // route key 13's rows): it is let through to show the probation behind it.
    let config = config(fleet, &t, &plugin, Some(&dir.path().join("cache")))
        .replace("[plugins]\n", "[plugins]\nprobation_s = 120\nrollback_min_calls = 100\nmoving_rows = \"allow\"\n");
    let plugins = |sc: &Sidecar| -> (String, String) {
        let v: serde_json::Value = serde_json::from_str(&sc.admin_get("/api/v1/plugins").1).unwrap();
        (v["plugins"][0]["version"].as_str().unwrap_or("").into(), v["plugins"][0]["last_error"].to_string())
    };
    install(&fixture_plugin("to-first"), &plugin);
    let sc = Sidecar::start(&config);

    // Keys 1..=100 in turn: the new version traps on 13, 1% of them.
    let writer = sc.connect().await;
    let (stop, failed, written) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (s, f, w, tt) = (stop.clone(), failed.clone(), written.clone(), t.clone());
    let traffic = tokio::spawn(async move {
        let mut k = 0;
        while !s.load(Ordering::Relaxed) {
            k = k % 100 + 1;
            match writer.batch_execute(&format!("INSERT INTO {tt} (k) VALUES ({k})")).await {
                Ok(()) => w.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    assert_eq!(sqlstate(&e), "XX000", "{e:?}");
                    f.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    });
    install(&fixture_plugin("trap"), &plugin);
    assert!(
        eventually(Duration::from_secs(30), async || plugins(&sc).1.contains("rolled back")).await,
        "the trapping version is rolled back: {:?}",
        plugins(&sc)
    );
    let (version, why) = plugins(&sc);
    assert_eq!(version, "1.0.0", "{why}");
    assert!(why.contains("0.1.0") && why.contains("failed"), "{why}");
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let (failed, written) = (failed.load(Ordering::Relaxed), written.load(Ordering::Relaxed));
    println!("rolled back after {failed} failed statement(s), {written} written");
    assert!(failed >= 1, "the version served and failed before it was rolled back");
    // Every failed statement wrote nothing, anywhere; the others went to s0.
    let count = async |shard: &shardcar::localpg::Cluster| -> i64 {
        direct(shard).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0)
    };
    assert_eq!((count(&fleet.s0).await, count(&fleet.s1).await), (written as i64, 0));
    // The errors clients got are counted.
    let (_, metrics) = sc.admin_get("/metrics");
    assert!(metrics.lines().any(|l| l.starts_with("shardcar_client_errors_total") && l.contains("sqlstate=\"XX000\"")));
    drop(sc);

    // A restart serves the version that was rolled back to, not the file on disk.
    let sc = Sidecar::start(&config);
    let (version, why) = plugins(&sc);
    assert_eq!(version, "1.0.0", "{why}");
    assert!(why.contains("was rolled back"), "{why}");
}

#[tokio::test]
async fn a_version_that_would_strand_rows_is_refused_until_the_operator_allows_it() {
    let fleet = Fleet::shared();
    let t = table("moves");
    create(fleet, &t).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("policy.wasm");
    let config = config(fleet, &t, &plugin, Some(&dir.path().join("cache")));
    install(&fixture_plugin("to-first"), &plugin);
    let sc = Sidecar::start(&config);
    let status = |sc: &Sidecar| sc.admin_json::<shardcar_api::Plugins>("/api/v1/plugins").plugins.remove(0);
    let c = sc.connect().await;
    for k in 1..=30 {
        c.batch_execute(&format!("INSERT INTO {t} (k) VALUES ({k}); INSERT INTO {t} (k) VALUES ({k})")).await.unwrap();
    }
    let on_s0: i64 = direct(&fleet.s0).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(on_s0, 60);
    let hot = async || {
        !sc.admin_json::<shardcar_api::HotKeys>(&format!("/api/v1/hotkeys?table={t}")).lifetime.keys.is_empty()
    };
    assert!(eventually(Duration::from_secs(10), hot).await, "the keys are counted as hot keys");

    // Everything to the last shard: every row on s0 would be looked for on s1.
    install(&fixture_plugin("to-last"), &plugin);
    assert!(
        eventually(Duration::from_secs(20), async || status(&sc).last_error.is_some_and(|e| e.contains("strand")))
            .await
    );
    let now = status(&sc);
    let report = now.last_moves.clone().expect("a report");
    println!("{}", now.last_error.clone().unwrap_or_default());
    assert_eq!(now.version, "1.0.0", "the serving version stays");
    assert_eq!((report.moved_rows, report.moved_keys, report.rows_sampled), (on_s0 as u64, 30, on_s0 as u64));
    assert!(report.complete && report.verdict == "refused", "{report:?}");
    assert!(report.examples.iter().any(|e| e.contains("s0 → s1 (2 row(s))")), "{report:?}");
    assert!(report.hot_keys_checked > 0, "the hot keys are tried too: {report:?}");
    assert!(now.last_error.unwrap().contains(&format!("allow-moves?digest={}", report.digest)));
    c.batch_execute(&format!("INSERT INTO {t} (k) VALUES (99)")).await.unwrap();
    let on_s1: i64 = direct(&fleet.s1).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(on_s1, 0, "still routed by the serving version");

    // A restart does not let it in by the back door.
    drop(c);
    drop(sc);
    let sc = Sidecar::start(&config);
    let now = status(&sc);
    assert_eq!(now.version, "1.0.0", "{:?}", now.last_error);
    assert!(now.last_error.unwrap().contains("strand"));

    // The operator allows this very build: it goes live.
    let (code, _, body) =
        sc.admin_request("POST", &format!("/api/v1/plugins/guarded/allow-moves?digest={}", report.digest), &[]);
    assert_eq!(code, 202, "{body}");
    assert!(eventually(Duration::from_secs(20), async || status(&sc).version == "2.0.0").await, "{:?}", status(&sc));
    assert_eq!(status(&sc).last_moves.unwrap().verdict, "allowed");
    let (code, _, _) = sc.admin_request("POST", "/api/v1/plugins/nope/allow-moves?digest=x", &[]);
    assert_eq!(code, 404);
}
