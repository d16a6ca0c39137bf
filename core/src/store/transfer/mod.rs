//! Copying a whole store into another one (`corvus store copy`, issue 23: moving a sled
//! installation to PostgreSQL) so that IMAP clients keep their state: the same UIDVALIDITY,
//! UIDs and MODSEQs, flags, internal dates, expunge log, subscriptions and `\Recent` marks,
//! plus accounts with their password hashes, domains, aliases, the outbound queue and the
//! key-value area (DKIM keys, script and plugin state).
//!
//! The servers never see this: the raw record access a copy needs ([`Export`], [`Import`])
//! is a pair of traits beside [`MailStore`], implemented by the backends in their
//! `transfer.rs` (sled exports, PostgreSQL exports and imports). Everything the server
//! traits already give (accounts, mailboxes, message metadata, bodies, queue) is read
//! through them.
//!
//! Files: `copy.rs` (the driver: what to write, merged with what the target holds, with
//! progress), `verify.rs` (counts and checksums computed the same way on both sides),
//! `vanished.rs` (expunge logs as UID ranges, and the log a store that did not keep one
//! implies).

mod copy;
#[cfg(test)]
mod tests;
mod vanished;
mod verify;

pub use copy::{Copied, copy};
pub use verify::{Verified, verify};

use super::*;

/// A key-value entry as stored ([`Kv`]): `expires` is Unix seconds, 0 for never.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// Namespace (`corvus.dkim` holds the DKIM keys).
    pub ns: String,
    /// Key.
    pub key: String,
    /// Value.
    pub value: Vec<u8>,
    /// Expiry, Unix seconds; 0 for never.
    pub expires: i64,
}

impl KvEntry {
    /// Whether it has expired at `now` (an expired entry reads as missing and is not copied).
    pub fn expired(&self, now: i64) -> bool {
        self.expires != 0 && self.expires <= now
    }
}

/// A mailbox with what a copy keeps beyond the IMAP state in [`Mailbox`].
#[derive(Debug, Clone)]
pub struct MailboxRecord {
    /// The mailbox (its `id` is the exporting store's own).
    pub mailbox: Mailbox,
    /// Its `\Recent` mark ([`Mailboxes::claim_recent`]).
    pub recent: u32,
}

/// The body of a message to import.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// New bytes.
    Bytes(&'a [u8]),
    /// A body the target holds already (an earlier message of this copy that shares it), by
    /// the target's id: one more reference.
    Stored(u64),
}

/// Raw reads of what a copy needs and the server traits do not give. A store that is
/// copied from, and a target the copy is verified against.
#[async_trait::async_trait]
pub trait Export: MailStore {
    /// Every address that owns a mailbox or a subscription, with or without an account,
    /// ascending.
    async fn owners(&self) -> Result<Vec<String>>;

    /// The mailboxes of `owner` with their `\Recent` marks.
    async fn mailbox_records(&self, owner: &str) -> Result<Vec<MailboxRecord>>;

    /// The expunge log of a mailbox: (UID, MODSEQ of the expunge), ascending by UID.
    async fn vanished(&self, mailbox: u64) -> Result<Vec<(u32, u64)>>;

    /// How many records (messages, queue entries) share body `blob`.
    async fn blob_refs(&self, blob: u64) -> Result<u32>;

    /// Up to `limit` key-value entries after `after` (namespace, key) in the store's own
    /// order, expired ones included.
    async fn kv_page(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<KvEntry>>;

    /// The entries at `keys` (namespace, key), `None` where there is none, in that order.
    async fn kv_entries(&self, keys: &[(String, String)]) -> Result<Vec<Option<KvEntry>>>;

    /// The last UIDVALIDITY the store handed out (a new mailbox gets a higher one).
    async fn uidvalidity_counter(&self) -> Result<u64>;
}

/// Raw writes of a copy: records with their ids, UIDs and MODSEQs as given, each call one
/// transaction. The target's change feed is not told (no server may run on it meanwhile).
#[async_trait::async_trait]
pub trait Import: Export {
    /// Create an account, or replace its password hash with this one.
    async fn import_account(&self, account: &Account) -> Result<()>;

