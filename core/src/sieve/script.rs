//! The checker: the parser's generic tree in, a typed script out. It knows every command,
//! test and tag Corvus implements, which extension each needs (`require`), which tags take an
//! argument, and the positional arguments; anything else is an error naming the line and
//! column, as a client uploading the script over ManageSieve sees it.

use std::collections::BTreeSet;

use super::parse::{self, Arg, Command, Error, Pos, Test as PTest};

/// The extensions Corvus implements (the ManageSieve `SIEVE` capability).
pub const EXTENSIONS: &[&str] = &[
    "fileinto",
    "reject",
    "ereject",
    "envelope",
    "encoded-character",
    "vacation",
    "subaddress",
    "comparator-i;ascii-numeric",
    "relational",
    "regex",
    "imap4flags",
    "copy",
    "body",
    "variables",
    "date",
    "index",
    "mailbox",
];

/// A checked script.
#[derive(Debug, Clone)]
pub struct Script {
    /// Its commands.
    pub commands: Vec<Node>,
    /// Extensions it required.
    pub requires: BTreeSet<String>,
    /// Whether it required `variables` (asked for every string the run expands).
    pub variables: bool,
}

impl Script {
    /// Whether `ext` was required.
    pub fn has(&self, ext: &str) -> bool {
        self.requires.contains(ext)
    }
}

/// A command and where it is.
#[derive(Debug, Clone)]
pub struct Node {
    /// Where the command begins.
    pub pos: Pos,
    /// What it is.
    pub cmd: Cmd,
}

/// A string argument: literal text, with `${...}` expanded at run time when the script uses
/// `variables`.
pub type Str = String;

/// A command.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// `if` with its `elsif`s (test, position, block), then the `else` block.
    If {
        /// Each branch.
        branches: Vec<(Test, Vec<Node>)>,
        /// The `else` block.
        otherwise: Option<Vec<Node>>,
    },
    /// `stop`.
    Stop,
    /// `keep [:flags]`.
    Keep {
        /// Flags to store with, instead of the internal variable's.
        flags: Option<Vec<Str>>,
    },
    /// `discard`.
    Discard,
    /// `fileinto [:copy] [:create] [:flags] mailbox`.
    FileInto {
        /// The mailbox.
        mailbox: Str,
        /// Keep the implicit keep.
        copy: bool,
        /// Create the mailbox when missing.
        create: bool,
        /// Flags to store with.
        flags: Option<Vec<Str>>,
    },
    /// `redirect [:copy] address`.
    Redirect {
        /// Where to.
        address: Str,
        /// Keep the implicit keep.
        copy: bool,
    },
    /// `reject` / `ereject`.
    Reject {
        /// Why.
        reason: Str,
    },
    /// `setflag` / `addflag` / `removeflag` `[variable] flags`.
    Flags {
        /// Which.
        op: FlagOp,
        /// The variable, when not the internal one.
        var: Option<Str>,
        /// The flags.
        flags: Vec<Str>,
    },
    /// `set [modifiers] name value`.
    Set {
        /// Variable name (lower case).
        name: String,
        /// Value.
        value: Str,
        /// Modifiers, highest precedence first.
        modifiers: Vec<Modifier>,
    },
    /// `vacation`.
    Vacation(Box<Vacation>),
}

/// The three flag commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// Replace.
    Set,
    /// Add.
    Add,
    /// Remove.
    Remove,
}

/// `set` modifiers (RFC 5229 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Modifier {
    /// :lower (precedence 40).
    Lower,
    /// :upper (40).
    Upper,
    /// :lowerfirst (30).
    LowerFirst,
    /// :upperfirst (30).
    UpperFirst,
    /// :quotewildcard (20).
    QuoteWildcard,
    /// :length (10).
    Length,
}

/// `vacation` arguments (RFC 5230).
#[derive(Debug, Clone)]
pub struct Vacation {
    /// :days.
    pub days: Option<u64>,
    /// :subject.
    pub subject: Option<Str>,
    /// :from.
    pub from: Option<Str>,
    /// :addresses.
    pub addresses: Vec<Str>,
    /// :mime.
    pub mime: bool,
    /// :handle.
    pub handle: Option<Str>,
    /// The reason.
    pub reason: Str,
}

