//! The storage boundary: small traits by concern ([`Directory`], [`Mailboxes`], [`Blobs`],
//! [`Queue`], [`Leases`], [`Kv`], [`Feed`]) that [`MailStore`] sums up, so another backend
//! can replace sled without the protocols noticing. `sled`, `postgres` and `memory`
//! implement them; `conformance` is the contract all of them pass.
//!
//! Architecture invariant: a protocol success reply that promises durability is sent only
//! after the write it covers is durable: [`Mailboxes::ingest`] resolves then; other writes
//! are followed by [`MailStore::commit`].

mod cached;
mod commit;
#[cfg(test)]
mod conformance;
mod failpoint;
mod feed;
pub mod lease;
mod memory;
mod meta_cache;
mod postgres;
mod sled;
pub mod transfer;

pub use self::postgres::{PostgresStore, SCHEMA_VERSION, parse_url, redact_url};
pub use self::sled::SledStore;
pub use cached::Cached;
pub use commit::Commit;
pub use failpoint::Failpoints;
pub use memory::MemoryStore;

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Format version written into every store; a newer one is refused.
pub const FORMAT_VERSION: u32 = 1;

/// The mailboxes every new account gets, with their RFC 6154 special-use attribute.
pub const DEFAULT_MAILBOXES: &[(&str, Option<&str>)] = &[
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
    ("Archive", Some("\\Archive")),
];

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the database open.
    #[error(
        "the store at {0} is in use by another process (a running `corvus serve`?); stop it, or let CLI commands reach it through its control socket"
    )]
    Locked(String),
    /// The database was written by a newer Corvus.
    #[error(
        "the store at {path} has format version {found}, newer than this Corvus understands ({FORMAT_VERSION}); upgrade corvus"
    )]
    TooNew {
        /// Path of the store.
        path: String,
        /// Version found.
        found: u32,
    },
    /// The directory holds a sled database that is not a Corvus store.
    #[error("{0} holds a database that is not a Corvus store; point data_dir elsewhere")]
    Foreign(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0} already exists")]
    Exists(String),
    /// The request is not allowed (e.g. deleting INBOX).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed.
    #[error("storage error: {0}")]
    Backend(String),
}

impl From<::sled::Error> for StoreError {
    fn from(e: ::sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Backend(format!("corrupt record: {e}"))
    }
}

/// Result alias for storage calls.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// Full address, lower case (`alice@example.org`).
    pub address: String,
    /// argon2 PHC string; empty for externally authenticated accounts.
    pub password_hash: String,
    /// Unix seconds.
    pub created: i64,
}

/// A mailbox (folder) of one account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mailbox {
    /// Store-wide id, also the key prefix of its messages.
    pub id: u64,
    /// Mailbox name, `/`-separated hierarchy.
    pub name: String,
    /// IMAP UIDVALIDITY.
    pub uidvalidity: u32,
    /// Next UID to assign.
    pub uidnext: u32,
    /// IMAP SUBSCRIBE state.
    pub subscribed: bool,
    /// RFC 6154 attribute such as `\Sent`.
    pub special_use: Option<String>,
    /// RFC 7162 HIGHESTMODSEQ.
    pub highest_modseq: u64,
    /// Whether every expunge since the mailbox was made is remembered (UID and MODSEQ),
    /// so [`Mailboxes::changes_since`] can list them exactly; false for mailboxes made by
    /// versions that did not keep them.
    #[serde(default)]
    pub logs_expunges: bool,
}

impl Mailbox {
    /// Take the next UID and MODSEQ for a new message and return its metadata.
    pub(crate) fn place(
        &mut self,
        blob: u64,
        size: u64,
        flags: &[String],
        internal_date: i64,
    ) -> MessageMeta {
        let meta = MessageMeta {
            uid: self.uidnext,
            blob,
            size,
            flags: flags.to_vec(),
            internal_date,
            modseq: self.highest_modseq + 1,
        };
        self.uidnext += 1;
        self.highest_modseq += 1;
        meta
    }
}

/// What changed in a mailbox after a MODSEQ ([`Mailboxes::changes_since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangesSince {
    /// Messages whose MODSEQ is above it (added or flags changed), in UID order.
    pub changed: Vec<MessageMeta>,
    /// UIDs expunged after it, ascending.
    pub expunged: Vec<u32>,
    /// Whether `expunged` is exact; when false, expunges before the store kept them are
    /// unknown and a caller answers with a superset (RFC 7162 §3.2.5.1 allows that).
    pub complete: bool,
}

