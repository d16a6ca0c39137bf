//! The copy driver: every record of the source written into the target, merged with what the
//! target holds from an earlier, interrupted run, so that running it again finishes the job
//! and duplicates nothing.
//!
//! Order: a check of every mailbox both sides have (refused, before anything is written,
//! when one cannot be merged: another UIDVALIDITY, or counters above the source's, which
//! means a server ran on the target); the UIDVALIDITY counter; accounts, domains, aliases;
//! per owner its subscriptions and mailboxes; the queue; the key-value area.
//!
//! A mailbox is created with the source's counters before its messages are written, so a
//! copy that stops halfway leaves no UID a later delivery could take twice. Its messages are
//! merged by UID: missing ones are written in batches (one transaction each, bounded by
//! [`BATCH_BYTES`] and [`BATCH_MESSAGES`], a bigger message alone), ones already there get
//! the source's flags, date and MODSEQ, and ones the source has expunged since are removed.
//! A target message the source never had, or one of another size, stops the copy (the
//! target changed; nothing of that mailbox is written). A body several messages share in
//! the source is stored once in the target too, within one run.
//!
//! Memory: the metadata of one mailbox (as a server's SELECT holds it) and one batch of
//! bodies.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::vanished::{self, Ranges};
use super::*;

/// Bytes of bodies per write (a bigger message is written alone).
const BATCH_BYTES: usize = 8 << 20;

/// Messages per write.
const BATCH_MESSAGES: usize = 500;

/// Key-value entries, metadata updates and expunge-log ranges per write.
const CHUNK: usize = 1000;

/// What a copy did: records written, and found in the target already.
#[derive(Debug, Default, Clone)]
pub struct Copied {
    /// Accounts (all written: a password hash is the source's afterwards).
    pub accounts: u64,
    /// Domains.
    pub domains: u64,
    /// Aliases.
    pub aliases: u64,
    /// Subscriptions.
    pub subscriptions: u64,
    /// Mailboxes created in the target.
    pub mailboxes: u64,
    /// Mailboxes the target had (from an earlier run).
    pub mailboxes_present: u64,
    /// Messages written.
    pub messages: u64,
    /// Messages the target had.
    pub messages_present: u64,
    /// Messages the target had whose flags, date or MODSEQ were brought up to the source's.
    pub messages_updated: u64,
    /// Messages removed from the target (expunged in the source since an earlier run).
    pub messages_removed: u64,
    /// Bytes of bodies written.
    pub bytes: u64,
    /// UIDs in the expunge logs.
    pub expunged: u64,
    /// Queue entries written.
    pub queue: u64,
    /// Queue entries the target had.
    pub queue_present: u64,
    /// Key-value entries written, by namespace.
    pub kv: BTreeMap<String, u64>,
    /// Key-value entries left out because they had expired.
    pub kv_expired: u64,
}

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "copied: {} accounts, {} domains, {} aliases, {} subscriptions",
            self.accounts, self.domains, self.aliases, self.subscriptions
        )?;
        writeln!(
            f,
            "mailboxes: {} created, {} already there",
            self.mailboxes, self.mailboxes_present
        )?;
        writeln!(
            f,
            "messages: {} copied ({} bytes), {} already there ({} updated), {} removed; \
             {} expunged UIDs in the logs",
            self.messages,
            self.bytes,
            self.messages_present,
            self.messages_updated,
            self.messages_removed,
            self.expunged
        )?;
        writeln!(
            f,
            "queue: {} copied, {} already there",
            self.queue, self.queue_present
        )?;
        let spaces: Vec<String> = self.kv.iter().map(|(ns, n)| format!("{ns} {n}")).collect();
        write!(
            f,
            "kv: {} entries ({}), {} expired ones left out",
            self.kv.values().sum::<u64>(),
            if spaces.is_empty() {
                "none".to_string()
            } else {
                spaces.join(", ")
            },
            self.kv_expired
        )
    }
}

/// A source mailbox and its counterpart in the target, if any.
struct Pair {
    source: MailboxRecord,
    target: Option<MailboxRecord>,
}

