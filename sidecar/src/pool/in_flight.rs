//! Work in flight on one server: statements running on it and sessions
//! waiting for one of its connections, each with when it began. A stall (a
//! lock, a flood of slow statements, an exhausted pool) then shows while it
//! lasts, as a count and an age — latencies only tell of statements that
//! finished.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Tracker {
    next: AtomicU64,
    /// By ticket: tickets are taken in order, so the first is the oldest.
    started: Mutex<BTreeMap<u64, Instant>>,
}

/// How much is in flight now, and for how long the oldest of it has been.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Now {
    pub count: usize,
    pub oldest: Option<Duration>,
}

impl Tracker {
    /// Counts something from now until the returned ticket is dropped.
    pub fn begin(self: &Arc<Self>) -> Ticket {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        started.insert(ticket, Instant::now());
        Ticket { tracker: self.clone(), ticket }
    }

    pub fn now(&self) -> Now {
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        Now { count: started.len(), oldest: started.first_key_value().map(|(_, at)| at.elapsed()) }
    }
}

/// One thing in flight; dropping it ends it, on every path (finished,
/// failed, connection lost, session gone).
pub struct Ticket {
    tracker: Arc<Tracker>,
    ticket: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.ticket)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut started = self.tracker.started.lock().unwrap_or_else(|p| p.into_inner());
        started.remove(&self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_open_and_ages_the_oldest() {
        let t = Arc::new(Tracker::default());
        assert_eq!(t.now(), Now::default());
        let first = t.begin();
        std::thread::sleep(Duration::from_millis(20));
        let second = t.begin();
        let now = t.now();
        assert_eq!(now.count, 2);
        assert!(now.oldest.unwrap() >= Duration::from_millis(20));
        drop(first);
        let now = t.now();
        assert_eq!(now.count, 1);
        assert!(now.oldest.unwrap() < Duration::from_millis(20), "the second is the oldest now");
        drop(second);
        assert_eq!(t.now(), Now::default());
    }
}
