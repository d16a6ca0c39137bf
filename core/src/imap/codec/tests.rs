//! Framing and parsing tests: commands as clients write them.

use super::*;

#[test]
fn framing_with_literals() {
    assert_eq!(frame(b"a NOOP\r\n", 0, 100, 100, 1000), Frame::Complete(8));
    assert_eq!(
        frame(b"a LOGIN {5}\r\n", 0, 100, 100, 1000),
        Frame::NeedMore { continuation: true }
    );
    assert_eq!(
        frame(b"a LOGIN {5}\r\n", 1, 100, 100, 1000),
        Frame::NeedMore {
            continuation: false
        }
    );
    assert_eq!(
        frame(b"a LOGIN {5+}\r\n", 0, 100, 100, 1000),
        Frame::NeedMore {
            continuation: false
        }
    );
    assert_eq!(
        frame(b"a LOGIN {5}\r\nalice {3}\r\npwd\r\n", 2, 100, 100, 1000),
        Frame::Complete(29)
    );
    assert!(matches!(
        frame(b"a APPEND x {999}\r\n", 0, 100, 100, 1000),
        Frame::LiteralTooBig {
            end: 18,
            nonsync: false,
            ..
        }
    ));
    // Too large in a later line: the whole command so far is to be dropped.
    assert_eq!(
        frame(b"b LOGIN {3}\r\nabc {999}\r\nc NOOP\r\n", 1, 100, 100, 1000),
        Frame::LiteralTooBig {
            tag: "b".into(),
            nonsync: false,
            end: 24
        }
    );
    assert_eq!(frame(&[b'x'; 200], 0, 100, 100, 1000), Frame::LineTooLong);
}