/// A test.
#[derive(Debug, Clone)]
pub enum Test {
    /// `true`.
    True,
    /// `false`.
    False,
    /// `not`.
    Not(Box<Test>),
    /// `allof`.
    AllOf(Vec<Test>),
    /// `anyof`.
    AnyOf(Vec<Test>),
    /// `exists`.
    Exists(Vec<Str>),
    /// `size :over/:under`.
    Size {
        /// `:over`.
        over: bool,
        /// The limit.
        limit: u64,
    },
    /// `header`.
    Header {
        /// Header names.
        names: Vec<Str>,
        /// How to match.
        m: Match,
        /// Keys.
        keys: Vec<Str>,
        /// `:index`.
        index: Option<Index>,
    },
    /// `address`.
    Address {
        /// Address part.
        part: AddressPart,
        /// Header names.
        names: Vec<Str>,
        /// How to match.
        m: Match,
        /// Keys.
        keys: Vec<Str>,
        /// `:index`.
        index: Option<Index>,
    },
    /// `envelope`.
    Envelope {
        /// Address part.
        part: AddressPart,
        /// "from" / "to".
        names: Vec<Str>,
        /// How to match.
        m: Match,
        /// Keys.
        keys: Vec<Str>,
    },
    /// `body`.
    Body {
        /// Transform.
        transform: BodyTransform,
        /// How to match.
        m: Match,
        /// Keys.
        keys: Vec<Str>,
    },
    /// `date` (with a header) or `currentdate` (`header: None`).
    Date {
        /// Header name, or none for `currentdate`.
        header: Option<Str>,
        /// Zone.
        zone: Zone,
        /// Date part.
        part: Str,
        /// How to match.
        m: Match,
        /// Keys.
        keys: Vec<Str>,
        /// `:index`.
        index: Option<Index>,
    },
    /// `string` (variables).
    String {
        /// Sources.
        sources: Vec<Str>,
        /// How to match.
        m: Match,
        /// Keys.
        keys: Vec<Str>,
    },
    /// `hasflag`.
    HasFlag {
        /// Variables, or the internal one.
        vars: Vec<Str>,
        /// How to match.
        m: Match,
        /// Keys.
        keys: Vec<Str>,
    },
    /// `mailboxexists`.
    MailboxExists(Vec<Str>),
}

/// `:index N [:last]` (RFC 5260 §6).
#[derive(Debug, Clone, Copy)]
pub struct Index {
    /// From 1.
    pub n: u64,
    /// Count from the end.
    pub last: bool,
}

/// Time zone of a date test.
#[derive(Debug, Clone)]
pub enum Zone {
    /// The server's.
    Local,
    /// `:originalzone`.
    Original,
    /// `:zone "+0100"`.
    Fixed(Str),
}

/// Body transforms (RFC 5173).
#[derive(Debug, Clone)]
pub enum BodyTransform {
    /// `:raw`.
    Raw,
    /// `:content` types.
    Content(Vec<Str>),
    /// `:text` (the default).
    Text,
}

/// Address parts (RFC 5228 §2.7.4, RFC 5233).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPart {
    /// `:all`.
    All,
    /// `:localpart`.
    Local,
    /// `:domain`.
    Domain,
    /// `:user`.
    User,
    /// `:detail`.
    Detail,
}

/// Comparators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    /// `i;octet`.
    Octet,
    /// `i;ascii-casemap` (the default).
    AsciiCasemap,
    /// `i;ascii-numeric`.
    AsciiNumeric,
}

/// Relational operators (RFC 5231).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rel {
    /// gt
    Gt,
    /// ge
    Ge,
    /// lt
    Lt,
    /// le
    Le,
    /// eq
    Eq,
    /// ne
    Ne,
}

/// Match types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    /// `:is` (the default).
    Is,
    /// `:contains`.
    Contains,
    /// `:matches`.
    Matches,
    /// `:regex`.
    Regex,
    /// `:value`.
    Value(Rel),
    /// `:count`.
    Count(Rel),
}

/// Comparator and match type of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Comparator.
    pub comparator: Comparator,
    /// Match type.
    pub kind: MatchType,
}

fn err(pos: Pos, message: impl Into<String>) -> Error {
    Error {
        pos,
        message: message.into(),
    }
}

/// Parse and check `text`.
pub fn compile(text: &str, limits: parse::Limits) -> Result<Script, Error> {
    let tree = parse::parse(text, limits)?;
    let mut c = Checker {
        requires: BTreeSet::new(),
        past_requires: false,
    };
    let commands = c.block(&tree)?;
    Ok(Script {
        commands,
        variables: c.requires.contains("variables"),
        requires: c.requires,
    })
}

struct Checker {
    requires: BTreeSet<String>,
    past_requires: bool,
}

/// The arguments of one command or test, sorted into tags (with their values) and
/// positional arguments.
struct Args<'a> {
    tags: Vec<(String, Pos, Option<&'a Arg>)>,
    positional: Vec<&'a Arg>,
}

/// Tags that take an argument, and what kind.
fn tag_takes_arg(tag: &str) -> bool {
    matches!(
        tag,
        "comparator"
            | "days"
            | "seconds"
            | "subject"
            | "from"
            | "addresses"
            | "handle"
            | "flags"
            | "index"
            | "zone"
            | "content"
            | "value"
            | "count"
    )
}

