//! Hot reload: plugin files are watched; a changed one is compiled in the
//! background, checked against its own test cases, and swapped in
//! atomically. Statements already routing finish on the old version; on any
//! failure the old version keeps serving and the reason is kept and logged.
//! A version swapped in is then on probation (`plugins.probation_s`): if
//! too many of its calls trap, time out or run out of memory, the previous
//! version is swapped back (and becomes the last good copy again), and the
//! failed one is remembered beside that copy, so that neither a restart
//! nor a reload serves it again.
//!
//! Test cases: see [`super::cases`]; keys that move: [`super::moves`] —
//! both gate a new version, at a reload and at start.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::cases::verify;
use super::last_good::{Version, stamp};
use super::moves::{self, HotKeys};
use super::plugin::Plugin;
use super::{PolicySlot, Router};
use crate::config::PluginSource;

/// `shardcar check`: every file-based plugin's own test cases pass.
pub async fn check_all(router: &Router) -> anyhow::Result<()> {
    for (i, slot) in router.policies.iter().enumerate() {
        let PluginSource::File(path) = &slot.source else { continue };
        let disk = Version::on_disk(path).map_err(|e| anyhow::anyhow!("policy {}: {e}", slot.name))?;
        let passed = verify(router, i, &slot.plugin.load_full(), disk.tests.as_deref(), &disk.origin)
            .await
            .map_err(|e| anyhow::anyhow!("policy {}: plugin {} fails its tests: {e}", slot.name, path.display()))?;
        if passed > 0 {
            tracing::info!("policy {}: plugin passed its {passed} test case(s)", slot.name);
        }
    }
    Ok(())
}

/// At start (`shardcar run`): every file-based plugin's version is checked
/// against its test cases. One that passes is kept as the policy's last
/// good version; one that is refused (here, or when it could not even load,
/// `Router::serving`) gives way to the last good version, with the refusal
/// kept for the API and the log — only when there is none does shardcar stop.
pub async fn start_all(router: &Router) -> anyhow::Result<()> {
    for (i, slot) in router.policies.iter().enumerate() {
        let PluginSource::File(path) = &slot.source else { continue };
        // Set when the file did not even load (`Router::serving`): the last good version serves already.
        let did_not_load = slot.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let refused = match did_not_load.clone() {
            Some(e) => e,
            None => {
                let checked = async {
                    let disk = Version::on_disk(path)?;
                    let passed =
                        verify(router, i, &slot.plugin.load_full(), disk.tests.as_deref(), &disk.origin).await?;
                    Ok::<_, String>((disk, passed))
                };
                let rolled_back = router.last_good.rolled_back(&slot.name);
                match checked.await {
                    Ok(_) if rolled_back.as_ref().is_some_and(|(d, _)| *d == slot.plugin.load().digest) => {
                        let why = rolled_back.map(|(_, why)| why).unwrap_or_default();
                        format!("plugin {} was rolled back: {why}", path.display())
                    }
                    Ok((disk, passed)) => {
                        if passed > 0 {
                            tracing::info!("policy {}: plugin passed its {passed} test case(s)", slot.name);
                        }
                        // A version that changed while shardcar was down moves no rows either.
                        match changed_since_last_good(router, i, slot).await {
                            Ok(()) => {
                                router.last_good.save(&slot.name, &disk);
                                continue;
                            }
                            Err(e) => e,
                        }
                    }
                    Err(e) => format!("plugin {} fails its tests: {e}", path.display()),
                }
            }
        };
        let Some(good) = router.last_good.load(&slot.name) else {
            anyhow::bail!("policy {}: {refused} (and no earlier version passed, to serve instead)", slot.name);
        };
        let plugin = match did_not_load {
            Some(_) => slot.plugin.load_full(),
            None => Arc::new(load(router, slot, good.wasm.clone()).await.map_err(|e| {
                anyhow::anyhow!("policy {}: {refused}; its last good version does not load either: {e}", slot.name)
            })?),
        };
        verify(router, i, &plugin, good.tests.as_deref(), &good.origin)
            .await
            .map_err(|e| anyhow::anyhow!("policy {}: {refused}; its last good version fails too: {e}", slot.name))?;
        let serving = format!("{refused}; serving the last version that passed, {}", plugin.version());
        tracing::warn!("policy {}: {serving}", slot.name);
        *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(serving);
        slot.plugin.store(plugin);
    }
    Ok(())
}

/// At start: when the policy's last good version is another than the one
/// loaded from disk, the change must pass the keys-that-move gate.
async fn changed_since_last_good(router: &Router, index: usize, slot: &PolicySlot) -> Result<(), String> {
    let Some(good) = router.last_good.load(&slot.name) else { return Ok(()) };
    let candidate = slot.plugin.load_full();
    if super::plugin::digest(&good.wasm) == candidate.digest {
        return Ok(());
    }
    let serving = load(router, slot, good.wasm).await?;
    gate_moves(router, index, slot, &serving, &candidate, &HotKeys::default()).await
}

