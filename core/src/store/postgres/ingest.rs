//! The write of an accepted message ([`Mailboxes::ingest`]) over PostgreSQL: bodies,
//! placements and queue entry in one transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::blobs::{insert_blob, insert_blobs};
use super::mailboxes::{NewMessage, append_messages, lock_or_create_mailbox};
use super::queue::insert_entry;
use super::*;

impl PostgresStore {
    /// The writes of [`Mailboxes::ingest`]: one transaction, durable when it returns.
    ///
    /// It stores each body once and the queue entry; then, mailbox by mailbox in one order
    /// (account, then name, so concurrent ingests into overlapping mailboxes queue up rather
    /// than deadlock), one statement locks the mailbox's row, takes the messages' UIDs and
    /// MODSEQs from it and writes their records and its new UIDNEXT and HIGHESTMODSEQ
    /// ([`append_messages`]; a missing mailbox is created first); then it commits. A UID is
    /// taken only by a transaction that commits (a failed one rolls its mailbox rows back),
    /// and the next writer to a mailbox reads its row only after that commit, so UIDs become
    /// visible in ascending order across every node. The changes are published after the
    /// commit, under the accounts' in-process locks.
    pub(super) async fn write_ingest(
        &self,
        internal_date: i64,
        filed: &[(&[u8], &[Placement])],
        queue: Option<(&QueueEntry, &[u8])>,
    ) -> Result<Receipt> {
        let filed: Vec<(&[u8], &[Placement])> =
            filed.iter().filter(|f| !f.1.is_empty()).copied().collect();
        if filed.is_empty() && queue.is_none() {
            return Ok(Receipt::default());
        }
        let key = |p: &Placement| (normalize_address(&p.user), canonical_mailbox(&p.mailbox));
        // Each placement's mailbox, in the order given.
        let keys_of: Vec<(String, String)> =
            filed.iter().flat_map(|f| f.1.iter().map(key)).collect();
        let users: BTreeSet<&str> = keys_of.iter().map(|k| k.0.as_str()).collect();
        let ((placed, full, created), _lock) =
            locked_transaction!(self, users.iter().copied(), |tx| {
                // Bodies and the queue entry first: nothing refers to them until the messages
                // are inserted, and the mailbox rows' locks (which serialise writers to a
                // mailbox) are then held only for one statement each and the COMMIT.
                let mut blobs = Vec::with_capacity(filed.len());
                for (message, placements) in &filed {
                    blobs.push(insert_blob(tx, message, placements.len()).await?);
                }
                if let Some((entry, message)) = queue {
                    let mut entry = entry.clone();
                    entry.blob = insert_blob(tx, message, 1).await?;
                    insert_entry(tx, &entry).await?;
                }
                // The placements by target mailbox, taken in one order (account, then
                // name); each mailbox's in one statement, in the order they were given.
                let mut targets: BTreeMap<&(String, String), Vec<(usize, NewMessage)>> =
                    BTreeMap::new();
                let mut n = 0;
                for ((message, placements), blob) in filed.iter().zip(&blobs) {
                    for (p, k) in placements.iter().zip(&keys_of[n..]) {
                        targets.entry(k).or_default().push((
                            n,
                            NewMessage {
                                blob: *blob,
                                size: message.len() as u64,
                                flags: &p.flags,
                                internal_date,
                            },
                        ));
                        n += 1;
                    }
                }
                let mut created = Vec::new();
                let mut written: Vec<Option<(u64, MessageMeta)>> = vec![None; n];
                let mut any = false;
                for (k, group) in &targets {
                    if any && self.failpoints.fire("ingest-after-placement") {
                        return Err(
                            StoreError::Backend("failpoint ingest-after-placement".into()).into(),
                        );
                    }
                    let new: Vec<NewMessage> = group.iter().map(|g| g.1).collect();
                    let (mb, metas) = append_or_create(tx, k, &new, &mut created).await?;
                    for ((i, _), meta) in group.iter().zip(metas) {
                        written[*i] = Some((mb.id, meta));
                    }
                    any = true;
                }
                let mut placed = Vec::with_capacity(n);
                let mut full: Vec<(String, u64, MessageMeta)> = Vec::with_capacity(n);
                for (k, w) in keys_of.iter().zip(written) {
                    let (mailbox, meta) = w.expect("every placement is written");
                    placed.push(Placed {
                        user: k.0.clone(),
                        mailbox,
                        uid: meta.uid,
                        modseq: meta.modseq,
                    });
                    full.push((k.0.clone(), mailbox, meta));
                }
                Ok((placed, full, created))
            })?;
        for (user, name) in created {
            self.notify(&user, Change::Created { name }).await;
        }
        for (user, change) in appended(&full) {
            self.notify(user, change).await;
        }
        Ok(Receipt { placed })
    }

