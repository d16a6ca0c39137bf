//! SORT and THREAD tests (RFC 5256): base subjects, sort keys and threads.

use super::*;

// ---- base subject ----

fn base(s: &str) -> (String, bool) {
    base_subject_ext(s)
}

#[test]
fn base_subject_rules() {
    let cases: &[(&str, &str, bool)] = &[
        ("foo", "FOO", false),
        ("Re: foo", "FOO", true),
        ("RE: Re: re: foo", "FOO", true),
        ("re:foo", "FOO", true),
        ("Fwd: foo", "FOO", true),
        ("FW: foo", "FOO", true),
        ("fwd : foo", "FOO", true),
        ("[PATCH] Re: foo", "FOO", true),
        ("[PATCH] foo", "FOO", false),
        ("[list] [PATCH v2] foo", "FOO", false),
        ("Re[2]: foo", "FOO", true),
        ("Re [2] : foo", "FOO", true),
        ("[a] Re: [b] Fwd: foo", "FOO", true),
        ("foo (fwd)", "FOO", true),
        ("foo (FWD) (fwd)  ", "FOO", true),
        ("foo(fwd)", "FOO", true),
        ("[fwd: foo]", "FOO", true),
        ("[Fwd: Re: foo (fwd)]", "FOO", true),
        ("Re: [fwd: [fwd: foo]]", "FOO", true),
        ("[fwd: foo] bar", "BAR", false),
        ("[blob] ", "[BLOB]", false),
        ("[blob]", "[BLOB]", false),
        ("[a][b]", "[B]", false),
        ("Re: [blob]", "[BLOB]", true),
        ("[unterminated foo", "[UNTERMINATED FOO", false),
        ("  foo \t\r\n  bar  ", "FOO BAR", false),
        ("", "", false),
        ("   ", "", false),
        ("Re:", "", true),
        ("Reply: foo", "REPLY: FOO", false),
        ("Fwdx: foo", "FWDX: FOO", false),
        ("(fwd)", "", true),
        ("Re: überstraße", "ÜBERSTRASSE", true),
        ("[Список] Re: тема", "ТЕМА", true),
        ("[fwd:]", "", true),
    ];
    for &(input, want, reply) in cases {
        assert_eq!(base(input), (want.to_string(), reply), "input {input:?}");
    }
    assert_eq!(base_subject("Re: foo"), "FOO");
}

#[test]
fn base_subject_hostile_is_linear_enough() {
    let many_blobs = "[x]".repeat(100_000) + " foo";
    assert_eq!(base_subject(&many_blobs), "FOO");
    let only_blobs = "[x]".repeat(100_000);
    assert_eq!(base_subject(&only_blobs), "[X]");
    let nested = format!("{}foo{}", "[fwd: ".repeat(20_000), "]".repeat(20_000));
    assert_eq!(base(&nested), ("FOO".to_string(), true));
    let res = "re: ".repeat(50_000) + "x";
    assert_eq!(base_subject(&res), "X");
}

// ---- sort ----

fn f(seq: u32) -> SortFields {
    SortFields {
        seq,
        id: seq * 10,
        ..SortFields::default()
    }
}

fn ids(msgs: &[SortFields]) -> Vec<u32> {
    msgs.iter().map(|m| m.seq).collect()
}

fn crit(key: SortKey, reverse: bool) -> Criterion {
    Criterion { key, reverse }
}

