//! Mailboxes, message metadata, flags, subscriptions and `\Recent` ([`Mailboxes`]) over
//! sled.

use ::sled::Transactional;
use ::sled::transaction::ConflictableTransactionError;

use super::blobs::release_blob;
use super::*;

/// Records a scan reads on the calling task before the rest goes to `block_in_place`.
const INLINE_SCAN: usize = 1024;

impl SledStore {
    /// A mailbox's message metadata in UID order. The first [`INLINE_SCAN`] records are
    /// read on the calling task; a bigger mailbox (~1.5 µs a record) is read on with
    /// `block_in_place`, so a 100,000-message scan does not hold up the worker's other
    /// sessions.
    pub(super) fn read_messages(&self, mailbox_id: u64) -> Result<Vec<MessageMeta>> {
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
        self.notify(&user, Change::flags_set(mailbox_id, changes, &modseq));
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
        if let Some(change) = Change::flags_updated(mailbox_id, &result.0) {
            self.notify(&user, change);
        }
        Ok(result)
    }
}
