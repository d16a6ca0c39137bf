//! ESEARCH responses (RFC 4731, RFC 5267): the RETURN options, PARTIAL ranges, the response
//! head, and live results: a live search remembers what the client was told and renders the
//! ADDTO/REMOVEFROM lines that bring it up to date. Pure: no session, no store.

use std::collections::HashSet;

use crate::imap::response::imap_string;
use crate::imap::seqset::compress;
use crate::imap::sort;
use crate::imap::types::SearchKey;

/// A `SEARCH`/`SORT RETURN (UPDATE)` result kept current with ADDTO/REMOVEFROM
/// (RFC 5267 §4.3).
pub(in crate::imap) struct LiveSearch {
    pub(in crate::imap) tag: String,
    pub(in crate::imap) uid: bool,
    pub(in crate::imap) key: SearchKey,
    /// The SORT criteria; `None` for SEARCH (mailbox order, context position 0).
    pub(in crate::imap) sort: Option<Vec<sort::Criterion>>,
    /// The result as the client knows it, as UIDs in the requested order.
    pub(in crate::imap) uids: Vec<u32>,
}

/// Most live searches one session keeps (RFC 5267 §4.3.1 asks for at least one); past
/// it a request gets `NO [NOUPDATE "tag"]` and its other return options.
pub(in crate::imap) const MAX_LIVE_SEARCHES: usize = 16;

impl LiveSearch {
    /// The ESEARCH lines that turn the client's result (`self.uids`) into `now`. `number`
    /// gives what the client calls a message (its UID, or its sequence number). SEARCH
    /// contexts use position 0 and sets in mailbox order; SORT contexts remove runs at their
    /// positions, then insert each new run where it belongs (RFC 5267 §4.3.3-4): the order
    /// of messages that stay never changes, since no sort key depends on flags.
    pub(in crate::imap) fn changes(&self, now: &[u32], number: &dyn Fn(u32) -> u32) -> String {
        let mut out = String::new();
        let kept: HashSet<u32> = now.iter().copied().collect();
        let had: HashSet<u32> = self.uids.iter().copied().collect();
        let line = |what: &str, pairs: &[(usize, Vec<u32>)]| {
            let body: Vec<String> = pairs
                .iter()
                .map(|(pos, ids)| {
                    let set = if self.sort.is_some() {
                        ordered_set(ids)
                    } else {
                        let mut sorted = ids.clone();
                        sorted.sort_unstable();
                        compress(&sorted)
                    };
                    format!("{pos} {set}")
                })
                .collect();
            format!(
                "* {} {what} ({})\r\n",
                esearch_head(&self.tag, self.uid),
                body.join(" ")
            )
        };
        let sorted = self.sort.is_some();
        // Removals: runs of the old list, at their position once earlier runs are gone.
        let mut removals: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut removed = 0;
        let mut i = 0;
        while i < self.uids.len() {
            if kept.contains(&self.uids[i]) {
                i += 1;
                continue;
            }
            let start = i;
            let mut run = Vec::new();
            while i < self.uids.len() && !kept.contains(&self.uids[i]) {
                run.push(number(self.uids[i]));
                i += 1;
            }
            let pos = if sorted { start + 1 - removed } else { 0 };
            removed += run.len();
            match removals.last_mut() {
                Some(last) if !sorted => last.1.extend(run),
                _ => removals.push((pos, run)),
            }
        }
        if !removals.is_empty() {
            out.push_str(&line("REMOVEFROM", &removals));
        }
        // Additions: each new run at the position it has in `now`.
        let mut adds: Vec<(usize, Vec<u32>)> = Vec::new();
        for (idx, u) in now.iter().enumerate() {
            if had.contains(u) {
                continue;
            }
            let pos = if sorted { idx + 1 } else { 0 };
            match adds.last_mut() {
                Some(last) if !sorted || last.0 + last.1.len() == pos => last.1.push(number(*u)),
                _ => adds.push((pos, vec![number(*u)])),
            }
        }
        if !adds.is_empty() {
            out.push_str(&line("ADDTO", &adds));
        }
        out
    }
}

/// The RETURN options that ask for result data, and whether UPDATE was asked for. CONTEXT
/// is a hint (RFC 5267 §4.2) and goes; no option means ALL (RFC 4731 §3.1), but UPDATE
/// alone asks for no result now.
pub(in crate::imap) fn result_options(mut opts: Vec<String>) -> (Vec<String>, bool) {
    opts.retain(|o| o != "CONTEXT");
    let update = opts.iter().any(|o| o == "UPDATE");
    opts.retain(|o| o != "UPDATE");
    if opts.is_empty() && !update {
        opts.push("ALL".into());
    }
    (opts, update)
}

