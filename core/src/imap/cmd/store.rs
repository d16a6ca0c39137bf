//! STORE and UID STORE (RFC 9051 §6.4.6), with UNCHANGEDSINCE (RFC 7162 §3.1.3).

use crate::imap::cmd::{CmdResult, no, store_err};
use crate::imap::seqset::compress;
use crate::imap::session::Session;
use crate::imap::types::*;
use crate::store::FlagOp;

impl Session {
    pub(in crate::imap) async fn store(
        &mut self,
        uid: bool,
        set: &SeqSet,
        mode: StoreMode,
        silent: bool,
        flags: Vec<String>,
        unchanged_since: Option<u64>,
    ) -> CmdResult {
        if self.selected.as_ref().is_some_and(|s| s.read_only) {
            return Err(no("[READ-ONLY] Mailbox is read-only"));
        }
        self.sync(false).await;
        if unchanged_since.is_some() {
            self.enable_condstore();
        }
        let indices = self.resolve(uid, set)?;
        let flags: Vec<String> = flags.into_iter().filter(|f| f != "\\Recent").collect();
        let sel = self.selected.as_ref().expect("selected");
        let uids: Vec<u32> = indices.iter().map(|&i| sel.msgs.uid(i)).collect();
        let op = match mode {
            StoreMode::Replace => FlagOp::Replace,
            StoreMode::Add => FlagOp::Add,
            StoreMode::Remove => FlagOp::Remove,
        };
        let user = self.user.clone().unwrap_or_default();
        let mbid = sel.mailbox.id;
        // The new flags are computed from the stored ones inside the store's transaction, so
        // concurrent STOREs from other sessions are not overwritten.
        let (updates, modified_uids) = self
            .deps
            .store
            .update_flags(&user, mbid, &uids, op, &flags, unchanged_since)
            .await
            .map_err(store_err)?;
        if updates.iter().any(|u| u.changed) {
            self.deps.store.commit().await.map_err(store_err)?;
        }
        let condstore = self.condstore;
        let sel = self.selected.as_mut().expect("selected");
        if let Some(lines) = sel.announce(updates.iter().flat_map(|u| u.flags.iter())) {
            self.conn.out.extend_from_slice(lines.as_bytes());
        }
        let mut modified = Vec::new();
        for u in &modified_uids {
            if let Some(i) = sel.msgs.position(*u) {
                modified.push(if uid { *u } else { i as u32 + 1 });
            }
        }
        for u in &updates {
            let Some(i) = sel.msgs.position(u.uid) else {
                continue;
            };
            sel.msgs.set(i, &u.flags, u.modseq);
            if !silent || (condstore && unchanged_since.is_some()) {
                let mut line = format!("* {} FETCH (", i + 1);
                if uid {
                    line.push_str(&format!("UID {} ", u.uid));
                }
                line.push_str(&format!(
                    "FLAGS ({})",
                    sel.shown_flags(u.uid, &u.flags).join(" ")
                ));
                if condstore {
                    line.push_str(&format!(" MODSEQ ({})", u.modseq));
                }
                line.push_str(")\r\n");
                self.conn.out.extend_from_slice(line.as_bytes());
            }
        }
        self.live_updates().await;
        if !modified.is_empty() {
            return Ok(format!(
                "[MODIFIED {}] Conditional STORE failed for some messages",
                compress(&modified)
            ));
        }
        Ok("STORE completed".into())
    }
}
