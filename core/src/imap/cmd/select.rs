//! SELECT and EXAMINE (RFC 9051 §6.3.2-3), with CONDSTORE and QRESYNC (RFC 7162).

use std::sync::Arc;

use crate::imap::cmd::{CmdResult, Resp, store_err};
use crate::imap::selected::{SYSTEM_FLAGS, Selected};
use crate::imap::seqset::compress;
use crate::imap::session::{Missing, Session};
use crate::imap::types::*;
use crate::imap::view::Snapshot;

impl Session {
    pub(in crate::imap) async fn select(
        &mut self,
        name: String,
        read_only: bool,
        condstore: bool,
        qresync: Option<(u32, u64, Option<SeqSet>)>,
    ) -> CmdResult {
        // Closing the previous mailbox is announced to rev2 and QRESYNC clients, which need
        // it to tell the old mailbox's responses from the new one's (RFC 9051 §6.3.2,
        // RFC 7162 §3.2.11).
        if self.selected.take().is_some() && (self.rev2 || self.qresync) {
            self.untagged("OK [CLOSED] Previous mailbox closed");
        }
        self.saved.clear(); // `$` does not survive a mailbox change (RFC 5182 §2.1)
        // Changes so far concern the previous view; the new one is read whole below.
        self.drain_events();
        self.changes.clear();
        self.reread = false;
        if condstore {
            self.condstore = true;
        }
        if qresync.is_some() && !self.qresync {
            return Err(Resp::Bad("Enable QRESYNC first".into()));
        }
        let user = self.user.clone().unwrap_or_default();
        let mb = self.mailbox_named(&name, Missing::Nonexistent).await?;
        // The view, keywords and first unseen: a snapshot the store keeps with its cache of
        // big mailboxes while the mailbox is unchanged (no pass over 100,000 records when
        // it is there).
        let snap: Snapshot = {
            let d = self
                .deps
                .store
                .derived(mb.id, &|msgs| Arc::new(Snapshot::build(msgs)))
                .await
                .map_err(store_err)?;
            match d.downcast::<Snapshot>() {
                Ok(s) => (*s).clone(),
                // Another kind of derived value (none exists today): build it here.
                Err(_) => {
                    Snapshot::build(&self.deps.store.messages(mb.id).await.map_err(store_err)?)
                }
            }
        };
        // QRESYNC: what changed since the client's MODSEQ, asked of the store after the
        // snapshot. Only what the snapshot agrees with is reported now: an expunge after the
        // snapshot reaches this session through the change feed, as any later change.
        let mut resync: Vec<String> = Vec::new();
        if let Some((uv, modseq, known)) = &qresync
            && *uv == mb.uidvalidity
        {
            let since = self
                .deps
                .store
                .changes_since(&user, mb.id, *modseq)
                .await
                .map_err(store_err)?;
            let view = &snap.view;
            let known = |u: u32| {
                known
                    .as_ref()
                    .is_none_or(|set| set.contains(u, mb.uidnext, &[]))
            };
            let vanished: Vec<u32> = if since.complete {
                since
                    .expunged
                    .into_iter()
                    .filter(|u| known(*u) && view.position(*u).is_none())
                    .collect()
            } else {
                // Expunges from before the store kept them: every UID the client may know
                // that is gone (RFC 7162 §3.2.5.1 allows a superset).
                (1..mb.uidnext)
                    .filter(|u| known(*u) && view.position(*u).is_none())
                    .collect()
            };
            if !vanished.is_empty() {
                resync.push(format!("VANISHED (EARLIER) {}", compress(&vanished)));
            }
            for m in &since.changed {
                if let Some(i) = view.position(m.uid)
                    && view.modseq(i) > *modseq
                {
                    resync.push(format!(
                        "{} FETCH (UID {} FLAGS ({}) MODSEQ ({}))",
                        i + 1,
                        m.uid,
                        view.flags(i).join(" "),
                        view.modseq(i)
                    ));
                }
            }
        }
        let Snapshot {
            view,
            keywords,
            first_unseen,
        } = snap;
        let kw = if keywords.is_empty() {
            String::new()
        } else {
            format!(" {}", keywords.join(" "))
        };
        let mut sel = Selected {
            mailbox: mb.clone(),
            read_only,
            msgs: view,
            keywords,
            recent: Vec::new(),
            live: Vec::new(),
        };
        if !self.rev2 {
            sel.take_recent(self.deps.store.as_ref(), sel.msgs.last_uid())
                .await;
        }
        self.untagged(&format!("{} EXISTS", sel.msgs.len()));
        if !self.rev2 {
            self.untagged(&format!("{} RECENT", sel.recent_count()));
        }
        self.untagged(&format!("FLAGS ({SYSTEM_FLAGS}{kw})"));
        if read_only {
            // Nothing can be changed permanently in a read-only mailbox (RFC 9051 §7.1).
            self.untagged("OK [PERMANENTFLAGS ()] No permanent flags permitted");
        } else {
            self.untagged(&format!(
                "OK [PERMANENTFLAGS ({SYSTEM_FLAGS}{kw} \\*)] Flags permitted"
            ));
        }
        if !self.rev2
            && let Some(i) = first_unseen
        {
            self.untagged(&format!("OK [UNSEEN {}] First unseen", i + 1));
        }
        self.untagged(&format!("OK [UIDVALIDITY {}] UIDs valid", mb.uidvalidity));
        self.untagged(&format!("OK [UIDNEXT {}] Predicted next UID", mb.uidnext));
        self.untagged(&format!("OK [HIGHESTMODSEQ {}] Highest", mb.highest_modseq));
        for line in &resync {
            self.untagged(line);
        }
        self.selected = Some(sel);
        Ok(format!(
            "[{}] {} completed",
            if read_only { "READ-ONLY" } else { "READ-WRITE" },
            if read_only { "EXAMINE" } else { "SELECT" }
        ))
    }
}
