//! WASM plugins as hook engines (wasmtime, component model, the WIT package
//! `corvus:plugin` in `sdk/wit/plugin.wit`, whose version a plugin must match).
//!
//! One process-wide [`Engine`] (pooling allocator, epoch interruption, a 10 ms ticker thread).
//! Per `[[hooks]] plugin = "x.wasm"` entry, once at load: the compiled component (from a cache
//! in `data_dir/plugin-cache`, keyed by the wasm's SHA-256 and the engine's compatibility hash;
//! compiled and stored on a miss), a [`Linker`] with the host imports plus a locked-down WASI,
//! and the `InstancePre`. Loading also checks the WIT version and runs `describe` and `init`
//! once, so a broken plugin or config is refused at load (and by `corvus check`).
//!
//! Instances: one per plugin per session, kept in the session's [`HookSession`] and reused
//! for that session's hooks. When the session ends the instance goes to its plugin's idle
//! pool (at most [`IDLE_MAX`], only if its memory stayed under [`IDLE_MEMORY_MAX`] and it has
//! capture room left) and serves a later session. `init` runs once per instance; each hook
//! call is given its session's id (the SDK builds a new plugin value when it changes, so
//! `&mut self` state lasts one session). A new instance costs tens of µs plus the reset of its
//! memory when it goes. A call without a session (queue deliveries) is a session of its own.
//! When the instance pool runs low, instances are not kept.
//!
//! Hooks have flat signatures (`func(session: u64) -> status`, WIT 0.3): the facts of a call
//! come from the `context` import, whose functions answer from the store's copy of the call's
//! [`HookCtx`], so a hook pays only for what it reads (the message included); a hook that does
//! more than `next` hands its outcome over through the `answer` import before it returns.
//!
//! Per call: an epoch deadline (CPU budget, counted in 10 ms ticks of guest execution; the
//! guest yields to tokio at every tick), a wall-clock deadline (checked at every tick, and
//! each DNS wait is cut to what is left of it: no timer per call), a memory cap with
//! `trap_on_grow_failure`, caps on log lines, DNS lookups and captured stdout/stderr. A trap, timeout or OOM fails that call only: the instance is
//! dropped (a trapped instance is poisoned) and the chain applies the entry's `on_error`.
//!
//! Calls are async ([`HookEngine::call_async`], used by SMTP sessions). The synchronous
//! [`HookEngine::call`] (IMAP/POP3 fetch hooks, CLI) runs the same future with
//! `block_in_place` on a multi-threaded runtime, or on a small runtime of its own.

use std::any::Any;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimits};
use wasmtime_wasi::p2::OutputStream;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::outcome::{self, Action, ActionError, cut};
use super::rhai::LogSink;
use super::{
    Actions, HookCtx, HookEngine, HookError, HookFuture, HookPoint, OnError, PointSet, Route,
    Verdict,
};
use crate::blocking::Wait;
use crate::config::HookEntry;
use crate::store::Store;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk/wit",
        world: "plugin",
        imports: {
            "corvus:plugin/dns": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

use bindings::corvus::plugin as wit;
use bindings::corvus::plugin::types as wt;

/// The WIT package version this host implements.
pub const WIT_PACKAGE: &str = "corvus:plugin";
/// See [`WIT_PACKAGE`].
pub const WIT_VERSION: &str = "0.3.0";

/// Limits on plugins. One set for the process (the pooling allocator is sized from it).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Guest CPU time per call (counted in ticks of [`TICK`]).
    pub cpu: Duration,
    /// Wall-clock time per call, DNS lookups included.
    pub wall: Duration,
    /// Linear memory per instance.
    pub memory: usize,
    /// Largest message handed to on-data/on-delivery (longer ones are cut, flagged in the
    /// context).
    pub max_message: usize,
    /// DNS lookups per call.
    pub dns_lookups: u32,
    /// Time per DNS lookup.
    pub dns_timeout: Duration,
    /// Log lines per call; each line is cut to 4 KiB.
    pub log_lines: u32,
    /// Captured stdout and stderr per instance, each.
    pub output: usize,
    /// Instances alive at once (pool slots).
    pub instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu: Duration::from_millis(100),
            wall: Duration::from_secs(5),
            memory: 128 << 20,
            max_message: 32 << 20,
            dns_lookups: 10,
            dns_timeout: Duration::from_secs(2),
            log_lines: 100,
            output: 64 << 10,
            instances: 256,
        }
    }
}

/// Epoch tick: the granularity of the CPU budget.
pub const TICK: Duration = Duration::from_millis(10);

/// Sessions stop keeping warm instances when this share of the pool is in use.
const KEEP_BELOW: f64 = 0.75;

struct Runtime {
    engine: Engine,
    limits: Limits,
    live: AtomicUsize,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static Runtime, HookError> {
    RUNTIME
        .get_or_init(|| build_runtime(Limits::default()))
        .as_ref()
        .map_err(|e| HookError(e.clone()))
}

impl From<&crate::config::Plugins> for Limits {
    fn from(p: &crate::config::Plugins) -> Self {
        Limits {
            cpu: p.cpu_time,
            wall: p.wall_time,
            memory: (p.memory_mib as usize) << 20,
            max_message: p.max_message,
            dns_lookups: p.dns_lookups,
            dns_timeout: p.dns_timeout,
            log_lines: p.log_lines,
            instances: p.instances,
            ..Limits::default()
        }
    }
}

/// Set the process's plugin limits (`[plugins]`) before the first plugin loads. The pool is
/// sized from them once: when the runtime already runs with other limits (a reload after
/// the config changed), the old ones stay and the returned message says a restart applies
/// the new ones.
pub fn configure(limits: Limits) -> Result<(), String> {
    let mut wanted = Some(limits);
    let rt = RUNTIME.get_or_init(|| build_runtime(wanted.take().expect("first init")));
    match (rt, wanted) {
        (Err(e), _) => Err(e.clone()),
        (Ok(rt), Some(w)) if rt.limits != w => Err(
            "plugins: the [plugins] limits changed; they size the instance pool and take effect at the next restart (the old limits stay)".into(),
        ),
        _ => Ok(()),
    }
}

fn build_runtime(limits: Limits) -> Result<Runtime, String> {
    let mut pool = PoolingAllocationConfig::default();
    let n = limits.instances;
    pool.total_component_instances(n)
        .total_core_instances(n * 8)
        .total_memories(n * 2)
        .total_tables(n * 4)
        .total_stacks(n)
        .max_memory_size(limits.memory)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        // Reset small memories and the fiber stacks with memset instead of madvise: a new
        // instance then costs fewer page faults. With PAGEMAP_SCAN (Linux 6.7+) only the
        // pages the instance dirtied are reset; without it every instance's end cleared the
        // whole 2 MiB, about an eighth of the server's CPU with one SMTP message per
        // session and two plugins (BENCHMARKS.md, "WASM plugins").
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(128 << 10);
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        // Reserve only the memory cap per slot (not the 4 GiB default plus guards): the pool
        // then reserves about instances × 2 × memory of address space, and bounds checks
        // are explicit.
        .memory_reservation(limits.memory as u64)
        .memory_guard_size(0)
        .memory_reservation_for_growth(0)
        .async_stack_size(1 << 20)
        .max_wasm_stack(512 << 10);
    let engine = Engine::new(&c).map_err(|e| format!("wasm engine: {e}"))?;
    let ticker = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                match ticker.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            }
        })
        .map_err(|e| format!("wasm epoch ticker: {e}"))?;
    Ok(Runtime {
        engine,
        limits,
        live: AtomicUsize::new(0),
    })
}

