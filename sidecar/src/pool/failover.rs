//! Which of a shard's servers takes its writes. Each health probe asks every
//! server `pg_is_in_recovery()` and its timeline; the one primary on the
//! newest timeline leads, a primary on an older timeline (an old primary
//! restarted after its replica was promoted) is fenced, and statements that
//! need the primary while there is none wait here for one (bounded).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use prometheus::Histogram;
use shardcar_api::Failover;
use tokio::sync::watch;

use super::Role;

/// What the latest probe learned about one server.
#[derive(Debug, Default)]
pub struct ServerState {
    /// 0: not probed yet, 1: primary, 2: in recovery (a replica).
    learned: AtomicU8,
    /// 0: not known.
    timeline: AtomicU32,
    /// Takes the shard's writes now.
    leader: AtomicBool,
    /// Claims to be a primary but is not the one that leads.
    fenced: AtomicBool,
    /// The latest time by which every write committed on the primary before
    /// it is known to be replayed here (read-your-writes).
    caught_up: Mutex<Option<Instant>>,
}

impl ServerState {
    /// The role the latest probe found, if it answered one.
    pub fn learned(&self) -> Option<Role> {
        match self.learned.load(Ordering::Relaxed) {
            1 => Some(Role::Primary),
            2 => Some(Role::Replica),
            _ => None,
        }
    }

