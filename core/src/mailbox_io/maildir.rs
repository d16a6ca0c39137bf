//! Maildir++ export and import.
//!
//! Layout: INBOX in `DIR/{cur,new,tmp}`, folder `A/B` in `DIR/.A.B/` (with a `maildirfolder`
//! marker). Folder names on disk are in modified UTF-7, as Dovecot's Maildir++ layout writes
//! them (`Entwürfe` is `.Entw&APw-rfe`); on import a name that is not valid modified UTF-7
//! (a tool that wrote UTF-8, or a bare `&`) is taken as it is. A message is one file named `TIME.CvalidityUuid.HOST,S=size,W=crlfsize:2,FLAGS`
//! whose modification time, like `TIME`, is the internal date. Flags are the info letters
//! D F P R S T; other keywords get the letters a–z listed in `dovecot-keywords`, and
//! `dovecot-uidlist` records the UIDs so that order survives an import (Dovecot reads both).
//! On import, a message's internal date is its file's modification time (what Python's
//! `mailbox` and Dovecot set), or the leading timestamp of its name when that is missing.

use std::collections::HashMap;
use std::fs::{self, FileTimes};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    MAILDIR_FLAGS, MailboxIoError, Progress, Sink, Summary, decode_folder, encode_folder, io_err,
    is_system_flag, natural_cmp, to_crlf, to_lf,
};
use crate::blocking::Wait;
use crate::imap::mutf7;
use crate::store::{Mailbox, MessageMeta, Store};

/// Dovecot's keyword file: line `N name` gives keyword `name` the letter `a + N`.
const KEYWORDS_FILE: &str = "dovecot-keywords";
/// Dovecot's UID list: a header line, then `uid [fields] :basename` per message.
const UIDLIST_FILE: &str = "dovecot-uidlist";

/// The directory of `folder` under the Maildir root `root`.
pub fn folder_dir(root: &Path, folder: &str) -> PathBuf {
    if folder == "INBOX" {
        root.to_path_buf()
    } else {
        root.join(format!(".{}", encode_folder(&mutf7::encode(folder))))
    }
}

/// The folder name of the directory `.{component}` (inverse of [`folder_dir`]).
pub fn folder_name(component: &str) -> String {
    let name = decode_folder(component);
    mutf7::decode(&name).unwrap_or(name)
}

/// The info part (`:2,` letters) for `flags`, using `keywords` (letter index → keyword) for
/// keywords. Letters are in ASCII order, as the Maildir spec asks.
pub fn info_letters(flags: &[String], keywords: &[String]) -> String {
    let mut letters: Vec<char> = Vec::new();
    for f in flags {
        if let Some((c, _)) = MAILDIR_FLAGS
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(f))
        {
            letters.push(*c);
        } else if let Some(i) = keywords.iter().position(|k| k == f) {
            letters.push((b'a' + i as u8) as char);
        }
    }
    letters.sort_unstable();
    letters.dedup();
    letters.into_iter().collect()
}

/// Flags from a file name's info part; `keywords` maps lowercase letters to keywords.
pub fn flags_from_name(name: &str, keywords: &[String]) -> Vec<String> {
    let Some((_, letters)) = name.rsplit_once(":2,") else {
        return Vec::new();
    };
    let mut flags = Vec::new();
    for c in letters.chars() {
        let flag = if c.is_ascii_lowercase() {
            keywords.get((c as u8 - b'a') as usize).cloned()
        } else {
            MAILDIR_FLAGS
                .iter()
                .find(|(l, _)| *l == c)
                .map(|(_, f)| f.to_string())
        };
        if let Some(f) = flag
            && !flags.contains(&f)
        {
            flags.push(f);
        }
    }
    flags
}

/// Keywords of a folder that need a letter (everything but system flags and the ones with a
/// fixed letter), in a stable order.
fn folder_keywords(messages: &[MessageMeta]) -> Vec<String> {
    let mut kw: Vec<String> = messages
        .iter()
        .flat_map(|m| m.flags.iter())
        .filter(|f| !is_system_flag(f))
        .filter(|f| !MAILDIR_FLAGS.iter().any(|(_, n)| n.eq_ignore_ascii_case(f)))
        .cloned()
        .collect();
    kw.sort();
    kw.dedup();
    kw
}