/// What a plugin's host functions need (shared by all its instances).
struct PluginEnv {
    /// Path for logs and errors.
    name: String,
    kv_namespace: String,
    config: serde_json::Map<String, serde_json::Value>,
    config_json: String,
    store: Option<Store>,
    resolver: Option<Arc<hickory_resolver::TokioResolver>>,
    sink: Option<LogSink>,
}

impl PluginEnv {
    fn log(&self, level: &str, text: &str) {
        let plugin = self.name.as_str();
        match level {
            "error" => tracing::error!(plugin, "{text}"),
            "warn" => tracing::warn!(plugin, "{text}"),
            "info" => tracing::info!(plugin, "{text}"),
            "debug" => tracing::debug!(plugin, "{text}"),
            _ => tracing::trace!(plugin, "{text}"),
        }
        if let Some(sink) = &self.sink {
            let mut lines = sink.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() < 10_000 {
                lines.push(format!("[{level}] {text}"));
            }
        }
    }
}

/// The store's resource limits, remembering how large its linear memory grew.
struct Limiter {
    inner: StoreLimits,
    memory_peak: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok {
            self.memory_peak = self.memory_peak.max(desired);
        }
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The data of one Store (one instance).
struct HostState {
    env: Arc<PluginEnv>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// Bytes of stdout/stderr already forwarded to the log.
    forwarded: (usize, usize),
    /// Epoch ticks seen in the current call, and the budget.
    ticks: u64,
    tick_budget: u64,
    cpu_exceeded: bool,
    /// When the current call must end (its wall-clock limit), and whether it was cut there.
    deadline: Instant,
    wall_exceeded: bool,
    dns_left: u32,
    dns_timeout: Duration,
    log_left: u32,
    log_dropped: u32,
    /// The facts of the current call (the `context` and `auth` imports); the message is
    /// dropped when the call ends.
    call: Option<HookCtx>,
    /// Whether a hook call is running (the `context` and `answer` imports work only then).
    in_call: bool,
    /// What the hook handed over through the `answer` import.
    answer: Option<Result<wt::Outcome, String>>,
    /// Longest message the `context.message` method hands over.
    max_message: usize,
}

impl Drop for HostState {
    fn drop(&mut self) {
        if let Ok(rt) = runtime() {
            rt.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::log::Host for HostState {
    fn log(&mut self, level: wit::log::Level, message: String) -> wasmtime::Result<()> {
        if self.log_left == 0 {
            self.log_dropped += 1;
            return Ok(());
        }
        self.log_left -= 1;
        let level = match level {
            wit::log::Level::Trace => "trace",
            wit::log::Level::Debug => "debug",
            wit::log::Level::Info => "info",
            wit::log::Level::Warn => "warn",
            wit::log::Level::Error => "error",
        };
        self.env.log(level, cut(&message, 4096));
        Ok(())
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 1024 {
        Err("kv: keys are 1 to 1024 bytes long".into())
    } else {
        Ok(())
    }
}

impl HostState {
    fn kv_store(&self) -> Result<&Store, String> {
        self.env
            .store
            .as_ref()
            .ok_or_else(|| "kv: no store here".to_string())
    }
}

impl wit::kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        Ok((|| {
            check_key(&key)?;
            self.kv_store()?
                .kv_get(&self.env.kv_namespace, &key)
                .wait()
                .map_err(|e| format!("kv: {e}"))
        })())
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_secs: Option<u32>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok((|| {
            check_key(&key)?;
            if value.len() > 65536 {
                return Err(format!(
                    "kv: values are at most 65536 bytes long (got {})",
                    value.len()
                ));
            }
            self.kv_store()?
                .kv_set(
                    &self.env.kv_namespace,
                    &key,
                    &value,
                    ttl_secs.filter(|t| *t > 0).map(u64::from),
                )
                .wait()
                .map_err(|e| format!("kv: {e}"))
        })())
    }

    fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_secs: Option<u32>,
    ) -> wasmtime::Result<Result<i64, String>> {
        Ok((|| {
            check_key(&key)?;
            self.kv_store()?
                .kv_incr(
                    &self.env.kv_namespace,
                    &key,
                    delta,
                    ttl_secs.filter(|t| *t > 0).map(u64::from),
                )
                .wait()
                .map_err(|e| format!("kv: {e}"))
        })())
    }
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl wit::config::Host for HostState {
    fn json(&mut self) -> wasmtime::Result<String> {
        Ok(self.env.config_json.clone())
    }
    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.env.config.keys().cloned().collect())
    }
    fn get_string(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .env
            .config
            .get(&key)
            .filter(|v| !v.is_null())
            .map(json_text))
    }
    fn get_int(&mut self, key: String) -> wasmtime::Result<Option<i64>> {
        Ok(self.env.config.get(&key).and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_f64().map(|f| f as i64))
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        }))
    }
    fn get_float(&mut self, key: String) -> wasmtime::Result<Option<f64>> {
        Ok(self.env.config.get(&key).and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        }))
    }
    fn get_bool(&mut self, key: String) -> wasmtime::Result<Option<bool>> {
        Ok(self.env.config.get(&key).and_then(|v| v.as_bool()))
    }
    fn get_list(&mut self, key: String) -> wasmtime::Result<Option<Vec<String>>> {
        Ok(self
            .env
            .config
            .get(&key)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(json_text).collect()))
    }
    fn get_table(&mut self, key: String) -> wasmtime::Result<Option<Vec<(String, String)>>> {
        Ok(self
            .env
            .config
            .get(&key)
            .and_then(|v| v.as_object())
            .map(|o| o.iter().map(|(k, v)| (k.clone(), json_text(v))).collect()))
    }
}

