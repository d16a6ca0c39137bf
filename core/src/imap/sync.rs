//! Keeping a session's view of its selected mailbox current: changes from other sessions
//! (new mail, flags, expunges) become untagged responses (RFC 9051 §5.2, §7.5.1: no EXPUNGE
//! during FETCH, STORE and SEARCH).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::imap::seqset::compress;
use crate::imap::session::Session;
use crate::imap::view::View;
use crate::store::{Change, MessageMeta};

/// What a sync applies to a session's view: expunged UIDs (ascending, all in the view),
/// flag changes newer than the view's, and new messages (ascending UIDs above the view's).
#[derive(Debug, Default, PartialEq)]
pub(in crate::imap) struct Delta {
    pub(in crate::imap) gone: Vec<u32>,
    pub(in crate::imap) flags: Vec<(u32, Vec<String>, u64)>,
    pub(in crate::imap) appended: Vec<MessageMeta>,
}

impl Delta {
    /// Compare the view with the mailbox as read from the store (both in UID order).
    pub(in crate::imap) fn between(view: &View, fresh: &[MessageMeta]) -> Delta {
        let in_fresh = |uid: u32| fresh.binary_search_by_key(&uid, |m| m.uid);
        let mut d = Delta::default();
        for (i, uid) in view.uids().enumerate() {
            match in_fresh(uid) {
                Err(_) => d.gone.push(uid),
                Ok(j) if fresh[j].modseq != view.modseq(i) => {
                    d.flags.push((uid, fresh[j].flags.clone(), fresh[j].modseq))
                }
                Ok(_) => {}
            }
        }
        let last = view.last_uid();
        d.appended = fresh[fresh.partition_point(|m| m.uid <= last)..].to_vec();
        d
    }

    /// Fold the feed's changes (in order) into one delta against the view. A flag change
    /// older than what the view (or an earlier change) has is dropped; a message added
    /// and expunged in the same batch is never shown.
    pub(in crate::imap) fn from_changes(view: &View, changes: &[Arc<Change>]) -> Delta {
        let mut d = Delta::default();
        let mut flags: HashMap<u32, (Vec<String>, u64)> = HashMap::new();
        let mut gone: Vec<u32> = Vec::new();
        for change in changes {
            match change.as_ref() {
                Change::Appended { messages, .. } => {
                    for m in messages {
                        let last = d.appended.last().map_or(view.last_uid(), |a| a.uid);
                        if m.uid > last {
                            d.appended.push(m.clone());
                        }
                    }
                }
                Change::Flags { changes, .. } => {
                    for (uid, f, modseq) in changes {
                        let newer = flags.get(uid).is_none_or(|(_, ms)| modseq > ms);
                        if newer {
                            flags.insert(*uid, (f.clone(), *modseq));
                        }
                    }
                }
                Change::Expunged { uids, .. } => gone.extend_from_slice(uids),
                _ => {}
            }
        }
        gone.sort_unstable();
        gone.dedup();
        d.appended.retain(|m| gone.binary_search(&m.uid).is_err());
        for m in &mut d.appended {
            if let Some((f, ms)) = flags.remove(&m.uid)
                && ms > m.modseq
            {
                m.flags = f;
                m.modseq = ms;
            }
        }
        d.gone = gone
            .into_iter()
            .filter(|u| view.position(*u).is_some())
            .collect();
        let mut flags: Vec<(u32, Vec<String>, u64)> = flags
            .into_iter()
            .filter(|(uid, (_, ms))| {
                d.gone.binary_search(uid).is_err()
                    && view.position(*uid).is_some_and(|i| *ms > view.modseq(i))
            })
            .map(|(uid, (f, ms))| (uid, f, ms))
            .collect();
        flags.sort_unstable_by_key(|f| f.0);
        d.flags = flags;
        d
    }
}

