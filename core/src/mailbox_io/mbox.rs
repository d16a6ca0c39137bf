//! mboxrd export and import.
//!
//! One file per folder, named after the folder ([`super::encode_folder`]). Each message is a
//! `From sender asctime-date` line (the date is the internal date, in UTC), the message with
//! LF line endings, and a blank line. Body lines matching `>*From ` get one more `>` (mboxrd,
//! so the quoting is reversible). Flags travel in `Status:` (R = `\Seen`, O = old),
//! `X-Status:` (A = `\Answered`, F = `\Flagged`, T = `\Draft`, D = `\Deleted`) and
//! `X-Keywords:` fields added at the end of the header; import reads and removes them.

use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{
    MailboxIoError, Progress, Sink, Summary, decode_folder, encode_folder, io_err, is_system_flag,
    to_crlf, to_lf,
};
use crate::blocking::Wait;
use crate::store::{Mailbox, MessageMeta, Store};

/// `X-Status:` letters and the flags they stand for.
const X_STATUS: &[(u8, &str)] = &[
    (b'A', "\\Answered"),
    (b'F', "\\Flagged"),
    (b'T', "\\Draft"),
    (b'D', "\\Deleted"),
];

/// Header fields that carry mbox metadata rather than message content.
const META_FIELDS: &[&str] = &["Status", "X-Status", "X-Keywords"];

/// The date format of From_ lines (C `asctime`, UTC).
const ASCTIME: &str = "%a %b %e %H:%M:%S %Y";

/// Write one message in mboxrd form. `message` is as stored (CRLF).
pub fn write_message(
    out: &mut impl Write,
    message: &[u8],
    flags: &[String],
    internal_date: i64,
) -> io::Result<()> {
    let lf = to_lf(message);
    let at = metadata_position(&lf);
    let date = chrono::DateTime::from_timestamp(internal_date, 0)
        .unwrap_or_default()
        .format(ASCTIME);
    writeln!(out, "From {} {date}", envelope_sender(&lf[..at]))?;
    write_quoted(out, &lf[..at])?;
    let has = |f: &str| flags.iter().any(|x| x.eq_ignore_ascii_case(f));
    let mut meta = String::from(if has("\\Seen") {
        "Status: RO\n"
    } else {
        "Status: O\n"
    });
    let x: String = X_STATUS
        .iter()
        .filter(|(_, f)| has(f))
        .map(|(c, _)| *c as char)
        .collect();
    if !x.is_empty() {
        meta.push_str(&format!("X-Status: {x}\n"));
    }
    let keywords: Vec<&str> = flags
        .iter()
        .filter(|f| !is_system_flag(f))
        .map(String::as_str)
        .collect();
    if !keywords.is_empty() {
        meta.push_str(&format!("X-Keywords: {}\n", keywords.join(" ")));
    }
    out.write_all(meta.as_bytes())?;
    write_quoted(out, &lf[at..])?;
    if !lf.is_empty() && !lf.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")
}

/// Where the metadata fields go: after the last header line, before the blank line.
fn metadata_position(lf: &[u8]) -> usize {
    if lf.starts_with(b"\n") {
        return 0;
    }
    match memchr::memmem::find(lf, b"\n\n") {
        Some(i) => i + 1,
        // No body: after the last complete line.
        None => memchr::memrchr(b'\n', lf).map(|i| i + 1).unwrap_or(0),
    }
}

/// The Return-Path address for the From_ line, or `MAILER-DAEMON`.
fn envelope_sender(header: &[u8]) -> String {
    for line in header.split(|&b| b == b'\n') {
        if line.len() > 12 && line[..12].eq_ignore_ascii_case(b"Return-Path:") {
            let v = String::from_utf8_lossy(&line[12..]);
            let v = v
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim();
            if !v.is_empty() && !v.contains(char::is_whitespace) {
                return v.to_string();
            }
        }
    }
    "MAILER-DAEMON".into()
}

/// Whether a line needs mboxrd quoting (`>*From `).
fn is_from_line(line: &[u8]) -> bool {
    let n = line.iter().take_while(|&&b| b == b'>').count();
    line[n..].starts_with(b"From ")
}

fn write_quoted(out: &mut impl Write, text: &[u8]) -> io::Result<()> {
    let mut rest = text;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest)
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        let line = &rest[..end];
        if is_from_line(line) {
            out.write_all(b">")?;
        }
        out.write_all(line)?;
        rest = &rest[end..];
    }
    Ok(())
}

