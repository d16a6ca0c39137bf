//! Vacation replies (RFC 5230, RFC 3834): when not to answer, and the answer itself. The
//! once-per-`:days` memory is the store's key-value area (namespace `sieve-vacation`), so a
//! cluster answers a sender once, whichever node delivered.

use blake2::Digest;

use super::eval::{VacationReply, addresses_in};

/// Why no reply is sent to this message, or `None` when one may be (before the rate limit).
/// `user` is the recipient's account; `rcpt` the address the message was sent to.
pub fn refusal(
    message: &[u8],
    sender: &str,
    user: &str,
    rcpt: &str,
    reply: &VacationReply,
) -> Option<&'static str> {
    if sender.is_empty() {
        return Some("the sender is <> (RFC 5230 §4.6)");
    }
    let sender_l = sender.to_ascii_lowercase();
    let local = sender_l
        .rsplit_once('@')
        .map_or(sender_l.as_str(), |(l, _)| l);
    if local == "mailer-daemon"
        || local == "listserv"
        || local == "majordomo"
        || local.starts_with("owner-")
        || local.ends_with("-request")
        || local.starts_with("bounce")
        || local == "postmaster"
    {
        return Some("the sender is a list or mail system address");
    }
    let own: Vec<String> = std::iter::once(user.to_string())
        .chain(std::iter::once(rcpt.to_string()))
        .chain(reply.addresses.iter().cloned())
        .map(|a| a.to_ascii_lowercase())
        .collect();
    if own.contains(&sender_l) {
        return Some("the sender is the recipient");
    }
    let header = |n: &str| crate::message::header_values(message, n, false);
    if let Some(a) = header("Auto-Submitted").first()
        && !a.trim().to_ascii_lowercase().starts_with("no")
    {
        return Some("the message is automatic (Auto-Submitted, RFC 3834 §2)");
    }
    if let Some(p) = header("Precedence").first()
        && matches!(
            p.trim().to_ascii_lowercase().as_str(),
            "bulk" | "list" | "junk"
        )
    {
        return Some("the message is bulk, list or junk (Precedence)");
    }
    for h in [
        "List-Id",
        "List-Help",
        "List-Unsubscribe",
        "List-Subscribe",
        "List-Post",
        "List-Owner",
        "List-Archive",
    ] {
        if crate::message::has_header(message, h) {
            return Some("the message came from a mailing list (List-*)");
        }
    }
    if crate::message::has_header(message, "X-Auto-Response-Suppress") {
        let v = header("X-Auto-Response-Suppress")
            .join(",")
            .to_ascii_lowercase();
        if v.contains("all") || v.contains("oof") {
            return Some("the sender asked for no automatic replies");
        }
    }
    // RFC 5230 §4.5: only when one of the user's addresses is a recipient in the header.
    let named = ["To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc"]
        .iter()
        .flat_map(|h| header(h))
        .flat_map(|v| addresses_in(&v))
        .any(|a| {
            let a = a.to_ascii_lowercase();
            own.iter()
                .any(|o| *o == a || without_detail(o) == without_detail(&a))
        });
    if !named {
        return Some("none of the recipient's addresses is in To, Cc or Bcc (RFC 5230 §4.5)");
    }
    None
}

fn without_detail(a: &str) -> String {
    match a.rsplit_once('@') {
        Some((l, d)) => format!("{}@{d}", l.split_once('+').map_or(l, |(u, _)| u)),
        None => a.to_string(),
    }
}

