//! In-memory copy of the message metadata of big mailboxes.
//!
//! Reading a mailbox's metadata from sled costs about 1.5 µs per message (sled 0.34's
//! iterator re-walks and clones a leaf for every step), so a 100,000-message SELECT spent
//! ~150 ms there. This cache keeps the decoded list of mailboxes with at least
//! [`MIN_CACHED`] messages, and every write to the `messages` tree updates it.
//!
//! Coherence without holding a lock across sled work: each mailbox has a write generation.
//! A writer commits its sled transaction, then under the lock bumps the generation and
//! applies its change to the cached list if there is one. A reader that missed records the
//! generation, scans sled, and stores its result only if the generation has not moved (a
//! writer that finished during the scan might not be in it). Writer changes are applied so
//! that their order does not matter: inserts and removals by UID, flag changes only when
//! their MODSEQ is newer than the cached one.
//!
//! A cached mailbox can also hold one value derived from its list (IMAP's SELECT view,
//! [`MetaCache::derived`]); every write drops it. It is not counted in [`MAX_TOTAL`]: it
//! is a fraction of the list's size (16 bytes per message for the view).

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Change, Derived, MessageMeta};

/// Mailboxes smaller than this are read from sled each time (cheap enough).
pub const MIN_CACHED: usize = 256;
/// Most messages kept in total; the least recently used mailboxes go first.
pub const MAX_TOTAL: usize = 2_000_000;

/// Result of [`MetaCache::lookup`].
pub enum Lookup {
    /// The cached list.
    Hit(Vec<MessageMeta>),
    /// Not cached: scan, then [`MetaCache::fill`] with this generation.
    Miss(u64),
}

/// A cached mailbox: its list, when it was last used, and the derived value.
struct Entry {
    msgs: Vec<MessageMeta>,
    used: u64,
    derived: Option<Derived>,
}

#[derive(Default)]
struct Inner {
    gens: HashMap<u64, u64>,
    boxes: HashMap<u64, Entry>,
    total: usize,
    tick: u64,
}

/// See the module documentation.
#[derive(Default)]
pub struct MetaCache {
    inner: Mutex<Inner>,
}

impl MetaCache {
    /// The cached metadata of `mailbox`, or the generation to fill it with.
    pub fn lookup(&self, mailbox: u64) -> Lookup {
        let mut g = self.inner.lock().expect("meta cache");
        g.tick += 1;
        let tick = g.tick;
        let gen_now = g.gens.get(&mailbox).copied().unwrap_or(0);
        match g.boxes.get_mut(&mailbox) {
            Some(e) => {
                e.used = tick;
                Lookup::Hit(e.msgs.clone())
            }
            None => Lookup::Miss(gen_now),
        }
    }

    /// Run `f` on the cached metadata of `mailbox` without copying it (under the cache's
    /// lock: keep `f` short); `None` when the mailbox is not cached.
    pub fn with_cached<R>(&self, mailbox: u64, f: impl FnOnce(&[MessageMeta]) -> R) -> Option<R> {
        let mut g = self.inner.lock().expect("meta cache");
        g.tick += 1;
        let tick = g.tick;
        let entry = g.boxes.get_mut(&mailbox)?;
        entry.used = tick;
        Some(f(&entry.msgs))
    }

    /// The value derived from the cached list of `mailbox` by `build` (built now if there is
    /// none since the last write); `None` when the mailbox is not cached.
    pub fn derived(
        &self,
        mailbox: u64,
        build: &dyn Fn(&[MessageMeta]) -> Derived,
    ) -> Option<Derived> {
        let mut g = self.inner.lock().expect("meta cache");
        g.tick += 1;
        let tick = g.tick;
        let entry = g.boxes.get_mut(&mailbox)?;
        entry.used = tick;
        Some(
            entry
                .derived
                .get_or_insert_with(|| build(&entry.msgs))
                .clone(),
        )
    }

