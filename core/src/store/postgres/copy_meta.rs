//! A mailbox's message metadata read in one pass with `COPY … TO STDOUT (FORMAT binary)`:
//! what a first SELECT of a big mailbox waits for.
//!
//! Read as rows, 100,000 messages cost the node more than the database: a row object and
//! its column table per message, and the database waits for the node to take them. The
//! binary COPY stream is parsed here as it arrives, straight into [`MessageMeta`], with no
//! allocation per message but its flags. A database without binary COPY (a
//! PostgreSQL-compatible one) answers "not supported", and the caller reads rows instead.

use futures_core::Stream;

use super::*;

/// The query: the same columns as
/// [`super::mailboxes::MESSAGE_COLUMNS`], the flags as one space-separated string (flag
/// names have no spaces: RFC 9051 §9 `flag-keyword` is an atom). In the order the rows are
/// stored; the caller sorts.
fn query(mailbox_id: u64) -> String {
    format!(
        "COPY (SELECT uid, blob_id, size, array_to_string(flags, ' '), internal_date, modseq \
         FROM messages WHERE mailbox_id = {mailbox_id}) \
         TO STDOUT (FORMAT binary)"
    )
}

/// The metadata of mailbox `mailbox_id` in stored order; `Ok(None)` when rows are the
/// better way: a mailbox too small for the node's cache (read again on every use, where a
/// COPY's two extra round trips would cost more than it saves) or a database without
/// binary COPY.
pub(super) async fn read(
    c: &Client,
    mailbox_id: u64,
) -> std::result::Result<Option<Vec<MessageMeta>>, StoreError> {
    // The mailbox's UIDNEXT first: no more messages than that, so the list is allocated
    // once (pages of it not written are never touched). Not pipelined with the COPY: its
    // answer would queue behind a stream no one reads yet.
    let uidnext = row(
        c,
        "SELECT uidnext FROM mailboxes WHERE id = $1",
        &[&(mailbox_id as i64)],
    )
    .await?
    .map_or(0, |r| r.get::<_, i64>(0).clamp(0, 1 << 22));
    if uidnext <= super::super::meta_cache::MIN_CACHED as i64 {
        return Ok(None);
    }
    let stream = match c.copy_out(query(mailbox_id).as_str()).await {
        Ok(s) => s,
        Err(e)
            if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED)
                || e.code() == Some(&SqlState::SYNTAX_ERROR) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mut stream = std::pin::pin!(stream);
    let mut parser = Parser {
        out: Vec::with_capacity(uidnext as usize),
        ..Parser::default()
    };
    while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        parser.feed(&chunk?)?;
    }
    parser.finish().map(Some)
}

/// The binary COPY format's signature, then its flags and header-extension length.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// An incremental parser of the binary COPY stream of [`query`]. Tuples may be split
/// across the stream's chunks: an incomplete tail is kept until the next chunk.
#[derive(Default)]
struct Parser {
    header_done: bool,
    ended: bool,
    /// An incomplete tail of the previous chunks.
    carry: Vec<u8>,
    out: Vec<MessageMeta>,
}

impl Parser {
    fn feed(&mut self, chunk: &[u8]) -> std::result::Result<(), StoreError> {
        if self.carry.is_empty() {
            let used = self.parse(chunk)?;
            self.carry.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.carry);
            data.extend_from_slice(chunk);
            let used = self.parse(&data)?;
            data.drain(..used);
            self.carry = data;
        }
        Ok(())
    }

    fn finish(self) -> std::result::Result<Vec<MessageMeta>, StoreError> {
        if !self.ended || !self.carry.is_empty() {
            return Err(bad("the stream ended inside a tuple"));
        }
        let mut out = self.out;
        if out.len() < out.capacity() / 2 {
            out.shrink_to_fit();
        }
        Ok(out)
    }

    /// Parse the whole tuples at the start of `data`; how many bytes they took.
    fn parse(&mut self, data: &[u8]) -> std::result::Result<usize, StoreError> {
        let mut at = 0;
        if !self.header_done {
            let Some(ext) = data.get(SIGNATURE.len() + 4..SIGNATURE.len() + 8) else {
                return Ok(0);
            };
            if !data.starts_with(SIGNATURE) {
                return Err(bad("no binary COPY signature"));
            }
            let ext = u32::from_be_bytes(ext.try_into().expect("4 bytes")) as usize;
            at = SIGNATURE.len() + 8 + ext;
            if data.len() < at {
                return Ok(0);
            }
            self.header_done = true;
        }
        while at < data.len() {
            if self.ended {
                return Err(bad("data after the trailer"));
            }
            match tuple(&data[at..])? {
                Some((Some(meta), used)) => {
                    self.out.push(meta);
                    at += used;
                }
                Some((None, used)) => {
                    self.ended = true;
                    at += used;
                }
                None => break,
            }
        }
        Ok(at)
    }
}

