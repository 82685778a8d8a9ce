//! README command 1's `shardcar demo`: shards, schema, sidecar, cleanup.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::connect;

#[tokio::test]
async fn demo_serves_the_sample_schema_and_cleans_up_on_ctrl_c() {
    let port = shardcar::localpg::free_port().unwrap();
    let admin = shardcar::localpg::free_port().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcar"))
        .args(["demo", "--port", &port.to_string(), "--admin-port", &admin.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("Ctrl-C") {
                break;
            }
        }
        text
    });
    let banner = tokio::time::timeout(Duration::from_secs(120), banner).await.expect("demo starts").unwrap();
    assert!(banner.contains(&format!("psql -h 127.0.0.1 -p {port} -U app app")), "{banner}");
    let config: PathBuf = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("config").map(|p| PathBuf::from(p.trim())))
        .expect("the banner names the config file");
    let workspace = config.parent().unwrap().to_path_buf();
    assert!(config.exists());

    let c = connect(&format!("host=127.0.0.1 port={port} user=app password=app dbname=app")).await.unwrap();
    let count = async |sql: &str| -> i64 { c.query_one(sql, &[]).await.unwrap().get(0) };
    assert_eq!(count("SELECT count(*) FROM customers").await, 3);
    assert_eq!(count("/* shardcar: shard=s1 */ SELECT count(*) FROM customers").await, 3);
    assert_eq!(count("/* shardcar: shard=s1 */ SELECT min(id) FROM customers").await, 4);
    drop(c);

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!workspace.exists(), "the demo's data is removed: {}", workspace.display());
}
