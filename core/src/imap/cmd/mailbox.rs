//! Mailbox commands of the authenticated state: CREATE, DELETE, RENAME, LIST/LSUB with
//! LIST-EXTENDED and LIST-STATUS (RFC 5258, RFC 5819), STATUS (RFC 9051 §6.3).

use std::collections::HashSet;

use crate::imap::cmd::{CmdResult, Resp, no, store_err};
use crate::imap::list::wildmatch;
use crate::imap::selected::has_flag;
use crate::imap::session::{Missing, Session};
use crate::imap::types::*;
use crate::store::{Mailbox, StoreError};

/// The answer of LSUB and of LIST (SUBSCRIBED …): (name, attributes, CHILDINFO) for every
/// subscribed name the patterns match, whether its mailbox exists or not (RFC 9051 §6.3.9),
/// and for a level the patterns stop at above a subscribed name they do not match: LSUB lists
/// it `\Noselect` (RFC 3501 §6.3.9), LIST with RECURSIVEMATCH with CHILDINFO ("SUBSCRIBED")
/// (RFC 5258 §3.5).
pub(in crate::imap) fn subscribed_lines(
    lsub: bool,
    recursive: bool,
    subscriptions: &HashSet<String>,
    boxes: &[Mailbox],
    names: &HashSet<String>,
    matches: &dyn Fn(&str) -> bool,
    want_special: bool,
) -> Vec<(String, Vec<String>, bool)> {
    let mut listed: std::collections::BTreeMap<String, (bool, bool)> = Default::default();
    for name in subscriptions {
        if matches(name) {
            listed.entry(name.clone()).or_default().0 = true;
            continue;
        }
        let mut end = 0;
        while let Some(i) = name[end..].find('/') {
            let parent = &name[..end + i];
            end += i + 1;
            if matches(parent) {
                listed.entry(parent.to_string()).or_default().1 = true;
            }
        }
    }
    let mut out = Vec::new();
    for (name, (subscribed, has_subscribed_child)) in listed {
        let exists = names.contains(&name);
        let mut attrs = Vec::new();
        if lsub {
            if !subscribed {
                attrs.push("\\Noselect".to_string());
            }
            out.push((name, attrs, false));
            continue;
        }
        if !subscribed && !recursive {
            continue;
        }
        if subscribed {
            attrs.push("\\Subscribed".to_string());
        }
        if !exists {
            attrs.push("\\NonExistent".to_string());
        } else if want_special
            && let Some(s) = boxes
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.special_use.clone())
        {
            attrs.push(s);
        }
        out.push((name, attrs, recursive && has_subscribed_child));
    }
    out
}

impl Session {
    pub(in crate::imap) fn check_name(name: &str) -> Result<(), Resp> {
        if !crate::store::valid_mailbox_name(name) {
            Err(no("[CANNOT] Invalid mailbox name"))
        } else {
            Ok(())
        }
    }

