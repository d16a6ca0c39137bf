//! Accounts: password hashing (argon2) and credential checks.

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

/// Check credentials against the store. Runs argon2, so call it off the async workers.
/// Returns the canonical account address on success.
pub fn authenticate(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<String>, StoreError> {
    let account = store.account(username)?;
    // Verify against a dummy hash when the user is unknown so timing does not reveal it.
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("not a real password"));
    match account {
        Some(a) if !a.password_hash.is_empty() => {
            Ok(verify_password(password, &a.password_hash).then_some(a.address))
        }
        _ => {
            verify_password(password, dummy);
            Ok(None)
        }
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

    #[test]
    fn hash_and_verify() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("s3cret", "garbage"));
    }
}
