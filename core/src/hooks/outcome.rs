//! What a hook may answer, checked once for both engines: verdict construction (reply code
//! ranges, reply text sanitised and cut) and actions (which action at which hook point, and
//! the limits on their values).
//!
//! Rhai scripts and WASM plugins reach these rules through different APIs (`reject(…)` and
//! `ctx.add_header(…)` in a script, an `outcome` record handed over by a plugin), so each
//! engine words the errors in its own spelling (`add_header` / `add-headers`, `on_data` /
//! `on-data`); the rules and the numbers live here only.

use std::fmt;
use std::ops::RangeInclusive;

use super::{Actions, HookPoint, Verdict};
use crate::message::valid_field_name;

/// Longest reply text (and quarantine reason) a hook may give, in bytes.
pub const MAX_REPLY_TEXT: usize = 400;
/// Most headers one hook call may add.
pub const MAX_HEADERS: usize = 32;
/// Longest value of an added header, in bytes (longer ones are cut).
pub const MAX_HEADER_VALUE: usize = 8192;
/// Longest address `set_rcpt` accepts, in bytes.
pub const MAX_ADDRESS: usize = 320;
/// Longest folder name `file_into` accepts, in bytes.
pub const MAX_FOLDER: usize = 200;

/// Codes a permanent refusal may use.
pub const REJECT_CODES: RangeInclusive<u16> = 500..=599;
/// Codes a temporary refusal may use.
pub const TEMPFAIL_CODES: RangeInclusive<u16> = 400..=499;

/// `s` cut to at most `max` bytes at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reply text (or a quarantine reason) as a hook may give it: control characters become
/// spaces (nothing a hook writes can end a reply line), cut to [`MAX_REPLY_TEXT`].
pub fn reply_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    cut(&clean, MAX_REPLY_TEXT).to_string()
}

/// An RFC 3463 enhanced status code such as `5.7.1`: three dot-separated runs of digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enhanced(String);

impl Enhanced {
    /// `s` if it has the shape of an enhanced status code.
    pub fn parse(s: &str) -> Option<Enhanced> {
        let mut parts = 0;
        for p in s.split('.') {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            parts += 1;
        }
        (parts == 3).then(|| Enhanced(s.to_string()))
    }

    /// The code as text (`5.7.1`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A code the server itself uses (must be well formed; checked in debug builds).
    pub fn known(s: &str) -> Enhanced {
        debug_assert!(Enhanced::parse(s).is_some(), "{s} is not an enhanced code");
        Enhanced(s.to_string())
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Split reply text that starts with its own enhanced code (`"5.7.1 Blocked"`), as hooks may
/// write it, into the code and the rest.
pub fn split_enhanced(text: String) -> (Option<Enhanced>, String) {
    let (first, rest) = text.split_once(' ').unwrap_or((&text, ""));
    match Enhanced::parse(first) {
        Some(e) => (Some(e), rest.to_string()),
        None => (None, text),
    }
}

/// Reply text with its enhanced code in front again (`"5.7.1 Blocked"`): the wording IMAP,
/// POP3 and the queue use.
pub fn wording(enhanced: Option<&Enhanced>, text: &str) -> String {
    match enhanced {
        Some(e) if text.is_empty() => e.to_string(),
        Some(e) => format!("{e} {text}"),
        None => text.to_string(),
    }
}

/// A refusal code outside the range of its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeOutOfRange {
    /// The code given.
    pub code: i64,
    /// The codes allowed.
    pub range: RangeInclusive<u16>,
}

impl fmt::Display for CodeOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "code {} is not in {}..{}",
            self.code,
            self.range.start(),
            self.range.end()
        )
    }
}

/// Check `code` against `range`, sanitise `text` and take its enhanced code off the front.
fn refusal(
    code: i64,
    range: RangeInclusive<u16>,
    text: &str,
) -> Result<(u16, Option<Enhanced>, String), CodeOutOfRange> {
    match u16::try_from(code) {
        Ok(c) if range.contains(&c) => {
            let (enhanced, text) = split_enhanced(reply_text(text));
            Ok((c, enhanced, text))
        }
        _ => Err(CodeOutOfRange { code, range }),
    }
}

impl Verdict {
    /// A permanent refusal as a hook asks for it: a 5xx code, text that may start with its
    /// own enhanced code.
    pub fn reject(code: i64, text: &str) -> Result<Verdict, CodeOutOfRange> {
        let (code, enhanced, text) = refusal(code, REJECT_CODES, text)?;
        Ok(Verdict::Reject {
            code,
            enhanced,
            text,
        })
    }