    /// Add a local domain unless it is there.
    async fn import_domain(&self, domain: &str) -> Result<()>;

    /// Set an alias to these targets.
    async fn import_alias(&self, alias: &str, targets: &[String]) -> Result<()>;

    /// Subscribe `owner` to `name` unless subscribed.
    async fn import_subscription(&self, owner: &str, name: &str) -> Result<()>;

    /// Create mailbox `record` of `owner` with its UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ,
    /// special use and `\Recent` mark; its id in the target. `Exists` when the name is taken.
    async fn import_mailbox(&self, owner: &str, record: &MailboxRecord) -> Result<u64>;

    /// Bring mailbox `id` of the target up to `record`'s UIDNEXT, HIGHESTMODSEQ, special use
    /// and `\Recent` mark. `Invalid` when the target's counters are above the record's.
    async fn import_mailbox_state(&self, id: u64, record: &MailboxRecord) -> Result<()>;

    /// Add messages to mailbox `id` with their UIDs, MODSEQs, flags and dates; the target's
    /// body id of each, in order. All or nothing; refused when a UID or MODSEQ is not below
    /// the mailbox's UIDNEXT and HIGHESTMODSEQ, or a UID is taken.
    async fn import_messages(
        &self,
        id: u64,
        messages: &[(MessageMeta, Body<'_>)],
    ) -> Result<Vec<u64>>;

    /// Set the flags, internal date and MODSEQ of messages of mailbox `id` (matched by UID).
    async fn import_message_state(&self, id: u64, messages: &[MessageMeta]) -> Result<()>;

    /// Remove messages of mailbox `id` (expunged in the source since an earlier copy),
    /// releasing their bodies; the expunge log is written by [`Self::import_vanished`].
    async fn import_removal(&self, id: u64, uids: &[u32]) -> Result<()>;

    /// Write expunge-log records of mailbox `id`: every UID of each range (first, last,
    /// MODSEQ), replacing the MODSEQ of records already there.
    async fn import_vanished(&self, id: u64, ranges: &[(u32, u32, u64)]) -> Result<()>;

    /// Add a queue entry (not leased) with its body, unless an entry with its id is queued;
    /// whether it was added.
    async fn import_queue_entry(&self, entry: &QueueEntry, body: &[u8]) -> Result<bool>;

    /// Write key-value entries with their expiry, replacing what is at their keys.
    async fn import_kv(&self, entries: &[KvEntry]) -> Result<()>;

    /// Raise the UIDVALIDITY counter to at least `value`, so mailboxes made later in the
    /// target never get a value a copied mailbox had.
    async fn import_uidvalidity_counter(&self, value: u64) -> Result<()>;
}

/// Progress lines for an admin watching a long copy: [`Self::say`] always, [`Self::tick`] at
/// most every [`Progress::EVERY`].
pub(crate) struct Progress<'a> {
    sink: &'a mut (dyn FnMut(&str) + Send),
    last: std::time::Instant,
}

impl<'a> Progress<'a> {
    /// How often [`Self::tick`] speaks.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(2);

    pub(crate) fn new(sink: &'a mut (dyn FnMut(&str) + Send)) -> Self {
        Progress {
            sink,
            last: std::time::Instant::now(),
        }
    }

    /// Say `line`.
    pub(crate) fn say(&mut self, line: &str) {
        (self.sink)(line);
        self.last = std::time::Instant::now();
    }

    /// Say `line()` if nothing was said for a while.
    pub(crate) fn tick(&mut self, line: impl FnOnce() -> String) {
        if self.last.elapsed() >= Self::EVERY {
            self.say(&line());
        }
    }
}

/// Flags as a set: sorted, for comparisons and checksums that ignore their order.
pub(crate) fn flag_set(flags: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = flags.iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    v
}