/// One tuple at the start of `data`: the metadata (`None` for the trailer) and its length;
/// `None` when `data` holds only part of it.
#[allow(clippy::type_complexity)]
fn tuple(data: &[u8]) -> std::result::Result<Option<(Option<MessageMeta>, usize)>, StoreError> {
    let Some(n) = data.get(..2) else {
        return Ok(None);
    };
    match i16::from_be_bytes([n[0], n[1]]) {
        -1 => return Ok(Some((None, 2))),
        6 => {}
        n => return Err(bad(&format!("a tuple of {n} fields"))),
    }
    let mut at = 2;
    let mut fields: [&[u8]; 6] = [&[]; 6];
    for f in &mut fields {
        let Some(len) = data.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
        if len < 0 {
            return Err(bad("a NULL column"));
        }
        at += 4;
        let Some(value) = data.get(at..at + len as usize) else {
            return Ok(None);
        };
        *f = value;
        at += len as usize;
    }
    let int = |v: &[u8]| -> std::result::Result<i64, StoreError> {
        Ok(i64::from_be_bytes(
            v.try_into().map_err(|_| bad("an integer not of 8 bytes"))?,
        ))
    };
    let flags = std::str::from_utf8(fields[3])
        .map_err(|_| bad("flags not in UTF-8"))?
        .split(' ')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    let meta = MessageMeta {
        uid: int(fields[0])? as u32,
        blob: u64_of(int(fields[1])?),
        size: u64_of(int(fields[2])?),
        flags,
        internal_date: int(fields[4])?,
        modseq: u64_of(int(fields[5])?),
    };
    Ok(Some((Some(meta), at)))
}

fn bad(what: &str) -> StoreError {
    StoreError::Backend(format!("database: unexpected COPY data: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, v: &[u8]) {
        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
        out.extend_from_slice(v);
    }

    fn encoded(metas: &[MessageMeta]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(b"ext");
        for m in metas {
            out.extend_from_slice(&6i16.to_be_bytes());
            field(&mut out, &(m.uid as i64).to_be_bytes());
            field(&mut out, &(m.blob as i64).to_be_bytes());
            field(&mut out, &(m.size as i64).to_be_bytes());
            field(&mut out, m.flags.join(" ").as_bytes());
            field(&mut out, &m.internal_date.to_be_bytes());
            field(&mut out, &(m.modseq as i64).to_be_bytes());
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn metas() -> Vec<MessageMeta> {
        (1..=3)
            .map(|i| MessageMeta {
                uid: i,
                blob: 100 + i as u64,
                size: 5000 + i as u64,
                flags: match i {
                    1 => vec![],
                    2 => vec!["\\Seen".into()],
                    _ => vec!["\\Seen".into(), "$Junk".into(), "\\Flagged".into()],
                },
                internal_date: -5 + i as i64,
                modseq: 7 * i as u64,
            })
            .collect()
    }

    /// The stream parses the same whatever the chunks it comes in: split at every byte, in
    /// two, and in single bytes.
    #[test]
    fn tuples_split_across_chunks_parse_the_same() {
        let data = encoded(&metas());
        for cut in 0..=data.len() {
            let mut p = Parser::default();
            p.feed(&data[..cut]).unwrap();
            p.feed(&data[cut..]).unwrap();
            assert_eq!(p.finish().unwrap(), metas(), "cut at {cut}");
        }
        let mut p = Parser::default();
        for b in &data {
            p.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(p.finish().unwrap(), metas());
    }

    /// A stream cut short, with data after its trailer, with a wrong signature, a NULL or a
    /// tuple of another width is an error, not a short list.
    #[test]
    fn malformed_streams_are_errors() {
        let data = encoded(&metas());
        let mut p = Parser::default();
        p.feed(&data[..data.len() - 5]).unwrap();
        assert!(p.finish().is_err(), "cut short");

        let mut more = data.clone();
        more.extend_from_slice(&6i16.to_be_bytes());
        let mut p = Parser::default();
        assert!(p.feed(&more).is_err(), "after the trailer");

        let mut wrong = data.clone();
        wrong[0] = b'X';
        assert!(Parser::default().feed(&wrong).is_err(), "signature");

        let header = SIGNATURE.len() + 8 + 3;
        let mut null = data[..header].to_vec();
        null.extend_from_slice(&6i16.to_be_bytes());
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(Parser::default().feed(&null).is_err(), "NULL");

        let mut width = data[..header].to_vec();
        width.extend_from_slice(&5i16.to_be_bytes());
        assert!(Parser::default().feed(&width).is_err(), "5 fields");
    }
}
