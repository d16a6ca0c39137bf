//! SORT and THREAD logic (RFC 5256): base subject extraction (§2.1), message ordering (§3
//! SORT), and the ORDEREDSUBJECT and REFERENCES threading algorithms (§3 THREAD) with the
//! THREAD response body (§4 `thread-list`). No I/O and no command parsing: the caller fills
//! [`SortFields`] or [`ThreadMsg`] from the message headers.
//!
//! Everything here is safe on hostile input: no panics, no unbounded recursion (trees are
//! walked with explicit stacks, and [`Node`] drops iteratively), and every loop terminates.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// At most this many msg-ids of one message's references are used for threading (the
/// last ones, nearest the parent). Longer References fields are truncated by MUAs anyway
/// (RFC 5256 §3, REFERENCES step 1.A), and the cap bounds the work per message.
pub const MAX_REFERENCES: usize = 1000;

/// Total budget of parent-pointer steps for loop checks in REFERENCES step 1. A realistic
/// mailbox needs a tiny fraction; once a hostile one spends it, further links that would
/// need a check are refused, as if they would introduce a loop, so the result stays a tree.
const MAX_LOOP_CHECK_STEPS: u64 = 1 << 24;

// ---------------------------------------------------------------------------------------
// Base subject (RFC 5256 §2.1)
// ---------------------------------------------------------------------------------------

/// The base subject of `decoded` (a Subject already RFC 2047-decoded), uppercased for
/// comparison (RFC 5256 §2.1 steps (2)–(6), then case folding).
pub fn base_subject(decoded: &str) -> String {
    base_subject_ext(decoded).0
}

/// The base subject of `decoded` and whether extraction removed a `subj-refwd`, a `(fwd)`
/// `subj-trailer` or a `[fwd: ...]` wrapper: the "reply or forward" test of RFC 5256 §3,
/// REFERENCES step 5.
///
/// The ABNF of §2.1 is applied to the UTF-8 text: any character other than `[` and `]`
/// counts as `BLOBCHAR` and any non-space character as `NONWSP`. The result is uppercased
/// with [`char::to_uppercase`].
pub fn base_subject_ext(decoded: &str) -> (String, bool) {
    // Step (1): tabs and continuations become spaces, runs of spaces one space.
    let text = collapse_whitespace(decoded);
    let b = text.as_bytes();
    let (mut start, mut end) = (0, b.len());
    let mut refwd = false;
    loop {
        // Step (2): strip subj-trailer = "(fwd)" / WSP from the end, repeatedly.
        loop {
            if end > start && b[end - 1] == b' ' {
                end -= 1;
            } else if end - start >= 5 && b[end - 5..end].eq_ignore_ascii_case(b"(fwd)") {
                end -= 5;
                refwd = true;
            } else {
                break;
            }
        }
        // Steps (3)–(5): strip subj-leader, then subj-blob, until nothing changes.
        loop {
            let before = start;
            // Step (3): subj-leader = (*subj-blob subj-refwd) / WSP.
            while start < end && b[start] == b' ' {
                start += 1;
            }
            let mut pos = start;
            let (mut blobs, mut last, mut prev) = (0usize, start, start);
            while let Some(next) = blob_at(b, pos, end) {
                blobs += 1;
                prev = last;
                last = next;
                pos = next;
            }
            if let Some(next) = refwd_at(b, pos, end) {
                start = next;
                refwd = true;
                continue;
            }
            // Step (4): drop a leading subj-blob if a non-empty subj-base remains. Step (3)
            // would fail again on the same text after each blob, so the blobs found above
            // are dropped at once, except the last when nothing follows it.
            if blobs > 0 {
                if last < end {
                    start = last;
                } else if blobs >= 2 {
                    start = prev;
                }
            }
            if start == before {
                break;
            }
        }
        // Step (6): subj-fwd-hdr "[fwd:" ... subj-fwd-trl "]", then repeat from step (2).
        if end - start >= 6
            && b[start..start + 5].eq_ignore_ascii_case(b"[fwd:")
            && b[end - 1] == b']'
        {
            start += 5;
            end -= 1;
            refwd = true;
            continue;
        }
        break;
    }
    // Indices only ever stop next to ASCII bytes, so they are char boundaries.
    let base = text.get(start..end).unwrap_or("");
    (base.chars().flat_map(char::to_uppercase).collect(), refwd)
}

