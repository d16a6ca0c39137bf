//! Milter replies as the MTA reads them from the milter's socket: any bytes, in chunks whose
//! size comes from the input, to `hooks::milter::codec::Decoder`. The decoder never panics,
//! never takes more than it was given, gives the same replies and the same error however the
//! bytes are split, stays failed after an error, and never holds more than one packet
//! (at most `MAX_PACKET_LEN` bytes). Every `OPTNEG` reply also goes through `agree`.
#![no_main]
use corvus::hooks::milter::codec::{Decoder, Error, Negotiation, Reply};
use libfuzzer_sys::fuzz_target;

fn run(body: &[u8], step: usize) -> (Vec<Reply>, Option<Error>) {
    let mut dec = Decoder::new();
    let mut replies = Vec::new();
    for chunk in body.chunks(step) {
        let mut rest = chunk;
        loop {
            let before = rest.len();
            match dec.decode(&mut rest) {
                Ok(Some(reply)) => {
                    assert!(rest.len() < before);
                    if let Reply::OptNeg { .. } = reply {
                        let _ = Negotiation::CORVUS.agree(&reply);
                    }
                    replies.push(reply);
                }
                Ok(None) => {
                    assert!(rest.is_empty());
                    break;
                }
                Err(e) => {
                    assert_eq!(dec.decode(&mut &b"\0\0\0\x01c"[..]), Err(e.clone()));
                    return (replies, Some(e));
                }
            }
        }
    }
    (replies, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, body)) = data.split_first() else {
        return;
    };
    let step = (knob as usize % 32) + 1;
    let whole = run(body, body.len().max(1));
    assert_eq!(run(body, step), whole);
});
