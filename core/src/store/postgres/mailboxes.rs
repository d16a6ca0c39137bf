//! Mailboxes, message metadata, flags, expunge, copy, subscriptions and the `\Recent` mark
//! ([`Mailboxes`]) over PostgreSQL. Every write to a mailbox's messages first locks the
//! mailbox row (`FOR UPDATE`): its UIDNEXT and HIGHESTMODSEQ are taken and advanced under
//! that lock, in the transaction that writes the messages.

use std::collections::HashMap;

use super::blobs::{add_refs, release};
use super::copy_meta;
use super::*;

/// The columns [`mailbox_of`] reads, in its order.
pub(super) const MAILBOX_COLUMNS: &str =
    "id, name, uidvalidity, uidnext, highest_modseq, special_use";

/// A mailbox from a row of [`MAILBOX_COLUMNS`].
pub(super) fn mailbox_of(r: &Row) -> Mailbox {
    Mailbox {
        id: u64_of(r.get(0)),
        name: r.get(1),
        uidvalidity: r.get::<_, i64>(2) as u32,
        uidnext: r.get::<_, i64>(3) as u32,
        highest_modseq: u64_of(r.get(4)),
        subscribed: true,
        special_use: r.get(5),
        logs_expunges: true,
    }
}

/// The columns [`meta_of`] reads, in its order.
pub(super) const MESSAGE_COLUMNS: &str = "uid, blob_id, size, flags, internal_date, modseq";

/// Message metadata from a row of [`MESSAGE_COLUMNS`].
pub(super) fn meta_of(r: &Row) -> MessageMeta {
    MessageMeta {
        uid: r.get::<_, i64>(0) as u32,
        blob: u64_of(r.get(1)),
        size: u64_of(r.get(2)),
        flags: r.get(3),
        internal_date: r.get(4),
        modseq: u64_of(r.get(5)),
    }
}

/// Reserve `n` UIDVALIDITY values; the first. Store-wide and increasing (at least the
/// current time, as the other backends do), so a mailbox made again under an old name
/// never gets its predecessor's value.
pub(super) async fn take_uidvalidity(c: &Client, n: i64) -> std::result::Result<i64, Fail> {
    let r = row(
        c,
        "UPDATE counters SET value = GREATEST(value, $1) + $2 \
         WHERE name = 'uidvalidity' RETURNING value",
        &[&(now() & 0xffff_ffff), &n],
    )
    .await?
    .ok_or_else(|| StoreError::Backend("database: the uidvalidity counter is missing".into()))?;
    Ok(r.get::<_, i64>(0) - n + 1)
}

/// A reserved counter value as a UIDVALIDITY (32 bits, never 0).
pub(super) fn uidvalidity(v: i64) -> i64 {
    ((v as u64 as u32).max(1)) as i64
}

/// Create mailbox `name` of `user` unless it exists; the row, locked, and whether it was
/// created.
pub(super) async fn lock_or_create_mailbox(
    c: &Client,
    user: &str,
    name: &str,
    special_use: Option<&str>,
) -> std::result::Result<(Mailbox, bool), Fail> {
    let select = format!(
        "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE owner = $1 AND name = $2 FOR UPDATE"
    );
    if let Some(r) = row(c, &select, &[&user, &name]).await? {
        return Ok((mailbox_of(&r), false));
    }
    let validity = uidvalidity(take_uidvalidity(c, 1).await?);
    let created = row(
        c,
        &format!(
            "INSERT INTO mailboxes (owner, name, uidvalidity, uidnext, highest_modseq, \
             special_use) VALUES ($1, $2, $3, 1, 1, $4) ON CONFLICT (owner, name) DO NOTHING \
             RETURNING {MAILBOX_COLUMNS}"
        ),
        &[&user, &name, &validity, &special_use],
    )
    .await?;
    match created {
        Some(r) => Ok((mailbox_of(&r), true)),
        // Another writer created it meanwhile: wait for it and take it.
        None => match row(c, &select, &[&user, &name]).await? {
            Some(r) => Ok((mailbox_of(&r), false)),
            None => Err(Fail::Retry(format!("mailbox {name} created and gone"))),
        },
    }
}

