//! The simple query protocol: one shard, every shard, refusals.

use crate::harness::{Client, error, setup, tags, values};
use crate::keys;

#[tokio::test]
async fn a_hint_sends_the_query_to_its_shard_only() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("/* shardcar: shard=s1 */ SELECT 1").await;
    assert_eq!(tags(&got), "T D C Z:I");
    assert_eq!(s.s1.statements(), ["/* shardcar: shard=s1 */ SELECT 1"]);
    assert!(s.s0.statements().is_empty());
}

#[tokio::test]
async fn an_empty_query_needs_no_shard() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.simple("").await), "I Z:I");
    assert_eq!(tags(&c.simple(" ;; ").await), "I Z:I");
    assert!(s.s0.log().is_empty() && s.s1.log().is_empty());
}

#[tokio::test]
async fn a_read_of_every_shard_concatenates_their_rows() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("SELECT v FROM t").await;
    assert_eq!(tags(&got), "T D D D D C Z:I");
    let mut v = values(&got);
    v.sort();
    assert_eq!(v, ["a", "b", "c", "d"]);
    assert_eq!(got[5].tag_text(), "SELECT 4");
}

#[tokio::test]
async fn order_by_merges_the_shards_rows_in_order() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("SELECT v FROM t ORDER BY v").await;
    assert_eq!(values(&got), ["a", "b", "c", "d"]);
    let got = c.simple("SELECT v FROM t ORDER BY v LIMIT 3").await;
    assert_eq!(values(&got), ["a", "b", "c"]);
    assert_eq!(got.iter().find(|m| m.tag == b'C').unwrap().tag_text(), "SELECT 3");
}

#[tokio::test]
async fn an_insert_by_key_reaches_one_shard() {
    let s = setup("").await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    let (n0, n1) = (s.s0.statements().len(), s.s1.statements().len());
    let got = c.simple(&format!("INSERT INTO t (k, v) VALUES ({k1}, 'x')")).await;
    assert_eq!(tags(&got), "C Z:I");
    assert_eq!((s.s0.statements().len(), s.s1.statements().len()), (n0, n1 + 1));
    c.simple(&format!("INSERT INTO t (k, v) VALUES ({k0}, 'y')")).await;
    assert_eq!(s.s0.statements().len(), n0 + 1);
}

#[tokio::test]
async fn a_multi_row_insert_is_split_by_shard() {
    let s = setup("").await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    let sql = format!("INSERT INTO t (k, v) VALUES ({k0}, 'a'), ({k1}, 'b'), ({k0}, 'c')");
    let got = c.simple(&sql).await;
    assert_eq!(tags(&got), "C Z:I");
    let last = |f: &crate::fake::Fake| f.statements().last().cloned().unwrap();
    let (on0, on1) = (last(&s.s0), last(&s.s1));
    assert!(on0.contains("'a'") && on0.contains("'c'") && !on0.contains("'b'"), "{on0}");
    assert!(on1.contains("'b'") && !on1.contains("'a'"), "{on1}");
}

#[tokio::test]
async fn ddl_runs_on_every_shard() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("CREATE TABLE x (a int)").await;
    assert_eq!(tags(&got), "C Z:I");
    assert_eq!(s.s0.statements(), ["CREATE TABLE x (a int)"]);
    assert_eq!(s.s1.statements(), ["CREATE TABLE x (a int)"]);
}

#[tokio::test]
async fn ddl_never_rides_along_with_other_statements() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("CREATE TABLE x (a int); INSERT INTO x VALUES (1)").await;
    assert_eq!(tags(&got), "E:0A000 Z:I");
    assert!(error(&got).field(b'H').contains("DDL"));
    assert!(s.s0.log().is_empty() && s.s1.log().is_empty(), "no shard got any of it");
}

#[tokio::test]
async fn a_shards_error_ends_the_statement_not_the_session() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.simple("SELECT fail").await), "E:42000 Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I");
}

#[tokio::test]
async fn an_unknown_shard_is_a_clear_error() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("/* shardcar: shard=s9 */ SELECT 1").await;
    assert_eq!(tags(&got), "E:22023 Z:I");
    assert!(error(&got).field(b'H').contains("s0, s1"));
}

#[tokio::test]
async fn a_write_to_every_shard_is_refused_unless_allowed() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.simple("UPDATE t SET v = 'x'").await), "E:0A000 Z:I");
    assert!(s.s0.log().is_empty() && s.s1.log().is_empty());
    let s = setup("allow_broadcast_writes = true").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("UPDATE t SET v = 'x'").await;
    assert_eq!(tags(&got), "C Z:I");
    assert_eq!(got[0].tag_text(), "UPDATE 2", "counts summed over the shards");
}

#[tokio::test]
async fn an_update_of_the_shard_key_is_refused() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("UPDATE t SET k = 2 WHERE k = 1").await;
    assert_eq!(tags(&got), "E:0A000 Z:I");
    assert!(error(&got).field(b'M').contains("shard key"));
}

