//! Message bodies ([`Blobs`]) over PostgreSQL: one `bytea` row per body, stored once and
//! shared by every message record that points at it (an ingest's copies in several
//! mailboxes, COPY), with a reference count; the last reference removes it.

use std::collections::BTreeMap;

use super::*;

/// Store a body with `refs` references; its id.
pub(super) async fn insert_blob(
    c: &Client,
    data: &[u8],
    refs: usize,
) -> std::result::Result<u64, Fail> {
    let r = row(
        c,
        "INSERT INTO blobs (refs, data) VALUES ($1, $2) RETURNING id",
        &[&(refs as i32), &data],
    )
    .await?
    .ok_or_else(|| StoreError::Backend("database: INSERT returned no id".into()))?;
    Ok(u64_of(r.get(0)))
}

/// Store `bodies`, one reference each, in one statement; their ids in the same order. The
/// ids are drawn from the table's sequence first (a materialized CTE computes each once),
/// so which id is which body does not depend on the order the rows are written in.
pub(super) async fn insert_blobs(
    c: &Client,
    bodies: &[&[u8]],
) -> std::result::Result<Vec<u64>, Fail> {
    let rs = rows(
        c,
        "WITH t AS MATERIALIZED (\
           SELECT nextval(pg_get_serial_sequence('blobs', 'id')) AS id, data, i \
           FROM unnest($1::BYTEA[]) WITH ORDINALITY AS u (data, i)), \
         ins AS (INSERT INTO blobs (id, refs, data) SELECT id, 1, data FROM t) \
         SELECT id FROM t ORDER BY i",
        &[&bodies],
    )
    .await?;
    Ok(rs.iter().map(|r| u64_of(r.get(0))).collect())
}

/// The distinct ids of `blobs` with how often each occurs, in id order (rows are locked in
/// one order, so two writers do not deadlock on them).
fn counted(blobs: &[i64]) -> (Vec<i64>, Vec<i32>) {
    let mut n: BTreeMap<i64, i32> = BTreeMap::new();
    for b in blobs {
        *n.entry(*b).or_default() += 1;
    }
    n.into_iter().unzip()
}

/// Add one reference per occurrence in `blobs`.
pub(super) async fn add_refs(c: &Client, blobs: &[i64]) -> std::result::Result<(), Fail> {
    let (ids, n) = counted(blobs);
    exec(
        c,
        "UPDATE blobs SET refs = blobs.refs + d.n \
         FROM unnest($1::BIGINT[], $2::INT[]) AS d (id, n) WHERE blobs.id = d.id",
        &[&ids, &n],
    )
    .await?;
    Ok(())
}

/// Drop one reference per occurrence in `blobs`; bodies left without any are removed.
pub(super) async fn release(c: &Client, blobs: &[i64]) -> std::result::Result<(), Fail> {
    if blobs.is_empty() {
        return Ok(());
    }
    let (ids, n) = counted(blobs);
    exec(
        c,
        "UPDATE blobs SET refs = blobs.refs - d.n \
         FROM unnest($1::BIGINT[], $2::INT[]) AS d (id, n) WHERE blobs.id = d.id",
        &[&ids, &n],
    )
    .await?;
    exec(
        c,
        "DELETE FROM blobs WHERE id = ANY($1) AND refs <= 0",
        &[&ids],
    )
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Blobs for PostgresStore {
    async fn blob(&self, blob: u64) -> Result<Vec<u8>> {
        let c = self.client().await?;
        row(
            &c,
            "SELECT data FROM blobs WHERE id = $1",
            &[&(blob as i64)],
        )
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::NotFound(format!("message blob {blob}")))
    }
}
