//! Hot reload: plugin files are watched; a changed one is compiled in the
//! background, checked against its own test cases, and swapped in
//! atomically. Statements already routing finish on the old version; on any
//! failure the old version keeps serving and the reason is kept and logged.
//!
//! Test cases sit beside the component: `by-customer.wasm` →
//! `by-customer.tests.toml`:
//!
//! ```toml
//! [[case]]
//! sql = "SELECT * FROM orders WHERE customer_id = $1"
//! params = ["42"]          # text values, optional
//! shard = "s1"             # where it must go; or
//! # error = "no range"     # part of the error it must fail with
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::facts::SessionInfo;
use super::plugin::Plugin;
use super::{PolicySlot, Router, read};
use crate::classify::classify;
use crate::classify::params::Params;
use crate::config::PluginSource;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    sql: String,
    #[serde(default)]
    params: Vec<Option<String>>,
    shard: Option<String>,
    error: Option<String>,
}

/// `x.wasm` → `x.tests.toml`.
pub fn manifest_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("tests.toml")
}

/// Runs the test cases beside `path` (if any) against `plugin`, serving
/// policy `slot`; the number of cases passed, or the first failure.
pub async fn verify(router: &Router, slot: usize, plugin: &Plugin, path: &Path) -> Result<usize, String> {
    let manifest_file = manifest_path(path);
    let text = match std::fs::read_to_string(&manifest_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {}: {e}", manifest_file.display())),
    };
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| format!("{}: {}", manifest_file.display(), e.message()))?;
    let session = Arc::new(SessionInfo::default());
    for (i, case) in manifest.case.iter().enumerate() {
        let at = format!("{} case {} ({})", manifest_file.display(), i + 1, case.sql);
        let facts = Arc::new(classify(&case.sql));
        let table = facts.statements.first().and_then(|s| s.shape.tables.iter().find(|t| router.rule(t).is_some()));
        match table.and_then(|t| router.rule(t)) {
            Some(rule) if rule.policy.index() == slot => {}
            _ => return Err(format!("{at}: names no table routed by this policy")),
        }
        let params = Some(Arc::new(Params {
            values: case.params.iter().map(|p| p.clone().map(Into::into)).collect(),
            ..Params::default()
        }));
        let routed = router
            .resolving(|| router.route_statement(&facts, 0, &params, &session, false, Some(plugin)))
            .await
            .map_err(crate::sqlerror::SqlError::from);
        match (routed, &case.shard, &case.error) {
            (Ok(route), Some(want), None) => {
                let got: Vec<&str> = route.shards.iter().map(|&s| router.topology().name(s)).collect();
                if got != [want.as_str()] {
                    return Err(format!("{at}: went to {got:?}, expected {want}"));
                }
            }
            (Err(e), None, Some(want)) if e.message.contains(want.as_str()) => {}
            (Err(e), None, Some(want)) => return Err(format!("{at}: failed with `{}`, expected `{want}`", e.message)),
            (Ok(route), None, Some(want)) => {
                return Err(format!(
                    "{at}: went to shards {:?}, expected an error `{want}`",
                    router.topology().names(&route.shards)
                ));
            }
            (Err(e), Some(want), None) => return Err(format!("{at}: failed with `{}`, expected {want}", e.message)),
            _ => return Err(format!("{at}: give exactly one of `shard` and `error`")),
        }
    }
    Ok(manifest.case.len())
}

/// Checks every file-based plugin's test cases once (at startup).
pub async fn verify_all(router: &Router) -> anyhow::Result<()> {
    for (i, slot) in router.policies.iter().enumerate() {
        if let PluginSource::File(path) = &slot.source {
            let plugin = slot.plugin.load_full();
            let passed = verify(router, i, &plugin, path)
                .await
                .map_err(|e| anyhow::anyhow!("policy {}: plugin {} fails its tests: {e}", slot.name, path.display()))?;
            if passed > 0 {
                tracing::info!("policy {}: plugin passed its {passed} test case(s)", slot.name);
            }
        }
    }
    Ok(())
}

/// What identifies a version on disk: the component's and its tests' mtime and size.
fn stamp(path: &Path) -> Option<[(SystemTime, u64); 2]> {
    let of = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    Some([of(path)?, of(&manifest_path(path)).unwrap_or((SystemTime::UNIX_EPOCH, 0))])
}

/// Watches file-based plugins every `interval` and swaps in new versions.
pub async fn run(router: Arc<Router>, interval: Duration) {
    let mut seen: Vec<_> = router
        .policies
        .iter()
        .map(|s| match &s.source {
            PluginSource::File(p) => stamp(p),
            PluginSource::Builtin(_) => None,
        })
        .collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (i, slot) in router.policies.iter().enumerate() {
            let PluginSource::File(path) = &slot.source else { continue };
            let now = stamp(path);
            if now.is_none() || now == seen[i] {
                continue;
            }
            seen[i] = now;
            match reload(&router, i, slot, path).await {
                Ok(Some(version)) => {
                    tracing::info!("policy {}: now serving plugin {version}", slot.name);
                    *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("policy {}: new plugin refused, the previous version keeps serving: {e}", slot.name);
                    *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
        }
    }
}

/// Loads and checks the file's current version; swaps it in when it passes.
/// `None` when the bytes are those already serving.
async fn reload(router: &Arc<Router>, index: usize, slot: &PolicySlot, path: &Path) -> Result<Option<String>, String> {
    let bytes = read(&slot.source)?;
    let runtime = router.runtime.clone();
    let (policy, config, topology) = (slot.name.clone(), slot.config.clone(), router.plugin_topology());
    let candidate = tokio::task::spawn_blocking(move || Plugin::load(&runtime, &policy, &bytes, config, &topology))
        .await
        .map_err(|e| format!("loading was interrupted: {e}"))??;
    if candidate.digest == slot.plugin.load().digest {
        // Same component; only its tests may have changed.
        verify(router, index, &candidate, path).await?;
        return Ok(None);
    }
    let passed = verify(router, index, &candidate, path).await?;
    let version = format!("{} ({passed} test case(s) passed)", candidate.version());
    slot.plugin.store(Arc::new(candidate));
    Ok(Some(version))
}
