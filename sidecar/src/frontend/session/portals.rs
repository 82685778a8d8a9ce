//! The client's open portals, and the bytes they hold: named portals live
//! until their transaction ends, so a client could open them without end;
//! they share `listen.max_prepared_bytes_per_client` with its statements.

use super::Portal;

/// What a portal costs beyond its text: the entry, its name, its statement's handle.
const PER_PORTAL: usize = 128;

#[derive(Default)]
pub(super) struct Portals {
    /// The unnamed portal: most drivers bind only it, once per statement,
    /// so it has its own slot rather than an entry hashed in and out.
    unnamed: Option<Portal>,
    by_name: foldhash::HashMap<String, Portal>,
    bytes: usize,
}

/// What a portal bound by `bind` costs: its entry and name, and its
/// parameters (kept here for a portal across shards, on the server for one
/// on a single shard — counted either way).
pub(super) fn cost(name: &str, params: &[Option<bytes::Bytes>]) -> usize {
    PER_PORTAL + name.len() + params.iter().flatten().map(|p| p.len()).sum::<usize>()
}

impl Portals {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn insert(&mut self, name: String, portal: Portal) {
        self.bytes += portal.cost;
        let old = match name.is_empty() {
            true => self.unnamed.replace(portal),
            false => self.by_name.insert(name, portal),
        };
        if let Some(old) = old {
            self.bytes -= old.cost;
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match name.is_empty() {
            true => self.unnamed.is_some(),
            false => self.by_name.contains_key(name),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Portal> {
        let old = match name.is_empty() {
            true => self.unnamed.take(),
            false => self.by_name.remove(name),
        }?;
        self.bytes -= old.cost;
        Some(old)
    }

    /// Some portal, removed (the unnamed one first).
    pub fn pop(&mut self) -> Option<Portal> {
        let portal = match self.unnamed.take() {
            Some(p) => p,
            None => {
                let name = self.by_name.keys().next()?.clone();
                self.by_name.remove(&name)?
            }
        };
        self.bytes -= portal.cost;
        Some(portal)
    }

    pub fn clear(&mut self) {
        self.unnamed = None;
        self.by_name.clear();
        self.bytes = 0;
    }
}