/// A message read from an mbox file, before metadata is taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The From_ line without `From ` and without its line ending.
    pub from_line: String,
    /// The message with quoting removed, line endings as in the file.
    pub text: Vec<u8>,
}

/// Streams messages out of an mbox file. A message starts at a `From ` line at the top of
/// the file or after a blank line; the blank line before it belongs to the separator.
pub struct Reader<R> {
    input: R,
    next_from: Option<String>,
    started: bool,
}

impl<R: BufRead> Reader<R> {
    /// A reader over `input`.
    pub fn new(input: R) -> Self {
        Reader {
            input,
            next_from: None,
            started: false,
        }
    }

    /// The next message; `Ok(None)` at the end. An error for input that is not an mbox.
    pub fn next_message(&mut self) -> io::Result<Option<RawMessage>> {
        let mut line = Vec::new();
        if !self.started {
            self.started = true;
            // Tolerate blank lines before the first From_ line.
            loop {
                line.clear();
                if self.input.read_until(b'\n', &mut line)? == 0 {
                    return Ok(None);
                }
                if !is_blank(&line) {
                    break;
                }
            }
            if !line.starts_with(b"From ") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not an mbox file: it does not start with a \"From \" line",
                ));
            }
            self.next_from = Some(from_line_text(&line));
        }
        let Some(from_line) = self.next_from.take() else {
            return Ok(None);
        };
        let mut text = Vec::new();
        let mut prev_blank = false;
        loop {
            line.clear();
            if self.input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if prev_blank && line.starts_with(b"From ") {
                self.next_from = Some(from_line_text(&line));
                break;
            }
            prev_blank = is_blank(&line);
            // mboxrd: take one '>' off ">From ", ">>From ", …
            if line.first() == Some(&b'>') && is_from_line(&line) {
                text.extend_from_slice(&line[1..]);
            } else {
                text.extend_from_slice(&line);
            }
        }
        // The blank line that separates messages is not part of the message.
        if text.ends_with(b"\r\n\r\n") {
            text.truncate(text.len() - 2);
        } else if text.ends_with(b"\n\n") {
            text.truncate(text.len() - 1);
        }
        Ok(Some(RawMessage { from_line, text }))
    }
}

fn is_blank(line: &[u8]) -> bool {
    line == b"\n" || line == b"\r\n"
}

fn from_line_text(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[5..]);
    s.trim_end_matches(['\r', '\n']).to_string()
}

/// Split a raw message into the message to store (CRLF, metadata fields removed), its
/// flags, and its date (From_ line, then the Date field; `None` if neither parses).
pub fn parse_message(raw: &RawMessage) -> (Vec<u8>, Vec<String>, Option<i64>) {
    let text = &raw.text;
    let head_end = if text.starts_with(b"\n") || text.starts_with(b"\r\n") {
        0
    } else {
        let a = memchr::memmem::find(text, b"\n\n").map(|i| i + 1);
        let b = memchr::memmem::find(text, b"\n\r\n").map(|i| i + 1);
        match (a, b) {
            (Some(a), Some(b)) => a.min(b),
            (x, y) => x.or(y).unwrap_or(text.len()),
        }
    };
    let mut kept = Vec::with_capacity(text.len());
    let mut flags: Vec<String> = Vec::new();
    let add = |f: &str, flags: &mut Vec<String>| {
        if !flags.iter().any(|x| x.eq_ignore_ascii_case(f)) {
            flags.push(f.to_string());
        }
    };
    let mut date_field = None;
    let mut dropping = false;
    let mut rest = &text[..head_end];
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest)
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        let line = &rest[..end];
        rest = &rest[end..];
        if dropping && (line.starts_with(b" ") || line.starts_with(b"\t")) {
            continue;
        }
        dropping = false;
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&line[..0], line),
        };
        let name = String::from_utf8_lossy(name).trim().to_string();
        let value = String::from_utf8_lossy(value).trim().to_string();
        if let Some(field) = META_FIELDS.iter().find(|f| f.eq_ignore_ascii_case(&name)) {
            dropping = true;
            match *field {
                "Status" => {
                    if value.contains('R') {
                        add("\\Seen", &mut flags);
                    }
                }
                "X-Status" => {
                    for (c, f) in X_STATUS {
                        if value.as_bytes().contains(c) {
                            add(f, &mut flags);
                        }
                    }
                }
                _ => {
                    for k in value.split([' ', ',', '\t']).filter(|k| !k.is_empty()) {
                        add(k, &mut flags);
                    }
                }
            }
            continue;
        }
        if name.eq_ignore_ascii_case("Date") && date_field.is_none() {
            date_field = chrono::DateTime::parse_from_rfc2822(&value)
                .ok()
                .map(|d| d.timestamp());
        }
        kept.extend_from_slice(line);
    }
    kept.extend_from_slice(&text[head_end..]);
    let date = parse_from_line_date(&raw.from_line).or(date_field);
    (to_crlf(&kept), flags, date)
}