/// RFC 5256 §2.1 step (1): whitespace runs (SP, TAB, CR, LF) become one space.
fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_space = false;
    for c in s.chars() {
        if matches!(c, ' ' | '\t' | '\r' | '\n') {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP` at `i`: the index after it.
fn blob_at(b: &[u8], i: usize, end: usize) -> Option<usize> {
    if i >= end || b[i] != b'[' {
        return None;
    }
    let mut j = i + 1;
    while j < end && b[j] != b'[' && b[j] != b']' {
        j += 1;
    }
    if j >= end || b[j] != b']' {
        return None;
    }
    j += 1;
    while j < end && b[j] == b' ' {
        j += 1;
    }
    Some(j)
}

/// `subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"` at `i`: the index after it.
fn refwd_at(b: &[u8], i: usize, end: usize) -> Option<usize> {
    let word = b.get(i..(i + 2).min(end))?;
    let mut j = if word.eq_ignore_ascii_case(b"re") {
        i + 2
    } else if word.eq_ignore_ascii_case(b"fw") {
        if i + 2 < end && b[i + 2].eq_ignore_ascii_case(&b'd') {
            i + 3
        } else {
            i + 2
        }
    } else {
        return None;
    };
    while j < end && b[j] == b' ' {
        j += 1;
    }
    if let Some(next) = blob_at(b, j, end) {
        j = next;
    }
    (j < end && b[j] == b':').then_some(j + 1)
}

// ---------------------------------------------------------------------------------------
// SORT (RFC 5256 §3)
// ---------------------------------------------------------------------------------------

/// A SORT key (RFC 5256 §3; DISPLAYFROM and DISPLAYTO from RFC 5957).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// Internal date and time.
    Arrival,
    /// `addr-mailbox` of the first Cc address.
    Cc,
    /// Sent date (§2.2).
    Date,
    /// `addr-mailbox` of the first From address.
    From,
    /// RFC822.SIZE.
    Size,
    /// Base subject (§2.1).
    Subject,
    /// `addr-mailbox` of the first To address.
    To,
    /// Display name of the first From address (RFC 5957 §3).
    DisplayFrom,
    /// Display name of the first To address (RFC 5957 §3).
    DisplayTo,
}

/// One sort criterion: a key, reversed when `reverse` (the REVERSE prefix, §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Criterion {
    /// What to compare.
    pub key: SortKey,
    /// Descending order for this key only.
    pub reverse: bool,
}

/// What SORT compares for one message; the caller fills it from the message. The strings
/// are shared (`Arc<str>`): a sort of 100,000 messages copies no text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortFields {
    /// Sequence number: the final tie-breaker, ascending and never reversed (§3).
    pub seq: u32,
    /// What the response returns (sequence number or UID).
    pub id: u32,
    /// Internal date, Unix seconds.
    pub arrival: i64,
    /// Sent date in UTC seconds, or the internal date when Date is missing or
    /// unparseable (§2.2).
    pub date: i64,
    /// RFC822.SIZE.
    pub size: u64,
    /// [`base_subject`] of the Subject.
    pub subject: Arc<str>,
    /// `addr-mailbox` of the first From address, `""` if none.
    pub from: Arc<str>,
    /// `addr-mailbox` of the first To address, `""` if none.
    pub to: Arc<str>,
    /// `addr-mailbox` of the first Cc address, `""` if none.
    pub cc: Arc<str>,
    /// Display name of the first From address or, without one, its addr-spec (RFC 5957).
    pub display_from: Arc<str>,
    /// Display name of the first To address or, without one, its addr-spec (RFC 5957).
    pub display_to: Arc<str>,
}

