use super::eval::{Context, RunLimits, VacationReply, run};
use super::*;

const MSG: &[u8] = b"From: \"Boss\" <boss@corp.example>\r\n\
To: alice+lists@example.org, bob@example.org\r\n\
Cc: Undisclosed:;\r\n\
Subject: =?utf-8?q?R=C3=A9union?= [ietf] weekly\r\n\
List-Id: <ietf.lists.example>\r\n\
Date: Tue, 01 Dec 2026 10:30:00 +0100\r\n\
Message-ID: <m1@corp.example>\r\n\
X-Spam-Score: 7\r\n\
X-Spam-Score: 2\r\n\
Content-Type: text/plain\r\n\
\r\n\
Hello, the quarterly numbers are attached.\r\n";

fn eval_with(script: &str, msg: &[u8], limits: RunLimits) -> Outcome {
    let s = compile(script).unwrap_or_else(|e| panic!("{e}\n{script}"));
    let exists = |m: &str| m == "INBOX" || m == "Work";
    let ctx = Context {
        message: msg,
        from: "boss@corp.example",
        to: "alice+lists@example.org",
        mailbox_exists: &exists,
        limits,
        now: chrono::DateTime::parse_from_rfc3339("2026-12-07T12:00:00+00:00").unwrap(),
    };
    run(&s, &ctx)
}

fn eval(script: &str) -> Vec<String> {
    let o = eval_with(script, MSG, RunLimits::default());
    describe(&o, |v| Some(format!("vacation {}", v.reason)))
}

fn err(script: &str) -> String {
    compile(script).unwrap_err().to_string()
}

#[test]
fn implicit_keep_fileinto_discard_and_stop() {
    assert_eq!(eval(""), ["store INBOX"]);
    assert_eq!(eval("discard;"), ["discard"]);
    assert_eq!(
        eval("require \"fileinto\"; fileinto \"Work\"; fileinto \"work\";"),
        ["store Work", "store work"]
    );
    assert_eq!(
        eval("require [\"fileinto\", \"copy\"]; fileinto :copy \"Work\";"),
        ["store Work", "store INBOX"]
    );
    assert_eq!(eval("stop; discard;"), ["store INBOX"]);
    assert_eq!(
        eval("redirect \"x@elsewhere.example\"; keep;"),
        ["redirect x@elsewhere.example", "store INBOX"]
    );
}

#[test]
fn header_address_envelope_tests() {
    let s = |t: &str| {
        eval(&format!(
            "require [\"fileinto\",\"envelope\",\"subaddress\"]; if {t} {{ fileinto \"Hit\"; }}"
        ))[0]
            == "store Hit"
    };
    assert!(
        s("header :contains \"subject\" \"réunion\"")
            || s("header :contains \"subject\" \"Réunion\"")
    );
    assert!(s("header :contains \"subject\" \"[IETF]\""));
    assert!(!s(
        "header :is :comparator \"i;octet\" \"subject\" \"réunion [ietf] weekly\""
    ));
    assert!(s("address :domain :is \"from\" \"CORP.example\""));
    assert!(s("address :localpart :is \"from\" \"boss\""));
    assert!(s("address :all :is [\"to\",\"cc\"] \"bob@example.org\""));
    assert!(s("address :user :is \"to\" \"alice\""));
    assert!(s("address :detail :is \"to\" \"lists\""));
    assert!(!s("address :detail :is \"to\" \"\""));
    assert!(s("envelope :detail \"to\" \"lists\""));
    assert!(s("envelope :domain :is \"from\" \"corp.example\""));
    assert!(s("exists [\"list-id\", \"date\"]"));
    assert!(!s("exists [\"list-id\", \"x-nope\"]"));
    assert!(s("size :over 100"));
    assert!(s("size :under 1K"));
    assert!(s("header :matches \"subject\" \"*weekly\""));
    assert!(s("not header :matches \"subject\" \"weekly*\""));
    assert!(s("anyof (false, true)"));
    assert!(!s("allof (true, false)"));
}

