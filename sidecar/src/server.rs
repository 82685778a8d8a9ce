//! The running sidecar: listeners, background tasks, graceful shutdown.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::frontend;
use crate::pool::health;
use crate::shared::{Shared, Stopping};

/// Hot keys of each table a new plugin version is tried on (with a sample of rows).
const HOT_KEYS_CHECKED: usize = 100;

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
    let (shutdown_tx, shutdown_rx) = watch::channel(Stopping::No);
    let (shared, trace_flusher) = Shared::build(config, shutdown_rx)?;
    crate::policy::reload::start_all(&shared.router).await?;
    let (pools, telemetry, facts) = (shared.pools.clone(), shared.telemetry.clone(), shared.facts.clone());
    let coordinator = shared.coordinator.clone();

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
    for node in pools.nodes() {
        if let Some(budget) = &node.budget {
            background.spawn(crate::pool::budget::run(node.clone(), budget.clone(), shared.config.pool.size));
        }
    }
    if let Some(c) = coordinator {
        background.spawn(c.run_recovery(shared.telemetry.metrics.clone()));
    }
    let oid_pools = pools.clone();
    background.spawn(async move {
        let oids = oid_pools.oids.clone();
        oids.run(|shard| oid_pools.catalog_names(shard)).await
    });
    background.spawn(crate::admin::serve(admin, shared.clone()));
    background.spawn(telemetry.clone().sample(pools.clone(), facts, shared.router.clone()));
    let (topology_pools, topology_router, topology_config) =
        (pools.clone(), shared.router.clone(), shared.config.clone());
    background.spawn(async move {
        // Plugins see which primaries answer their health probes.
        let mut tick = tokio::time::interval(topology_config.pool.health_check_interval());
        loop {
            tick.tick().await;
            let healthy: Vec<bool> =
                topology_pools.shards.iter().map(|s| s.current_primary().is_some_and(|p| p.health.is_up())).collect();
            topology_router.set_health(&topology_config, &healthy);
        }
    });
    let hot = telemetry.clone();
    background.spawn(crate::policy::reload::run(
        shared.router.clone(),
        std::time::Duration::from_millis(shared.config.plugins.reload_interval_ms),
        move || hot.hotspots.recent_keys(HOT_KEYS_CHECKED),
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
