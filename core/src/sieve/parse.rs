//! Sieve (RFC 5228 §8) lexer and parser, sans I/O: script text in, a syntax tree of generic
//! commands and tests out, or an error naming the line and column. What the commands mean
//! (which exist, their arguments, `require`) is checked later, against the tree.
//!
//! Limits keep a hostile script's cost bounded: nesting depth, string length and the number
//! of nodes.

use std::fmt;

/// Where something is in the script: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.col)
    }
}

/// A syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

impl std::error::Error for Error {}

/// One argument of a command or test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A string or a string list (a single string is a list of one), with where it began.
    Strings(Vec<String>, Pos),
    /// A number, quantifiers (K, M, G) applied.
    Number(u64, Pos),
    /// A tag (`:is`), lower-cased, without the colon.
    Tag(String, Pos),
}

/// A test: `identifier arguments [test / test-list]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Test {
    /// Lower-cased identifier.
    pub name: String,
    /// Where it began.
    pub pos: Pos,
    /// Its arguments.
    pub args: Vec<Arg>,
    /// Nested tests (`not`, `allof`, `anyof`).
    pub tests: Vec<Test>,
}

/// A command: `identifier arguments (";" / block)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Lower-cased identifier.
    pub name: String,
    /// Where it began.
    pub pos: Pos,
    /// Its arguments.
    pub args: Vec<Arg>,
    /// Its test or tests (`if`, `elsif`).
    pub tests: Vec<Test>,
    /// Its block (`if`, `elsif`, `else`), if any.
    pub block: Option<Vec<Command>>,
}

