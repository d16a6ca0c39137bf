//! APPEND with MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and UTF8 data (RFC 6855).

use crate::imap::cmd::{CmdResult, Resp, no, store_err};
use crate::imap::fetch_response::normalize_crlf;
use crate::imap::mime;
use crate::imap::response::imap_string;
use crate::imap::seqset::compress;
use crate::imap::session::{Missing, Session};
use crate::imap::types::*;
use crate::store::Placement;

impl Session {
    /// APPEND, with MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469): every message is built
    /// and checked first, so an error stores none of them; then they are stored in order,
    /// and a store failure takes back the ones already written.
    pub(in crate::imap) async fn append(
        &mut self,
        name: &str,
        messages: Vec<AppendMessage>,
    ) -> CmdResult {
        let user = self.user.clone().unwrap_or_default();
        let mb = self.mailbox_named(name, Missing::TryCreate).await?;
        let limit = self.deps.config.imap.max_literal;
        let mut built = Vec::with_capacity(messages.len());
        for m in messages {
            let mut bytes = Vec::new();
            let mut binary = false;
            for part in m.parts {
                match part {
                    AppendPart::Text { data, binary: b } => {
                        binary |= b;
                        if b {
                            bytes.extend_from_slice(&data);
                        } else {
                            bytes.extend_from_slice(&normalize_crlf(&data));
                        }
                    }
                    AppendPart::Url(url) => {
                        bytes.extend_from_slice(&self.catenate_url(&url).await?)
                    }
                }
                if bytes.len() as u64 > limit {
                    return Err(no("[TOOBIG] The message would be too big"));
                }
            }
            if bytes.is_empty() {
                return Err(no("Empty message"));
            }
            // BODY[] must never carry NUL (RFC 3516 §4.2): binary parts are stored base64.
            if binary && bytes.contains(&0) {
                bytes = mime::without_nul(&bytes).ok_or_else(|| {
                    no("[UNKNOWN-CTE] A NUL outside a body part cannot be stored")
                })?;
            }
            let flags: Vec<String> = m.flags.into_iter().filter(|f| f != "\\Recent").collect();
            let date = m.date.unwrap_or_else(|| chrono::Utc::now().timestamp());
            built.push((bytes, flags, date));
        }
        let store = &self.deps.store;
        let mut uids = Vec::new();
        for (bytes, flags, date) in built {
            let placement = Placement {
                user: user.clone(),
                mailbox: mb.name.clone(),
                flags,
            };
            match store.deliver(&bytes, date, &[placement]).await {
                Ok(u) => uids.extend(u),
                Err(e) => {
                    // All or none (RFC 3502 §6.3.11).
                    let _ = store.expunge(&user, mb.id, &uids).await;
                    return Err(store_err(e));
                }
            }
        }
        self.deps.store.commit().await.map_err(store_err)?;
        // A message put straight into Junk teaches the spam filters (queued).
        if super::copy::is_junk(&mb) {
            self.deps.hooks.learn(crate::hooks::LearnJob {
                spam: true,
                user: user.clone(),
                mailbox: mb.id,
                uids: uids.clone(),
            });
        }
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.mailbox.id == mb.id)
        {
            self.sync(false).await;
        }
        Ok(format!(
            "[APPENDUID {} {}] APPEND completed",
            mb.uidvalidity,
            compress(&uids)
        ))
    }

    /// The bytes a CATENATE `URL` names (RFC 4469 §5, IMAP URLs of RFC 5092): absolute
    /// (`imap://user@host/…`, the user must be this one), absolute path (`/mailbox…`) or
    /// relative to the selected mailbox (`;UID=…`), with `;UIDVALIDITY=` checked when
    /// given, `;SECTION=` and `;PARTIAL=`. Anything else, or a message that is not there,
    /// is `NO [BADURL "url"]`.
    pub(in crate::imap) async fn catenate_url(&self, url: &str) -> Result<Vec<u8>, Resp> {
        let bad = |why: &str| {
            no(format!(
                "[BADURL {}] {why}",
                String::from_utf8_lossy(&imap_string(url.as_bytes()))
            ))
        };
        let user = self.user.clone().unwrap_or_default();
        let parsed = crate::imap::url::parse(url).map_err(bad)?;
        if parsed
            .user
            .as_deref()
            .is_some_and(|u| !u.eq_ignore_ascii_case(&user))
        {
            return Err(bad("Another user's message"));
        }
        let mb = match &parsed.mailbox {
            Some(name) => self
                .deps
                .store
                .mailbox(&user, name)
                .await
                .map_err(store_err)?
                .ok_or_else(|| bad("No such mailbox"))?,
            None => match &self.selected {
                Some(sel) => sel.mailbox.clone(),
                None => return Err(bad("A relative URL needs a selected mailbox")),
            },
        };
        if parsed.uidvalidity.is_some_and(|v| v != mb.uidvalidity) {
            return Err(bad("UIDVALIDITY does not match"));
        }
        let meta = self
            .deps
            .store
            .message(mb.id, parsed.uid)
            .await
            .map_err(store_err)?
            .ok_or_else(|| bad("No such message"))?;
        let raw = self.deps.store.blob(meta.blob).await.map_err(store_err)?;
        let mut bytes = match &parsed.section {
            None => raw,
            Some(sec) => {
                let root = mime::parse_message(&raw);
                mime::section_bytes(&raw, &root, &sec.part, &sec.kind)
                    .ok_or_else(|| bad("No such section"))?
            }
        };
        if let Some((offset, len)) = parsed.partial {
            let start = (offset as usize).min(bytes.len());
            let end = len.map_or(bytes.len(), |l| {
                start.saturating_add(l as usize).min(bytes.len())
            });
            bytes = bytes[start..end].to_vec();
        }
        Ok(bytes)
    }
}
