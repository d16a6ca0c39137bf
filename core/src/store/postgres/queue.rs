//! The outbound queue ([`Queue`]) and leases ([`Leases`]) over PostgreSQL.
//!
//! A queue row keeps the entry as JSON beside the columns the runners select and lock on:
//! `next_attempt` and the lease (`lease_owner`, `lease_until`), which are authoritative
//! (the JSON's copies are overwritten when read). Runners claim due entries with
//! `FOR UPDATE SKIP LOCKED`, so several nodes claim disjoint sets without waiting for each
//! other; the owner is the fencing value: every later write of a runner names it and
//! changes nothing once another runner has taken the entry over.

use super::blobs::release;
use super::*;

/// The columns [`entry_of`] reads, in its order.
const ENTRY_COLUMNS: &str = "entry, next_attempt, lease_owner, lease_until";

fn entry_of(r: &Row) -> Result<QueueEntry> {
    let mut e: QueueEntry = serde_json::from_str(r.get(0))?;
    e.next_attempt = r.get(1);
    e.lease = match (r.get::<_, Option<String>>(2), r.get::<_, Option<i64>>(3)) {
        (Some(owner), Some(until)) => Some(Lease { owner, until }),
        _ => None,
    };
    Ok(e)
}

fn entries_of(rs: &[Row]) -> Result<Vec<QueueEntry>> {
    rs.iter().map(entry_of).collect()
}

fn json_of(e: &QueueEntry) -> Result<String> {
    let mut e = e.clone();
    e.lease = None;
    Ok(serde_json::to_string(&e)?)
}

/// Insert a queue entry (its body is stored already, `entry.blob`).
pub(super) async fn insert_entry(c: &Client, entry: &QueueEntry) -> std::result::Result<(), Fail> {
    let lease = entry.lease.as_ref();
    exec(
        c,
        "INSERT INTO queue (id, entry, blob_id, next_attempt, lease_owner, lease_until) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &entry.id,
            &json_of(entry)?,
            &(entry.blob as i64),
            &entry.next_attempt,
            &lease.map(|l| l.owner.as_str()),
            &lease.map(|l| l.until),
        ],
    )
    .await?;
    Ok(())
}

impl PostgresStore {
    /// Why `owner`'s write to entry `id` changed nothing: it is gone, or another runner
    /// holds it.
    async fn not_owned(&self, c: &Client, id: &str) -> Result<StoreError> {
        Ok(
            match row(c, "SELECT 1 FROM queue WHERE id = $1", &[&id]).await? {
                Some(_) => lease_lost(id),
                None => StoreError::NotFound(format!("queue entry {id}")),
            },
        )
    }
}

#[async_trait::async_trait]
impl Queue for PostgresStore {
    async fn enqueue(&self, entry: QueueEntry, message: &[u8]) -> Result<()> {
        self.write_ingest(0, &[], Some((&entry, message)))
            .await
            .map(|_| ())
    }

    async fn queue(&self) -> Result<Vec<QueueEntry>> {
        let c = self.client().await?;
        let rs = rows(
            &c,
            &format!("SELECT {ENTRY_COLUMNS} FROM queue ORDER BY id"),
            &[],
        )
        .await?;
        entries_of(&rs)
    }

    async fn queue_entry(&self, id: &str) -> Result<Option<QueueEntry>> {
        let c = self.client().await?;
        let r = row(
            &c,
            &format!("SELECT {ENTRY_COLUMNS} FROM queue WHERE id = $1"),
            &[&id],
        )
        .await?;
        r.as_ref().map(entry_of).transpose()
    }

