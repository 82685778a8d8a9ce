//! Plugins that trap, loop or hog memory fail one statement only; new
//! versions are swapped in under load without a failed statement, and broken
//! ones are refused while the old version keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::harness::{Fleet, Sidecar, direct, eventually, fixture_plugin, sqlstate, table};

fn config(fleet: &Fleet, t: &str, plugin: &Path) -> String {
    fleet
        .config_with(
            4,
            &format!(
                "[[policies]]\nname = \"guarded\"\nplugin = \"{}\"\n\
             [[tables]]\nname = \"{t}\"\nkey = \"k\"\npolicy = \"guarded\"\n",
                plugin.display()
            ),
        )
        .replace("[plugins]\n", "[plugins]\ncall_timeout_ms = 50\nmemory_limit_mb = 16\nreload_interval_ms = 100\n")
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
        ("trap", "XX000", "crashed"),
        ("spin", "57014", "CPU time"),
        ("hog", "53200", "memory"),
        ("noisy", "XX000", "cannot use stdout"),
    ] {
        let t = table(fixture);
        create(fleet, &t).await;
        let sc = Sidecar::start(&config(fleet, &t, &fixture_plugin(fixture)));
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

#[test]
fn a_plugin_that_cannot_start_stops_shardcar_with_the_reason() {
    let fleet = Fleet::shared();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = config(fleet, "anything", &fixture_plugin("bad-init")).replace("{PORT}", "1").replace("{ADMIN}", "2");
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
    let sc = Sidecar::start(&config(fleet, &t, &plugin));
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
    assert_eq!(version().0, "2.0.0");
    let (s0_now, s1_now) = (on(&fleet.s0).await, on(&fleet.s1).await);
    assert!(eventually(Duration::from_secs(10), async || on(&fleet.s1).await > s1_now + 20).await);
    assert_eq!(on(&fleet.s0).await, s0_now, "nothing went to s0 after v2 took over");

    stop.store(true, Ordering::Relaxed);
    loop_task.await.unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no statement failed through all the swaps");
    assert!(written.load(Ordering::Relaxed) > 60);
}
