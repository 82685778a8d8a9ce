//! Running routing plugins: WebAssembly components on wasmtime.
//!
//! A plugin is compiled once (and cached on disk when a cache dir is set);
//! instances are pooled and reused, never made per statement. Every call
//! runs under an epoch deadline and a memory cap: a plugin that traps,
//! loops or grows too much fails that one statement, and its instance is
//! thrown away. WASI is linked with nothing granted (no files, no network,
//! no environment), so plugins built with Rust's std work — except stdio:
//! wasmtime-wasi's synchronous streams cannot run on an async runtime's
//! thread, so a write to stdout/stderr fails the call (plugins log through
//! the host's `log`; the SDK routes panic messages there).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quick_cache::Equivalent;
use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::directory::{Cached, Directory};
pub use super::facts::FactsView;
use super::ticker::{Ticker, Ticking};
use crate::classify::{Value as SqlValue, Verb};
use crate::metrics::{Metrics, PluginMetrics};

wasmtime::component::bindgen!({
    path: "../plugins/sdk/wit",
    world: "policy",
    with: { "shardcar:policy/host.facts": FactsView },
    // A host function that fails traps the plugin (which fails one statement).
    imports: { default: trappable },
});

use self::shardcar::policy::types::{Level, Predicate, StatementKind};
pub use self::shardcar::policy::types::{Role, Shard, Target};

/// How the SDK's panic hook starts the message it logs (plugins/sdk).
const PANIC_PREFIX: &str = "plugin panicked: panicked at ";

/// How often the epoch advances; call deadlines are counted in these ticks
/// (a 10 ms budget is checked 10–15 ms into a call).
const TICK: Duration = Duration::from_millis(5);
/// The epoch stops when no call has been made for this long.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Limits for every plugin call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub call_timeout: Duration,
    pub memory_bytes: usize,
    /// `plugins.remembered_decisions`.
    pub remembered_decisions: usize,
}

/// Why a plugin call did not produce a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The plugin returned an error for this statement.
    Refused(String),
    /// The plugin exceeded its CPU time.
    Timeout,
    /// The plugin exceeded its memory.
    OutOfMemory,
    /// The plugin trapped or misbehaved.
    Crashed(String),
    /// Directory entries the plugin needed and the cache did not have.
    Lookups(Vec<(String, String)>),
}

/// The shared wasmtime engine and everything plugins link against.
pub struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    limits: Limits,
    cache_dir: Option<PathBuf>,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    ticker: Ticker,
}

