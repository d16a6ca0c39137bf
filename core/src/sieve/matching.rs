//! Comparators and match types (RFC 5228 §2.7, RFC 5231, RFC 5229 match variables, the regex
//! draft). Every match is bounded: `:matches` places its `*`-separated pieces leftmost, one
//! scan each (no backtracking blow-up); `:regex` uses the `regex` crate, linear in the input.

use std::cmp::Ordering;

use super::script::{Comparator, Match, MatchType, Rel, regex};

fn fold(c: char, comparator: Comparator) -> char {
    if comparator == Comparator::Octet {
        c
    } else {
        c.to_ascii_lowercase()
    }
}

/// The value of a string under `i;ascii-numeric` (RFC 4790 §9.1): its leading digits, or
/// positive infinity (`None`) when it starts with none.
fn numeric(s: &str) -> Option<u128> {
    let digits: &str = &s[..s.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > 38 {
        return Some(u128::MAX);
    }
    Some(trimmed.parse().unwrap_or(0))
}

/// Order two values under a comparator.
pub fn compare(a: &str, b: &str, comparator: Comparator) -> Ordering {
    match comparator {
        Comparator::Octet => a.as_bytes().cmp(b.as_bytes()),
        Comparator::AsciiCasemap => a
            .bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.bytes().map(|c| c.to_ascii_lowercase())),
        Comparator::AsciiNumeric => match (numeric(a), numeric(b)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => x.cmp(&y),
        },
    }
}

fn rel_holds(o: Ordering, rel: Rel) -> bool {
    match rel {
        Rel::Gt => o == Ordering::Greater,
        Rel::Ge => o != Ordering::Less,
        Rel::Lt => o == Ordering::Less,
        Rel::Le => o != Ordering::Greater,
        Rel::Eq => o == Ordering::Equal,
        Rel::Ne => o != Ordering::Equal,
    }
}

/// Substring search in linear time (the ASCII case folded on both sides first).
fn contains(hay: &str, needle: &str, comparator: Comparator) -> bool {
    if needle.is_empty() {
        return true;
    }
    if comparator == Comparator::Octet {
        return memchr::memmem::find(hay.as_bytes(), needle.as_bytes()).is_some();
    }
    let h = hay.as_bytes().to_ascii_lowercase();
    let n = needle.as_bytes().to_ascii_lowercase();
    memchr::memmem::find(&h, &n).is_some()
}

/// One piece of a `:matches` pattern.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(char),
    One,
}

/// `:matches` with its match variables: `Some(captures)` (one per `*` and `?`, in order) when
/// `value` matches `pattern`. Pieces between stars are placed leftmost, which finds a match
/// whenever one exists (each star only needs the text up to the next piece's first place),
/// in O(len(value) × len(pattern)).
pub fn wildcard(value: &str, pattern: &str, comparator: Comparator) -> Option<Vec<String>> {
    // Split the pattern into star-separated segments of pieces.
    let mut segments: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => segments.push(Vec::new()),
            '?' => segments.last_mut().unwrap().push(Piece::One),
            '\\' => {
                let next = chars.next().unwrap_or('\\');
                segments.last_mut().unwrap().push(Piece::Lit(next));
            }
            c => segments.last_mut().unwrap().push(Piece::Lit(c)),
        }
    }
    let v: Vec<char> = value.chars().collect();
    let seg_at = |seg: &[Piece], at: usize| -> bool {
        at + seg.len() <= v.len()
            && seg.iter().zip(&v[at..]).all(|(p, c)| match p {
                Piece::One => true,
                Piece::Lit(l) => fold(*l, comparator) == fold(*c, comparator),
            })
    };
    // `?` captures of a segment placed at `at`.
    let ones = |seg: &[Piece], at: usize, out: &mut Vec<(usize, String)>| {
        for (i, p) in seg.iter().enumerate() {
            if *p == Piece::One {
                out.push((0, v[at + i].to_string()));
            }
        }
    };
    let mut caps: Vec<(usize, String)> = Vec::new();
    let first = &segments[0];
    if segments.len() == 1 {
        return (v.len() == first.len() && seg_at(first, 0)).then(|| {
            ones(first, 0, &mut caps);
            caps.into_iter().map(|c| c.1).collect()
        });
    }
    if !seg_at(first, 0) {
        return None;
    }
    ones(first, 0, &mut caps);
    let mut pos = first.len();
    let last = segments.last().unwrap();
    if v.len() < pos + last.len() {
        return None;
    }
    let tail_start = v.len() - last.len();
    for seg in &segments[1..segments.len() - 1] {
        let found = (pos..=tail_start.saturating_sub(seg.len()))
            .find(|&at| at + seg.len() <= tail_start && seg_at(seg, at))?;
        caps.push((0, v[pos..found].iter().collect()));
        ones(seg, found, &mut caps);
        pos = found + seg.len();
    }
    if pos > tail_start || !seg_at(last, tail_start) {
        return None;
    }
    caps.push((0, v[pos..tail_start].iter().collect()));
    ones(last, tail_start, &mut caps);
    Some(caps.into_iter().map(|c| c.1).collect())
}