/// Lock mailbox `name` of `user`. `NotFound` when there is none.
async fn lock_named(c: &Client, user: &str, name: &str) -> std::result::Result<Mailbox, Fail> {
    let r = row(
        c,
        &format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE owner = $1 AND name = $2 FOR UPDATE"
        ),
        &[&user, &name],
    )
    .await?;
    match r {
        Some(r) => Ok(mailbox_of(&r)),
        None => Err(StoreError::NotFound(format!("mailbox {name}")).into()),
    }
}

/// Write a locked mailbox's UIDNEXT and HIGHESTMODSEQ back.
pub(super) async fn save_counters(c: &Client, mb: &Mailbox) -> std::result::Result<(), Fail> {
    exec(
        c,
        "UPDATE mailboxes SET uidnext = $2, highest_modseq = $3 WHERE id = $1",
        &[
            &(mb.id as i64),
            &(mb.uidnext as i64),
            &(mb.highest_modseq as i64),
        ],
    )
    .await?;
    Ok(())
}

/// Lock mailbox `id` of `user`; its HIGHESTMODSEQ. `NotFound` when `user` has no such
/// mailbox.
async fn lock_mailbox(c: &Client, user: &str, id: u64) -> std::result::Result<u64, Fail> {
    let r = row(
        c,
        "SELECT highest_modseq FROM mailboxes WHERE id = $1 AND owner = $2 FOR UPDATE",
        &[&(id as i64), &user],
    )
    .await?;
    match r {
        Some(r) => Ok(u64_of(r.get(0))),
        None => Err(StoreError::NotFound(format!("mailbox {id}")).into()),
    }
}

async fn set_highest_modseq(c: &Client, id: u64, modseq: u64) -> std::result::Result<(), Fail> {
    exec(
        c,
        "UPDATE mailboxes SET highest_modseq = $2 WHERE id = $1",
        &[&(id as i64), &(modseq as i64)],
    )
    .await?;
    Ok(())
}

/// Remove mailbox `id` with its messages (releasing their bodies), expunge log and
/// `\Recent` mark; the UIDs of its messages, ascending.
pub(super) async fn drop_mailbox(c: &Client, id: u64) -> std::result::Result<Vec<u32>, Fail> {
    let id = id as i64;
    let gone = rows(
        c,
        "DELETE FROM messages WHERE mailbox_id = $1 RETURNING uid, blob_id",
        &[&id],
    )
    .await?;
    let blobs: Vec<i64> = gone.iter().map(|r| r.get(1)).collect();
    release(c, &blobs).await?;
    exec(c, "DELETE FROM vanished WHERE mailbox_id = $1", &[&id]).await?;
    exec(c, "DELETE FROM recent WHERE mailbox_id = $1", &[&id]).await?;
    exec(c, "DELETE FROM mailboxes WHERE id = $1", &[&id]).await?;
    let mut uids: Vec<u32> = gone.iter().map(|r| r.get::<_, i64>(0) as u32).collect();
    uids.sort_unstable();
    Ok(uids)
}

fn uid_params(uids: &[u32]) -> Vec<i64> {
    uids.iter().map(|u| *u as i64).collect()
}

#[async_trait::async_trait]
impl Mailboxes for PostgresStore {
    async fn mailboxes(&self, user: &str) -> Result<Vec<Mailbox>> {
        let c = self.client().await?;
        let rs = rows(
            &c,
            &format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE owner = $1 ORDER BY name"),
            &[&normalize_address(user)],
        )
        .await?;
        Ok(rs.iter().map(mailbox_of).collect())
    }

    async fn mailbox(&self, user: &str, name: &str) -> Result<Option<Mailbox>> {
        let c = self.client().await?;
        let r = row(
            &c,
            &format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE owner = $1 AND name = $2"),
            &[&normalize_address(user), &canonical_mailbox(name)],
        )
        .await?;
        Ok(r.as_ref().map(mailbox_of))
    }

