//! COPY in and out through shardcar, to the routed shard.

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};

use crate::harness::{Fleet, Sidecar, direct, run_tool, sqlstate, table};

#[tokio::test]
async fn copy_in_and_out_reach_the_routed_shard() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let t = table("copied");
    direct(&fleet.s1).await.batch_execute(&format!("CREATE TABLE {t} (id int, name text)")).await.unwrap();
    let c = sc.connect().await;

    const ROWS: usize = 50_000;
    let sink = c.copy_in(&format!("/* shardcar: shard=s1 */ COPY {t} FROM STDIN")).await.unwrap();
    futures_util::pin_mut!(sink);
    let mut chunk = String::new();
    for i in 0..ROWS {
        chunk.push_str(&format!("{i}\tname {i}\n"));
        if chunk.len() > 64 * 1024 {
            sink.send(Bytes::from(std::mem::take(&mut chunk))).await.unwrap();
        }
    }
    sink.send(Bytes::from(chunk)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), ROWS as u64);

    let n: i64 = direct(&fleet.s1).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, ROWS as i64);

    let stream =
        c.copy_out(&format!("/* shardcar: shard=s1 */ COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT")).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), ROWS);
    assert_eq!(text.lines().nth(12_345), Some("12345\tname 12345"));
}

#[tokio::test]
async fn a_failing_copy_reports_the_error_and_the_session_continues() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let t = table("badcopy");
    let c = sc.connect().await;
    c.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();
    let sink = c.copy_in(&format!("COPY {t} FROM STDIN")).await.unwrap();
    futures_util::pin_mut!(sink);
    let _ = sink.send(Bytes::from_static(b"1\nnot a number\n3\n")).await;
    let err = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&err), "22P02");
    assert_eq!(
        c.query_one(&format!("/* shardcar: role=primary */ SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
}

#[tokio::test]
async fn psql_copy_and_scripts() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let t = table("psqlcopy");
    let script = format!(
        "\\set ON_ERROR_STOP 1
CREATE TABLE {t} (id int, note text);
\\copy {t} from stdin
1\tone
2\ttwo
\\.
BEGIN;
INSERT INTO {t} VALUES (3, 'three');
SAVEPOINT s;
INSERT INTO {t} VALUES (4, 'four');
ROLLBACK TO SAVEPOINT s;
COMMIT;
\\copy (SELECT id, note FROM {t} ORDER BY id) to stdout
"
    );
    let (ok, out) = run_tool(&sc, "psql", &["-X", "-q", "-f", "-"], Some(&script));
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "1\tone\n2\ttwo\n3\tthree");
}

/// A client that writes its whole COPY (more than shardcar forwards at
/// once) and CopyDone in one go, then waits: every row must still reach the
/// server. (Once, shardcar stopped forwarding at its flush threshold and
/// waited for the client, which was waiting for it.)
#[tokio::test]
async fn a_copy_written_in_one_go_is_forwarded_whole() {
    use postgres_protocol::message::backend::Message;
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    let t = table("onego");
    direct(&fleet.s0).await.batch_execute(&format!("CREATE TABLE {t} (id int, name text)")).await.unwrap();
    let (mut s, mut rbuf) = crate::harness::logged_in(sc.port).await;
    let mut out = bytes::BytesMut::new();
    frontend::query(&format!("/* shardcar: shard=s0 */ COPY {t} FROM STDIN"), &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    loop {
        match crate::harness::next_message(&mut s, &mut rbuf).await {
            Some(Message::CopyInResponse(_)) => break,
            Some(_) => {}
            None => panic!("closed before COPY started"),
        }
    }
    // Rows in CopyData messages of about 64 KiB, as tokio-postgres sends them.
    const ROWS: usize = 100_000;
    let mut out = bytes::BytesMut::new();
    let mut chunk = String::new();
    for i in 0..ROWS {
        chunk.push_str(&format!("{i}\tname {i}\n"));
        if chunk.len() > 64 * 1024 || i == ROWS - 1 {
            frontend::CopyData::new(Bytes::from(std::mem::take(&mut chunk))).unwrap().write(&mut out);
        }
    }
    frontend::copy_done(&mut out);
    assert!(out.len() > 256 * 1024, "more than shardcar reads ahead and forwards at once");
    s.write_all(&out).await.unwrap();
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match crate::harness::next_message(&mut s, &mut rbuf).await {
                Some(Message::CommandComplete(c)) => return c.tag().unwrap().to_string(),
                Some(Message::ErrorResponse(_)) | None => panic!("the COPY failed"),
                Some(_) => {}
            }
        }
    })
    .await
    .expect("the COPY completes (shardcar forwards all it read)");
    assert_eq!(done, format!("COPY {ROWS}"));
}

