//! An in-memory implementation of [`MailStore`]: everything in one mutex-guarded state,
//! nothing on disk. For unit tests and `corvus script test`, which need *a* store, and as
//! the second backend of the conformance suite (`store::conformance`), which pins down the
//! contract every backend keeps.
//!
//! Every write takes the one lock, checks everything it needs first, and only then changes
//! the state, so a write that fails (including one a [`Failpoints`] entry makes fail)
//! changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct State {
    accounts: BTreeMap<String, Account>,
    domains: BTreeSet<String>,
    aliases: BTreeMap<String, Vec<String>>,
    /// (user, name) → mailbox.
    mailboxes: BTreeMap<(String, String), Mailbox>,
    /// mailbox id → UID → metadata.
    messages: HashMap<u64, BTreeMap<u32, MessageMeta>>,
    /// blob id → (bytes, references).
    blobs: HashMap<u64, (Arc<Vec<u8>>, u32)>,
    queue: BTreeMap<String, QueueEntry>,
    /// (namespace, key) → (expiry, 0 for none; value).
    kv: HashMap<(String, String), (i64, Vec<u8>)>,
    subscriptions: BTreeSet<(String, String)>,
    recent: HashMap<u64, u32>,
    /// mailbox id → expunged UID → MODSEQ of the expunge.
    vanished: HashMap<u64, BTreeMap<u32, u64>>,
    /// name → (holder, until).
    leases: HashMap<String, (String, i64)>,
    next_id: u64,
    uidvalidity: u32,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn new_mailbox(&mut self, name: &str, special_use: Option<&str>) -> Mailbox {
        self.uidvalidity = self.uidvalidity.max(now() as u32).wrapping_add(1).max(1);
        Mailbox {
            id: self.id(),
            name: canonical_mailbox(name),
            uidvalidity: self.uidvalidity,
            uidnext: 1,
            subscribed: true,
            special_use: special_use.map(str::to_string),
            highest_modseq: 1,
            logs_expunges: true,
        }
    }

    fn release(&mut self, blob: u64) {
        if let Some((_, refs)) = self.blobs.get_mut(&blob) {
            *refs -= 1;
            if *refs == 0 {
                self.blobs.remove(&blob);
            }
        }
    }

    fn mailbox_by_id(&mut self, user: &str, id: u64) -> Result<&mut Mailbox> {
        self.mailboxes
            .iter_mut()
            .find(|((u, _), mb)| u == user && mb.id == id)
            .map(|(_, mb)| mb)
            .ok_or_else(|| StoreError::NotFound(format!("mailbox {id}")))
    }

    /// Remove a mailbox's messages; their UIDs, ascending.
    fn drop_mailbox(&mut self, id: u64) -> Vec<u32> {
        let gone = self.messages.remove(&id).unwrap_or_default();
        for m in gone.values() {
            self.release(m.blob);
        }
        self.recent.remove(&id);
        self.vanished.remove(&id);
        gone.into_keys().collect()
    }
}