impl Runtime {
    pub fn new(
        limits: Limits,
        cache_dir: Option<PathBuf>,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("wasmtime: {e}"))?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("linking WASI: {e}"))?;
        Policy::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("linking the host interface: {e}"))?;
        let ticking = engine.clone();
        let ticker = Ticker::start("shardcar-epoch", TICK, IDLE_AFTER, move || ticking.increment_epoch())?;
        Ok(Arc::new(Runtime { engine, linker, limits, cache_dir, directory, metrics, ticker }))
    }

    /// Compiles a component, or loads it from the cache. The cache key covers
    /// the bytes and the engine's compatibility hash (wasmtime's version and
    /// settings).
    fn compile(&self, bytes: &[u8]) -> Result<Component, String> {
        let key = {
            let mut h = Sha256::new();
            h.update(bytes);
            let mut settings = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut settings);
            h.update(std::hash::Hasher::finish(&settings).to_le_bytes());
            hex(&h.finalize()[..16])
        };
        let cached = self.cache_dir.as_ref().map(|d| d.join(format!("{key}.cwasm")));
        if let Some(path) = &cached
            && path.is_file()
        {
            // SAFETY: the file was written by `Component::serialize` of this
            // very wasmtime version and engine settings (both in its name).
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!("ignoring unusable cached plugin {}: {e}", path.display()),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| format!("not a valid component: {e:#}"))?;
        if let Some(path) = &cached
            && let Ok(serialized) = component.serialize()
        {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let _ = std::fs::create_dir_all(path.parent().unwrap_or(path))
                .and_then(|()| std::fs::write(&tmp, serialized))
                .and_then(|()| std::fs::rename(&tmp, path));
        }
        Ok(component)
    }

    fn store(&self, label: Arc<str>) -> Store<State> {
        let limits = Grown {
            limits: StoreLimitsBuilder::new().memory_size(self.limits.memory_bytes).trap_on_grow_failure(true).build(),
            largest: 0,
        };
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        let state = State {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            limits,
            directory: self.directory.clone(),
            misses: Vec::new(),
            volatile: false,
            label,
            cpu_mark: None,
            panic: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // The deadline is in wall-clock ticks, but the limit is CPU time: a
        // call whose thread was not running (a busy or throttled machine)
        // gets another period; one that used half a budget of CPU in it is
        // interrupted. A call that ends in time never gets here.
        let (budget, ticks) = (self.limits.call_timeout, self.deadline_ticks());
        store.epoch_deadline_callback(move |mut ctx| {
            let now = thread_cpu_time();
            Ok(match ctx.data_mut().cpu_mark.replace(now) {
                Some(mark) if now.saturating_sub(mark) >= budget / 2 => UpdateDeadline::Interrupt,
                _ => UpdateDeadline::Continue(ticks),
            })
        });
        store
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.call_timeout.as_micros() / TICK.as_micros()).max(1) as u64 + 1
    }

    /// Starts a call's CPU-time limit; the clock runs while the guard lives.
    #[must_use = "the deadline is only enforced while the guard lives"]
    fn arm(&self, store: &mut Store<State>) -> Ticking<'_> {
        store.data_mut().cpu_mark = None;
        store.set_epoch_deadline(self.deadline_ticks());
        self.ticker.enter()
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// How a component's bytes are named: the first hex digits of their SHA-256.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes)[..6])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The topology plugins see, with a version so instances know when to refresh.
#[derive(Debug, Clone)]
pub struct TopologySnapshot {
    pub version: u64,
    pub topology: Topology,
}

/// One loaded plugin for one policy: compiled code, its config, idle instances.
pub struct Plugin {
    pub policy: String,
    pub info: PluginInfo,
    /// The first hex digits of the component's SHA-256.
    pub digest: String,
    /// When this version started serving.
    pub loaded_at: SystemTime,
    pre: PolicyPre<State>,
    config: String,
    runtime: Arc<Runtime>,
    idle: Mutex<Vec<Instance>>,
    label: Arc<str>,
    /// `name@version (digest)`, as messages and spans name the plugin.
    version: Arc<str>,
    pub metrics: PluginMetrics,
    /// Linear memory of its first instance once started.
    pub instance_memory: usize,
    /// This version's calls, and those that trapped, timed out or ran out
    /// of memory (a plugin's own refusals are answers, not failures): what
    /// its probation after a reload is judged by.
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    /// Decisions made from the table, the kind and the keys alone (None:
    /// `plugins.remembered_decisions = 0`, or a plugin with its own
    /// `extract-key`, whose keys are known only by calling it).
    remembered: Option<Remembered>,
}

/// A plugin version's remembered decisions, and the keys seen once.
struct Remembered {
    decisions: Cache<DecisionKey, Arc<Routed>>,
    seen: SeenOnce,
}

/// Which inputs were routed once lately: a decision is remembered the second
/// time its inputs come, so that a stream of keys that never repeat (a
/// uniformly random key over a large table) costs a bit test per statement,
/// not a copy and an insertion that nothing will read.
struct SeenOnce {
    bits: Box<[AtomicU64]>,
    marked: AtomicU64,
    hasher: foldhash::fast::RandomState,
}

impl SeenOnce {
    /// 2^18 bits (32 KiB), cleared after 2^15 marks: at most 1/8 set, so a
    /// key seen for the first time passes for a repeat at most 1 time in 8.
    const BITS: usize = 1 << 18;
    const CLEAR_AFTER: u64 = 1 << 15;

