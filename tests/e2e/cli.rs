//! `shardcar check` and the admin probes.

use std::process::Command;

use crate::harness::{Fleet, Sidecar};

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardcar")).args(["check", "--config"]).arg(&path).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_lists_every_problem_with_its_path() {
    let (ok, out) = check(
        r#"
        [listen]
        addr = "localhost"
        [[users]]
        name = "app"
        [pool]
        size = 0
        [[shards]]
        name = "s0"
        primary = "postgres://127.0.0.1:5432/app"
        [routing]
        default_shard = "s9"
        "#,
    );
    assert!(!ok);
    for expected in ["listen.addr:", "users[0]:", "pool.size:", "shards[0].primary:", "routing.default_shard:"] {
        assert!(out.contains(expected), "missing {expected} in:\n{out}");
    }

    let (ok, out) = check("[pool]\nsise = 3\n[routing]\ndefault_shard = \"s0\"\n");
    assert!(!ok);
    assert!(out.contains("pool.sise") && out.contains("unknown field"), "{out}");

    let fleet_like = Fleet::shared().config(3).replace("{PORT}", "6432").replace("{ADMIN}", "9930");
    let (ok, out) = check(&fleet_like);
    assert!(ok, "{out}");
}

#[test]
fn health_and_readiness() {
    let sc = Sidecar::start(&Fleet::shared().config(2));
    assert_eq!(sc.admin_get("/healthz").0, 200);
    let mut ready = (0, String::new());
    for _ in 0..50 {
        ready = sc.admin_get("/readyz");
        if ready.0 == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(sc.admin_get("/nope").0, 404);
}