#[test]
fn unknown_list_options_are_bad() {
    for bad in [
        &b"a LIST (BOGUS) \"\" *\r\n"[..],
        b"a LIST (RECURSIVEMATCH) \"\" *\r\n",
        b"a LIST \"\" * RETURN (BOGUS)\r\n",
        b"a LIST (REMOTE RECURSIVEMATCH) \"\" *\r\n",
    ] {
        assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    for good in [
        &b"a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" *\r\n"[..],
        b"a LIST (REMOTE) \"\" * RETURN (CHILDREN SUBSCRIBED)\r\n",
        b"a LIST (SPECIAL-USE) \"\" * RETURN (SPECIAL-USE STATUS (MESSAGES))\r\n",
    ] {
        assert!(parse(good).is_ok(), "{:?}", String::from_utf8_lossy(good));
    }
}

#[test]
fn tilde_starts_an_atom_unless_a_literal8_follows() {
    let t = parse(b"a CREATE ~foo\r\n").unwrap();
    assert_eq!(t.command, Command::Create("~foo".into(), None));
    let t = parse(b"a SELECT ~\r\n").unwrap();
    assert!(matches!(t.command, Command::Select { ref mailbox, .. } if mailbox == "~"));
    let t = parse(b"a CREATE ~{3}\r\nabc\r\n").unwrap();
    assert_eq!(t.command, Command::Create("abc".into(), None));
}

#[test]
fn huge_literal_sizes_are_refused() {
    // Past u64 (it used to be no literal at all, and the parser's `p + n` overflowed).
    for line in [
        &b"c LOGIN {18446744073709551615}\r\n"[..],
        b"c LOGIN {99999999999999999999}\r\n",
        b"c LOGIN {99999999999999999999+}\r\n",
    ] {
        assert!(
            matches!(frame(line, 0, 100, 100, 1000), Frame::LiteralTooBig { .. }),
            "{line:?}"
        );
    }
    assert!(parse(b"c LOGIN {18446744073709551615}\r\nab\r\n").is_err());
    // The whole command is capped, chained literals included.
    let chained = b"a LOGIN {60}\r\n";
    assert!(matches!(
        frame(chained, 0, 100, 100, 50),
        Frame::LiteralTooBig { .. }
    ));
    let mut two = b"a LOGIN {40+}\r\n".to_vec();
    two.extend_from_slice(&[b'x'; 40]);
    two.extend_from_slice(b" {40+}\r\n");
    assert!(matches!(
        frame(&two, 0, 100, 100, 80),
        Frame::LiteralTooBig { nonsync: true, .. }
    ));
    assert!(matches!(
        frame(&two, 0, 100, 100, 200),
        Frame::NeedMore { .. }
    ));
}

#[test]
fn commands() {
    let t = parse(b"a1 LOGIN {5}\r\nalice \"p w\\\"d\"\r\n").unwrap();
    assert_eq!(t.command, Command::Login("alice".into(), "p w\"d".into()));
    let t = parse(b"A UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100>)\r\n")
        .unwrap();
    match t.command {
        Command::Fetch {
            uid: true, items, ..
        } => {
            assert_eq!(items.len(), 2);
            assert!(matches!(
                &items[1],
                FetchItem::Section {
                    peek: true,
                    partial: Some((0, 100)),
                    ..
                }
            ));
        }
        other => panic!("{other:?}"),
    }
    let t = parse(b"b SEARCH OR FROM alice NOT SEEN 1:5,7\r\n").unwrap();
    assert!(matches!(t.command, Command::Search { .. }));
    assert!(parse(b"c FETCH 1 (BOGUS)\r\n").is_err());
    assert_eq!(parse(b"\r\n").unwrap_err().tag, "*");
    let t = parse(b"d STORE 2:4 +FLAGS.SILENT (\\seen $Junk)\r\n").unwrap();
    assert_eq!(
        t.command,
        Command::Store {
            uid: false,
            set: SeqSet::Ranges(vec![(2, 4)]),
            mode: StoreMode::Add,
            silent: true,
            flags: vec!["\\Seen".into(), "$Junk".into()],
            unchanged_since: None
        }
    );
    let t = parse(b"e LIST \"\" \"*\" RETURN (SPECIAL-USE STATUS (MESSAGES))\r\n").unwrap();
    assert!(matches!(
        t.command,
        Command::List {
            status: Some(_),
            ..
        }
    ));
    let t =
        parse(b"f APPEND Drafts (\\Draft) \"05-Jan-2024 10:00:00 +0000\" {3+}\r\nabc\r\n").unwrap();
    let text = |data: &[u8], binary: bool| AppendPart::Text {
        data: data.to_vec(),
        binary,
    };
    assert!(matches!(t.command, Command::Append { ref messages, .. }
        if messages.len() == 1 && messages[0].parts == [text(b"abc", false)]));
    let t = parse(b"a APPEND INBOX (\\Seen) UTF8 (~{3}\r\nabc)\r\n").unwrap();
    assert!(matches!(t.command, Command::Append { ref messages, .. }
        if messages[0].utf8 && messages[0].parts == [text(b"abc", false)]));
    // MULTIAPPEND (RFC 3502 §6.3.11's example shape) and CATENATE (RFC 4469 §5).
    let t = parse(
        b"m APPEND saved-messages (\\Seen) {3+}\r\none (\\Seen) \"05-Jan-2024 10:00:00 +0000\" ~{3+}\r\ntwo {5+}\r\nthree\r\n",
    )
    .unwrap();
    let Command::Append { messages, .. } = t.command else {
        panic!("not an APPEND")
    };
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1].parts, [text(b"two", true)]);
    assert!(messages[1].date.is_some() && messages[2].flags.is_empty());
    let t = parse(
        b"c APPEND Drafts CATENATE (URL \"/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=HEADER\" TEXT {4+}\r\n\r\nhi URL \"/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=1.MIME\")\r\n",
    )
    .unwrap();
    let Command::Append { messages, .. } = t.command else {
        panic!("not an APPEND")
    };
    assert_eq!(messages[0].parts.len(), 3);
    assert_eq!(messages[0].parts[1], text(b"\r\nhi", false));
    assert!(parse(b"c APPEND Drafts CATENATE ()\r\n").is_err());
    assert!(parse(b"c APPEND Drafts CATENATE (BOGUS {1+}\r\nx)\r\n").is_err());
    assert!(parse(b"c APPEND Drafts\r\n").is_err());
    assert_eq!(
        parse_url_section("1.2.HEADER"),
        Some(Section {
            part: vec![1, 2],
            kind: SectionKind::Header
        })
    );
    assert_eq!(parse_url_section("1.BOGUS"), None);
    assert!(parse(b"a APPEND INBOX UTF8 ({3}\r\nabc)\r\n").is_err());
    assert!(parse(b"a APPEND INBOX UTF8 (~{3}\r\nabc\r\n").is_err());
    // CREATE-SPECIAL-USE takes attributes, which are not system flags.
    let t = parse(b"h CREATE \"Everything\" (USE (\\All))\r\n").unwrap();
    assert_eq!(
        t.command,
        Command::Create("Everything".into(), Some("\\All".into()))
    );
    let t = parse(b"h CREATE Arch (USE (\\Archive))\r\n").unwrap();
    assert_eq!(
        t.command,
        Command::Create("Arch".into(), Some("\\Archive".into()))
    );
    assert!(parse(b"h CREATE x (USE (All))\r\n").is_err());
    // An unsupported charset is NO [BADCHARSET], not BAD; unknown RETURN options are BAD.
    let e = parse(b"s SEARCH CHARSET KOI8-R SUBJECT x\r\n").unwrap_err();
    assert!(e.is_no() && e.text.starts_with("[BADCHARSET"));
    let e = parse(b"s SEARCH RETURN (BOGUS) ALL\r\n").unwrap_err();
    assert!(!e.is_no());
    assert!(parse(b"s SEARCH RETURN (SAVE MIN) ALL\r\n").is_ok());
    let t = parse(b"s SEARCH NEW\r\n").unwrap();
    assert!(matches!(t.command, Command::Search { ref key, .. }
    if *key == SearchKey::And(vec![SearchKey::And(vec![
        SearchKey::Flag("\\Recent".into(), true),
        SearchKey::Flag("\\Seen".into(), false),
    ])])));
    let t = parse(b"g FETCH 1 BODY[1.2.MIME]\r\n").unwrap();
    assert!(matches!(t.command, Command::Fetch { .. }));
}
