//! rspamd's scan reply (`/checkv2` JSON) and what Corvus does with it, sans I/O: the verdict,
//! the header edits, and the facts later hooks see.
//!
//! - `reject`, or a score at or above `reject_score` → 554 5.7.1 with rspamd's message;
//! - `soft reject` (also what rspamd's greylist module answers) → 451 4.7.1;
//! - `rewrite subject` → the Subject rspamd made; `add header` → `X-Spam: Yes`;
//! - a score at or above `junk_score` → Junk;
//! - always: inbound `X-Spam-*` copies removed, then `X-Spam-Status` and `X-Spam-Score` added,
//!   and the headers rspamd's `milter` block asks for (its removals first, as its proxy does).
//!
//! The `greylist` action alone is accepted, as rspamd's own milter does: greylisting is the
//! greylist module's job, which turns a message it greylists into `soft reject`.

use std::sync::Arc;

use serde_json::Value;

use crate::hooks::edits::{HeaderEdit, MessageEdits};
use crate::hooks::outcome::reply_text;
use crate::hooks::{Enhanced, SpamFacts, Verdict};

/// Headers a message may not bring in (they would claim a scan that did not happen here).
pub const OWN_HEADERS: &[&str] = &["X-Spam-Status", "X-Spam-Score", "X-Spam", "X-Spam-Flag"];

/// What Corvus makes of one scan.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The verdict (Continue for most mail).
    pub verdict: Verdict,
    /// Header changes.
    pub edits: MessageEdits,
    /// Score, action and symbols, for later hooks and the trace (None when rspamd skipped
    /// the message).
    pub facts: Option<Arc<SpamFacts>>,
}

/// Thresholds of the entry (`config.junk_score`, `config.reject_score`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Thresholds {
    /// Junk from this score.
    pub junk: Option<f64>,
    /// Refuse from this score.
    pub reject: Option<f64>,
}

/// Decide on a `/checkv2` reply body from the entry `engine`. An error is a reply that is not
/// rspamd's JSON (the entry's `on_error` applies).
pub fn decide(body: &[u8], engine: &str, t: Thresholds) -> Result<Decision, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("reply is not JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(format!("rspamd: {err}"));
    }
    let mut edits = MessageEdits::default();
    for name in OWN_HEADERS {
        let _ = edits.header(HeaderEdit::RemoveAll {
            name: (*name).into(),
        });
    }
    // `is_skipped` also marks a pre-result (GTUBE, a greylist or a ratelimit stop rspamd
    // early, with their action): only a skipped scan without an action is no result.
    let action = match v.get("action").and_then(Value::as_str) {
        Some(a) => a.to_string(),
        None if v.get("is_skipped").and_then(Value::as_bool) == Some(true) => {
            return Ok(Decision {
                verdict: Verdict::Continue,
                edits,
                facts: None,
            });
        }
        None => return Err("reply has no action".into()),
    };
    let score = v.get("score").and_then(Value::as_f64).unwrap_or(0.0);
    let required = v
        .get("required_score")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let mut symbols: Vec<String> = match v.get("symbols") {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    symbols.sort();
    let message = v
        .pointer("/messages/smtp_message")
        .and_then(Value::as_str)
        .map(reply_text)
        .filter(|m| !m.is_empty());
    let spam = !matches!(action.as_str(), "no action" | "greylist");

    if let Some(Value::Object(m)) = v.get("milter") {
        milter_block(m, &mut edits);
    }
    let added = |edits: &MessageEdits, name: &str| {
        edits.headers.iter().any(|e| {
            matches!(e, HeaderEdit::Add { name: n, .. } | HeaderEdit::Insert { name: n, .. }
                if n.eq_ignore_ascii_case(name))
        })
    };
    if !added(&edits, "X-Spam-Status") {
        let _ = edits.header(HeaderEdit::Add {
            name: "X-Spam-Status".into(),
            value: format!(
                "{}, score={score:.2} required={required:.2} tests={}",
                if spam { "Yes" } else { "No" },
                symbols.join(",")
            ),
        });
    }
    if !added(&edits, "X-Spam-Score") {
        let _ = edits.header(HeaderEdit::Add {
            name: "X-Spam-Score".into(),
            value: format!("{score:.2}"),
        });
    }
    match action.as_str() {
        "add header" if !added(&edits, "X-Spam") => {
            let _ = edits.header(HeaderEdit::Add {
                name: "X-Spam".into(),
                value: "Yes".into(),
            });
        }
        "rewrite subject" => {
            if let Some(s) = v.get("subject").and_then(Value::as_str) {
                let _ = edits.header(HeaderEdit::Change {
                    name: "Subject".into(),
                    index: 1,
                    value: s.to_string(),
                });
            }
        }
        _ => {}
    }
    let verdict = if action == "reject" || t.reject.is_some_and(|r| score >= r) {
        Verdict::Reject {
            code: 554,
            enhanced: Some(Enhanced::known("5.7.1")),
            text: message.unwrap_or_else(|| "Spam message rejected".into()),
        }
    } else if action == "soft reject" {
        Verdict::Tempfail {
            code: 451,
            enhanced: Some(Enhanced::known("4.7.1")),
            text: message.unwrap_or_else(|| "Try again later".into()),
        }
    } else if let Some(junk) = t.junk.filter(|j| score >= *j) {
        Verdict::quarantine(&format!("rspamd score {score:.2} >= junk_score {junk:.2}"))
    } else {
        Verdict::Continue
    };
    Ok(Decision {
        verdict,
        edits,
        facts: Some(Arc::new(SpamFacts {
            engine: engine.to_string(),
            score,
            required,
            action,
            symbols,
        })),
    })
}

