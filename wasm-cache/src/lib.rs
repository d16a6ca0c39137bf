//! The compiled-plugin cache: `Component::serialize` output written to `data_dir`, read back
//! with `Component::deserialize`.
//!
//! Deserializing is `unsafe` in wasmtime because the bytes are trusted to be native code that
//! this wasmtime wrote; a forged file could run arbitrary code. The workspace forbids unsafe
//! code, so this crate is the single exception, and it narrows the trust to:
//!
//! - the file lives in the server's own `data_dir` (written only by the server, like the
//!   message store itself), named by the SHA-256 of the plugin's wasm and the engine's
//!   compatibility hash (so a changed plugin or wasmtime never picks up a stale artifact);
//! - a sidecar `.sha256` written after the artifact must match its contents (a torn or
//!   corrupted write is recompiled instead of loaded);
//! - wasmtime itself refuses artifacts from another version or engine configuration.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("sha256")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cached component at `path`, or None (missing, corrupt or incompatible: compile
/// again).
pub fn load(engine: &Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    let want = std::fs::read_to_string(sidecar(path)).ok()?;
    let got = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    if want.trim() != got {
        return None;
    }
    // SAFETY: see the crate docs: the bytes are an artifact this server serialized with an
    // engine of the same compatibility hash, written to its private data directory, and their
    // checksum matches the one written after them.
    #[allow(unsafe_code)]
    unsafe {
        Component::deserialize(engine, &bytes).ok()
    }
}

/// Write a serialized component to `path` (and its checksum), atomically.
pub fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    let sum = hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    let tmp = sidecar(path).with_extension(format!("sha256.tmp{}", std::process::id()));
    std::fs::write(&tmp, sum)?;
    std::fs::rename(&tmp, sidecar(path))
}
