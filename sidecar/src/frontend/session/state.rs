//! The session's state, explicit: where its transaction stands, how the
//! next client message is taken, and the status the client is told.

use crate::topology::ShardId;

/// The transaction status of ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Idle,
    InBlock,
    Failed,
}

impl TxnStatus {
    pub fn byte(self) -> u8 {
        match self {
            TxnStatus::Idle => b'I',
            TxnStatus::InBlock => b'T',
            TxnStatus::Failed => b'E',
        }
    }

    pub fn from_byte(b: u8) -> TxnStatus {
        match b {
            b'T' => TxnStatus::InBlock,
            b'E' => TxnStatus::Failed,
            _ => TxnStatus::Idle,
        }
    }
}

/// Where the session's transaction stands.
#[derive(Debug)]
pub enum Txn {
    /// No transaction block. Connections held serve the batch in flight
    /// (Postgres's implicit transaction) and go back to the pool at its end.
    Idle,
    /// BEGIN (and SET TRANSACTION, SAVEPOINT) answered by shardcar, sent
    /// ahead of the first statement that needs a server, which so picks
    /// the shard.
    Deferred(Deferred),
    /// A transaction block open on the held connections: one shard, or
    /// several (with two-phase commit, or only reading).
    Block(Block),
}

/// Transaction statements the client sent before any statement needed a
/// server: answered here, sent ahead of the first routed statement.
#[derive(Debug, Default)]
pub struct Deferred {
    /// `BEGIN ...` and `SET TRANSACTION ...`, in order.
    pub statements: Vec<String>,
    /// Savepoints made since, in order.
    pub savepoints: Vec<String>,
    /// Shardcar refused a statement inside the deferred transaction: it is
    /// failed until ROLLBACK, as Postgres would have it.
    pub failed: bool,
}

#[derive(Debug, Default)]
pub struct Block {
    /// The statements that opened it, for shards that join later.
    pub begin: Vec<String>,
    /// Its savepoints, oldest first. A shard that joins later makes them
    /// all right after its BEGIN, so that rolling back to any of them
    /// undoes its work as it does the others'.
    pub savepoints: Vec<String>,
    /// A statement failed in it (a server's error, or shardcar's refusal):
    /// it can only roll back.
    pub failed: bool,
    /// Opened by shardcar for a batch sent without a transaction whose
    /// writes went to several shards (Postgres runs a batch up to Sync as
    /// one implicit transaction): committed, two-phase, at the client's
    /// Sync, or rolled back if anything in it failed; the client sees no
    /// transaction block.
    pub implicit: bool,
}

impl Block {
    /// What opens the block on a shard that joins it: its BEGIN and its savepoints.
    pub fn opening(&self) -> String {
        let begin = if self.begin.is_empty() { vec!["BEGIN".to_string()] } else { self.begin.clone() };
        begin.into_iter().chain(self.savepoints.iter().map(|s| savepoint_sql(s))).collect::<Vec<_>>().join("; ")
    }

    /// Forgets the savepoints a RELEASE (`release`) or ROLLBACK TO of
    /// `name` ends; `false` when there is no such savepoint.
    pub fn unwind(&mut self, name: &str, release: bool) -> bool {
        let Some(at) = self.savepoints.iter().rposition(|s| s == name) else { return false };
        self.savepoints.truncate(if release { at } else { at + 1 });
        true
    }

    /// Opened READ ONLY: its shards have nothing to commit, so more may
    /// join without two-phase commit.
    pub fn read_only(&self) -> bool {
        self.begin.iter().any(|s| {
            let s = s.to_ascii_uppercase();
            s.contains("READ ONLY") && !s.contains("READ WRITE")
        })
    }
}

/// `SAVEPOINT "name"`, the name quoted as an identifier.
pub fn savepoint_sql(name: &str) -> String {
    format!("SAVEPOINT \"{}\"", name.replace('"', "\"\""))
}

/// How the next client message is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// An error in the extended protocol: messages are dropped until Sync,
    /// as Postgres does.
    SkipToSync,
    /// The server of this shard takes the client's COPY data.
    CopyIn(ShardId),
}
