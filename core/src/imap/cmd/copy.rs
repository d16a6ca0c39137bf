//! COPY, MOVE and their UID forms (RFC 9051 §6.4.7, RFC 6851 MOVE, RFC 4315 COPYUID).

use crate::hooks::LearnJob;
use crate::hooks::rspamd::learn::class_of_move;
use crate::imap::cmd::{CmdResult, no, store_err};
use crate::imap::seqset::list_plain;
use crate::imap::session::Session;
use crate::imap::types::*;
use crate::store::Mailbox;

/// Whether `mb` is the Junk folder (special use `\Junk`, or named Junk).
pub(in crate::imap) fn is_junk(mb: &Mailbox) -> bool {
    mb.special_use.as_deref() == Some("\\Junk") || mb.name.eq_ignore_ascii_case("Junk")
}

/// Whether `mb` is the Trash folder (special use `\Trash`, or named Trash).
fn is_trash(mb: &Mailbox) -> bool {
    mb.special_use.as_deref() == Some("\\Trash") || mb.name.eq_ignore_ascii_case("Trash")
}

impl Session {
    pub(in crate::imap) async fn copy(
        &mut self,
        uid: bool,
        set: &SeqSet,
        target: &str,
        is_move: bool,
    ) -> CmdResult {
        if is_move && self.selected.as_ref().is_some_and(|s| s.read_only) {
            return Err(no("[READ-ONLY] Mailbox is read-only"));
        }
        self.sync(false).await;
        let user = self.user.clone().unwrap_or_default();
        let indices = self.resolve(uid, set)?;
        let sel = self.selected.as_ref().expect("selected");
        let uids: Vec<u32> = indices.iter().map(|&i| sel.msgs.uid(i)).collect();
        let Some(dest) = self
            .deps
            .store
            .mailbox(&user, target)
            .await
            .map_err(store_err)?
        else {
            return Err(no("[TRYCREATE] No such mailbox"));
        };
        let (uv, pairs) = self
            .deps
            .store
            .copy(&user, sel.mailbox.id, &uids, target)
            .await
            .map_err(store_err)?;
        // Filing into or out of Junk teaches the spam filters (queued; the reply does not wait).
        if let Some(spam) = class_of_move(is_junk(&sel.mailbox), is_junk(&dest), is_trash(&dest))
            && !pairs.is_empty()
        {
            self.deps.hooks.learn(LearnJob {
                spam,
                user: user.clone(),
                mailbox: dest.id,
                uids: pairs.iter().map(|p| p.1).collect(),
            });
        }
        let code = if pairs.is_empty() {
            String::new()
        } else {
            let src: Vec<u32> = pairs.iter().map(|p| p.0).collect();
            let dst: Vec<u32> = pairs.iter().map(|p| p.1).collect();
            format!("[COPYUID {uv} {} {}] ", list_plain(&src), list_plain(&dst))
        };
        if is_move {
            let mbid = sel.mailbox.id;
            self.deps
                .store
                .expunge(&user, mbid, &uids)
                .await
                .map_err(store_err)?;
            self.deps.store.commit().await.map_err(store_err)?;
            if !code.is_empty() {
                self.untagged(&format!("OK {}Moved", code));
            }
            self.sync(true).await;
            return Ok("MOVE completed".into());
        }
        self.deps.store.commit().await.map_err(store_err)?;
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.mailbox.name == target)
        {
            self.sync(false).await;
        }
        Ok(format!("{code}COPY completed"))
    }
}
