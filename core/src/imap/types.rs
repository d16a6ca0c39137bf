//! IMAP command types, shared by the codec and the session.

/// A command with its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// Client tag.
    pub tag: String,
    /// The command.
    pub command: Command,
}

/// A message set: ranges ([`STAR`] stands for `*`) or `$` (RFC 5182 saved result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqSet {
    /// Inclusive ranges, in either order; [`STAR`] stands for `*`.
    Ranges(Vec<(u32, u32)>),
    /// `$`
    Saved,
}

/// `*` in a sequence set: the largest number in use (RFC 9051 §9, `seq-number`). Zero, which
/// no message number or UID can be, so that 4294967295 stays a number of its own: with the
/// highest UID 2, `3:4294967295` names nothing while `3:*` names UID 2.
pub const STAR: u32 = 0;

impl SeqSet {
    /// Whether `n` is in the set, with `*` meaning `max`.
    pub fn contains(&self, n: u32, max: u32, saved: &[u32]) -> bool {
        match self {
            SeqSet::Saved => saved.contains(&n),
            SeqSet::Ranges(r) => r.iter().any(|&(a, b)| {
                let a = if a == STAR { max } else { a };
                let b = if b == STAR { max } else { b };
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                n >= lo && n <= hi
            }),
        }
    }
}

/// STORE mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// FLAGS
    Replace,
    /// +FLAGS
    Add,
    /// -FLAGS
    Remove,
}

/// STATUS items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// MESSAGES
    Messages,
    /// RECENT (rev1)
    Recent,
    /// UIDNEXT
    UidNext,
    /// UIDVALIDITY
    UidValidity,
    /// UNSEEN
    Unseen,
    /// DELETED (rev2)
    Deleted,
    /// SIZE (rev2)
    Size,
    /// HIGHESTMODSEQ (CONDSTORE)
    HighestModseq,
}

/// Which part of a section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SectionKind {
    /// The whole part (or message).
    #[default]
    Full,
    /// HEADER
    Header,
    /// HEADER.FIELDS (...)
    HeaderFields(Vec<String>),
    /// HEADER.FIELDS.NOT (...)
    HeaderFieldsNot(Vec<String>),
    /// TEXT
    Text,
    /// MIME
    Mime,
}

/// `[1.2.HEADER]` and friends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    /// Part numbers.
    pub part: Vec<u32>,
    /// What of that part.
    pub kind: SectionKind,
}

/// One FETCH data item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem {
    /// FLAGS
    Flags,
    /// INTERNALDATE
    InternalDate,
    /// RFC822.SIZE
    Rfc822Size,
    /// ENVELOPE
    Envelope,
    /// BODY (no section)
    Body,
    /// BODYSTRUCTURE
    BodyStructure,
    /// UID
    Uid,
    /// MODSEQ
    Modseq,
    /// BODY[...] / BODY.PEEK[...] / RFC822(.HEADER/.TEXT)
    Section {
        /// The section.
        section: Section,
        /// Don't set \Seen.
        peek: bool,
        /// <offset.length>
        partial: Option<(u64, u64)>,
        /// Answer under this RFC822 name.
        legacy: Option<&'static str>,
    },
    /// BINARY[...] / BINARY.PEEK[...]
    Binary {
        /// Part numbers.
        part: Vec<u32>,
        /// Don't set \Seen.
        peek: bool,
        /// <offset.length>
        partial: Option<(u64, u64)>,
    },
    /// BINARY.SIZE[...]
    BinarySize(Vec<u32>),
}

/// SEARCH criteria.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    /// Every key must match.
    And(Vec<SearchKey>),
    /// Either.
    Or(Box<SearchKey>, Box<SearchKey>),
    /// Negation.
    Not(Box<SearchKey>),
    /// ALL
    All,
    /// Sequence set.
    Seq(SeqSet),
    /// UID set.
    Uid(SeqSet),
    /// Flag set (true) or unset (false).
    Flag(String, bool),
    /// Header contains (name upper-cased for FROM/TO/…).
    Header(String, String),
    /// Body contains.
    Body(String),
    /// Header or body contains.
    Text(String),
    /// BEFORE/ON/SINCE/SENT*: key word and day number.
    Date(String, i64),
    /// LARGER n
    Larger(u64),
    /// SMALLER n
    Smaller(u64),
    /// MODSEQ n
    Modseq(u64),
}

/// One message of an APPEND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendMessage {
    /// Flags.
    pub flags: Vec<String>,
    /// Internal date (Unix seconds).
    pub date: Option<i64>,
    /// The message's pieces, in order: one literal, or CATENATE's list (RFC 4469).
    pub parts: Vec<AppendPart>,
    /// Sent as `UTF8 (literal8)` (RFC 6855 §4; needs `ENABLE UTF8=ACCEPT`).
    pub utf8: bool,
}

