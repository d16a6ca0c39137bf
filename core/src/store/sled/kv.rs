//! The key-value store for scripts and plugins ([`Kv`]) over sled: `ns NUL key` → expiry
//! (Unix seconds, big-endian, 0 for none) ‖ value.

use super::*;

#[async_trait::async_trait]
impl Kv for SledStore {
    async fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let k = mbox_key(ns, key);
        match self.kv.get(&k)? {
            Some(v) if v.len() >= 8 => {
                let exp = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                if exp != 0 && exp <= now() {
                    self.kv.remove(&k)?;
                    Ok(None)
                } else {
                    Ok(Some(v[8..].to_vec()))
                }
            }
            _ => Ok(None),
        }
    }

    async fn kv_set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<u64>) -> Result<()> {
        let exp = ttl.map(|t| now() + t as i64).unwrap_or(0);
        let mut v = exp.to_be_bytes().to_vec();
        v.extend_from_slice(value);
        self.kv.insert(mbox_key(ns, key), v)?;
        Ok(())
    }

    async fn kv_incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<u64>) -> Result<i64> {
        let now = now();
        let fresh_exp = ttl.map(|t| now + t as i64).unwrap_or(0);
        let new = self.kv.update_and_fetch(mbox_key(ns, key), |old| {
            let (exp, n) = match old {
                Some(v) if v.len() >= 8 => {
                    let exp = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                    if exp != 0 && exp <= now {
                        (fresh_exp, 0)
                    } else {
                        let n = std::str::from_utf8(&v[8..])
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                            .unwrap_or(0);
                        (exp, n)
                    }
                }
                _ => (fresh_exp, 0),
            };
            let mut v = exp.to_be_bytes().to_vec();
            v.extend_from_slice(n.saturating_add(delta).to_string().as_bytes());
            Some(v)
        })?;
        let v = new.expect("update_and_fetch always stores a value");
        Ok(std::str::from_utf8(&v[8..])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    async fn kv_range(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.kv_scan(ns, start, end, limit, false)
    }

    async fn kv_range_back(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.kv_scan(ns, start, end, limit, true)
    }

    async fn kv_delete(&self, ns: &str, key: &str) -> Result<()> {
        self.kv.remove(mbox_key(ns, key))?;
        Ok(())
    }
}

impl SledStore {
    /// Live keys of `ns` from `start` to `end` (empty: no end), forward or backward.
    fn kv_scan(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
        back: bool,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let from = mbox_key(ns, start);
        let to = if end.is_empty() {
            // Every key of `ns` is below `ns` followed by byte 1.
            let mut k = ns.as_bytes().to_vec();
            k.push(1);
            k
        } else {
            mbox_key(ns, end)
        };
        let now = now();
        let mut out = Vec::new();
        let range = self.kv.range(from..to);
        let items: Box<dyn Iterator<Item = _>> = if back {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for item in items {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if v.len() < 8 {
                continue;
            }
            let exp = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
            if exp != 0 && exp <= now {
                continue;
            }
            let key = String::from_utf8_lossy(&k[ns.len() + 1..]).into_owned();
            out.push((key, v[8..].to_vec()));
        }
        Ok(out)
    }
}