/// Per-message metadata in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// UID within the mailbox.
    pub uid: u32,
    /// Key of the message bytes.
    pub blob: u64,
    /// Size in bytes.
    pub size: u64,
    /// System flags and keywords (`\Seen`, `$Junk`, …).
    pub flags: Vec<String>,
    /// Unix seconds.
    pub internal_date: i64,
    /// RFC 7162 MODSEQ.
    pub modseq: u64,
}

impl MessageMeta {
    /// Compact binary encoding (the hot path of SELECT and FETCH FLAGS on big mailboxes).
    pub fn encode(&self) -> Vec<u8> {
        let flags = self.flags.join(" ");
        let mut v = Vec::with_capacity(36 + flags.len());
        v.extend_from_slice(&self.uid.to_be_bytes());
        v.extend_from_slice(&self.blob.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.internal_date.to_be_bytes());
        v.extend_from_slice(&self.modseq.to_be_bytes());
        v.extend_from_slice(flags.as_bytes());
        v
    }

    /// Inverse of [`Self::encode`].
    pub fn decode(b: &[u8]) -> Result<Self> {
        if b.len() < 36 {
            return Err(StoreError::Backend("corrupt message record".into()));
        }
        let u64at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8"));
        let flags = std::str::from_utf8(&b[36..])
            .map_err(|_| StoreError::Backend("corrupt flags".into()))?;
        Ok(MessageMeta {
            uid: u32::from_be_bytes(b[..4].try_into().expect("4")),
            blob: u64at(4),
            size: u64at(12),
            internal_date: u64at(20) as i64,
            modseq: u64at(28),
            flags: flags
                .split(' ')
                .filter(|f| !f.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// How [`Mailboxes::update_flags`] combines the given flags with a message's current ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// Set exactly these flags (IMAP `FLAGS`).
    Replace,
    /// Add these flags (`+FLAGS`).
    Add,
    /// Remove these flags (`-FLAGS`).
    Remove,
}

impl FlagOp {
    /// The flags that result from applying `flags` to `current`. Flag names compare
    /// case-insensitively; the result has no duplicates and keeps `current`'s order.
    pub fn apply(self, current: &[String], flags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(current.len() + flags.len());
        let push = |out: &mut Vec<String>, f: &String| {
            if !out.iter().any(|x| x.eq_ignore_ascii_case(f)) {
                out.push(f.clone());
            }
        };
        match self {
            FlagOp::Replace => flags.iter().for_each(|f| push(&mut out, f)),
            FlagOp::Add => current
                .iter()
                .chain(flags.iter())
                .for_each(|f| push(&mut out, f)),
            FlagOp::Remove => current
                .iter()
                .filter(|x| !flags.iter().any(|f| f.eq_ignore_ascii_case(x)))
                .for_each(|f| push(&mut out, f)),
        }
        out
    }
}

/// One message's outcome of [`Mailboxes::update_flags`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagUpdate {
    /// The message.
    pub uid: u32,
    /// Its flags afterwards.
    pub flags: Vec<String>,
    /// Its MODSEQ afterwards (unchanged when the flags did not change).
    pub modseq: u64,
    /// Whether the flags changed.
    pub changed: bool,
}

/// Where one copy of a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Account address.
    pub user: String,
    /// Mailbox name; created if missing.
    pub mailbox: String,
    /// Initial flags.
    pub flags: Vec<String>,
}

/// One body of an accepted message and the mailboxes it is filed into. A message whose
/// recipients get different bytes (an `on_delivery` hook added headers for one of them) has
/// one `Filed` per distinct body.
#[derive(Debug, Clone)]
pub struct Filed {
    /// The bytes stored (with Return-Path and trace headers).
    pub message: Arc<Vec<u8>>,
    /// Where copies go; a missing mailbox is created.
    pub placements: Vec<Placement>,
}

/// Everything an accepted message turns into, written by [`Mailboxes::ingest`] at once.
#[derive(Debug, Clone, Default)]
pub struct Ingest {
    /// INTERNALDATE of every placement (Unix seconds).
    pub internal_date: i64,
    /// Local copies.
    pub filed: Vec<Filed>,
    /// The queue entry for remote recipients and the bytes it sends (the store assigns
    /// `entry.blob`).
    pub queue: Option<(QueueEntry, Arc<Vec<u8>>)>,
}

impl Ingest {
    /// Its parts as borrowed slices: (body, placements) per body, and the queue entry with
    /// its bytes (what a backend's write works on).
    #[allow(clippy::type_complexity)]
    pub fn parts(&self) -> (Vec<(&[u8], &[Placement])>, Option<(&QueueEntry, &[u8])>) {
        let filed = self
            .filed
            .iter()
            .map(|f| (f.message.as_slice(), f.placements.as_slice()))
            .collect();
        (filed, self.queue.as_ref().map(|(e, m)| (e, m.as_slice())))
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.queue.is_none() && self.filed.iter().all(|f| f.placements.is_empty())
    }
}

/// Where one placement of an [`Ingest`] landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Account address (normalised).
    pub user: String,
    /// Mailbox id.
    pub mailbox: u64,
    /// The UID assigned.
    pub uid: u32,
    /// The MODSEQ assigned.
    pub modseq: u64,
}

/// What [`Mailboxes::ingest`] wrote, in the order of the request's placements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// One entry per placement, `filed` by `filed`.
    pub placed: Vec<Placed>,
}

