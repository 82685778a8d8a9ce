//! Queries that read several tables across three shards: joins of
//! colocated tables on their keys, reference tables, subqueries, CTEs and
//! UNION ALL give one plain Postgres's answer; combinations that could
//! need rows of two shards at once are refused with a hint.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shardcar::localpg::{Cluster, Workspace};
use tokio_postgres::Client;

use crate::harness::{Fleet, Sidecar, direct, sqlstate, table, text_rows as rows};

/// Table names of one test: customers, orders and lines sharded by
/// customer (colocated), products a reference table, events sharded by a
/// policy of its own.
struct Schema {
    c: String,
    o: String,
    l: String,
    p: String,
    e: String,
}

impl Schema {
    fn new() -> Schema {
        Schema { c: table("cust"), o: table("ord"), l: table("line"), p: table("prod"), e: table("event") }
    }

    fn ddl(&self) -> Vec<String> {
        let Schema { c, o, l, p, e } = self;
        vec![
            format!("CREATE TABLE {c} (id bigint PRIMARY KEY, name text, region text, score int)"),
            format!(
                "CREATE TABLE {o} (id bigint, customer_id bigint, total numeric(10,2), status text, created date, PRIMARY KEY (customer_id, id))"
            ),
            format!("CREATE TABLE {l} (order_id bigint, customer_id bigint, product_id int, qty int)"),
            format!("CREATE TABLE {p} (id int PRIMARY KEY, name text, price numeric(8,2))"),
            format!("CREATE TABLE {e} (id bigint, customer_id bigint, kind text)"),
        ]
    }

    /// Three shards; the by-customer tables colocated, events hashed over
    /// the same shards listed in another order (another placement).
    fn config(&self, fleet: &Fleet, s2: &Cluster) -> String {
        let Schema { c, o, l, p, e } = self;
        fleet
            .config_with(
                4,
                &format!(
                    r#"
{}
[[policies]]
name = "by-customer"
plugin = "hash"
config = {{ shards = ["s0", "s1", "s2"] }}

[[policies]]
name = "by-event"
plugin = "hash"
config = {{ shards = ["s2", "s1", "s0"] }}

[[tables]]
name = "{c}"
key = "id"
policy = "by-customer"

[[tables]]
name = "{o}"
key = "customer_id"
policy = "by-customer"

[[tables]]
name = "{l}"
key = "customer_id"
policy = "by-customer"

[[tables]]
name = "{e}"
key = "customer_id"
policy = "by-event"
"#,
                    crate::harness::third_shard(s2)
                ),
            )
            .replace("reference_tables = []", "")
            .replace("read_replicas = false", &format!("read_replicas = false\nreference_tables = [\"{p}\"]"))
    }
}

/// The same rows through shardcar and into the plain Postgres.
async fn load(s: &Schema, via: &Client, one: &Client, rng: &mut StdRng) {
    let Schema { c, o, l, p, .. } = s;
    let mut statements = Vec::new();
    let regions = ["eu", "us", "apac", "latam"];
    let customers: Vec<String> = (1..=60)
        .map(|id| {
            let name = if rng.random_bool(0.05) { "NULL".into() } else { format!("'c{}'", rng.random_range(0..40)) };
            format!("({id}, {name}, '{}', {})", regions[rng.random_range(0..4)], rng.random_range(0..100))
        })
        .collect();
    statements.push(format!("INSERT INTO {c} VALUES {}", customers.join(", ")));
    let products: Vec<String> = (1..=20)
        .map(|id| format!("({id}, 'p{id}', {}.{:02})", rng.random_range(1..200), rng.random_range(0..100)))
        .collect();
    statements.push(format!("INSERT INTO {p} VALUES {}", products.join(", ")));
    let statuses = ["'new'", "'paid'", "'shipped'", "NULL"];
    let mut orders = Vec::new();
    let mut lines = Vec::new();
    for id in 1..=300 {
        // Customers 51..60 have no orders (LEFT JOIN finds nothing for them).
        let customer = rng.random_range(1..=50);
        let total = format!("{}.{:02}", rng.random_range(0..500), rng.random_range(0..100));
        let created = format!("'2024-{:02}-{:02}'", rng.random_range(1..13), rng.random_range(1..29));
        orders.push(format!("({id}, {customer}, {total}, {}, {created})", statuses[rng.random_range(0..4)]));
        for _ in 0..rng.random_range(0..4) {
            lines.push(format!("({id}, {customer}, {}, {})", rng.random_range(1..=20), rng.random_range(1..6)));
        }
    }
    for chunk in orders.chunks(50) {
        statements.push(format!("INSERT INTO {o} VALUES {}", chunk.join(", ")));
    }
    for chunk in lines.chunks(50) {
        statements.push(format!("INSERT INTO {l} VALUES {}", chunk.join(", ")));
    }
    for sql in statements {
        via.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        one.batch_execute(&sql).await.unwrap();
    }
}

