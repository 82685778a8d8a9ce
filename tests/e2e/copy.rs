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
