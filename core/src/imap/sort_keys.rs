//! What SORT and THREAD read of a message's header (RFC 5256 §3, RFC 5957), and a cache of
//! it shared by all sessions.
//!
//! The cache is keyed by the store's blob id: a blob's bytes never change, so an entry never
//! goes stale, and messages copied to other mailboxes share theirs. Without it every SORT of
//! a 100,000-message mailbox re-read and re-parsed 100,000 headers (about 400 ms); a webmail
//! sorts on every page view. It keeps two generations of at most [`GENERATION`] entries: a
//! hit in the old one moves to the new one, and when the new one is full the old one is
//! dropped — bounded, and close to least-recently-used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{mime, sort};

/// Entries per generation (two generations at most): room for a whole 100,000-message
/// mailbox and some, a few hundred bytes each.
pub const GENERATION: usize = 120_000;

/// The header facts SORT and THREAD use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderKeys {
    /// The Date field in UTC seconds; `None` when missing or unreadable (the caller uses
    /// the internal date, RFC 5256 §3 "DATE").
    pub date: Option<i64>,
    /// Base subject (RFC 5256 §2.1), upper-cased.
    pub subject: Arc<str>,
    /// The subject was a reply or forward.
    pub is_reply: bool,
    /// addr-mailbox of the first From, To and Cc address.
    pub from: Arc<str>,
    /// See `from`.
    pub to: Arc<str>,
    /// See `from`.
    pub cc: Arc<str>,
    /// RFC 5957 display name of the first From and To address (the address without one).
    pub display_from: Arc<str>,
    /// See `display_from`.
    pub display_to: Arc<str>,
    /// Message-ID as `<…>`.
    pub message_id: Option<String>,
    /// References, or the first msg-id of In-Reply-To without them (RFC 5256 §2.2 1.A).
    pub references: Vec<String>,
}

/// Read the keys from a message's header (RFC 2047 words decoded by mail-parser).
pub fn extract(raw: &[u8]) -> HeaderKeys {
    use mail_parser::{Address, MessageParser};
    let end = crate::message::header_end(raw).min(raw.len());
    let mut k = HeaderKeys::default();
    let Some(m) = MessageParser::new().parse_headers(&raw[..end]) else {
        return k;
    };
    let (subject, is_reply) = sort::base_subject_ext(m.subject().unwrap_or(""));
    (k.subject, k.is_reply) = (subject.into(), is_reply);
    k.date = m.date().map(|d| d.to_timestamp());
    let first = |a: Option<&Address>| -> (Arc<str>, Arc<str>) {
        let Some(a) = a.and_then(|a| a.first()) else {
            return (Arc::default(), Arc::default());
        };
        let addr = a.address().unwrap_or("");
        let local = addr.rsplit_once('@').map_or(addr, |(l, _)| l);
        let display = a.name().filter(|n| !n.trim().is_empty()).unwrap_or(addr);
        (local.into(), display.into())
    };
    (k.from, k.display_from) = first(m.from());
    (k.to, k.display_to) = first(m.to());
    (k.cc, _) = first(m.cc());
    let (fields, _) = mime::parse_header(raw, 0, end);
    let text =
        |name: &str| mime::field(&fields, name).map(|v| String::from_utf8_lossy(v).into_owned());
    k.message_id = text("Message-ID").and_then(|v| sort::parse_msg_ids(&v).into_iter().next());
    k.references = text("References")
        .map(|v| sort::parse_msg_ids(&v))
        .unwrap_or_default();
    if k.references.is_empty() {
        k.references = text("In-Reply-To")
            .and_then(|v| sort::parse_msg_ids(&v).into_iter().next())
            .into_iter()
            .collect();
    }
    k
}

type Generation = HashMap<u64, Arc<HeaderKeys>>;

/// See the module documentation.
#[derive(Default)]
pub struct KeyCache {
    gens: Mutex<(Generation, Generation)>,
}

impl KeyCache {
    /// The keys of blob `blob`, from the cache or read from `load()`'s bytes (then kept).
    /// A failed load gives empty keys and is not kept.
    pub fn get(&self, blob: u64, load: impl FnOnce() -> Option<Vec<u8>>) -> Arc<HeaderKeys> {
        {
            let mut g = self.gens.lock().expect("sort key cache");
            if let Some(k) = g.0.get(&blob) {
                return k.clone();
            }
            if let Some(k) = g.1.remove(&blob) {
                Self::insert(&mut g, blob, k.clone());
                return k;
            }
        }
        // Read and parse without the lock.
        let Some(raw) = load() else {
            return Arc::default();
        };
        let keys = Arc::new(extract(&raw));
        Self::insert(
            &mut self.gens.lock().expect("sort key cache"),
            blob,
            keys.clone(),
        );
        keys
    }

    fn insert(g: &mut (Generation, Generation), blob: u64, keys: Arc<HeaderKeys>) {
        if g.0.len() >= GENERATION {
            g.1 = std::mem::take(&mut g.0);
        }
        g.0.insert(blob, keys);
    }

    /// Entries held (both generations).
    pub fn len(&self) -> usize {
        let g = self.gens.lock().expect("sort key cache");
        g.0.len() + g.1.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_header() {
        let k = extract(
            b"From: \"Ann Lee\" <ann@example.net>\r\nTo: bob@example.org\r\nSubject: =?UTF-8?Q?Re:_caf=C3=A9?=\r\nDate: Tue, 2 Jan 2024 10:00:00 +0100\r\nMessage-ID: <m2@x>\r\nIn-Reply-To: <m1@x> (comment)\r\n\r\nbody",
        );
        assert_eq!(&*k.subject, "CAFÉ");
        assert!(k.is_reply);
        assert_eq!((&*k.from, &*k.display_from), ("ann", "Ann Lee"));
        assert_eq!((&*k.to, &*k.display_to), ("bob", "bob@example.org"));
        assert_eq!(k.date, Some(1_704_186_000));
        assert_eq!(k.message_id.as_deref(), Some("<m2@x>"));
        assert_eq!(k.references, ["<m1@x>"]);
        assert_eq!(&*extract(b"").subject, "");
    }

    #[test]
    fn the_cache_is_bounded_and_loads_once() {
        let c = KeyCache::default();
        let mut loads = 0;
        for round in 0..2 {
            for blob in 0..10u64 {
                c.get(blob, || {
                    loads += 1;
                    Some(b"Subject: x\r\n\r\n".to_vec())
                });
            }
            assert_eq!(loads, 10, "round {round}");
        }
        assert!(c.get(99, || None).subject.is_empty());
        assert_eq!(c.len(), 10);
        let mut g = c.gens.lock().unwrap();
        for blob in 0..(2 * GENERATION as u64 + 5) {
            KeyCache::insert(&mut g, blob, Arc::default());
        }
        assert!(g.0.len() + g.1.len() <= 2 * GENERATION);
    }
}
