//! A session's view of its selected mailbox, kept small: 16 bytes per message.
//!
//! A session must remember which messages it has told its client about (sequence numbers
//! only change when it reports EXPUNGE) and the flags and MODSEQ it last reported (to send
//! FETCH on changes). That is all the view holds: UID, MODSEQ and an index into the
//! session's table of distinct flag lists (a mailbox has few combinations of flags). Size,
//! internal date and blob never change for a UID, so they are looked up in the store when a
//! command needs them. A copy of the full metadata would be 64 bytes per message and more:
//! 6.4 MB per session selecting a 100,000-message mailbox.
//!
//! The rows live behind an `Arc` and are copied only when the session changes them, so a
//! [`Snapshot`] built once can be handed to every session that SELECTs the mailbox: the
//! store keeps it with its cache of big mailboxes until the next write there, and SELECT of
//! an unchanged 100,000-message mailbox costs microseconds instead of a pass over 100,000
//! metadata records.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::MessageMeta;

/// One message of the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    uid: u32,
    /// Index into [`View::sets`].
    flags: u32,
    modseq: u64,
}

#[derive(Debug, Default, Clone)]
struct Data {
    rows: Vec<Row>,
    sets: Vec<Vec<String>>,
    index: HashMap<Vec<String>, u32>,
}

impl Data {
    fn intern(&mut self, flags: &[String]) -> u32 {
        // Neighbours mostly share their flags: try the last row's list before hashing.
        if let Some(r) = self.rows.last()
            && self.sets[r.flags as usize] == flags
        {
            return r.flags;
        }
        if let Some(&i) = self.index.get(flags) {
            return i;
        }
        let i = self.sets.len() as u32;
        self.sets.push(flags.to_vec());
        self.index.insert(flags.to_vec(), i);
        i
    }

    fn push(&mut self, m: &MessageMeta) {
        debug_assert!(self.rows.last().is_none_or(|r| r.uid < m.uid));
        let flags = self.intern(&m.flags);
        self.rows.push(Row {
            uid: m.uid,
            flags,
            modseq: m.modseq,
        });
    }
}

/// See the module documentation. Rows are in sequence order, which is UID order. Cloning
/// is cheap (shared until one of the clones changes).
#[derive(Debug, Default, Clone)]
pub struct View {
    data: Arc<Data>,
}

/// What SELECT needs of a mailbox, built once and shared while the mailbox is unchanged.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The view.
    pub view: View,
    /// Keywords in use, sorted (for FLAGS and PERMANENTFLAGS).
    pub keywords: Vec<String>,
    /// Index of the first message without `\Seen` (for rev1's UNSEEN).
    pub first_unseen: Option<usize>,
}

impl Snapshot {
    /// The snapshot of `msgs` (in UID order).
    pub fn build(msgs: &[MessageMeta]) -> Snapshot {
        let view = View::new(msgs);
        let d = &view.data;
        // Every flag list is in use right after building: derive from the few lists.
        let mut keywords: Vec<String> = d
            .sets
            .iter()
            .flatten()
            .filter(|f| !f.starts_with('\\'))
            .cloned()
            .collect();
        keywords.sort();
        keywords.dedup();
        let unseen: Vec<bool> = d
            .sets
            .iter()
            .map(|s| !s.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
            .collect();
        let first_unseen = d.rows.iter().position(|r| unseen[r.flags as usize]);
        Snapshot {
            view,
            keywords,
            first_unseen,
        }
    }
}

impl View {
    /// The view of `msgs` (in UID order).
    pub fn new(msgs: &[MessageMeta]) -> View {
        let mut d = Data {
            rows: Vec::with_capacity(msgs.len()),
            ..Data::default()
        };
        for m in msgs {
            d.push(m);
        }
        View { data: Arc::new(d) }
    }

    /// Append a message (its UID must be above every UID in the view).
    pub fn push(&mut self, m: &MessageMeta) {
        Arc::make_mut(&mut self.data).push(m);
    }

    /// Messages in the view.
    pub fn len(&self) -> usize {
        self.data.rows.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.data.rows.is_empty()
    }

    /// UID of the message at index `i` (sequence number `i + 1`).
    pub fn uid(&self, i: usize) -> u32 {
        self.data.rows[i].uid
    }

    /// Flags of the message at index `i`.
    pub fn flags(&self, i: usize) -> &[String] {
        &self.data.sets[self.data.rows[i].flags as usize]
    }

    /// MODSEQ of the message at index `i`.
    pub fn modseq(&self, i: usize) -> u64 {
        self.data.rows[i].modseq
    }

    /// Highest UID, 0 when empty.
    pub fn last_uid(&self) -> u32 {
        self.data.rows.last().map(|r| r.uid).unwrap_or(0)
    }