impl Session {
    /// Merge changes made elsewhere into the selected view and report them. The changes
    /// come from the store's feed with their content, so nothing is read again, except
    /// after the feed lagged (changes lost), when the mailbox is re-read and compared.
    pub(in crate::imap) async fn sync(&mut self, allow_expunge: bool) {
        self.drain_events();
        let Some(sel) = &self.selected else { return };
        if !self.reread && self.changes.is_empty() {
            return;
        }
        let delta = if self.reread {
            match self.deps.store.messages(sel.mailbox.id).await {
                Ok(fresh) => Delta::between(&sel.msgs, &fresh),
                Err(_) => return,
            }
        } else {
            Delta::from_changes(&sel.msgs, &self.changes)
        };
        self.reread = false;
        self.changes.clear();
        let condstore = self.condstore;
        let qresync = self.qresync;
        let sel = self.selected.as_mut().expect("selected");
        let recent_before = sel.recent_count();
        let mut out = Vec::new();
        // Keywords new to the client (set by another session, or on a new message) are
        // announced before any response that could show them.
        let new_flags = delta
            .flags
            .iter()
            .flat_map(|(_, f, _)| f.iter())
            .chain(delta.appended.iter().flat_map(|m| m.flags.iter()));
        if let Some(lines) = sel.announce(new_flags) {
            out.extend_from_slice(lines.as_bytes());
        }
        if allow_expunge && !delta.gone.is_empty() {
            let gone = sel
                .msgs
                .retain_uids(|u| delta.gone.binary_search(&u).is_err());
            // Live searches lose the expunged messages first, numbered as the client still
            // numbers them (RFC 5267 §4.3).
            if !gone.is_empty() {
                let old_seq: HashMap<u32, u32> =
                    gone.iter().map(|&(i, u)| (u, i as u32 + 1)).collect();
                for live in &mut sel.live {
                    let now: Vec<u32> = live
                        .uids
                        .iter()
                        .copied()
                        .filter(|u| !old_seq.contains_key(u))
                        .collect();
                    let uid = live.uid;
                    let number = |u: u32| if uid { u } else { old_seq[&u] };
                    out.extend_from_slice(live.changes(&now, &number).as_bytes());
                    live.uids = now;
                }
            }
            if qresync {
                if !gone.is_empty() {
                    let mut vanished: Vec<u32> = gone.iter().map(|g| g.1).collect();
                    vanished.sort_unstable();
                    out.extend_from_slice(
                        format!("* VANISHED {}\r\n", compress(&vanished)).as_bytes(),
                    );
                }
            } else {
                // Descending, so each number is valid when the client applies it.
                for (i, _) in &gone {
                    out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                }
            }
        }
        // Flag changes for messages both sides know.
        for (uid, flags, modseq) in &delta.flags {
            let Some(i) = sel.msgs.position(*uid) else {
                continue;
            };
            if *modseq == sel.msgs.modseq(i) {
                continue;
            }
            if flags.as_slice() != sel.msgs.flags(i) {
                let ms = if condstore {
                    format!(" MODSEQ ({modseq})")
                } else {
                    String::new()
                };
                out.extend_from_slice(
                    format!(
                        "* {} FETCH (UID {uid} FLAGS ({}){ms})\r\n",
                        i + 1,
                        sel.shown_flags(*uid, flags).join(" ")
                    )
                    .as_bytes(),
                );
            }
            sel.msgs.set(i, flags, *modseq);
        }
        let before = sel.msgs.len();
        for m in &delta.appended {
            if m.uid > sel.msgs.last_uid() {
                sel.msgs.push(m);
            }
        }
        let grew = sel.msgs.len() != before;
        if grew {
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.msgs.len()).as_bytes());
            if !self.rev2 {
                sel.take_recent(self.deps.store.as_ref(), sel.msgs.last_uid())
                    .await;
            }
        }
        // RECENT follows EXISTS, and any change of the count by expunges (RFC 3501 §7.3.2).
        if !self.rev2 && (grew || sel.recent_count() != recent_before) {
            out.extend_from_slice(format!("* {} RECENT\r\n", sel.recent_count()).as_bytes());
        }
        if let Ok(Some(mb)) = self
            .deps
            .store
            .mailbox(self.user.as_deref().unwrap_or_default(), &sel.mailbox.name)
            .await
        {
            sel.mailbox = mb;
        }
        // Expunges held back now must be reported by a later sync.
        if !allow_expunge && !delta.gone.is_empty() {
            self.changes.push(Arc::new(Change::Expunged {
                mailbox: sel.mailbox.id,
                uids: delta.gone,
                modseq: 0,
            }));
        }
        self.conn.out.extend_from_slice(&out);
        self.live_updates().await;
    }

    /// Take the store's change events: those for the selected mailbox (or a lost count of
    /// them) mark the view as needing a re-read.
    pub(in crate::imap) fn drain_events(&mut self) {
        while let Some(w) = &mut self.watch {
            match w.try_recv() {
                Ok(change) => self.take_change(change),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.reread = true,
                Err(_) => break,
            }
        }
    }

    /// Keep a change of the selected mailbox's messages for the next sync.
    pub(in crate::imap) fn take_change(&mut self, change: Arc<Change>) {
        let selected = self.selected.as_ref().map(|s| s.mailbox.id);
        if let Change::Stale { mailbox } = change.as_ref()
            && Some(*mailbox) == selected
        {
            self.reread = true;
            self.changes.clear();
            return;
        }
        if change.messages_of().is_some() && change.messages_of() == selected && !self.reread {
            self.changes.push(change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::metas;

    /// The feed's changes fold into what a re-read would find, without reading.
    #[test]
    fn changes_fold_into_the_same_delta_a_reread_finds() {
        let view = View::new(&metas(&[1, 2, 3]));
        let meta = |uid: u32, flags: &[&str], modseq: u64| MessageMeta {
            uid,
            blob: 0,
            size: 0,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internal_date: 0,
            modseq,
        };
        let changes = [
            Change::Appended {
                mailbox: 1,
                messages: vec![meta(4, &[], 5), meta(5, &[], 6)],
            },
            // A newer flag change of 2 arrives before an older one: the older is dropped.
            Change::Flags {
                mailbox: 1,
                changes: vec![(2, vec!["\\Seen".into(), "$B".into()], 9)],
            },
            Change::Flags {
                mailbox: 1,
                changes: vec![(2, vec!["\\Seen".into()], 8), (4, vec!["$A".into()], 7)],
            },
            // Expunged: one the view has, one appended in this batch, one unknown.
            Change::Expunged {
                mailbox: 1,
                uids: vec![5, 3, 77],
                modseq: 10,
            },
            // The session's own STORE, already in its view (same MODSEQ): nothing to do.
            Change::Flags {
                mailbox: 1,
                changes: vec![(1, vec![], 1)],
            },
            // An append the view already has (read at SELECT): skipped.
            Change::Appended {
                mailbox: 1,
                messages: vec![meta(2, &[], 1)],
            },
        ]
        .map(Arc::new);
        let d = Delta::from_changes(&view, &changes);
        assert_eq!(d.gone, vec![3]);
        assert_eq!(
            d.flags,
            vec![(2, vec!["\\Seen".to_string(), "$B".to_string()], 9)]
        );
        assert_eq!(d.appended, vec![meta(4, &["$A"], 7)]);
        // The same end state read from the store gives the same delta.
        let fresh = [
            meta(1, &[], 1),
            meta(2, &["\\Seen", "$B"], 9),
            meta(4, &["$A"], 7),
        ];
        assert_eq!(Delta::between(&view, &fresh), d);
    }
}
