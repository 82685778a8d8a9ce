//! The server connections a session holds: at most one per shard, for the
//! batch in flight or the transaction block, with what the session sent on
//! each since its last Sync.

use std::time::Instant;

use bytes::BytesMut;

use super::revalidate::Revalidate;
use crate::pool::ShardConn;
use crate::topology::ShardId;

pub struct Held {
    pub conn: ShardConn,
    /// Extended-protocol messages were sent since its last Sync.
    pub unsynced: bool,
    /// Messages were sent since its last Sync or Flush: the server holds
    /// their replies until it gets one.
    pub unflushed: bool,
    /// A statement that may write ran in the current batch: it cannot be
    /// dropped (synced) without committing that.
    pub wrote: bool,
    /// A block of shardcar's own or the client's is open on it.
    pub in_block: bool,
    /// Checked out from a replica (the server's role then, whatever it is now).
    pub on_replica: bool,
    /// On a replica, outside a transaction: what this batch sent, while
    /// none of its answer has come — what can run again on the primary if
    /// the replica is lost. `None` once an answer came (or on a primary).
    pub replay: Option<BytesMut>,
    /// The start of a replica's answer, kept from the client while the
    /// batch can still run again (`replay`).
    pub held_back: BytesMut,
    /// A Parse skipped because the server held the statement, until its
    /// first reply shows the server's plan still stands.
    pub revalidate: Option<Revalidate>,
}

impl Held {
    pub fn new(conn: ShardConn) -> Held {
        let on_replica = !conn.node.is_primary();
        Held {
            on_replica,
            replay: on_replica.then(BytesMut::new),
            conn,
            unsynced: false,
            unflushed: false,
            wrote: false,
            in_block: false,
            held_back: BytesMut::new(),
            revalidate: None,
        }
    }

    /// What was sent since the last ReadyForQuery, if it can run again on
    /// another server as it is: simple queries, and extended ones that use
    /// only the unnamed statement (a named one may be prepared on the lost
    /// connection only, its Parse never sent).
    pub fn replayable(&self) -> Option<&BytesMut> {
        let bytes = self.replay.as_ref().filter(|b| !b.is_empty())?;
        let mut whole = 0;
        for msg in crate::wire::messages(bytes) {
            let body = &msg[5..];
            let unnamed = match msg[0] {
                b'P' => body.first() == Some(&0),
                // Bind: portal name, then the statement's.
                b'B' => body.iter().position(|&b| b == 0).is_some_and(|end| body.get(end + 1) == Some(&0)),
                b'Q' | b'D' | b'E' | b'S' | b'H' => true,
                _ => false,
            };
            if !unnamed {
                return None;
            }
            whole += msg.len();
        }
        (whole == bytes.len()).then_some(bytes)
    }

    pub fn shard(&self) -> ShardId {
        self.conn.shard()
    }
}

#[derive(Default)]
pub struct Conns {
    held: Vec<Held>,
    /// The shard the session's last statement went to.
    current: Option<ShardId>,
    /// When the session's last write on each shard was acknowledged: its
    /// reads there go to a replica only once that replica has replayed
    /// everything committed by then (read-your-writes).
    wrote_at: Vec<(ShardId, Instant)>,
}

impl Conns {
    /// A write of this session's on `shard` is committed, as of now.
    pub fn note_write(&mut self, shard: ShardId) {
        let now = Instant::now();
        match self.wrote_at.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, at)) => *at = now,
            None => self.wrote_at.push((shard, now)),
        }
    }

    pub fn wrote_at(&self, shard: ShardId) -> Option<Instant> {
        self.wrote_at.iter().find(|(s, _)| *s == shard).map(|&(_, at)| at)
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn get(&self, shard: ShardId) -> Option<&Held> {
        self.held.iter().find(|h| h.shard() == shard)
    }

    pub fn get_mut(&mut self, shard: ShardId) -> Option<&mut Held> {
        self.held.iter_mut().find(|h| h.shard() == shard)
    }

    pub fn current(&self) -> Option<ShardId> {
        self.current.filter(|s| self.get(*s).is_some())
    }

    pub fn set_current(&mut self, shard: ShardId) {
        self.current = Some(shard);
    }

    pub fn insert(&mut self, held: Held) {
        self.current = Some(held.shard());
        self.held.push(held);
    }

    pub fn remove(&mut self, shard: ShardId) -> Option<Held> {
        let i = self.held.iter().position(|h| h.shard() == shard)?;
        let held = self.held.swap_remove(i);
        if self.current == Some(shard) {
            self.current = self.held.first().map(Held::shard);
        }
        Some(held)
    }

    /// Removes the connections `done` picks, handing each to `release`.
    pub fn release_where(&mut self, mut done: impl FnMut(&Held) -> bool, mut release: impl FnMut(Held)) {
        let mut i = 0;
        while i < self.held.len() {
            if done(&self.held[i]) {
                let held = self.held.swap_remove(i);
                if self.current == Some(held.shard()) {
                    self.current = self.held.first().map(Held::shard);
                }
                release(held);
            } else {
                i += 1;
            }
        }
    }

    pub fn take_all(&mut self) -> Vec<Held> {
        self.current = None;
        std::mem::take(&mut self.held)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Held> {
        self.held.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Held> {
        self.held.iter_mut()
    }

    pub fn shards(&self) -> Vec<ShardId> {
        self.held.iter().map(Held::shard).collect()
    }
}
