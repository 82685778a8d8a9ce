//! TLS from clients: with `[listen] tls_cert` an SSLRequest is answered `S`
//! and the session runs encrypted; `require_tls` turns plain clients away;
//! a renewed certificate is served without a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{Fleet, Sidecar, eventually, run_tool};
use crate::pki::{Ca, write};

/// The fleet's config with TLS for clients from these files.
fn with_tls(fleet: &Fleet, dir: &Path, settings: &str) -> String {
    let admin = "admin = \"127.0.0.1:{ADMIN}\"\n";
    let tls = format!(
        "{admin}tls_cert = \"{}\"\ntls_key = \"{}\"\n{settings}\n",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    );
    fleet.config(2).replacen(admin, &tls, 1)
}

fn install(dir: &Path, ca: &Ca) {
    let issued = ca.server(&["localhost", "127.0.0.1"]);
    write(dir, "server.key", &issued.key);
    write(dir, "server.crt", &issued.cert);
}

/// psql against the sidecar with extra conninfo; (success, output).
fn psql(sc: &Sidecar, conninfo: &str, command: &str) -> (bool, String) {
    run_tool(sc, "psql", &["-X", "-A", "-t", "-c", command, &format!("dbname=app {conninfo}")], None)
}

/// tokio-postgres over rustls, trusting `ca_pem`.
async fn tls_client(sc: &Sidecar, ca_pem: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conninfo = format!("host=localhost port={} user=app password=secret dbname=app sslmode=require", sc.port);
    let (client, conn) =
        tokio_postgres::connect(&conninfo, tokio_postgres_rustls::MakeRustlsConnect::new(config)).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test]
async fn clients_speak_tls_plain_ones_are_refused_when_required_and_renewals_apply() {
    let fleet = Fleet::shared();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("client-side CA");
    install(dir.path(), &ca);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let sc = Sidecar::start(&with_tls(fleet, dir.path(), "require_tls = true\nplain_loopback = false"));

    let (ok, out) = psql(&sc, "sslmode=require", "\\conninfo");
    assert!(ok && out.contains("SSL connection (protocol: TLSv1.3"), "{out}");
    let verify = format!("sslmode=verify-full host=localhost sslrootcert={}", ca_file.display());
    let (ok, out) = psql(&sc, &verify, "SELECT count(*) FROM generate_series(1, 1000)");
    assert!(ok && out.trim() == "1000", "{out}");
    let (ok, out) = psql(&sc, "sslmode=disable", "SELECT 1");
    assert!(!ok && out.contains("accepts only TLS connections"), "{out}");

    // A reply of many TLS records, and the extended protocol, through rustls.
    let client = tls_client(&sc, &ca.pem()).await.unwrap();
    let rows =
        client.query("SELECT g, repeat('x', 100) FROM generate_series(1, $1::int) g", &[&20_000i32]).await.unwrap();
    assert_eq!(rows.len(), 20_000);
    assert_eq!(rows[19_999].get::<_, i32>(0), 20_000);

    // The certificate is renewed by a new CA: new clients get the new one,
    // without a restart, and the session already open carries on.
    let renewed = Ca::new("renewed CA");
    install(dir.path(), &renewed);
    let renewed_file = write(dir.path(), "renewed-ca.pem", &renewed.pem());
    let renewed_verify = format!("sslmode=verify-full host=localhost sslrootcert={}", renewed_file.display());
    let served = eventually(Duration::from_secs(10), async || psql(&sc, &renewed_verify, "SELECT 1").0).await;
    assert!(served, "the renewed certificate is served");
    let (ok, out) = psql(&sc, &verify, "SELECT 1");
    assert!(!ok && out.contains("certificate verify failed"), "{out}");
    assert_eq!(client.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0), 2);
    drop(sc);

    // By default loopback clients may still come in clear.
    let sc = Sidecar::start(&with_tls(fleet, dir.path(), "require_tls = true"));
    let (ok, out) = psql(&sc, "sslmode=disable", "SELECT 1");
    assert!(ok, "{out}");
}
