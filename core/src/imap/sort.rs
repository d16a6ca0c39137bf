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
mod tests;
