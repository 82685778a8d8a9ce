//! A connection budget per server shared by a fleet of sidecars
//! (`shards[].max_server_connections`).
//!
//! The budget is a set of slots: advisory locks `(SLOTS, 0..limit)` on the
//! server itself, each held by one sidecar's lease connection for each data
//! connection it may have open. Postgres grants a lock to one session only,
//! so the fleet never holds more slots than the budget; a sidecar that dies
//! loses its lease connection and with it every slot, at once. Live
//! sidecars hold a shared presence lock, so each knows its fair share
//! (limit / sidecars); one below its share with sessions waiting says so
//! with a second shared lock, and the others give back what they hold
//! above their share.
//!
//! Inside the sidecar the slots are permits of a semaphore (`gate`) that a
//! session takes before it checks out a connection and keeps while it holds
//! it: busy connections never outnumber the slots, and a new connection is
//! made only when no idle one is left, so open connections (`open`,
//! counted from the moment one is being made until it is dropped) do not
//! either. When the share shrinks, permits are taken out of the gate, idle
//! connections above it are closed, and a slot goes back to the fleet only
//! once the connection count is below it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::Node;

const SLOTS: i32 = 0x7363_6173;
const PRESENCE: i32 = 0x7363_6170;
/// `(PRESENCE, ALIVE)`: held shared by every live sidecar.
const ALIVE: i32 = 0;
/// `(PRESENCE, STARVED)`: held shared by a sidecar below its share with sessions waiting.
const STARVED: i32 = 1;

/// How often slots are taken and given back.
pub const TICK: Duration = Duration::from_millis(500);

/// The advisory locks of every sidecar on this database.
const LOCKS: &str = "SELECT l.classid::int8, l.objid::int8, l.pid = pg_backend_pid() \
    FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
    WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted";

/// One server's budget and this sidecar's part of it.
#[derive(Debug)]
pub struct Budget {
    pub limit: usize,
    /// One permit per slot held, taken by a session for as long as it holds a connection.
    pub gate: Arc<Semaphore>,
    /// Data connections open or being opened to the server.
    pub open: Arc<AtomicUsize>,
    view: Mutex<View>,
}

/// What the last tick saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// Sidecars holding a lease on the server (this one included).
    pub sidecars: usize,
    /// limit / sidecars.
    pub share: usize,
    /// Slots this sidecar holds.
    pub held: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget { limit, gate: Arc::new(Semaphore::new(0)), open: Arc::default(), view: Mutex::default() }
    }

    pub fn view(&self) -> View {
        *self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, view: View) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }
}

/// Counts a data connection in `Budget::open` from before it is made until
/// it is dropped.
#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    pub fn new(open: &Arc<AtomicUsize>) -> Counted {
        open.fetch_add(1, Ordering::Relaxed);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gate's permits, as the lease task changes them.
struct Gate {
    /// Permits in existence: available plus those sessions hold.
    total: usize,
}

impl Gate {
    fn grow(&mut self, budget: &Budget, to: usize) {
        if to > self.total {
            budget.gate.add_permits(to - self.total);
            self.total = to;
        }
    }

    /// Takes permits out down to `to`: those free now, then those sessions
    /// give back within half a tick — queued with the sessions waiting, as
    /// the semaphore hands a returned permit to the first in line — and the
    /// rest on a later tick.
    async fn shrink(&mut self, budget: &Budget, to: usize) {
        if to >= self.total {
            return;
        }
        self.total -= budget.gate.forget_permits(self.total - to);
        let deadline = tokio::time::Instant::now() + TICK / 2;
        while self.total > to {
            match tokio::time::timeout_at(deadline, budget.gate.acquire()).await {
                Ok(Ok(permit)) => {
                    permit.forget();
                    self.total -= 1;
                }
                _ => break,
            }
        }
    }
}

