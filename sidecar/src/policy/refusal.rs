//! Why shardcar will not run a statement: a typed reason, turned into the
//! client's SQLSTATE, message and hint here and nowhere else.

use std::sync::Arc;

use super::plugin::{self, CallError};
use crate::classify::Verb;
use crate::sqlerror::{SqlError, code};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A `/* shardcar: ... */` hint that cannot be read.
    Hint(String),
    /// A hint or `SET shardcar.shard` names no configured shard.
    UnknownShard { name: String, known: String },
    /// The shard key's value cannot be read as the table's key type.
    KeyValue { table: String, why: String },
    /// The routing plugin refused, trapped, ran out of time or memory.
    Plugin { policy: String, version: Arc<str>, error: CallError },
    /// The routing plugin answered a shard that does not exist.
    PluginShard { policy: String, version: Arc<str>, index: u32 },
    /// A plugin kept asking for directory entries that were just fetched.
    LookupLoop,
    /// The key column's place in a table could not be read (INSERT without columns, COPY).
    KeyPosition { table: String, column: String, why: String },
    /// An UPDATE that sets the shard key.
    KeyUpdate { table: String, key: String },
    /// A statement whose rows live on several shards, in a shape that cannot run there.
    Spans { verb: Verb, table: String, key: String, shards: String },
    /// INSERT ... SELECT into a sharded table: its rows exist only when the
    /// SELECT runs, so they cannot be placed beforehand.
    InsertSelect { table: String },
    /// A statement across shards whose answers cannot be merged exactly.
    NotMergeable(String),
    /// A query reading tables whose rows are not shown to meet on one shard.
    NotColocated { why: String, hint: String },
    /// A COPY into a sharded or reference table that cannot reach its shards.
    CopySplit { table: String, why: String },
    /// Statements of one query string that belong to different shards.
    Together { first: String, second: String },
    /// DDL in a query string with statements that must not run everywhere.
    DdlWithOthers,
    /// Cannot work under transaction pooling (LISTEN, SQL PREPARE, ...).
    Pooling { reason: String, hint: String },
    /// Must be sent as a query of its own (shardcar answers it itself).
    Alone(String),
    /// The open transaction cannot take in the shards the statement needs.
    Pinned { on: String, needs: String, why: Pinned },
    /// Transaction control that cannot run in a transaction across shards.
    NotAcross(String),
}

/// Why a transaction cannot widen to more shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// `routing.two_phase_commit` is off.
    NoTwoPhase,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Hint(_) | Refusal::UnknownShard { .. } | Refusal::KeyValue { .. } => code::INVALID_PARAMETER_VALUE,
            Refusal::Plugin { error, .. } => match error {
                CallError::Refused(_) => code::INVALID_PARAMETER_VALUE,
                CallError::Timeout => code::QUERY_CANCELED,
                CallError::OutOfMemory => code::OUT_OF_MEMORY,
                CallError::Crashed(_) | CallError::Lookups(_) => code::INTERNAL_ERROR,
            },
            Refusal::PluginShard { .. } | Refusal::LookupLoop | Refusal::KeyPosition { .. } => code::INTERNAL_ERROR,
            Refusal::KeyUpdate { .. }
            | Refusal::Spans { .. }
            | Refusal::InsertSelect { .. }
            | Refusal::NotMergeable(_)
            | Refusal::NotColocated { .. }
            | Refusal::CopySplit { .. }
            | Refusal::Together { .. }
            | Refusal::DdlWithOthers
            | Refusal::Pooling { .. }
            | Refusal::Alone(_)
            | Refusal::Pinned { .. }
            | Refusal::NotAcross(_) => code::FEATURE_NOT_SUPPORTED,
        }
    }
}

const TARGET: &str = "target one shard with /* shardcar: shard=... */";