#[test]
fn sort_multiple_criteria_and_reverse() {
    let mut msgs = vec![
        SortFields {
            from: "bob".into(),
            date: 5,
            ..f(1)
        },
        SortFields {
            from: "Alice".into(),
            date: 1,
            ..f(2)
        },
        SortFields {
            from: "alice".into(),
            date: 9,
            ..f(3)
        },
        SortFields {
            from: "BOB".into(),
            date: 7,
            ..f(4)
        },
        SortFields {
            from: "carol".into(),
            date: 3,
            ..f(5)
        },
    ];
    sort(
        &mut msgs,
        &[crit(SortKey::From, false), crit(SortKey::Date, true)],
    );
    assert_eq!(ids(&msgs), [3, 2, 4, 1, 5]);
    // REVERSE applies to its own key only; the date stays ascending.
    sort(
        &mut msgs,
        &[crit(SortKey::From, true), crit(SortKey::Date, false)],
    );
    assert_eq!(ids(&msgs), [5, 1, 4, 2, 3]);
    // id travels with its message.
    assert!(msgs.iter().all(|m| m.id == m.seq * 10));
}

#[test]
fn sort_ties_by_seq_never_reversed() {
    let mut msgs: Vec<SortFields> = [4, 2, 5, 1, 3].iter().map(|&s| f(s)).collect();
    sort(
        &mut msgs,
        &[crit(SortKey::Subject, true), crit(SortKey::Size, true)],
    );
    assert_eq!(ids(&msgs), [1, 2, 3, 4, 5]);
    let mut msgs: Vec<SortFields> = [3, 1, 2].iter().map(|&s| f(s)).collect();
    sort(&mut msgs, &[]);
    assert_eq!(ids(&msgs), [1, 2, 3]);
}

#[test]
fn sort_arrival_vs_date() {
    let mut msgs = vec![
        SortFields {
            arrival: 30,
            date: 10,
            ..f(1)
        },
        SortFields {
            arrival: 10,
            date: 30,
            ..f(2)
        },
        SortFields {
            arrival: 20,
            date: 20,
            ..f(3)
        },
    ];
    sort(&mut msgs, &[crit(SortKey::Arrival, false)]);
    assert_eq!(ids(&msgs), [2, 3, 1]);
    sort(&mut msgs, &[crit(SortKey::Date, false)]);
    assert_eq!(ids(&msgs), [1, 3, 2]);
    sort(&mut msgs, &[crit(SortKey::Date, true)]);
    assert_eq!(ids(&msgs), [2, 3, 1]);
}

#[test]
fn sort_string_keys_empty_first_and_casemap() {
    let mut msgs = vec![
        SortFields {
            subject: "B".into(),
            cc: "x".into(),
            to: "b".into(),
            ..f(1)
        },
        SortFields {
            subject: "".into(),
            cc: "".into(),
            to: "A".into(),
            ..f(2)
        },
        SortFields {
            subject: "A".into(),
            cc: "Y".into(),
            to: "".into(),
            ..f(3)
        },
    ];
    sort(&mut msgs, &[crit(SortKey::Subject, false)]);
    assert_eq!(ids(&msgs), [2, 3, 1]);
    sort(&mut msgs, &[crit(SortKey::Cc, false)]);
    assert_eq!(ids(&msgs), [2, 1, 3]);
    sort(&mut msgs, &[crit(SortKey::To, false)]);
    assert_eq!(ids(&msgs), [3, 2, 1]);
    let mut msgs = vec![
        SortFields {
            display_from: "zed".into(),
            display_to: "b".into(),
            ..f(1)
        },
        SortFields {
            display_from: "Amy".into(),
            display_to: "a".into(),
            ..f(2)
        },
        SortFields {
            display_from: "amy".into(),
            display_to: "C".into(),
            ..f(3)
        },
    ];
    sort(&mut msgs, &[crit(SortKey::DisplayFrom, false)]);
    assert_eq!(ids(&msgs), [2, 3, 1]);
    sort(&mut msgs, &[crit(SortKey::DisplayTo, true)]);
    assert_eq!(ids(&msgs), [3, 1, 2]);
}