    fn new() -> SeenOnce {
        SeenOnce {
            bits: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            marked: AtomicU64::new(0),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Marks `found` as seen; true when it had been.
    fn again(&self, found: &DecisionRef<'_>) -> bool {
        let bit = std::hash::BuildHasher::hash_one(&self.hasher, found) as usize % Self::BITS;
        let mask = 1u64 << (bit % 64);
        if self.bits[bit / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            return true;
        }
        if self.marked.fetch_add(1, Ordering::Relaxed) + 1 >= Self::CLEAR_AFTER {
            self.marked.store(0, Ordering::Relaxed);
            for word in self.bits.iter() {
                word.store(0, Ordering::Relaxed);
            }
        }
        false
    }
}

/// A plugin's answer: the keys it routed by, and its decision.
type Routed = (Vec<Value>, Decision);

/// What a remembered decision is found by.
#[derive(PartialEq, Eq, Hash)]
struct DecisionKey {
    /// The topology the plugin was given (health is part of it).
    topology: u64,
    verb: Verb,
    table: String,
    keys: Vec<SqlValue>,
}

/// The same, borrowed from the statement being routed, so that a lookup
/// copies nothing. Its derived hash equals the owned key's: `&str` hashes
/// as `String`, a slice as a `Vec`.
#[derive(Hash)]
struct DecisionRef<'a> {
    topology: u64,
    verb: Verb,
    table: &'a str,
    keys: &'a [SqlValue],
}

impl Equivalent<DecisionKey> for DecisionRef<'_> {
    fn equivalent(&self, key: &DecisionKey) -> bool {
        self.topology == key.topology && self.verb == key.verb && self.table == key.table && self.keys == key.keys
    }
}

impl DecisionRef<'_> {
    fn owned(&self) -> DecisionKey {
        DecisionKey {
            topology: self.topology,
            verb: self.verb,
            table: self.table.to_string(),
            keys: self.keys.to_vec(),
        }
    }
}

struct Instance {
    store: Store<State>,
    bindings: Policy,
    topology_version: u64,
    /// Its largest memory once started: what its calls grow from.
    fresh: usize,
}