#[test]
fn relational_index_date_and_body() {
    let s = |t: &str| {
        eval(&format!(
            "require [\"fileinto\",\"relational\",\"comparator-i;ascii-numeric\",\"index\",\"date\",\"body\"]; if {t} {{ fileinto \"Hit\"; }}"
        ))[0]
            == "store Hit"
    };
    assert!(s(
        "header :value \"ge\" :comparator \"i;ascii-numeric\" \"x-spam-score\" \"5\""
    ));
    assert!(!s(
        "header :index 2 :value \"ge\" :comparator \"i;ascii-numeric\" \"x-spam-score\" \"5\""
    ));
    assert!(s("header :index 1 :last :is \"x-spam-score\" \"2\""));
    assert!(s(
        "header :count \"eq\" :comparator \"i;ascii-numeric\" \"x-spam-score\" \"2\""
    ));
    assert!(s(
        "address :count \"eq\" :comparator \"i;ascii-numeric\" [\"to\",\"cc\"] \"2\""
    ));
    assert!(s("date :originalzone \"date\" \"hour\" \"10\""));
    assert!(s("date :zone \"+0000\" \"date\" \"hour\" \"09\""));
    assert!(s("date :originalzone \"date\" \"date\" \"2026-12-01\""));
    assert!(s("date :originalzone \"date\" \"weekday\" \"2\""));
    assert!(s("date :originalzone \"date\" \"zone\" \"+0100\""));
    assert!(s("currentdate :zone \"+0000\" \"year\" \"2026\""));
    assert!(s("currentdate :value \"ge\" \"date\" \"2026-12-01\""));
    assert!(s("body :contains \"quarterly\""));
    assert!(s("body :raw :contains \"numbers\""));
    assert!(!s("body :content \"image\" :contains \"numbers\""));
}

#[test]
fn variables_and_flags() {
    assert_eq!(
        eval(
            "require [\"fileinto\",\"variables\"]; if header :matches \"List-Id\" \"<*.lists.example>\" { set :upperfirst \"box\" \"${1}\"; fileinto \"Lists/${box}\"; }"
        ),
        ["store Lists/Ietf"]
    );
    assert_eq!(
        eval(
            "require [\"imap4flags\"]; addflag \"\\\\Seen\"; addflag [\"$label1\", \"\\\\seen\"]; removeflag \"$nope\";"
        ),
        ["store INBOX flags \\Seen $label1"]
    );
    assert_eq!(
        eval(
            "require [\"imap4flags\",\"fileinto\"]; setflag \"\\\\Flagged\"; fileinto :flags \"\\\\Seen\" \"Work\"; if hasflag :contains \"flagged\" { keep; }"
        ),
        ["store Work flags \\Seen", "store INBOX flags \\Flagged"]
    );
    assert_eq!(
        eval(
            "require [\"variables\"]; set :length \"n\" \"héllo\"; if string :is \"${n}\" \"5\" { discard; }"
        ),
        ["discard"]
    );
    assert_eq!(
        eval(
            "require [\"regex\",\"variables\",\"fileinto\"]; if header :regex \"subject\" \"\\\\[([a-z]+)\\\\]\" { fileinto \"${1}\"; }"
        ),
        ["store ietf"]
    );
    assert_eq!(
        eval(
            "require [\"encoded-character\", \"fileinto\"]; fileinto \"${hex:41 42}${unicode:263A}\";"
        ),
        ["store AB☺"]
    );
}

