//! One catalog for clients: a user table's or type's object identifier
//! differs from shard to shard (each server numbers what it creates), yet
//! drivers keep the OIDs a RowDescription or ParameterDescription gives and
//! look them up later in the catalog — which shardcar reads on the default
//! shard. So descriptions from other shards are rewritten, in place as
//! they are read, to the default shard's OIDs for the same schema-qualified
//! name. Built-in objects (below `FirstNormalObjectId`) are the same
//! everywhere and left alone.
//!
//! The maps are read from the primaries: at start, after DDL that ran
//! through shardcar (before its client hears it is done), every 30 s for
//! DDL that did not, and soon after a description names an unknown OID.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};

use crate::topology::ShardId;

/// The first OID a server assigns to objects created after initdb.
const FIRST_NORMAL_OID: u32 = 16384;

/// How often the maps are read again without a reason.
const PERIOD: Duration = Duration::from_secs(30);

/// One shard's OIDs as the default shard's.
#[derive(Debug, Default)]
struct Translation {
    tables: HashMap<u32, u32>,
    types: HashMap<u32, u32>,
    /// The default shard's type OIDs as this shard's, for what clients send.
    local_types: HashMap<u32, u32>,
}

/// What one shard's connections consult for every description they read.
#[derive(Debug, Default)]
pub struct ShardOids {
    map: RwLock<Arc<Translation>>,
    /// A description named an OID the map does not know.
    missed: AtomicBool,
    wake: Arc<Notify>,
}

impl ShardOids {
    /// Rewrites a RowDescription's table and type OIDs, or a
    /// ParameterDescription's type OIDs, to the default shard's. A table
    /// not known there (a temporary table, or one created since the last
    /// read) becomes 0, "not a table column", rather than naming some other
    /// table; an unknown type is left as it is (0 would break the client's
    /// decoding) until the next read knows it.
    pub fn translate(&self, frame: &mut [u8]) {
        let found = match frame.first() {
            Some(b'T') => self.translate_fields(frame),
            Some(b't') => self.translate_params(frame),
            _ => true,
        };
        if !found && !self.missed.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Rewrites the parameter types a Parse message declares (the client's,
    /// in the default shard's OIDs) to this shard's.
    pub fn localize_parse(&self, msg: &mut [u8]) {
        if msg.first() != Some(&b'P') {
            return;
        }
        let nul_after = |from: usize| msg.get(from..)?.iter().position(|&b| b == 0).map(|p| from + p + 1);
        let Some(types_at) = nul_after(5).and_then(nul_after) else { return };
        let Some(count) = msg.get(types_at..types_at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return };
        let map = self.current();
        for i in 0..usize::from(count) {
            let at = types_at + 2 + 4 * i;
            let Some(oid) = msg.get_mut(at..at + 4) else { break };
            rewrite(oid, &map.local_types, None);
        }
    }

    fn current(&self) -> Arc<Translation> {
        self.map.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Field: name\0, table OID (4), column (2), type OID (4), size (2),
    /// modifier (4), format (2). False when an OID was not known.
    fn translate_fields(&self, frame: &mut [u8]) -> bool {
        let Some(count) = frame.get(5..7).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return true };
        let map = self.current();
        let mut found = true;
        let mut at = 7;
        for _ in 0..count {
            let Some(nul) = frame.get(at..).and_then(|rest| rest.iter().position(|&b| b == 0)) else { return found };
            at += nul + 1;
            if frame.len() < at + 18 {
                return found;
            }
            found &= rewrite(&mut frame[at..at + 4], &map.tables, Some(0));
            found &= rewrite(&mut frame[at + 6..at + 10], &map.types, None);
            at += 18;
        }
        found
    }

    fn translate_params(&self, frame: &mut [u8]) -> bool {
        let Some(count) = frame.get(5..7).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return true };
        let map = self.current();
        let mut found = true;
        for i in 0..usize::from(count) {
            let at = 7 + 4 * i;
            let Some(oid) = frame.get_mut(at..at + 4) else { break };
            found &= rewrite(oid, &map.types, None);
        }
        found
    }
}

/// Rewrites one big-endian OID through `map`; `unknown` replaces one the
/// map lacks (when given). False when it was unknown.
fn rewrite(oid: &mut [u8], map: &HashMap<u32, u32>, unknown: Option<u32>) -> bool {
    let local = u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]);
    if local < FIRST_NORMAL_OID {
        return true;
    }
    match map.get(&local) {
        Some(&canonical) => {
            oid.copy_from_slice(&canonical.to_be_bytes());
            true
        }
        None => {
            if let Some(u) = unknown {
                oid.copy_from_slice(&u.to_be_bytes());
            }
            false
        }
    }
}