impl wit::clock::Host for HostState {
    fn now(&mut self) -> wasmtime::Result<i64> {
        Ok(chrono::Utc::now().timestamp())
    }
    fn monotonic_ms(&mut self) -> wasmtime::Result<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        Ok(START.get_or_init(Instant::now).elapsed().as_millis() as u64)
    }
}

use wit::dns::DnsError;

/// What a lookup that ran out of time answers (`dns-error.temporary`).
const DNS_TIMED_OUT: &str = "timeout";

#[derive(Clone, Copy)]
enum DnsKind {
    A,
    Aaaa,
    Txt,
    Ptr,
}

impl HostState {
    /// A lookup, bounded by the DNS timeout and by what is left of the call's wall-clock
    /// time: when the call's time runs out, the call traps.
    async fn lookup(
        &mut self,
        kind: DnsKind,
        name: String,
    ) -> wasmtime::Result<Result<Vec<String>, DnsError>> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.wall_exceeded = true;
            return Err(wasmtime::Trap::Interrupt.into());
        }
        let cut_by_wall = left < self.dns_timeout;
        let r = self
            .lookup_within(kind, name, self.dns_timeout.min(left))
            .await;
        if cut_by_wall && matches!(&r, Err(DnsError::Temporary(t)) if t == DNS_TIMED_OUT) {
            self.wall_exceeded = true;
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(r)
    }

    async fn lookup_within(
        &mut self,
        kind: DnsKind,
        name: String,
        timeout: Duration,
    ) -> Result<Vec<String>, DnsError> {
        if self.dns_left == 0 {
            return Err(DnsError::LimitExceeded);
        }
        self.dns_left -= 1;
        let Some(resolver) = self.env.resolver.clone() else {
            return Err(DnsError::Temporary("no resolver".into()));
        };
        let name = name.trim().to_string();
        if name.is_empty() || name.len() > 253 || name.contains(char::is_whitespace) {
            return Err(DnsError::Invalid(format!(
                "{:?} is not a DNS name",
                cut(&name, 300)
            )));
        }
        use hickory_resolver::proto::rr::RData;
        let texts = |lookup: hickory_resolver::lookup::Lookup| -> Vec<String> {
            lookup
                .answers()
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::A(a) => Some(a.to_string()),
                    RData::AAAA(a) => Some(a.to_string()),
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|d| String::from_utf8_lossy(d).into_owned())
                            .collect::<String>(),
                    ),
                    RData::PTR(p) => Some(p.to_ascii().trim_end_matches('.').to_string()),
                    _ => None,
                })
                .collect()
        };
        let result = match kind {
            DnsKind::A => tokio::time::timeout(timeout, resolver.ipv4_lookup(name.as_str()))
                .await
                .map(|r| r.map(texts)),
            DnsKind::Aaaa => tokio::time::timeout(timeout, resolver.ipv6_lookup(name.as_str()))
                .await
                .map(|r| r.map(texts)),
            DnsKind::Txt => tokio::time::timeout(timeout, resolver.txt_lookup(name.as_str()))
                .await
                .map(|r| r.map(texts)),
            DnsKind::Ptr => {
                let ip: std::net::IpAddr = name
                    .parse()
                    .map_err(|_| DnsError::Invalid(format!("{name:?} is not an IP address")))?;
                tokio::time::timeout(timeout, resolver.reverse_lookup(ip))
                    .await
                    .map(|r| r.map(texts))
            }
        };
        match result {
            Err(_) => Err(DnsError::Temporary(DNS_TIMED_OUT.into())),
            Ok(Ok(v)) => {
                if v.is_empty() {
                    Err(DnsError::NotFound)
                } else {
                    Ok(v.into_iter().take(64).collect())
                }
            }
            Ok(Err(e)) => {
                if e.is_no_records_found() || e.is_nx_domain() {
                    Err(DnsError::NotFound)
                } else {
                    Err(DnsError::Temporary(e.to_string()))
                }
            }
        }
    }
}

impl wit::dns::Host for HostState {
    async fn a(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, DnsError>> {
        self.lookup(DnsKind::A, name).await
    }
    async fn aaaa(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, DnsError>> {
        self.lookup(DnsKind::Aaaa, name).await
    }
    async fn txt(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, DnsError>> {
        self.lookup(DnsKind::Txt, name).await
    }
    async fn ptr(&mut self, ip: String) -> wasmtime::Result<Result<Vec<String>, DnsError>> {
        self.lookup(DnsKind::Ptr, ip).await
    }
}

impl wt::Host for HostState {}

impl HostState {
    /// The facts of the current call; asking outside a hook call (in `init`) traps.
    fn facts(&self) -> wasmtime::Result<&HookCtx> {
        match &self.call {
            Some(c) if self.in_call => Ok(c),
            _ => Err(wasmtime::Error::msg("context used outside a hook call")),
        }
    }
}

impl wit::context::Host for HostState {
    fn hook(&mut self) -> wasmtime::Result<wt::Hook> {
        Ok(hook_of(self.facts()?.point))
    }
    fn listener(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.listener.to_string())
    }
    fn client_ip(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.client_ip.to_string())
    }
    fn client_ptr(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.client_ptr.clone())
    }
    fn helo(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.helo.clone())
    }
    fn tls(&mut self) -> wasmtime::Result<bool> {
        Ok(self.facts()?.tls)
    }
    fn user(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.user.clone())
    }
    fn mail_from(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.mail_from.clone())
    }
    fn rcpt(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.rcpt.clone())
    }
    fn route(&mut self) -> wasmtime::Result<wt::Route> {
        Ok(match &self.facts()?.route {
            None => wt::Route::Unknown,
            Some(Route::Local(v)) => wt::Route::Local(v.clone()),
            Some(Route::UnknownLocal) => wt::Route::UnknownLocal,
            Some(Route::Remote) => wt::Route::Remote,
        })
    }
    fn rcpts(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.facts()?.rcpts.clone())
    }
    fn spf(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.auth_results[0].clone())
    }
    fn dkim(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.auth_results[1].clone())
    }
    fn dmarc(&mut self) -> wasmtime::Result<String> {
        Ok(self.facts()?.auth_results[2].clone())
    }
    fn credentials(&mut self) -> wasmtime::Result<Option<wt::Credentials>> {
        let c = self.facts()?;
        Ok(c.credentials.as_ref().map(|(u, p, m)| wt::Credentials {
            username: u.clone(),
            password: p.clone(),
            mechanism: m.clone(),
            valid: c.credentials_valid,
        }))
    }
    fn fetch(&mut self) -> wasmtime::Result<Option<wt::FetchInfo>> {
        Ok(self
            .facts()?
            .fetch
            .as_ref()
            .map(|(m, uid, p)| wt::FetchInfo {
                mailbox: m.clone(),
                uid: *uid,
                protocol: p.to_string(),
            }))
    }
    fn remote_mx(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.facts()?.remote_mx.clone())
    }
    fn message_size(&mut self) -> wasmtime::Result<u64> {
        Ok(self.facts()?.message.as_ref().map_or(0, |m| m.len() as u64))
    }
    fn message_truncated(&mut self) -> wasmtime::Result<bool> {
        let max = self.max_message;
        Ok(self
            .facts()?
            .message
            .as_ref()
            .is_some_and(|m| m.len() > max))
    }
    fn message(&mut self) -> wasmtime::Result<Vec<u8>> {
        let max = self.max_message;
        Ok(match &self.facts()?.message {
            Some(m) => m[..m.len().min(max)].to_vec(),
            None => Vec::new(),
        })
    }
}

