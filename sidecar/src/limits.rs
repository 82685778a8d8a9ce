//! What clients may make shardcar hold, in connections and bytes: slots for
//! logged-in clients and for clients still logging in (each login under a
//! deadline), a largest message, and one budget for all partly received
//! large messages — so that a client declaring a 1 GiB message, or a
//! thousand half-open logins, cost a bounded amount and get a clear error.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge};
use tokio::sync::Semaphore;

use crate::config::Listen;
use crate::metrics::Metrics;
use crate::sqlerror::{SqlError, code};

/// Messages up to this size are read without taking from the budget: the
/// session's inbox bounds how many of those it holds.
const UNCOUNTED: usize = 64 * 1024;

pub struct ClientLimits {
    /// Logged-in clients.
    pub slots: Arc<Semaphore>,
    /// Clients between their first byte and the end of authentication.
    pub logins: Arc<Semaphore>,
    pub login_timeout: Duration,
    pub max_message: usize,
    budget: usize,
    buffered: AtomicUsize,
    buffered_gauge: IntGauge,
    hits: IntCounterVec,
}

/// The limits `hit` counts, each a label of `shardcar_client_limit_hits_total`.
const LIMITS: [&str; 6] =
    ["client_slots", "pending_logins", "login_timeout", "message_size", "buffer_budget", "prepared_bytes"];

impl ClientLimits {
    pub fn new(listen: &Listen, metrics: &Metrics) -> ClientLimits {
        // Every limit's series exists from the start (at 0), so that rates
        // and alerts on it work before the first hit.
        for limit in LIMITS {
            metrics.client_limit_hits.with_label_values(&[limit]);
        }
        ClientLimits {
            slots: Arc::new(Semaphore::new(listen.max_client_connections)),
            logins: Arc::new(Semaphore::new(listen.max_pending_logins)),
            login_timeout: listen.login_timeout(),
            max_message: listen.max_message_bytes,
            budget: listen.client_buffer_budget_bytes,
            buffered: AtomicUsize::new(0),
            buffered_gauge: metrics.client_buffered_bytes.clone(),
            hits: metrics.client_limit_hits.clone(),
        }
    }

    /// Counts a client turned away by `limit` (`shardcar_client_limit_hits_total`).
    pub fn hit(&self, limit: &str) {
        debug_assert!(LIMITS.contains(&limit), "unknown limit {limit}");
        self.hits.with_label_values(&[limit]).inc();
    }

    /// Room for a message of `len` bytes, before it is read: none needed
    /// for a small one, an error when it is larger than allowed or the
    /// budget cannot hold it now.
    pub fn reserve(self: &Arc<Self>, len: usize) -> Result<Option<Reservation>, SqlError> {
        if len > self.max_message {
            self.hit("message_size");
            return Err(SqlError::fatal(
                code::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "message of {len} bytes is larger than shardcar's listen.max_message_bytes ({})",
                    self.max_message
                ),
            )
            .hint("send large values in pieces (COPY, or several statements), or raise listen.max_message_bytes"));
        }
        if len <= UNCOUNTED {
            return Ok(None);
        }
        let taken = self.buffered.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used + len <= self.budget).then_some(used + len)
        });
        match taken {
            Ok(used) => {
                self.buffered_gauge.set((used + len) as i64);
                Ok(Some(Reservation { limits: self.clone(), bytes: len }))
            }
            Err(used) => {
                self.hit("buffer_budget");
                Err(SqlError::fatal(
                    code::OUT_OF_MEMORY,
                    format!(
                        "cannot take a {len}-byte message now: clients' messages in flight hold {used} of \
                         listen.client_buffer_budget_bytes ({})",
                        self.budget
                    ),
                )
                .hint("retry; or raise listen.client_buffer_budget_bytes"))
            }
        }
    }
}

/// Budget held for one message while it is received.
pub struct Reservation {
    limits: Arc<ClientLimits>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let left = self.limits.buffered.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        self.limits.buffered_gauge.set(left as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_message: usize, budget: usize) -> Arc<ClientLimits> {
        let listen = Listen { max_message_bytes: max_message, client_buffer_budget_bytes: budget, ..Listen::default() };
        Arc::new(ClientLimits::new(&listen, &Metrics::new()))
    }

    #[test]
    fn small_messages_take_nothing_and_large_ones_share_the_budget() {
        let l = limits(4 << 20, 6 << 20);
        assert!(l.reserve(1000).unwrap().is_none());
        let first = l.reserve(4 << 20).unwrap().expect("counted");
        let e = l.reserve(3 << 20).err().expect("over the budget");
        assert_eq!((e.code, e.fatal), (code::OUT_OF_MEMORY, true));
        drop(first);
        assert!(l.reserve(3 << 20).unwrap().is_some(), "the budget is given back");
        assert_eq!(l.reserve((4 << 20) + 1).err().unwrap().code, code::PROGRAM_LIMIT_EXCEEDED);
    }
}
