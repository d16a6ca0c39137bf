//! Accounts: password hashing (argon2), credential checks, and a cache of recent successful
//! checks so that clients polling with the same password do not pay for argon2 every time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::store::{Store, StoreError};

/// Hash a password into an argon2id PHC string.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with default parameters cannot fail")
        .to_string()
}

/// Check a password against a stored PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Verify `password` against `account`'s hash (against a dummy hash when there is no
/// account or no password, so that timing does not reveal which), on the blocking pool.
async fn check_password(
    account: Option<crate::store::Account>,
    password: &str,
) -> Result<Option<String>, StoreError> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let password = password.to_string();
    tokio::task::spawn_blocking(move || match account {
        Some(a) if !a.password_hash.is_empty() => {
            verify_password(&password, &a.password_hash).then_some(a.address)
        }
        _ => {
            let dummy = DUMMY.get_or_init(|| hash_password("not a real password"));
            verify_password(&password, dummy);
            None
        }
    })
    .await
    .map_err(|e| StoreError::Backend(format!("credential check task: {e}")))
}

/// Recent successful password checks, kept as keyed BLAKE2b MACs of the password under a
/// random per-process key (never the password itself), and tied to the account's stored
/// hash, so a password change or account deletion invalidates the entry at once.
pub struct CredentialCache {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<String, CachedCheck>>,
    /// Password checks running at once: each argon2 check takes tens of milliseconds of CPU
    /// and a 19 MiB buffer, so a burst of logins waits here instead of allocating gigabytes.
    checks: tokio::sync::Semaphore,
}

struct CachedCheck {
    /// The PHC string the password was verified against.
    phc: String,
    mac: [u8; 32],
    at: Instant,
}

/// Most entries kept; expired ones are pruned when this is reached.
const CACHE_MAX: usize = 100_000;

impl CredentialCache {
    /// A cache whose entries are trusted for `ttl` after the argon2 check.
    pub fn new(ttl: Duration) -> Self {
        CredentialCache {
            key: rand::random(),
            ttl,
            entries: Mutex::new(HashMap::new()),
            checks: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }
    }

    /// [`authenticate_cached`], at most one argon2 check per CPU at a time.
    pub async fn verify(
        self: &Arc<Self>,
        store: &Store,
        username: &str,
        password: &str,
    ) -> Result<Option<String>, StoreError> {
        let _permit = self.checks.acquire().await.expect("never closed");
        authenticate_cached(store, self, username, password).await
    }

