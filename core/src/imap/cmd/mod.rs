//! The IMAP command handlers, one module per command family, each an `impl Session` block
//! over the session in [`super::session`] (which frames, checks and dispatches them).

pub mod append;
pub mod auth;
pub mod copy;
pub mod expunge;
pub mod fetch;
pub mod mailbox;
pub mod search;
pub mod select;
pub mod store;

use crate::store::StoreError;

/// A command's tagged result: the text of its OK, or its NO/BAD.
pub type CmdResult = Result<String, Resp>;

/// A tagged NO/BAD.
pub enum Resp {
    /// NO: the command failed.
    No(String),
    /// BAD: the command was not acceptable.
    Bad(String),
}

/// A NO with `s`.
pub fn no(s: impl Into<String>) -> Resp {
    Resp::No(s.into())
}

/// A store error as the client sees it: named conditions get their response code
/// (RFC 5530); a failing backend (a database that is down, restarting or failing over) is
/// logged and answered UNAVAILABLE, a temporary failure the client retries; anything else
/// is logged and answered SERVERBUG.
pub fn store_err(e: StoreError) -> Resp {
    match e {
        StoreError::NotFound(_) => no("[NONEXISTENT] No such mailbox"),
        StoreError::Exists(_) => no("[ALREADYEXISTS] Mailbox already exists"),
        StoreError::Invalid(t) => no(format!("[CANNOT] {t}")),
        StoreError::Backend(why) => {
            tracing::warn!(error = %why, "store unavailable");
            no("[UNAVAILABLE] Storage temporarily unavailable, try again later")
        }
        other => {
            tracing::error!(error = %other, "store error");
            no("[SERVERBUG] Internal error, try again later")
        }
    }
}
