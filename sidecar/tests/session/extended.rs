//! The extended protocol in the orders drivers use it: pipelines, Describe
//! before Bind with Flush, row limits, errors mid-batch.

use crate::harness::{Client, error, setup, tags, values};
use crate::keys;

#[tokio::test]
async fn one_statement_on_one_shard() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.parse("", "/* shardcar: shard=s1 */ SELECT 1").bind("", "", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D C Z:I");
    assert!(s.s0.log().is_empty());
}

#[tokio::test]
async fn a_parse_goes_where_its_bind_routes_it() {
    let s = setup("").await;
    let (_, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    let n0 = s.s0.log().len();
    let sql = "SELECT v FROM t WHERE k = $1";
    let got = c.parse("", sql).bind("", "", &[&k1.to_string()]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D C Z:I");
    assert_eq!(s.s1.statements().last().map(String::as_str), Some(sql));
    assert_eq!(s.s0.log().len(), n0, "s0 never saw it");
}

#[tokio::test]
async fn describe_before_bind_with_flush() {
    // asyncpg: Parse, Describe, Flush; then Bind, Execute, Sync.
    let s = setup("").await;
    let (k0, _) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.parse("st", "SELECT v FROM t WHERE k = $1").describe(b'S', "st").flush_msg().send().await;
    assert_eq!(tags(&c.take(3).await), "1 t T", "answered before any Sync");
    let got = c.bind("", "st", &[&k0.to_string()]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "2 D D C Z:I");
}

#[tokio::test]
async fn a_describe_that_meets_an_ended_connection_is_asked_again() {
    let s = setup("").await;
    let (k0, _) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    s.s0.end_at_next_describe.store(true, std::sync::atomic::Ordering::SeqCst);
    c.parse("st", "SELECT v FROM t WHERE k = $1").describe(b'S', "st").flush_msg().send().await;
    assert_eq!(tags(&c.take(3).await), "1 t T", "the client never sees the ended connection");
    let describes = s.s0.log().iter().filter(|m| m.as_str() == "D S").count();
    assert_eq!(describes, 2, "asked once more, on a new connection");
    let got = c.bind("", "st", &[&k0.to_string()]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "2 D D C Z:I");
}

#[tokio::test]
async fn describe_before_bind_of_a_statement_across_shards() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.parse("st", "SELECT v FROM t ORDER BY v").describe(b'S', "st").flush_msg().send().await;
    assert_eq!(tags(&c.take(3).await), "1 t T");
    let got = c.bind("", "st", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "2 D D D D C Z:I");
    assert_eq!(values(&got), ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn describe_of_a_portal_across_shards() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c
        .parse("", "SELECT v FROM t ORDER BY v")
        .bind("", "", &[])
        .describe(b'P', "")
        .execute("", 0)
        .sync()
        .run()
        .await;
    assert_eq!(tags(&got), "1 2 T D D D D C Z:I");
}

#[tokio::test]
async fn a_row_limit_suspends_a_portal_on_one_shard() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let sql = "/* shardcar: shard=s0 */ SELECT v FROM t";
    let got = c.parse("", sql).bind("p", "", &[]).execute("p", 1).execute("p", 1).sync().run().await;
    assert_eq!(tags(&got), "1 2 D s D C Z:I");
    assert_eq!(values(&got), ["a", "c"]);
}

#[tokio::test]
async fn a_row_limit_suspends_a_portal_across_shards() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got =
        c.parse("", "SELECT v FROM t ORDER BY v").bind("p", "", &[]).execute("p", 3).execute("p", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D D s D C Z:I");
    assert_eq!(values(&got), ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn a_portal_fetched_across_batches_inside_a_transaction() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN READ ONLY").await;
    let got = c.parse("", "SELECT v FROM t ORDER BY v").bind("p", "", &[]).execute("p", 2).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D s Z:T");
    let got = c.execute("p", 2).sync().run().await;
    assert_eq!(values(&got), ["c", "d"]);
    assert_eq!(tags(&got), "D D s Z:T");
    let got = c.execute("p", 0).sync().run().await;
    assert_eq!(tags(&got), "C Z:T");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
}

#[tokio::test]
async fn several_batches_in_one_write() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.parse("", "/* shardcar: shard=s0 */ SELECT 1").bind("", "", &[]).execute("", 0).sync();
    c.parse("", "/* shardcar: shard=s1 */ SELECT 2").bind("", "", &[]).execute("", 0).sync();
    c.send().await;
    assert_eq!(tags(&c.until_ready().await), "1 2 D C Z:I");
    assert_eq!(tags(&c.until_ready().await), "1 2 D C Z:I");
}

#[tokio::test]
async fn a_pipeline_of_reads_on_two_shards_before_one_sync() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.parse("", "/* shardcar: shard=s0 */ SELECT 1").bind("", "", &[]).execute("", 0);
    c.parse("", "/* shardcar: shard=s1 */ SELECT 2").bind("", "", &[]).execute("", 0);
    let got = c.sync().run().await;
    assert_eq!(tags(&got), "1 2 D C 1 2 D C Z:I");
}

