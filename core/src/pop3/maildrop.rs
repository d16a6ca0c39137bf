//! The maildrop of one POP3 session, sans I/O: the INBOX snapshot taken at login with its
//! message numbers and deletion marks (RFC 1939 §§5–6). The per-user lock that keeps a
//! second POP3 session out (RFC 1939 §4 "exclusive-access lock") is a lease in the store
//! (`store::lease`), so it holds across nodes.

use crate::store::MessageMeta;

/// One message of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// UID in the INBOX.
    pub uid: u32,
    /// Key of the message bytes.
    pub blob: u64,
    /// Size in octets as stored (CRLF line endings).
    pub size: u64,
    /// Whether the message had `\Seen` at login.
    pub seen: bool,
    /// Marked by DELE.
    pub deleted: bool,
}

/// Why a message number cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSuchMessage {
    /// Out of range (0 or past the end).
    Missing(u32),
    /// Marked as deleted in this session.
    Deleted(u32),
}

impl std::fmt::Display for NoSuchMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoSuchMessage::Missing(n) => write!(f, "No such message: {n}"),
            NoSuchMessage::Deleted(n) => write!(f, "Message {n} already deleted"),
        }
    }
}

/// The snapshot of the INBOX taken at login; mail delivered later is not part of it.
#[derive(Debug, Clone)]
pub struct Maildrop {
    /// Store id of the INBOX.
    pub mailbox_id: u64,
    /// INBOX UIDVALIDITY (part of every UIDL).
    pub uidvalidity: u32,
    entries: Vec<Entry>,
}

impl Maildrop {
    /// A snapshot of `messages` (in UID order, as the store returns them).
    pub fn new(mailbox_id: u64, uidvalidity: u32, messages: &[MessageMeta]) -> Self {
        let entries = messages
            .iter()
            .map(|m| Entry {
                uid: m.uid,
                blob: m.blob,
                size: m.size,
                seen: m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")),
                deleted: false,
            })
            .collect();
        Maildrop {
            mailbox_id,
            uidvalidity,
            entries,
        }
    }

    /// Number of messages not marked deleted and their total size (STAT, RFC 1939 §5).
    pub fn stat(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, size), (_, e)| (n + 1, size + e.size))
    }

    /// Messages not marked deleted, with their message numbers.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.deleted)
            .map(|(i, e)| (i as u32 + 1, e))
    }

    /// Message `n` (1-based) unless it is missing or marked deleted.
    pub fn get(&self, n: u32) -> Result<&Entry, NoSuchMessage> {
        let e = n
            .checked_sub(1)
            .and_then(|i| self.entries.get(i as usize))
            .ok_or(NoSuchMessage::Missing(n))?;
        if e.deleted {
            Err(NoSuchMessage::Deleted(n))
        } else {
            Ok(e)
        }
    }

    /// Mark message `n` deleted (DELE).
    pub fn delete(&mut self, n: u32) -> Result<(), NoSuchMessage> {
        self.get(n)?;
        self.entries[n as usize - 1].deleted = true;
        Ok(())
    }

    /// Unmark every message (RSET).
    pub fn reset(&mut self) {
        for e in &mut self.entries {
            e.deleted = false;
        }
    }

    /// UIDs marked deleted, for the UPDATE state.
    pub fn deleted_uids(&self) -> Vec<u32> {
        self.entries
            .iter()
            .filter(|e| e.deleted)
            .map(|e| e.uid)
            .collect()
    }

    /// The unique-id listing of a message (RFC 1939 §7 UIDL): UIDVALIDITY and UID, stable
    /// across sessions and restarts because both come from the store.
    pub fn unique_id(&self, e: &Entry) -> String {
        format!("{}.{}", self.uidvalidity, e.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32, size: u64, flags: &[&str]) -> MessageMeta {
        MessageMeta {
            uid,
            blob: 100 + uid as u64,
            size,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internal_date: 0,
            modseq: 1,
        }
    }

    #[test]
    fn numbering_deletion_and_reset() {
        let mut m = Maildrop::new(
            7,
            1234,
            &[meta(3, 10, &[]), meta(5, 20, &["\\Seen"]), meta(9, 30, &[])],
        );
        assert_eq!(m.stat(), (3, 60));
        assert_eq!(m.get(2).unwrap().uid, 5);
        assert!(m.get(2).unwrap().seen);
        assert_eq!(m.get(0), Err(NoSuchMessage::Missing(0)));
        assert_eq!(m.get(4), Err(NoSuchMessage::Missing(4)));
        assert_eq!(m.unique_id(m.get(3).unwrap()), "1234.9");

        m.delete(2).unwrap();
        assert_eq!(m.delete(2), Err(NoSuchMessage::Deleted(2)));
        assert_eq!(m.get(2), Err(NoSuchMessage::Deleted(2)));
        assert_eq!(m.stat(), (2, 40));
        // Numbers do not shift after a deletion (RFC 1939 §5).
        assert_eq!(m.live().map(|(n, _)| n).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(m.deleted_uids(), vec![5]);

        m.reset();
        assert_eq!(m.stat(), (3, 60));
        assert!(m.deleted_uids().is_empty());
    }
}
