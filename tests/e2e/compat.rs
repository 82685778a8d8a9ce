//! Real drivers and ORMs, unchanged, against shardcar in front of two
//! shards: psycopg 3 (client-side binding, and server-side prepared
//! statements), the SQLAlchemy 2 ORM, asyncpg, pgjdbc, and node-postgres. Each script
//! connects, runs DDL, inserts routed by key, reads by key, transactions on
//! one shard and across both, prepared and parameterised queries, errors
//! that must surface cleanly, and COPY where the driver has it
//! (tests/compat/). Here: shardcar started with no driver-specific setting,
//! the script run, and the rows checked on the shards themselves. Each runs
//! twice: in clear, and over TLS on both sides (drivers verify shardcar's
//! certificate by name, shardcar the shards').
//!
//! The drivers come from PyPI and npm: tests/run.sh installs psycopg and
//! SQLAlchemy in a virtualenv under target/compat (or `SHARDCAR_COMPAT_DIR`)
//! and node-postgres in tests/compat/node/node_modules.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{Fleet, FleetTls, Sidecar, direct, hashed_tables, table, two_phase};

/// How the script reaches shardcar, and shardcar the shards.
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Plain,
    /// TLS on both sides, verified by name; plain clients are refused.
    Tls,
}

fn compat_dir() -> PathBuf {
    match std::env::var_os("SHARDCAR_COMPAT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/compat"),
    }
}

fn sources() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/compat")
}

/// `tables` sharded by customer_id over s0 and s1, transactions across
/// shards on; nothing else.
fn config(fleet: &Fleet, tables: &[String]) -> String {
    let tables: Vec<(&str, &str)> = tables.iter().map(|t| (t.as_str(), "customer_id")).collect();
    two_phase(&fleet.config_with(8, &hashed_tables(&tables)))
}

/// Runs `program args` against a fresh shardcar; returns the sidecar and
/// the prefix its tables got, after checking the script passed. s1's OID
/// counter is moved on first, so that what the script creates has other
/// OIDs there than on s0, as in any real fleet.
async fn run(program: PathBuf, args: &[&str], tables: &[&str], transport: Transport) -> (Sidecar, String) {
    let fleet = Fleet::shared();
    let prefix = table("compat");
    let shift = format!(
        "CREATE TABLE {prefix}_shift (a int); CREATE TYPE {prefix}_shift_t AS ENUM ('x');
         DROP TABLE {prefix}_shift; DROP TYPE {prefix}_shift_t"
    );
    direct(&fleet.s1).await.batch_execute(&shift).await.unwrap();
    let names: Vec<String> = tables.iter().map(|t| format!("{prefix}_{t}")).collect();
    let config = config(fleet, &names);
    let (config, host, tls) = match transport {
        Transport::Plain => (config, "127.0.0.1", None),
        Transport::Tls => {
            let tls = FleetTls::shared();
            (tls.apply(&config), "localhost", Some(format!("sslmode=verify-full&sslrootcert={}", tls.ca.display())))
        }
    };
    let sc = Sidecar::start(&config);
    let mut dsn = format!("postgresql://app:secret@{host}:{}/app", sc.port);
    let mut jdbc = format!("jdbc:postgresql://{host}:{}/app?user=app&password=secret", sc.port);
    if let Some(tls) = tls {
        dsn = format!("{dsn}?{tls}");
        jdbc = format!("{jdbc}&{tls}");
    }
    let out = Command::new(&program)
        .args(args)
        .env("SHARDCAR_DSN", dsn)
        .env("SHARDCAR_JDBC", jdbc)
        .env("COMPAT_PREFIX", &prefix)
        .output()
        .expect("run the compatibility script");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("all passed"), "{} {args:?} failed:\n{text}", program.display());
    (sc, prefix)
}

/// Rows of `t` on s0 and s1, read directly.
async fn per_shard(t: &str) -> (i64, i64) {
    let fleet = Fleet::shared();
    let count = format!("SELECT count(*) FROM {t}");
    let n0: i64 = direct(&fleet.s0).await.query_one(&count, &[]).await.unwrap().get(0);
    let n1: i64 = direct(&fleet.s1).await.query_one(&count, &[]).await.unwrap().get(0);
    (n0, n1)
}

/// The columns, types, defaults and indexes of `t` on one shard.
async fn schema_on(shard: &shardcar::localpg::Cluster, t: &str) -> String {
    let q = "SELECT string_agg(format('%s %s %s %s', column_name, udt_name, is_nullable, column_default), ', '
                ORDER BY ordinal_position)
                || ' / ' || (SELECT string_agg(indexdef, ', ' ORDER BY indexname) FROM pg_indexes WHERE tablename = $1)
             FROM information_schema.columns WHERE table_name = $1";
    direct(shard).await.query_one(q, &[&t]).await.unwrap().get::<_, Option<String>>(0).unwrap_or_default()
}

