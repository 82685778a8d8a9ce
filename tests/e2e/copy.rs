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
