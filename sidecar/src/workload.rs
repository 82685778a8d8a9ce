//! `shardcar bench-load`: a Zipf-skewed mix of reads, writes and
//! transactions against the demo schema, through a running shardcar, with
//! an ordinary client (tokio-postgres, extended protocol). A few customers
//! get most of the traffic, so hot keys and a hot shard show within seconds.
//!
//! It keeps an exact count of the keys it used, per table, and reports the
//! top ones: the truth the hot-key sketch is checked against.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::RngExt;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tokio_postgres::{Client, NoTls, Statement};

/// What the demo schema holds and the workload touches.
pub const SCHEMA: &str = "
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, region text NOT NULL, visits bigint NOT NULL DEFAULT 0);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL,
    amount numeric(10, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE TABLE tenant_events (id bigserial PRIMARY KEY, tenant text NOT NULL, kind text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL);
INSERT INTO currencies VALUES ('EUR', 'Euro'), ('USD', 'US dollar'), ('JPY', 'Yen'), ('GBP', 'Pound sterling');
";

/// Tenants, most active first (they are Zipf-ranked too).
const TENANTS: [&str; 8] = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"];
const REGIONS: [&str; 3] = ["eu", "us", "apac"];

#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    pub clients: usize,
    /// Operations per second over all clients; 0 is as fast as they go.
    pub rate: f64,
    /// Stop after this long; `None` runs until the stop future completes.
    pub duration: Option<Duration>,
    /// Customers 1..=N (seeded when missing); customer N has Zipf rank N.
    pub customers: u64,
    /// Zipf exponent: 0 is uniform, 1.1 makes a few customers hot.
    pub zipf: f64,
}

/// What ran, and the keys used most, counted exactly.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub operations: u64,
    pub statements: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Per table, its most used keys, most used first.
    pub top_keys: Vec<TableKeys>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableKeys {
    pub table: String,
    pub keys: Vec<(String, u64)>,
}

#[derive(Default)]
struct Tally {
    operations: u64,
    statements: u64,
    errors: u64,
    first_error: Option<String>,
    keys: HashMap<(&'static str, String), u64>,
}

impl Tally {
    fn key(&mut self, table: &'static str, key: impl ToString, statements: u64) {
        *self.keys.entry((table, key.to_string())).or_default() += statements;
    }

    fn merge(&mut self, other: Tally) {
        self.operations += other.operations;
        self.statements += other.statements;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        for (k, n) in other.keys {
            *self.keys.entry(k).or_default() += n;
        }
    }
}

struct Prepared {
    customer: Statement,
    recent_orders: Statement,
    new_order: Statement,
    visit: Statement,
    event: Statement,
}

/// Runs until `duration` passes or `stop` completes.
pub async fn run(opts: Options, stop: impl Future<Output = ()>) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(opts.customers > 0, "--customers must be at least 1");
    let zipf = Zipf::new(opts.customers as f64, opts.zipf).context("--zipf must be a number >= 0")?;
    let tenants = Zipf::new(TENANTS.len() as f64, 1.0).expect("valid constants");
    seed(&connect(&opts).await?, opts.customers).await?;

    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..opts.clients {
        let client = connect(&opts).await?;
        let per_client = (opts.rate > 0.0).then(|| Duration::from_secs_f64(opts.clients as f64 / opts.rate));
        let mut stop = stop_rx.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let prepared = match prepare(&client).await {
                Ok(p) => p,
                Err(e) => {
                    tally.errors += 1;
                    tally.first_error = Some(describe(&e));
                    return tally;
                }
            };
            let mut tick = per_client.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                t
            });
            while !*stop.borrow() {
                if let Some(tick) = tick.as_mut() {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => break,
                    }
                }
                let customer = zipf.sample(&mut rand::rng()) as i64;
                let tenant = TENANTS[tenants.sample(&mut rand::rng()) as usize - 1];
                operation(&client, &prepared, customer, tenant, &mut tally).await;
            }
            tally
        }));
    }
    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = deadline => {}
        _ = stop => {}
    }
    let _ = stop_tx.send(true);
    let mut total = Tally::default();
    for worker in workers {
        total.merge(worker.await.context("a workload client panicked")?);
    }
    Ok(report(total, started.elapsed()))
}

