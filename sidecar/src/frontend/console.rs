//! The admin console: `psql -d shardcar_admin -c 'SHOW POOLS'`, for people
//! who live in psql (PgBouncer's habit). Read-only `SHOW` commands over the
//! simple query protocol, from the same figures as the JSON API; it asks
//! no shard anything, so it answers when every shard is down.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;

use crate::admin::views;
use crate::shared::Shared;
use crate::sqlerror::{SqlError, code};
use crate::wire::{ClientConn, ClientMsg, reply};

/// The database name that opens the console.
pub const DATABASE: &str = "shardcar_admin";

const COMMANDS: &str =
    "SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW SHARDS, SHOW HOTKEYS [table], SHOW ERRORS, SHOW EVENTS, SHOW VERSION";

/// What the console tells clients at login: the shards' own parameters
/// when shardcar has met a shard, else plain ones (psql needs a version).
pub fn server_params(shared: &Shared) -> Vec<(String, String)> {
    shared.pools.cached_params().unwrap_or_else(|| {
        [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    })
}

/// Answers the client's queries until it leaves.
pub async fn serve(shared: &Arc<Shared>, mut client: ClientConn) {
    // After an error in the extended protocol, messages up to Sync are skipped.
    let mut skipping = false;
    loop {
        let msg = match client.read_frame().await {
            Ok(Some(frame)) => ClientMsg::decode(frame),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let mut out = BytesMut::new();
        match msg {
            Ok(ClientMsg::Terminate) => return,
            Ok(ClientMsg::Query { sql, .. }) => {
                match answer(shared, &sql) {
                    Ok(table) => table.write(&mut out),
                    Err(e) => reply::error(&mut out, &e),
                }
                reply::ready(&mut out, b'I');
            }
            Ok(ClientMsg::Sync { .. }) => {
                skipping = false;
                reply::ready(&mut out, b'I');
            }
            Ok(_) if skipping => {}
            Ok(ClientMsg::Flush { .. } | ClientMsg::CopyData { .. } | ClientMsg::CopyDone { .. }) => {}
            Ok(ClientMsg::Invalid { error, .. }) => reply::error(&mut out, &error),
            Ok(_) => {
                skipping = true;
                let e = SqlError::new(code::FEATURE_NOT_SUPPORTED, "the admin console takes simple queries only")
                    .hint(format!("send one of: {COMMANDS}"));
                reply::error(&mut out, &e);
            }
            Err(e) => {
                reply::error(&mut client.out, &e);
                let _ = client.flush().await;
                return;
            }
        }
        client.out.extend_from_slice(&out);
        if client.flush().await.is_err() {
            return;
        }
    }
}

/// A result: column names and rows of text.
struct Table {
    columns: &'static [&'static str],
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn write(&self, out: &mut BytesMut) {
        reply::text_columns(out, self.columns);
        for row in &self.rows {
            let values: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
            reply::text_values(out, &values);
        }
        reply::command_complete(out, "SHOW");
    }
}

fn answer(shared: &Shared, sql: &str) -> Result<Table, SqlError> {
    let words: Vec<String> =
        sql.trim().trim_end_matches(';').split_whitespace().map(|w| w.to_ascii_lowercase()).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["show", "pools"] => Ok(pools(shared)),
        ["show", "clients"] => Ok(clients(shared)),
        ["show", "servers"] => Ok(servers(shared)),
        ["show", "shards"] => Ok(shards(shared)),
        ["show", "hotkeys"] => Ok(hot_keys(shared, None)),
        ["show", "hotkeys", table] => Ok(hot_keys(shared, Some(table))),
        ["show", "errors"] => Ok(errors(shared)),
        ["show", "events"] => Ok(events(shared)),
        ["show", "version"] => Ok(Table {
            columns: &["version"],
            rows: vec![vec![Some(format!("shardcar {}", env!("CARGO_PKG_VERSION")))]],
        }),
        _ => Err(SqlError::new(code::SYNTAX_ERROR, format!("the admin console does not know `{}`", sql.trim()))
            .hint(format!("send one of: {COMMANDS}"))),
    }
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn ms(v: Option<f64>) -> Option<String> {
    v.map(|v| format!("{v:.1}"))
}

fn pools(shared: &Shared) -> Table {
    let rows = views::pools(shared)
        .into_iter()
        .map(|p| {
            vec![
                text(p.shard),
                text(p.role),
                text(p.address),
                text(p.max_size),
                text(p.in_use),
                text(p.idle),
                text(p.waiting),
                ms(p.longest_wait_ms),
                text(p.running),
                ms(p.oldest_running_ms),
                text(p.checkouts_total),
                ms(p.checkout_wait_p99_ms),
            ]
        })
        .collect();
    Table {
        columns: &[
            "shard",
            "role",
            "server",
            "max",
            "in_use",
            "idle",
            "waiting",
            "longest_wait_ms",
            "running",
            "oldest_running_ms",
            "checkouts",
            "checkout_wait_p99_ms",
        ],
        rows,
    }
}

fn clients(shared: &Shared) -> Table {
    let now = SystemTime::now();
    let rows = shared
        .cancels
        .clients()
        .into_iter()
        .map(|(pid, c, active)| {
            let age = now.duration_since(c.since).unwrap_or_default().as_secs();
            vec![
                text(pid),
                text(c.user),
                text(c.database),
                text(c.application_name),
                text(c.address),
                text(if active { "active" } else { "idle" }),
                text(age),
            ]
        })
        .collect();
    Table { columns: &["pid", "user", "database", "application_name", "address", "state", "connected_s"], rows }
}

fn servers(shared: &Shared) -> Table {
    let rows = shared
        .pools
        .nodes()
        .map(|n| {
            let lag = n.health.lag();
            vec![
                text(shared.pools.topology.name(n.shard)),
                text(n.role_name()),
                text(n.endpoint.address()),
                text(if n.health.is_confirmed_up() { "up" } else { "down" }),
                lag.map(|l| l.bytes.to_string()),
                lag.map(|l| format!("{:.1}", l.seconds)),
                n.health.last_error(),
            ]
        })
        .collect();
    Table { columns: &["shard", "role", "server", "state", "lag_bytes", "lag_s", "last_error"], rows }
}

fn shards(shared: &Shared) -> Table {
    let rows = views::shards(shared, 0)
        .shards
        .into_iter()
        .map(|s| {
            let state = match (s.healthy, s.in_flight.stalled, s.hot) {
                (false, _, _) => "down",
                (_, true, _) => "stalled",
                (_, _, true) => "hot",
                _ => "ok",
            };
            vec![
                text(s.name),
                text(state),
                text(format!("{:.1}", s.load.statements_per_s)),
                text(format!("{:.2}", s.load.errors_per_s + s.refused_per_s)),
                ms(s.load.p99_ms),
                ms(s.load.max_ms),
                text(s.in_flight.running),
                ms(s.in_flight.oldest_running_ms),
                text(s.in_flight.waiting),
                ms(s.in_flight.longest_wait_ms),
            ]
        })
        .collect();
    Table {
        columns: &[
            "shard",
            "state",
            "statements_per_s",
            "errors_per_s",
            "p99_ms",
            "max_ms",
            "running",
            "oldest_running_ms",
            "waiting",
            "longest_wait_ms",
        ],
        rows,
    }
}

fn hot_keys(shared: &Shared, table: Option<&str>) -> Table {
    let hotspots = &shared.telemetry.hotspots;
    let tables: Vec<String> = match table {
        Some(t) => vec![t.to_string()],
        None => hotspots.table_names().map(str::to_string).collect(),
    };
    let mut rows = Vec::new();
    for t in tables {
        let Some(hot) = hotspots.hot_keys(&t, None) else { continue };
        let total = hot.window.statements.max(1) as f64;
        for (rank, k) in hot.window.keys.iter().enumerate() {
            rows.push(vec![
                text(&hot.table),
                text(rank + 1),
                text(&k.key),
                text(&k.shard),
                text(k.count),
                text(format!("{:.1}", k.count as f64 / total * 100.0)),
                hot.lifetime.keys.iter().find(|l| l.key == k.key).map(|l| l.count.to_string()),
            ]);
        }
    }
    Table { columns: &["table", "rank", "key", "shard", "count_in_window", "share_pct", "count_since_start"], rows }
}

fn events(shared: &Shared) -> Table {
    let rows = shared
        .telemetry
        .events
        .recent(usize::MAX)
        .into_iter()
        .map(|e| {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(e.at_unix_ms);
            let ago = SystemTime::now().duration_since(at).unwrap_or_default().as_secs();
            vec![text(ago), text(e.kind), text(e.subject), text(e.message)]
        })
        .collect();
    Table { columns: &["seconds_ago", "kind", "subject", "message"], rows }
}

fn errors(shared: &Shared) -> Table {
    let rows = views::errors(shared)
        .errors
        .into_iter()
        .map(|e| {
            vec![
                text(e.shard),
                text(e.sqlstate),
                text(e.by),
                text(e.user),
                text(e.application),
                text(e.in_window),
                text(format!("{:.2}", e.per_s)),
                text(e.total),
            ]
        })
        .collect();
    Table {
        columns: &["shard", "sqlstate", "raised_by", "user", "application", "in_window", "per_s", "since_start"],
        rows,
    }
}
