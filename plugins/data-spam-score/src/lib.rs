//! data-spam-score: scores a message with header and body heuristics, adds `X-Spam-Score`
//! (and `X-Spam-Tests`), quarantines at or above `threshold`, rejects at or above
//! `reject_threshold` (if set). See README.md.

use corvus_sdk::{Config, Context, Hook, HookResult, Outcome, Plugin};

/// Default spam phrases and their weights.
const DEFAULT_WORDS: &[(&str, f64)] = &[
    ("viagra", 2.5),
    ("cialis", 2.5),
    ("lottery", 1.5),
    ("you have won", 2.0),
    ("winner", 1.0),
    ("free money", 2.0),
    ("click here", 1.0),
    ("act now", 1.0),
    ("limited time offer", 1.0),
    ("100% free", 1.5),
    ("wire transfer", 1.0),
    ("bitcoin", 0.5),
    ("crypto giveaway", 2.0),
    ("dear friend", 1.0),
    ("unclaimed", 1.0),
];

pub struct SpamScore {
    threshold: f64,
    reject_threshold: Option<f64>,
    words: Vec<(String, f64)>,
}

/// A scored test: name and points.
pub type Hit = (String, f64);

/// Unfolded header fields (name lower-cased) and the body of a raw message.
pub fn split_message(raw: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (head, body) = match find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => match find(raw, b"\n\n") {
            Some(i) => (&raw[..i], &raw[i + 2..]),
            None => (raw, &raw[raw.len()..]),
        },
    };
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            fields.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (fields, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl SpamScore {
    /// Score a raw message; returns the total and the tests that hit.
    pub fn score(&self, ctx: &Context, raw: &[u8]) -> (f64, Vec<Hit>) {
        let (fields, body) = split_message(raw);
        let mut hits: Vec<Hit> = Vec::new();
        let subject = header(&fields, "subject").unwrap_or("");
        let letters: Vec<char> = subject.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 8 && letters.iter().all(|c| c.is_uppercase()) {
            hits.push(("SUBJ_ALL_CAPS".into(), 1.5));
        }
        if subject.contains("!!!") || subject.contains("$$$") {
            hits.push(("SUBJ_EXCLAIM".into(), 1.0));
        }
        if subject.is_empty() {
            hits.push(("NO_SUBJECT".into(), 0.5));
        }
        if header(&fields, "date").is_none() {
            hits.push(("NO_DATE".into(), 1.0));
        }
        if header(&fields, "message-id").is_none() {
            hits.push(("NO_MESSAGE_ID".into(), 1.0));
        }
        if header(&fields, "to").is_none() && header(&fields, "cc").is_none() {
            hits.push(("NO_TO".into(), 1.0));
        }
        match ctx.spf().as_str() {
            "fail" => hits.push(("SPF_FAIL".into(), 2.0)),
            "softfail" => hits.push(("SPF_SOFTFAIL".into(), 1.0)),
            _ => {}
        }
        if ctx.dkim() == "fail" {
            hits.push(("DKIM_FAIL".into(), 1.0));
        }
        // The detailed facts (corvus_sdk::auth): a DMARC failure through a forwarder whose
        // ARC chain validates weighs less, and a DKIM signature of the From domain (or a
        // parent of it) counts in the message's favour.
        let auth = corvus_sdk::auth::facts();
        if ctx.dmarc() == "fail" {
            if auth.arc == "pass" {
                hits.push(("DMARC_FAIL_ARC_PASS".into(), 0.5));
            } else {
                hits.push(("DMARC_FAIL".into(), 2.0));
            }
        }
        let from_domain = auth.dmarc_domain.to_ascii_lowercase();
        if !from_domain.is_empty()
            && auth.dkim_domains.iter().any(|d| {
                let d = d.to_ascii_lowercase();
                from_domain == d || from_domain.ends_with(&format!(".{d}"))
            })
        {
            hits.push(("DKIM_VALID_AU".into(), -1.0));
        }
        let ctype = header(&fields, "content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        if ctype.starts_with("text/html") {
            hits.push(("HTML_ONLY".into(), 0.5));
        }
        // Body phrases: the subject and the first 256 KiB of the body, lower-cased.
        let mut text = subject.to_lowercase();
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&body[..body.len().min(256 << 10)]).to_lowercase());
        for (word, points) in &self.words {
            let n = text.matches(word.as_str()).count();
            if n > 0 {
                // Repeats count, but less.
                let p = points * (1.0 + 0.25 * (n.min(5) as f64 - 1.0));
                hits.push((format!("WORD({word})"), p));
            }
        }
        let upper =
            text.len() >= 200 && text.chars().filter(|c| c.is_uppercase()).count() * 3 > text.len();
        if upper {
            hits.push(("SHOUTING".into(), 1.0));
        }
        // (+ 0.0: an empty f64 sum is -0.0)
        let total = (hits.iter().map(|h| h.1).sum::<f64>() * 10.0).round() / 10.0 + 0.0;
        (total, hits)
    }
}

