//! Statements across shards against one plain Postgres: the same script
//! runs through shardcar on a table sharded over both shards and directly
//! on one Postgres table, and what each step answers (rows and their
//! order, counts, SQLSTATEs) and what the tables hold at the end must be
//! the same — savepoints, portals and cursors read while the transaction
//! writes, and the bulk inserts ORMs send.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{Fleet, Sidecar, direct, sqlstate};
use crate::twophase::{config, per_shard, prepared};

/// A table sharded over s0 and s1 by customer_id, through a shardcar with
/// two-phase commit (and `routing` lines of the test's own), and a plain
/// table of the same columns on s0, reached directly.
struct Differential {
    fleet: &'static Fleet,
    t: String,
    one: String,
    plain: Client,
    sc: Sidecar,
}

impl Differential {
    async fn new(prefix: &str, routing: &str) -> Differential {
        let fleet = Fleet::shared();
        let t = fleet.hashed_table(prefix).await;
        let one = format!("{t}_one");
        let plain = direct(&fleet.s0).await;
        plain.batch_execute(&format!("CREATE TABLE {one} (customer_id bigint, note text)")).await.unwrap();
        let config = config(fleet, &t).replace("read_replicas = false", &format!("read_replicas = false\n{routing}"));
        let sc = Sidecar::start(&config);
        Differential { fleet, t, one, plain, sc }
    }
}

/// A simple query's answer in one line: rows as `a|b` (NULL written out),
/// then `#n` for each command's count.
fn answer(messages: &[SimpleQueryMessage]) -> String {
    let parts = messages.iter().filter_map(|m| match m {
        SimpleQueryMessage::Row(r) => {
            Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|"))
        }
        SimpleQueryMessage::CommandComplete(n) => Some(format!("#{n}")),
        _ => None,
    });
    parts.collect::<Vec<_>>().join(" ")
}