#[test]
fn reject_and_vacation() {
    assert_eq!(
        eval("require \"reject\"; reject \"go away\";"),
        ["reject go away"]
    );
    let o = eval_with(
        "require [\"reject\",\"fileinto\"]; fileinto \"Work\"; reject \"no\";",
        MSG,
        RunLimits::default(),
    );
    assert!(o.error.unwrap().contains("cannot be combined"));
    assert_eq!(
        eval("require \"vacation\"; vacation :days 3 \"away\";"),
        ["vacation away", "store INBOX"]
    );
    let reply = VacationReply {
        days: None,
        subject: None,
        from: None,
        addresses: vec![],
        mime: false,
        handle: None,
        reason: "away".into(),
    };
    // A list message is not answered; neither is one not addressed to the user.
    assert!(
        vacation::refusal(
            MSG,
            "boss@corp.example",
            "alice@example.org",
            "alice+lists@example.org",
            &reply
        )
        .is_some()
    );
    let plain = b"From: b@x.example\r\nTo: alice@example.org\r\nSubject: hi\r\nMessage-ID: <a@b>\r\n\r\nx\r\n";
    assert_eq!(
        vacation::refusal(
            plain,
            "b@x.example",
            "alice@example.org",
            "alice@example.org",
            &reply
        ),
        None
    );
    assert!(
        vacation::refusal(plain, "", "alice@example.org", "alice@example.org", &reply).is_some()
    );
    assert!(
        vacation::refusal(
            plain,
            "b@x.example",
            "carol@example.org",
            "carol@example.org",
            &reply
        )
        .is_some()
    );
    let auto = b"From: b@x.example\r\nTo: alice@example.org\r\nAuto-Submitted: auto-generated\r\n\r\nx\r\n";
    assert!(
        vacation::refusal(
            auto,
            "b@x.example",
            "alice@example.org",
            "alice@example.org",
            &reply
        )
        .is_some()
    );
    let built = String::from_utf8(vacation::build(
        plain,
        "b@x.example",
        "alice@example.org",
        "mx.example.org",
        &reply,
    ))
    .unwrap();
    assert!(built.contains("Subject: Auto: hi\r\n"), "{built}");
    assert!(built.contains("In-Reply-To: <a@b>\r\n"));
    assert!(built.contains("Auto-Submitted: auto-replied"));
    assert!(built.ends_with("\r\n\r\naway\r\n"));
}

#[test]
fn checker_errors_name_line_and_column() {
    assert!(
        err("fileinto \"x\";")
            .starts_with("line 1, column 1: fileinto needs the \"fileinto\" extension")
    );
    assert!(err("require \"nope\";").contains("unsupported extension \"nope\""));
    assert!(err("keep;\nrequire \"fileinto\";").starts_with("line 2, column 1: require must come"));
    assert!(err("if header :frob \"a\" \"b\" { }").contains("header has no :frob"));
    assert!(err("if header :is :contains \"a\" \"b\" { }").contains("more than one match type"));
    assert!(err("redirect \"not an address\";").contains("not a valid address"));
    assert!(err("if true { }\nelse { }\nelse { }").starts_with("line 3, column 1: else without"));
    assert!(
        err("require \"regex\";\nif header :regex \"a\" \"(\" { }")
            .starts_with("line 2, column 4: bad regular expression")
    );
    assert!(err("if size 10 { }").contains(":over or :under"));
    assert!(err("frobnicate;").contains("unknown command"));
    assert!(err("if foo { }").contains("unknown test"));
}

#[test]
fn limits_stop_a_costly_run_and_keep() {
    let big = format!(
        "From: a@b\r\nSubject: x\r\n\r\n{}\r\n",
        "lorem ipsum dolor sit amet ".repeat(40_000)
    );
    let script = format!(
        "require \"body\";\n{}",
        (0..200)
            .map(|i| format!("if body :contains \"needle{i}\" {{ discard; }}\n"))
            .collect::<String>()
    );
    let o = eval_with(&script, big.as_bytes(), RunLimits::default());
    assert!(
        o.error.as_deref().unwrap().contains("evaluation steps"),
        "{o:?}"
    );
    assert_eq!(
        describe(&o, |_| None),
        [
            "error the script needed more than 100000 evaluation steps and was stopped",
            "store INBOX"
        ]
    );
    let many = "redirect \"a@b.example\";\nredirect \"c@b.example\";\nredirect \"d@b.example\";";
    let o = eval_with(
        many,
        MSG,
        RunLimits {
            max_redirects: 2,
            ..RunLimits::default()
        },
    );
    assert!(o.error.unwrap().contains("line 3: more than 2 redirects"));
}

