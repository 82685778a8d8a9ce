//! Bad client input, message by message, answered as Postgres answers it:
//! content that cannot be read is an ERROR for that message (the session
//! goes on), a frame that cannot be trusted is FATAL (the connection
//! closes); and the limits on logins and message sizes.

use crate::harness::{Client, Setup, error, setup, setup_with, tags};

/// The session still answers queries.
async fn still_serves(c: &mut Client) {
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

/// A startup packet as user `user`.
fn startup(user: &str) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message([("user", user), ("database", "db")], &mut buf).unwrap();
    buf.to_vec()
}

#[tokio::test]
async fn unreadable_content_is_an_error_for_that_message_alone() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    // Simple query and FunctionCall: an ERROR, then ReadyForQuery.
    assert_eq!(tags(&c.message(b'Q', b"SELECT '\xe9'\0").run().await), "E:22021 Z:I", "Query, not UTF-8");
    for (what, body) in [
        ("Query with bytes after its text", &b"SELECT 1\0junk"[..]),
        ("Query with two texts", b"SELECT 1\0SELECT 2\0"),
        ("Query without its terminator", b"SELECT 1"),
        ("Query with no body", b""),
    ] {
        assert_eq!(tags(&c.message(b'Q', body).run().await), "E:08P01 Z:I", "{what}");
    }
    assert_eq!(tags(&c.message(b'F', b"\0\0\x04\x00\0\0\0\0\0\0").run().await), "E:0A000 Z:I", "FunctionCall");
    still_serves(&mut c).await;
    // Extended protocol: an ERROR, the rest skipped to Sync.
    let cases: [(&str, u8, &[u8], &str); 14] = [
        ("Parse, not UTF-8", b'P', b"\0SELECT '\xe9'\0\0\0", "22021"),
        ("Parse whose parameter count lies", b'P', b"\0SELECT 1\0\x00\x09", "08P01"),
        ("Parse with bytes after its types", b'P', b"\0SELECT $1\0\x00\x01\0\0\0\x17junk", "08P01"),
        ("Parse of a name not in UTF-8", b'P', b"\xe9\0SELECT 1\0\0\0", "22021"),
        ("Bind whose fields run past its end", b'B', b"\0s1\0\0", "08P01"),
        ("Execute with bytes after its end", b'E', b"\0\0\0\0\0junk", "08P01"),
        ("Execute cut short", b'E', b"\0\0\0", "08P01"),
        ("Execute of a portal named in bytes not UTF-8", b'E', b"\xe9\0\0\0\0\0", "22021"),
        ("Describe of neither statement nor portal", b'D', b"Xname\0", "08P01"),
        ("Close of neither statement nor portal", b'C', b"Xname\0", "08P01"),
        ("Describe without its name's terminator", b'D', b"Pname", "08P01"),
        ("Describe with bytes after its name", b'D', b"Sname\0junk", "08P01"),
        ("Describe of a portal named in bytes not UTF-8", b'D', b"P\xe9\0", "22021"),
        ("Close with no body", b'C', b"", "08P01"),
    ];
    for (what, tag, body, code) in cases {
        c.message(tag, body).parse("", "SELECT 1").bind("", "", &[]).execute("", 0).sync();
        assert_eq!(tags(&c.run().await), format!("E:{code} Z:I"), "{what}: its ERROR, the rest skipped");
        still_serves(&mut c).await;
    }
    // Copy messages outside COPY are ignored, as Postgres does.
    c.copy_data("stray").copy_done().send().await;
    still_serves(&mut c).await;
}

#[tokio::test]
async fn an_unreadable_message_fails_the_transaction_it_is_in() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    assert_eq!(tags(&c.simple("/* shardcar: shard=s1 */ INSERT INTO x VALUES (1)").await), "C Z:T");
    assert_eq!(tags(&c.message(b'B', b"\0s1\0\0").sync().run().await), "E:08P01 Z:E");
    assert_eq!(tags(&c.simple("SELECT 1").await), "E:25P02 Z:E");
    assert_eq!(tags(&c.simple("ROLLBACK").await), "C Z:I");
    assert_eq!(s.s1.statements().last().map(String::as_str), Some("ROLLBACK"), "nothing of it committed");
}

