//! SEARCH, SORT and THREAD (RFC 9051 §6.4.4, RFC 5256), ESEARCH return options
//! (RFC 4731, RFC 9394 PARTIAL) and live results kept current with ADDTO/REMOVEFROM
//! (RFC 5267 CONTEXT=SEARCH/SORT).

use std::sync::Arc;

use crate::blocking::Wait;
use crate::imap::cmd::{CmdResult, Resp, store_err};
use crate::imap::esearch::{
    LiveSearch, MAX_LIVE_SEARCHES, esearch_head, has_modseq_key, ordered_set, partial_item,
    result_options,
};
use crate::imap::response::imap_string;
use crate::imap::search::{self, Candidate};
use crate::imap::seqset::compress;
use crate::imap::session::Session;
use crate::imap::sort;
use crate::imap::sort_keys::HeaderKeys;
use crate::imap::types::*;

impl Session {
    /// Re-run the live searches (RFC 5267 §4.3) on the current view and tell the client how
    /// each result changed: ADDTO and REMOVEFROM with position 0 (an unordered SEARCH).
    pub(in crate::imap) async fn live_updates(&mut self) {
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        if sel.live.is_empty() {
            return;
        }
        let mut lines = String::new();
        let mut fresh: Vec<Vec<u32>> = Vec::with_capacity(sel.live.len());
        for live in &sel.live {
            let now = self
                .live_result(&live.key, live.sort.as_deref())
                .await
                .unwrap_or_else(|_| live.uids.clone());
            let number = |u: u32| {
                if live.uid {
                    u
                } else {
                    sel.msgs.position(u).map_or(0, |i| i as u32 + 1)
                }
            };
            lines.push_str(&live.changes(&now, &number));
            fresh.push(now);
        }
        let sel = self.selected.as_mut().expect("selected");
        for (live, now) in sel.live.iter_mut().zip(fresh) {
            live.uids = now;
        }
        self.conn.out.extend_from_slice(lines.as_bytes());
    }

    /// The UIDs `key` matches now, in mailbox order or sorted by `sort`.
    pub(in crate::imap) async fn live_result(
        &self,
        key: &SearchKey,
        sort_by: Option<&[sort::Criterion]>,
    ) -> Result<Vec<u32>, Resp> {
        let hits = self.search_hits(key).await?;
        match sort_by {
            None => Ok(hits.iter().map(|h| h.1).collect()),
            Some(criteria) => self.sorted(&hits, true, criteria).await,
        }
    }

    /// The messages of `hits` in `criteria`'s order, as UIDs or sequence numbers.
    pub(in crate::imap) async fn sorted(
        &self,
        hits: &[(u32, u32, u64)],
        uid: bool,
        criteria: &[sort::Criterion],
    ) -> Result<Vec<u32>, Resp> {
        let content = criteria
            .iter()
            .any(|c| !matches!(c.key, sort::SortKey::Arrival | sort::SortKey::Size));
        let mut fields: Vec<sort::SortFields> = self
            .sort_inputs(hits, uid, content)
            .await?
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        sort::sort(&mut fields, criteria);
        Ok(fields.iter().map(|f| f.id).collect())
    }

    /// Start keeping a search's result current (RFC 5267 §4.3): BAD when the tag already
    /// names a live search, `NO [NOUPDATE]` (and the other return options still answered)
    /// past [`MAX_LIVE_SEARCHES`].
    /// Returns the `NO [NOUPDATE]` line to send after the command's ESEARCH, if refused.
    pub(in crate::imap) fn start_live(&mut self, live: LiveSearch) -> Result<Option<String>, Resp> {
        let sel = self.selected.as_mut().expect("selected");
        if sel.live.iter().any(|l| l.tag == live.tag) {
            return Err(Resp::Bad("Tag reuse".into()));
        }
        if sel.live.len() >= MAX_LIVE_SEARCHES {
            let tag = String::from_utf8_lossy(&imap_string(live.tag.as_bytes())).into_owned();
            return Ok(Some(format!("NO [NOUPDATE {tag}] Too many contexts")));
        }
        sel.live.push(live);
        Ok(None)
    }