/// Runs `COPY` through psql with `data` on stdin (the simple protocol, as
/// psql and pgbench send it); returns psql's success and output (errors
/// with their SQLSTATE).
fn psql_copy(sc: &Sidecar, copy: &str, data: &str) -> (bool, String) {
    let args = ["-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-c", copy];
    run_tool(sc, "psql", &args, Some(&format!("{data}\\.\n")))
}

#[tokio::test]
async fn copy_without_a_shard_splits_its_rows_by_key() {
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("copysplit").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    const ROWS: i64 = 20_000;
    let data: String = (1..=ROWS).map(|i| format!("{i}\tnote {i} with a\\ttab\n")).collect();
    let (ok, out) = psql_copy(&sc, &format!("\\copy {t} from stdin"), &data);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("COPY {ROWS}")), "one total for all shards: {out}");
    let on = async |shard: &shardcar::localpg::Cluster| -> i64 {
        direct(shard).await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0)
    };
    let (s0, s1) = (on(&fleet.s0).await, on(&fleet.s1).await);
    assert!(s0 > 0 && s1 > 0 && s0 + s1 == ROWS, "{s0} + {s1}");
    // Each row is where a query for its key is routed.
    for id in (1..=ROWS).step_by(997) {
        let sql = format!("SELECT note FROM {t} WHERE customer_id = {id}");
        let note: String = c.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(note, format!("note {id} with a\ttab"), "row {id} arrives unchanged");
    }
    // A column list naming the key elsewhere.
    let (ok, out) = psql_copy(&sc, &format!("\\copy {t} (note, customer_id) from stdin"), "a\t100001\nb\t100002\n");
    assert!(ok, "{out}");
    assert_eq!(on(&fleet.s0).await + on(&fleet.s1).await, ROWS + 2);
    // And out again: COPY TO of the whole table concatenates the shards'
    // data; of a query with a key, only that key's shard answers.
    let (ok, out) =
        crate::harness::run_tool(&sc, "psql", &["-v", "ON_ERROR_STOP=1", "-c", &format!("COPY {t} TO STDOUT")], None);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count() as i64, ROWS + 2);
    let one = format!("COPY (SELECT note FROM {t} WHERE customer_id = 997) TO STDOUT");
    let (ok, out) = crate::harness::run_tool(&sc, "psql", &["-v", "ON_ERROR_STOP=1", "-c", &one], None);
    assert!(ok && out == "note 997 with a\\ttab\n", "{out:?}");
}

#[tokio::test]
async fn a_split_copy_is_all_or_nothing() {
    let fleet = Fleet::shared();
    let t = table("copysplitbad");
    for shard in [&fleet.s0, &fleet.s1] {
        let create = format!("CREATE TABLE {t} (customer_id bigint, amount int)");
        direct(shard).await.batch_execute(&create).await.unwrap();
    }
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let counts = async || {
        let mut n = 0i64;
        for shard in [&fleet.s0, &fleet.s1] {
            n += direct(shard)
                .await
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0);
        }
        n
    };
    // A bad value near the end: the other shard has taken its rows already.
    let mut data: String = (1..=5_000).map(|i| format!("{i}\t{i}\n")).collect();
    data.push_str("5001\tnot a number\n5002\t1\n");
    let (ok, out) = psql_copy(&sc, &format!("\\copy {t} from stdin"), &data);
    assert!(!ok && out.contains("22P02"), "the shard's own error: {out}");
    assert_eq!(counts().await, 0, "no shard keeps rows of a failed COPY");
    // A row without the key field is shardcar's own clear error, in CSV too.
    let (ok, out) = psql_copy(&sc, &format!("\\copy {t} (amount, customer_id) from stdin"), "1\t1\n2\n");
    assert!(!ok && out.contains("22P04") && out.contains("field 2"), "{out}");
    let (ok, out) = psql_copy(&sc, &format!("\\copy {t} from stdin (format csv)"), "1,1\n\"2\n");
    assert!(!ok && out.contains("22P04") && out.contains("unterminated"), "{out}");
    // A format whose keys shardcar cannot read the way Postgres would is refused before any row.
    let (ok, out) = psql_copy(&sc, &format!("\\copy {t} from stdin (encoding 'latin1')"), "1\t1\n");
    assert!(!ok && out.contains("0A000") && out.contains("ENCODING"), "{out}");
    assert_eq!(counts().await, 0);
    let (ok, out) = psql_copy(&sc, &format!("\\copy {t} from stdin"), "1\t1\n2\t2\n3\t3\n");
    assert!(ok && out.contains("COPY 3"), "{out}");
    assert_eq!(counts().await, 3);
}