#[test]
fn flags_are_made_imap_safe() {
    assert_eq!(
        imap_flags(&[
            "\\seen".into(),
            "$x".into(),
            "\\Recent".into(),
            "bad(".into(),
            "\\SEEN".into()
        ]),
        ["\\Seen", "$x"]
    );
}

/// The corpus of real-world scripts the differential test uses (tests/e2e/sieve_corpus): every
/// valid one compiles; every invalid one fails on the line its first comment names.
#[test]
fn the_corpus_compiles() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/sieve_corpus");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "sieve") {
            let text = std::fs::read_to_string(&p).unwrap();
            if let Err(e) = compile(&text) {
                panic!("{}: {e}", p.display());
            }
            n += 1;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("invalid")) {
        for e in entries.flatten() {
            let p = e.path();
            let text = std::fs::read_to_string(&p).unwrap();
            let want: Option<u32> = text
                .lines()
                .next()
                .and_then(|l| l.split("error-line:").nth(1))
                .and_then(|x| x.trim().parse().ok());
            match compile(&text) {
                Ok(_) => panic!("{} compiled", p.display()),
                Err(e) => {
                    if let Some(line) = want {
                        assert_eq!(e.pos.line, line, "{}: {e}", p.display());
                    }
                }
            }
        }
    }
    assert!(n > 0 || !dir.exists());
}

/// A typical 20-rule script, as Roundcube's managesieve plugin writes one.
pub(super) fn typical_script() -> String {
    let mut s = String::from(
        "require [\"fileinto\",\"imap4flags\",\"envelope\",\"variables\",\"relational\",\"comparator-i;ascii-numeric\",\"copy\",\"vacation\"];\n",
    );
    let lists = ["dev", "announce", "users", "ops", "security", "jobs"];
    for (i, l) in lists.iter().enumerate() {
        s.push_str(&format!(
            "# rule:[list {l}]\nif header :contains \"list-id\" \"<{l}.lists.example.org>\"\n{{\n\tfileinto \"Lists/{l}\";\n\tstop;\n}}\n# rule:[from {i}]\nif address :domain :is \"from\" \"partner{i}.example\"\n{{\n\taddflag \"$partner\";\n\tfileinto \"Partners\";\n}}\n"
        ));
    }
    s.push_str(
        "# rule:[boss]\nif anyof (address :is \"from\" \"boss@corp.example\", header :contains \"subject\" \"urgent\")\n{\n\taddflag \"\\\\Flagged\";\n}\n\
# rule:[spam]\nif header :value \"ge\" :comparator \"i;ascii-numeric\" \"x-spam-score\" \"5\"\n{\n\tfileinto \"Junk\";\n\tstop;\n}\n\
# rule:[big]\nif size :over 5M\n{\n\tfileinto \"Big\";\n}\n\
# rule:[invoices]\nif allof (header :matches \"subject\" \"*invoice*\", envelope :domain :is \"from\" \"billing.example\")\n{\n\tfileinto :copy \"Invoices\";\n}\n\
# rule:[newsletter]\nif exists \"list-unsubscribe\"\n{\n\tfileinto \"Newsletters\";\n}\n\
# rule:[tagged]\nif header :matches \"subject\" \"[*] *\"\n{\n\tset \"tag\" \"${1}\";\n}\n\
# rule:[github]\nif address :localpart :is \"from\" \"notifications\"\n{\n\tfileinto \"GitHub\";\n}\n\
# rule:[vacation]\nif false\n{\n\tvacation :days 7 :subject \"Away\" \"I am away until Monday.\";\n}\n",
    );
    s
}