#[tokio::test]
async fn another_message_during_copy_fails_the_copy_and_the_session_goes_on() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.query("/* shardcar: shard=s1 */ COPY t FROM STDIN").send().await;
    assert_eq!(tags(&c.take(1).await), "G");
    let got = c.copy_data("1\ta\n").query("SELECT 1").run().await;
    assert!(tags(&got).starts_with('E') && tags(&got).ends_with("Z:I"), "{}", tags(&got));
    still_serves(&mut c).await;
}

#[tokio::test]
async fn a_frame_that_cannot_be_trusted_is_fatal() {
    let s = setup("").await;
    let cases: [(&str, &[u8]); 4] = [
        ("unknown message type", b"\xde\0\0\0\x04"),
        ("length below 4", b"Q\0\0\0\x03"),
        ("negative length", b"Q\xff\xff\xff\xf8"),
        ("length beyond the limit for its type", b"S\x40\0\0\0"),
    ];
    for (what, bytes) in cases {
        let mut c = Client::connect(&s).await;
        c.bytes(bytes).send().await;
        assert_eq!(tags(&c.until_closed().await), "E:08P01", "{what}: FATAL, then closed");
    }
    still_serves(&mut Client::connect(&s).await).await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_or_the_budget_is_refused_before_it_is_read() {
    let s = setup_with("max_message_bytes = 1048576\nclient_buffer_budget_bytes = 1048576", "", "").await;
    let mut big = Client::connect(&s).await;
    big.bytes(b"Q\x00\x20\x00\x00SELECT").send().await;
    let got = big.until_closed().await;
    assert_eq!(tags(&got), "E:54000", "2 MiB declared, 1 MiB allowed");
    // Two clients each declaring 800 KiB: the budget holds one.
    let body = format!("SELECT 1 /*{}*/\0", " ".repeat(800 * 1024));
    let header = |c: &mut Client| {
        c.bytes(b"Q").bytes(&(body.len() as i32 + 4).to_be_bytes()).bytes(&body.as_bytes()[..10]);
    };
    let mut first = Client::connect(&s).await;
    header(&mut first);
    first.send().await;
    still_serves(&mut Client::connect(&s).await).await;
    let mut second = Client::connect(&s).await;
    header(&mut second);
    second.send().await;
    let got = second.until_closed().await;
    assert_eq!(tags(&got), "E:53200", "the budget is taken by the first");
    // The first's message completes, and the budget is free again.
    first.bytes(&body.as_bytes()[10..]);
    assert_eq!(tags(&first.run().await), "T D C Z:I");
    let mut third = Client::connect(&s).await;
    header(&mut third);
    third.bytes(&body.as_bytes()[10..]);
    assert_eq!(tags(&third.run().await), "T D C Z:I");
}

#[tokio::test]
async fn named_statements_are_bounded_by_bytes_per_session() {
    let s = setup_with("max_prepared_bytes_per_client = 65536", "", "").await;
    let mut c = Client::connect(&s).await;
    // Each keeps its text twice (text and Parse): about 40 KiB.
    let sql = format!("SELECT 1 /*{}*/", " ".repeat(20 * 1024));
    assert_eq!(tags(&c.parse("a", &sql).sync().run().await), "1 Z:I");
    assert_eq!(tags(&c.parse("b", &sql).bind("", "b", &[]).execute("", 0).sync().run().await), "E:54000 Z:I");
    // The unnamed statement is not kept: it is not counted.
    assert_eq!(tags(&c.parse("", &sql).bind("", "", &[]).execute("", 0).sync().run().await), "1 2 D C Z:I");
    // Closing one makes room; the session went on throughout.
    assert_eq!(tags(&c.close(b'S', "a").parse("b", &sql).sync().run().await), "3 1 Z:I");
    still_serves(&mut c).await;
}

#[tokio::test]
async fn open_portals_share_the_bytes_per_session() {
    // Named portals live until the transaction ends: without a bound, one
    // session could open them without end.
    let s = setup_with("max_prepared_bytes_per_client = 65536", "", "").await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    let param = "x".repeat(4096);
    c.parse("s", "SELECT $1::text");
    for i in 0..20 {
        c.bind(&format!("p{i}"), "s", &[&param]);
    }
    let got = c.sync().run().await;
    let bound = got.iter().filter(|m| m.tag == b'2').count();
    assert!((12..16).contains(&bound), "about 64 KiB of 4 KiB portals: {}", tags(&got));
    assert_eq!(error(&got).code(), "54000");
    assert!(error(&got).field(b'M').contains("open portals"), "{}", error(&got).field(b'M'));
    // The transaction ends, and its portals with it: there is room again.
    c.simple("ROLLBACK").await;
    c.simple("BEGIN").await;
    assert_eq!(tags(&c.bind("q", "s", &[&param]).sync().run().await), "2 Z:T");
    c.simple("ROLLBACK").await;
    still_serves(&mut c).await;
}

/// `n` connections that send half a startup packet and stop.
async fn half_open(s: &Setup, n: usize) -> Vec<Client> {
    let mut stuck = Vec::new();
    for _ in 0..n {
        let mut c = Client::raw(s).await;
        c.bytes(&startup("u")[..6]).send().await;
        stuck.push(c);
    }
    stuck
}

#[tokio::test]
async fn half_open_logins_time_out_and_never_hold_a_clients_slot() {
    let s = setup_with("login_timeout_ms = 1500\nmax_client_connections = 2", "", "").await;
    let mut stuck = half_open(&s, 5).await;
    let mut a = Client::connect(&s).await;
    let b = Client::connect(&s).await;
    still_serves(&mut a).await;
    // Both slots are taken by logged-in clients now: the third is refused after it logged in.
    let mut c = Client::raw(&s).await;
    c.bytes(&startup("u")).send().await;
    let got = c.until_closed().await;
    assert!(tags(&got).ends_with("E:53300"), "{}", tags(&got));
    drop(b);
    for half in stuck.iter_mut() {
        assert_eq!(tags(&half.until_closed().await), "E:57014", "cut off at the login timeout");
    }
    let text = s.shared.telemetry.metrics.render();
    let by = |limit: &str| {
        let line = format!("shardcar_client_limit_hits_total{{limit=\"{limit}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    assert_eq!((by("login_timeout"), by("client_slots")), (5.0, 1.0));
}

#[tokio::test]
async fn pending_logins_beyond_their_limit_are_turned_away_at_once() {
    let s = setup_with("max_pending_logins = 3", "", "").await;
    let _stuck = half_open(&s, 3).await;
    let mut late = Client::raw(&s).await;
    late.bytes(&startup("u")[..6]).send().await;
    assert_eq!(tags(&late.until_closed().await), "E:53300");
}

#[tokio::test]
async fn a_malformed_sasl_message_is_a_protocol_error_not_a_panic() {
    let s = setup("").await;
    let mut c = Client::raw(&s).await;
    c.bytes(&startup("p")).send().await;
    assert_eq!(tags(&c.take(1).await), "R", "asked for SCRAM");
    // Mechanism, then a data length far beyond the message.
    c.message(b'p', b"SCRAM-SHA-256\0\x00\x00\x03\xe8ab").send().await;
    assert_eq!(tags(&c.until_closed().await), "E:08P01");
    still_serves(&mut Client::connect(&s).await).await;
}

#[tokio::test]
async fn an_unknown_user_looks_like_a_wrong_password() {
    let s = setup("").await;
    let login = |user: &str, password: &str| {
        format!("host=127.0.0.1 port={} user={user} password={password} dbname=db", s.port)
    };
    let mut answers = Vec::new();
    for (user, password) in [("p", "wrong"), ("nobody", "wrong")] {
        let e = tokio_postgres::connect(&login(user, password), tokio_postgres::NoTls).await.err().expect("refused");
        let db = e.as_db_error().expect("an ErrorResponse");
        answers.push((db.code().code().to_string(), db.message().replace(&format!("\"{user}\""), "\"USER\"")));
    }
    assert_eq!(answers[0], ("28P01".to_string(), "password authentication failed for user \"USER\"".to_string()));
    assert_eq!(answers[0], answers[1], "the same answer for both");
    assert!(tokio_postgres::connect(&login("p", "pw"), tokio_postgres::NoTls).await.is_ok());
}

#[tokio::test]
async fn trust_counts_an_ipv4_client_of_a_dual_stack_listener_as_local() {
    let s = setup("").await;
    let Ok(listener) = tokio::net::TcpListener::bind("[::]:0").await else {
        panic!("this machine cannot listen on [::]");
    };
    let port = listener.local_addr().unwrap().port();
    let shared = s.shared.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(shardcar::frontend::serve(shared.clone(), stream));
        }
    });
    let dsn = format!("host=127.0.0.1 port={port} user=u dbname=db");
    let (client, connection) =
        tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.expect("trust from 127.0.0.1");
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();
}

