//! What filters (milters, rspamd) change in a message at the end of data: header edits in
//! the order they were asked for, a new body, and envelope changes; and [`apply`], which
//! makes the edited message.
//!
//! Header positions follow the milter protocol (what Sendmail and Postfix do): an insert's
//! index counts fields from the top (0 = first); a change's index counts the occurrences of
//! one name (1 = first), and an empty value deletes that occurrence.

use super::outcome::{MAX_ADDRESS, MAX_HEADER_VALUE, cut};
use crate::message::{header_end, valid_field_name};

/// Most header edits one message may collect from all its filters.
pub const MAX_HEADER_EDITS: usize = 256;
/// Most recipients filters may add to one message.
pub const MAX_ADDED_RCPTS: usize = 100;

/// One change to the header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Append a field at the end of the header block (SMFIR_ADDHEADER).
    Add {
        /// Field name.
        name: String,
        /// Value, without the space after the colon.
        value: String,
    },
    /// Insert a field before the `index`-th field (0 = at the top; SMFIR_INSHEADER).
    Insert {
        /// Position among the fields.
        index: usize,
        /// Field name.
        name: String,
        /// Value.
        value: String,
    },
    /// Replace the value of the `index`-th field called `name` (1 = the first); an empty
    /// value deletes it, an index past the last adds the field (SMFIR_CHGHEADER).
    Change {
        /// Field name.
        name: String,
        /// Occurrence, from 1.
        index: usize,
        /// New value ("" deletes).
        value: String,
    },
    /// Delete every field called `name` (forged spam headers, rspamd's `remove_headers`).
    RemoveAll {
        /// Field name.
        name: String,
    },
}

/// What filters asked to change in one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageEdits {
    /// Header changes, in order.
    pub headers: Vec<HeaderEdit>,
    /// A new body (everything after the blank line), with CRLF line ends.
    pub body: Option<Vec<u8>>,
    /// Recipients to add.
    pub add_rcpts: Vec<String>,
    /// Recipients to remove (compared without case).
    pub del_rcpts: Vec<String>,
    /// A new envelope sender ("" for the null sender).
    pub mail_from: Option<String>,
}

/// Why an edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// Not a header field name.
    #[error("{0:?} is not a header field name")]
    BadFieldName(String),
    /// Too many edits for one message.
    #[error("more than {MAX_HEADER_EDITS} header edits")]
    TooManyEdits,
    /// Not an address.
    #[error("{0:?} is not an address")]
    BadAddress(String),
    /// Too many added recipients.
    #[error("more than {MAX_ADDED_RCPTS} added recipients")]
    TooManyRcpts,
}

impl MessageEdits {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.body.is_none()
            && self.add_rcpts.is_empty()
            && self.del_rcpts.is_empty()
            && self.mail_from.is_none()
    }

    /// Whether the message bytes change (headers or body).
    pub fn changes_message(&self) -> bool {
        !self.headers.is_empty() || self.body.is_some()
    }

    /// Queue a header edit after checking its name and the limit.
    pub fn header(&mut self, edit: HeaderEdit) -> Result<(), EditError> {
        let name = match &edit {
            HeaderEdit::Add { name, .. }
            | HeaderEdit::Insert { name, .. }
            | HeaderEdit::Change { name, .. }
            | HeaderEdit::RemoveAll { name } => name,
        };
        if !valid_field_name(name) {
            return Err(EditError::BadFieldName(name.clone()));
        }
        if self.headers.len() >= MAX_HEADER_EDITS {
            return Err(EditError::TooManyEdits);
        }
        self.headers.push(edit);
        Ok(())
    }

    /// Add a recipient (`<…>` dropped).
    pub fn add_rcpt(&mut self, address: &str) -> Result<(), EditError> {
        let a = clean_address(address)?;
        if a.is_empty() {
            return Err(EditError::BadAddress(address.into()));
        }
        if self.add_rcpts.len() >= MAX_ADDED_RCPTS {
            return Err(EditError::TooManyRcpts);
        }
        self.add_rcpts.push(a);
        Ok(())
    }

    /// Remove a recipient (`<…>` dropped).
    pub fn del_rcpt(&mut self, address: &str) -> Result<(), EditError> {
        let a = clean_address(address)?;
        self.del_rcpts.push(a);
        Ok(())
    }

    /// Change the envelope sender (`<…>` dropped; `<>` is the null sender).
    pub fn set_mail_from(&mut self, address: &str) -> Result<(), EditError> {
        self.mail_from = Some(clean_address(address)?);
        Ok(())
    }

    /// Take on the edits of a later filter.
    pub fn merge(&mut self, later: MessageEdits) {
        self.headers.extend(later.headers);
        if later.body.is_some() {
            self.body = later.body;
        }
        self.add_rcpts.extend(later.add_rcpts);
        self.del_rcpts.extend(later.del_rcpts);
        if later.mail_from.is_some() {
            self.mail_from = later.mail_from;
        }
    }
}