/// Refuses `candidate` when it would strand rows `serving` finds, unless
/// that is allowed; the report is kept for the API either way.
async fn gate_moves(
    router: &Router,
    index: usize,
    slot: &PolicySlot,
    serving: &Plugin,
    candidate: &Plugin,
    hot_keys: &HotKeys,
) -> Result<(), String> {
    let accepted = slot.moves_allowed.lock().unwrap_or_else(|p| p.into_inner()).as_deref() == Some(&candidate.digest);
    let allow_how = format!(
        "move those rows first, or allow it: POST /api/v1/plugins/{}/allow-moves?digest={} (or plugins.moving_rows = \"allow\")",
        slot.name, candidate.digest
    );
    let mut report = match moves::check(router, index, serving, candidate, hot_keys).await {
        Ok(report) => report,
        Err(e) if router.allows_any_moves() || accepted => {
            tracing::warn!("policy {}: could not check which rows {} moves: {e}", slot.name, candidate.version());
            return Ok(());
        }
        Err(e) => {
            return Err(format!("{}: cannot check which rows it would move ({e}); {allow_how}", candidate.version()));
        }
    };
    let allowed = router.allows_moves(&report, accepted);
    report.verdict = if allowed { "allowed" } else { "refused" }.into();
    let summary = moves::summary(&report);
    *slot.last_moves.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    if !allowed {
        return Err(format!("{summary}; refused: {allow_how}"));
    }
    tracing::info!("policy {}: {summary}", slot.name);
    Ok(())
}

/// Compiles and starts `wasm` for `slot`, off the async threads.
async fn load(router: &Router, slot: &PolicySlot, wasm: Vec<u8>) -> Result<Plugin, String> {
    load_with(router, slot, wasm, slot.config.clone()).await
}

/// The same with another config (a shadow's).
async fn load_with(router: &Router, slot: &PolicySlot, wasm: Vec<u8>, config: String) -> Result<Plugin, String> {
    let runtime = router.runtime.clone();
    let (policy, topology) = (slot.name.clone(), router.plugin_topology());
    tokio::task::spawn_blocking(move || Plugin::load(&runtime, &policy, &wasm, config, &topology))
        .await
        .map_err(|e| format!("loading was interrupted: {e}"))?
}

/// `POST /api/v1/plugins/<policy>/promote?digest=<the shadow's digest>`:
/// the policy's shadow plugin (with its config) becomes the live one,
/// through the gates a reloaded file passes — its test cases (a file's
/// `*.tests.toml`), the keys-that-move check, then probation. The file the
/// config names for the policy is no longer watched: a restart serves
/// what the config says, so the config must say the same to keep it.
pub async fn promote(router: &Router, policy: &str, digest: &str) -> Result<String, String> {
    let (index, slot) = router
        .policies
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == policy)
        .ok_or_else(|| format!("no policy named {policy}"))?;
    let shadow = slot.shadow.load_full().ok_or_else(|| format!("policy {policy} has no shadow plugin"))?;
    if shadow.plugin.digest != digest {
        return Err(format!("the shadow is {}: name its digest, {}", shadow.plugin.version(), shadow.plugin.digest));
    }
    let (wasm, tests, origin) = match &shadow.source {
        PluginSource::File(path) => {
            let disk = Version::on_disk(path)?;
            (disk.wasm, disk.tests, disk.origin)
        }
        PluginSource::Builtin(_) => (super::read(&shadow.source)?, None, shadow.source.to_string()),
    };
    let candidate = load_with(router, slot, wasm, shadow.config.clone()).await?;
    if candidate.digest != digest {
        return Err(format!("{} changed since it was loaded as the shadow; restart to shadow it first", origin));
    }
    let passed = verify(router, index, &candidate, tests.as_deref(), &origin)
        .await
        .map_err(|e| format!("{}: {e}", candidate.version()))?;
    gate_moves(router, index, slot, &slot.plugin.load_full(), &candidate, &HotKeys::default()).await?;
    let version = format!("{} ({passed} test case(s) passed)", candidate.version());
    install(router, slot, candidate, None);
    slot.shadow.store(None);
    let note = format!(
        "{version}, config {}, promoted from the shadow; {} is no longer watched, and a restart serves what the config says",
        shadow.config, slot.source
    );
    tracing::warn!("policy {policy}: now serving {note}");
    *slot.promoted.lock().unwrap_or_else(|p| p.into_inner()) = Some(note);
    *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Ok(version)
}

/// A version swapped in lately, and what to go back to.
pub struct Probation {
    previous: Arc<Plugin>,
    /// The last good copy before the swap, to keep again on a rollback.
    previous_copy: Option<Version>,
    until: Instant,
}

