//! SEARCH evaluation (RFC 9051 §6.4.4). Flag, size, date and set keys use metadata only;
//! header and text keys load and decode the message (mail-parser) once per message.

use mail_parser::{HeaderValue, MessageParser};

use super::types::{SearchKey, SeqSet};

/// One message as seen by the evaluator.
pub struct Candidate<'a> {
    /// Sequence number.
    pub seq: u32,
    /// UID.
    pub uid: u32,
    /// Flags.
    pub flags: &'a [String],
    /// MODSEQ.
    pub modseq: u64,
    /// Size and internal date: only read by keys for which [`needs_meta`] holds.
    pub size: u64,
    /// Unix seconds.
    pub internal_date: i64,
    /// Highest sequence number and UID in the mailbox (for `*`).
    pub max_seq: u32,
    /// Highest UID.
    pub max_uid: u32,
    /// Saved search result (`$`) as UIDs.
    pub saved: &'a [u32],
    /// Whether the message is `\Recent` in this session (RFC 3501 §2.3.2).
    pub recent: bool,
}

/// Whether evaluating `key` needs the message content.
pub fn needs_content(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(v) => v.iter().any(needs_content),
        SearchKey::Or(a, b) => needs_content(a) || needs_content(b),
        SearchKey::Not(a) => needs_content(a),
        SearchKey::Header(..) | SearchKey::Body(_) | SearchKey::Text(_) => true,
        SearchKey::Date(k, _) => k.starts_with("SENT"),
        _ => false,
    }
}

/// Whether evaluating `key` needs more than UID, flags and MODSEQ: size, internal date or
/// content.
pub fn needs_meta(key: &SearchKey) -> bool {
    match key {
        SearchKey::And(v) => v.iter().any(needs_meta),
        SearchKey::Or(a, b) => needs_meta(a) || needs_meta(b),
        SearchKey::Not(a) => needs_meta(a),
        SearchKey::Larger(_) | SearchKey::Smaller(_) | SearchKey::Date(..) => true,
        k => needs_content(k),
    }
}

/// Evaluate `key` for one message; `content` is loaded lazily through `load`.
pub fn matches(
    key: &SearchKey,
    c: &Candidate<'_>,
    load: &mut dyn FnMut() -> Option<Vec<u8>>,
    cache: &mut Option<Option<Vec<u8>>>,
) -> bool {
    match key {
        SearchKey::And(v) => v.iter().all(|k| matches(k, c, load, cache)),
        SearchKey::Or(a, b) => matches(a, c, load, cache) || matches(b, c, load, cache),
        SearchKey::Not(a) => !matches(a, c, load, cache),
        SearchKey::All => true,
        // `$` holds UIDs (RFC 5182), whether used as a sequence set or after UID.
        SearchKey::Seq(SeqSet::Saved) => c.saved.contains(&c.uid),
        SearchKey::Seq(set) => set.contains(c.seq, c.max_seq, &[]),
        SearchKey::Uid(set) => {
            // `$` holds UIDs.
            set.contains(c.uid, c.max_uid, c.saved)
        }
        SearchKey::Flag(f, want) if f.eq_ignore_ascii_case("\\Recent") => c.recent == *want,
        SearchKey::Flag(f, want) => c.flags.iter().any(|x| x.eq_ignore_ascii_case(f)) == *want,
        SearchKey::Larger(n) => c.size > *n,
        SearchKey::Smaller(n) => c.size < *n,
        SearchKey::Modseq(n) => c.modseq >= *n,
        SearchKey::Date(kind, day) => {
            let d = if kind.starts_with("SENT") {
                let Some(msg) = content(load, cache) else {
                    return false;
                };
                // The date as written in the Date field, in its own time zone (RFC 9051
                // §6.4.4: "disregarding time and timezone"), not converted to UTC.
                let written = MessageParser::default().parse_headers(msg).and_then(|m| {
                    m.date().and_then(|d| {
                        chrono::NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)
                    })
                });
                match written {
                    Some(date) => date
                        .signed_duration_since(chrono::NaiveDate::default())
                        .num_days(),
                    None => return false,
                }
            } else {
                c.internal_date.div_euclid(86400)
            };
            match kind.trim_start_matches("SENT") {
                "BEFORE" => d < *day,
                "ON" => d == *day,
                _ => d >= *day,
            }
        }
        SearchKey::Header(name, value) => {
            let Some(msg) = content(load, cache) else {
                return false;
            };
            header_contains(msg, name, value)
        }
        SearchKey::Body(text) => {
            let Some(msg) = content(load, cache) else {
                return false;
            };
            body_contains(msg, text)
        }
        SearchKey::Text(text) => {
            let Some(msg) = content(load, cache) else {
                return false;
            };
            let end = crate::message::header_end(msg);
            contains_ci(&String::from_utf8_lossy(&msg[..end]), text) || body_contains(msg, text)
        }
    }
}

