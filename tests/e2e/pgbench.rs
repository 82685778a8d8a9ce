//! pgbench through shardcar over two shards: `pgbench -i` creates and fills
//! its tables on both (rows split by key), and its TPC-B-like run — whose
//! transactions touch both shards — commits with two-phase commit, with no
//! failed transaction and balances that add up afterwards.

use crate::harness::{Fleet, Sidecar, direct, first_column, hashed_tables, run_tool, two_phase};

/// pgbench's tables, each sharded by its own id with the hash plugin.
fn config(fleet: &Fleet) -> String {
    let tables = [
        ("pgbench_accounts", "aid"),
        ("pgbench_branches", "bid"),
        ("pgbench_tellers", "tid"),
        ("pgbench_history", "aid"),
    ];
    two_phase(&fleet.config_with(16, &hashed_tables(&tables)))
}

/// One number from a simple query through shardcar (a fanned-out aggregate).
async fn number(c: &tokio_postgres::Client, sql: &str) -> i64 {
    let messages = c.simple_query(sql).await.unwrap();
    let value = first_column(&messages).into_iter().next();
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{sql}: {messages:?}"))
}

/// The first number on the line of pgbench's report that starts with `label`.
fn reported(out: &str, label: &str) -> f64 {
    let line = out.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{label}:\n{out}"));
    let value = line[line.find(label).unwrap() + label.len()..].split_whitespace().next().unwrap();
    value.parse().unwrap_or_else(|_| panic!("{label} in {line}"))
}

#[tokio::test]
async fn pgbench_init_and_tpcb_across_two_shards() {
    let fleet = Fleet::new();
    let sc = Sidecar::start(&config(&fleet));

    let (ok, out) = run_tool(&sc, "pgbench", &["-i", "-s", "5", "-q"], None);
    assert!(ok, "pgbench -i through shardcar:\n{out}");
    for (table, rows) in [("pgbench_accounts", 500_000), ("pgbench_branches", 5), ("pgbench_tellers", 50)] {
        let mut per_shard = Vec::new();
        for shard in [&fleet.s0, &fleet.s1] {
            let sql = format!("SELECT count(*) FROM {table}");
            per_shard.push(direct(shard).await.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0));
        }
        assert!(per_shard.iter().all(|&n| n > 0), "{table} has rows on both shards: {per_shard:?}");
        assert_eq!(per_shard.iter().sum::<i64>(), rows, "{table}: {per_shard:?}");
    }

    let (ok, out) = run_tool(&sc, "pgbench", &["-c", "8", "-j", "2", "-T", "20"], None);
    assert!(ok, "pgbench TPC-B through shardcar:\n{out}");
    eprintln!("{out}");
    assert!(reported(&out, "number of transactions actually processed:") > 0.0, "{out}");
    assert_eq!(reported(&out, "number of failed transactions:"), 0.0, "{out}");

    // The same with the extended protocol and prepared statements: BEGIN,
    // statements on both shards and END all come as Parse/Bind/Execute.
    for mode in ["extended", "prepared"] {
        let (ok, out) = run_tool(&sc, "pgbench", &["-c", "4", "-T", "4", "-n", "-M", mode], None);
        assert!(ok, "pgbench -M {mode}:\n{out}");
        assert_eq!(reported(&out, "number of failed transactions:"), 0.0, "{mode}: {out}");
        assert!(reported(&out, "number of transactions actually processed:") > 0.0, "{mode}: {out}");
    }

    let c = sc.connect().await;
    let history = number(&c, "SELECT sum(delta) FROM pgbench_history").await;
    let transactions = number(&c, "SELECT count(*) FROM pgbench_history").await;
    assert!(transactions > 0);
    for table in ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"] {
        let column = &table["pgbench_".len()..table.len() - 1];
        let sum = number(&c, &format!("SELECT sum({}balance) FROM {table}", &column[..1])).await;
        assert_eq!(sum, history, "{table}: its balances add up to the history's deltas");
    }
    let prepared: i64 =
        direct(&fleet.s0).await.query_one("SELECT count(*) FROM pg_prepared_xacts", &[]).await.unwrap().get(0);
    assert_eq!(prepared, 0);
}
