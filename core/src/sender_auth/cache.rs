//! mail-auth's DNS record caches ([`ResolverCache`]), each a [`TtlCache`]: entries live until
//! the record's TTL (as computed by the resolver) runs out, and the number of entries is
//! capped, so a flood of distinct names cannot grow memory without bound. Also the recording
//! wrappers that show an SPF evaluation's lookups (void lookup count) and negative answers.

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::{MX, RecordSet, ResolverCache, Txt};

pub use crate::ttl_cache::TtlCache;

/// mail-auth reads and fills the shared caches through its [`ResolverCache`] hook.
impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        TtlCache::get(self, name)
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        TtlCache::remove(self, name)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        TtlCache::insert(self, key, value, valid_until)
    }
}

/// mail-auth's parameter bundle with our five caches.
pub type Params<'a, P> = mail_auth::Parameters<
    'a,
    P,
    TtlCache<Box<str>, Txt>,
    TtlCache<Box<str>, RecordSet<MX>>,
    TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    TtlCache<IpAddr, RecordSet<Box<str>>>,
>;

/// The five caches mail-auth takes.
pub struct Caches {
    /// TXT records (SPF, DKIM keys, DMARC policies), parsed.
    pub txt: TtlCache<Box<str>, Txt>,
    /// MX records.
    pub mx: TtlCache<Box<str>, RecordSet<MX>>,
    /// A records.
    pub ipv4: TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    /// AAAA records.
    pub ipv6: TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    /// PTR records.
    pub ptr: TtlCache<IpAddr, RecordSet<Box<str>>>,
}

impl Caches {
    /// Caches of `capacity` entries each.
    pub fn new(capacity: usize, max_ttl: Duration) -> Self {
        Caches {
            txt: TtlCache::new(capacity, max_ttl),
            mx: TtlCache::new(capacity, max_ttl),
            ipv4: TtlCache::new(capacity, max_ttl),
            ipv6: TtlCache::new(capacity, max_ttl),
            ptr: TtlCache::new(capacity, max_ttl),
        }
    }

    /// mail-auth parameters using these caches.
    pub fn params<P>(&self, params: P) -> Params<'_, P> {
        mail_auth::Parameters {
            params,
            cache_txt: Some(&self.txt),
            cache_mx: Some(&self.mx),
            cache_ptr: Some(&self.ptr),
            cache_ipv4: Some(&self.ipv4),
            cache_ipv6: Some(&self.ipv6),
        }
    }
}

/// Which of mail-auth's caches a lookup went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TXT (SPF records of `include`, `redirect` and the checked domain).
    Txt,
    /// MX (`mx`).
    Mx,
    /// A (`a`, `exists`, addresses of MX and PTR names).
    A,
    /// AAAA.
    Aaaa,
    /// PTR (`ptr`, the `%{p}` macro).
    Ptr,
}

/// One cache access during an SPF evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// mail-auth asked the cache for `name` (`hit`: it was there).
    Get {
        /// Cache.
        kind: Kind,
        /// The name (or the IP for PTR), as mail-auth asked.
        name: String,
        /// Whether the cache answered.
        hit: bool,
    },
    /// mail-auth stored a positive answer for `name` (it resolved it).
    Insert {
        /// Cache.
        kind: Kind,
        /// The name.
        name: String,
    },
    /// The host names an MX or PTR answer named (their address lookups belong to that term).
    Targets(Vec<String>),
}

/// A [`Hasher`](std::hash::Hasher) that keeps what is written to it: the way to see the
/// name behind a generic `&Q` in [`ResolverCache::get`] (a `str` hashes as its bytes and
/// `0xff`; `Borrow` guarantees the key and the borrowed form hash alike).
#[derive(Default)]
struct Capture(Vec<u8>);

impl std::hash::Hasher for Capture {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

fn name_of<Q: Hash + ?Sized>(q: &Q) -> String {
    let mut c = Capture::default();
    q.hash(&mut c);
    let bytes = c.0.strip_suffix(&[0xff]).unwrap_or(&c.0);
    String::from_utf8_lossy(bytes).to_ascii_lowercase()
}

/// Host names in a cached value whose address lookups are part of the same term.
pub trait Targets {
    /// The names (none for most record types).
    fn targets(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the value is a kept negative answer (see [`not_found`]).
    fn negative(&self) -> bool {
        false
    }
}

impl Targets for Txt {
    fn negative(&self) -> bool {
        matches!(
            self,
            Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
                _
            )))
        )
    }
}