    fn mac(&self, address: &str, password: &str) -> [u8; 32] {
        use blake2::digest::Mac as _;
        use blake2::digest::consts::U32;
        let mut m = blake2::Blake2bMac::<U32>::new_from_slice(&self.key)
            .expect("a 32-byte key is valid for BLAKE2b");
        m.update(address.as_bytes());
        m.update(&[0]);
        m.update(password.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Whether `password` was verified for `address` against `phc` within the TTL.
    fn hit(&self, address: &str, phc: &str, password: &str) -> bool {
        let mac = self.mac(address, password);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(address) {
            Some(c) => {
                c.phc == phc
                    && c.at.elapsed() < self.ttl
                    // Constant-time comparison of the MACs.
                    && c.mac.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            }
            None => false,
        }
    }

    fn remember(&self, address: &str, phc: &str, password: &str) {
        let mac = self.mac(address, password);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_MAX {
            let ttl = self.ttl;
            entries.retain(|_, c| c.at.elapsed() < ttl);
        }
        if entries.len() < CACHE_MAX {
            entries.insert(
                address.to_string(),
                CachedCheck {
                    phc: phc.to_string(),
                    mac,
                    at: Instant::now(),
                },
            );
        }
    }
}

/// Check credentials against the store (argon2 on the blocking pool), answered from `cache` when the same password was verified for the same
/// stored hash recently. Failures are never cached: every wrong password costs argon2.
pub async fn authenticate_cached(
    store: &Store,
    cache: &CredentialCache,
    username: &str,
    password: &str,
) -> Result<Option<String>, StoreError> {
    let account = store.account(username).await?;
    if let Some(a) = &account
        && !a.password_hash.is_empty()
        && cache.hit(&a.address, &a.password_hash, password)
    {
        return Ok(Some(a.address.clone()));
    }
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    let valid = check_password(account, password).await?;
    if let (Some(address), Some(hash)) = (&valid, hash) {
        cache.remember(address, &hash, password);
    }
    Ok(valid)
}

/// An address an `on_auth` hook accepted although the store has no password for it (external
/// authentication). An existing account is simply used. Otherwise, an address of a local
/// domain becomes an account on this first login: no password (so only the hook can let it
/// in) and the default mailboxes, so IMAP and POP3 work at once and mail to it is delivered
/// from then on, like to any account. `None` (the login fails) for an address that is not
/// `local@domain` in a local domain, or that is an alias.
pub async fn external_account(
    store: &Store,
    local_domains: &[String],
    username: &str,
) -> Result<Option<String>, StoreError> {
    let address = crate::store::normalize_address(username);
    if !valid_address(&address) {
        tracing::info!(user = %username, "hook accepted a login that is not an address; refused");
        return Ok(None);
    }
    if let Some(a) = store.account(&address).await? {
        return Ok(Some(a.address));
    }
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    if !crate::routing::is_local_domain(store, local_domains, domain).await? {
        tracing::info!(user = %address, "hook accepted an address outside the local domains; refused");
        return Ok(None);
    }
    if store.alias(&address).await?.is_some() {
        tracing::info!(user = %address, "hook accepted an alias address; refused (aliases have no mailboxes)");
        return Ok(None);
    }
    match store.create_account(&address, "").await {
        Ok(()) => {
            tracing::info!(user = %address, "account created on first login (external authentication)");
            Ok(Some(address))
        }
        // A concurrent first login created it.
        Err(StoreError::Exists(_)) => Ok(Some(address)),
        Err(e) => Err(e),
    }
}

/// Whether `address` looks like `local@domain` with a plausible domain.
pub fn valid_address(address: &str) -> bool {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !address.contains(char::is_whitespace)
                && !domain.contains(['@', '/', '\\', '"'])
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocking::Wait;

    #[tokio::test]
    async fn external_accounts_are_created_in_local_domains_only() {
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        store.add_domain("runtime.example").await.unwrap();
        store
            .set_alias("list@example.org", &["x@else.example".into()])
            .await
            .unwrap();
        let domains = vec!["example.org".to_string()];
        let ext = |u: &str| external_account(&store, &domains, u).wait().unwrap();
        assert_eq!(ext(" New@Example.ORG ").as_deref(), Some("new@example.org"));
        let acc = store.account("new@example.org").await.unwrap().unwrap();
        assert!(acc.password_hash.is_empty());
        let names: Vec<String> = store
            .mailboxes("new@example.org")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        for (name, _) in crate::store::DEFAULT_MAILBOXES {
            assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
        }
        // A second login finds it; no password works for it.
        assert_eq!(ext("new@example.org").as_deref(), Some("new@example.org"));
        assert_eq!(
            authenticate_cached(
                &store,
                &CredentialCache::new(Duration::from_secs(60)),
                "new@example.org",
                ""
            )
            .await
            .unwrap(),
            None
        );
        assert_eq!(
            ext("a@runtime.example").as_deref(),
            Some("a@runtime.example")
        );
        assert_eq!(ext("a@remote.example"), None);
        assert_eq!(ext("list@example.org"), None);
        assert_eq!(ext("no-at-sign"), None);
        assert!(store.account("a@remote.example").await.unwrap().is_none());
    }

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("s3cret", "garbage"));
    }

    #[tokio::test]
    async fn cache_hits_only_for_the_same_password_and_hash() {
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        store
            .create_account("a@example.org", &hash_password("pw"))
            .await
            .unwrap();
        let cache = CredentialCache::new(Duration::from_secs(60));
        let ok = |p: &str| {
            authenticate_cached(&store, &cache, "A@example.org", p)
                .wait()
                .unwrap()
        };
        assert_eq!(ok("pw").as_deref(), Some("a@example.org"));
        let phc = store
            .account("a@example.org")
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        assert!(cache.hit("a@example.org", &phc, "pw"));
        assert!(!cache.hit("a@example.org", &phc, "wrong"));
        assert_eq!(ok("wrong"), None);
        // A password change invalidates the cached check.
        store
            .set_password("a@example.org", &hash_password("new"))
            .await
            .unwrap();
        assert_eq!(ok("pw"), None);
        assert_eq!(ok("new").as_deref(), Some("a@example.org"));
        // Expired entries are not trusted.
        let short = CredentialCache::new(Duration::ZERO);
        let phc = store
            .account("a@example.org")
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        short.remember("a@example.org", &phc, "new");
        assert!(!short.hit("a@example.org", &phc, "new"));
    }
}
