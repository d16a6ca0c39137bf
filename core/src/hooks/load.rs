//! Building the hook chain from the configuration: the built-in policy, then every
//! `[[hooks]]` entry loaded (scripts compiled, plugins compiled or taken from the cache, each
//! `init` run). This is where the hook layer meets `config`, `dns` and the WASM runtime;
//! `hooks/mod.rs` stays the contract.

use std::sync::Arc;

use std::time::Duration;

use super::filter_config::MilterAddr;
use super::{HookEngine, builtin, milter, rhai, rspamd, wasm};
use crate::config::{Config, HookEntry, HookKind};
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
        let loaded: Result<Arc<dyn HookEngine>, String> = match entry.kind() {
            HookKind::Plugin(path) => {
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
            HookKind::Rspamd(url) => rspamd::RspamdHook::load(entry, url, store.clone())
                .map(|h| Arc::new(h) as Arc<dyn HookEngine>),
            HookKind::Milter(addr) => milter::MilterHook::load(entry, addr, &config.hostname)
                .map(|h| Arc::new(h) as Arc<dyn HookEngine>),
            HookKind::Script(_) => {
                rhai::RhaiHook::load(entry, store.clone()).map(|h| Arc::new(h) as _)
            }
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

/// Whether a filter entry's filter answers now (`corvus check`): rspamd's `/ping`, or a
/// connection to the milter. Scripts and plugins are always Ok.
pub fn reachable(entry: &HookEntry) -> Result<(), String> {
    const WITHIN: Duration = Duration::from_secs(3);
    match entry.kind() {
        HookKind::Rspamd(url) => crate::blocking::wait(rspamd::ping(url))
            .map_err(|e| format!("rspamd does not answer ({e}); mail will get the entry's on_error policy until it does")),
        HookKind::Milter(addr) => {
            let addr = MilterAddr::parse(addr)?;
            let connect = async {
                match &addr {
                    MilterAddr::Tcp(a) => tokio::net::TcpStream::connect(a).await.map(drop),
                    MilterAddr::Unix(p) => tokio::net::UnixStream::connect(p).await.map(drop),
                }
            };
            match crate::blocking::wait(async { tokio::time::timeout(WITHIN, connect).await }) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("milter {addr} does not answer ({e}); mail will get the entry's on_error policy until it does")),
                Err(_) => Err(format!("milter {addr} does not answer within {WITHIN:?}; mail will get the entry's on_error policy until it does")),
            }
        }
        _ => Ok(()),
    }
}
