//! What routing needs to know of the schema: where a sharded table's key
//! column sits, for INSERTs that list no columns. Read once per table from
//! the default shard's primary (deadpool-postgres, the control plane).

use std::collections::HashMap;
use std::sync::Mutex;

use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use crate::sqlerror::{SqlError, code};

pub struct Catalog {
    /// The default shard primary's control-plane pool.
    pool: Pool,
    /// (table, column) → zero-based position among the table's live columns.
    positions: Mutex<HashMap<(String, String), usize>>,
}

impl Catalog {
    pub fn new(pool: Pool) -> Catalog {
        Catalog { pool, positions: Mutex::new(HashMap::new()) }
    }

    pub fn position(&self, table: &str, column: &str) -> Option<usize> {
        self.positions.lock().ok()?.get(&(table.to_string(), column.to_string())).copied()
    }

    /// Reads `column`'s position in `table` into the cache.
    pub async fn fetch(&self, table: &str, column: &str) -> Result<(), SqlError> {
        let failed = |why: String| {
            SqlError::new(
                code::INTERNAL_ERROR,
                format!("cannot find column {column} of {table} to route an INSERT without a column list: {why}"),
            )
            .hint(format!("name the columns: INSERT INTO {table} (...) VALUES (...)"))
        };
        let client = self.pool.get().await.map_err(|e| failed(e.to_string()))?;
        let row = client
            .query_typed(
                "SELECT count(*) FILTER (WHERE a.attnum < k.attnum), bool_or(true)
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
        let position = match row.map(|r| (r.try_get::<_, i64>(0), r.try_get::<_, Option<bool>>(1))) {
            Some((Ok(before), Ok(Some(true)))) => before as usize,
            Some((Err(e), _) | (_, Err(e))) => {
                return Err(failed(format!("unexpected answer from the default shard: {e}")));
            }
            _ => return Err(failed("no such table or column on the default shard".into())),
        };
        if let Ok(mut positions) = self.positions.lock() {
            positions.insert((table.to_string(), column.to_string()), position);
        }
        Ok(())
    }
}
