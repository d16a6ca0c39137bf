//! The key-value area of scripts and plugins ([`Kv`]) over PostgreSQL: shared by every node,
//! so a greylist or a rate limit learned on one applies on all. `expires` is Unix seconds,
//! 0 for never; an expired row reads as missing and is removed by the next write to it.

use super::*;

/// The counter a stored value holds: a decimal number, else 0.
fn counter(v: &[u8]) -> i64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl Kv for PostgresStore {
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let c = self.client().await?;
        let r = row(
            &c,
            "SELECT value FROM kv WHERE ns = $1 AND key = $2 AND (expires = 0 OR expires > $3)",
            &[&ns, &key, &now()],
        )
        .await?;
        Ok(r.map(|r| r.get(0)))
    }

    async fn kv_set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<u64>) -> Result<()> {
        let expires = ttl.map(|t| now() + t as i64).unwrap_or(0);
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO kv (ns, key, value, expires) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires",
            &[&ns, &key, &value, &expires],
        )
        .await?;
        Ok(())
    }

    async fn kv_incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u64>) -> Result<i64> {
        let now = now();
        let fresh = ttl.map(|t| now + t as i64).unwrap_or(0);
        transaction!(self, |tx| {
            // Make sure the row exists, then lock it: concurrent increments of a new key
            // queue up on the one row instead of both starting from 0.
            exec(
                tx,
                "INSERT INTO kv (ns, key, value, expires) VALUES ($1, $2, $4, $3) \
                 ON CONFLICT (ns, key) DO NOTHING",
                &[&ns, &key, &fresh, &b"0".as_slice()],
            )
            .await?;
            let r = row(
                tx,
                "SELECT value, expires FROM kv WHERE ns = $1 AND key = $2 FOR UPDATE",
                &[&ns, &key],
            )
            .await?
            .ok_or_else(|| StoreError::Backend("database: kv row vanished".into()))?;
            let (value, expires): (Vec<u8>, i64) = (r.get(0), r.get(1));
            let (expires, n) = if expires != 0 && expires <= now {
                (fresh, 0)
            } else {
                (expires, counter(&value))
            };
            let n = n.saturating_add(delta);
            exec(
                tx,
                "UPDATE kv SET value = $3, expires = $4 WHERE ns = $1 AND key = $2",
                &[&ns, &key, &n.to_string().into_bytes(), &expires],
            )
            .await?;
            Ok(n)
        })
    }

    async fn kv_range(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.kv_scan(ns, start, end, limit, false).await
    }

    async fn kv_range_back(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.kv_scan(ns, start, end, limit, true).await
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "DELETE FROM kv WHERE ns = $1 AND key = $2",
            &[&ns, &key],
        )
        .await?;
        Ok(())
    }
}

impl PostgresStore {
    /// Live keys of `ns` from `start` to `end` (empty: no end), forward or backward.
    async fn kv_scan(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
        back: bool,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let c = self.client().await?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let sql = if back {
            "SELECT key, value FROM kv WHERE ns = $1 AND key COLLATE \"C\" >= $2 \
             AND ($3 = '' OR key COLLATE \"C\" < $3) AND (expires = 0 OR expires > $4) \
             ORDER BY key COLLATE \"C\" DESC LIMIT $5"
        } else {
            "SELECT key, value FROM kv WHERE ns = $1 AND key COLLATE \"C\" >= $2 \
             AND ($3 = '' OR key COLLATE \"C\" < $3) AND (expires = 0 OR expires > $4) \
             ORDER BY key COLLATE \"C\" LIMIT $5"
        };
        let rows = rows(&c, sql, &[&ns, &start, &end, &now(), &limit]).await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