/// Found by fuzzing (`session`): a catalog answer of an unexpected type
/// (here the scripted shard's text row where Postgres sends a count)
/// panicked the session; it is an error for the statement.
#[tokio::test]
async fn an_unexpected_catalog_answer_is_an_error_not_a_panic() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("COPY t FROM STDIN").await;
    assert_eq!(tags(&got), "E:XX000 Z:I");
    still_serves(&mut c).await;
}

/// Found by fuzzing (`session`): a client that sent Parse and Bind without
/// a Sync and left kept its session — and a server connection — forever,
/// waiting for replies the server holds until a Sync.
#[tokio::test]
async fn a_client_that_leaves_mid_batch_ends_its_session() {
    let s = setup("").await;
    let connected = || s.shared.telemetry.metrics.clients_connected.get();
    let mut c = Client::connect(&s).await;
    assert_eq!(connected(), 1);
    c.parse("n", "SELECT v FROM t WHERE k = 1").bind("n", "n", &[]).send().await;
    drop(c);
    for _ in 0..100 {
        if connected() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(connected(), 0, "the session ended");
    still_serves(&mut Client::connect(&s).await).await;
}

/// Found by fuzzing (`session`): a client that left while its session
/// waited for replies a server holds until a Sync (an error mid-batch in a
/// transaction, then simple queries queued behind it, no Sync) kept its
/// session and a server connection.
#[tokio::test]
async fn a_client_that_leaves_after_a_copy_out_in_a_transaction_ends_its_session() {
    let s = setup("").await;
    let connected = || s.shared.telemetry.metrics.clients_connected.get();
    let mut c = Client::connect(&s).await;
    c.query("BEGIN").query("COPY t TO STDOUT").execute("n", 2).query("SET shardcar.shard = 's1'");
    c.query("SET shardcar.shard = 's1'").send().await;
    // The client stops writing but reads on, until the session closes.
    c.shutdown_writing().await;
    let _ = c.until_closed().await;
    assert_eq!(connected(), 0, "the session ended");
}

/// Found by fuzzing (`session`): server connections go back to the pool
/// only when idle — never in the middle of a transaction or a batch.
#[tokio::test]
async fn a_client_that_leaves_mid_batch_leaves_no_server_in_a_transaction() {
    for _ in 0..5 {
        let s = setup("two_phase_commit = true").await;
        let mut c = Client::connect(&s).await;
        c.parse("n", "BEGIN; INSERT INTO t (k, v) VALUES (1, 'a'); COMMIT").close(b'S', "");
        c.bind("n", "n", &["3"]).parse("n", "INSERT INTO t (k, v) VALUES ($1, $2)").query("BEGIN").send().await;
        c.shutdown_writing().await;
        let got = c.until_closed().await;
        let mut busy = Vec::new();
        for _ in 0..100 {
            busy = [&s.s0, &s.s1].iter().flat_map(|f| f.busy()).collect();
            if busy.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(busy.is_empty(), "{busy:?} after {}", tags(&got));
    }
}
