//! Failure injection, so tests can make a backend fail at a named point of a write and check
//! that nothing of the write is visible afterwards.
//!
//! A backend holds one [`Failpoints`]; tests arm a point with a count (it fails that many
//! times, then works again). Debug builds also read `CORVUS_FAILPOINTS=name:count,…` at
//! start, so end-to-end tests can make a running server fail (release builds ignore it).
//!
//! Points: `ingest-after-placement` (an ingest fails after its first placement is written,
//! inside the write, before it commits); `ingest-batch` (PostgreSQL: a batch of messages
//! for one mailbox fails after they are written, before it commits).

use std::collections::HashMap;
use std::sync::Mutex;

/// Armed failure points of one store.
#[derive(Debug, Default)]
pub struct Failpoints(Mutex<HashMap<String, u32>>);

impl Failpoints {
    /// The points armed by `CORVUS_FAILPOINTS` (debug builds only; empty otherwise).
    pub fn from_env() -> Self {
        let points = Failpoints::default();
        if cfg!(debug_assertions)
            && let Ok(spec) = std::env::var("CORVUS_FAILPOINTS")
        {
            for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
                let (name, count) = item.split_once(':').unwrap_or((item, "1"));
                points.arm(name.trim(), count.trim().parse().unwrap_or(1));
            }
        }
        points
    }

    /// Make `name` fail the next `count` times it is reached.
    pub fn arm(&self, name: &str, count: u32) {
        self.0
            .lock()
            .expect("failpoints")
            .insert(name.to_string(), count);
    }

    /// Whether the write at `name` must fail now (uses up one of its count).
    pub fn fire(&self, name: &str) -> bool {
        let mut points = self.0.lock().expect("failpoints");
        match points.get_mut(name) {
            Some(n) if *n > 0 => {
                *n -= 1;
                tracing::warn!(failpoint = name, "injected failure");
                true
            }
            _ => false,
        }
    }
}
