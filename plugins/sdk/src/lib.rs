//! Write a shardcar routing plugin in Rust.
//!
//! Implement [`Policy`] and call [`export_policy!`]; build with
//! `cargo build --target wasm32-wasip2 --release`. The contract is
//! `wit/policy.wit` (shipped in this crate); this crate hides its bindings.
//!
//! By default shardcar extracts the keys itself (the values of the key
//! column `[[tables]]` names). A policy that finds its keys elsewhere (other
//! columns, hints, the session) also implements [`Extractor`] and is
//! exported with `export_policy!(MyPolicy, extractor)`.
//!
//! ```ignore
//! struct Everything;
//! impl shardcar_sdk::Policy for Everything {
//!     fn init(_config: &str) -> Result<Self, String> { Ok(Everything) }
//!     fn route(&self, _: &Facts, _: &[Value], _: &Shards) -> Result<Decision, String> {
//!         Ok(Decision::all())
//!     }
//! }
//! shardcar_sdk::export_policy!(Everything);
//! ```

#![warn(missing_docs)]

// The bindings name this crate by its public path, also from inside it.
extern crate self as shardcar_sdk;

pub mod pghash;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "::shardcar_sdk::bindings",
        runtime_path: "::shardcar_sdk::__wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

pub use bindings::shardcar::policy::host::{Facts, lookup, now_ms};
pub use bindings::shardcar::policy::types::{
    Decision, Level, PluginInfo, Predicate, Role, Shard, StatementKind, Target, Topology, Value,
};

/// A routing policy. One value lives in each plugin instance, made by
/// [`Policy::init`] from the policy's `config` table.
pub trait Policy: Sized + 'static {
    /// `config` is the policy's `config` table from shardcar's TOML, as JSON.
    fn init(config: &str) -> Result<Self, String>;

    /// Where a statement with these keys goes.
    fn route(&self, facts: &Facts, keys: &[Value], shards: &Shards) -> Result<Decision, String>;
}

/// A policy that finds a statement's keys itself, beyond the key column.
pub trait Extractor: Policy {
    /// The statement's keys, handed to [`Policy::route`].
    fn extract_key(&self, facts: &Facts) -> Result<Vec<Value>, String>;
}

/// The shards as the plugin last heard of them.
#[derive(Debug, Clone, Default)]
pub struct Shards {
    /// In the order of shardcar's config: a decision names shards by index here.
    pub list: Vec<Shard>,
}

impl Shards {
    /// The index of the shard called `name`, as a decision names it.
    pub fn index(&self, name: &str) -> Result<u32, String> {
        self.list
            .iter()
            .position(|s| s.name == name)
            .map(|i| i as u32)
            .ok_or_else(|| format!("no shard named `{name}` in shardcar's config"))
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// No shards (never, in a valid config).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Decision {
    /// The given shards (indexes), on the role shardcar prefers.
    pub fn shards(shards: impl IntoIterator<Item = u32>) -> Decision {
        let mut list: Vec<u32> = shards.into_iter().collect();
        list.sort_unstable();
        list.dedup();
        Decision { target: Target::Shards(list), role: Role::Any }
    }

    /// Every shard.
    pub fn all() -> Decision {
        Decision { target: Target::All, role: Role::Any }
    }

    /// The same shards on `role`: `Role::Replica` for reads that may lag,
    /// `Role::Primary` to insist on the primary, `Role::Any` for shardcar's choice.
    pub fn on(mut self, role: Role) -> Decision {
        self.role = role;
        self
    }
}

impl Value {
    /// The value as text (`None` for NULL): integers in decimal.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Int(i) => Some(i.to_string()),
            Value::Text(t) => Some(t.clone()),
        }
    }
}

/// Parses the JSON config into the plugin's own config type.
pub fn config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))
}

