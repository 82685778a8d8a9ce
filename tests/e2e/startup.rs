//! Startup details and what passes through unchanged.

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Fleet, Sidecar, direct, logged_in, next_message, run_tool, table};

#[tokio::test]
async fn ssl_and_gss_requests_are_declined_with_n() {
    let sc = Sidecar::start(&Fleet::shared().config(2));
    for code in [80877103i32, 80877104] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sc.port)).await.unwrap();
        let mut req = Vec::new();
        req.extend_from_slice(&8i32.to_be_bytes());
        req.extend_from_slice(&code.to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        // The client may go on without encryption.
        let mut buf = BytesMut::new();
        frontend::startup_message([("user", "local"), ("database", "app")], &mut buf).unwrap();
        s.write_all(&buf).await.unwrap();
        let mut rbuf = BytesMut::new();
        let mut key = false;
        loop {
            match next_message(&mut s, &mut rbuf).await.expect("login completes") {
                Message::BackendKeyData(_) => key = true,
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        assert!(key, "a cancel key is handed out");
    }
}

#[tokio::test]
async fn parameter_status_notices_and_errors_pass_through() {
    let sc = Sidecar::start(&Fleet::shared().config(2));
    let (mut s, mut rbuf) = logged_in(sc.port).await;
    let mut q = BytesMut::new();
    frontend::query("SET DateStyle = 'German'", &mut q).unwrap();
    frontend::query("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$; SELECT 1/0", &mut q).unwrap();
    s.write_all(&q).await.unwrap();
    let mut seen = Vec::new();
    while seen.iter().filter(|m: &&String| m.starts_with('Z')).count() < 2 {
        let m = next_message(&mut s, &mut rbuf).await.unwrap();
        match m {
            Message::ParameterStatus(p) => seen.push(format!("S {}={}", p.name().unwrap(), p.value().unwrap())),
            Message::NoticeResponse(n) => {
                use fallible_iterator::FallibleIterator;
                let msg = n.fields().find(|f| Ok(f.type_() == b'M')).unwrap().unwrap();
                seen.push(format!("N {}", String::from_utf8_lossy(msg.value_bytes())));
            }
            Message::ErrorResponse(e) => {
                use fallible_iterator::FallibleIterator;
                let code = e.fields().find(|f| Ok(f.type_() == b'C')).unwrap().unwrap();
                seen.push(format!("E {}", String::from_utf8_lossy(code.value_bytes())));
            }
            Message::CommandComplete(c) => seen.push(format!("C {}", c.tag().unwrap())),
            Message::ReadyForQuery(r) => seen.push(format!("Z {}", r.status() as char)),
            _ => {}
        }
    }
    // Postgres reports changed parameters just before ReadyForQuery.
    assert_eq!(seen, ["C SET", "S DateStyle=German, DMY", "Z I", "N hello 42", "C DO", "E 22012", "Z I"]);
}

#[tokio::test]
async fn psql_sees_notices_and_shardcar_variables() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let t = table("viapsql");
    direct(&fleet.s1).await.batch_execute(&format!("CREATE TABLE {t} (v text)")).await.unwrap();
    let script = format!(
        "SET shardcar.shard TO s1;
SHOW shardcar.shard;
INSERT INTO {t} VALUES ('from psql');
DO $$ BEGIN RAISE NOTICE 'rows: %', (SELECT count(*) FROM {t}); END $$;
RESET shardcar.shard;
SHOW shardcar.shard;
"
    );
    let (ok, out) = run_tool(&sc, "psql", &["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"], Some(&script));
    assert!(ok, "{out}");
    // stdout: the two SHOWs; stderr (after it): the notice.
    assert!(out.starts_with("s1\ns0\n"), "{out}");
    assert!(out.contains("NOTICE:  rows: 1"), "{out}");
}
