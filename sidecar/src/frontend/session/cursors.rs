//! Cursors declared in SQL (`DECLARE ... CURSOR`): one over a query on a
//! single shard lives on that shard's server, and its FETCH, MOVE and
//! CLOSE go there; one over a query that needs several shards is kept
//! here, as a statement across shards whose merge goes on at each FETCH
//! (its shards' portals paged, see `scatter::leg`), read forwards only.

use super::Session;
use super::fan_out::{ScatterPortal, Spread};
use super::state::Txn;
use crate::classify::shape::{CursorOp, CursorUse};
use crate::scatter::Bound;
use crate::sqlerror::{SqlError, code};
use crate::topology::ShardId;
use crate::wire::reply;

/// Where a cursor declared in SQL is.
pub(super) enum Cursor {
    /// A portal of that name on the shard's server.
    On(ShardId),
    /// Kept by shardcar over every shard its query needs.
    Across(Box<ScatterPortal>),
}

impl Session {
    /// `DECLARE name CURSOR FOR query` over several shards: the query
    /// starts on each (its snapshot taken now, as Postgres takes it at
    /// DECLARE) and waits for the first FETCH.
    pub(super) async fn declare(
        &mut self,
        name: &str,
        query: &str,
        spread: Spread,
        bound: Bound,
        extended: bool,
    ) -> Result<(), SqlError> {
        if matches!(&self.txn, Txn::Idle) || matches!(&self.txn, Txn::Block(b) if b.implicit) {
            let e = SqlError::new(code::NO_ACTIVE_TRANSACTION, "DECLARE CURSOR can only be used in transaction blocks");
            return self.fail(e, extended);
        }
        let mut sp = ScatterPortal::new(query.to_string(), Some(bound), spread);
        if self.scatter_open(&mut sp).await? {
            return self.failed_here(extended);
        }
        self.cursors.insert(name.to_string(), Cursor::Across(Box::new(sp)));
        reply::command_complete(&mut self.client.out, "DECLARE CURSOR");
        self.done_here(extended);
        Ok(())
    }

    /// FETCH, MOVE or CLOSE of a cursor kept here. `describe`: the rows
    /// come with their RowDescription (a simple query's FETCH).
    pub(super) async fn cursor_op(&mut self, used: &CursorUse, describe: bool, extended: bool) -> Result<(), SqlError> {
        let Some(Cursor::Across(mut sp)) = self.cursors.remove(&used.name) else {
            let e = SqlError::new(code::INVALID_CURSOR_NAME, format!("cursor \"{}\" does not exist", used.name));
            return self.fail(e, extended);
        };
        let (count, is_move) = match used.op {
            CursorOp::Close => {
                self.scatter_end(&mut sp).await?;
                reply::command_complete(&mut self.client.out, "CLOSE CURSOR");
                self.done_here(extended);
                return Ok(());
            }
            CursorOp::Fetch { forward: None, .. } => {
                self.cursors.insert(used.name.clone(), Cursor::Across(sp));
                let e = SqlError::new(
                    code::FEATURE_NOT_SUPPORTED,
                    format!("cursor \"{}\" spans shards and can only be read forwards", used.name),
                )
                .hint("FETCH n, FETCH NEXT or FETCH ALL; or declare the cursor over one shard's rows");
                return self.fail(e, extended);
            }
            CursorOp::Fetch { forward: Some(n), is_move } => (n, is_move),
        };
        let verb = if is_move { "MOVE" } else { "FETCH" };
        match self.scatter_fetch(&mut sp, count, describe && !is_move, !is_move).await? {
            Some(n) => {
                reply::command_complete(&mut self.client.out, &format!("{verb} {n}"));
                self.cursors.insert(used.name.clone(), Cursor::Across(sp));
                self.done_here(extended);
                Ok(())
            }
            // Failed: Postgres's cursor is gone with the transaction.
            None => self.failed_here(extended),
        }
    }

    /// Describe of a portal that FETCHes from a cursor kept here: the
    /// cursor's RowDescription (MOVE and CLOSE return no rows).
    pub(super) async fn cursor_describe(&mut self, used: &CursorUse) -> Result<(), SqlError> {
        let fetches = matches!(used.op, CursorOp::Fetch { is_move: false, .. });
        match self.cursors.remove(&used.name) {
            Some(Cursor::Across(sp)) if fetches => {
                if let Some(t) = &sp.description {
                    self.client.out.extend_from_slice(t);
                }
                self.cursors.insert(used.name.clone(), Cursor::Across(sp));
            }
            other => {
                if let Some(cursor) = other {
                    self.cursors.insert(used.name.clone(), cursor);
                }
                reply::no_data(&mut self.client.out);
            }
        }
        Ok(())
    }

    /// Ends the cursors kept here with the transaction.
    pub(super) async fn end_cursors(&mut self) -> Result<(), SqlError> {
        for (_, cursor) in std::mem::take(&mut self.cursors) {
            if let Cursor::Across(mut sp) = cursor {
                self.scatter_end(&mut sp).await?;
            }
        }
        Ok(())
    }

    /// After an answer written here: a simple query's ReadyForQuery.
    fn done_here(&mut self, extended: bool) {
        if !extended {
            self.emit_ready();
        }
    }

    /// After an error written here (`scatter_failed`): the batch skips to
    /// its Sync, or the simple query ends.
    fn failed_here(&mut self, extended: bool) -> Result<(), SqlError> {
        if extended {
            self.mode = super::Mode::SkipToSync;
        } else {
            self.emit_ready();
        }
        Ok(())
    }
}
