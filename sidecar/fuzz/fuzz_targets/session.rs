//! The session against two scripted shards (the session tests' `fake`):
//! any sequence of client messages — well-formed or not, statements from a
//! dictionary that reaches every path (transactions across shards, COPY,
//! portals, refusals) or bytes — must never panic the session's task, and
//! the session must end once the client is gone.
#![no_main]

mod common;

#[path = "../../tests/session/fake.rs"]
#[allow(dead_code, reason = "the tests' scripted shard, of which fuzzing uses a part")]
mod fake;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use postgres_protocol::message::frontend;
use shardcar::config::Config;
use shardcar::shared::{Shared, Stopping};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Statements that take the session's different paths with the fakes'
/// table `t` sharded by `k` (1 and 2 live on different shards).
const SQL: [&str; 24] = [
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT v FROM t WHERE k = 1",
    "SELECT v FROM t WHERE k = $1",
    "SELECT v FROM t ORDER BY v",
    "SELECT count(*) FROM t",
    "INSERT INTO t (k, v) VALUES (1, 'a')",
    "INSERT INTO t (k, v) VALUES (2, 'b')",
    "INSERT INTO t (k, v) VALUES (1, 'a'), (2, 'b')",
    "INSERT INTO t (k, v) VALUES ($1, $2)",
    "UPDATE t SET v = 'x' WHERE k = 2",
    "/* shardcar: shard=s1 */ SELECT 1",
    "SELECT fail",
    "COPY t FROM STDIN",
    "COPY t TO STDOUT",
    "SAVEPOINT a",
    "ROLLBACK TO SAVEPOINT a",
    "SET search_path = public",
    "SET shardcar.shard = 's1'",
    "CREATE TABLE x (a int)",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "BEGIN; INSERT INTO t (k, v) VALUES (1, 'a'); COMMIT",
];

#[derive(Debug, Arbitrary)]
enum Op {
    Query(u8),
    Parse { name: bool, sql: u8 },
    Bind { portal: bool, name: bool, params: Vec<Option<u8>> },
    Describe { statement: bool, name: bool },
    Execute { portal: bool, max_rows: u8 },
    Close { statement: bool, name: bool },
    Sync,
    Flush,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail,
    Raw(Vec<u8>),
}

fn encode(ops: &[Op], out: &mut BytesMut) {
    let sql = |i: &u8| SQL[usize::from(*i) % SQL.len()];
    let named = |n: &bool| if *n { "n" } else { "" };
    for op in ops {
        let _ = match op {
            Op::Query(i) => frontend::query(sql(i), out),
            Op::Parse { name, sql: i } => frontend::parse(named(name), sql(i), [], out),
            Op::Bind { portal, name, params } => frontend::bind(
                named(portal),
                named(name),
                [],
                params.iter().take(4),
                |p, buf| match p {
                    Some(v) => {
                        buf.extend_from_slice(v.to_string().as_bytes());
                        Ok(postgres_protocol::IsNull::No)
                    }
                    None => Ok(postgres_protocol::IsNull::Yes),
                },
                [],
                out,
            )
            .map_err(|_| std::io::Error::other("bind")),
            Op::Describe { statement, name } => {
                frontend::describe(if *statement { b'S' } else { b'P' }, named(name), out)
            }
            Op::Execute { portal, max_rows } => frontend::execute(named(portal), i32::from(*max_rows % 4), out),
            Op::Close { statement, name } => frontend::close(if *statement { b'S' } else { b'P' }, named(name), out),
            Op::Sync => Ok(frontend::sync(out)),
            Op::Flush => Ok(frontend::flush(out)),
            Op::CopyData(d) => frontend::CopyData::new(&d[..]).map(|c| c.write(out)),
            Op::CopyDone => Ok(frontend::copy_done(out)),
            Op::CopyFail => frontend::copy_fail("fuzz", out),
            Op::Raw(bytes) => Ok(out.extend_from_slice(bytes)),
        };
    }
}

/// shardcar's latest log lines (TRACE: every message a session reads and
/// relays), so that a session that does not end says what it was doing.
static LOG: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const LOG_LINES: usize = 400;

struct LogRing;

