//! The sled implementation of [`MailStore`]: the store, its trees and the helpers every
//! concern shares; one file per concern beside it.
//!
//! Trees: `meta` (format version, counters), `accounts`, `domains`, `aliases`,
//! `mailboxes` (`user\0name`), `messages` (mailbox id ‖ uid, big-endian), `blobs` and
//! `blobrefs` (message bytes and their reference counts), `queue`, `kv` (`ns\0key`).
//!
//! Files: `directory.rs` (accounts, domains, aliases), `mailboxes.rs` (mailboxes, message
//! metadata, flags, subscriptions), `ingest.rs` (the write of an accepted message),
//! `blobs.rs` (message bodies in chunks, reference counts), `queue.rs` (queue and leases),
//! `kv.rs` (the key-value store for scripts and plugins), `transfer.rs` (the raw reads of
//! `corvus store copy`).
//!
//! `::sled` names the crate: a plain `sled` here is this module.

mod blobs;
mod directory;
mod ingest;
mod kv;
mod mailboxes;
mod queue;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use self::blobs::Bodies;
use ::sled::transaction::{ConflictableTransactionError, TransactionError};

use super::commit::GroupCommitter;
use super::*;

/// sled-backed store.
pub struct SledStore {
    db: ::sled::Db,
    meta: ::sled::Tree,
    accounts: ::sled::Tree,
    domains: ::sled::Tree,
    aliases: ::sled::Tree,
    mailboxes: ::sled::Tree,
    messages: ::sled::Tree,
    blobs: Bodies,
    blobrefs: ::sled::Tree,
    queue: ::sled::Tree,
    kv: ::sled::Tree,
    /// `user NUL name` for every subscribed name (RFC 9051 §6.3.9).
    subscriptions: ::sled::Tree,
    recent: ::sled::Tree,
    /// Bodies written by an ingest whose transaction has not committed yet (blob id keys).
    pending: ::sled::Tree,
    /// Expunged messages: mailbox id ‖ UID → the MODSEQ of the expunge.
    vanished: ::sled::Tree,
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
        let db = ::sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| match e {
                ::sled::Error::Io(ref io)
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
            blobs: Bodies::open(&db)?,
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

/// sled's page cache (its default is 1 GiB). Bodies pass through it as chunks, and what it
/// holds stays in the process after the messages are handled; the metadata of big
/// mailboxes has its own cache (the `Cached` layer), so 256 MiB keeps sled's small trees and
/// recent bodies warm without holding a gigabyte of old mail.
const CACHE_CAPACITY: u64 = 256 << 20;

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

impl Feed for SledStore {
    fn watch(&self, user: &str) -> Changes {
        self.watchers.watch(user)
    }

    fn observe(&self, sink: Observer) {
        self.watchers.observe(sink);
    }
}
/// Change the JSON record at `key` in place, atomically (sled `fetch_and_update`): `NotFound`
/// (naming `what`) when it is not there, so that a concurrent delete is never undone by a
/// stale copy written back.
fn update_json<T: Serialize + serde::de::DeserializeOwned>(
    tree: &::sled::Tree,
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
