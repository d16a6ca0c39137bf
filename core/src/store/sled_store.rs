//! The sled implementation of [`MailStore`].
//!
//! Trees: `meta` (format version, counters), `accounts`, `domains`, `aliases`,
//! `mailboxes` (`user\0name`), `messages` (mailbox id ‖ uid, big-endian), `blobs` and
//! `blobrefs` (message bytes and their reference counts), `queue`, `kv` (`ns\0key`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::commit::GroupCommitter;
use super::*;

/// sled-backed store.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    accounts: sled::Tree,
    domains: sled::Tree,
    aliases: sled::Tree,
    mailboxes: sled::Tree,
    messages: sled::Tree,
    blobs: Bodies,
    blobrefs: sled::Tree,
    queue: sled::Tree,
    kv: sled::Tree,
    /// `user NUL name` for every subscribed name (RFC 9051 §6.3.9).
    subscriptions: sled::Tree,
    recent: sled::Tree,
    /// Bodies written by an ingest whose transaction has not committed yet (blob id keys).
    pending: sled::Tree,
    /// Expunged messages: mailbox id ‖ UID → the MODSEQ of the expunge.
    vanished: sled::Tree,
    /// Leases (name → holder, until), in memory: see `lease_take`.
    leases: Mutex<HashMap<String, (String, i64)>>,
    /// Failure injection for tests.
    failpoints: Arc<Failpoints>,
    committer: GroupCommitter,
    watchers: super::feed::Watchers,
    /// Decoded metadata of big mailboxes; every write to `messages` must update it (after
    /// its transaction, before notifying watchers).
    /// Held by everything that assigns UIDs (deliver, copy) or rewrites or removes mailbox
    /// records outside a transaction, so UIDs become visible in ascending order per mailbox
    /// and no plain read-modify-write of a mailbox record loses a UID reservation.
    uid_lock: Mutex<()>,
}

const TREES: &[&str] = &[
    "meta",
    "accounts",
    "domains",
    "aliases",
    "mailboxes",
    "messages",
    "blobs",
    "chunks",
    "blobrefs",
    "queue",
    "kv",
    "subscriptions",
    "recent",
    "pending",
    "vanished",
];

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn mbox_key(user: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + name.len() + 1);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

fn msg_key(mailbox: u64, uid: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&mailbox.to_be_bytes());
    k[8..].copy_from_slice(&uid.to_be_bytes());
    k
}

impl SledStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let display = path.display().to_string();
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Backend(format!("{display}: {e}")))?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    StoreError::Locked(display.clone())
                }
                other => StoreError::Backend(format!("{display}: {other}")),
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get("format")? {
            Some(v) => {
                let found = u32::from_be_bytes(
                    v.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Foreign(display.clone()))?,
                );
                if found > FORMAT_VERSION {
                    return Err(StoreError::TooNew {
                        path: display,
                        found,
                    });
                }
            }
            None => {
                let foreign = db.tree_names().iter().any(|n| {
                    let n = String::from_utf8_lossy(n);
                    n != "__sled__default" && !TREES.contains(&n.as_ref())
                }) || !db.is_empty();
                if foreign {
                    return Err(StoreError::Foreign(display));
                }
                meta.insert("format", &FORMAT_VERSION.to_be_bytes())?;
                db.flush()?;
            }
        }
        let committer = GroupCommitter::start(db.clone());
        let store = SledStore {
            meta,
            accounts: db.open_tree("accounts")?,
            domains: db.open_tree("domains")?,
            aliases: db.open_tree("aliases")?,
            mailboxes: db.open_tree("mailboxes")?,
            messages: db.open_tree("messages")?,
            blobs: Bodies {
                whole: db.open_tree("blobs")?,
                chunks: db.open_tree("chunks")?,
            },
            blobrefs: db.open_tree("blobrefs")?,
            queue: db.open_tree("queue")?,
            kv: db.open_tree("kv")?,
            subscriptions: db.open_tree("subscriptions")?,
            recent: db.open_tree("recent")?,
            pending: db.open_tree("pending")?,
            vanished: db.open_tree("vanished")?,
            leases: Mutex::new(HashMap::new()),
            failpoints: Arc::new(Failpoints::from_env()),
            db,
            committer,
            watchers: Default::default(),
            uid_lock: Mutex::new(()),
        };
        store.migrate_subscriptions()?;
        store.forget_pending()?;
        store.drop_leases()?;
        Ok(store)
    }

    /// Subscriptions live apart from mailboxes (RFC 9051 §6.3.9: a name stays subscribed
    /// when its mailbox is deleted, and one can subscribe to a name that does not exist).
    /// Stores made before kept a flag in each mailbox record: copied once into the
    /// subscriptions tree.
    fn migrate_subscriptions(&self) -> Result<()> {
        if self.meta.get("subscriptions")?.is_some() {
            return Ok(());
        }
        for item in self.mailboxes.iter() {
            let (k, v) = item?;
            let mb: Mailbox = serde_json::from_slice(&v)?;
            if mb.subscribed {
                self.subscriptions.insert(k, &[])?;
            }
        }
        self.meta.insert("subscriptions", &[1u8])?;
        Ok(())
    }

    /// This store's failure points (tests arm them).
    pub fn failpoints(&self) -> Arc<Failpoints> {
        self.failpoints.clone()
    }

    fn next_uidvalidity(&self) -> Result<u32> {
        let v = self.meta.update_and_fetch("uidvalidity", |old| {
            let cur = old
                .map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])))
                .unwrap_or(0);
            let next = cur.max(now() as u32).wrapping_add(1).max(1);
            Some(next.to_be_bytes().to_vec())
        })?;
        Ok(
            v.map(|b| u32::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 4])))
                .unwrap_or(1),
        )
    }

    fn new_mailbox(&self, name: &str, special_use: Option<&str>) -> Result<Mailbox> {
        Ok(Mailbox {
            id: self.db.generate_id()?,
            name: canonical_mailbox(name),
            uidvalidity: self.next_uidvalidity()?,
            uidnext: 1,
            subscribed: true,
            special_use: special_use.map(str::to_string),
            highest_modseq: 1,
            logs_expunges: true,
        })
    }

    /// Key of the mailbox record with `id` (scans the user's few mailboxes).
    fn mailbox_key_by_id(&self, user: &str, id: u64) -> Result<Vec<u8>> {
        let mut prefix = user.as_bytes().to_vec();
        prefix.push(0);
        for item in self.mailboxes.scan_prefix(&prefix) {
            let (k, v) = item?;
            let mb: Mailbox = serde_json::from_slice(&v)?;
            if mb.id == id {
                return Ok(k.to_vec());
            }
        }
        Err(StoreError::NotFound(format!("mailbox {id}")))
    }

    fn notify(&self, user: &str, change: Change) {
        self.watchers.notify(user, change);
    }
}

impl SledStore {
    /// A mailbox's message metadata in UID order. The first [`INLINE_SCAN`] records are
    /// read on the calling task; a bigger mailbox (~1.5 µs a record) is read on with
    /// `block_in_place`, so a 100,000-message scan does not hold up the worker's other
    /// sessions.
    fn read_messages(&self, mailbox_id: u64) -> Result<Vec<MessageMeta>> {
        let mut records = self.messages.scan_prefix(mailbox_id.to_be_bytes()).values();
        let mut out = Vec::new();
        for v in records.by_ref().take(INLINE_SCAN) {
            out.push(MessageMeta::decode(&v?)?);
        }
        if out.len() == INLINE_SCAN {
            crate::blocking::offload(|| {
                for v in records {
                    out.push(MessageMeta::decode(&v?)?);
                }
                Ok::<_, StoreError>(())
            })?;
        }
        Ok(out)
    }

