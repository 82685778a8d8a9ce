//! Transactions: deferred BEGIN, one shard, across shards (two-phase
//! commit), failures.

use crate::harness::{Client, error, setup, tags, values};
use crate::keys;

const TWO_PHASE: &str = "two_phase_commit = true";

/// A client in a transaction open on both shards, a row written on each;
/// the keys it used.
async fn across_both(s: &crate::harness::Setup) -> (Client, i64, i64) {
    let (k0, k1) = keys(s).await;
    let mut c = Client::connect(s).await;
    c.simple("BEGIN").await;
    for (k, v) in [(k0, "a"), (k1, "b")] {
        let got = c.simple(&format!("INSERT INTO t (k, v) VALUES ({k}, '{v}')")).await;
        assert_eq!(tags(&got), "C Z:T");
    }
    (c, k0, k1)
}

#[tokio::test]
async fn begin_waits_for_the_statement_that_picks_the_shard() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.simple("BEGIN").await), "C Z:T");
    assert!(s.s0.log().is_empty() && s.s1.log().is_empty(), "no shard yet");
    assert_eq!(tags(&c.simple("/* shardcar: shard=s1 */ INSERT INTO x VALUES (1)").await), "C Z:T");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
    assert_eq!(s.s1.statements(), ["BEGIN", "/* shardcar: shard=s1 */ INSERT INTO x VALUES (1)", "COMMIT"]);
    assert!(s.s0.statements().is_empty());
}

#[tokio::test]
async fn a_transaction_without_statements_needs_no_shard() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.simple("BEGIN").await), "C Z:T");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
    assert_eq!(tags(&c.simple("BEGIN").await), "C Z:T");
    assert_eq!(tags(&c.simple("SAVEPOINT a").await), "C Z:T");
    assert_eq!(tags(&c.simple("RELEASE SAVEPOINT nope").await), "E:3B001 Z:E");
    assert_eq!(tags(&c.simple("SELECT 1").await), "E:25P02 Z:E");
    assert_eq!(tags(&c.simple("ROLLBACK").await), "C Z:I");
    assert!(s.s0.log().is_empty() && s.s1.log().is_empty(), "{:?} {:?}", s.s0.log(), s.s1.log());
}

