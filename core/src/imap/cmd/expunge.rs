//! EXPUNGE and UID EXPUNGE (RFC 9051 §6.4.3, RFC 4315).

use std::collections::HashSet;

use crate::imap::cmd::{CmdResult, Resp, no, store_err};
use crate::imap::selected::has;
use crate::imap::seqset::{check_seq_set, resolve_set};
use crate::imap::session::Session;
use crate::imap::types::*;

impl Session {
    /// Indices (0-based) of the selected messages in `set`, ascending and without
    /// duplicates. A sequence number beyond the session's view of the mailbox (or `*` in
    /// an empty one) is a BAD (RFC 9051 §9, `seq-number`); UIDs that do not exist are not.
    pub(in crate::imap) fn resolve(&self, uid: bool, set: &SeqSet) -> Result<Vec<usize>, Resp> {
        let sel = self.selected.as_ref().expect("selected");
        if !uid {
            check_seq_set(set, sel.msgs.len())?;
        }
        Ok(resolve_set(&sel.msgs, uid, set, &self.saved))
    }

    pub(in crate::imap) async fn expunge(&mut self, set: Option<SeqSet>) -> CmdResult {
        let sel = self.selected.as_ref().expect("selected");
        if sel.read_only {
            return Err(no("[READ-ONLY] Mailbox is read-only"));
        }
        // Flags set by other sessions count too: learn them first (their FETCH responses
        // are sent; expunges stay held back until after ours).
        self.sync(false).await;
        let filter: Option<HashSet<usize>> = set
            .as_ref()
            .map(|s| self.resolve(true, s).map(|v| v.into_iter().collect()))
            .transpose()?;
        let sel = self.selected.as_ref().expect("selected");
        let uids: Vec<u32> = (0..sel.msgs.len())
            .filter(|i| {
                has(sel.msgs.flags(*i), "\\Deleted")
                    && filter.as_ref().is_none_or(|f| f.contains(i))
            })
            .map(|i| sel.msgs.uid(i))
            .collect();
        let user = self.user.clone().unwrap_or_default();
        self.deps
            .store
            .expunge(&user, sel.mailbox.id, &uids)
            .await
            .map_err(store_err)?;
        self.deps.store.commit().await.map_err(store_err)?;
        self.sync(true).await;
        Ok("EXPUNGE completed".into())
    }
}