    /// One message of a cached mailbox: `None` when the mailbox is not cached (ask sled),
    /// `Some(None)` when it is and has no such UID.
    pub fn get(&self, mailbox: u64, uid: u32) -> Option<Option<MessageMeta>> {
        let g = self.inner.lock().expect("meta cache");
        let msgs = &g.boxes.get(&mailbox)?.msgs;
        Some(
            msgs.binary_search_by_key(&uid, |m| m.uid)
                .ok()
                .map(|i| msgs[i].clone()),
        )
    }

    /// Keep `msgs` (read from the backend after [`Self::lookup`] returned `Miss(gen)`) if no
    /// write happened since and the mailbox is in the cached range; given back otherwise.
    pub fn fill(
        &self,
        mailbox: u64,
        gen_seen: u64,
        msgs: Vec<MessageMeta>,
    ) -> Option<Vec<MessageMeta>> {
        if msgs.len() < MIN_CACHED || msgs.len() > MAX_TOTAL {
            return Some(msgs);
        }
        let mut g = self.inner.lock().expect("meta cache");
        if g.gens.get(&mailbox).copied().unwrap_or(0) != gen_seen || g.boxes.contains_key(&mailbox)
        {
            return Some(msgs);
        }
        while g.total + msgs.len() > MAX_TOTAL {
            let Some((&victim, _)) = g.boxes.iter().min_by_key(|(_, e)| e.used) else {
                break;
            };
            if let Some(e) = g.boxes.remove(&victim) {
                g.total -= e.msgs.len();
            }
        }
        g.tick += 1;
        let tick = g.tick;
        g.total += msgs.len();
        g.boxes.insert(
            mailbox,
            Entry {
                msgs,
                used: tick,
                derived: None,
            },
        );
        None
    }

    fn write(&self, mailbox: u64, f: impl FnOnce(&mut Vec<MessageMeta>)) {
        let mut g = self.inner.lock().expect("meta cache");
        *g.gens.entry(mailbox).or_insert(0) += 1;
        let Some(e) = g.boxes.get_mut(&mailbox) else {
            return;
        };
        e.derived = None;
        let before = e.msgs.len();
        f(&mut e.msgs);
        let after = e.msgs.len();
        g.total = g.total + after - before;
    }

    /// New messages were stored (delivery, APPEND, COPY).
    pub fn inserted(&self, mailbox: u64, metas: &[MessageMeta]) {
        self.write(mailbox, |msgs| {
            for m in metas {
                match msgs.binary_search_by_key(&m.uid, |x| x.uid) {
                    Ok(_) => {}
                    Err(i) => msgs.insert(i, m.clone()),
                }
            }
        });
    }

    /// A message's flags changed, giving it `modseq`.
    pub fn flags_changed(&self, mailbox: u64, changes: &[(u32, Vec<String>, u64)]) {
        self.write(mailbox, |msgs| {
            for (uid, flags, modseq) in changes {
                if let Ok(i) = msgs.binary_search_by_key(uid, |x| x.uid)
                    && msgs[i].modseq < *modseq
                {
                    msgs[i].flags = flags.clone();
                    msgs[i].modseq = *modseq;
                }
            }
        });
    }

    /// Messages were expunged.
    pub fn removed(&self, mailbox: u64, uids: &[u32]) {
        if uids.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<u32> = uids.iter().copied().collect();
        self.write(mailbox, |msgs| msgs.retain(|m| !gone.contains(&m.uid)));
    }

    /// Apply a change the store published.
    pub fn apply(&self, change: &Change) {
        match change {
            Change::Appended { mailbox, messages } => self.inserted(*mailbox, messages),
            Change::Flags { mailbox, changes } => self.flags_changed(*mailbox, changes),
            Change::Expunged { mailbox, uids, .. } => self.removed(*mailbox, uids),
            Change::Deleted { mailbox, .. } | Change::Stale { mailbox } => self.dropped(*mailbox),
            Change::Created { .. } | Change::Renamed { .. } | Change::Subscription { .. } => {}
        }
    }