#[tokio::test]
async fn set_shardcar_shard_targets_later_statements() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.simple("SET shardcar.shard = 's1'").await), "C Z:I");
    let shown = c.simple("SHOW shardcar.shard").await;
    assert_eq!(values(&shown), ["s1"]);
    c.simple("SELECT 1").await;
    assert_eq!(s.s1.statements(), ["SELECT 1"]);
    assert!(s.s0.statements().is_empty());
}

#[tokio::test]
async fn statements_for_two_shards_in_one_string_are_refused() {
    let s = setup("").await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    let n = (s.s0.statements().len(), s.s1.statements().len());
    let sql = format!("INSERT INTO t (k, v) VALUES ({k0}, 'a'); INSERT INTO t (k, v) VALUES ({k1}, 'b')");
    let got = c.simple(&sql).await;
    assert_eq!(tags(&got), "E:0A000 Z:I");
    assert_eq!((s.s0.statements().len(), s.s1.statements().len()), n, "neither ran");
}

#[tokio::test]
async fn statements_shardcar_answers_must_stand_alone() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    assert_eq!(tags(&c.simple("SELECT 1; SET shardcar.shard = 's1'").await), "E:0A000 Z:I");
    let got = c.simple("LISTEN x").await;
    assert_eq!(tags(&got), "E:0A000 Z:I");
    assert!(error(&got).field(b'H').contains("NOTIFY"));
}

#[tokio::test]
async fn copy_into_one_shard_streams_through() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.query("/* shardcar: shard=s1 */ COPY t FROM STDIN").send().await;
    assert_eq!(tags(&c.take(1).await), "G");
    let got = c.copy_data("1\ta\n2\tb\n").copy_done().run().await;
    assert_eq!(tags(&got), "C Z:I");
    assert_eq!(got[0].tag_text(), "COPY 2");
    assert!(s.s0.log().is_empty());
}

#[tokio::test]
async fn copy_data_read_ahead_past_a_flush_is_sent_on_without_more_from_the_client() {
    // Data the session has already read (here: all of it, with CopyDone, in
    // one write) is forwarded even when a flush to the server comes in the
    // middle of it and the client then waits for the answer.
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    c.query("/* shardcar: shard=s1 */ COPY t FROM STDIN").send().await;
    assert_eq!(tags(&c.take(1).await), "G");
    let rows = |n: usize| format!("{}\n", "x".repeat(999)).repeat(n);
    // A large message first: the session's read buffer grows to hold it.
    c.copy_data(&rows(100)).send().await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Then more than a flush's worth and the end, read in one go.
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), c.copy_data(&rows(70)).copy_done().run())
        .await
        .expect("the COPY ended (the session did not wait on the client with its data unsent)");
    assert_eq!(tags(&got), "C Z:I");
    assert_eq!(got[0].tag_text(), "COPY 170");
}

#[tokio::test]
async fn copy_without_a_shard_splits_rows_and_commits_them_together() {
    let s = setup("").await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.query("COPY t (k, v) FROM STDIN").send().await;
    assert_eq!(tags(&c.take(1).await), "G");
    let got = c.copy_data(&format!("{k0}\ta\n{k1}\tb\n{k0}\tc\n")).copy_done().run().await;
    assert_eq!(tags(&got), "C Z:I");
    assert_eq!(got[0].tag_text(), "COPY 3");
    for f in [&s.s0, &s.s1] {
        let log = f.statements();
        let n = log.len();
        assert_eq!(log[n - 3..], ["BEGIN", "COPY t (k, v) FROM STDIN", "COMMIT"], "each shard in a transaction");
    }
}

#[tokio::test]
async fn copy_into_a_reference_table_writes_every_shard_or_is_refused() {
    let s = setup("reference_tables = [\"r\"]").await;
    let mut c = Client::connect(&s).await;
    c.query("COPY r FROM STDIN (FORMAT csv)").send().await;
    assert_eq!(tags(&c.take(1).await), "G");
    let got = c.copy_data("fr,France\n").copy_data("jp,Japan\n").copy_done().run().await;
    assert_eq!(tags(&got), "C Z:I");
    assert_eq!(got[0].tag_text(), "COPY 2", "the rows of one shard, not the sum");
    for f in [&s.s0, &s.s1] {
        let log = f.statements();
        assert_eq!(log[log.len() - 3..], ["BEGIN", "COPY r FROM STDIN (FORMAT csv)", "COMMIT"], "every shard");
    }
    // A server file would be read by each server on its own: refused, nowhere run.
    let got = c.simple("COPY r FROM '/tmp/countries.csv'").await;
    assert_eq!(tags(&got), "E:0A000 Z:I");
    assert!(error(&got).field(b'M').contains("reference table"), "{}", error(&got).field(b'M'));
    assert!(!s.s0.statements().iter().chain(&s.s1.statements()).any(|q| q.contains("countries.csv")));
}

