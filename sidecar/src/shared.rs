//! What every client session and the admin API share: the config, pools,
//! router, parse cache, telemetry and the two-phase commit coordinator.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::cancel;
use crate::classify::FactsCache;
use crate::config::Config;
use crate::limits::ClientLimits;
use crate::metrics::Metrics;
use crate::policy::Router;
use crate::pool::Pools;
use crate::route::Planner;
use crate::secret::Secret;
use crate::telemetry::Telemetry;
use crate::telemetry::traces::Flusher;
use crate::topology::Topology;
use crate::twophase::Coordinator;
use crate::watched::Watched;

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
    pub secrets: HashMap<String, Watched<Secret>>,
    /// Client slots, login deadline, message sizes and buffer budget.
    pub limits: Arc<ClientLimits>,
    /// Commits transactions across shards (`routing.two_phase_commit`).
    pub coordinator: Option<Arc<Coordinator>>,
    pub shutdown: watch::Receiver<Stopping>,
    /// `[auth] query`: users not in `[[users]]` looked up on a shard.
    pub auth_query: Option<crate::auth_query::AuthQuery>,
    /// Clients' TLS (`[listen] tls_cert`); None: SSLRequest is answered `N`.
    pub client_tls: Option<crate::tls::listener::Listener>,
}

/// Bytes of SQL texts and their facts the parse cache keeps.
const FACTS_CACHE_BYTES: u64 = 32 << 20;

impl Shared {
    /// Everything sessions share, from `config`: pools (not yet connected),
    /// router with its plugins loaded, caches, limits, telemetry (and its
    /// flusher when traces are exported), the two-phase coordinator.
    pub fn build(
        config: Config,
        shutdown: watch::Receiver<Stopping>,
    ) -> anyhow::Result<(Arc<Shared>, Option<Flusher>)> {
        let metrics = Arc::new(Metrics::new());
        let topology = Arc::new(Topology::new(&config));
        let auth_query = crate::auth_query::AuthQuery::new(&config, &topology);
        let pools = Arc::new(Pools::new(&config, topology, &metrics)?);
        let mut secrets = HashMap::new();
        for user in &config.users {
            let secret = user.secret(&config.base_dir).map_err(|e| anyhow::anyhow!("users `{}`: {e}", user.name))?;
            secrets.insert(user.name.clone(), secret);
        }
        let router = Arc::new(Router::serving(&config, &pools, &metrics)?);
        if config.routing.decision_log.is_some() {
            tracing::warn!(
                "routing.decision_log is no longer used: commit decisions are stored on the shards (shardcar.decisions); remove it from the config"
            );
        }
        let coordinator = match config.routing.two_phase_commit {
            true => Some(Arc::new(Coordinator::new(pools.clone()))),
            false => None,
        };
        let limits = Arc::new(ClientLimits::new(&config.listen, &metrics));
        let facts = Arc::new(FactsCache::new(FACTS_CACHE_BYTES, &metrics));
        let (telemetry, flusher) = Telemetry::start(&config, metrics)?;
        let client_tls = config.client_tls().map_err(|e| anyhow::anyhow!("listen.tls_cert: {e}"))?;
        let shared = Shared {
            planner: Planner::new(router.clone()),
            router,
            pools,
            facts,
            telemetry: Arc::new(telemetry),
            cancels: Arc::default(),
            secrets,
            limits,
            coordinator,
            shutdown,
            client_tls,
            auth_query,
            config,
        };
        Ok((Arc::new(shared), flusher))
    }
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
