//! Built-in plugins, compiled from `plugins/` by build.rs and embedded.

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The component bytes of the built-in plugin called `name`.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

pub fn names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}
