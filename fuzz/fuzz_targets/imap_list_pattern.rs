//! Any LIST pattern against any mailbox name: the wildcard matcher never panics (a pattern
//! starting with a multi-byte character once did) and agrees with a naive reference matcher
//! on short inputs (the reference is exponential, so it only runs on those).
#![no_main]
use corvus::imap::list::wildmatch;
use libfuzzer_sys::fuzz_target;

fn reference(p: &[u8], n: &[u8]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some(b'*') => (0..=n.len()).any(|i| reference(&p[1..], &n[i..])),
        Some(b'%') => (0..=n.len())
            .take_while(|&i| i == 0 || n[i - 1] != b'/')
            .any(|i| reference(&p[1..], &n[i..])),
        Some(&c) => n.first() == Some(&c) && reference(&p[1..], &n[1..]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (p, n) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (p, n) = (String::from_utf8_lossy(p), String::from_utf8_lossy(n));
    let got = wildmatch(&p, &n);
    // The reference backtracks (exponential in the wildcards), so only on small inputs.
    if p.len() <= 8 && n.len() <= 16 && n != "INBOX" {
        assert_eq!(got, reference(p.as_bytes(), n.as_bytes()), "{p:?} vs {n:?}");
    }
});
