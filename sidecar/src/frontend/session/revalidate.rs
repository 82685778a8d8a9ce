//! A client's Parse that shardcar answered itself because the server
//! connection already held the same statement text, watched until its first
//! use there shows whether the server's plan still stands.
//!
//! Postgres keeps a statement's result type fixed: after a schema change
//! (`ALTER TABLE ... ADD COLUMN` under a `SELECT *`, a new `search_path`)
//! its Bind or Describe fails with 0A000 "cached plan must not change result
//! type". A client whose own Parse came just before would never see that
//! error, so shardcar may skip a Parse only where it can undo the skip: at
//! the start of a batch outside any transaction, where the server has run
//! nothing yet. If the first reply is that error, the server is skipping to
//! Sync and nothing has run; shardcar swallows the error and the
//! ReadyForQuery that follows, prepares the statement again and sends the
//! batch once more, so the client sees the replies of a fresh Parse.
//!
//! Only a Parse in the batch is watched. A statement the client parsed in
//! an earlier batch may have a result type the client keeps (drivers skip
//! the Describe): its stale plan is the client's error, as without
//! shardcar, and the server connection holding it is not lent again.

use std::sync::Arc;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use pgwire::messages::extendedquery::Close;
use postgres_protocol::message::backend::Message;

use super::outbox::{Entry, Reply};
use super::prepared::{Effect, Prepared};
use crate::pool::backend::BackendConn;
use crate::topology::ShardId;
use crate::wire::encode;

#[derive(Debug)]
pub enum Revalidate {
    /// The Parse of `statement` was skipped; `sent` holds what went to the
    /// server after it, `from` where in the connection's write buffer the
    /// part not yet sent begins.
    Watching { statement: Arc<Prepared>, sent: BytesMut, from: usize },
    /// The batch was sent again: the ReadyForQuery that ends the failed
    /// one is still to come, and is not the client's.
    Resent,
}

impl Revalidate {
    pub fn watch(statement: Arc<Prepared>, conn: &BackendConn) -> Revalidate {
        Revalidate::Watching { statement, sent: BytesMut::new(), from: conn.wbuf.len() }
    }

    /// `wbuf` is about to be sent.
    pub fn record(&mut self, wbuf: &[u8]) {
        if let Revalidate::Watching { sent, from, .. } = self {
            sent.extend_from_slice(&wbuf[*from..]);
            *from = 0;
        }
    }

    /// After the server's stale-plan error: writes, ahead of what is not
    /// yet sent, a Sync (unless the batch's own was sent), a Close of the
    /// named statement, its Parse and the batch again; returns the hidden
    /// replies to expect before the batch's own. `None` when more than the
    /// batch was sent (a pipelined next batch has already run): the skip
    /// cannot be undone.
    pub fn resend(self, shard: ShardId, conn: &mut BackendConn) -> Option<Vec<Entry>> {
        let Revalidate::Watching { statement, sent, .. } = self else { return None };
        let synced = match sync_end(&sent) {
            Some(end) if end != sent.len() => return None,
            end => end.is_some(),
        };
        let unsent = std::mem::take(&mut conn.wbuf);
        if !synced {
            postgres_protocol::message::frontend::sync(&mut conn.wbuf);
        }
        let mut entries = Vec::with_capacity(2);
        let lost = if statement.backend_name.is_empty() {
            Effect::UnnamedLost(shard)
        } else {
            encode(&mut conn.wbuf, Close::new(b'S', Some(statement.backend_name.clone())));
            entries.push(Entry::hidden(shard, Reply::Close));
            Effect::Unprepare(shard, statement.backend_name.clone())
        };
        conn.write_parse(&statement.parse);
        entries.push(Entry::hidden(shard, Reply::Parse).undo(vec![lost]));
        conn.wbuf.extend_from_slice(&sent);
        conn.wbuf.extend_from_slice(&unsent);
        Some(entries)
    }
}

/// Where the first Sync among `sent`'s messages ends.
fn sync_end(sent: &[u8]) -> Option<usize> {
    let mut at = 0;
    for msg in crate::wire::messages(sent) {
        at += msg.len();
        if msg[0] == b'S' {
            return Some(at);
        }
    }
    None
}

/// The server refused to use a statement whose result type its plan can
/// no longer keep. Told by the routine that raises it: the message may be
/// translated, and 0A000 alone covers every unsupported feature.
pub fn is_stale_plan(frame: &[u8]) -> bool {
    let Ok(Some(Message::ErrorResponse(body))) = Message::parse(&mut BytesMut::from(frame)) else { return false };
    let (mut code, mut routine) = (false, false);
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = f.value_bytes() == b"0A000",
            b'R' => routine = f.value_bytes() == b"RevalidateCachedQuery",
            _ => {}
        }
    }
    code && routine
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn the_batch_ends_at_its_first_sync() {
        let bind = frame(b'B', b"\0\0\0\0\0\0\0\0");
        let sync = frame(b'S', b"");
        let mut sent = [bind.clone(), sync.clone()].concat();
        assert_eq!(sync_end(&sent), Some(sent.len()));
        assert_eq!(sync_end(&bind), None);
        sent.extend_from_slice(&bind);
        assert_eq!(sync_end(&sent), Some(bind.len() + sync.len()), "a next batch follows");
    }

    #[test]
    fn only_the_plan_cache_check_is_a_stale_plan() {
        let error = |code: &str, routine: &str| {
            frame(b'E', format!("SERROR\0C{code}\0Mcached plan must not change result type\0R{routine}\0\0").as_bytes())
        };
        assert!(is_stale_plan(&error("0A000", "RevalidateCachedQuery")));
        assert!(!is_stale_plan(&error("0A000", "transformLockingClause")));
        assert!(!is_stale_plan(&error("42P01", "RevalidateCachedQuery")));
        assert!(!is_stale_plan(&frame(b'Z', b"I")));
    }
}