impl HostState {
    /// Keep what a hook hands over (the last answer of a call wins).
    fn give_answer(&mut self, answer: Result<wt::Outcome, String>) -> wasmtime::Result<()> {
        if !self.in_call {
            return Err(wasmtime::Error::msg("answer given outside a hook call"));
        }
        self.answer = Some(answer);
        Ok(())
    }
}

impl wit::answer::Host for HostState {
    fn set_outcome(&mut self, outcome: wt::Outcome) -> wasmtime::Result<()> {
        self.give_answer(Ok(outcome))
    }
    fn fail(&mut self, message: String) -> wasmtime::Result<()> {
        self.give_answer(Err(message))
    }
}

impl wit::auth::Host for HostState {
    fn facts(&mut self) -> wasmtime::Result<wit::auth::AuthFacts> {
        // Outside a hook call (`init`) every fact is empty.
        let none = crate::sender_auth::AuthFacts::default();
        let a = match &self.call {
            Some(c) if self.in_call => &c.auth,
            _ => &none,
        };
        Ok(wit::auth::AuthFacts {
            spf: a.spf.clone(),
            spf_domain: a.spf_domain.clone(),
            spf_helo: a.spf_helo.clone(),
            dkim: a.dkim.clone(),
            dkim_domains: a.dkim_domains.clone(),
            dmarc: a.dmarc.clone(),
            dmarc_domain: a.dmarc_domain.clone(),
            dmarc_policy: a.dmarc_policy.clone(),
            arc: a.arc.clone(),
            arc_sealer: a.arc_sealer.clone(),
            action: a.action.clone(),
        })
    }
}

/// One instance of a plugin and its store.
struct Instance {
    store: wasmtime::Store<HostState>,
    plugin: bindings::Plugin,
}

/// Instances a plugin keeps between sessions, ready for `init` and the next session.
type IdlePool = Mutex<Vec<Instance>>;

/// Most idle instances a plugin keeps.
const IDLE_MAX: usize = 32;
/// Instances whose linear memory grew beyond this are not kept idle (a plugin that read a
/// 25 MB message would otherwise hold that memory while it waits).
const IDLE_MEMORY_MAX: usize = 16 << 20;

/// Put an instance that finished a session (or a session-less call) back into its plugin's
/// idle pool, unless the pool is full, the instance pool as a whole is getting scarce, or the
/// instance has used half its stdout/stderr capture (which never empties).
fn give_back(pool: &IdlePool, inst: Instance) {
    let Ok(rt) = runtime() else { return };
    let s = inst.store.data();
    let output_left = s.forwarded.0.max(s.forwarded.1) < rt.limits.output / 2;
    let small = s.limits.memory_peak <= IDLE_MEMORY_MAX;
    let scarce = rt.live.load(Ordering::Relaxed) as f64 >= rt.limits.instances as f64 * KEEP_BELOW;
    let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
    if output_left && small && !scarce && idle.len() < IDLE_MAX {
        idle.push(inst);
    }
}

/// A session's instance; goes back to its plugin's idle pool when the session ends.
struct Pooled {
    inst: Option<Instance>,
    home: std::sync::Weak<IdlePool>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let (Some(inst), Some(pool)) = (self.inst.take(), self.home.upgrade()) {
            give_back(&pool, inst);
        }
    }
}

/// Where a session keeps its warm instances (one per plugin), dropped with the session.
pub struct HookSession {
    /// What plugin hooks get as `session`.
    id: u64,
    slots: Mutex<Vec<(u64, Box<dyn Any + Send>)>>,
}

impl Default for HookSession {
    fn default() -> Self {
        HookSession {
            id: next_session_id(),
            slots: Mutex::default(),
        }
    }
}

/// A new session id (sessions, and calls outside any session): what hooks get as `session`.
fn next_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl std::fmt::Debug for HookSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSession")
    }
}

impl HookSession {
    fn take(&self, id: u64) -> Option<Box<dyn Any + Send>> {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let i = s.iter().position(|(k, _)| *k == id)?;
        Some(s.swap_remove(i).1)
    }

