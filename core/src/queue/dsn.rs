//! Delivery status notifications (RFC 3464 multipart/report, RFC 3461 parameters), built with
//! mail-builder.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};

use crate::store::{QueueEntry, QueueRcpt};

/// What happened to one recipient.
#[derive(Debug, Clone)]
pub struct RcptStatus {
    /// The recipient.
    pub rcpt: QueueRcpt,
    /// "failed" or "delayed".
    pub action: &'static str,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// Host that answered, if any.
    pub remote_mta: Option<String>,
    /// The remote reply or local reason.
    pub diagnostic: String,
}

/// Whether the sender asked to hear about this outcome (NOTIFY, RFC 3461 §4.1).
pub fn wants(rcpt: &QueueRcpt, action: &str) -> bool {
    if rcpt.notify.is_empty() {
        return action == "failed";
    }
    let want = if action == "failed" {
        "FAILURE"
    } else {
        "DELAY"
    };
    rcpt.notify.iter().any(|n| n == want)
}

/// Extract an enhanced status code from a reply text, or derive one from the reply code.
pub fn status_of(code: u16, text: &str) -> String {
    let first = text.split_whitespace().next().unwrap_or("");
    if first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        first.to_string()
    } else if code >= 500 {
        "5.0.0".into()
    } else {
        "4.0.0".into()
    }
}

/// Build the bounce for `entry` to its sender.
pub fn build(
    hostname: &str,
    entry: &QueueEntry,
    statuses: &[RcptStatus],
    original: &[u8],
) -> Vec<u8> {
    let failed = statuses.iter().any(|s| s.action == "failed");
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else {
        "Delayed Mail (still being retried)"
    };
    let mut human = format!(
        "This is the mail system at host {hostname}.\r\n\r\n{}\r\n\r\n",
        if failed {
            "I'm sorry to have to inform you that your message could not be delivered to one or more recipients."
        } else {
            "Your message could not be delivered yet. The mail system will keep trying; you do not need to resend it."
        }
    );
    for s in statuses {
        human.push_str(&format!("<{}>: {}\r\n", s.rcpt.address, s.diagnostic));
    }
    let arrival = chrono::DateTime::from_timestamp(entry.created, 0)
        .unwrap_or_default()
        .to_rfc2822();
    let mut status = format!("Reporting-MTA: dns; {hostname}\r\n");
    // Checked at MAIL/RCPT (RFC 3461: printable US-ASCII); entries queued before that check
    // still cannot break a field: control characters become spaces.
    let field = |v: &str| v.replace(|c: char| c.is_control(), " ");
    if let Some(envid) = &entry.envid {
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", field(envid)));
    }
    status.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for s in statuses {
        status.push_str("\r\n");
        if let Some(o) = &s.rcpt.orcpt {
            status.push_str(&format!("Original-Recipient: {}\r\n", field(o)));
        }
        status.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            s.rcpt.address, s.action, s.status
        ));
        if let Some(m) = &s.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {m}\r\n"));
        }
        let diag: String = s
            .diagnostic
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        status.push_str(&format!("Diagnostic-Code: smtp; {diag}\r\n"));
        status.push_str(&format!(
            "Last-Attempt-Date: {}\r\n",
            chrono::Utc::now().to_rfc2822()
        ));
    }
    // A REQUIRETLS message comes back without its body (RFC 8689 §4.3: the return path
    // may not be as safe as the message asked).
    let headers_only = entry.ret.as_deref() == Some("HDRS") || entry.requiretls;
    let returned = if headers_only {
        let end = crate::message::header_end(original);
        MimePart::raw(BodyPart::Text(
            format!(
                "Content-Type: text/rfc822-headers\r\n\r\n{}",
                String::from_utf8_lossy(&original[..end])
            )
            .into(),
        ))
    } else {
        let mut raw =
            b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n".to_vec();
        raw.extend_from_slice(original);
        MimePart::raw(BodyPart::Binary(raw.into()))
    };
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        BodyPart::Multipart(vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "utf-8"),
                BodyPart::Text(human.into()),
            ),
            MimePart::raw(BodyPart::Text(
                format!("Content-Type: message/delivery-status\r\n\r\n{status}").into(),
            )),
            returned,
        ]),
    );
    MessageBuilder::new()
        .from((
            "Mail Delivery System",
            format!("MAILER-DAEMON@{hostname}").as_str(),
        ))
        .to(entry.mail_from.as_str())
        .subject(subject)
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .message_id(format!("dsn.{}@{hostname}", entry.id.to_lowercase()).as_str())
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}