/// The TXT cache's value for a name the DNS answered without records (NXDOMAIN, or no TXT):
/// mail-auth reads it back as the same error its resolver call gives, so a kept negative answer
/// and a fresh one evaluate alike (mail-auth keeps only positive answers on its own).
pub fn not_found(code: hickory_resolver::proto::op::ResponseCode) -> Txt {
    Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
        code,
    )))
}

/// TXT names an evaluation asked the cache for, missed, and did not store afterwards: looked
/// up without a usable answer (no records, or an error).
pub fn txt_misses(log: &[Access]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, a) in log.iter().enumerate() {
        if let Access::Get {
            kind: Kind::Txt,
            name,
            hit: false,
        } = a
        {
            let stored = log[i + 1..]
                .iter()
                .any(|b| matches!(b, Access::Insert { kind: Kind::Txt, name: n } if n == name));
            if !stored && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}
impl Targets for RecordSet<Ipv4Addr> {}
impl Targets for RecordSet<Ipv6Addr> {}
impl Targets for RecordSet<MX> {
    fn targets(&self) -> Vec<String> {
        self.rrset
            .iter()
            .flat_map(|mx| mx.exchanges.iter())
            .map(|e| e.to_ascii_lowercase())
            .collect()
    }
}
impl Targets for RecordSet<Box<str>> {
    fn targets(&self) -> Vec<String> {
        self.rrset.iter().map(|n| n.to_ascii_lowercase()).collect()
    }
}

/// A cache that records every access of one SPF evaluation in order, in front of the shared
/// cache; [`void_lookups`] reads the record afterwards.
pub struct Recording<'a, C> {
    inner: &'a C,
    kind: Kind,
    log: &'a Mutex<Vec<Access>>,
}

impl<'a, C> Recording<'a, C> {
    fn push(&self, a: Access) {
        if let Ok(mut log) = self.log.lock()
            && log.len() < 1000
        {
            log.push(a);
        }
    }
}

impl<K: Hash + Eq, V: Clone + Targets, C: ResolverCache<K, V>> ResolverCache<K, V>
    for Recording<'_, C>
{
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let v = self.inner.get(name);
        self.push(Access::Get {
            kind: self.kind,
            name: name_of(name),
            // A kept negative answer is a lookup without records, as RFC 7208's void lookup
            // count needs it, and it is not stored again.
            hit: v.as_ref().is_some_and(|v| !v.negative()),
        });
        if let Some(v) = &v {
            let t = v.targets();
            if !t.is_empty() {
                self.push(Access::Targets(t));
            }
        }
        v
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove(name)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.push(Access::Insert {
            kind: self.kind,
            name: name_of(&key),
        });
        let t = value.targets();
        if !t.is_empty() {
            self.push(Access::Targets(t));
        }
        self.inner.insert(key, value, valid_until);
    }
}

/// mail-auth's parameter bundle with recording caches.
pub type RecordingParams<'a, P> = mail_auth::Parameters<
    'a,
    P,
    Recording<'a, TtlCache<Box<str>, Txt>>,
    Recording<'a, TtlCache<Box<str>, RecordSet<MX>>>,
    Recording<'a, TtlCache<Box<str>, RecordSet<Ipv4Addr>>>,
    Recording<'a, TtlCache<Box<str>, RecordSet<Ipv6Addr>>>,
    Recording<'a, TtlCache<IpAddr, RecordSet<Box<str>>>>,
>;

/// The five recording wrappers of one evaluation (they must outlive the parameters).
pub struct RecordingCaches<'a> {
    txt: Recording<'a, TtlCache<Box<str>, Txt>>,
    mx: Recording<'a, TtlCache<Box<str>, RecordSet<MX>>>,
    ipv4: Recording<'a, TtlCache<Box<str>, RecordSet<Ipv4Addr>>>,
    ipv6: Recording<'a, TtlCache<Box<str>, RecordSet<Ipv6Addr>>>,
    ptr: Recording<'a, TtlCache<IpAddr, RecordSet<Box<str>>>>,
}

impl<'a> RecordingCaches<'a> {
    /// mail-auth parameters using these wrappers.
    pub fn params<P>(&'a self, params: P) -> RecordingParams<'a, P> {
        mail_auth::Parameters {
            params,
            cache_txt: Some(&self.txt),
            cache_mx: Some(&self.mx),
            cache_ptr: Some(&self.ptr),
            cache_ipv4: Some(&self.ipv4),
            cache_ipv6: Some(&self.ipv6),
        }
    }
}

/// A lookup term of an SPF evaluation whose answer was empty or NXDOMAIN, or may have been.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Void {
    /// Certainly void: mail-auth resolved the name (not from cache) and stored nothing.
    Certain(String),
    /// An `exists` term that was not in the cache: mail-auth never stores its answer, so the
    /// caller asks the resolver (which has it cached) whether the name has an address.
    Exists(String),
}