/// Keeps `node`'s connections within its part of the budget, for as long
/// as the sidecar runs; `ceiling` is `pool.size`.
pub async fn run(node: Arc<Node>, budget: Arc<Budget>, ceiling: usize) {
    let mut gate = Gate { total: 0 };
    loop {
        let why = match node.control.get().await {
            Ok(lease) => lease_slots(&node, &budget, ceiling, &lease, &mut gate).await.err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        // No lease, no slots: no new checkouts until one is back.
        gate.shrink(&budget, 0).await;
        close_idle_above(&node, &budget, gate.total);
        budget.set(View { held: 0, ..budget.view() });
        if let Some(why) = why {
            tracing::warn!("{}: connection budget lease lost ({why}); retrying", node.label);
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Holds slots on `lease` (a connection of the node's control pool, kept
/// for good), one tick after another, until it fails.
async fn lease_slots(
    node: &Node,
    budget: &Budget,
    ceiling: usize,
    lease: &tokio_postgres::Client,
    gate: &mut Gate,
) -> Result<(), tokio_postgres::Error> {
    lease.execute("SELECT pg_advisory_lock_shared($1, $2)", &[&PRESENCE, &ALIVE]).await?;
    let mut held: Vec<i32> = Vec::new();
    let mut starved = false;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let (mut sidecars, mut others_starved, mut taken) = (0usize, 0usize, HashSet::new());
        for row in lease.query(LOCKS, &[]).await? {
            let (class, objid, mine): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
            match (class, objid) {
                (c, o) if c == i64::from(PRESENCE) && o == i64::from(ALIVE) => sidecars += 1,
                (c, o) if c == i64::from(PRESENCE) && o == i64::from(STARVED) && !mine => others_starved += 1,
                (c, o) if c == i64::from(SLOTS) => {
                    taken.insert(o);
                }
                _ => {}
            }
        }
        let share = budget.limit / sidecars.max(1);
        let busy = gate.total.saturating_sub(budget.gate.available_permits());
        let demand = busy + node.waiting.now().count;
        let want = plan(demand, share, ceiling, others_starved > 0);
        if want > held.len() {
            let free: Vec<i64> =
                (0..budget.limit as i64).filter(|k| !taken.contains(k)).take(want - held.len()).collect();
            if !free.is_empty() {
                let sql = "SELECT k::int4 FROM unnest($1::int8[]) AS k WHERE pg_try_advisory_lock($2, k::int4)";
                held.extend(lease.query(sql, &[&free, &SLOTS]).await?.iter().map(|r| r.get::<_, i32>(0)));
            }
        }
        gate.shrink(budget, want.min(held.len())).await;
        close_idle_above(node, budget, gate.total);
        // A slot goes back only once no connection needs it.
        let keep = want.max(gate.total).max(budget.open.load(Ordering::Relaxed));
        if keep < held.len() {
            let give: Vec<i32> = held.split_off(keep);
            lease.execute("SELECT pg_advisory_unlock($2, k) FROM unnest($1::int4[]) AS k", &[&give, &SLOTS]).await?;
        }
        gate.grow(budget, want.min(held.len()));
        let now_starved = held.len() < share.min(ceiling) && demand > held.len();
        if now_starved != starved {
            let f = if now_starved { "pg_advisory_lock_shared" } else { "pg_advisory_unlock_shared" };
            lease.execute(&format!("SELECT {f}($1, $2)"), &[&PRESENCE, &STARVED]).await?;
            starved = now_starved;
        }
        budget.set(View { sidecars, share, held: held.len() });
    }
}

/// Closes idle connections until no more are open than `allowed`.
fn close_idle_above(node: &Node, budget: &Budget, allowed: usize) {
    let mut excess = budget.open.load(Ordering::Relaxed).saturating_sub(allowed);
    if excess > 0 {
        node.pool.retain(|_, _| {
            let keep = excess == 0;
            excess = excess.saturating_sub(1);
            keep
        });
    }
}

/// Slots to hold: what the sessions use and wait for, plus some room for a
/// burst; no more than this sidecar's share while another is starved of
/// its own, and never more than `pool.size`.
fn plan(demand: usize, share: usize, ceiling: usize, others_starved: bool) -> usize {
    let want = demand + share / 4 + 1;
    let want = if others_starved { want.min(share.max(1)) } else { want };
    want.min(ceiling)
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn holds_what_is_used_with_room_and_yields_to_a_starved_sidecar() {
        assert_eq!(plan(0, 8, 16, false), 3, "idle: room for a burst only");
        assert_eq!(plan(12, 8, 16, false), 15, "busy: grows past its share into free slots");
        assert_eq!(plan(12, 8, 16, true), 8, "back to its share while another is starved");
        assert_eq!(plan(40, 8, 16, false), 16, "never past pool.size");
        assert_eq!(plan(3, 0, 16, true), 1, "more sidecars than slots: one each at most");
    }
}
