//! Plugin instances: creating one (`init` run), arming its per-call budgets, forwarding its
//! output, the idle pool between sessions and [`HookSession`], where a session keeps its
//! warm instances.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::OutputStream;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::host::HostState;
use super::runtime::{KEEP_BELOW, Limiter, Limits, TICK, runtime};
use super::{Generation, WasmHook, bindings};
use crate::hooks::HookError;
use crate::hooks::outcome::cut;

/// One instance of a plugin and its store.
pub(super) struct Instance {
    pub(super) store: wasmtime::Store<HostState>,
    pub(super) plugin: Bindings,
}

/// A plugin's exports, in the generation of the interface it was built against.
pub(super) enum Bindings {
    V3(bindings::v3::Plugin),
    V4(bindings::v4::Plugin),
}

/// A linked plugin, ready to instantiate.
pub(super) enum Pre {
    V3(bindings::v3::PluginPre<HostState>),
    V4(bindings::v4::PluginPre<HostState>),
}

impl Pre {
    pub(super) fn generation(&self) -> Generation {
        match self {
            Pre::V3(_) => Generation::V3,
            Pre::V4(_) => Generation::V4,
        }
    }

    async fn instantiate(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V3(pre) => Bindings::V3(pre.instantiate_async(store).await?),
            Pre::V4(pre) => Bindings::V4(pre.instantiate_async(store).await?),
        })
    }
}

impl Bindings {
    /// `init` with the config as JSON text.
    async fn init(
        &self,
        store: &mut wasmtime::Store<HostState>,
        json: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Bindings::V3(p) => p.corvus_plugin_hooks().call_init(store, json).await,
            Bindings::V4(p) => p.corvus_plugin_hooks().call_init(store, json).await,
        }
    }
}

/// Instances a plugin keeps between sessions, ready for `init` and the next session.
pub(super) type IdlePool = Mutex<Vec<Instance>>;

/// Most idle instances a plugin keeps.
pub(super) const IDLE_MAX: usize = 32;
/// Instances whose linear memory grew beyond this are not kept idle (a plugin that read a
/// 25 MB message would otherwise hold that memory while it waits).
pub(super) const IDLE_MEMORY_MAX: usize = 16 << 20;

/// Put an instance that finished a session (or a session-less call) back into its plugin's
/// idle pool, unless the pool is full, the instance pool as a whole is getting scarce, or the
/// instance has used half its stdout/stderr capture (which never empties).
pub(super) fn give_back(pool: &IdlePool, inst: Instance) {
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
pub(super) struct Pooled {
    pub(super) inst: Option<Instance>,
    pub(super) home: std::sync::Weak<IdlePool>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let (Some(inst), Some(pool)) = (self.inst.take(), self.home.upgrade()) {
            give_back(&pool, inst);
        }
    }
}

impl WasmHook {
    /// A new instance with `init` run.
    pub(super) async fn instantiate(&self) -> Result<Instance, HookError> {
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
            answer: Default::default(),
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
            match tokio::time::timeout(limits.wall, self.pre.instantiate(&mut inst_store)).await {
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
    pub(super) async fn init(&self, inst: &mut Instance) -> Result<(), HookError> {
        let limits = runtime()?.limits.clone();
        self.stats.inits.fetch_add(1, Ordering::Relaxed);
        self.arm(inst);
        let json = self.env.config_json.clone();
        let r = tokio::time::timeout(limits.wall, inst.plugin.init(&mut inst.store, &json)).await;
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
    pub(super) async fn checkout(&self) -> Result<Instance, HookError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(inst) = idle {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(inst);
        }
        self.instantiate().await
    }

    /// Reset the per-call budgets of a store.
    pub(super) fn arm_store(&self, store: &mut wasmtime::Store<HostState>) {
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

    pub(super) fn arm(&self, inst: &mut Instance) {
        self.arm_store(&mut inst.store);
    }

    /// Send new stdout/stderr output and dropped-log notes to the log.
    pub(super) fn forward_output(&self, inst: &mut Instance) {
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

    pub(super) fn trap_error(
        &self,
        func: &str,
        inst: &mut Instance,
        e: wasmtime::Error,
    ) -> HookError {
        let limits = runtime().map(|r| r.limits.clone()).unwrap_or_default();
        let reason = describe_error(&e, inst.store.data(), &limits);
        self.forward_output(inst);
        HookError(format!("{}: {func}: {reason}", self.env.name))
    }
}

/// A one-line reason for a failed call.
pub(super) fn describe_error(e: &wasmtime::Error, s: &HostState, limits: &Limits) -> String {
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
