//! `shardcar-bench`: pgbench against Postgres directly, PgBouncer, shardcar
//! (one shard and two, pgbench tables routed by the hash plugin) and PgCat
//! (when `PGCAT_BIN` names its binary), in one run on one machine: targets
//! interleaved within each round, medians over rounds, ratios, a JSON file
//! and a PNG chart under `--out`. Also the RSS of shardcar holding 1,000
//! idle client connections, and each pooler's CPU per 10,000 transactions.
//! Not part of the test suite: `tests/bench/run.sh` builds and runs it.

mod copy;
mod pgbench;
mod report;
mod targets;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;
use shardcar::localpg::{self, Cluster, Workspace};

use crate::pgbench::{Script, Workload};
use crate::report::Sample;
use crate::targets::Target;

#[derive(Parser)]
#[command(about = "pgbench against direct Postgres, PgBouncer, shardcar and PgCat, interleaved")]
struct Args {
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Rounds; each runs every workload on every target, in turn.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Client counts for the select-only workloads.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    clients: Vec<usize>,
    /// Server connections per pooler (and per shard for shardcar).
    #[arg(long, default_value_t = 16)]
    pool: usize,
    /// pgbench scale factor (100,000 accounts each).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Idle client connections to hold open while measuring shardcar's RSS.
    #[arg(long, default_value_t = 1000)]
    idle_clients: usize,
    /// shardcar's `listen.threads`; 0, its default, is half the CPUs (one
    /// on a two-core box, where Postgres and pgbench share the cores).
    #[arg(long, default_value_t = 0)]
    shardcar_threads: usize,
    /// Also run "shardcar 1 shard TLS": TLS (sslmode=require) from shardcar
    /// to the shard, which gets a self-signed certificate.
    #[arg(long)]
    shard_tls: bool,
    /// Only the bulk-load runs, not pgbench.
    #[arg(long)]
    copy_only: bool,
    /// Rows per COPY in the bulk-load runs (text and binary); 0: none.
    #[arg(long, default_value_t = 1_000_000)]
    copy_rows: u64,
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Results<'a> {
    date: String,
    machine: String,
    command: String,
    seconds: u64,
    rounds: usize,
    pool: usize,
    scale: u32,
    samples: &'a [Sample],
    medians: &'a [report::Median],
    ratios: &'a [report::Ratio],
    idle: Option<IdleRss>,
    copies: &'a [copy::CopyRun],
}

#[derive(Serialize, Clone)]
struct IdleRss {
    clients: usize,
    before_mib: f64,
    after_mib: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let ws = Workspace::new()?;
    let shards = [ws.primary("bench0")?, ws.primary("bench1")?];
    for shard in &shards {
        init(shard, args.scale)?;
    }
    copy::create(&shards)?;
    let dir = ws.path().join("bench");
    std::fs::create_dir_all(&dir)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;

