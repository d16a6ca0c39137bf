//! Expunge logs (the records QRESYNC answers `VANISHED (EARLIER)` from, RFC 7162 §3.2.5.1)
//! as UID ranges: (first UID, last UID, MODSEQ), ascending, consecutive UIDs with one MODSEQ
//! merged, so that both sides of a copy compare and hash them the same way.
//!
//! A sled mailbox made before expunges were logged (`Mailbox::logs_expunges` false) answers
//! with a superset; PostgreSQL always claims an exact log. Its copy therefore gets the log
//! it implies ([`implied`]): every UID below UIDNEXT that is neither a message nor logged
//! was expunged at some MODSEQ up to HIGHESTMODSEQ, so it is recorded at HIGHESTMODSEQ. A
//! client that synchronised before that is told those UIDs vanished (a superset, which
//! RFC 7162 allows); one that saw HIGHESTMODSEQ has seen every one of those expunges.

use super::*;

/// An expunge log as ranges (see the module documentation).
pub(crate) type Ranges = Vec<(u32, u32, u64)>;

/// The ranges of `records` (UID, MODSEQ), given in ascending UID order.
pub(crate) fn ranges(records: impl IntoIterator<Item = (u32, u64)>) -> Ranges {
    let mut out: Ranges = Vec::new();
    for (uid, modseq) in records {
        push(&mut out, (uid, uid, modseq));
    }
    out
}

/// Append a range, merging it into the last one when it continues it with the same MODSEQ.
fn push(out: &mut Ranges, (first, last, modseq): (u32, u32, u64)) {
    match out.last_mut() {
        Some((_, l, m)) if *m == modseq && l.checked_add(1) == Some(first) => *l = last,
        _ => out.push((first, last, modseq)),
    }
}

/// The expunge log of `mailbox` as a store that logs every expunge keeps it: `logged` (UID,
/// MODSEQ, ascending) itself when the mailbox kept a complete log, else `logged` with the
/// UIDs it implies (module documentation). `messages` in ascending UID order.
pub(crate) fn implied(
    mailbox: &Mailbox,
    messages: &[MessageMeta],
    logged: &[(u32, u64)],
) -> Ranges {
    if mailbox.logs_expunges {
        return ranges(logged.iter().copied());
    }
    let at = mailbox.highest_modseq;
    let mut out: Ranges = Vec::new();
    let (mut m, mut l) = (messages.iter().peekable(), logged.iter().peekable());
    let mut next = 1u32; // the lowest UID not accounted for yet
    loop {
        // The next UID that is a message or logged, in ascending order.
        let known = match (m.peek(), l.peek()) {
            (Some(a), Some(b)) if a.uid <= b.0 => m.next().map(|a| (a.uid, None)),
            (_, Some(_)) => l.next().map(|b| (b.0, Some(b.1))),
            (Some(_), None) => m.next().map(|a| (a.uid, None)),
            (None, None) => None,
        };
        let Some((uid, modseq)) = known else { break };
        if uid > next {
            push(&mut out, (next, uid - 1, at));
        }
        if let Some(modseq) = modseq {
            push(&mut out, (uid, uid, modseq));
        }
        next = next.max(uid.saturating_add(1));
    }
    if next < mailbox.uidnext {
        push(&mut out, (next, mailbox.uidnext - 1, at));
    }
    out
}

/// Whether `uid` is in `ranges`.
pub(crate) fn contains(ranges: &Ranges, uid: u32) -> bool {
    let i = ranges.partition_point(|r| r.1 < uid);
    ranges.get(i).is_some_and(|r| r.0 <= uid)
}

/// How many UIDs `ranges` hold.
pub(crate) fn count(ranges: &Ranges) -> u64 {
    ranges.iter().map(|r| (r.1 - r.0) as u64 + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(uidnext: u32, logs: bool) -> Mailbox {
        Mailbox {
            id: 1,
            name: "INBOX".into(),
            uidvalidity: 7,
            uidnext,
            subscribed: true,
            special_use: None,
            highest_modseq: 50,
            logs_expunges: logs,
        }
    }

    fn msg(uid: u32) -> MessageMeta {
        MessageMeta {
            uid,
            blob: 0,
            size: 0,
            flags: vec![],
            internal_date: 0,
            modseq: 1,
        }
    }

    #[test]
    fn consecutive_uids_with_one_modseq_are_one_range() {
        let r = ranges([(1, 5), (2, 5), (3, 6), (5, 6)]);
        assert_eq!(r, vec![(1, 2, 5), (3, 3, 6), (5, 5, 6)]);
        assert_eq!(count(&r), 4);
        assert!(contains(&r, 2) && contains(&r, 5) && !contains(&r, 4) && !contains(&r, 9));
    }

    #[test]
    fn a_complete_log_is_taken_as_it_is() {
        let mb = mailbox(10, true);
        assert_eq!(implied(&mb, &[msg(3)], &[(1, 4)]), vec![(1, 1, 4)]);
    }

    #[test]
    fn an_incomplete_log_gets_every_missing_uid_at_highestmodseq() {
        let mb = mailbox(12, false);
        // Messages 3, 6, 7; UID 4 logged at 20; 1-2, 5 and 8-11 implied at 50.
        let r = implied(&mb, &[msg(3), msg(6), msg(7)], &[(4, 20)]);
        assert_eq!(r, vec![(1, 2, 50), (4, 4, 20), (5, 5, 50), (8, 11, 50)]);
        assert_eq!(implied(&mailbox(1, false), &[], &[]), vec![]);
        assert_eq!(implied(&mailbox(4, false), &[], &[]), vec![(1, 3, 50)]);
    }
}