    /// The messages of the selected mailbox that `key` matches, in sequence order:
    /// (sequence number, UID, MODSEQ). SEARCH, SORT and THREAD share it.
    pub(in crate::imap) async fn search_hits(
        &self,
        key: &SearchKey,
    ) -> Result<Vec<(u32, u32, u64)>, Resp> {
        let sel = self.selected.as_ref().expect("selected");
        // No BAD for sequence numbers beyond the mailbox here: in SEARCH a sequence set is a
        // key that matches no message (RFC 9051 errata 6505; Dovecot answers so too).
        let needs = search::needs_content(key);
        // Size, date and blob are not in the view: one snapshot of the mailbox's metadata
        // when a key needs them, walked alongside (both are in UID order).
        let metas = if search::needs_meta(key) {
            self.deps
                .store
                .messages(sel.mailbox.id)
                .await
                .map_err(store_err)?
        } else {
            Vec::new()
        };
        let mut next_meta = 0;
        let max_seq = sel.msgs.len() as u32;
        let max_uid = sel.msgs.last_uid();
        let mut hits: Vec<(u32, u32, u64)> = Vec::new();
        for i in 0..sel.msgs.len() {
            let uid = sel.msgs.uid(i);
            while next_meta < metas.len() && metas[next_meta].uid < uid {
                next_meta += 1;
            }
            // Missing when another session expunged it (this session was not told yet).
            let meta = metas.get(next_meta).filter(|m| m.uid == uid);
            let c = Candidate {
                seq: i as u32 + 1,
                uid,
                flags: sel.msgs.flags(i),
                modseq: sel.msgs.modseq(i),
                size: meta.map_or(0, |m| m.size),
                internal_date: meta.map_or(0, |m| m.internal_date),
                max_seq,
                max_uid,
                saved: &self.saved,
                recent: sel.is_recent(uid),
            };
            let store = &self.deps.store;
            let blob = meta.map(|m| m.blob);
            let mut load = || match blob {
                // Synchronous for the matcher; the embedded backends answer at once.
                Some(b) if needs => store.blob(b).wait().ok(),
                _ => None,
            };
            let mut cache = None;
            if search::matches(key, &c, &mut load, &mut cache) {
                hits.push((i as u32 + 1, uid, c.modseq));
            }
        }
        Ok(hits)
    }

    /// What SORT and THREAD read of the messages `hits` names: size and internal date from
    /// the metadata, the rest from each message's header (not loaded when `content` is
    /// false: ARRIVAL and SIZE need none).
    pub(in crate::imap) async fn sort_inputs(
        &self,
        hits: &[(u32, u32, u64)],
        uid: bool,
        content: bool,
    ) -> Result<Vec<(sort::SortFields, Arc<HeaderKeys>)>, Resp> {
        let sel = self.selected.as_ref().expect("selected");
        // (uid, internal date, size, blob) of every message, read from the store's cache
        // without copying each record's flags (a 100,000-message SORT spent most of its
        // time cloning the metadata list).
        let mut metas: Vec<(u32, i64, u64, u64)> = Vec::new();
        self.deps
            .store
            .with_messages(sel.mailbox.id, &mut |msgs| {
                metas = msgs
                    .iter()
                    .map(|m| (m.uid, m.internal_date, m.size, m.blob))
                    .collect();
            })
            .await
            .map_err(store_err)?;
        let mut out = Vec::with_capacity(hits.len());
        let mut next = 0;
        for &(seq, u, _) in hits {
            while next < metas.len() && metas[next].0 < u {
                next += 1;
            }
            let meta = metas.get(next).filter(|m| m.0 == u);
            let keys = match meta {
                Some(&(_, _, _, blob)) if content => {
                    let store = &self.deps.store;
                    self.deps
                        .sort_keys
                        .get(blob, || store.blob(blob).wait().ok())
                }
                _ => Arc::default(),
            };
            let arrival = meta.map_or(0, |m| m.1);
            let f = sort::SortFields {
                seq,
                id: if uid { u } else { seq },
                arrival,
                date: keys.date.unwrap_or(arrival),
                size: meta.map_or(0, |m| m.2),
                subject: keys.subject.clone(),
                from: keys.from.clone(),
                to: keys.to.clone(),
                cc: keys.cc.clone(),
                display_from: keys.display_from.clone(),
                display_to: keys.display_to.clone(),
            };
            out.push((f, keys));
        }
        Ok(out)
    }

