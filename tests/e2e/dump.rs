//! pg_dump and a restore through shardcar: one dump of the logical
//! database (schema once, every shard's rows), and every row back on the
//! shard its key routes to.

use crate::harness::{Fleet, Sidecar, direct, run_tool};

#[tokio::test]
async fn pg_dump_and_restore_round_trip() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("dumped").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    let values: Vec<String> = (1..=40).map(|i| format!("({i}, 'note {i}')")).collect();
    c.batch_execute(&format!("INSERT INTO {t} VALUES {}", values.join(", "))).await.unwrap();
    let count = async |shard: &shardcar::localpg::Cluster| -> i64 {
        direct(shard).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0)
    };
    let before = (count(&fleet.s0).await, count(&fleet.s1).await);
    assert!(before.0 > 0 && before.1 > 0 && before.0 + before.1 == 40);

    let (ok, dump) = run_tool(&sc, "pg_dump", &["-t", &t, "--no-owner", "--no-privileges"], None);
    assert!(ok, "pg_dump through shardcar failed:\n{dump}");
    assert_eq!(dump.matches(&format!("CREATE TABLE public.{t}")).count(), 1, "the schema once:\n{dump}");
    let rows = dump.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains("\tnote ")).count();
    assert_eq!(rows, 40, "every shard's rows:\n{dump}");

    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    let (ok, out) = run_tool(&sc, "psql", &["-v", "ON_ERROR_STOP=1", "-q"], Some(&dump));
    assert!(ok, "restore through shardcar failed:\n{out}");
    assert_eq!((count(&fleet.s0).await, count(&fleet.s1).await), before, "every row back on its shard");
}
