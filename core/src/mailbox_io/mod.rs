//! Mailbox import and export in the two classic on-disk forms, Maildir++ ([`maildir`]) and
//! mboxrd ([`mbox`]), keeping flags and internal dates.
//!
//! The store keeps messages with CRLF line endings; Maildir and mbox files use LF. Export
//! turns every CRLF into LF, import turns every LF not preceded by CR into CRLF, so a round
//! trip (export, then import into another account) gives byte-identical messages. The only
//! messages that cannot round-trip are those with a bare LF, or a CR right before a CRLF,
//! which no SMTP-received message has; and in mbox, a message that does not end with a line
//! break gains one (mbox cannot tell the two apart).
//!
//! Folder names map to one path component each: `/` (our hierarchy separator) becomes `.`
//! (the Maildir++ separator), and a literal `.` or `%` is written `%2E` or `%25`.

pub mod maildir;
pub mod mbox;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blocking::Wait;
use crate::store::{Placement, Store, StoreError};

/// Messages between two progress lines.
pub const PROGRESS_EVERY: usize = 500;

/// On-disk mailbox format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Maildir++: `cur/`, `new/`, `tmp/` for INBOX and `.Folder/` for the others.
    Maildir,
    /// mboxrd: one file per folder, messages separated by `From ` lines.
    Mbox,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Maildir => "maildir",
            Format::Mbox => "mbox",
        })
    }
}

/// Errors of import and export.
#[derive(Debug, thiserror::Error)]
pub enum MailboxIoError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The source is not in the expected format.
    #[error("{path}: {problem}")]
    Format {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The request cannot be carried out (no such account, destination not empty, …).
    #[error("{0}")]
    Usage(String),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Attach `path` to an I/O error.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MailboxIoError + '_ {
    move |source| MailboxIoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a run did, for the final line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Messages per folder, in the order handled.
    pub folders: Vec<(String, usize)>,
    /// Notes about things that could not be kept (e.g. keywords past Maildir's 26 letters).
    pub notes: Vec<String>,
}

impl Summary {
    /// Messages in all folders.
    pub fn messages(&self) -> usize {
        self.folders.iter().map(|(_, n)| n).sum()
    }

    fn count(&mut self, folder: &str) {
        match self.folders.iter_mut().find(|(f, _)| f == folder) {
            Some((_, n)) => *n += 1,
            None => self.folders.push((folder.to_string(), 1)),
        }
    }

    /// "INBOX 12, Sent 3" and the notes.
    pub fn details(&self) -> String {
        let mut s = self
            .folders
            .iter()
            .map(|(f, n)| format!("{f} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        for n in &self.notes {
            s.push_str("\nnote: ");
            s.push_str(n);
        }
        s
    }
}

/// Reports progress: a line every [`PROGRESS_EVERY`] messages.
pub struct Progress<'a> {
    verb: &'static str,
    total: Option<usize>,
    done: usize,
    sink: &'a mut dyn FnMut(&str),
}

impl<'a> Progress<'a> {
    /// A reporter that sends its lines to `sink`.
    pub fn new(verb: &'static str, total: Option<usize>, sink: &'a mut dyn FnMut(&str)) -> Self {
        Progress {
            verb,
            total,
            done: 0,
            sink,
        }
    }

    /// Count one message of `folder`.
    pub fn tick(&mut self, folder: &str) {
        self.done += 1;
        if self.done.is_multiple_of(PROGRESS_EVERY) {
            let line = match self.total {
                Some(t) => format!("{}: {}/{t} messages ({folder})", self.verb, self.done),
                None => format!("{}: {} messages ({folder})", self.verb, self.done),
            };
            (self.sink)(&line);
        }
    }
}