/// A value from a hint (`/* shardcar: k=v */`, sqlcommenter) or a session
/// variable (`SET shardcar.k = v`), hints first.
pub fn hint_or_session(facts: &Facts, name: &str) -> Option<String> {
    facts.hints().into_iter().chain(facts.session()).find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Writes to shardcar's log, labelled with the policy (stdout and stderr do
/// not reach it).
pub fn log(level: Level, message: &str) {
    bindings::shardcar::policy::host::log(level, message);
}

/// Glue between the exported functions and a [`Policy`]; used by [`export_policy!`].
#[doc(hidden)]
pub mod runtime {
    pub use std::cell::RefCell;

    use super::*;

    thread_local! {
        pub static SHARDS: RefCell<Shards> = RefCell::new(Shards::default());
    }

    pub fn set_topology(topology: Topology) {
        SHARDS.with(|s| s.borrow_mut().list = topology.shards);
    }

    pub fn with_shards<R>(f: impl FnOnce(&Shards) -> R) -> R {
        SHARDS.with(|s| f(&s.borrow()))
    }

    /// Panic messages go to shardcar's log (stdout and stderr do not exist
    /// for plugins); the panic then traps and fails the statement.
    pub fn install_panic_hook() {
        std::panic::set_hook(Box::new(|info| log(Level::Error, &format!("plugin panicked: {info}"))));
    }

    pub fn not_initialized() -> String {
        "plugin used before init".to_string()
    }
}

/// Exports a [`Policy`] type as the plugin's implementation of the contract:
/// `export_policy!(MyPolicy)`, or `export_policy!(MyPolicy, extractor)` for
/// one that also implements [`Extractor`].
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        $crate::export_policy!(@export $policy, false, |_policy: &$policy, facts: &$crate::Facts| Ok(facts.key_values()));
    };
    ($policy:ty, extractor) => {
        $crate::export_policy!(@export $policy, true, |policy: &$policy, facts: &$crate::Facts| {
            <$policy as $crate::Extractor>::extract_key(policy, facts)
        });
    };
    (@export $policy:ty, $custom:expr, $extract:expr) => {
        thread_local! {
            static __SHARDCAR_POLICY: $crate::runtime::RefCell<Option<$policy>> =
                const { $crate::runtime::RefCell::new(None) };
        }

        struct __ShardcarPlugin;

        impl $crate::bindings::Guest for __ShardcarPlugin {
            fn init(config: String) -> Result<(), String> {
                $crate::runtime::install_panic_hook();
                let policy = <$policy as $crate::Policy>::init(&config)?;
                __SHARDCAR_POLICY.with(|p| *p.borrow_mut() = Some(policy));
                Ok(())
            }

            fn info() -> $crate::PluginInfo {
                $crate::PluginInfo {
                    name: env!("CARGO_PKG_NAME").into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    custom_extract: $custom,
                }
            }

            fn set_topology(topology: $crate::Topology) {
                $crate::runtime::set_topology(topology)
            }

            fn extract_key(facts: &$crate::Facts) -> Result<Vec<$crate::Value>, String> {
                __SHARDCAR_POLICY.with(|p| match p.borrow().as_ref() {
                    Some(policy) => ($extract)(policy, facts),
                    None => Err($crate::runtime::not_initialized()),
                })
            }

            fn route(facts: &$crate::Facts, keys: Vec<$crate::Value>) -> Result<$crate::Decision, String> {
                __SHARDCAR_POLICY.with(|p| match p.borrow().as_ref() {
                    Some(policy) => {
                        $crate::runtime::with_shards(|shards| $crate::Policy::route(policy, facts, &keys, shards))
                    }
                    None => Err($crate::runtime::not_initialized()),
                })
            }
        }

        $crate::bindings::export_bindings!(__ShardcarPlugin with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_crate_is_versioned_with_the_contract_it_carries() {
        let wit = include_str!("../wit/policy.wit");
        let package = format!("package shardcar:policy@{};", env!("CARGO_PKG_VERSION"));
        assert!(wit.contains(&package), "wit/policy.wit does not declare {package}");
    }
}
