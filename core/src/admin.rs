//! Administration commands (users, domains, aliases, mailbox import/export), run either
//! directly on an open store or inside a running server on behalf of the CLI through the
//! control socket.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::accounts::{hash_password, valid_address};
use crate::blocking::Wait;
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
        /// Make the address's domain local when it is not (otherwise refused: a typo would
        /// capture that domain's outbound mail).
        #[serde(default)]
        create_domain: bool,
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
    /// List the outbound queue.
    QueueList,
    /// Show one queued message.
    QueueShow {
        /// Queue id.
        id: String,
    },
    /// Retry now (one message, or all).
    QueueFlush {
        /// Queue id; all when absent.
        id: Option<String>,
    },
    /// Remove a message from the queue without bouncing it.
    QueueDelete {
        /// Queue id.
        id: String,
    },
    /// Create a DKIM key for a domain and print the DNS record.
    DkimGenerate {
        /// Domain.
        domain: String,
        /// Selector.
        selector: String,
        /// "ed25519" or "rsa".
        algorithm: String,
    },
    /// List an account's mailboxes with message counts, or with `folder` the messages of
    /// one mailbox (UID and size).
    MailboxList {
        /// Account address.
        address: String,
        /// Mailbox to list the messages of.
        folder: Option<String>,
    },
    /// One stored message; the reply text is its bytes in base64 (control replies are JSON
    /// text), which the CLI decodes before writing them out.
    MailboxCat {
        /// Account address.
        address: String,
        /// Mailbox name.
        folder: String,
        /// Message UID.
        uid: u32,
    },
    /// Write every folder of an account to `dest` (Maildir++ tree or one mbox per folder).
    MailboxExport {
        /// Account address.
        address: String,
        /// Output format.
        format: crate::mailbox_io::Format,
        /// Destination directory, absolute (the server's working directory is not the CLI's);
        /// created, or must be empty.
        dest: PathBuf,
    },
    /// Create an admin API token.
    TokenCreate {
        /// Its name.
        name: String,
    },
    /// List admin API tokens.
    TokenList,
    /// Revoke an admin API token.
    TokenRevoke {
        /// Its name.
        name: String,
    },
    /// The DNS records a local domain should publish for this server.
    DnsRecords {
        /// The domain.
        domain: String,
    },
    /// The trace of one message (queue id or Message-ID).
    Trace {
        /// Queue id or Message-ID.
        id: String,
    },
    /// Search message traces.
    TraceSearch {
        /// What to look for.
        query: crate::trace::Query,
    },
    /// Store a user's Sieve script.
    SievePut {
        /// Account address.
        address: String,
        /// Script name.
        name: String,
        /// Its text.
        script: String,
        /// Also make it active.
        #[serde(default)]
        activate: bool,
    },
    /// List a user's Sieve scripts.
    SieveList {
        /// Account address.
        address: String,
    },
    /// Print a user's Sieve script.
    SieveGet {
        /// Account address.
        address: String,
        /// Script name.
        name: String,
    },
    /// Make a script the active one ("" deactivates).
    SieveActivate {
        /// Account address.
        address: String,
        /// Script name.
        name: String,
    },
    /// Delete a script.
    SieveDelete {
        /// Account address.
        address: String,
        /// Script name.
        name: String,
    },
    /// Read a Maildir++ tree or mbox file(s) into an account.
    MailboxImport {
        /// Account address.
        address: String,
        /// Input format.
        format: crate::mailbox_io::Format,
        /// Source path, absolute.
        src: PathBuf,
        /// Folder for the top level (default INBOX); other folders go below it.
        folder: Option<String>,
    },
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
    /// Import or export failed.
    #[error(transparent)]
    MailboxIo(#[from] crate::mailbox_io::MailboxIoError),
}

/// Run a command against the store, with the config file's `domains` counted as local. Returns the text to print.
pub fn execute(
    store: &Store,
    config: &crate::config::Config,
    cmd: AdminCommand,
) -> Result<String, AdminError> {
    execute_with_progress(store, config, cmd, &mut |_| {})
}