    fn put(&self, id: u64, v: Box<dyn Any + Send>) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Entries of plugins replaced by a reload linger until the session ends; keep a few.
        if s.len() >= 16 {
            s.remove(0);
        }
        s.push((id, v));
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A WASM plugin in the hook chain.
pub struct WasmHook {
    id: u64,
    env: Arc<PluginEnv>,
    pre: bindings::PluginPre<HostState>,
    points: PointSet,
    info: (String, String),
    on_error: OnError,
    /// Instances between sessions (see [`WasmHook::checkout`]).
    idle: Arc<IdlePool>,
    /// Calls made and instances created (for tests and benchmarks).
    pub stats: Arc<Stats>,
}

/// Counters of one plugin.
#[derive(Debug, Default)]
pub struct Stats {
    /// Instances created.
    pub instances: AtomicU64,
    /// Instances taken from the idle pool for a new session.
    pub reused: AtomicU64,
    /// `init` calls (one per instance).
    pub inits: AtomicU64,
    /// Failed calls.
    pub failures: AtomicU64,
}

/// How to load a plugin.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// The entry's config table.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Failure policy.
    pub on_error: OnError,
    /// Store for the kv import (None: kv calls fail).
    pub store: Option<Store>,
    /// Resolver for the dns import (None: lookups fail as temporary).
    pub resolver: Option<Arc<hickory_resolver::TokioResolver>>,
    /// Where to cache compiled plugins (None: compile every time).
    pub cache_dir: Option<PathBuf>,
    /// Also collect log lines here.
    pub sink: Option<LogSink>,
}

/// Compile (or load from the cache) the component in `wasm`.
fn compile(
    engine: &Engine,
    name: &str,
    wasm: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Component, String> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, wasm)
            .map_err(|e| format!("{name}: not a valid plugin: {e}"));
    };
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let digest = ring::digest::digest(&ring::digest::SHA256, wasm);
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = dir.join(format!("{hex}-{:016x}.cwasm", h.finish()));
    if let Some(c) = corvus_wasm_cache::load(engine, &path) {
        return Ok(c);
    }
    let started = Instant::now();
    let component =
        Component::new(engine, wasm).map_err(|e| format!("{name}: not a valid plugin: {e}"))?;
    tracing::info!(
        plugin = name,
        ms = started.elapsed().as_millis() as u64,
        "plugin compiled"
    );
    match component.serialize() {
        Ok(bytes) => {
            if let Err(e) = corvus_wasm_cache::store(&path, &bytes) {
                tracing::warn!(plugin = name, error = %e, "cannot cache the compiled plugin");
            }
        }
        Err(e) => tracing::warn!(plugin = name, error = %e, "cannot serialize the compiled plugin"),
    }
    Ok(component)
}

