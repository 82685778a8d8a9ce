//! The statements a client prepared, as shardcar keeps them, and the
//! session changes a message makes when it succeeds (or undoes when it
//! fails or is skipped).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::extendedquery::Parse;

use crate::classify::Facts;
use crate::policy::facts::SessionInfo;
use crate::pool::backend::StatementText;
use crate::topology::ShardId;

/// A statement a client prepared, as shardcar keeps it.
#[derive(Debug)]
pub struct Prepared {
    /// The client's name for it (`""`: the unnamed statement).
    pub client_name: String,
    /// The name on backend connections: content-addressed (`sc_<hash>`) for
    /// named statements so clients preparing the same text share it; empty
    /// for the unnamed statement.
    pub backend_name: String,
    pub text: Arc<StatementText>,
    pub facts: Arc<Facts>,
    /// The Parse message that creates it under `backend_name`.
    pub parse: Bytes,
    /// A server has accepted it. A client's Parse may be answered before any
    /// server has seen it; if the first server to see it rejects it, it is
    /// as if the client's Parse had failed.
    pub validated: AtomicBool,
    /// Parameter types from the server's ParameterDescription, for statements
    /// whose Parse left them unspecified.
    pub described_types: OnceLock<Vec<u32>>,
}

impl Prepared {
    /// `raw` is the client's own Parse, reused as is for the unnamed
    /// statement; its text and types move here rather than being copied.
    pub fn new(client_name: String, msg: Parse, raw: &Bytes, facts: Arc<Facts>) -> Prepared {
        let text = Arc::new(StatementText { sql: msg.query, param_types: msg.type_oids });
        let unnamed = client_name.is_empty();
        let prepared = |backend_name: String, parse: Bytes| Prepared {
            client_name,
            backend_name,
            text: text.clone(),
            facts,
            parse,
            validated: AtomicBool::new(false),
            described_types: OnceLock::new(),
        };
        if unnamed {
            return prepared(String::new(), raw.clone());
        }
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        let backend_name = format!("sc_{:016x}", h.finish());
        let mut buf = BytesMut::new();
        let renamed = Parse::new(Some(backend_name.clone()), text.sql.clone(), text.param_types.clone());
        if let Err(e) = renamed.encode(&mut buf) {
            // Cannot happen for a Parse that was just decoded; keep the client's bytes.
            tracing::error!("cannot re-encode Parse: {e}");
            buf = BytesMut::from(&raw[..]);
        }
        prepared(backend_name, buf.freeze())
    }

    /// Parameter types: declared in the Parse, else described by the server.
    pub fn param_types(&self) -> Vec<u32> {
        let described = self.described_types.get();
        let count = self.text.param_types.len().max(described.map_or(0, Vec::len));
        (0..count)
            .map(|i| match self.text.param_types.get(i) {
                Some(&t) if t != 0 => t,
                _ => described.and_then(|d| d.get(i).copied()).unwrap_or(0),
            })
            .collect()
    }

    /// How many parameters a Bind must supply, when that is known for sure:
    /// the most of the declared types, the types the server described and
    /// the highest `$n` in the text (unknown when the lexer meets text it
    /// does not model and no server described it).
    pub fn param_count(&self) -> Option<usize> {
        let described = self.described_types.get().map(Vec::len);
        match self.facts.highest_param {
            Some(h) => Some(h.max(self.text.param_types.len()).max(described.unwrap_or(0))),
            None => described,
        }
    }

    pub fn is_validated(&self) -> bool {
        self.validated.load(Ordering::Relaxed)
    }

    /// What keeping it costs: its text and its Parse message.
    pub fn bytes(&self) -> usize {
        self.client_name.len() + self.text.sql.len() + self.parse.len()
    }
}

/// The client's named statements, and the bytes they hold: a client may
/// keep as many as it likes, within `listen.max_prepared_bytes_per_client`.
#[derive(Default)]
pub struct Statements {
    by_name: foldhash::HashMap<String, Arc<Prepared>>,
    bytes: usize,
}

impl Statements {
    pub fn get(&self, name: &str) -> Option<&Arc<Prepared>> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The bytes held, with `p` added.
    pub fn bytes_with(&self, p: &Prepared) -> usize {
        self.bytes + p.bytes()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn insert(&mut self, name: String, p: Arc<Prepared>) {
        self.bytes += p.bytes();
        if let Some(old) = self.by_name.insert(name, p) {
            self.bytes -= old.bytes();
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Arc<Prepared>> {
        let old = self.by_name.remove(name)?;
        self.bytes -= old.bytes();
        Some(old)
    }

    pub fn take_all(&mut self) -> Vec<(String, Arc<Prepared>)> {
        self.bytes = 0;
        self.by_name.drain().collect()
    }
}

/// Session state to change when a message succeeds, or to undo when it
/// fails or is skipped after an earlier error.
#[derive(Debug)]
pub enum Effect {
    /// A server accepted the statement.
    Validated(Arc<Prepared>),
    /// A server rejected the first Parse of a statement the client was told
    /// was prepared: the client's statement is dropped.
    ForgetUnvalidated(Arc<Prepared>),
    /// The shard's connection may not hold this prepared statement after all.
    Unprepare(ShardId, String),
    /// The shard's connection's unnamed statement is gone.
    UnnamedLost(ShardId),
    /// The client's statement (`""`: the unnamed one) never came to exist.
    ForgetStatement(String),
    /// A Close or DEALLOCATE that did not happen: the statement is back.
    RestoreStatement(String, Arc<Prepared>),
    /// A `SET shardcar.*` that did not happen.
    RestoreSession(Arc<SessionInfo>),
}

impl Effect {
    /// The effect concerns a server connection's own record (what it has
    /// prepared), which stays true even when the client's view is undone.
    pub fn on_connection(&self) -> bool {
        matches!(self, Effect::Unprepare(..) | Effect::UnnamedLost(_))
    }
}