/// A boxed future, for the store's asynchronous methods (object-safe).
pub type StoreFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A message waiting in the outbound queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Queue id.
    pub id: String,
    /// Envelope sender (empty for `<>`).
    pub mail_from: String,
    /// Recipients still to be delivered, with their DSN state.
    pub rcpts: Vec<QueueRcpt>,
    /// DSN RET parameter (`FULL`/`HDRS`).
    pub ret: Option<String>,
    /// DSN ENVID.
    pub envid: Option<String>,
    /// Unix seconds of acceptance.
    pub created: i64,
    /// Unix seconds of the next attempt.
    pub next_attempt: i64,
    /// Attempts so far.
    pub attempts: u32,
    /// Last error text.
    pub last_error: Option<String>,
    /// Blob key of the message.
    pub blob: u64,
    /// Whether the message needs SMTPUTF8.
    pub smtputf8: bool,
    /// Hook decisions recorded for `corvus queue show`.
    pub decisions: Vec<String>,
    /// Whether a delay warning was sent already.
    #[serde(default)]
    pub warned: bool,
    /// REQUIRETLS (RFC 8689): deliver only over TLS with a verified certificate to MX
    /// hosts an MTA-STS policy names, to a server that takes REQUIRETLS itself.
    #[serde(default)]
    pub requiretls: bool,
    /// The queue runner delivering it now, if any ([`Queue::queue_claim`]).
    #[serde(default)]
    pub lease: Option<Lease>,
}

/// A queue runner's claim on an entry: no other runner takes the entry before `until`
/// (Unix seconds) unless the owner releases it. The owner renews it while it delivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The runner (unique per process).
    pub owner: String,
    /// Expiry, Unix seconds.
    pub until: i64,
}

impl QueueEntry {
    /// Whether `owner` holds a live or expired lease on this entry (an expired lease still
    /// lets its owner record what it did, until another runner claims the entry).
    pub fn leased_by(&self, owner: &str) -> bool {
        self.lease.as_ref().is_some_and(|l| l.owner == owner)
    }

    /// Whether a runner may claim it at `now`: due, and not leased or its lease expired.
    pub fn claimable(&self, now: i64) -> bool {
        self.next_attempt <= now && self.lease.as_ref().is_none_or(|l| l.until <= now)
    }
}

/// What [`Queue::queue_claim`] found.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    /// Entries now leased to the caller.
    pub entries: Vec<QueueEntry>,
    /// The earliest time another entry becomes claimable (due, or its lease expires).
    pub next: Option<i64>,
}

/// One queued recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueRcpt {
    /// Address.
    pub address: String,
    /// DSN NOTIFY values.
    pub notify: Vec<String>,
    /// DSN ORCPT.
    pub orcpt: Option<String>,
}

