//! Work in flight on one server: statements running on it and sessions
//! waiting for one of its connections, each with when it began. A stall (a
//! lock, a flood of slow statements, an exhausted pool) then shows while it
//! lasts, as a count and an age — latencies only tell of statements that
//! finished.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every statement takes a ticket, so taking and ending one must be cheap:
/// a slot in a vector reused through a free list (no allocation once the
/// peak is reached, nothing ordered), where the rare reader scans for the
/// oldest.
#[derive(Default)]
pub struct Tracker {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    started: Vec<Option<Instant>>,
    free: Vec<usize>,
}

/// How much is in flight now, and for how long the oldest of it has been.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Now {
    pub count: usize,
    pub oldest: Option<Duration>,
}

impl Tracker {
    /// Counts something that began at `at` until the returned ticket is dropped.
    pub fn begin(self: &Arc<Self>, at: Instant) -> Ticket {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match s.free.pop() {
            Some(i) => {
                s.started[i] = Some(at);
                i
            }
            None => {
                s.started.push(Some(at));
                s.started.len() - 1
            }
        };
        Ticket { tracker: self.clone(), slot }
    }

    pub fn now(&self) -> Now {
        let s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = s.started.iter().flatten().min().map(|at| at.elapsed());
        Now { count: s.started.len() - s.free.len(), oldest }
    }
}

/// One thing in flight; dropping it ends it, on every path (finished,
/// failed, connection lost, session gone).
pub struct Ticket {
    tracker: Arc<Tracker>,
    slot: usize,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticket({})", self.slot)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.tracker.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.started[self.slot] = None;
        s.free.push(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_open_and_ages_the_oldest() {
        let t = Arc::new(Tracker::default());
        assert_eq!(t.now(), Now::default());
        let first = t.begin(Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let second = t.begin(Instant::now());
        let now = t.now();
        assert_eq!(now.count, 2);
        assert!(now.oldest.unwrap() >= Duration::from_millis(20));
        drop(first);
        let now = t.now();
        assert_eq!(now.count, 1);
        assert!(now.oldest.unwrap() < Duration::from_millis(20), "the second is the oldest now");
        // The freed slot is taken again; the count and the oldest stay right.
        let third = t.begin(Instant::now());
        assert_eq!(t.now().count, 2);
        drop(second);
        assert_eq!(t.now().count, 1);
        drop(third);
        assert_eq!(t.now(), Now::default());
    }
}
