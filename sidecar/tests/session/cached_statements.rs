//! A Parse the server connection already holds is not sent again — a named
//! statement always, the unnamed one with `pool.reuse_unnamed_statements` —
//! and a plan that went stale under it (a schema change) is prepared again
//! without the client seeing the server's 0A000.

use std::sync::atomic::Ordering;

use crate::harness::{Client, error, setup_with, tags};

const STAR: &str = "/* shardcar: shard=s0 */ SELECT * FROM t";
const REUSE: &str = "reuse_unnamed_statements = true";

fn parses(log: &[String]) -> usize {
    log.iter().filter(|m| m.starts_with("P ")).count()
}

#[tokio::test]
async fn the_unnamed_statement_is_parsed_once_per_server_connection_when_reused() {
    for (pool, want) in [("", 3), (REUSE, 1)] {
        let s = setup_with("", pool, "").await;
        let mut c = Client::connect(&s).await;
        for _ in 0..3 {
            let got = c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
            assert_eq!(tags(&got), "1 2 D D C Z:I", "{pool}");
        }
        assert_eq!(parses(&s.s0.log()), want, "{pool}: {:?}", s.s0.log());
        // Another text replaces it.
        let other = "/* shardcar: shard=s0 */ SELECT v FROM t";
        let got = c.parse("", other).bind("", "", &[]).execute("", 0).sync().run().await;
        assert_eq!(tags(&got), "1 2 D D C Z:I");
        assert_eq!(s.s0.statements().last().map(String::as_str), Some(other));
    }
}

#[tokio::test]
async fn a_simple_query_in_between_means_the_unnamed_statement_is_parsed_again() {
    let s = setup_with("", REUSE, "").await;
    let mut c = Client::connect(&s).await;
    c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    c.simple("/* shardcar: shard=s0 */ SELECT 1").await;
    let got = c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D C Z:I", "the fake drops its unnamed statement at a Query");
    assert_eq!(parses(&s.s0.log()), 2);
}

#[tokio::test]
async fn a_stale_plan_under_a_skipped_parse_is_prepared_again_and_the_batch_resent() {
    let s = setup_with("", REUSE, "").await;
    let mut c = Client::connect(&s).await;
    c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    s.s0.schema_changes.fetch_add(1, Ordering::SeqCst);
    s.s0.forget();
    let got = c.parse("", STAR).bind("", "", &[]).describe(b'P', "").execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 T D D C Z:I", "as if the Parse had reached the server");
    let log = s.s0.log();
    assert_eq!(log[..3], ["B ", "skipped D", "skipped E"], "{log:?}");
    assert_eq!(parses(&log), 1, "{log:?}");
    // The next batch finds the fresh statement.
    let got = c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D C Z:I");
    assert_eq!(parses(&s.s0.log()), 1);
}

#[tokio::test]
async fn a_stale_plan_met_before_the_client_synced_is_resent_behind_a_sync_of_shardcars() {
    // The Describe is answered at the Flush; Execute and Sync come later.
    let s = setup_with("", REUSE, "").await;
    let mut c = Client::connect(&s).await;
    c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    s.s0.schema_changes.fetch_add(1, Ordering::SeqCst);
    c.parse("", STAR).bind("", "", &[]).describe(b'P', "").flush_msg().send().await;
    assert_eq!(tags(&c.take(3).await), "1 2 T");
    let got = c.execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "D D C Z:I");
}