/// The script's table holds `rows` rows, spread over both shards, each key
/// is where shardcar routes a query for it, and the table is the same on both.
async fn placed(sc: &Sidecar, t: &str, rows: i64) {
    let fleet = Fleet::shared();
    let schema = schema_on(&fleet.s0, t).await;
    assert!(schema.contains("customer_id"), "{t} on s0: {schema}");
    assert_eq!(schema, schema_on(&fleet.s1, t).await, "{t}: the same schema on every shard");
    let (n0, n1) = per_shard(t).await;
    assert!(n0 > 0 && n1 > 0 && n0 + n1 == rows, "{t}: {n0} + {n1} rows, want {rows} on both shards");
    let c = sc.connect().await;
    for key in [1i64, 2, 3, 17, 30] {
        let sql = format!("SELECT count(*) FROM {t} WHERE customer_id = $1");
        let n: i64 = c.query_one(&sql, &[&key]).await.unwrap().get(0);
        assert_eq!(n, 1, "{t}: customer {key} is on the shard its key routes to");
    }
}

fn python() -> PathBuf {
    let python = compat_dir().join("venv/bin/python");
    assert!(python.exists(), "{} is missing: tests/run.sh installs psycopg and SQLAlchemy there", python.display());
    python
}

/// A driver's test, in clear and over TLS on both sides.
macro_rules! plain_and_tls {
    ($body:ident: $plain:ident, $tls:ident) => {
        #[tokio::test]
        async fn $plain() {
            $body(Transport::Plain).await
        }

        #[tokio::test]
        async fn $tls() {
            $body(Transport::Tls).await
        }
    };
}

plain_and_tls!(psycopg_simple: psycopg_with_client_side_binding, psycopg_with_client_side_binding_over_tls);
plain_and_tls!(psycopg_prepared: psycopg_with_prepared_statements, psycopg_with_prepared_statements_over_tls);
plain_and_tls!(sqlalchemy: sqlalchemy_orm_session, sqlalchemy_orm_session_over_tls);
plain_and_tls!(asyncpg: asyncpg_driver, asyncpg_driver_over_tls);
plain_and_tls!(jdbc: pgjdbc, pgjdbc_over_tls);
plain_and_tls!(node: node_postgres, node_postgres_over_tls);

async fn psycopg_simple(transport: Transport) {
    let script = sources().join("python/compat.py");
    let (sc, prefix) = run(python(), &[script.to_str().unwrap(), "simple"], &["simple"], transport).await;
    placed(&sc, &format!("{prefix}_simple"), 100).await;
}

async fn psycopg_prepared(transport: Transport) {
    let script = sources().join("python/compat.py");
    let (sc, prefix) = run(python(), &[script.to_str().unwrap(), "prepared"], &["prepared"], transport).await;
    placed(&sc, &format!("{prefix}_prepared"), 100).await;
}

async fn sqlalchemy(transport: Transport) {
    let script = sources().join("python/compat.py");
    let (sc, prefix) = run(python(), &[script.to_str().unwrap(), "orm"], &["orm"], transport).await;
    // 30 added one by one, 8 in a bulk insert with RETURNING.
    placed(&sc, &format!("{prefix}_orm"), 38).await;
}

async fn asyncpg(transport: Transport) {
    let script = sources().join("python/asyncpg_compat.py");
    let (sc, prefix) = run(python(), &[script.to_str().unwrap()], &["asyncpg"], transport).await;
    placed(&sc, &format!("{prefix}_asyncpg"), 50).await;
}

/// Debian's pgjdbc (libpostgresql-jdbc-java), installed by deploy/setup.sh.
const PGJDBC: &str = "/usr/share/java/postgresql.jar";

async fn jdbc(transport: Transport) {
    assert!(std::path::Path::new(PGJDBC).exists(), "{PGJDBC} is missing: tests/run.sh installs it");
    let classes = tempfile::tempdir().unwrap();
    let source = sources().join("java/Compat.java");
    let javac = Command::new("javac")
        .args(["-d", classes.path().to_str().unwrap(), "-cp", PGJDBC, source.to_str().unwrap()])
        .status()
        .expect("javac");
    assert!(javac.success());
    let classpath = format!("{}:{PGJDBC}", classes.path().display());
    let (sc, prefix) = run(PathBuf::from("java"), &["-cp", &classpath, "Compat"], &["jdbc"], transport).await;
    placed(&sc, &format!("{prefix}_jdbc"), 40).await;
}

async fn node(transport: Transport) {
    let script = sources().join("node/compat.js");
    let installed = sources().join("node/node_modules/pg");
    assert!(installed.exists(), "{} is missing: tests/run.sh installs node-postgres there", installed.display());
    let (sc, prefix) = run(PathBuf::from("node"), &[script.to_str().unwrap()], &["node"], transport).await;
    placed(&sc, &format!("{prefix}_node"), 40).await;
}
