//! A server connection lent to a session: the one type that single-shard
//! statements, fan-out legs, a split COPY and two-phase commit all use.

use std::sync::Arc;

use super::{Node, Pooled};
use crate::settings::Settings;
use crate::sqlerror::{SqlError, code};
use crate::topology::ShardId;

pub struct ShardConn {
    pub conn: Pooled,
    pub node: Arc<Node>,
    /// The budget permit this checkout holds (`pool::budget`), if the server has one.
    pub(super) _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl ShardConn {
    pub fn shard(&self) -> ShardId {
        self.node.shard
    }

    /// "s0 primary": the server, in messages.
    pub fn label(&self) -> &str {
        &self.node.label
    }

    /// Brings the connection to a client's settings, to completion before
    /// the client's statement: it must not run with another client's
    /// settings if this fails.
    pub async fn adopt(&mut self, settings: &Settings) -> Result<(), SqlError> {
        let Some(sql) = settings.diff_sql(&self.conn.settings) else { return Ok(()) };
        match self.conn.run_hidden(&sql).await {
            Ok(Ok(())) => {
                self.conn.settings = settings.clone();
                Ok(())
            }
            Ok(Err(e)) => {
                self.conn.broken = true;
                Err(SqlError::new(
                    code::CONNECTION_FAILURE,
                    format!("could not apply this session's settings on {}: {e}", self.label()),
                )
                .hint("a SET that worked on one server failed on another; check that shards are configured alike")
                .on(self.shard()))
            }
            Err(e) => {
                self.conn.broken = true;
                Err(self.lost(e))
            }
        }
    }

    /// The connection failed: the error that says so.
    pub fn lost(&self, why: impl std::fmt::Display) -> SqlError {
        SqlError::new(code::CONNECTION_FAILURE, format!("lost {}: {why}", self.label())).on(self.shard())
    }

    /// Back to the pool when it is idle and in a known state; closed
    /// otherwise, so that its server stops and rolls back what it runs.
    pub fn release(self) {
        if self.conn.broken || self.conn.status != b'I' || !self.conn.wbuf.is_empty() {
            self.close();
        }
    }

    /// Closed, never reused.
    pub fn close(self) {
        drop(deadpool::managed::Object::take(self.conn));
    }
}