fn split_args<'a>(args: &'a [Arg]) -> Result<Args<'a>, Error> {
    let mut out = Args {
        tags: Vec::new(),
        positional: Vec::new(),
    };
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a {
            Arg::Tag(t, pos) => {
                if !out.positional.is_empty() {
                    return Err(err(
                        *pos,
                        format!(":{t} must come before the other arguments"),
                    ));
                }
                if out.tags.iter().any(|(x, _, _)| x == t) {
                    return Err(err(*pos, format!(":{t} given twice")));
                }
                let value = if tag_takes_arg(t) {
                    match it.next() {
                        Some(v @ (Arg::Strings(..) | Arg::Number(..))) => Some(v),
                        _ => return Err(err(*pos, format!(":{t} needs an argument"))),
                    }
                } else {
                    None
                };
                out.tags.push((t.clone(), *pos, value));
            }
            other => out.positional.push(other),
        }
    }
    Ok(out)
}

fn arg_pos(a: &Arg) -> Pos {
    match a {
        Arg::Strings(_, p) | Arg::Number(_, p) | Arg::Tag(_, p) => *p,
    }
}

impl Checker {
    fn need(&self, ext: &str, pos: Pos, what: &str) -> Result<(), Error> {
        if self.requires.contains(ext) {
            Ok(())
        } else {
            Err(err(
                pos,
                format!("{what} needs the \"{ext}\" extension: add require \"{ext}\";"),
            ))
        }
    }