    async fn create_mailbox(
        &self,
        user: &str,
        name: &str,
        special_use: Option<&str>,
    ) -> Result<Mailbox> {
        let (user, name) = (normalize_address(user), canonical_mailbox(name));
        let (mb, _lock) = locked_transaction!(self, [user.as_str()], |tx| {
            let (mb, created) = lock_or_create_mailbox(tx, &user, &name, special_use).await?;
            if !created {
                return Err(StoreError::Exists(format!("mailbox {name}")).into());
            }
            Ok(mb)
        })?;
        self.notify(
            &user,
            Change::Created {
                name: mb.name.clone(),
            },
        )
        .await;
        Ok(mb)
    }

    async fn ingest(&self, ingest: Ingest) -> Result<Receipt> {
        self.ingest_one(ingest).await
    }

    async fn deliver(
        &self,
        message: &[u8],
        internal_date: i64,
        to: &[Placement],
    ) -> Result<Vec<u32>> {
        Ok(self
            .write_ingest(internal_date, &[(message, to)], None)
            .await?
            .placed
            .into_iter()
            .map(|p| p.uid)
            .collect())
    }

    async fn messages(&self, mailbox_id: u64) -> Result<Vec<MessageMeta>> {
        // In the order the rows are stored, sorted here: the database then reads them in
        // one pass over the pages (a scan in UID order visits the index and each row's page
        // in turn; for 100,000 messages 62 against 30 ms of its time, measured).
        let c = self.client().await?;
        let mut out = match copy_meta::read(&c, mailbox_id).await? {
            Some(out) => out,
            None => rows(
                &c,
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = $1"),
                &[&(mailbox_id as i64)],
            )
            .await?
            .iter()
            .map(meta_of)
            .collect(),
        };
        // Runs in UID order, a page or so each: where writers appended concurrently, their
        // pages interleave.
        if !out.is_sorted_by_key(|m| m.uid) {
            out.sort_unstable_by_key(|m| m.uid);
        }
        Ok(out)
    }

    async fn message(&self, mailbox_id: u64, uid: u32) -> Result<Option<MessageMeta>> {
        let c = self.client().await?;
        let r = row(
            &c,
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = $1 AND uid = $2"),
            &[&(mailbox_id as i64), &(uid as i64)],
        )
        .await?;
        Ok(r.as_ref().map(meta_of))
    }

