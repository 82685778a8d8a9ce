//! Errors that shardcar itself reports to a client as an `ErrorResponse`.
//! Each carries a SQLSTATE and a message that says what to do next.

use pgwire::error::ErrorInfo;

use crate::topology::ShardId;

/// SQLSTATE codes shardcar uses (Postgres appendix A).
pub mod code {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT: &str = "08001";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    pub const INVALID_STATEMENT_NAME: &str = "26000";
    pub const IN_FAILED_TRANSACTION: &str = "25P02";
    pub const ACTIVE_TRANSACTION: &str = "25001";
    pub const NO_ACTIVE_TRANSACTION: &str = "25P01";
    pub const INVALID_SAVEPOINT: &str = "3B001";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const WARNING: &str = "01000";
    pub const INVALID_CURSOR_NAME: &str = "34000";
    pub const DUPLICATE_CURSOR: &str = "42P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const TRANSACTION_RESOLUTION_UNKNOWN: &str = "08007";
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SqlError {
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// FATAL ends the client connection; ERROR ends only the statement.
    pub fatal: bool,
    /// The shard it is about (cannot connect, connection lost, pool full),
    /// so that operators see which shard hurt clients.
    pub shard: Option<ShardId>,
}

impl SqlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> SqlError {
        SqlError { code, message: message.into(), detail: None, hint: None, fatal: false, shard: None }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> SqlError {
        SqlError { fatal: true, ..SqlError::new(code, message) }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> SqlError {
        self.hint = Some(hint.into());
        self
    }

    pub fn on(mut self, shard: ShardId) -> SqlError {
        self.shard = Some(shard);
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> SqlError {
        self.detail = Some(detail.into());
        self
    }

    pub fn to_info(&self) -> ErrorInfo {
        let severity = if self.fatal { "FATAL" } else { "ERROR" };
        let mut info = ErrorInfo::new(severity.into(), self.code.into(), self.message.clone());
        info.severity_nonlocalized = Some(severity.into());
        info.detail = self.detail.clone();
        info.hint = self.hint.clone();
        info
    }
}