impl Plugin {
    /// Compiles and instantiates a plugin and initializes one instance with
    /// `config` (JSON): any failure is reported here, not on a statement.
    pub fn load(
        runtime: &Arc<Runtime>,
        policy: &str,
        bytes: &[u8],
        config: String,
        topology: &TopologySnapshot,
    ) -> Result<Plugin, String> {
        let component = runtime.compile(bytes)?;
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("the component does not fit the shardcar:policy contract: {e:#}"))?;
        let pre = PolicyPre::new(pre).map_err(|e| format!("the component does not export the policy world: {e:#}"))?;
        let digest = digest(bytes);
        let label: Arc<str> = Arc::from(format!("policy {policy}"));
        let mut plugin = Plugin {
            policy: policy.to_string(),
            info: PluginInfo { name: String::new(), version: String::new(), custom_extract: false },
            digest,
            loaded_at: SystemTime::now(),
            pre,
            config,
            runtime: runtime.clone(),
            idle: Mutex::new(Vec::new()),
            label,
            version: Arc::from(""),
            metrics: PluginMetrics::detached(),
            instance_memory: 0,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            remembered: None,
        };
        let mut first = plugin.instance(topology).map_err(|e| describe(&e))?;
        let _ticking = runtime.arm(&mut first.store);
        let info = guarded(|| first.bindings.call_info(&mut first.store)).map_err(|e| describe(&e))?;
        plugin.version = Arc::from(format!("{}@{} ({})", info.name, info.version, plugin.digest));
        plugin.metrics = runtime.metrics.plugin(policy, &info.name, &info.version);
        plugin.info = info;
        plugin.instance_memory = first.fresh;
        let remember = runtime.limits.remembered_decisions;
        plugin.remembered = (remember > 0 && !plugin.info.custom_extract)
            .then(|| Remembered { decisions: Cache::new(remember), seen: SeenOnce::new() });
        plugin.put_back(first);
        Ok(plugin)
    }

    /// `name@version (digest)`: the plugin's own name and version, and its digest.
    pub fn version(&self) -> &Arc<str> {
        &self.version
    }

    fn instance(&self, topology: &TopologySnapshot) -> Result<Instance, CallError> {
        let mut store = self.runtime.store(self.label.clone());
        let _ticking = self.runtime.arm(&mut store);
        let bindings = guarded(|| self.pre.instantiate(&mut store)).map_err(|e| store.data_mut().explained(e))?;
        match guarded(|| bindings.call_init(&mut store, &self.config)).map_err(|e| store.data_mut().explained(e))? {
            Ok(()) => {}
            Err(e) => return Err(CallError::Refused(format!("init failed: {e}"))),
        }
        guarded(|| bindings.call_set_topology(&mut store, &topology.topology))
            .map_err(|e| store.data_mut().explained(e))?;
        let fresh = store.data().limits.largest;
        Ok(Instance { store, bindings, topology_version: topology.version, fresh })
    }

    fn take(&self, topology: &TopologySnapshot) -> Result<Instance, CallError> {
        let idle = self.idle.lock().ok().and_then(|mut i| i.pop());
        let mut instance = match idle {
            Some(i) => i,
            None => self.instance(topology)?,
        };
        if instance.topology_version != topology.version {
            let _ticking = self.runtime.arm(&mut instance.store);
            guarded(|| instance.bindings.call_set_topology(&mut instance.store, &topology.topology))?;
            instance.topology_version = topology.version;
        }
        Ok(instance)
    }

    /// Returns an instance to the pool, unless its calls have used up half
    /// the room its memory cap left it when fresh: then it is dropped and
    /// the next call gets a fresh one. Runtimes with a garbage collector
    /// grow between collections, and some leak per call (componentize-js
    /// 0.23 does): retired in time, such a plugin never fails a statement,
    /// and a single call still has the other half of the room.
    fn put_back(&self, instance: Instance) {
        let room = self.runtime.limits.memory_bytes.saturating_sub(instance.fresh);
        if instance.store.data().limits.largest - instance.fresh > room / 2 {
            self.metrics.retired.inc();
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(instance);
        }
    }

    /// The statement's keys and where it goes: remembered, or from a call
    /// (remembered for next time when `remember`).
    pub fn route(&self, facts: FactsView, topology: &TopologySnapshot, remember: bool) -> Result<Routed, CallError> {
        let Some(remembered) = &self.remembered else { return self.call(facts, topology).map(|(routed, _)| routed) };
        let found = DecisionRef {
            topology: topology.version,
            verb: facts.statement().shape.verb,
            table: &facts.rule.table,
            keys: &facts.key_values,
        };
        if let Some(hit) = remembered.decisions.get(&found) {
            self.metrics.remembered.inc();
            return Ok((hit.0.clone(), hit.1.clone()));
        }
        let key = (remember && remembered.seen.again(&found)).then(|| found.owned());
        let (routed, volatile) = self.call(facts, topology)?;
        if let Some(key) = key.filter(|_| !volatile) {
            remembered.decisions.insert(key, Arc::new(routed.clone()));
        }
        Ok(routed)
    }

    /// One call into the plugin; with whether it read anything beyond the
    /// table, the kind and the keys (then its decision is not remembered).
    fn call(&self, facts: FactsView, topology: &TopologySnapshot) -> Result<(Routed, bool), CallError> {
        let started = Instant::now();
        let result = self.route_inner(facts, topology);
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        self.metrics.calls.inc();
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !matches!(result, Ok(_) | Err(CallError::Lookups(_))) {
            self.metrics.errors.inc();
        }
        if let Err(e @ (CallError::Timeout | CallError::OutOfMemory | CallError::Crashed(_))) = &result
            && self.failures.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::warn!(
                "{}: plugin {} failed: {} (later failures of this version are logged at debug level, with backtraces)",
                self.label,
                self.version,
                describe(e)
            );
        }
        result
    }

    fn route_inner(&self, facts: FactsView, topology: &TopologySnapshot) -> Result<(Routed, bool), CallError> {
        let mut instance = self.take(topology)?;
        let _ticking = self.runtime.arm(&mut instance.store);
        instance.store.data_mut().volatile = false;
        let handle =
            instance.store.data_mut().table.push(facts).map_err(|e| CallError::Crashed(format!("facts table: {e}")))?;
        let borrowed = || Resource::<FactsView>::new_borrow(handle.rep());
        let custom_extract = self.info.custom_extract;
        let outcome = guarded(|| {
            let keys = if custom_extract {
                match instance.bindings.call_extract_key(&mut instance.store, borrowed())? {
                    Ok(k) => k,
                    Err(e) => return Ok(Err(e)),
                }
            } else {
                // The same values the plugin's key-values() would return.
                instance.store.data().table.get(&borrowed())?.key_values.iter().map(value).collect()
            };
            let decision = instance.bindings.call_route(&mut instance.store, borrowed(), &keys)?;
            Ok(decision.map(|d| (keys, d)))
        });
        let _ = instance.store.data_mut().table.delete(handle);
        match outcome {
            // A trapped instance cannot be entered again: it is dropped here.
            Err(e) => Err(instance.store.data_mut().explained(e)),
            Ok(result) => {
                let misses = std::mem::take(&mut instance.store.data_mut().misses);
                let volatile = instance.store.data().volatile;
                self.put_back(instance);
                if !misses.is_empty() {
                    return Err(CallError::Lookups(misses));
                }
                result.map(|routed| (routed, volatile)).map_err(CallError::Refused)
            }
        }
    }
}