/// Evaluation cost of the typical 20-rule script (the goal: under 20 µs per
/// recipient). `cargo test --release -p corvus --lib bench_sieve_typical_script -- --ignored
/// --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_sieve_typical_script() {
    let script = compile(&typical_script()).unwrap();
    let msg = b"Return-Path: <alice@remote.example>\r\nReceived: from client.example (client.example [192.0.2.7])\r\n\tby mx.example.test (Corvus) with ESMTP id 0123456789ABCDEF; Sun, 22 Nov 2026 07:00:00 +0000\r\nFrom: Alice Example <alice@remote.example>\r\nTo: Bob <bob@example.test>\r\nSubject: Your invoice for November\r\nDate: Sun, 22 Nov 2026 07:00:00 +0000\r\nMessage-ID: <bench@remote.example>\r\nX-Spam-Score: 1\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob,\r\n\r\nplease find the invoice attached.\r\n";
    let exists = |_: &str| true;
    let ctx = Context {
        message: msg,
        from: "alice@remote.example",
        to: "bob@example.test",
        mailbox_exists: &exists,
        limits: RunLimits::default(),
        now: chrono::Local::now().fixed_offset(),
    };
    assert_eq!(run(&script, &ctx).actions.len(), 1);
    let mut medians = Vec::new();
    for _ in 0..15 {
        let n = 2000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(run(std::hint::black_box(&script), &ctx));
        }
        medians.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    medians.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let t = std::time::Instant::now();
    for _ in 0..200 {
        std::hint::black_box(compile(&typical_script()).unwrap());
    }
    let compile_us = t.elapsed().as_secs_f64() * 1e6 / 200.0;
    println!(
        "sieve: 20-rule script, evaluation median {:.2} µs (min {:.2}, max {:.2}); compile {:.1} µs; {} bytes",
        medians[7],
        medians[0],
        medians[14],
        compile_us,
        typical_script().len()
    );
}

#[test]
fn vacation_from_is_the_users_own_address() {
    let plain = b"From: b@x.example\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nx\r\n";
    let mut reply = VacationReply {
        days: None,
        subject: Some("Away".into()),
        from: Some("\"Alice A.\" <alice+away@example.org>".into()),
        addresses: vec![],
        mime: false,
        handle: None,
        reason: "away".into(),
    };
    let built = |r: &VacationReply| {
        String::from_utf8(vacation::build(
            plain,
            "b@x.example",
            "alice@example.org",
            "mx",
            r,
        ))
        .unwrap()
    };
    assert!(built(&reply).contains("From: \"Alice A.\" <alice+away@example.org>\r\n"));
    reply.from = Some("ceo@example.org".into());
    assert!(built(&reply).contains("From: alice@example.org\r\n"));
}

#[test]
fn fileinto_an_unusable_mailbox_name_files_into_inbox() {
    // A line break is an error of the run (the implicit keep).
    let o = eval_with(
        "require \"fileinto\"; fileinto \"two\nlines\";",
        MSG,
        RunLimits::default(),
    );
    assert!(
        o.error
            .as_deref()
            .unwrap_or("")
            .contains("invalid mailbox name"),
        "{o:?}"
    );
    // Names IMAP CREATE refuses, and a missing mailbox without :create, go to INBOX at
    // delivery, once.
    for bad in [
        "../other",
        "a//b",
        "x/",
        "star*",
        "Missing",
        "with\u{1}control",
    ] {
        let script = format!("require [\"fileinto\", \"copy\"]; fileinto :copy \"{bad}\";");
        let mut o = eval_with(&script, MSG, RunLimits::default());
        settle_mailboxes(&mut o, &|m| m == "Work");
        assert_eq!(describe(&o, |_| None), ["store INBOX"], "{bad}");
        assert!(
            o.fired.last().unwrap().contains("filed into INBOX"),
            "{bad}: {:?}",
            o.fired
        );
    }
}