    /// A temporary refusal as a hook asks for it: a 4xx code, text that may start with its
    /// own enhanced code.
    pub fn tempfail(code: i64, text: &str) -> Result<Verdict, CodeOutOfRange> {
        let (code, enhanced, text) = refusal(code, TEMPFAIL_CODES, text)?;
        Ok(Verdict::Tempfail {
            code,
            enhanced,
            text,
        })
    }

    /// Delivery into Junk, with the hook's reason.
    pub fn quarantine(reason: &str) -> Verdict {
        Verdict::Quarantine(reply_text(reason))
    }

    /// A refusal's text as the hook wrote it, enhanced code first (`5.7.1 Blocked`): what
    /// IMAP logs and POP3 answers. "" for verdicts other than refusals.
    pub fn wording(&self) -> String {
        match self {
            Verdict::Reject { enhanced, text, .. } | Verdict::Tempfail { enhanced, text, .. } => {
                wording(enhanced.as_ref(), text)
            }
            _ => String::new(),
        }
    }

    /// One-line form for logs and `corvus script test` (`reject 550 5.7.1 Blocked`).
    pub fn describe(&self) -> String {
        match self {
            Verdict::Continue => "continue".into(),
            Verdict::Accept => "accept".into(),
            Verdict::Reject {
                code,
                enhanced,
                text,
            } => format!("reject {code} {}", wording(enhanced.as_ref(), text)),
            Verdict::Tempfail {
                code,
                enhanced,
                text,
            } => format!("tempfail {code} {}", wording(enhanced.as_ref(), text)),
            Verdict::Discard => "discard".into(),
            Verdict::Quarantine(r) => format!("quarantine {r}"),
        }
    }

    /// The line `corvus queue show` lists for a decision: the form it has always had
    /// (`Reject { code: 550, text: "5.7.1 …" }`), enhanced code back in the text.
    pub fn decision(&self) -> String {
        match self {
            Verdict::Reject {
                code,
                enhanced,
                text,
            } => format!(
                "Reject {{ code: {code}, text: {:?} }}",
                wording(enhanced.as_ref(), text)
            ),
            Verdict::Tempfail {
                code,
                enhanced,
                text,
            } => format!(
                "Tempfail {{ code: {code}, text: {:?} }}",
                wording(enhanced.as_ref(), text)
            ),
            other => format!("{other:?}"),
        }
    }
}

/// An action a hook may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Prepend a header (data, delivery).
    AddHeader,
    /// Replace the recipient (rcpt).
    SetRcpt,
    /// File into a folder (delivery).
    FileInto,
}

impl Action {
    /// The hook points where this action is available.
    pub fn points(self) -> &'static [HookPoint] {
        match self {
            Action::AddHeader => &[HookPoint::Data, HookPoint::Delivery],
            Action::SetRcpt => &[HookPoint::Rcpt],
            Action::FileInto => &[HookPoint::Delivery],
        }
    }

    /// Whether this action is available at `point`.
    pub fn allowed_at(self, point: HookPoint) -> bool {
        self.points().contains(&point)
    }
}

/// Why an action was refused. The text (`Display`) is the reason without the action's name,
/// which each engine spells its own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionError {
    /// The action is not available at this hook point.
    NotHere(Action),
    /// Not a header field name (RFC 5322 §3.6.8).
    BadFieldName(String),
    /// More than [`MAX_HEADERS`] headers in one call.
    TooManyHeaders,
    /// Not an address.
    BadAddress(String),
    /// Not a folder name.
    BadFolder(String),
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionError::NotHere(a) => write!(f, "{a:?} is not available here"),
            ActionError::BadFieldName(n) => write!(f, "{n:?} is not a header field name"),
            ActionError::TooManyHeaders => write!(f, "at most {MAX_HEADERS} headers per call"),
            ActionError::BadAddress(a) => write!(f, "{a:?} is not an address"),
            ActionError::BadFolder(d) => write!(f, "{d:?} is not a folder name"),
        }
    }
}

fn here(action: Action, point: HookPoint) -> Result<(), ActionError> {
    if action.allowed_at(point) {
        Ok(())
    } else {
        Err(ActionError::NotHere(action))
    }
}

impl Actions {
    /// Add a header at `point`, on the actions of one call (the header limit counts per
    /// call). CR and LF in the value become spaces; the value is cut to
    /// [`MAX_HEADER_VALUE`].
    pub fn add_header(
        &mut self,
        point: HookPoint,
        name: &str,
        value: &str,
    ) -> Result<(), ActionError> {
        here(Action::AddHeader, point)?;
        if !valid_field_name(name) {
            return Err(ActionError::BadFieldName(name.to_string()));
        }
        if self.add_headers.len() >= MAX_HEADERS {
            return Err(ActionError::TooManyHeaders);
        }
        let value: String = value
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        self.add_headers
            .push((name.to_string(), cut(&value, MAX_HEADER_VALUE).to_string()));
        Ok(())
    }