/// Sort `msgs` by `criteria` (RFC 5256 §3): each key in turn, REVERSE flipping only its
/// own key, then the sequence number ascending. Strings compare under i;ascii-casemap
/// (ASCII-uppercased bytes). O(n log n); keys are uppercased once, before sorting.
pub fn sort(msgs: &mut [SortFields], criteria: &[Criterion]) {
    let order = {
        let m: &[SortFields] = msgs;
        let columns: Vec<Vec<Cow<'_, str>>> = criteria
            .iter()
            .map(|c| match text_key(c.key) {
                Some(field) => m.iter().map(|f| ascii_upper(field(f))).collect(),
                None => Vec::new(),
            })
            .collect();
        let mut order: Vec<usize> = (0..m.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            for (c, column) in criteria.iter().zip(&columns) {
                let ord = match c.key {
                    SortKey::Arrival => m[a].arrival.cmp(&m[b].arrival),
                    SortKey::Date => m[a].date.cmp(&m[b].date),
                    SortKey::Size => m[a].size.cmp(&m[b].size),
                    _ => column[a].as_bytes().cmp(column[b].as_bytes()),
                };
                let ord = if c.reverse { ord.reverse() } else { ord };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            m[a].seq.cmp(&m[b].seq).then(a.cmp(&b))
        });
        order
    };
    apply_permutation(msgs, &order);
}

/// The string field a key compares, or `None` for numeric keys.
fn text_key(key: SortKey) -> Option<fn(&SortFields) -> &str> {
    Some(match key {
        SortKey::Cc => |f| &f.cc,
        SortKey::From => |f| &f.from,
        SortKey::Subject => |f| &f.subject,
        SortKey::To => |f| &f.to,
        SortKey::DisplayFrom => |f| &f.display_from,
        SortKey::DisplayTo => |f| &f.display_to,
        SortKey::Arrival | SortKey::Date | SortKey::Size => return None,
    })
}

/// i;ascii-casemap key: `s` with ASCII letters uppercased, borrowed when already so.
fn ascii_upper(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(s.to_ascii_uppercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Reorder `items` in place so that position `i` holds the old `items[order[i]]`.
/// `order` is a permutation of `0..items.len()`.
fn apply_permutation<T>(items: &mut [T], order: &[usize]) {
    let mut done = vec![false; items.len()];
    for start in 0..items.len() {
        if done[start] {
            continue;
        }
        let mut j = start;
        loop {
            done[j] = true;
            let k = order.get(j).copied().unwrap_or(j);
            if k == start || k >= items.len() || done[k] {
                break;
            }
            items.swap(j, k);
            j = k;
        }
    }
}

// ---------------------------------------------------------------------------------------
// THREAD (RFC 5256 §3, §4)
// ---------------------------------------------------------------------------------------

/// What THREAD needs from one message; the caller fills it from the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadMsg {
    /// What the response prints (sequence number or UID).
    pub id: u32,
    /// Sequence number: the tie-breaker for equal sent dates (§2.2).
    pub seq: u32,
    /// The first msg-id of Message-ID as [`parse_msg_ids`] gives it; `None` when missing
    /// or invalid.
    pub message_id: Option<String>,
    /// [`parse_msg_ids`] of References or, when that yields none, the first msg-id of
    /// In-Reply-To; oldest first. Only the last [`MAX_REFERENCES`] are used.
    pub references: Vec<String>,
    /// [`base_subject`] of the Subject.
    pub subject: Arc<str>,
    /// Whether the subject marks a reply or forward ([`base_subject_ext`]).
    pub is_reply: bool,
    /// Sent date, as in [`SortFields::date`].
    pub date: i64,
}

/// One node of a thread tree: a message, or a dummy (`id` `None`) standing for a message
/// that is referenced but not among the threaded ones.
///
/// Dropping, comparing and formatting are iterative, so trees of any depth are safe.
#[derive(Default)]
pub struct Node {
    /// The message's [`ThreadMsg::id`], `None` for a dummy.
    pub id: Option<u32>,
    /// Replies, in sent-date order.
    pub children: Vec<Node>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Move descendants onto a heap stack so that a deep chain does not recurse.
        let mut stack = std::mem::take(&mut self.children);
        while let Some(mut node) = stack.pop() {
            stack.append(&mut node.children);
        }
    }
}

impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        let mut stack = vec![(self, other)];
        while let Some((a, b)) = stack.pop() {
            if a.id != b.id || a.children.len() != b.children.len() {
                return false;
            }
            stack.extend(a.children.iter().zip(&b.children));
        }
        true
    }
}

impl Eq for Node {}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node{}", render(std::slice::from_ref(self)))
    }
}

/// THREAD=ORDEREDSUBJECT (RFC 5256 §3): messages grouped by base subject; in each group,
/// sorted by sent date, the first message is the parent of all the others, which have no
/// children of their own. Threads are ordered by the sent date of their first message.
/// Messages with an empty base subject form one group.
pub fn thread_orderedsubject(msgs: &[ThreadMsg]) -> Vec<Node> {
    let mut order: Vec<usize> = (0..msgs.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&msgs[a], &msgs[b]);
        x.subject
            .cmp(&y.subject)
            .then(date_key(x).cmp(&date_key(y)))
    });
    let mut threads: Vec<((i64, u32), Node)> = Vec::new();
    let mut rest = order.as_slice();
    while let Some((&first, tail)) = rest.split_first() {
        let subject = &msgs[first].subject;
        let len = tail
            .iter()
            .take_while(|&&i| msgs[i].subject == *subject)
            .count();
        let (group, after) = tail.split_at(len);
        let children = group.iter().map(|&i| leaf(msgs[i].id)).collect();
        threads.push((
            date_key(&msgs[first]),
            Node {
                id: Some(msgs[first].id),
                children,
            },
        ));
        rest = after;
    }
    threads.sort_by_key(|(key, _)| *key);
    threads.into_iter().map(|(_, node)| node).collect()
}

fn leaf(id: u32) -> Node {
    Node {
        id: Some(id),
        children: Vec::new(),
    }
}

/// Sent date with the sequence number as tie-breaker (RFC 5256 §2.2).
fn date_key(m: &ThreadMsg) -> (i64, u32) {
    (m.date, m.seq)
}

/// One container of REFERENCES step 1, with intrusive child lists so that unlinking in
/// step 1.B is O(1).
#[derive(Clone, Copy, Default)]
struct Cont {
    msg: Option<usize>,
    parent: Option<usize>,
    first: Option<usize>,
    last: Option<usize>,
    prev: Option<usize>,
    next: Option<usize>,
}

/// State of REFERENCES step 1: the containers and the message ID table.
struct Linker<'a> {
    conts: Vec<Cont>,
    ids: HashMap<&'a str, usize>,
    budget: u64,
}

impl<'a> Linker<'a> {
    fn add(&mut self, msg: Option<usize>) -> usize {
        self.conts.push(Cont {
            msg,
            ..Cont::default()
        });
        self.conts.len() - 1
    }

    /// The container for a referenced msg-id, created as a dummy when unknown (step 1.A).
    fn by_id(&mut self, id: &'a str) -> usize {
        if let Some(&c) = self.ids.get(id) {
            return c;
        }
        let c = self.add(None);
        self.ids.insert(id, c);
        c
    }