#[tokio::test]
async fn a_named_statement_another_client_prepared_before_a_schema_change_is_prepared_again() {
    let s = setup_with("", "", "").await;
    let mut a = Client::connect(&s).await;
    let got = a.parse("mine", STAR).bind("", "mine", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D C Z:I");
    drop(a);
    s.s0.schema_changes.fetch_add(1, Ordering::SeqCst);
    // Same text, so the same statement on the server connection.
    let mut b = Client::connect(&s).await;
    let got = b.parse("theirs", STAR).bind("", "theirs", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D C Z:I");
    let log = s.s0.log();
    assert!(log.iter().any(|m| m == "C S"), "closed, then parsed afresh: {log:?}");
    assert_eq!(parses(&log), 2, "{log:?}");
    // Described on a connection of its own: prepared afresh there too.
    s.s0.schema_changes.fetch_add(1, Ordering::SeqCst);
    let mut d = Client::connect(&s).await;
    d.parse("again", STAR).describe(b'S', "again").flush_msg().send().await;
    assert_eq!(tags(&d.take(3).await), "1 t T");
}

#[tokio::test]
async fn inside_a_transaction_a_held_statement_is_parsed_again_rather_than_trusted() {
    // A stale plan could not be undone there: the block would be aborted.
    let s = setup_with("", REUSE, "").await;
    let mut c = Client::connect(&s).await;
    c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    s.s0.schema_changes.fetch_add(1, Ordering::SeqCst);
    c.simple("BEGIN").await;
    c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    let got = c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D C Z:T");
    assert!(c.simple("COMMIT").await.iter().all(|m| m.tag != b'E'));
    assert_eq!(parses(&s.s0.log()), 3, "{:?}", s.s0.log());
}

#[tokio::test]
async fn a_stale_plan_in_pipelined_batches_is_prepared_again() {
    // The session sends a batch only once the one before it has ended, so
    // what is sent again is never behind anything the server has run.
    let s = setup_with("", REUSE, "").await;
    let mut c = Client::connect(&s).await;
    c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().run().await;
    s.s0.schema_changes.fetch_add(1, Ordering::SeqCst);
    c.parse("", STAR).bind("", "", &[]).execute("", 0).sync();
    c.parse("", STAR).bind("", "", &[]).execute("", 0).sync().send().await;
    assert_eq!(tags(&c.until_ready().await), "1 2 D D C Z:I");
    assert_eq!(tags(&c.until_ready().await), "1 2 D D C Z:I");
    assert_eq!(parses(&s.s0.log()), 2, "{:?}", s.s0.log());
}

#[tokio::test]
async fn a_stale_plan_of_the_clients_own_statement_in_a_block_is_its_error_and_the_connection_is_dropped() {
    // As without shardcar: the client prepared it before the schema change.
    let s = setup_with("", "", "").await;
    let mut c = Client::connect(&s).await;
    c.parse("st", STAR).bind("", "st", &[]).execute("", 0).sync().run().await;
    s.s0.schema_changes.fetch_add(1, Ordering::SeqCst);
    c.simple("BEGIN").await;
    let got = c.bind("", "st", &[]).execute("", 0).sync().run().await;
    assert_eq!(error(&got).code(), "0A000");
    assert_eq!(tags(&got).split(' ').next_back(), Some("Z:E"));
    c.simple("ROLLBACK").await;
    // Other plans on that connection may be stale too: a new one prepares afresh.
    let got = c.bind("", "st", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "2 D D C Z:I");
    assert_eq!(parses(&s.s0.log()), 2, "{:?}", s.s0.log());
}

#[tokio::test]
async fn a_parse_skipped_after_an_error_leaves_the_held_statement_to_be_closed_first() {
    // In a block a held statement is closed and parsed afresh; when an
    // earlier error makes the server skip both, it may still hold it.
    let s = setup_with("", "", "").await;
    let mut c = Client::connect(&s).await;
    c.parse("a", STAR).bind("", "a", &[]).execute("", 0).sync().run().await;
    c.simple("BEGIN").await;
    c.parse("", "/* shardcar: shard=s0 */ SELECT fail").bind("", "", &[]).execute("", 0);
    let got = c.parse("b", STAR).bind("", "b", &[]).execute("", 0).sync().run().await;
    assert_eq!(error(&got).code(), "42000");
    c.simple("ROLLBACK").await;
    let got = c.parse("c", STAR).bind("", "c", &[]).execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 D D C Z:I", "{:?}", s.s0.log());
}
