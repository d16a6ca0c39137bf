//! The raw reads and writes of `corvus store copy` ([`Export`], [`Import`]) over
//! PostgreSQL: rows with the UIDs, MODSEQs, UIDVALIDITY and expiry they are given. Each
//! write is one transaction through `transaction!` (retried on 40001/40P01), plain SQL with
//! `ON CONFLICT`, as the module's rules ask. Writes to a mailbox's messages lock its row
//! (`FOR UPDATE`) and check the records against its counters, as every writer does. No
//! change is published: no server may run on the target during a copy.

use std::collections::HashMap;

use super::super::transfer::{Body, Export, Import, KvEntry, MailboxRecord};
use super::blobs::{add_refs, insert_blob, release};
use super::mailboxes::{MAILBOX_COLUMNS, insert_messages, mailbox_of};
use super::queue::insert_entry;
use super::*;

/// A `kv` row of `ns, key, value, expires`.
fn kv_of(r: &Row) -> KvEntry {
    KvEntry {
        ns: r.get(0),
        key: r.get(1),
        value: r.get(2),
        expires: r.get(3),
    }
}

fn ids(uids: &[u32]) -> Vec<i64> {
    uids.iter().map(|u| *u as i64).collect()
}

#[async_trait::async_trait]
impl Export for PostgresStore {
    async fn owners(&self) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rs = rows(
            &c,
            "SELECT owner FROM mailboxes UNION SELECT owner FROM subscriptions ORDER BY 1",
            &[],
        )
        .await?;
        Ok(rs.iter().map(|r| r.get(0)).collect())
    }

    async fn mailbox_records(&self, owner: &str) -> Result<Vec<MailboxRecord>> {
        let c = self.client().await?;
        let rs = rows(
            &c,
            &format!(
                "SELECT {MAILBOX_COLUMNS}, \
                 (SELECT mark FROM recent WHERE recent.mailbox_id = mailboxes.id) \
                 FROM mailboxes WHERE owner = $1 ORDER BY name"
            ),
            &[&normalize_address(owner)],
        )
        .await?;
        Ok(rs
            .iter()
            .map(|r| MailboxRecord {
                mailbox: mailbox_of(r),
                recent: r.get::<_, Option<i64>>(6).unwrap_or(0) as u32,
            })
            .collect())
    }

    async fn vanished(&self, mailbox: u64) -> Result<Vec<(u32, u64)>> {
        let c = self.client().await?;
        let rs = rows(
            &c,
            "SELECT uid, modseq FROM vanished WHERE mailbox_id = $1 ORDER BY uid",
            &[&(mailbox as i64)],
        )
        .await?;
        Ok(rs
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u32, u64_of(r.get(1))))
            .collect())
    }

    async fn blob_refs(&self, blob: u64) -> Result<u32> {
        let c = self.client().await?;
        let r = row(
            &c,
            "SELECT refs FROM blobs WHERE id = $1",
            &[&(blob as i64)],
        )
        .await?;
        Ok(r.map_or(0, |r| r.get::<_, i32>(0).max(0) as u32))
    }

    async fn kv_page(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<KvEntry>> {
        let c = self.client().await?;
        let limit = limit as i64;
        let rs = match after {
            Some((ns, key)) => {
                rows(
                    &c,
                    "SELECT ns, key, value, expires FROM kv WHERE (ns, key) > ($1, $2) \
                     ORDER BY ns, key LIMIT $3",
                    &[&ns, &key, &limit],
                )
                .await?
            }
            None => {
                rows(
                    &c,
                    "SELECT ns, key, value, expires FROM kv ORDER BY ns, key LIMIT $1",
                    &[&limit],
                )
                .await?
            }
        };
        Ok(rs.iter().map(kv_of).collect())
    }

    async fn kv_entries(&self, keys: &[(String, String)]) -> Result<Vec<Option<KvEntry>>> {
        let c = self.client().await?;
        let (ns, key): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(n, k)| (n.as_str(), k.as_str())).unzip();
        let rs = rows(
            &c,
            "SELECT kv.ns, kv.key, kv.value, kv.expires \
             FROM unnest($1::TEXT[], $2::TEXT[]) AS k (ns, key) \
             JOIN kv ON kv.ns = k.ns AND kv.key = k.key",
            &[&ns, &key],
        )
        .await?;
        let mut found: HashMap<(String, String), KvEntry> = rs
            .iter()
            .map(|r| {
                let e = kv_of(r);
                ((e.ns.clone(), e.key.clone()), e)
            })
            .collect();
        Ok(keys.iter().map(|k| found.remove(k)).collect())
    }

    async fn uidvalidity_counter(&self) -> Result<u64> {
        let c = self.client().await?;
        let r = row(
            &c,
            "SELECT value FROM counters WHERE name = 'uidvalidity'",
            &[],
        )
        .await?;
        Ok(r.map_or(0, |r| u64_of(r.get(0))))
    }
}