/// The WIT package versions the component imports or exports, as "corvus:plugin@x.y.z"
/// strings (for the version check).
fn wit_versions(engine: &Engine, component: &Component) -> Vec<String> {
    let ty = component.component_type();
    let mut found: Vec<String> = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.exports(engine).map(|(n, _)| n.to_string()))
        .filter(|n| n.starts_with("corvus:"))
        .filter_map(|n| {
            let (pkg, rest) = n.split_once('/')?;
            let version = rest
                .split_once('@')
                .map(|(_, v)| v)
                .unwrap_or("(unversioned)");
            Some(format!("{pkg}@{version}"))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Whether a plugin built against WIT version `v` runs on this host ([`WIT_VERSION`]): the
/// same major version (for 0.x the same minor), and not newer than the host's, whose
/// additions (imports) the host would lack.
fn compatible(v: &str) -> bool {
    let parse = |s: &str| -> Option<(u64, u64, u64)> {
        let mut it = s.split('.');
        Some((
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
            it.next().unwrap_or("0").parse().ok()?,
        ))
    };
    match (parse(v), parse(WIT_VERSION)) {
        (Some(p), Some(h)) if p.0 == 0 || h.0 == 0 => p.0 == h.0 && p.1 == h.1 && p.2 <= h.2,
        (Some(p), Some(h)) => p.0 == h.0 && (p.1, p.2) <= (h.1, h.2),
        _ => false,
    }
}

fn point_of(h: wt::Hook) -> HookPoint {
    match h {
        wt::Hook::Connect => HookPoint::Connect,
        wt::Hook::Helo => HookPoint::Helo,
        wt::Hook::Auth => HookPoint::Auth,
        wt::Hook::Mail => HookPoint::Mail,
        wt::Hook::Rcpt => HookPoint::Rcpt,
        wt::Hook::Data => HookPoint::Data,
        wt::Hook::Delivery => HookPoint::Delivery,
        wt::Hook::Fetch => HookPoint::Fetch,
    }
}

fn hook_of(p: HookPoint) -> wt::Hook {
    match p {
        HookPoint::Connect => wt::Hook::Connect,
        HookPoint::Helo => wt::Hook::Helo,
        HookPoint::Auth => wt::Hook::Auth,
        HookPoint::Mail => wt::Hook::Mail,
        HookPoint::Rcpt => wt::Hook::Rcpt,
        HookPoint::Data => wt::Hook::Data,
        HookPoint::Delivery => wt::Hook::Delivery,
        HookPoint::Fetch => wt::Hook::Fetch,
    }
}

impl WasmHook {
    /// Load the plugin of a `[[hooks]]` entry.
    pub fn load(
        entry: &HookEntry,
        path: &Path,
        store: Store,
        resolver: Option<Arc<hickory_resolver::TokioResolver>>,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self, String> {
        Self::load_file(
            path,
            LoadOptions {
                config: entry.config.clone(),
                on_error: entry.on_error,
                store: Some(store),
                resolver,
                cache_dir,
                sink: None,
            },
        )
    }

    /// Load a plugin file: compile (or take from the cache), check the WIT version, link,
    /// run `describe` and `init` once. The error is one line naming the file.
    pub fn load_file(path: &Path, opts: LoadOptions) -> Result<Self, String> {
        let name = path.display().to_string();
        let wasm = std::fs::read(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
        Self::from_bytes(&name, &wasm, opts)
    }

    /// Load a plugin from its bytes; `name` names it in logs and errors, and (its file stem)
    /// its kv namespace.
    pub fn from_bytes(name: &str, wasm: &[u8], opts: LoadOptions) -> Result<Self, String> {
        let rt = runtime().map_err(|e| e.0)?;
        if !wasm.starts_with(b"\0asm") {
            return Err(format!("{name}: not a WebAssembly file"));
        }
        // A core module (not a component) has version 1 in bytes 4..8.
        if wasm.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(format!(
                "{name}: this is a core WebAssembly module, not a component; build the plugin for the wasm32-wasip2 target (see sdk/README.md)"
            ));
        }
        let component = compile(&rt.engine, name, wasm, opts.cache_dir.as_deref())?;
        let versions = wit_versions(&rt.engine, &component);
        let wanted = format!("{WIT_PACKAGE}@{WIT_VERSION}");
        if let Some(bad) = versions.iter().find(|v| {
            v.split_once('@')
                .is_none_or(|(pkg, ver)| pkg != WIT_PACKAGE || !compatible(ver))
        }) {
            return Err(format!(
                "{name}: plugin was built for {bad}, but this server provides {wanted}; rebuild it against a matching corvus-sdk / sdk/wit"
            ));
        }
        if versions.is_empty() {
            return Err(format!(
                "{name}: plugin does not export {wanted} hooks (is it a Corvus plugin?)"
            ));
        }
        let mut linker: Linker<HostState> = Linker::new(&rt.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| format!("{name}: linking WASI: {e}"))?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| format!("{name}: linking: {e}"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| format!("{name}: cannot link: {e}"))?;
        let pre = bindings::PluginPre::new(pre).map_err(|e| format!("{name}: {e}"))?;
        let stem = Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_string());
        let config_json = serde_json::Value::Object(opts.config.clone()).to_string();
        let env = Arc::new(PluginEnv {
            name: name.to_string(),
            kv_namespace: format!("wasm:{stem}"),
            config: opts.config,
            config_json,
            store: opts.store,
            resolver: opts.resolver,
            sink: opts.sink,
        });
        let mut hook = WasmHook {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            env,
            pre,
            points: PointSet::default(),
            info: (stem, String::new()),
            on_error: opts.on_error,
            idle: Arc::default(),
            stats: Arc::default(),
        };
        // describe + init once now, so a bad plugin or config is refused at load.
        let (points, info) = crate::blocking::run(hook.probe()).map_err(|e| e.0)?;
        hook.points = points;
        hook.info = info;
        Ok(hook)
    }

    async fn probe(&self) -> Result<(PointSet, (String, String)), HookError> {
        let mut inst = self.instantiate().await?;
        self.arm(&mut inst);
        let r = tokio::time::timeout(
            runtime()?.limits.wall,
            inst.plugin
                .corvus_plugin_hooks()
                .call_describe(&mut inst.store),
        )
        .await;
        let info = match r {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return Err(self.trap_error("describe", &mut inst, e)),
            Err(_) => return Err(HookError(format!("{}: describe: timed out", self.env.name))),
        };
        let points = info.hooks.iter().map(|h| point_of(*h)).collect();
        Ok((points, (info.name, info.version)))
    }

    /// Plugin name and version from `describe`.
    pub fn info(&self) -> (&str, &str) {
        (&self.info.0, &self.info.1)
    }

    /// Names of the hooks the plugin handles.
    pub fn handled_points(&self) -> Vec<&'static str> {
        self.points.names()
    }

    /// A new instance with `init` run.
    async fn instantiate(&self) -> Result<Instance, HookError> {
        let rt = runtime()?;
        let limits = &rt.limits;
        let stdout = MemoryOutputPipe::new(limits.output);
        let stderr = MemoryOutputPipe::new(limits.output);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        rt.live.fetch_add(1, Ordering::Relaxed);
        let state = HostState {
            env: self.env.clone(),
            wasi,
            table: ResourceTable::new(),
            limits: Limiter {
                inner: wasmtime::StoreLimitsBuilder::new()
                    .memory_size(limits.memory)
                    .instances(32)
                    .tables(64)
                    .memories(8)
                    .table_elements(100_000)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_peak: 0,
            },
            stdout,
            stderr,
            forwarded: (0, 0),
            ticks: 0,
            tick_budget: 1,
            cpu_exceeded: false,
            deadline: Instant::now() + limits.wall,
            wall_exceeded: false,
            dns_left: 0,
            dns_timeout: limits.dns_timeout,
            log_left: limits.log_lines,
            log_dropped: 0,
            call: None,
            in_call: false,
            answer: None,
            max_message: limits.max_message,
        };
        let mut store = wasmtime::Store::new(&rt.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut cx| {
            let s = cx.data_mut();
            s.ticks += 1;
            if s.ticks > s.tick_budget {
                s.cpu_exceeded = true;
                return Err(wasmtime::Trap::Interrupt.into());
            }
            if Instant::now() >= s.deadline {
                s.wall_exceeded = true;
                return Err(wasmtime::Trap::Interrupt.into());
            }
            Ok(wasmtime::UpdateDeadline::Yield(1))
        });
        self.stats.instances.fetch_add(1, Ordering::Relaxed);
        let mut inst_store = store;
        self.arm_store(&mut inst_store);
        let plugin =
            match tokio::time::timeout(limits.wall, self.pre.instantiate_async(&mut inst_store))
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    return Err(HookError(format!(
                        "{}: cannot instantiate: {}",
                        self.env.name,
                        describe_error(&e, inst_store.data(), limits)
                    )));
                }
                Err(_) => {
                    return Err(HookError(format!(
                        "{}: instantiation timed out",
                        self.env.name
                    )));
                }
            };
        let mut inst = Instance {
            store: inst_store,
            plugin,
        };
        self.init(&mut inst).await?;
        Ok(inst)
    }

    /// Run `init` with the entry's config, once per instance (the SDK rebuilds its plugin
    /// value when a hook's session changes, so `&mut self` state lasts one session).
    async fn init(&self, inst: &mut Instance) -> Result<(), HookError> {
        let limits = runtime()?.limits.clone();
        self.stats.inits.fetch_add(1, Ordering::Relaxed);
        self.arm(inst);
        let json = self.env.config_json.clone();
        let r = tokio::time::timeout(
            limits.wall,
            inst.plugin
                .corvus_plugin_hooks()
                .call_init(&mut inst.store, &json),
        )
        .await;
        match r {
            Ok(Ok(Ok(()))) => {
                self.forward_output(inst);
                Ok(())
            }
            Ok(Ok(Err(msg))) => {
                self.forward_output(inst);
                Err(HookError(format!(
                    "{}: init: {}",
                    self.env.name,
                    cut(&msg, 1000)
                )))
            }
            Ok(Err(e)) => Err(self.trap_error("init", inst, e)),
            Err(_) => Err(HookError(format!("{}: init: timed out", self.env.name))),
        }
    }

    /// An instance for a new session: an idle one (no call at all), or a new one
    /// (instantiation, `init`, and later the reset of its memory: tens of µs).
    async fn checkout(&self) -> Result<Instance, HookError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(inst) = idle {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(inst);
        }
        self.instantiate().await
    }

    /// Reset the per-call budgets of a store.
    fn arm_store(&self, store: &mut wasmtime::Store<HostState>) {
        let limits = match runtime() {
            Ok(rt) => rt.limits.clone(),
            Err(_) => Limits::default(),
        };
        let s = store.data_mut();
        s.ticks = 0;
        s.tick_budget = (limits.cpu.as_millis() / TICK.as_millis()).max(2) as u64;
        s.cpu_exceeded = false;
        // The wall-clock limit is checked at every tick and bounds each DNS wait: no timer
        // per call.
        s.deadline = Instant::now() + limits.wall;
        s.wall_exceeded = false;
        s.dns_left = limits.dns_lookups;
        s.log_left = limits.log_lines;
        s.log_dropped = 0;
        // Armed after instantiation (the deadline would otherwise count it), one tick ahead:
        // the callback then counts ticks and yields to tokio at each.
        store.set_epoch_deadline(1);
    }

    fn arm(&self, inst: &mut Instance) {
        self.arm_store(&mut inst.store);
    }

    /// Send new stdout/stderr output and dropped-log notes to the log.
    fn forward_output(&self, inst: &mut Instance) {
        let s = inst.store.data_mut();
        if s.log_dropped > 0 {
            let n = s.log_dropped;
            s.log_dropped = 0;
            s.env.log(
                "warn",
                &format!(
                    "{n} log line(s) dropped (at most {} per call)",
                    s.log_left.max(1)
                ),
            );
        }
        let capacity = runtime().map_or(0, |rt| rt.limits.output);
        for i in 0..2 {
            let (pipe, seen) = if i == 0 {
                (&mut s.stdout, s.forwarded.0)
            } else {
                (&mut s.stderr, s.forwarded.1)
            };
            // How much the pipe holds, without copying it (almost every call wrote nothing).
            let held = capacity - pipe.check_write().unwrap_or(0);
            if held <= seen {
                continue;
            }
            let all = pipe.contents();
            if all.len() > seen {
                let text = String::from_utf8_lossy(&all[seen..]);
                let stream = if i == 0 { "stdout" } else { "stderr" };
                for line in text.lines().take(50) {
                    s.env.log("info", &format!("{stream}: {}", cut(line, 1000)));
                }
                if i == 0 {
                    s.forwarded.0 = all.len();
                } else {
                    s.forwarded.1 = all.len();
                }
            }
        }
    }

    fn trap_error(&self, func: &str, inst: &mut Instance, e: wasmtime::Error) -> HookError {
        let limits = runtime().map(|r| r.limits.clone()).unwrap_or_default();
        let reason = describe_error(&e, inst.store.data(), &limits);
        self.forward_output(inst);
        HookError(format!("{}: {func}: {reason}", self.env.name))
    }

    async fn run(
        &self,
        inst: &mut Instance,
        ctx: &HookCtx,
        session: u64,
    ) -> Result<Result<Option<wt::Outcome>, String>, wasmtime::Error> {
        let hooks = inst.plugin.corvus_plugin_hooks();
        let store = &mut inst.store;
        // What the `context` and `auth` imports answer during this call.
        let data = store.data_mut();
        data.in_call = true;
        data.answer = None;
        match &mut data.call {
            Some(c) => c.refresh_from(ctx),
            // Without the session: the session owns this instance.
            None => {
                data.call = Some(HookCtx {
                    session: None,
                    ..ctx.clone()
                })
            }
        }
        let r = match ctx.point {
            HookPoint::Connect => hooks.call_on_connect(&mut *store, session).await,
            HookPoint::Helo => hooks.call_on_helo(&mut *store, session).await,
            HookPoint::Auth => hooks.call_on_auth(&mut *store, session).await,
            HookPoint::Mail => hooks.call_on_mail(&mut *store, session).await,
            HookPoint::Rcpt => hooks.call_on_rcpt(&mut *store, session).await,
            HookPoint::Data => hooks.call_on_data(&mut *store, session).await,
            HookPoint::Delivery => hooks.call_on_delivery(&mut *store, session).await,
            HookPoint::Fetch => hooks.call_on_fetch(&mut *store, session).await,
        };
        let data = store.data_mut();
        data.in_call = false;
        // An idle instance must not keep the message (or the password) alive.
        if let Some(c) = &mut data.call {
            c.message = None;
            c.credentials = None;
        }
        let answer = data.answer.take();
        Ok(match (r?, answer) {
            // A plain `next`: no verdict to convert, no actions to apply.
            (wt::Status::Next, _) => Ok(None),
            (wt::Status::Done, Some(Ok(outcome))) => Ok(Some(outcome)),
            (wt::Status::Done, _) => Err("returned done without answer.set-outcome".into()),
            (wt::Status::Failed, Some(Err(message))) => Err(message),
            (wt::Status::Failed, _) => Err("failed (no reason given with answer.fail)".into()),
        })
    }

    async fn call_inner(&self, ctx: &HookCtx, actions: &mut Actions) -> Result<Verdict, HookError> {
        let rt = runtime()?;
        let func = ctx.point.function_name();
        // The session's slot for this plugin, reused for the next call.
        let mut slot = ctx
            .session
            .as_ref()
            .and_then(|s| s.take(self.id))
            .and_then(|b| b.downcast::<Pooled>().ok());
        let warm = slot.as_mut().and_then(|p| p.inst.take());
        let mut inst = match warm {
            Some(i) => i,
            // Boxed: instantiation's future is large, and a call's future that held it would
            // be copied to the heap at every call.
            None => Box::pin(self.checkout()).await?,
        };
        self.arm(&mut inst);
        let session = match &ctx.session {
            Some(s) => s.id,
            None => next_session_id(),
        };
        let r = self.run(&mut inst, ctx, session).await;
        let result = match r {
            Err(e) => return Err(self.trap_error(func, &mut inst, e)),
            Ok(r) => r,
        };
        self.forward_output(&mut inst);
        let keep =
            (rt.live.load(Ordering::Relaxed) as f64) < rt.limits.instances as f64 * KEEP_BELOW;
        match &ctx.session {
            Some(s) if keep => {
                let slot = match slot {
                    Some(mut p) => {
                        p.inst = Some(inst);
                        p
                    }
                    None => Box::new(Pooled {
                        inst: Some(inst),
                        home: Arc::downgrade(&self.idle),
                    }),
                };
                s.put(self.id, slot)
            }
            Some(_) => {}
            // A call outside any session (a queued delivery) is a session of its own.
            None => give_back(&self.idle, inst),
        }
        let outcome = result
            .map_err(|m| HookError(format!("{}: {func}: {}", self.env.name, cut(&m, 1000))))?;
        let Some(outcome) = outcome else {
            return Ok(Verdict::Continue);
        };
        let verdict = from_wit_verdict(&self.env.name, func, outcome.verdict)?;
        apply_actions(&self.env.name, ctx.point, outcome.actions, actions)?;
        Ok(verdict)
    }
}