/// The date of a From_ line (`sender Thu Jan  1 00:00:00 1970`, optionally with a zone).
pub fn parse_from_line_date(from_line: &str) -> Option<i64> {
    let words: Vec<&str> = from_line.split_whitespace().collect();
    // Skip the sender (absent in some writers), then try the usual asctime variants.
    for skip in [1, 0] {
        if words.len() <= skip {
            continue;
        }
        let rest = words[skip..].join(" ");
        for fmt in ["%a %b %d %H:%M:%S %Y", "%a %b %d %H:%M %Y"] {
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(&rest, fmt) {
                return Some(t.and_utc().timestamp());
            }
        }
        for fmt in ["%a %b %d %H:%M:%S %Y %z", "%a %b %d %H:%M:%S %z %Y"] {
            if let Ok(t) = chrono::DateTime::parse_from_str(&rest, fmt) {
                return Some(t.timestamp());
            }
        }
    }
    None
}

/// Write one folder of the export into `dir/<folder name>`.
pub(crate) fn export_folder(
    store: &Store,
    mb: &Mailbox,
    messages: &[MessageMeta],
    dir: &Path,
    progress: &mut Progress<'_>,
    summary: &mut Summary,
) -> Result<(), MailboxIoError> {
    let path = dir.join(encode_folder(&mb.name));
    let file = fs::File::create(&path).map_err(io_err(&path))?;
    let mut w = BufWriter::new(file);
    summary.folders.push((mb.name.clone(), 0));
    for m in messages {
        let data = store.blob(m.blob).wait()?;
        write_message(&mut w, &data, &m.flags, m.internal_date).map_err(io_err(&path))?;
        if let Some((_, n)) = summary.folders.last_mut() {
            *n += 1;
        }
        progress.tick(&mb.name);
    }
    w.flush().map_err(io_err(&path))?;
    Ok(())
}