    async fn queue_update(&self, entry: &QueueEntry) -> Result<()> {
        let c = self.client().await?;
        let lease = entry.lease.as_ref();
        let n = exec(
            &c,
            "UPDATE queue SET entry = $2, next_attempt = $3, lease_owner = $4, lease_until = $5 \
             WHERE id = $1",
            &[
                &entry.id,
                &json_of(entry)?,
                &entry.next_attempt,
                &lease.map(|l| l.owner.as_str()),
                &lease.map(|l| l.until),
            ],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("queue entry {}", entry.id)));
        }
        Ok(())
    }

    async fn queue_due_now(&self, id: &str) -> Result<()> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE queue SET next_attempt = 0 WHERE id = $1",
            &[&id],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("queue entry {id}")));
        }
        Ok(())
    }

    async fn queue_remove(&self, id: &str) -> Result<()> {
        transaction!(self, |tx| {
            let Some(r) = row(
                tx,
                "DELETE FROM queue WHERE id = $1 RETURNING blob_id",
                &[&id],
            )
            .await?
            else {
                return Err(StoreError::NotFound(format!("queue entry {id}")).into());
            };
            release(tx, &[r.get(0)]).await?;
            Ok(())
        })
    }

    async fn queue_claim(
        &self,
        owner: &str,
        now: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Claimed> {
        let limit = limit as i64;
        let until = now + lease;
        transaction!(self, |tx| {
            let claim = |skip: &'static str| {
                format!(
                    "UPDATE queue SET lease_owner = $1, lease_until = $3 WHERE id IN (\
                         SELECT id FROM queue \
                         WHERE next_attempt <= $2 AND (lease_until IS NULL OR lease_until <= $2) \
                         ORDER BY next_attempt, id LIMIT $4 FOR UPDATE {skip}) \
                     RETURNING {ENTRY_COLUMNS}"
                )
            };
            let params: [&(dyn ToSql + Sync); 4] = [&owner, &now, &until, &limit];
            let mut got = rows(tx, &claim("SKIP LOCKED"), &params).await?;
            if got.is_empty() {
                // Entries another runner is claiming right now were skipped: wait for that
                // claim to end and take what it left, so that "nothing claimed" means
                // nothing was claimable and `next` below is exact.
                got = rows(tx, &claim(""), &params).await?;
            }
            let entries = entries_of(&got)?;
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            let next: Option<i64> = row(
                tx,
                "SELECT min(CASE WHEN next_attempt > $1 THEN next_attempt \
                                 WHEN lease_until IS NOT NULL AND lease_until > $1 THEN lease_until \
                                 ELSE $1 END) \
                 FROM queue WHERE NOT (id = ANY($2))",
                &[&now, &ids],
            )
            .await?
            .and_then(|r| r.get(0));
            Ok(Claimed { entries, next })
        })
    }

    async fn queue_renew(&self, id: &str, owner: &str, until: i64) -> Result<()> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE queue SET lease_until = $3 WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner, &until],
        )
        .await?;
        if n == 0 {
            return Err(self.not_owned(&c, id).await?);
        }
        Ok(())
    }

    async fn queue_save(&self, entry: &QueueEntry, owner: &str, release: bool) -> Result<()> {
        let c = self.client().await?;
        let sql = if release {
            "UPDATE queue SET entry = $3, next_attempt = $4, lease_owner = NULL, \
             lease_until = NULL WHERE id = $1 AND lease_owner = $2"
        } else {
            "UPDATE queue SET entry = $3, next_attempt = $4 WHERE id = $1 AND lease_owner = $2"
        };
        let n = exec(
            &c,
            sql,
            &[&entry.id, &owner, &json_of(entry)?, &entry.next_attempt],
        )
        .await?;
        if n == 0 {
            return Err(self.not_owned(&c, &entry.id).await?);
        }
        Ok(())
    }

    async fn queue_complete(&self, id: &str, owner: &str) -> Result<()> {
        let gone = transaction!(self, |tx| {
            let r = row(
                tx,
                "DELETE FROM queue WHERE id = $1 AND lease_owner = $2 RETURNING blob_id",
                &[&id, &owner],
            )
            .await?;
            if let Some(r) = &r {
                release(tx, &[r.get(0)]).await?;
            }
            Ok(r.is_some())
        })?;
        if !gone {
            let c = self.client().await?;
            return Err(self.not_owned(&c, id).await?);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Leases for PostgresStore {
    async fn lease_take(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        let c = self.client().await?;
        // One statement: an absent lease is inserted, an expired or own one taken over,
        // another holder's live one left alone (no row returned).
        let taken = row(
            &c,
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $4) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until \
             WHERE leases.until <= $3 OR leases.holder = EXCLUDED.holder \
             RETURNING 1",
            &[&name, &holder, &now, &until],
        )
        .await?;
        Ok(taken.is_some())
    }

    async fn lease_drop(&self, name: &str, holder: &str) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )
        .await?;
        Ok(())
    }

    async fn release_held_by(&self, prefix: &str) -> Result<u64> {
        // The prefix is a node id (hex) and a slash: nothing LIKE would read as a pattern.
        let pattern = format!("{prefix}%");
        transaction!(self, |tx| {
            let leases = exec(tx, "DELETE FROM leases WHERE holder LIKE $1", &[&pattern]).await?;
            let claims = exec(
                tx,
                "UPDATE queue SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner LIKE $1",
                &[&pattern],
            )
            .await?;
            Ok(leases + claims)
        })
    }
}
