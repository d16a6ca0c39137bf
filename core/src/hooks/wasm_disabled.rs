//! Stand-in for [`super::wasm`] when Corvus is built without the `wasm` cargo feature
//! (`--no-default-features`, used by the fuzz targets to keep wasmtime out of the build).
//! The API is the same; loading a plugin fails with one clear line, so `corvus check` and
//! `corvus serve` refuse a configuration with a `plugin = ...` entry instead of ignoring it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Actions, HookCtx, HookEngine, HookError, HookPoint, Verdict};
use crate::config::HookEntry;
use crate::store::Store;

fn disabled(path: &Path) -> String {
    format!(
        "{}: WASM plugins are not supported by this build of corvus (built without the `wasm` cargo feature)",
        path.display()
    )
}

/// Plugin limits (`[plugins]`): nothing to size without the feature.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits;

impl From<&crate::config::Plugins> for Limits {
    fn from(_: &crate::config::Plugins) -> Self {
        Limits
    }
}

/// Nothing to configure without the feature (loading a plugin reports the missing feature).
pub fn configure(_limits: Limits) -> Result<(), String> {
    Ok(())
}

pub use crate::hooks::session::HookSession;

/// How to load a plugin (accepted and ignored without the feature).
pub use crate::hooks::PluginOptions as LoadOptions;

/// A WASM plugin in the hook chain: cannot exist without the feature.
pub enum WasmHook {}

impl WasmHook {
    /// Always an error: plugins need the `wasm` feature.
    pub fn load(
        _entry: &HookEntry,
        path: &Path,
        _store: Store,
        _resolver: Option<Arc<hickory_resolver::TokioResolver>>,
        _cache_dir: Option<PathBuf>,
    ) -> Result<Self, String> {
        Err(disabled(path))
    }

    /// Always an error: plugins need the `wasm` feature.
    pub fn load_file(path: &Path, _opts: LoadOptions) -> Result<Self, String> {
        Err(disabled(path))
    }
}

impl HookEngine for WasmHook {
    fn name(&self) -> &str {
        match *self {}
    }
    fn handles(&self, _point: HookPoint) -> bool {
        match *self {}
    }
    fn call(&self, _ctx: &HookCtx, _actions: &mut Actions) -> Result<Verdict, HookError> {
        match *self {}
    }
}

/// Always an error: plugins need the `wasm` feature.
pub fn check_plugin(
    path: &Path,
    _config: &serde_json::Map<String, serde_json::Value>,
    _cache_dir: Option<PathBuf>,
) -> Result<String, String> {
    Err(disabled(path))
}
