//! Memory a client can make shardcar hold is bounded by bytes: statements
//! of megabytes are not kept, and a declared message is refused before it
//! is buffered (`listen.max_message_bytes`, `listen.client_buffer_budget_bytes`).
//! The figures are printed; the bound is stated in the README.

use tokio::io::AsyncWriteExt;

use crate::harness::{Fleet, Sidecar, logged_in, next_message};

/// What 4 MiB statements may raise RSS by: the copies one of them needs on
/// its way (client buffer, text, template, server buffer — the allocator
/// keeps their high-water mark), not a copy per statement.
const BOUND_KIB: u64 = 64 * 1024;

#[tokio::test]
async fn memory_stays_bounded_under_huge_statements_and_declared_messages() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(4));
    let c = sc.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
    let start = sc.rss_kib();

    let mut after = Vec::new();
    for round in 0..2 {
        for i in 0..30 {
            let sql = format!("SELECT {round}{i} AS n /* {} */", "x".repeat(4 << 20));
            let rows = c.simple_query(&sql).await.unwrap();
            assert!(!rows.is_empty(), "statement {i} answered");
        }
        after.push(sc.rss_kib());
    }
    let after_statements = after[1];

    // Four clients each declaring a message of almost 1 GiB, and waiting.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (mut s, mut rbuf) = logged_in(sc.port).await;
        let mut head = vec![b'Q'];
        head.extend_from_slice(&(0x3fff_fff0_i32).to_be_bytes());
        head.extend_from_slice(b"SELECT ");
        s.write_all(&head).await.unwrap();
        while let Some(m) = next_message(&mut s, &mut rbuf).await {
            if let postgres_protocol::message::backend::Message::ErrorResponse(e) = m {
                use fallible_iterator::FallibleIterator;
                let code = e
                    .fields()
                    .find(|f| Ok(f.type_() == b'C'))
                    .unwrap()
                    .map(|f| String::from_utf8_lossy(f.value_bytes()).into_owned());
                codes.push(code.unwrap_or_default());
            }
        }
    }
    let after_declared = sc.rss_kib();
    eprintln!(
        "RSS: start {start} KiB; after 30 distinct 4 MiB statements {} KiB (+{}), after 30 more {} KiB (+{}); \
         after 4 clients declared 1 GiB messages {after_declared} KiB (+{})",
        after[0],
        after[0].saturating_sub(start),
        after[1],
        after[1].saturating_sub(after[0]),
        after_declared.saturating_sub(after_statements)
    );
    assert_eq!(codes, ["54000"; 4], "each refused at its header");
    assert!(after[0].saturating_sub(start) < BOUND_KIB, "the copies one statement needs, not 30 statements' worth");
    assert!(after[1].saturating_sub(after[0]) < 8 * 1024, "nothing kept per statement");
    assert!(after_declared.saturating_sub(after_statements) < 8 * 1024, "declared messages are not buffered");
    let n: i64 = c.query_one("SELECT 7::int8", &[]).await.unwrap().get(0);
    assert_eq!(n, 7, "the first client carries on");
}

#[tokio::test]
async fn the_query_timeout_is_a_default_each_client_may_change() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2).replace("[pool]", "[pool]\nquery_timeout_ms = 300"));
    let c = sc.connect().await;
    let e = c.batch_execute("SELECT pg_sleep(2)").await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "57014", "{e}");
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    c.batch_execute("SELECT pg_sleep(0.6)").await.expect("the client's own setting wins");
    c.batch_execute("RESET statement_timeout").await.unwrap();
    let e = c.batch_execute("SELECT pg_sleep(2)").await.unwrap_err();
    assert_eq!(crate::harness::sqlstate(&e), "57014", "RESET returns to the default");
}