    /// Whether making `parent` the parent of `child` would introduce a loop: `parent` is
    /// `child` or one of its descendants (step 1.A). Also true once the budget is spent.
    fn would_loop(&mut self, parent: usize, child: usize) -> bool {
        if parent == child {
            return true;
        }
        if self.conts[child].first.is_none() {
            return false;
        }
        let mut cur = self.conts[parent].parent;
        while let Some(x) = cur {
            if x == child || self.budget == 0 {
                return true;
            }
            self.budget -= 1;
            cur = self.conts[x].parent;
        }
        false
    }

    fn unlink(&mut self, x: usize) {
        let Some(p) = self.conts[x].parent else {
            return;
        };
        let Cont { prev, next, .. } = self.conts[x];
        match prev {
            Some(v) => self.conts[v].next = next,
            None => self.conts[p].first = next,
        }
        match next {
            Some(n) => self.conts[n].prev = prev,
            None => self.conts[p].last = prev,
        }
        let c = &mut self.conts[x];
        (c.parent, c.prev, c.next) = (None, None, None);
    }

    /// Append `x`, which has no parent, to the children of `p`.
    fn link(&mut self, p: usize, x: usize) {
        let last = self.conts[p].last;
        {
            let c = &mut self.conts[x];
            (c.parent, c.prev, c.next) = (Some(p), last, None);
        }
        match last {
            Some(l) => self.conts[l].next = Some(x),
            None => self.conts[p].first = Some(x),
        }
        self.conts[p].last = Some(x);
    }
}

/// The thread forest between REFERENCES steps: what each node holds and its children.
struct Forest {
    msg: Vec<Option<usize>>,
    kids: Vec<Vec<usize>>,
}

impl Forest {
    /// Nodes reachable from `roots` in pre-order: every node comes before its
    /// descendants, so the reverse visits children before parents.
    fn preorder(&self, roots: &[usize]) -> Vec<usize> {
        let mut seen = vec![false; self.msg.len()];
        let mut order = Vec::with_capacity(self.msg.len());
        let mut stack: Vec<usize> = roots.iter().rev().copied().collect();
        while let Some(x) = stack.pop() {
            if std::mem::replace(&mut seen[x], true) {
                continue;
            }
            order.push(x);
            stack.extend(self.kids[x].iter().rev().copied());
        }
        order
    }
}

/// THREAD=REFERENCES (RFC 5256 §3): threads from Message-ID and References, pruned of
/// dummies, merged by base subject at the top level and sorted by sent date.
///
/// Interpretations where the RFC leaves a choice:
/// - messages are linked in sequence-number order, so the lowest one keeps a duplicated
///   Message-ID (step 1.A);
/// - in step 1.B a link that would introduce a loop is not made and the message keeps its
///   current parent;
/// - before step 5 the top level is ordered by sent date (a dummy by its earliest child),
///   and a dummy's "first child" in step 5.B.i is its earliest child, so the result does
///   not depend on input order; each thread subject is computed once, in step 5.B.
pub fn thread_references(msgs: &[ThreadMsg]) -> Vec<Node> {
    // Step 1: link messages by their references.
    let mut by_seq: Vec<usize> = (0..msgs.len()).collect();
    by_seq.sort_by_key(|&i| msgs[i].seq);
    let mut lk = Linker {
        conts: Vec::with_capacity(msgs.len()),
        ids: HashMap::with_capacity(msgs.len()),
        budget: MAX_LOOP_CHECK_STEPS,
    };
    for &m in &by_seq {
        let msg = &msgs[m];
        // Missing or duplicate Message-IDs get a unique container outside the table.
        let me = match msg.message_id.as_deref().filter(|id| !id.is_empty()) {
            Some(id) => match lk.ids.get(id).copied() {
                Some(c) if lk.conts[c].msg.is_none() => {
                    lk.conts[c].msg = Some(m);
                    c
                }
                Some(_) => lk.add(Some(m)),
                None => {
                    let c = lk.add(Some(m));
                    lk.ids.insert(id, c);
                    c
                }
            },
            None => lk.add(Some(m)),
        };
        let skip = msg.references.len().saturating_sub(MAX_REFERENCES);
        // Step 1.A: chain the references, never changing an existing parent.
        let mut last = None;
        for r in msg.references[skip..].iter().filter(|r| !r.is_empty()) {
            let c = lk.by_id(r);
            if let Some(p) = last
                && lk.conts[c].parent.is_none()
                && !lk.would_loop(p, c)
            {
                lk.link(p, c);
            }
            last = Some(c);
        }
        // Step 1.B: the last reference (or none) becomes the parent.
        match last {
            Some(p) => {
                if lk.conts[me].parent != Some(p) && !lk.would_loop(p, me) {
                    lk.unlink(me);
                    lk.link(p, me);
                }
            }
            None => lk.unlink(me),
        }
    }

    // Step 2: the root set is every container without a parent.
    let conts = lk.conts;
    let roots: Vec<usize> = (0..conts.len())
        .filter(|&i| conts[i].parent.is_none())
        .collect();
    // Step 3: the message ID table is no longer needed.
    drop(lk.ids);
    let mut forest = Forest {
        msg: conts.iter().map(|c| c.msg).collect(),
        kids: conts
            .iter()
            .map(|c| {
                let mut kids = Vec::new();
                let mut cur = c.first;
                // Bounded by the container count even if the lists were inconsistent.
                while let Some(k) = cur.filter(|_| kids.len() < conts.len()) {
                    kids.push(k);
                    cur = conts[k].next;
                }
                kids
            })
            .collect(),
    };
    drop(conts);

    let roots = prune(&mut forest, &roots);
    let roots = merge_by_subject(&mut forest, msgs, roots);
    sort_and_build(&mut forest, msgs, roots)
}

