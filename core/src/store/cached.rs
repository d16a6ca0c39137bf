//! The message-metadata cache as a layer over any mailbox store ([`Cached`]), kept fresh by
//! the store's change feed.
//!
//! IMAP's SELECT, SEARCH, SORT and FETCH read a mailbox's metadata list again and again; on
//! sled a 100,000-message list costs ~150 ms to decode, on a networked database a round trip
//! and the transfer. [`Cached`] keeps the lists of big mailboxes in memory ([`MetaCache`])
//! and answers `messages`, `with_messages`, `derived` and `message` from them; every other
//! call goes straight to the backend.
//!
//! Freshness: the layer observes the backend's feed ([`Feed::observe`]). Backends publish a
//! typed [`Change`] after each write is visible, synchronously, so by the time a write
//! returns to its caller the cache holds it: a session reads its own writes. A reader that
//! missed fills the cache only if no change to that mailbox was published while it read
//! (the cache's write generation), so a fill never hides a write. Changes that another
//! process publishes (a shared database's feed) reach the cache when the feed delivers them.

use std::sync::Arc;

use super::meta_cache::{Lookup, MetaCache};
use super::*;

/// A store whose metadata reads go through a [`MetaCache`]; see the module documentation.
pub struct Cached<S> {
    inner: S,
    cache: Arc<MetaCache>,
}

impl<S: MailStore> Cached<S> {
    /// Put the cache in front of `inner`.
    pub fn new(inner: S) -> Self {
        let cache = Arc::new(MetaCache::default());
        let sink = cache.clone();
        inner.observe(Arc::new(move |_user: &str, change: &Change| {
            sink.apply(change)
        }));
        Cached { inner, cache }
    }

    /// The backend underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: MailStore> MailStore for Cached<S> {
    fn commit(&self) -> Commit {
        self.inner.commit()
    }
}

impl<S: MailStore> Feed for Cached<S> {
    fn watch(&self, user: &str) -> Changes {
        self.inner.watch(user)
    }

    fn observe(&self, sink: Observer) {
        self.inner.observe(sink)
    }

    fn publishes_all(&self, mailbox: u64) -> bool {
        self.inner.publishes_all(mailbox)
    }

    fn follow_others(&self) {
        self.inner.follow_others()
    }
}

/// Run a backend call and record its latency (`corvus_store_operation_duration_seconds`).
async fn timed<T>(op: &'static str, call: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = call.await;
    crate::metrics::m().store_op(op, started.elapsed());
    out
}

#[async_trait::async_trait]
impl<S: MailStore> Directory for Cached<S> {
    async fn create_account(&self, address: &str, password_hash: &str) -> Result<()> {
        self.inner.create_account(address, password_hash).await
    }

    async fn delete_account(&self, address: &str) -> Result<()> {
        self.inner.delete_account(address).await
    }

    async fn account(&self, address: &str) -> Result<Option<Account>> {
        self.inner.account(address).await
    }

    async fn account_exists(&self, address: &str) -> Result<bool> {
        self.inner.account_exists(address).await
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        self.inner.accounts().await
    }

    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        self.inner.set_password(address, password_hash).await
    }

    async fn add_domain(&self, domain: &str) -> Result<()> {
        self.inner.add_domain(domain).await
    }

    async fn delete_domain(&self, domain: &str) -> Result<()> {
        self.inner.delete_domain(domain).await
    }

    async fn domains(&self) -> Result<Vec<String>> {
        self.inner.domains().await
    }

    async fn set_alias(&self, alias: &str, targets: &[String]) -> Result<()> {
        self.inner.set_alias(alias, targets).await
    }

    async fn delete_alias(&self, alias: &str) -> Result<()> {
        self.inner.delete_alias(alias).await
    }

    async fn alias(&self, alias: &str) -> Result<Option<Vec<String>>> {
        self.inner.alias(alias).await
    }

    async fn aliases(&self) -> Result<Vec<(String, Vec<String>)>> {
        self.inner.aliases().await
    }
}

#[async_trait::async_trait]
impl<S: MailStore> Mailboxes for Cached<S> {
    async fn mailboxes(&self, user: &str) -> Result<Vec<Mailbox>> {
        self.inner.mailboxes(user).await
    }