impl std::io::Write for LogRing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
        log.push_back(String::from_utf8_lossy(buf).trim_end().to_string());
        while log.len() > LOG_LINES {
            log.pop_front();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn last_log() -> String {
    LOG.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect::<Vec<_>>().join("\n")
}

struct World {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    listener: TcpListener,
    shards: [fake::Fake; 2],
    _dir: tempfile::TempDir,
    _running: tokio::sync::watch::Sender<Stopping>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("shardcar=trace")
            .with_writer(|| LogRing)
            .with_ansi(false)
            .try_init();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (shared, listener, shards, running) = runtime.block_on(async {
            let shards = [fake::Fake::start(&["a", "c"]).await, fake::Fake::start(&["b", "d"]).await];
            let cache = dir.path().join("plugins");
            let toml =
                fake::config(&shards[0], &shards[1], &cache, "login_timeout_ms = 5000", "", "two_phase_commit = true");
            let (running, shutdown) = tokio::sync::watch::channel(Stopping::No);
            let (shared, _) = Shared::build(Config::parse(&toml).unwrap(), shutdown).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            (shared, listener, shards, running)
        });
        World { runtime, shared, listener, shards, _dir: dir, _running: running }
    })
}

/// Each server's pool (connections open and idle in it), and what each
/// scripted shard received for this input.
fn lent(w: &World) -> String {
    let pools = w.shared.pools.nodes().map(|n| {
        let s = n.pool.status();
        format!("{}: {} open, {} idle", n.label, s.size, s.available)
    });
    let received = w.shards.iter().enumerate().map(|(i, s)| format!("s{i} received {:?}", s.log()));
    pools.chain(received).collect::<Vec<_>>().join(", ")
}

fuzz_target!(|ops: Vec<Op>| {
    common::setup();
    let w = world();
    let mut input = BytesMut::new();
    encode(&ops, &mut input);
    w.runtime.block_on(async {
        let addr = w.listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = w.listener.accept().await.unwrap();
        let session = tokio::spawn(shardcar::frontend::serve(w.shared.clone(), stream));
        let mut login = BytesMut::new();
        frontend::startup_message([("user", "u"), ("database", "db")], &mut login).unwrap();
        client.write_all(&login).await.unwrap();
        client.write_all(&input).await.unwrap_or_default();
        let _ = client.shutdown().await;
        // Everything the session says, until it closes: it must, the client being gone.
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut sink)).await;
        let ended = tokio::time::timeout(Duration::from_secs(10), session).await;
        match ended {
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
            Err(_) => panic!(
                "the session did not end after its client left (read: {read:?}; {}); shardcar's log:\n{}",
                lent(w),
                last_log()
            ),
        }
        // Every server connection the session took goes back to its pool
        // idle (or is closed) once it ends, or a later session would wait
        // for it or inherit its state: a leak shows here, at the input
        // that caused it.
        let returned = async {
            while w.shared.pools.nodes().any(|n| n.pool.status().size > n.pool.status().available)
                || w.shards.iter().any(|s| !s.busy().is_empty())
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), returned).await.is_err() {
            let busy: Vec<String> = w.shards.iter().flat_map(fake::Fake::busy).collect();
            panic!(
                "5 s after the session ended: {}; servers not idle: {busy:?}; shardcar's log:\n{}",
                lent(w),
                last_log()
            );
        }
        // What shardcar believes each idle connection has prepared is what
        // the server holds (a later session skips Parse on that belief),
        // and every statement the server holds is one shardcar knows it may
        // hold (it closes those before preparing them again).
        for (node, shard) in w.shared.pools.nodes().zip(&w.shards) {
            node.pool.retain(|conn, _| {
                let held = shard.named(conn.pid);
                let names: Vec<(&str, bool)> = conn.prepared.names().collect();
                let believed = names.iter().filter(|(_, known)| *known).map(|(n, _)| n.to_string());
                let unknown = held.iter().filter(|h| !names.iter().any(|(n, _)| n == h));
                let wrong: Vec<String> = believed.filter(|n| !held.contains(n)).chain(unknown.cloned()).collect();
                assert!(
                    wrong.is_empty(),
                    "{}'s connection {}: believed prepared but not held, or held but not known: {wrong:?}; held {held:?}, believed {names:?}; {}; log:\n{}",
                    node.label,
                    conn.pid,
                    lent(w),
                    last_log()
                );
                true
            });
        }
    });
    for shard in &w.shards {
        shard.forget();
    }
});