    /// The mailbox was deleted.
    pub fn dropped(&self, mailbox: u64) {
        let mut g = self.inner.lock().expect("meta cache");
        *g.gens.entry(mailbox).or_insert(0) += 1;
        if let Some(e) = g.boxes.remove(&mailbox) {
            g.total -= e.msgs.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32, modseq: u64) -> MessageMeta {
        MessageMeta {
            uid,
            blob: uid as u64,
            size: 1,
            flags: vec![],
            internal_date: 0,
            modseq,
        }
    }

    fn many(n: u32) -> Vec<MessageMeta> {
        (1..=n).map(|u| meta(u, 1)).collect()
    }

    #[test]
    fn small_mailboxes_are_not_cached() {
        let c = MetaCache::default();
        let Lookup::Miss(g) = c.lookup(1) else {
            panic!()
        };
        c.fill(1, g, many(10));
        assert!(matches!(c.lookup(1), Lookup::Miss(_)));
    }

    #[test]
    fn fill_after_a_concurrent_write_is_discarded() {
        let c = MetaCache::default();
        let Lookup::Miss(g) = c.lookup(1) else {
            panic!()
        };
        // A writer finishes while the reader scans: the scan may not include its change.
        c.removed(1, &[3]);
        c.fill(1, g, many(300));
        assert!(matches!(c.lookup(1), Lookup::Miss(_)));
        let Lookup::Miss(g) = c.lookup(1) else {
            panic!()
        };
        c.fill(1, g, many(300));
        let Lookup::Hit(v) = c.lookup(1) else {
            panic!()
        };
        assert_eq!(v.len(), 300);
    }

    #[test]
    fn writes_apply_in_any_order() {
        let c = MetaCache::default();
        let Lookup::Miss(g) = c.lookup(7) else {
            panic!()
        };
        c.fill(7, g, many(300));
        // Two flag changes arrive out of order: the newer MODSEQ wins.
        c.flags_changed(7, &[(5, vec!["\\Seen".into()], 9)]);
        c.flags_changed(7, &[(5, vec![], 8)]);
        c.inserted(7, &[meta(301, 10), meta(150, 1)]); // 150 exists already
        c.removed(7, &[1, 2, 999]);
        c.removed(7, &[1]);
        let Lookup::Hit(v) = c.lookup(7) else {
            panic!()
        };
        assert_eq!(v.len(), 299);
        assert_eq!(v[0].uid, 3);
        assert_eq!(v.last().unwrap().uid, 301);
        let m5 = v.iter().find(|m| m.uid == 5).unwrap();
        assert_eq!(
            (m5.flags.clone(), m5.modseq),
            (vec!["\\Seen".to_string()], 9)
        );
        assert!(v.windows(2).all(|w| w[0].uid < w[1].uid));
        c.dropped(7);
        assert!(matches!(c.lookup(7), Lookup::Miss(_)));
    }

    #[test]
    fn derived_values_live_until_the_next_write() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let c = MetaCache::default();
        let builds = AtomicUsize::new(0);
        let build = |m: &[MessageMeta]| -> Derived {
            builds.fetch_add(1, Ordering::SeqCst);
            Arc::new(m.len())
        };
        assert!(
            c.derived(3, &build).is_none(),
            "not cached: the caller builds"
        );
        let Lookup::Miss(g) = c.lookup(3) else {
            panic!()
        };
        c.fill(3, g, many(300));
        let len = |d: Derived| *d.downcast::<usize>().unwrap();
        assert_eq!(len(c.derived(3, &build).unwrap()), 300);
        assert_eq!(len(c.derived(3, &build).unwrap()), 300);
        assert_eq!(builds.load(Ordering::SeqCst), 1, "built once");
        c.inserted(3, &[meta(301, 2)]);
        assert_eq!(len(c.derived(3, &build).unwrap()), 301);
        c.flags_changed(3, &[(1, vec!["\\Seen".into()], 3)]);
        c.derived(3, &build).unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 3, "every write drops it");
    }
}
