//! SASL client responses, decoded without I/O: the one place SMTP AUTH, IMAP AUTHENTICATE
//! and POP3 AUTH turn a base64 line into credentials. PLAIN (RFC 4616) and the LOGIN
//! mechanism's two steps (draft-murchison-sasl-login); the protocols keep their own
//! challenges, cancellation (`*`) and replies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Why a response was refused (each protocol has its own reply for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// Not base64.
    Base64,
    /// Not the mechanism's shape (PLAIN: three fields separated by NUL).
    Malformed,
    /// A field is not UTF-8 (RFC 4616 §2: every field is UTF-8).
    NotUtf8,
}

impl std::fmt::Display for SaslError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SaslError::Base64 => "Invalid base64",
            SaslError::Malformed => "Malformed PLAIN response",
            SaslError::NotUtf8 => "SASL response is not UTF-8",
        })
    }
}

/// The bytes of a base64 response line; `=` is an empty response (RFC 4954 §4, RFC 9051
/// §6.2.2, RFC 5034 §4). Surrounding whitespace is ignored.
pub fn response(line: &str) -> Result<Vec<u8>, SaslError> {
    match line.trim() {
        "=" => Ok(Vec::new()),
        text => B64.decode(text).map_err(|_| SaslError::Base64),
    }
}

/// PLAIN credentials (RFC 4616 §2: `[authzid] NUL authcid NUL passwd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    /// The identity to act as; empty for "myself".
    pub authzid: String,
    /// The user name.
    pub authcid: String,
    /// The password.
    pub password: String,
}

impl Plain {
    /// Whether the client asks to act as someone else (a proxy login, which Corvus does not
    /// offer): an authzid that is not the authcid.
    pub fn proxies(&self) -> bool {
        !self.authzid.is_empty() && !self.authzid.eq_ignore_ascii_case(&self.authcid)
    }
}

/// Decode a PLAIN response line.
pub fn plain(line: &str) -> Result<Plain, SaslError> {
    let raw = response(line)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::NotUtf8);
    Ok(Plain {
        authzid: text(authzid)?,
        authcid: text(authcid)?,
        password: text(password)?,
    })
}

/// Decode one LOGIN step (the user name, then the password): base64 of UTF-8 text.
pub fn login_step(line: &str) -> Result<String, SaslError> {
    String::from_utf8(response(line)?).map_err(|_| SaslError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        B64.encode(s)
    }

    #[test]
    fn plain_responses() {
        let p = plain(&b64(b"\0alice@example.org\0s3cret")).unwrap();
        assert_eq!(
            (p.authzid.as_str(), p.authcid.as_str(), p.password.as_str()),
            ("", "alice@example.org", "s3cret")
        );
        assert!(!p.proxies());
        // Whitespace around the line is not part of it.
        assert_eq!(
            plain(&format!(" {} \r\n", b64(b"\0a\0b"))).unwrap().authcid,
            "a"
        );
        // The same identity twice is not a proxy login; another one is.
        assert!(!plain(&b64(b"Alice@x\0alice@x\0p")).unwrap().proxies());
        assert!(plain(&b64(b"bob@x\0alice@x\0p")).unwrap().proxies());
        // A password may contain anything but NUL, including spaces and non-ASCII.
        assert_eq!(plain(&b64("\0a\0p ä".as_bytes())).unwrap().password, "p ä");
    }

    #[test]
    fn bad_plain_responses() {
        assert_eq!(plain("not base64!"), Err(SaslError::Base64));
        assert_eq!(plain("="), Err(SaslError::Malformed)); // empty: no fields
        assert_eq!(plain(&b64(b"alice\0pw")), Err(SaslError::Malformed));
        assert_eq!(plain(&b64(b"\0a\0b\0c")), Err(SaslError::Malformed));
        assert_eq!(plain(&b64(b"\0a\0\xff")), Err(SaslError::NotUtf8));
    }

    #[test]
    fn login_steps_and_empty_responses() {
        assert_eq!(
            login_step(&b64(b"alice@example.org")).unwrap(),
            "alice@example.org"
        );
        assert_eq!(login_step("=").unwrap(), "");
        assert_eq!(response("=").unwrap(), b"");
        assert_eq!(login_step("%%%"), Err(SaslError::Base64));
        assert_eq!(login_step(&b64(b"\xc3")), Err(SaslError::NotUtf8));
    }
}
