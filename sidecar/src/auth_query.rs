//! `[auth] query`: a user not in `[[users]]` is looked up on a shard's
//! primary (PgBouncer's auth_query), over shardcar's own connection there,
//! and what the query returns (a SCRAM verifier or an md5 hash) is what the
//! client's password is checked against. Answers are kept for a TTL, so
//! logins do not each cost a round trip; a user the query does not find is
//! asked for again next time (a new role works at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::pool::Pools;
use crate::secret::{AuthMethod, Secret};
use crate::sqlerror::{SqlError, code};
use crate::topology::{ShardId, Topology};

pub struct AuthQuery {
    sql: String,
    shard: ShardId,
    ttl: Duration,
    found: Mutex<HashMap<String, (Instant, Arc<Secret>)>>,
}

impl AuthQuery {
    pub fn new(cfg: &Config, topology: &Topology) -> Option<AuthQuery> {
        let sql = cfg.auth.query.clone()?;
        let name = cfg.auth.shard.as_deref().unwrap_or(&cfg.routing.default_shard);
        Some(AuthQuery {
            sql,
            shard: topology.find(name)?,
            ttl: Duration::from_secs(cfg.auth.cache_ttl_s),
            found: Mutex::default(),
        })
    }

    /// What `user`'s password is checked against; None when the query does
    /// not know the user (or the user has no password).
    pub async fn lookup(&self, pools: &Pools, user: &str) -> Result<Option<Arc<Secret>>, SqlError> {
        if let Some((at, secret)) = self.found.lock().unwrap_or_else(|p| p.into_inner()).get(user)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(secret.clone()));
        }
        let node = &pools.shard(self.shard).primary();
        let failed = |e: String| {
            SqlError::fatal(code::CANNOT_CONNECT, format!("could not look user \"{user}\" up on {}: {e}", node.label))
                .hint("auth.query runs on that shard's primary as the user of its URL")
        };
        let client = node.control.get().await.map_err(|e| failed(e.to_string()))?;
        let rows = client.query(&self.sql, &[&user]).await.map_err(|e| failed(e.to_string()))?;
        let stored: Option<String> = match rows.first() {
            Some(row) => row.try_get(1).map_err(|e| failed(format!("the query's second column: {e}")))?,
            None => None,
        };
        let Some(stored) = stored else { return Ok(None) };
        let method = if stored.starts_with("md5") { AuthMethod::Md5 } else { AuthMethod::ScramSha256 };
        if !stored.starts_with("SCRAM-SHA-256$") && method != AuthMethod::Md5 {
            return Err(failed("the stored password is neither a SCRAM verifier nor an md5 hash".into()));
        }
        let secret = Arc::new(Secret::parse(user, &stored, method).map_err(failed)?);
        self.found.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_string(), (Instant::now(), secret.clone()));
        Ok(Some(secret))
    }
}
