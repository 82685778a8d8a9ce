//! The running sidecar: listeners, background tasks, graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cancel;
use crate::classify::FactsCache;
use crate::config::Config;
use crate::frontend;
use crate::limits::ClientLimits;
use crate::metrics::Metrics;
use crate::policy::Router;
use crate::pool::{Pools, health};
use crate::route::Planner;
use crate::shared::{Shared, Stopping};
use crate::telemetry::Telemetry;
use crate::topology::Topology;
use crate::twophase::Coordinator;

/// Bytes of SQL texts and their facts the parse cache keeps.
const FACTS_CACHE_BYTES: u64 = 32 << 20;

/// Binds the configured listeners and serves until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.listen.addr)
        .await
        .with_context(|| format!("cannot listen on {} (listen.addr)", config.listen.addr))?;
    let admin = TcpListener::bind(&config.listen.admin)
        .await
        .with_context(|| format!("cannot listen on {} (listen.admin)", config.listen.admin))?;
    serve(config, listener, admin, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Serves clients on `listener` and the admin API on `admin` until `stop`
/// completes; then stops accepting, lets open transactions finish within
/// `listen.shutdown_grace_s`, and closes the pools.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let topology = Arc::new(Topology::new(&config));
    let pools = Arc::new(Pools::new(&config, topology, &metrics)?);
    let mut secrets = HashMap::new();
    for user in &config.users {
        let secret = user.secret().map_err(|e| anyhow::anyhow!("users `{}`: {e}", user.name))?;
        secrets.insert(user.name.clone(), secret);
    }
    let router = Arc::new(Router::new(&config, &pools, &metrics)?);
    crate::policy::reload::verify_all(&router).await?;
    let facts = Arc::new(FactsCache::new(FACTS_CACHE_BYTES, &metrics));
    let coordinator = match config.routing.two_phase_commit {
        true => Some(Arc::new(Coordinator::open(&config.decision_log())?)),
        false => None,
    };
    let limits = Arc::new(ClientLimits::new(&config.listen, &metrics));
    let (telemetry, trace_flusher) = Telemetry::start(&config, metrics)?;
    let telemetry = Arc::new(telemetry);
    let (shutdown_tx, shutdown_rx) = watch::channel(Stopping::No);
    let shared = Arc::new(Shared {
        planner: Planner::new(router.clone()),
        router,
        pools: pools.clone(),
        facts: facts.clone(),
        telemetry: telemetry.clone(),
        cancels: Arc::new(cancel::Registry::default()),
        secrets,
        limits,
        coordinator: coordinator.clone(),
        shutdown: shutdown_rx,
        config,
    });

    let mut background = JoinSet::new();
    background.spawn(health::run(
        pools.clone(),
        shared.config.pool.health_check_interval(),
        shared.config.pool.connect_timeout(),
    ));
    let idle = shared.config.pool.idle_timeout();
    let reaper_pools = pools.clone();
    background.spawn(async move {
        let mut tick = tokio::time::interval(idle.min(Duration::from_secs(30)).max(Duration::from_secs(1)));
        loop {
            tick.tick().await;
            reaper_pools.close_idle(idle);
        }
    });
    if let Some(c) = coordinator {
        background.spawn(c.run_recovery(pools.clone(), shared.telemetry.metrics.clone()));
    }
    let oid_pools = pools.clone();
    background.spawn(async move {
        let oids = oid_pools.oids.clone();
        oids.run(|shard| oid_pools.catalog_names(shard)).await
    });
    background.spawn(crate::admin::serve(admin, shared.clone()));
    background.spawn(telemetry.clone().sample(pools.clone(), facts));
    let (topology_pools, topology_router, topology_config) =
        (pools.clone(), shared.router.clone(), shared.config.clone());
    background.spawn(async move {
        // Plugins see which primaries answer their health probes.
        let mut tick = tokio::time::interval(topology_config.pool.health_check_interval());
        loop {
            tick.tick().await;
            let healthy: Vec<bool> = topology_pools.shards.iter().map(|s| s.primary.health.is_up()).collect();
            topology_router.set_health(&topology_config, &healthy);
        }
    });
    background.spawn(crate::policy::reload::run(
        shared.router.clone(),
        std::time::Duration::from_millis(shared.config.plugins.reload_interval_ms),
    ));

    tracing::info!(
        "shardcar listening on {} (admin on {}), {} shard(s)",
        shared.config.listen.addr,
        shared.config.listen.admin,
        shared.config.shards.len()
    );
    let mut sessions = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    sessions.spawn(frontend::serve(shared.clone(), stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next() => {}
            _ = &mut stop => break,
        }
    }

    drop(listener);
    let _ = shutdown_tx.send(Stopping::Draining);
    let grace = Duration::from_secs(shared.config.listen.shutdown_grace_s);
    tracing::info!("shutting down: {} session(s) get {grace:?} to finish their transactions", sessions.len());
    let drained = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        // Each is told why (57P01) and its transaction rolled back; one
        // that cannot even be told in a second is dropped.
        tracing::warn!("{} session(s) still open after {grace:?}; ending them", sessions.len());
        let _ = shutdown_tx.send(Stopping::Now);
        let told =
            tokio::time::timeout(Duration::from_secs(1), async { while sessions.join_next().await.is_some() {} });
        if told.await.is_err() {
            sessions.shutdown().await;
        }
    }
    background.shutdown().await;
    if let Some(flusher) = trace_flusher {
        flusher.flush_and_stop(Duration::from_secs(5)).await;
    }
    pools.close();
    Ok(())
}