/// Helper 28's review findings, each as a test.
#[test]
fn review_findings_stay_fixed() {
    // A second reject is an error (else every one would send a notice).
    let o = eval_with(
        "require \"reject\"; reject \"a\"; reject \"b\";",
        MSG,
        RunLimits::default(),
    );
    assert!(o.error.unwrap().contains("reject used twice"));
    // :count uses the test's comparator (RFC 5231 §4.2): "2" > "10" as text.
    assert_eq!(
        eval(
            "require [\"relational\",\"fileinto\"]; if address :count \"ge\" [\"to\"] \"10\" { fileinto \"Hit\"; }"
        ),
        ["store Hit"]
    );
    // A malformed encoded character stays as written; an out-of-range one is an error.
    assert_eq!(
        eval(
            "require [\"encoded-character\",\"fileinto\"]; fileinto \"${unicode:zz}${hex:0041}\";"
        ),
        ["store ${unicode:zz}${hex:0041}"]
    );
    assert!(
        err("require [\"encoded-character\", \"fileinto\"]; fileinto \"${unicode:D800}\";")
            .contains("invalid encoded character")
    );
    // fileinto :copy :flags into INBOX keeps its flags: the implicit keep is that copy.
    assert_eq!(
        eval(
            "require [\"fileinto\",\"copy\",\"imap4flags\"]; fileinto :copy :flags \"\\\\Seen\" \"INBOX\";"
        ),
        ["store INBOX flags \\Seen"]
    );
    // An expensive :contains or :matches stops at the budget before doing the work.
    let big = format!("From: a@b\r\nSubject: x\r\n\r\n{}\r\n", "a".repeat(1 << 20));
    let key = "a".repeat(10_000) + "b";
    for m in [":contains", ":matches"] {
        let k = if m == ":matches" {
            format!("*{key}*")
        } else {
            key.clone()
        };
        let script = format!("require \"body\";\nif body {m} \"{k}\" {{ discard; }}\n");
        let t = std::time::Instant::now();
        let o = eval_with(
            &script,
            big.as_bytes(),
            RunLimits {
                max_steps: 10_000,
                ..RunLimits::default()
            },
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{m} took {:?}",
            t.elapsed()
        );
        if m == ":matches" {
            assert!(o.error.is_some(), "{o:?}");
        }
        assert_eq!(describe(&o, |_| None).last().unwrap(), "store INBOX");
    }
    // body :text reads HTML as text.
    let html = b"From: a@b\r\nContent-Type: text/html\r\n\r\n<p>hello <b>html</b></p>\r\n";
    let o = eval_with(
        "require [\"body\"]; if body :text :contains \"hello html\" { discard; }",
        html,
        RunLimits::default(),
    );
    assert_eq!(describe(&o, |_| None), ["discard"]);
}

#[test]
fn vacation_mime_keeps_only_content_fields_and_subjects_are_encoded() {
    let plain = b"From: b@x.example\r\nTo: alice@example.org\r\nSubject: =?utf-8?q?H=C3=A9llo?=\r\n\r\nx\r\n";
    let reply = VacationReply {
        days: None,
        subject: None,
        from: None,
        addresses: vec![],
        mime: true,
        handle: None,
        reason: "Content-Type: text/plain; charset=utf-8\nFrom: ceo@example.org\nBcc: x@evil.example\n\nAway.\n".into(),
    };
    let built = String::from_utf8(vacation::build(
        plain,
        "b@x.example",
        "alice@example.org",
        "mx",
        &reply,
    ))
    .unwrap();
    assert!(
        !built.contains("ceo@example.org") && !built.contains("Bcc:"),
        "{built}"
    );
    assert!(built.contains("From: alice@example.org\r\n"));
    assert!(
        built.contains("Content-Type: text/plain; charset=utf-8\r\n\r\nAway.\r\n"),
        "{built}"
    );
    assert!(built.contains("Subject: =?utf-8?b?"), "{built}");
    assert!(built.is_ascii());
}
