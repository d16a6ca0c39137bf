//! Table tests for the milter codec. Expected bytes are written by hand from the protocol
//! description (length, command byte, data), never produced by the encoder itself.

use super::*;

fn encoded(cmd: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    cmd.encode(&mut out)
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

/// Feeds `input` whole and collects replies until the input is used up or an error.
fn decode_all(dec: &mut Decoder, mut input: &[u8]) -> Result<Vec<Reply>, Error> {
    let mut out = Vec::new();
    while let Some(reply) = dec.decode(&mut input)? {
        out.push(reply);
    }
    assert!(input.is_empty());
    Ok(out)
}

/// Everything the decoder makes of `input` fed in pieces of the given sizes (cycled): the
/// replies in order, and the error that ended the stream, if any.
fn decode_in_pieces(input: &[u8], sizes: &[usize]) -> (Vec<Reply>, Option<Error>) {
    let mut dec = Decoder::new();
    let mut replies = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        i += 1;
        let (mut piece, after) = rest.split_at(n);
        rest = after;
        loop {
            match dec.decode(&mut piece) {
                Ok(Some(r)) => replies.push(r),
                Ok(None) => break,
                Err(e) => {
                    // Poisoned: the same error again, whatever comes next.
                    assert_eq!(dec.decode(&mut &b"\0\0\0\x01c"[..]), Err(e.clone()));
                    return (replies, Some(e));
                }
            }
        }
        assert!(piece.is_empty());
    }
    (replies, None)
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn commands_encode_to_exact_bytes() {
    let cases: &[(Command, &[u8])] = &[
        (
            Command::OptNeg {
                version: 6,
                actions: 0x1FF,
                protocol: 0x1F_FFFF,
            },
            b"\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\x1f\xff\xff",
        ),
        (
            Command::Macro {
                stage: Stage::Connect,
                pairs: vec![(s("j"), s("mx.example")), (s("{daemon_name}"), s("mx"))],
            },
            b"\0\0\0\x20DCj\0mx.example\0{daemon_name}\0mx\0",
        ),
        (
            Command::Macro {
                stage: Stage::Body,
                pairs: vec![],
            },
            b"\0\0\0\x02DB",
        ),
        (
            Command::Macro {
                stage: Stage::EndOfBody,
                pairs: vec![(s("i"), s("4AbC"))],
            },
            b"\0\0\0\x09DEi\x004AbC\0",
        ),
        (
            Command::Connect {
                hostname: s("client.example"),
                address: ConnectAddress::Inet {
                    port: 4242,
                    addr: Ipv4Addr::new(192, 0, 2, 1),
                },
            },
            b"\0\0\0\x1dCclient.example\x004\x10\x92192.0.2.1\0",
        ),
        (
            Command::Connect {
                hostname: s("[2001:db8::1]"),
                address: ConnectAddress::Inet6 {
                    port: 25,
                    addr: "2001:db8::1".parse().unwrap(),
                },
            },
            b"\0\0\0\x1eC[2001:db8::1]\x006\x00\x192001:db8::1\0",
        ),
        (
            Command::Connect {
                hostname: s("localhost"),
                address: ConnectAddress::Unix {
                    path: s("/run/sock"),
                },
            },
            b"\0\0\0\x18Clocalhost\0L\0\0/run/sock\0",
        ),
        (
            Command::Connect {
                hostname: s("unknown"),
                address: ConnectAddress::Unknown,
            },
            b"\0\0\0\x0aCunknown\0U",
        ),
        (Command::Helo(s("mx.example")), b"\0\0\0\x0cHmx.example\0"),
        (
            Command::Mail {
                sender: s("<a@b.example>"),
                params: vec![s("SIZE=100"), s("BODY=8BITMIME")],
            },
            b"\0\0\0\x26M<a@b.example>\0SIZE=100\0BODY=8BITMIME\0",
        ),
        (
            Command::Mail {
                sender: s("<>"),
                params: vec![],
            },
            b"\0\0\0\x04M<>\0",
        ),
        (
            Command::Rcpt {
                rcpt: s("<c@d.example>"),
                params: vec![s("NOTIFY=NEVER")],
            },
            b"\0\0\0\x1cR<c@d.example>\0NOTIFY=NEVER\0",
        ),
        (Command::Data, b"\0\0\0\x01T"),
        (
            Command::Header {
                name: s("Subject"),
                value: b"Hello\n\tworld".to_vec(),
            },
            b"\0\0\0\x16LSubject\0Hello\n\tworld\0",
        ),
        (
            Command::Header {
                name: s("X-Raw"),
                value: b"caf\xe9".to_vec(),
            },
            b"\0\0\0\x0cLX-Raw\0caf\xe9\0",
        ),
        (Command::EndOfHeaders, b"\0\0\0\x01N"),
        (Command::Body(b"line\r\n".to_vec()), b"\0\0\0\x07Bline\r\n"),
        (Command::Body(Vec::new()), b"\0\0\0\x01B"),
        (Command::EndOfBody, b"\0\0\0\x01E"),
        (Command::Unknown(s("XFOO bar")), b"\0\0\0\x0aUXFOO bar\0"),
        (Command::Abort, b"\0\0\0\x01A"),
        (Command::Quit, b"\0\0\0\x01Q"),
        (Command::QuitNewConnection, b"\0\0\0\x01K"),
    ];
    for (cmd, want) in cases {
        assert_eq!(encoded(cmd), *want, "{cmd:?}");
    }
}

#[test]
fn commands_append_to_the_buffer() {
    let mut out = b"xy".to_vec();
    Command::Data.encode(&mut out).unwrap();
    Command::Quit.encode(&mut out).unwrap();
    assert_eq!(out, b"xy\0\0\0\x01T\0\0\0\x01Q");
}

#[test]
fn encode_errors_leave_the_buffer_alone() {
    let too_long = vec![b'a'; MAX_PACKET_LEN as usize];
    let cases: Vec<(Command, EncodeError)> = vec![
        (Command::Helo(s("a\0b")), EncodeError::InteriorNul("helo")),
        (
            Command::Connect {
                hostname: s("h\0"),
                address: ConnectAddress::Unknown,
            },
            EncodeError::InteriorNul("hostname"),
        ),
        (
            Command::Macro {
                stage: Stage::Mail,
                pairs: vec![(s("i"), s("x\0y"))],
            },
            EncodeError::InteriorNul("macro value"),
        ),
        (
            Command::Mail {
                sender: s("<a@b>"),
                params: vec![s("X=\0")],
            },
            EncodeError::InteriorNul("mail parameter"),
        ),
        (
            Command::Header {
                name: s("Subject"),
                value: b"a\0Bcc: x".to_vec(),
            },
            EncodeError::InteriorNul("header value"),
        ),
        (
            Command::Body(vec![b'x'; MAX_BODY_CHUNK + 1]),
            EncodeError::BodyChunkTooLong(MAX_BODY_CHUNK + 1),
        ),
        (
            Command::Header {
                name: s("X"),
                value: too_long,
            },
            // Command byte, "X\0", the value and its NUL.
            EncodeError::TooLong(1 + 2 + MAX_PACKET_LEN as usize + 1),
        ),
    ];
    for (cmd, want) in cases {
        let mut out = b"xy".to_vec();
        assert_eq!(cmd.encode(&mut out), Err(want), "{cmd:?}");
        assert_eq!(out, b"xy");
    }
}

#[test]
fn largest_body_chunk_encodes() {
    let out = encoded(&Command::Body(vec![b'x'; MAX_BODY_CHUNK]));
    assert_eq!(out[..5], *b"\0\x01\0\0B");
    assert_eq!(out.len(), 5 + MAX_BODY_CHUNK);
}

#[test]
fn body_is_split_into_chunks_of_at_most_65535() {
    let body = vec![b'x'; 2 * 65535 + 1];
    let lens: Vec<usize> = body_chunks(&body).map(<[u8]>::len).collect();
    assert_eq!(lens, [65535, 65535, 1]);
    assert_eq!(body_chunks(&[]).count(), 0);
    assert_eq!(body_chunks(&[b'x'; 65535]).count(), 1);
}

/// Every reply kind, as a milter puts it on the wire.
fn reply_cases() -> Vec<(&'static [u8], Reply)> {
    let cases: &[(&'static [u8], Reply)] = &[
        (
            b"\0\0\0\x0dO\0\0\0\x06\0\0\0\x11\0\x10\0\x80",
            Reply::OptNeg {
                version: 6,
                actions: 0x11,
                protocol: 0x10_0080,
                macro_lists: vec![],
            },
        ),
        (
            b"\0\0\0\x21O\0\0\0\x06\0\0\x01\xff\0\0\0\0\0\0\0\0j {client_addr}\0",
            Reply::OptNeg {
                version: 6,
                actions: 0x1FF,
                protocol: 0,
                macro_lists: vec![(0, s("j {client_addr}"))],
            },
        ),
        (b"\0\0\0\x01c", Reply::Continue),
        (b"\0\0\0\x01a", Reply::Accept),
        (b"\0\0\0\x01r", Reply::Reject),
        (b"\0\0\0\x01t", Reply::TempFail),
        (b"\0\0\0\x01d", Reply::Discard),
        (b"\0\0\0\x01p", Reply::Progress),
        (b"\0\0\0\x01s", Reply::Skip),
        (b"\0\0\0\x014", Reply::Shutdown),
        (b"\0\0\0\x01f", Reply::ConnFail),
        (
            b"\0\0\0\x10y550 5.7.1 Spam\0",
            Reply::ReplyCode {
                code: 550,
                text: s("550 5.7.1 Spam"),
            },
        ),
        (
            b"\0\0\0\x1ay451-4.7.1 a\r\n451 4.7.1 b\0",
            Reply::ReplyCode {
                code: 451,
                text: s("451-4.7.1 a\r\n451 4.7.1 b"),
            },
        ),
        (
            b"\0\0\0\x11y554 5.7.1 100%%\0",
            Reply::ReplyCode {
                code: 554,
                text: s("554 5.7.1 100%%"),
            },
        ),
        (b"\0\0\0\x06qspam\0", Reply::Quarantine(s("spam"))),
        (
            b"\0\0\0\x0chX-Spam\0yes\0",
            Reply::AddHeader {
                name: s("X-Spam"),
                value: b"yes".to_vec(),
            },
        ),
        (
            b"\0\0\0\x18i\0\0\0\0DKIM-Signature\0v=1\0",
            Reply::InsHeader {
                index: 0,
                name: s("DKIM-Signature"),
                value: b"v=1".to_vec(),
            },
        ),
        (
            b"\0\0\0\x0em\0\0\0\x02Subject\0\0",
            Reply::ChgHeader {
                index: 2,
                name: s("Subject"),
                value: Vec::new(),
            },
        ),
        (
            b"\0\0\0\x11e<new@x.example>\0",
            Reply::ChgFrom {
                sender: s("<new@x.example>"),
                args: None,
            },
        ),
        (
            b"\0\0\0\x18e<new@x.example>\0SIZE=1\0",
            Reply::ChgFrom {
                sender: s("<new@x.example>"),
                args: Some(s("SIZE=1")),
            },
        ),
        (
            b"\0\0\0\x0f+<r@x.example>\0",
            Reply::AddRcpt {
                rcpt: s("<r@x.example>"),
                args: None,
            },
        ),
        (
            b"\0\0\0\x1c2<r@x.example>\0NOTIFY=NEVER\0",
            Reply::AddRcpt {
                rcpt: s("<r@x.example>"),
                args: Some(s("NOTIFY=NEVER")),
            },
        ),
        (
            b"\0\0\0\x0f2<r@x.example>\0",
            Reply::AddRcpt {
                rcpt: s("<r@x.example>"),
                args: Some(String::new()),
            },
        ),
        (
            b"\0\0\0\x0f-<c@d.example>\0",
            Reply::DelRcpt(s("<c@d.example>")),
        ),
        (
            b"\0\0\0\x0bbnew body\r\n",
            Reply::ReplBody(b"new body\r\n".to_vec()),
        ),
        (b"\0\0\0\x01b", Reply::ReplBody(Vec::new())),
    ];
    cases.to_vec()
}

#[test]
fn replies_decode_from_exact_bytes() {
    for (bytes, want) in reply_cases() {
        let mut dec = Decoder::new();
        assert_eq!(
            decode_all(&mut dec, bytes),
            Ok(vec![want.clone()]),
            "{bytes:?}"
        );
        assert!(!dec.is_mid_packet());
        assert_eq!(dec.finish(), Ok(()));
        // The reply byte, as the session layer sees it.
        assert_eq!(want.code(), bytes[4], "{want:?}");
    }
}

#[test]
fn every_split_decodes_the_same() {
    for (bytes, want) in reply_cases() {
        for cut in 0..=bytes.len() {
            let mut dec = Decoder::new();
            let mut got = decode_all(&mut dec, &bytes[..cut]).unwrap();
            assert_eq!(
                dec.is_mid_packet(),
                cut > 0 && cut < bytes.len(),
                "{bytes:?}"
            );
            got.extend(decode_all(&mut dec, &bytes[cut..]).unwrap());
            assert_eq!(got, vec![want.clone()], "{bytes:?} cut at {cut}");
        }
        // One byte at a time.
        assert_eq!(decode_in_pieces(bytes, &[1]), (vec![want], None));
    }
}

#[test]
fn replies_back_to_back_in_one_buffer() {
    // A header edit and the final decision, as a milter answers end of body.
    let mut dec = Decoder::new();
    let mut input: &[u8] = b"\0\0\0\x0chX-Spam\0yes\0\0\0\0\x01c";
    let first = dec.decode(&mut input).unwrap();
    assert_eq!(
        first,
        Some(Reply::AddHeader {
            name: s("X-Spam"),
            value: b"yes".to_vec()
        })
    );
    // The decoder stopped right after the first packet.
    assert_eq!(input, b"\0\0\0\x01c");
    assert_eq!(dec.decode(&mut input), Ok(Some(Reply::Continue)));
    assert_eq!(dec.decode(&mut input), Ok(None));

    // All cases in one stream, fed in awkward pieces.
    let stream: Vec<u8> = reply_cases().iter().flat_map(|(b, _)| b.to_vec()).collect();
    let want: Vec<Reply> = reply_cases().into_iter().map(|(_, r)| r).collect();
    let piece_sizes: [&[usize]; 7] = [
        &[1],
        &[2],
        &[3, 7],
        &[5],
        &[4, 1, 9],
        &[64],
        &[stream.len()],
    ];
    for sizes in piece_sizes {
        assert_eq!(
            decode_in_pieces(&stream, sizes),
            (want.clone(), None),
            "{sizes:?}"
        );
    }
}

#[test]
fn malformed_replies_are_errors() {
    let bad = |t: &str| Error::BadReplyCode(s(t));
    let cases: &[(&[u8], Error)] = &[
        (b"\0\0\0\0", Error::ZeroLength),
        (
            b"\x80\0\0\0c",
            Error::TooLong {
                len: 0x8000_0000,
                max: MAX_PACKET_LEN,
            },
        ),
        (
            b"\xff\xff\xff\xff",
            Error::TooLong {
                len: u32::MAX,
                max: MAX_PACKET_LEN,
            },
        ),
        (
            // One byte over the cap (1 MiB + 1 KiB = 0x100400).
            b"\0\x10\x04\x01",
            Error::TooLong {
                len: 0x10_0401,
                max: MAX_PACKET_LEN,
            },
        ),
        (b"\0\0\0\x01z", Error::UnknownReply('z')),
        (b"\0\0\0\x01l", Error::UnknownReply('l')),
        (b"\0\0\0\x01\0", Error::UnknownReply('\0')),
        (
            b"\0\0\0\x02cx",
            Error::TrailingData {
                reply: 'c',
                extra: 1,
            },
        ),
        (
            b"\0\0\0\x03a\0\0",
            Error::TrailingData {
                reply: 'a',
                extra: 2,
            },
        ),
        (b"\0\0\0\x05qspam", Error::MissingNul('q')),
        (b"\0\0\0\x0bhX-Spam\0yes", Error::MissingNul('h')),
        (b"\0\0\0\x01h", Error::MissingNul('h')),
        (b"\0\0\0\x06h\0yes\0", Error::EmptyHeaderName('h')),
        (b"\0\0\0\x0ai\0\0\0\x01\0v=1\0", Error::EmptyHeaderName('i')),
        (b"\0\0\0\x03i\0\0", Error::ShortInteger('i')),
        (b"\0\0\0\x01m", Error::ShortInteger('m')),
        (b"\0\0\0\x09m\0\0\0\x01Subj", Error::MissingNul('m')),
        (b"\0\0\0\x09O\0\0\0\x06\0\0\0\0", Error::ShortInteger('O')),
        (
            // The three integers, then two stray bytes where a macro list index belongs.
            b"\0\0\0\x0fO\0\0\0\x06\0\0\0\0\0\0\0\0\0\0",
            Error::ShortInteger('O'),
        ),
        (
            b"\0\0\0\x12O\0\0\0\x06\0\0\0\0\0\0\0\0\0\0\0\x01j",
            Error::MissingNul('O'),
        ),
        (
            b"\0\0\0\x06+<a>\0x",
            Error::TrailingData {
                reply: '+',
                extra: 1,
            },
        ),
        (
            b"\0\0\0\x08e<a>\0A\0B",
            Error::TrailingData {
                reply: 'e',
                extra: 1,
            },
        ),
        (b"\0\0\0\x04-<a>", Error::MissingNul('-')),
        (b"\0\0\0\x05-<\xc3>\0", Error::NotUtf8('-')),
        (b"\0\0\0\x0ay550 5.7.1", Error::MissingNul('y')),
        (b"\0\0\0\x07y550 \xff\0", Error::NotUtf8('y')),
        (b"\0\0\0\x10y250 2.0.0 Okay\0", bad("250 2.0.0 Okay")),
        (b"\0\0\0\x0ay55x text\0", bad("55x text")),
        (b"\0\0\0\x05y550\0", bad("550")),
        (b"\0\0\0\x02y\0", bad("")),
        (b"\0\0\0\x0dy550-5.7.1 a\0", bad("550-5.7.1 a")),
        (b"\0\0\0\x0dy550 4.7.1 x\0", bad("550 4.7.1 x")),
        (b"\0\0\0\x09y550 a\nb\0", bad("550 a\nb")),
        (b"\0\0\0\x09y550 a\rb\0", bad("550 a\rb")),
        (b"\0\0\0\x0ey550-a\r\n551 b\0", bad("550-a\r\n551 b")),
        (b"\0\0\0\x0ey550 a\r\n550 b\0", bad("550 a\r\n550 b")),
        (b"\0\0\0\x09y550 a\r\n\0", bad("550 a\r\n")),
        (b"\0\0\0\x0ay 550 abc\0", bad(" 550 abc")),
        (
            b"\0\0\0\x08y550 a\0\0",
            Error::TrailingData {
                reply: 'y',
                extra: 1,
            },
        ),
    ];
    for (bytes, want) in cases.iter().cloned() {
        let mut dec = Decoder::new();
        assert_eq!(decode_all(&mut dec, bytes), Err(want.clone()), "{bytes:?}");
        // The decoder stays failed: the stream is out of step.
        assert_eq!(dec.decode(&mut &b"\0\0\0\x01c"[..]), Err(want.clone()));
        assert_eq!(dec.finish(), Err(want.clone()));
        // The same error however the bytes arrive.
        for cut in 0..=bytes.len() {
            let (replies, err) = decode_in_pieces(bytes, &[cut.max(1), 1]);
            assert_eq!(
                (replies, err),
                (vec![], Some(want.clone())),
                "{bytes:?} {cut}"
            );
        }
    }
}

#[test]
fn huge_length_is_refused_without_allocating() {
    let mut dec = Decoder::new();
    let mut input: &[u8] = b"\x80\0\0\0bbbbbbbbbb";
    assert_eq!(
        dec.decode(&mut input),
        Err(Error::TooLong {
            len: 1 << 31,
            max: MAX_PACKET_LEN
        })
    );
    // Nothing past the length field was taken, and nothing was reserved for the packet.
    assert_eq!(input, b"bbbbbbbbbb");
    assert_eq!(dec.packet.capacity(), 0);
}

#[test]
fn buffering_grows_with_the_data_not_the_length_field() {
    // A packet at the cap announced, ten bytes of it sent: we hold ten bytes, not a MiB.
    let mut dec = Decoder::new();
    let mut input: &[u8] = b"\0\x10\x04\0bxxxxxxxxx";
    assert_eq!(dec.decode(&mut input), Ok(None));
    assert!(input.is_empty());
    assert!(dec.is_mid_packet());
    assert!(dec.packet.capacity() < 1024);
    assert_eq!(dec.finish(), Err(Error::Truncated));
}

#[test]
fn largest_packet_decodes_and_its_buffer_is_released() {
    let len = MAX_PACKET_LEN as usize;
    let mut bytes = (MAX_PACKET_LEN).to_be_bytes().to_vec();
    bytes.push(b'b');
    bytes.resize(4 + len, b'x');
    let mut dec = Decoder::new();
    let got = decode_all(&mut dec, &bytes).unwrap();
    assert_eq!(got, vec![Reply::ReplBody(vec![b'x'; len - 1])]);
    assert!(dec.packet.capacity() <= KEEP_CAPACITY);
}

#[test]
fn truncated_stream_is_reported_at_finish() {
    for prefix in [&b"\0"[..], b"\0\0\0", b"\0\0\0\x06", b"\0\0\0\x06qspa"] {
        let mut dec = Decoder::new();
        assert_eq!(decode_all(&mut dec, prefix), Ok(vec![]));
        assert_eq!(dec.finish(), Err(Error::Truncated), "{prefix:?}");
    }
    assert_eq!(Decoder::new().finish(), Ok(()));
}

#[test]
fn random_bytes_never_panic_and_splits_agree() {
    // Fixed-seed LCG (Knuth's MMIX constants); the high bits are the usable ones.
    let mut state: u64 = 0x2024_0024;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    let codes = b"Ocartdypqs4fhime+2-blzK\0";
    let (mut replies, mut errors) = (0, 0);
    for _ in 0..20_000 {
        let mut input = Vec::new();
        // A few packets with plausible lengths and reply bytes, then random filler.
        for _ in 0..(next() % 4) {
            input.extend_from_slice(&(next() % 24).to_be_bytes());
            input.push(codes[next() as usize % codes.len()]);
            for _ in 0..(next() % 24) {
                input.push(match next() % 4 {
                    0 => 0,
                    1 => b'5',
                    2 => b' ',
                    _ => next() as u8,
                });
            }
        }
        for _ in 0..(next() % 8) {
            input.push(next() as u8);
        }
        let whole = decode_in_pieces(&input, &[input.len().max(1)]);
        let sizes = [1 + next() as usize % 7, 1 + next() as usize % 3];
        assert_eq!(decode_in_pieces(&input, &sizes), whole, "{input:?}");
        replies += whole.0.len();
        errors += usize::from(whole.1.is_some());
    }
    // The generator reaches both sides: streams that decode and streams that fail.
    assert!(
        replies > 500 && errors > 500,
        "{replies} replies, {errors} errors"
    );
}

#[test]
fn percent_unescaping_follows_postfix() {
    assert_eq!(unescape_percent("554 100%% spam"), "554 100% spam");
    assert_eq!(unescape_percent("554 a%b"), "554 ab");
    assert_eq!(unescape_percent("554 end%"), "554 end");
    assert_eq!(unescape_percent("554 plain"), "554 plain");
}

fn optneg(version: u32, actions: u32, protocol: u32) -> Reply {
    Reply::OptNeg {
        version,
        actions,
        protocol,
        macro_lists: vec![],
    }
}

#[test]
fn we_offer_version_6_all_actions_and_every_step_but_rcpt_rej() {
    let out = encoded(&Negotiation::CORVUS.command());
    assert_eq!(out, b"\0\0\0\x0dO\0\0\0\x06\0\0\x01\xff\0\x1f\xf7\xff");
    assert_eq!(Negotiation::default(), Negotiation::CORVUS);
}

#[test]
fn negotiation_refusals() {
    let ours = Negotiation::CORVUS;
    let cases: Vec<(Reply, NegotiationError)> = vec![
        (Reply::Continue, NegotiationError::NotOptNeg('c')),
        (
            Reply::AddRcpt {
                rcpt: s("<a>"),
                args: Some(s("")),
            },
            NegotiationError::NotOptNeg('2'),
        ),
        (optneg(0, 0, 0), NegotiationError::VersionTooOld(0)),
        (optneg(1, 0, 0), NegotiationError::VersionTooOld(1)),
        (
            optneg(7, 0, 0),
            NegotiationError::VersionTooNew { milter: 7, ours: 6 },
        ),
        (
            optneg(6, 0x200, 0),
            NegotiationError::ActionsNotOffered {
                wanted: 0x200,
                offered: 0x1FF,
            },
        ),
    ];
    for (reply, want) in cases {
        assert_eq!(ours.agree(&reply), Err(want), "{reply:?}");
    }
    // A narrower offer: a milter that wants to change the body is refused.
    let narrow = Negotiation {
        actions: SMFIF_ADDHDRS,
        ..Negotiation::CORVUS
    };
    assert_eq!(
        narrow.agree(&optneg(6, SMFIF_ADDHDRS | SMFIF_CHGBODY, 0)),
        Err(NegotiationError::ActionsNotOffered {
            wanted: 0x03,
            offered: 0x01
        })
    );
    // And one offering version 4 refuses a version 6 milter, as Postfix does.
    let v4 = Negotiation {
        version: 4,
        ..Negotiation::CORVUS
    };
    assert_eq!(
        v4.agree(&optneg(6, 0, 0)),
        Err(NegotiationError::VersionTooNew { milter: 6, ours: 4 })
    );
}

#[test]
fn negotiation_sends_and_replies() {
    use Stage::*;
    let ours = Negotiation::CORVUS;

    // A plain v6 milter that wants everything: every event, every reply.
    let all = ours.agree(&optneg(6, SMFIF_ALL, 0)).unwrap();
    for stage in Stage::ALL {
        assert!(all.sends(stage) && all.expects_reply(stage), "{stage:?}");
        assert_eq!(all.macros(stage), None);
    }
    assert!(all.allows(SMFIF_CHGBODY | SMFIF_QUARANTINE));
    assert!(!all.skip_allowed() && !all.leading_space() && !all.wants_rejected_rcpts());

    // Only header edits, no connect/helo events, no replies to headers or body chunks.
    let dkim = ours
        .agree(&optneg(
            6,
            SMFIF_ADDHDRS,
            SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NR_HDR | SMFIP_NR_BODY | SMFIP_SKIP,
        ))
        .unwrap();
    let table = [
        // stage, macros sent, event sent, reply expected
        (Connect, true, false, false),
        (Helo, true, false, false),
        (Mail, true, true, true),
        (Rcpt, true, true, true),
        (Data, true, true, true),
        (Header, true, true, false),
        (EndOfHeaders, true, true, true),
        (Body, true, true, false),
        (EndOfBody, true, true, true),
        (Unknown, true, true, true),
    ];
    for (stage, macros, sends, reply) in table {
        assert_eq!(dkim.sends_macros(stage), macros, "{stage:?}");
        assert_eq!(dkim.sends(stage), sends, "{stage:?}");
        assert_eq!(dkim.expects_reply(stage), reply, "{stage:?}");
    }
    assert!(dkim.allows(SMFIF_ADDHDRS));
    assert!(!dkim.allows(SMFIF_CHGHDRS));
    assert!(!dkim.allows(SMFIF_ADDHDRS | SMFIF_CHGHDRS));
    assert!(dkim.skip_allowed());

    // A version 2 milter gets neither DATA nor UNKNOWN (not even their macros); a version 3
    // one gets UNKNOWN but no DATA.
    let v2 = ours.agree(&optneg(2, 0, 0)).unwrap();
    assert!(!v2.sends_macros(Data) && !v2.sends(Data) && !v2.expects_reply(Data));
    assert!(!v2.sends(Unknown));
    assert!(v2.sends(Helo) && v2.sends(EndOfBody));
    let v3 = ours.agree(&optneg(3, 0, 0)).unwrap();
    assert!(v3.sends(Unknown) && !v3.sends(Data));
    let v4 = ours.agree(&optneg(4, 0, 0)).unwrap();
    assert!(v4.sends(Data));

    // End of body always gets a reply, whatever bits the milter sets.
    let everything = ours.agree(&optneg(6, 0, SMFIP_ALL)).unwrap();
    assert!(everything.sends(EndOfBody) && everything.expects_reply(EndOfBody));
    assert!(!everything.sends(Body) && !everything.expects_reply(Mail));
    // RCPT_REJ was not offered, so it does not count; HDR_LEADSPC does.
    assert!(!everything.wants_rejected_rcpts());
    assert!(everything.leading_space());
    assert_eq!(everything.protocol, SMFIP_ALL & !SMFIP_RCPT_REJ);

    // With RCPT_REJ offered it counts; without SKIP offered, SKIP does not.
    let other = Negotiation {
        protocol: SMFIP_RCPT_REJ,
        ..Negotiation::CORVUS
    };
    let agreed = other
        .agree(&optneg(6, 0, SMFIP_RCPT_REJ | SMFIP_SKIP))
        .unwrap();
    assert!(agreed.wants_rejected_rcpts() && !agreed.skip_allowed());

    // Bits above version 6 (libmilter's internal MDS_* sizes) are dropped.
    let mds = ours
        .agree(&optneg(6, 0, 0x3000_0000 | SMFIP_NR_HDR))
        .unwrap();
    assert_eq!(mds.protocol, SMFIP_NR_HDR);
}

#[test]
fn negotiated_macro_lists_replace_ours() {
    let reply = Reply::OptNeg {
        version: 6,
        actions: SMFIF_SETSYMLIST,
        protocol: 0,
        macro_lists: vec![
            (0, s("j {client_addr}")),
            (5, s("i,{mail_addr}  ")),
            (99, s("ignored")),
            (2, s("")),
        ],
    };
    let agreed = Negotiation::CORVUS.agree(&reply).unwrap();
    let names = |stage| agreed.macros(stage).map(<[String]>::to_vec);
    assert_eq!(
        names(Stage::Connect),
        Some(vec![s("j"), s("{client_addr}")])
    );
    // The end-of-message list goes with body chunks and end of body.
    let eom = Some(vec![s("i"), s("{mail_addr}")]);
    assert_eq!(names(Stage::EndOfBody), eom);
    assert_eq!(names(Stage::Body), eom);
    // Stages the milter left out, or listed empty, get nothing (as in Postfix).
    assert_eq!(names(Stage::Mail), Some(vec![]));
    assert_eq!(names(Stage::Helo), Some(vec![]));
    assert_eq!(names(Stage::Header), Some(vec![]));
}

#[test]
fn stage_tables() {
    let bytes: Vec<u8> = Stage::ALL.iter().map(|s| s.command()).collect();
    assert_eq!(bytes, b"CHMRTLNBEU");
    let no_send: u32 = Stage::ALL.iter().map(|s| s.no_send_bit()).sum();
    assert_eq!(no_send, SMFIP_NOSEND_MASK);
    let no_reply: u32 = Stage::ALL.iter().map(|s| s.no_reply_bit()).sum();
    assert_eq!(no_reply, SMFIP_NOREPLY_MASK);
    assert_eq!(SMFIP_NOSEND_MASK, 0x37F);
    assert_eq!(SMFIP_NOREPLY_MASK, 0xF_F080);
    let lists: Vec<Option<Stage>> = (0..8).map(Stage::from_macro_list_index).collect();
    assert_eq!(
        lists,
        [
            Some(Stage::Connect),
            Some(Stage::Helo),
            Some(Stage::Mail),
            Some(Stage::Rcpt),
            Some(Stage::Data),
            Some(Stage::EndOfBody),
            Some(Stage::EndOfHeaders),
            None,
        ]
    );
}