/// The key remembering that `sender` got this reply (RFC 5230 §4.2: per handle; without
/// `:handle`, from the reply's text).
pub fn memory_key(user: &str, sender: &str, reply: &VacationReply) -> String {
    let handle = match &reply.handle {
        Some(h) => h.clone(),
        None => {
            let mut h = blake2::Blake2s256::new();
            for part in [
                reply.reason.as_str(),
                reply.subject.as_deref().unwrap_or(""),
                reply.from.as_deref().unwrap_or(""),
                if reply.mime { "mime" } else { "" },
            ] {
                h.update(part.as_bytes());
                h.update([0]);
            }
            h.finalize()[..12]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
    };
    format!(
        "{}\t{handle}\t{}",
        crate::store::normalize_address(user),
        sender.to_ascii_lowercase()
    )
}

/// Seconds to remember a reply: `:days` clamped to the configured range.
pub fn period(reply: &VacationReply, limits: &crate::config::SieveLimits) -> u64 {
    reply
        .days
        .unwrap_or(limits.vacation_days)
        .clamp(limits.vacation_min_days, limits.vacation_max_days)
        * 86_400
}

/// RFC 2047 encoded words for a header value that is not ASCII (a vacation reply goes to
/// any server, SMTPUTF8 or not): base64 UTF-8 words of at most 45 bytes each.
fn encode_words(s: &str) -> String {
    use base64::Engine as _;
    if s.is_ascii() {
        return s.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in s.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// The reply message (from `<>`, to `sender`).
pub fn build(
    message: &[u8],
    sender: &str,
    user: &str,
    hostname: &str,
    reply: &VacationReply,
) -> Vec<u8> {
    let original_subject = crate::message::header_values(message, "Subject", true)
        .into_iter()
        .next()
        .unwrap_or_default();
    let subject = match &reply.subject {
        Some(s) => one_line(s),
        None => format!("Auto: {}", one_line(&original_subject)),
    };
    // :from may name the user's own address (a display name, a +detail), never someone
    // else's: the reply leaves with this server's DKIM signature.
    let from = reply
        .from
        .as_deref()
        .map(one_line)
        .filter(|f| {
            f.is_ascii()
                && super::script::parse_one_address(f).is_some_and(|a| {
                    without_detail(&a.to_ascii_lowercase())
                        == without_detail(&user.to_ascii_lowercase())
                })
        })
        .unwrap_or_else(|| user.to_string());
    let mut out = String::new();
    out.push_str(&format!("Date: {}\r\n", crate::message::rfc5322_now()));
    out.push_str(&crate::message::format_field("From", &from));
    out.push_str(&crate::message::format_field("To", &format!("<{sender}>")));
    out.push_str(&crate::message::format_field(
        "Subject",
        &encode_words(&subject),
    ));
    out.push_str(&format!(
        "Message-ID: <{:016x}.{:08x}.vacation@{hostname}>\r\n",
        chrono::Utc::now().timestamp_millis(),
        rand::random::<u32>()
    ));
    if let Some(id) = crate::message::header_values(message, "Message-ID", true)
        .into_iter()
        .next()
    {
        let id = one_line(&id);
        out.push_str(&format!("In-Reply-To: {id}\r\n"));
        let refs = crate::message::header_values(message, "References", true)
            .into_iter()
            .next()
            .map(|r| one_line(&r));
        let refs = match refs {
            Some(r) if !r.is_empty() => format!("{r} {id}"),
            _ => id,
        };
        out.push_str(&crate::message::format_field("References", &refs));
    }
    out.push_str("Auto-Submitted: auto-replied (vacation)\r\n");
    out.push_str("Precedence: bulk\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    let mut bytes = out.into_bytes();
    if reply.mime {
        // :mime: the reason is a MIME entity; of its header only the Content-* fields
        // are kept, so it cannot add a second From, a Reply-To or a Bcc.
        let entity = reply.reason.replace("\r\n", "\n").replace('\n', "\r\n");
        let split = entity.find("\r\n\r\n").map(|i| i + 2);
        let (head, body) = match split {
            Some(i) if !entity.starts_with("\r\n") => (&entity[..i], &entity[i..]),
            _ => ("", entity.as_str()),
        };
        let mut keep = false;
        for line in head.split_inclusive("\r\n") {
            if !line.starts_with([' ', '\t']) {
                keep = line
                    .split_once(':')
                    .is_some_and(|(n, _)| n.trim().to_ascii_lowercase().starts_with("content-"));
            }
            if keep {
                bytes.extend_from_slice(line.as_bytes());
            }
        }
        if !body.starts_with("\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(body.as_bytes());
        if !body.ends_with("\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
    } else {
        let body = reply.reason.replace("\r\n", "\n").replace('\n', "\r\n");
        let ascii = body.is_ascii();
        bytes.extend_from_slice(
            format!(
                "Content-Type: text/plain; charset={}\r\nContent-Transfer-Encoding: {}\r\n\r\n",
                if ascii { "us-ascii" } else { "utf-8" },
                if ascii { "7bit" } else { "8bit" }
            )
            .as_bytes(),
        );
        bytes.extend_from_slice(body.as_bytes());
        if !body.ends_with("\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
    }
    bytes
}