    /// SORT (RFC 5256 §3) and ESORT's RETURN options (RFC 5267 §3.1).
    pub(in crate::imap) async fn sort(
        &mut self,
        tag: &str,
        uid: bool,
        ret: Option<Vec<String>>,
        criteria: &[sort::Criterion],
        key: SearchKey,
    ) -> CmdResult {
        self.sync(false).await;
        let hits = self.search_hits(&key).await?;
        let ids = self.sorted(&hits, uid, criteria).await?;
        match ret {
            None => {
                let mut line = String::from("SORT");
                for n in &ids {
                    line.push_str(&format!(" {n}"));
                }
                self.untagged(&line);
            }
            Some(opts) => {
                let (opts, update) = result_options(opts);
                let mut refused = None;
                if update {
                    let uids = self.live_result(&key, Some(criteria)).await?;
                    refused = self.start_live(LiveSearch {
                        tag: tag.to_string(),
                        uid,
                        key: key.clone(),
                        sort: Some(criteria.to_vec()),
                        uids,
                    })?;
                }
                let mut line = esearch_head(tag, uid);
                // MIN and MAX are the first and last in sort order; ALL keeps that order
                // (RFC 5267 §3.1), with ranges only where the order ascends by one; so does
                // PARTIAL (§4.4), over positions in sort order.
                for o in &opts {
                    match (o.as_str(), ids.first(), ids.last()) {
                        ("MIN", Some(first), _) => line.push_str(&format!(" MIN {first}")),
                        ("MAX", _, Some(last)) => line.push_str(&format!(" MAX {last}")),
                        ("COUNT", ..) => line.push_str(&format!(" COUNT {}", ids.len())),
                        ("ALL", Some(_), _) => {
                            line.push_str(&format!(" ALL {}", ordered_set(&ids)))
                        }
                        (o, ..) if o.starts_with("PARTIAL ") => {
                            line.push_str(&partial_item(o, &ids, ordered_set))
                        }
                        _ => {}
                    }
                }
                self.untagged(&line);
                if let Some(no) = refused {
                    self.untagged(&no);
                }
            }
        }
        Ok(if uid {
            "UID SORT completed"
        } else {
            "SORT completed"
        }
        .into())
    }

    /// THREAD (RFC 5256 §3): ORDEREDSUBJECT or REFERENCES.
    pub(in crate::imap) async fn thread(
        &mut self,
        uid: bool,
        references: bool,
        key: SearchKey,
    ) -> CmdResult {
        self.sync(false).await;
        let hits = self.search_hits(&key).await?;
        let msgs: Vec<sort::ThreadMsg> = self
            .sort_inputs(&hits, uid, true)
            .await?
            .into_iter()
            .map(|(f, keys)| sort::ThreadMsg {
                id: f.id,
                seq: f.seq,
                message_id: keys.message_id.clone(),
                references: keys.references.clone(),
                subject: f.subject,
                is_reply: keys.is_reply,
                date: f.date,
            })
            .collect();
        let threads = if references {
            sort::thread_references(&msgs)
        } else {
            sort::thread_orderedsubject(&msgs)
        };
        let body = sort::render(&threads);
        self.untagged(&if body.is_empty() {
            "THREAD".to_string()
        } else {
            format!("THREAD {body}")
        });
        Ok(if uid {
            "UID THREAD completed"
        } else {
            "THREAD completed"
        }
        .into())
    }