    pub(in crate::imap) async fn create(&mut self, name: &str, special: Option<&str>) -> CmdResult {
        let name = name.trim_end_matches('/');
        Self::check_name(name)?;
        if name.eq_ignore_ascii_case("INBOX") {
            return Err(no("[ALREADYEXISTS] INBOX exists"));
        }
        // RFC 6154 attributes, stored in their canonical spelling.
        let special = match special {
            None => None,
            Some(s) => Some(
                [
                    "\\Sent",
                    "\\Drafts",
                    "\\Trash",
                    "\\Junk",
                    "\\Archive",
                    "\\All",
                    "\\Flagged",
                ]
                .iter()
                .find(|x| x.eq_ignore_ascii_case(s))
                .map(|x| x.to_string())
                .ok_or_else(|| no("[USEATTR] Unsupported special-use attribute"))?,
            ),
        };
        // Create missing parents too (RFC 9051 §6.3.4).
        let user = self.user.clone().unwrap_or_default();
        if self
            .deps
            .store
            .mailbox(&user, name)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(no("[ALREADYEXISTS] Mailbox already exists"));
        }
        self.create_parents(&user, name).await?;
        self.deps
            .store
            .create_mailbox(&user, name, special.as_deref())
            .await
            .map_err(store_err)?;
        Ok("CREATE completed".into())
    }

    pub(in crate::imap) async fn delete(&mut self, name: &str) -> CmdResult {
        if name.eq_ignore_ascii_case("INBOX") {
            return Err(no("[CANNOT] INBOX cannot be deleted"));
        }
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.mailbox.name == name)
        {
            self.selected = None;
        }
        self.deps
            .store
            .delete_mailbox(self.me(), name)
            .await
            .map_err(store_err)?;
        Ok("DELETE completed".into())
    }

    pub(in crate::imap) async fn rename(&mut self, a: &str, b: &str) -> CmdResult {
        let b = b.trim_end_matches('/');
        Self::check_name(b)?;
        let user = self.user.clone().unwrap_or_default();
        if self
            .deps
            .store
            .mailbox(&user, a)
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(no("[NONEXISTENT] No such mailbox"));
        }
        if self
            .deps
            .store
            .mailbox(&user, b)
            .await
            .map_err(store_err)?
            .is_some()
            || b.eq_ignore_ascii_case("INBOX")
        {
            return Err(no("[ALREADYEXISTS] Mailbox already exists"));
        }
        let a_prefix = format!("{a}/");
        if b.starts_with(&a_prefix) {
            return Err(no("[CANNOT] Cannot move a mailbox into itself"));
        }
        // Create the superior names the new name needs (RFC 9051 §6.3.6).
        self.create_parents(&user, b).await?;
        self.deps
            .store
            .rename_mailbox(self.me(), a, b)
            .await
            .map_err(store_err)?;
        Ok("RENAME completed".into())
    }

    /// Create the missing superior hierarchy levels of `name` as mailboxes.
    pub(in crate::imap) async fn create_parents(&self, user: &str, name: &str) -> Result<(), Resp> {
        let parts: Vec<&str> = name.split('/').collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            if self
                .deps
                .store
                .mailbox(user, &parent)
                .await
                .map_err(store_err)?
                .is_none()
            {
                match self.deps.store.create_mailbox(user, &parent, None).await {
                    Ok(_) | Err(StoreError::Exists(_)) => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        Ok(())
    }

    pub(in crate::imap) async fn list(
        &mut self,
        lsub: bool,
        reference: &str,
        patterns: &[String],
        select: &[String],
        ret: &[String],
        status: Option<&[StatusItem]>,
    ) -> CmdResult {
        let user = self.user.clone().unwrap_or_default();
        if patterns.len() == 1 && patterns[0].is_empty() && !lsub {
            self.untagged("LIST (\\Noselect) \"/\" \"\"");
            return Ok("LIST completed".into());
        }
        let mut boxes = self.deps.store.mailboxes(&user).await.map_err(store_err)?;
        boxes.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
        let names: HashSet<String> = boxes.iter().map(|m| m.name.clone()).collect();
        let subscribed_only = lsub || select.iter().any(|s| s == "SUBSCRIBED");
        let special_only = select.iter().any(|s| s == "SPECIAL-USE");
        let want_special = ret.iter().any(|r| r == "SPECIAL-USE") || special_only || !lsub;
        let want_subscribed =
            ret.iter().any(|r| r == "SUBSCRIBED") || select.iter().any(|s| s == "SUBSCRIBED");
        let full_patterns: Vec<String> =
            patterns.iter().map(|p| format!("{reference}{p}")).collect();
        let matches = |name: &str| full_patterns.iter().any(|p| wildmatch(p, name));
        let subscriptions: HashSet<String> = if want_subscribed || subscribed_only {
            self.deps
                .store
                .subscriptions(self.me())
                .await
                .map_err(store_err)?
                .into_iter()
                .collect()
        } else {
            HashSet::new()
        };
        if subscribed_only {
            let recursive = select.iter().any(|s| s == "RECURSIVEMATCH");
            let lines = subscribed_lines(
                lsub,
                recursive,
                &subscriptions,
                &boxes,
                &names,
                &matches,
                want_special,
            );
            for (name, attrs, childinfo) in lines {
                let mut line = format!(
                    "* {} ({}) \"/\" ",
                    if lsub { "LSUB" } else { "LIST" },
                    attrs.join(" ")
                )
                .into_bytes();
                self.put_name(&mut line, &name);
                if childinfo {
                    line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
                }
                line.extend_from_slice(b"\r\n");
                self.conn.out.extend_from_slice(&line);
                if let Some(items) = status
                    && let Some(mb) = boxes.iter().find(|m| m.name == name)
                {
                    self.status_of(mb, items).await?;
                }
            }
            return Ok(format!("{} completed", if lsub { "LSUB" } else { "LIST" }));
        }
        // Levels of hierarchy without a mailbox of their own (a parent that was deleted)
        // are listed as \Noselect when the pattern stops at them, so that a client
        // browsing level by level with "%" still finds the children (RFC 9051 §6.3.9).
        let mut missing: Vec<String> = Vec::new();
        if !special_only && (lsub || select.is_empty()) {
            for mb in &boxes {
                if matches(&mb.name) {
                    continue;
                }
                let mut end = 0;
                while let Some(i) = mb.name[end..].find('/') {
                    let parent = &mb.name[..end + i];
                    end += i + 1;
                    if !names.contains(parent)
                        && !missing.iter().any(|m| m == parent)
                        && matches(parent)
                    {
                        missing.push(parent.to_string());
                    }
                }
            }
        }
        missing.sort();
        for name in &missing {
            let mut line = format!(
                "* {} (\\Noselect \\HasChildren) \"/\" ",
                if lsub { "LSUB" } else { "LIST" }
            )
            .into_bytes();
            self.put_name(&mut line, name);
            line.extend_from_slice(b"\r\n");
            self.conn.out.extend_from_slice(&line);
        }
        for mb in &boxes {
            if !matches(&mb.name) {
                continue;
            }
            if special_only && mb.special_use.is_none() {
                continue;
            }
            let has_children = names
                .iter()
                .any(|n| n.starts_with(&format!("{}/", mb.name)));
            let mut attrs = vec![
                if has_children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                }
                .to_string(),
            ];
            if want_subscribed && subscriptions.contains(&mb.name) {
                attrs.push("\\Subscribed".into());
            }
            if want_special && let Some(s) = &mb.special_use {
                attrs.push(s.clone());
            }
            let mut line = Vec::new();
            line.extend_from_slice(
                format!(
                    "* {} ({}) \"/\" ",
                    if lsub { "LSUB" } else { "LIST" },
                    attrs.join(" ")
                )
                .as_bytes(),
            );
            self.put_name(&mut line, &mb.name);
            line.extend_from_slice(b"\r\n");
            self.conn.out.extend_from_slice(&line);
            if let Some(items) = status {
                self.status_of(mb, items).await?;
            }
        }
        Ok(format!("{} completed", if lsub { "LSUB" } else { "LIST" }))
    }

    pub(in crate::imap) async fn status(
        &mut self,
        name: &str,
        items: &[StatusItem],
    ) -> Result<(), Resp> {
        let mb = self.mailbox_named(name, Missing::Nonexistent).await?;
        self.status_of(&mb, items).await
    }

    pub(in crate::imap) async fn status_of(
        &mut self,
        mb: &Mailbox,
        items: &[StatusItem],
    ) -> Result<(), Resp> {
        let msgs = self.deps.store.messages(mb.id).await.map_err(store_err)?;
        let mut parts = Vec::new();
        for i in items {
            parts.push(match i {
                StatusItem::Messages => format!("MESSAGES {}", msgs.len()),
                StatusItem::Recent => {
                    // The selected mailbox: this session's own \Recent messages (as Dovecot).
                    if let Some(sel) = self.selected.as_ref().filter(|s| s.mailbox.id == mb.id) {
                        parts.push(format!("RECENT {}", sel.recent_count()));
                        continue;
                    }
                    // Not claimed: STATUS changes nothing (RFC 3501 §6.3.10).
                    let mark = self
                        .deps
                        .store
                        .claim_recent(mb.id, 0, false)
                        .await
                        .map_err(store_err)?;
                    let first = msgs.partition_point(|m| m.uid <= mark);
                    format!("RECENT {}", msgs.len() - first)
                }
                StatusItem::UidNext => format!("UIDNEXT {}", mb.uidnext),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", mb.uidvalidity),
                StatusItem::Unseen => format!(
                    "UNSEEN {}",
                    msgs.iter().filter(|m| !has_flag(m, "\\Seen")).count()
                ),
                StatusItem::Deleted => format!(
                    "DELETED {}",
                    msgs.iter().filter(|m| has_flag(m, "\\Deleted")).count()
                ),
                StatusItem::Size => format!("SIZE {}", msgs.iter().map(|m| m.size).sum::<u64>()),
                StatusItem::HighestModseq => format!("HIGHESTMODSEQ {}", mb.highest_modseq),
            });
        }
        let mut line = b"* STATUS ".to_vec();
        self.put_name(&mut line, &mb.name);
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        self.conn.out.extend_from_slice(&line);
        if items.contains(&StatusItem::HighestModseq) {
            self.enable_condstore();
        }
        Ok(())
    }
}