/// Copy everything `from` holds into `to` (module documentation); progress lines go to
/// `progress`. `Invalid` with a one-line reason when the target holds data that cannot be
/// merged.
pub async fn copy(
    from: &dyn Export,
    to: &dyn Import,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Copied> {
    let mut progress = Progress::new(progress);
    let mut done = Copied::default();
    let accounts = from.accounts().await?;
    let mut owners: BTreeSet<String> = from.owners().await?.into_iter().collect();
    owners.extend(accounts.iter().map(|a| a.address.clone()));

    // Every mailbox both sides have must be mergeable, before anything is written.
    let mut plan: Vec<(String, Vec<Pair>)> = Vec::with_capacity(owners.len());
    let mut counter = from.uidvalidity_counter().await?;
    for owner in owners {
        let mut targets = to.mailbox_records(&owner).await?;
        let mut pairs = Vec::new();
        for source in from.mailbox_records(&owner).await? {
            counter = counter.max(source.mailbox.uidvalidity as u64);
            let target = targets
                .iter()
                .position(|t| t.mailbox.name == source.mailbox.name)
                .map(|i| targets.swap_remove(i));
            if let Some(t) = &target {
                mergeable(&owner, &source.mailbox, &t.mailbox)?;
            }
            pairs.push(Pair { source, target });
        }
        plan.push((owner, pairs));
    }
    to.import_uidvalidity_counter(counter).await?;

    for a in &accounts {
        to.import_account(a).await?;
        done.accounts += 1;
    }
    for d in from.domains().await? {
        to.import_domain(&d).await?;
        done.domains += 1;
    }
    for (alias, targets) in from.aliases().await? {
        to.import_alias(&alias, &targets).await?;
        done.aliases += 1;
    }
    progress.say(&format!(
        "{} accounts, {} domains, {} aliases",
        done.accounts, done.domains, done.aliases
    ));

    let mut shared = HashMap::new();
    for (owner, pairs) in &plan {
        for name in from.subscriptions(owner).await? {
            to.import_subscription(owner, &name).await?;
            done.subscriptions += 1;
        }
        for pair in pairs {
            copy_mailbox(from, to, owner, pair, &mut shared, &mut done, &mut progress).await?;
        }
    }

    for mut entry in from.queue().await? {
        let body = from.blob(entry.blob).await?;
        entry.lease = None;
        if to.import_queue_entry(&entry, &body).await? {
            done.queue += 1;
        } else {
            done.queue_present += 1;
        }
    }
    progress.say(&format!(
        "queue: {} entries",
        done.queue + done.queue_present
    ));

    let now = chrono::Utc::now().timestamp();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = from
            .kv_page(after.as_ref().map(|(n, k)| (n.as_str(), k.as_str())), CHUNK)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.ns.clone(), last.key.clone()));
        let read = page.len() as u64;
        let live: Vec<KvEntry> = page.into_iter().filter(|e| !e.expired(now)).collect();
        done.kv_expired += read - live.len() as u64;
        for e in &live {
            *done.kv.entry(e.ns.clone()).or_default() += 1;
        }
        to.import_kv(&live).await?;
    }
    progress.say(&format!("kv: {} entries", done.kv.values().sum::<u64>()));
    Ok(done)
}

/// Whether mailbox `t` of the target can take the messages of `s` (same name): the same
/// UIDVALIDITY, and counters not above the source's.
fn mergeable(owner: &str, s: &Mailbox, t: &Mailbox) -> Result<()> {
    if s.uidvalidity != t.uidvalidity {
        return Err(StoreError::Invalid(format!(
            "{owner}: mailbox {:?} exists in the target with UIDVALIDITY {} (the source's is \
             {}) and cannot be merged; delete it there, or copy into an empty database",
            s.name, t.uidvalidity, s.uidvalidity
        )));
    }
    if t.uidnext > s.uidnext || t.highest_modseq > s.highest_modseq {
        return Err(StoreError::Invalid(format!(
            "{owner}: mailbox {:?} changed in the target after it was copied (UIDNEXT {}, \
             HIGHESTMODSEQ {} there; {}, {} in the source): did a server run on it? Not merged",
            s.name, t.uidnext, t.highest_modseq, s.uidnext, s.highest_modseq
        )));
    }
    Ok(())
}

/// How a mailbox's messages are merged into the target's.
#[derive(Default)]
struct Merge<'a> {
    /// Source messages the target lacks.
    insert: Vec<&'a MessageMeta>,
    /// Source messages whose flags, date or MODSEQ differ in the target.
    update: Vec<MessageMeta>,
    /// Target messages expunged in the source.
    remove: Vec<u32>,
    /// Messages on both sides.
    present: u64,
}

