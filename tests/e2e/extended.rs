//! The extended protocol message by message, with a raw socket: Flush,
//! portals with row limits, Describe, Close, and skipping to Sync after an error.

use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::IsNull;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{Fleet, Sidecar, logged_in, next_message};

/// A compact name for each reply, to compare sequences.
fn name(m: &Message) -> String {
    match m {
        Message::ParseComplete => "1".into(),
        Message::BindComplete => "2".into(),
        Message::CloseComplete => "3".into(),
        Message::ParameterDescription(_) => "t".into(),
        Message::RowDescription(_) => "T".into(),
        Message::NoData => "n".into(),
        Message::DataRow(_) => "D".into(),
        Message::PortalSuspended => "s".into(),
        Message::CommandComplete(c) => format!("C:{}", c.tag().unwrap()),
        Message::ErrorResponse(e) => {
            use fallible_iterator::FallibleIterator;
            let code = e.fields().find(|f| Ok(f.type_() == b'C')).unwrap().unwrap();
            format!("E:{}", String::from_utf8_lossy(code.value_bytes()))
        }
        Message::ReadyForQuery(r) => format!("Z:{}", r.status() as char),
        _ => "?".into(),
    }
}

struct Raw {
    s: TcpStream,
    rbuf: BytesMut,
    out: BytesMut,
}

impl Raw {
    async fn send(&mut self) {
        self.s.write_all(&self.out).await.unwrap();
        self.out.clear();
    }

    /// Replies up to and including the `n`-th that satisfies `last`.
    async fn until(&mut self, mut stop: impl FnMut(&Message) -> bool) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), next_message(&mut self.s, &mut self.rbuf))
                .await
                .expect("a reply in time")
                .expect("connection open");
            got.push(name(&m));
            if stop(&m) {
                return got;
            }
        }
    }

    async fn ready(&mut self) -> Vec<String> {
        self.until(|m| matches!(m, Message::ReadyForQuery(_))).await
    }

    fn bind(&mut self, portal: &str, stmt: &str, value: Option<i32>) {
        let values: Vec<Option<i32>> = value.into_iter().map(Some).collect();
        frontend::bind(
            portal,
            stmt,
            [1i16],
            values,
            |v, buf| match v {
                Some(v) => {
                    buf.extend_from_slice(&v.to_be_bytes());
                    Ok(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            },
            [0i16],
            &mut self.out,
        )
        .map_err(|_| "bind")
        .unwrap();
    }
}

fn collapse(v: Vec<String>) -> String {
    v.join(" ")
}

#[tokio::test]
async fn flush_portals_describe_close_and_errors() {
    let sc = Sidecar::start(&Fleet::shared().config(2));
    let (s, rbuf) = logged_in(sc.port).await;
    let mut raw = Raw { s, rbuf, out: BytesMut::new() };

    // Flush delivers the replies so far without ending the batch.
    frontend::parse("s", "SELECT generate_series(1, $1::int) AS n", [], &mut raw.out).unwrap();
    raw.bind("", "s", Some(5));
    frontend::describe(b'P', "", &mut raw.out).unwrap();
    frontend::execute("", 0, &mut raw.out).unwrap();
    frontend::flush(&mut raw.out);
    raw.send().await;
    let got = raw.until(|m| matches!(m, Message::CommandComplete(_))).await;
    assert_eq!(collapse(got), "1 2 T D D D D D C:SELECT 5");
    let early = tokio::time::timeout(Duration::from_millis(300), next_message(&mut raw.s, &mut raw.rbuf)).await;
    assert!(early.is_err(), "no ReadyForQuery before Sync");
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "Z:I");

    // A named portal in a transaction, fetched 3 rows at a time.
    frontend::query("BEGIN", &mut raw.out).unwrap();
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "C:BEGIN Z:T");
    raw.bind("p", "s", Some(10));
    frontend::execute("p", 3, &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "2 D D D s Z:T");
    frontend::execute("p", 0, &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "D D D D D D D C:SELECT 7 Z:T");
    frontend::close(b'P', "p", &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    frontend::query("COMMIT", &mut raw.out).unwrap();
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "3 Z:T");
    assert_eq!(collapse(raw.ready().await), "C:COMMIT Z:I");

    // Describe of a statement: parameter types, then the row shape.
    frontend::describe(b'S', "s", &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "t T Z:I");

    // After an error, everything up to Sync is skipped, including a Parse.
    raw.bind("", "nope", None);
    frontend::execute("", 0, &mut raw.out).unwrap();
    frontend::parse("x", "SELECT 1", [], &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "E:26000 Z:I");
    raw.bind("", "x", None);
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "E:26000 Z:I");

    // The same when the error comes from the server, mid-batch.
    frontend::parse("", "SELECT 1/$1::int", [], &mut raw.out).unwrap();
    raw.bind("", "", Some(0));
    frontend::execute("", 0, &mut raw.out).unwrap();
    frontend::parse("y", "SELECT 2", [], &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    raw.send().await;
    // (The planner folds 1/0 while binding: the error comes at Bind.)
    assert_eq!(collapse(raw.ready().await), "1 E:22012 Z:I");
    frontend::describe(b'S', "y", &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "E:26000 Z:I");

    // A duplicate name is refused, the first statement stays.
    frontend::parse("s", "SELECT 3", [], &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "E:42P05 Z:I");
    raw.bind("", "s", Some(2));
    frontend::execute("", 0, &mut raw.out).unwrap();
    frontend::sync(&mut raw.out);
    raw.send().await;
    assert_eq!(collapse(raw.ready().await), "2 D D C:SELECT 2 Z:I");
}

/// Parse, Bind, Execute and Sync written at once (psycopg, node-postgres,
/// libpq's PQexecParams) go to the shard of the bound key, in a
/// transaction too.
#[tokio::test]
async fn a_batch_is_routed_by_its_bound_key() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("batchkey").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let (s, rbuf) = logged_in(sc.port).await;
    let mut raw = Raw { s, rbuf, out: BytesMut::new() };
    let insert = format!("INSERT INTO {t} VALUES ($1::int4, 'batch')");
    for (begin, key) in [(false, 3), (false, 1), (true, 3), (true, 1)] {
        if begin {
            frontend::query("BEGIN", &mut raw.out).unwrap();
        }
        frontend::parse("", &insert, [23u32], &mut raw.out).unwrap();
        raw.bind("", "", Some(key));
        frontend::execute("", 0, &mut raw.out).unwrap();
        frontend::sync(&mut raw.out);
        if begin {
            frontend::query("COMMIT", &mut raw.out).unwrap();
        }
        raw.send().await;
        if begin {
            raw.ready().await;
        }
        let status = if begin { "T" } else { "I" };
        assert_eq!(collapse(raw.ready().await), format!("1 2 C:INSERT 0 1 Z:{status}"), "key {key}");
        if begin {
            assert_eq!(collapse(raw.ready().await), "C:COMMIT Z:I");
        }
    }
    // Keys 1 (s0) and 3 (s1), as in the plugin tests, twice each.
    for (shard, key) in [(&fleet.s0, 1), (&fleet.s1, 3)] {
        let n: i64 = crate::harness::direct(shard)
            .await
            .query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = {key}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2, "key {key}");
    }
}
