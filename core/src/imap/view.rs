//! A session's view of its selected mailbox, kept small: 16 bytes per message.
//!
//! A session must remember which messages it has told its client about (sequence numbers
//! only change when it reports EXPUNGE) and the flags and MODSEQ it last reported (to send
//! FETCH on changes). That is all the view holds: UID, MODSEQ and an index into the
//! session's table of distinct flag lists (a mailbox has few combinations of flags). Size,
//! internal date and blob never change for a UID, so they are looked up in the store when a
//! command needs them. A copy of the full metadata would be 64 bytes per message and more:
//! 6.4 MB per session selecting a 100,000-message mailbox.

use std::collections::HashMap;

use crate::store::MessageMeta;

/// One message of the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    uid: u32,
    /// Index into [`View::sets`].
    flags: u32,
    modseq: u64,
}

/// See the module documentation. Rows are in sequence order, which is UID order.
#[derive(Debug, Default)]
pub struct View {
    rows: Vec<Row>,
    sets: Vec<Vec<String>>,
    index: HashMap<Vec<String>, u32>,
}

impl View {
    /// The view of `msgs` (in UID order).
    pub fn new(msgs: &[MessageMeta]) -> View {
        let mut v = View {
            rows: Vec::with_capacity(msgs.len()),
            ..View::default()
        };
        for m in msgs {
            v.push(m);
        }
        v
    }

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

    /// Append a message (its UID must be above every UID in the view).
    pub fn push(&mut self, m: &MessageMeta) {
        debug_assert!(self.rows.last().is_none_or(|r| r.uid < m.uid));
        let flags = self.intern(&m.flags);
        self.rows.push(Row {
            uid: m.uid,
            flags,
            modseq: m.modseq,
        });
    }

    /// Messages in the view.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// UID of the message at index `i` (sequence number `i + 1`).
    pub fn uid(&self, i: usize) -> u32 {
        self.rows[i].uid
    }

    /// Flags of the message at index `i`.
    pub fn flags(&self, i: usize) -> &[String] {
        &self.sets[self.rows[i].flags as usize]
    }

    /// MODSEQ of the message at index `i`.
    pub fn modseq(&self, i: usize) -> u64 {
        self.rows[i].modseq
    }

    /// Highest UID, 0 when empty.
    pub fn last_uid(&self) -> u32 {
        self.rows.last().map(|r| r.uid).unwrap_or(0)
    }

    /// Index of `uid`.
    pub fn position(&self, uid: u32) -> Option<usize> {
        self.rows.binary_search_by_key(&uid, |r| r.uid).ok()
    }

    /// First index with a UID ≥ `uid`.
    pub fn partition_uid(&self, uid: u32) -> usize {
        self.rows.partition_point(|r| r.uid < uid)
    }

    /// UIDs in sequence order.
    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.rows.iter().map(|r| r.uid)
    }

    /// Record new flags and MODSEQ for the message at index `i`.
    pub fn set(&mut self, i: usize, flags: &[String], modseq: u64) {
        let f = self.intern(flags);
        self.rows[i].flags = f;
        self.rows[i].modseq = modseq;
    }

    /// Forget the message at index `i` (its EXPUNGE was reported).
    pub fn remove(&mut self, i: usize) {
        self.rows.remove(i);
    }

    /// Keep only the messages for which `keep(uid)` holds; returns the removed indices
    /// (as they were before removal), descending, as EXPUNGE responses must be numbered.
    pub fn retain_uids(&mut self, mut keep: impl FnMut(u32) -> bool) -> Vec<(usize, u32)> {
        let mut gone = Vec::new();
        for (i, r) in self.rows.iter().enumerate() {
            if !keep(r.uid) {
                gone.push((i, r.uid));
            }
        }
        if !gone.is_empty() {
            self.rows.retain(|r| keep(r.uid));
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
        assert_eq!(v.sets.len(), 2, "flag lists are shared");
        assert_eq!(
            (v.len(), v.last_uid(), v.uid(1), v.modseq(2)),
            (4, 12, 5, 3)
        );
        assert_eq!(v.flags(2), ["\\Seen".to_string()]);
        assert_eq!((v.position(9), v.position(10)), (Some(2), None));
        assert_eq!((v.partition_uid(6), v.partition_uid(13)), (2, 4));
        v.set(0, &["\\Seen".to_string()], 7);
        assert_eq!((v.flags(0).len(), v.modseq(0), v.sets.len()), (1, 7, 2));
        v.push(&meta(20, &["$Junk"], 8));
        assert_eq!(v.sets.len(), 3);
        let gone = v.retain_uids(|u| u != 5 && u != 12);
        assert_eq!(gone, vec![(3, 12), (1, 5)]);
        assert_eq!(v.uids().collect::<Vec<_>>(), vec![3, 9, 20]);
        v.remove(0);
        assert_eq!(v.uids().collect::<Vec<_>>(), vec![9, 20]);
        assert!(!v.is_empty());
    }
}