/// Calls into the guest: a trap, or a panic in a host function it called
/// (WASI stdio, see the module docs), becomes a [`CallError`].
fn guarded<T>(call: impl FnOnce() -> wasmtime::Result<T>) -> Result<T, CallError> {
    match crate::panics::caught(call) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify_trap(e)),
        Err(panic) => Err(CallError::Crashed(format!(
            "a host call failed ({panic}); plugins cannot use stdout or stderr, log with the host's log instead"
        ))),
    }
}

fn classify_trap(e: wasmtime::Error) -> CallError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout,
        Some(Trap::OutOfFuel) => CallError::Timeout,
        _ if format!("{e:#}").contains("forcing trap when growing memory") => CallError::OutOfMemory,
        _ => {
            // The backtrace is for the log; the client gets one line.
            tracing::debug!("plugin trap: {e:?}");
            CallError::Crashed(e.root_cause().to_string())
        }
    }
}

/// A one-line description of a call error.
pub fn describe(e: &CallError) -> String {
    match e {
        CallError::Refused(m) => m.clone(),
        CallError::Timeout => "exceeded its CPU time (plugins.call_timeout_ms) and was interrupted".into(),
        CallError::OutOfMemory => "exceeded its memory (plugins.memory_limit_mb) and was stopped".into(),
        CallError::Crashed(m) => format!("crashed: {m}"),
        CallError::Lookups(l) => format!("needs directory entries {l:?}"),
    }
}

/// The store data of one instance: its resources, WASI (granting nothing),
/// limits, and the directory lookups it missed.
pub struct State {
    table: ResourceTable,
    wasi: WasiCtx,
    limits: Grown,
    directory: Arc<Directory>,
    misses: Vec<(String, String)>,
    /// The current call read something besides the table, the kind and the
    /// keys (its decision may change with it: not remembered).
    volatile: bool,
    label: Arc<str>,
    /// This thread's CPU time when the call's deadline last passed.
    cpu_mark: Option<Duration>,
    /// What the plugin said as it panicked (the SDK's panic hook logs it
    /// just before the trap): the trap's message to the client.
    panic: Option<String>,
}

/// The store's limits, and the size its largest memory has grown to.
struct Grown {
    limits: StoreLimits,
    largest: usize,
}