/// REFERENCES step 4: delete dummies without children and splice the children of other
/// dummies into their parent, except at the top level when there are several children.
/// Returns the new top level.
fn prune(forest: &mut Forest, roots: &[usize]) -> Vec<usize> {
    for &x in forest.preorder(roots).iter().rev() {
        // Children were pruned first, so spliced-in grandchildren are never dummies.
        let old = std::mem::take(&mut forest.kids[x]);
        let mut new = Vec::with_capacity(old.len());
        for c in old {
            if forest.msg[c].is_some() {
                new.push(c);
            } else {
                new.append(&mut forest.kids[c]);
            }
        }
        forest.kids[x] = new;
    }
    let mut top = Vec::with_capacity(roots.len());
    for &r in roots {
        match (forest.msg[r], forest.kids[r].as_slice()) {
            (Some(_), _) => top.push(r),
            (None, []) => {}
            (None, [only]) => top.push(*only),
            (None, _) => top.push(r),
        }
    }
    top
}

/// Sent-date key of a pruned top-level node: its own, or a dummy's earliest child's.
fn top_key(forest: &Forest, msgs: &[ThreadMsg], x: usize) -> (i64, u32) {
    match forest.msg[x] {
        Some(m) => date_key(&msgs[m]),
        None => forest.kids[x]
            .iter()
            .filter_map(|&k| forest.msg[k].map(|m| date_key(&msgs[m])))
            .min()
            .unwrap_or((i64::MAX, u32::MAX)),
    }
}