#[test]
fn sort_100k() {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut msgs: Vec<SortFields> = (1..=100_000u32)
        .map(|seq| SortFields {
            from: format!("user{}", next() % 1000).into(),
            date: (next() % 10_000) as i64,
            size: next() % 100,
            ..f(seq)
        })
        .collect();
    let criteria = [
        crit(SortKey::From, false),
        crit(SortKey::Size, true),
        crit(SortKey::Date, false),
    ];
    sort(&mut msgs, &criteria);
    assert_eq!(msgs.len(), 100_000);
    for w in msgs.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let key = |m: &SortFields| (m.from.clone(), std::cmp::Reverse(m.size), m.date, m.seq);
        assert!(key(a) < key(b));
    }
}

// ---- render ----

fn m(id: u32, children: Vec<Node>) -> Node {
    Node {
        id: Some(id),
        children,
    }
}

fn d(children: Vec<Node>) -> Node {
    Node { id: None, children }
}

#[test]
fn render_exact() {
    // The RFC 5256 §4 example.
    let threads = vec![
        m(2, vec![]),
        m(
            3,
            vec![m(
                6,
                vec![
                    m(4, vec![m(23, vec![])]),
                    m(44, vec![m(7, vec![m(96, vec![])])]),
                ],
            )],
        ),
    ];
    assert_eq!(render(&threads), "(2)(3 6 (4 23)(44 7 96))");
    assert_eq!(render(&[d(vec![m(3, vec![]), m(5, vec![])])]), "((3)(5))");
    assert_eq!(
        render(&[m(1, vec![m(2, vec![]), m(3, vec![])])]),
        "(1 (2)(3))"
    );
    assert_eq!(render(&[]), "");
    // Dummies with one or no message below them.
    assert_eq!(render(&[d(vec![m(7, vec![])])]), "(7)");
    assert_eq!(
        render(&[d(vec![]), d(vec![d(vec![])]), m(1, vec![d(vec![])])]),
        "(1)"
    );
    assert_eq!(
        render(&[m(1, vec![d(vec![m(2, vec![]), m(3, vec![])])])]),
        "(1 (2)(3))"
    );
    assert_eq!(
        render(&[m(
            1,
            vec![m(4, vec![]), d(vec![m(2, vec![]), m(3, vec![])])]
        )]),
        "(1 (4)((2)(3)))"
    );
    assert_eq!(format!("{:?}", m(1, vec![m(2, vec![])])), "Node(1 2)");
}

// ---- threads ----

fn tm(id: u32, subject: &str, date: i64, refs: &[u32]) -> ThreadMsg {
    let (subject, is_reply) = base_subject_ext(subject);
    ThreadMsg {
        id,
        seq: id,
        message_id: Some(format!("<{id}@x>")),
        references: refs.iter().map(|r| format!("<{r}@x>")).collect(),
        subject: subject.into(),
        is_reply,
        date,
    }
}

/// The previous (or next) message as the only reference, none past the ends.
fn near(i: u32, other: u32, ok: bool) -> Vec<u32> {
    if ok && other != i {
        vec![other]
    } else {
        Vec::new()
    }
}

fn threaded(msgs: &[ThreadMsg]) -> String {
    let out = render(&thread_references(msgs));
    assert_each_once(&out, msgs);
    out
}

/// Every message appears exactly once in a rendered response.
fn assert_each_once(out: &str, msgs: &[ThreadMsg]) {
    let mut seen: Vec<u32> = out
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    seen.sort_unstable();
    let mut want: Vec<u32> = msgs.iter().map(|m| m.id).collect();
    want.sort_unstable();
    assert_eq!(seen, want, "{out}");
}

#[test]
fn orderedsubject() {
    let msgs = [
        tm(1, "A", 10, &[]),
        tm(2, "Re: A", 20, &[]),
        tm(3, "B", 5, &[]),
        tm(4, "a", 30, &[]),
        tm(5, "Re: B", 40, &[]),
        tm(6, "C", 1, &[]),
    ];
    let threads = thread_orderedsubject(&msgs);
    assert_eq!(render(&threads), "(6)(3 5)(1 (2)(4))");
    assert_eq!(threads[2], m(1, vec![m(2, vec![]), m(4, vec![])]));
    // Equal dates fall back to the sequence number.
    let msgs = [tm(3, "x", 0, &[]), tm(1, "x", 0, &[]), tm(2, "y", 0, &[])];
    assert_eq!(render(&thread_orderedsubject(&msgs)), "(1 3)(2)");
    assert!(thread_orderedsubject(&[]).is_empty());
}

