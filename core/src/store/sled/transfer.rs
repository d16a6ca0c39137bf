//! The raw reads of `corvus store copy` ([`Export`]) over sled: owners from the keys of the
//! `mailboxes` and `subscriptions` trees, the `vanished`, `recent`, `blobrefs` and `kv`
//! trees as they are, and the UIDVALIDITY counter in `meta`.

use super::super::transfer::{Export, KvEntry, MailboxRecord};
use super::*;

/// The account part of a `user NUL name` key.
fn owner_of(key: &[u8]) -> Option<&[u8]> {
    key.split(|b| *b == 0).next()
}

fn text(b: &[u8], what: &str) -> Result<String> {
    String::from_utf8(b.to_vec())
        .map_err(|_| StoreError::Backend(format!("corrupt record: {what} is not UTF-8")))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().unwrap_or([0; 4]))
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap_or([0; 8]))
}

/// A `kv` record: key `ns NUL key`, value expiry (big-endian) ‖ bytes.
fn kv_entry(k: &[u8], v: &[u8]) -> Result<KvEntry> {
    let split = k.iter().position(|b| *b == 0).unwrap_or(k.len());
    if v.len() < 8 || split == k.len() {
        return Err(StoreError::Backend("corrupt kv record".into()));
    }
    Ok(KvEntry {
        ns: text(&k[..split], "a kv namespace")?,
        key: text(&k[split + 1..], "a kv key")?,
        value: v[8..].to_vec(),
        expires: i64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
    })
}

#[async_trait::async_trait]
impl Export for SledStore {
    async fn owners(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for tree in [&self.mailboxes, &self.subscriptions] {
            for k in tree.iter().keys() {
                let k = k?;
                let owner = text(owner_of(&k).unwrap_or_default(), "an owner")?;
                if out.last() != Some(&owner) {
                    out.push(owner);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    async fn mailbox_records(&self, owner: &str) -> Result<Vec<MailboxRecord>> {
        let mut out = Vec::new();
        for mailbox in self.mailboxes(owner).await? {
            let recent = self
                .recent
                .get(mailbox.id.to_be_bytes())?
                .map_or(0, |v| be_u32(&v));
            out.push(MailboxRecord { mailbox, recent });
        }
        Ok(out)
    }

    async fn vanished(&self, mailbox: u64) -> Result<Vec<(u32, u64)>> {
        self.vanished
            .scan_prefix(mailbox.to_be_bytes())
            .map(|item| {
                let (k, v) = item?;
                Ok((be_u32(&k[8..]), be_u64(&v)))
            })
            .collect()
    }

    async fn blob_refs(&self, blob: u64) -> Result<u32> {
        Ok(self
            .blobrefs
            .get(blob.to_be_bytes())?
            .map_or(0, |v| be_u32(&v)))
    }

    async fn kv_page(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<KvEntry>> {
        use std::ops::Bound;
        let start = match after {
            Some((ns, key)) => Bound::Excluded(mbox_key(ns, key)),
            None => Bound::Unbounded,
        };
        self.kv
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                kv_entry(&k, &v)
            })
            .collect()
    }

    async fn kv_entries(&self, keys: &[(String, String)]) -> Result<Vec<Option<KvEntry>>> {
        keys.iter()
            .map(|(ns, key)| {
                let k = mbox_key(ns, key);
                self.kv.get(&k)?.map(|v| kv_entry(&k, &v)).transpose()
            })
            .collect()
    }

    async fn uidvalidity_counter(&self) -> Result<u64> {
        Ok(self
            .meta
            .get("uidvalidity")?
            .map_or(0, |v| be_u32(&v) as u64))
    }
}

#[cfg(test)]
impl SledStore {
    /// Make mailbox `name` of `user` look as a store made before expunges were logged left
    /// it: no log, `logs_expunges` false.
    pub(crate) fn forget_expunge_log(&self, user: &str, name: &str) -> Result<()> {
        let key = mbox_key(user, name);
        update_json(
            &self.mailboxes,
            &key,
            || format!("mailbox {name}"),
            |m: &mut Mailbox| m.logs_expunges = false,
        )?;
        let id =
            serde_json::from_slice::<Mailbox>(&self.mailboxes.get(&key)?.expect("mailbox"))?.id;
        for k in self.vanished.scan_prefix(id.to_be_bytes()).keys() {
            self.vanished.remove(k?)?;
        }
        Ok(())
    }
}