/// REFERENCES step 5: gather top-level threads that share a base subject. Returns the new
/// top level.
fn merge_by_subject<'a>(
    forest: &mut Forest,
    msgs: &'a [ThreadMsg],
    mut roots: Vec<usize>,
) -> Vec<usize> {
    roots.sort_by_cached_key(|&r| top_key(forest, msgs, r));
    let reply = |forest: &Forest, x: usize| forest.msg[x].is_some_and(|m| msgs[m].is_reply);
    // Step 5.B.i: the thread subject, from the message or a dummy's first child.
    let subjects: Vec<&'a str> = roots
        .iter()
        .map(|&r| {
            let first = match forest.msg[r] {
                Some(m) => Some(m),
                None => forest.kids[r]
                    .iter()
                    .filter_map(|&k| forest.msg[k])
                    .min_by_key(|&m| date_key(&msgs[m])),
            };
            first.map_or("", |m| &*msgs[m].subject)
        })
        .collect();

    // Step 5.A–B: the subject table, preferring dummies, then non-replies.
    let mut table: HashMap<&'a str, usize> = HashMap::new();
    for (&r, &s) in roots.iter().zip(&subjects) {
        if s.is_empty() {
            continue;
        }
        match table.get(s).copied() {
            None => {
                table.insert(s, r);
            }
            Some(t) => {
                if forest.msg[t].is_some()
                    && (forest.msg[r].is_none() || (reply(forest, t) && !reply(forest, r)))
                {
                    table.insert(s, r);
                }
            }
        }
    }

    // Step 5.C: merge each thread into the one in the table.
    let mut at_root = vec![false; forest.msg.len()];
    for &r in &roots {
        at_root[r] = true;
    }
    let mut added = Vec::new();
    for (&r, &s) in roots.iter().zip(&subjects) {
        if s.is_empty() || !at_root[r] {
            continue;
        }
        let Some(t) = table.get(s).copied() else {
            continue;
        };
        if t == r {
            continue;
        }
        at_root[r] = false;
        match (forest.msg[t], forest.msg[r]) {
            (None, None) => {
                let mut kids = std::mem::take(&mut forest.kids[r]);
                forest.kids[t].append(&mut kids);
            }
            (None, Some(_)) => forest.kids[t].push(r),
            (Some(_), Some(_)) if reply(forest, r) && !reply(forest, t) => forest.kids[t].push(r),
            _ => {
                // A new dummy holding both; step 5.B makes `r` a message here, but if it
                // were a dummy its children are taken rather than nesting dummies.
                let mut kids = vec![t];
                if forest.msg[r].is_some() {
                    kids.push(r);
                } else {
                    kids.append(&mut forest.kids[r]);
                }
                let d = forest.msg.len();
                forest.msg.push(None);
                forest.kids.push(kids);
                at_root[t] = false;
                at_root.push(true);
                added.push(d);
                table.insert(s, d);
            }
        }
    }
    roots
        .into_iter()
        .chain(added)
        .filter(|&x| at_root[x])
        .collect()
}

/// REFERENCES step 6: sort every set of siblings by sent date, deepest first, a dummy
/// taking its first child's date; then build the [`Node`] trees.
fn sort_and_build(forest: &mut Forest, msgs: &[ThreadMsg], mut roots: Vec<usize>) -> Vec<Node> {
    let order = forest.preorder(&roots);
    let mut key = vec![(i64::MAX, u32::MAX); forest.msg.len()];
    for &x in order.iter().rev() {
        let mut kids = std::mem::take(&mut forest.kids[x]);
        kids.sort_by_key(|&k| key[k]);
        key[x] = match forest.msg[x] {
            Some(m) => date_key(&msgs[m]),
            None => kids.first().map_or((i64::MAX, u32::MAX), |&k| key[k]),
        };
        forest.kids[x] = kids;
    }
    roots.sort_by_key(|&r| key[r]);

    let mut built: Vec<Option<Node>> = Vec::new();
    built.resize_with(forest.msg.len(), || None);
    for &x in order.iter().rev() {
        let children = forest.kids[x]
            .iter()
            .filter_map(|&k| built[k].take())
            .collect();
        let id = forest.msg[x].map(|m| msgs[m].id);
        built[x] = Some(Node { id, children });
    }
    roots.iter().filter_map(|&r| built[r].take()).collect()
}

