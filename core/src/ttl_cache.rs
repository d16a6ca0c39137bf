//! A small bounded cache whose entries expire: DNS answers kept for their TTL (mail-auth's
//! record caches in [`crate::sender_auth::cache`], FCrDNS results in [`crate::dns`]).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One cache: key → (value, valid until).
pub struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
    max_ttl: Duration,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// A cache of at most `capacity` entries, none kept longer than `max_ttl`.
    pub fn new(capacity: usize, max_ttl: Duration) -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            max_ttl,
        }
    }

    /// Entries currently held (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// The value for `name`, if it is still valid (an expired one is dropped).
    pub fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.map.lock().ok()?;
        match map.get(name) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    /// Take the value for `name` out.
    pub fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().ok()?.remove(name).map(|(v, _)| v)
    }

    /// Keep `value` until `valid_until` (at most the cache's maximum TTL; an expired one is
    /// not kept). A full cache first drops its expired entries, then everything.
    pub fn insert(&self, key: K, value: V, valid_until: Instant) {
        let now = Instant::now();
        let until = valid_until.min(now + self.max_ttl);
        if until <= now {
            return;
        }
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (_, u)| *u > now);
            if map.len() >= self.capacity {
                // Still full of live entries: drop everything rather than scan for the oldest;
                // the cache refills from the resolver (which has its own cache) on demand.
                map.clear();
            }
        }
        map.insert(key, (value, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_is_bounded() {
        let c: TtlCache<Box<str>, u32> = TtlCache::new(3, Duration::from_secs(60));
        let later = Instant::now() + Duration::from_secs(30);
        c.insert("a".into(), 1, later);
        assert_eq!(c.get("a"), Some(1));
        // Already expired: never stored.
        c.insert("old".into(), 2, Instant::now() - Duration::from_secs(1));
        assert_eq!(c.get("old"), None);
        for (i, k) in ["b", "c", "d", "e"].iter().enumerate() {
            c.insert((*k).into(), i as u32, later);
        }
        assert!(c.len() <= 3, "{}", c.len());
        assert_eq!(c.get("e"), Some(3));
    }

    #[test]
    fn ttl_is_capped() {
        let c: TtlCache<Box<str>, u32> = TtlCache::new(3, Duration::from_millis(1));
        c.insert("a".into(), 1, Instant::now() + Duration::from_secs(3600));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get("a"), None);
    }
}