/// What changed in an account's mailboxes, as the change feed carries it ([`Feed::watch`]):
/// enough for a session to apply the change to its view without reading the mailbox again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Messages became visible in a mailbox, in ascending UID order.
    Appended {
        /// Mailbox id.
        mailbox: u64,
        /// The new messages' metadata.
        messages: Vec<MessageMeta>,
    },
    /// Flags of messages changed.
    Flags {
        /// Mailbox id.
        mailbox: u64,
        /// (UID, flags afterwards, MODSEQ afterwards) per changed message.
        changes: Vec<(u32, Vec<String>, u64)>,
    },
    /// Messages were expunged (also every message of a deleted mailbox).
    Expunged {
        /// Mailbox id.
        mailbox: u64,
        /// The UIDs removed, ascending.
        uids: Vec<u32>,
        /// The mailbox's HIGHESTMODSEQ afterwards.
        modseq: u64,
    },
    /// A mailbox was created.
    Created {
        /// Its name.
        name: String,
    },
    /// A mailbox was renamed (its children too, each with its own change).
    Renamed {
        /// Mailbox id.
        mailbox: u64,
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// A mailbox was deleted.
    Deleted {
        /// Mailbox id.
        mailbox: u64,
        /// Its name.
        name: String,
    },
    /// A mailbox changed in ways not listed (another node wrote to a shared database
    /// before this process followed it): whoever keeps a copy of its messages re-reads
    /// them.
    Stale {
        /// Mailbox id.
        mailbox: u64,
    },
    /// A name was subscribed or unsubscribed.
    Subscription {
        /// The name.
        name: String,
        /// Subscribed afterwards.
        subscribed: bool,
    },
}

impl Change {
    /// What [`Mailboxes::set_flags`] tells the feed: for each message it changed (`done`:
    /// UID and new MODSEQ), the flags it was given in `changes`.
    pub(crate) fn flags_set(
        mailbox: u64,
        changes: &[(u32, Vec<String>)],
        done: &[(u32, u64)],
    ) -> Change {
        let changes = done
            .iter()
            .filter_map(|(uid, ms)| {
                let flags = changes.iter().find(|(u, _)| u == uid)?.1.clone();
                Some((*uid, flags, *ms))
            })
            .collect();
        Change::Flags { mailbox, changes }
    }

    /// What [`Mailboxes::update_flags`] tells the feed: the messages whose flags changed;
    /// `None` when none did.
    pub(crate) fn flags_updated(mailbox: u64, updates: &[FlagUpdate]) -> Option<Change> {
        let changes: Vec<_> = updates
            .iter()
            .filter(|u| u.changed)
            .map(|u| (u.uid, u.flags.clone(), u.modseq))
            .collect();
        (!changes.is_empty()).then_some(Change::Flags { mailbox, changes })
    }

    /// The mailbox whose messages changed, for the message-level changes.
    pub fn messages_of(&self) -> Option<u64> {
        match self {
            Change::Appended { mailbox, .. }
            | Change::Flags { mailbox, .. }
            | Change::Expunged { mailbox, .. } => Some(*mailbox),
            _ => None,
        }
    }
}

/// A subscription to an account's changes.
pub type Changes = tokio::sync::broadcast::Receiver<std::sync::Arc<Change>>;

/// A value computed from a mailbox's metadata; see [`Mailboxes::derived`].
pub type Derived = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// The storage interface the protocols use: every concern below, plus durability.
/// `Store` (an `Arc<dyn MailStore>`) calls any of their methods.
pub trait MailStore: Directory + Mailboxes + Blobs + Queue + Leases + Kv + Feed + 'static {
    /// A future that resolves once every write made before this call is on disk.
    /// Concurrent callers share one flush (group commit).
    fn commit(&self) -> Commit;
}

/// Accounts, local domains and aliases.
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    /// Create an account and its default mailboxes.
    async fn create_account(&self, address: &str, password_hash: &str) -> Result<()>;

    /// Delete an account, its mailboxes and messages.
    async fn delete_account(&self, address: &str) -> Result<()>;

    /// Look an account up.
    async fn account(&self, address: &str) -> Result<Option<Account>>;

    /// Whether an account exists (cheaper than [`Directory::account`]: nothing decoded).
    async fn account_exists(&self, address: &str) -> Result<bool> {
        Ok(self.account(address).await?.is_some())
    }

    /// All accounts.
    async fn accounts(&self) -> Result<Vec<Account>>;

    /// Replace an account's password hash.
    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()>;

    /// Add a local domain.
    async fn add_domain(&self, domain: &str) -> Result<()>;

    /// Remove a local domain.
    async fn delete_domain(&self, domain: &str) -> Result<()>;

    /// Domains added at run time (the config's domains are not stored).
    async fn domains(&self) -> Result<Vec<String>>;

    /// Set an alias to its targets (replacing any previous ones).
    async fn set_alias(&self, alias: &str, targets: &[String]) -> Result<()>;

    /// Remove an alias.
    async fn delete_alias(&self, alias: &str) -> Result<()>;

    /// Targets of an alias.
    async fn alias(&self, alias: &str) -> Result<Option<Vec<String>>>;

    /// All aliases.
    async fn aliases(&self) -> Result<Vec<(String, Vec<String>)>>;
}