#[test]
fn references_rfc_example() {
    let msgs = [
        tm(2, "other", 1, &[]),
        tm(3, "topic", 2, &[]),
        tm(6, "Re: topic", 3, &[3]),
        tm(4, "Re: topic", 4, &[3, 6]),
        tm(23, "Re: topic", 5, &[3, 6, 4]),
        tm(44, "Re: topic", 6, &[3, 6]),
        tm(7, "Re: topic", 7, &[3, 6, 44]),
        tm(96, "Re: topic", 8, &[3, 6, 44, 7]),
    ];
    assert_eq!(threaded(&msgs), "(2)(3 6 (4 23)(44 7 96))");
    // Input order does not matter.
    let mut rev = msgs.to_vec();
    rev.reverse();
    assert_eq!(threaded(&rev), "(2)(3 6 (4 23)(44 7 96))");
}

#[test]
fn references_reply_chain_and_in_reply_to() {
    let msgs = [
        tm(1, "hello", 1, &[]),
        tm(2, "Re: hello", 2, &[1]),
        tm(3, "Re: hello", 3, &[1, 2]),
        tm(4, "Re: hello", 4, &[2]),
    ];
    assert_eq!(threaded(&msgs), "(1 2 (3)(4))");
}

#[test]
fn references_dummies() {
    // Two replies to a missing message: a dummy root with both ("((3)(5))", §4).
    let msgs = [tm(3, "s", 1, &[99]), tm(5, "t", 2, &[99])];
    assert_eq!(threaded(&msgs), "((3)(5))");
    // One reply to a missing chain: promoted to the top.
    assert_eq!(threaded(&[tm(1, "s", 1, &[98, 99])]), "(1)");
    // Missing message in the middle: its children are spliced into the parent.
    let msgs = [
        tm(1, "s", 1, &[]),
        tm(2, "t", 2, &[1, 99]),
        tm(3, "u", 3, &[1, 99]),
    ];
    assert_eq!(threaded(&msgs), "(1 (2)(3))");
    // Dummy root sorted by its first child's date.
    let msgs = [
        tm(1, "a", 5, &[]),
        tm(2, "b", 9, &[99]),
        tm(3, "c", 2, &[99]),
    ];
    assert_eq!(threaded(&msgs), "((3)(2))(1)");
}

#[test]
fn references_loops() {
    // A references B, B references A.
    let msgs = [tm(1, "a", 1, &[2]), tm(2, "b", 2, &[1])];
    assert_eq!(threaded(&msgs), "(2 1)");
    // A message referencing itself, and a loop within one References field.
    assert_eq!(threaded(&[tm(1, "a", 1, &[1])]), "(1)");
    let msgs = [tm(1, "a", 1, &[7, 8, 7, 8]), tm(2, "b", 2, &[8, 1, 7])];
    assert_eq!(threaded(&msgs), "((1)(2))");
    // Three-way loop.
    let msgs = [
        tm(1, "a", 1, &[3]),
        tm(2, "b", 2, &[1]),
        tm(3, "c", 3, &[2]),
    ];
    assert_eq!(threaded(&msgs), "(3 1 2)");
}

#[test]
fn references_truncated_header_relinks() {
    // 3 claims 1 is the parent of 4; 4 itself says 2 is. Step 1.B wins.
    let msgs = [
        tm(1, "a", 1, &[]),
        tm(2, "b", 2, &[]),
        tm(3, "c", 3, &[1, 4]),
        tm(4, "d", 4, &[2]),
    ];
    assert_eq!(threaded(&msgs), "(1)(2 4 3)");
    // No references at all: the message loses the parent step 1.A gave it.
    let msgs = [
        tm(1, "a", 1, &[]),
        tm(2, "b", 2, &[1, 3]),
        tm(3, "c", 3, &[]),
    ];
    assert_eq!(threaded(&msgs), "(1)(3 2)");
}