/// A one-line reason for a failed call.
fn describe_error(e: &wasmtime::Error, s: &HostState, limits: &Limits) -> String {
    if s.cpu_exceeded {
        return format!("CPU time limit exceeded ({} ms)", limits.cpu.as_millis());
    }
    if s.wall_exceeded {
        return format!("timed out after {} ms", limits.wall.as_millis());
    }
    let text = format!("{e:#}");
    if text.contains("forcing trap when growing memory") {
        return format!("memory limit exceeded ({} MiB)", limits.memory >> 20);
    }
    let trap = e.downcast_ref::<wasmtime::Trap>();
    let mut reason = match trap {
        Some(t) => format!("trap: {t}"),
        // A host function's error: its own message, not the "error while executing at wasm
        // backtrace:" wrapper wasmtime puts around it.
        None => e
            .root_cause()
            .to_string()
            .lines()
            .next()
            .unwrap_or("error")
            .to_string(),
    };
    // A panic or allocation failure prints a message on stderr before the trap (Rust: the
    // "panicked at file:line:col:" line, the message, then a "note:" line).
    let err = s.stderr.contents();
    let new = String::from_utf8_lossy(&err[s.forwarded.1.min(err.len())..]).into_owned();
    let lines: Vec<&str> = new
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note:"))
        .collect();
    if !lines.is_empty() {
        let tail = lines[lines.len().saturating_sub(2)..].join(" ");
        reason.push_str(&format!(" ({})", cut(&tail, 400)));
    }
    reason
}

