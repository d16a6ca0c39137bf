//! FETCH and UID FETCH (RFC 9051 §6.4.5), with CHANGEDSINCE and VANISHED (RFC 7162)
//! and the `on_fetch` hook.

use std::sync::Arc;

use crate::hooks::{HookCtx, HookPoint, Verdict};
use crate::imap::cmd::{CmdResult, Resp, no};
use crate::imap::fetch_response::render;
use crate::imap::selected::has_flag;
use crate::imap::seqset::compress;
use crate::imap::session::Session;
use crate::imap::types::*;
use crate::store::{FlagOp, MessageMeta, StoreError};

impl Session {
    pub(in crate::imap) async fn fetch(
        &mut self,
        uid: bool,
        set: &SeqSet,
        items: &[FetchItem],
        changed_since: Option<u64>,
        vanished: bool,
    ) -> CmdResult {
        if vanished && (!uid || !self.qresync || changed_since.is_none()) {
            return Err(Resp::Bad(
                "VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE".into(),
            ));
        }
        self.sync(false).await;
        let indices = self.resolve(uid, set)?;
        if changed_since.is_some() || items.contains(&FetchItem::Modseq) {
            self.enable_condstore();
        }
        if vanished
            && let (Some(sel), SeqSet::Ranges(_), Some(since)) =
                (&self.selected, set, changed_since)
        {
            // Exactly the UIDs expunged after CHANGEDSINCE when the store kept them, else
            // every UID of the set that is gone (RFC 7162 §3.2.6 allows a superset).
            let user = self.user.as_deref().unwrap_or_default();
            let logged = self
                .deps
                .store
                .changes_since(user, sel.mailbox.id, since)
                .await
                .ok()
                .filter(|c| c.complete)
                .map(|c| c.expunged);
            let in_set = |u: &u32| set.contains(*u, sel.mailbox.uidnext, &[]);
            let gone: Vec<u32> = match logged {
                Some(expunged) => expunged
                    .into_iter()
                    .filter(|u| in_set(u) && sel.msgs.position(*u).is_none())
                    .collect(),
                None => (1..sel.mailbox.uidnext)
                    .filter(|u| in_set(u) && sel.msgs.position(*u).is_none())
                    .collect(),
            };
            if !gone.is_empty() {
                self.untagged(&format!("VANISHED (EARLIER) {}", compress(&gone)));
            }
        }
        let sets_seen = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Section { peek: false, .. } | FetchItem::Binary { peek: false, .. }
            )
        });
        let wants_content = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Section { .. }
                    | FetchItem::Binary { .. }
                    | FetchItem::BinarySize(_)
                    | FetchItem::Envelope
                    | FetchItem::Body
                    | FetchItem::BodyStructure
            )
        });
        let serves_body = items
            .iter()
            .any(|i| matches!(i, FetchItem::Section { .. } | FetchItem::Binary { .. }));
        let user = self.user.clone().unwrap_or_default();
        let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
        let mut denied = false;
        let mut deferred = false;
        let mut failed = false;
        // Size, date and blob are not in the session's view; look them up when needed.
        let needs_meta = wants_content
            || items
                .iter()
                .any(|i| matches!(i, FetchItem::Rfc822Size | FetchItem::InternalDate));
        for idx in indices {
            let sel = self.selected.as_ref().expect("selected");
            if idx >= sel.msgs.len() {
                continue;
            }
            let (msg_uid, modseq) = (sel.msgs.uid(idx), sel.msgs.modseq(idx));
            if changed_since.is_some_and(|c| modseq <= c) {
                continue;
            }
            let stored = if needs_meta {
                match self.deps.store.message(sel.mailbox.id, msg_uid).await {
                    Ok(Some(m)) => Some(m),
                    Ok(None) | Err(StoreError::NotFound(_)) => continue, // expunged meanwhile
                    Err(e) => {
                        // Not an expunge: the client is told to retry, not shown a gap.
                        tracing::warn!(uid = msg_uid, error = %e, "FETCH: message unreadable");
                        deferred = true;
                        continue;
                    }
                }
            } else {
                None
            };
            let meta = MessageMeta {
                uid: msg_uid,
                blob: stored.as_ref().map_or(0, |m| m.blob),
                size: stored.as_ref().map_or(0, |m| m.size),
                flags: sel.msgs.flags(idx).to_vec(),
                internal_date: stored.as_ref().map_or(0, |m| m.internal_date),
                modseq,
            };
            let body = if wants_content {
                match self.deps.store.blob(meta.blob).await {
                    Ok(b) => Some(Arc::new(b)),
                    Err(StoreError::NotFound(_)) => continue, // expunged meanwhile
                    Err(e) => {
                        tracing::warn!(uid = msg_uid, error = %e, "FETCH: message unreadable");
                        deferred = true;
                        continue;
                    }
                }
            } else {
                None
            };
            if serves_body {
                let mut ctx = HookCtx::new(HookPoint::Fetch, self.listener, self.peer.ip());
                ctx.message = body.clone();
                ctx.user = user.clone();
                ctx.tls = self.conn.is_tls();
                ctx.fetch = Some(crate::hooks::FetchFacts {
                    mailbox: sel.mailbox.name.clone(),
                    uid: meta.uid,
                    protocol: "imap",
                });
                // The reason goes to the log, not to the client (which learns only that
                // the message was withheld, for good or for now).
                match self.deps.hooks.run_async(&ctx, None).await.verdict {
                    v @ Verdict::Reject { .. } => {
                        tracing::info!(mailbox = %sel.mailbox.name, uid = meta.uid, reason = %v.wording(), "fetch refused by hook");
                        denied = true;
                        continue;
                    }
                    v @ Verdict::Tempfail { .. } => {
                        tracing::info!(mailbox = %sel.mailbox.name, uid = meta.uid, reason = %v.wording(), "fetch deferred by hook");
                        deferred = true;
                        continue;
                    }
                    _ => {}
                }
            }
            let mut meta = meta;
            let mut flags_changed = false;
            if sets_seen && !read_only && !has_flag(&meta, "\\Seen") {
                // Added in the store's transaction, not written from this session's copy,
                // so that a concurrent flag change by another session is kept.
                if let Ok((done, _)) = self
                    .deps
                    .store
                    .update_flags(
                        &user,
                        self.selected.as_ref().expect("sel").mailbox.id,
                        &[meta.uid],
                        FlagOp::Add,
                        &["\\Seen".to_string()],
                        None,
                    )
                    .await
                    && let Some(u) = done.first()
                {
                    meta.flags = u.flags.clone();
                    meta.modseq = u.modseq;
                    flags_changed = true;
                    if let Some(s) = self.selected.as_mut() {
                        s.msgs.set(idx, &meta.flags, meta.modseq);
                    }
                }
            }
            if let Some(s) = self.selected.as_ref()
                && s.is_recent(meta.uid)
            {
                meta.flags.push("\\Recent".into());
            }
            let (line, cte_failed) = render(
                idx + 1,
                &meta,
                body.as_deref().map(Vec::as_slice),
                items,
                uid,
                flags_changed,
                self.condstore,
            );
            failed |= cte_failed;
            self.conn.out.extend_from_slice(&line);
            if !self.drain_output().await {
                return Err(no("[UNAVAILABLE] The client stopped reading"));
            }
        }
        // The other messages were served; NO says some were not (RFC 9051 §6.4.5).
        if denied {
            return Err(no("[NOPERM] Some messages were withheld by policy"));
        }
        if deferred {
            return Err(no(
                "[UNAVAILABLE] Some messages are temporarily unavailable, try again later",
            ));
        }
        if failed {
            return Err(no(
                "[UNKNOWN-CTE] Cannot decode the content transfer encoding",
            ));
        }
        Ok("FETCH completed".into())
    }
}