    /// The writes of [`Mailboxes::ingest`], without the wait for durability.
    ///
    /// The bodies are written first and are invisible until referenced. With one record to
    /// write (one placement, or a queue entry alone: most mail) that record comes last and
    /// alone makes the message visible (`write_placed`). With several, each body gets a
    /// `pending` mark first; then one sled transaction over the mailbox records, message
    /// records, reference counts, queue and pending marks takes each placement's UID and
    /// MODSEQ from its mailbox record, writes the message records, the reference counts and
    /// the queue entry, and clears the marks: sled applies and recovers a transaction
    /// whole, so a failure or a crash leaves either all of it or none. Bodies of a failed
    /// ingest are removed now; of an interrupted one, at the next open through their marks
    /// (a crash inside a one-record write can leave one unreferenced body, as before: the
    /// mark cost 5 % of the SMTP rate). `uid_lock` is held from UID assignment until the
    /// cache and the watchers know the new records, so UIDs become visible, and are
    /// announced, in ascending order per mailbox.
    fn write_ingest(
        &self,
        internal_date: i64,
        filed: &[(&[u8], &[Placement])],
        queue: Option<(&QueueEntry, &[u8])>,
    ) -> Result<Receipt> {
        let filed: Vec<(&[u8], &[Placement])> =
            filed.iter().filter(|f| !f.1.is_empty()).copied().collect();
        let mut blobs: Vec<u64> = Vec::with_capacity(filed.len() + 1);
        let records = filed.iter().map(|f| f.1.len()).sum::<usize>() + queue.is_some() as usize;
        let written = (|| -> Result<()> {
            for body in filed.iter().map(|f| f.0).chain(queue.map(|(_, m)| m)) {
                let blob = self.db.generate_id()?;
                if records > 1 {
                    self.pending.insert(blob.to_be_bytes(), &[])?;
                }
                blobs.push(blob);
                self.blobs.insert(blob, body)?;
            }
            Ok(())
        })();
        let forget = |blobs: &[u64]| {
            for b in blobs {
                let _ = self.blobrefs.remove(b.to_be_bytes());
                let _ = self.blobs.remove(*b);
                let _ = self.pending.remove(b.to_be_bytes());
            }
        };
        if let Err(e) = written {
            forget(&blobs);
            return Err(e);
        }
        let queue = queue.map(|(entry, _)| {
            let mut entry = entry.clone();
            entry.blob = *blobs.last().expect("queue blob");
            entry
        });
        let queue_json = queue.as_ref().map(serde_json::to_vec).transpose()?;
        if records == 1 {
            let one = match (&queue, &queue_json) {
                (Some(entry), Some(json)) => self.write_queued(entry, json).map(|()| None),
                _ => self
                    .write_placed(internal_date, filed[0], blobs[0])
                    .map(Some),
            };
            return match one {
                Ok(placed) => Ok(Receipt {
                    placed: placed.into_iter().collect(),
                }),
                Err(e) => {
                    forget(&blobs);
                    Err(e)
                }
            };
        }
        // Records of mailboxes that do not exist yet (file_into): made up front, since ids
        // come from outside the transaction; inserted only where still missing.
        let mut fresh: HashMap<Vec<u8>, Mailbox> = HashMap::new();
        for p in filed.iter().flat_map(|f| f.1) {
            let key = mbox_key(&normalize_address(&p.user), &canonical_mailbox(&p.mailbox));
            if !fresh.contains_key(&key) && self.mailboxes.get(&key)?.is_none() {
                fresh.insert(key, self.new_mailbox(&p.mailbox, None)?);
            }
        }
        let uids = self.uid_lock.lock().expect("uid lock");
        let result = (
            &self.mailboxes,
            &self.messages,
            &self.blobrefs,
            &self.queue,
            &self.pending,
        )
            .transaction(|(mbx, msgs, refs, queued, pending)| {
                let mut placed = Vec::new();
                let mut blob_ids = blobs.iter();
                for (message, placements) in &filed {
                    let blob = *blob_ids.next().expect("one blob per body");
                    refs.insert(
                        &blob.to_be_bytes(),
                        &(placements.len() as u32).to_be_bytes(),
                    )?;
                    for p in placements.iter() {
                        if !placed.is_empty() && self.failpoints.fire("ingest-after-placement") {
                            return abort(StoreError::Backend(
                                "failpoint ingest-after-placement".into(),
                            ));
                        }
                        let user = normalize_address(&p.user);
                        let key = mbox_key(&user, &canonical_mailbox(&p.mailbox));
                        let mut mb: Mailbox = match mbx.get(&key)? {
                            Some(v) => serde_json::from_slice(&v)
                                .map_err(|e| ConflictableTransactionError::Abort(e.into()))?,
                            None => match fresh.get(&key) {
                                Some(mb) => mb.clone(),
                                None => {
                                    return abort(StoreError::NotFound(format!(
                                        "mailbox {}",
                                        p.mailbox
                                    )));
                                }
                            },
                        };
                        let meta = MessageMeta {
                            uid: mb.uidnext,
                            blob,
                            size: message.len() as u64,
                            flags: p.flags.clone(),
                            internal_date,
                            modseq: mb.highest_modseq + 1,
                        };
                        mb.uidnext += 1;
                        mb.highest_modseq += 1;
                        mbx.insert(key, serde_json::to_vec(&mb).expect("json"))?;
                        msgs.insert(&msg_key(mb.id, meta.uid), meta.encode())?;
                        placed.push((user, mb.id, meta));
                    }
                }
                if let (Some(entry), Some(json)) = (&queue, &queue_json) {
                    refs.insert(&entry.blob.to_be_bytes(), &1u32.to_be_bytes())?;
                    queued.insert(entry.id.as_bytes(), json.as_slice())?;
                }
                for b in &blobs {
                    pending.remove(&b.to_be_bytes())?;
                }
                Ok(placed)
            })
            .map_err(tx_err);
        let placed = match result {
            Ok(placed) => placed,
            Err(e) => {
                drop(uids);
                forget(&blobs);
                return Err(e);
            }
        };
        for (user, id) in fresh_created(&fresh, &placed) {
            self.notify(user, Change::Created { name: id });
        }
        // Under `uid_lock`: a mailbox's changes reach its watchers in UID order.
        for (user, change) in appended(&placed) {
            self.notify(user, change);
        }
        drop(uids);
        Ok(Receipt {
            placed: placed
                .into_iter()
                .map(|(user, mailbox, meta)| Placed {
                    user,
                    mailbox,
                    uid: meta.uid,
                    modseq: meta.modseq,
                })
                .collect(),
        })
    }

    /// An ingest of one record needs no transaction: the record is written last, after its
    /// body and reference count, and it alone makes the message visible. sled recovers a
    /// prefix of its log, so a crash leaves the record with everything it needs or no
    /// record (and at most a UID gap, which no client can tell from an expunge). This is
    /// the hot path of inbound mail: a sled transaction seals the log buffer twice, which
    /// cost a third of the SMTP rate (BENCHMARKS.md, issue 21).
    fn write_placed(
        &self,
        internal_date: i64,
        (message, placements): (&[u8], &[Placement]),
        blob: u64,
    ) -> Result<Placed> {
        let p = &placements[0];
        let user = normalize_address(&p.user);
        let key = mbox_key(&user, &canonical_mailbox(&p.mailbox));
        self.blobrefs
            .insert(blob.to_be_bytes(), &1u32.to_be_bytes())?;
        let uids = self.uid_lock.lock().expect("uid lock");
        // The next UID and MODSEQ: one read-modify-write of the mailbox record (atomic
        // against the transactions of set_flags and expunge, which bump MODSEQ).
        let bump = || -> Result<Option<Mailbox>> {
            let (mut bad, mut newest) = (None, None);
            self.mailboxes.update_and_fetch(&key, |old| {
                // Called again when another writer got in first: only the last counts.
                (bad, newest) = (None, None);
                let old = old?;
                match serde_json::from_slice::<Mailbox>(old) {
                    Ok(mut mb) => {
                        mb.uidnext += 1;
                        mb.highest_modseq += 1;
                        let v = serde_json::to_vec(&mb).expect("json");
                        newest = Some(mb);
                        Some(v)
                    }
                    Err(e) => {
                        bad = Some(e);
                        Some(old.to_vec())
                    }
                }
            })?;
            match bad {
                Some(e) => Err(e.into()),
                None => Ok(newest),
            }
        };
        let mb = match bump()? {
            Some(mb) => mb,
            // A missing folder (file_into) is created first.
            None => {
                let fresh = self.new_mailbox(&p.mailbox, None)?;
                let made = self.mailboxes.compare_and_swap(
                    &key,
                    None as Option<&[u8]>,
                    Some(serde_json::to_vec(&fresh)?),
                )?;
                if made.is_ok() {
                    self.notify(&user, Change::Created { name: fresh.name });
                }
                bump()?.ok_or_else(|| StoreError::NotFound(format!("mailbox {}", p.mailbox)))?
            }
        };
        let meta = MessageMeta {
            uid: mb.uidnext - 1,
            blob,
            size: message.len() as u64,
            flags: p.flags.clone(),
            internal_date,
            modseq: mb.highest_modseq,
        };
        self.messages
            .insert(msg_key(mb.id, meta.uid), meta.encode())?;
        self.notify(
            &user,
            Change::Appended {
                mailbox: mb.id,
                messages: vec![meta.clone()],
            },
        );
        drop(uids);
        Ok(Placed {
            user,
            mailbox: mb.id,
            uid: meta.uid,
            modseq: meta.modseq,
        })
    }