impl Plugin for SpamScore {
    const NAME: &'static str = "data-spam-score";
    const HOOKS: &'static [Hook] = &[Hook::Data];

    fn init(config: &Config) -> Result<Self, String> {
        let threshold = config.float_or("threshold", 5.0);
        let reject_threshold = config.float("reject_threshold");
        if let Some(r) = reject_threshold
            && r < threshold
        {
            return Err(format!(
                "reject_threshold ({r}) must not be below threshold ({threshold})"
            ));
        }
        let mut words: Vec<(String, f64)> = if config.bool("default_words") == Some(false) {
            Vec::new()
        } else {
            DEFAULT_WORDS
                .iter()
                .map(|(w, p)| (w.to_string(), *p))
                .collect()
        };
        if let Some(extra) = config.table("words") {
            for (w, p) in extra {
                let p: f64 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("words.{w}: {p:?} is not a number"))?;
                words.retain(|(x, _)| *x != w.to_lowercase());
                words.push((w.to_lowercase(), p));
            }
        }
        Ok(SpamScore {
            threshold,
            reject_threshold,
            words,
        })
    }

    fn on_data(&mut self, ctx: &Context) -> HookResult {
        let (total, hits) = self.score(ctx, &ctx.message());
        let tests: Vec<String> = hits.iter().map(|(n, p)| format!("{n}={p:.1}")).collect();
        corvus_sdk::log::debug(&format!("score {total:.1}: {}", tests.join(" ")));
        let verdict = if self.reject_threshold.is_some_and(|r| total >= r) {
            return Ok(Outcome::reject(
                550,
                format!("5.7.1 Message looks like spam (score {total:.1})"),
            ));
        } else if total >= self.threshold {
            Outcome::quarantine(format!("spam score {total:.1} >= {:.1}", self.threshold))
        } else {
            Outcome::next()
        };
        let mut out = verdict.with_header(
            "X-Spam-Score",
            format!("{total:.1} / {:.1}", self.threshold),
        );
        if !tests.is_empty() {
            out = out.with_header("X-Spam-Tests", tests.join(", "));
        }
        Ok(out)
    }
}

corvus_sdk::export!(SpamScore);

#[cfg(test)]
mod tests {
    use super::*;
    use corvus_sdk::testing::TestHost;

    const HAM: &str = "From: a@x.example\nTo: b@y.example\nSubject: Lunch tomorrow\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nMessage-ID: <1@x.example>\n\nShall we meet at noon?\n";
    const SPAM: &str = "From: a@x.example\nSubject: YOU HAVE WON THE LOTTERY!!!\n\nDear friend, you have won! Click here for free money. Viagra. Act now!\n";