/// Import an mbox file, or a directory of them (as written by the export).
pub(crate) fn import(
    src: &Path,
    sink: &mut Sink<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<(), MailboxIoError> {
    let meta = fs::metadata(src).map_err(io_err(src))?;
    let mut progress = Progress::new("import", None, progress);
    if !meta.is_dir() {
        return import_file(src, None, sink, &mut progress);
    }
    let mut files: Vec<(PathBuf, Option<String>)> = Vec::new();
    for entry in fs::read_dir(src).map_err(io_err(src))? {
        let entry = entry.map_err(io_err(src))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Skip hidden files and Thunderbird's index files.
        if name.starts_with('.') || name.ends_with(".msf") {
            continue;
        }
        if !entry.file_type().map_err(io_err(src))?.is_file() {
            continue;
        }
        let folder = (!name.eq_ignore_ascii_case("INBOX")).then(|| decode_folder(&name));
        files.push((entry.path(), folder));
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    if files.is_empty() {
        return Err(MailboxIoError::Format {
            path: src.to_path_buf(),
            problem: "no mbox files in this directory".into(),
        });
    }
    for (path, folder) in files {
        match import_file(&path, folder.as_deref(), sink, &mut progress) {
            Err(MailboxIoError::Format { path, problem }) => {
                sink.note(format!("{}: {problem}; skipped", path.display()))
            }
            other => other?,
        }
    }
    Ok(())
}

fn import_file(
    path: &Path,
    folder: Option<&str>,
    sink: &mut Sink<'_>,
    progress: &mut Progress<'_>,
) -> Result<(), MailboxIoError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut reader = Reader::new(BufReader::with_capacity(64 * 1024, file));
    let target = sink.target(folder);
    let mut created = false;
    loop {
        let raw = match reader.next_message() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(MailboxIoError::Format {
                    path: path.to_path_buf(),
                    problem: e.to_string(),
                });
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        if !created {
            sink.ensure_folder(&target)?;
            created = true;
        }
        let (message, flags, date) = parse_message(&raw);
        let date = date.unwrap_or_else(|| chrono::Utc::now().timestamp());
        sink.add(&target, &message, flags, date)?;
        progress.tick(&target);
    }
    if !created {
        // An empty file is an empty folder.
        sink.ensure_folder(&target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn export(msgs: &[(&[u8], Vec<String>, i64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (m, f, d) in msgs {
            write_message(&mut out, m, f, *d).unwrap();
        }
        out
    }

    fn import(data: &[u8]) -> Vec<(Vec<u8>, Vec<String>, Option<i64>)> {
        let mut r = Reader::new(data);
        let mut v = Vec::new();
        while let Some(raw) = r.next_message().unwrap() {
            v.push(parse_message(&raw));
        }
        v
    }

    #[test]
    fn writes_from_line_status_and_quoting() {
        let m = b"Return-Path: <a@b.c>\r\nSubject: hi\r\n\r\nFrom here\r\n>From there\r\nok\r\n";
        let out = export(&[(m, s(&["\\Seen", "\\Answered", "$Junk"]), 0)]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From a@b.c Thu Jan  1 00:00:00 1970\n\
             Return-Path: <a@b.c>\nSubject: hi\nStatus: RO\nX-Status: A\nX-Keywords: $Junk\n\n\
             >From here\n>>From there\nok\n\n"
        );
    }

    #[test]
    fn round_trip() {
        let msgs: Vec<(&[u8], Vec<String>, i64)> = vec![
            (
                b"Subject: one\r\n\r\nFrom the start\r\n>From quoted\r\n>>From twice\r\n\r\n",
                s(&["\\Seen", "\\Flagged", "\\Draft", "\\Deleted", "\\Answered"]),
                1_700_000_000,
            ),
            (b"Subject: two\r\n\r\nbody\r\n", s(&[]), 86_400 * 365),
            (
                b"Subject: three\r\n\r\nlast\r\n\r\n\r\n",
                s(&["$Forwarded", "work"]),
                5,
            ),
            (b"Subject: no body\r\n", s(&["\\Seen"]), 7),
        ];
        let back = import(&export(&msgs));
        assert_eq!(back.len(), msgs.len());
        for ((m, f, d), (bm, bf, bd)) in msgs.iter().zip(&back) {
            assert_eq!(
                String::from_utf8_lossy(bm),
                String::from_utf8_lossy(m),
                "message bytes"
            );
            let (mut f, mut bf) = (f.clone(), bf.clone());
            f.sort();
            bf.sort();
            assert_eq!(f, bf);
            assert_eq!(Some(*d), *bd);
        }
    }

    #[test]
    fn reads_other_writers() {
        // Python's mailbox module: mboxo quoting, Status at the end of the header, CRLF-less.
        let data = b"From MAILER-DAEMON Mon Mar  4 10:11:12 2024\n\
Subject: a\nStatus: RO\nX-Status: F\n\n>From x\nbody\n\n\
From someone@example.org Tue Mar  5 00:00:00 2024\nSubject: b\n\nline\n\n";
        let v = import(data);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0, b"Subject: a\r\n\r\nFrom x\r\nbody\r\n");
        assert_eq!(v[0].1, s(&["\\Seen", "\\Flagged"]));
        assert_eq!(v[0].2, Some(1_709_547_072));
        assert_eq!(v[1].0, b"Subject: b\r\n\r\nline\r\n");
        assert!(v[1].1.is_empty());
        // A "From " line inside a message without a blank line before it is content.
        let v = import(b"From a Thu Jan  1 00:00:00 1970\nS: x\n\nl1\nFrom inside\n");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, b"S: x\r\n\r\nl1\r\nFrom inside\r\n");
        // Not an mbox.
        let mut r = Reader::new(&b"Subject: x\n\nbody\n"[..]);
        assert!(r.next_message().is_err());
        // Empty file.
        assert!(import(b"").is_empty());
    }

    #[test]
    fn from_line_dates() {
        let cases = [
            ("MAILER-DAEMON Thu Jan  1 00:00:00 1970", Some(0)),
            ("a@b Thu Jan 01 00:01:00 1970", Some(60)),
            ("Thu Jan  1 00:00:10 1970", Some(10)),
            ("a@b Thu Jan  1 01:00:00 1970 +0100", Some(0)),
            ("a@b Thu Jan  1 01:00:00 +0100 1970", Some(0)),
            ("a@b yesterday", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_from_line_date(line), want, "{line}");
        }
    }

    #[test]
    fn date_field_is_the_fallback() {
        let raw = RawMessage {
            from_line: "x garbage".into(),
            text: b"Date: Thu, 01 Jan 1970 00:02:00 +0000\nS: y\n\nb\n".to_vec(),
        };
        assert_eq!(parse_message(&raw).2, Some(120));
    }
}