/// A random query of a shape that reads several tables, and whether its
/// ORDER BY is total.
fn query(rng: &mut StdRng, s: &Schema) -> (String, bool) {
    let Schema { c, o, l, p, .. } = s;
    let x = rng.random_range(0..400);
    let score = rng.random_range(0..100);
    let region = ["eu", "us", "apac", "latam"][rng.random_range(0..4)];
    let limit = |rng: &mut StdRng| match rng.random_range(0..3) {
        0 => String::new(),
        1 => format!(" LIMIT {}", rng.random_range(1..40)),
        _ => format!(" LIMIT {} OFFSET {}", rng.random_range(1..20), rng.random_range(0..30)),
    };
    match rng.random_range(0..18) {
        0 => {
            let lim = limit(rng);
            (
                format!(
                    "SELECT c.id, c.name, o.id AS order_id, o.total FROM {c} c JOIN {o} o ON o.customer_id = c.id \
                     WHERE o.total > {x} ORDER BY o.id, c.id{lim}"
                ),
                true,
            )
        }
        1 => (
            format!(
                "SELECT c.region, count(o.id), sum(o.total), max(o.created) FROM {c} c LEFT JOIN {o} o \
                 ON o.customer_id = c.id GROUP BY c.region ORDER BY c.region"
            ),
            true,
        ),
        2 => (
            format!(
                "SELECT o.id, p.name, l.qty, l.qty * p.price AS amount FROM {o} o JOIN {l} l \
                 ON l.customer_id = o.customer_id AND l.order_id = o.id JOIN {p} p ON p.id = l.product_id \
                 WHERE o.status IS NOT NULL"
            ),
            false,
        ),
        3 => (
            format!("SELECT id, name FROM {c} WHERE id IN (SELECT customer_id FROM {o} WHERE total > {x}) ORDER BY id"),
            true,
        ),
        4 => {
            let not = if rng.random_bool(0.5) { "NOT " } else { "" };
            (
                format!(
                    "SELECT c.id FROM {c} c WHERE {not}EXISTS (SELECT 1 FROM {o} o WHERE o.customer_id = c.id \
                     AND o.status = 'paid') AND c.score > {score}"
                ),
                false,
            )
        }
        5 => (
            format!(
                "SELECT c.id, (SELECT count(*) FROM {o} o WHERE o.customer_id = c.id) AS orders, \
                 (SELECT max(total) FROM {o} o WHERE o.customer_id = c.id) AS biggest FROM {c} c ORDER BY c.id"
            ),
            true,
        ),
        6 => (
            format!(
                "SELECT c.region, sum(t.spent), count(*) FROM {c} c JOIN (SELECT customer_id, sum(total) AS spent \
                 FROM {o} GROUP BY customer_id) t ON t.customer_id = c.id GROUP BY c.region"
            ),
            false,
        ),
        7 => {
            let lim = limit(rng);
            (
                format!(
                    "WITH big AS (SELECT customer_id, id, total FROM {o} WHERE total > {x}) \
                     SELECT c.name, b.id, b.total FROM big b JOIN {c} c ON c.id = b.customer_id \
                     WHERE c.region = '{region}' ORDER BY b.total DESC, b.id{lim}"
                ),
                true,
            )
        }
        8 => {
            let (order, total) = match rng.random_range(0..3) {
                0 => (String::new(), false),
                1 => (" ORDER BY 1 DESC, 2".to_string(), true),
                _ => (format!(" ORDER BY what NULLS FIRST, id LIMIT {}", rng.random_range(1..30)), true),
            };
            (
                format!(
                    "SELECT id, 'customer' AS what FROM {c} WHERE score > {score} UNION ALL \
                     SELECT customer_id, status FROM {o} WHERE total < {x}{order}"
                ),
                total,
            )
        }
        9 => (
            format!(
                "SELECT customer_id, id, rank() OVER (PARTITION BY customer_id ORDER BY total DESC, id) AS r, \
                 sum(total) OVER (PARTITION BY customer_id) AS spent FROM {o} WHERE status IS DISTINCT FROM 'new'"
            ),
            false,
        ),
        10 => (
            format!(
                "SELECT c.id, top.id, top.total FROM {c} c, LATERAL (SELECT id, total FROM {o} o \
                 WHERE o.customer_id = c.id ORDER BY total DESC, id LIMIT 2) top WHERE c.region = '{region}' \
                 ORDER BY c.id, top.total DESC, top.id"
            ),
            true,
        ),
        11 => (
            format!(
                "SELECT count(*), sum(l.qty) FROM {l} l WHERE l.customer_id IN (SELECT id FROM {c} WHERE region = '{region}') \
                 AND l.product_id IN (SELECT id FROM {p} WHERE price > {x})"
            ),
            true,
        ),
        14 => (
            format!(
                "SELECT c.region, count(DISTINCT o.customer_id) AS buyers, round(avg(o.total), 2) AS mean, \
                 sum(o.total) FILTER (WHERE o.status = 'paid') AS paid FROM {c} c JOIN {o} o ON o.customer_id = c.id \
                 GROUP BY c.region HAVING count(*) > {} ORDER BY 1",
                rng.random_range(0..90)
            ),
            true,
        ),
        15 => (
            format!(
                "SELECT o.status, max(o.total) - min(o.total) AS spread, count(*)::int AS n, \
                 count(DISTINCT o.created) AS days, avg(DISTINCT o.total) AS mean FROM {o} o \
                 GROUP BY o.status HAVING sum(o.total) > {x} ORDER BY spread DESC, 1"
            ),
            true,
        ),
        16 => (
            format!(
                "SELECT count(DISTINCT customer_id) AS customers, count(*), sum(total) / count(*) AS mean, \
                 count(DISTINCT status) AS statuses, sum(DISTINCT total) FROM {o} WHERE total > {x}"
            ),
            true,
        ),
        17 => (
            format!(
                "SELECT c.region, bool_and(o.total > {x}) AS all_big, bool_or(o.status = 'paid') AS any_paid, \
                 bit_or(c.score) AS bits, bit_xor(o.id::int) AS x, every(o.created > '2024-02-01') AS recent, \
                 length(string_agg(o.status, ', ')) AS len FROM {c} c JOIN {o} o ON o.customer_id = c.id \
                 GROUP BY c.region ORDER BY 1"
            ),
            true,
        ),
        12 => (
            format!(
                "SELECT DISTINCT c.region, o.status FROM {c} c JOIN {o} o ON o.customer_id = c.id \
                 ORDER BY c.region, o.status"
            ),
            true,
        ),
        _ => (
            format!(
                "SELECT d.customer_id, d.n FROM (SELECT customer_id, count(*) AS n FROM {o} GROUP BY customer_id) d \
                 WHERE d.n > {} ORDER BY d.n DESC, d.customer_id",
                rng.random_range(0..8)
            ),
            true,
        ),
    }
}

