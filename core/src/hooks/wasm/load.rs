//! Loading a plugin: compile it (or take it from the cache), check its WIT version, link it,
//! run `describe` and `init` once; and [`check_plugin`] for `corvus check`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use super::host::{HostState, PluginEnv};
use super::instances::{Bindings, Pre};
use super::runtime::runtime;
use super::{
    Generation, WIT_PACKAGE, WIT_VERSION, WIT_VERSION_PREVIOUS, WasmHook, bindings, point_of,
};
use crate::config::HookEntry;
use crate::hooks::{HookError, HookPoint, PointSet};
use crate::store::Store;

/// How to load a plugin (the same with and without the `wasm` feature).
pub use crate::hooks::PluginOptions as LoadOptions;

/// Compile (or load from the cache) the component in `wasm`.
pub(super) fn compile(
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
pub(super) fn wit_versions(engine: &Engine, component: &Component) -> Vec<String> {
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

/// The generation of the interface a plugin built against WIT version `v` gets, if any.
pub(super) fn generation_of(v: &str) -> Option<Generation> {
    if compatible(v, WIT_VERSION) {
        Some(Generation::V4)
    } else if compatible(v, WIT_VERSION_PREVIOUS) {
        Some(Generation::V3)
    } else {
        None
    }
}

/// Whether a plugin built against WIT version `v` runs on a host implementing `host`: the
/// same major version (for 0.x the same minor), and not newer than the host's, whose
/// additions (imports, hook point names) the host would lack.
pub(super) fn compatible(v: &str, host: &str) -> bool {
    let parse = |s: &str| -> Option<(u64, u64, u64)> {
        let mut it = s.split('.');
        Some((
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
            it.next().unwrap_or("0").parse().ok()?,
        ))
    };
    match (parse(v), parse(host)) {
        (Some(p), Some(h)) if p.0 == 0 || h.0 == 0 => p.0 == h.0 && p.1 == h.1 && p.2 <= h.2,
        (Some(p), Some(h)) => p.0 == h.0 && (p.1, p.2) <= (h.1, h.2),
        _ => false,
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
        let wanted = format!("{WIT_PACKAGE}@{WIT_VERSION} and {WIT_VERSION_PREVIOUS}");
        let generation_of = |v: &String| {
            v.split_once('@')
                .filter(|(pkg, _)| *pkg == WIT_PACKAGE)
                .and_then(|(_, ver)| generation_of(ver))
        };
        if let Some(bad) = versions.iter().find(|v| generation_of(v).is_none()) {
            return Err(format!(
                "{name}: plugin was built for {bad}, but this server provides {wanted}; rebuild it against a matching corvus-sdk / sdk/wit"
            ));
        }
        let generation = match versions
            .iter()
            .filter_map(generation_of)
            .collect::<Vec<_>>()[..]
        {
            [] => {
                return Err(format!(
                    "{name}: plugin does not export {WIT_PACKAGE}@{WIT_VERSION} hooks (is it a Corvus plugin?)"
                ));
            }
            [g, ref rest @ ..] if rest.iter().all(|r| *r == g) => g,
            _ => {
                return Err(format!(
                    "{name}: plugin mixes versions of {WIT_PACKAGE} ({}); rebuild it against one corvus-sdk / sdk/wit",
                    versions.join(", ")
                ));
            }
        };
        let pre = link(&rt.engine, &component, generation).map_err(|e| format!("{name}: {e}"))?;
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
            id: crate::hooks::session::next_engine_id(),
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

    pub(super) async fn probe(&self) -> Result<(PointSet, (String, String)), HookError> {
        let mut inst = self.instantiate().await?;
        self.arm(&mut inst);
        let r = tokio::time::timeout(
            runtime()?.limits.wall,
            inst.plugin.describe(&mut inst.store),
        )
        .await;
        let (points, name, version) = match r {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return Err(self.trap_error("describe", &mut inst, e)),
            Err(_) => return Err(HookError(format!("{}: describe: timed out", self.env.name))),
        };
        let points = points.map_err(|unknown| {
            let known: Vec<_> = HookPoint::ALL.iter().map(|p| p.name()).collect();
            HookError(format!(
                "{}: describe: handles {unknown:?}, a hook point this server does not know (it knows {}); the plugin needs a newer server",
                self.env.name,
                known.join(", ")
            ))
        })?;
        Ok((points, (name, version)))
    }

    /// Plugin name and version from `describe`.
    pub fn info(&self) -> (&str, &str) {
        (&self.info.0, &self.info.1)
    }

    /// Names of the hooks the plugin handles.
    pub fn handled_points(&self) -> Vec<&'static str> {
        self.points.names()
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

/// Link a component against the host imports of its generation (and a locked-down WASI).
fn link(engine: &Engine, component: &Component, generation: Generation) -> Result<Pre, String> {
    prepare(&linker(engine, generation)?, component, generation)
}

/// The host imports of a generation, and a locked-down WASI.
pub(super) fn linker(engine: &Engine, generation: Generation) -> Result<Linker<HostState>, String> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| format!("linking WASI: {e}"))?;
    let linked = match generation {
        Generation::V3 => bindings::v3::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s),
        Generation::V4 => bindings::v4::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s),
    };
    linked.map_err(|e| format!("linking: {e}"))?;
    Ok(linker)
}

/// Resolve a component's imports with `linker`.
pub(super) fn prepare(
    linker: &Linker<HostState>,
    component: &Component,
    generation: Generation,
) -> Result<Pre, String> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("cannot link: {e}"))?;
    let e = |e: wasmtime::Error| e.to_string();
    Ok(match generation {
        Generation::V3 => Pre::V3(bindings::v3::PluginPre::new(pre).map_err(e)?),
        Generation::V4 => Pre::V4(bindings::v4::PluginPre::new(pre).map_err(e)?),
    })
}

impl Bindings {
    /// `describe`: the points the plugin handles (Err: a name this host does not know), its
    /// name and version.
    async fn describe(
        &self,
        store: &mut wasmtime::Store<HostState>,
    ) -> wasmtime::Result<(Result<PointSet, String>, String, String)> {
        Ok(match self {
            Bindings::V3(p) => {
                let info = p.corvus_plugin_hooks().call_describe(store).await?;
                let points = info.hooks.iter().map(|h| point_of(*h)).collect();
                (Ok(points), info.name, info.version)
            }
            Bindings::V4(p) => {
                let info = p.corvus_plugin_hooks().call_describe(store).await?;
                let points = info
                    .handles
                    .iter()
                    .map(|h| HookPoint::from_name(h).ok_or_else(|| h.clone()))
                    .collect();
                (points, info.name, info.version)
            }
        })
    }
}