    let bin = targets::shardcar_binary()?;
    let mut all: Vec<Target> = vec![targets::direct(&shards[0]), targets::pgbouncer(&dir, &shards[0], args.pool)?];
    let threads = args.shardcar_threads;
    all.push(targets::shardcar(&bin, &dir, "shardcar 1 shard", &[&shards[0]], "", args.pool, threads)?);
    if args.shard_tls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        shards[0].enable_tls(&cert.cert.pem(), &cert.signing_key.serialize_pem(), None)?;
        let name = "shardcar 1 shard TLS";
        all.push(targets::shardcar(&bin, &dir, name, &[&shards[0]], "?sslmode=require", args.pool, threads)?);
    }
    let two = [&shards[0], &shards[1]];
    all.push(targets::shardcar(&bin, &dir, "shardcar 2 shards hash", &two, "", args.pool, threads)?);
    // PgCat is not installable from the registries here: its binary comes
    // from PGCAT_BIN, else the workplace's anchor copy beside the repository.
    let anchor = PathBuf::from("../shared/anchors/pgcat");
    match std::env::var_os("PGCAT_BIN").map(PathBuf::from).or_else(|| anchor.exists().then_some(anchor)) {
        Some(pgcat) => all.push(targets::pgcat(&pgcat, &dir, &shards[0], args.pool)?),
        None => println!("no PgCat binary (PGCAT_BIN, or ../shared/anchors/pgcat): PgCat is skipped"),
    }

    let mut workloads = Vec::new();
    for &clients in &args.clients {
        for mode in ["simple", "extended", "prepared"] {
            workloads.push(Workload { script: Script::SelectOnly, mode, clients });
        }
    }
    workloads.push(Workload { script: Script::TpcB, mode: "simple", clients: 8 });

    let mut samples = Vec::new();
    if args.copy_only {
        workloads.clear();
    }
    for round in 1..=args.rounds {
        for w in &workloads {
            for target in &all {
                let sample =
                    |run, error| Sample { round, workload: w.label(), target: target.name.clone(), run, error };
                if w.mode == "prepared" && !target.prepared {
                    if round == 1 {
                        let why = "no prepared statements in transaction mode (PgBouncer < 1.21)".to_string();
                        samples.push(sample(None, Some(why)));
                    }
                    continue;
                }
                if w.script == Script::TpcB && target.name.contains("2 shards") {
                    // Its transactions span shards: that needs two-phase commit, measured apart.
                    continue;
                }
                match pgbench::run(target, w, args.seconds, &logs) {
                    Ok(run) => {
                        println!(
                            "round {round} {:<28} {:<24} {:>9.0} tps  p99 {:.2} ms",
                            w.label(),
                            target.name,
                            run.tps,
                            run.latency_p99_ms
                        );
                        samples.push(sample(Some(run), None));
                    }
                    Err(e) => {
                        println!("round {round} {:<28} {:<24} failed: {e:#}", w.label(), target.name);
                        samples.push(sample(None, Some(format!("{e:#}"))));
                    }
                }
            }
        }
    }

    let mut copies = Vec::new();
    for round in 1..=args.rounds {
        for format in ["text", "binary"] {
            // PgCat is left out: it passes COPY through like PgBouncer.
            for target in all.iter().filter(|t| args.copy_rows > 0 && t.name != "pgcat") {
                match copy::run(target, &shards, format, args.copy_rows, round) {
                    Ok(run) => {
                        println!("round {round} copy {format:<7} {:<24} {:>10.0} rows/s", target.name, run.rows_per_s);
                        copies.push(run);
                    }
                    Err(e) => println!("round {round} copy {format:<7} {:<24} failed: {e:#}", target.name),
                }
            }
        }
    }

    let idle = match all.iter().find(|t| t.name == "shardcar 1 shard") {
        Some(t) if args.idle_clients > 0 => Some(idle_rss(t, args.idle_clients)?),
        _ => None,
    };
    let medians = report::medians(&samples);
    let ratios = report::ratios(&medians);
    let errors: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    report::print(&medians, &ratios, &errors);
    copy::print(&copies);
    if let Some(i) = &idle {
        println!(
            "\nshardcar RSS: {:.1} MiB idle, {:.1} MiB holding {} idle client connections",
            i.before_mib, i.after_mib, i.clients
        );
    }
    let results = Results {
        date: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        machine: format!("{} cores, {}", command_output("nproc", &[]), command_output("uname", &["-srm"])),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seconds: args.seconds,
        rounds: args.rounds,
        pool: args.pool,
        scale: args.scale,
        samples: &samples,
        medians: &medians,
        ratios: &ratios,
        idle,
        copies: &copies,
    };
    let json = args.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    let png = args.out.join("tps.png");
    report::chart(&medians, &png)?;
    println!("\nwrote {} and {}", json.display(), png.display());
    Ok(())
}

/// `pgbench -i` on a shard, directly.
fn init(shard: &Cluster, scale: u32) -> anyhow::Result<()> {
    let out = Command::new(localpg::tool("pgbench")?)
        .args(["-i", "-q", "-s", &scale.to_string(), "-h", "127.0.0.1", "-p", &shard.port.to_string()])
        .args(["-U", localpg::SUPERUSER, localpg::DATABASE])
        .output()
        .context("pgbench -i")?;
    if !out.status.success() {
        bail!("pgbench -i on {}: {}", shard.name, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// shardcar's RSS before and while `n` clients are connected and idle.
fn idle_rss(target: &Target, n: usize) -> anyhow::Result<IdleRss> {
    let pid = target.pid().context("shardcar runs here")?;
    let before_mib = pgbench::rss_mib(pid).unwrap_or(f64::NAN);
    let runtime = tokio::runtime::Runtime::new()?;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={}",
        target.port,
        target.user,
        target.password.as_deref().unwrap_or(""),
        localpg::DATABASE
    );
    let after_mib = runtime.block_on(async {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            clients.push(client);
        }
        // One statement each, so every session has been all the way through.
        for c in &clients {
            c.simple_query("SELECT 1").await?;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let rss = pgbench::rss_mib(pid).unwrap_or(f64::NAN);
        drop(clients);
        anyhow::Ok(rss)
    })?;
    Ok(IdleRss { clients: n, before_mib, after_mib })
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