impl ResourceLimiter for Grown {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.largest = self.largest.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl State {
    /// A trap, named by the plugin's own panic message when it left one.
    fn explained(&mut self, e: CallError) -> CallError {
        match (e, self.panic.take()) {
            (CallError::Crashed(trap), Some(panic)) => CallError::Crashed(format!("{panic} ({trap})")),
            (e, _) => e,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl State {
    fn facts(&self, r: &Resource<FactsView>) -> wasmtime::Result<&FactsView> {
        Ok(self.table.get(r)?)
    }
}

impl self::shardcar::policy::types::Host for State {}

impl self::shardcar::policy::host::Host for State {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if let (Level::Error, Some(panic)) = (level, message.strip_prefix(PANIC_PREFIX)) {
            // One line: the location and the message.
            self.panic = Some(format!("panicked at {}", panic.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
        let label = &self.label;
        match level {
            Level::Debug => tracing::debug!("plugin ({label}): {message}"),
            Level::Info => tracing::info!("plugin ({label}): {message}"),
            Level::Warn => tracing::warn!("plugin ({label}): {message}"),
            Level::Error => tracing::error!("plugin ({label}): {message}"),
        }
        Ok(())
    }

    fn lookup(&mut self, namespace: String, key: String) -> wasmtime::Result<Option<String>> {
        self.volatile = true;
        Ok(match self.directory.cached(&namespace, &key) {
            Cached::Hit(value) => value,
            Cached::Miss => {
                self.misses.push((namespace, key));
                None
            }
        })
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        self.volatile = true;
        Ok(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
    }
}

/// A key as shardcar's classifier writes it.
pub fn sql_value(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Int(i) => SqlValue::Int(*i),
        Value::Text(t) => SqlValue::Text(t.clone()),
    }
}

fn value(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Int(i) => Value::Int(*i),
        SqlValue::Text(t) => Value::Text(t.clone()),
    }
}

impl self::shardcar::policy::host::HostFacts for State {
    fn kind(&mut self, f: Resource<FactsView>) -> wasmtime::Result<StatementKind> {
        Ok(match self.facts(&f)?.statement().shape.verb {
            Verb::Select => StatementKind::Select,
            Verb::Insert => StatementKind::Insert,
            Verb::Update => StatementKind::Update,
            Verb::Delete => StatementKind::Delete,
            Verb::Copy => StatementKind::Copy,
            Verb::Ddl => StatementKind::Ddl,
            Verb::Other => StatementKind::Other,
        })
    }

    fn tables(&mut self, f: Resource<FactsView>) -> wasmtime::Result<Vec<String>> {
        self.volatile = true;
        Ok(self.facts(&f)?.statement().shape.tables.clone())
    }

    fn table(&mut self, f: Resource<FactsView>) -> wasmtime::Result<String> {
        Ok(self.facts(&f)?.rule.table.clone())
    }

    fn key_values(&mut self, f: Resource<FactsView>) -> wasmtime::Result<Vec<Value>> {
        Ok(self.facts(&f)?.key_values.iter().map(value).collect())
    }

    fn predicates(&mut self, f: Resource<FactsView>) -> wasmtime::Result<Vec<Predicate>> {
        self.volatile = true;
        let predicates = self.facts(&f)?.predicates();
        Ok(predicates
            .into_iter()
            .map(|(table, column, values)| Predicate { table, column, values: values.iter().map(value).collect() })
            .collect())
    }

    fn rows(&mut self, f: Resource<FactsView>) -> wasmtime::Result<Vec<Vec<(String, Value)>>> {
        self.volatile = true;
        let rows = self.facts(&f)?.rows();
        Ok(rows.into_iter().map(|row| row.into_iter().map(|(c, v)| (c, value(&v))).collect()).collect())
    }

    fn hints(&mut self, f: Resource<FactsView>) -> wasmtime::Result<Vec<(String, String)>> {
        self.volatile = true;
        Ok(self.facts(&f)?.facts.hints.pairs.clone())
    }

    fn session(&mut self, f: Resource<FactsView>) -> wasmtime::Result<Vec<(String, String)>> {
        self.volatile = true;
        Ok(self.facts(&f)?.session.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn user(&mut self, f: Resource<FactsView>) -> wasmtime::Result<String> {
        self.volatile = true;
        Ok(self.facts(&f)?.session.user.clone())
    }

    fn database(&mut self, f: Resource<FactsView>) -> wasmtime::Result<String> {
        self.volatile = true;
        Ok(self.facts(&f)?.session.database.clone())
    }

    fn application_name(&mut self, f: Resource<FactsView>) -> wasmtime::Result<String> {
        self.volatile = true;
        Ok(self.facts(&f)?.session.application_name.clone())
    }

    fn in_transaction(&mut self, f: Resource<FactsView>) -> wasmtime::Result<bool> {
        self.volatile = true;
        Ok(self.facts(&f)?.in_transaction)
    }

    fn drop(&mut self, _: Resource<FactsView>) -> wasmtime::Result<()> {
        // Handles are borrowed; `route` removes the entry itself.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_seen_again_only_after_a_first_time() {
        let seen = SeenOnce::new();
        let keys = [SqlValue::Int(7)];
        let found = DecisionRef { topology: 1, verb: Verb::Select, table: "t", keys: &keys };
        assert!(!seen.again(&found));
        assert!(seen.again(&found));
        let other = DecisionRef { topology: 2, ..found };
        assert!(!seen.again(&other), "a new topology is a new input");
    }
}
