//! Passwords from files, read again when they change, and no secret in
//! what shardcar shows: its log, `shardcar check`, the admin API and
//! metrics, and the spans it exports.

use std::time::Duration;

use crate::harness::{Fleet, Sidecar, eventually};
use crate::traces::Collector;

/// A secret unique to this run, so that finding it anywhere is a leak.
fn secret(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

#[tokio::test]
async fn passwords_from_files_are_reread_and_no_secret_is_shown_anywhere() {
    let fleet = Fleet::shared();
    let dir = tempfile::tempdir().unwrap();
    let (inline_shard, file_shard) = (secret("inline-shard-pw"), secret("file-shard-pw"));
    let (user_pw, rotated_user_pw, token) = (secret("user-pw"), secret("rotated-user-pw"), secret("admin-token"));
    let rotated_shard = secret("rotated-shard-pw");
    let secrets = [&inline_shard, &file_shard, &user_pw, &rotated_user_pw, &token, &rotated_shard];

    // s0 is reached with a password in its URL, s1 with one from a file;
    // both servers insist on SCRAM for that role.
    for (shard, pw) in [(&fleet.s0, &inline_shard), (&fleet.s1, &file_shard)] {
        shard
            .psql(&format!("DROP ROLE IF EXISTS leak_check; CREATE ROLE leak_check LOGIN SUPERUSER PASSWORD '{pw}'"))
            .unwrap();
        shard.prepend_hba("host all leak_check 127.0.0.1/32 scram-sha-256").unwrap();
    }
    let shard_file = crate::pki::write(dir.path(), "shard-password", &format!("{file_shard}\n"));
    let user_file = crate::pki::write(dir.path(), "app-password", &format!("{user_pw}\n"));
    let s0 = format!("postgres://leak_check:{inline_shard}@127.0.0.1:{}/app", fleet.s0.port);
    let s1 = format!("postgres://leak_check@127.0.0.1:{}/app", fleet.s1.port);
    let config = fleet
        .config(2)
        .replace(&format!("\"{}\"", fleet.s0.url()), &format!("\"{s0}\""))
        .replace(
            &format!("primary = \"{}\"", fleet.s1.url()),
            &format!("primary = \"{s1}\"\npassword_file = \"{}\"", shard_file.display()),
        )
        .replace(
            "name = \"app\"\npassword = \"secret\"",
            &format!("name = \"app\"\npassword_file = \"{}\"", user_file.display()),
        )
        .replacen(
            "admin = \"127.0.0.1:{ADMIN}\"\n",
            &format!("admin = \"127.0.0.1:{{ADMIN}}\"\nadmin_token = \"{token}\"\n"),
            1,
        );

    let mut collector = Collector::start().await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()), ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string())];
    let sc = Sidecar::start_with_env(&config, &env);
    let c = sc.connect_as("app", &user_pw).await.expect("the password from the file");
    for shard in ["s0", "s1"] {
        let user: String =
            c.query_one(&format!("/* shardcar: shard={shard} */ SELECT current_user::text"), &[]).await.unwrap().get(0);
        assert_eq!(user, "leak_check");
    }
    assert!(sc.connect_as("app", "wrong").await.is_err());

    // The client's password is rotated: the new one logs in, the old no longer.
    std::fs::write(&user_file, &rotated_user_pw).unwrap();
    assert!(sc.connect_as("app", &rotated_user_pw).await.is_ok());
    assert!(sc.connect_as("app", &user_pw).await.is_err());

    // s1's password is rotated: once its connections are gone, new ones use the file's new content.
    fleet.s1.psql(&format!("ALTER ROLE leak_check PASSWORD '{rotated_shard}'")).unwrap();
    std::fs::write(&shard_file, &rotated_shard).unwrap();
    fleet.s1.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'leak_check'").unwrap();
    let reconnected = eventually(Duration::from_secs(10), async || {
        let c = sc.connect_as("app", &rotated_user_pw).await.unwrap();
        c.simple_query("/* shardcar: shard=s1 */ SELECT 1").await.is_ok()
    })
    .await;
    assert!(reconnected, "s1 is reached with the rotated password:\n{}", sc.log_text());
    // A shard that refuses the login: its error is shown, the password is not.
    fleet.s0.psql("ALTER ROLE leak_check PASSWORD 'changed-behind-its-back'").unwrap();
    fleet.s0.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'leak_check'").unwrap();
    let c = sc.connect_as("app", &rotated_user_pw).await.unwrap();
    let refused = eventually(Duration::from_secs(10), async || {
        let r = c.simple_query("/* shardcar: shard=s0 */ SELECT 1").await;
        r.is_err_and(|e| e.as_db_error().is_some_and(|d| d.message().contains("refused the login")))
    })
    .await;
    assert!(refused);

    // Nothing shows a secret: the admin API (with the token), the metrics,
    // the log, `shardcar check`, the exported spans.
    let auth = format!("Bearer {token}");
    let mut shown = String::new();
    for path in [
        "/api/v1/overview",
        "/api/v1/shards",
        "/api/v1/pools",
        "/api/v1/plugins",
        "/api/v1/errors",
        "/api/v1/events",
        "/metrics",
    ] {
        let (status, _, body) = sc.admin_request("GET", path, &[("Authorization", &auth)]);
        assert_eq!(status, 200, "{path}");
        shown.push_str(&body);
    }
    let spans = collector.until(|spans| spans.len() >= 4).await;
    assert!(!spans.is_empty());
    shown.push_str(&format!("{spans:?}"));
    shown.push_str(&sc.log_text());
    let config_file =
        crate::pki::write(dir.path(), "shardcar.toml", &config.replace("{PORT}", "1").replace("{ADMIN}", "2"));
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_shardcar"))
        .args(["check", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    shown.push_str(&String::from_utf8_lossy(&check.stdout));
    shown.push_str(&String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "{shown}");
    for s in secrets {
        assert!(!shown.contains(s.as_str()), "{s} is shown");
    }
    // The log did tell of the rotation, so its silence on secrets means something.
    assert!(sc.log_text().contains("app-password"), "{}", sc.log_text());

    for shard in [&fleet.s0, &fleet.s1] {
        shard.psql("DROP ROLE leak_check").ok();
    }
}