    async fn mailbox(&self, user: &str, name: &str) -> Result<Option<Mailbox>> {
        self.inner.mailbox(user, name).await
    }

    async fn create_mailbox(
        &self,
        user: &str,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<Mailbox> {
        self.inner.create_mailbox(user, name, special_use).await
    }

    async fn ingest(&self, ingest: Ingest) -> Result<Receipt> {
        timed("ingest", self.inner.ingest(ingest)).await
    }

    async fn deliver(
        &self,
        message: &[u8],
        internal_date: i64,
        to: &[Placement],
    ) -> Result<Vec<u32>> {
        timed("deliver", self.inner.deliver(message, internal_date, to)).await
    }

    async fn messages(&self, mailbox_id: u64) -> Result<Vec<MessageMeta>> {
        let generation = match self.cache.lookup(mailbox_id) {
            Lookup::Hit(v) => return Ok(v),
            Lookup::Miss(g) => g,
        };
        let v = self.inner.messages(mailbox_id).await?;
        // A mailbox whose changes this process does not all see (another node's, not
        // followed) is read through, never kept.
        if self.inner.publishes_all(mailbox_id) {
            self.cache.fill(mailbox_id, generation, v.clone());
        }
        Ok(v)
    }

    async fn with_messages(
        &self,
        mailbox_id: u64,
        f: &mut (dyn for<'m> FnMut(&'m [MessageMeta]) + Send),
    ) -> Result<()> {
        if self.cache.with_cached(mailbox_id, |m| f(m)).is_none() {
            let messages = self.messages(mailbox_id).await?;
            f(&messages);
        }
        Ok(())
    }

    async fn derived(
        &self,
        mailbox_id: u64,
        build: &(dyn for<'m> Fn(&'m [MessageMeta]) -> Derived + Sync),
    ) -> Result<Derived> {
        if let Some(d) = self.cache.derived(mailbox_id, build) {
            return Ok(d);
        }
        let generation = match self.cache.lookup(mailbox_id) {
            Lookup::Hit(v) => return Ok(build(&v)),
            Lookup::Miss(g) => g,
        };
        // As `messages`, but the list read moves into the cache (a first SELECT of a big
        // mailbox copies nothing) and the value is kept with it.
        let v = self.inner.messages(mailbox_id).await?;
        if !self.inner.publishes_all(mailbox_id) {
            return Ok(build(&v));
        }
        match self.cache.fill(mailbox_id, generation, v) {
            Some(refused) => Ok(build(&refused)),
            None => match self.cache.derived(mailbox_id, build) {
                Some(d) => Ok(d),
                // Evicted at once by another fill: read it again.
                None => Ok(build(&self.messages(mailbox_id).await?)),
            },
        }
    }

    async fn message(&self, mailbox_id: u64, uid: u32) -> Result<Option<MessageMeta>> {
        match self.cache.get(mailbox_id, uid) {
            Some(hit) => Ok(hit),
            None => self.inner.message(mailbox_id, uid).await,
        }
    }

    async fn set_flags(
        &self,
        user: &str,
        mailbox_id: u64,
        changes: &[(u32, Vec<String>)],
    ) -> Result<Vec<(u32, u64)>> {
        timed("set_flags", self.inner.set_flags(user, mailbox_id, changes)).await
    }

    async fn expunge(&self, user: &str, mailbox_id: u64, uids: &[u32]) -> Result<Vec<u32>> {
        timed("expunge", self.inner.expunge(user, mailbox_id, uids)).await
    }

    async fn copy(
        &self,
        user: &str,
        from_id: u64,
        uids: &[u32],
        to: &str,
    ) -> Result<(u32, Vec<(u32, u32)>)> {
        timed("copy", self.inner.copy(user, from_id, uids, to)).await
    }

    async fn expunged_since(
        &self,
        user: &str,
        mailbox_id: u64,
        modseq: u64,
    ) -> Result<(Vec<u32>, bool)> {
        self.inner.expunged_since(user, mailbox_id, modseq).await
    }

    async fn delete_mailbox(&self, user: &str, name: &str) -> Result<()> {
        self.inner.delete_mailbox(user, name).await
    }

    async fn rename_mailbox(&self, user: &str, from: &str, to: &str) -> Result<()> {
        self.inner.rename_mailbox(user, from, to).await
    }

    async fn set_subscribed(&self, user: &str, name: &str, subscribed: bool) -> Result<()> {
        self.inner.set_subscribed(user, name, subscribed).await
    }

    async fn subscriptions(&self, user: &str) -> Result<Vec<String>> {
        self.inner.subscriptions(user).await
    }

    async fn claim_recent(&self, mailbox_id: u64, up_to: u32, claim: bool) -> Result<u32> {
        self.inner.claim_recent(mailbox_id, up_to, claim).await
    }

    async fn update_flags(
        &self,
        user: &str,
        mailbox_id: u64,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<(Vec<FlagUpdate>, Vec<u32>)> {
        timed(
            "update_flags",
            self.inner
                .update_flags(user, mailbox_id, uids, op, flags, unchanged_since),
        )
        .await
    }
}

