//! Shadow rollout: a policy may name a second plugin (a new version, or
//! another strategy or config) that routes a sample of the same statements
//! beside the live one. Its answers are only compared — per table, agreed
//! and disagreed, the distinct keys it would place elsewhere and the latest
//! examples — on a thread of its own, off the statements' path: a
//! statement hands its facts over (or, when the queue is full, is counted
//! as not compared) and goes on. Promotion to live is `reload::promote`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use shardcar_api as api;

use super::facts::FactsView;
use super::plugin::{Plugin, Target, TopologySnapshot};
use crate::config::PluginSource;
use crate::topology::{ShardId, Topology};

/// Statements waiting for the shadow thread; more are not compared.
const QUEUE: usize = 4096;
/// Distinct disagreeing keys counted per table (the count says "at least" past it).
const DISTINCT_KEYS: usize = 100_000;
/// Latest disagreements kept per table.
const EXAMPLES: usize = 10;

/// A policy's shadow plugin and what it found.
pub struct Shadow {
    pub source: PluginSource,
    /// Its config, as the JSON the plugin receives.
    pub config: String,
    pub plugin: Arc<Plugin>,
    pub sample: f64,
    seen: AtomicU64,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    tables: BTreeMap<String, TableTally>,
    /// Sampled but not compared: the queue was full.
    dropped: u64,
    /// The shadow plugin failed (trapped, timed out, refused, wanted a lookup).
    failed: u64,
}

#[derive(Default)]
struct TableTally {
    agreed: u64,
    disagreed: u64,
    keys: HashSet<String>,
    examples: VecDeque<api::ShadowExample>,
}

impl Shadow {
    pub fn new(source: PluginSource, config: String, plugin: Plugin, sample: f64) -> Shadow {
        Shadow { source, config, plugin: Arc::new(plugin), sample, seen: AtomicU64::new(0), tally: Default::default() }
    }

    /// Whether this statement is in the sample: exactly `sample` of them,
    /// spread evenly (the n-th is taken when n × sample crosses a whole number).
    pub fn wants(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn report(&self) -> api::ShadowReport {
        let tally = self.tally();
        let tables: Vec<api::ShadowTable> = tally
            .tables
            .iter()
            .map(|(table, t)| api::ShadowTable {
                table: table.clone(),
                agreed: t.agreed,
                disagreed: t.disagreed,
                keys_moving: t.keys.len() as u64,
                keys_moving_capped: t.keys.len() >= DISTINCT_KEYS,
                examples: t.examples.iter().rev().cloned().collect(),
            })
            .collect();
        api::ShadowReport {
            source: self.source.to_string(),
            plugin: self.plugin.version().to_string(),
            digest: self.plugin.digest.clone(),
            sample: self.sample,
            agreed: tables.iter().map(|t| t.agreed).sum(),
            disagreed: tables.iter().map(|t| t.disagreed).sum(),
            dropped: tally.dropped,
            failed: tally.failed,
            tables,
        }
    }
}

/// One statement to route again with a shadow plugin.
pub struct Job {
    pub shadow: Arc<Shadow>,
    pub view: FactsView,
    pub topology: Arc<TopologySnapshot>,
    pub names: Arc<Topology>,
    /// Where the live plugin sent it.
    pub live: Vec<ShardId>,
}

/// The thread that routes sampled statements with their shadow plugins.
pub struct Worker {
    jobs: SyncSender<Job>,
}

impl Worker {
    pub fn start() -> std::io::Result<Worker> {
        let (jobs, queue) = sync_channel(QUEUE);
        std::thread::Builder::new().name("shardcar-shadow".into()).spawn(move || run(queue))?;
        Ok(Worker { jobs })
    }

    /// Queues `job`, or counts it as dropped: the statement never waits.
    pub fn offer(&self, job: Job) {
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = self.jobs.try_send(job) {
            job.shadow.tally().dropped += 1;
        }
    }
}

/// Ends when the router (the sender) is gone.
fn run(queue: Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        compare(job);
    }
}

fn compare(job: Job) {
    let table = job.view.rule.table.clone();
    let routed = job.shadow.plugin.route(job.view, &job.topology, false);
    let mut tally = job.shadow.tally();
    let Ok((keys, decision)) = routed else {
        tally.failed += 1;
        return;
    };
    let mut shadow: Vec<ShardId> = match decision.target {
        Target::All => job.names.ids().collect(),
        Target::Shards(list) => match list.into_iter().map(|i| job.names.checked(i)).collect::<Option<Vec<_>>>() {
            Some(ids) => ids,
            None => {
                tally.failed += 1;
                return;
            }
        },
    };
    let mut live = job.live;
    shadow.sort();
    shadow.dedup();
    live.sort();
    live.dedup();
    let t = tally.tables.entry(table).or_default();
    if shadow == live {
        t.agreed += 1;
        return;
    }
    t.disagreed += 1;
    let key = keys
        .iter()
        .map(|k| match super::plugin::sql_value(k) {
            crate::classify::Value::Null => "NULL".to_string(),
            crate::classify::Value::Int(i) => i.to_string(),
            crate::classify::Value::Text(s) => s,
        })
        .collect::<Vec<_>>()
        .join(", ");
    if t.keys.len() < DISTINCT_KEYS {
        t.keys.insert(key.clone());
    }
    let names = |ids: &[ShardId]| ids.iter().map(|&s| job.names.name(s).to_string()).collect();
    if t.examples.len() == EXAMPLES {
        t.examples.pop_front();
    }
    t.examples.push_back(api::ShadowExample { key, live: names(&live), shadow: names(&shadow) });
}