#[tokio::test]
async fn queries_across_colocated_and_reference_tables_answer_like_one_postgres() {
    let fleet = Fleet::shared();
    let ws = Workspace::new().unwrap();
    let s2 = ws.primary("s2").unwrap();
    let reference = ws.primary("reference").unwrap();
    let one = direct(&reference).await;
    let schema = Schema::new();
    let sidecar = Sidecar::start(&schema.config(fleet, &s2));
    let c = sidecar.connect().await;
    for ddl in schema.ddl() {
        c.batch_execute(&ddl).await.unwrap();
        one.batch_execute(&ddl).await.unwrap();
    }
    let mut rng = StdRng::seed_from_u64(20261203);
    load(&schema, &c, &one, &mut rng).await;
    // Every shard holds some of the orders.
    for shard in [&fleet.s0, &fleet.s1, &s2] {
        let n: i64 =
            direct(shard).await.query_one(&format!("SELECT count(*) FROM {}", schema.o), &[]).await.unwrap().get(0);
        assert!(n > 50, "orders spread over the three shards: {n}");
    }

    let mut shapes = std::collections::BTreeMap::new();
    for _ in 0..420 {
        let (sql, total) = query(&mut rng, &schema);
        crate::harness::assert_same_rows(&c, &one, &sql, total).await;
        *shapes.entry(sql.split_whitespace().take(4).collect::<Vec<_>>().join(" ")).or_insert(0) += 1;
    }
    println!("compared 420 queries: {shapes:?}");
    // A key condition on any of the joined tables puts the query on one
    // shard, and explain says the tables are colocated.
    let sql = format!("SELECT * FROM {} o JOIN {} c ON c.id = o.customer_id WHERE c.id = 7", schema.o, schema.c);
    let query: String = sql
        .chars()
        .map(|ch| match ch {
            ' ' => "+".to_string(),
            '=' => "%3D".to_string(),
            ch => ch.to_string(),
        })
        .collect();
    let explained: shardcar_api::Explanation = sidecar.admin_json(&format!("/api/v1/explain?sql={query}"));
    assert!(explained.target.is_some(), "{explained:?}");
    let colocated = &explained.statements[0].colocated;
    assert!(
        colocated.contains(&schema.o) && colocated.contains(&schema.c) && colocated.contains(&schema.l),
        "{colocated:?}"
    );
    let first = rows(&one, &format!("SELECT count(*) FROM {} WHERE customer_id = 7", schema.o)).await.unwrap();
    let joined = rows(&c, &format!("SELECT count(*) FROM ({sql}) j")).await.unwrap();
    assert_eq!(joined, first);
}

