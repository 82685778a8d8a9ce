//! One shard's part of a statement across shards: its connection and where
//! its answer stands.
//!
//! Inside a transaction block a bound statement runs as a named portal on
//! each shard, fetched a page at a time (Execute of `PAGE` rows, then
//! Sync, which keeps a named portal open in a block). Between the client's
//! Executes a leg can then be parked: the page it was reading is kept
//! here, and the connection goes back to the transaction, so that other
//! statements run on it in the same transaction while the portal waits —
//! as they do on one Postgres.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use super::internal;
use crate::pool::in_flight::Ticket;
use crate::pool::{Node, ShardConn};
use crate::sqlerror::SqlError;
use crate::topology::ShardId;

/// Rows a paged leg asks for at a time: what a parked leg holds at most
/// (a round trip per page otherwise costs little).
pub const PAGE: i32 = 1024;

/// A name for a new paged portal, unlike any a client would choose.
pub fn portal_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("shardcar\u{1}page{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub struct Leg {
    conn: ShardConn,
    reading: Reading,
}

/// Where a leg's answer stands, kept while its connection is parked.
pub struct Reading {
    node: Arc<Node>,
    /// Its ReadyForQuery arrived: nothing more will come from the server
    /// (what was read ahead may still be to read).
    pub(super) done: bool,
    /// A message read ahead, returned by the next `frame`.
    pub(super) pending: Option<BytesMut>,
    /// The shard's error, kept until its answer is read in full.
    pub(super) errored: Option<BytesMut>,
    /// Messages read while parking, returned first.
    buffered: VecDeque<BytesMut>,
    /// The named portal it reads page by page.
    paged: Option<Paged>,
    /// Counts it among the server's running statements until it is dropped.
    _running: Ticket,
}

struct Paged {
    name: String,
    at: Page,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    /// A page was asked for; its rows come.
    Reading,
    /// The page ended with PortalSuspended; its ReadyForQuery comes.
    Suspended,
    /// Between pages: nothing owed, the connection is free.
    Waiting,
}

impl Reading {
    pub fn shard(&self) -> ShardId {
        self.node.shard
    }

    pub fn label(&self) -> &str {
        &self.node.label
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Leg {
    pub fn new(conn: ShardConn) -> Leg {
        let reading = Reading {
            node: conn.node.clone(),
            done: false,
            pending: None,
            errored: None,
            buffered: VecDeque::new(),
            paged: None,
            _running: conn.node.running.begin(std::time::Instant::now()),
        };
        Leg { conn, reading }
    }

    /// A leg whose statement was bound to the portal `name` (see `PAGE`).
    pub fn paged(conn: ShardConn, name: String) -> Leg {
        let mut leg = Leg::new(conn);
        leg.reading.paged = Some(Paged { name, at: Page::Reading });
        leg
    }

    /// Its connection back, with what was read so far.
    pub fn resume(conn: ShardConn, reading: Reading) -> Leg {
        Leg { conn, reading }
    }

    pub fn conn(&mut self) -> &mut ShardConn {
        &mut self.conn
    }

    pub fn reading(&mut self) -> &mut Reading {
        &mut self.reading
    }

    pub fn label(&self) -> &str {
        self.conn.label()
    }

    /// Its answer was read to the end (its ReadyForQuery, read ahead or not).
    pub fn is_done(&self) -> bool {
        self.reading.done && self.reading.pending.is_none() && self.reading.buffered.is_empty()
    }

    /// The connection answered in full and can serve another statement.
    pub fn is_clean(&self) -> bool {
        self.reading.done && !self.conn.conn.broken
    }

    /// The next message of the shard's answer (ParseComplete, BindComplete,
    /// and a page's end are not part of it).
    pub async fn frame(&mut self) -> Result<BytesMut, SqlError> {
        if let Some(f) = self.reading.pending.take() {
            return Ok(f);
        }
        if let Some(f) = self.reading.buffered.pop_front() {
            return Ok(f);
        }
        loop {
            if self.page() == Some(Page::Waiting) {
                self.next_page().await?;
            }
            if let Some(f) = self.read().await? {
                return Ok(f);
            }
        }
    }

    /// The named portal it reads page by page, if paged.
    pub fn portal(&self) -> Option<&str> {
        self.reading.paged.as_ref().map(|p| p.name.as_str())
    }

    fn page(&self) -> Option<Page> {
        self.reading.paged.as_ref().map(|p| p.at)
    }

    /// One message off the wire; `None` for a page's end.
    async fn read(&mut self) -> Result<Option<BytesMut>, SqlError> {
        let read = loop {
            match self.conn.conn.read_frame().await {
                Ok(f) if matches!(f.first(), Some(b'1' | b'2' | b'3')) => {}
                other => break other,
            }
        };
        let f = match read {
            Ok(f) => f,
            Err(e) => {
                self.conn.conn.broken = true;
                self.reading.done = true;
                return Err(self.conn.lost(e));
            }
        };
        let paged = self.reading.paged.as_mut();
        match (f[0], paged) {
            (b's', Some(p)) => {
                p.at = Page::Suspended;
                Ok(None)
            }
            (b'Z', Some(p)) if p.at == Page::Suspended => {
                p.at = Page::Waiting;
                self.conn.conn.status = f.get(5).copied().unwrap_or(b'I');
                Ok(None)
            }
            (b'Z', _) => {
                self.reading.done = true;
                self.conn.conn.status = f.get(5).copied().unwrap_or(b'I');
                Ok(Some(f))
            }
            _ => Ok(Some(f)),
        }
    }

    async fn next_page(&mut self) -> Result<(), SqlError> {
        let Some(p) = self.reading.paged.as_mut() else { return Ok(()) };
        let buf = &mut self.conn.conn.wbuf;
        frontend::execute(&p.name, PAGE, buf).map_err(internal)?;
        frontend::sync(buf);
        p.at = Page::Reading;
        self.flush().await
    }

    /// Reads what is owed up to a point where the connection is free (a
    /// page's end, or the answer's), keeping it; then lets the connection go.
    pub async fn park(mut self) -> (ShardConn, Reading) {
        while !self.reading.done && self.page() != Some(Page::Waiting) {
            match self.read().await {
                Ok(Some(f)) => self.reading.buffered.push_back(f),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        (self.conn, self.reading)
    }

    /// Reads and drops what is left of the answer; a paged portal is
    /// closed rather than read to its end.
    pub async fn drain(&mut self) {
        self.reading.pending = None;
        self.reading.buffered.clear();
        while !self.reading.done {
            if let Some(p) = self.reading.paged.take_if(|p| p.at == Page::Waiting) {
                let buf = &mut self.conn.conn.wbuf;
                if frontend::close(b'P', &p.name, buf).is_err() || self.flush_sync().await.is_err() {
                    return;
                }
            }
            if self.read().await.is_err() {
                return;
            }
        }
    }

    async fn flush_sync(&mut self) -> Result<(), SqlError> {
        frontend::sync(&mut self.conn.conn.wbuf);
        self.flush().await
    }

    /// Sends what is queued for the shard.
    pub async fn flush(&mut self) -> Result<(), SqlError> {
        let result = self.conn.conn.flush().await;
        result.map_err(|e| self.conn.lost(e))
    }

    /// Expects another answer on the same connection (shardcar's own
    /// query, run to its end).
    pub fn reopen(&mut self) {
        self.reading.done = false;
        self.reading.paged = None;
    }

    pub fn into_conn(self) -> ShardConn {
        self.conn
    }
}