/// This machine's name for Maildir file names, with `/` and `:` escaped as the spec says.
fn host_name() -> String {
    let h = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into());
    h.replace('/', "\\057").replace(':', "\\072")
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(unix.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Write one folder of the export.
pub(crate) fn export_folder(
    store: &Store,
    mb: &Mailbox,
    messages: &[MessageMeta],
    root: &Path,
    progress: &mut Progress<'_>,
    summary: &mut Summary,
) -> Result<(), MailboxIoError> {
    let dir = folder_dir(root, &mb.name);
    for sub in ["cur", "new", "tmp"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    if mb.name != "INBOX" {
        let marker = dir.join("maildirfolder");
        fs::write(&marker, b"").map_err(io_err(&marker))?;
    }
    let mut keywords = folder_keywords(messages);
    if keywords.len() > 26 {
        summary.notes.push(format!(
            "{}: Maildir has letters for 26 keywords; {} not kept: {}",
            mb.name,
            keywords.len() - 26,
            keywords[26..].join(" ")
        ));
        keywords.truncate(26);
    }
    if !keywords.is_empty() {
        let text: String = keywords
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{i} {k}\n"))
            .collect();
        let p = dir.join(KEYWORDS_FILE);
        fs::write(&p, text).map_err(io_err(&p))?;
    }
    let host = host_name();
    let mut uidlist = format!("3 V{} N{}\n", mb.uidvalidity, mb.uidnext);
    summary.folders.push((mb.name.clone(), 0));
    for m in messages {
        let data = to_lf(&store.blob(m.blob).wait()?);
        let base = format!(
            "{}.C{}U{}.{host},S={},W={}",
            m.internal_date.max(0),
            mb.uidvalidity,
            m.uid,
            data.len(),
            m.size
        );
        let name = format!("{base}:2,{}", info_letters(&m.flags, &keywords));
        // Maildir delivery: write into tmp/, then rename into place.
        let tmp = dir.join("tmp").join(&base);
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&data).map_err(io_err(&tmp))?;
        let t = system_time(m.internal_date);
        f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
            .map_err(io_err(&tmp))?;
        drop(f);
        let target = dir.join("cur").join(&name);
        fs::rename(&tmp, &target).map_err(io_err(&target))?;
        uidlist.push_str(&format!("{} :{base}\n", m.uid));
        if let Some((_, n)) = summary.folders.last_mut() {
            *n += 1;
        }
        progress.tick(&mb.name);
    }
    let p = dir.join(UIDLIST_FILE);
    fs::write(&p, uidlist).map_err(io_err(&p))?;
    Ok(())
}

/// Whether `dir` looks like a Maildir (has `cur/` or `new/`).
fn is_maildir(dir: &Path) -> bool {
    dir.join("cur").is_dir() || dir.join("new").is_dir()
}

/// A message file found in a folder.
struct Found {
    path: PathBuf,
    name: String,
    in_cur: bool,
    uid: Option<u32>,
}

/// Import a Maildir++ tree rooted at `src`.
pub(crate) fn import(
    src: &Path,
    sink: &mut Sink<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<(), MailboxIoError> {
    if !src.is_dir() || !is_maildir(src) {
        return Err(MailboxIoError::Format {
            path: src.to_path_buf(),
            problem: "not a Maildir (no cur/ or new/ directory)".into(),
        });
    }
    let mut folders: Vec<(PathBuf, Option<String>)> = vec![(src.to_path_buf(), None)];
    let mut subs = Vec::new();
    for entry in fs::read_dir(src).map_err(io_err(src))? {
        let entry = entry.map_err(io_err(src))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if let Some(folder) = name.strip_prefix('.')
            && !folder.is_empty()
            && folder != "."
            && path.is_dir()
            && is_maildir(&path)
        {
            subs.push((path, Some(folder_name(folder))));
        }
    }
    subs.sort_by(|a, b| a.1.cmp(&b.1));
    folders.extend(subs);

    let mut listed = Vec::with_capacity(folders.len());
    let mut total = 0;
    for (dir, folder) in folders {
        let files = list_messages(&dir)?;
        total += files.len();
        listed.push((dir, folder, files));
    }
    let mut progress = Progress::new("import", Some(total), progress);
    for (dir, folder, files) in listed {
        let target = sink.target(folder.as_deref());
        sink.ensure_folder(&target)?;
        let keywords = read_keywords(&dir);
        for f in files {
            let data = fs::read(&f.path).map_err(io_err(&f.path))?;
            let flags = if f.in_cur {
                flags_from_name(&f.name, &keywords)
            } else {
                Vec::new()
            };
            let date = fs::metadata(&f.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| match t.duration_since(UNIX_EPOCH) {
                    Ok(d) => i64::try_from(d.as_secs()).ok(),
                    Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
                })
                .or_else(|| leading_timestamp(&f.name))
                .unwrap_or_else(|| chrono::Utc::now().timestamp());
            sink.add(&target, &to_crlf(&data), flags, date)?;
            progress.tick(&target);
        }
    }
    Ok(())
}

/// Message files of one folder, in the order to import them: by UID where `dovecot-uidlist`
/// knows the file, then by name (natural order, so the leading timestamp sorts by time).
fn list_messages(dir: &Path) -> Result<Vec<Found>, MailboxIoError> {
    let uids = read_uidlist(dir);
    let mut found = Vec::new();
    for (sub, in_cur) in [("new", false), ("cur", true)] {
        let d = dir.join(sub);
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&d)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&d))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().map_err(io_err(&d))?.is_file() {
                continue;
            }
            let base = name.split(':').next().unwrap_or(&name);
            found.push(Found {
                uid: uids.get(base).copied(),
                path: entry.path(),
                name,
                in_cur,
            });
        }
    }
    found.sort_by(|a, b| match (a.uid, b.uid) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => natural_cmp(&a.name, &b.name),
    });
    Ok(found)
}