    pub fn learn(&self, in_recovery: bool, timeline: Option<u32>) {
        self.learned.store(if in_recovery { 2 } else { 1 }, Ordering::Relaxed);
        self.timeline.store(timeline.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn timeline(&self) -> Option<u32> {
        Some(self.timeline.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// True when this changed it.
    pub fn set_fenced(&self, fenced: bool) -> bool {
        self.fenced.swap(fenced, Ordering::Relaxed) != fenced
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Whether a session whose last write on this shard was acknowledged at
    /// `since` sees it here.
    pub fn has_replayed(&self, since: Instant) -> bool {
        self.caught_up.lock().ok().and_then(|c| *c).is_some_and(|c| c >= since)
    }

    pub fn set_caught_up(&self, at: Option<Instant>) {
        if let Ok(mut c) = self.caught_up.lock() {
            *c = at.max(*c);
        }
    }
}

/// The outcome of one probe round for a shard.
#[derive(Debug, PartialEq, Eq)]
pub struct Election {
    /// The server that takes the writes, if exactly one may.
    pub leader: Option<usize>,
    /// Servers that claim to be primary and must get nothing.
    pub fenced: Vec<usize>,
    /// The newest timeline any primary of this shard was seen on.
    pub newest: u32,
}

/// `claims`: (server, timeline) of every server that answered as a primary;
/// `newest_seen`: the newest timeline a primary of the shard had before. A
/// primary behind the newest timeline has been replaced by a promotion; two
/// on the same newest one are a split brain, and neither gets writes.
pub fn elect(claims: &[(usize, u32)], newest_seen: u32) -> Election {
    let newest = claims.iter().map(|&(_, t)| t).max().unwrap_or(0).max(newest_seen);
    let on_newest: Vec<usize> = claims.iter().filter(|&&(_, t)| t == newest).map(|&(i, _)| i).collect();
    let leader = match on_newest.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let fenced = claims.iter().map(|&(i, _)| i).filter(|&i| Some(i) != leader).collect();
    Election { leader, fenced, newest }
}

const NONE: usize = usize::MAX;
const EVENTS_KEPT: usize = 20;
/// Probe rounds remembered for read-your-writes: enough to cover a replica
/// a few seconds behind at the fastest probe interval.
const ROUNDS_KEPT: usize = 64;

/// A shard's current primary and those waiting for one.
pub struct Leader {
    current: AtomicUsize,
    /// A probe found a primary once: losing it is a failover to wait out.
    had_one: AtomicBool,
    /// The last server that led.
    last: AtomicUsize,
    newest_timeline: AtomicU32,
    /// Bumped on every change of leader: waiters watch it.
    changed: watch::Sender<u64>,
    buffered: AtomicUsize,
    events: Mutex<VecDeque<Failover>>,
    /// (start, the primary's WAL position then) of recent probe rounds.
    rounds: Mutex<VecDeque<(Instant, u64)>>,
}

impl Leader {
    /// Until the first probe, the first configured primary leads.
    pub fn new(first: usize) -> Leader {
        Leader {
            current: AtomicUsize::new(first),
            had_one: AtomicBool::new(false),
            last: AtomicUsize::new(first),
            newest_timeline: AtomicU32::new(0),
            changed: watch::Sender::new(0),
            buffered: AtomicUsize::new(0),
            events: Mutex::default(),
            rounds: Mutex::default(),
        }
    }

    pub fn current(&self) -> Option<usize> {
        Some(self.current.load(Ordering::Acquire)).filter(|&i| i != NONE)
    }

    pub fn newest_timeline(&self) -> u32 {
        self.newest_timeline.load(Ordering::Relaxed)
    }

    pub fn last(&self) -> usize {
        self.last.load(Ordering::Relaxed)
    }

    pub fn had_one(&self) -> bool {
        self.had_one.load(Ordering::Relaxed)
    }

    /// Records the leader a probe round chose; true when it changed.
    pub fn set(&self, leader: Option<usize>, newest: u32, event: impl FnOnce() -> Failover) -> bool {
        self.newest_timeline.fetch_max(newest, Ordering::Relaxed);
        if let Some(i) = leader {
            self.had_one.store(true, Ordering::Relaxed);
            self.last.store(i, Ordering::Relaxed);
        }
        let new = leader.unwrap_or(NONE);
        if self.current.swap(new, Ordering::AcqRel) == new {
            return false;
        }
        if let Ok(mut rounds) = self.rounds.lock() {
            // Positions on another server's WAL say nothing about this one's.
            rounds.clear();
        }
        if let Ok(mut events) = self.events.lock() {
            if events.len() == EVENTS_KEPT {
                events.pop_front();
            }
            events.push_back(event());
        }
        self.changed.send_modify(|n| *n += 1);
        true
    }

    /// Wakes the statements waiting, to look again (a server came back).
    pub fn wake(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn events(&self) -> Vec<Failover> {
        self.events.lock().map(|e| e.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// A place among the statements waiting for a primary, if one is free;
    /// when it is given up, the wait since `started` goes to `waits`.
    pub fn wait_slot<'a>(&'a self, max: usize, started: Instant, waits: &'a Histogram) -> Option<WaitSlot<'a>> {
        let mut n = self.buffered.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self.buffered.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(WaitSlot { leader: self, rx: self.changed.subscribe(), started, waits }),
                Err(now) => n = now,
            }
        }
    }

    /// Remembers where the primary's WAL was at the start of a probe round.
    pub fn record_round(&self, started: Instant, primary_lsn: u64) {
        if let Ok(mut rounds) = self.rounds.lock() {
            if rounds.len() == ROUNDS_KEPT {
                rounds.pop_front();
            }
            rounds.push_back((started, primary_lsn));
        }
    }

    /// The latest round start whose primary position a replica at
    /// `replayed` has reached: every commit acknowledged before then is there.
    pub fn caught_up_as_of(&self, replayed: u64) -> Option<Instant> {
        let rounds = self.rounds.lock().ok()?;
        rounds.iter().rev().find(|&&(_, lsn)| lsn <= replayed).map(|&(at, _)| at)
    }
}

/// Held by one statement waiting for its shard's primary.
pub struct WaitSlot<'a> {
    leader: &'a Leader,
    rx: watch::Receiver<u64>,
    started: Instant,
    waits: &'a Histogram,
}

impl WaitSlot<'_> {
    /// Waits for the leader to change (or servers to be looked at again),
    /// at most `left`; false when the time ran out.
    pub async fn changed(&mut self, left: Duration) -> bool {
        matches!(tokio::time::timeout(left, self.rx.changed()).await, Ok(Ok(())))
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.waits.observe(self.started.elapsed().as_secs_f64());
        self.leader.buffered.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_primary_on_the_newest_timeline_leads() {
        assert_eq!(elect(&[(0, 1)], 0), Election { leader: Some(0), fenced: vec![], newest: 1 });
        // The old primary came back after its replica was promoted.
        assert_eq!(elect(&[(0, 1), (1, 2)], 1), Election { leader: Some(1), fenced: vec![0], newest: 2 });
        // ... and the promoted one is down: the old one still gets nothing.
        assert_eq!(elect(&[(0, 1)], 2), Election { leader: None, fenced: vec![0], newest: 2 });
        // Two primaries on one timeline: neither can be trusted with writes.
        assert_eq!(elect(&[(0, 2), (1, 2)], 1), Election { leader: None, fenced: vec![0, 1], newest: 2 });
        assert_eq!(elect(&[], 3), Election { leader: None, fenced: vec![], newest: 3 });
    }

    #[test]
    fn a_replica_is_caught_up_as_of_the_last_round_it_has_replayed() {
        let leader = Leader::new(0);
        let t0 = Instant::now();
        let (t1, t2) = (t0 + Duration::from_millis(100), t0 + Duration::from_millis(200));
        leader.record_round(t0, 100);
        leader.record_round(t1, 200);
        leader.record_round(t2, 300);
        assert_eq!(leader.caught_up_as_of(99), None);
        assert_eq!(leader.caught_up_as_of(250), Some(t1));
        assert_eq!(leader.caught_up_as_of(300), Some(t2));
        let state = ServerState::default();
        state.set_caught_up(leader.caught_up_as_of(250));
        assert!(state.has_replayed(t1) && !state.has_replayed(t2));
        // A later, older answer never moves it back.
        state.set_caught_up(Some(t0));
        assert!(state.has_replayed(t1));
    }

    #[test]
    fn waiting_statements_are_bounded() {
        let leader = Leader::new(0);
        let waits = Histogram::with_opts(prometheus::HistogramOpts::new("w", "w")).unwrap();
        let a = leader.wait_slot(2, Instant::now(), &waits).unwrap();
        let _b = leader.wait_slot(2, Instant::now(), &waits).unwrap();
        assert!(leader.wait_slot(2, Instant::now(), &waits).is_none());
        drop(a);
        assert_eq!(leader.buffered(), 1);
        assert!(leader.wait_slot(2, Instant::now(), &waits).is_some());
        assert_eq!(waits.get_sample_count(), 2, "each slot given up counts its wait");
    }
}
