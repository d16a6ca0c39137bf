//! Building the hook chain from the configuration: the built-in policy, then every
//! `[[hooks]]` entry loaded (scripts compiled, plugins compiled or taken from the cache, each
//! `init` run). This is where the hook layer meets `config`, `dns` and the WASM runtime;
//! `hooks/mod.rs` stays the contract.

use std::sync::Arc;

use super::{HookEngine, builtin, rhai, wasm};
use crate::config::Config;
use crate::store::Store;

/// The entries for `config`: the built-in policy, then each `[[hooks]]` entry in file order.
/// Every script is compiled (and its `init` run) here; any failure returns one line per
/// problem and no chain, so a reload can keep the old one.
pub fn build_entries(
    config: &Config,
    store: &Store,
) -> Result<Vec<Arc<dyn HookEngine>>, Vec<String>> {
    let mut entries: Vec<Arc<dyn HookEngine>> = vec![Arc::new(builtin::BuiltinPolicy)];
    let mut problems = Vec::new();
    let mut resolver = None;
    for entry in &config.hooks {
        let loaded: Result<Arc<dyn HookEngine>, String> = match &entry.plugin {
            Some(path) => {
                if resolver.is_none() {
                    resolver = crate::dns::resolver(config).ok().map(Arc::new);
                    if let Err(e) = wasm::configure(wasm::Limits::from(&config.plugins)) {
                        tracing::warn!("{e}");
                    }
                }
                wasm::WasmHook::load(
                    entry,
                    path,
                    store.clone(),
                    resolver.clone(),
                    Some(config.data_dir.join("plugin-cache")),
                )
                .map(|h| Arc::new(h) as Arc<dyn HookEngine>)
            }
            None => rhai::RhaiHook::load(entry, store.clone()).map(|h| Arc::new(h) as _),
        };
        match loaded {
            Ok(h) => entries.push(h),
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}