#[test]
fn references_duplicate_and_missing_ids() {
    let msgs = [
        tm(1, "s1", 1, &[]),
        ThreadMsg {
            message_id: Some("<1@x>".into()),
            ..tm(2, "s2", 2, &[])
        },
        tm(3, "s3", 3, &[1]),
        ThreadMsg {
            message_id: None,
            ..tm(4, "s4", 4, &[1])
        },
        ThreadMsg {
            message_id: Some(String::new()),
            ..tm(5, "s5", 5, &[])
        },
    ];
    assert_eq!(threaded(&msgs), "(1 (3)(4))(2)(5)");
    // The lowest sequence number keeps the ID, whatever the input order.
    let mut rev = msgs.to_vec();
    rev.reverse();
    assert_eq!(threaded(&rev), "(1 (3)(4))(2)(5)");
}

#[test]
fn references_subject_grouping() {
    // A reply joins the non-reply as its child.
    assert_eq!(
        threaded(&[tm(1, "foo", 1, &[]), tm(2, "Re: foo", 2, &[])]),
        "(1 2)"
    );
    // Two non-replies: a new dummy holds both.
    assert_eq!(
        threaded(&[tm(3, "bar", 3, &[]), tm(4, "BAR", 4, &[])]),
        "((3)(4))"
    );
    // The non-reply is preferred as parent even when it is later.
    assert_eq!(
        threaded(&[tm(5, "Re: baz", 5, &[]), tm(6, "baz", 6, &[])]),
        "(6 5)"
    );
    // Two replies: a dummy.
    assert_eq!(
        threaded(&[tm(1, "Re: x", 1, &[]), tm(2, "Fwd: x", 2, &[])]),
        "((1)(2))"
    );
    // A dummy thread absorbs a message with the same subject.
    let msgs = [
        tm(7, "qux", 7, &[99]),
        tm(8, "Re: qux", 8, &[99]),
        tm(9, "qux", 9, &[]),
    ];
    assert_eq!(threaded(&msgs), "((7)(8)(9))");
    // Two dummy threads with the same subject merge.
    let msgs = [
        tm(1, "q", 1, &[98]),
        tm(2, "q", 2, &[98]),
        tm(3, "q", 3, &[99]),
        tm(4, "q", 4, &[99]),
    ];
    assert_eq!(threaded(&msgs), "((1)(2)(3)(4))");
    // Empty subjects are never grouped; threads under a parent are not either.
    let msgs = [
        tm(1, "", 1, &[]),
        tm(2, "", 2, &[]),
        tm(3, "z", 3, &[1]),
        tm(4, "z", 4, &[]),
    ];
    assert_eq!(threaded(&msgs), "(1 3)(2)(4)");
    // A subject shared by three roots.
    let msgs = [
        tm(1, "w", 1, &[]),
        tm(2, "w", 2, &[]),
        tm(3, "Re: w", 3, &[]),
    ];
    assert_eq!(threaded(&msgs), "((1)(2)(3))");
}

#[test]
fn references_cap() {
    // Each message lists all its ancestors; only the last MAX_REFERENCES count.
    let n = 2_000u32;
    let msgs: Vec<ThreadMsg> = (1..=n)
        .map(|i| tm(i, "Re: long", i64::from(i), &(1..i).collect::<Vec<_>>()))
        .collect();
    let out = threaded(&msgs);
    let chain: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    assert_eq!(out, format!("({})", chain.join(" ")));
}