#[tokio::test]
async fn a_batch_that_wrote_on_one_shard_cannot_go_on_to_another() {
    let s = setup("").await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.parse("", &format!("INSERT INTO t (k, v) VALUES ({k0}, 'a')")).bind("", "", &[]).execute("", 0);
    c.parse("", &format!("INSERT INTO t (k, v) VALUES ({k1}, 'b')")).bind("", "", &[]).execute("", 0);
    let got = c.sync().run().await;
    // The second Parse succeeds (as on Postgres); its Bind is refused.
    assert_eq!(tags(&got), "1 2 C 1 E:0A000 Z:I");
    assert!(error(&got).field(b'M').contains("different shards"));
}

#[tokio::test]
async fn an_error_mid_batch_skips_the_rest_to_sync() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.parse("", "/* shardcar: shard=s0 */ SELECT fail").bind("", "", &[]).execute("", 0);
    c.parse("", "/* shardcar: shard=s0 */ SELECT 1").bind("", "", &[]).execute("", 0);
    let got = c.sync().run().await;
    assert_eq!(tags(&got), "1 2 E:42000 Z:I");
    assert_eq!(tags(&c.parse("", "SELECT 1").bind("", "", &[]).execute("", 0).sync().run().await), "1 2 D C Z:I");
}

#[tokio::test]
async fn a_refusal_mid_batch_skips_the_rest_to_sync() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.parse("", "/* shardcar: shard=s9 */ SELECT 1").bind("", "", &[]).execute("", 0);
    c.parse("", "SELECT 1").bind("", "", &[]).execute("", 0);
    let got = c.sync().run().await;
    assert_eq!(tags(&got), "1 E:22023 Z:I");
}

#[tokio::test]
async fn a_syntax_error_comes_from_the_server_exactly() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.parse("", "syntax error here").bind("", "", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "E:42601 Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

#[tokio::test]
async fn a_duplicate_statement_name_is_an_error() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.parse("a", "SELECT 1").sync().run().await), "1 Z:I");
    assert_eq!(tags(&c.parse("a", "SELECT 2").sync().run().await), "E:42P05 Z:I");
}

#[tokio::test]
async fn unknown_statements_and_portals() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.bind("", "nope", &[]).sync().run().await), "E:26000 Z:I");
    assert_eq!(tags(&c.execute("nope", 0).sync().run().await), "E:34000 Z:I");
    assert_eq!(tags(&c.describe(b'S', "nope").sync().run().await), "E:26000 Z:I");
}

#[tokio::test]
async fn a_closed_statement_is_gone() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.parse("st", "SELECT 1").sync().run().await;
    assert_eq!(tags(&c.close(b'S', "st").sync().run().await), "3 Z:I");
    assert_eq!(tags(&c.bind("", "st", &[]).sync().run().await), "E:26000 Z:I");
}

#[tokio::test]
async fn a_named_statement_runs_again_without_a_new_parse() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.parse("st", "/* shardcar: shard=s1 */ SELECT 1").sync().run().await), "1 Z:I");
    for _ in 0..3 {
        assert_eq!(tags(&c.bind("", "st", &[]).execute("", 0).sync().run().await), "2 D C Z:I");
    }
    let parses = s.s1.log().iter().filter(|l| l.starts_with("P ")).count();
    assert_eq!(parses, 1, "prepared once on the server: {:?}", s.s1.log());
}

#[tokio::test]
async fn a_statement_prepared_by_one_client_is_shared_by_name_on_the_server() {
    let s = setup("").await;
    let mut a = Client::connect(&s).await;
    let mut b = Client::connect(&s).await;
    for c in [&mut a, &mut b] {
        c.parse("mine", "/* shardcar: shard=s1 */ SELECT 1").sync().run().await;
        assert_eq!(tags(&c.bind("", "mine", &[]).execute("", 0).sync().run().await), "2 D C Z:I");
    }
}

#[tokio::test]
async fn copy_with_the_extended_protocol() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.parse("", "/* shardcar: shard=s1 */ COPY t FROM STDIN").bind("", "", &[]).execute("", 0).sync().send().await;
    assert_eq!(tags(&c.take(3).await), "1 2 G");
    let got = c.copy_data("1\ta\n").copy_done().sync().run().await;
    assert_eq!(tags(&got), "C Z:I", "one ReadyForQuery: the Sync before the data is ignored");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

