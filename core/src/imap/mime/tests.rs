//! MIME tests: structures, envelopes, sections and decoding of hand-written messages.

use super::*;

#[test]
fn binary_parts_with_nul_become_base64_and_decode_to_the_same_bytes() {
    let payload: Vec<u8> = (0u8..=255).collect();
    let mut msg = b"Subject: b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nplain\r\n--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding:\r\n binary\r\n\r\n".to_vec();
    msg.extend_from_slice(&payload);
    msg.extend_from_slice(b"\r\n--zz--\r\n");
    let out = without_nul(&msg).unwrap();
    assert!(!out.contains(&0));
    let root = parse_message(&out);
    assert!(matches!(binary(&out, &root, &[2]), Ok(ref b) if *b == payload));
    assert!(matches!(binary(&out, &root, &[1]), Ok(ref b) if b == b"plain"));
    assert!(!String::from_utf8_lossy(&out).contains("binary"));
    // A single-part message, and a NUL in a header, which nothing can carry.
    let mut single = b"Content-Transfer-Encoding: binary\r\n\r\n".to_vec();
    single.extend_from_slice(&payload);
    let out = without_nul(&single).unwrap();
    assert!(matches!(binary(&out, &parse_message(&out), &[]), Ok(ref b) if *b == payload));
    assert_eq!(without_nul(b"Subject: a\0b\r\n\r\nbody\r\n"), None);
}

/// Found by the CI fuzz run (imap_mime): a ';' before a group's ':' panicked ENVELOPE.
#[test]
fn a_semicolon_before_the_group_colon_does_not_panic() {
    let a = parse_address_list(b"a;b:c");
    assert_eq!(
        a.first().and_then(|x| x.mailbox.clone()),
        Some(b"a b".to_vec())
    );
    let crash = b"k:\x02\nCC:J\xf1;k:\nCC:J\xf1\x01\x00k:\x02\nC\xb9:J\x00\x00\xf1k";
    let root = parse_message(crash);
    let mut out = Vec::new();
    envelope(crash, &root, &mut out);
}

#[test]
fn quoted_printable_soft_breaks_and_padding() {
    assert_eq!(decode_qp(b"soft=\r\nbreak"), b"softbreak");
    assert_eq!(decode_qp(b"soft=  \r\nbreak"), b"softbreak");
    assert_eq!(decode_qp(b"pad   \r\nnext\t\r\n"), b"pad\r\nnext\r\n");
    assert_eq!(decode_qp(b"caf=C3=A9=\r\n"), "café".as_bytes());
    assert_eq!(decode_qp(b"hard=0D=0A\r\nend="), b"hard\r\n\r\nend");
    assert_eq!(decode_qp(b"a = b"), b"a = b");
}

#[test]
fn addresses_and_groups() {
    let a = parse_address_list(
        b"\"Alice, A.\" <alice@example.com>, bob@example.net (Bob), undisclosed:;",
    );
    assert_eq!(a.len(), 4);
    assert_eq!(a[0].name.as_deref(), Some(&b"Alice, A."[..]));
    assert_eq!(a[1].name.as_deref(), Some(&b"Bob"[..]));
    assert_eq!(a[2].mailbox.as_deref(), Some(&b"undisclosed"[..]));
    assert_eq!(
        a[3],
        EnvAddr {
            name: None,
            adl: None,
            mailbox: None,
            host: None
        }
    );
    let r = parse_address_list(b"<@relay1.example,@relay2.example:joe@example.org>");
    assert_eq!(
        r[0].adl.as_deref(),
        Some(&b"@relay1.example,@relay2.example"[..])
    );
}

#[test]
fn rfc2231_join() {
    let ct = parse_content_type(
        b"application/x; title*0=\"part one,\"; title*1=\" part two\"; title*2*=%2C%20three",
    );
    assert_eq!(ct.param("title*"), Some("''part one, part two%2C%20three"));
}