    /// Replace the recipient at `point`; `<…>` around the address are dropped.
    pub fn set_rcpt(&mut self, point: HookPoint, address: &str) -> Result<(), ActionError> {
        here(Action::SetRcpt, point)?;
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        if address.is_empty() || address.len() > MAX_ADDRESS || !address.contains('@') {
            return Err(ActionError::BadAddress(address.to_string()));
        }
        self.set_rcpt = Some(address.to_string());
        Ok(())
    }

    /// File into `folder` at `point`; slashes around the name are dropped.
    pub fn file_into(&mut self, point: HookPoint, folder: &str) -> Result<(), ActionError> {
        here(Action::FileInto, point)?;
        let folder = folder.trim_matches('/');
        if folder.is_empty() || folder.len() > MAX_FOLDER || folder.chars().any(char::is_control) {
            return Err(ActionError::BadFolder(folder.to_string()));
        }
        self.file_into = Some(folder.to_string());
        Ok(())
    }

    /// Take on the actions of a later call that succeeded: its headers after ours, its
    /// recipient and folder instead of ours.
    pub fn merge(&mut self, later: Actions) {
        self.add_headers.extend(later.add_headers);
        if later.set_rcpt.is_some() {
            self.set_rcpt = later.set_rcpt;
        }
        if later.file_into.is_some() {
            self.file_into = later.file_into;
        }
        self.edits.merge(later.edits);
        if later.spam.is_some() {
            self.spam = later.spam;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_check_the_code_and_clean_the_text() {
        assert_eq!(
            Verdict::reject(554, "5.7.1 no\r\nthanks").unwrap(),
            Verdict::Reject {
                code: 554,
                enhanced: Some(Enhanced::known("5.7.1")),
                text: "no  thanks".into()
            }
        );
        assert_eq!(
            Verdict::tempfail(451, "busy").unwrap(),
            Verdict::Tempfail {
                code: 451,
                enhanced: None,
                text: "busy".into()
            }
        );
        let e = Verdict::reject(450, "x").unwrap_err();
        assert_eq!(e.to_string(), "code 450 is not in 500..599");
        assert!(Verdict::tempfail(70_000, "x").is_err());
        let long = "é".repeat(300);
        let Verdict::Quarantine(r) = Verdict::quarantine(&long) else {
            unreachable!()
        };
        assert_eq!(r.len(), MAX_REPLY_TEXT);
    }

    #[test]
    fn enhanced_codes_split_off_and_join_again() {
        for text in [
            "5.7.1 Blocked here",
            "5.7.1",
            "Blocked 5.7.1",
            "5.7 x",
            "5..1 x",
        ] {
            let (e, rest) = split_enhanced(text.to_string());
            assert_eq!(wording(e.as_ref(), &rest), text);
        }
        assert_eq!(Enhanced::parse("5.7.1").unwrap().as_str(), "5.7.1");
        assert!(Enhanced::parse("5.7.a").is_none());
        let v = Verdict::reject(550, "5.7.1 no").unwrap();
        assert_eq!(v.describe(), "reject 550 5.7.1 no");
        assert_eq!(v.decision(), r#"Reject { code: 550, text: "5.7.1 no" }"#);
    }

    #[test]
    fn actions_only_where_they_belong_and_within_limits() {
        let mut a = Actions::default();
        assert_eq!(
            a.add_header(HookPoint::Rcpt, "X-A", "1"),
            Err(ActionError::NotHere(Action::AddHeader))
        );
        assert_eq!(
            a.add_header(HookPoint::Data, "Bad Name", "1"),
            Err(ActionError::BadFieldName("Bad Name".into()))
        );
        for i in 0..MAX_HEADERS {
            a.add_header(HookPoint::Data, "X-A", &format!("{i}\r\n"))
                .unwrap();
        }
        assert_eq!(a.add_headers[0].1, "0  ");
        assert_eq!(
            a.add_header(HookPoint::Data, "X-A", "x"),
            Err(ActionError::TooManyHeaders)
        );
        a.set_rcpt(HookPoint::Rcpt, " <b@y> ").unwrap();
        assert_eq!(a.set_rcpt.as_deref(), Some("b@y"));
        assert!(a.set_rcpt(HookPoint::Rcpt, "nobody").is_err());
        assert!(a.set_rcpt(HookPoint::Data, "b@y").is_err());
        a.file_into(HookPoint::Delivery, "/Lists/x/").unwrap();
        assert_eq!(a.file_into.as_deref(), Some("Lists/x"));
        assert!(a.file_into(HookPoint::Delivery, "//").is_err());
        assert!(a.file_into(HookPoint::Rcpt, "x").is_err());
    }
}
