//! The session layer against scripted shards (`fake`): message sequences a
//! driver may send, checked message by message in milliseconds, without
//! Postgres. What only a real server can show stays in `tests/e2e`.

mod cached_statements;
mod extended;
mod fake;
mod harness;
mod malformed;
mod simple;
mod transactions;

use harness::{Client, Setup};

/// A key the `hash` policy places on s0 and one it places on s1, found
/// through the session itself (an INSERT of each candidate).
pub async fn keys(setup: &Setup) -> (i64, i64) {
    let mut c = Client::connect(setup).await;
    let (mut on0, mut on1) = (None, None);
    for k in 1..50i64 {
        let sql = format!("INSERT INTO t (k, v) VALUES ({k}, 'probe')");
        let before = (setup.s0.statements().len(), setup.s1.statements().len());
        c.simple(&sql).await;
        if setup.s0.statements().len() > before.0 {
            on0.get_or_insert(k);
        }
        if setup.s1.statements().len() > before.1 {
            on1.get_or_insert(k);
        }
        if let (Some(a), Some(b)) = (on0, on1) {
            return (a, b);
        }
    }
    panic!("no keys found for both shards");
}