#[tokio::test]
async fn an_error_fails_the_transaction_until_rollback() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    assert_eq!(tags(&c.simple("SELECT fail").await), "E:42000 Z:E");
    assert_eq!(tags(&c.simple("SELECT 1").await), "E:25P02 Z:E");
    assert_eq!(tags(&c.simple("ROLLBACK").await), "C Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

#[tokio::test]
async fn without_two_phase_commit_a_transaction_stays_on_its_shard() {
    let s = setup("").await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    c.simple(&format!("INSERT INTO t (k, v) VALUES ({k0}, 'a')")).await;
    let got = c.simple(&format!("INSERT INTO t (k, v) VALUES ({k1}, 'b')")).await;
    assert_eq!(tags(&got), "E:0A000 Z:E");
    assert!(error(&got).field(b'H').contains("two_phase_commit"));
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
    assert_eq!(s.s0.statements().last().map(String::as_str), Some("COMMIT"));
    assert!(!s.s1.statements().iter().any(|q| q.contains("'b'")), "the refused statement went nowhere");
}

#[tokio::test]
async fn a_read_only_transaction_may_span_shards_without_two_phase_commit() {
    let s = setup("").await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN READ ONLY").await;
    assert_eq!(tags(&c.simple(&format!("SELECT v FROM t WHERE k = {k0}")).await), "T D D C Z:T");
    assert_eq!(tags(&c.simple(&format!("SELECT v FROM t WHERE k = {k1}")).await), "T D D C Z:T");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
    for f in [&s.s0, &s.s1] {
        let q = f.statements();
        assert_eq!(q.last().map(String::as_str), Some("COMMIT"), "{q:?}");
        assert!(q.contains(&"BEGIN READ ONLY".to_string()), "{q:?}");
    }
}

#[tokio::test]
async fn commit_across_shards_is_two_phase() {
    let s = setup(TWO_PHASE).await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    assert_eq!(tags(&c.simple(&format!("INSERT INTO t (k, v) VALUES ({k0}, 'a')")).await), "C Z:T");
    assert_eq!(tags(&c.simple(&format!("INSERT INTO t (k, v) VALUES ({k1}, 'b')")).await), "C Z:T");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
    s.committed_in_two_phases(&s.s0);
}

#[tokio::test]
async fn rollback_across_shards_reaches_every_shard() {
    let s = setup(TWO_PHASE).await;
    let (mut c, _, _) = across_both(&s).await;
    assert_eq!(tags(&c.simple("ROLLBACK").await), "C Z:I");
    for f in [&s.s0, &s.s1] {
        assert_eq!(f.statements().last().map(String::as_str), Some("ROLLBACK"));
    }
}

#[tokio::test]
async fn an_error_on_one_shard_fails_the_transaction_on_all() {
    let s = setup(TWO_PHASE).await;
    let (mut c, k0, k1) = across_both(&s).await;
    assert_eq!(tags(&c.simple(&format!("SELECT fail FROM t WHERE k = {k1}")).await), "E:42000 Z:E");
    let before = s.s0.statements().len();
    let got = c.simple(&format!("INSERT INTO t (k, v) VALUES ({k0}, 'c')")).await;
    assert_eq!(tags(&got), "E:25P02 Z:E", "refused before any shard sees it");
    assert_eq!(s.s0.statements().len(), before);
    let got = c.simple("COMMIT").await;
    assert_eq!(got[0].tag_text(), "ROLLBACK");
    assert!(s.s0.prepared().is_empty() && s.s1.prepared().is_empty());
}

#[tokio::test]
async fn a_shard_that_joins_after_a_savepoint_makes_it_first() {
    let s = setup(TWO_PHASE).await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    c.simple("SAVEPOINT a").await;
    c.simple(&format!("INSERT INTO t (k, v) VALUES ({k0}, 'a')")).await;
    let got = c.simple(&format!("INSERT INTO t (k, v) VALUES ({k1}, 'b')")).await;
    assert_eq!(tags(&got), "C Z:T");
    let joined = s.s1.statements();
    let at = joined.iter().position(|q| q.contains("'b'")).expect("the insert reached s1");
    assert!(joined[..at].iter().any(|q| q.contains("SAVEPOINT \"a\"")), "{joined:?}");
    // Across shards, the savepoint statements run on both.
    assert_eq!(tags(&c.simple("ROLLBACK TO SAVEPOINT a").await), "C Z:T");
    assert_eq!(tags(&c.simple("RELEASE SAVEPOINT a").await), "C Z:T");
    assert_eq!(tags(&c.simple("RELEASE SAVEPOINT a").await), "E:3B001 Z:E", "released already");
    for shard in [&s.s0, &s.s1] {
        let ran = shard.statements();
        assert!(ran.iter().any(|q| q == "ROLLBACK TO SAVEPOINT a") && ran.iter().any(|q| q == "RELEASE SAVEPOINT a"));
    }
    c.simple("ROLLBACK").await;
}

#[tokio::test]
async fn a_read_of_every_shard_joins_them_to_the_transaction() {
    let s = setup(TWO_PHASE).await;
    let (k0, _) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    c.simple(&format!("INSERT INTO t (k, v) VALUES ({k0}, 'a')")).await;
    let got = c.simple("SELECT v FROM t ORDER BY v").await;
    assert_eq!(values(&got), ["a", "b", "c", "d"]);
    assert_eq!(tags(&got[got.len() - 1..]), "Z:T");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
    s.committed_in_two_phases(&s.s0);
}

#[tokio::test]
async fn commit_across_shards_with_a_row_limit_on_execute() {
    // pgjdbc sends COMMIT as Parse, Bind, Execute(max rows 1), Sync.
    let s = setup(TWO_PHASE).await;
    let (mut c, _, _) = across_both(&s).await;
    let got = c.parse("", "COMMIT").bind("", "", &[]).execute("", 1).sync().run().await;
    assert_eq!(tags(&got), "1 2 C Z:I");
    s.committed_in_two_phases(&s.s0);
}

#[tokio::test]
async fn settings_set_in_a_rolled_back_transaction_are_undone() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    c.simple("SET work_mem = '8MB'").await;
    c.simple("ROLLBACK").await;
    c.simple("/* shardcar: shard=s1 */ SELECT 1").await;
    assert!(!s.s1.statements().iter().any(|q| q.contains("work_mem")), "{:?}", s.s1.statements());
    c.simple("SET work_mem = '8MB'").await;
    c.simple("/* shardcar: shard=s1 */ SELECT 2").await;
    assert!(s.s1.log().iter().any(|q| q.contains("work_mem")), "a committed SET follows the session");
}

