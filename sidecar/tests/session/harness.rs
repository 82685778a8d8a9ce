//! A sidecar's session layer over scripted shards, and a raw client that
//! writes protocol messages and reads back what the session answers, as
//! tags (`1 2 T D C Z`) or whole messages.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;
use shardcar::config::Config;
use shardcar::shared::Shared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::fake::Fake;

pub struct Setup {
    pub s0: Fake,
    pub s1: Fake,
    pub port: u16,
    pub shared: Arc<Shared>,
    /// Sessions end when this is dropped.
    pub running: tokio::sync::watch::Sender<shardcar::shared::Stopping>,
}

/// Two scripted shards (rows `a c` and `b d`) behind a session layer;
/// table `t` is sharded by `k` with the `hash` plugin. `extra` is added to
/// `[routing]`.
pub async fn setup(extra: &str) -> Setup {
    setup_with("", "", extra).await
}

/// `setup`, with `listen` added to `[listen]` and `pool` to `[pool]`.
pub async fn setup_with(listen: &str, pool: &str, extra: &str) -> Setup {
    let s0 = Fake::start(&["a", "c"]).await;
    let s1 = Fake::start(&["b", "d"]).await;
    // Plugins compile once for every test.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("session-plugins");
    let toml = crate::fake::config(&s0, &s1, &cache, listen, pool, extra);
    let config = Config::parse(&toml).unwrap();
    let (running, shutdown) = tokio::sync::watch::channel(shardcar::shared::Stopping::No);
    // What `server::serve` shares with sessions, without its background tasks.
    let (shared, _) = Shared::build(config, shutdown).unwrap();
    let serving = shared.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(shardcar::frontend::serve(serving.clone(), stream));
        }
    });
    Setup { s0, s1, port, shared, running }
}

impl Setup {
    /// Asserts that the last transaction committed in two phases: `decider`
    /// committed one-phase with its decision row, every other shard
    /// prepared and was then told to commit; nothing is left prepared.
    pub fn committed_in_two_phases(&self, decider: &Fake) {
        for f in [&self.s0, &self.s1] {
            let q = f.statements();
            let prepares = q.iter().filter(|s| s.starts_with("PREPARE TRANSACTION")).count();
            if f.port == decider.port {
                assert!(q.iter().any(|s| s.starts_with("INSERT INTO shardcar.decisions")), "{q:?}");
                assert_eq!(prepares, 0, "the decider commits in one phase: {q:?}");
            } else {
                assert_eq!(prepares, 1, "{q:?}");
                assert!(q.last().unwrap().starts_with("COMMIT PREPARED"), "{q:?}");
            }
            assert!(f.prepared().is_empty());
        }
    }
}

/// One backend message as the client received it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: BytesMut,
}

impl Msg {
    /// An ErrorResponse's SQLSTATE.
    pub fn code(&self) -> String {
        self.field(b'C')
    }

    pub fn field(&self, which: u8) -> String {
        let mut fields = self.body[..].split(|&b| b == 0);
        fields
            .find(|f| f.first() == Some(&which))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    }

    /// A DataRow's first column, as text.
    pub fn value(&self) -> String {
        let mut b = &self.body[..];
        let _count = b.get_i16();
        let len = b.get_i32();
        if len < 0 { "NULL".into() } else { String::from_utf8_lossy(&b[..len as usize]).into_owned() }
    }

    /// A CommandComplete's tag.
    pub fn tag_text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().saturating_sub(1)]).into_owned()
    }
}

pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Client {
    pub async fn connect(setup: &Setup) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", setup.port)).await.unwrap();
        let mut c = Client { stream, rbuf: BytesMut::new(), wbuf: BytesMut::new() };
        frontend::startup_message([("user", "u"), ("database", "db")], &mut c.wbuf).unwrap();
        c.send().await;
        let login = c.until_ready().await;
        assert_eq!(login.last().map(|m| m.tag), Some(b'Z'), "logged in: {}", tags(&login));
        c
    }

    /// A connection that has sent nothing yet.
    pub async fn raw(setup: &Setup) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", setup.port)).await.unwrap();
        Client { stream, rbuf: BytesMut::new(), wbuf: BytesMut::new() }
    }

    /// Queues `bytes` as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.wbuf.extend_from_slice(bytes);
        self
    }

    /// Queues a message of type `tag` with `body`, its length computed.
    pub fn message(&mut self, tag: u8, body: &[u8]) -> &mut Self {
        self.wbuf.extend_from_slice(&[tag]);
        self.wbuf.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        self.wbuf.extend_from_slice(body);
        self
    }

    /// Half-closes the connection: the session sees the client's end of input.
    pub async fn shutdown_writing(&mut self) {
        self.stream.shutdown().await.unwrap();
    }

    /// A whole message already read, if there is one.
    fn buffered(&mut self) -> Option<Msg> {
        if self.rbuf.len() < 5 {
            return None;
        }
        let len = (&self.rbuf[1..5]).get_i32() as usize;
        if self.rbuf.len() <= len {
            return None;
        }
        let tag = self.rbuf[0];
        self.rbuf.advance(5);
        Some(Msg { tag, body: self.rbuf.split_to(len - 4) })
    }

    /// Every message until the session closes the connection (panics
    /// after 10 s without it closing).
    pub async fn until_closed(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            while let Some(m) = self.buffered() {
                out.push(m);
            }
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.rbuf)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return out,
                Ok(Ok(_)) => {}
                Err(_) => panic!("still open after 10 s; so far {}", tags(&out)),
            }
        }
    }

    pub fn query(&mut self, sql: &str) -> &mut Self {
        frontend::query(sql, &mut self.wbuf).unwrap();
        self
    }

    pub fn parse(&mut self, name: &str, sql: &str) -> &mut Self {
        frontend::parse(name, sql, [], &mut self.wbuf).unwrap();
        self
    }

    /// Bind with text parameters.
    pub fn bind(&mut self, portal: &str, statement: &str, params: &[&str]) -> &mut Self {
        frontend::bind(
            portal,
            statement,
            [],
            params.iter(),
            |p, buf| {
                buf.extend_from_slice(p.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            [],
            &mut self.wbuf,
        )
        .map_err(|_| ())
        .unwrap();
        self
    }

    pub fn describe(&mut self, kind: u8, name: &str) -> &mut Self {
        frontend::describe(kind, name, &mut self.wbuf).unwrap();
        self
    }

    pub fn execute(&mut self, portal: &str, max_rows: i32) -> &mut Self {
        frontend::execute(portal, max_rows, &mut self.wbuf).unwrap();
        self
    }

    pub fn close(&mut self, kind: u8, name: &str) -> &mut Self {
        frontend::close(kind, name, &mut self.wbuf).unwrap();
        self
    }

    pub fn sync(&mut self) -> &mut Self {
        frontend::sync(&mut self.wbuf);
        self
    }

    pub fn flush_msg(&mut self) -> &mut Self {
        frontend::flush(&mut self.wbuf);
        self
    }

    pub fn copy_data(&mut self, data: &str) -> &mut Self {
        frontend::CopyData::new(data.as_bytes()).unwrap().write(&mut self.wbuf);
        self
    }

    pub fn copy_done(&mut self) -> &mut Self {
        frontend::copy_done(&mut self.wbuf);
        self
    }

    /// Writes what was queued.
    pub async fn send(&mut self) {
        self.stream.write_all(&self.wbuf).await.unwrap();
        self.wbuf.clear();
    }

    /// The next message; panics after 5 s of silence.
    pub async fn next(&mut self) -> Msg {
        loop {
            if let Some(m) = self.buffered() {
                return m;
            }
            let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.rbuf)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("no message from the session: {other:?}, buffered {:?}", &self.rbuf[..]),
            }
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.next().await;
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Exactly `n` messages.
    pub async fn take(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Sends what is queued and reads to ReadyForQuery.
    pub async fn run(&mut self) -> Vec<Msg> {
        self.send().await;
        self.until_ready().await
    }

    /// A simple query's messages up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.query(sql).run().await
    }
}

/// Messages as their tags, `Z` with its status: "1 2 T D D C Z:I".
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter()
        .map(|m| match m.tag {
            b'Z' => format!("Z:{}", m.body[0] as char),
            b'E' => format!("E:{}", m.code()),
            t => (t as char).to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// DataRow values in order.
pub fn values(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().filter(|m| m.tag == b'D').map(Msg::value).collect()
}

/// The ErrorResponse among `msgs`.
pub fn error(msgs: &[Msg]) -> Msg {
    msgs.iter().find(|m| m.tag == b'E').cloned().unwrap_or_else(|| panic!("no error in {}", tags(msgs)))
}
