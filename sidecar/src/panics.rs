//! Panics in code shardcar calls with untrusted input (pgwire's decoders on
//! client bytes, WASI host functions under a plugin) become errors for that
//! one client or statement, not a crashed task, and not a backtrace in the log.

use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)` without the panic hook's output.
pub fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET.with(|q| q.set(true));
    let out = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    out.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

/// Installs a panic hook that logs through `tracing` and stays silent inside [`caught`].
pub fn install_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET.with(|q| q.get()) {
            tracing::error!("panic: {info}");
            default(info);
        }
    }));
}

/// Keeps a hook installed by a harness (a fuzzer's, which aborts on any
/// panic) for panics outside [`caught`]: those inside it are handled (they
/// become errors), so they must not count as crashes.
pub fn hook_only_unguarded_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET.with(|q| q.get()) {
            previous(info);
        }
    }));
}