#[async_trait::async_trait]
impl<S: MailStore> Blobs for Cached<S> {
    async fn blob(&self, blob: u64) -> Result<Vec<u8>> {
        timed("blob", self.inner.blob(blob)).await
    }
}

#[async_trait::async_trait]
impl<S: MailStore> Queue for Cached<S> {
    async fn enqueue(&self, entry: QueueEntry, message: &[u8]) -> Result<()> {
        self.inner.enqueue(entry, message).await
    }

    async fn queue(&self) -> Result<Vec<QueueEntry>> {
        self.inner.queue().await
    }

    async fn queue_entry(&self, id: &str) -> Result<Option<QueueEntry>> {
        self.inner.queue_entry(id).await
    }

    async fn queue_update(&self, entry: &QueueEntry) -> Result<()> {
        self.inner.queue_update(entry).await
    }

    async fn queue_due_now(&self, id: &str) -> Result<()> {
        self.inner.queue_due_now(id).await
    }

    async fn queue_remove(&self, id: &str) -> Result<()> {
        self.inner.queue_remove(id).await
    }

    async fn queue_claim(
        &self,
        owner: &str,
        now: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Claimed> {
        timed(
            "queue_claim",
            self.inner.queue_claim(owner, now, lease, limit),
        )
        .await
    }

    async fn queue_renew(&self, id: &str, owner: &str, until: i64) -> Result<()> {
        self.inner.queue_renew(id, owner, until).await
    }

    async fn queue_save(&self, entry: &QueueEntry, owner: &str, release: bool) -> Result<()> {
        timed("queue_save", self.inner.queue_save(entry, owner, release)).await
    }

    async fn queue_complete(&self, id: &str, owner: &str) -> Result<()> {
        timed("queue_complete", self.inner.queue_complete(id, owner)).await
    }
}

#[async_trait::async_trait]
impl<S: MailStore> Leases for Cached<S> {
    async fn lease_take(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        self.inner.lease_take(name, holder, now, until).await
    }

    async fn lease_drop(&self, name: &str, holder: &str) -> Result<()> {
        self.inner.lease_drop(name, holder).await
    }

    async fn release_held_by(&self, prefix: &str) -> Result<u64> {
        self.inner.release_held_by(prefix).await
    }
}

#[async_trait::async_trait]
impl<S: MailStore> Kv for Cached<S> {
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        timed("kv_get", self.inner.kv_get(ns, key)).await
    }