/// A piece of an APPEND message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendPart {
    /// A literal; `binary` when sent as literal8 (RFC 3516): stored without line-ending
    /// normalisation.
    Text {
        /// The bytes.
        data: Vec<u8>,
        /// literal8.
        binary: bool,
    },
    /// CATENATE's `URL` (RFC 4469 §5): a message, or a section of one, of this user.
    Url(String),
}

/// Every command Corvus understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// CAPABILITY
    Capability,
    /// NOOP / CHECK
    Noop,
    /// LOGOUT
    Logout,
    /// STARTTLS
    StartTls,
    /// AUTHENTICATE mech [initial]
    Authenticate(String, Option<String>),
    /// LOGIN user pass
    Login(String, String),
    /// ENABLE caps
    Enable(Vec<String>),
    /// SELECT / EXAMINE
    Select {
        /// Mailbox.
        mailbox: String,
        /// EXAMINE.
        read_only: bool,
        /// (CONDSTORE)
        condstore: bool,
        /// (QRESYNC (uidvalidity modseq [known-uids]))
        qresync: Option<(u32, u64, Option<SeqSet>)>,
    },
    /// CREATE name [(USE (\Special))]
    Create(String, Option<String>),
    /// DELETE
    Delete(String),
    /// RENAME
    Rename(String, String),
    /// SUBSCRIBE
    Subscribe(String),
    /// UNSUBSCRIBE
    Unsubscribe(String),
    /// LIST / LSUB
    List {
        /// LSUB
        lsub: bool,
        /// Reference name.
        reference: String,
        /// Patterns.
        patterns: Vec<String>,
        /// Selection options (SUBSCRIBED, SPECIAL-USE, …).
        select: Vec<String>,
        /// Return options.
        ret: Vec<String>,
        /// RETURN (STATUS (...)).
        status: Option<Vec<StatusItem>>,
    },
    /// NAMESPACE
    Namespace,
    /// STATUS
    Status(String, Vec<StatusItem>),
    /// APPEND
    Append {
        /// Target.
        mailbox: String,
        /// The messages, one or more (MULTIAPPEND, RFC 3502), appended all or none.
        messages: Vec<AppendMessage>,
    },
    /// IDLE
    Idle,
    /// CLOSE
    Close,
    /// UNSELECT
    Unselect,
    /// CANCELUPDATE "tag" … (RFC 5267 §4.4): stop the updates of those searches.
    CancelUpdate(Vec<String>),
    /// EXPUNGE / UID EXPUNGE set
    Expunge(Option<SeqSet>),
    /// SEARCH
    Search {
        /// UID SEARCH.
        uid: bool,
        /// ESEARCH RETURN options.
        ret: Option<Vec<String>>,
        /// Criteria.
        key: SearchKey,
    },
    /// SORT (RFC 5256 §3), with ESORT's RETURN options (RFC 5267 §3).
    Sort {
        /// UID SORT.
        uid: bool,
        /// RETURN options (MIN MAX ALL COUNT), `None` for the plain SORT response.
        ret: Option<Vec<String>>,
        /// Sort criteria, most significant first.
        criteria: Vec<super::sort::Criterion>,
        /// Which messages.
        key: SearchKey,
    },
    /// THREAD (RFC 5256 §3).
    Thread {
        /// UID THREAD.
        uid: bool,
        /// REFERENCES (else ORDEREDSUBJECT).
        references: bool,
        /// Which messages.
        key: SearchKey,
    },
    /// FETCH
    Fetch {
        /// UID FETCH.
        uid: bool,
        /// Messages.
        set: SeqSet,
        /// Items.
        items: Vec<FetchItem>,
        /// CHANGEDSINCE.
        changed_since: Option<u64>,
        /// VANISHED (QRESYNC).
        vanished: bool,
    },
    /// STORE
    Store {
        /// UID STORE.
        uid: bool,
        /// Messages.
        set: SeqSet,
        /// Replace/add/remove.
        mode: StoreMode,
        /// .SILENT
        silent: bool,
        /// Flags.
        flags: Vec<String>,
        /// UNCHANGEDSINCE.
        unchanged_since: Option<u64>,
    },
    /// COPY / MOVE
    Copy {
        /// UID variant.
        uid: bool,
        /// Messages.
        set: SeqSet,
        /// Target.
        mailbox: String,
        /// MOVE.
        is_move: bool,
    },
    /// ID
    Id(Vec<(String, Option<String>)>),
}
