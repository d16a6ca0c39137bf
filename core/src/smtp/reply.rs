//! SMTP replies: one type, named constructors, one writer (RFC 5321 §4.2, RFC 3463 codes).

use std::fmt;

use crate::hooks::{Enhanced, Verdict};

/// A reply: code, RFC 3463 enhanced status code, and one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code.
    pub code: u16,
    /// Enhanced status code such as "2.1.0" (omitted on 220/221 greetings only when empty).
    pub enhanced: String,
    /// Text lines (at least one).
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: enhanced.into(),
            lines: vec![text.into()],
        }
    }

    /// Whether this is a 5xx reply.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Append the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            // Never let text (e.g. from a script) inject CR/LF into the reply stream.
            let clean: String = line
                .chars()
                .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                .collect();
            if self.enhanced.is_empty() {
                out.extend_from_slice(format!("{}{}{}\r\n", self.code, sep, clean).as_bytes());
            } else {
                out.extend_from_slice(
                    format!("{}{}{} {}\r\n", self.code, sep, self.enhanced, clean).as_bytes(),
                );
            }
        }
    }

    // Named replies used across the session.
    /// 250 2.0.0 OK
    pub fn ok() -> Self {
        Reply::new(250, "2.0.0", "OK")
    }
    /// 221 closing
    pub fn bye() -> Self {
        Reply::new(221, "2.0.0", "Bye")
    }
    /// 421 shutting down
    pub fn shutting_down(host: &str) -> Self {
        Reply::new(
            421,
            "4.3.2",
            format!("{host} Service shutting down, try again later"),
        )
    }
    /// 421 timeout
    pub fn timeout(host: &str) -> Self {
        Reply::new(421, "4.4.2", format!("{host} Timeout, closing connection"))
    }
    /// 503 bad sequence
    pub fn bad_sequence(text: &str) -> Self {
        Reply::new(503, "5.5.1", text)
    }
    /// 500 unrecognised command
    pub fn unrecognized() -> Self {
        Reply::new(500, "5.5.1", "Command not recognized")
    }
    /// 500 line too long
    pub fn line_too_long() -> Self {
        Reply::new(500, "5.5.6", "Line too long")
    }
    /// 550 unknown user
    pub fn mailbox_unavailable() -> Self {
        Reply::new(550, "5.1.1", "Mailbox unavailable: no such user here")
    }
    /// 554 relay denied
    pub fn relay_denied() -> Self {
        Reply::new(554, "5.7.1", "Relay access denied")
    }
    /// 530 auth required
    pub fn auth_required() -> Self {
        Reply::new(530, "5.7.0", "Authentication required")
    }
    /// 535 bad credentials
    pub fn auth_failed() -> Self {
        Reply::new(535, "5.7.8", "Authentication credentials invalid")
    }
    /// 552 too big
    pub fn too_big(limit: u64) -> Self {
        Reply::new(
            552,
            "5.3.4",
            format!("Message size exceeds fixed limit of {limit} bytes"),
        )
    }
    /// 451 local error
    pub fn local_error() -> Self {
        Reply::new(451, "4.3.0", "Local error in processing, try again later")
    }
}

impl Reply {
    /// The reply to a hook's refusal: the hook's code if it is in the refusal's class (else
    /// 550 / 451), its enhanced code or 5.7.1 / 4.7.1, its text.
    pub fn hook_refusal(
        code: u16,
        enhanced: Option<&Enhanced>,
        text: &str,
        permanent: bool,
    ) -> Reply {
        let (class, fallback, default_enhanced) = if permanent {
            (500..600, 550, "5.7.1")
        } else {
            (400..500, 451, "4.7.1")
        };
        let code = if class.contains(&code) {
            code
        } else {
            fallback
        };
        Reply::new(
            code,
            enhanced.map_or(default_enhanced, Enhanced::as_str),
            text,
        )
    }

    /// The reply to a refusing verdict (`Reject`, `Tempfail`); `None` for verdicts that let
    /// the command proceed.
    pub fn refusal(v: &Verdict) -> Option<Reply> {
        match v {
            Verdict::Reject {
                code,
                enhanced,
                text,
            } => Some(Reply::hook_refusal(*code, enhanced.as_ref(), text, true)),
            Verdict::Tempfail {
                code,
                enhanced,
                text,
            } => Some(Reply::hook_refusal(*code, enhanced.as_ref(), text, false)),
            _ => None,
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.code,
            self.enhanced,
            self.lines.join(" / ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_refusals_keep_their_codes_within_the_class() {
        let reply = |v: Verdict| Reply::refusal(&v).unwrap();
        assert_eq!(
            reply(Verdict::reject(554, "5.7.1 not you").unwrap()),
            Reply::new(554, "5.7.1", "not you")
        );
        assert_eq!(
            reply(Verdict::reject(550, "no").unwrap()),
            Reply::new(550, "5.7.1", "no")
        );
        assert_eq!(
            reply(Verdict::tempfail(450, "4.2.0 later").unwrap()),
            Reply::new(450, "4.2.0", "later")
        );
        let odd = Verdict::Tempfail {
            code: 200,
            enhanced: None,
            text: "busy".into(),
        };
        assert_eq!(reply(odd), Reply::new(451, "4.7.1", "busy"));
        assert_eq!(Reply::refusal(&Verdict::Accept), None);
    }

    #[test]
    fn multiline() {
        let r = Reply {
            code: 250,
            enhanced: String::new(),
            lines: vec!["a".into(), "b\r\nQUIT".into()],
        };
        let mut out = Vec::new();
        r.write_to(&mut out);
        assert_eq!(out, b"250-a\r\n250 b  QUIT\r\n");
    }
}