    async fn kv_set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<u64>) -> Result<()> {
        timed("kv_set", self.inner.kv_set(ns, key, value, ttl)).await
    }

    async fn kv_incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u64>) -> Result<i64> {
        timed("kv_incr", self.inner.kv_incr(ns, key, delta, ttl)).await
    }

    async fn kv_range(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.kv_range(ns, start, end, limit).await
    }

    async fn kv_range_back(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.kv_range_back(ns, start, end, limit).await
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<()> {
        self.inner.kv_delete(ns, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta_cache::MIN_CACHED;

    type Row = (u32, Vec<String>, u64);

    /// The cached view, and the backend's own answer, of a mailbox.
    async fn both<S: MailStore>(s: &Cached<S>, mailbox: u64) -> (Vec<Row>, Vec<Row>) {
        let rows = |v: Vec<MessageMeta>| -> Vec<Row> {
            v.into_iter().map(|m| (m.uid, m.flags, m.modseq)).collect()
        };
        (
            rows(s.messages(mailbox).await.unwrap()),
            rows(s.inner().messages(mailbox).await.unwrap()),
        )
    }

    async fn follows_every_write<S: MailStore>(s: Cached<S>) {
        s.create_account("a@x.org", "x").await.unwrap();
        let p = Placement {
            user: "a@x.org".into(),
            mailbox: "INBOX".into(),
            flags: vec![],
        };
        let n = MIN_CACHED as u32 + 10;
        for i in 0..n {
            s.deliver(
                format!("m{i}").as_bytes(),
                i as i64,
                std::slice::from_ref(&p),
            )
            .await
            .unwrap();
        }
        let inbox = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        let (view, scan) = both(&s, inbox.id).await; // fills the cache
        assert_eq!(view, scan);
        assert!(matches!(s.cache.lookup(inbox.id), Lookup::Hit(_)));
        s.deliver(b"late", 0, std::slice::from_ref(&p))
            .await
            .unwrap();
        s.set_flags("a@x.org", inbox.id, &[(3, vec!["\\Seen".into()])])
            .await
            .unwrap();
        s.update_flags(
            "a@x.org",
            inbox.id,
            &[4, 5],
            FlagOp::Add,
            &["$k".into()],
            None,
        )
        .await
        .unwrap();
        s.expunge("a@x.org", inbox.id, &[1, 7]).await.unwrap();
        s.copy("a@x.org", inbox.id, &[2, 3], "INBOX").await.unwrap();
        assert!(
            matches!(s.cache.lookup(inbox.id), Lookup::Hit(_)),
            "kept, not dropped"
        );
        let (view, scan) = both(&s, inbox.id).await;
        assert_eq!(view, scan);
        assert_eq!(view.len(), n as usize + 1 - 2 + 2);
        // Point lookups agree with the scan, from the cache and from the backend.
        let all = s.messages(inbox.id).await.unwrap();
        for uid in [1, 2, 3, 4, 7, n + 1, n + 3, n + 9] {
            let cached = s.message(inbox.id, uid).await.unwrap();
            assert_eq!(
                cached.as_ref(),
                all.iter().find(|m| m.uid == uid),
                "uid {uid}"
            );
            assert_eq!(
                s.inner().message(inbox.id, uid).await.unwrap(),
                cached,
                "uid {uid}"
            );
        }
        // A derived value lives until the next write.
        let build = |m: &[MessageMeta]| -> Derived { Arc::new(m.len()) };
        let len = |d: Derived| *d.downcast::<usize>().unwrap();
        assert_eq!(len(s.derived(inbox.id, &build).await.unwrap()), all.len());
        s.deliver(b"later", 0, std::slice::from_ref(&p))
            .await
            .unwrap();
        assert_eq!(
            len(s.derived(inbox.id, &build).await.unwrap()),
            all.len() + 1
        );
        // Renaming INBOX moves its messages; deleting drops the cached list.
        s.rename_mailbox("a@x.org", "INBOX", "Old").await.unwrap();
        let (view, scan) = both(&s, inbox.id).await;
        assert!(view.is_empty() && scan.is_empty());
        let old = s.mailbox("a@x.org", "Old").await.unwrap().unwrap();
        let (view, scan) = both(&s, old.id).await;
        assert_eq!((view.len(), &view), (all.len() + 1, &scan));
        s.delete_mailbox("a@x.org", "Old").await.unwrap();
        assert!(matches!(s.cache.lookup(old.id), Lookup::Miss(_)));
        // Deleting the account drops what was cached of its mailboxes.
        let (view, _) = both(&s, inbox.id).await;
        assert!(view.is_empty());
        s.delete_account("a@x.org").await.unwrap();
        assert!(matches!(s.cache.lookup(inbox.id), Lookup::Miss(_)));
    }

    #[tokio::test]
    async fn cached_metadata_follows_every_write_over_sled() {
        let d = tempfile::tempdir().unwrap();
        follows_every_write(Cached::new(SledStore::open(d.path()).unwrap())).await;
    }

    #[tokio::test]
    async fn cached_metadata_follows_every_write_over_memory() {
        follows_every_write(Cached::new(MemoryStore::new())).await;
    }
}
