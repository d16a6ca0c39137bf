//! The selected mailbox of an IMAP session: its view, the keywords announced, which
//! messages are `\Recent` here (RFC 3501 §2.3.2), and the live searches kept current.

use crate::imap::esearch::LiveSearch;
use crate::store::MessageMeta;

use crate::imap::view::View;
use crate::store::{MailStore, Mailbox};

pub(in crate::imap) const SYSTEM_FLAGS: &str = "\\Answered \\Flagged \\Deleted \\Seen \\Draft";

pub(in crate::imap) struct Selected {
    pub(in crate::imap) mailbox: Mailbox,
    pub(in crate::imap) read_only: bool,
    /// Messages in sequence order (UID, flags, MODSEQ).
    pub(in crate::imap) msgs: View,
    /// Keywords announced to the client in FLAGS; a flag response never shows another
    /// before it is announced (RFC 9051 §7.3.5).
    pub(in crate::imap) keywords: Vec<String>,
    /// UID ranges (inclusive, ascending) that are `\Recent` in this session: the messages
    /// it was the first to see (SELECT claims them in the store), or, read-only, the ones
    /// no session has claimed yet (RFC 3501 §2.3.2). Empty in an IMAP4rev2 session.
    pub(in crate::imap) recent: Vec<(u32, u32)>,
    /// Searches whose result the client keeps up to date (RFC 5267 CONTEXT=SEARCH).
    pub(in crate::imap) live: Vec<LiveSearch>,
}

impl Selected {
    /// Whether `uid` is `\Recent` in this session.
    pub(in crate::imap) fn is_recent(&self, uid: u32) -> bool {
        let i = self.recent.partition_point(|r| r.1 < uid);
        self.recent.get(i).is_some_and(|r| r.0 <= uid)
    }

    /// How many messages of the view are `\Recent` (the RECENT response).
    pub(in crate::imap) fn recent_count(&self) -> usize {
        self.recent
            .iter()
            .map(|&(lo, hi)| {
                self.msgs.partition_uid(hi.saturating_add(1)) - self.msgs.partition_uid(lo)
            })
            .sum()
    }

    /// Take the messages above the store's `\Recent` mark up to `last` (the view's highest
    /// UID): claimed for this session when it is read-write, only looked at when read-only.
    pub(in crate::imap) async fn take_recent(&mut self, store: &dyn MailStore, last: u32) {
        let Ok(mark) = store
            .claim_recent(self.mailbox.id, last, !self.read_only)
            .await
        else {
            return;
        };
        let from = self.recent.last().map_or(mark, |r| r.1.max(mark)) + 1;
        if from > last {
            return;
        }
        match self.recent.last_mut() {
            Some(r) if r.1 + 1 == from => r.1 = last,
            _ => self.recent.push((from, last)),
        }
    }

    /// `flags`, with `\Recent` added when `uid` is recent in this session.
    pub(in crate::imap) fn shown_flags(&self, uid: u32, flags: &[String]) -> Vec<String> {
        let mut v = flags.to_vec();
        if self.is_recent(uid) {
            v.push("\\Recent".into());
        }
        v
    }

    /// The untagged FLAGS and PERMANENTFLAGS lines announcing the keywords among `flags` that
    /// the client has not been told of yet (they join the announced set), or nothing.
    pub(in crate::imap) fn announce<'a>(
        &mut self,
        flags: impl IntoIterator<Item = &'a String>,
    ) -> Option<String> {
        let before = self.keywords.len();
        for f in flags {
            if !f.starts_with('\\') && !self.keywords.iter().any(|k| k.eq_ignore_ascii_case(f)) {
                self.keywords.push(f.clone());
            }
        }
        (self.keywords.len() > before).then(|| flags_lines(&self.keywords, self.read_only))
    }
}

/// `* FLAGS (…)` and `* OK [PERMANENTFLAGS (… \*)]` for the system flags and `keywords`.
pub(in crate::imap) fn flags_lines(keywords: &[String], read_only: bool) -> String {
    let kw: String = keywords.iter().map(|k| format!(" {k}")).collect();
    if read_only {
        return format!("* FLAGS ({SYSTEM_FLAGS}{kw})\r\n");
    }
    format!(
        "* FLAGS ({SYSTEM_FLAGS}{kw})\r\n* OK [PERMANENTFLAGS ({SYSTEM_FLAGS}{kw} \\*)] Flags permitted\r\n"
    )
}

pub(in crate::imap) fn has_flag(m: &MessageMeta, f: &str) -> bool {
    has(&m.flags, f)
}

pub(in crate::imap) fn has(flags: &[String], f: &str) -> bool {
    flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}
