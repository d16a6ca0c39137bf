//! Administration commands (users, domains, aliases), run either directly on an open store or
//! inside a running server on behalf of the CLI through the control socket.

use serde::{Deserialize, Serialize};

use crate::accounts::{hash_password, valid_address};
use crate::store::{Store, StoreError};

/// One administrative request; the CLI sends these over the control socket as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminCommand {
    /// Create an account.
    UserAdd {
        /// Address.
        address: String,
        /// Plain password (hashed by the receiving side).
        password: String,
    },
    /// Delete an account and its mail.
    UserDel {
        /// Address.
        address: String,
    },
    /// List accounts.
    UserList,
    /// Change a password.
    UserPasswd {
        /// Address.
        address: String,
        /// New password.
        password: String,
    },
    /// Add a local domain.
    DomainAdd {
        /// Domain.
        domain: String,
    },
    /// Remove a local domain.
    DomainDel {
        /// Domain.
        domain: String,
    },
    /// List local domains.
    DomainList,
    /// Point an alias at targets.
    AliasAdd {
        /// Alias address.
        alias: String,
        /// Target addresses.
        targets: Vec<String>,
    },
    /// Remove an alias.
    AliasDel {
        /// Alias address.
        alias: String,
    },
    /// List aliases.
    AliasList,
    /// Reload hook scripts in the running server (handled by the control socket itself).
    Reload,
}

/// Errors from administrative commands.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request itself is wrong.
    #[error("{0}")]
    Usage(String),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Run a command against the store, with `config_domains` (from the config file) counted as
/// local. Returns the text to print.
pub fn execute(
    store: &Store,
    config_domains: &[String],
    cmd: AdminCommand,
) -> Result<String, AdminError> {
    let out = match cmd {
        AdminCommand::UserAdd { address, password } => {
            check_address(&address)?;
            if password.is_empty() {
                return Err(AdminError::Usage("the password must not be empty".into()));
            }
            let domain = address
                .rsplit_once('@')
                .map(|(_, d)| d.to_lowercase())
                .unwrap_or_default();
            let mut note = String::new();
            if !config_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&domain))
                && !store.domains()?.contains(&domain)
            {
                store.add_domain(&domain)?;
                note = format!(" (domain {domain} added as local)");
            }
            store.create_account(&address, &hash_password(&password))?;
            format!("added user {}{note}", address.to_lowercase())
        }
        AdminCommand::UserDel { address } => {
            store.delete_account(&address)?;
            format!("deleted user {} and its mail", address.to_lowercase())
        }
        AdminCommand::UserList => {
            let mut v: Vec<String> = store.accounts()?.into_iter().map(|a| a.address).collect();
            v.sort();
            v.join("\n")
        }
        AdminCommand::UserPasswd { address, password } => {
            if password.is_empty() {
                return Err(AdminError::Usage("the password must not be empty".into()));
            }
            store.set_password(&address, &hash_password(&password))?;
            format!("password changed for {}", address.to_lowercase())
        }
        AdminCommand::DomainAdd { domain } => {
            if domain.is_empty() || domain.contains(['@', ' ', '/']) {
                return Err(AdminError::Usage(format!(
                    "{domain:?} is not a domain name"
                )));
            }
            store.add_domain(&domain)?;
            format!("added domain {}", domain.to_lowercase())
        }
        AdminCommand::DomainDel { domain } => {
            store.delete_domain(&domain)?;
            format!("removed domain {}", domain.to_lowercase())
        }
        AdminCommand::DomainList => {
            let mut v: Vec<String> = config_domains
                .iter()
                .map(|d| format!("{} (config)", d.to_lowercase()))
                .collect();
            v.extend(store.domains()?);
            v.join("\n")
        }
        AdminCommand::AliasAdd { alias, targets } => {
            check_address(&alias)?;
            if targets.is_empty() {
                return Err(AdminError::Usage("give at least one target address".into()));
            }
            for t in &targets {
                check_address(t)?;
            }
            store.set_alias(&alias, &targets)?;
            format!(
                "alias {} -> {}",
                alias.to_lowercase(),
                targets.join(", ").to_lowercase()
            )
        }
        AdminCommand::AliasDel { alias } => {
            store.delete_alias(&alias)?;
            format!("removed alias {}", alias.to_lowercase())
        }
        AdminCommand::Reload => {
            return Err(AdminError::Usage(
                "no running server to reload (scripts are loaded when `corvus serve` starts)"
                    .into(),
            ));
        }
        AdminCommand::AliasList => store
            .aliases()?
            .into_iter()
            .map(|(a, t)| format!("{a} -> {}", t.join(", ")))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    Ok(out)
}

fn check_address(a: &str) -> Result<(), AdminError> {
    if valid_address(a) {
        Ok(())
    } else {
        Err(AdminError::Usage(format!(
            "{a:?} is not an address like user@example.org"
        )))
    }
}