    async fn set_flags(
        &self,
        user: &str,
        mailbox_id: u64,
        changes: &[(u32, Vec<String>)],
    ) -> Result<Vec<(u32, u64)>> {
        let user = normalize_address(user);
        let (done, _lock) = locked_transaction!(self, [user.as_str()], |tx| {
            let mut modseq = lock_mailbox(tx, &user, mailbox_id).await?;
            let mut done = Vec::new();
            for (uid, flags) in changes {
                let n = exec(
                    tx,
                    "UPDATE messages SET flags = $3, modseq = $4 \
                     WHERE mailbox_id = $1 AND uid = $2",
                    &[
                        &(mailbox_id as i64),
                        &(*uid as i64),
                        flags,
                        &(modseq as i64 + 1),
                    ],
                )
                .await?;
                if n > 0 {
                    modseq += 1;
                    done.push((*uid, modseq));
                }
            }
            set_highest_modseq(tx, mailbox_id, modseq).await?;
            Ok(done)
        })?;
        self.notify(&user, Change::flags_set(mailbox_id, changes, &done))
            .await;
        Ok(done)
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
        let ((out, modified), _lock) = locked_transaction!(self, [user.as_str()], |tx| {
            let mut modseq = lock_mailbox(tx, &user, mailbox_id).await?;
            let current: HashMap<u32, (Vec<String>, u64)> = rows(
                tx,
                "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = $1 AND uid = ANY($2)",
                &[&(mailbox_id as i64), &uid_params(uids)],
            )
            .await?
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0) as u32,
                    (r.get(1), u64_of(r.get::<_, i64>(2))),
                )
            })
            .collect();
            let (mut out, mut modified) = (Vec::new(), Vec::new());
            for uid in uids {
                let Some((old, old_modseq)) = current.get(uid) else {
                    continue;
                };
                if unchanged_since.is_some_and(|u| *old_modseq > u) {
                    modified.push(*uid);
                    continue;
                }
                let new = op.apply(old, flags);
                let changed = new != *old;
                let mut m = *old_modseq;
                if changed {
                    modseq += 1;
                    m = modseq;
                    exec(
                        tx,
                        "UPDATE messages SET flags = $3, modseq = $4 \
                         WHERE mailbox_id = $1 AND uid = $2",
                        &[&(mailbox_id as i64), &(*uid as i64), &new, &(m as i64)],
                    )
                    .await?;
                }
                out.push(FlagUpdate {
                    uid: *uid,
                    flags: new,
                    modseq: m,
                    changed,
                });
            }
            set_highest_modseq(tx, mailbox_id, modseq).await?;
            Ok((out, modified))
        })?;
        if let Some(change) = Change::flags_updated(mailbox_id, &out) {
            self.notify(&user, change).await;
        }
        Ok((out, modified))
    }

    async fn expunge(&self, user: &str, mailbox_id: u64, uids: &[u32]) -> Result<Vec<u32>> {
        let user = normalize_address(user);
        let ((removed, modseq), _lock) = locked_transaction!(self, [user.as_str()], |tx| {
            let modseq = lock_mailbox(tx, &user, mailbox_id).await?;
            let gone = rows(
                tx,
                "DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2) \
                 RETURNING uid, blob_id",
                &[&(mailbox_id as i64), &uid_params(uids)],
            )
            .await?;
            if gone.is_empty() {
                // Nothing removed, nothing changed: HIGHESTMODSEQ stays (RFC 7162 §3.1.2).
                return Ok((Vec::new(), modseq));
            }
            let blobs: Vec<i64> = gone.iter().map(|r| r.get(1)).collect();
            release(tx, &blobs).await?;
            let removed: Vec<i64> = gone.iter().map(|r| r.get(0)).collect();
            let modseq = modseq + 1;
            exec(
                tx,
                "INSERT INTO vanished (mailbox_id, uid, modseq) \
                 SELECT $1, u, $3 FROM unnest($2::BIGINT[]) AS u \
                 ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
                &[&(mailbox_id as i64), &removed, &(modseq as i64)],
            )
            .await?;
            set_highest_modseq(tx, mailbox_id, modseq).await?;
            Ok((removed, modseq))
        })?;
        // In the caller's order, as the other backends answer.
        let removed: Vec<u32> = uids
            .iter()
            .filter(|u| removed.contains(&(**u as i64)))
            .copied()
            .collect();
        if !removed.is_empty() {
            let mut sorted = removed.clone();
            sorted.sort_unstable();
            sorted.dedup();
            self.notify(
                &user,
                Change::Expunged {
                    mailbox: mailbox_id,
                    uids: sorted,
                    modseq,
                },
            )
            .await;
        }
        Ok(removed)
    }

    async fn copy(
        &self,
        user: &str,
        from_id: u64,
        uids: &[u32],
        to: &str,
    ) -> Result<(u32, Vec<(u32, u32)>)> {
        let user = normalize_address(user);
        let to = canonical_mailbox(to);
        let ((target, pairs, copies), _lock) = locked_transaction!(self, [user.as_str()], |tx| {
            let mut target = lock_named(tx, &user, &to).await?;
            let sources: HashMap<u32, MessageMeta> = rows(
                tx,
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages \
                     WHERE mailbox_id = $1 AND uid = ANY($2)"
                ),
                &[&(from_id as i64), &uid_params(uids)],
            )
            .await?
            .iter()
            .map(|r| {
                let m = meta_of(r);
                (m.uid, m)
            })
            .collect();
            let (mut pairs, mut copies) = (Vec::new(), Vec::new());
            for uid in uids {
                let Some(src) = sources.get(uid) else {
                    continue;
                };
                if pairs.iter().any(|(old, _)| old == uid) {
                    continue;
                }
                let mut meta = src.clone();
                meta.uid = target.uidnext;
                target.uidnext += 1;
                target.highest_modseq += 1;
                meta.modseq = target.highest_modseq;
                pairs.push((*uid, meta.uid));
                copies.push(meta);
            }
            if !copies.is_empty() {
                insert_messages(tx, target.id, &copies).await?;
                let blobs: Vec<i64> = copies.iter().map(|m| m.blob as i64).collect();
                add_refs(tx, &blobs).await?;
                save_counters(tx, &target).await?;
            }
            Ok((target, pairs, copies))
        })?;
        if !copies.is_empty() {
            self.notify(
                &user,
                Change::Appended {
                    mailbox: target.id,
                    messages: copies,
                },
            )
            .await;
        }
        Ok((target.uidvalidity, pairs))
    }

    async fn expunged_since(
        &self,
        user: &str,
        mailbox_id: u64,
        modseq: u64,
    ) -> Result<(Vec<u32>, bool)> {
        let user = normalize_address(user);
        let c = self.client().await?;
        if row(
            &c,
            "SELECT 1 FROM mailboxes WHERE id = $1 AND owner = $2",
            &[&(mailbox_id as i64), &user],
        )
        .await?
        .is_none()
        {
            return Err(StoreError::NotFound(format!("mailbox {mailbox_id}")));
        }
        let rs = rows(
            &c,
            "SELECT uid FROM vanished WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
            &[&(mailbox_id as i64), &(modseq as i64)],
        )
        .await?;
        Ok((rs.iter().map(|r| r.get::<_, i64>(0) as u32).collect(), true))
    }

    async fn delete_mailbox(&self, user: &str, name: &str) -> Result<()> {
        let user = normalize_address(user);
        let name = canonical_mailbox(name);
        if is_inbox(&name) {
            return Err(StoreError::Invalid("INBOX cannot be deleted".into()));
        }
        let ((mb, uids), _lock) = locked_transaction!(self, [user.as_str()], |tx| {
            let mb = lock_named(tx, &user, &name).await?;
            let uids = drop_mailbox(tx, mb.id).await?;
            Ok((mb, uids))
        })?;
        // Sessions that have it selected see its messages go, then the mailbox.
        self.mailbox_deleted(&user, &mb, uids);
        Ok(())
    }

    async fn rename_mailbox(&self, user: &str, from: &str, to: &str) -> Result<()> {
        let user = normalize_address(user);
        let (from, to) = (canonical_mailbox(from), canonical_mailbox(to));
        if is_inbox(&to) {
            return Err(StoreError::Exists("mailbox INBOX".into()));
        }
        if is_inbox(&from) {
            if self.mailbox(&user, &to).await?.is_some() {
                return Err(StoreError::Exists(format!("mailbox {to}")));
            }
            let Some(inbox) = self.mailbox(&user, &from).await? else {
                return Err(StoreError::NotFound(format!("mailbox {from}")));
            };
            return rename_inbox(self, &user, inbox.id, &to).await;
        }
        let (moves, _lock) = locked_transaction!(self, [user.as_str()], |tx| {
            let all = rows(
                tx,
                "SELECT id, name FROM mailboxes WHERE owner = $1 FOR UPDATE",
                &[&user],
            )
            .await?;
            if all.iter().any(|r| r.get::<_, &str>(1) == to) {
                return Err(StoreError::Exists(format!("mailbox {to}")).into());
            }
            if !all.iter().any(|r| r.get::<_, &str>(1) == from) {
                return Err(StoreError::NotFound(format!("mailbox {from}")).into());
            }
            let prefix = format!("{from}/");
            let mut moves = Vec::new();
            for r in &all {
                let (id, name): (i64, String) = (r.get(0), r.get(1));
                let new = if name == from {
                    to.clone()
                } else if let Some(rest) = name.strip_prefix(&prefix) {
                    format!("{to}/{rest}")
                } else {
                    continue;
                };
                if all.iter().any(|r| r.get::<_, &str>(1) == new) {
                    return Err(StoreError::Exists(format!("mailbox {new}")).into());
                }
                exec(
                    tx,
                    "UPDATE mailboxes SET name = $2 WHERE id = $1",
                    &[&id, &new],
                )
                .await?;
                // A subscription follows its mailbox's new name (as Dovecot does).
                let subscribed = exec(
                    tx,
                    "DELETE FROM subscriptions WHERE owner = $1 AND name = $2",
                    &[&user, &name],
                )
                .await?;
                if subscribed > 0 {
                    exec(
                        tx,
                        "INSERT INTO subscriptions (owner, name) VALUES ($1, $2) \
                         ON CONFLICT (owner, name) DO NOTHING",
                        &[&user, &new],
                    )
                    .await?;
                }
                moves.push((u64_of(id), name, new));
            }
            Ok(moves)
        })?;
        for (mailbox, from, to) in moves {
            self.notify(&user, Change::Renamed { mailbox, from, to })
                .await;
        }
        Ok(())
    }

    async fn set_subscribed(&self, user: &str, name: &str, subscribed: bool) -> Result<()> {
        let (user, name) = (normalize_address(user), canonical_mailbox(name));
        let c = self.client().await?;
        let sql = if subscribed {
            "INSERT INTO subscriptions (owner, name) VALUES ($1, $2) \
             ON CONFLICT (owner, name) DO NOTHING"
        } else {
            "DELETE FROM subscriptions WHERE owner = $1 AND name = $2"
        };
        let changed = exec(&c, sql, &[&user, &name]).await? > 0;
        drop(c);
        // The account's lock only to publish (never held while waiting for the database).
        let _lock = self.lock_users([user.as_str()]).await;
        if changed {
            self.notify(&user, Change::Subscription { name, subscribed })
                .await;
        }
        Ok(())
    }

    async fn subscriptions(&self, user: &str) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rs = rows(
            &c,
            "SELECT name FROM subscriptions WHERE owner = $1 ORDER BY name",
            &[&normalize_address(user)],
        )
        .await?;
        Ok(rs.iter().map(|r| r.get(0)).collect())
    }

    async fn claim_recent(&self, mailbox_id: u64, up_to: u32, claim: bool) -> Result<u32> {
        let id = mailbox_id as i64;
        let mark = {
            let c = self.client().await?;
            let r = row(&c, "SELECT mark FROM recent WHERE mailbox_id = $1", &[&id]).await?;
            r.map_or(0, |r| r.get::<_, i64>(0) as u32)
        };
        // A mark already at `up_to` does not move: no write (and no WAL flush) for the
        // SELECT of a mailbox without new mail.
        if !claim || mark >= up_to {
            return Ok(mark);
        }
        transaction!(self, |tx| {
            exec(
                tx,
                "INSERT INTO recent (mailbox_id, mark) VALUES ($1, 0) \
                 ON CONFLICT (mailbox_id) DO NOTHING",
                &[&id],
            )
            .await?;
            let before: i64 = row(
                tx,
                "SELECT mark FROM recent WHERE mailbox_id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .map_or(0, |r| r.get(0));
            if (up_to as i64) > before {
                exec(
                    tx,
                    "UPDATE recent SET mark = $2 WHERE mailbox_id = $1",
                    &[&id, &(up_to as i64)],
                )
                .await?;
            }
            Ok(before as u32)
        })
    }
}