    /// A queue entry alone: written last, after its body and reference count.
    fn write_queued(&self, entry: &QueueEntry, json: &[u8]) -> Result<()> {
        self.blobrefs
            .insert(entry.blob.to_be_bytes(), &1u32.to_be_bytes())?;
        self.queue.insert(entry.id.as_bytes(), json)?;
        Ok(())
    }

    /// Change queue entry `id` in place, atomically, if `owner` holds its lease.
    fn change_owned(&self, id: &str, owner: &str, change: &dyn Fn(&mut QueueEntry)) -> Result<()> {
        let mut outcome = Ok(());
        let prev = self.queue.fetch_and_update(id.as_bytes(), |old| {
            let old = old?;
            // Called again when another writer got in first: only the last call counts.
            outcome = Ok(());
            match serde_json::from_slice::<QueueEntry>(old) {
                Ok(mut e) if e.leased_by(owner) => {
                    change(&mut e);
                    Some(serde_json::to_vec(&e).expect("json"))
                }
                Ok(_) => {
                    outcome = Err(lease_lost(id));
                    Some(old.to_vec())
                }
                Err(err) => {
                    outcome = Err(err.into());
                    Some(old.to_vec())
                }
            }
        })?;
        match prev {
            Some(_) => outcome,
            None => Err(StoreError::NotFound(format!("queue entry {id}"))),
        }
    }

    /// sled allows one process, so a lease found at open (of a queue entry, a maildrop, a
    /// session slot) belongs to a process that is gone: free again at once rather than when
    /// it runs out.
    fn drop_leases(&self) -> Result<()> {
        for item in self.queue.iter() {
            let (key, v) = item?;
            let mut e: QueueEntry = serde_json::from_slice(&v)?;
            if e.lease.take().is_some() {
                self.queue.insert(key, serde_json::to_vec(&e)?)?;
            }
        }
        Ok(())
    }

    /// Remove the bodies of ingests that a crash interrupted before their transaction.
    fn forget_pending(&self) -> Result<()> {
        for key in self.pending.iter().keys() {
            let key = key?;
            let blob = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0; 8]));
            if self.blobrefs.get(blob.to_be_bytes())?.is_none() {
                self.blobs.remove(blob)?;
            }
            self.pending.remove(key)?;
        }
        Ok(())
    }
}

/// The mailboxes an ingest created (file_into a new folder): (account, name).
fn fresh_created<'a>(
    fresh: &'a std::collections::HashMap<Vec<u8>, Mailbox>,
    placed: &'a [(String, u64, MessageMeta)],
) -> Vec<(&'a str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    for mb in fresh.values() {
        if let Some((user, _, _)) = placed.iter().find(|(_, id, _)| *id == mb.id)
            && !out.iter().any(|(u, n)| u == user && *n == mb.name)
        {
            out.push((user, mb.name.clone()));
        }
    }
    out
}

fn id_of(e: &QueueEntry) -> &str {
    &e.id
}

fn abort<T>(e: StoreError) -> std::result::Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

impl MailStore for SledStore {
    fn commit(&self) -> Commit {
        self.committer.commit()
    }
}

#[async_trait::async_trait]
impl Directory for SledStore {
    async fn create_account(&self, address: &str, password_hash: &str) -> Result<()> {
        let address = normalize_address(address);
        let account = Account {
            address: address.clone(),
            password_hash: password_hash.into(),
            created: now(),
        };
        let mut boxes = Vec::new();
        for (name, special) in DEFAULT_MAILBOXES {
            boxes.push(self.new_mailbox(name, *special)?);
        }
        (&self.accounts, &self.mailboxes)
            .transaction(|(acc, mbx)| {
                if acc.get(address.as_bytes())?.is_some() {
                    return abort(StoreError::Exists(format!("account {address}")));
                }
                acc.insert(
                    address.as_bytes(),
                    serde_json::to_vec(&account).expect("json"),
                )?;
                for b in &boxes {
                    mbx.insert(
                        mbox_key(&address, &b.name),
                        serde_json::to_vec(b).expect("json"),
                    )?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        // A new account's mailboxes are subscribed, so clients that show only subscribed
        // folders show them (Dovecot's `auto = subscribe`).
        for b in &boxes {
            self.subscriptions
                .insert(mbox_key(&address, &b.name), &[])?;
        }
        Ok(())
    }

    async fn delete_account(&self, address: &str) -> Result<()> {
        let address = normalize_address(address);
        if self.accounts.remove(address.as_bytes())?.is_none() {
            return Err(StoreError::NotFound(format!("account {address}")));
        }
        let mut prefix = address.as_bytes().to_vec();
        prefix.push(0);
        let _uids = self.uid_lock.lock().expect("uid lock");
        for item in self.mailboxes.scan_prefix(&prefix) {
            let (k, v) = item?;
            let mb: Mailbox = serde_json::from_slice(&v)?;
            let cleanup = (|| -> Result<()> {
                for m in self.read_messages(mb.id)? {
                    self.messages.remove(msg_key(mb.id, m.uid))?;
                    release_blob(&self.blobrefs, &self.blobs, m.blob)?;
                }
                self.mailboxes.remove(k)?;
                Ok(())
            })();
            // Announced whatever the cleanup met, so caches drop the mailbox.
            self.watchers.mailbox_deleted(&address, &mb, Vec::new());
            cleanup?;
        }
        for item in self.subscriptions.scan_prefix(&prefix) {
            let (k, _) = item?;
            self.subscriptions.remove(k)?;
        }
        Ok(())
    }

    async fn account(&self, address: &str) -> Result<Option<Account>> {
        match self.accounts.get(normalize_address(address).as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn account_exists(&self, address: &str) -> Result<bool> {
        Ok(self
            .accounts
            .contains_key(normalize_address(address).as_bytes())?)
    }

    async fn accounts(&self) -> Result<Vec<Account>> {
        self.accounts
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        let key = normalize_address(address);
        update_json(
            &self.accounts,
            key.as_bytes(),
            || format!("account {key}"),
            |a: &mut Account| a.password_hash = password_hash.into(),
        )
    }

    async fn add_domain(&self, domain: &str) -> Result<()> {
        let d = domain.trim().to_lowercase();
        if self.domains.insert(d.as_bytes(), &[])?.is_some() {
            return Err(StoreError::Exists(format!("domain {d}")));
        }
        Ok(())
    }

    async fn delete_domain(&self, domain: &str) -> Result<()> {
        let d = domain.trim().to_lowercase();
        match self.domains.remove(d.as_bytes())? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("domain {d}"))),
        }
    }

    async fn domains(&self) -> Result<Vec<String>> {
        self.domains
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    async fn set_alias(&self, alias: &str, targets: &[String]) -> Result<()> {
        let targets: Vec<String> = targets.iter().map(|t| normalize_address(t)).collect();
        self.aliases.insert(
            normalize_address(alias).as_bytes(),
            serde_json::to_vec(&targets)?,
        )?;
        Ok(())
    }

    async fn delete_alias(&self, alias: &str) -> Result<()> {
        let a = normalize_address(alias);
        match self.aliases.remove(a.as_bytes())? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("alias {a}"))),
        }
    }

