//! The clock plugin call deadlines are counted on: a thread that advances
//! wasmtime's epoch every tick while calls are being made, and parks when
//! none has been made for a while, so an idle sidecar is not woken hundreds
//! of times a second (the ticks were 2% of shardcar's CPU under load at 1 ms).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::thread::Thread;
use std::time::Duration;

/// The ticking thread; stopped when dropped.
pub struct Ticker {
    shared: Arc<Shared>,
    thread: Thread,
}

struct Shared {
    /// Calls under way.
    active: AtomicUsize,
    /// Calls ever started (a quiet period is one where this did not move).
    started: AtomicU64,
    parked: AtomicBool,
    running: AtomicBool,
}

/// A call under way: the clock ticks until it is dropped.
pub struct Ticking<'a>(&'a Shared);

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, SeqCst);
    }
}

impl Ticker {
    /// Calls `on_tick` every `tick`, parking after `idle_after` with no call.
    pub fn start(
        name: &str,
        tick: Duration,
        idle_after: Duration,
        on_tick: impl Fn() + Send + 'static,
    ) -> std::io::Result<Ticker> {
        let shared = Arc::new(Shared {
            active: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            running: AtomicBool::new(true),
        });
        let state = shared.clone();
        let idle_ticks = (idle_after.as_micros() / tick.as_micros().max(1)).max(1);
        let handle = std::thread::Builder::new().name(name.into()).spawn(move || {
            let (mut seen, mut quiet) = (state.started.load(SeqCst), 0);
            while state.running.load(SeqCst) {
                std::thread::sleep(tick);
                on_tick();
                let now = state.started.load(SeqCst);
                if now != seen || state.active.load(SeqCst) > 0 {
                    (seen, quiet) = (now, 0);
                    continue;
                }
                quiet += 1;
                if quiet < idle_ticks {
                    continue;
                }
                // Either a call's `enter` sees `parked` and unparks, or the
                // checks below see that call (both sides are SeqCst).
                state.parked.store(true, SeqCst);
                if state.active.load(SeqCst) == 0 && state.started.load(SeqCst) == seen && state.running.load(SeqCst) {
                    std::thread::park();
                }
                state.parked.store(false, SeqCst);
                (seen, quiet) = (state.started.load(SeqCst), 0);
            }
        })?;
        Ok(Ticker { shared, thread: handle.thread().clone() })
    }

    /// Marks a call under way, waking the clock if it sleeps.
    pub fn enter(&self) -> Ticking<'_> {
        self.shared.started.fetch_add(1, SeqCst);
        self.shared.active.fetch_add(1, SeqCst);
        if self.shared.parked.load(SeqCst) && self.shared.parked.swap(false, SeqCst) {
            self.thread.unpark();
        }
        Ticking(&self.shared)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.running.store(false, SeqCst);
        self.thread.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits up to 10 s for `cond` (the machine may be busy).
    fn eventually(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn ticks_while_calls_are_made_and_sleeps_when_idle() {
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = Ticker::start("test-ticker", Duration::from_millis(1), Duration::from_millis(20), move || {
            counter.fetch_add(1, SeqCst);
        })
        .unwrap();
        let count = || ticks.load(SeqCst);
        assert!(eventually(|| ticker.shared.parked.load(SeqCst)), "never parked with no calls");
        let asleep = count();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(count(), asleep, "ticked while parked");

        // A call wakes it, and it keeps ticking for as long as the call lasts.
        let call = ticker.enter();
        assert!(eventually(|| count() > asleep + 40), "a call did not wake the clock");
        assert!(!ticker.shared.parked.load(SeqCst), "parked during a call");
        drop(call);
        assert!(eventually(|| ticker.shared.parked.load(SeqCst)), "never parked again");

        // Each call after an idle spell wakes it.
        for _ in 0..10 {
            assert!(eventually(|| ticker.shared.parked.load(SeqCst)), "never parked again");
            let before = count();
            let _call = ticker.enter();
            assert!(eventually(|| count() > before), "a call after idling saw no tick");
        }
    }
}