    /// [`Mailboxes::ingest`]: a message with one placement and nothing queued (most mail)
    /// goes through its mailbox's lane ([`Lanes`]); anything else is written on its own.
    ///
    /// A message that finds its mailbox's lane free writes itself, in this task, and
    /// then hands the lane to a writer task if others arrived meanwhile. One that finds it
    /// busy waits in it: the writer task takes it in its next batch and sends the result.
    /// The writer runs apart from the callers, so a session that goes away does not cancel
    /// the others' writes.
    pub(super) async fn ingest_one(&self, ingest: Ingest) -> Result<Receipt> {
        let single = match (&ingest.filed[..], &ingest.queue) {
            ([f], None) if f.placements.len() == 1 && f.message.len() <= BATCHED_SIZE => {
                Some((f.message.clone(), &f.placements[0]))
            }
            _ => None,
        };
        let Some((message, p)) = single else {
            let (filed, queue) = ingest.parts();
            return self.write_ingest(ingest.internal_date, &filed, queue).await;
        };
        let key = (normalize_address(&p.user), canonical_mailbox(&p.mailbox));
        let item = Item {
            message,
            flags: p.flags.clone(),
            internal_date: ingest.internal_date,
        };
        let (reply, waited) = tokio::sync::oneshot::channel();
        let waiting = {
            let mut lanes = self.lanes.lock().expect("lanes");
            match lanes.get_mut(&key) {
                Some(queue) => {
                    queue.push(Waiting { item, reply });
                    None
                }
                None => {
                    lanes.insert(key.clone(), Vec::new());
                    Some(item)
                }
            }
        };
        let placed = match waiting {
            Some(item) => {
                let _handoff = Handoff {
                    store: self,
                    key: &key,
                };
                self.write_batch(&key, &[&item]).await?.remove(0)
            }
            None => waited
                .await
                .map_err(|_| StoreError::Backend("database: the write was abandoned".into()))??,
        };
        Ok(Receipt {
            placed: vec![placed],
        })
    }

