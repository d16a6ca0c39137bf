//! SEARCH evaluation (RFC 9051 §6.4.4). Flag, size, date and set keys use metadata only;
//! header and text keys load and decode the message (mail-parser) once per message.

use mail_parser::{HeaderValue, MessageParser};

use super::types::{SearchKey, SeqSet};
use crate::store::MessageMeta;

/// One message as seen by the evaluator.
pub struct Candidate<'a> {
    /// Sequence number.
    pub seq: u32,
    /// Metadata.
    pub meta: &'a MessageMeta,
    /// Highest sequence number and UID in the mailbox (for `*`).
    pub max_seq: u32,
    /// Highest UID.
    pub max_uid: u32,
    /// Saved search result (`$`) as UIDs.
    pub saved: &'a [u32],
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
        SearchKey::Seq(SeqSet::Saved) => c.saved.contains(&c.meta.uid),
        SearchKey::Seq(set) => set.contains(c.seq, c.max_seq, &[]),
        SearchKey::Uid(set) => {
            // `$` holds UIDs.
            set.contains(c.meta.uid, c.max_uid, c.saved)
        }
        SearchKey::Flag(f, want) => c.meta.flags.iter().any(|x| x.eq_ignore_ascii_case(f)) == *want,
        SearchKey::Larger(n) => c.meta.size > *n,
        SearchKey::Smaller(n) => c.meta.size < *n,
        SearchKey::Modseq(n) => c.meta.modseq >= *n,
        SearchKey::Date(kind, day) => {
            let d = if kind.starts_with("SENT") {
                let Some(msg) = content(load, cache) else {
                    return false;
                };
                match MessageParser::default()
                    .parse_headers(msg)
                    .and_then(|m| m.date().map(|d| d.to_timestamp()))
                {
                    Some(t) => t.div_euclid(86400),
                    None => return false,
                }
            } else {
                c.meta.internal_date.div_euclid(86400)
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

    fn meta(uid: u32) -> MessageMeta {
        MessageMeta {
            uid,
            blob: 0,
            size: 10,
            flags: vec![],
            internal_date: 0,
            modseq: 1,
        }
    }

    #[test]
    fn saved_result_as_sequence_set_matches_uids() {
        // Message 2 has UID 7; `$` saved UID 7, so `SEARCH $` must match sequence number 2.
        let m = meta(7);
        let saved = [7u32];
        let c = Candidate {
            seq: 2,
            meta: &m,
            max_seq: 3,
            max_uid: 9,
            saved: &saved,
        };
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
        let other = meta(2);
        let c2 = Candidate { meta: &other, ..c };
        assert!(!matches(
            &SearchKey::Seq(SeqSet::Saved),
            &c2,
            &mut load,
            &mut cache
        ));
    }
}
