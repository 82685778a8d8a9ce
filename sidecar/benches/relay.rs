//! The relay path end to end: one statement's round trip through shardcar
//! (one shard, the hash plugin) against the same round trip to Postgres
//! directly, for the simple protocol, the extended protocol (unnamed
//! Parse/Bind/Describe/Execute/Sync, as pgbench `-M extended` sends) and a
//! prepared statement (Bind/Execute/Sync). Starts its own Postgres
//! (`localpg`) and serves shardcar in this process, so that a counting
//! allocator sees every allocation shardcar makes per statement.
//! `cargo bench -p shardcar --bench relay`.
//!
//! The client writes pre-encoded messages and reads into one reused
//! buffer on a blocking socket: it allocates nothing per statement, so
//! the count is shardcar's (its once-a-second background work included,
//! a fraction of an allocation per statement at these rates).

#[path = "common/counting.rs"]
mod counting;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use postgres_protocol::message::frontend;
use shardcar::config::Config;
use shardcar::localpg::{self, Workspace};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const ROWS: i64 = 10_000;

/// A blocking protocol client with one reused read buffer.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    message: BytesMut,
}

impl Client {
    fn connect(port: u16, user: &str) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Client { stream, buf: Vec::with_capacity(64 * 1024), message: BytesMut::new() };
        let params = [("user", user), ("database", localpg::DATABASE), ("application_name", "relay-bench")];
        frontend::startup_message(params, &mut client.message).unwrap();
        client.send();
        client.until_ready();
        client
    }

    fn send(&mut self) {
        self.stream.write_all(&self.message).unwrap();
    }

    /// Reads up to and including ReadyForQuery; panics on an ErrorResponse.
    fn until_ready(&mut self) {
        self.buf.clear();
        let mut at = 0;
        loop {
            while self.buf.len() >= at + 5 {
                let len = u32::from_be_bytes(self.buf[at + 1..at + 5].try_into().unwrap()) as usize;
                if self.buf.len() < at + 1 + len {
                    break;
                }
                match self.buf[at] {
                    b'E' => panic!("server error: {}", String::from_utf8_lossy(&self.buf[at + 5..at + 1 + len])),
                    b'R' if self.buf[at + 5..at + 9] != [0, 0, 0, 0] => panic!("the bench user must be trusted"),
                    b'Z' => return,
                    _ => {}
                }
                at += 1 + len;
            }
            let start = self.buf.len();
            self.buf.resize(start + 16 * 1024, 0);
            let n = self.stream.read(&mut self.buf[start..]).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.truncate(start + n);
        }
    }

    fn round_trip(&mut self) {
        self.send();
        self.until_ready();
    }
}

/// The messages one statement sends, for key `aid`.
fn encode(mode: &str, aid: i64, out: &mut BytesMut) {
    out.clear();
    let sql = "SELECT abalance FROM accounts WHERE aid = $1";
    let key = aid.to_string();
    let bind = |name: &str, out: &mut BytesMut| {
        let values = [Some(key.as_bytes())];
        frontend::bind(
            "",
            name,
            [0i16],
            values.iter(),
            |v, buf| {
                buf.extend_from_slice(v.unwrap());
                Ok(postgres_protocol::IsNull::No)
            },
            [0i16],
            out,
        )
        .map_err(|_| ())
        .unwrap();
    };
    match mode {
        "simple" => frontend::query(&format!("SELECT abalance FROM accounts WHERE aid = {aid}"), out).unwrap(),
        "extended" => {
            frontend::parse("", sql, [], out).unwrap();
            bind("", out);
            frontend::describe(b'P', "", out).unwrap();
            frontend::execute("", 0, out).unwrap();
            frontend::sync(out);
        }
        "prepared" => {
            bind("bench", out);
            frontend::execute("", 0, out).unwrap();
            frontend::sync(out);
        }
        _ => unreachable!(),
    }
}

/// Pre-encoded statements for keys spread over the table, sent in turn.
struct Script {
    messages: Vec<BytesMut>,
    next: usize,
}

impl Script {
    fn new(mode: &str) -> Script {
        let messages = (0..1000)
            .map(|i| {
                let mut m = BytesMut::new();
                encode(mode, (i * 7919) % ROWS + 1, &mut m);
                m
            })
            .collect();
        Script { messages, next: 0 }
    }

    fn run(&mut self, client: &mut Client) {
        std::mem::swap(&mut client.message, &mut self.messages[self.next]);
        client.round_trip();
        std::mem::swap(&mut client.message, &mut self.messages[self.next]);
        self.next = (self.next + 1) % self.messages.len();
    }
}

fn client_for(port: u16, user: &str, mode: &str) -> Client {
    let mut client = Client::connect(port, user);
    if mode == "prepared" {
        client.message.clear();
        frontend::parse("bench", "SELECT abalance FROM accounts WHERE aid = $1", [], &mut client.message).unwrap();
        frontend::sync(&mut client.message);
        client.round_trip();
    }
    client
}

fn relay(c: &mut Criterion) {
    let ws = Workspace::new().unwrap();
    let pg = ws.primary("relay0").unwrap();
    let setup = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    setup.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE TABLE accounts (aid int PRIMARY KEY, abalance int NOT NULL);
                 INSERT INTO accounts SELECT g, g % 100 FROM generate_series(1, {ROWS}) g;"
            ))
            .await
            .unwrap();
    });

    let port = localpg::free_port().unwrap();
    let admin = localpg::free_port().unwrap();
    let config = Config::parse(&format!(
        r#"
[listen]
addr = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
threads = 1
[[users]]
name = "app"
trust = true
[[shards]]
name = "s0"
primary = "{url}"
[routing]
default_shard = "s0"
[[policies]]
name = "hashed"
plugin = "hash"
config = {{ shards = ["s0"] }}
[[tables]]
name = "accounts"
key = "aid"
policy = "hashed"
"#,
        url = pg.url()
    ))
    .unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(shardcar::server::run(config)).unwrap();
    });
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut group = c.benchmark_group("round trip");
    for mode in ["simple", "extended", "prepared"] {
        let mut direct = client_for(pg.port, localpg::SUPERUSER, mode);
        let mut via = client_for(port, "app", mode);
        let (mut script_direct, mut script_via) = (Script::new(mode), Script::new(mode));

        // Allocations per statement, shardcar's process-wide (the direct
        // client's own count is the baseline: it should be zero).
        let direct_allocs = counting::per_call(20_000, || script_direct.run(&mut direct));
        let via_allocs = counting::per_call(20_000, || script_via.run(&mut via));
        println!("{mode}: allocations per statement: shardcar {via_allocs:.2} (client alone {direct_allocs:.2})");

        group.bench_function(format!("{mode}: direct"), |b| b.iter(|| script_direct.run(&mut direct)));
        group.bench_function(format!("{mode}: shardcar"), |b| b.iter(|| script_via.run(&mut via)));
    }
    group.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