/// The THREAD response body for `threads` (RFC 5256 §4 `thread-list`), e.g.
/// `(2)(3 6 (4 23)(44 7 96))`: a node with one child is followed by it, one with several
/// by a parenthesised list per child. Dummies print no number; a dummy with no message
/// below it is left out.
pub fn render(threads: &[Node]) -> String {
    // Flatten breadth-first: node i's children are nodes first[i]..first[i] + len.
    let mut nodes: Vec<&Node> = threads.iter().collect();
    let mut first = Vec::with_capacity(nodes.len());
    let mut i = 0;
    while let Some(&n) = nodes.get(i) {
        first.push(nodes.len());
        nodes.extend(n.children.iter());
        i += 1;
    }
    let kids = |i: usize| first[i]..first[i] + nodes[i].children.len();
    // Whether a message is at or below each node; children come after parents.
    let mut live = vec![false; nodes.len()];
    for i in (0..nodes.len()).rev() {
        live[i] = nodes[i].id.is_some() || kids(i).any(|k| live[k]);
    }

    enum Op {
        Node(usize),
        Text(&'static str),
    }
    let mut out = String::new();
    let mut stack = Vec::new();
    for root in (0..threads.len()).filter(|&r| live[r]) {
        stack.push(Op::Text(")"));
        stack.push(Op::Node(root));
        out.push('(');
        while let Some(op) = stack.pop() {
            let x = match op {
                Op::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Op::Node(x) => x,
            };
            if let Some(id) = nodes[x].id {
                let _ = write!(out, "{id}");
            }
            let count = kids(x).filter(|&k| live[k]).count();
            if count > 0 && nodes[x].id.is_some() {
                out.push(' ');
            }
            if count == 1 {
                stack.extend(kids(x).filter(|&k| live[k]).map(Op::Node));
            } else {
                for k in kids(x).rev().filter(|&k| live[k]) {
                    stack.extend([Op::Text(")"), Op::Node(k), Op::Text("(")]);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// msg-id extraction
// ---------------------------------------------------------------------------------------

/// The msg-ids in a References, In-Reply-To or Message-ID value, in order, each as
/// `<left@right>`. Comments, quoted phrases and folding between them are skipped;
/// inside the brackets, whitespace and comments are dropped and quoted parts unquoted, so
/// `<"a b"@x>` and `<a b@x>` give `<ab@x>` (RFC 5256 §3 REFERENCES: msg-ids MUST be
/// normalized for quoting). Values without `@` or with an empty side are not msg-ids.
pub fn parse_msg_ids(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars();
    let mut cur: Option<String> = None;
    while let Some(c) = chars.next() {
        match (c, cur.as_mut()) {
            ('(', _) => skip_comment(&mut chars),
            ('<', _) => cur = Some(String::new()),
            ('"', None) => {
                skip_quoted(&mut chars, None);
            }
            (_, None) => {}
            ('"', Some(id)) => {
                if !skip_quoted(&mut chars, Some(id)) {
                    cur = None;
                }
            }
            ('>', Some(id)) => {
                let valid = matches!(id.find('@'), Some(at) if at > 0) && !id.ends_with('@');
                if valid {
                    out.push(format!("<{id}>"));
                }
                cur = None;
            }
            (' ' | '\t' | '\r' | '\n', Some(_)) => {}
            (_, Some(id)) => id.push(c),
        }
    }
    out
}

/// Skip a comment after its `(`, honouring nesting and backslash escapes.
fn skip_comment(chars: &mut std::str::Chars<'_>) {
    let mut depth = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Skip a quoted string after its `"`, appending its unescaped content to `into`.
/// Returns whether the closing quote was found.
fn skip_quoted(chars: &mut std::str::Chars<'_>, mut into: Option<&mut String>) -> bool {
    while let Some(c) = chars.next() {
        let c = match c {
            '"' => return true,
            '\\' => match chars.next() {
                Some(e) => e,
                None => return false,
            },
            c => c,
        };
        if let Some(s) = into.as_deref_mut() {
            s.push(c);
        }
    }
    false
}

#[cfg(test)]
mod tests {
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
}
