//! Trace and origination fields Corvus adds to a message it accepts: `Received`
//! (RFC 5321 §4.4), and on submission a missing `Date` and `Message-ID` (RFC 6409 §8).
//! Pure functions of the session's facts; the session only gathers them.

use std::net::IpAddr;

use crate::dns::Fcrdns;
use crate::message::{format_field, has_header};

/// What a `Received` field records.
pub struct Trace<'a> {
    /// The HELO/EHLO argument.
    pub helo: &'a str,
    /// The reverse lookup of the client's address.
    pub fcrdns: &'a Fcrdns,
    /// The client's address.
    pub ip: IpAddr,
    /// Our host name.
    pub host: &'a str,
    /// The transaction used SMTPUTF8.
    pub smtputf8: bool,
    /// The client said EHLO.
    pub esmtp: bool,
    /// TLS version and cipher, when the connection is encrypted.
    pub tls: Option<&'a str>,
    /// The authenticated user.
    pub user: Option<&'a str>,
    /// The queue id.
    pub queue_id: &'a str,
    /// The recipient, when there is exactly one (more would disclose Bcc recipients).
    pub rcpt: Option<&'a str>,
    /// The date, RFC 5322 format.
    pub date: &'a str,
}

/// The `Received` field, CRLF-terminated and folded; control characters other than the
/// folding whitespace become spaces. `with` is the RFC 3848 protocol name (ESMTP, plus S
/// for TLS and A for authenticated; UTF8SMTP for SMTPUTF8 transactions).
pub fn received(t: &Trace) -> String {
    let helo = received_from(t.helo);
    let ptr = match t.fcrdns {
        Fcrdns::Pass(n) => n.clone(),
        Fcrdns::Mismatch(n) => format!("{n} (forward lookup mismatch)"),
        _ => "unknown".into(),
    };
    let mut proto = String::from(if t.smtputf8 {
        "UTF8SMTP"
    } else if t.esmtp {
        "ESMTP"
    } else {
        "SMTP"
    });
    if t.tls.is_some() {
        proto.push('S');
    }
    if t.user.is_some() {
        proto.push('A');
    }
    let mut h = format!(
        "Received: from {helo} ({ptr} [{}])\r\n\tby {} (Corvus) with {proto} id {}",
        t.ip, t.host, t.queue_id
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!("\r\n\t(using {tls})"));
    }
    if let Some(u) = t.user {
        h.push_str(&format!("\r\n\t(authenticated as {u})"));
    }
    if let Some(rcpt) = t.rcpt {
        h.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    h.push_str(&format!("; {}\r\n", t.date));
    h.chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' || !c.is_control() {
                c
            } else {
                ' '
            }
        })
        .collect()
}

/// The `from` part of a Received header for a HELO/EHLO argument: a domain or an address
/// literal as it is; anything else as `unknown (helo=…)` with `(`, `)` and `\` escaped
/// (RFC 5322 §3.2.2 quoted-pairs), so the client cannot close our comment and forge its own
/// "(name [address])".
fn received_from(helo: &str) -> String {
    let domain = |d: &str| {
        !d.is_empty()
            && d.len() <= 255
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    let literal = |d: &str| {
        d.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|ip| {
                ip.parse::<std::net::Ipv4Addr>().is_ok()
                    || ip.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("IPv6:"))
                        && ip[5..].parse::<std::net::Ipv6Addr>().is_ok()
            })
    };
    let helo = helo.trim_end_matches('.');
    if domain(helo) || literal(helo) {
        return helo.to_string();
    }
    let mut escaped = String::with_capacity(helo.len() + 8);
    for c in helo.chars() {
        if matches!(c, '(' | ')' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("unknown (helo={escaped})")
}

/// The `Date` and `Message-ID` fields a submitted message lacks (RFC 6409 §8 lets a
/// submission server add them), CRLF-terminated; empty when it has both.
pub fn submission_fields(
    message: &[u8],
    queue_id: &str,
    now: i64,
    host: &str,
    date: &str,
) -> String {
    let mut out = String::new();
    if !has_header(message, "Date") {
        out.push_str(&format_field("Date", date));
    }
    if !has_header(message, "Message-ID") {
        let mid = format!("<{}.{now}@{host}>", queue_id.to_lowercase());
        out.push_str(&format_field("Message-ID", &mid));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_from_cannot_forge_a_comment() {
        assert_eq!(received_from("mail.example.org"), "mail.example.org");
        assert_eq!(received_from("[192.0.2.1]"), "[192.0.2.1]");
        assert_eq!(received_from("[IPv6:2001:db8::1]"), "[IPv6:2001:db8::1]");
        assert_eq!(
            received_from("x (trusted.example [10.0.0.1])"),
            "unknown (helo=x \\(trusted.example [10.0.0.1]\\))"
        );
        assert_eq!(received_from("a\\)b"), "unknown (helo=a\\\\\\)b)");
        assert_eq!(received_from(""), "unknown (helo=)");
    }

    #[test]
    fn received_records_the_session() {
        let ptr = Fcrdns::Pass("client.example.net".into());
        let mut t = Trace {
            helo: "client.example.net",
            fcrdns: &ptr,
            ip: "192.0.2.7".parse().unwrap(),
            host: "mx.example.org",
            smtputf8: false,
            esmtp: true,
            tls: None,
            user: None,
            queue_id: "ABC",
            rcpt: Some("alice@example.org"),
            date: "Sun, 06 Dec 2026 12:00:00 +0000",
        };
        assert_eq!(
            received(&t),
            "Received: from client.example.net (client.example.net [192.0.2.7])\r\n\t\
             by mx.example.org (Corvus) with ESMTP id ABC\r\n\tfor <alice@example.org>; \
             Sun, 06 Dec 2026 12:00:00 +0000\r\n"
        );
        let mismatch = Fcrdns::Mismatch("liar.example".into());
        t.fcrdns = &mismatch;
        t.tls = Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384");
        t.user = Some("bob@example.org\u{7}");
        t.rcpt = None;
        let h = received(&t);
        assert!(
            h.contains("(liar.example (forward lookup mismatch) [192.0.2.7])"),
            "{h}"
        );
        assert!(h.contains("with ESMTPSA id ABC"), "{h}");
        assert!(
            h.contains("(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)"),
            "{h}"
        );
        assert!(
            h.contains("(authenticated as bob@example.org )"),
            "control characters go: {h}"
        );
        assert!(!h.contains("for <"), "{h}");
        t.smtputf8 = true;
        assert!(received(&t).contains("with UTF8SMTPSA id"));
    }

    #[test]
    fn submission_adds_only_missing_date_and_message_id() {
        let date = "Sun, 06 Dec 2026 12:00:00 +0000";
        let both = b"Date: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n";
        assert_eq!(submission_fields(both, "Q1", 5, "mx.example.org", date), "");
        let neither = b"Subject: hi\r\n\r\nbody\r\n";
        assert_eq!(
            submission_fields(neither, "AB12", 5, "mx.example.org", date),
            format!("Date: {date}\r\nMessage-ID: <ab12.5@mx.example.org>\r\n")
        );
        // A Date in the body is not a Date field.
        let body_only = b"Message-ID: <a@b>\r\n\r\nDate: no\r\n";
        assert!(submission_fields(body_only, "Q", 5, "h", date).starts_with("Date: "));
    }
}