#[tokio::test]
async fn a_split_copy_with_a_bad_row_copies_nothing() {
    let s = setup("").await;
    let (k0, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    c.query("COPY t (k, v) FROM STDIN").send().await;
    c.take(1).await;
    let got = c.copy_data(&format!("{k0}\ta\n{k1}\tbad\n")).copy_done().run().await;
    assert_eq!(tags(&got), "E:22P04 Z:I");
    for f in [&s.s0, &s.s1] {
        assert_eq!(f.statements().last().map(String::as_str), Some("ROLLBACK"), "every shard rolled back");
    }
    // A row without its key cannot be placed at all.
    c.query("COPY t (v, k) FROM STDIN").send().await;
    c.take(1).await;
    let got = c.copy_data("just one field\n").copy_done().run().await;
    assert_eq!(tags(&got), "E:22P04 Z:I");
    assert_eq!(tags(&c.simple("SELECT 1").await), "T D C Z:I", "the session carries on");
}

#[tokio::test]
async fn a_pools_connection_reset_succeeds() {
    // asyncpg's pool resets every connection it takes back with this.
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;").await;
    assert_eq!(tags(&got), "T D C C C C Z:I");
    assert_eq!(tags(&c.simple("LISTEN x").await), "E:0A000 Z:I", "LISTEN itself cannot work");
}

#[tokio::test]
async fn ddl_reaches_every_shard_or_fails_whatever_the_path() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let on_both = |sql: &str| s.s0.statements().iter().any(|q| q == sql) && s.s1.statements().iter().any(|q| q == sql);
    // Extended protocol (JDBC's executeUpdate).
    let got = c.parse("", "CREATE TABLE e1 (a int)").bind("", "", &[]).execute("", 1).sync().run().await;
    assert_eq!(tags(&got), "1 2 C Z:I");
    assert!(on_both("CREATE TABLE e1 (a int)"));
    // Several DDL statements in one string.
    assert_eq!(tags(&c.simple("CREATE TABLE e2 (a int); DROP TABLE e2").await), "C C Z:I");
    assert!(on_both("CREATE TABLE e2 (a int); DROP TABLE e2"));
    // In a transaction without two-phase commit: refused, on no shard.
    c.simple("BEGIN").await;
    let got = c.simple("DROP TABLE e1").await;
    assert_eq!(tags(&got), "E:0A000 Z:E");
    c.simple("ROLLBACK").await;
    assert!(!s.s0.statements().iter().chain(&s.s1.statements()).any(|q| q == "DROP TABLE e1"));
    // With it: on every shard, committed together.
    let s = setup("two_phase_commit = true").await;
    let mut c = Client::connect(&s).await;
    c.simple("BEGIN").await;
    assert_eq!(tags(&c.simple("DROP TABLE e1").await), "C Z:T");
    assert_eq!(tags(&c.simple("COMMIT").await), "C Z:I");
    for f in [&s.s0, &s.s1] {
        assert!(f.statements().contains(&"DROP TABLE e1".to_string()));
    }
    s.committed_in_two_phases(&s.s0);
}

#[tokio::test]
async fn copy_to_routes_by_the_key_of_its_query() {
    let s = setup("").await;
    let (_, k1) = keys(&s).await;
    let mut c = Client::connect(&s).await;
    let n0 = s.s0.statements().len();
    let got = c.simple(&format!("COPY (SELECT v FROM t WHERE k = {k1}) TO STDOUT")).await;
    assert_eq!(tags(&got), "H d d c C Z:I");
    assert_eq!(s.s0.statements().len(), n0, "only the key's shard");
}

#[tokio::test]
async fn copy_to_of_every_shard_concatenates_their_data() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("COPY t TO STDOUT").await;
    assert_eq!(tags(&got), "H d d d d c C Z:I", "one CopyOutResponse, one CopyDone");
    assert_eq!(got[6].tag_text(), "COPY 4");
    let got = c.simple("COPY (SELECT v FROM t ORDER BY v) TO STDOUT").await;
    assert_eq!(tags(&got), "E:0A000 Z:I", "an order cannot be kept by concatenating");
    // With the extended protocol the CopyOutResponse comes with Execute.
    let got = c.parse("", "COPY t TO STDOUT").bind("", "", &[]).describe(b'P', "").execute("", 0).sync().run().await;
    assert_eq!(tags(&got), "1 2 n H d d d d c C Z:I");
}

#[tokio::test]
async fn insert_select_into_a_sharded_table_says_why_it_is_refused() {
    let s = setup("").await;
    let mut c = Client::connect(&s).await;
    let got = c.simple("INSERT INTO t (k, v) SELECT * FROM unnest(ARRAY[1, 2], ARRAY['a', 'b'])").await;
    assert_eq!(tags(&got), "E:0A000 Z:I");
    let e = error(&got);
    assert!(
        e.field(b'M').contains("INSERT ... SELECT")
            && e.field(b'H').contains("unnest($1, $2, ...) with the arrays bound"),
        "{e:?}"
    );
}