#[tokio::test]
async fn combinations_that_could_span_shards_are_refused_with_a_hint() {
    let fleet = Fleet::shared();
    let ws = Workspace::new().unwrap();
    let s2 = ws.primary("s2").unwrap();
    let schema = Schema::new();
    let sidecar = Sidecar::start(&schema.config(fleet, &s2));
    let client = sidecar.connect().await;
    for ddl in schema.ddl() {
        client.batch_execute(&ddl).await.unwrap();
    }
    let Schema { c, o, p, e, .. } = &schema;
    let plain = table("plain");
    for (sql, message, hint) in [
        (
            format!("SELECT * FROM {o} o JOIN {e} e ON e.customer_id = o.customer_id"),
            "not colocated",
            "same plugin and config",
        ),
        (format!("SELECT * FROM {o} o JOIN {c} c ON c.name = o.status"), "equal shard keys", "join them on their keys"),
        (format!("SELECT * FROM {c} WHERE id NOT IN (SELECT customer_id FROM {o})"), "equal shard keys", "join them"),
        (
            format!("SELECT * FROM {c} WHERE id IN (SELECT customer_id FROM {o} ORDER BY total DESC LIMIT 3)"),
            "LIMIT or OFFSET",
            "tie the subquery",
        ),
        (format!("SELECT * FROM {o} WHERE total > (SELECT avg(total) FROM {o})"), "equal shard keys", "join them"),
        (format!("SELECT count(*) FROM (SELECT DISTINCT status FROM {o}) s"), "DISTINCT", "group"),
        (format!("SELECT id, rank() OVER (ORDER BY total) FROM {o}"), "window functions", "partition"),
        (format!("SELECT id FROM {c} UNION ALL SELECT id FROM {p}"), "reads no sharded table", "shard="),
        (format!("SELECT * FROM {o} o JOIN {plain} x ON x.id = o.id"), "neither sharded nor a reference", "shard="),
        (format!("SELECT id FROM {c} UNION SELECT customer_id FROM {o}"), "UNION ALL", "shard="),
    ] {
        let e = client.simple_query(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{sql}: {e}");
        let db = e.as_db_error().unwrap();
        assert!(db.message().contains(message), "{sql}: {}", db.message());
        let h = db.hint().unwrap_or_default();
        assert!(h.contains(hint), "{sql}: {h}");
    }
    // Pinned to one shard by a key, the colocated join runs there; a join
    // that may need another shard is refused even then.
    client
        .batch_execute(&format!(
            "INSERT INTO {c} VALUES (7, 'seven', 'eu', 1); INSERT INTO {o} VALUES (1, 7, 10.00, 'paid', '2024-01-01')"
        ))
        .await
        .unwrap();
    let got =
        rows(&client, &format!("SELECT c.name, o.total FROM {c} c JOIN {o} o ON o.customer_id = c.id WHERE c.id = 7"))
            .await
            .unwrap();
    assert_eq!(got, [[Some("seven".to_string()), Some("10.00".to_string())]]);
    let e = client
        .simple_query(&format!("SELECT * FROM {c} c JOIN {o} o ON o.status = c.name WHERE c.id = 7"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    // The session carries on.
    assert_eq!(rows(&client, &format!("SELECT count(*) FROM {o}")).await.unwrap(), [[Some("1".to_string())]]);
}

#[tokio::test]
async fn a_large_join_across_shards_streams_in_flat_memory() {
    const KEYS: i64 = 333_334;
    let fleet = Fleet::shared();
    let ws = Workspace::new().unwrap();
    let s2 = ws.primary("s2").unwrap();
    let schema = Schema::new();
    let Schema { c, o, .. } = &schema;
    // Each shard's rows written there directly (where they land does not
    // matter for memory): every customer with two orders, per shard.
    for shard in [&fleet.s0, &fleet.s1, &s2] {
        direct(shard)
            .await
            .batch_execute(&format!(
                "CREATE UNLOGGED TABLE {c} (id bigint, name text, region text, score int); \
                 CREATE UNLOGGED TABLE {o} (id bigint, customer_id bigint, total numeric(10,2), status text, created date); \
                 INSERT INTO {c} SELECT g, repeat('n', 60), 'eu', 1 FROM generate_series(1, {KEYS}) g; \
                 INSERT INTO {o} SELECT g * 2 + k, g, 1.50, 'paid', '2024-01-01' FROM generate_series(1, {KEYS}) g, generate_series(0, 1) k"
            ))
            .await
            .unwrap();
    }
    let sidecar = Sidecar::start(&schema.config(fleet, &s2));
    let sql =
        format!("SELECT c.id, c.name, o.id, o.total FROM {c} c JOIN {o} o ON o.customer_id = c.id ORDER BY c.id, o.id");
    let crate::harness::Streamed { rows, bytes, before_kib: before, peak_kib: peak } =
        crate::harness::stream_measuring_rss(&sidecar, &sql).await;
    for shard in [&fleet.s0, &fleet.s1] {
        direct(shard).await.batch_execute(&format!("DROP TABLE {c}, {o}")).await.unwrap();
    }
    assert_eq!(rows, 3 * 2 * KEYS as u64, "every shard's joined rows, once");
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "join of {rows} rows across 3 shards ({} MiB on the wire): sidecar RSS {} MiB before, {} MiB at most (+{growth_mib} MiB)",
        bytes >> 20,
        before / 1024,
        peak / 1024
    );
    assert!(growth_mib < 64, "memory grew with the result: +{growth_mib} MiB for {} MiB of rows", bytes >> 20);
}
