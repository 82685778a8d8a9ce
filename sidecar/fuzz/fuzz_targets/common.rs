//! Shared by every fuzz target.

/// libFuzzer's hook aborts on every panic; shardcar turns the panics of
/// code it calls on untrusted bytes into errors (`panics::caught`), so
/// only the others are crashes.
pub fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(shardcar::panics::hook_only_unguarded_panics);
}