#[test]
fn references_deep_chain() {
    const N: u32 = 100_000;
    let msgs: Vec<ThreadMsg> = (1..=N)
        .map(|i| {
            tm(
                i,
                "Re: deep",
                i64::from(i),
                &near(i, i.wrapping_sub(1), i > 1),
            )
        })
        .collect();
    let threads = thread_references(&msgs);
    let out = render(&threads);
    assert!(out.starts_with("(1 2 3 "));
    assert!(out.ends_with(" 99999 100000)"));
    assert_each_once(&out, &msgs);
    assert!(threads == thread_references(&msgs));
    drop(threads);

    // The same chain with each message replying to the next one.
    let msgs: Vec<ThreadMsg> = (1..=N)
        .map(|i| tm(i, "deep", i64::from(N - i), &near(i, i + 1, i < N)))
        .collect();
    let out = render(&thread_references(&msgs));
    assert!(out.starts_with("(100000 99999 "));
    assert!(out.ends_with(" 2 1)"));
}

#[test]
fn references_hostile_loop_checks_finish() {
    // A deep chain, then messages that already have children attaching to its end:
    // each such link needs a loop check that walks the whole chain.
    const D: u32 = 20_000;
    const K: u32 = 5_000;
    let mut msgs: Vec<ThreadMsg> = (1..=D)
        .map(|i| tm(i, "c", i64::from(i), &near(i, i.wrapping_sub(1), i > 1)))
        .collect();
    let x = |j: u32| 2 * D + j;
    let y = |j: u32| D + j;
    for j in 1..=K {
        msgs.push(tm(y(j), "y", 0, &[x(j)]));
    }
    for j in 1..=K {
        msgs.push(tm(x(j), "x", 0, &[D]));
    }
    let out = render(&thread_references(&msgs));
    assert_each_once(&out, &msgs);
}

#[test]
fn orderedsubject_large() {
    let msgs: Vec<ThreadMsg> = (1..=100_000)
        .map(|i| tm(i, "same", i64::from(i % 7), &[]))
        .collect();
    let out = render(&thread_orderedsubject(&msgs));
    assert!(out.starts_with("(7 ("));
    assert_each_once(&out, &msgs);
}

// ---- msg-ids ----

#[test]
fn msg_ids() {
    assert_eq!(parse_msg_ids("<a@b> <c@d>"), ["<a@b>", "<c@d>"]);
    assert_eq!(parse_msg_ids("<a@b>\r\n\t<c@d>"), ["<a@b>", "<c@d>"]);
    assert_eq!(parse_msg_ids("(comment <x@y>) <a@b>"), ["<a@b>"]);
    assert_eq!(parse_msg_ids("(nested (c) \\) <x@y>) <a@b>"), ["<a@b>"]);
    assert_eq!(
        parse_msg_ids("<\"01KF8JCEOCBS0045PS\"@xxx.yyy.com>"),
        ["<01KF8JCEOCBS0045PS@xxx.yyy.com>"]
    );
    assert_eq!(parse_msg_ids("<a\r\n @b>"), ["<a@b>"]);
    assert_eq!(
        parse_msg_ids("Your message of \"Mon <x@y>\" <id@host>"),
        ["<id@host>"]
    );
    assert_eq!(parse_msg_ids("<garbage <a@b>"), ["<a@b>"]);
    assert_eq!(
        parse_msg_ids("<nodomain> <@b> <a@> <> <a@b"),
        Vec::<String>::new()
    );
    assert_eq!(parse_msg_ids("<\"a>b\"@c>"), ["<a>b@c>"]);
    assert_eq!(parse_msg_ids("<a(c)@b>"), ["<a@b>"]);
    assert_eq!(parse_msg_ids("<A@B> <a@b>"), ["<A@B>", "<a@b>"]);
    assert!(parse_msg_ids("").is_empty());
    assert!(parse_msg_ids("(((").is_empty());
    assert!(parse_msg_ids("<\"unterminated@x>").is_empty());
    assert!(parse_msg_ids("\\").is_empty());
}