/// Watches file-based plugins every `interval` and swaps in new versions.
pub async fn run(router: Arc<Router>, interval: Duration, hot_keys: impl Fn() -> HotKeys) {
    // From the files as they were when loaded: a change since is a reload.
    let mut seen: Vec<_> = router.policies.iter().map(|s| s.loaded_stamp).collect();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for slot in &router.policies {
            judge(&router, slot);
        }
        for (i, slot) in router.policies.iter().enumerate() {
            let PluginSource::File(path) = &slot.source else { continue };
            // Promoted from its shadow: the file no longer says what serves.
            if slot.promoted.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                continue;
            }
            let now = stamp(path);
            let recheck = slot.recheck.swap(false, Ordering::Relaxed);
            if now.is_none() || (now == seen[i] && !recheck) {
                continue;
            }
            seen[i] = now;
            match reload(&router, i, slot, path, &hot_keys()).await {
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

/// Loads and checks the file's current version; swaps it in (and keeps it
/// as the last good one) when it passes. `None` when the bytes are those
/// already serving.
async fn reload(
    router: &Arc<Router>,
    index: usize,
    slot: &PolicySlot,
    path: &Path,
    hot_keys: &HotKeys,
) -> Result<Option<String>, String> {
    let disk = Version::on_disk(path)?;
    let candidate = load(router, slot, disk.wasm.clone()).await?;
    // A refusal names the build refused (name, version and digest).
    let passed = verify(router, index, &candidate, disk.tests.as_deref(), &disk.origin)
        .await
        .map_err(|e| format!("{}: {e}", candidate.version()))?;
    if candidate.digest == slot.plugin.load().digest {
        // Same component; only its tests may have changed.
        router.last_good.save(&slot.name, &disk);
        return Ok(None);
    }
    if router.last_good.rolled_back(&slot.name).is_some_and(|(digest, _)| digest == candidate.digest) {
        return Err(format!("{} was rolled back before; it is not tried again", candidate.version()));
    }
    gate_moves(router, index, slot, &slot.plugin.load_full(), &candidate, hot_keys).await?;
    let version = format!("{} ({passed} test case(s) passed)", candidate.version());
    install(router, slot, candidate, Some(&disk));
    Ok(Some(version))
}

/// Swaps `candidate` in to serve, on probation (when configured) with the
/// version it replaces to go back to; `copy` is kept as the last good
/// version (what a restart serves when the file fails).
fn install(router: &Router, slot: &PolicySlot, candidate: Plugin, copy: Option<&Version>) {
    // Probation judges the calls of traffic, not those of the checks before.
    candidate.calls.store(0, Ordering::Relaxed);
    candidate.failures.store(0, Ordering::Relaxed);
    let mut on_probation = slot.probation.lock().unwrap_or_else(|p| p.into_inner());
    // What served last is what a restart serves (a routing change must not
    // flip back by itself), unless it is rolled back.
    let previous_copy = router.last_good.load(&slot.name);
    if let Some(disk) = copy {
        router.last_good.save(&slot.name, disk);
    }
    let swapped_out = slot.plugin.swap(Arc::new(candidate));
    if !router.probation.is_zero() {
        // A version replacing one still on probation falls back to the one before.
        let (previous, previous_copy) = match on_probation.take() {
            Some(p) => (p.previous, p.previous_copy),
            None => (swapped_out, previous_copy),
        };
        let until = Instant::now() + router.probation;
        *on_probation = Some(Probation { previous, previous_copy, until });
    }
}

/// Ends `slot`'s probation: the version swapped in goes back to the
/// previous one when too many of its calls failed, and becomes the last
/// good one when its time is up without that.
fn judge(router: &Router, slot: &PolicySlot) {
    let mut probation = slot.probation.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = probation.as_ref() else { return };
    let serving = slot.plugin.load_full();
    let (calls, failures) = (serving.calls.load(Ordering::Relaxed), serving.failures.load(Ordering::Relaxed));
    let rollback = &router.rollback;
    if calls >= rollback.min_calls && failures as f64 > rollback.failure_ratio * calls as f64 {
        let why = format!(
            "{} rolled back to {}: {failures} of its {calls} calls failed (trapped, timed out or ran out of memory) on probation",
            serving.version(),
            p.previous.version()
        );
        tracing::warn!("policy {}: {why}", slot.name);
        slot.plugin.store(p.previous.clone());
        if let Some(copy) = &p.previous_copy {
            router.last_good.save(&slot.name, copy);
        }
        router.last_good.mark_rolled_back(&slot.name, &serving.digest, &why);
        *slot.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        *probation = None;
    } else if Instant::now() >= p.until {
        tracing::info!("policy {}: {} passed its probation ({calls} calls)", slot.name, serving.version());
        *probation = None;
    }
}