/// Insert message records into mailbox `mailbox` (one statement).
pub(super) async fn insert_messages(
    c: &Client,
    mailbox: u64,
    metas: &[MessageMeta],
) -> std::result::Result<(), Fail> {
    let col = |f: fn(&MessageMeta) -> i64| metas.iter().map(f).collect::<Vec<i64>>();
    // Arrays of arrays do not unnest into rows; flags go as one space-joined string each
    // (flag names have no spaces, RFC 9051 §9 `flag-keyword` is an atom).
    let flags: Vec<String> = metas.iter().map(|m| m.flags.join(" ")).collect();
    exec(
        c,
        "INSERT INTO messages (mailbox_id, uid, blob_id, size, flags, internal_date, modseq) \
         SELECT $1, u, b, s, CASE WHEN f = '' THEN ARRAY[]::TEXT[] \
                             ELSE string_to_array(f, ' ') END, d, m \
         FROM unnest($2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[], $6::BIGINT[], \
                     $7::BIGINT[]) AS t (u, b, s, f, d, m)",
        &[
            &(mailbox as i64),
            &col(|m| m.uid as i64),
            &col(|m| m.blob as i64),
            &col(|m| m.size as i64),
            &flags,
            &col(|m| m.internal_date),
            &col(|m| m.modseq as i64),
        ],
    )
    .await?;
    Ok(())
}