/// Entry `id`, if `owner` holds its lease.
fn owned<'a>(st: &'a mut State, id: &str, owner: &str) -> Result<&'a mut QueueEntry> {
    match st.queue.get_mut(id) {
        None => Err(StoreError::NotFound(format!("queue entry {id}"))),
        Some(e) if !e.leased_by(owner) => Err(lease_lost(id)),
        Some(e) => Ok(e),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The in-memory store.
pub struct MemoryStore {
    state: Mutex<State>,
    watchers: super::feed::Watchers,
    failpoints: Arc<Failpoints>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            watchers: Default::default(),
            failpoints: Arc::new(Failpoints::default()),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// This store's failure points (tests arm them).
    pub fn failpoints(&self) -> Arc<Failpoints> {
        self.failpoints.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory store")
    }

    fn notify(&self, user: &str, change: Change) {
        self.watchers.notify(user, change);
    }

    /// The writes of an ingest, all or nothing, under the lock.
    fn write_ingest(
        &self,
        internal_date: i64,
        filed: &[(&[u8], &[Placement])],
        queue: Option<(&QueueEntry, &[u8])>,
    ) -> Result<Receipt> {
        let mut st = self.state();
        // Check and stage everything first; the state changes only after.
        let mut staged: BTreeMap<(String, String), Mailbox> = BTreeMap::new();
        let mut records: Vec<(usize, u64, MessageMeta)> = Vec::new();
        let mut placed = Vec::new();
        let mut created: Vec<(String, String)> = Vec::new();
        for (n, (message, placements)) in filed.iter().enumerate() {
            for p in placements.iter() {
                if !placed.is_empty() && self.failpoints.fire("ingest-after-placement") {
                    return Err(StoreError::Backend(
                        "failpoint ingest-after-placement".into(),
                    ));
                }
                let key = (normalize_address(&p.user), canonical_mailbox(&p.mailbox));
                let mb = match staged.get(&key).or_else(|| st.mailboxes.get(&key)) {
                    Some(mb) => mb.clone(),
                    None => {
                        let mb = st.new_mailbox(&p.mailbox, None);
                        created.push((key.0.clone(), mb.name.clone()));
                        mb
                    }
                };
                let mut mb = mb;
                let meta = mb.place(0, message.len() as u64, &p.flags, internal_date);
                placed.push(Placed {
                    user: key.0.clone(),
                    mailbox: mb.id,
                    uid: meta.uid,
                    modseq: meta.modseq,
                });
                records.push((n, mb.id, meta));
                staged.insert(key, mb);
            }
        }
        let mut blob_of = Vec::with_capacity(filed.len());
        for (message, placements) in filed {
            let id = st.id();
            if !placements.is_empty() {
                st.blobs
                    .insert(id, (Arc::new(message.to_vec()), placements.len() as u32));
            }
            blob_of.push(id);
        }
        for (key, mb) in staged {
            st.mailboxes.insert(key, mb);
        }
        let mut full: Vec<(String, u64, MessageMeta)> = Vec::with_capacity(records.len());
        for ((n, mailbox, mut meta), p) in records.into_iter().zip(&placed) {
            meta.blob = blob_of[n];
            full.push((p.user.clone(), mailbox, meta.clone()));
            st.messages
                .entry(mailbox)
                .or_default()
                .insert(meta.uid, meta);
        }
        if let Some((entry, message)) = queue {
            let mut entry = entry.clone();
            entry.blob = st.id();
            st.blobs.insert(entry.blob, (Arc::new(message.to_vec()), 1));
            st.queue.insert(entry.id.clone(), entry);
        }
        // Still under the lock: a mailbox's changes reach its watchers in UID order.
        for (user, name) in created {
            self.notify(&user, Change::Created { name });
        }
        for (user, change) in appended(&full) {
            self.notify(user, change);
        }
        drop(st);
        Ok(Receipt { placed })
    }
}

impl MailStore for MemoryStore {
    fn commit(&self) -> Commit {
        Commit::done()
    }
}

#[async_trait::async_trait]
impl Directory for MemoryStore {
    async fn create_account(&self, address: &str, password_hash: &str) -> Result<()> {
        let address = normalize_address(address);
        let mut st = self.state();
        if st.accounts.contains_key(&address) {
            return Err(StoreError::Exists(format!("account {address}")));
        }
        st.accounts.insert(
            address.clone(),
            Account {
                address: address.clone(),
                password_hash: password_hash.into(),
                created: now(),
            },
        );
        for (name, special) in DEFAULT_MAILBOXES {
            let mb = st.new_mailbox(name, *special);
            st.subscriptions.insert((address.clone(), mb.name.clone()));
            st.mailboxes.insert((address.clone(), mb.name.clone()), mb);
        }
        Ok(())
    }

    async fn delete_account(&self, address: &str) -> Result<()> {
        let address = normalize_address(address);
        let mut st = self.state();
        if st.accounts.remove(&address).is_none() {
            return Err(StoreError::NotFound(format!("account {address}")));
        }
        let keys: Vec<(String, String)> = st
            .mailboxes
            .keys()
            .filter(|(u, _)| *u == address)
            .cloned()
            .collect();
        for k in keys {
            if let Some(mb) = st.mailboxes.remove(&k) {
                st.drop_mailbox(mb.id);
                self.watchers.mailbox_deleted(&address, &mb, Vec::new());
            }
        }
        st.subscriptions.retain(|(u, _)| *u != address);
        Ok(())
    }

    async fn account(&self, address: &str) -> Result<Option<Account>> {
        Ok(self
            .state()
            .accounts
            .get(&normalize_address(address))
            .cloned())
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        Ok(self.state().accounts.values().cloned().collect())
    }

    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        let address = normalize_address(address);
        match self.state().accounts.get_mut(&address) {
            Some(a) => {
                a.password_hash = password_hash.into();
                Ok(())
            }
            None => Err(StoreError::NotFound(format!("account {address}"))),
        }
    }

    async fn add_domain(&self, domain: &str) -> Result<()> {
        let d = domain.trim().to_lowercase();
        if !self.state().domains.insert(d.clone()) {
            return Err(StoreError::Exists(format!("domain {d}")));
        }
        Ok(())
    }

    async fn delete_domain(&self, domain: &str) -> Result<()> {
        let d = domain.trim().to_lowercase();
        if !self.state().domains.remove(&d) {
            return Err(StoreError::NotFound(format!("domain {d}")));
        }
        Ok(())
    }

    async fn domains(&self) -> Result<Vec<String>> {
        Ok(self.state().domains.iter().cloned().collect())
    }

    async fn set_alias(&self, alias: &str, targets: &[String]) -> Result<()> {
        let targets = targets.iter().map(|t| normalize_address(t)).collect();
        self.state()
            .aliases
            .insert(normalize_address(alias), targets);
        Ok(())
    }

    async fn delete_alias(&self, alias: &str) -> Result<()> {
        let a = normalize_address(alias);
        match self.state().aliases.remove(&a) {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("alias {a}"))),
        }
    }

    async fn alias(&self, alias: &str) -> Result<Option<Vec<String>>> {
        Ok(self.state().aliases.get(&normalize_address(alias)).cloned())
    }

    async fn aliases(&self) -> Result<Vec<(String, Vec<String>)>> {
        Ok(self
            .state()
            .aliases
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[async_trait::async_trait]
impl Mailboxes for MemoryStore {
    async fn mailboxes(&self, user: &str) -> Result<Vec<Mailbox>> {
        let user = normalize_address(user);
        Ok(self
            .state()
            .mailboxes
            .iter()
            .filter(|((u, _), _)| *u == user)
            .map(|(_, mb)| mb.clone())
            .collect())
    }

    async fn mailbox(&self, user: &str, name: &str) -> Result<Option<Mailbox>> {
        let key = (normalize_address(user), canonical_mailbox(name));
        Ok(self.state().mailboxes.get(&key).cloned())
    }

    async fn create_mailbox(
        &self,
        user: &str,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<Mailbox> {
        let mut st = self.state();
        let key = (normalize_address(user), canonical_mailbox(name));
        if st.mailboxes.contains_key(&key) {
            return Err(StoreError::Exists(format!("mailbox {}", key.1)));
        }
        let mb = st.new_mailbox(name, special_use);
        st.mailboxes.insert(key.clone(), mb.clone());
        self.notify(
            &key.0,
            Change::Created {
                name: mb.name.clone(),
            },
        );
        Ok(mb)
    }

    async fn ingest(&self, ingest: Ingest) -> Result<Receipt> {
        let (filed, queue) = ingest.parts();
        self.write_ingest(ingest.internal_date, &filed, queue)
    }

    async fn deliver(
        &self,
        message: &[u8],
        internal_date: i64,
        to: &[Placement],
    ) -> Result<Vec<u32>> {
        Ok(self
            .write_ingest(internal_date, &[(message, to)], None)?
            .placed
            .into_iter()
            .map(|p| p.uid)
            .collect())
    }

    async fn messages(&self, mailbox_id: u64) -> Result<Vec<MessageMeta>> {
        Ok(self
            .state()
            .messages
            .get(&mailbox_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn message(&self, mailbox_id: u64, uid: u32) -> Result<Option<MessageMeta>> {
        Ok(self
            .state()
            .messages
            .get(&mailbox_id)
            .and_then(|m| m.get(&uid))
            .cloned())
    }

    async fn set_flags(
        &self,
        user: &str,
        mailbox_id: u64,
        changes: &[(u32, Vec<String>)],
    ) -> Result<Vec<(u32, u64)>> {
        let user = normalize_address(user);
        let mut st = self.state();
        let mut modseq = st.mailbox_by_id(&user, mailbox_id)?.highest_modseq;
        let mut done = Vec::new();
        if let Some(msgs) = st.messages.get_mut(&mailbox_id) {
            for (uid, flags) in changes {
                if let Some(m) = msgs.get_mut(uid) {
                    modseq += 1;
                    m.flags = flags.clone();
                    m.modseq = modseq;
                    done.push((*uid, modseq));
                }
            }
        }
        st.mailbox_by_id(&user, mailbox_id)?.highest_modseq = modseq;
        self.notify(&user, Change::flags_set(mailbox_id, changes, &done));
        drop(st);
        Ok(done)
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
        let user = normalize_address(user);
        let mut st = self.state();
        let mut modseq = st.mailbox_by_id(&user, mailbox_id)?.highest_modseq;
        let (mut out, mut modified) = (Vec::new(), Vec::new());
        if let Some(msgs) = st.messages.get_mut(&mailbox_id) {
            for uid in uids {
                let Some(m) = msgs.get_mut(uid) else { continue };
                if unchanged_since.is_some_and(|u| m.modseq > u) {
                    modified.push(*uid);
                    continue;
                }
                let new = op.apply(&m.flags, flags);
                let changed = new != m.flags;
                if changed {
                    modseq += 1;
                    m.flags = new;
                    m.modseq = modseq;
                }
                out.push(FlagUpdate {
                    uid: *uid,
                    flags: m.flags.clone(),
                    modseq: m.modseq,
                    changed,
                });
            }
        }
        st.mailbox_by_id(&user, mailbox_id)?.highest_modseq = modseq;
        if let Some(change) = Change::flags_updated(mailbox_id, &out) {
            self.notify(&user, change);
        }
        drop(st);
        Ok((out, modified))
    }

    async fn expunge(&self, user: &str, mailbox_id: u64, uids: &[u32]) -> Result<Vec<u32>> {
        let user = normalize_address(user);
        let mut st = self.state();
        st.mailbox_by_id(&user, mailbox_id)?;
        let mut removed = Vec::new();
        if let Some(msgs) = st.messages.get_mut(&mailbox_id) {
            for uid in uids {
                if let Some(m) = msgs.remove(uid) {
                    removed.push((m.uid, m.blob));
                }
            }
        }
        for (_, blob) in &removed {
            st.release(*blob);
        }
        // Nothing removed, nothing changed: HIGHESTMODSEQ stays (RFC 7162 §3.1.2).
        if !removed.is_empty() {
            let mb = st.mailbox_by_id(&user, mailbox_id)?;
            mb.highest_modseq += 1;
            let modseq = mb.highest_modseq;
            let mut uids: Vec<u32> = removed.iter().map(|(u, _)| *u).collect();
            uids.sort_unstable();
            let log = st.vanished.entry(mailbox_id).or_default();
            log.extend(uids.iter().map(|u| (*u, modseq)));
            self.notify(
                &user,
                Change::Expunged {
                    mailbox: mailbox_id,
                    uids,
                    modseq,
                },
            );
        }
        drop(st);
        Ok(removed.into_iter().map(|(u, _)| u).collect())
    }

    async fn copy(
        &self,
        user: &str,
        from_id: u64,
        uids: &[u32],
        to: &str,
    ) -> Result<(u32, Vec<(u32, u32)>)> {
        let user = normalize_address(user);
        let mut st = self.state();
        let key = (user.clone(), canonical_mailbox(to));
        let Some(mut mb) = st.mailboxes.get(&key).cloned() else {
            return Err(StoreError::NotFound(format!("mailbox {to}")));
        };
        let sources: Vec<MessageMeta> = st
            .messages
            .get(&from_id)
            .map(|m| uids.iter().filter_map(|u| m.get(u).cloned()).collect())
            .unwrap_or_default();
        let (mut pairs, mut copies) = (Vec::new(), Vec::new());
        for mut meta in sources {
            let old = meta.uid;
            meta.uid = mb.uidnext;
            mb.uidnext += 1;
            mb.highest_modseq += 1;
            meta.modseq = mb.highest_modseq;
            if let Some((_, refs)) = st.blobs.get_mut(&meta.blob) {
                *refs += 1;
            }
            pairs.push((old, meta.uid));
            copies.push(meta.clone());
            st.messages.entry(mb.id).or_default().insert(meta.uid, meta);
        }
        let (uidvalidity, id) = (mb.uidvalidity, mb.id);
        st.mailboxes.insert(key, mb);
        if !pairs.is_empty() {
            self.notify(
                &user,
                Change::Appended {
                    mailbox: id,
                    messages: copies,
                },
            );
        }
        drop(st);
        Ok((uidvalidity, pairs))
    }

    async fn expunged_since(
        &self,
        user: &str,
        mailbox_id: u64,
        modseq: u64,
    ) -> Result<(Vec<u32>, bool)> {
        let user = normalize_address(user);
        let mut st = self.state();
        let complete = st.mailbox_by_id(&user, mailbox_id)?.logs_expunges;
        let expunged = st
            .vanished
            .get(&mailbox_id)
            .map(|v| {
                v.iter()
                    .filter(|(_, m)| **m > modseq)
                    .map(|(u, _)| *u)
                    .collect()
            })
            .unwrap_or_default();
        Ok((expunged, complete))
    }

    async fn delete_mailbox(&self, user: &str, name: &str) -> Result<()> {
        let user = normalize_address(user);
        let name = canonical_mailbox(name);
        if is_inbox(&name) {
            return Err(StoreError::Invalid("INBOX cannot be deleted".into()));
        }
        let mut st = self.state();
        let Some(mb) = st.mailboxes.remove(&(user.clone(), name.clone())) else {
            return Err(StoreError::NotFound(format!("mailbox {name}")));
        };
        let uids = st.drop_mailbox(mb.id);
        // Sessions that have it selected see its messages go, then the mailbox.
        self.watchers.mailbox_deleted(&user, &mb, uids);
        drop(st);
        Ok(())
    }

    async fn rename_mailbox(&self, user: &str, from: &str, to: &str) -> Result<()> {
        let user = normalize_address(user);
        let (from, to) = (canonical_mailbox(from), canonical_mailbox(to));
        if is_inbox(&to) {
            return Err(StoreError::Exists("mailbox INBOX".into()));
        }
        if self.mailbox(&user, &to).await?.is_some() {
            return Err(StoreError::Exists(format!("mailbox {to}")));
        }
        let Some(mb) = self.mailbox(&user, &from).await? else {
            return Err(StoreError::NotFound(format!("mailbox {from}")));
        };
        if is_inbox(&from) {
            return rename_inbox(self, &user, mb.id, &to).await;
        }
        let mut st = self.state();
        let prefix = format!("{from}/");
        let moves: Vec<(String, String)> = st
            .mailboxes
            .keys()
            .filter(|(u, n)| *u == user && (*n == from || n.starts_with(&prefix)))
            .map(|(_, n)| {
                let new = match n.strip_prefix(&prefix) {
                    Some(rest) => format!("{to}/{rest}"),
                    None => to.clone(),
                };
                (n.clone(), new)
            })
            .collect();
        for (old, new) in moves {
            if let Some(mut mb) = st.mailboxes.remove(&(user.clone(), old.clone())) {
                mb.name = new.clone();
                self.notify(
                    &user,
                    Change::Renamed {
                        mailbox: mb.id,
                        from: old.clone(),
                        to: new.clone(),
                    },
                );
                st.mailboxes.insert((user.clone(), new.clone()), mb);
            }
            // A subscription follows its mailbox's new name (as Dovecot does).
            if st.subscriptions.remove(&(user.clone(), old)) {
                st.subscriptions.insert((user.clone(), new));
            }
        }
        Ok(())
    }

    async fn set_subscribed(&self, user: &str, name: &str, subscribed: bool) -> Result<()> {
        let key = (normalize_address(user), canonical_mailbox(name));
        let mut st = self.state();
        let changed = if subscribed {
            st.subscriptions.insert(key.clone())
        } else {
            st.subscriptions.remove(&key)
        };
        if changed {
            self.notify(
                &key.0,
                Change::Subscription {
                    name: key.1,
                    subscribed,
                },
            );
        }
        Ok(())
    }

    async fn subscriptions(&self, user: &str) -> Result<Vec<String>> {
        let user = normalize_address(user);
        Ok(self
            .state()
            .subscriptions
            .iter()
            .filter(|(u, _)| *u == user)
            .map(|(_, n)| n.clone())
            .collect())
    }

    async fn claim_recent(&self, mailbox_id: u64, up_to: u32, claim: bool) -> Result<u32> {
        let mut st = self.state();
        let mark = st.recent.entry(mailbox_id).or_insert(0);
        let before = *mark;
        if claim {
            *mark = before.max(up_to);
        }
        Ok(before)
    }
}

#[async_trait::async_trait]
impl Blobs for MemoryStore {
    async fn blob(&self, blob: u64) -> Result<Vec<u8>> {
        self.state()
            .blobs
            .get(&blob)
            .map(|(b, _)| b.to_vec())
            .ok_or_else(|| StoreError::NotFound(format!("message blob {blob}")))
    }
}

#[async_trait::async_trait]
impl Queue for MemoryStore {
    async fn enqueue(&self, entry: QueueEntry, message: &[u8]) -> Result<()> {
        self.write_ingest(0, &[], Some((&entry, message)))
            .map(|_| ())
    }

    async fn queue(&self) -> Result<Vec<QueueEntry>> {
        Ok(self.state().queue.values().cloned().collect())
    }

    async fn queue_entry(&self, id: &str) -> Result<Option<QueueEntry>> {
        Ok(self.state().queue.get(id).cloned())
    }

    async fn queue_update(&self, entry: &QueueEntry) -> Result<()> {
        match self.state().queue.get_mut(&entry.id) {
            Some(e) => {
                *e = entry.clone();
                Ok(())
            }
            None => Err(StoreError::NotFound(format!("queue entry {}", entry.id))),
        }
    }

    async fn queue_due_now(&self, id: &str) -> Result<()> {
        match self.state().queue.get_mut(id) {
            Some(e) => {
                e.next_attempt = 0;
                Ok(())
            }
            None => Err(StoreError::NotFound(format!("queue entry {id}"))),
        }
    }

    async fn queue_remove(&self, id: &str) -> Result<()> {
        let mut st = self.state();
        let Some(entry) = st.queue.remove(id) else {
            return Err(StoreError::NotFound(format!("queue entry {id}")));
        };
        st.release(entry.blob);
        Ok(())
    }

    async fn queue_claim(
        &self,
        owner: &str,
        now: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Claimed> {
        let mut st = self.state();
        let mut claimed = Claimed::default();
        for e in st.queue.values_mut() {
            if !e.claimable(now) {
                let t = match &e.lease {
                    Some(l) if e.next_attempt <= now => l.until,
                    _ => e.next_attempt,
                };
                claimed_next(&mut claimed.next, t);
            } else if claimed.entries.len() >= limit {
                claimed_next(&mut claimed.next, now);
            } else {
                e.lease = Some(Lease {
                    owner: owner.to_string(),
                    until: now + lease,
                });
                claimed.entries.push(e.clone());
            }
        }
        Ok(claimed)
    }

    async fn queue_renew(&self, id: &str, owner: &str, until: i64) -> Result<()> {
        let mut st = self.state();
        let e = owned(&mut st, id, owner)?;
        if let Some(l) = e.lease.as_mut() {
            l.until = until;
        }
        Ok(())
    }

    async fn queue_save(&self, entry: &QueueEntry, owner: &str, release: bool) -> Result<()> {
        let mut st = self.state();
        let e = owned(&mut st, &entry.id, owner)?;
        let lease = e.lease.take();
        *e = entry.clone();
        e.lease = if release { None } else { lease };
        Ok(())
    }

    async fn queue_complete(&self, id: &str, owner: &str) -> Result<()> {
        let mut st = self.state();
        owned(&mut st, id, owner)?;
        let e = st.queue.remove(id).expect("checked");
        st.release(e.blob);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Leases for MemoryStore {
    async fn lease_take(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        let mut st = self.state();
        match st.leases.get(name) {
            Some((h, u)) if *u > now && h != holder => Ok(false),
            _ => {
                st.leases
                    .insert(name.to_string(), (holder.to_string(), until));
                Ok(true)
            }
        }
    }

    async fn lease_drop(&self, name: &str, holder: &str) -> Result<()> {
        let mut st = self.state();
        if st.leases.get(name).is_some_and(|(h, _)| h == holder) {
            st.leases.remove(name);
        }
        Ok(())
    }

    async fn release_held_by(&self, prefix: &str) -> Result<u64> {
        let mut st = self.state();
        let before = st.leases.len();
        st.leases.retain(|_, (h, _)| !h.starts_with(prefix));
        let mut n = (before - st.leases.len()) as u64;
        for e in st.queue.values_mut() {
            if e.lease
                .as_ref()
                .is_some_and(|l| l.owner.starts_with(prefix))
            {
                e.lease = None;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl MemoryStore {
    /// Live keys of `ns` from `start` to `end` (empty: no end), ascending.
    fn kv_live(&self, ns: &str, start: &str, end: &str) -> Vec<(String, Vec<u8>)> {
        let now = now();
        let st = self.state();
        let mut out: Vec<(String, Vec<u8>)> = st
            .kv
            .iter()
            .filter(|((n, k), (exp, _))| {
                n == ns
                    && k.as_str() >= start
                    && (end.is_empty() || k.as_str() < end)
                    && (*exp == 0 || *exp > now)
            })
            .map(|((_, k), (_, v))| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        out
    }
}

#[async_trait::async_trait]
impl Kv for MemoryStore {
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let k = (ns.to_string(), key.to_string());
        let mut st = self.state();
        match st.kv.get(&k) {
            Some((exp, _)) if *exp != 0 && *exp <= now() => {
                st.kv.remove(&k);
                Ok(None)
            }
            Some((_, v)) => Ok(Some(v.clone())),
            None => Ok(None),
        }
    }

    async fn kv_set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<u64>) -> Result<()> {
        let exp = ttl.map(|t| now() + t as i64).unwrap_or(0);
        self.state()
            .kv
            .insert((ns.to_string(), key.to_string()), (exp, value.to_vec()));
        Ok(())
    }

    async fn kv_incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u64>) -> Result<i64> {
        let now = now();
        let fresh_exp = ttl.map(|t| now + t as i64).unwrap_or(0);
        let mut st = self.state();
        let slot = st
            .kv
            .entry((ns.to_string(), key.to_string()))
            .or_insert((fresh_exp, b"0".to_vec()));
        let (exp, n) = if slot.0 != 0 && slot.0 <= now {
            (fresh_exp, 0)
        } else {
            let n = std::str::from_utf8(&slot.1)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0);
            (slot.0, n)
        };
        let n = n.saturating_add(delta);
        *slot = (exp, n.to_string().into_bytes());
        Ok(n)
    }

    async fn kv_range(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = self.kv_live(ns, start, end);
        out.truncate(limit);
        Ok(out)
    }

    async fn kv_range_back(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = self.kv_live(ns, start, end);
        out.reverse();
        out.truncate(limit);
        Ok(out)
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<()> {
        self.state().kv.remove(&(ns.to_string(), key.to_string()));
        Ok(())
    }
}

impl Feed for MemoryStore {
    fn watch(&self, user: &str) -> Changes {
        self.watchers.watch(user)
    }

    fn observe(&self, sink: Observer) {
        self.watchers.observe(sink);
    }
}
