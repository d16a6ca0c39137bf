//! Message sets (RFC 9051 §9 `sequence-set`): resolving them against a view, checking them,
//! and writing UID lists compactly.

use std::collections::HashSet;

use crate::imap::cmd::Resp;
use crate::imap::types::*;
use crate::imap::view::View;

/// Indices (0-based, ascending, no duplicates) of the messages of `msgs` (in UID order) that
/// `set` names: UIDs when `uid`, else sequence numbers; `$` is the saved UIDs. Ranges are
/// mapped directly (sequence numbers) or by binary search (UIDs), never by scanning every
/// message per range.
pub fn resolve_set(msgs: &View, uid: bool, set: &SeqSet, saved: &[u32]) -> Vec<usize> {
    let n = msgs.len();
    let mut out: Vec<usize> = match set {
        SeqSet::Saved => {
            let saved: HashSet<u32> = saved.iter().copied().collect();
            return (0..n).filter(|&i| saved.contains(&msgs.uid(i))).collect();
        }
        SeqSet::Ranges(ranges) => {
            let mut v = Vec::new();
            let star = if uid {
                msgs.last_uid().max(1)
            } else {
                n as u32
            };
            for &(a, b) in ranges {
                let a = if a == STAR { star } else { a };
                let b = if b == STAR { star } else { b };
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                if uid {
                    let start = msgs.partition_uid(lo);
                    let end = if hi == u32::MAX {
                        msgs.len()
                    } else {
                        msgs.partition_uid(hi + 1)
                    }
                    .max(start);
                    v.extend(start..end);
                } else if lo >= 1 && (lo as usize) <= n {
                    v.extend(lo as usize - 1..(hi as usize).min(n));
                }
            }
            v
        }
    };
    if let SeqSet::Ranges(r) = set
        && r.len() > 1
    {
        out.sort_unstable();
        out.dedup();
    }
    out
}

/// A BAD when a sequence set names a message beyond `n` (the session's message count), or
/// `*` while the mailbox is empty (RFC 9051 §9: "The server should respond with a tagged BAD
/// response to a command that uses a message sequence number greater than the number of
/// messages in the selected mailbox. This includes "*" if the selected mailbox is empty.").
/// `$` holds UIDs and is never out of range.
pub(in crate::imap) fn check_seq_set(set: &SeqSet, n: usize) -> Result<(), Resp> {
    let SeqSet::Ranges(ranges) = set else {
        return Ok(());
    };
    for &(a, b) in ranges {
        for x in [a, b] {
            if x == STAR && n == 0 {
                return Err(Resp::Bad(
                    "Invalid sequence set: the mailbox is empty, so * names no message".into(),
                ));
            }
            if x != STAR && x as usize > n {
                return Err(Resp::Bad(format!(
                    "Invalid sequence number {x}: the mailbox has {n} message{}",
                    if n == 1 { "" } else { "s" }
                )));
            }
        }
    }
    Ok(())
}

/// Sorted numbers as a compact IMAP set: `1:3,7,9:10`.
pub fn compress(nums: &[u32]) -> String {
    let mut v = nums.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// Numbers in the given order (COPYUID pairs must correspond).
pub(in crate::imap) fn list_plain(nums: &[u32]) -> String {
    nums.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub(in crate::imap) fn join_part(p: &[u32]) -> String {
    p.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::view::View;
    use crate::testing::metas;

    #[test]
    fn resolve_sets() {
        let m = View::new(&metas(&[2, 5, 6, 9, 20]));
        let r = |uid, s: SeqSet| resolve_set(&m, uid, &s, &[6, 20]);
        let ranges = |v: &[(u32, u32)]| SeqSet::Ranges(v.to_vec());
        // Sequence numbers, `*`, reversed ranges, overlaps, beyond the end.
        assert_eq!(r(false, ranges(&[(1, 2)])), vec![0, 1]);
        assert_eq!(r(false, ranges(&[(STAR, 4)])), vec![3, 4]);
        assert_eq!(
            r(false, ranges(&[(4, 9), (2, 3), (3, 3)])),
            vec![1, 2, 3, 4]
        );
        assert_eq!(r(false, ranges(&[(6, 9)])), Vec::<usize>::new());
        // UIDs: ranges between existing UIDs, `*` is the highest UID, even if below.
        assert_eq!(r(true, ranges(&[(3, 6)])), vec![1, 2]);
        assert_eq!(r(true, ranges(&[(21, STAR)])), vec![4]);
        // 4294967295 is a number, not `*` (RFC 9051 §9).
        assert_eq!(r(true, ranges(&[(21, u32::MAX)])), Vec::<usize>::new());
        assert_eq!(r(true, ranges(&[(1, 1), (7, 8)])), Vec::<usize>::new());
        assert_eq!(r(true, ranges(&[(9, 9), (2, 2)])), vec![0, 3]);
        // `$` holds UIDs.
        assert_eq!(r(true, SeqSet::Saved), vec![2, 4]);
        assert_eq!(r(false, SeqSet::Saved), vec![2, 4]);
        // Empty mailbox.
        let empty = View::default();
        assert!(resolve_set(&empty, false, &ranges(&[(1, STAR)]), &[]).is_empty());
        assert!(resolve_set(&empty, true, &ranges(&[(1, STAR)]), &[]).is_empty());
        assert!(resolve_set(&empty, true, &ranges(&[(1, u32::MAX)]), &[]).is_empty());
    }

    #[test]
    fn sequence_numbers_beyond_the_mailbox_are_bad() {
        let r = |v: &[(u32, u32)]| SeqSet::Ranges(v.to_vec());
        let bad = |set: SeqSet, n| matches!(check_seq_set(&set, n), Err(Resp::Bad(_)));
        assert!(!bad(r(&[(1, 3)]), 3));
        assert!(!bad(r(&[(STAR, 1)]), 3));
        assert!(bad(r(&[(u32::MAX, 1)]), 3)); // a number, not `*`
        assert!(bad(r(&[(1, 4)]), 3));
        assert!(bad(r(&[(2, 2), (4, 4)]), 3));
        assert!(bad(r(&[(1, 1)]), 0));
        assert!(bad(r(&[(STAR, STAR)]), 0)); // `*` in an empty mailbox
        assert!(!bad(SeqSet::Saved, 0));
    }

    #[test]
    fn uid_lists_are_compressed() {
        assert_eq!(compress(&[5, 1, 2, 3, 9]), "1:3,5,9");
    }
}