/// Mailboxes and the messages in them: the one ingest write, reads, flags, expunge,
/// copy, changes since a MODSEQ, subscriptions, the `\\Recent` mark.
#[async_trait::async_trait]
pub trait Mailboxes: Send + Sync {
    /// Mailboxes of an account.
    async fn mailboxes(&self, user: &str) -> Result<Vec<Mailbox>>;

    /// One mailbox.
    async fn mailbox(&self, user: &str, name: &str) -> Result<Option<Mailbox>>;

    /// Create a mailbox.
    async fn create_mailbox(
        &self,
        user: &str,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<Mailbox>;

    /// Write an accepted message: its bodies, every local placement and the queue entry for
    /// its remote recipients, all or nothing, and resolve once it is durable. UIDs and
    /// MODSEQs are assigned inside the same write, ascending per mailbox in the order
    /// messages become visible. On an error nothing is visible: no placement, no queue
    /// entry, no UID a client could observe. Watchers hear of the placements after the
    /// write.
    ///
    /// Architecture invariant: "250 after DATA" is sent only after this call succeeds.
    async fn ingest(&self, ingest: Ingest) -> Result<Receipt>;

    /// Store one message into several mailboxes (IMAP APPEND, mailbox import): [`Self::ingest`]
    /// without a queue entry and without waiting for durability; returns the assigned UIDs.
    async fn deliver(
        &self,
        message: &[u8],
        internal_date: i64,
        to: &[Placement],
    ) -> Result<Vec<u32>>;

    /// Message metadata of a mailbox in UID order.
    async fn messages(&self, mailbox_id: u64) -> Result<Vec<MessageMeta>>;

    /// Call `f` once with the message metadata of a mailbox in UID order, without copying it
    /// where the backend can (SELECT of a big mailbox builds its view from this).
    async fn with_messages(
        &self,
        mailbox_id: u64,
        f: &mut (dyn for<'m> FnMut(&'m [MessageMeta]) + Send),
    ) -> Result<()> {
        let messages = self.messages(mailbox_id).await?;
        f(&messages);
        Ok(())
    }