/// Set mailbox `id`'s `\Recent` mark to at least `mark`.
async fn raise_recent(c: &Client, id: u64, mark: u32) -> std::result::Result<(), Fail> {
    if mark > 0 {
        exec(
            c,
            "INSERT INTO recent (mailbox_id, mark) VALUES ($1, $2) ON CONFLICT (mailbox_id) \
             DO UPDATE SET mark = GREATEST(recent.mark, EXCLUDED.mark)",
            &[&(id as i64), &(mark as i64)],
        )
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Import for PostgresStore {
    async fn import_account(&self, account: &Account) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO accounts (address, password_hash, created) VALUES ($1, $2, $3) \
             ON CONFLICT (address) DO UPDATE SET password_hash = EXCLUDED.password_hash",
            &[
                &normalize_address(&account.address),
                &account.password_hash,
                &account.created,
            ],
        )
        .await?;
        Ok(())
    }

    async fn import_domain(&self, domain: &str) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO domains (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[&domain],
        )
        .await?;
        Ok(())
    }

    async fn import_alias(&self, alias: &str, targets: &[String]) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO aliases (alias, targets) VALUES ($1, $2) \
             ON CONFLICT (alias) DO UPDATE SET targets = EXCLUDED.targets",
            &[&alias, &targets],
        )
        .await?;
        Ok(())
    }

    async fn import_subscription(&self, owner: &str, name: &str) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO subscriptions (owner, name) VALUES ($1, $2) \
             ON CONFLICT (owner, name) DO NOTHING",
            &[&normalize_address(owner), &name],
        )
        .await?;
        Ok(())
    }

    async fn import_mailbox(&self, owner: &str, record: &MailboxRecord) -> Result<u64> {
        let owner = normalize_address(owner);
        let mb = &record.mailbox;
        transaction!(self, |tx| {
            let made = row(
                tx,
                "INSERT INTO mailboxes \
                 (owner, name, uidvalidity, uidnext, highest_modseq, special_use) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (owner, name) DO NOTHING \
                 RETURNING id",
                &[
                    &owner,
                    &mb.name,
                    &(mb.uidvalidity as i64),
                    &(mb.uidnext as i64),
                    &(mb.highest_modseq as i64),
                    &mb.special_use,
                ],
            )
            .await?;
            let Some(made) = made else {
                return Err(StoreError::Exists(format!("mailbox {}", mb.name)).into());
            };
            let id = u64_of(made.get(0));
            raise_recent(tx, id, record.recent).await?;
            Ok(id)
        })
    }

    async fn import_mailbox_state(&self, id: u64, record: &MailboxRecord) -> Result<()> {
        let mb = &record.mailbox;
        transaction!(self, |tx| {
            let n = exec(
                tx,
                "UPDATE mailboxes SET uidnext = $2, highest_modseq = $3, special_use = $4 \
                 WHERE id = $1 AND uidnext <= $2 AND highest_modseq <= $3",
                &[
                    &(id as i64),
                    &(mb.uidnext as i64),
                    &(mb.highest_modseq as i64),
                    &mb.special_use,
                ],
            )
            .await?;
            if n == 0 {
                return Err(StoreError::Invalid(format!(
                    "mailbox {} is gone from the target, or its counters are above the source's",
                    mb.name
                ))
                .into());
            }
            raise_recent(tx, id, record.recent).await?;
            Ok(())
        })
    }

    async fn import_messages(
        &self,
        id: u64,
        messages: &[(MessageMeta, Body<'_>)],
    ) -> Result<Vec<u64>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |tx| {
            let Some(r) = row(
                tx,
                &format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = $1 FOR UPDATE"),
                &[&(id as i64)],
            )
            .await?
            else {
                return Err(StoreError::NotFound(format!("mailbox {id}")).into());
            };
            let mb = mailbox_of(&r);
            let mut metas = Vec::with_capacity(messages.len());
            let mut reused = Vec::new();
            for (meta, body) in messages {
                if meta.uid >= mb.uidnext || meta.modseq > mb.highest_modseq {
                    return Err(StoreError::Invalid(format!(
                        "message UID {} MODSEQ {} is beyond mailbox {}'s UIDNEXT {} and \
                         HIGHESTMODSEQ {}",
                        meta.uid, meta.modseq, mb.name, mb.uidnext, mb.highest_modseq
                    ))
                    .into());
                }
                let blob = match body {
                    Body::Bytes(b) => insert_blob(tx, b, 1).await?,
                    Body::Stored(b) => {
                        reused.push(*b as i64);
                        *b
                    }
                };
                let mut meta = meta.clone();
                meta.blob = blob;
                metas.push(meta);
            }
            if !reused.is_empty() {
                let mut distinct = reused.clone();
                distinct.sort_unstable();
                distinct.dedup();
                let there = rows(
                    tx,
                    "SELECT id FROM blobs WHERE id = ANY($1) FOR UPDATE",
                    &[&distinct],
                )
                .await?;
                if there.len() != distinct.len() {
                    return Err(StoreError::Backend(
                        "a message body copied earlier is gone from the target".into(),
                    )
                    .into());
                }
                add_refs(tx, &reused).await?;
            }
            // A UID taken already fails the insert (primary key): the whole batch rolls back.
            insert_messages(tx, id, &metas).await?;
            Ok(metas.iter().map(|m| m.blob).collect())
        })
    }

    async fn import_message_state(&self, id: u64, messages: &[MessageMeta]) -> Result<()> {
        let uids: Vec<i64> = messages.iter().map(|m| m.uid as i64).collect();
        // Flags go as one space-joined string each, as `insert_messages` sends them.
        let flags: Vec<String> = messages.iter().map(|m| m.flags.join(" ")).collect();
        let dates: Vec<i64> = messages.iter().map(|m| m.internal_date).collect();
        let modseqs: Vec<i64> = messages.iter().map(|m| m.modseq as i64).collect();
        transaction!(self, |tx| {
            exec(
                tx,
                "SELECT 1 FROM mailboxes WHERE id = $1 FOR UPDATE",
                &[&(id as i64)],
            )
            .await?;
            exec(
                tx,
                "UPDATE messages SET \
                     flags = CASE WHEN t.f = '' THEN ARRAY[]::TEXT[] \
                             ELSE string_to_array(t.f, ' ') END, \
                     internal_date = t.d, modseq = t.m \
                 FROM unnest($2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[]) \
                     AS t (u, f, d, m) \
                 WHERE messages.mailbox_id = $1 AND messages.uid = t.u",
                &[&(id as i64), &uids, &flags, &dates, &modseqs],
            )
            .await?;
            Ok(())
        })
    }

    async fn import_removal(&self, id: u64, uids: &[u32]) -> Result<()> {
        let uids = ids(uids);
        transaction!(self, |tx| {
            exec(
                tx,
                "SELECT 1 FROM mailboxes WHERE id = $1 FOR UPDATE",
                &[&(id as i64)],
            )
            .await?;
            let gone = rows(
                tx,
                "DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2) RETURNING blob_id",
                &[&(id as i64), &uids],
            )
            .await?;
            let blobs: Vec<i64> = gone.iter().map(|r| r.get(0)).collect();
            release(tx, &blobs).await?;
            Ok(())
        })
    }

    async fn import_vanished(&self, id: u64, ranges: &[(u32, u32, u64)]) -> Result<()> {
        let first: Vec<i64> = ranges.iter().map(|r| r.0 as i64).collect();
        let last: Vec<i64> = ranges.iter().map(|r| r.1 as i64).collect();
        let modseq: Vec<i64> = ranges.iter().map(|r| r.2 as i64).collect();
        transaction!(self, |tx| {
            exec(
                tx,
                "INSERT INTO vanished (mailbox_id, uid, modseq) \
                 SELECT $1, u, r.m \
                 FROM unnest($2::BIGINT[], $3::BIGINT[], $4::BIGINT[]) AS r (f, l, m), \
                      generate_series(r.f, r.l) AS u \
                 ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
                &[&(id as i64), &first, &last, &modseq],
            )
            .await?;
            Ok(())
        })
    }

    async fn import_queue_entry(&self, entry: &QueueEntry, body: &[u8]) -> Result<bool> {
        transaction!(self, |tx| {
            if row(tx, "SELECT 1 FROM queue WHERE id = $1", &[&entry.id])
                .await?
                .is_some()
            {
                return Ok(false);
            }
            let mut entry = entry.clone();
            entry.lease = None;
            entry.blob = insert_blob(tx, body, 1).await?;
            insert_entry(tx, &entry).await?;
            Ok(true)
        })
    }

    async fn import_kv(&self, entries: &[KvEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ns: Vec<&str> = entries.iter().map(|e| e.ns.as_str()).collect();
        let key: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        let value: Vec<&[u8]> = entries.iter().map(|e| e.value.as_slice()).collect();
        let expires: Vec<i64> = entries.iter().map(|e| e.expires).collect();
        transaction!(self, |tx| {
            exec(
                tx,
                "INSERT INTO kv (ns, key, value, expires) \
                 SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::BIGINT[]) \
                 ON CONFLICT (ns, key) DO UPDATE \
                     SET value = EXCLUDED.value, expires = EXCLUDED.expires",
                &[&ns, &key, &value, &expires],
            )
            .await?;
            Ok(())
        })
    }

    async fn import_uidvalidity_counter(&self, value: u64) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE counters SET value = GREATEST(value, $1) WHERE name = 'uidvalidity'",
            &[&(value as i64)],
        )
        .await?;
        Ok(())
    }
}