    pub(in crate::imap) async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        ret: Option<Vec<String>>,
        key: SearchKey,
    ) -> CmdResult {
        self.sync(false).await;
        if has_modseq_key(&key) {
            self.enable_condstore();
        }
        let hits = self.search_hits(&key).await?;
        let nums: Vec<u32> = hits.iter().map(|h| if uid { h.1 } else { h.0 }).collect();
        let modseq = has_modseq_key(&key).then(|| hits.iter().map(|h| h.2).max().unwrap_or(0));
        match ret {
            None if !self.rev2 => {
                let mut line = String::from("SEARCH");
                for n in &nums {
                    line.push_str(&format!(" {n}"));
                }
                if let Some(ms) = modseq
                    && !nums.is_empty()
                {
                    line.push_str(&format!(" (MODSEQ {ms})"));
                }
                self.untagged(&line);
            }
            ret => {
                let (opts, update) = result_options(ret.unwrap_or_default());
                let mut refused = None;
                if update {
                    // Later changes to the result reach the client as ADDTO/REMOVEFROM.
                    refused = self.start_live(LiveSearch {
                        tag: tag.to_string(),
                        uid,
                        key: key.clone(),
                        sort: None,
                        uids: hits.iter().map(|h| h.1).collect(),
                    })?;
                }
                if opts.iter().any(|o| o == "SAVE") {
                    // With MIN and/or MAX, only those are saved (RFC 5182 §2.4).
                    let (want_min, want_max) = (
                        opts.iter().any(|o| o == "MIN"),
                        opts.iter().any(|o| o == "MAX"),
                    );
                    self.saved = if (want_min || want_max) && !hits.is_empty() {
                        let mut v = Vec::new();
                        if want_min {
                            v.push(hits[0].1);
                        }
                        if want_max && hits.len() > 1 {
                            v.push(hits[hits.len() - 1].1);
                        }
                        v
                    } else {
                        hits.iter().map(|h| h.1).collect()
                    };
                    if opts.len() == 1 && !update {
                        return Ok("SEARCH completed, result saved".into());
                    }
                }
                let mut line = esearch_head(tag, uid);
                for o in &opts {
                    match o.as_str() {
                        "MIN" if !nums.is_empty() => {
                            line.push_str(&format!(" MIN {}", nums.iter().min().unwrap_or(&0)))
                        }
                        "MAX" if !nums.is_empty() => {
                            line.push_str(&format!(" MAX {}", nums.iter().max().unwrap_or(&0)))
                        }
                        "COUNT" => line.push_str(&format!(" COUNT {}", nums.len())),
                        "ALL" if !nums.is_empty() => {
                            let mut s = nums.clone();
                            s.sort();
                            line.push_str(&format!(" ALL {}", compress(&s)));
                        }
                        // RFC 5267 §4.4: the results at positions lo..=hi (1-based).
                        o if o.starts_with("PARTIAL ") => {
                            line.push_str(&partial_item(o, &nums, compress))
                        }
                        _ => {}
                    }
                }
                // RFC 7162 §3.1.5: with MIN and/or MAX alone, MODSEQ is that of the message(s)
                // returned, not of every match.
                let only_min_max = opts
                    .iter()
                    .all(|o| matches!(o.as_str(), "MIN" | "MAX" | "SAVE"))
                    && opts.iter().any(|o| o == "MIN" || o == "MAX");
                let modseq = match (modseq, hits.first(), hits.last()) {
                    (Some(_), Some(first), Some(last)) if only_min_max => {
                        let mut ms = 0;
                        if opts.iter().any(|o| o == "MIN") {
                            ms = ms.max(first.2);
                        }
                        if opts.iter().any(|o| o == "MAX") {
                            ms = ms.max(last.2);
                        }
                        Some(ms)
                    }
                    (m, ..) => m,
                };
                if let Some(ms) = modseq
                    && !nums.is_empty()
                {
                    line.push_str(&format!(" MODSEQ {ms}"));
                }
                self.untagged(&line);
                if let Some(no) = refused {
                    self.untagged(&no);
                }
            }
        }
        Ok("SEARCH completed".into())
    }
}