/// Limits of the parser.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of blocks and tests.
    pub max_depth: usize,
    /// Most commands, tests and arguments in all.
    pub max_nodes: usize,
    /// Longest string, in bytes.
    pub max_string: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 32,
            max_nodes: 10_000,
            max_string: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Tag(String),
    Number(u64),
    Str(String),
    LBracket,
    RBracket,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Semi,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("identifier \"{s}\""),
            Tok::Tag(s) => format!("tag \":{s}\""),
            Tok::Number(n) => format!("number {n}"),
            Tok::Str(_) => "a string".into(),
            Tok::LBracket => "\"[\"".into(),
            Tok::RBracket => "\"]\"".into(),
            Tok::LParen => "\"(\"".into(),
            Tok::RParen => "\")\"".into(),
            Tok::LBrace => "\"{\"".into(),
            Tok::RBrace => "\"}\"".into(),
            Tok::Comma => "\",\"".into(),
            Tok::Semi => "\";\"".into(),
        }
    }
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    pos: Pos,
    max_string: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str, max_string: usize) -> Self {
        Lexer {
            chars: text.chars().peekable(),
            pos: Pos { line: 1, col: 1 },
            max_string,
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

    fn err(&self, pos: Pos, message: impl Into<String>) -> Error {
        Error {
            pos,
            message: message.into(),
        }
    }

    /// Skip white space and comments.
    fn skip(&mut self) -> Result<(), Error> {
        loop {
            match self.chars.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('#') => {
                    while let Some(c) = self.bump() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                Some('/') => {
                    let start = self.pos;
                    self.bump();
                    if self.chars.peek() != Some(&'*') {
                        return Err(self.err(start, "a lone \"/\" (a comment is /* … */)"));
                    }
                    self.bump();
                    let mut star = false;
                    loop {
                        match self.bump() {
                            None => return Err(self.err(start, "comment not closed with */")),
                            Some('/') if star => break,
                            Some(c) => star = c == '*',
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn next(&mut self) -> Result<Option<(Tok, Pos)>, Error> {
        self.skip()?;
        let start = self.pos;
        let Some(&c) = self.chars.peek() else {
            return Ok(None);
        };
        let single = match c {
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            ',' => Some(Tok::Comma),
            ';' => Some(Tok::Semi),
            _ => None,
        };
        if let Some(t) = single {
            self.bump();
            return Ok(Some((t, start)));
        }
        if c == '"' {
            self.bump();
            return self.quoted(start).map(|s| Some((Tok::Str(s), start)));
        }
        if c == ':' {
            self.bump();
            let id = self.identifier();
            if id.is_empty() {
                return Err(self.err(start, "\":\" must begin a tag such as :is"));
            }
            return Ok(Some((Tok::Tag(id.to_ascii_lowercase()), start)));
        }
        if c.is_ascii_digit() {
            let mut n: u64 = 0;
            while let Some(&d) = self.chars.peek() {
                let Some(v) = d.to_digit(10) else { break };
                self.bump();
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(v)))
                    .ok_or_else(|| self.err(start, "number too large"))?;
            }
            let shift = match self.chars.peek().map(|c| c.to_ascii_uppercase()) {
                Some('K') => 10,
                Some('M') => 20,
                Some('G') => 30,
                _ => 0,
            };
            if shift > 0 {
                self.bump();
                n = n
                    .checked_mul(1 << shift)
                    .ok_or_else(|| self.err(start, "number too large"))?;
            }
            return Ok(Some((Tok::Number(n), start)));
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let id = self.identifier();
            if id.eq_ignore_ascii_case("text") && self.chars.peek() == Some(&':') {
                self.bump();
                return self.multiline(start).map(|s| Some((Tok::Str(s), start)));
            }
            return Ok(Some((Tok::Ident(id.to_ascii_lowercase()), start)));
        }
        Err(self.err(start, format!("unexpected character {c:?}")))
    }

    fn identifier(&mut self) -> String {
        let mut s = String::new();
        while let Some(&c) = self.chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                s.push(c);
                self.bump();
            } else {
                break;
            }
        }
        s
    }

    /// A quoted string after its opening quote: `\\` and `\"` stand for themselves; any other
    /// backslash is dropped with the character kept (RFC 5228 §2.4.2).
    fn quoted(&mut self, start: Pos) -> Result<String, Error> {
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return Err(self.err(start, "string not closed with \"")),
                Some('"') => return Ok(s),
                Some('\\') => match self.bump() {
                    None => return Err(self.err(start, "string not closed with \"")),
                    Some(c) => s.push(c),
                },
                Some(c) => s.push(c),
            }
            if s.len() > self.max_string {
                return Err(self.err(start, "string too long"));
            }
        }
    }

    /// `text:` then white space or a comment to the end of the line, then lines up to one
    /// holding only ".", with a leading ".." unstuffed (RFC 5228 §2.4.2).
    fn multiline(&mut self, start: Pos) -> Result<String, Error> {
        // The rest of the `text:` line: blanks and an optional hash comment.
        loop {
            match self.bump() {
                None => return Err(self.err(start, "text: not ended by a line with \".\"")),
                Some('\n') => break,
                Some(' ') | Some('\t') | Some('\r') => {}
                Some('#') => {
                    while let Some(c) = self.bump() {
                        if c == '\n' {
                            break;
                        }
                    }
                    break;
                }
                Some(_) => {
                    return Err(self.err(start, "text: must be followed by the end of the line"));
                }
            }
        }
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let mut ended = false;
            while let Some(c) = self.bump() {
                if c == '\n' {
                    ended = true;
                    break;
                }
                line.push(c);
            }
            let trimmed = line.strip_suffix('\r').unwrap_or(&line);
            if trimmed == "." {
                return Ok(out);
            }
            if !ended {
                return Err(self.err(start, "text: not ended by a line with \".\""));
            }
            out.push_str(
                trimmed
                    .strip_prefix('.')
                    .filter(|_| trimmed.starts_with(".."))
                    .unwrap_or(trimmed),
            );
            out.push_str("\r\n");
            if out.len() > self.max_string {
                return Err(self.err(start, "string too long"));
            }
        }
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    peeked: Option<(Tok, Pos)>,
    limits: Limits,
    nodes: usize,
}

/// Parse a whole script.
pub fn parse(text: &str, limits: Limits) -> Result<Vec<Command>, Error> {
    let mut p = Parser {
        lexer: Lexer::new(text, limits.max_string),
        peeked: None,
        limits,
        nodes: 0,
    };
    let commands = p.commands(0)?;
    if let Some((t, pos)) = p.take()? {
        return Err(Error {
            pos,
            message: format!("unexpected {}", t.describe()),
        });
    }
    Ok(commands)
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<Option<&(Tok, Pos)>, Error> {
        if self.peeked.is_none() {
            self.peeked = self.lexer.next()?;
        }
        Ok(self.peeked.as_ref())
    }

    fn take(&mut self) -> Result<Option<(Tok, Pos)>, Error> {
        if self.peeked.is_none() {
            self.peeked = self.lexer.next()?;
        }
        Ok(self.peeked.take())
    }

    fn count(&mut self, pos: Pos) -> Result<(), Error> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(Error {
                pos,
                message: format!(
                    "script too large (more than {} elements)",
                    self.limits.max_nodes
                ),
            });
        }
        Ok(())
    }

    fn deep(&self, depth: usize, pos: Pos) -> Result<(), Error> {
        if depth > self.limits.max_depth {
            return Err(Error {
                pos,
                message: format!("nested more than {} deep", self.limits.max_depth),
            });
        }
        Ok(())
    }

    fn end_pos(&self) -> Pos {
        self.lexer.pos
    }

    /// Commands up to the end of input or a closing brace (left unread).
    fn commands(&mut self, depth: usize) -> Result<Vec<Command>, Error> {
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                None | Some((Tok::RBrace, _)) => return Ok(out),
                Some(_) => out.push(self.command(depth)?),
            }
        }
    }

    fn command(&mut self, depth: usize) -> Result<Command, Error> {
        let (tok, pos) = self.take()?.expect("peeked");
        let Tok::Ident(name) = tok else {
            return Err(Error {
                pos,
                message: format!("expected a command, found {}", tok.describe()),
            });
        };
        self.deep(depth, pos)?;
        self.count(pos)?;
        let (args, tests) = self.arguments(depth)?;
        match self.take()? {
            Some((Tok::Semi, _)) => Ok(Command {
                name,
                pos,
                args,
                tests,
                block: None,
            }),
            Some((Tok::LBrace, open)) => {
                let block = self.commands(depth + 1)?;
                match self.take()? {
                    Some((Tok::RBrace, _)) => Ok(Command {
                        name,
                        pos,
                        args,
                        tests,
                        block: Some(block),
                    }),
                    _ => Err(Error {
                        pos: open,
                        message: "block not closed with \"}\"".into(),
                    }),
                }
            }
            Some((t, p)) => Err(Error {
                pos: p,
                message: format!(
                    "expected \";\" or a block after {name}, found {}",
                    t.describe()
                ),
            }),
            None => Err(Error {
                pos: self.end_pos(),
                message: format!("expected \";\" after {name}, found the end of the script"),
            }),
        }
    }

    /// `*argument [test / test-list]`.
    fn arguments(&mut self, depth: usize) -> Result<(Vec<Arg>, Vec<Test>), Error> {
        let mut args = Vec::new();
        loop {
            let Some((tok, pos)) = self.peek()?.cloned() else {
                return Ok((args, Vec::new()));
            };
            match tok {
                Tok::Str(_) | Tok::LBracket => args.push(self.string_list()?),
                Tok::Number(n) => {
                    self.take()?;
                    args.push(Arg::Number(n, pos));
                }
                Tok::Tag(t) => {
                    self.take()?;
                    args.push(Arg::Tag(t, pos));
                }
                Tok::Ident(_) => return Ok((args, vec![self.test(depth + 1)?])),
                Tok::LParen => {
                    self.take()?;
                    let mut tests = vec![self.test(depth + 1)?];
                    loop {
                        match self.take()? {
                            Some((Tok::Comma, _)) => tests.push(self.test(depth + 1)?),
                            Some((Tok::RParen, _)) => return Ok((args, tests)),
                            Some((t, p)) => {
                                return Err(Error {
                                    pos: p,
                                    message: format!(
                                        "expected \",\" or \")\" in a test list, found {}",
                                        t.describe()
                                    ),
                                });
                            }
                            None => {
                                return Err(Error {
                                    pos,
                                    message: "test list not closed with \")\"".into(),
                                });
                            }
                        }
                    }
                }
                _ => return Ok((args, Vec::new())),
            }
            if let Some(a) = args.last() {
                let p = match a {
                    Arg::Strings(_, p) | Arg::Number(_, p) | Arg::Tag(_, p) => *p,
                };
                self.count(p)?;
            }
        }
    }

    fn test(&mut self, depth: usize) -> Result<Test, Error> {
        let (tok, pos) = match self.take()? {
            Some(t) => t,
            None => {
                return Err(Error {
                    pos: self.end_pos(),
                    message: "expected a test, found the end of the script".into(),
                });
            }
        };
        let Tok::Ident(name) = tok else {
            return Err(Error {
                pos,
                message: format!("expected a test, found {}", tok.describe()),
            });
        };
        self.deep(depth, pos)?;
        self.count(pos)?;
        let (args, tests) = self.arguments(depth)?;
        Ok(Test {
            name,
            pos,
            args,
            tests,
        })
    }

    fn string_list(&mut self) -> Result<Arg, Error> {
        let (tok, pos) = self.take()?.expect("peeked");
        match tok {
            Tok::Str(s) => Ok(Arg::Strings(vec![s], pos)),
            Tok::LBracket => {
                let mut list = Vec::new();
                loop {
                    match self.take()? {
                        Some((Tok::Str(s), _)) => list.push(s),
                        Some((t, p)) => {
                            return Err(Error {
                                pos: p,
                                message: format!(
                                    "expected a string in a string list, found {}",
                                    t.describe()
                                ),
                            });
                        }
                        None => {
                            return Err(Error {
                                pos,
                                message: "string list not closed with \"]\"".into(),
                            });
                        }
                    }
                    match self.take()? {
                        Some((Tok::Comma, _)) => {}
                        Some((Tok::RBracket, _)) => return Ok(Arg::Strings(list, pos)),
                        Some((t, p)) => {
                            return Err(Error {
                                pos: p,
                                message: format!(
                                    "expected \",\" or \"]\" in a string list, found {}",
                                    t.describe()
                                ),
                            });
                        }
                        None => {
                            return Err(Error {
                                pos,
                                message: "string list not closed with \"]\"".into(),
                            });
                        }
                    }
                }
            }
            _ => unreachable!("string_list called on a non-string"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Command> {
        parse(s, Limits::default()).unwrap_or_else(|e| panic!("{e}\n{s}"))
    }

    fn e(s: &str) -> Error {
        parse(s, Limits::default()).unwrap_err()
    }

    #[test]
    fn the_rfc_5228_example_parses() {
        // RFC 5228 §9, slightly shortened.
        let script = r#"
#
# Example Sieve Filter
# Declare any optional features or extension used by the script
#
require ["fileinto"];

# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter mailbox
#
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be spam, file it away.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        # Move all other (non-company) mail to "personal"
        # mailbox.
        fileinto "personal";
        }
"#;
        let c = p(script);
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["require", "if", "elsif", "elsif", "else"]);
        assert_eq!(
            c[0].args,
            vec![Arg::Strings(
                vec!["fileinto".into()],
                Pos { line: 6, col: 9 }
            )]
        );
        let anyof = &c[3].tests[0];
        assert_eq!(anyof.name, "anyof");
        assert_eq!(anyof.tests.len(), 2);
        assert_eq!(anyof.tests[0].name, "not");
        assert_eq!(anyof.tests[0].tests[0].name, "address");
        assert!(matches!(&c[2].tests[0].args[0], Arg::Tag(t, _) if t == "domain"));
        assert_eq!(c[4].block.as_ref().unwrap()[0].name, "fileinto");
    }

    #[test]
    fn strings_numbers_and_multiline_text() {
        let c = p(
            "vacation :days 7 :subject \"a \\\"q\\\" \\\\ \\x\" text:\r\nline one\r\n..dot\r\n.\r\n;\nif size :over 100K { discard; }",
        );
        assert_eq!(c[0].args[1], Arg::Number(7, Pos { line: 1, col: 16 }));
        assert!(matches!(&c[0].args[3], Arg::Strings(v, _) if v[0] == "a \"q\" \\ x"));
        assert!(matches!(&c[0].args[4], Arg::Strings(v, _) if v[0] == "line one\r\n.dot\r\n"));
        assert!(matches!(&c[1].tests[0].args[1], Arg::Number(102400, _)));
    }

    #[test]
    fn errors_name_the_line_and_column() {
        assert_eq!(e("keep;\nfileinto \"x\"\n").pos, Pos { line: 3, col: 1 });
        let err = e("if true {\n keep;\n");
        assert_eq!(err.pos, Pos { line: 1, col: 9 });
        assert!(err.message.contains("block not closed"), "{err}");
        assert!(
            e("fileinto [\"a\" \"b\"];")
                .message
                .contains("in a string list")
        );
        assert!(e("x \"unterminated").message.contains("not closed"));
        assert!(e("/* never closed").message.contains("comment"));
        assert!(
            e("if anyof (true, ) { }")
                .message
                .contains("expected a test")
        );
        assert!(e("keep; }").message.contains("unexpected"));
        assert!(e("x 99999999999999999999;").message.contains("too large"));
        assert!(e("x text: junk\n.\n;").message.contains("end of the line"));
    }

    #[test]
    fn limits_bound_hostile_scripts() {
        let deep = "if true { ".repeat(100) + "}".repeat(100).as_str();
        assert!(e(&deep).message.contains("nested"));
        let nested_tests = format!("if {}true{} {{ }}", "not ".repeat(100), "");
        assert!(e(&nested_tests).message.contains("nested"));
        let many = "keep;".repeat(20_000);
        assert!(e(&many).message.contains("too large"));
        let small = Limits {
            max_string: 10,
            ..Limits::default()
        };
        assert!(
            parse("x \"01234567890123\";", small)
                .unwrap_err()
                .message
                .contains("too long")
        );
    }
}