impl From<Refusal> for SqlError {
    fn from(r: Refusal) -> SqlError {
        let code = r.code();
        let (message, hint): (String, Option<String>) = match r {
            Refusal::Hint(why) => {
                (format!("cannot route: {why}"), Some("hints look like /* shardcar: shard=s1, role=primary */".into()))
            }
            Refusal::UnknownShard { name, known } => {
                (format!("unknown shard `{name}`"), Some(format!("known shards: {known}")))
            }
            Refusal::KeyValue { table, why } => (format!("cannot route on {table}: {why}"), None),
            Refusal::Plugin { policy, version, error } => {
                (format!("routing plugin of policy {policy} ({version}): {}", plugin::describe(&error)), None)
            }
            Refusal::PluginShard { policy, version, index } => {
                (format!("policy {policy} ({version}) chose shard #{index}, which does not exist"), None)
            }
            Refusal::LookupLoop => ("a plugin kept asking for new directory entries".into(), None),
            Refusal::KeyPosition { table, column, why } => (
                format!("cannot find column {column} of {table} to place its rows on shards: {why}"),
                Some(format!("name the columns: INSERT INTO {table} (...) VALUES (...)")),
            ),
            Refusal::KeyUpdate { table, key } => (
                format!("this UPDATE changes {table}.{key}, the shard key, which could move the row to another shard"),
                Some("delete the row and insert it again with the new key".into()),
            ),
            Refusal::Spans { verb, table, key, shards } => spans(verb, &table, &key, &shards),
            Refusal::InsertSelect { table } => (
                format!(
                    "INSERT ... SELECT into {table}, a sharded table, is not split by shard: its rows are known only once the SELECT runs"
                ),
                Some(format!(
                    "use INSERT ... VALUES, INSERT ... SELECT * FROM unnest($1, $2, ...) with the arrays bound as parameters, or COPY, whose rows shardcar places by key; or {TARGET}"
                )),
            ),
            Refusal::NotMergeable(why) => (
                format!("cannot run this statement across shards: {why}"),
                Some(format!("{TARGET}, or add a condition on the shard key")),
            ),
            Refusal::NotColocated { why, hint } => (format!("cannot run this query shard by shard: {why}"), Some(hint)),
            Refusal::CopySplit { table, why } => (
                format!("this COPY into {table} needs every shard, and {why}"),
                Some(format!(
                    "send COPY ... FROM STDIN (text, CSV or binary, UTF-8) with the shard key among its columns, or {TARGET}"
                )),
            ),
            Refusal::Together { first, second } => (
                format!("statements sent together go to different shards ({first} and {second})"),
                Some("send them separately, each in its own transaction".into()),
            ),
            Refusal::DdlWithOthers => (
                "a schema change runs on every shard, and this query string has statements that must not".into(),
                Some("send the DDL as a query of its own".into()),
            ),
            Refusal::Pooling { reason, hint } => (reason, Some(hint)),
            Refusal::Alone(text) => (format!("`{text}` must be sent as a statement of its own"), None),
            Refusal::Pinned { on, needs, why } => {
                let (why, hint) = match why {
                    Pinned::NoTwoPhase => (
                        "a transaction stays on one shard",
                        "commit first and run it on its own, or set routing.two_phase_commit = true for transactions across shards",
                    ),
                };
                (
                    format!("this transaction runs on shard {on} and the statement needs {needs}: {why}"),
                    Some(hint.into()),
                )
            }
            Refusal::NotAcross(text) => (
                format!("`{text}` cannot run in a transaction across shards"),
                Some("savepoints and SET need a transaction on one shard".into()),
            ),
        };
        let e = SqlError::new(code, message);
        match hint {
            Some(h) => e.hint(h),
            None => e,
        }
    }
}

/// A statement on a sharded table that would touch several shards.
fn spans(verb: Verb, table: &str, key: &str, shards: &str) -> (String, Option<String>) {
    match verb {
        Verb::Insert => (
            format!("this INSERT into {table} has rows for several shards ({shards})"),
            Some(format!("give {key} in every row; INSERT ... VALUES rows are split by shard")),
        ),
        Verb::Update | Verb::Delete => (
            format!(
                "this statement on {table} would change rows on several shards ({shards}): it has no single {key} = ... or IN (...) on one shard"
            ),
            Some(format!(
                "add a condition on {key}, or {TARGET}; routing.allow_broadcast_writes = true runs it on every shard"
            )),
        ),
        _ => (
            format!("this statement on {table} needs several shards ({shards}) and cannot run on them as it is"),
            Some(format!("add a condition on {key}, or {TARGET}")),
        ),
    }
}
