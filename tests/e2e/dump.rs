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

/// A database of its own on both shards, so that a whole-database dump
/// sees only this test's tables: a sharded table, a reference table (on
/// every shard, rows alike) and a plain one (rows on the default shard).
struct OwnDatabase {
    name: String,
}

impl OwnDatabase {
    async fn create(fleet: &Fleet) -> OwnDatabase {
        let name = crate::harness::table("dumpdb");
        for shard in [&fleet.s0, &fleet.s1] {
            direct(shard).await.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        }
        OwnDatabase { name }
    }

    /// `config` with every server's database this one, `countries` a reference table.
    fn config(&self, config: &str) -> String {
        let config = config.replace("/app\"", &format!("/{}\"", self.name));
        config.replace("read_replicas = false", "read_replicas = false\nreference_tables = [\"countries\"]")
    }

    async fn on(&self, shard: &shardcar::localpg::Cluster) -> tokio_postgres::Client {
        let dsn = format!("host=127.0.0.1 port={} user=postgres dbname={}", shard.port, self.name);
        crate::harness::connect(&dsn).await.unwrap()
    }

    /// Per table, the rows this shard holds, in order; then its schema.
    async fn contents(&self, shard: &shardcar::localpg::Cluster) -> (Vec<String>, String) {
        let c = self.on(shard).await;
        let mut rows = Vec::new();
        for t in ["orders", "countries", "settings"] {
            let q = format!("SELECT coalesce(string_agg(x::text, ';' ORDER BY x::text), '') FROM {t} x");
            rows.push(c.query_one(&q, &[]).await.unwrap().get(0));
        }
        let schema = "SELECT string_agg(format('%s.%s %s %s', table_name, column_name, data_type, is_nullable), ', '
                        ORDER BY table_name, ordinal_position)
                      FROM information_schema.columns WHERE table_schema = 'public'";
        let indexes =
            "SELECT string_agg(indexdef, ', ' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'";
        let views = "SELECT string_agg(viewname || ' ' || definition, ', ') FROM pg_views WHERE schemaname = 'public'";
        let mut shape = String::new();
        for q in [schema, indexes, views] {
            shape.push_str(&c.query_one(q, &[]).await.unwrap().get::<_, Option<String>>(0).unwrap_or_default());
            shape.push('\n');
        }
        (rows, shape)
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let fleet = Fleet::shared();
        let Ok(psql) = shardcar::localpg::tool("psql") else { return };
        for shard in [&fleet.s0, &fleet.s1] {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let port = shard.port.to_string();
            let args = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-c", &drop];
            let _ = std::process::Command::new(&psql).args(args).output();
        }
    }
}

#[tokio::test]
async fn whole_database_dump_plain_and_custom_restores_through_shardcar() {
    let fleet = Fleet::shared();
    let db = OwnDatabase::create(fleet).await;
    let sc = Sidecar::start(&db.config(&fleet.hashed_config("orders", "")));
    let c = sc.connect().await;
    c.batch_execute(
        "CREATE TABLE orders (customer_id bigint PRIMARY KEY, note text NOT NULL);
         CREATE INDEX orders_note ON orders (note);
         CREATE TABLE countries (code text PRIMARY KEY, name text);
         CREATE TABLE settings (k text PRIMARY KEY, v text);
         CREATE VIEW noted AS SELECT customer_id FROM orders WHERE note LIKE 'note 1%'",
    )
    .await
    .unwrap();
    let values: Vec<String> = (1..=40).map(|i| format!("({i}, 'note {i}')")).collect();
    c.batch_execute(&format!("INSERT INTO orders VALUES {}", values.join(", "))).await.unwrap();
    c.batch_execute("INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan'), ('br', 'Brazil')").await.unwrap();
    c.batch_execute("INSERT INTO settings VALUES ('mode', 'live'), ('tz', 'UTC')").await.unwrap();
    let before = (db.contents(&fleet.s0).await, db.contents(&fleet.s1).await);
    assert_eq!(before.0.1, before.1.1, "one schema on both shards");
    assert!(before.0.0[0].len() > 10 && before.1.0[0].len() > 10, "orders on both shards: {before:?}");
    assert_eq!(before.0.0[1], before.1.0[1], "the reference table alike on both");
    assert_eq!(before.1.0[2], "", "plain tables only on the default shard");

    let (ok, plain) = run_tool(&sc, "pg_dump", &["--no-owner", "--no-privileges"], None);
    assert!(ok, "pg_dump of the whole database through shardcar failed:\n{plain}");
    for t in ["orders", "countries", "settings"] {
        assert_eq!(plain.matches(&format!("CREATE TABLE public.{t} ")).count(), 1, "{t} once:\n{plain}");
    }
    let data = |prefix: &str| plain.lines().filter(|l| l.starts_with(prefix) && l.contains('\t')).count();
    assert_eq!(plain.lines().filter(|l| l.contains("\tnote ")).count(), 40, "every shard's orders");
    assert_eq!(data("fr\t") + data("jp\t") + data("br\t"), 3, "reference rows once:\n{plain}");
    assert_eq!(data("mode\t") + data("tz\t"), 2, "plain table rows once");

    let archive = tempfile::NamedTempFile::new().unwrap();
    let path = archive.path().to_str().unwrap();
    let (ok, out) = run_tool(&sc, "pg_dump", &["-Fc", "--no-owner", "--no-privileges", "-f", path], None);
    assert!(ok, "pg_dump -Fc through shardcar failed:\n{out}");
    for restore in ["custom", "plain"] {
        c.batch_execute("DROP VIEW noted; DROP TABLE orders, countries, settings").await.unwrap();
        let (ok, out) = match restore {
            "custom" => run_tool(
                &sc,
                "pg_restore",
                &["--no-owner", "--no-privileges", "--exit-on-error", "-d", "app", path],
                None,
            ),
            _ => run_tool(&sc, "psql", &["-v", "ON_ERROR_STOP=1", "-q"], Some(&plain)),
        };
        assert!(ok, "{restore} restore through shardcar failed:\n{out}");
        let after = (db.contents(&fleet.s0).await, db.contents(&fleet.s1).await);
        assert_eq!(after, before, "after the {restore} restore: same rows on the same shards, same schema everywhere");
    }
}
