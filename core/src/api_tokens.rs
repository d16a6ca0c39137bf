//! Admin API tokens (`corvus token create|list|revoke`): `corvus_` and 32 random bytes in
//! hex, shown once. The store keeps only the token's SHA-256, in the key-value area
//! (namespace `api-tokens`: `name:NAME` → the token's record, `hash:HEX` → NAME), so every
//! node sharing a database accepts it. A token is a high-entropy random secret, so one
//! fast hash suffices (a password hash would only slow every API request).

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

const NS: &str = "api-tokens";

/// What the store keeps of a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its name, given at creation.
    pub name: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// Unix seconds of creation.
    pub created: i64,
}

fn sha256_hex(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Create a token named `name`; the token itself (shown once).
pub async fn create(store: &Store, name: &str) -> Result<String, StoreError> {
    if !valid_name(name) {
        return Err(StoreError::Invalid(format!(
            "{name:?} is not a token name: use 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    if store.kv_get(NS, &format!("name:{name}")).await?.is_some() {
        return Err(StoreError::Exists(format!(
            "token {name} (revoke it first, or pick another name)"
        )));
    }
    let secret: [u8; 32] = rand::random();
    let token = format!(
        "corvus_{}",
        secret
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let rec = TokenRecord {
        name: name.to_string(),
        hash: sha256_hex(&token),
        created: chrono::Utc::now().timestamp(),
    };
    let json = serde_json::to_vec(&rec).expect("serializable");
    store
        .kv_set(NS, &format!("hash:{}", rec.hash), name.as_bytes(), None)
        .await?;
    store
        .kv_set(NS, &format!("name:{name}"), &json, None)
        .await?;
    Ok(token)
}

/// Every token's record, by name.
pub async fn list(store: &Store) -> Result<Vec<TokenRecord>, StoreError> {
    Ok(store
        .kv_range(NS, "name:", "name;", usize::MAX)
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

/// Revoke the token `name`.
pub async fn revoke(store: &Store, name: &str) -> Result<(), StoreError> {
    let key = format!("name:{name}");
    let Some(v) = store.kv_get(NS, &key).await? else {
        return Err(StoreError::NotFound(format!("token {name}")));
    };
    if let Ok(rec) = serde_json::from_slice::<TokenRecord>(&v) {
        store.kv_delete(NS, &format!("hash:{}", rec.hash)).await?;
    }
    store.kv_delete(NS, &key).await
}

/// The name of the token `token`, when it is valid.
pub async fn verify(store: &Store, token: &str) -> Result<Option<String>, StoreError> {
    if !token.starts_with("corvus_") || token.len() > 200 {
        return Ok(None);
    }
    let Some(name) = store
        .kv_get(NS, &format!("hash:{}", sha256_hex(token)))
        .await?
    else {
        return Ok(None);
    };
    let name = String::from_utf8_lossy(&name).into_owned();
    // The name entry is the source of truth: a revoke that stopped half-way (the hash
    // entry left) still revokes.
    Ok(store
        .kv_get(NS, &format!("name:{name}"))
        .await?
        .is_some()
        .then_some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn tokens_verify_until_revoked_and_only_hashes_are_kept() {
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        let t = create(&store, "ci").await.unwrap();
        assert!(t.starts_with("corvus_") && t.len() == 7 + 64, "{t}");
        assert_eq!(verify(&store, &t).await.unwrap().as_deref(), Some("ci"));
        assert_eq!(verify(&store, "corvus_00").await.unwrap(), None);
        assert_eq!(verify(&store, "").await.unwrap(), None);
        assert!(create(&store, "ci").await.is_err());
        assert!(create(&store, "bad name").await.is_err());
        let all = list(&store).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].hash, sha256_hex(&t));
        let kept = store.kv_range(NS, "", "", 10).await.unwrap();
        assert!(kept.iter().all(|(k, v)| !k.contains(&t[7..]) && !String::from_utf8_lossy(v).contains(&t[7..])));
        revoke(&store, "ci").await.unwrap();
        assert_eq!(verify(&store, &t).await.unwrap(), None);
        assert!(revoke(&store, "ci").await.is_err());
        assert!(list(&store).await.unwrap().is_empty());
    }
}