/// The verdict a plugin handed over, checked by the shared rules; errors name the plugin
/// and hook (`x.wasm: on_rcpt: reject code 450 is not in 500..599`).
fn from_wit_verdict(name: &str, func: &str, v: wt::Verdict) -> Result<Verdict, HookError> {
    let refusal = |kind: &str, r: Result<Verdict, outcome::CodeOutOfRange>| {
        r.map_err(|e| HookError(format!("{name}: {func}: {kind} {e}")))
    };
    Ok(match v {
        wt::Verdict::Next => Verdict::Continue,
        wt::Verdict::Accept => Verdict::Accept,
        wt::Verdict::Discard => Verdict::Discard,
        wt::Verdict::Quarantine(r) => Verdict::quarantine(&r),
        wt::Verdict::Reject(r) => refusal("reject", Verdict::reject(r.code.into(), &r.text))?,
        wt::Verdict::Tempfail(r) => refusal("tempfail", Verdict::tempfail(r.code.into(), &r.text))?,
    })
}

/// The actions a plugin handed over, checked by the shared rules. Every action is checked
/// against the hook point before any value, and the header count before the headers.
fn apply_actions(
    name: &str,
    point: HookPoint,
    a: wt::Actions,
    out: &mut Actions,
) -> Result<(), HookError> {
    // The action's field in the WIT `actions` record.
    let field = |action: Action| match action {
        Action::AddHeader => "add-headers",
        Action::SetRcpt => "set-rcpt",
        Action::FileInto => "file-into",
    };
    let err = |e: ActionError| {
        let m = match e {
            ActionError::NotHere(action) => {
                let names: Vec<_> = action
                    .points()
                    .iter()
                    .map(|p| p.function_name().replace('_', "-"))
                    .collect();
                format!(
                    "{} is only available in {}",
                    field(action),
                    names.join(" and ")
                )
            }
            ActionError::BadAddress(_) => format!("{}: {e}", field(Action::SetRcpt)),
            ActionError::BadFolder(_) => format!("{}: {e}", field(Action::FileInto)),
            other => other.to_string(),
        };
        HookError(format!("{name}: {}: {m}", point.function_name()))
    };
    for (action, present) in [
        (Action::AddHeader, !a.add_headers.is_empty()),
        (Action::SetRcpt, a.set_rcpt.is_some()),
        (Action::FileInto, a.file_into.is_some()),
    ] {
        if present && !action.allowed_at(point) {
            return Err(err(ActionError::NotHere(action)));
        }
    }
    if a.add_headers.len() > outcome::MAX_HEADERS {
        return Err(err(ActionError::TooManyHeaders));
    }
    for h in a.add_headers {
        out.add_header(point, &h.name, &h.value).map_err(err)?;
    }
    if let Some(r) = a.set_rcpt {
        out.set_rcpt(point, &r).map_err(err)?;
    }
    if let Some(f) = a.file_into {
        out.file_into(point, &f).map_err(err)?;
    }
    Ok(())
}

impl HookEngine for WasmHook {
    fn name(&self) -> &str {
        &self.env.name
    }

    fn handles(&self, point: HookPoint) -> bool {
        self.points.contains(point)
    }

    fn call(&self, ctx: &HookCtx, actions: &mut Actions) -> Result<Verdict, HookError> {
        crate::blocking::run(self.call_async(ctx, actions))
    }

    fn call_async<'a>(&'a self, ctx: &'a HookCtx, actions: &'a mut Actions) -> HookFuture<'a> {
        Box::pin(async move {
            // Actions count only from a call that succeeded.
            let mut mine = Actions::default();
            let r = self.call_inner(ctx, &mut mine).await;
            if r.is_err() {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
            } else {
                actions.merge(mine);
            }
            r
        })
    }

    fn on_error(&self) -> OnError {
        self.on_error
    }
}

/// Load and validate a plugin file for `corvus check`: compile, version check, link,
/// `describe` and `init` with `config`. Returns "name version: hooks".
pub fn check_plugin(
    path: &Path,
    config: &serde_json::Map<String, serde_json::Value>,
    cache_dir: Option<PathBuf>,
) -> Result<String, String> {
    let h = WasmHook::load_file(
        path,
        LoadOptions {
            config: config.clone(),
            cache_dir,
            ..LoadOptions::default()
        },
    )?;
    let (n, v) = h.info();
    Ok(format!("{n} {v}: {}", h.handled_points().join(", ")))
}

#[cfg(test)]
mod tests;