    fn header<'a>(o: &'a corvus_sdk::Outcome, name: &str) -> Option<&'a str> {
        o.actions
            .add_headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    #[test]
    fn ham_passes_with_a_low_score() {
        let mut h = TestHost::<SpamScore>::new("{}").unwrap();
        let out = h.data("a@x.example", &["b@y.example"], HAM).unwrap();
        assert_eq!(out.verdict.name(), "next");
        assert_eq!(header(&out, "X-Spam-Score"), Some("0.0 / 5.0"));
    }

    #[test]
    fn spam_is_quarantined_with_its_tests() {
        let mut h = TestHost::<SpamScore>::new("{}").unwrap();
        let out = h.data("a@x.example", &["b@y.example"], SPAM).unwrap();
        assert_eq!(out.verdict.name(), "quarantine", "{out:?}");
        let tests = header(&out, "X-Spam-Tests").unwrap();
        assert!(
            tests.contains("SUBJ_ALL_CAPS") && tests.contains("WORD(viagra)"),
            "{tests}"
        );
    }

    #[test]
    fn reject_threshold_and_custom_words() {
        let mut h =
            TestHost::<SpamScore>::new(r#"{"threshold": 3, "reject_threshold": 4, "default_words": false, "words": {"pineapple": 4}}"#)
                .unwrap();
        let out = h
            .data("a@x", &["b@y"], &HAM.replace("noon?", "noon? pineapple"))
            .unwrap();
        assert_eq!(out.verdict.name(), "reject");
        assert!(TestHost::<SpamScore>::new(r#"{"threshold": 5, "reject_threshold": 4}"#).is_err());
    }

    #[test]
    fn auth_results_count() {
        let mut h = TestHost::<SpamScore>::new(r#"{"threshold": 4}"#).unwrap();
        let mut ctx = corvus_sdk::testing::events::data("a@x", &["b@y"], 0);
        ctx.spf = "fail".into();
        ctx.dmarc = "fail".into();
        let out = h.call(&ctx, &corvus_sdk::testing::crlf(HAM)).unwrap();
        assert_eq!(out.verdict.name(), "quarantine");
    }

    #[test]
    fn arc_and_aligned_dkim_from_the_auth_facts() {
        use corvus_sdk::testing::{crlf, events, no_auth_facts};
        let mut h = TestHost::<SpamScore>::new(r#"{"threshold": 4}"#).unwrap();
        let mut ctx = events::data("a@x", &["b@y"], 0);
        ctx.dmarc = "fail".into();
        // A forwarded message whose ARC chain validates: the DMARC failure weighs 0.5.
        h.set_auth(corvus_sdk::AuthFacts {
            dmarc: "fail".into(),
            arc: "pass".into(),
            arc_sealer: "lists.example".into(),
            ..no_auth_facts()
        });
        let out = h.call(&ctx, &crlf(HAM)).unwrap();
        let tests = header(&out, "X-Spam-Tests").unwrap_or("");
        assert!(tests.contains("DMARC_FAIL_ARC_PASS"), "{tests}");
        assert!(!tests.contains("DMARC_FAIL="), "{tests}");
        // Signed by a parent of the From domain: aligned, one point off.
        ctx.dmarc = "pass".into();
        h.set_auth(corvus_sdk::AuthFacts {
            dmarc: "pass".into(),
            dmarc_domain: "mail.example.org".into(),
            dkim: "pass".into(),
            dkim_domains: vec!["Example.org".into()],
            ..no_auth_facts()
        });
        let out = h.call(&ctx, &crlf(HAM)).unwrap();
        assert!(
            header(&out, "X-Spam-Tests")
                .unwrap_or("")
                .contains("DKIM_VALID_AU")
        );
        // Signed by an unrelated domain: nothing.
        h.set_auth(corvus_sdk::AuthFacts {
            dmarc_domain: "example.org".into(),
            dkim_domains: vec!["notexample.org".into()],
            ..no_auth_facts()
        });
        let out = h.call(&ctx, &crlf(HAM)).unwrap();
        assert!(
            !header(&out, "X-Spam-Tests")
                .unwrap_or("")
                .contains("DKIM_VALID_AU")
        );
    }
}