    /// `build(metadata of the mailbox)`, kept with the store's cache of big mailboxes until
    /// the next write to the mailbox, so that repeated calls cost nothing (IMAP SELECT's
    /// view). One value per mailbox: a caller downcasts it and rebuilds on a mismatch.
    async fn derived(
        &self,
        mailbox_id: u64,
        build: &(dyn for<'m> Fn(&'m [MessageMeta]) -> Derived + Sync),
    ) -> Result<Derived> {
        let messages = self.messages(mailbox_id).await?;
        Ok(build(&messages))
    }

    /// One message's metadata, `None` when the mailbox has no message with that UID.
    async fn message(&self, mailbox_id: u64, uid: u32) -> Result<Option<MessageMeta>>;

    /// Replace the flags of messages (`uid`, new flags); returns each changed message's
    /// (uid, new MODSEQ).
    async fn set_flags(
        &self,
        user: &str,
        mailbox_id: u64,
        changes: &[(u32, Vec<String>)],
    ) -> Result<Vec<(u32, u64)>>;

    /// Remove messages; returns the UIDs that existed and were removed.
    async fn expunge(&self, user: &str, mailbox_id: u64, uids: &[u32]) -> Result<Vec<u32>>;

    /// Copy messages into another mailbox of the same user; returns the target's
    /// UIDVALIDITY and (source uid, new uid) pairs.
    async fn copy(
        &self,
        user: &str,
        from_id: u64,
        uids: &[u32],
        to: &str,
    ) -> Result<(u32, Vec<(u32, u32)>)>;

    /// What changed in a mailbox after `modseq` (CONDSTORE/QRESYNC resynchronisation):
    /// messages changed or added since, and UIDs expunged since.
    /// `NotFound` when `user` has no such mailbox.
    async fn changes_since(
        &self,
        user: &str,
        mailbox_id: u64,
        modseq: u64,
    ) -> Result<ChangesSince> {
        // Messages first, expunges second: a message expunged in between is reported in
        // both lists (a caller applies it as expunged) rather than in neither.
        let mut changed = Vec::new();
        self.with_messages(mailbox_id, &mut |msgs| {
            changed = msgs.iter().filter(|m| m.modseq > modseq).cloned().collect();
        })
        .await?;
        let (expunged, complete) = self.expunged_since(user, mailbox_id, modseq).await?;
        Ok(ChangesSince {
            changed,
            expunged,
            complete,
        })
    }

    /// UIDs expunged from a mailbox after `modseq`, ascending, and whether that list is
    /// exact ([`ChangesSince::complete`]). `NotFound` when `user` has no such mailbox.
    async fn expunged_since(
        &self,
        user: &str,
        mailbox_id: u64,
        modseq: u64,
    ) -> Result<(Vec<u32>, bool)>;

    /// Delete a mailbox and its messages (INBOX cannot be deleted).
    async fn delete_mailbox(&self, user: &str, name: &str) -> Result<()>;

    /// Rename a mailbox (renaming INBOX moves its messages into a new mailbox, RFC 9051 §6.3.6).
    async fn rename_mailbox(&self, user: &str, from: &str, to: &str) -> Result<()>;

    /// Subscribe to or unsubscribe from a name, whether a mailbox of that name exists or not
    /// (RFC 9051 §6.3.9); deleting a mailbox leaves its subscription.
    async fn set_subscribed(&self, user: &str, name: &str, subscribed: bool) -> Result<()>;

    /// The names `user` is subscribed to.
    async fn subscriptions(&self, user: &str) -> Result<Vec<String>>;

    /// The `\Recent` mark of a mailbox (RFC 3501 §2.3.2): every message with a UID above
    /// the returned value is recent, not yet seen by any session. With `claim`, the mark
    /// moves up to `up_to` atomically, so the calling session is the one session that
    /// shows those messages as `\Recent`; without it, nothing changes (EXAMINE, STATUS).
    async fn claim_recent(&self, mailbox_id: u64, up_to: u32, claim: bool) -> Result<u32>;

    /// Add, remove or replace flags of messages, computing the new flags from the stored
    /// ones so that concurrent updates from several sessions do not overwrite each other.
    /// Messages whose MODSEQ is above `unchanged_since` are left alone and returned in the
    /// second list (RFC 7162 UNCHANGEDSINCE); UIDs that do not exist are skipped.
    ///
    /// Atomic per message: no concurrent update is lost.
    async fn update_flags(
        &self,
        user: &str,
        mailbox_id: u64,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<(Vec<FlagUpdate>, Vec<u32>)>;
}

/// Message bytes, behind an opaque id.
#[async_trait::async_trait]
pub trait Blobs: Send + Sync {
    /// The bytes of a message.
    async fn blob(&self, blob: u64) -> Result<Vec<u8>>;
}