/// Runs the coordinator's recovery once, as its background task does.
async fn recover(s: &crate::harness::Setup) -> Result<(), String> {
    let coordinator = s.shared.coordinator.as_ref().unwrap();
    coordinator.recover(&s.shared.telemetry.metrics).await
}

#[tokio::test]
async fn recovery_finishes_a_commit_a_shard_missed() {
    let s = setup(TWO_PHASE).await;
    let (mut c, _, _) = across_both(&s).await;
    s.s1.refuse_commit_prepared.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = c.simple("COMMIT").await;
    assert_eq!(tags(&got), "N C Z:I", "committed, with a warning naming the shard not told yet");
    assert_eq!(s.s1.prepared().len(), 1);
    s.s1.refuse_commit_prepared.store(false, std::sync::atomic::Ordering::Relaxed);
    recover(&s).await.unwrap();
    assert!(s.s1.prepared().is_empty(), "the decision was carried out");
    assert!(s.s1.statements().iter().any(|q| q.starts_with("COMMIT PREPARED 'shardcar_s0_")));
}

#[tokio::test]
async fn recovery_follows_the_decider_and_leaves_other_names_alone() {
    let s = setup(TWO_PHASE).await;
    let (mut c, _, _) = across_both(&s).await;
    c.simple("COMMIT").await;
    // Left by sidecars that died: one whose decider (s0) rolled back, one
    // whose decider committed (a transaction id s0 saw commit), and names
    // that are not this fleet's.
    let xid: u64 =
        s.s0.statements()
            .iter()
            .find_map(|q| q.split("'shardcar_s0_").nth(1).map(|r| r.chars().take_while(char::is_ascii_digit).collect()))
            .and_then(|x: String| x.parse().ok())
            .expect("s0 decided");
    assert_eq!(s.s0.xact_status(xid), "committed");
    let committed = format!("shardcar_s0_{xid}");
    for gid in ["shardcar_s0_999999", committed.as_str(), "someone_elses", "shardcar_gone_5"] {
        s.s1.leave_prepared(gid);
    }
    recover(&s).await.unwrap_err();
    assert_eq!(s.s1.prepared(), ["someone_elses", "shardcar_gone_5"], "only this fleet's are resolved");
    let ran = s.s1.statements();
    assert!(ran.contains(&"ROLLBACK PREPARED 'shardcar_s0_999999'".to_string()), "{ran:?}");
    assert!(ran.contains(&format!("COMMIT PREPARED '{committed}'")), "{ran:?}");
}

#[tokio::test]
async fn a_batch_writing_on_two_shards_commits_as_one_transaction() {
    // asyncpg executemany / pgjdbc executeBatch in autocommit.
    let s = setup(TWO_PHASE).await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.parse("", &format!("INSERT INTO t (k, v) VALUES ({k0}, 'a')")).bind("", "", &[]).execute("", 0);
    c.parse("", &format!("INSERT INTO t (k, v) VALUES ({k1}, 'b')")).bind("", "", &[]).execute("", 0);
    c.parse("", &format!("INSERT INTO t (k, v) VALUES ({k0}, 'c')")).bind("", "", &[]).execute("", 0);
    let got = c.sync().run().await;
    assert_eq!(tags(&got), "1 2 C 1 2 C 1 2 C Z:I", "no transaction block for the client");
    s.committed_in_two_phases(&s.s0);
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I", "the session is idle again");
}

#[tokio::test]
async fn a_batch_across_shards_that_fails_rolls_back_everywhere() {
    let s = setup(TWO_PHASE).await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.parse("", &format!("INSERT INTO t (k, v) VALUES ({k0}, 'a')")).bind("", "", &[]).execute("", 0);
    c.parse("", &format!("INSERT INTO t (k, v) VALUES ({k1}, 'b')")).bind("", "", &[]).execute("", 0);
    c.parse("", &format!("SELECT fail FROM t WHERE k = {k0}")).bind("", "", &[]).execute("", 0);
    c.parse("", &format!("INSERT INTO t (k, v) VALUES ({k1}, 'never')")).bind("", "", &[]).execute("", 0);
    let got = c.sync().run().await;
    // What was sent after the error may have run on the other shard; the
    // client sees none of it, and every shard rolls back.
    assert_eq!(tags(&got), "1 2 C 1 2 C 1 2 E:42000 Z:I");
    for f in [&s.s0, &s.s1] {
        let q = f.statements();
        assert_eq!(q.last().map(String::as_str), Some("ROLLBACK"), "{q:?}");
        assert!(f.prepared().is_empty());
    }
}