/// The outcome of each statement (its SQLSTATE when it failed), and the
/// rows at the end: run through shardcar and on one plain Postgres table,
/// with the simple protocol or the extended one.
async fn savepoint_script(c: &Client, t: &str, extended: bool) -> (Vec<String>, Vec<(i64, String)>) {
    let script = [
        "BEGIN".to_string(),
        format!("INSERT INTO {t} VALUES (1, 'a')"), // s0
        "SAVEPOINT a".into(),
        format!("INSERT INTO {t} VALUES (3, 'b')"), // s1 joins after the savepoint
        format!("INSERT INTO {t} VALUES (2, 'c')"), // s0
        "ROLLBACK TO SAVEPOINT a".into(),           // undoes 3 and 2, on both shards
        format!("INSERT INTO {t} VALUES (4, 'd')"), // s1
        "SAVEPOINT b".into(),
        format!("INSERT INTO {t} VALUES (8, 'e')"), // s1
        "RELEASE SAVEPOINT b".into(),
        "SAVEPOINT c".into(),
        format!("INSERT INTO {t} VALUES (1, 'dup')"), // s0: a unique violation
        format!("INSERT INTO {t} VALUES (42, 'x')"),  // refused: the transaction failed
        "RELEASE SAVEPOINT c".into(),                 // so is this
        "ROLLBACK TO SAVEPOINT c".into(),             // but this recovers it
        format!("INSERT INTO {t} VALUES (42, 'f')"),  // s0
        "SAVEPOINT d".into(),
        "ROLLBACK TO SAVEPOINT nope".into(),        // no such savepoint: failed again
        "ROLLBACK TO SAVEPOINT d".into(),           // d is still there
        format!("INSERT INTO {t} VALUES (3, 'g')"), // s1
        "COMMIT".into(),
    ];
    let mut outcomes = Vec::new();
    for sql in &script {
        let result = if extended { c.execute(sql.as_str(), &[]).await.map(|_| ()) } else { c.batch_execute(sql).await };
        outcomes.push(match result {
            Ok(()) => "ok".to_string(),
            Err(e) => sqlstate(&e).to_string(),
        });
    }
    let rows = c.query(&format!("SELECT customer_id, note FROM {t} ORDER BY 1"), &[]).await.unwrap();
    (outcomes, rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[tokio::test]
async fn savepoints_across_shards_behave_as_on_one_postgres() {
    for extended in [false, true] {
        let d = Differential::new("savepoints", "").await;
        for shard in [&d.fleet.s0, &d.fleet.s1] {
            direct(shard).await.batch_execute(&format!("CREATE UNIQUE INDEX ON {} (customer_id)", d.t)).await.unwrap();
        }
        d.plain.batch_execute(&format!("CREATE UNIQUE INDEX ON {} (customer_id)", d.one)).await.unwrap();
        let c = d.sc.connect().await;
        let through = savepoint_script(&c, &d.t, extended).await;
        let expected = savepoint_script(&d.plain, &d.one, extended).await;
        assert_eq!(through, expected, "extended: {extended}");
        assert_eq!(expected.1.len(), 5, "{expected:?}");
        // Both shards took part, and each holds its own rows.
        assert_eq!(per_shard(d.fleet, &d.t).await, (2, 3));
    }
}

/// A portal read a page at a time while the transaction writes on the same
/// shards between pages — rows read, then the table at the end — through
/// shardcar and on one plain Postgres table. Its pages are over 1,024 rows
/// per shard, so each shard's part is fetched in several (`scatter::leg`).
async fn portal_between_writes(c: &mut Client, t: &str) -> (Vec<(i64, String)>, Vec<(i64, String)>) {
    let txn = c.transaction().await.unwrap();
    let portal = txn.bind(&format!("SELECT customer_id, note FROM {t} ORDER BY customer_id"), &[]).await.unwrap();
    let mut read = Vec::new();
    let between = [
        format!("UPDATE {t} SET note = 'one' WHERE customer_id = 2999"),
        format!("INSERT INTO {t} VALUES (5001, 'new'), (5002, 'new'), (5003, 'new')"),
        format!("UPDATE {t} SET note = 'many' WHERE customer_id > 2990"),
        format!("DELETE FROM {t} WHERE customer_id = 4000"),
    ];
    for (page, sql) in (0..).zip(between.iter().chain(std::iter::repeat(&String::new()))) {
        let rows = txn.query_portal(&portal, 700).await.unwrap();
        if rows.is_empty() {
            break;
        }
        read.extend(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))));
        if !sql.is_empty() {
            txn.batch_execute(sql).await.unwrap_or_else(|e| panic!("page {page}: {sql}: {e:?}"));
        }
    }
    txn.commit().await.unwrap();
    let rows = c.query(&format!("SELECT customer_id, note FROM {t} ORDER BY 1, 2"), &[]).await.unwrap();
    (read, rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[tokio::test]
async fn a_portal_across_shards_waits_while_its_transaction_writes_on_them() {
    let Differential { fleet, t, one, mut plain, sc } =
        Differential::new("paged", "allow_broadcast_writes = true").await;
    let mut c = sc.connect().await;
    for (client, table) in [(&c, &t), (&plain, &one)] {
        for chunk in (1..=4000).collect::<Vec<i64>>().chunks(500) {
            let values: Vec<String> = chunk.iter().map(|id| format!("({id}, 'row {id}')")).collect();
            client.batch_execute(&format!("INSERT INTO {table} VALUES {}", values.join(", "))).await.unwrap();
        }
    }
    let (s0, s1) = per_shard(fleet, &t).await;
    assert!(s0 > 1024 && s1 > 1024, "several pages on each shard: {s0}, {s1}");
    let through = portal_between_writes(&mut c, &t).await;
    let expected = portal_between_writes(&mut plain, &one).await;
    assert_eq!(through.0.len(), 4000);
    assert_eq!(through, expected);
    assert_eq!(prepared(fleet, &t).await, 0, "every two-phase commit finished");
}

/// What each step of a cursor script gives (rows, or the count of a MOVE
/// or CLOSE, or the SQLSTATE), through shardcar and on one plain Postgres.
async fn cursor_script(c: &Client, t: &str) -> Vec<String> {
    let script = [
        "BEGIN".to_string(),
        format!("DECLARE c CURSOR FOR SELECT customer_id, note FROM {t} WHERE customer_id > 2 ORDER BY customer_id"),
        // Written after DECLARE: the cursor does not see them (its snapshot).
        format!("INSERT INTO {t} VALUES (100, 'late'), (101, 'late')"),
        "FETCH 3 FROM c".into(),
        "MOVE 2 IN c".into(),
        "FETCH NEXT FROM c".into(),
        format!("UPDATE {t} SET note = 'changed' WHERE customer_id = 9"),
        "FETCH FORWARD 2 FROM c".into(),
        "FETCH ALL FROM c".into(),
        "FETCH 1 FROM c".into(),
        "CLOSE c".into(),
        "FETCH 1 FROM c".into(),
        "ROLLBACK".into(),
        "BEGIN".into(),
        format!("DECLARE d CURSOR FOR SELECT count(*), max(note) FROM {t}"),
        "FETCH ALL IN d".into(),
        "DECLARE d CURSOR FOR SELECT 1".into(), // its name is taken
        "ROLLBACK".into(),
        "BEGIN".into(),
        format!("DECLARE e CURSOR FOR SELECT nope FROM {t}"),
        "ROLLBACK".into(),
        format!("DECLARE outside CURSOR FOR SELECT * FROM {t}"),
    ];
    let mut out = Vec::new();
    for sql in &script {
        out.push(match c.simple_query(sql).await {
            Ok(messages) => answer(&messages),
            Err(e) => sqlstate(&e).to_string(),
        });
    }
    out
}

#[tokio::test]
async fn a_cursor_across_shards_reads_as_on_one_postgres() {
    let Differential { t, one, plain, sc, .. } = Differential::new("cursors", "").await;
    let c = sc.connect().await;
    let values: Vec<String> = (1..=20).map(|id| format!("({id}, 'row {id}')")).collect();
    for (client, table) in [(&c, &t), (&plain, &one)] {
        client.batch_execute(&format!("INSERT INTO {table} VALUES {}", values.join(", "))).await.unwrap();
    }
    let through = cursor_script(&c, &t).await;
    let expected = cursor_script(&plain, &one).await;
    assert_eq!(through, expected);
    assert_eq!(expected[3], "3|row 3 4|row 4 5|row 5 #3", "{expected:?}");
    assert!(expected.iter().any(|o| o == "42P03"), "a taken name refused: {expected:?}");
    // A driver's DECLARE with parameters (the extended protocol).
    for (client, table) in [(&c, &t), (&plain, &one)] {
        client.batch_execute("BEGIN").await.unwrap();
        let declare =
            format!("DECLARE x CURSOR FOR SELECT customer_id FROM {table} WHERE customer_id >= $1 ORDER BY 1");
        client.execute(&declare, &[&15i64]).await.unwrap();
        let rows = client.simple_query("FETCH 4 FROM x").await.unwrap();
        let ids: Vec<&str> = rows
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0),
                _ => None,
            })
            .collect();
        assert_eq!(ids, ["15", "16", "17", "18"], "{table}");
        // Binary results of a FETCH: Postgres converts them; shardcar
        // has its shards' text and says so.
        let binary = client.query("FETCH 1 FROM x", &[]).await;
        match table == &t {
            true => assert_eq!(sqlstate(&binary.unwrap_err()), "0A000"),
            false => assert_eq!(binary.unwrap()[0].get::<_, i64>(0), 19),
        }
        client.batch_execute("ROLLBACK").await.unwrap();
    }
}