/// The outbound queue, with claims and leases for the runners.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Put a message into the outbound queue (the store assigns `entry.blob`).
    async fn enqueue(&self, entry: QueueEntry, message: &[u8]) -> Result<()>;

    /// Every queued entry.
    async fn queue(&self) -> Result<Vec<QueueEntry>>;

    /// One queued entry.
    async fn queue_entry(&self, id: &str) -> Result<Option<QueueEntry>>;

    /// Replace a queued entry's state (recipients left, attempts, next attempt, errors).
    /// `NotFound` when the entry is no longer queued (deleted meanwhile, e.g. by `corvus queue
    /// delete` during a delivery attempt): a stale update must not bring it back.
    async fn queue_update(&self, entry: &QueueEntry) -> Result<()>;

    /// Make an entry due now (`corvus queue flush`), changing nothing else: the stored
    /// entry is modified in place, so a delivery attempt's concurrent update (recipients
    /// delivered meanwhile) is not overwritten by an older copy. `NotFound` when it is gone.
    async fn queue_due_now(&self, id: &str) -> Result<()>;

    /// Remove an entry and its message bytes.
    async fn queue_remove(&self, id: &str) -> Result<()>;

    /// Lease up to `limit` claimable entries to `owner` until `now + lease` seconds. Two
    /// runners over one store never hold the same entry: each entry is claimed by one
    /// atomic write that fails when another runner changed it first.
    async fn queue_claim(&self, owner: &str, now: i64, lease: i64, limit: usize)
    -> Result<Claimed>;

    /// Extend `owner`'s lease on entry `id` to `until`. `NotFound` when the entry is gone,
    /// `Invalid` when another runner holds it now (the lease expired and was taken).
    async fn queue_renew(&self, id: &str, owner: &str, until: i64) -> Result<()>;

    /// Record `owner`'s progress on an entry (recipients left, attempts, next attempt,
    /// errors), keeping the lease, or dropping it with `release`. Errors as
    /// [`Self::queue_renew`]; nothing is written then.
    async fn queue_save(&self, entry: &QueueEntry, owner: &str, release: bool) -> Result<()>;

    /// Remove an entry `owner` has finished, and its message bytes. Errors as
    /// [`Self::queue_renew`].
    async fn queue_complete(&self, id: &str, owner: &str) -> Result<()>;
}

/// Leases: locks that must hold across every process sharing the store (the POP3
/// maildrop lock, IMAP sessions per user); see `store::lease` for the holder's side.
#[async_trait::async_trait]
pub trait Leases: Send + Sync {
    /// Take the lease `name` for `holder` until `until` (Unix seconds): `true` when it was
    /// free, expired or already `holder`'s (then it is extended), `false` when another
    /// holder has it. Atomic: two takers never both get it.
    async fn lease_take(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool>;

    /// Give a lease back; nothing happens when `holder` does not hold it.
    async fn lease_drop(&self, name: &str, holder: &str) -> Result<()>;

    /// Give back every lease and queue claim whose holder or owner starts with `prefix`: what
    /// a node does when it starts, for the claims its previous run left (a crash, a stop
    /// that could not reach the store). The number given back. A store only one process
    /// opens drops them all when it opens, so there is nothing left to do.
    async fn release_held_by(&self, _prefix: &str) -> Result<u64> {
        Ok(0)
    }
}

/// The namespaced key-value area of scripts and plugins, with TTLs and counters.
#[async_trait::async_trait]
pub trait Kv: Send + Sync {
    /// Read a key in a namespace (expired keys read as missing).
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// Write a key with an optional time-to-live in seconds.
    async fn kv_set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<u64>) -> Result<()>;