/// Export every folder of `user` into `dest` (created; must be empty if it exists).
pub fn export(
    store: &Store,
    user: &str,
    format: Format,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Summary, MailboxIoError> {
    let user = existing_account(store, user)?;
    prepare_destination(dest)?;
    let mut boxes = store.mailboxes(&user).wait()?;
    // INBOX first, then by name, so parents come before their children.
    boxes.sort_by(|a, b| {
        (a.name != "INBOX")
            .cmp(&(b.name != "INBOX"))
            .then(a.name.cmp(&b.name))
    });
    let mut folders = Vec::with_capacity(boxes.len());
    let mut total = 0;
    for mb in boxes {
        let messages = store.messages(mb.id).wait()?;
        total += messages.len();
        folders.push((mb, messages));
    }
    let mut progress = Progress::new("export", Some(total), progress);
    let mut summary = Summary::default();
    for (mb, messages) in &folders {
        match format {
            Format::Maildir => {
                maildir::export_folder(store, mb, messages, dest, &mut progress, &mut summary)?
            }
            Format::Mbox => {
                mbox::export_folder(store, mb, messages, dest, &mut progress, &mut summary)?
            }
        }
    }
    Ok(summary)
}

/// Import `src` into `user`'s folders. The top level (a Maildir's `cur`/`new`, a single mbox
/// file, or the `INBOX` file of an exported mbox directory) goes into `folder` (INBOX when
/// `None`); other folders keep their names, under `folder` when one is given.
pub fn import(
    store: &Store,
    user: &str,
    format: Format,
    src: &Path,
    folder: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<Summary, MailboxIoError> {
    let user = existing_account(store, user)?;
    if let Some(f) = folder
        && (f.is_empty() || f.starts_with('/') || f.ends_with('/') || f.contains("//"))
    {
        return Err(MailboxIoError::Usage(format!(
            "--folder {f:?} is not a folder name like \"Archive\" or \"Old/2019\""
        )));
    }
    let mut sink = Sink {
        store,
        user: &user,
        base: folder,
        summary: Summary::default(),
    };
    match format {
        Format::Maildir => maildir::import(src, &mut sink, progress)?,
        Format::Mbox => mbox::import(src, &mut sink, progress)?,
    }
    Ok(sink.summary)
}

/// Where imported messages go: the account, the target folder naming, the tally.
pub(crate) struct Sink<'a> {
    store: &'a Store,
    user: &'a str,
    base: Option<&'a str>,
    summary: Summary,
}

impl Sink<'_> {
    /// The store folder for a source folder (`None` = the source's top level / INBOX).
    pub(crate) fn target(&self, source_folder: Option<&str>) -> String {
        match (self.base, source_folder) {
            (None, None) => "INBOX".into(),
            (None, Some(f)) => f.to_string(),
            (Some(b), None) => b.to_string(),
            (Some(b), Some(f)) => format!("{b}/{f}"),
        }
    }

    /// Store one message (already CRLF) with its flags and internal date.
    pub(crate) fn add(
        &mut self,
        folder: &str,
        message: &[u8],
        flags: Vec<String>,
        internal_date: i64,
    ) -> Result<(), MailboxIoError> {
        // BODY[] never carries NUL (RFC 3516 §4.2), whatever the source held: body parts
        // with NUL are stored base64, as an IMAP APPEND of binary content is; a NUL in a
        // header (no encoding can carry it) becomes a space, and the summary says so.
        let converted;
        let message = if message.contains(&0) {
            converted = crate::imap::mime::without_nul(message).unwrap_or_else(|| {
                self.summary.notes.push(format!(
                    "{folder}: a message had NUL bytes in its header; they were stored as spaces"
                ));
                message
                    .iter()
                    .map(|&b| if b == 0 { b' ' } else { b })
                    .collect()
            });
            &converted[..]
        } else {
            message
        };
        self.store
            .deliver(
                message,
                internal_date,
                &[Placement {
                    user: self.user.to_string(),
                    mailbox: folder.to_string(),
                    flags,
                }],
            )
            .wait()?;
        self.summary.count(folder);
        Ok(())
    }

    /// Make sure an (empty) folder exists, so empty folders survive a round trip.
    pub(crate) fn ensure_folder(&mut self, folder: &str) -> Result<(), MailboxIoError> {
        if self.store.mailbox(self.user, folder).wait()?.is_none() {
            match self.store.create_mailbox(self.user, folder, None).wait() {
                Ok(_) | Err(StoreError::Exists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Record a note for the summary.
    pub(crate) fn note(&mut self, note: String) {
        self.summary.notes.push(note);
    }
}

fn existing_account(store: &Store, user: &str) -> Result<String, MailboxIoError> {
    match store.account(user).wait()? {
        Some(a) => Ok(a.address),
        None => Err(MailboxIoError::Usage(format!(
            "no account {}; create it first with `corvus user add`",
            crate::store::normalize_address(user)
        ))),
    }
}

fn prepare_destination(dest: &Path) -> Result<(), MailboxIoError> {
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(MailboxIoError::Usage(format!(
                    "{} is not empty; export into a new or empty directory",
                    dest.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(io_err(dest))
        }
        Err(e) => Err(io_err(dest)(e)),
    }
}

/// CRLF → LF, for writing a stored message to a file.
pub fn to_lf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = memchr::memmem::find(rest, b"\r\n") {
        out.extend_from_slice(&rest[..i]);
        out.push(b'\n');
        rest = &rest[i + 2..];
    }
    out.extend_from_slice(rest);
    out
}

/// LF → CRLF where the LF has no CR before it, for storing a message read from a file.
pub fn to_crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', message) {
        out.extend_from_slice(&message[start..i]);
        if i == 0 || message[i - 1] != b'\r' {
            out.push(b'\r');
        }
        out.push(b'\n');
        start = i + 1;
    }
    out.extend_from_slice(&message[start..]);
    out
}

/// A folder name as one path component: `/` → `.`, `.` → `%2E`, `%` → `%25`.
pub fn encode_folder(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '/' => s.push('.'),
            '.' => s.push_str("%2E"),
            '%' => s.push_str("%25"),
            c => s.push(c),
        }
    }
    s
}