/// A new message for [`append_messages`]: its stored body, size, flags and INTERNALDATE.
#[derive(Clone, Copy)]
pub(super) struct NewMessage<'a> {
    pub blob: u64,
    pub size: u64,
    pub flags: &'a [String],
    pub internal_date: i64,
}

/// Append `new` to `user`'s mailbox `name` in one statement: it takes the mailbox's row
/// lock (its `UPDATE`), gives the messages the next UIDs and MODSEQs from the row, writes
/// their records and the row's new UIDNEXT and HIGHESTMODSEQ. The same as
/// [`lock_or_create_mailbox`], [`Mailbox::place`] for each, [`insert_messages`] and
/// [`save_counters`] in one round trip instead of three, so a writer holds the mailbox's
/// lock for one statement and its COMMIT. The mailbox as it is afterwards and the records;
/// `None`, with nothing written, when the mailbox does not exist.
pub(super) async fn append_messages(
    c: &Client,
    user: &str,
    name: &str,
    new: &[NewMessage<'_>],
) -> std::result::Result<Option<(Mailbox, Vec<MessageMeta>)>, Fail> {
    let col = |f: fn(&NewMessage) -> i64| new.iter().map(f).collect::<Vec<i64>>();
    let flags: Vec<String> = new.iter().map(|m| m.flags.join(" ")).collect();
    let n = new.len() as i64;
    // Message i (from 1) of n takes UID uidnext_before + i - 1 and MODSEQ
    // highest_modseq_before + i, as Mailbox::place gives them one at a time.
    let r = row(
        c,
        &format!(
            "WITH mb AS (\
               UPDATE mailboxes SET uidnext = uidnext + $3, highest_modseq = highest_modseq + $3 \
               WHERE owner = $1 AND name = $2 RETURNING {MAILBOX_COLUMNS}), \
             ins AS (\
               INSERT INTO messages (mailbox_id, uid, blob_id, size, flags, internal_date, modseq) \
               SELECT mb.id, mb.uidnext - $3 + t.i - 1, t.b, t.s, \
                      CASE WHEN t.f = '' THEN ARRAY[]::TEXT[] ELSE string_to_array(t.f, ' ') END, \
                      t.d, mb.highest_modseq - $3 + t.i \
               FROM mb, unnest($4::BIGINT[], $5::BIGINT[], $6::TEXT[], $7::BIGINT[]) \
                        WITH ORDINALITY AS t (b, s, f, d, i)) \
             SELECT {MAILBOX_COLUMNS} FROM mb"
        ),
        &[
            &user,
            &name,
            &n,
            &col(|m| m.blob as i64),
            &col(|m| m.size as i64),
            &flags,
            &col(|m| m.internal_date),
        ],
    )
    .await?;
    let Some(r) = r else { return Ok(None) };
    let after = mailbox_of(&r);
    let mut before = after.clone();
    before.uidnext -= n as u32;
    before.highest_modseq -= n as u64;
    let metas = new
        .iter()
        .map(|m| before.place(m.blob, m.size, m.flags, m.internal_date))
        .collect();
    Ok(Some((after, metas)))
}
