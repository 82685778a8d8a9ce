//! TLS to shards with libpq's sslmode semantics, on the data path and the
//! control plane: s0 runs with `ssl = on` and a certificate for `localhost`
//! signed by a CA made here; s1 has no TLS at all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Fleet, Sidecar, eventually, first_column, sqlstate};
use crate::pki::{Ca, write};

/// A CA, a second CA that signed nothing here, and a client certificate
/// for role `tls_client`, as files; the server's certificate and key.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    ca_pem: String,
    server: crate::pki::Issued,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("shardcar test CA");
    let client = ca.client("tls_client");
    Pki {
        ca: write(dir.path(), "ca.pem", &ca.pem()),
        other_ca: write(dir.path(), "other-ca.pem", &Ca::new("some other CA").pem()),
        client_cert: write(dir.path(), "client.crt", &client.cert),
        client_key: write(dir.path(), "client.key", &client.key),
        ca_pem: ca.pem(),
        server: ca.server(&["localhost"]),
        _dir: dir,
    }
}

/// s0's URL as `user` at `host`, with `query` (TLS parameters).
fn s0_url(fleet: &Fleet, user: &str, host: &str, query: &str) -> String {
    format!("postgres://{user}@{host}:{}/app?{query}", fleet.s0.port)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The error a statement pinned to `shard` gets through this sidecar, or
/// its first row's first column.
async fn on_shard(sc: &Sidecar, shard: &str, sql: &str) -> Result<String, (String, String)> {
    let c = sc.connect().await;
    match c.simple_query(&format!("/* shardcar: shard={shard} */ {sql}")).await {
        Ok(rows) => Ok(first_column(&rows).join(",")),
        Err(e) => {
            let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
            Err((sqlstate(&e), message))
        }
    }
}

#[tokio::test]
async fn sslmodes_verify_what_libpq_verifies_and_fail_per_shard() {
    let fleet = Fleet::new();
    let pki = pki();
    fleet.s0.enable_tls(&pki.server.cert, &pki.server.key, Some(&pki.ca_pem)).unwrap();
    fleet.s0.psql("CREATE ROLE tls_client LOGIN").unwrap();
    fleet
        .s0
        .prepend_hba("hostssl all tls_client 127.0.0.1/32 cert\nhostnossl all tls_client 127.0.0.1/32 reject")
        .unwrap();
    let with_s0 = |url: &str| fleet.config(2).replace(&fleet.s0.url(), url);
    let ca = format!("sslrootcert={}", path(&pki.ca));

    // verify-full to the name in the certificate: the data path and the
    // control plane are both encrypted, and the pools say with what.
    let sc = Sidecar::start(&with_s0(&s0_url(&fleet, "postgres", "localhost", &format!("sslmode=verify-full&{ca}"))));
    let ssl = on_shard(&sc, "s0", "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await;
    assert_eq!(ssl, Ok("true".to_string()));
    assert_eq!(on_shard(&sc, "s1", "SELECT 1").await, Ok("1".to_string()));
    let s0 = crate::harness::direct(&fleet.s0).await;
    let control_encrypted = eventually(Duration::from_secs(10), async || {
        let row = s0
            .query_one(
                "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.application_name = 'shardcar-control'",
                &[],
            )
            .await
            .unwrap();
        let (encrypted, all): (i64, i64) = (row.get(0), row.get(1));
        all > 0 && encrypted == all
    })
    .await;
    assert!(control_encrypted, "the control plane's connections to s0 are encrypted");
    let pools: shardcar_api::Pools = sc.admin_json("/api/v1/pools");
    let p = pools.pools.iter().find(|p| p.shard == "s0" && p.role == "primary").unwrap();
    assert_eq!(p.sslmode, "verify-full");
    assert!(p.encrypted >= 1 && p.encrypted <= p.size, "{p:?}");
    assert!(p.tls.as_deref().is_some_and(|t| t.starts_with("TLSv1.")), "{p:?}");
    let s1 = pools.pools.iter().find(|p| p.shard == "s1").unwrap();
    assert_eq!((s1.sslmode.as_str(), s1.encrypted, s1.tls.as_deref()), ("disable", 0, None));
    drop(sc);

    // A CA that did not sign the server's certificate: s0 fails, naming
    // itself and the reason; s1 carries on.
    let bad_ca = format!("sslmode=verify-full&sslrootcert={}", path(&pki.other_ca));
    let sc = Sidecar::start(&with_s0(&s0_url(&fleet, "postgres", "localhost", &bad_ca)));
    let (code, message) = on_shard(&sc, "s0", "SELECT 1").await.unwrap_err();
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("s0 primary") && message.contains("UnknownIssuer"), "{message}");
    assert_eq!(on_shard(&sc, "s1", "SELECT 1").await, Ok("1".to_string()));
    drop(sc);

    // The right CA but another name than the certificate's: verify-full
    // refuses, verify-ca (the chain only) accepts.
    let by_ip = |mode: &str| s0_url(&fleet, "postgres", "127.0.0.1", &format!("sslmode={mode}&{ca}"));
    let sc = Sidecar::start(&with_s0(&by_ip("verify-full")));
    let (code, message) = on_shard(&sc, "s0", "SELECT 1").await.unwrap_err();
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("s0 primary") && message.contains("not valid for name \"127.0.0.1\""), "{message}");
    assert_eq!(on_shard(&sc, "s1", "SELECT 1").await, Ok("1".to_string()));
    drop(sc);
    let sc = Sidecar::start(&with_s0(&by_ip("verify-ca")));
    assert_eq!(
        on_shard(&sc, "s0", "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await,
        Ok("true".into())
    );
    drop(sc);

    // require against a server without TLS fails for that shard alone;
    // prefer falls back to plain, with a warning.
    let s1_require = format!("{}?sslmode=require", fleet.s1.url());
    let sc = Sidecar::start(&fleet.config(2).replace(&format!("\"{}\"", fleet.s1.url()), &format!("\"{s1_require}\"")));
    let (code, message) = on_shard(&sc, "s1", "SELECT 1").await.unwrap_err();
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("s1 primary") && message.contains("does not accept TLS"), "{message}");
    assert_eq!(on_shard(&sc, "s0", "SELECT 1").await, Ok("1".to_string()));
    drop(sc);
    let s1_prefer = format!("{}?sslmode=prefer", fleet.s1.url());
    let sc = Sidecar::start(&fleet.config(2).replace(&format!("\"{}\"", fleet.s1.url()), &format!("\"{s1_prefer}\"")));
    assert_eq!(on_shard(&sc, "s1", "SELECT 1").await, Ok("1".to_string()));
    let warned = eventually(Duration::from_secs(10), async || {
        sc.log_text().lines().any(|l| l.contains("WARN") && l.contains("s1 primary") && l.contains("not encrypted"))
    })
    .await;
    assert!(warned, "{}", sc.log_text());
    drop(sc);

    // mTLS: a role that may only log in with a client certificate.
    let mtls = format!("sslmode=verify-full&{ca}&sslcert={}&sslkey={}", path(&pki.client_cert), path(&pki.client_key));
    let sc = Sidecar::start(&with_s0(&s0_url(&fleet, "tls_client", "localhost", &mtls)));
    assert_eq!(on_shard(&sc, "s0", "SELECT current_user::text").await, Ok("tls_client".to_string()));
    drop(sc);
    let sc = Sidecar::start(&with_s0(&s0_url(&fleet, "tls_client", "localhost", &format!("sslmode=verify-full&{ca}"))));
    let (_, message) = on_shard(&sc, "s0", "SELECT 1").await.unwrap_err();
    assert!(message.contains("s0 primary") && message.contains("certificate"), "{message}");
}

#[test]
fn check_reads_the_certificate_files() {
    let fleet = Fleet::shared();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", fleet.s0.url());
    let config = fleet.config(2).replace(&format!("\"{}\"", fleet.s0.url()), &format!("\"{url}\""));
    let file = dir.path().join("shardcar.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardcar")).args(["check", "--config"]).arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("shards[0].primary") && text.contains("/nonexistent/ca.pem"), "{text}");
}