/// An address as a filter gave it: `<…>` and spaces dropped; "" for `<>`.
fn clean_address(address: &str) -> Result<String, EditError> {
    let a = address.trim();
    // Milters may send ESMTP parameters after the address (`<a@b> SIZE=1`); they are not kept.
    let a = match a.strip_prefix('<') {
        Some(rest) => rest.split_once('>').map_or(rest, |(addr, _)| addr),
        None => a.split_whitespace().next().unwrap_or(""),
    };
    if a.len() > MAX_ADDRESS
        || a.chars().any(|c| c.is_control() || c == ' ')
        || (!a.is_empty() && !a.contains('@'))
    {
        return Err(EditError::BadAddress(address.into()));
    }
    Ok(a.to_string())
}

/// One field of the header block: its name and its raw bytes (continuation lines and the
/// final CRLF included).
struct Field {
    name: String,
    raw: Vec<u8>,
}

/// A field as written: `name: value` with CRLF line ends; a value's own line breaks become
/// folds (a line that does not start with white space gets a tab), so no value can start a
/// new field or end the header block.
fn field(name: &str, value: &str) -> Vec<u8> {
    let value = cut(value, MAX_HEADER_VALUE);
    let mut out = Vec::with_capacity(name.len() + value.len() + 4);
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    if !value.starts_with([' ', '\t']) {
        out.push(b' ');
    }
    let mut lines = value.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    out.extend_from_slice(lines.next().unwrap_or("").as_bytes());
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        out.extend_from_slice(b"\r\n");
        if !line.starts_with([' ', '\t']) {
            out.push(b'\t');
        }
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn split_fields(head: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < head.len() {
        let end = memchr::memchr(b'\n', &head[pos..]).map_or(head.len(), |i| pos + i + 1);
        let line = &head[pos..end];
        pos = end;
        if matches!(line.first(), Some(b' ' | b'\t'))
            && let Some(last) = fields.last_mut()
        {
            last.raw.extend_from_slice(line);
            continue;
        }
        let name = line
            .iter()
            .position(|&b| b == b':')
            .map(|i| String::from_utf8_lossy(&line[..i]).trim().to_string())
            .unwrap_or_default();
        fields.push(Field {
            name,
            raw: line.to_vec(),
        });
    }
    fields
}

/// Line ends made CRLF (a filter may send bare LF).
fn crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    let mut prev = 0u8;
    for &b in body {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        if prev == b'\r' && b != b'\n' {
            out.push(b'\n');
        }
        out.push(b);
        prev = b;
    }
    if prev == b'\r' {
        out.push(b'\n');
    }
    out
}

