//! Cancel requests reach the server running the client's statement.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::harness::{Fleet, Sidecar, sqlstate};

#[tokio::test]
async fn cancel_stops_the_running_statement() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let c = sc.connect().await;
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let err = c.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    canceller.await.unwrap().unwrap();
    assert_eq!(sqlstate(&err), "57014", "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "cancelled well before the sleep ended");
    // The session and its next statement are unaffected.
    assert_eq!(c.query_one("SELECT 42", &[]).await.unwrap().get::<_, i32>(0), 42);
}

#[tokio::test]
async fn a_wrong_cancel_key_cancels_nothing() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let victim = sc.connect().await;
    // A cancel request with a made-up key, sent by hand.
    let raw = async {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sc.port)).await.unwrap();
        let mut msg = Vec::new();
        msg.extend_from_slice(&16i32.to_be_bytes());
        msg.extend_from_slice(&80877102i32.to_be_bytes());
        msg.extend_from_slice(&1234i32.to_be_bytes());
        msg.extend_from_slice(&5678i32.to_be_bytes());
        s.write_all(&msg).await.unwrap();
    };
    let (res, ()) = tokio::join!(victim.batch_execute("SELECT pg_sleep(1)"), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        raw.await
    });
    res.unwrap();
}
