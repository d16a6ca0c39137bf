//! Recipient resolution: local domain? which account(s) after aliases and plus-addressing?

use crate::hooks::Route;
use crate::store::{Store, StoreError};

/// Local domains: the config's plus those added at run time.
pub async fn is_local_domain(
    store: &Store,
    config_domains: &[String],
    domain: &str,
) -> Result<bool, StoreError> {
    let d = domain.to_lowercase();
    Ok(config_domains.iter().any(|c| c.eq_ignore_ascii_case(&d))
        || store.domains().await?.contains(&d))
}

/// Resolve `address` (already `local@domain`): a local route lists the final addresses,
/// local accounts or forward targets in other domains. `postmaster@` every local domain
/// exists (RFC 5321 §4.5.1): without an account or alias of that name it goes to
/// `postmaster` (the config's), else to the first account of the first local domain that has
/// one.
pub async fn resolve(
    store: &Store,
    config_domains: &[String],
    postmaster: Option<&str>,
    address: &str,
) -> Result<Route, StoreError> {
    let address = address.to_lowercase();
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Ok(Route::UnknownLocal);
    };
    if !is_local_domain(store, config_domains, domain).await? {
        return Ok(Route::Remote);
    }
    let mut out = Vec::new();
    expand(store, config_domains, &address, 0, &mut out).await?;
    if out.is_empty() {
        // Plus-addressing: alice+tag@ → alice@.
        if let Some((base, _tag)) = local.split_once('+')
            && !base.is_empty()
        {
            expand(
                store,
                config_domains,
                &format!("{base}@{domain}"),
                0,
                &mut out,
            )
            .await?;
        }
    }
    if out.is_empty() && local == "postmaster" {
        match postmaster {
            Some(p) => expand(store, config_domains, &p.to_lowercase(), 0, &mut out).await?,
            None => {
                if let Some(first) = first_account(store, config_domains).await? {
                    out.push(first);
                }
            }
        }
        if out.is_empty()
            && let Some(p) = postmaster
        {
            // A postmaster address elsewhere: forwarded like an alias target.
            out.push(p.to_lowercase());
        }
    }
    Ok(if out.is_empty() {
        Route::UnknownLocal
    } else {
        Route::Local(out)
    })
}

/// The first account (by address) of the first local domain that has one.
async fn first_account(
    store: &Store,
    config_domains: &[String],
) -> Result<Option<String>, StoreError> {
    let mut accounts: Vec<String> = store
        .accounts()
        .await?
        .into_iter()
        .map(|a| a.address)
        .collect();
    accounts.sort();
    let mut domains: Vec<String> = config_domains.iter().map(|d| d.to_lowercase()).collect();
    domains.extend(store.domains().await?);
    Ok(domains.iter().find_map(|d| {
        accounts
            .iter()
            .find(|a| a.rsplit_once('@').is_some_and(|(_, ad)| ad == d))
            .cloned()
    }))
}

/// Resolves aliases recursively (boxed: an async function cannot call itself directly).
fn expand<'a>(
    store: &'a Store,
    config_domains: &'a [String],
    address: &'a str,
    depth: u32,
    out: &'a mut Vec<String>,
) -> crate::store::StoreFuture<'a, Result<(), StoreError>> {
    Box::pin(expand_one(store, config_domains, address, depth, out))
}

async fn expand_one(
    store: &Store,
    config_domains: &[String],
    address: &str,
    depth: u32,
    out: &mut Vec<String>,
) -> Result<(), StoreError> {
    if depth > 8 {
        return Ok(());
    }
    if store.account_exists(address).await? {
        if !out.iter().any(|a| a == address) {
            out.push(address.to_string());
        }
        return Ok(());
    }
    if let Some(targets) = store.alias(address).await? {
        for t in targets {
            let domain = t.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            if is_local_domain(store, config_domains, domain).await? {
                expand(store, config_domains, &t, depth + 1, out).await?;
            } else if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    Ok(())
}

/// Whether `user` may send as `from`: its own address or an alias that points at it.
pub async fn owns_address(store: &Store, user: &str, from: &str) -> Result<bool, StoreError> {
    let from = from.to_lowercase();
    if from == user {
        return Ok(true);
    }
    if let Some((local, domain)) = from.rsplit_once('@')
        && let Some((base, _)) = local.split_once('+')
        && format!("{base}@{domain}") == user
    {
        return Ok(true);
    }
    Ok(store
        .alias(&from)
        .await?
        .is_some_and(|t| t.iter().any(|t| t == user)))
}