/// A schema-qualified name and its OID on one shard, for tables and types.
#[derive(Debug, Default)]
pub struct Names {
    pub tables: Vec<(u32, String)>,
    pub types: Vec<(u32, String)>,
}

/// Every shard's translation, and the one refresh that builds them.
pub struct Oids {
    canonical: ShardId,
    shards: Vec<Arc<ShardOids>>,
    wake: Arc<Notify>,
    refreshing: Mutex<()>,
}

impl Oids {
    pub fn new(canonical: ShardId, shards: usize) -> Oids {
        let wake = Arc::new(Notify::new());
        let shards = (0..shards).map(|_| Arc::new(ShardOids { wake: wake.clone(), ..ShardOids::default() })).collect();
        Oids { canonical, shards, wake, refreshing: Mutex::new(()) }
    }

    /// What `shard`'s connections translate with; none for the default
    /// shard, whose OIDs are the ones clients see.
    pub fn for_shard(&self, shard: ShardId) -> Option<Arc<ShardOids>> {
        (shard != self.canonical).then(|| self.shards[shard.index()].clone())
    }

    /// Builds every shard's translation from the names `read` finds on
    /// each; a shard that cannot be read keeps its previous one.
    pub async fn refresh<F, Fut>(&self, read: F)
    where
        F: Fn(ShardId) -> Fut,
        Fut: std::future::Future<Output = Result<Names, String>>,
    {
        let _one_at_a_time = self.refreshing.lock().await;
        let canonical = match read(self.canonical).await {
            Ok(names) => names,
            Err(e) => {
                tracing::debug!("cannot read the default shard's catalog OIDs: {e}");
                return;
            }
        };
        let by_name = |list: Vec<(u32, String)>| list.into_iter().map(|(oid, name)| (name, oid)).collect();
        let tables: HashMap<String, u32> = by_name(canonical.tables);
        let type_names: HashMap<String, u32> = by_name(canonical.types);
        for (i, shard) in self.shards.iter().enumerate() {
            let id = ShardId::at(i);
            if id == self.canonical {
                continue;
            }
            shard.missed.store(false, Ordering::Relaxed);
            let names = match read(id).await {
                Ok(names) => names,
                Err(e) => {
                    tracing::debug!("cannot read catalog OIDs of shard {i}: {e}");
                    continue;
                }
            };
            let to_canonical = |list: Vec<(u32, String)>, by: &HashMap<String, u32>| {
                list.into_iter().filter_map(|(oid, name)| by.get(&name).map(|&c| (oid, c))).collect()
            };
            let types: HashMap<u32, u32> = to_canonical(names.types, &type_names);
            let local_types = types.iter().map(|(&local, &canonical)| (canonical, local)).collect();
            let t = Translation { tables: to_canonical(names.tables, &tables), types, local_types };
            if let Ok(mut map) = shard.map.write() {
                *map = Arc::new(t);
            }
        }
    }

