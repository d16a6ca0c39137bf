//! LIST pattern matching (RFC 9051 §6.3.9): `*` and `%` wildcards, INBOX case-insensitive.

/// IMAP LIST wildcard match: `*` matches anything, `%` anything but `/`.
///
/// Dynamic programming over (pattern position, name position), so the time is bounded by
/// their product whatever the pattern: a backtracking matcher takes exponential time on a
/// pattern like `*a*a*a*a*a*b` (a client-chosen LIST pattern could stall a worker thread).
pub fn wildmatch(pattern: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        // at[j]: the pattern so far matches n[..j].
        let mut at = vec![false; n.len() + 1];
        at[0] = true;
        let mut next = vec![false; n.len() + 1];
        for &c in p {
            match c {
                b'*' => {
                    let mut any = false;
                    for j in 0..=n.len() {
                        any |= at[j];
                        next[j] = any;
                    }
                }
                b'%' => {
                    let mut any = false;
                    for j in 0..=n.len() {
                        if j > 0 && n[j - 1] == b'/' {
                            any = false;
                        }
                        any |= at[j];
                        next[j] = any;
                    }
                }
                _ => {
                    next[0] = false;
                    for j in 1..=n.len() {
                        next[j] = at[j - 1] && n[j - 1] == c;
                    }
                }
            }
            std::mem::swap(&mut at, &mut next);
            if !at.contains(&true) {
                return false;
            }
        }
        at[n.len()]
    }
    // "INBOX" is case-insensitive, also as the start of a pattern. Compared as bytes: the
    // pattern may start with a multi-byte character (slicing the str there would panic).
    let p = pattern.as_bytes();
    if name == "INBOX" && p.len() >= 5 && p[..5].eq_ignore_ascii_case(b"INBOX") {
        let mut q = b"INBOX".to_vec();
        q.extend_from_slice(&p[5..]);
        return m(&q, name.as_bytes());
    }
    m(p, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_inbox() {
        assert!(wildmatch("*", "a/b"));
        assert!(!wildmatch("%", "a/b"));
        assert!(wildmatch("a/%", "a/b"));
        assert!(wildmatch("inbox", "INBOX"));
        assert!(wildmatch("inbox/%", "INBOX") == wildmatch("INBOX/%", "INBOX"));
        assert!(wildmatch("%/%", "a/b") && !wildmatch("%/%", "a/b/c") && wildmatch("%/*", "a/b/c"));
        assert!(wildmatch("a*%b", "axxb") && !wildmatch("a%b", "a/b") && wildmatch("a*b", "a/b"));
        assert!(
            wildmatch("", "") && !wildmatch("", "a") && wildmatch("**", "") && !wildmatch("x", "")
        );
        // A pattern starting with a multi-byte character (this panicked: the INBOX check
        // sliced the str at byte 5).
        assert!(!wildmatch(
            "\u{2024}\u{2024}/bob@example.org/INBOX",
            "INBOX"
        ));
        assert!(!wildmatch("INB\u{e9}", "INBOX"));
        // Many stars against a long name that almost matches: polynomial, not exponential
        // (this did not finish with the old backtracking matcher).
        let name = "a".repeat(250);
        assert!(!wildmatch(&format!("{}b", "*a".repeat(40)), &name));
        assert!(wildmatch(&format!("{}%", "%a".repeat(40)), &name));
        // UTF-8 names and patterns (a multi-byte character across byte 5 once panicked).
        assert!(wildmatch("Bücher*", "Bücher/2024"));
        assert!(wildmatch("日本語/%", "日本語/台北"));
        assert!(!wildmatch("日本語/%", "日本語/台北/x"));
    }
}
