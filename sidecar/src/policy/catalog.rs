//! What routing needs to know of the schema: where a sharded table's key
//! column sits (for INSERTs and COPYs that list no columns) and its type
//! (to read it in a binary COPY). Read once per table from the default
//! shard's primary (deadpool-postgres, the control plane).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::pool::Shard;
use tokio_postgres::types::Type;

use crate::sqlerror::{SqlError, code};

pub struct Catalog {
    /// The default shard: its primary's control-plane pool is asked.
    shard: Arc<Shard>,
    /// (table, column) → the column.
    columns: Mutex<HashMap<(String, String), Column>>,
}

/// A column as routing needs it.
#[derive(Debug, Clone)]
pub struct Column {
    /// Zero-based position among the table's live columns.
    pub position: usize,
    /// Its type, as `format_type` writes it (`bigint`, `character varying`).
    pub type_name: String,
}

impl Catalog {
    pub fn new(shard: Arc<Shard>) -> Catalog {
        Catalog { shard, columns: Mutex::new(HashMap::new()) }
    }

    pub fn column(&self, table: &str, column: &str) -> Option<Column> {
        self.columns.lock().ok()?.get(&(table.to_string(), column.to_string())).cloned()
    }

    pub fn position(&self, table: &str, column: &str) -> Option<usize> {
        self.column(table, column).map(|c| c.position)
    }

    /// Reads `column` of `table` into the cache.
    pub async fn fetch(&self, table: &str, column: &str) -> Result<(), SqlError> {
        let failed = |why: String| {
            SqlError::new(
                code::INTERNAL_ERROR,
                format!("cannot find column {column} of {table} (to place rows that do not name it): {why}"),
            )
            .hint(format!("name the columns: INSERT INTO {table} (...) VALUES (...), COPY {table} (...)"))
        };
        let client = self.shard.primary().control.get().await.map_err(|e| failed(e.to_string()))?;
        let row = client
            .query_typed(
                "SELECT count(*) FILTER (WHERE a.attnum < k.attnum), bool_or(true), min(format_type(k.atttypid, NULL))
                 FROM pg_attribute a, pg_attribute k
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                   AND k.attrelid = a.attrelid AND k.attname = $2 AND NOT k.attisdropped",
                &[(&table, Type::TEXT), (&column, Type::TEXT)],
            )
            .await
            .map_err(|e| failed(e.to_string()))?
            .into_iter()
            .next();
        // `try_get`: a server's unexpected answer is an error, never a panic.
        let read = row.map(|r| {
            Ok::<_, tokio_postgres::Error>((
                r.try_get::<_, i64>(0)?,
                r.try_get::<_, Option<bool>>(1)?,
                r.try_get::<_, Option<String>>(2)?,
            ))
        });
        let found = match read {
            Some(Ok((before, Some(true), Some(type_name)))) => Column { position: before as usize, type_name },
            Some(Err(e)) => return Err(failed(format!("unexpected answer from the default shard: {e}"))),
            _ => return Err(failed("no such table or column on the default shard".into())),
        };
        if let Ok(mut columns) = self.columns.lock() {
            columns.insert((table.to_string(), column.to_string()), found);
        }
        Ok(())
    }
}
