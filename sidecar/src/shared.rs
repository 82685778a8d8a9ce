//! What every client session and the admin API share: the config, pools,
//! router, parse cache, telemetry and the two-phase commit coordinator.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::cancel;
use crate::classify::FactsCache;
use crate::config::Config;
use crate::limits::ClientLimits;
use crate::policy::Router;
use crate::pool::Pools;
use crate::route::Planner;
use crate::secret::Secret;
use crate::telemetry::Telemetry;
use crate::twophase::Coordinator;

/// What every session shares.
pub struct Shared {
    pub config: Config,
    pub pools: Arc<Pools>,
    pub router: Arc<Router>,
    /// Routes statements (with `router`), keeping merge plans.
    pub planner: Planner,
    pub facts: Arc<FactsCache>,
    pub telemetry: Arc<Telemetry>,
    pub cancels: Arc<cancel::Registry>,
    pub secrets: HashMap<String, Secret>,
    /// Client slots, login deadline, message sizes and buffer budget.
    pub limits: Arc<ClientLimits>,
    /// Commits transactions across shards (`routing.two_phase_commit`).
    pub coordinator: Option<Arc<Coordinator>>,
    pub shutdown: watch::Receiver<Stopping>,
}

/// How far the sidecar is in stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stopping {
    #[default]
    No,
    /// Sessions finish their transactions, then end.
    Draining,
    /// The grace period is over: sessions end now, with 57P01.
    Now,
}