/// `rows` COPYed through shardcar (split by key over s0 and s1) and into
/// one plain table on s0 directly; both must then hold the same rows.
async fn same_rows_as_one_postgres(fleet: &Fleet, t: &str, one: &str) {
    let read = async |shard: &shardcar::localpg::Cluster, table: &str| -> Vec<(Option<i64>, Option<String>)> {
        let sql = format!("SELECT customer_id, note FROM {table}");
        direct(shard).await.query(&sql, &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let mut split = read(&fleet.s0, t).await;
    let on_s1 = read(&fleet.s1, t).await;
    assert!(!split.is_empty() && !on_s1.is_empty(), "both shards got rows");
    split.extend(on_s1);
    let mut plain = read(&fleet.s0, one).await;
    split.sort();
    plain.sort();
    assert_eq!(split.len(), plain.len());
    assert!(split == plain, "the split COPY stored other rows than one Postgres did");
}

/// A sharded table for shardcar to split COPYs into, a plain one on s0
/// named `<table>_one` to copy the same data into directly, and shardcar.
async fn split_and_plain(fleet: &Fleet, prefix: &str) -> (String, String, Sidecar) {
    let t = fleet.hashed_table(prefix).await;
    let one = format!("{t}_one");
    let create = format!("CREATE TABLE {one} (customer_id bigint, note text)");
    direct(&fleet.s0).await.batch_execute(&create).await.unwrap();
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    (t, one, sc)
}

/// The COPY `sql` (with `{t}` for the table) of `data` in chunks of
/// `chunk` bytes, through `c`.
async fn copy_in(
    c: &tokio_postgres::Client,
    sql: &str,
    data: &[u8],
    chunk: usize,
) -> Result<u64, tokio_postgres::Error> {
    let sink = c.copy_in(sql).await?;
    futures_util::pin_mut!(sink);
    for piece in data.chunks(chunk) {
        sink.send(Bytes::copy_from_slice(piece)).await?;
    }
    sink.finish().await
}

#[tokio::test]
async fn csv_copies_split_as_one_postgres_reads_them() {
    let fleet = Fleet::shared();
    let (t, one, sc) = split_and_plain(fleet, "copycsv").await;
    let c = sc.connect().await;
    // Quotes, delimiters and line ends inside values, CRLF rows, empty and
    // NULL notes, a quoted key, a header.
    let mut data = String::from("customer_id,note\r\n");
    for i in 1..=3000 {
        match i % 6 {
            0 => data.push_str(&format!("{i},\"a, \"\"quoted\"\" note\nover two lines\"\r\n")),
            1 => data.push_str(&format!("\"{i}\",plain {i}\r\n")),
            2 => data.push_str(&format!("{i},\r\n")),
            3 => data.push_str(&format!("{i},\"\"\r\n")),
            4 => data.push_str(&format!("{i},\"\\. and \\N\"\r\n")),
            _ => data.push_str(&format!("{i},\"comma, and CR\rin quotes\"\r\n")),
        }
    }
    let options = "(FORMAT csv, HEADER true)";
    let copied = copy_in(&c, &format!("COPY {t} FROM STDIN {options}"), data.as_bytes(), 1000).await.unwrap();
    assert_eq!(copied, 3000);
    let plain = direct(&fleet.s0).await;
    assert_eq!(
        copy_in(&plain, &format!("COPY {one} FROM STDIN {options}"), data.as_bytes(), 1 << 20).await.unwrap(),
        3000
    );
    same_rows_as_one_postgres(fleet, &t, &one).await;
    // Each row is where a query for its key is routed.
    for id in (1..=3000).step_by(7) {
        let n: i64 =
            c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = {id}"), &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "row {id}");
    }
    // Another delimiter, quote and escape, and a NULL string; and text with a header and NULL string.
    let other = "(FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'none')";
    let data = "5001;'it\\'s; fine'\n5002;none\n5003;'none'\n";
    for (sql, table) in [(&c, &t), (&plain, &one)] {
        copy_in(sql, &format!("COPY {table} FROM STDIN {other}"), data.as_bytes(), 5).await.unwrap();
        copy_in(sql, &format!("COPY {table} FROM STDIN (HEADER, NULL '-')"), b"id\tnote\n6001\t-\n6002\ta\\tb\n", 3)
            .await
            .unwrap();
    }
    same_rows_as_one_postgres(fleet, &t, &one).await;
}

#[tokio::test]
async fn a_million_row_binary_copy_splits_in_flat_memory_and_a_bad_row_leaves_nothing() {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let fleet = Fleet::shared();
    let (t, one, sc) = split_and_plain(fleet, "copybin").await;
    let c = sc.connect().await;
    const ROWS: i64 = 1_000_000;
    // As drivers write it (tokio-postgres's binary writer, like pgx's CopyFrom).
    let write = async |client: &tokio_postgres::Client, table: &str| {
        let sink = client.copy_in(&format!("COPY {table} (customer_id, note) FROM STDIN (FORMAT binary)")).await?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::TEXT]);
        futures_util::pin_mut!(writer);
        for i in 1..=ROWS {
            let note = (i % 10 != 0).then(|| format!("note {i}"));
            writer.as_mut().write(&[&i, &note]).await?;
        }
        writer.finish().await
    };
    let before = sc.rss_kib();
    let started = std::time::Instant::now();
    assert_eq!(write(&c, &t).await.unwrap(), ROWS as u64);
    let through = started.elapsed();
    let after = sc.rss_kib();
    let started = std::time::Instant::now();
    assert_eq!(write(&direct(&fleet.s0).await, &one).await.unwrap(), ROWS as u64);
    println!(
        "binary COPY of {ROWS} rows: {:.0} rows/s through shardcar, {:.0} rows/s direct; RSS {before} → {after} KiB",
        ROWS as f64 / through.as_secs_f64(),
        ROWS as f64 / started.elapsed().as_secs_f64()
    );
    // The data (about 20 MB) is never held whole: memory stays flat.
    assert!(after < before + 16 * 1024, "RSS grew from {before} to {after} KiB");
    same_rows_as_one_postgres(fleet, &t, &one).await;

    // A row whose key cannot be read, near the end: nothing anywhere.
    let t2 = fleet.hashed_table("copybinbad").await;
    drop(sc);
    let sc = Sidecar::start(&fleet.hashed_config(&t2, ""));
    let c = sc.connect().await;
    let mut data = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    for i in 1..=100_000i64 {
        data.extend_from_slice(&2i16.to_be_bytes());
        if i == 99_990 {
            // Four bytes where the key's int8 belongs.
            data.extend_from_slice(&4i32.to_be_bytes());
            data.extend_from_slice(&(i as i32).to_be_bytes());
        } else {
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&i.to_be_bytes());
        }
        data.extend_from_slice(&(-1i32).to_be_bytes());
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    let sql = format!("COPY {t2} FROM STDIN (FORMAT binary)");
    let e = copy_in(&c, &sql, &data, 65536).await.unwrap_err();
    assert!(e.as_db_error().is_some_and(|d| d.message().contains("not the 8 of a bigint")), "{e:?}");
    assert_eq!(sqlstate(&e), "22P04", "{e:?}");
    for shard in [&fleet.s0, &fleet.s1] {
        let n: i64 = direct(shard).await.query_one(&format!("SELECT count(*) FROM {t2}"), &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "a failed COPY leaves no rows");
    }
}

#[tokio::test]
async fn a_copy_routes_each_key_once() {
    // A bulk load of a few customers' rows: one plugin call per key, not per row.
    let fleet = Fleet::shared();
    let t = fleet.hashed_table("copykeys").await;
    let sc = Sidecar::start(&fleet.hashed_config(&t, ""));
    let c = sc.connect().await;
    let data: String = (0..2000).map(|i| format!("{}\trow {i}\n", 1 + i % 4)).collect();
    let before = crate::plugins::plugin_routings(&sc);
    assert_eq!(copy_in(&c, &format!("COPY {t} FROM STDIN"), data.as_bytes(), 4096).await.unwrap(), 2000);
    let calls = crate::plugins::plugin_routings(&sc) - before;
    assert_eq!(calls, 4, "one call per distinct key");
    for key in 1..=4 {
        let n: i64 =
            c.query_one(&format!("SELECT count(*) FROM {t} WHERE customer_id = {key}"), &[]).await.unwrap().get(0);
        assert_eq!(n, 500, "customer {key}'s rows where its key routes");
    }
}
