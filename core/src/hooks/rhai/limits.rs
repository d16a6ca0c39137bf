//! The sandbox of a Rhai script: [`Limits`] on one call, and [`harden`], which puts them and
//! every restriction (no modules, no `eval`, strict variables, a wall-clock deadline) on an
//! engine.

use std::cell::Cell;
use std::time::{Duration, Instant};

use ::rhai::Engine;

/// Limits on one script call. Each one ends the call with an error when exceeded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rhai operations per call (about 6 ms of a tight loop in a release build).
    pub max_operations: u64,
    /// Wall-clock time per call, checked between operations (backstop for slow native calls).
    pub time_budget: Duration,
    /// Depth of nested function calls.
    pub max_call_levels: usize,
    /// Expression nesting at the top level and inside functions.
    pub max_expr_depth: (usize, usize),
    /// Longest string, in bytes (message bodies handed to scripts are cut to this).
    pub max_string_size: usize,
    /// Most elements in an array.
    pub max_array_size: usize,
    /// Most entries in an object map.
    pub max_map_size: usize,
    /// Most variables alive at once.
    pub max_variables: usize,
    /// Most functions a script may define.
    pub max_functions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 100_000,
            time_budget: Duration::from_millis(50),
            max_call_levels: 32,
            max_expr_depth: (64, 32),
            max_string_size: 1024 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_variables: 1_000,
            max_functions: 256,
        }
    }
}

thread_local! {
    /// Deadline of the script call running on this thread (calls are synchronous, so one per
    /// thread at most); read by the engine's progress callback.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Arms the per-call deadline on this thread and restores the previous one when dropped.
pub(super) struct DeadlineGuard(Option<Instant>);

impl DeadlineGuard {
    pub(super) fn arm(budget: Duration) -> Self {
        DeadlineGuard(DEADLINE.replace(Some(Instant::now() + budget)))
    }
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        DEADLINE.set(self.0);
    }
}

/// Message text of the engine's progress callback when the deadline passes.
pub(super) const OUT_OF_TIME: &str = "time budget exceeded";

/// Put every limit and restriction on `engine`: operations, sizes, depths, wall-clock time, no
/// modules or `eval`, strict variables. Scripts get no file, network or process access:
/// nothing registered here or in [`RhaiHook`] touches anything but the store's kv area.
pub fn harden(engine: &mut Engine, limits: &Limits) {
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(limits.max_expr_depth.0, limits.max_expr_depth.1);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_max_variables(limits.max_variables);
    engine.set_max_functions(limits.max_functions);
    engine.set_max_modules(0);
    engine.set_module_resolver(::rhai::module_resolvers::DummyModuleResolver::new());
    engine.set_strict_variables(true);
    engine.disable_symbol("eval");
    engine.on_progress(|ops| {
        // Reading the clock costs about as much as a few operations: look every 64.
        if ops % 64 == 0
            && let Some(deadline) = DEADLINE.get()
            && Instant::now() >= deadline
        {
            return Some(OUT_OF_TIME.into());
        }
        None
    });
}
