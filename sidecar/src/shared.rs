//! What every client session and the admin API share: the config, pools,
//! router, parse cache, telemetry and the two-phase commit coordinator.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, watch};

use crate::cancel;
use crate::classify::FactsCache;
use crate::config::Config;
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
    pub client_slots: Arc<Semaphore>,
    /// Commits transactions across shards (`routing.two_phase_commit`).
    pub coordinator: Option<Arc<Coordinator>>,
    pub shutdown: watch::Receiver<bool>,
}