async fn connect(opts: &Options) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(&opts.host)
        .port(opts.port)
        .user(&opts.user)
        .password(&opts.password)
        .dbname(&opts.dbname)
        .application_name("shardcar-bench-load")
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to shardcar at {}:{}", opts.host, opts.port))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Inserts the customers that are missing, pipelined on one connection.
async fn seed(client: &Client, customers: u64) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let insert = client
        .prepare("INSERT INTO customers (id, name, region) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING")
        .await
        .map_err(|e| {
            anyhow::anyhow!("the demo schema is missing ({}); bench-load runs against `shardcar demo`", describe(&e))
        })?;
    let mut inserts = futures_util::stream::iter(1..=customers as i64)
        .map(|id| {
            let insert = &insert;
            async move {
                let name = format!("customer {id}");
                let region = REGIONS[id as usize % REGIONS.len()];
                client.execute(insert, &[&id, &name, &region]).await
            }
        })
        .buffer_unordered(32);
    while let Some(done) = inserts.next().await {
        done.map_err(|e| anyhow::anyhow!("seeding customers failed: {}", describe(&e)))?;
    }
    Ok(())
}

async fn prepare(client: &Client) -> Result<Prepared, tokio_postgres::Error> {
    Ok(Prepared {
        customer: client.prepare("SELECT id, name, region, visits FROM customers WHERE id = $1").await?,
        recent_orders: client
            .prepare("SELECT id, amount, created_at FROM orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 5")
            .await?,
        new_order: client.prepare("INSERT INTO orders (customer_id, amount) VALUES ($1, $2::float8::numeric)").await?,
        visit: client.prepare("UPDATE customers SET visits = visits + 1 WHERE id = $1").await?,
        event: client.prepare("INSERT INTO tenant_events (tenant, kind) VALUES ($1, $2)").await?,
    })
}

/// One operation of the mix: mostly reads by key, some writes, a few
/// single-shard transactions, tenant events and reference-table reads.
async fn operation(client: &Client, p: &Prepared, customer: i64, tenant: &str, tally: &mut Tally) {
    let dice: u32 = rand::rng().random_range(0..100);
    let amount: f64 = rand::rng().random_range(1.0..500.0);
    let (statements, result) = match dice {
        0..50 => {
            tally.key("customers", customer, 1);
            (1, client.query(&p.customer, &[&customer]).await.map(drop))
        }
        50..65 => {
            tally.key("orders", customer, 1);
            (1, client.query(&p.recent_orders, &[&customer]).await.map(drop))
        }
        65..78 => {
            tally.key("orders", customer, 1);
            (1, client.execute(&p.new_order, &[&customer, &amount]).await.map(drop))
        }
        78..86 => {
            tally.key("customers", customer, 1);
            tally.key("orders", customer, 1);
            (4, transaction(client, p, customer, amount).await)
        }
        86..96 => {
            tally.key("tenant_events", tenant, 1);
            let kind = if dice.is_multiple_of(2) { "login" } else { "export" };
            (1, client.execute(&p.event, &[&tenant, &kind]).await.map(drop))
        }
        _ => (1, client.simple_query("SELECT code, name FROM currencies ORDER BY code").await.map(drop)),
    };
    tally.operations += 1;
    tally.statements += statements;
    if let Err(e) = result {
        tally.errors += 1;
        if tally.first_error.is_none() {
            tally.first_error = Some(describe(&e));
        }
    }
}

async fn transaction(client: &Client, p: &Prepared, customer: i64, amount: f64) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let body = async {
        client.execute(&p.visit, &[&customer]).await?;
        client.execute(&p.new_order, &[&customer, &amount]).await?;
        client.batch_execute("COMMIT").await
    };
    match body.await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

fn report(tally: Tally, elapsed: Duration) -> Report {
    let mut by_table: HashMap<&str, Vec<(String, u64)>> = HashMap::new();
    for ((table, key), n) in tally.keys {
        by_table.entry(table).or_default().push((key, n));
    }
    let mut top_keys: Vec<TableKeys> = by_table
        .into_iter()
        .map(|(table, mut keys)| {
            keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            keys.truncate(10);
            TableKeys { table: table.to_string(), keys }
        })
        .collect();
    top_keys.sort_by(|a, b| a.table.cmp(&b.table));
    Report {
        seconds: elapsed.as_secs_f64(),
        operations: tally.operations,
        statements: tally.statements,
        errors: tally.errors,
        first_error: tally.first_error,
        top_keys,
    }
}

impl Report {
    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} operations ({} statements) in {:.1}s: {:.0} statements/s, {} errors\n",
            self.operations,
            self.statements,
            self.seconds,
            self.statements as f64 / self.seconds.max(0.001),
            self.errors
        );
        if let Some(e) = &self.first_error {
            out.push_str(&format!("first error: {e}\n"));
        }
        for t in &self.top_keys {
            let keys: Vec<String> = t.keys.iter().take(5).map(|(k, n)| format!("{k} ({n})")).collect();
            out.push_str(&format!("hottest {}: {}\n", t.table, keys.join(", ")));
        }
        out
    }
}