/// `dovecot-keywords` of a folder (letter index → keyword); empty when absent.
fn read_keywords(dir: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(dir.join(KEYWORDS_FILE)) else {
        return Vec::new();
    };
    let mut kw = vec![String::new(); 26];
    for line in text.lines() {
        if let Some((i, name)) = line.split_once(' ')
            && let Ok(i) = i.trim().parse::<usize>()
            && i < 26
        {
            kw[i] = name.trim().to_string();
        }
    }
    while kw.last().is_some_and(String::is_empty) {
        kw.pop();
    }
    kw
}

/// `dovecot-uidlist` of a folder (basename → UID); empty when absent or unreadable.
fn read_uidlist(dir: &Path) -> HashMap<String, u32> {
    let Ok(text) = fs::read_to_string(dir.join(UIDLIST_FILE)) else {
        return HashMap::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let (left, base) = line.split_once(" :")?;
            let uid = left.split_whitespace().next()?.parse().ok()?;
            Some((base.to_string(), uid))
        })
        .collect()
}

/// The Unix time a Maildir file name starts with.
fn leading_timestamp(name: &str) -> Option<i64> {
    name.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn info_round_trip() {
        let kw = s(&["$Junk", "work"]);
        let cases: &[(&[&str], &str)] = &[
            (&[], ""),
            (&["\\Seen"], "S"),
            (&["\\Seen", "\\Answered", "\\Flagged"], "FRS"),
            (&["\\Draft", "\\Deleted", "$Forwarded"], "DPT"),
            (&["\\Seen", "work", "$Junk"], "Sab"),
        ];
        for (flags, letters) in cases {
            let flags = s(flags);
            assert_eq!(info_letters(&flags, &kw), *letters, "{flags:?}");
            let mut back = flags_from_name(&format!("1.x.h,S=1:2,{letters}"), &kw);
            let mut want = flags.clone();
            back.sort();
            want.sort();
            assert_eq!(back, want);
        }
        // \Recent and unknown keywords have no letter.
        assert_eq!(info_letters(&s(&["\\Recent", "other"]), &kw), "");
        // Names without info, or with unknown letters.
        assert!(flags_from_name("1.x.h", &kw).is_empty());
        assert_eq!(flags_from_name("1.x.h:2,SXz", &kw), s(&["\\Seen"]));
    }

    #[test]
    fn keyword_and_uid_files() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(KEYWORDS_FILE), "0 $Junk\n2 work\n").unwrap();
        assert_eq!(read_keywords(d.path()), s(&["$Junk", "", "work"]));
        fs::write(
            d.path().join(UIDLIST_FILE),
            "3 V1 N3\n1 :a.host\n2 W100 :b.host,S=3\n",
        )
        .unwrap();
        let u = read_uidlist(d.path());
        assert_eq!(u.get("a.host"), Some(&1));
        assert_eq!(u.get("b.host,S=3"), Some(&2));
        assert_eq!(leading_timestamp("1700000000.M1P2.h:2,S"), Some(1700000000));
    }

    #[test]
    fn folder_dirs() {
        let r = Path::new("/m");
        assert_eq!(folder_dir(r, "INBOX"), Path::new("/m"));
        assert_eq!(folder_dir(r, "Archive/2024"), Path::new("/m/.Archive.2024"));
        // Dovecot's spelling: modified UTF-7, `&` as `&-`.
        assert_eq!(
            folder_dir(r, "Entwürfe/Privé"),
            Path::new("/m/.Entw&APw-rfe.Priv&AOk-")
        );
        assert_eq!(folder_dir(r, "R&D"), Path::new("/m/.R&-D"));
        assert_eq!(folder_name("Entw&APw-rfe.Priv&AOk-"), "Entwürfe/Privé");
        assert_eq!(folder_name("R&-D"), "R&D");
        assert_eq!(folder_name("v1%2E2"), "v1.2");
        // Not modified UTF-7: taken as written.
        assert_eq!(folder_name("R&D"), "R&D");
        assert_eq!(folder_name("Entwürfe"), "Entwürfe");
    }
}