#[tokio::test]
async fn a_split_copy_from_the_extended_protocol() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let (k0, k1) = keys(&s).await;
    // As tokio-postgres sends it: the Sync before the data is ignored, the one after it ends the COPY.
    c.parse("", "COPY t (k, v) FROM STDIN").bind("", "", &[]).execute("", 0).sync().send().await;
    assert_eq!(tags(&c.take(3).await), "1 2 G");
    let got = c.copy_data(&format!("{k0}\tx\n{k1}\ty\n")).copy_done().sync().run().await;
    assert_eq!(tags(&got), "C Z:I");
    assert_eq!(got[0].tag_text(), "COPY 2");
    // A bad row: the error, and what the client sends up to its Sync is skipped.
    c.parse("", "COPY t (v, k) FROM STDIN").bind("", "", &[]).execute("", 0).sync().send().await;
    assert_eq!(tags(&c.take(3).await), "1 2 G");
    let got = c.copy_data("no key field\n").copy_data("more\n").copy_done().sync().run().await;
    assert_eq!(tags(&got), "E:22P04 Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

#[tokio::test]
async fn a_row_limit_does_not_cut_a_copy_to_across_shards() {
    // Postgres runs a COPY to its end whatever the Execute's limit.
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.parse("", "COPY t TO STDOUT").bind("p", "", &[]).execute("p", 1).sync().run().await;
    assert_eq!(tags(&got), "1 2 H d d d d c C Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

#[tokio::test]
async fn a_portal_across_shards_run_to_its_end_returns_no_more_rows() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let sql = "SELECT v FROM t ORDER BY v";
    let got = c.parse("", sql).bind("p", "", &[]).execute("p", 0).execute("p", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D D D C C Z:I");
    assert_eq!(got[7].tag_text(), "SELECT 0");
    let runs = s.s0.statements().iter().filter(|q| q.as_str() == sql).count();
    assert_eq!(runs, 1, "the shards ran it once");
}

#[tokio::test]
async fn limit_and_offset_as_parameters_across_shards() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let sql = "SELECT v FROM t ORDER BY v LIMIT $1 OFFSET $2";
    let got = c.parse("", sql).bind("", "", &["2", "1"]).execute("", 0).sync().run().await;
    assert_eq!(values(&got), ["b", "c"]);
    let sent = s.s0.log().into_iter().find(|l| l.starts_with("P SELECT")).unwrap();
    assert!(sent.contains("LIMIT $1 + $2"), "each shard sends LIMIT + OFFSET rows: {sent}");
    let got = c.parse("", sql).bind("", "", &["-1", "0"]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 E:0A000 Z:I");
}

/// Found by fuzzing (`session`): a server's ReadyForQuery for a simple
/// query cleared the record of extended messages written after that query
/// (not yet followed by a Sync or Flush), so the session waited for their
/// replies — which a server holds until a Sync or Flush — forever.
#[tokio::test]
async fn a_ready_for_query_does_not_answer_messages_written_after_its_query() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let on_s1 = "/* shardcar: shard=s1 */ SELECT 1";
    c.query(on_s1).parse("", on_s1).bind("", "", &[]).query("DEALLOCATE ALL").sync().query("SELECT 1");
    c.send().await;
    let mut got = c.until_ready().await;
    for _ in 0..3 {
        got.extend(c.until_ready().await);
    }
    assert_eq!(tags(&got), "T D C Z:I 1 2 C Z:I Z:I T D C Z:I");
}

/// Postgres ignores every message after an error in the extended protocol
/// up to Sync — a simple Query too: it gets no answer.
#[tokio::test]
async fn a_query_after_an_extended_error_is_ignored_until_sync() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let on_s1 = "/* shardcar: shard=s1 */ SELECT fail";
    c.parse("", on_s1).bind("", "", &[]).execute("", 0).query("/* shardcar: shard=s1 */ SELECT 1").sync();
    assert_eq!(tags(&c.run().await), "1 2 E:42000 Z:I");
    // Found by fuzzing: shardcar's own error mid-batch (a duplicate name), then a Query.
    assert_eq!(tags(&c.parse("n", "SELECT 1").sync().run().await), "1 Z:I");
    c.parse("", on_s1).bind("", "", &[]).parse("n", "SELECT 2").query("BEGIN").sync();
    assert_eq!(tags(&c.run().await), "1 2 E:42P05 Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I", "not in a transaction");
}

#[tokio::test]
async fn a_simple_query_outside_a_block_ends_the_portals_before_it() {
    // Postgres commits the implicit transaction at the query's end, and its
    // portals go with it: a suspended portal across shards gave its
    // connections back then (they used to stay lent, and the queries after
    // it waited for a connection the session itself held).
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.parse("n", "SELECT count(*) FROM t").bind("p", "n", &[]).execute("p", 1);
    c.bind("", "n", &[]).query("COMMIT").execute("", 1);
    // Skipped, as Postgres skips to a Sync after the error.
    c.query("SELECT v FROM t ORDER BY v");
    c.send().await;
    c.shutdown_writing().await;
    assert_eq!(tags(&c.until_closed().await), "1 2 D s 2 N C Z:I E:34000");
}

#[tokio::test]
async fn a_bind_must_supply_every_parameter() {
    // Checked before anything else, as Postgres does: a portal shardcar runs
    // across shards would otherwise go out short of (or with extra) values.
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.parse("n", "SELECT count(*) FROM t").bind("p", "n", &["1"]).execute("p", 0).sync().run().await;
    assert_eq!(tags(&got), "1 E:08P01 Z:I");
    assert!(error(&got).field(b'M').contains("supplies 1 parameters, but prepared statement \"n\" requires 0"));
    let got = c.parse("k", "SELECT v FROM t WHERE k = $1").bind("", "k", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 E:08P01 Z:I");
    assert_eq!(tags(&c.bind("", "n", &[]).execute("", 0).sync().run().await), "2 D D C Z:I");
}