    /// Index of `uid`.
    pub fn position(&self, uid: u32) -> Option<usize> {
        self.data.rows.binary_search_by_key(&uid, |r| r.uid).ok()
    }

    /// First index with a UID ≥ `uid`.
    pub fn partition_uid(&self, uid: u32) -> usize {
        self.data.rows.partition_point(|r| r.uid < uid)
    }

    /// UIDs in sequence order.
    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.data.rows.iter().map(|r| r.uid)
    }

    /// Record new flags and MODSEQ for the message at index `i`.
    pub fn set(&mut self, i: usize, flags: &[String], modseq: u64) {
        if self.data.rows[i].modseq == modseq && self.flags(i) == flags {
            return; // nothing to record: keep sharing
        }
        let d = Arc::make_mut(&mut self.data);
        let f = d.intern(flags);
        d.rows[i].flags = f;
        d.rows[i].modseq = modseq;
    }

    /// Forget the message at index `i` (its EXPUNGE was reported).
    pub fn remove(&mut self, i: usize) {
        Arc::make_mut(&mut self.data).rows.remove(i);
    }

    /// Keep only the messages for which `keep(uid)` holds; returns the removed indices
    /// (as they were before removal), descending, as EXPUNGE responses must be numbered.
    pub fn retain_uids(&mut self, mut keep: impl FnMut(u32) -> bool) -> Vec<(usize, u32)> {
        let mut gone = Vec::new();
        for (i, r) in self.data.rows.iter().enumerate() {
            if !keep(r.uid) {
                gone.push((i, r.uid));
            }
        }
        if !gone.is_empty() {
            let gone_uids: std::collections::HashSet<u32> = gone.iter().map(|g| g.1).collect();
            Arc::make_mut(&mut self.data)
                .rows
                .retain(|r| !gone_uids.contains(&r.uid));
        }
        gone.reverse();
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32, flags: &[&str], modseq: u64) -> MessageMeta {
        MessageMeta {
            uid,
            blob: uid as u64 * 10,
            size: 100,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            internal_date: 0,
            modseq,
        }
    }

    #[test]
    fn rows_flags_and_removal() {
        let mut v = View::new(&[
            meta(3, &[], 1),
            meta(5, &["\\Seen"], 2),
            meta(9, &["\\Seen"], 3),
            meta(12, &[], 4),
        ]);
        assert_eq!(std::mem::size_of::<Row>(), 16);
        assert_eq!(v.data.sets.len(), 2, "flag lists are shared");
        assert_eq!(
            (v.len(), v.last_uid(), v.uid(1), v.modseq(2)),
            (4, 12, 5, 3)
        );
        assert_eq!(v.flags(2), ["\\Seen".to_string()]);
        assert_eq!((v.position(9), v.position(10)), (Some(2), None));
        assert_eq!((v.partition_uid(6), v.partition_uid(13)), (2, 4));
        let shared = v.clone();
        v.set(0, &["\\Seen".to_string()], 7);
        assert_eq!(
            (v.flags(0).len(), v.modseq(0), v.data.sets.len()),
            (1, 7, 2)
        );
        assert_eq!(
            (shared.flags(0).len(), shared.modseq(0)),
            (0, 1),
            "clones are unaffected"
        );
        v.push(&meta(20, &["$Junk"], 8));
        assert_eq!(v.data.sets.len(), 3);
        let gone = v.retain_uids(|u| u != 5 && u != 12);
        assert_eq!(gone, vec![(3, 12), (1, 5)]);
        assert_eq!(v.uids().collect::<Vec<_>>(), vec![3, 9, 20]);
        v.remove(0);
        assert_eq!(v.uids().collect::<Vec<_>>(), vec![9, 20]);
        assert!(!v.is_empty());
        assert_eq!(shared.len(), 4);
    }

    #[test]
    fn snapshot_keywords_and_first_unseen() {
        let s = Snapshot::build(&[
            meta(1, &["\\Seen", "$Work"], 1),
            meta(2, &["\\Seen"], 1),
            meta(4, &["\\Answered", "$Later", "$Work"], 1),
            meta(7, &["\\Seen"], 1),
        ]);
        assert_eq!(s.keywords, ["$Later", "$Work"]);
        assert_eq!(s.first_unseen, Some(2));
        assert_eq!(s.view.len(), 4);
        let all_seen = Snapshot::build(&[meta(1, &["\\Seen"], 1)]);
        assert_eq!((all_seen.first_unseen, all_seen.keywords.len()), (None, 0));
        assert_eq!(Snapshot::build(&[]).first_unseen, None);
    }
}
