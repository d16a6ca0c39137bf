//! [`HookSession`]: what engines keep for one client session (a plugin's warm instance, a
//! milter's connection), dropped with the session. Each engine has its own slot, under an id
//! from [`next_engine_id`].

use std::any::Any;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a session keeps what its engines hold between calls (one slot per engine), dropped
/// with the session.
pub struct HookSession {
    /// What plugin hooks get as `session` (unread in a build without plugins).
    #[cfg_attr(not(feature = "wasm"), allow(dead_code))]
    pub(crate) id: u64,
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
pub(crate) fn next_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A new engine id: the key of an engine's slot in every [`HookSession`].
pub(crate) fn next_engine_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl std::fmt::Debug for HookSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSession")
    }
}

impl HookSession {
    /// Take engine `id`'s slot out (the engine puts it back when its call is done).
    pub(crate) fn take(&self, id: u64) -> Option<Box<dyn Any + Send>> {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let i = s.iter().position(|(k, _)| *k == id)?;
        Some(s.swap_remove(i).1)
    }

    /// Keep `v` in engine `id`'s slot.
    pub(crate) fn put(&self, id: u64, v: Box<dyn Any + Send>) {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Entries of engines replaced by a reload linger until the session ends; keep a few.
        if s.len() >= 16 {
            s.remove(0);
        }
        s.push((id, v));
    }
}