    fn block(&mut self, cmds: &[Command]) -> Result<Vec<Node>, Error> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < cmds.len() {
            let c = &cmds[i];
            if c.name == "require" {
                if self.past_requires {
                    return Err(err(c.pos, "require must come before every other command"));
                }
                let [Arg::Strings(exts, p)] = c.args.as_slice() else {
                    return Err(err(c.pos, "require takes one string list"));
                };
                for e in exts {
                    let e = e.to_ascii_lowercase();
                    if !EXTENSIONS.contains(&e.as_str())
                        && !matches!(
                            e.as_str(),
                            "comparator-i;octet" | "comparator-i;ascii-casemap"
                        )
                    {
                        return Err(err(*p, format!("unsupported extension \"{e}\"")));
                    }
                    self.requires.insert(e);
                }
                i += 1;
                continue;
            }
            self.past_requires = true;
            match c.name.as_str() {
                "if" => {
                    let mut branches = vec![(self.cond(c)?, self.body(c)?)];
                    let mut otherwise = None;
                    i += 1;
                    while let Some(n) = cmds.get(i) {
                        match n.name.as_str() {
                            "elsif" => branches.push((self.cond(n)?, self.body(n)?)),
                            "else" => {
                                if !n.args.is_empty() || !n.tests.is_empty() {
                                    return Err(err(n.pos, "else takes no test"));
                                }
                                otherwise = Some(self.body(n)?);
                                i += 1;
                                break;
                            }
                            _ => break,
                        }
                        i += 1;
                    }
                    out.push(Node {
                        pos: c.pos,
                        cmd: Cmd::If {
                            branches,
                            otherwise,
                        },
                    });
                    continue;
                }
                "elsif" | "else" => {
                    return Err(err(c.pos, format!("{} without a preceding if", c.name)));
                }
                _ => {
                    if c.block.is_some() {
                        return Err(err(c.pos, format!("{} takes no block", c.name)));
                    }
                    if !c.tests.is_empty() {
                        return Err(err(c.pos, format!("{} takes no test", c.name)));
                    }
                    out.push(Node {
                        pos: c.pos,
                        cmd: self.action(c)?,
                    });
                }
            }
            i += 1;
        }
        Ok(out)
    }

    fn cond(&mut self, c: &Command) -> Result<Test, Error> {
        if !c.args.is_empty() || c.tests.len() != 1 {
            return Err(err(c.pos, format!("{} needs exactly one test", c.name)));
        }
        self.test(&c.tests[0])
    }

    fn body(&mut self, c: &Command) -> Result<Vec<Node>, Error> {
        match &c.block {
            Some(b) => self.block(b),
            None => Err(err(c.pos, format!("{} needs a block", c.name))),
        }
    }

    /// A string argument, encoded characters decoded.
    fn string(&self, a: &Arg, what: &str) -> Result<Str, Error> {
        match a {
            Arg::Strings(v, p) if v.len() == 1 => self.decode(&v[0], *p),
            _ => Err(err(arg_pos(a), format!("{what} must be a string"))),
        }
    }

    fn strings(&self, a: &Arg, what: &str) -> Result<Vec<Str>, Error> {
        match a {
            Arg::Strings(v, p) => v.iter().map(|s| self.decode(s, *p)).collect(),
            _ => Err(err(arg_pos(a), format!("{what} must be a string list"))),
        }
    }

    fn decode(&self, s: &str, pos: Pos) -> Result<String, Error> {
        if self.requires.contains("encoded-character") {
            decode_encoded(s).ok_or_else(|| err(pos, "invalid encoded character"))
        } else {
            Ok(s.to_string())
        }
    }

    fn positional<'a>(
        &self,
        a: &Args<'a>,
        pos: Pos,
        name: &str,
        n: usize,
    ) -> Result<Vec<&'a Arg>, Error> {
        if a.positional.len() != n {
            return Err(err(
                pos,
                format!(
                    "{name} takes {n} argument{} besides its tags, got {}",
                    if n == 1 { "" } else { "s" },
                    a.positional.len()
                ),
            ));
        }
        Ok(a.positional.clone())
    }

    fn only_tags(&self, a: &Args<'_>, name: &str, allowed: &[&str]) -> Result<(), Error> {
        for (t, p, _) in &a.tags {
            if !allowed.contains(&t.as_str()) {
                return Err(err(*p, format!("{name} has no :{t}")));
            }
        }
        Ok(())
    }

    fn flags_tag(&self, a: &Args<'_>) -> Result<Option<Vec<Str>>, Error> {
        match a.tags.iter().find(|(t, _, _)| t == "flags") {
            Some((_, p, v)) => {
                self.need("imap4flags", *p, ":flags")?;
                Ok(Some(self.strings(v.expect("tag value"), ":flags")?))
            }
            None => Ok(None),
        }
    }

    fn has_tag(&self, a: &Args<'_>, tag: &str, ext: &str) -> Result<bool, Error> {
        match a.tags.iter().find(|(t, _, _)| t == tag) {
            Some((_, p, _)) => {
                self.need(ext, *p, &format!(":{tag}"))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn action(&mut self, c: &Command) -> Result<Cmd, Error> {
        let a = split_args(&c.args)?;
        let name = c.name.as_str();
        Ok(match name {
            "stop" | "discard" => {
                self.only_tags(&a, name, &[])?;
                self.positional(&a, c.pos, name, 0)?;
                if name == "stop" {
                    Cmd::Stop
                } else {
                    Cmd::Discard
                }
            }
            "keep" => {
                self.only_tags(&a, name, &["flags"])?;
                self.positional(&a, c.pos, name, 0)?;
                Cmd::Keep {
                    flags: self.flags_tag(&a)?,
                }
            }
            "fileinto" => {
                self.need("fileinto", c.pos, "fileinto")?;
                self.only_tags(&a, name, &["copy", "create", "flags"])?;
                let p = self.positional(&a, c.pos, name, 1)?;
                let mailbox = self.string(p[0], "the mailbox")?;
                if mailbox.is_empty() {
                    return Err(err(arg_pos(p[0]), "the mailbox name is empty"));
                }
                Cmd::FileInto {
                    mailbox,
                    copy: self.has_tag(&a, "copy", "copy")?,
                    create: self.has_tag(&a, "create", "mailbox")?,
                    flags: self.flags_tag(&a)?,
                }
            }
            "redirect" => {
                self.only_tags(&a, name, &["copy"])?;
                let p = self.positional(&a, c.pos, name, 1)?;
                let address = self.string(p[0], "the address")?;
                if !address.contains("${") && !valid_address(&address) {
                    return Err(err(
                        arg_pos(p[0]),
                        format!("\"{address}\" is not a valid address"),
                    ));
                }
                Cmd::Redirect {
                    address,
                    copy: self.has_tag(&a, "copy", "copy")?,
                }
            }
            "reject" | "ereject" => {
                self.need(name, c.pos, name)?;
                self.only_tags(&a, name, &[])?;
                let p = self.positional(&a, c.pos, name, 1)?;
                Cmd::Reject {
                    reason: self.string(p[0], "the reason")?,
                }
            }
            "setflag" | "addflag" | "removeflag" => {
                self.need("imap4flags", c.pos, name)?;
                self.only_tags(&a, name, &[])?;
                let op = match name {
                    "setflag" => FlagOp::Set,
                    "addflag" => FlagOp::Add,
                    _ => FlagOp::Remove,
                };
                let (var, flags) = match a.positional.as_slice() {
                    [f] => (None, self.strings(f, "the flags")?),
                    [v, f] => {
                        self.need("variables", arg_pos(v), "a flag variable")?;
                        let var = self.string(v, "the variable name")?;
                        check_var_name(&var, arg_pos(v))?;
                        (
                            Some(var.to_ascii_lowercase()),
                            self.strings(f, "the flags")?,
                        )
                    }
                    _ => return Err(err(c.pos, format!("{name} takes [variable] flags"))),
                };
                Cmd::Flags { op, var, flags }
            }
            "set" => {
                self.need("variables", c.pos, "set")?;
                let mut modifiers = Vec::new();
                for (t, p, _) in &a.tags {
                    modifiers.push(match t.as_str() {
                        "lower" => Modifier::Lower,
                        "upper" => Modifier::Upper,
                        "lowerfirst" => Modifier::LowerFirst,
                        "upperfirst" => Modifier::UpperFirst,
                        "quotewildcard" => Modifier::QuoteWildcard,
                        "length" => Modifier::Length,
                        _ => return Err(err(*p, format!("set has no :{t}"))),
                    });
                }
                let rank = |m: &Modifier| match m {
                    Modifier::Lower | Modifier::Upper => 40,
                    Modifier::LowerFirst | Modifier::UpperFirst => 30,
                    Modifier::QuoteWildcard => 20,
                    Modifier::Length => 10,
                };
                for w in modifiers.windows(2) {
                    if rank(&w[0]) == rank(&w[1]) {
                        return Err(err(c.pos, "set takes one modifier of each precedence"));
                    }
                }
                for (i, x) in modifiers.iter().enumerate() {
                    if modifiers[i + 1..].iter().any(|y| rank(x) == rank(y)) {
                        return Err(err(c.pos, "set takes one modifier of each precedence"));
                    }
                }
                modifiers.sort_by_key(|m| std::cmp::Reverse(rank(m)));
                let p = self.positional(&a, c.pos, name, 2)?;
                let var = self.string(p[0], "the variable name")?;
                check_var_name(&var, arg_pos(p[0]))?;
                Cmd::Set {
                    name: var.to_ascii_lowercase(),
                    value: self.string(p[1], "the value")?,
                    modifiers,
                }
            }
            "vacation" => {
                self.need("vacation", c.pos, "vacation")?;
                self.only_tags(
                    &a,
                    name,
                    &["days", "subject", "from", "addresses", "mime", "handle"],
                )?;
                let p = self.positional(&a, c.pos, name, 1)?;
                let mut v = Vacation {
                    days: None,
                    subject: None,
                    from: None,
                    addresses: Vec::new(),
                    mime: false,
                    handle: None,
                    reason: self.string(p[0], "the reason")?,
                };
                for (t, p, val) in &a.tags {
                    match (t.as_str(), val) {
                        ("days", Some(Arg::Number(n, _))) => v.days = Some(*n),
                        ("subject", Some(x)) => v.subject = Some(self.string(x, ":subject")?),
                        ("from", Some(x)) => {
                            let f = self.string(x, ":from")?;
                            if !f.contains("${") && parse_one_address(&f).is_none() {
                                return Err(err(*p, format!(":from \"{f}\" is not an address")));
                            }
                            v.from = Some(f)
                        }
                        ("addresses", Some(x)) => v.addresses = self.strings(x, ":addresses")?,
                        ("handle", Some(x)) => v.handle = Some(self.string(x, ":handle")?),
                        ("mime", None) => v.mime = true,
                        _ => return Err(err(*p, format!(":{t} has a wrong argument"))),
                    }
                }
                Cmd::Vacation(Box::new(v))
            }
            "require" => unreachable!("handled in block"),
            other => return Err(err(c.pos, format!("unknown command \"{other}\""))),
        })
    }

    /// Comparator and match type from the tags; `index` when allowed.
    fn matching(&self, a: &Args<'_>) -> Result<Match, Error> {
        let mut m = Match {
            comparator: Comparator::AsciiCasemap,
            kind: MatchType::Is,
        };
        let mut kinds = 0;
        for (t, p, v) in &a.tags {
            match t.as_str() {
                "comparator" => {
                    let name = self.string(v.expect("tag value"), ":comparator")?;
                    m.comparator = match name.to_ascii_lowercase().as_str() {
                        "i;octet" => Comparator::Octet,
                        "i;ascii-casemap" => Comparator::AsciiCasemap,
                        "i;ascii-numeric" => {
                            self.need("comparator-i;ascii-numeric", *p, "i;ascii-numeric")?;
                            Comparator::AsciiNumeric
                        }
                        other => return Err(err(*p, format!("unknown comparator \"{other}\""))),
                    };
                }
                "is" | "contains" | "matches" | "regex" | "value" | "count" => {
                    kinds += 1;
                    m.kind = match t.as_str() {
                        "is" => MatchType::Is,
                        "contains" => MatchType::Contains,
                        "matches" => MatchType::Matches,
                        "regex" => {
                            self.need("regex", *p, ":regex")?;
                            MatchType::Regex
                        }
                        _ => {
                            self.need("relational", *p, &format!(":{t}"))?;
                            let op = self.string(v.expect("tag value"), "the relation")?;
                            let rel = match op.to_ascii_lowercase().as_str() {
                                "gt" => Rel::Gt,
                                "ge" => Rel::Ge,
                                "lt" => Rel::Lt,
                                "le" => Rel::Le,
                                "eq" => Rel::Eq,
                                "ne" => Rel::Ne,
                                _ => {
                                    return Err(err(
                                        *p,
                                        format!("unknown relation \"{op}\" (gt ge lt le eq ne)"),
                                    ));
                                }
                            };
                            if t == "value" {
                                MatchType::Value(rel)
                            } else {
                                MatchType::Count(rel)
                            }
                        }
                    };
                }
                _ => {}
            }
        }
        if kinds > 1 {
            let p = a.tags.first().map(|t| t.1).unwrap_or_default();
            return Err(err(p, "more than one match type"));
        }
        if m.comparator == Comparator::AsciiNumeric
            && matches!(
                m.kind,
                MatchType::Contains | MatchType::Matches | MatchType::Regex
            )
        {
            let p = a.tags.first().map(|t| t.1).unwrap_or_default();
            return Err(err(
                p,
                "i;ascii-numeric only works with :is, :value and :count",
            ));
        }
        Ok(m)
    }

    fn address_part(&self, a: &Args<'_>) -> Result<AddressPart, Error> {
        let mut part = AddressPart::All;
        let mut n = 0;
        for (t, p, _) in &a.tags {
            let x = match t.as_str() {
                "all" => AddressPart::All,
                "localpart" => AddressPart::Local,
                "domain" => AddressPart::Domain,
                "user" | "detail" => {
                    self.need("subaddress", *p, &format!(":{t}"))?;
                    if t == "user" {
                        AddressPart::User
                    } else {
                        AddressPart::Detail
                    }
                }
                _ => continue,
            };
            n += 1;
            part = x;
            if n > 1 {
                return Err(err(*p, "more than one address part"));
            }
        }
        Ok(part)
    }

    fn index(&self, a: &Args<'_>) -> Result<Option<Index>, Error> {
        let last = a.tags.iter().find(|(t, _, _)| t == "last");
        match a.tags.iter().find(|(t, _, _)| t == "index") {
            Some((_, p, v)) => {
                self.need("index", *p, ":index")?;
                let Some(Arg::Number(n, _)) = v else {
                    return Err(err(*p, ":index needs a number"));
                };
                if *n == 0 {
                    return Err(err(*p, ":index counts from 1"));
                }
                Ok(Some(Index {
                    n: *n,
                    last: last.is_some(),
                }))
            }
            None => match last {
                Some((_, p, _)) => Err(err(*p, ":last needs :index")),
                None => Ok(None),
            },
        }
    }

    fn test(&mut self, t: &PTest) -> Result<Test, Error> {
        let name = t.name.as_str();
        if !matches!(name, "not" | "allof" | "anyof") && !t.tests.is_empty() {
            return Err(err(t.pos, format!("{name} takes no nested tests")));
        }
        let a = split_args(&t.args)?;
        const MATCH: &[&str] = &[
            "comparator",
            "is",
            "contains",
            "matches",
            "regex",
            "value",
            "count",
        ];
        const PARTS: &[&str] = &["all", "localpart", "domain", "user", "detail"];
        fn allowed(extra: &[&'static str]) -> Vec<&'static str> {
            MATCH.iter().chain(extra.iter()).copied().collect()
        }
        let test = match name {
            "true" | "false" => {
                self.positional(&a, t.pos, name, 0)?;
                self.only_tags(&a, name, &[])?;
                if name == "true" {
                    Test::True
                } else {
                    Test::False
                }
            }
            "not" => {
                if t.tests.len() != 1 || !t.args.is_empty() {
                    return Err(err(t.pos, "not takes one test"));
                }
                Test::Not(Box::new(self.test(&t.tests[0])?))
            }
            "allof" | "anyof" => {
                if t.tests.is_empty() || !t.args.is_empty() {
                    return Err(err(t.pos, format!("{name} takes a list of tests")));
                }
                let list = t
                    .tests
                    .iter()
                    .map(|x| self.test(x))
                    .collect::<Result<Vec<_>, _>>()?;
                if name == "allof" {
                    Test::AllOf(list)
                } else {
                    Test::AnyOf(list)
                }
            }
            "exists" => {
                self.only_tags(&a, name, &[])?;
                let p = self.positional(&a, t.pos, name, 1)?;
                Test::Exists(self.strings(p[0], "the header names")?)
            }
            "size" => {
                self.only_tags(&a, name, &["over", "under"])?;
                let p = self.positional(&a, t.pos, name, 1)?;
                let Arg::Number(limit, _) = p[0] else {
                    return Err(err(arg_pos(p[0]), "size needs a number"));
                };
                if a.tags.len() != 1 {
                    return Err(err(t.pos, "size needs :over or :under"));
                }
                Test::Size {
                    over: a.tags[0].0 == "over",
                    limit: *limit,
                }
            }
            "header" => {
                self.only_tags(&a, name, &allowed(&["index", "last"]))?;
                let p = self.positional(&a, t.pos, name, 2)?;
                Test::Header {
                    m: self.matching(&a)?,
                    names: self.strings(p[0], "the header names")?,
                    keys: self.strings(p[1], "the keys")?,
                    index: self.index(&a)?,
                }
            }
            "address" => {
                let mut ok = allowed(PARTS);
                ok.extend(["index", "last"]);
                self.only_tags(&a, name, &ok)?;
                let p = self.positional(&a, t.pos, name, 2)?;
                Test::Address {
                    part: self.address_part(&a)?,
                    m: self.matching(&a)?,
                    names: self.strings(p[0], "the header names")?,
                    keys: self.strings(p[1], "the keys")?,
                    index: self.index(&a)?,
                }
            }
            "envelope" => {
                self.need("envelope", t.pos, "envelope")?;
                self.only_tags(&a, name, &allowed(PARTS))?;
                let p = self.positional(&a, t.pos, name, 2)?;
                let names = self.strings(p[0], "the envelope parts")?;
                for n in &names {
                    if !matches!(n.to_ascii_lowercase().as_str(), "from" | "to") {
                        return Err(err(
                            arg_pos(p[0]),
                            format!("unknown envelope part \"{n}\" (from, to)"),
                        ));
                    }
                }
                Test::Envelope {
                    part: self.address_part(&a)?,
                    m: self.matching(&a)?,
                    names,
                    keys: self.strings(p[1], "the keys")?,
                }
            }
            "body" => {
                self.need("body", t.pos, "body")?;
                self.only_tags(&a, name, &allowed(&["raw", "content", "text"]))?;
                let p = self.positional(&a, t.pos, name, 1)?;
                let mut transform = BodyTransform::Text;
                let mut n = 0;
                for (tag, _, v) in &a.tags {
                    match tag.as_str() {
                        "raw" => transform = BodyTransform::Raw,
                        "text" => transform = BodyTransform::Text,
                        "content" => {
                            transform = BodyTransform::Content(
                                self.strings(v.expect("tag value"), ":content")?,
                            )
                        }
                        _ => continue,
                    }
                    n += 1;
                }
                if n > 1 {
                    return Err(err(t.pos, "body takes one transform"));
                }
                let m = self.matching(&a)?;
                if matches!(m.kind, MatchType::Count(_)) {
                    return Err(err(t.pos, "body cannot use :count"));
                }
                Test::Body {
                    transform,
                    m,
                    keys: self.strings(p[0], "the keys")?,
                }
            }
            "date" | "currentdate" => {
                self.need("date", t.pos, name)?;
                let mut ok = allowed(&["zone", "originalzone"]);
                if name == "date" {
                    ok.extend(["index", "last"]);
                }
                self.only_tags(&a, name, &ok)?;
                let n = if name == "date" { 3 } else { 2 };
                let p = self.positional(&a, t.pos, name, n)?;
                let zone = match (
                    a.tags.iter().find(|x| x.0 == "zone"),
                    a.tags.iter().find(|x| x.0 == "originalzone"),
                ) {
                    (Some(_), Some((_, p, _))) => {
                        return Err(err(*p, ":zone and :originalzone together"));
                    }
                    (Some((_, _, v)), None) => Zone::Fixed(self.string(v.unwrap(), ":zone")?),
                    (None, Some((_, p, _))) if name == "currentdate" => {
                        return Err(err(*p, "currentdate has no :originalzone"));
                    }
                    (None, Some(_)) => Zone::Original,
                    (None, None) => Zone::Local,
                };
                let (header, rest) = if name == "date" {
                    (Some(self.string(p[0], "the header name")?), &p[1..])
                } else {
                    (None, &p[..])
                };
                let part = self.string(rest[0], "the date part")?;
                if !part.contains("${") && !DATE_PARTS.contains(&part.to_ascii_lowercase().as_str())
                {
                    return Err(err(
                        arg_pos(rest[0]),
                        format!("unknown date part \"{part}\""),
                    ));
                }
                Test::Date {
                    header,
                    zone,
                    part,
                    m: self.matching(&a)?,
                    keys: self.strings(rest[1], "the keys")?,
                    index: if name == "date" {
                        self.index(&a)?
                    } else {
                        None
                    },
                }
            }
            "string" => {
                self.need("variables", t.pos, "string")?;
                self.only_tags(&a, name, MATCH)?;
                let p = self.positional(&a, t.pos, name, 2)?;
                Test::String {
                    m: self.matching(&a)?,
                    sources: self.strings(p[0], "the source")?,
                    keys: self.strings(p[1], "the keys")?,
                }
            }
            "hasflag" => {
                self.need("imap4flags", t.pos, name)?;
                self.only_tags(&a, name, MATCH)?;
                let (vars, keys) = match a.positional.as_slice() {
                    [k] => (Vec::new(), self.strings(k, "the flags")?),
                    [v, k] => {
                        self.need("variables", arg_pos(v), "a flag variable")?;
                        let vars: Vec<String> = self
                            .strings(v, "the variables")?
                            .into_iter()
                            .map(|s| s.to_ascii_lowercase())
                            .collect();
                        (vars, self.strings(k, "the flags")?)
                    }
                    _ => return Err(err(t.pos, "hasflag takes [variables] flags")),
                };
                Test::HasFlag {
                    m: self.matching(&a)?,
                    vars,
                    keys,
                }
            }
            "mailboxexists" => {
                self.need("mailbox", t.pos, name)?;
                self.only_tags(&a, name, &[])?;
                let p = self.positional(&a, t.pos, name, 1)?;
                Test::MailboxExists(self.strings(p[0], "the mailboxes")?)
            }
            other => return Err(err(t.pos, format!("unknown test \"{other}\""))),
        };
        if let Test::Header { m, .. }
        | Test::Address { m, .. }
        | Test::Envelope { m, .. }
        | Test::String { m, .. }
        | Test::HasFlag { m, .. }
        | Test::Date { m, .. }
        | Test::Body { m, .. } = &test
            && m.kind == MatchType::Regex
        {
            // Constant patterns are compiled now, so a bad one is an upload error.
            let keys = match &test {
                Test::Header { keys, .. }
                | Test::Address { keys, .. }
                | Test::Envelope { keys, .. }
                | Test::String { keys, .. }
                | Test::HasFlag { keys, .. }
                | Test::Date { keys, .. }
                | Test::Body { keys, .. } => keys,
                _ => unreachable!(),
            };
            for k in keys.iter().filter(|k| !k.contains("${")) {
                if let Err(e) = regex(k, m.comparator) {
                    return Err(err(t.pos, format!("bad regular expression \"{k}\": {e}")));
                }
            }
        }
        Ok(test)
    }
}

/// A compiled `:regex` key with the comparator's case rule.
pub fn regex(pattern: &str, comparator: Comparator) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(comparator == Comparator::AsciiCasemap)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
}

/// Date parts of RFC 5260 §4.2.
pub const DATE_PARTS: &[&str] = &[
    "year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601",
    "std11", "zone", "weekday",
];

fn check_var_name(name: &str, pos: Pos) -> Result<(), Error> {
    let ok = !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(err(pos, format!("\"{name}\" is not a valid variable name")))
    }
}

/// Whether `s` is one mailbox address (`local@domain`, optionally in angle brackets).
pub fn valid_address(s: &str) -> bool {
    parse_one_address(s).is_some()
}

/// The bare `local@domain` of an address as written in a script (`a@b`, `<a@b>`,
/// `"Name" <a@b>`).
pub fn parse_one_address(s: &str) -> Option<String> {
    let s = s.trim();
    let inner = match (s.rfind('<'), s.ends_with('>')) {
        (Some(i), true) => &s[i + 1..s.len() - 1],
        _ => s,
    };
    let (local, domain) = inner.rsplit_once('@')?;
    let ok = !local.is_empty()
        && !domain.is_empty()
        && !inner
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'));
    ok.then(|| inner.to_string())
}

/// RFC 5228 §2.4.2.4: `${hex:...}` and `${unicode:...}` decoded; `None` when a unicode
/// value is not a character. Sequences that are not well formed stay as written.
pub fn decode_encoded(s: &str) -> Option<String> {
    if !s.contains("${") {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Some(out);
        };
        let body = &after[..end];
        let (kind, values) = match body.split_once(':') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v),
            None => (String::new(), ""),
        };
        let words: Vec<&str> = values.split_ascii_whitespace().collect();
        let decoded = match kind.as_str() {
            // hex-pair = 1*2HEXDIG; anything else leaves the sequence as written.
            "hex" if !words.is_empty() => words
                .iter()
                .map(|w| {
                    (w.len() <= 2 && w.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| u8::from_str_radix(w, 16).ok())
                        .flatten()
                })
                .collect::<Option<Vec<u8>>>()
                .and_then(|b| String::from_utf8(b).ok()),
            // unicode-hex = 1*HEXDIG; a value that is no character (a surrogate, past
            // 10FFFF) is an error of the script.
            "unicode"
                if !words.is_empty()
                    && words
                        .iter()
                        .all(|w| w.bytes().all(|b| b.is_ascii_hexdigit())) =>
            {
                let mut s = String::new();
                for w in &words {
                    let t = w.trim_start_matches('0');
                    let v = if t.len() > 6 {
                        u32::MAX
                    } else {
                        u32::from_str_radix(t, 16).unwrap_or(0)
                    };
                    s.push(char::from_u32(v)?);
                }
                Some(s)
            }
            _ => None,
        };
        match decoded {
            Some(d) => {
                out.push_str(&d);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}