/// rspamd's `milter` block: `remove_headers` (`{"Name": n}`: 0 all, n > 0 the nth, n < 0 the
/// nth from the end — taken as all, since the count is not known here), then `add_headers`
/// (`{"Name": value | {value, order} | [..]}`: order absent or -1 appends, ≥ 0 inserts).
fn milter_block(m: &serde_json::Map<String, Value>, edits: &mut MessageEdits) {
    if let Some(Value::Object(rm)) = m.get("remove_headers") {
        for (name, n) in rm {
            let n = n.as_i64().unwrap_or(0);
            let edit = if n > 0 {
                HeaderEdit::Change {
                    name: name.clone(),
                    index: n as usize,
                    value: String::new(),
                }
            } else {
                HeaderEdit::RemoveAll { name: name.clone() }
            };
            let _ = edits.header(edit);
        }
    }
    if let Some(Value::Object(add)) = m.get("add_headers") {
        for (name, spec) in add {
            let items: Vec<&Value> = match spec {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                let (value, order) = match item {
                    Value::String(s) => (s.clone(), -1),
                    Value::Object(o) => (
                        o.get("value")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        o.get("order")
                            .or_else(|| o.get("index"))
                            .and_then(Value::as_i64)
                            .unwrap_or(-1),
                    ),
                    _ => continue,
                };
                let edit = if order >= 0 {
                    HeaderEdit::Insert {
                        index: order as usize,
                        name: name.clone(),
                        value,
                    }
                } else {
                    HeaderEdit::Add {
                        name: name.clone(),
                        value,
                    }
                };
                let _ = edits.header(edit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        junk: Some(6.0),
        reject: Some(15.0),
    };

    fn decide_json(v: serde_json::Value, t: Thresholds) -> Decision {
        decide(v.to_string().as_bytes(), "rspamd http://x", t).unwrap()
    }

    fn added(d: &Decision, name: &str) -> Option<String> {
        d.edits.headers.iter().find_map(|e| match e {
            HeaderEdit::Add { name: n, value } if n == name => Some(value.clone()),
            _ => None,
        })
    }

    #[test]
    fn a_clean_message_gets_the_status_headers_and_goes_on() {
        let d = decide_json(
            serde_json::json!({"action": "no action", "score": 0.4, "required_score": 15,
                "symbols": {"R_SPF_NA": {"score": 0}, "ARC_NA": {"score": 0.0}}}),
            T,
        );
        assert_eq!(d.verdict, Verdict::Continue);
        assert_eq!(
            added(&d, "X-Spam-Status").unwrap(),
            "No, score=0.40 required=15.00 tests=ARC_NA,R_SPF_NA"
        );
        assert_eq!(added(&d, "X-Spam-Score").unwrap(), "0.40");
        // Forged copies go first.
        assert_eq!(
            d.edits.headers[0],
            HeaderEdit::RemoveAll {
                name: "X-Spam-Status".into()
            }
        );
        let f = d.facts.unwrap();
        assert_eq!((f.score, f.action.as_str()), (0.4, "no action"));
        assert_eq!(f.symbols, ["ARC_NA", "R_SPF_NA"]);
    }

    #[test]
    fn actions_and_thresholds_map_to_verdicts() {
        let v = |action: &str, score: f64, msg: Option<&str>| {
            let mut j = serde_json::json!({"action": action, "score": score, "required_score": 15});
            if let Some(m) = msg {
                j["messages"] = serde_json::json!({"smtp_message": m});
            }
            decide_json(j, T).verdict
        };
        assert_eq!(
            v("reject", 1000.0, Some("Gtube pattern")),
            Verdict::Reject {
                code: 554,
                enhanced: Some(Enhanced::known("5.7.1")),
                text: "Gtube pattern".into()
            }
        );
        assert!(
            matches!(v("reject", 20.0, None), Verdict::Reject { text, .. } if text == "Spam message rejected")
        );
        // reject_score refuses whatever rspamd's action.
        assert!(matches!(
            v("add header", 15.0, None),
            Verdict::Reject { .. }
        ));
        assert!(matches!(
            v("soft reject", 1.0, Some("Try again later")),
            Verdict::Tempfail { code: 451, .. }
        ));
        assert!(
            matches!(v("add header", 7.0, None), Verdict::Quarantine(r) if r.contains("7.00 >= junk_score 6.00"))
        );
        assert_eq!(v("greylist", 4.0, None), Verdict::Continue);
        let none = Thresholds::default();
        let d = decide_json(
            serde_json::json!({"action": "add header", "score": 7.0}),
            none,
        );
        assert_eq!(d.verdict, Verdict::Continue);
        assert_eq!(added(&d, "X-Spam").as_deref(), Some("Yes"));
        assert!(
            added(&d, "X-Spam-Status")
                .unwrap()
                .starts_with("Yes, score=7.00")
        );
    }

    #[test]
    fn subject_rewrite_and_the_milter_block() {
        let d = decide_json(
            serde_json::json!({"action": "rewrite subject", "score": 5.5,
                "subject": "***SPAM*** hello",
                "milter": {"remove_headers": {"X-Foo": 0, "X-Bar": 2},
                           "add_headers": {"X-Spamd-Bar": [{"value": "+++", "order": 0}],
                                           "X-Legacy": "v",
                                           "X-Spam-Status": {"value": "theirs", "order": -1}}}}),
            Thresholds::default(),
        );
        let h = &d.edits.headers;
        assert!(h.contains(&HeaderEdit::Change {
            name: "Subject".into(),
            index: 1,
            value: "***SPAM*** hello".into()
        }));
        assert!(h.contains(&HeaderEdit::RemoveAll {
            name: "X-Foo".into()
        }));
        assert!(h.contains(&HeaderEdit::Change {
            name: "X-Bar".into(),
            index: 2,
            value: String::new()
        }));
        assert!(h.contains(&HeaderEdit::Insert {
            index: 0,
            name: "X-Spamd-Bar".into(),
            value: "+++".into()
        }));
        assert_eq!(added(&d, "X-Legacy").as_deref(), Some("v"));
        // rspamd's own X-Spam-Status wins over ours.
        assert_eq!(added(&d, "X-Spam-Status").as_deref(), Some("theirs"));
    }

    #[test]
    fn skipped_errors_and_garbage() {
        let d = decide_json(serde_json::json!({"is_skipped": true}), T);
        assert_eq!((d.verdict, d.facts), (Verdict::Continue, None));
        // rspamd 3.4's answer to GTUBE: a pre-result, "skipped", with its action.
        let d = decide_json(
            serde_json::json!({"is_skipped": true, "score": 15.0, "required_score": 15.0,
                "action": "reject", "symbols": {"GTUBE": {"score": 0.0}},
                "messages": {"smtp_message": "Gtube pattern"}}),
            T,
        );
        assert!(
            matches!(d.verdict, Verdict::Reject { code: 554, text, .. } if text == "Gtube pattern")
        );
        let e = |b: &[u8]| decide(b, "x", T).unwrap_err();
        assert!(e(b"<html>").starts_with("reply is not JSON"));
        assert_eq!(e(br#"{"error":"bad request"}"#), "rspamd: bad request");
        assert_eq!(e(br#"{"score":1}"#), "reply has no action");
    }
}