/// Inverse of [`encode_folder`]; a `%` not followed by two hex digits stays as it is.
pub fn decode_folder(component: &str) -> String {
    let b = component.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => out.push(b'/'),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// IMAP system flags and the Maildir info letters for them (Maildir spec, "info semantics").
pub const MAILDIR_FLAGS: &[(char, &str)] = &[
    ('D', "\\Draft"),
    ('F', "\\Flagged"),
    ('P', "$Forwarded"),
    ('R', "\\Answered"),
    ('S', "\\Seen"),
    ('T', "\\Deleted"),
];

/// Whether `flag` is an IMAP system flag (starts with a backslash).
pub fn is_system_flag(flag: &str) -> bool {
    flag.starts_with('\\')
}

/// Compare file names so that digit runs compare as numbers (`Q9` before `Q10`).
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|b| b.is_ascii_digit()).count();
                let ny = y.iter().take_while(|b| b.is_ascii_digit()).count();
                let (dx, dy) = (&x[..nx], &y[..ny]);
                let tx = trim_zeros(dx);
                let ty = trim_zeros(dy);
                let ord = tx.len().cmp(&ty.len()).then(tx.cmp(ty));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&b| b == b'0').count();
    &d[n.min(d.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn imported_messages_never_carry_nul() {
        let store: Store = std::sync::Arc::new(crate::store::MemoryStore::new());
        store
            .create_account("alice@example.org", "x")
            .await
            .unwrap();
        let mut sink = Sink {
            store: &store,
            user: "alice@example.org",
            base: None,
            summary: Summary::default(),
        };
        sink.add("INBOX", b"Subject: a\r\n\r\nbin\0ary\r\n", vec![], 0)
            .unwrap();
        sink.add("INBOX", b"Subject: a\0b\r\n\r\nbody\r\n", vec![], 0)
            .unwrap();
        let inbox = store
            .mailbox("alice@example.org", "INBOX")
            .await
            .unwrap()
            .unwrap();
        let msgs = store.messages(inbox.id).await.unwrap();
        let first = store.blob(msgs[0].blob).await.unwrap();
        assert!(!first.contains(&0));
        let root = crate::imap::mime::parse_message(&first);
        assert!(
            matches!(crate::imap::mime::binary(&first, &root, &[]), Ok(ref b) if b == b"bin\0ary\r\n")
        );
        assert_eq!(
            store.blob(msgs[1].blob).await.unwrap(),
            b"Subject: a b\r\n\r\nbody\r\n"
        );
        assert_eq!(sink.summary.notes.len(), 1);
    }

    #[test]
    fn line_endings() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"a\r\n\r\nb", b"a\n\nb"),
            (b"bare\rcr\r\n", b"bare\rcr\n"),
            (b"", b""),
        ];
        for (crlf, lf) in cases {
            assert_eq!(to_lf(crlf), *lf);
            assert_eq!(to_crlf(lf), *crlf);
        }
        // Files that already use CRLF are not doubled.
        assert_eq!(to_crlf(b"a\r\nb\n"), b"a\r\nb\r\n");
    }

    #[test]
    fn folder_names() {
        let cases = [
            ("INBOX", "INBOX"),
            ("Archive/2024", "Archive.2024"),
            ("v1.2", "v1%2E2"),
            ("100%", "100%25"),
            ("É/ü", "É.ü"),
        ];
        for (name, fs) in cases {
            assert_eq!(encode_folder(name), fs);
            assert_eq!(decode_folder(fs), name);
        }
        assert_eq!(decode_folder("50%"), "50%");
        assert_eq!(decode_folder("a%zzb"), "a%zzb");
        assert_eq!(decode_folder("a%4"), "a%4");
    }

    /// Two accounts in one store; alice has mail in several folders with flags and dates.
    async fn store_with_mail() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let store: Store = std::sync::Arc::new(crate::store::MemoryStore::new());
        store
            .create_account("alice@example.org", "x")
            .await
            .unwrap();
        store.create_account("bob@example.org", "x").await.unwrap();
        let put = |mailbox: &str, msg: &[u8], flags: &[&str], date: i64| {
            store
                .deliver(
                    msg,
                    date,
                    &[Placement {
                        user: "alice@example.org".into(),
                        mailbox: mailbox.into(),
                        flags: flags.iter().map(|f| f.to_string()).collect(),
                    }],
                )
                .wait()
                .unwrap();
        };
        put(
            "INBOX",
            b"Subject: one\r\n\r\nFrom me\r\n>From you\r\n.\r\n",
            &["\\Seen", "\\Answered"],
            1_600_000_000,
        );
        // Older date, higher UID: order must follow UIDs, not dates.
        put("INBOX", b"Subject: two\r\n\r\nbody\r\n", &[], 1_500_000_000);
        put(
            "INBOX",
            b"Subject: three\r\n\r\nno final newline",
            &[
                "\\Flagged",
                "\\Draft",
                "\\Deleted",
                "$Forwarded",
                "$Junk",
                "work",
            ],
            1_600_000_100,
        );
        put(
            "Archive/2024",
            b"Subject: four\r\n\r\nx\r\n",
            &["\\Seen"],
            42,
        );
        put("v1.2", b"Subject: five\r\n\r\ny\r\n", &[], 43);
        (d, store)
    }

    /// A folder's name and its messages as (bytes, sorted flags, internal date).
    type Folder = (String, Vec<(Vec<u8>, Vec<String>, i64)>);

    /// Every folder of `user` in name order, messages in UID order.
    async fn contents(store: &Store, user: &str) -> Vec<Folder> {
        let mut boxes = store.mailboxes(user).await.unwrap();
        boxes.sort_by(|a, b| a.name.cmp(&b.name));
        boxes
            .into_iter()
            .map(|mb| {
                let msgs = store
                    .messages(mb.id)
                    .wait()
                    .unwrap()
                    .into_iter()
                    .map(|m| {
                        let mut f = m.flags.clone();
                        f.sort();
                        (store.blob(m.blob).wait().unwrap(), f, m.internal_date)
                    })
                    .collect();
                (mb.name, msgs)
            })
            .collect()
    }

    #[tokio::test]
    async fn store_round_trip_both_formats() {
        for format in [Format::Maildir, Format::Mbox] {
            let (d, store) = store_with_mail().await;
            let dest = d.path().join("export");
            let mut lines = Vec::new();
            let s = export(&store, "alice@example.org", format, &dest, &mut |l| {
                lines.push(l.to_string())
            })
            .unwrap();
            assert_eq!(s.messages(), 5);
            let s = import(&store, "bob@example.org", format, &dest, None, &mut |_| {}).unwrap();
            assert_eq!(s.messages(), 5, "{format}");
            let mut a = contents(&store, "alice@example.org").await;
            let b = contents(&store, "bob@example.org").await;
            if format == Format::Mbox {
                // mbox cannot keep "no final newline": the message gains a CRLF.
                for (_, msgs) in &mut a {
                    for (m, _, _) in msgs {
                        if !m.ends_with(b"\r\n") {
                            m.extend_from_slice(b"\r\n");
                        }
                    }
                }
            }
            assert_eq!(a, b, "{format}");
            // A second export into the same place is refused.
            let e = export(&store, "alice@example.org", format, &dest, &mut |_| {});
            assert!(matches!(e, Err(MailboxIoError::Usage(_))));
        }
    }

    #[tokio::test]
    async fn import_into_a_folder_and_missing_account() {
        let (d, store) = store_with_mail().await;
        let dest = d.path().join("m");
        export(
            &store,
            "alice@example.org",
            Format::Maildir,
            &dest,
            &mut |_| {},
        )
        .unwrap();
        import(
            &store,
            "bob@example.org",
            Format::Maildir,
            &dest,
            Some("Old"),
            &mut |_| {},
        )
        .unwrap();
        let names: Vec<String> = contents(&store, "bob@example.org")
            .await
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["Old", "Old/Archive/2024", "Old/v1.2"]);
        let e = import(
            &store,
            "nobody@example.org",
            Format::Mbox,
            &dest,
            None,
            &mut |_| {},
        );
        assert!(matches!(e, Err(MailboxIoError::Usage(_))));
        let e = import(
            &store,
            "bob@example.org",
            Format::Maildir,
            d.path(),
            None,
            &mut |_| {},
        );
        assert!(matches!(e, Err(MailboxIoError::Format { .. })), "{e:?}");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["1.M10Q2", "1.M9Q2", "10.M1", "2.M1", "1.M9Q10"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["1.M9Q2", "1.M9Q10", "1.M10Q2", "2.M1", "10.M1"]);
    }
}
