//! Where users' scripts live: the store's key-value area (namespace `sieve`, key
//! `user TAB name`; namespace `sieve-active`, key `user`), so every node of a cluster sees
//! the same scripts and the embedded and PostgreSQL stores need nothing new. ManageSieve, the
//! CLI and the admin API all go through here, with the same checks.

use crate::config::SieveLimits;
use crate::store::{Store, StoreError, normalize_address};

/// Bumped by every change made through this process (ManageSieve, the CLI over the control
/// socket, the API): [`super::Filters`] drops what it remembered at once. Changes made on
/// another node reach it when its short cache time runs out.
pub(super) static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn changed() {
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

const NS: &str = "sieve";
const NS_ACTIVE: &str = "sieve-active";
/// Scripts listed per user at most (more than any limit allows).
const LIST_MAX: usize = 1000;

/// Why a change was refused (ManageSieve response codes, RFC 5804 §1.3).
#[derive(Debug)]
pub enum Refused {
    /// No such script: `NONEXISTENT`.
    Nonexistent,
    /// The new name is taken: `ALREADYEXISTS`.
    AlreadyExists,
    /// The active script cannot be deleted: `ACTIVE`.
    Active,
    /// Too big: `QUOTA/MAXSIZE`.
    TooBig(usize),
    /// Too many scripts: `QUOTA/MAXSCRIPTS`.
    TooMany(usize),
    /// Not a valid script name.
    BadName,
    /// The script does not compile.
    Invalid(super::parse::Error),
    /// The store failed.
    Store(StoreError),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Nonexistent => f.write_str("no such script"),
            Refused::AlreadyExists => f.write_str("a script of that name exists"),
            Refused::Active => f.write_str("the active script cannot be deleted"),
            Refused::TooBig(n) => write!(f, "scripts are limited to {n} bytes"),
            Refused::TooMany(n) => write!(f, "at most {n} scripts per user"),
            Refused::BadName => f.write_str("invalid script name"),
            Refused::Invalid(e) => write!(f, "{e}"),
            Refused::Store(e) => write!(f, "store error: {e}"),
        }
    }
}

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused::Store(e)
    }
}

/// RFC 5804 §1.6: a script name is 1 to 128 characters, none a control character, line
/// separator or paragraph separator.
pub fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=128).contains(&n)
        && !name.chars().any(|c| {
            c.is_control()
                || c == '\u{2028}'
                || c == '\u{2029}'
                || ('\u{80}'..='\u{9f}').contains(&c)
        })
}

fn key(user: &str, name: &str) -> String {
    format!("{}\t{name}", normalize_address(user))
}

/// The user's scripts, by name, and which is active.
pub async fn list(store: &Store, user: &str) -> Result<Vec<(String, bool)>, StoreError> {
    let user = normalize_address(user);
    let active = active_name(store, &user).await?;
    let rows = store
        .kv_range(NS, &format!("{user}\t"), &format!("{user}\n"), LIST_MAX)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, _)| k.split_once('\t').map(|(_, n)| n.to_string()))
        .map(|n| {
            let a = active.as_deref() == Some(n.as_str());
            (n, a)
        })
        .collect())
}

async fn active_name(store: &Store, user: &str) -> Result<Option<String>, StoreError> {
    Ok(store
        .kv_get(NS_ACTIVE, &normalize_address(user))
        .await?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// A script's text.
pub async fn get(store: &Store, user: &str, name: &str) -> Result<Option<String>, StoreError> {
    Ok(store
        .kv_get(NS, &key(user, name))
        .await?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// The active script: its name and text.
pub async fn active(store: &Store, user: &str) -> Result<Option<(String, String)>, StoreError> {
    let Some(name) = active_name(store, user).await? else {
        return Ok(None);
    };
    Ok(get(store, user, &name).await?.map(|t| (name, t)))
}

/// Check a script as PUTSCRIPT and CHECKSCRIPT do: size, then syntax and extensions.
pub fn check(limits: &SieveLimits, text: &str) -> Result<super::script::Script, Refused> {
    if text.len() > limits.max_script_size {
        return Err(Refused::TooBig(limits.max_script_size));
    }
    super::compile(text).map_err(Refused::Invalid)
}

/// Whether one more script of `size` bytes named `name` fits (HAVESPACE).
pub async fn has_space(
    store: &Store,
    limits: &SieveLimits,
    user: &str,
    name: &str,
    size: u64,
) -> Result<(), Refused> {
    if size > limits.max_script_size as u64 {
        return Err(Refused::TooBig(limits.max_script_size));
    }
    let scripts = list(store, user).await?;
    if !scripts.iter().any(|(n, _)| n == name) && scripts.len() >= limits.max_scripts {
        return Err(Refused::TooMany(limits.max_scripts));
    }
    Ok(())
}

/// Store a script (replacing one of the same name) after checking it.
pub async fn put(
    store: &Store,
    limits: &SieveLimits,
    user: &str,
    name: &str,
    text: &str,
) -> Result<(), Refused> {
    if !valid_name(name) {
        return Err(Refused::BadName);
    }
    check(limits, text)?;
    has_space(store, limits, user, name, text.len() as u64).await?;
    store
        .kv_set(NS, &key(user, name), text.as_bytes(), None)
        .await?;
    store.commit().await?;
    changed();
    Ok(())
}

/// Make `name` the active script; an empty name deactivates.
pub async fn activate(store: &Store, user: &str, name: &str) -> Result<(), Refused> {
    let user = normalize_address(user);
    if name.is_empty() {
        store.kv_delete(NS_ACTIVE, &user).await?;
    } else {
        if get(store, &user, name).await?.is_none() {
            return Err(Refused::Nonexistent);
        }
        store
            .kv_set(NS_ACTIVE, &user, name.as_bytes(), None)
            .await?;
    }
    store.commit().await?;
    changed();
    Ok(())
}

/// Delete a script that is not active.
pub async fn delete(store: &Store, user: &str, name: &str) -> Result<(), Refused> {
    if get(store, user, name).await?.is_none() {
        return Err(Refused::Nonexistent);
    }
    if active_name(store, user).await?.as_deref() == Some(name) {
        return Err(Refused::Active);
    }
    store.kv_delete(NS, &key(user, name)).await?;
    store.commit().await?;
    changed();
    Ok(())
}

/// Rename a script (the active one stays active under its new name).
pub async fn rename(store: &Store, user: &str, from: &str, to: &str) -> Result<(), Refused> {
    if !valid_name(to) {
        return Err(Refused::BadName);
    }
    let Some(text) = get(store, user, from).await? else {
        return Err(Refused::Nonexistent);
    };
    if from == to {
        return Ok(());
    }
    if get(store, user, to).await?.is_some() {
        return Err(Refused::AlreadyExists);
    }
    store
        .kv_set(NS, &key(user, to), text.as_bytes(), None)
        .await?;
    if active_name(store, user).await?.as_deref() == Some(from) {
        store
            .kv_set(NS_ACTIVE, &normalize_address(user), to.as_bytes(), None)
            .await?;
    }
    store.kv_delete(NS, &key(user, from)).await?;
    store.commit().await?;
    changed();
    Ok(())
}

/// Remove every script of a user (account deletion).
pub async fn delete_all(store: &Store, user: &str) -> Result<(), StoreError> {
    let user = normalize_address(user);
    for (name, _) in list(store, &user).await? {
        store.kv_delete(NS, &key(&user, &name)).await?;
    }
    store.kv_delete(NS_ACTIVE, &user).await?;
    changed();
    Ok(())
}