    async fn alias(&self, alias: &str) -> Result<Option<Vec<String>>> {
        match self.aliases.get(normalize_address(alias).as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn aliases(&self) -> Result<Vec<(String, Vec<String>)>> {
        self.aliases
            .iter()
            .map(|r| {
                let (k, v) = r?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    serde_json::from_slice(&v)?,
                ))
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Mailboxes for SledStore {
    async fn mailboxes(&self, user: &str) -> Result<Vec<Mailbox>> {
        let mut prefix = normalize_address(user).into_bytes();
        prefix.push(0);
        self.mailboxes
            .scan_prefix(&prefix)
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    async fn mailbox(&self, user: &str, name: &str) -> Result<Option<Mailbox>> {
        match self
            .mailboxes
            .get(mbox_key(&normalize_address(user), &canonical_mailbox(name)))?
        {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn create_mailbox(
        &self,
        user: &str,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<Mailbox> {
        let user = normalize_address(user);
        let mb = self.new_mailbox(name, special_use)?;
        let key = mbox_key(&user, &mb.name);
        match self.mailboxes.compare_and_swap(
            key,
            None as Option<&[u8]>,
            Some(serde_json::to_vec(&mb)?),
        )? {
            Ok(()) => {
                self.notify(
                    &user,
                    Change::Created {
                        name: mb.name.clone(),
                    },
                );
                Ok(mb)
            }
            Err(_) => Err(StoreError::Exists(format!("mailbox {}", mb.name))),
        }
    }

    async fn ingest(&self, ingest: Ingest) -> Result<Receipt> {
        if ingest.is_empty() {
            return Ok(Receipt::default());
        }
        let receipt = {
            let (filed, queue) = ingest.parts();
            self.write_ingest(ingest.internal_date, &filed, queue)?
        };
        self.commit().await?;
        Ok(receipt)
    }

    async fn deliver(
        &self,
        message: &[u8],
        internal_date: i64,
        to: &[Placement],
    ) -> Result<Vec<u32>> {
        if to.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .write_ingest(internal_date, &[(message, to)], None)?
            .placed
            .into_iter()
            .map(|p| p.uid)
            .collect())
    }

    async fn messages(&self, mailbox_id: u64) -> Result<Vec<MessageMeta>> {
        self.read_messages(mailbox_id)
    }

    async fn message(&self, mailbox_id: u64, uid: u32) -> Result<Option<MessageMeta>> {
        match self.messages.get(msg_key(mailbox_id, uid))? {
            Some(v) => Ok(Some(MessageMeta::decode(&v)?)),
            None => Ok(None),
        }
    }

    async fn set_flags(
        &self,
        user: &str,
        mailbox_id: u64,
        changes: &[(u32, Vec<String>)],
    ) -> Result<Vec<(u32, u64)>> {
        let user = normalize_address(user);
        let mbkey = self.mailbox_key_by_id(&user, mailbox_id)?;
        let modseq = (&self.mailboxes, &self.messages)
            .transaction(|(mbx, msgs)| {
                let Some(v) = mbx.get(&mbkey)? else {
                    return abort(StoreError::NotFound("mailbox".into()));
                };
                let mut mb: Mailbox = serde_json::from_slice(&v)
                    .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                let mut done = Vec::with_capacity(changes.len());
                for (uid, flags) in changes {
                    let key = msg_key(mailbox_id, *uid);
                    let Some(v) = msgs.get(key)? else { continue };
                    let mut meta =
                        MessageMeta::decode(&v).map_err(ConflictableTransactionError::Abort)?;
                    mb.highest_modseq += 1;
                    meta.flags = flags.clone();
                    meta.modseq = mb.highest_modseq;
                    msgs.insert(&key, meta.encode())?;
                    done.push((*uid, meta.modseq));
                }
                mbx.insert(mbkey.clone(), serde_json::to_vec(&mb).expect("json"))?;
                Ok(done)
            })
            .map_err(tx_err)?;
        let cached: Vec<(u32, Vec<String>, u64)> = modseq
            .iter()
            .filter_map(|(uid, ms)| {
                let flags = changes.iter().find(|(u, _)| u == uid)?.1.clone();
                Some((*uid, flags, *ms))
            })
            .collect();
        self.notify(
            &user,
            Change::Flags {
                mailbox: mailbox_id,
                changes: cached,
            },
        );
        Ok(modseq)
    }

    async fn expunge(&self, user: &str, mailbox_id: u64, uids: &[u32]) -> Result<Vec<u32>> {
        let user = normalize_address(user);
        let mbkey = self.mailbox_key_by_id(&user, mailbox_id)?;
        let removed = (&self.mailboxes, &self.messages, &self.vanished)
            .transaction(|(mbx, msgs, gone)| {
                let mut removed = Vec::new();
                for uid in uids {
                    if let Some(v) = msgs.remove(&msg_key(mailbox_id, *uid))? {
                        let meta =
                            MessageMeta::decode(&v).map_err(ConflictableTransactionError::Abort)?;
                        removed.push((meta.uid, meta.blob));
                    }
                }
                // Nothing removed, nothing changed: HIGHESTMODSEQ stays (RFC 7162 §3.1.2), or
                // every client's resync after an empty CLOSE/EXPUNGE would start over.
                let mut modseq = 0;
                if !removed.is_empty()
                    && let Some(v) = mbx.get(&mbkey)?
                {
                    let mut mb: Mailbox = serde_json::from_slice(&v)
                        .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                    mb.highest_modseq += 1;
                    modseq = mb.highest_modseq;
                    mbx.insert(mbkey.clone(), serde_json::to_vec(&mb).expect("json"))?;
                    for (uid, _) in &removed {
                        gone.insert(&msg_key(mailbox_id, *uid), &modseq.to_be_bytes())?;
                    }
                }
                Ok((removed, modseq))
            })
            .map_err(tx_err)?;
        let (removed, modseq) = removed;
        let uids_gone: Vec<u32> = removed.iter().map(|(u, _)| *u).collect();
        // Announced as soon as it is written: a failure freeing a body below must not leave
        // caches and sessions showing messages that are gone.
        if !removed.is_empty() {
            self.notify(
                &user,
                Change::Expunged {
                    mailbox: mailbox_id,
                    uids: uids_gone.clone(),
                    modseq,
                },
            );
        }
        for (_, blob) in &removed {
            release_blob(&self.blobrefs, &self.blobs, *blob)?;
        }
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
        let tokey = mbox_key(&user, &canonical_mailbox(to));
        let uids_guard = self.uid_lock.lock().expect("uid lock");
        let result = (&self.mailboxes, &self.messages, &self.blobrefs)
            .transaction(|(mbx, msgs, refs)| {
                let Some(v) = mbx.get(&tokey)? else {
                    return abort(StoreError::NotFound(format!("mailbox {to}")));
                };
                let mut mb: Mailbox = serde_json::from_slice(&v)
                    .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                let mut pairs = Vec::new();
                let mut metas = Vec::new();
                for uid in uids {
                    let Some(v) = msgs.get(msg_key(from_id, *uid))? else {
                        continue;
                    };
                    let mut meta =
                        MessageMeta::decode(&v).map_err(ConflictableTransactionError::Abort)?;
                    let new_uid = mb.uidnext;
                    mb.uidnext += 1;
                    mb.highest_modseq += 1;
                    meta.uid = new_uid;
                    meta.modseq = mb.highest_modseq;
                    msgs.insert(&msg_key(mb.id, new_uid), meta.encode())?;
                    let key = meta.blob.to_be_bytes();
                    let n = refs
                        .get(key)?
                        .map(|b| u32::from_be_bytes(b.as_ref().try_into().unwrap_or([0; 4])))
                        .unwrap_or(0);
                    refs.insert(&key, &(n + 1).to_be_bytes())?;
                    pairs.push((*uid, new_uid));
                    metas.push(meta);
                }
                mbx.insert(tokey.clone(), serde_json::to_vec(&mb).expect("json"))?;
                Ok((mb.uidvalidity, mb.id, pairs, metas))
            })
            .map_err(tx_err)?;
        if !result.2.is_empty() {
            self.notify(
                &user,
                Change::Appended {
                    mailbox: result.1,
                    messages: result.3,
                },
            );
        }
        drop(uids_guard);
        Ok((result.0, result.2))
    }

    async fn expunged_since(
        &self,
        user: &str,
        mailbox_id: u64,
        modseq: u64,
    ) -> Result<(Vec<u32>, bool)> {
        let key = self.mailbox_key_by_id(&normalize_address(user), mailbox_id)?;
        let mut expunged = Vec::new();
        for item in self.vanished.scan_prefix(mailbox_id.to_be_bytes()) {
            let (k, v) = item?;
            let at = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            if at > modseq {
                expunged.push(u32::from_be_bytes(k[8..12].try_into().unwrap_or([0; 4])));
            }
        }
        let complete = match self.mailboxes.get(key)? {
            Some(v) => serde_json::from_slice::<Mailbox>(&v)?.logs_expunges,
            None => false,
        };
        Ok((expunged, complete))
    }

    async fn delete_mailbox(&self, user: &str, name: &str) -> Result<()> {
        let user = normalize_address(user);
        let name = canonical_mailbox(name);
        if is_inbox(&name) {
            return Err(StoreError::Invalid("INBOX cannot be deleted".into()));
        }
        let _uids = self.uid_lock.lock().expect("uid lock");
        let Some(v) = self.mailboxes.remove(mbox_key(&user, &name))? else {
            return Err(StoreError::NotFound(format!("mailbox {name}")));
        };
        let mb: Mailbox = serde_json::from_slice(&v)?;
        let uids: Vec<u32> = self.read_messages(mb.id)?.iter().map(|m| m.uid).collect();
        let cleanup = (|| -> Result<()> {
            for uid in &uids {
                if let Some(v) = self.messages.remove(msg_key(mb.id, *uid))? {
                    release_blob(&self.blobrefs, &self.blobs, MessageMeta::decode(&v)?.blob)?;
                }
            }
            self.recent.remove(mb.id.to_be_bytes())?;
            for key in self.vanished.scan_prefix(mb.id.to_be_bytes()).keys() {
                self.vanished.remove(key?)?;
            }
            Ok(())
        })();
        // The mailbox is gone whatever the cleanup met: sessions that have it selected see
        // its messages go, then the mailbox, and caches drop it.
        self.watchers.mailbox_deleted(&user, &mb, uids);
        cleanup
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
        let Some(mut mb) = self.mailbox(&user, &from).await? else {
            return Err(StoreError::NotFound(format!("mailbox {from}")));
        };
        if is_inbox(&from) {
            return rename_inbox(self, &user, mb.id, &to).await;
        }
        // Children move with their parent.
        let prefix = format!("{from}/");
        let mut moves = vec![(from.clone(), to.clone())];
        for m in self.mailboxes(&user).await? {
            if let Some(rest) = m.name.strip_prefix(&prefix) {
                moves.push((m.name.clone(), format!("{to}/{rest}")));
            }
        }
        let _uids = self.uid_lock.lock().expect("uid lock");
        for (old, new) in moves {
            if let Some(v) = self.mailboxes.remove(mbox_key(&user, &old))? {
                mb = serde_json::from_slice(&v)?;
                mb.name = new.clone();
                self.mailboxes
                    .insert(mbox_key(&user, &new), serde_json::to_vec(&mb)?)?;
                self.notify(
                    &user,
                    Change::Renamed {
                        mailbox: mb.id,
                        from: old.clone(),
                        to: new.clone(),
                    },
                );
            }
            // A subscription follows its mailbox's new name (as Dovecot does).
            if self.subscriptions.remove(mbox_key(&user, &old))?.is_some() {
                self.subscriptions.insert(mbox_key(&user, &new), &[])?;
            }
        }
        Ok(())
    }

    async fn set_subscribed(&self, user: &str, name: &str, subscribed: bool) -> Result<()> {
        let user = normalize_address(user);
        let key = mbox_key(&user, &canonical_mailbox(name));
        let changed = if subscribed {
            self.subscriptions.insert(key, &[])?.is_none()
        } else {
            self.subscriptions.remove(key)?.is_some()
        };
        if changed {
            self.notify(
                &user,
                Change::Subscription {
                    name: canonical_mailbox(name),
                    subscribed,
                },
            );
        }
        Ok(())
    }

    async fn subscriptions(&self, user: &str) -> Result<Vec<String>> {
        let mut prefix = normalize_address(user).into_bytes();
        prefix.push(0);
        let mut out = Vec::new();
        for item in self.subscriptions.scan_prefix(&prefix) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    async fn claim_recent(&self, mailbox_id: u64, up_to: u32, claim: bool) -> Result<u32> {
        let key = mailbox_id.to_be_bytes();
        let read = |v: Option<&[u8]>| {
            v.and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0)
        };
        let now = read(self.recent.get(key)?.as_deref());
        // Nothing to take (most SELECTs): no write at all.
        if !claim || now >= up_to {
            return Ok(now);
        }
        let prev = self
            .recent
            .fetch_and_update(key, |old| Some(read(old).max(up_to).to_be_bytes().to_vec()))?;
        Ok(read(prev.as_deref()))
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
        let mbkey = self.mailbox_key_by_id(&user, mailbox_id)?;
        // Read-modify-write in one transaction: sled retries it on conflict, so two
        // sessions adding different flags to one message both see their flag stored.
        let result = (&self.mailboxes, &self.messages)
            .transaction(|(mbx, msgs)| {
                let Some(v) = mbx.get(&mbkey)? else {
                    return abort(StoreError::NotFound("mailbox".into()));
                };
                let mut mb: Mailbox = serde_json::from_slice(&v)
                    .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                let mut out = Vec::with_capacity(uids.len());
                let mut modified = Vec::new();
                for uid in uids {
                    let key = msg_key(mailbox_id, *uid);
                    let Some(v) = msgs.get(key)? else { continue };
                    let mut meta =
                        MessageMeta::decode(&v).map_err(ConflictableTransactionError::Abort)?;
                    if unchanged_since.is_some_and(|u| meta.modseq > u) {
                        modified.push(*uid);
                        continue;
                    }
                    let new = op.apply(&meta.flags, flags);
                    let changed = new != meta.flags;
                    if changed {
                        mb.highest_modseq += 1;
                        meta.flags = new;
                        meta.modseq = mb.highest_modseq;
                        msgs.insert(&key, meta.encode())?;
                    }
                    out.push(FlagUpdate {
                        uid: *uid,
                        flags: meta.flags,
                        modseq: meta.modseq,
                        changed,
                    });
                }
                if out.iter().any(|u| u.changed) {
                    mbx.insert(mbkey.clone(), serde_json::to_vec(&mb).expect("json"))?;
                }
                Ok((out, modified))
            })
            .map_err(tx_err)?;
        if result.0.iter().any(|u| u.changed) {
            let cached: Vec<(u32, Vec<String>, u64)> = result
                .0
                .iter()
                .filter(|u| u.changed)
                .map(|u| (u.uid, u.flags.clone(), u.modseq))
                .collect();
            self.notify(
                &user,
                Change::Flags {
                    mailbox: mailbox_id,
                    changes: cached,
                },
            );
        }
        Ok(result)
    }
}

#[async_trait::async_trait]
impl Blobs for SledStore {
    async fn blob(&self, blob: u64) -> Result<Vec<u8>> {
        self.blobs
            .get(blob)?
            .ok_or_else(|| StoreError::NotFound(format!("message blob {blob}")))
    }
}

#[async_trait::async_trait]
impl Queue for SledStore {
    async fn enqueue(&self, entry: QueueEntry, message: &[u8]) -> Result<()> {
        self.write_ingest(0, &[], Some((&entry, message)))
            .map(|_| ())
    }

    async fn queue(&self) -> Result<Vec<QueueEntry>> {
        self.queue
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    async fn queue_entry(&self, id: &str) -> Result<Option<QueueEntry>> {
        match self.queue.get(id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn queue_update(&self, entry: &QueueEntry) -> Result<()> {
        let new = serde_json::to_vec(entry)?;
        // Replace only an entry that is still there (atomically: a delete between a read and
        // an insert would otherwise be undone, and the entry's blob is already released).
        let prev = self
            .queue
            .fetch_and_update(entry.id.as_bytes(), |old| old.map(|_| new.clone()))?;
        match prev {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("queue entry {}", entry.id))),
        }
    }

    async fn queue_due_now(&self, id: &str) -> Result<()> {
        update_json(
            &self.queue,
            id.as_bytes(),
            || format!("queue entry {id}"),
            |e: &mut QueueEntry| e.next_attempt = 0,
        )
    }

    async fn queue_remove(&self, id: &str) -> Result<()> {
        let Some(v) = self.queue.remove(id.as_bytes())? else {
            return Err(StoreError::NotFound(format!("queue entry {id}")));
        };
        let entry: QueueEntry = serde_json::from_slice(&v)?;
        release_blob(&self.blobrefs, &self.blobs, entry.blob)?;
        Ok(())
    }

    async fn queue_claim(
        &self,
        owner: &str,
        now: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Claimed> {
        let mut claimed = Claimed::default();
        let mut sooner = |t: i64| claimed_next(&mut claimed.next, t);
        let mut entries = Vec::new();
        for item in self.queue.iter() {
            let (key, old) = item?;
            let mut e: QueueEntry = serde_json::from_slice(&old)?;
            if !e.claimable(now) {
                match &e.lease {
                    Some(l) if e.next_attempt <= now => sooner(l.until),
                    _ => sooner(e.next_attempt),
                }
                continue;
            }
            if entries.len() >= limit {
                sooner(now);
                continue;
            }
            e.lease = Some(Lease {
                owner: owner.to_string(),
                until: now + lease,
            });
            // Only if nobody changed it since it was read (another runner's claim).
            if self
                .queue
                .compare_and_swap(&key, Some(old), Some(serde_json::to_vec(&e)?))?
                .is_ok()
            {
                entries.push(e);
            }
        }
        claimed.entries = entries;
        Ok(claimed)
    }

    async fn queue_renew(&self, id: &str, owner: &str, until: i64) -> Result<()> {
        self.change_owned(id, owner, &|e| {
            if let Some(l) = e.lease.as_mut() {
                l.until = until;
            }
        })
    }

    async fn queue_save(&self, entry: &QueueEntry, owner: &str, release: bool) -> Result<()> {
        self.change_owned(id_of(entry), owner, &|e| {
            let lease = e.lease.take();
            *e = entry.clone();
            e.lease = if release { None } else { lease };
        })
    }

    async fn queue_complete(&self, id: &str, owner: &str) -> Result<()> {
        loop {
            let Some(old) = self.queue.get(id.as_bytes())? else {
                return Err(StoreError::NotFound(format!("queue entry {id}")));
            };
            let e: QueueEntry = serde_json::from_slice(&old)?;
            if !e.leased_by(owner) {
                return Err(lease_lost(id));
            }
            if self
                .queue
                .compare_and_swap(id.as_bytes(), Some(old), None as Option<&[u8]>)?
                .is_ok()
            {
                return release_blob(&self.blobrefs, &self.blobs, e.blob);
            }
        }
    }
}

#[async_trait::async_trait]
impl Leases for SledStore {
    /// In memory: sled allows one process, and a lease is about processes, so nothing is
    /// gained by writing it (and it cost two log writes per IMAP login, 15 % of the IMAP
    /// benchmark). A backend shared by several processes keeps them in the database.
    async fn lease_take(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        let mut leases = self.leases.lock().expect("leases");
        match leases.get(name) {
            Some((h, u)) if *u > now && h != holder => Ok(false),
            _ => {
                leases.insert(name.to_string(), (holder.to_string(), until));
                Ok(true)
            }
        }
    }

    async fn lease_drop(&self, name: &str, holder: &str) -> Result<()> {
        let mut leases = self.leases.lock().expect("leases");
        if leases.get(name).is_some_and(|(h, _)| h == holder) {
            leases.remove(name);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Kv for SledStore {
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let k = mbox_key(ns, key);
        match self.kv.get(&k)? {
            Some(v) if v.len() >= 8 => {
                let exp = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                if exp != 0 && exp <= now() {
                    self.kv.remove(&k)?;
                    Ok(None)
                } else {
                    Ok(Some(v[8..].to_vec()))
                }
            }
            _ => Ok(None),
        }
    }

    async fn kv_set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<u64>) -> Result<()> {
        let exp = ttl.map(|t| now() + t as i64).unwrap_or(0);
        let mut v = exp.to_be_bytes().to_vec();
        v.extend_from_slice(value);
        self.kv.insert(mbox_key(ns, key), v)?;
        Ok(())
    }

    async fn kv_incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u64>) -> Result<i64> {
        let now = now();
        let fresh_exp = ttl.map(|t| now + t as i64).unwrap_or(0);
        let new = self.kv.update_and_fetch(mbox_key(ns, key), |old| {
            let (exp, n) = match old {
                Some(v) if v.len() >= 8 => {
                    let exp = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                    if exp != 0 && exp <= now {
                        (fresh_exp, 0)
                    } else {
                        let n = std::str::from_utf8(&v[8..])
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                            .unwrap_or(0);
                        (exp, n)
                    }
                }
                _ => (fresh_exp, 0),
            };
            let mut v = exp.to_be_bytes().to_vec();
            v.extend_from_slice(n.saturating_add(delta).to_string().as_bytes());
            Some(v)
        })?;
        let v = new.expect("update_and_fetch always stores a value");
        Ok(std::str::from_utf8(&v[8..])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }
}

impl Feed for SledStore {
    fn watch(&self, user: &str) -> Changes {
        self.watchers.watch(user)
    }

    fn observe(&self, sink: Observer) {
        self.watchers.observe(sink);
    }
}

/// Drop one reference to a blob, deleting it with the last one.
/// Change the JSON record at `key` in place, atomically (sled `fetch_and_update`): `NotFound`
/// (naming `what`) when it is not there, so that a concurrent delete is never undone by a
/// stale copy written back.
fn update_json<T: Serialize + serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    what: impl FnOnce() -> String,
    change: impl Fn(&mut T),
) -> Result<()> {
    let mut bad = None;
    let prev = tree.fetch_and_update(key, |old| {
        let old = old?;
        match serde_json::from_slice::<T>(old) {
            Ok(mut v) => {
                change(&mut v);
                serde_json::to_vec(&v).ok().or_else(|| Some(old.to_vec()))
            }
            Err(e) => {
                bad = Some(e);
                Some(old.to_vec())
            }
        }
    })?;
    match (bad, prev) {
        (Some(e), _) => Err(e.into()),
        (None, Some(_)) => Ok(()),
        (None, None) => Err(StoreError::NotFound(what())),
    }
}

fn release_blob(refs: &sled::Tree, blobs: &Bodies, blob: u64) -> Result<()> {
    let key = blob.to_be_bytes();
    let left = refs.update_and_fetch(key, |old| {
        let n = old
            .map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])))
            .unwrap_or(0);
        if n <= 1 {
            None
        } else {
            Some((n - 1).to_be_bytes().to_vec())
        }
    })?;
    if left.is_none() {
        blobs.remove(blob)?;
    }
    Ok(())
}

/// Message bodies, stored in chunks of [`CHUNK`] bytes (tree `chunks`, key blob id ‖ chunk
/// number, both big-endian).
///
/// Why chunks: sled 0.34 splits a leaf node at 17 entries whatever their size, and writes a
/// node bigger than a quarter of a segment (128 KiB) as a file of its own under `blobs/`.
/// Whole bodies of 20 KB made such nodes, and sled never deleted those files once the
/// messages were expunged (120,000 appended and expunged messages left 984 MB for 230 live
/// ones). Chunks of 6 KiB keep every node inside sled's segments, whose space sled cleans
/// and reuses. Bodies written whole by earlier versions (tree `blobs`) are still read and
/// released.
struct Bodies {
    whole: sled::Tree,
    chunks: sled::Tree,
}

/// Records a scan reads on the calling task before the rest goes to `block_in_place`.
const INLINE_SCAN: usize = 1024;

/// sled's page cache (its default is 1 GiB). Bodies pass through it as chunks, and what it
/// holds stays in the process after the messages are handled; the metadata of big
/// mailboxes has its own cache (the `Cached` layer), so 256 MiB keeps sled's small trees and
/// recent bodies warm without holding a gigabyte of old mail.
const CACHE_CAPACITY: u64 = 256 << 20;

/// Size of one body chunk: the largest that keeps a full leaf (17 entries) under sled's
/// blob threshold of a quarter segment (128 KiB), with room for keys and node overhead.
const CHUNK: usize = 6 * 1024;

fn chunk_key(blob: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&blob.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

impl Bodies {
    fn insert(&self, blob: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            self.chunks.insert(chunk_key(blob, 0), &[][..])?;
        }
        for (n, part) in bytes.chunks(CHUNK).enumerate() {
            self.chunks.insert(chunk_key(blob, n as u32), part)?;
        }
        Ok(())
    }

    fn get(&self, blob: u64) -> Result<Option<Vec<u8>>> {
        // Point lookups, not a prefix scan: each step of a sled 0.34 iterator clones the
        // whole leaf (17 chunks, ~100 KiB), which made reading a body several times slower.
        // Chunks first: the tree of whole bodies is looked at only for what is not there.
        let Some(first) = self.chunks.get(chunk_key(blob, 0))? else {
            return Ok(self.whole.get(blob.to_be_bytes())?.map(|v| v.to_vec()));
        };
        if first.len() < CHUNK {
            return Ok(Some(first.to_vec())); // most mail: one chunk
        }
        let mut out = first.to_vec();
        for n in 1.. {
            match self.chunks.get(chunk_key(blob, n))? {
                Some(v) => {
                    out.extend_from_slice(&v);
                    // A short chunk is the last one; only an exact multiple needs the miss.
                    if v.len() < CHUNK {
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(Some(out))
    }

    fn remove(&self, blob: u64) -> Result<()> {
        self.whole.remove(blob.to_be_bytes())?;
        // One removal per chunk rather than a batch: a sled batch takes the store-wide write
        // lock that waits for a flush in progress (see `deliver`).
        for n in 0.. {
            if self.chunks.remove(chunk_key(blob, n))?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocking::Wait;

    /// A queue entry from a@x.example, not due for a long time.
    fn queued(id: &str, rcpts: Vec<QueueRcpt>) -> QueueEntry {
        QueueEntry {
            id: id.into(),
            mail_from: "a@x.example".into(),
            rcpts,
            ret: None,
            envid: None,
            created: 1,
            next_attempt: 9_999_999_999,
            attempts: 0,
            last_error: None,
            blob: 0,
            smtputf8: false,
            decisions: Vec::new(),
            warned: false,
            lease: None,
        }
    }

    #[tokio::test]
    async fn a_deleted_queue_entry_is_not_brought_back_by_a_stale_update() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        let entry = queued("Q1", Vec::new());
        s.enqueue(entry, b"message").await.unwrap();
        // A delivery attempt read the entry; meanwhile the admin deletes it.
        let mut seen = s.queue_entry("Q1").await.unwrap().unwrap();
        s.queue_remove("Q1").await.unwrap();
        seen.attempts = 1;
        seen.last_error = Some("connection refused".into());
        assert!(matches!(
            s.queue_update(&seen).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(s.queue().await.unwrap().is_empty());
        assert!(s.queue_entry("Q1").await.unwrap().is_none());
        // An entry that is still there is updated.
        let mut e = seen.clone();
        e.id = "Q2".into();
        s.enqueue(e, b"other").await.unwrap();
        let mut e = s.queue_entry("Q2").await.unwrap().unwrap();
        e.attempts = 3;
        s.queue_update(&e).await.unwrap();
        assert_eq!(s.queue_entry("Q2").await.unwrap().unwrap().attempts, 3);
    }

    #[tokio::test]
    async fn a_password_change_does_not_recreate_a_deleted_account() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        s.create_account("bob@example.org", "old-hash")
            .await
            .unwrap();
        s.set_password("Bob@Example.org", "new-hash").await.unwrap();
        assert_eq!(
            s.account("bob@example.org")
                .await
                .unwrap()
                .unwrap()
                .password_hash,
            "new-hash"
        );
        s.delete_account("bob@example.org").await.unwrap();
        assert!(matches!(
            s.set_password("bob@example.org", "newer").await,
            Err(StoreError::NotFound(m)) if m == "account bob@example.org"
        ));
        assert!(s.account("bob@example.org").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn flush_changes_only_the_due_time_of_the_stored_entry() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        let rcpt = |a: &str| QueueRcpt {
            address: a.into(),
            notify: Vec::new(),
            orcpt: None,
        };
        let entry = queued("Q1", vec![rcpt("b@y.example"), rcpt("c@z.example")]);
        s.enqueue(entry, b"message").await.unwrap();
        // An attempt delivered to b@ and recorded that; a flush after it keeps that.
        let mut e = s.queue_entry("Q1").await.unwrap().unwrap();
        e.rcpts.remove(0);
        e.attempts = 1;
        s.queue_update(&e).await.unwrap();
        s.queue_due_now("Q1").await.unwrap();
        let now = s.queue_entry("Q1").await.unwrap().unwrap();
        assert_eq!(now.next_attempt, 0);
        assert_eq!(now.attempts, 1);
        assert_eq!(
            now.rcpts
                .iter()
                .map(|r| r.address.as_str())
                .collect::<Vec<_>>(),
            vec!["c@z.example"]
        );
        s.queue_remove("Q1").await.unwrap();
        assert!(matches!(
            s.queue_due_now("Q1").await,
            Err(StoreError::NotFound(_))
        ));
        assert!(s.queue().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn deliver_assigns_ascending_uids_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(d.path()).unwrap();
            s.create_account("Alice@Example.org", "x").await.unwrap();
            assert!(matches!(
                s.create_account("alice@example.org", "x").await,
                Err(StoreError::Exists(_))
            ));
            let p = Placement {
                user: "alice@example.org".into(),
                mailbox: "INBOX".into(),
                flags: vec![],
            };
            assert_eq!(
                s.deliver(b"one", 1, std::slice::from_ref(&p))
                    .await
                    .unwrap(),
                vec![1]
            );
            assert_eq!(s.deliver(b"two", 2, &[p]).await.unwrap(), vec![2]);
            s.db.flush().unwrap();
        }
        let s = SledStore::open(d.path()).unwrap();
        let inbox = s
            .mailbox("alice@example.org", "inbox")
            .await
            .unwrap()
            .unwrap();
        let msgs = s.messages(inbox.id).await.unwrap();
        assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.blob(msgs[1].blob).await.unwrap(), b"two");
        assert_eq!(
            s.mailboxes("alice@example.org").await.unwrap().len(),
            DEFAULT_MAILBOXES.len()
        );
    }

    #[tokio::test]
    async fn concurrent_deliveries_flag_changes_and_copies_keep_uids_and_modseqs() {
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open(d.path()).unwrap());
        s.create_account("a@x.org", "x").await.unwrap();
        let p = Placement {
            user: "a@x.org".into(),
            mailbox: "INBOX".into(),
            flags: vec![],
        };
        s.deliver(b"first", 1, std::slice::from_ref(&p))
            .await
            .unwrap();
        let inbox = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        let mut threads: Vec<_> = (0..4)
            .map(|t| {
                let (s, p) = (s.clone(), p.clone());
                std::thread::spawn(move || {
                    let mut last = 0;
                    for i in 0..50 {
                        let body = format!("t{t} m{i}");
                        let uid = s
                            .deliver(body.as_bytes(), 1, std::slice::from_ref(&p))
                            .wait()
                            .unwrap()[0];
                        assert!(uid > last, "UIDs ascend per deliverer");
                        last = uid;
                    }
                })
            })
            .collect();
        // Flag changes (transactions bumping MODSEQ on the same record) and copies (another
        // UID allocator) run at the same time.
        threads.push({
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    s.set_flags("a@x.org", inbox.id, &[(1, vec![format!("k{i}")])])
                        .wait()
                        .unwrap();
                    s.copy("a@x.org", inbox.id, &[1], "INBOX").wait().unwrap();
                }
            })
        });
        for t in threads {
            t.join().unwrap();
        }
        let msgs = s.messages(inbox.id).await.unwrap();
        let uids: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
        assert_eq!(uids, (1..=251).collect::<Vec<u32>>());
        let mb = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        assert_eq!(mb.uidnext, 252);
        let mut modseqs: Vec<u64> = msgs.iter().map(|m| m.modseq).collect();
        assert!(modseqs.iter().all(|&m| m <= mb.highest_modseq));
        modseqs.sort();
        modseqs.dedup();
        assert_eq!(modseqs.len(), msgs.len(), "every MODSEQ is distinct");
        // The cache and the tree agree.
        let cached = s.messages(inbox.id).await.unwrap();
        assert_eq!(cached.len(), msgs.len());
    }

    #[test]
    fn second_open_is_locked_not_hung() {
        let d = tempfile::tempdir().unwrap();
        let _a = SledStore::open(d.path()).unwrap();
        // sled locks per process with flock; a second open in the same process also fails.
        match SledStore::open(d.path()) {
            Err(StoreError::Locked(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened twice"),
        }
    }

    #[test]
    fn newer_format_is_refused() {
        let d = tempfile::tempdir().unwrap();
        {
            let db = sled::open(d.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("format", &99u32.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        // sled's background threads may hold the file lock for a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let r = loop {
            match SledStore::open(d.path()) {
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => break r,
            }
        };
        assert!(
            matches!(r, Err(StoreError::TooNew { found: 99, .. })),
            "{:?}",
            r.err()
        );
    }

    #[tokio::test]
    async fn update_flags_is_atomic_and_honours_unchangedsince() {
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open(d.path()).unwrap());
        s.create_account("a@x.org", "x").await.unwrap();
        let p = Placement {
            user: "a@x.org".into(),
            mailbox: "INBOX".into(),
            flags: vec!["\\Seen".into()],
        };
        s.deliver(b"m", 1, &[p]).await.unwrap();
        let mb = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        // Several threads add distinct keywords at once: none may be lost.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        s.update_flags(
                            "a@x.org",
                            mb.id,
                            &[1],
                            FlagOp::Add,
                            &[format!("k{t}_{i}")],
                            None,
                        )
                        .wait()
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let m = &s.messages(mb.id).await.unwrap()[0];
        assert_eq!(m.flags.len(), 101, "{:?}", m.flags);
        // An update that changes nothing keeps MODSEQ; a stale UNCHANGEDSINCE is refused.
        let (u, modified) = s
            .update_flags(
                "a@x.org",
                mb.id,
                &[1, 9],
                FlagOp::Add,
                &["\\seen".into()],
                None,
            )
            .await
            .unwrap();
        assert!(modified.is_empty());
        assert_eq!(u.len(), 1);
        assert!(!u[0].changed && u[0].modseq == m.modseq);
        let (u, modified) = s
            .update_flags(
                "a@x.org",
                mb.id,
                &[1],
                FlagOp::Replace,
                &[],
                Some(m.modseq - 1),
            )
            .await
            .unwrap();
        assert!(u.is_empty() && modified == vec![1]);
        let (u, _) = s
            .update_flags(
                "a@x.org",
                mb.id,
                &[1],
                FlagOp::Remove,
                &["k0_0".into()],
                Some(m.modseq),
            )
            .await
            .unwrap();
        assert!(u[0].changed && u[0].modseq > m.modseq && u[0].flags.len() == 100);
        let hm = s
            .mailbox("a@x.org", "INBOX")
            .await
            .unwrap()
            .unwrap()
            .highest_modseq;
        assert_eq!(hm, u[0].modseq);
    }

    #[tokio::test]
    async fn kv_expires() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        s.kv_set("grey", "k", b"v", None).await.unwrap();
        assert_eq!(s.kv_get("grey", "k").await.unwrap().unwrap(), b"v");
        assert!(s.kv_get("other", "k").await.unwrap().is_none());
        s.kv_set("grey", "gone", b"v", Some(0)).await.unwrap();
        assert!(s.kv_get("grey", "gone").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bodies_are_chunked_freed_with_their_last_reference_and_old_whole_bodies_still_read() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        s.create_account("a@x.org", "x").await.unwrap();
        let body: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let to = |mailbox: &str| Placement {
            user: "a@x.org".into(),
            mailbox: mailbox.into(),
            flags: vec![],
        };
        s.deliver(&body, 0, &[to("INBOX"), to("Archive")])
            .await
            .unwrap();
        let inbox = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        let meta = s.messages(inbox.id).await.unwrap()[0].clone();
        assert_eq!(s.blob(meta.blob).await.unwrap(), body);
        assert_eq!(
            s.blobs.chunks.scan_prefix(meta.blob.to_be_bytes()).count(),
            4
        );
        // The empty message is one empty chunk, not a missing blob.
        s.deliver(b"", 0, &[to("Drafts")]).await.unwrap();
        let drafts = s.mailbox("a@x.org", "Drafts").await.unwrap().unwrap();
        let empty = s.messages(drafts.id).await.unwrap()[0].blob;
        assert_eq!(s.blob(empty).await.unwrap(), b"");
        // One expunge leaves the other placement's body; the second frees every chunk.
        s.expunge("a@x.org", inbox.id, &[meta.uid]).await.unwrap();
        assert_eq!(s.blob(meta.blob).await.unwrap(), body);
        s.delete_mailbox("a@x.org", "Archive").await.unwrap();
        assert!(s.blob(meta.blob).await.is_err());
        assert_eq!(
            s.blobs.chunks.scan_prefix(meta.blob.to_be_bytes()).count(),
            0
        );
        // A body written whole by an earlier version is read and released as before.
        s.blobs
            .whole
            .insert(77u64.to_be_bytes(), &b"old"[..])
            .unwrap();
        assert_eq!(s.blob(77).await.unwrap(), b"old");
        s.blobs.remove(77).unwrap();
        assert!(s.blob(77).await.is_err());
    }

    #[tokio::test]
    async fn subscriptions_are_independent_of_mailboxes() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        s.create_account("a@x.org", "x").await.unwrap();
        let mut subs = s.subscriptions("a@x.org").await.unwrap();
        subs.sort();
        assert_eq!(
            subs,
            ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
        );
        // CREATE does not subscribe; DELETE does not unsubscribe; a name needs no mailbox.
        s.create_mailbox("a@x.org", "Lists", None).await.unwrap();
        s.create_mailbox("a@x.org", "Lists/Rust", None)
            .await
            .unwrap();
        assert!(
            !s.subscriptions("a@x.org")
                .await
                .unwrap()
                .contains(&"Lists".to_string())
        );
        s.set_subscribed("a@x.org", "Lists/Rust", true)
            .await
            .unwrap();
        s.set_subscribed("a@x.org", "Never/Created", true)
            .await
            .unwrap();
        s.delete_mailbox("a@x.org", "Lists/Rust").await.unwrap();
        let subs = s.subscriptions("a@x.org").await.unwrap();
        assert!(
            subs.contains(&"Lists/Rust".to_string()) && subs.contains(&"Never/Created".to_string())
        );
        // RENAME takes the subscription of a mailbox with it.
        s.set_subscribed("a@x.org", "Lists", true).await.unwrap();
        s.rename_mailbox("a@x.org", "Lists", "Groups")
            .await
            .unwrap();
        let subs = s.subscriptions("a@x.org").await.unwrap();
        assert!(subs.contains(&"Groups".to_string()) && !subs.contains(&"Lists".to_string()));
        s.set_subscribed("a@x.org", "Never/Created", false)
            .await
            .unwrap();
        assert!(
            !s.subscriptions("a@x.org")
                .await
                .unwrap()
                .contains(&"Never/Created".to_string())
        );
        // Deleting the account takes its subscriptions.
        s.delete_account("a@x.org").await.unwrap();
        assert!(s.subscriptions("a@x.org").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_empty_expunge_leaves_highestmodseq_alone() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        s.create_account("a@x.org", "x").await.unwrap();
        let p = Placement {
            user: "a@x.org".into(),
            mailbox: "INBOX".into(),
            flags: vec![],
        };
        s.deliver(b"m", 1, &[p]).await.unwrap();
        let before = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        assert!(
            s.expunge("a@x.org", before.id, &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            s.expunge("a@x.org", before.id, &[7])
                .await
                .unwrap()
                .is_empty()
        );
        let after = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        assert_eq!(after.highest_modseq, before.highest_modseq);
        assert_eq!(
            s.expunge("a@x.org", before.id, &[1]).await.unwrap(),
            vec![1]
        );
        let gone = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        assert!(gone.highest_modseq > before.highest_modseq);
    }

    #[tokio::test]
    async fn kv_incr_counts_and_expires() {
        let d = tempfile::tempdir().unwrap();
        let s = SledStore::open(d.path()).unwrap();
        assert_eq!(s.kv_incr("rate", "a", 1, Some(60)).await.unwrap(), 1);
        assert_eq!(s.kv_incr("rate", "a", 2, Some(60)).await.unwrap(), 3);
        assert_eq!(s.kv_get("rate", "a").await.unwrap().unwrap(), b"3");
        assert_eq!(s.kv_incr("other", "a", 1, None).await.unwrap(), 1);
        // An expired counter starts again.
        s.kv_set("rate", "old", b"41", Some(0)).await.unwrap();
        assert_eq!(s.kv_incr("rate", "old", 1, None).await.unwrap(), 1);
        // A non-numeric value counts from 0.
        s.kv_set("rate", "text", b"abc", None).await.unwrap();
        assert_eq!(s.kv_incr("rate", "text", 5, None).await.unwrap(), 5);
        // Concurrent increments are not lost.
        let s = std::sync::Arc::new(s);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        s.kv_incr("rate", "c", 1, Some(60)).wait().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.kv_incr("rate", "c", 0, None).await.unwrap(), 1000);
    }
}
