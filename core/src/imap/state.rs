//! The connection states of RFC 9051 §3 and the commands each allows, written as a table:
//! the session checks every command here before it dispatches it, so a handler never
//! runs in a state it was not written for.

use super::types::Command;

/// Where a session is (RFC 9051 §3; logout is the end of the session, not a state here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Before LOGIN/AUTHENTICATE.
    NotAuthenticated,
    /// Logged in, no mailbox selected.
    Authenticated,
    /// Logged in with a mailbox selected.
    Selected,
}

/// The states a command is valid in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Valid {
    /// Any state (RFC 9051 §6.1).
    Any,
    /// Not authenticated only (§6.2).
    NotAuthenticated,
    /// Authenticated or selected (§6.3).
    Authenticated,
    /// Selected only (§6.4).
    Selected,
}

/// Every command by name, with the states it is valid in. `ENABLE` is allowed with a
/// mailbox selected too, as it always was here (RFC 5161 §3.1 only asks for a login).
pub const COMMANDS: &[(&str, Valid)] = &[
    ("CAPABILITY", Valid::Any),
    ("NOOP", Valid::Any),
    ("LOGOUT", Valid::Any),
    ("ID", Valid::Any),
    ("STARTTLS", Valid::NotAuthenticated),
    ("AUTHENTICATE", Valid::NotAuthenticated),
    ("LOGIN", Valid::NotAuthenticated),
    ("ENABLE", Valid::Authenticated),
    ("SELECT", Valid::Authenticated),
    ("CREATE", Valid::Authenticated),
    ("DELETE", Valid::Authenticated),
    ("RENAME", Valid::Authenticated),
    ("SUBSCRIBE", Valid::Authenticated),
    ("UNSUBSCRIBE", Valid::Authenticated),
    ("LIST", Valid::Authenticated),
    ("NAMESPACE", Valid::Authenticated),
    ("STATUS", Valid::Authenticated),
    ("APPEND", Valid::Authenticated),
    ("IDLE", Valid::Authenticated),
    ("CLOSE", Valid::Selected),
    ("UNSELECT", Valid::Selected),
    ("CANCELUPDATE", Valid::Selected),
    ("EXPUNGE", Valid::Selected),
    ("SEARCH", Valid::Selected),
    ("SORT", Valid::Selected),
    ("THREAD", Valid::Selected),
    ("FETCH", Valid::Selected),
    ("STORE", Valid::Selected),
    ("COPY", Valid::Selected),
];

/// The table's name of `command` (EXAMINE is a SELECT, LSUB a LIST, MOVE a COPY, the UID
/// forms their plain command).
pub fn name(command: &Command) -> &'static str {
    match command {
        Command::Capability => "CAPABILITY",
        Command::Noop => "NOOP",
        Command::Logout => "LOGOUT",
        Command::Id(_) => "ID",
        Command::StartTls => "STARTTLS",
        Command::Authenticate(..) => "AUTHENTICATE",
        Command::Login(..) => "LOGIN",
        Command::Enable(_) => "ENABLE",
        Command::Select { .. } => "SELECT",
        Command::Create(..) => "CREATE",
        Command::Delete(_) => "DELETE",
        Command::Rename(..) => "RENAME",
        Command::Subscribe(_) => "SUBSCRIBE",
        Command::Unsubscribe(_) => "UNSUBSCRIBE",
        Command::List { .. } => "LIST",
        Command::Namespace => "NAMESPACE",
        Command::Status(..) => "STATUS",
        Command::Append { .. } => "APPEND",
        Command::Idle => "IDLE",
        Command::Close => "CLOSE",
        Command::Unselect => "UNSELECT",
        Command::CancelUpdate(_) => "CANCELUPDATE",
        Command::Expunge(_) => "EXPUNGE",
        Command::Search { .. } => "SEARCH",
        Command::Sort { .. } => "SORT",
        Command::Thread { .. } => "THREAD",
        Command::Fetch { .. } => "FETCH",
        Command::Store { .. } => "STORE",
        Command::Copy { .. } => "COPY",
    }
}

/// Whether `command` may run in `state`; else the text of its tagged BAD.
pub fn check(command: &Command, state: State) -> Result<(), &'static str> {
    let name = name(command);
    let valid = COMMANDS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(Valid::Any, |(_, v)| *v);
    match (valid, state) {
        (Valid::Any, _)
        | (Valid::NotAuthenticated, State::NotAuthenticated)
        | (Valid::Authenticated, State::Authenticated | State::Selected)
        | (Valid::Selected, State::Selected) => Ok(()),
        (Valid::NotAuthenticated, _) => Err("Already authenticated"),
        (Valid::Authenticated | Valid::Selected, State::NotAuthenticated) => Err("Log in first"),
        (Valid::Selected, State::Authenticated) => Err("No mailbox selected"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_in_the_table_once() {
        for (i, (n, _)) in COMMANDS.iter().enumerate() {
            assert!(!COMMANDS[i + 1..].iter().any(|(m, _)| m == n), "{n} twice");
        }
        // Every name `name()` gives (read from this file's source) has its row: a new
        // command cannot be dispatched before it is placed in the table.
        let src = include_str!("state.rs");
        let body =
            &src[src.find("pub fn name(").unwrap()..src.find("/// Whether `command`").unwrap()];
        let names: Vec<&str> = body
            .lines()
            .filter_map(|l| l.split("=> \"").nth(1))
            .map(|r| r.trim_end_matches("\","))
            .collect();
        assert_eq!(names.len(), COMMANDS.len());
        for n in names {
            assert!(COMMANDS.iter().any(|(m, _)| *m == n), "{n} has no row");
        }
    }

    #[test]
    fn rfc_9051_states() {
        use State::*;
        let fetch = Command::Close;
        assert_eq!(check(&fetch, NotAuthenticated), Err("Log in first"));
        assert_eq!(check(&fetch, Authenticated), Err("No mailbox selected"));
        assert_eq!(check(&fetch, Selected), Ok(()));
        let login = Command::Login("a".into(), "b".into());
        assert_eq!(check(&login, NotAuthenticated), Ok(()));
        assert_eq!(check(&login, Selected), Err("Already authenticated"));
        assert_eq!(
            check(&Command::Namespace, NotAuthenticated),
            Err("Log in first")
        );
        assert_eq!(check(&Command::Namespace, Selected), Ok(()));
        assert_eq!(check(&Command::Noop, NotAuthenticated), Ok(()));
    }
}
