//! The write of an accepted message ([`Mailboxes::ingest`]) over PostgreSQL: bodies,
//! placements and queue entry in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use super::blobs::insert_blob;
use super::mailboxes::{insert_messages, lock_or_create_mailbox, save_counters};
use super::queue::insert_entry;
use super::*;

impl PostgresStore {
    /// The writes of [`Mailboxes::ingest`]: one transaction, durable when it returns.
    ///
    /// It locks the row of every target mailbox first (creating missing ones), in one order
    /// (account, then name) so concurrent ingests into overlapping mailboxes queue up
    /// rather than deadlock; then it stores each body once, takes each placement's UID and
    /// MODSEQ from its locked mailbox row, writes the message records, the mailboxes' new
    /// UIDNEXT and HIGHESTMODSEQ and the queue entry, and commits. A UID is taken only by a
    /// transaction that commits (a failed one rolls its mailbox rows back), and the next
    /// writer to a mailbox reads its row only after that commit, so UIDs become visible in
    /// ascending order across every node. The changes are published after the commit, under
    /// the accounts' in-process locks.
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
        let keys: BTreeSet<(String, String)> =
            filed.iter().flat_map(|f| f.1.iter().map(key)).collect();
        let ((placed, full, created), _lock) =
            locked_transaction!(self, keys.iter().map(|k| k.0.as_str()), |tx| {
                // Bodies and the queue entry first: nothing refers to them until the messages
                // are inserted, and the mailbox rows' locks (which serialise writers to a
                // mailbox) are then held only for the messages, the counters and the COMMIT.
                let mut blobs = Vec::with_capacity(filed.len());
                for (message, placements) in &filed {
                    blobs.push(insert_blob(&tx, message, placements.len()).await?);
                }
                if let Some((entry, message)) = queue {
                    let mut entry = entry.clone();
                    entry.blob = insert_blob(&tx, message, 1).await?;
                    insert_entry(&tx, &entry).await?;
                }
                let mut boxes: BTreeMap<&(String, String), Mailbox> = BTreeMap::new();
                let mut created = Vec::new();
                for k in &keys {
                    let (mb, new) = lock_or_create_mailbox(&tx, &k.0, &k.1, None).await?;
                    if new {
                        created.push((k.0.clone(), mb.name.clone()));
                    }
                    boxes.insert(k, mb);
                }
                let mut placed = Vec::new();
                let mut full: Vec<(String, u64, MessageMeta)> = Vec::new();
                let mut records: BTreeMap<u64, Vec<MessageMeta>> = BTreeMap::new();
                for ((message, placements), blob) in filed.iter().zip(blobs) {
                    for p in placements.iter() {
                        if !placed.is_empty() && self.failpoints.fire("ingest-after-placement") {
                            return Err(StoreError::Backend(
                                "failpoint ingest-after-placement".into(),
                            )
                            .into());
                        }
                        let k = key(p);
                        let mb = boxes.get_mut(&k).expect("every target is locked");
                        let meta = mb.place(blob, message.len() as u64, &p.flags, internal_date);
                        placed.push(Placed {
                            user: k.0.clone(),
                            mailbox: mb.id,
                            uid: meta.uid,
                            modseq: meta.modseq,
                        });
                        records.entry(mb.id).or_default().push(meta.clone());
                        full.push((k.0, mb.id, meta));
                    }
                }
                if let ([(id, metas)], [mb]) = (
                    &records.iter().collect::<Vec<_>>()[..],
                    &boxes.values().collect::<Vec<_>>()[..],
                ) {
                    // One mailbox (most mail): both statements in one round trip (pipelined on
                    // the connection).
                    tokio::try_join!(insert_messages(&tx, **id, metas), save_counters(&tx, mb))?;
                } else {
                    for (id, metas) in &records {
                        insert_messages(&tx, *id, metas).await?;
                    }
                    for mb in boxes.values() {
                        save_counters(&tx, mb).await?;
                    }
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
}