fn content<'a>(
    load: &mut dyn FnMut() -> Option<Vec<u8>>,
    cache: &'a mut Option<Option<Vec<u8>>>,
) -> Option<&'a [u8]> {
    if cache.is_none() {
        *cache = Some(load());
    }
    cache.as_ref().and_then(|c| c.as_deref())
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    needle.is_empty() || hay.to_lowercase().contains(&needle.to_lowercase())
}

fn header_contains(msg: &[u8], name: &str, value: &str) -> bool {
    match raw_header_search(msg, name, value) {
        Some(answer) => answer,
        None => header_contains_parsed(msg, name, value),
    }
}

/// Address fields: mail-parser's reading (`name <address>`) differs from the raw text.
const ADDRESS_FIELDS: [&str; 6] = ["from", "to", "cc", "bcc", "sender", "reply-to"];

/// [`header_contains`] from the raw header block, without parsing it: `Some` when the raw
/// field values decide the answer exactly as [`header_contains_parsed`] would (a raw match,
/// or no match in values that decoding cannot change: one line of plain ASCII without
/// encoded words or runs of white space), `None` when decoding might change it. This is the
/// common case of `SEARCH SUBJECT`, and it saves parsing every header of every message.
fn raw_header_search(msg: &[u8], name: &str, value: &str) -> Option<bool> {
    let end = memchr::memmem::find(msg, b"\r\n\r\n")? + 2;
    let head = &msg[..end];
    let needle = value.to_lowercase();
    let mut undecided = ADDRESS_FIELDS.iter().any(|a| a.eq_ignore_ascii_case(name));
    let mut found = false;
    let mut i = 0;
    while i < head.len() {
        // One field: up to a CRLF not followed by white space (folding).
        let mut j = i;
        let field_end = loop {
            match memchr::memmem::find(&head[j..], b"\r\n") {
                Some(k) => {
                    let e = j + k;
                    if matches!(head.get(e + 2), Some(b' ') | Some(b'\t')) {
                        j = e + 2;
                    } else {
                        break e;
                    }
                }
                None => break head.len(),
            }
        };
        let field = &head[i..field_end];
        i = field_end + 2;
        let Some(colon) = memchr::memchr(b':', field) else {
            return None; // not a header field: leave it to the parser
        };
        if !field[..colon]
            .trim_ascii_end()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            continue;
        }
        found = true;
        if value.is_empty() {
            return Some(true);
        }
        let raw = &field[colon + 1..];
        if String::from_utf8_lossy(raw)
            .to_lowercase()
            .contains(&needle)
        {
            return Some(true);
        }
        if raw
            .windows(2)
            .any(|w| w == b"=?" || w == b"  " || w == b"\r\n")
            || raw.iter().any(|&c| c >= 0x80 || c == b'\t')
        {
            undecided = true;
        }
    }
    if undecided && found {
        return None;
    }
    Some(false)
}

