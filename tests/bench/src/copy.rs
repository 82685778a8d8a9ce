//! Bulk loads: `COPY ... FROM STDIN` of the same rows in text and in binary
//! (as drivers' bulk loaders write it) directly, through PgBouncer and
//! through shardcar — with two shards, every row is cut out of the stream
//! and routed by its key with a plugin call. Rows per second per round.

use std::time::Instant;

use bytes::Bytes;
use futures_util::SinkExt;
use serde::Serialize;
use shardcar::localpg::{self, Cluster};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::targets::Target;

/// The table loaded, on every shard; routed by `id` with the hash plugin.
pub const TABLE: &str = "bench_copy";

#[derive(Serialize, Clone)]
pub struct CopyRun {
    pub round: usize,
    pub format: &'static str,
    pub target: String,
    pub rows: u64,
    pub rows_per_s: f64,
}

/// Creates the table on every shard.
pub fn create(shards: &[Cluster]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    for shard in shards {
        runtime.block_on(async {
            let c = connect(shard.port, localpg::SUPERUSER, None).await?;
            c.batch_execute(&format!("DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id bigint, note text)"))
                .await?;
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

/// Loads `rows` rows in `format` (`text` or `binary`) through `target`;
/// the table is emptied first (directly on every shard).
pub fn run(
    target: &Target,
    shards: &[Cluster],
    format: &'static str,
    rows: u64,
    round: usize,
) -> anyhow::Result<CopyRun> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        for shard in shards {
            connect(shard.port, localpg::SUPERUSER, None).await?.batch_execute(&format!("TRUNCATE {TABLE}")).await?;
        }
        let c = connect(target.port, &target.user, target.password.as_deref()).await?;
        let started = Instant::now();
        let copied = match format {
            "text" => {
                let sink = c.copy_in(&format!("COPY {TABLE} (id, note) FROM STDIN")).await?;
                futures_util::pin_mut!(sink);
                let mut chunk = String::new();
                for i in 1..=rows {
                    chunk.push_str(&format!("{i}\tnote number {i}\n"));
                    if chunk.len() > 64 * 1024 {
                        sink.send(Bytes::from(std::mem::take(&mut chunk))).await?;
                    }
                }
                sink.send(Bytes::from(chunk)).await?;
                sink.finish().await?
            }
            _ => {
                let sink = c.copy_in(&format!("COPY {TABLE} (id, note) FROM STDIN (FORMAT binary)")).await?;
                let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT]);
                futures_util::pin_mut!(writer);
                for i in 1..=rows as i64 {
                    writer.as_mut().write(&[&i, &format!("note number {i}")]).await?;
                }
                writer.finish().await?
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(copied == rows, "{} copied {copied} of {rows} rows", target.name);
        Ok(CopyRun { round, format, target: target.name.clone(), rows, rows_per_s: rows as f64 / seconds })
    })
}

async fn connect(port: u16, user: &str, password: Option<&str>) -> anyhow::Result<tokio_postgres::Client> {
    let mut conninfo = format!("host=127.0.0.1 port={port} user={user} dbname={}", localpg::DATABASE);
    if let Some(p) = password {
        conninfo.push_str(&format!(" password={p}"));
    }
    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Median rows per second of each target and format, and each against direct.
pub fn print(runs: &[CopyRun]) {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for r in runs {
        if !keys.contains(&(r.format, r.target.as_str())) {
            keys.push((r.format, &r.target));
        }
    }
    let median = |format: &str, target: &str| {
        let mut v: Vec<f64> =
            runs.iter().filter(|r| r.format == format && r.target == target).map(|r| r.rows_per_s).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    println!("\nCOPY FROM STDIN, median rows/s (and against direct):");
    for (format, target) in keys {
        let (Some(m), Some(d)) = (median(format, target), median(format, "direct")) else { continue };
        println!("  {format:<7} {target:<24} {m:>10.0} rows/s  {:.2}× direct", m / d);
    }
}
