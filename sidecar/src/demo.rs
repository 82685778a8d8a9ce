//! `shardcar demo`: three local shards (one with a streaming replica), the
//! sample schema, built-in routing plugins, shardcar in front, and the
//! Zipf-skewed workload of `bench-load` so the dashboard has something to show.

use std::path::Path;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::localpg::{Cluster, Workspace};
use crate::workload::{self, Options};

pub struct Demo {
    pub port: u16,
    pub admin_port: u16,
    /// Workload operations per second; 0 runs none.
    pub rate: f64,
}

struct Shards {
    s0: Cluster,
    s0_replica: Cluster,
    s1: Cluster,
    s2: Cluster,
}

fn config(demo: &Demo, shards: &Shards) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"

[[users]]
name = "app"
password = "app"

[pool]
size = 10

[[shards]]
name = "s0"
primary = "{s0}"
replicas = ["{s0r}"]

[[shards]]
name = "s1"
primary = "{s1}"

[[shards]]
name = "s2"
primary = "{s2}"

[routing]
default_shard = "s0"
read_replicas = true
reference_tables = ["currencies"]   # the same rows on every shard

# Customers and their orders are co-located: both hashed by customer id.
[[policies]]
name = "by-customer"
plugin = "hash"
config = {{ shards = ["s0", "s1", "s2"] }}

# acme has a shard of its own; other tenants share s0 and s1.
[[policies]]
name = "by-tenant"
plugin = "tenant"
config = {{ pinned = {{ acme = "s2" }}, shared = ["s0", "s1"] }}

[[tables]]
name = "customers"
key = "id"
policy = "by-customer"

[[tables]]
name = "orders"
key = "customer_id"
policy = "by-customer"

[[tables]]
name = "tenant_events"
key = "tenant"
policy = "by-tenant"

# The workload is skewed on purpose: flag the hot shard within seconds.
[telemetry]
skew_window_s = 20
hot_skew = 1.25
hot_after_s = 5
"#,
        port = demo.port,
        admin = demo.admin_port,
        s0 = shards.s0.url(),
        s0r = shards.s0_replica.url(),
        s1 = shards.s1.url(),
        s2 = shards.s2.url(),
    )
}

pub async fn run(demo: Demo) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", demo.port))
        .await
        .with_context(|| format!("port {} is taken; pass --port", demo.port))?;
    let admin = TcpListener::bind(("127.0.0.1", demo.admin_port))
        .await
        .with_context(|| format!("port {} is taken; pass --admin-port", demo.admin_port))?;

    eprintln!("starting local shards (3 primaries, 1 streaming replica)...");
    let (ws, shards) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let ws = Workspace::new()?;
        let [s0, s1, s2] = ["s0", "s1", "s2"].map(|name| ws.primary(name));
        let (s0, s1, s2) = (s0?, s1?, s2?);
        // Every shard has every table (DDL does not fan out through shardcar yet).
        for shard in [&s0, &s1, &s2] {
            shard.psql(workload::SCHEMA)?;
        }
        // After the schema, so the base backup carries it.
        let s0_replica = ws.replica(&s0, "s0-replica")?;
        Ok((ws, Shards { s0, s0_replica, s1, s2 }))
    })
    .await??;

    let text = config(&demo, &shards);
    let cfg = Config::parse(&text)?;
    let config_path = ws.path().join("shardcar.toml");
    std::fs::write(&config_path, &text)?;
    println!("{}", banner(&demo, &shards, &config_path));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = (demo.rate > 0.0).then(|| {
        let opts = Options {
            host: "127.0.0.1".into(),
            port: demo.port,
            user: "app".into(),
            password: "app".into(),
            dbname: "app".into(),
            clients: 4,
            rate: demo.rate,
            duration: None,
            customers: 2000,
            zipf: 1.3,
        };
        let mut stop = stop_rx.clone();
        tokio::spawn(workload::run(opts, async move {
            let _ = stop.changed().await;
        }))
    });
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
        // The workload's connections close before the sidecar stops.
        if let Some(load) = load {
            match load.await {
                Ok(Ok(report)) => eprint!("workload: {}", report.summary()),
                Ok(Err(e)) => eprintln!("workload failed: {e:#}"),
                Err(e) => eprintln!("workload failed: {e}"),
            }
        }
    };
    let result = crate::server::serve(cfg, listener, admin, shutdown).await;
    eprintln!("stopping shards and removing their data...");
    tokio::task::spawn_blocking(move || drop((shards, ws))).await?;
    result
}

fn banner(demo: &Demo, shards: &Shards, config: &Path) -> String {
    let (port, admin) = (demo.port, demo.admin_port);
    let load = if demo.rate > 0.0 {
        format!(
            "  workload {} operations/s, Zipf-skewed over 2000 customers and 8 tenants (shardcar bench-load)",
            demo.rate
        )
    } else {
        "  workload none (--rate 0); run `shardcar bench-load --port {port}` for one"
            .replace("{port}", &port.to_string())
    };
    format!(
        "
shardcar demo is running.

  dashboard http://127.0.0.1:{admin}/
  connect   PGPASSWORD=app psql -h 127.0.0.1 -p {port} -U app app
{load}

  shards    s0  primary 127.0.0.1:{}  replica 127.0.0.1:{}
            s1  primary 127.0.0.1:{}
            s2  primary 127.0.0.1:{}
  config    {}

  try       SELECT * FROM customers WHERE id = 7;                       -- hashed by id (plugin hash)
            SELECT * FROM orders WHERE customer_id = 7;                 -- same shard as customer 7
            INSERT INTO tenant_events (tenant, kind) VALUES ('acme', 'x'); -- acme is pinned to s2 (plugin tenant)
            SELECT * FROM currencies;                                   -- reference table: read on one shard
            INSERT INTO currencies VALUES ('CHF', 'Franc');             -- ... written on every shard
            /* shardcar: shard=s1 */ SELECT count(*) FROM orders;       -- explicit target

  explain   curl -s 'http://127.0.0.1:{admin}/api/v1/explain?sql=SELECT+1+FROM+orders+WHERE+customer_id=7'
  metrics   curl -s http://127.0.0.1:{admin}/metrics
  api       curl -s http://127.0.0.1:{admin}/api/v1/overview    (also shards, pools, hotkeys, plugins, stream)

Ctrl-C stops shardcar and the shards, and removes their data.",
        shards.s0.port,
        shards.s0_replica.port,
        shards.s1.port,
        shards.s2.port,
        config.display(),
    )
}
