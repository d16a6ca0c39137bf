//! Log lines that a client cannot forge: every field value is written with its control
//! characters escaped (CR, LF, ESC, NUL, DEL, C1 …) and cut to [`MAX_VALUE`] characters.
//!
//! Usernames, HELO names, addresses and hook text come from the network. Written raw, one
//! failed AUTH with a CRLF in its username could add a complete, genuine-looking line to the
//! log ("… authenticated user=ceo@…"), and an ESC sequence could rewrite a terminal. The
//! plain format gets this from [`SafeFields`]; the JSON format escapes control characters
//! itself (RFC 8259 §7), and the protocols' line and literal limits bound its values.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Longest value written, in characters; the rest is replaced by a note of its length.
pub const MAX_VALUE: usize = 512;

/// Field formatter for the plain log format: `message key=value …`, values escaped and capped.
#[derive(Debug, Default, Clone, Copy)]
pub struct SafeFields;

impl<'w> FormatFields<'w> for SafeFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = SafeVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut v);
        v.result
    }
}

struct SafeVisitor<'w> {
    writer: Writer<'w>,
    result: fmt::Result,
    first: bool,
}

impl SafeVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // `log` crate records arrive with their metadata as fields; the line shows them.
        if name.starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", Escaped(value))
        } else {
            write!(self.writer, "{sep}{name}={}", Escaped(value))
        };
    }
}

impl Visit for SafeVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            // Quoted like the default formatter (`key="value"`).
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// A value with control characters escaped and its length capped.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (chars, c) in self.0.chars().enumerate() {
            if chars == MAX_VALUE {
                return write!(f, "…[{} bytes in all]", self.0.len());
            }
            if c.is_control() {
                match c {
                    '\r' => f.write_str("\\r")?,
                    '\n' => f.write_str("\\n")?,
                    '\t' => f.write_str("\\t")?,
                    c => write!(f, "\\u{{{:x}}}", c as u32)?,
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_values_capped() {
        assert_eq!(
            Escaped("a\r\nb\x1b[31m\0\x7f\u{85}é").to_string(),
            "a\\r\\nb\\u{1b}[31m\\u{0}\\u{7f}\\u{85}é"
        );
        let long = "x".repeat(10_000);
        let shown = Escaped(&long).to_string();
        assert!(shown.starts_with(&"x".repeat(MAX_VALUE)));
        assert!(shown.ends_with("…[10000 bytes in all]"), "{shown}");
        assert!(shown.len() < MAX_VALUE + 40);
    }

    #[test]
    fn a_forged_line_stays_on_its_own_line() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let b2 = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || b2.clone())
            .with_ansi(false)
            .fmt_fields(SafeFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let user = "x\r\n2026-01-01T00:00:00Z  INFO authenticated user=ceo@example.org";
            let span = tracing::info_span!("smtp", peer = %"1.2.3.4:5");
            let _g = span.enter();
            tracing::info!(user = %user, other = user, "authentication failed");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("user=x\\r\\n2026"), "{out}");
        assert!(out.contains("authentication failed"), "{out}");
    }
}
