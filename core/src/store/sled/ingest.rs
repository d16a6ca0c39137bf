//! The write of an accepted message ([`Mailboxes::ingest`]): bodies, placements and queue
//! entry, in one sled transaction or, for one record, without one.

use std::collections::HashMap;

use ::sled::Transactional;
use ::sled::transaction::ConflictableTransactionError;

use super::*;

impl SledStore {
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
    pub(super) fn write_ingest(
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
                        let meta = mb.place(blob, message.len() as u64, &p.flags, internal_date);
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
    pub(super) fn write_placed(
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
    pub(super) fn write_queued(&self, entry: &QueueEntry, json: &[u8]) -> Result<()> {
        self.blobrefs
            .insert(entry.blob.to_be_bytes(), &1u32.to_be_bytes())?;
        self.queue.insert(entry.id.as_bytes(), json)?;
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