/// The message with `edits`' header changes and new body applied (the envelope changes are
/// the session's to apply).
pub fn apply(msg: &[u8], edits: &MessageEdits) -> Vec<u8> {
    let head_end = header_end(msg);
    let head = &msg[..head_end];
    // The header block without its blank line (a message with no body has none).
    let (fields_part, has_blank) = match head.strip_suffix(b"\r\n\r\n") {
        Some(h) => (&head[..h.len() + 2], true),
        None if head == b"\r\n" => (&head[..0], true),
        None => (head, false),
    };
    let mut fields = split_fields(fields_part);
    for edit in &edits.headers {
        match edit {
            HeaderEdit::Add { name, value } => fields.push(Field {
                name: name.clone(),
                raw: field(name, value),
            }),
            HeaderEdit::Insert { index, name, value } => {
                let at = (*index).min(fields.len());
                fields.insert(
                    at,
                    Field {
                        name: name.clone(),
                        raw: field(name, value),
                    },
                );
            }
            HeaderEdit::Change { name, index, value } => {
                let found = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.name.eq_ignore_ascii_case(name))
                    .nth(index.saturating_sub(1))
                    .map(|(i, _)| i);
                match (found, value.is_empty()) {
                    (Some(i), true) => {
                        fields.remove(i);
                    }
                    (Some(i), false) => fields[i].raw = field(&fields[i].name.clone(), value),
                    (None, false) => fields.push(Field {
                        name: name.clone(),
                        raw: field(name, value),
                    }),
                    (None, true) => {}
                }
            }
            HeaderEdit::RemoveAll { name } => fields.retain(|f| !f.name.eq_ignore_ascii_case(name)),
        }
    }
    let body = match &edits.body {
        Some(b) => crlf(b),
        None => msg[head_end..].to_vec(),
    };
    let mut out = Vec::with_capacity(head.len() + body.len() + 256);
    for f in &fields {
        out.extend_from_slice(&f.raw);
        if !f.raw.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    if has_blank || edits.body.is_some() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"Received: from x\r\n\tby y\r\nSubject: hi\r\nX-A: 1\r\nX-a: 2\r\n\r\nbody\r\n";

    fn edited(edits: &[HeaderEdit]) -> String {
        let mut e = MessageEdits::default();
        for h in edits {
            e.header(h.clone()).unwrap();
        }
        String::from_utf8(apply(MSG, &e)).unwrap()
    }

    #[test]
    fn adds_append_inserts_count_from_the_top() {
        let out = edited(&[
            HeaderEdit::Add {
                name: "X-New".into(),
                value: "v".into(),
            },
            HeaderEdit::Insert {
                index: 0,
                name: "X-Top".into(),
                value: "t".into(),
            },
            HeaderEdit::Insert {
                index: 2,
                name: "X-Third".into(),
                value: "3".into(),
            },
        ]);
        assert_eq!(
            out,
            "X-Top: t\r\nReceived: from x\r\n\tby y\r\nX-Third: 3\r\nSubject: hi\r\nX-A: 1\r\nX-a: 2\r\nX-New: v\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn changes_count_occurrences_of_one_name_and_empty_deletes() {
        let out = edited(&[
            HeaderEdit::Change {
                name: "x-a".into(),
                index: 2,
                value: "two".into(),
            },
            HeaderEdit::Change {
                name: "Subject".into(),
                index: 1,
                value: "[tag] hi".into(),
            },
            HeaderEdit::Change {
                name: "Received".into(),
                index: 1,
                value: "".into(),
            },
            HeaderEdit::Change {
                name: "X-Missing".into(),
                index: 1,
                value: "added".into(),
            },
        ]);
        assert_eq!(
            out,
            "Subject: [tag] hi\r\nX-A: 1\r\nX-a: two\r\nX-Missing: added\r\n\r\nbody\r\n"
        );
        let out = edited(&[HeaderEdit::RemoveAll { name: "X-A".into() }]);
        assert_eq!(
            out,
            "Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn values_cannot_start_a_field_or_end_the_header() {
        let out = edited(&[HeaderEdit::Add {
            name: "X-Fold".into(),
            value: "a\nBcc: evil@x\n\n\r\nc".into(),
        }]);
        assert!(
            out.contains("X-Fold: a\r\n\tBcc: evil@x\r\n\tc\r\n\r\nbody"),
            "{out}"
        );
        let mut e = MessageEdits::default();
        assert_eq!(
            e.header(HeaderEdit::Add {
                name: "Bad Name".into(),
                value: "x".into()
            }),
            Err(EditError::BadFieldName("Bad Name".into()))
        );
    }

    #[test]
    fn a_new_body_gets_crlf_line_ends() {
        let e = MessageEdits {
            body: Some(b"one\ntwo\r\nthree\rfour".to_vec()),
            ..Default::default()
        };
        let out = apply(MSG, &e);
        assert!(out.ends_with(b"X-a: 2\r\n\r\none\r\ntwo\r\nthree\r\nfour"));
        // A message without a body gets its blank line with the new one.
        let out = apply(b"Subject: x\r\n", &e);
        assert!(out.starts_with(b"Subject: x\r\n\r\none\r\n"), "{out:?}");
    }

    #[test]
    fn addresses_are_cleaned_and_checked() {
        let mut e = MessageEdits::default();
        e.add_rcpt("<carol@example.org>").unwrap();
        e.add_rcpt("dave@example.org").unwrap();
        e.set_mail_from("<changed@example.org> SIZE=10").unwrap();
        assert_eq!(e.add_rcpts, ["carol@example.org", "dave@example.org"]);
        assert_eq!(e.mail_from.as_deref(), Some("changed@example.org"));
        e.set_mail_from("<>").unwrap();
        assert_eq!(e.mail_from.as_deref(), Some(""));
        assert!(e.add_rcpt("<>").is_err());
        assert!(e.add_rcpt("no-at-sign").is_err());
        assert!(e.add_rcpt("a\r\n@b").is_err());
    }
}
