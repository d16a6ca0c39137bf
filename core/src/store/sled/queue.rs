//! The outbound queue ([`Queue`]) and leases ([`Leases`]) over sled.

use super::blobs::release_blob;
use super::*;

impl SledStore {
    /// Change queue entry `id` in place, atomically, if `owner` holds its lease.
    pub(super) fn change_owned(
        &self,
        id: &str,
        owner: &str,
        change: &dyn Fn(&mut QueueEntry),
    ) -> Result<()> {
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
    pub(super) fn drop_leases(&self) -> Result<()> {
        for item in self.queue.iter() {
            let (key, v) = item?;
            let mut e: QueueEntry = serde_json::from_slice(&v)?;
            if e.lease.take().is_some() {
                self.queue.insert(key, serde_json::to_vec(&e)?)?;
            }
        }
        Ok(())
    }
}

fn id_of(e: &QueueEntry) -> &str {
    &e.id
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