    /// Add `delta` to the decimal counter at a key, atomically, and return the new value. A
    /// missing, expired or non-numeric value counts from 0; `ttl` (seconds) is set only when
    /// the counter starts, so a window does not slide with every increment.
    async fn kv_incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u64>) -> Result<i64>;

    /// The live keys of a namespace from `start` (inclusive) to `end` (exclusive; empty:
    /// no end) in byte order, with their values, at most `limit` of them.
    async fn kv_range(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;

    /// [`Kv::kv_range`] from the other end: the live keys below `end` (empty: no end) down
    /// to `start` (inclusive), in descending byte order, at most `limit`.
    async fn kv_range_back(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;

    /// Remove a key (nothing happens when it is missing).
    async fn kv_delete(&self, ns: &str, key: &str) -> Result<()>;
}

/// The change feed.
pub trait Feed: Send + Sync {
    /// Subscribe to changes in an account's mailboxes. Changes of one mailbox arrive in
    /// the order they became visible; a receiver that falls behind is told it lagged
    /// and must re-read.
    fn watch(&self, user: &str) -> Changes;

    /// Call `sink` with every change of every account, synchronously, as the backend
    /// publishes it (after the write is visible, before the writing call returns): how
    /// layers such as the metadata cache ([`Cached`]) stay fresh. Keep it short and
    /// non-blocking.
    fn observe(&self, sink: Observer);

    /// Whether every change of `mailbox` is published on this feed, so a copy of its
    /// messages kept up to date by the feed stays exact ([`Cached`] keeps copies only
    /// then). Always, for a store only this process writes; for a shared database, while
    /// this process follows the mailbox's account ([`Feed::follow_others`]).
    fn publishes_all(&self, _mailbox: u64) -> bool {
        true
    }

    /// Start publishing, beside this process's own changes, the changes other processes
    /// make to the accounts this process watches (the nodes sharing a database). Needs a
    /// tokio runtime; a no-op for a store only this process writes.
    fn follow_others(&self) {}
}

/// A synchronous observer of every change; see [`Feed::observe`].
pub type Observer = std::sync::Arc<dyn Fn(&str, &Change) + Send + Sync>;

/// Whether `name` may name a mailbox: not empty, at most 255 bytes, no empty, `.` or `..`
/// level, no wildcard, NUL, line break or other control character (what IMAP CREATE and
/// Sieve `fileinto` accept).
pub fn valid_mailbox_name(name: &str) -> bool {
    !(name.is_empty()
        || name.len() > 255
        || name.starts_with('/')
        || name.ends_with('/')
        || name.contains("//")
        || name.split('/').any(|c| c == "." || c == "..")
        || name.contains(['%', '*', '\0', '\r', '\n'])
        || name.chars().any(char::is_control))
}

/// Whether `name` is INBOX, which is case-insensitive (RFC 9051 §5.1).
pub fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// Canonical spelling of a mailbox name: INBOX is case-insensitive (RFC 9051 §5.1).
pub fn canonical_mailbox(name: &str) -> String {
    if is_inbox(name) {
        "INBOX".into()
    } else {
        name.to_string()
    }
}

/// The `Appended` changes of an ingest's placements: one per (account, mailbox), messages
/// in UID order.
pub(crate) fn appended(placed: &[(String, u64, MessageMeta)]) -> Vec<(&str, Change)> {
    let mut out: Vec<(&str, Change)> = Vec::new();
    for (user, id, meta) in placed {
        let same = out.iter_mut().find(|(u, c)| {
            *u == user.as_str() && matches!(c, Change::Appended { mailbox, .. } if mailbox == id)
        });
        match same {
            Some((_, Change::Appended { messages, .. })) => messages.push(meta.clone()),
            _ => out.push((
                user,
                Change::Appended {
                    mailbox: *id,
                    messages: vec![meta.clone()],
                },
            )),
        }
    }
    out
}

/// Renaming INBOX moves its messages into a new mailbox of that name; INBOX stays, empty
/// (RFC 9051 §6.3.6). The same rule for every backend, in terms of the trait.
pub(crate) async fn rename_inbox(
    store: &dyn Mailboxes,
    user: &str,
    inbox: u64,
    to: &str,
) -> Result<()> {
    store.create_mailbox(user, to, None).await?;
    let uids: Vec<u32> = store.messages(inbox).await?.iter().map(|m| m.uid).collect();
    store.copy(user, inbox, &uids, to).await?;
    store.expunge(user, inbox, &uids).await?;
    Ok(())
}

/// The error of a queue call whose lease another runner holds now.
pub(crate) fn lease_lost(id: &str) -> StoreError {
    StoreError::Invalid(format!(
        "queue entry {id} is being delivered by another runner"
    ))
}

/// Lower `next` to `t`.
pub(crate) fn claimed_next(next: &mut Option<i64>, t: i64) {
    *next = Some(next.map_or(t, |n| n.min(t)));
}

/// Shared handle to the store.
pub type Store = Arc<dyn MailStore>;

/// Normalise an address for lookups: the domain is case-insensitive, and we treat the local
/// part case-insensitively too, as most servers do.
pub fn normalize_address(address: &str) -> String {
    address.trim().to_lowercase()
}

#[cfg(test)]
mod flag_op_tests {
    use super::FlagOp;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn apply_is_case_insensitive_and_deduplicates() {
        let cur = v(&["\\Seen", "$Work"]);
        assert_eq!(
            FlagOp::Add.apply(&cur, &v(&["$work", "\\Flagged", "\\Flagged"])),
            v(&["\\Seen", "$Work", "\\Flagged"])
        );
        assert_eq!(FlagOp::Remove.apply(&cur, &v(&["$WORK"])), v(&["\\Seen"]));
        assert_eq!(
            FlagOp::Replace.apply(&cur, &v(&["a", "A", "b"])),
            v(&["a", "b"])
        );
        assert_eq!(FlagOp::Replace.apply(&cur, &[]), Vec::<String>::new());
    }
}