#[tokio::test]
async fn a_catalog_read_goes_to_the_default_shard_without_joining_the_transaction() {
    // The default shard's catalog is the one whose OIDs clients see.
    let s = setup("").await;
    let (_, k1) = keys(&s).await;
    let probes = s.s0.statements().len();
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    c.simple(&format!("INSERT INTO t (k, v) VALUES ({k1}, 'b')")).await;
    let lookup = "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace";
    let got = tags(&c.simple(lookup).await);
    assert!(got.starts_with("T D") && got.ends_with("C Z:T"), "{got}");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I", "no second shard to commit without two-phase commit");
    assert_eq!(s.s0.statements()[probes..], [lookup], "outside the transaction, which never reached s0");
    assert_eq!(s.s1.statements().last().map(String::as_str), Some("COMMIT"));
}

#[tokio::test]
async fn at_the_end_of_the_shutdown_grace_an_open_transaction_is_told_why_it_ends() {
    use shardcar::shared::Stopping;
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    assert_eq!(tags(&c.simple("/* shardcar: shard=s1 */ INSERT INTO x VALUES (1)").await), "C Z:T");
    s.running.send(Stopping::Draining).unwrap();
    assert_eq!(tags(&c.simple("/* shardcar: shard=s1 */ INSERT INTO x VALUES (2)").await), "C Z:T", "it may finish");
    s.running.send(Stopping::Now).unwrap();
    let got = c.until_closed().await;
    assert_eq!(tags(&got), "E:57P01");
    assert!(!s.s1.statements().iter().any(|q| q == "COMMIT"), "nothing committed");
}

#[tokio::test]
async fn a_client_idle_in_a_transaction_past_the_timeout_is_disconnected_and_rolled_back() {
    let s = crate::harness::setup_with("", "idle_transaction_timeout_ms = 300", "").await;
    let mut idle_outside = Client::connect(&s).await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    assert_eq!(tags(&c.simple("/* shardcar: shard=s1 */ INSERT INTO x VALUES (1)").await), "C Z:T");
    assert_eq!(tags(&c.until_closed().await), "E:25P03", "cut off, with why");
    assert!(!s.s1.statements().iter().any(|q| q == "COMMIT"), "nothing committed");
    // Idle outside a transaction is fine, however long.
    assert_eq!(tags(&idle_outside.simple("SELECT 1").await), "T D C Z:I");
}

/// Found by fuzzing (`session`): with the statement already prepared on the
/// server, its ParseComplete is made here; at the head of the queue it hid
/// the Describe replies owed behind it, and a statement across shards that
/// waited for the queue to drain went ahead of them and then hung.
#[tokio::test]
async fn a_describe_behind_a_parse_answered_here_is_relayed_before_a_statement_across_shards() {
    let s = crate::harness::setup("two_phase_commit = true").await;
    // Earlier sessions prepared the statement on both shards' connections.
    for shard in ["s0", "s1"] {
        let mut e = crate::harness::Client::connect(&s).await;
        e.simple(&format!("SET shardcar.shard = '{shard}'")).await;
        e.simple("BEGIN").await;
        e.simple("SELECT 1").await;
        e.parse("n", "SELECT fail").describe(b'S', "n").sync().run().await;
        e.simple("COMMIT").await;
    }
    let mut c = crate::harness::Client::connect(&s).await;
    let scatter = "SELECT v FROM t ORDER BY v";
    c.query(scatter).query("BEGIN");
    for _ in 0..7 {
        c.query(scatter);
    }
    c.parse("n", "SELECT fail");
    for _ in 0..6 {
        c.describe(b'S', "n");
    }
    c.query(scatter).query(scatter).query("SELECT fail");
    for _ in 0..11 {
        c.describe(b'S', "n");
    }
    c.parse("n", "SELECT fail");
    for _ in 0..6 {
        c.describe(b'S', "n");
    }
    c.query("BEGIN").send().await;
    c.shutdown_writing().await;
    let got = crate::harness::tags(&c.until_closed().await);
    let describes = "1 t T t T t T t T t T t T ";
    assert!(got.contains(&format!("{describes}T D D D D C Z:T")), "{got}");
    assert!(got.ends_with("E:42000 Z:E"), "{got}");
}