fn header_contains_parsed(msg: &[u8], name: &str, value: &str) -> bool {
    let Some(m) = MessageParser::default().parse_headers(msg) else {
        return false;
    };
    let mut found = false;
    for h in m.headers() {
        if !h.name.as_str().eq_ignore_ascii_case(name) {
            continue;
        }
        found = true;
        if value.is_empty() {
            return true;
        }
        let text = match &h.value {
            HeaderValue::Text(t) => t.to_string(),
            HeaderValue::TextList(l) => l.join(" "),
            HeaderValue::Address(a) => a
                .iter()
                .map(|x| format!("{} <{}>", x.name().unwrap_or(""), x.address().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        };
        let raw = String::from_utf8_lossy(&msg[h.offset_start as usize..h.offset_end as usize])
            .into_owned();
        if contains_ci(&text, value) || contains_ci(&raw, value) {
            return true;
        }
    }
    found && value.is_empty()
}

fn body_contains(msg: &[u8], text: &str) -> bool {
    let Some(m) = MessageParser::default().parse(msg) else {
        return false;
    };
    let needle = text.to_lowercase();
    for i in 0..m.text_body_count().max(m.html_body_count()) {
        if m.body_text(i)
            .is_some_and(|t| t.to_lowercase().contains(&needle))
        {
            return true;
        }
        if m.body_html(i)
            .is_some_and(|t| t.to_lowercase().contains(&needle))
        {
            return true;
        }
    }
    let end = crate::message::header_end(msg);
    String::from_utf8_lossy(&msg[end..])
        .to_lowercase()
        .contains(&needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_dates_are_the_dates_as_written() {
        // 23:30 at -0500 on the 1st is the 2nd in UTC; the key compares the 1st.
        let msg = b"Date: Mon, 1 Jan 2024 23:30:00 -0500\r\nSubject: x\r\n\r\nbody\r\n".to_vec();
        let flags = Vec::new();
        let c = Candidate {
            seq: 1,
            uid: 1,
            flags: &flags,
            modseq: 1,
            size: msg.len() as u64,
            internal_date: 0,
            max_seq: 1,
            max_uid: 1,
            saved: &[],
            recent: false,
        };
        let day = |s: &str| crate::imap::codec::parse_date(s).unwrap();
        let run = |kind: &str, d: &str| {
            let mut cache = None;
            let m = msg.clone();
            matches(
                &SearchKey::Date(kind.into(), day(d)),
                &c,
                &mut || Some(m.clone()),
                &mut cache,
            )
        };
        assert!(run("SENTON", "1-Jan-2024"));
        assert!(!run("SENTON", "2-Jan-2024"));
        assert!(run("SENTBEFORE", "2-Jan-2024"));
        assert!(!run("SENTSINCE", "2-Jan-2024"));
        assert!(run("SENTSINCE", "1-Jan-2024"));
    }

    #[test]
    fn raw_header_search_agrees_with_the_parser() {
        let msgs: [&[u8]; 6] = [
            b"Subject: Message number 99 alpha\r\nFrom: A <a@x>\r\n\r\nbody number 99\r\n",
            b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= number\r\n\r\nx\r\n",
            b"Subject: folded\r\n number  99\r\n\r\nx\r\n",
            b"From: \"Doe, John\" <j@x.test>\r\nTo: b@y\r\n\r\nx\r\n",
            b"X-Other: number 99\r\n\r\nx\r\n",
            b"Subject: no blank line after the header",
        ];
        let keys = [
            ("SUBJECT", "number 99"),
            ("SUBJECT", "grüße"),
            ("SUBJECT", "NUMBER"),
            ("SUBJECT", ""),
            ("FROM", "john <j@"),
            ("FROM", "doe"),
            ("TO", "b@y"),
            ("X-OTHER", "99"),
            ("CC", ""),
        ];
        for m in msgs {
            for (name, value) in keys {
                assert_eq!(
                    header_contains(m, name, value),
                    header_contains_parsed(m, name, value),
                    "{name} {value:?} in {:?}",
                    String::from_utf8_lossy(m)
                );
            }
        }
        // Decided without the parser in the plain case, deferred to it otherwise.
        assert_eq!(
            raw_header_search(msgs[0], "SUBJECT", "number 99"),
            Some(true)
        );
        assert_eq!(
            raw_header_search(msgs[0], "SUBJECT", "number 98"),
            Some(false)
        );
        assert_eq!(raw_header_search(msgs[1], "SUBJECT", "grüße"), None);
        assert_eq!(raw_header_search(msgs[3], "FROM", "john <j@"), None);
    }

    fn cand(seq: u32, uid: u32, saved: &[u32]) -> Candidate<'_> {
        Candidate {
            seq,
            uid,
            flags: &[],
            modseq: 1,
            size: 10,
            internal_date: 0,
            max_seq: 3,
            max_uid: 9,
            saved,
            recent: false,
        }
    }

    #[test]
    fn saved_result_as_sequence_set_matches_uids() {
        // Message 2 has UID 7; `$` saved UID 7, so `SEARCH $` must match sequence number 2.
        let saved = [7u32];
        let c = cand(2, 7, &saved);
        let mut load = || None;
        let mut cache = None;
        assert!(matches(
            &SearchKey::Seq(SeqSet::Saved),
            &c,
            &mut load,
            &mut cache
        ));
        assert!(matches(
            &SearchKey::Uid(SeqSet::Saved),
            &c,
            &mut load,
            &mut cache
        ));
        let c2 = cand(2, 2, &saved);
        assert!(!matches(
            &SearchKey::Seq(SeqSet::Saved),
            &c2,
            &mut load,
            &mut cache
        ));
    }
}