/// [`execute`], reporting progress of long commands (import, export) line by line.
pub fn execute_with_progress(
    store: &Store,
    config: &crate::config::Config,
    cmd: AdminCommand,
    progress: &mut dyn FnMut(&str),
) -> Result<String, AdminError> {
    let config_domains = &config.domains[..];
    let out = match cmd {
        AdminCommand::UserAdd {
            address,
            password,
            create_domain,
        } => {
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
                && !store.domains().wait()?.contains(&domain)
            {
                if !create_domain {
                    return Err(AdminError::Usage(format!(
                        "{domain} is not a local domain, and an account there would make it one: \
                         mail to every {domain} address would then stay here instead of leaving. \
                         Check the address, or add --create-domain (or `corvus domain add {domain}` first)"
                    )));
                }
                store.add_domain(&domain).wait()?;
                note = format!(" (domain {domain} added as local)");
            }
            store
                .create_account(&address, &hash_password(&password))
                .wait()?;
            format!("added user {}{note}", address.to_lowercase())
        }
        AdminCommand::UserDel { address } => {
            crate::sieve::storage::delete_all(store, &address).wait()?;
            store.delete_account(&address).wait()?;
            format!("deleted user {} and its mail", address.to_lowercase())
        }
        AdminCommand::UserList => {
            let mut v: Vec<String> = store
                .accounts()
                .wait()?
                .into_iter()
                .map(|a| a.address)
                .collect();
            v.sort();
            v.join("\n")
        }
        AdminCommand::UserPasswd { address, password } => {
            if password.is_empty() {
                return Err(AdminError::Usage("the password must not be empty".into()));
            }
            store
                .set_password(&address, &hash_password(&password))
                .wait()?;
            format!("password changed for {}", address.to_lowercase())
        }
        AdminCommand::DomainAdd { domain } => {
            if domain.is_empty() || domain.contains(['@', ' ', '/']) {
                return Err(AdminError::Usage(format!(
                    "{domain:?} is not a domain name"
                )));
            }
            store.add_domain(&domain).wait()?;
            format!("added domain {}", domain.to_lowercase())
        }
        AdminCommand::DomainDel { domain } => {
            store.delete_domain(&domain).wait()?;
            format!("removed domain {}", domain.to_lowercase())
        }
        AdminCommand::DomainList => {
            let mut v: Vec<String> = config_domains
                .iter()
                .map(|d| format!("{} (config)", d.to_lowercase()))
                .collect();
            v.extend(store.domains().wait()?);
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
            store.set_alias(&alias, &targets).wait()?;
            format!(
                "alias {} -> {}",
                alias.to_lowercase(),
                targets.join(", ").to_lowercase()
            )
        }
        AdminCommand::AliasDel { alias } => {
            store.delete_alias(&alias).wait()?;
            format!("removed alias {}", alias.to_lowercase())
        }
        AdminCommand::Reload => {
            return Err(AdminError::Usage(
                "no running server to reload (scripts are loaded when `corvus serve` starts)"
                    .into(),
            ));
        }
        AdminCommand::QueueList => {
            let mut q = store.queue().wait()?;
            q.sort_by_key(|e| e.created);
            if q.is_empty() {
                return Ok("queue is empty".into());
            }
            let mut out = format!(
                "{:<17} {:<30} {:>8} {:<20} {}",
                "ID", "SENDER", "ATTEMPTS", "NEXT ATTEMPT", "RECIPIENTS / LAST ERROR"
            );
            for e in q {
                let next = chrono::DateTime::from_timestamp(e.next_attempt, 0)
                    .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                let rcpts: Vec<&str> = e.rcpts.iter().map(|r| r.address.as_str()).collect();
                out.push_str(&format!(
                    "\n{:<17} {:<30} {:>8} {:<20} {}{}",
                    e.id,
                    if e.mail_from.is_empty() {
                        "<>"
                    } else {
                        &e.mail_from
                    },
                    e.attempts,
                    next,
                    rcpts.join(","),
                    e.last_error.map(|x| format!(" ({x})")).unwrap_or_default()
                ));
            }
            out
        }
        AdminCommand::QueueShow { id } => {
            let e = store
                .queue_entry(&id)
                .wait()?
                .ok_or_else(|| StoreError::NotFound(format!("queue entry {id}")))?;
            let msg = store.blob(e.blob).wait().unwrap_or_default();
            let head = &msg[..crate::message::header_end(&msg)];
            format!(
                "id: {}\nfrom: <{}>\nrecipients: {}\ncreated: {}\nattempts: {}\nnext attempt: {}\nlast error: {}\nsize: {}\ndecisions:\n{}\n\n{}",
                e.id,
                e.mail_from,
                e.rcpts
                    .iter()
                    .map(|r| r.address.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                chrono::DateTime::from_timestamp(e.created, 0).unwrap_or_default(),
                e.attempts,
                chrono::DateTime::from_timestamp(e.next_attempt, 0).unwrap_or_default(),
                e.last_error.unwrap_or_else(|| "-".into()),
                msg.len(),
                e.decisions
                    .iter()
                    .map(|d| format!("  {d}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                String::from_utf8_lossy(head).trim_end()
            )
        }
        AdminCommand::QueueFlush { id } => {
            let mut n = 0;
            for e in store.queue().wait()? {
                if id.as_ref().is_none_or(|i| *i == e.id) {
                    match store.queue_due_now(&e.id).wait() {
                        Ok(()) => n += 1,
                        // Delivered or deleted since the listing.
                        Err(StoreError::NotFound(_)) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            if n == 0
                && let Some(i) = id
            {
                return Err(StoreError::NotFound(format!("queue entry {i}")).into());
            }
            format!("{n} message(s) scheduled for immediate delivery")
        }
        AdminCommand::QueueDelete { id } => {
            store.queue_remove(&id).wait()?;
            format!("removed {id} from the queue")
        }
        AdminCommand::DkimGenerate {
            domain,
            selector,
            algorithm,
        } => {
            let key = crate::dkim::generate(store, &domain, &selector, &algorithm)
                .wait()
                .map_err(|e| AdminError::Usage(e.to_string()))?;
            format!(
                "DKIM key for {domain} created. Publish this DNS record:\n{}",
                key.txt_record(&domain)
            )
        }
        AdminCommand::TokenCreate { name } => {
            let token = crate::api_tokens::create(store, &name).wait()?;
            format!(
                "created API token {name}. It is shown only now; send it as \
                 \"Authorization: Bearer <token>\":\n{token}"
            )
        }
        AdminCommand::TokenList => {
            let list = crate::api_tokens::list(store).wait()?;
            if list.is_empty() {
                return Ok("no API tokens (create one with `corvus token create NAME`)".into());
            }
            list.iter()
                .map(|t| {
                    format!(
                        "{}\tcreated {}",
                        t.name,
                        chrono::DateTime::from_timestamp(t.created, 0).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        AdminCommand::DnsRecords { domain } => {
            let domain = domain.trim_end_matches('.').to_lowercase();
            let local = config_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&domain))
                || store.domains().wait()?.contains(&domain);
            if !local {
                return Err(AdminError::Usage(format!(
                    "{domain} is not a local domain (add it with `corvus domain add {domain}`)"
                )));
            }
            let records = crate::dns_records::expected(config, store, &domain).wait()?;
            format!(
                "; DNS records for {domain}, served by {}\n{}",
                config.hostname,
                crate::dns_records::zone_text(&records).trim_end()
            )
        }
        AdminCommand::TokenRevoke { name } => {
            crate::api_tokens::revoke(store, &name).wait()?;
            format!("revoked API token {name}")
        }
        AdminCommand::Trace { id } => match crate::trace::get(store, &id).wait()? {
            Some(r) => crate::trace::render(&r).trim_end().to_string(),
            None => {
                return Err(StoreError::NotFound(format!(
                    "trace of {id} (give the queue id from \"250 … queued as ID\" or the Message-ID)"
                ))
                .into());
            }
        },
        AdminCommand::TraceSearch { query } => {
            let found = crate::trace::search(store, &query).wait()?;
            if found.is_empty() {
                return Ok("no traces match".into());
            }
            let mut out = format!(
                "{:<17} {:<25} {:<10} {:<30} {}",
                "ID", "CREATED", "RESULT", "SENDER", "RECIPIENTS"
            );
            for t in found {
                out.push_str(&format!(
                    "\n{:<17} {:<25} {:<10} {:<30} {}",
                    t.id,
                    t.created,
                    t.result,
                    if t.sender.is_empty() { "<>" } else { &t.sender },
                    t.recipients.join(",")
                ));
            }
            out
        }
        AdminCommand::SievePut {
            address,
            name,
            script,
            activate,
        } => {
            sieve_account(store, &address)?;
            sieve_result(
                crate::sieve::storage::put(store, &config.sieve, &address, &name, &script).wait(),
            )?;
            if activate {
                sieve_result(crate::sieve::storage::activate(store, &address, &name).wait())?;
            }
            format!(
                "stored Sieve script {name} for {}{}",
                address.to_lowercase(),
                if activate { " (active)" } else { "" }
            )
        }
        AdminCommand::SieveList { address } => {
            sieve_account(store, &address)?;
            crate::sieve::storage::list(store, &address)
                .wait()?
                .into_iter()
                .map(|(n, a)| if a { format!("{n}\tactive") } else { n })
                .collect::<Vec<_>>()
                .join("\n")
        }
        AdminCommand::SieveGet { address, name } => {
            sieve_account(store, &address)?;
            match crate::sieve::storage::get(store, &address, &name).wait()? {
                Some(t) => t.strip_suffix('\n').unwrap_or(&t).to_string(),
                None => {
                    return Err(StoreError::NotFound(format!("Sieve script {name}")).into());
                }
            }
        }
        AdminCommand::SieveActivate { address, name } => {
            sieve_account(store, &address)?;
            sieve_result(crate::sieve::storage::activate(store, &address, &name).wait())?;
            if name.is_empty() {
                format!("no active Sieve script for {}", address.to_lowercase())
            } else {
                format!(
                    "activated Sieve script {name} for {}",
                    address.to_lowercase()
                )
            }
        }
        AdminCommand::SieveDelete { address, name } => {
            sieve_account(store, &address)?;
            sieve_result(crate::sieve::storage::delete(store, &address, &name).wait())?;
            format!("deleted Sieve script {name} of {}", address.to_lowercase())
        }
        AdminCommand::AliasList => store
            .aliases()
            .wait()?
            .into_iter()
            .map(|(a, t)| format!("{a} -> {}", t.join(", ")))
            .collect::<Vec<_>>()
            .join("\n"),
        AdminCommand::MailboxList { address, folder } => {
            if store.account(&address).wait()?.is_none() {
                return Err(
                    StoreError::NotFound(format!("account {}", address.to_lowercase())).into(),
                );
            }
            match folder {
                None => store
                    .mailboxes(&address)
                    .wait()?
                    .into_iter()
                    .map(|mb| {
                        Ok(format!(
                            "{}\t{}",
                            mb.name,
                            store.messages(mb.id).wait()?.len()
                        ))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?
                    .join("\n"),
                Some(folder) => store
                    .messages(find_mailbox(store, &address, &folder)?)
                    .wait()?
                    .into_iter()
                    .map(|m| format!("{}\t{}", m.uid, m.size))
                    .collect::<Vec<_>>()
                    .join("\n"),
            }
        }
        AdminCommand::MailboxCat {
            address,
            folder,
            uid,
        } => {
            let id = find_mailbox(store, &address, &folder)?;
            let meta = store
                .messages(id)
                .wait()?
                .into_iter()
                .find(|m| m.uid == uid)
                .ok_or_else(|| StoreError::NotFound(format!("message {uid} in {folder}")))?;
            B64.encode(store.blob(meta.blob).wait()?)
        }
        AdminCommand::MailboxExport {
            address,
            format,
            dest,
        } => {
            let dest = absolute(dest)?;
            let started = std::time::Instant::now();
            let s = crate::mailbox_io::export(store, &address, format, &dest, progress)?;
            format!(
                "exported {} messages in {} folders of {} to {} ({format}) in {:.1}s: {}",
                s.messages(),
                s.folders.len(),
                address.to_lowercase(),
                dest.display(),
                started.elapsed().as_secs_f64(),
                s.details()
            )
        }
        AdminCommand::MailboxImport {
            address,
            format,
            src,
            folder,
        } => {
            let src = absolute(src)?;
            let started = std::time::Instant::now();
            let s = crate::mailbox_io::import(
                store,
                &address,
                format,
                &src,
                folder.as_deref(),
                progress,
            )?;
            format!(
                "imported {} messages into {} folders of {} from {} ({format}) in {:.1}s: {}",
                s.messages(),
                s.folders.len(),
                address.to_lowercase(),
                src.display(),
                started.elapsed().as_secs_f64(),
                s.details()
            )
        }
    };
    Ok(out)
}

/// The id of `user`'s mailbox `name`, or a not-found error naming both.
fn find_mailbox(store: &Store, user: &str, name: &str) -> Result<u64, AdminError> {
    match store.mailbox(user, name).wait()? {
        Some(mb) => Ok(mb.id),
        None => {
            Err(StoreError::NotFound(format!("mailbox {name} of {}", user.to_lowercase())).into())
        }
    }
}

/// Import and export paths must not depend on the working directory of whoever runs them.
fn absolute(p: PathBuf) -> Result<PathBuf, AdminError> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(AdminError::Usage(format!(
            "{}: give an absolute path (the server resolves paths, not the shell)",
            p.display()
        )))
    }
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

/// The account a Sieve command names must exist.
fn sieve_account(store: &Store, address: &str) -> Result<(), AdminError> {
    if store.account(address).wait()?.is_none() {
        return Err(StoreError::NotFound(format!("account {}", address.to_lowercase())).into());
    }
    Ok(())
}

fn sieve_result<T>(r: Result<T, crate::sieve::storage::Refused>) -> Result<T, AdminError> {
    r.map_err(|e| match e {
        crate::sieve::storage::Refused::Store(e) => AdminError::Store(e),
        other => AdminError::Usage(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Placement;
    use std::sync::Arc;

    #[tokio::test]
    async fn mailbox_list_and_cat() {
        let store: Store = Arc::new(crate::store::MemoryStore::new());
        store
            .create_account("alice@example.org", "x")
            .await
            .unwrap();
        let raw = b"Subject: hi\r\n\r\n\x00\xff bytes\r\n".to_vec();
        let to = [Placement {
            user: "alice@example.org".into(),
            mailbox: "INBOX".into(),
            flags: Vec::new(),
        }];
        let uids = store.deliver(&raw, 0, &to).await.unwrap();
        let config = crate::config::Config::default();
        let run = |cmd| execute(&store, &config, cmd);
        let list = run(AdminCommand::MailboxList {
            address: "Alice@example.org".into(),
            folder: None,
        })
        .unwrap();
        assert!(list.lines().any(|l| l == "INBOX\t1"), "{list}");
        assert!(list.lines().any(|l| l == "Sent\t0"), "{list}");
        let msgs = run(AdminCommand::MailboxList {
            address: "alice@example.org".into(),
            folder: Some("inbox".into()),
        })
        .unwrap();
        assert_eq!(msgs, format!("{}\t{}", uids[0], raw.len()));
        let cat = run(AdminCommand::MailboxCat {
            address: "alice@example.org".into(),
            folder: "INBOX".into(),
            uid: uids[0],
        })
        .unwrap();
        assert_eq!(B64.decode(cat).unwrap(), raw);
        for bad in [
            AdminCommand::MailboxCat {
                address: "alice@example.org".into(),
                folder: "INBOX".into(),
                uid: 99,
            },
            AdminCommand::MailboxCat {
                address: "alice@example.org".into(),
                folder: "Nope".into(),
                uid: 1,
            },
            AdminCommand::MailboxList {
                address: "bob@example.org".into(),
                folder: None,
            },
        ] {
            assert!(run(bad).is_err());
        }
    }
}