/// Found by fuzzing (`session`): in a transaction across shards, a batch
/// that failed on one shard without a Sync, then a simple query that must
/// run on every shard: Postgres ignores a query until the Sync, and the
/// session waited for its replies. Nothing of it may run anywhere.
#[tokio::test]
async fn a_query_behind_a_failed_batch_is_ignored_until_sync_on_every_shard() {
    let s = crate::harness::setup("two_phase_commit = true").await;
    let mut c = crate::harness::Client::connect(&s).await;
    c.simple("BEGIN").await;
    c.simple("SELECT v FROM t ORDER BY v").await;
    c.parse("", "/* shardcar: shard=s0 */ SELECT fail").bind("", "", &[]).execute("", 0).flush_msg();
    c.query("CREATE TABLE x (a int)").sync().send().await;
    let got = crate::harness::tags(&c.until_ready().await);
    assert_eq!(got, "1 2 E:42000 Z:E");
    for shard in [&s.s0, &s.s1] {
        assert!(!shard.statements().iter().any(|q| q.contains("CREATE TABLE")), "{:?}", shard.log());
    }
    assert_eq!(crate::harness::tags(&c.simple("ROLLBACK").await), "C Z:I");
}

/// Found by fuzzing (`session`, two-phase commit): a portal across shards
/// bound before a mid-batch BEGIN, run after a statement on one shard whose
/// extended messages were not yet synced, lost the transaction block when
/// the next query failed — Postgres keeps it, failed, until ROLLBACK.
#[tokio::test]
async fn an_error_after_a_portal_across_shards_in_a_mid_batch_block_fails_the_block() {
    let s = setup(TWO_PHASE).await;
    let mut c = Client::connect(&s).await;
    let on_s1 = "/* shardcar: shard=s1 */ SELECT 1";
    c.parse("n", "SELECT count(*) FROM t").bind("p", "n", &[]).describe(b'P', "p").query("BEGIN");
    c.bind("q", "n", &[]).parse("", on_s1).bind("", "", &[]).execute("q", 3);
    c.query("SELECT fail").query("SELECT fail");
    c.send().await;
    let mut got = c.until_ready().await;
    for _ in 0..2 {
        got.extend(c.until_ready().await);
    }
    assert_eq!(tags(&got), "1 2 T C Z:T 2 1 2 D D C E:42000 Z:E E:25P02 Z:E");
    assert_eq!(tags(&c.simple("ROLLBACK").await), "C Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

/// The same with the unnamed portal, which a Bind replaces: a suspended
/// portal across shards is read to its end first.
#[tokio::test]
async fn replacing_a_suspended_portal_across_shards_in_a_block_keeps_the_block() {
    let s = setup(TWO_PHASE).await;
    let mut c = Client::connect(&s).await;
    let on_s1 = "/* shardcar: shard=s1 */ SELECT 1";
    c.parse("n", "SELECT count(*) FROM t").query("BEGIN").bind("", "n", &[]).execute("", 1);
    c.parse("", on_s1).bind("", "", &[]).execute("", 0);
    c.query("SELECT fail").query("SELECT fail");
    c.send().await;
    let mut got = c.until_ready().await;
    for _ in 0..2 {
        got.extend(c.until_ready().await);
    }
    assert_eq!(tags(&got), "1 C Z:T 2 D s 1 2 D C E:42000 Z:E E:25P02 Z:E");
    assert_eq!(tags(&c.simple("ROLLBACK").await), "C Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

/// A simple query ends the unnamed portal, in a block too; a named portal
/// bound and described before BEGIN runs in the block.
#[tokio::test]
async fn a_query_ends_the_unnamed_portal_but_not_named_ones() {
    let s = setup(TWO_PHASE).await;
    let mut c = Client::connect(&s).await;
    c.parse("n", "SELECT count(*) FROM t").bind("", "n", &[]).describe(b'P', "").query("BEGIN").execute("", 3).sync();
    let mut got = c.run().await;
    got.extend(c.until_ready().await);
    assert_eq!(tags(&got), "1 2 T C Z:T E:34000 Z:E");
    assert_eq!(tags(&c.simple("ROLLBACK").await), "C Z:I");
    let on_s1 = "/* shardcar: shard=s1 */ SELECT 1";
    c.bind("p", "n", &[]).describe(b'P', "p").query("BEGIN").parse("", on_s1).bind("", "", &[]).execute("p", 3);
    c.query("SELECT fail").query("SELECT fail");
    let mut got = c.run().await;
    for _ in 0..2 {
        got.extend(c.until_ready().await);
    }
    assert_eq!(tags(&got), "2 T C Z:T 1 2 D D C E:42000 Z:E E:25P02 Z:E");
}

/// What shardcar runs itself (a statement across shards, a savepoint or
/// COMMIT across shards) behind a statement whose error it has not read
/// yet is skipped, as Postgres skips everything after an error up to Sync.
#[tokio::test]
async fn statements_shardcar_runs_itself_are_skipped_after_an_earlier_error_in_the_batch() {
    let s = setup(TWO_PHASE).await;
    let mut c = Client::connect(&s).await;
    let fail_on_s1 = "/* shardcar: shard=s1 */ SELECT fail";
    for (then, status) in [("SELECT v FROM t", "I"), ("SAVEPOINT a", "E"), ("COMMIT", "E"), ("SELECT v FROM t", "E")] {
        let in_block = status == "E";
        if in_block {
            let (k0, k1) = keys(&s).await;
            c.simple("BEGIN").await;
            c.simple(&format!("SELECT v FROM t WHERE k IN ({k0}, {k1})")).await;
        }
        let before = (s.s0.log().len(), s.s1.log().len());
        c.parse("", fail_on_s1).bind("", "", &[]).execute("", 0).parse("", then).bind("", "", &[]).execute("", 0);
        assert_eq!(tags(&c.sync().run().await), format!("1 2 E:42000 Z:{status}"), "{then}");
        let sent: Vec<String> = s.s0.log()[before.0..].iter().chain(&s.s1.log()[before.1..]).cloned().collect();
        assert!(!sent.iter().any(|l| l.contains(then)), "{then} was skipped: {sent:?}");
        if in_block {
            assert_eq!(tags(&c.simple("ROLLBACK").await), "C Z:I");
        }
    }
}

/// Binding a portal name that is taken is refused (42P03) and the batch
/// skipped to its Sync, as Postgres does.
#[tokio::test]
async fn a_bind_to_a_portal_name_in_use_is_refused() {
    let s = setup(TWO_PHASE).await;
    let mut c = Client::connect(&s).await;
    c.parse("n", "SELECT count(*) FROM t").bind("p", "n", &[]).query("BEGIN").bind("p", "n", &[]);
    c.execute("p", 0).sync();
    c.send().await;
    let mut got = c.until_ready().await;
    got.extend(c.until_ready().await);
    assert_eq!(tags(&got), "1 2 C Z:T E:42P03 Z:E");
}

/// A portal across shards left suspended in a transaction while the client
/// runs other statements on the same shards (a cursor read in a loop that
/// writes): they run in the same transaction, never a second one.
#[tokio::test]
async fn statements_beside_a_suspended_portal_across_shards_run_in_its_transaction() {
    let s = setup(TWO_PHASE).await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    assert_eq!(
        tags(&c.parse("n", "SELECT v FROM t").bind("p", "n", &[]).execute("p", 1).sync().run().await),
        "1 2 D s Z:T"
    );
    let got = c.simple(&format!("INSERT INTO t (k, v) VALUES ({k0}, 'a'), ({k1}, 'b')")).await;
    assert_eq!(tags(&got), "C Z:T");
    assert_eq!(tags(&c.simple(&format!("INSERT INTO t (k, v) VALUES ({k0}, 'c')")).await), "C Z:T");
    assert_eq!(tags(&c.execute("p", 0).sync().run().await), "D D D C Z:T", "the other three of a, b, c, d");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
    for shard in [&s.s0, &s.s1] {
        let log = shard.statements();
        let count = |what: &str| log.iter().filter(|q| q.starts_with(what)).count();
        assert_eq!(count("BEGIN"), 1, "one transaction per shard: {log:?}");
    }
    s.committed_in_two_phases(&s.s0);
}