/// An ORM's bulk insert, arrays bound, through shardcar and on one plain
/// Postgres: RETURNING rows, tags, and what the table holds at the end.
async fn unnest_script(c: &mut Client, t: &str) -> Vec<String> {
    let ids: Vec<i64> = vec![5, 1, 4, 2, 3, 8, 7, 6];
    let notes: Vec<Option<&str>> =
        vec![Some("e"), Some("a"), None, Some("b"), Some("c, \"quoted\""), Some("h"), Some("g"), Some("f")];
    let mut out = Vec::new();
    let rows = |rows: Vec<tokio_postgres::Row>| -> String {
        rows.iter()
            .map(|r| format!("{}:{:?}", r.get::<_, i64>(0), r.get::<_, Option<String>>(1)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let insert = format!(
        "INSERT INTO {t} (customer_id, note) SELECT * FROM unnest($1::bigint[], $2::text[]) RETURNING customer_id, note"
    );
    out.push(rows(c.query(&insert, &[&ids, &notes]).await.unwrap()));
    // Columns named through an alias, in another order; no RETURNING: a count.
    let insert =
        format!("INSERT INTO {t} (note, customer_id) SELECT n, k FROM unnest($1::text[], $2::bigint[]) AS u(n, k)");
    let more: Vec<i64> = (20..30).collect();
    let notes: Vec<String> = more.iter().map(|i| format!("n{i}")).collect();
    out.push(c.execute(&insert, &[&notes, &more]).await.unwrap().to_string());
    // In a transaction that rolls back: nothing anywhere.
    let txn = c.transaction().await.unwrap();
    let insert =
        format!("INSERT INTO {t} (customer_id, note) SELECT * FROM unnest($1::bigint[], $2::text[]) RETURNING note");
    let rolled: Vec<i64> = vec![100, 101, 102];
    let gone = txn.query(&insert, &[&rolled, &vec!["x", "y", "z"]]).await.unwrap();
    out.push(gone.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join(" "));
    txn.rollback().await.unwrap();
    let all = c.query(&format!("SELECT customer_id, note FROM {t} ORDER BY 1"), &[]).await.unwrap();
    out.push(rows(all));
    out
}

#[tokio::test]
async fn a_bulk_insert_from_unnest_is_split_by_key_and_returns_rows_in_input_order() {
    let Differential { fleet, t, one, mut plain, sc } = Differential::new("unnest", "").await;
    let mut c = sc.connect().await;
    let through = unnest_script(&mut c, &t).await;
    let expected = unnest_script(&mut plain, &one).await;
    assert_eq!(through, expected);
    assert!(expected[0].starts_with("5:Some(\"e\") 1:Some(\"a\") 4:None"), "{expected:?}");
    // Every row on the shard its key routes to.
    let (s0, s1) = per_shard(fleet, &t).await;
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == 18, "{s0} + {s1}");
    for id in [1i64, 2, 3, 4, 5, 6, 7, 8, 20, 29] {
        let n: i64 =
            c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = $1"), &[&id]).await.unwrap().get(0);
        assert_eq!(n, 1, "customer {id} is found where its key routes");
    }
    // Arrays of different lengths: Postgres pads the shorter ones with
    // NULLs; split by shard they would not line up, so it is refused.
    let insert = format!("INSERT INTO {t} (customer_id, note) SELECT * FROM unnest($1::bigint[], $2::text[])");
    let e = c.execute(&insert, &[&vec![1i64, 2], &vec!["a"]]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    // Arrays written in a simple query's text: refused, never sent whole to each shard.
    let literal = format!(
        "INSERT INTO {t} (customer_id, note) SELECT * FROM unnest('{{1,2,3,4}}'::bigint[], '{{a,b,c,d}}'::text[])"
    );
    let e = c.simple_query(&literal).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{e:?}");
    assert_eq!(per_shard(fleet, &t).await, (s0, s1), "nothing written");
}

/// Bulk inserts whose rows are VALUES: plain, and selected from a VALUES
/// list as SQLAlchemy's bulk insert with RETURNING sends it (sorted by a
/// counter) — RETURNING rows as Postgres gives them, in the order written.
async fn values_script(c: &Client, t: &str) -> Vec<String> {
    let rows = |messages: Vec<tokio_postgres::SimpleQueryMessage>| answer(&messages);
    let mut out = Vec::new();
    let plain = format!("INSERT INTO {t} VALUES (7, 'g'), (1, 'a'), (6, 'f'), (2, 'b') RETURNING customer_id, note");
    out.push(rows(c.simple_query(&plain).await.unwrap()));
    let sorted = format!(
        "INSERT INTO {t} (note, customer_id) SELECT p0::text, p1::bigint FROM (VALUES ('e', 5, 0), ('c', 3, 1), (NULL, 4, 2), ('h', 8, 3)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING customer_id, note"
    );
    out.push(rows(c.simple_query(&sorted).await.unwrap()));
    let bound = format!(
        "INSERT INTO {t} (note, customer_id) SELECT p0::text, p1::bigint FROM (VALUES ($1, $2, 0), ($3, $4, 1), ($5, $6, 2)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING customer_id, note"
    );
    // VALUES columns of parameters are text to Postgres: the casts make the key.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [&"k", &"11", &"i", &"9", &"j", &"10"];
    let got = c.query(&bound, &params).await.unwrap();
    out.push(
        got.iter().map(|r| format!("{}|{}", r.get::<_, i64>(0), r.get::<_, String>(1))).collect::<Vec<_>>().join(" "),
    );
    out.push(rows(c.simple_query(&format!("SELECT customer_id, note FROM {t} ORDER BY 1")).await.unwrap()));
    out
}

#[tokio::test]
async fn bulk_inserts_of_values_return_rows_in_the_order_written() {
    let Differential { fleet, t, one, plain, sc } = Differential::new("values", "").await;
    let c = sc.connect().await;
    let through = values_script(&c, &t).await;
    let expected = values_script(&plain, &one).await;
    assert_eq!(through, expected);
    assert_eq!(expected[1], "5|e 3|c 4|NULL 8|h #4");
    let (s0, s1) = per_shard(fleet, &t).await;
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == 11, "{s0} + {s1}");
    for id in 1i64..=11 {
        let n: i64 =
            c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = $1"), &[&id]).await.unwrap().get(0);
        assert_eq!(n, 1, "customer {id} is found where its key routes");
    }
    // Sorted by a column that does not rise as written: refused, nothing written.
    let min = format!("SELECT min(customer_id) FROM {t}");
    let on0: i64 = direct(&fleet.s0).await.query_one(&min, &[]).await.unwrap().get(0);
    let on1: i64 = direct(&fleet.s1).await.query_one(&min, &[]).await.unwrap().get(0);
    let shuffled = format!(
        "INSERT INTO {t} (note, customer_id) SELECT n, k FROM (VALUES ('x', {on0}, 2), ('y', {on1}, 1)) AS v(n, k, s) ORDER BY s"
    );
    assert_eq!(sqlstate(&c.simple_query(&shuffled).await.unwrap_err()), "0A000");
    assert_eq!(per_shard(fleet, &t).await, (s0, s1));
}
