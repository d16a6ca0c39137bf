//! The holder's side of the store's leases ([`super::Leases::lease_take`]): a [`Held`]
//! lease is renewed in the background (one task for all of them) while it lives and given
//! back when dropped, so a
//! session that ends any way at all (LOGOUT, disconnect, timeout, a panicking task) frees
//! it, and one whose process dies frees it when the lease runs out.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::{Result, Store};

/// How long a lease lasts without renewal by default; it is renewed every third of that.
pub const LEASE: Duration = Duration::from_secs(120);

/// The lease time of this process (`[store] lease`), set once at start.
static DURATION: OnceLock<Duration> = OnceLock::new();

/// Set how long leases last (`[store] lease`); the first call wins.
pub fn set_duration(d: Duration) {
    let _ = DURATION.set(d);
}

/// This node's id (`server::node_id`, kept in its data_dir), set once at start.
static NODE: OnceLock<String> = OnceLock::new();

/// Set this node's id; the first call wins.
pub fn set_node(id: &str) {
    let _ = NODE.set(id.to_string());
}

/// The prefix of every lease holder and queue owner name of this node ("" before
/// [`set_node`]): what it gives back when it starts again
/// ([`crate::store::Leases::release_held_by`]).
pub fn node_prefix() -> String {
    NODE.get().map(|n| format!("{n}/")).unwrap_or_default()
}

/// Releases started by dropped leases and not finished yet, and their wake-up.
static RELEASING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
fn released() -> &'static tokio::sync::Notify {
    static N: OnceLock<tokio::sync::Notify> = OnceLock::new();
    N.get_or_init(tokio::sync::Notify::new)
}

/// Wait, at most `limit`, for the releases of dropped leases to reach the store: what a
/// stopping process does after its sessions ended, so the next holder (a restarted node)
/// finds them free rather than waiting for them to run out.
pub async fn settle(limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        loop {
            let wake = released().notified();
            if RELEASING.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            wake.await;
        }
    })
    .await;
}

/// How long a lease lasts without renewal.
pub fn duration() -> Duration {
    DURATION.get().copied().unwrap_or(LEASE)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A lease this process holds.
pub struct Held {
    store: Store,
    name: String,
    holder: String,
    id: u64,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({})", self.name)
    }
}

impl Held {
    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Give the lease back now, and wait until the store has it back (dropping a lease
    /// gives it back in the background).
    pub async fn release(mut self) -> Result<()> {
        registry().lock().expect("leases").held.remove(&self.id);
        let name = std::mem::take(&mut self.name);
        self.store.lease_drop(&name, &self.holder).await
    }

    /// Renew the lease now: true while this holder still has it (also when it ran out and
    /// nobody took it meanwhile), false when another holder has it. What a holder checks
    /// before a change only the lease's holder may make, since a renewal in the background
    /// can fail (the store unreachable) for longer than the lease lasts.
    pub async fn confirm(&self) -> Result<bool> {
        self.store
            .lease_take(
                &self.name,
                &self.holder,
                now(),
                now() + duration().as_secs() as i64,
            )
            .await
    }
}

/// Every lease this process holds, renewed together by one task (a task per lease cost a
/// spawn and a timer per IMAP login).
#[derive(Default)]
struct Registry {
    held: HashMap<u64, (Store, String, String)>,
    next: u64,
    renewing: bool,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Renew every held lease each third of [`duration`]; runs while the process does.
async fn renew_all() {
    let mut every = tokio::time::interval(duration() / 3);
    every.tick().await;
    loop {
        every.tick().await;
        let held: Vec<(Store, String, String)> = registry()
            .lock()
            .expect("leases")
            .held
            .values()
            .cloned()
            .collect();
        let until = now() + duration().as_secs() as i64;
        for (store, name, holder) in held {
            match store.lease_take(&name, &holder, now(), until).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(lease = %name, "lease taken over by another holder"),
                Err(e) => tracing::warn!(lease = %name, error = %e, "could not renew a lease"),
            }
        }
    }
}

/// Take the lease `name`, or `None` when another holder has it. Needs a tokio runtime
/// (for the renewal).
pub async fn take(store: &Store, name: &str) -> Result<Option<Held>> {
    let holder = format!(
        "{}{}/{:016x}",
        node_prefix(),
        std::process::id(),
        rand::random::<u64>()
    );
    if !store
        .lease_take(name, &holder, now(), now() + duration().as_secs() as i64)
        .await?
    {
        return Ok(None);
    }
    let mut reg = registry().lock().expect("leases");
    reg.next += 1;
    let id = reg.next;
    reg.held
        .insert(id, (store.clone(), name.to_string(), holder.clone()));
    if !reg.renewing {
        reg.renewing = true;
        tokio::spawn(renew_all());
    }
    Ok(Some(Held {
        store: store.clone(),
        name: name.to_string(),
        holder,
        id,
    }))
}

/// Take one of `max` slots named `prefix#0` … `prefix#max-1`, or `None` when all are held.
pub async fn take_slot(store: &Store, prefix: &str, max: usize) -> Result<Option<Held>> {
    for k in 0..max {
        if let Some(held) = take(store, &format!("{prefix}#{k}")).await? {
            return Ok(Some(held));
        }
    }
    Ok(None)
}

impl Drop for Held {
    fn drop(&mut self) {
        registry().lock().expect("leases").held.remove(&self.id);
        let (store, name, holder) = (
            self.store.clone(),
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.holder),
        );
        if name.is_empty() {
            return; // given back by `release`
        }
        RELEASING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        crate::blocking::detach(async move {
            if let Err(e) = store.lease_drop(&name, &holder).await {
                tracing::warn!(lease = %name, error = %e, "could not give a lease back");
            }
            RELEASING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            released().notify_waiters();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocking::Wait;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_lease_is_exclusive_and_given_back_on_drop() {
        let store: Store = Arc::new(MemoryStore::new());
        let a = take(&store, "pop3:alice").await.unwrap().expect("free");
        assert!(take(&store, "pop3:alice").await.unwrap().is_none());
        assert!(take(&store, "pop3:bob").await.unwrap().is_some());
        assert!(a.confirm().await.unwrap());
        // Once it ran out and another holder took it, it is not confirmed.
        let later = now() + 10 * duration().as_secs() as i64;
        assert!(store.lease_take("pop3:carol", "x", 0, 1).await.unwrap());
        let c = take(&store, "pop3:carol")
            .await
            .unwrap()
            .expect("expired: free");
        assert!(
            store
                .lease_take("pop3:carol", "other", later, later + 60)
                .await
                .unwrap()
        );
        assert!(!c.confirm().await.unwrap());
        drop(a);
        assert!(take(&store, "pop3:alice").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn slots_count_up_to_the_maximum() {
        let store: Store = Arc::new(MemoryStore::new());
        let mut held: Vec<Held> = (0..3)
            .map(|_| {
                take_slot(&store, "imap:alice", 3)
                    .wait()
                    .unwrap()
                    .expect("a slot")
            })
            .collect();
        assert!(take_slot(&store, "imap:alice", 3).await.unwrap().is_none());
        // Freeing one slot admits one more, not two.
        held.remove(1);
        held.push(
            take_slot(&store, "imap:alice", 3)
                .await
                .unwrap()
                .expect("the freed slot"),
        );
        assert!(take_slot(&store, "imap:alice", 3).await.unwrap().is_none());
    }
}