/// The outcome of matching values against keys.
#[derive(Debug, Default)]
pub struct Matched {
    /// Whether any value matched any key.
    pub hit: bool,
    /// Match variables of the first hit (`${0}` is the whole value) for `:matches`/`:regex`.
    pub captures: Option<Vec<String>>,
    /// Work done (characters compared, roughly), for the step budget.
    pub cost: u64,
}

/// Match `values` against `keys`. `:count` counts the values (compared with the test's
/// comparator, RFC 5231 §4.2); a regex key that is no valid pattern never matches. Each
/// comparison's cost is counted before it is made: once `budget` would be passed, the
/// match stops unmade with a cost over the budget (the run then ends with an error).
pub fn matches<V: AsRef<str>, K: AsRef<str>>(
    values: &[V],
    keys: &[K],
    m: Match,
    budget: u64,
) -> Matched {
    let mut out = Matched::default();
    if let MatchType::Count(rel) = m.kind {
        let n = values.len().to_string();
        out.cost = keys.len() as u64;
        out.hit = keys
            .iter()
            .any(|k| rel_holds(compare(&n, k.as_ref(), m.comparator), rel));
        return out;
    }
    for k in keys {
        let k = k.as_ref();
        let compiled = if m.kind == MatchType::Regex {
            // Compiling costs far more than a comparison: a script of thousands of regex
            // tests runs out of budget instead of CPU.
            out.cost += 100 + k.len() as u64;
            match regex(k, m.comparator) {
                Ok(r) => Some(r),
                Err(_) => continue,
            }
        } else {
            None
        };
        for v in values {
            let v = v.as_ref();
            out.cost += 1 + (v.len() as u64 + k.len() as u64) / 64;
            if m.kind == MatchType::Matches {
                out.cost += (v.len() as u64).saturating_mul(k.len() as u64) / 256;
            }
            if out.cost > budget {
                out.hit = false;
                out.captures = None;
                return out;
            }
            let hit = match m.kind {
                MatchType::Is => compare(v, k, m.comparator) == Ordering::Equal,
                MatchType::Contains => contains(v, k, m.comparator),
                MatchType::Value(rel) => rel_holds(compare(v, k, m.comparator), rel),
                MatchType::Matches => {
                    if let Some(c) = wildcard(v, k, m.comparator) {
                        let mut all = vec![v.to_string()];
                        all.extend(c);
                        out.captures = Some(all);
                        true
                    } else {
                        false
                    }
                }
                MatchType::Regex => {
                    let r = compiled.as_ref().expect("compiled");
                    if let Some(c) = r.captures(v) {
                        out.captures = Some(
                            (0..c.len().min(10))
                                .map(|i| {
                                    c.get(i).map(|g| g.as_str().to_string()).unwrap_or_default()
                                })
                                .collect(),
                        );
                        true
                    } else {
                        false
                    }
                }
                MatchType::Count(_) => unreachable!(),
            };
            if hit {
                out.hit = true;
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CI: Comparator = Comparator::AsciiCasemap;

    #[test]
    fn wildcards_and_their_captures() {
        assert_eq!(
            wildcard("Hello World", "h*o w*", CI),
            Some(vec!["ell".into(), "orld".into()])
        );
        assert_eq!(wildcard("abc", "a?c", CI), Some(vec!["b".into()]));
        assert!(wildcard("abc", "a?c", Comparator::Octet).is_some());
        assert!(wildcard("ABC", "a?c", Comparator::Octet).is_none());
        assert!(wildcard("", "*", CI).is_some());
        assert!(wildcard("x", "", CI).is_none());
        assert!(wildcard("a*b", "a\\*b", CI).is_some());
        assert!(wildcard("axb", "a\\*b", CI).is_none());
        assert!(wildcard("abcabc", "*c*c", CI).is_some());
        assert!(wildcard("ab", "*ab*b", CI).is_none());
        // RFC 5229 §3.2 example: the first star takes as little as possible.
        assert_eq!(
            wildcard("[acme-users] [fwd] version 1.0 is out", "[*] *", CI).unwrap()[0],
            "acme-users"
        );
        // A hostile pattern costs O(n·m), not exponential.
        let v = "a".repeat(5000);
        let p = "*a".repeat(200) + "b";
        assert!(wildcard(&v, &p, CI).is_none());
    }

    #[test]
    fn comparators_and_relations() {
        assert_eq!(
            compare("10", "9", Comparator::AsciiNumeric),
            Ordering::Greater
        );
        assert_eq!(
            compare("abc", "9", Comparator::AsciiNumeric),
            Ordering::Greater
        );
        assert_eq!(
            compare("007x", "7", Comparator::AsciiNumeric),
            Ordering::Equal
        );
        let m = Match {
            comparator: Comparator::AsciiNumeric,
            kind: MatchType::Count(Rel::Ge),
        };
        assert!(matches(&["a", "b"], &["2"], m, u64::MAX).hit);
        assert!(!matches(&["a"], &["2"], m, u64::MAX).hit);
        let m = Match {
            comparator: CI,
            kind: MatchType::Regex,
        };
        let r = matches(&["Re: [list] Hi"], &["^re: \\[([a-z]+)\\]"], m, u64::MAX);
        assert!(r.hit);
        assert_eq!(r.captures.unwrap()[1], "list");
    }
}
