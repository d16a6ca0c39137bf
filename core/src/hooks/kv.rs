//! The key-value state hooks keep (`kv_*` in scripts, the `kv` import for plugins): the
//! limits on keys and values and the meaning of a TTL, the same for both engines. Each
//! script or plugin has a namespace of its own in the store's kv area.

use std::fmt;

/// Longest key, in bytes (keys are never empty).
pub const MAX_KEY: usize = 1024;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 65536;

/// Why a kv call was refused. The text (`Display`) is the reason without the function's
/// name, which each engine spells its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvError {
    /// An empty key or one longer than [`MAX_KEY`].
    BadKey,
    /// A value longer than [`MAX_VALUE`].
    ValueTooLong,
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::BadKey => write!(f, "keys are 1 to {MAX_KEY} bytes long"),
            KvError::ValueTooLong => write!(f, "values are at most {MAX_VALUE} bytes long"),
        }
    }
}

/// Check a key.
pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY {
        Err(KvError::BadKey)
    } else {
        Ok(())
    }
}

/// Check the length of a value.
pub fn check_value(len: usize) -> Result<(), KvError> {
    if len > MAX_VALUE {
        Err(KvError::ValueTooLong)
    } else {
        Ok(())
    }
}

/// The lifetime of an entry: a positive number of seconds, or none (kept until changed).
pub fn ttl(seconds: i64) -> Option<u64> {
    (seconds > 0).then_some(seconds as u64)
}