/// Merge `source` into `target` (both in UID order) by UID; `gone` is the source's
/// expunge log, `target_gone` the target's. A target message the source never had, one of
/// another size, or a source message the target expunged is a conflict.
fn merge<'a>(
    what: &str,
    source: &'a [MessageMeta],
    target: &[MessageMeta],
    gone: &Ranges,
    target_gone: &Ranges,
) -> Result<Merge<'a>> {
    let conflict = |why: String| {
        StoreError::Invalid(format!(
            "{what}: {why}; the target changed after an earlier copy (did a server run on \
             it?), not merged"
        ))
    };
    let mut out = Merge::default();
    let (mut s, mut t) = (source.iter().peekable(), target.iter().peekable());
    loop {
        match (s.peek(), t.peek()) {
            (Some(a), Some(b)) if a.uid == b.uid => {
                if a.size != b.size {
                    return Err(conflict(format!(
                        "UID {} has {} bytes in the source and {} in the target",
                        a.uid, a.size, b.size
                    )));
                }
                if flag_set(&a.flags) != flag_set(&b.flags)
                    || a.modseq != b.modseq
                    || a.internal_date != b.internal_date
                {
                    out.update.push((*a).clone());
                }
                out.present += 1;
                s.next();
                t.next();
            }
            (Some(a), b) if b.is_none_or(|b| a.uid < b.uid) => {
                if vanished::contains(target_gone, a.uid) {
                    return Err(conflict(format!(
                        "UID {} was expunged in the target",
                        a.uid
                    )));
                }
                out.insert.push(a);
                s.next();
            }
            (_, Some(b)) => {
                if !vanished::contains(gone, b.uid) {
                    return Err(conflict(format!(
                        "the target has UID {}, which the source never had",
                        b.uid
                    )));
                }
                out.remove.push(b.uid);
                t.next();
            }
            (None, None) => break,
            (Some(_), None) => unreachable!("covered by the arm above"),
        }
    }
    Ok(out)
}

/// A message read for the next write.
struct Pending {
    meta: MessageMeta,
    /// Its bytes, unless the target holds its body already.
    body: Option<Vec<u8>>,
    /// The target's id of its body, when it holds it already.
    stored: Option<u64>,
    /// Whether other source messages share its body (remember the target's id).
    shared: bool,
}

/// Copy one mailbox (module documentation). `shared`: source body id → target body id of
/// the bodies several messages share that are in the target already.
async fn copy_mailbox(
    from: &dyn Export,
    to: &dyn Import,
    owner: &str,
    pair: &Pair,
    shared: &mut HashMap<u64, u64>,
    done: &mut Copied,
    progress: &mut Progress<'_>,
) -> Result<()> {
    let source = &pair.source;
    let name = &source.mailbox.name;
    let what = format!("{owner}: mailbox {name:?}");
    let messages = from.messages(source.mailbox.id).await?;
    let logged = from.vanished(source.mailbox.id).await?;
    let gone = vanished::implied(&source.mailbox, &messages, &logged);
    drop(logged);
    let (id, merge, target_gone) = match &pair.target {
        Some(t) => {
            let id = t.mailbox.id;
            let target = to.messages(id).await?;
            let target_gone = vanished::ranges(to.vanished(id).await?);
            let merge = merge(&what, &messages, &target, &gone, &target_gone)?;
            to.import_mailbox_state(id, source).await?;
            done.mailboxes_present += 1;
            (id, merge, target_gone)
        }
        None => {
            let id = to.import_mailbox(owner, source).await?;
            done.mailboxes += 1;
            let merge = merge(&what, &messages, &[], &gone, &Vec::new())?;
            (id, merge, Vec::new())
        }
    };
    let total = messages.len() as u64;
    let mut count = merge.present;
    done.messages_present += merge.present;

    if !merge.remove.is_empty() {
        to.import_removal(id, &merge.remove).await?;
        done.messages_removed += merge.remove.len() as u64;
    }

    let mut batch: Vec<Pending> = Vec::new();
    let mut bytes = 0usize;
    for meta in merge.insert {
        let mut stored = shared.get(&meta.blob).copied();
        let is_shared = stored.is_some() || from.blob_refs(meta.blob).await? > 1;
        // A body shared with a message of this batch: write the batch first, so that this
        // one refers to the body it stored.
        if stored.is_none() && is_shared && batch.iter().any(|p| p.meta.blob == meta.blob) {
            count += write(to, id, &mut batch, shared, done).await?;
            bytes = 0;
            stored = shared.get(&meta.blob).copied();
        }
        let body = match stored {
            Some(_) => None,
            None => Some(
                from.blob(meta.blob)
                    .await
                    .map_err(|e| StoreError::Backend(format!("{what}, UID {}: {e}", meta.uid)))?,
            ),
        };
        bytes += body.as_ref().map_or(0, Vec::len);
        batch.push(Pending {
            meta: meta.clone(),
            body,
            stored,
            shared: is_shared,
        });
        if batch.len() >= BATCH_MESSAGES || bytes >= BATCH_BYTES {
            count += write(to, id, &mut batch, shared, done).await?;
            bytes = 0;
            progress.tick(|| format!("{owner}: {name} {count}/{total} messages"));
        }
    }
    count += write(to, id, &mut batch, shared, done).await?;

    for chunk in merge.update.chunks(CHUNK) {
        to.import_message_state(id, chunk).await?;
        done.messages_updated += chunk.len() as u64;
    }
    if gone != target_gone {
        for chunk in gone.chunks(CHUNK) {
            to.import_vanished(id, chunk).await?;
        }
    }
    done.expunged += vanished::count(&gone);
    if total > 0 {
        progress.say(&format!("{owner}: {name} {count}/{total} messages"));
    }
    Ok(())
}