    /// Write what waits in the lane of `key`, a batch at a time, until it is empty (then
    /// the lane is removed); each batch is one transaction and one COMMIT.
    async fn write_lane(&self, key: (String, String)) {
        loop {
            let batch: Vec<Waiting> = {
                let mut lanes = self.lanes.lock().expect("lanes");
                let queue = lanes.get_mut(&key).expect("a lane has its writer");
                if queue.is_empty() {
                    lanes.remove(&key);
                    return;
                }
                let mut bytes = 0;
                let n = queue
                    .iter()
                    .take_while(|w| {
                        bytes += w.item.message.len();
                        bytes <= BATCH_BYTES
                    })
                    .count()
                    .clamp(1, BATCH);
                queue.drain(..n).collect()
            };
            let items: Vec<&Item> = batch.iter().map(|w| &w.item).collect();
            match self.write_batch(&key, &items).await {
                Ok(placed) => {
                    for (w, p) in batch.into_iter().zip(placed) {
                        let _ = w.reply.send(Ok(p));
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    for w in batch {
                        let _ = w.reply.send(Err(StoreError::Backend(text.clone())));
                    }
                }
            }
        }
    }

    /// One transaction for `batch`, messages for the mailbox `key`: their bodies, then
    /// [`append_messages`]; published after the COMMIT.
    async fn write_batch(&self, key: &(String, String), batch: &[&Item]) -> Result<Vec<Placed>> {
        let ((mb, metas, created), _lock) = locked_transaction!(self, [key.0.as_str()], |tx| {
            let blobs = match batch {
                [one] => vec![insert_blob(tx, &one.message, 1).await?],
                _ => {
                    let bodies: Vec<&[u8]> = batch.iter().map(|w| w.message.as_slice()).collect();
                    insert_blobs(tx, &bodies).await?
                }
            };
            let new: Vec<NewMessage> = batch
                .iter()
                .zip(blobs)
                .map(|(w, blob)| NewMessage {
                    blob,
                    size: w.message.len() as u64,
                    flags: &w.flags,
                    internal_date: w.internal_date,
                })
                .collect();
            let mut created = Vec::new();
            let (mb, metas) = append_or_create(tx, key, &new, &mut created).await?;
            if self.failpoints.fire("ingest-batch") {
                return Err(StoreError::Backend("failpoint ingest-batch".into()).into());
            }
            Ok((mb, metas, created))
        })?;
        for (user, name) in created {
            self.notify(&user, Change::Created { name }).await;
        }
        let placed = metas
            .iter()
            .map(|m| Placed {
                user: key.0.clone(),
                mailbox: mb.id,
                uid: m.uid,
                modseq: m.modseq,
            })
            .collect();
        let full: Vec<(String, u64, MessageMeta)> = metas
            .into_iter()
            .map(|m| (key.0.clone(), mb.id, m))
            .collect();
        for (user, change) in appended(&full) {
            self.notify(user, change).await;
        }
        Ok(placed)
    }
}

/// When a message that wrote itself is done (or its caller went away): the lane goes to
/// a writer task if messages wait in it, else it is removed.
struct Handoff<'a> {
    store: &'a PostgresStore,
    key: &'a (String, String),
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        let mut lanes = self.store.lanes.lock().expect("lanes");
        match lanes.get(self.key) {
            Some(queue) if queue.is_empty() => {
                lanes.remove(self.key);
            }
            Some(_) => {
                let (store, key) = (self.store.clone(), self.key.clone());
                tokio::spawn(async move { store.write_lane(key).await });
            }
            None => {}
        }
    }
}

/// Messages larger than this are written on their own, not batched.
const BATCHED_SIZE: usize = 1 << 20;

/// At most this many messages in one batch…
const BATCH: usize = 64;

/// …and at most this many bytes of bodies (a batch has at least one message).
const BATCH_BYTES: usize = 8 << 20;

/// Messages with one placement waiting to be written, by mailbox (account, name): a
/// mailbox's writers are serialised by its row lock until their COMMIT, so instead of
/// queueing on the lock one by one, the messages that arrive while a batch is written go
/// together in the next transaction (one lock, one statement, one COMMIT and WAL flush).
/// A mailbox has a lane while its writer task runs.
pub(super) type Lanes = std::sync::Mutex<HashMap<(String, String), Vec<Waiting>>>;

/// A message for one mailbox.
pub(super) struct Item {
    message: Arc<Vec<u8>>,
    flags: Vec<String>,
    internal_date: i64,
}

/// A message waiting in a lane, and where its result goes.
pub(super) struct Waiting {
    item: Item,
    reply: tokio::sync::oneshot::Sender<Result<Placed>>,
}

/// Append `new` to the mailbox `key`, creating it if it is missing (noted in `created`).
async fn append_or_create(
    tx: &Client,
    key: &(String, String),
    new: &[NewMessage<'_>],
    created: &mut Vec<(String, String)>,
) -> std::result::Result<(Mailbox, Vec<MessageMeta>), Fail> {
    if let Some(done) = append_messages(tx, &key.0, &key.1, new).await? {
        return Ok(done);
    }
    let (mb, fresh) = lock_or_create_mailbox(tx, &key.0, &key.1, None).await?;
    if fresh {
        created.push((key.0.clone(), mb.name.clone()));
    }
    append_messages(tx, &key.0, &key.1, new)
        .await?
        .ok_or_else(|| Fail::Retry(format!("mailbox {} created and gone", key.1)))
}
