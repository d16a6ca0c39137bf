//! Message bodies ([`Blobs`]) over sled: stored in chunks, with reference counts.

use super::*;

/// Message bodies, stored in chunks of [`CHUNK`] bytes (tree `chunks`, key blob id ‖ chunk
/// number, both big-endian).
///
/// Why chunks: sled 0.34 splits a leaf node at 17 entries whatever their size, and writes a
/// node bigger than a quarter of a segment (128 KiB) as a file of its own under `blobs/`.
/// Whole bodies of 20 KB made such nodes, and sled never deleted those files once the
/// messages were expunged (120,000 appended and expunged messages left 984 MB for 230 live
/// ones). Chunks of 6 KiB keep every node inside sled's segments, whose space sled cleans
/// and reuses. Bodies written whole by earlier versions (tree `blobs`) are still read and
/// released.
pub(super) struct Bodies {
    pub(super) whole: ::sled::Tree,
    pub(super) chunks: ::sled::Tree,
}

/// Size of one body chunk: the largest that keeps a full leaf (17 entries) under sled's
/// blob threshold of a quarter segment (128 KiB), with room for keys and node overhead.
pub(super) const CHUNK: usize = 6 * 1024;

fn chunk_key(blob: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&blob.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

impl Bodies {
    pub(super) fn open(db: &::sled::Db) -> Result<Self> {
        Ok(Bodies {
            whole: db.open_tree("blobs")?,
            chunks: db.open_tree("chunks")?,
        })
    }

    pub(super) fn insert(&self, blob: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            self.chunks.insert(chunk_key(blob, 0), &[][..])?;
        }
        for (n, part) in bytes.chunks(CHUNK).enumerate() {
            self.chunks.insert(chunk_key(blob, n as u32), part)?;
        }
        Ok(())
    }

    pub(super) fn get(&self, blob: u64) -> Result<Option<Vec<u8>>> {
        // Point lookups, not a prefix scan: each step of a sled 0.34 iterator clones the
        // whole leaf (17 chunks, ~100 KiB), which made reading a body several times slower.
        // Chunks first: the tree of whole bodies is looked at only for what is not there.
        let Some(first) = self.chunks.get(chunk_key(blob, 0))? else {
            return Ok(self.whole.get(blob.to_be_bytes())?.map(|v| v.to_vec()));
        };
        if first.len() < CHUNK {
            return Ok(Some(first.to_vec())); // most mail: one chunk
        }
        let mut out = first.to_vec();
        for n in 1.. {
            match self.chunks.get(chunk_key(blob, n))? {
                Some(v) => {
                    out.extend_from_slice(&v);
                    // A short chunk is the last one; only an exact multiple needs the miss.
                    if v.len() < CHUNK {
                        break;
                    }
                }
                None => break,
            }
        }
        Ok(Some(out))
    }

    pub(super) fn remove(&self, blob: u64) -> Result<()> {
        self.whole.remove(blob.to_be_bytes())?;
        // One removal per chunk rather than a batch: a sled batch takes the store-wide write
        // lock that waits for a flush in progress (see `deliver`).
        for n in 0.. {
            if self.chunks.remove(chunk_key(blob, n))?.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// Drop one reference to a blob, deleting it with the last one.
pub(super) fn release_blob(refs: &::sled::Tree, blobs: &Bodies, blob: u64) -> Result<()> {
    let key = blob.to_be_bytes();
    let left = refs.update_and_fetch(key, |old| {
        let n = old
            .map(|b| u32::from_be_bytes(b.try_into().unwrap_or([0; 4])))
            .unwrap_or(0);
        if n <= 1 {
            None
        } else {
            Some((n - 1).to_be_bytes().to_vec())
        }
    })?;
    if left.is_none() {
        blobs.remove(blob)?;
    }
    Ok(())
}

impl SledStore {
    /// Remove the bodies of ingests that a crash interrupted before their transaction.
    pub(super) fn forget_pending(&self) -> Result<()> {
        for key in self.pending.iter().keys() {
            let key = key?;
            let blob = u64::from_be_bytes(key.as_ref().try_into().unwrap_or([0; 8]));
            if self.blobrefs.get(blob.to_be_bytes())?.is_none() {
                self.blobs.remove(blob)?;
            }
            self.pending.remove(key)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Blobs for SledStore {
    async fn blob(&self, blob: u64) -> Result<Vec<u8>> {
        self.blobs
            .get(blob)?
            .ok_or_else(|| StoreError::NotFound(format!("message blob {blob}")))
    }
}
