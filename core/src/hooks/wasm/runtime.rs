//! The process-wide plugin runtime: one wasmtime [`Engine`] with the pooling allocator sized
//! from [`Limits`] (`[plugins]`), epoch interruption and its 10 ms ticker thread, and the
//! resource limiter of each store.

use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimits};

use crate::hooks::HookError;

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
pub(super) const KEEP_BELOW: f64 = 0.75;

pub(super) struct Runtime {
    pub(super) engine: Engine,
    pub(super) limits: Limits,
    pub(super) live: AtomicUsize,
}

pub(super) static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

pub(super) fn runtime() -> Result<&'static Runtime, HookError> {
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

pub(super) fn build_runtime(limits: Limits) -> Result<Runtime, String> {
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

/// The store's resource limits, remembering how large its linear memory grew.
pub(super) struct Limiter {
    pub(super) inner: StoreLimits,
    pub(super) memory_peak: usize,
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