    /// Refreshes now and then, and soon after a description missed.
    pub async fn run<F, Fut>(self: Arc<Self>, read: F)
    where
        F: Fn(ShardId) -> Fut,
        Fut: std::future::Future<Output = Result<Names, String>>,
    {
        loop {
            self.refresh(&read).await;
            let _ = tokio::time::timeout(PERIOD, self.wake.notified()).await;
            // Misses come in bursts (one per description): one read for them.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The query that lists a server's user tables and types by schema-qualified name.
pub const NAMES_SQL: &str = "SELECT c.oid, 'r', format('%I.%I', n.nspname, c.relname)
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid >= 16384 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast%'
     UNION ALL
     SELECT t.oid, 't', format('%I.%I', n.nspname, t.typname)
     FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
     WHERE t.oid >= 16384 AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast%'";

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn row_description(fields: &[(&str, u32, u32)]) -> Vec<u8> {
        let mut body = (fields.len() as u16).to_be_bytes().to_vec();
        for (name, table, ty) in fields {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&table.to_be_bytes());
            body.extend_from_slice(&1u16.to_be_bytes());
            body.extend_from_slice(&ty.to_be_bytes());
            body.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0, 0, 0]);
        }
        let mut frame = vec![b'T'];
        frame.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn oids_with(tables: &[(u32, u32)], types: &[(u32, u32)]) -> ShardOids {
        let s = ShardOids::default();
        *s.map.write().unwrap() = Arc::new(Translation {
            tables: tables.iter().copied().collect(),
            types: types.iter().copied().collect(),
            local_types: types.iter().map(|&(l, c)| (c, l)).collect(),
        });
        s
    }

    #[test]
    fn parse_declares_this_shards_types() {
        let s = oids_with(&[], &[(16600, 16402)]);
        let mut msg = BytesMut::new();
        let types = [16402u32, 25, 16999];
        postgres_protocol::message::frontend::parse("s1", "SELECT $1, $2, $3", types, &mut msg).unwrap();
        s.localize_parse(&mut msg);
        let mut want = BytesMut::new();
        postgres_protocol::message::frontend::parse("s1", "SELECT $1, $2, $3", [16600u32, 25, 16999], &mut want)
            .unwrap();
        assert_eq!(msg, want, "known user types become this shard's; others stay");
    }

    #[test]
    fn row_description_oids_become_the_default_shards() {
        let s = oids_with(&[(16500, 16400)], &[(16600, 16402)]);
        let mut frame = row_description(&[("id", 16500, 23), ("mood", 16500, 16600), ("n", 0, 20)]);
        s.translate(&mut frame);
        assert_eq!(frame, row_description(&[("id", 16400, 23), ("mood", 16400, 16402), ("n", 0, 20)]));
        assert!(!s.missed.load(Ordering::Relaxed));
    }

    #[test]
    fn an_unknown_table_is_no_table_and_an_unknown_type_stays() {
        let s = oids_with(&[], &[]);
        let mut frame = row_description(&[("x", 17000, 17001)]);
        s.translate(&mut frame);
        assert_eq!(frame, row_description(&[("x", 0, 17001)]));
        assert!(s.missed.load(Ordering::Relaxed), "a refresh is asked for");
    }

    #[test]
    fn parameter_description_types_are_translated() {
        let s = oids_with(&[], &[(16600, 16402)]);
        let mut frame = vec![b't', 0, 0, 0, 14, 0, 2];
        frame.extend_from_slice(&23u32.to_be_bytes());
        frame.extend_from_slice(&16600u32.to_be_bytes());
        s.translate(&mut frame);
        assert_eq!(&frame[11..15], &16402u32.to_be_bytes());
        assert_eq!(&frame[7..11], &23u32.to_be_bytes());
    }

    #[test]
    fn truncated_descriptions_are_left_alone() {
        let s = oids_with(&[(16500, 16400)], &[]);
        let mut frame = row_description(&[("id", 16500, 23)]);
        frame.truncate(frame.len() - 3);
        let before = frame.clone();
        s.translate(&mut frame);
        assert_eq!(frame, before);
    }
}