/// ` PARTIAL (lo:hi set)` for a `PARTIAL lo:hi` return option: the results at those
/// positions written by `set` (sort order or mailbox order), `NIL` when there are none.
pub(in crate::imap) fn partial_item(
    option: &str,
    results: &[u32],
    set: fn(&[u32]) -> String,
) -> String {
    let (range, picked) = partial(option, results);
    let set = if picked.is_empty() {
        "NIL".to_string()
    } else {
        set(picked)
    };
    format!(" PARTIAL ({range} {set})")
}

/// The range of a `PARTIAL lo:hi` return option and the results at those positions
/// (1-based; a range past the end gives what there is, RFC 5267 §4.4).
pub(in crate::imap) fn partial<'a>(option: &'a str, results: &'a [u32]) -> (&'a str, &'a [u32]) {
    let range = option.strip_prefix("PARTIAL ").unwrap_or(option);
    let (lo, hi) = range.split_once(':').unwrap_or((range, range));
    let lo = lo.parse::<usize>().unwrap_or(1).max(1);
    let hi = hi.parse::<usize>().unwrap_or(lo).min(results.len());
    (range, if lo <= hi { &results[lo - 1..hi] } else { &[] })
}

/// `ESEARCH (TAG "tag")` and ` UID` for a UID command: the start of every ESEARCH
/// response (RFC 4731 §3.1 / RFC 9051 §7.3.4: the correlator is the command's tag).
pub(in crate::imap) fn esearch_head(tag: &str, uid: bool) -> String {
    let mut line = String::from("ESEARCH (TAG ");
    line.push_str(&String::from_utf8_lossy(&imap_string(tag.as_bytes())));
    line.push(')');
    if uid {
        line.push_str(" UID");
    }
    line
}

/// A list of numbers in the given order as a sequence set, joining only runs that ascend
/// by one (ESORT's ALL keeps the sort order, RFC 5267 §3.1).
pub(in crate::imap) fn ordered_set(ids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j].wrapping_add(1) {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}:{}", ids[i], ids[j]));
        } else {
            out.push_str(&ids[i].to_string());
        }
        i = j + 1;
    }
    out
}

pub(in crate::imap) fn has_modseq_key(k: &SearchKey) -> bool {
    match k {
        SearchKey::Modseq(_) => true,
        SearchKey::And(v) => v.iter().any(has_modseq_key),
        SearchKey::Or(a, b) => has_modseq_key(a) || has_modseq_key(b),
        SearchKey::Not(a) => has_modseq_key(a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(sort: bool, uids: &[u32]) -> LiveSearch {
        LiveSearch {
            tag: "C01".into(),
            uid: true,
            key: SearchKey::All,
            sort: sort.then(|| {
                vec![sort::Criterion {
                    key: sort::SortKey::Arrival,
                    reverse: false,
                }]
            }),
            uids: uids.to_vec(),
        }
    }

    #[test]
    fn context_updates_follow_rfc_5267() {
        let same = |u: u32| u;
        // §4.3.3: a result of 2734:2735 that becomes 2731:2735; the preferred form.
        let l = live(true, &[2734, 2735]);
        assert_eq!(
            l.changes(&[2731, 2732, 2733, 2734, 2735], &same),
            "* ESEARCH (TAG \"C01\") UID ADDTO (1 2731:2733)\r\n"
        );
        // §4.3.4: removals at positions, each counted once the runs before are gone; the
        // order of a sorted result is kept in its sets.
        let l = live(true, &[9, 3, 7, 5, 1]);
        assert_eq!(
            l.changes(&[3, 1], &same),
            "* ESEARCH (TAG \"C01\") UID REMOVEFROM (1 9 2 7,5)\r\n"
        );
        let l = live(true, &[9, 3]);
        assert_eq!(
            l.changes(&[4, 9, 8, 3, 2], &same),
            "* ESEARCH (TAG \"C01\") UID ADDTO (1 4 3 8 5 2)\r\n"
        );
        // A SEARCH context: position 0, sets in mailbox order.
        let l = live(false, &[1, 2, 3, 4]);
        assert_eq!(
            l.changes(&[1, 4, 6, 7], &same),
            "* ESEARCH (TAG \"C01\") UID REMOVEFROM (0 2:3)\r\n* ESEARCH (TAG \"C01\") UID ADDTO (0 6:7)\r\n"
        );
        assert_eq!(l.changes(&[1, 2, 3, 4], &same), "");
    }

    #[test]
    fn partial_ranges() {
        let r = [5, 7, 9, 11];
        assert_eq!(partial("PARTIAL 2:3", &r), ("2:3", &r[1..3]));
        assert_eq!(partial("PARTIAL 3:10", &r), ("3:10", &r[2..]));
        assert_eq!(partial("PARTIAL 9:10", &r).1, &[] as &[u32]);
    }
}