/// The void lookups (RFC 7208 §4.6.4) among the accesses of one evaluation, in order.
///
/// Every cache miss that mail-auth did not follow with a store of the same name was a lookup
/// that returned no records, or an error; errors other than "no records" end the evaluation
/// with `temperror`, which the caller leaves alone, except in two places mail-auth tolerates
/// them: address lookups of MX and PTR names (not terms of their own, skipped here) and the
/// PTR lookup itself (counted, as pyspf does). An A miss directly followed by an AAAA miss of
/// the same name is an `exists` term (mail-auth's `exists` reads both caches and resolves
/// without storing), reported as [`Void::Exists`].
pub fn void_lookups(log: &[Access]) -> Vec<Void> {
    let mut out = Vec::new();
    let mut targets: &[String] = &[];
    let mut i = 0;
    while i < log.len() {
        match &log[i] {
            Access::Targets(t) => targets = t,
            Access::Insert { .. } | Access::Get { hit: true, .. } => {}
            Access::Get {
                kind,
                name,
                hit: false,
            } => {
                let stored = log[i + 1..]
                    .iter()
                    .take_while(|a| !matches!(a, Access::Get { .. }))
                    .any(|a| matches!(a, Access::Insert { kind: k, name: n } if k == kind && n == name));
                let address = matches!(kind, Kind::A | Kind::Aaaa);
                let bare = name.trim_end_matches('.');
                if stored {
                    // Resolved with records.
                } else if address && targets.iter().any(|t| t.trim_end_matches('.') == bare) {
                    // An MX or PTR name's address: part of the mx/ptr term.
                } else if *kind == Kind::A
                    && matches!(log.get(i + 1), Some(Access::Get { kind: Kind::Aaaa, name: n, hit: false }) if n == name)
                {
                    out.push(Void::Exists(name.clone()));
                    i += 1;
                } else {
                    out.push(Void::Certain(name.clone()));
                }
            }
        }
        i += 1;
    }
    out
}

impl Caches {
    /// Recording wrappers around these caches for one evaluation, logging into `log`.
    pub fn recording<'a>(&'a self, log: &'a Mutex<Vec<Access>>) -> RecordingCaches<'a> {
        RecordingCaches {
            txt: Recording {
                inner: &self.txt,
                kind: Kind::Txt,
                log,
            },
            mx: Recording {
                inner: &self.mx,
                kind: Kind::Mx,
                log,
            },
            ipv4: Recording {
                inner: &self.ipv4,
                kind: Kind::A,
                log,
            },
            ipv6: Recording {
                inner: &self.ipv6,
                kind: Kind::Aaaa,
                log,
            },
            ptr: Recording {
                inner: &self.ptr,
                kind: Kind::Ptr,
                log,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_captured_from_generic_keys() {
        assert_eq!(name_of("Void.Example."), "void.example.");
        let boxed: Box<str> = "a.example.".into();
        assert_eq!(name_of(&boxed), "a.example.");
    }

    #[test]
    fn void_lookups_from_an_access_log() {
        use Access::*;
        let get = |kind, name: &str, hit| Get {
            kind,
            name: name.into(),
            hit,
        };
        let ins = |kind, name: &str| Insert {
            kind,
            name: name.into(),
        };
        let log = vec![
            // The domain's own record, resolved.
            get(Kind::Txt, "d.example.", false),
            ins(Kind::Txt, "d.example."),
            // a:void1 → NXDOMAIN (nothing stored).
            get(Kind::A, "void1.example.", false),
            // a:cached → from cache.
            get(Kind::A, "cached.example.", true),
            // mx:m → two exchanges, one without an address (not a term of its own).
            get(Kind::Mx, "m.example.", false),
            Targets(vec!["mx1.example.".into(), "mx2.example.".into()]),
            ins(Kind::Mx, "m.example."),
            get(Kind::A, "mx1.example.", false),
            get(Kind::A, "mx2.example.", false),
            ins(Kind::A, "mx2.example."),
            // exists:e → ambiguous.
            get(Kind::A, "e.example.", false),
            get(Kind::Aaaa, "e.example.", false),
            // mx:nomx → void.
            get(Kind::Mx, "nomx.example.", false),
        ];
        assert_eq!(
            void_lookups(&log),
            vec![
                Void::Certain("void1.example.".into()),
                Void::Exists("e.example.".into()),
                Void::Certain("nomx.example.".into()),
            ]
        );
    }
}