/// Write a batch of messages into mailbox `id` and empty it; how many it held.
async fn write(
    to: &dyn Import,
    id: u64,
    batch: &mut Vec<Pending>,
    shared: &mut HashMap<u64, u64>,
    done: &mut Copied,
) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let records: Vec<(MessageMeta, Body<'_>)> = batch
        .iter()
        .map(|p| {
            let body = match (&p.body, p.stored) {
                (Some(b), _) => Body::Bytes(b),
                (None, Some(s)) => Body::Stored(s),
                (None, None) => unreachable!("a pending message has bytes or a stored body"),
            };
            (p.meta.clone(), body)
        })
        .collect();
    let stored = to.import_messages(id, &records).await?;
    drop(records);
    for (p, target) in batch.iter().zip(stored) {
        if p.shared {
            shared.insert(p.meta.blob, target);
        }
        done.bytes += p.body.as_ref().map_or(0, |b| b.len() as u64);
    }
    let n = batch.len() as u64;
    done.messages += n;
    batch.clear();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(uid: u32, size: u64, flags: &[&str], modseq: u64) -> MessageMeta {
        MessageMeta {
            uid,
            blob: uid as u64,
            size,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internal_date: 100,
            modseq,
        }
    }

    #[test]
    fn messages_merge_by_uid() {
        let source = [
            msg(1, 10, &["\\Seen"], 3),
            msg(2, 20, &["a", "b"], 4),
            msg(4, 40, &[], 5),
        ];
        let target = [
            msg(1, 10, &["\\Seen"], 3),
            msg(2, 20, &["b", "a"], 4),
            msg(3, 30, &[], 2),
        ];
        let gone = vanished::ranges([(3, 6)]);
        let m = merge("a: INBOX", &source, &target, &gone, &Vec::new()).unwrap();
        assert_eq!(m.insert.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![4]);
        assert!(m.update.is_empty(), "flag order does not matter");
        assert_eq!(m.remove, vec![3]);
        assert_eq!(m.present, 2);

        let mut changed = target.clone();
        changed[0].flags.push("\\Flagged".into());
        let m = merge("a: INBOX", &source, &changed, &gone, &Vec::new()).unwrap();
        assert_eq!(m.update.len(), 1);
        assert_eq!(m.update[0].flags, vec!["\\Seen".to_string()]);
    }

    #[test]
    fn what_the_target_has_alone_is_a_conflict() {
        let source = [msg(1, 10, &[], 3)];
        let stranger = [msg(1, 10, &[], 3), msg(2, 5, &[], 4)];
        let e = merge("a: INBOX", &source, &stranger, &Vec::new(), &Vec::new());
        assert!(matches!(e, Err(StoreError::Invalid(m)) if m.contains("UID 2")));
        let resized = [msg(1, 11, &[], 3)];
        assert!(merge("a: INBOX", &source, &resized, &Vec::new(), &Vec::new()).is_err());
        let expunged_there = vanished::ranges([(1, 9)]);
        assert!(merge("a: INBOX", &source, &[], &Vec::new(), &expunged_there).is_err());
    }
}
