//! `shardcar demo`: local shards with a sample schema and shardcar in front.

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::localpg::{Cluster, Workspace};

const SCHEMA: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, region text NOT NULL);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    amount numeric(10, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
";

/// Sample rows: each shard holds its own customers.
const ROWS: [&str; 2] = [
    "INSERT INTO customers VALUES (1, 'Ada', 'eu'), (2, 'Grace', 'us'), (3, 'Edsger', 'eu');
     INSERT INTO orders (customer_id, amount) VALUES (1, 10.50), (2, 99.00), (3, 5.25);",
    "INSERT INTO customers VALUES (4, 'Barbara', 'us'), (5, 'Donald', 'us'), (6, 'Frances', 'eu');
     INSERT INTO orders (customer_id, amount) VALUES (4, 42.00), (6, 7.00);",
];

fn config(port: u16, admin_port: u16, s0: &Cluster, s0_replica: &Cluster, s1: &Cluster) -> String {
    format!(
        r#"
[listen]
addr = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin_port}"

[[users]]
name = "app"
password = "app"

[pool]
size = 10

[[shards]]
name = "s0"
primary = "{}"
replicas = ["{}"]

[[shards]]
name = "s1"
primary = "{}"

[routing]
default_shard = "s0"
read_replicas = true
"#,
        s0.url(),
        s0_replica.url(),
        s1.url()
    )
}

pub async fn run(port: u16, admin_port: u16) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(("127.0.0.1", port)).await.with_context(|| format!("port {port} is taken; pass --port"))?;
    let admin = TcpListener::bind(("127.0.0.1", admin_port))
        .await
        .with_context(|| format!("port {admin_port} is taken; pass --admin-port"))?;

    eprintln!("starting local shards (2 primaries, 1 streaming replica)...");
    let (ws, s0, s0_replica, s1) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let ws = Workspace::new()?;
        let s0 = ws.primary("s0")?;
        let s1 = ws.primary("s1")?;
        for (shard, rows) in [&s0, &s1].into_iter().zip(ROWS) {
            shard.psql(&format!("{SCHEMA}{rows}"))?;
        }
        // After the schema, so the base backup carries it.
        let s0_replica = ws.replica(&s0, "s0-replica")?;
        Ok((ws, s0, s0_replica, s1))
    })
    .await??;

    let text = config(port, admin_port, &s0, &s0_replica, &s1);
    let cfg = Config::parse(&text)?;
    let config_path = ws.path().join("shardcar.toml");
    std::fs::write(&config_path, &text)?;
    println!("{}", banner(port, admin_port, &s0, &s0_replica, &s1, &config_path));
    let result = crate::server::serve(cfg, listener, admin, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    eprintln!("stopping shards and removing their data...");
    tokio::task::spawn_blocking(move || drop((s0, s0_replica, s1, ws))).await?;
    result
}

fn banner(port: u16, admin_port: u16, s0: &Cluster, s0r: &Cluster, s1: &Cluster, config: &std::path::Path) -> String {
    format!(
        "
shardcar demo is running.

  shards   s0  primary 127.0.0.1:{}  replica 127.0.0.1:{}
           s1  primary 127.0.0.1:{}
  config   {}

  connect  PGPASSWORD=app psql -h 127.0.0.1 -p {port} -U app app

  try      SELECT * FROM customers;                               -- s0 (plain reads use its replica)
           /* shardcar: shard=s1 */ SELECT * FROM customers;      -- s1
           SET shardcar.shard = 's1';                             -- every statement to s1 until RESET
           INSERT INTO orders (customer_id, amount) VALUES (4, 1); -- a write: s1's primary

  health   curl -s http://127.0.0.1:{admin_port}/readyz
  metrics  curl -s http://127.0.0.1:{admin_port}/metrics
  api      curl -s http://127.0.0.1:{admin_port}/api/v1/overview    (also shards, pools, hotkeys, plugins, stream)

Ctrl-C stops shardcar and the shards, and removes their data.",
        s0.port,
        s0r.port,
        s1.port,
        config.display(),
    )
}
