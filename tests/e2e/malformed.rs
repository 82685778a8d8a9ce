//! Malformed protocol framing closes only the offending connection, with an
//! error, while every other client carries on (content a message cannot be
//! read for is an ERROR that keeps the session: `sidecar/tests/session/malformed.rs`).

use postgres_protocol::message::backend::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Fleet, Sidecar, logged_in, next_message};

/// Sends `bytes` and returns the SQLSTATE of the error that comes back,
/// asserting the connection is closed afterwards.
async fn rejected(port: u16, bytes: &[u8]) -> String {
    let (mut s, mut rbuf) = logged_in(port).await;
    s.write_all(bytes).await.unwrap();
    let mut code = None;
    while let Some(m) = next_message(&mut s, &mut rbuf).await {
        if let Message::ErrorResponse(e) = m {
            use fallible_iterator::FallibleIterator;
            let mut fields = e.fields();
            while let Some(f) = fields.next().unwrap() {
                if f.type_() == b'C' {
                    code = Some(String::from_utf8_lossy(f.value_bytes()).into_owned());
                }
            }
        }
    }
    code.unwrap_or_else(|| "closed without an error".into())
}

fn message(tag: u8, len: i32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[tokio::test]
async fn malformed_messages_close_only_that_connection() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(4));
    let bystander = sc.connect().await;
    let running = tokio::spawn(async move {
        for i in 0..200 {
            let v: i32 = bystander.query_one("SELECT $1::int", &[&i]).await.expect("bystander unaffected").get(0);
            assert_eq!(v, i);
        }
    });

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown message type", b"\xde\xad\xbe\xef\x00\x00\x00\x00".to_vec()),
        ("length below 4", message(b'Q', 3, b"")),
        ("length beyond the limit for its type", message(b'S', 1 << 30, b"")),
        ("negative length", message(b'Q', -8, b"")),
    ];
    for (what, bytes) in cases {
        assert_eq!(rejected(sc.port, &bytes).await, "08P01", "{what}");
    }

    // A garbage startup packet.
    let mut s = TcpStream::connect(("127.0.0.1", sc.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 3, 1, 2, 3, 4]).await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply.first(), Some(&b'E'), "an ErrorResponse before closing");

    // Random bytes after login, many times.
    for _ in 0..50 {
        let len = rand::random_range(1..200usize);
        let junk: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        let (mut s, _) = logged_in(sc.port).await;
        s.write_all(&junk).await.unwrap();
        let _ = s.shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    }

    running.await.unwrap();
    assert_eq!(sc.connect().await.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}
