//! The DATA receiver (RFC 5321 §4.1.1.4, §4.5.2), sans I/O: feed bytes, get the message with
//! dot-stuffing undone once `CRLF.CRLF` is seen.
//!
//! Only `<CRLF>.<CRLF>` ends the data (RFC 5321 §4.1.1.4), and both CRLFs must be real: a `.`
//! line ended by a bare LF or CR, or one that follows a line ended by a bare LF
//! (`<LF>.<CRLF>`, the receiver side of CVE-2023-51766), is message content. So no mix of
//! bare LF, bare CR and NUL can split one message into two ("SMTP smuggling") here or at a
//! next hop that reads line ends more loosely: bare LF / bare CR are recorded so the session
//! refuses the message (RFC 5321 §2.3.8) or stores it with every line ending in CRLF, and NUL
//! bytes are recorded so the message is refused (a NUL-stripping next hop could see an end
//! of data that we did not).

/// What went wrong with the data, reported after the end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// The message grew past the size limit.
    TooBig,
    /// A line was longer than the line limit.
    LineTooLong,
    /// A bare LF or bare CR was seen.
    BareNewline,
    /// A NUL byte was seen.
    Nul,
    /// The server-wide budget of message memory had no room ([`DataReceiver::stop_keeping`]).
    NoMemory,
}

/// Incremental DATA decoder.
#[derive(Debug)]
pub struct DataReceiver {
    message: Vec<u8>,
    max_size: usize,
    max_line: usize,
    /// Inside an over-long line whose bytes are being skipped until its LF.
    skipping: bool,
    too_big: bool,
    too_long: bool,
    bare: bool,
    nul: bool,
    no_memory: bool,
    /// The previous line ended with a real CRLF (the DATA command's line counts as one).
    after_crlf: bool,
    /// Total bytes received (for SIZE accounting even after storage stops).
    received: u64,
}

/// Result of feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    /// Consumed this many bytes; more are needed.
    More(usize),
    /// The end-of-data line was found after consuming this many bytes.
    Done(usize),
}

impl DataReceiver {
    /// A receiver that keeps at most `max_size` bytes and lines of at most `max_line` bytes.
    pub fn new(max_size: usize, max_line: usize) -> Self {
        DataReceiver {
            message: Vec::with_capacity(16 * 1024),
            max_size,
            max_line,
            skipping: false,
            too_big: false,
            too_long: false,
            bare: false,
            nul: false,
            no_memory: false,
            after_crlf: true,
            received: 0,
        }
    }

    /// Feed input. Only whole lines are consumed, except that an over-long partial line is
    /// consumed (and skipped) so the caller's buffer stays bounded.
    pub fn feed(&mut self, input: &[u8]) -> Feed {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > self.max_line {
                    self.skipping = true;
                    self.flag(DataProblem::LineTooLong);
                    self.received += rest.len() as u64;
                    return Feed::More(input.len());
                }
                return Feed::More(pos);
            };
            let raw = &rest[..nl];
            pos += nl + 1;
            self.received += nl as u64 + 1;
            if self.skipping {
                self.skipping = false;
                self.after_crlf = raw.ends_with(b"\r");
                continue;
            }
            let (line, crlf) = match raw.strip_suffix(b"\r") {
                Some(l) => (l, true),
                None => (raw, false),
            };
            let after_crlf = std::mem::replace(&mut self.after_crlf, crlf);
            if crlf && after_crlf && line == b"." {
                return Feed::Done(pos);
            }
            if !crlf || memchr::memchr(b'\r', line).is_some() {
                self.flag(DataProblem::BareNewline);
            }
            if memchr::memchr(0, line).is_some() {
                self.flag(DataProblem::Nul);
            }
            if line.len() + 2 > self.max_line {
                self.flag(DataProblem::LineTooLong);
            }
            // RFC 5321 §4.5.2: remove one leading dot.
            let line = line.strip_prefix(b".").unwrap_or(line);
            if self.no_memory {
                continue;
            }
            if self.message.len() + line.len() + 2 > self.max_size {
                self.flag(DataProblem::TooBig);
                continue;
            }
            // A bare CR inside the line ends a line of its own in the stored form: every
            // stored line ends in CRLF (the next hop sees the same lines we did).
            for piece in line.split(|&b| b == b'\r') {
                self.message.extend_from_slice(piece);
                self.message.extend_from_slice(b"\r\n");
            }
        }
        Feed::More(pos)
    }

    fn flag(&mut self, p: DataProblem) {
        match p {
            DataProblem::TooBig => self.too_big = true,
            DataProblem::LineTooLong => self.too_long = true,
            DataProblem::BareNewline => self.bare = true,
            DataProblem::Nul => self.nul = true,
            DataProblem::NoMemory => self.no_memory = true,
        }
    }

    /// The decoded message, or the most useful problem seen (size first). With
    /// `allow_bare`, bare LF/CR lines were stored with CRLF and are not a problem.
    pub fn finish_with(self, allow_bare: bool) -> Result<Vec<u8>, DataProblem> {
        if self.too_big {
            Err(DataProblem::TooBig)
        } else if self.too_long {
            Err(DataProblem::LineTooLong)
        } else if self.no_memory {
            Err(DataProblem::NoMemory)
        } else if self.nul {
            Err(DataProblem::Nul)
        } else if self.bare && !allow_bare {
            Err(DataProblem::BareNewline)
        } else {
            Ok(self.message)
        }
    }

    /// [`Self::finish_with`] refusing bare newlines.
    pub fn finish(self) -> Result<Vec<u8>, DataProblem> {
        self.finish_with(false)
    }

    /// Bytes of memory the message holds (its buffer's capacity).
    pub fn kept(&self) -> usize {
        self.message.capacity()
    }

    /// Keep no more of the message, and free what was kept: the data is still read to its
    /// end, and [`Self::finish_with`] reports [`DataProblem::NoMemory`].
    pub fn stop_keeping(&mut self) {
        self.flag(DataProblem::NoMemory);
        self.message = Vec::new();
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// A BDAT message (RFC 3030: counted chunks, no end-of-data line) under the same rules as
/// DATA: NUL refused; bare LF / bare CR refused, or with `allow_bare` every line end made CRLF,
/// so what we store or relay has the lines we saw.
pub fn check_chunked(message: Vec<u8>, allow_bare: bool) -> Result<Vec<u8>, DataProblem> {
    if memchr::memchr(0, &message).is_some() {
        return Err(DataProblem::Nul);
    }
    let bare = {
        let mut bare = false;
        for i in memchr::memchr2_iter(b'\r', b'\n', &message) {
            let ok = match message[i] {
                b'\r' => message.get(i + 1) == Some(&b'\n'),
                _ => i > 0 && message[i - 1] == b'\r',
            };
            if !ok {
                bare = true;
                break;
            }
        }
        bare
    };
    if !bare {
        return Ok(message);
    }
    if !allow_bare {
        return Err(DataProblem::BareNewline);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 32);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], chunk: usize) -> (Result<Vec<u8>, DataProblem>, usize) {
        let mut r = DataReceiver::new(1 << 20, 1000);
        let mut buf = Vec::new();
        let mut consumed_total = 0;
        for c in input.chunks(chunk) {
            buf.extend_from_slice(c);
            match r.feed(&buf) {
                Feed::More(n) => {
                    buf.drain(..n);
                    consumed_total += n;
                }
                Feed::Done(n) => {
                    consumed_total += n;
                    return (r.finish(), consumed_total);
                }
            }
        }
        panic!("no end of data");
    }

    #[test]
    fn dot_unstuffing_and_end() {
        for chunk in [1, 2, 3, 7, 100] {
            let (m, n) = run(b"Subject: x\r\n\r\n..leading\r\n.\r\nQUIT\r\n", chunk);
            assert_eq!(m.unwrap(), b"Subject: x\r\n\r\n.leading\r\n");
            assert_eq!(n, 28);
        }
    }

    #[test]
    fn bare_lf_dot_does_not_end_data() {
        let (m, _) = run(b"a\r\n\n.\nMAIL FROM:<x@y>\r\n.\r\n", 5);
        assert_eq!(m, Err(DataProblem::BareNewline));
    }

    /// Every variant of an end-of-data line that a loose reader might accept: none ends the
    /// data, so what follows is message content, not commands; only the real `CRLF.CRLF` at
    /// the end does. Refused by default, and with `allow_bare` stored with CRLF line ends only.
    #[test]
    fn no_smuggling_variant_ends_data() {
        const VARIANTS: &[&[u8]] = &[
            b"\n.\n",
            b"\n.\r",
            b"\r.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r\n.\r\r\n",
            b"\r\r\n.\r\r\n",
            b"\r\n\0.\r\n",
            b"\r\n.\0\r\n",
        ];
        let tail: &[u8] = b"MAIL FROM:<ceo@evil.test>\r\nRCPT TO:<b@x>\r\nDATA\r\n\
            Subject: smuggled\r\n\r\nx\r\n.\r\n";
        for v in VARIANTS {
            let mut input = b"Subject: a\r\n\r\nhi".to_vec();
            input.extend_from_slice(v);
            input.extend_from_slice(tail);
            for chunk in [1, 3, 1000] {
                let (m, n) = run(&input, chunk);
                assert_eq!(n, input.len(), "{v:?}: ended early");
                let nul = v.contains(&0);
                let want = if nul {
                    DataProblem::Nul
                } else {
                    DataProblem::BareNewline
                };
                assert_eq!(m, Err(want), "{v:?}");
            }
            if v.contains(&0) {
                continue;
            }
            // Normalized: every line ends in CRLF, so no next hop sees another end.
            let mut r = DataReceiver::new(1 << 20, 1000);
            assert_eq!(r.feed(&input), Feed::Done(input.len()));
            let m = r.finish_with(true).unwrap();
            for (i, &b) in m.iter().enumerate() {
                match b {
                    b'\r' => assert_eq!(m.get(i + 1), Some(&b'\n'), "{v:?}: {m:?}"),
                    b'\n' => assert_eq!(m[i - 1], b'\r', "{v:?}: {m:?}"),
                    _ => {}
                }
            }
            assert!(m.ends_with(b"x\r\n"), "{v:?}: {m:?}");
        }
    }

    #[test]
    fn a_real_crlf_before_the_dot_ends_data() {
        // A bare CR earlier on the line does not make the CRLF after it any less real.
        let (m, n) = run(b"a\r\r\n.\r\nQUIT\r\n", 2);
        assert_eq!(n, 7);
        assert_eq!(m, Err(DataProblem::BareNewline));
        let (m, n) = run(b".\r\n", 1);
        assert_eq!((m.unwrap(), n), (Vec::new(), 3));
    }

    #[test]
    fn chunked_messages_follow_the_same_rules() {
        assert_eq!(
            check_chunked(b"a\r\nb\r\n".to_vec(), false).unwrap(),
            b"a\r\nb\r\n"
        );
        assert_eq!(
            check_chunked(b"a\n.\r\nb".to_vec(), false),
            Err(DataProblem::BareNewline)
        );
        assert_eq!(
            check_chunked(b"a\r\n\0.\r\n".to_vec(), true),
            Err(DataProblem::Nul)
        );
        assert_eq!(
            check_chunked(b"a\n.\rb\r\n".to_vec(), true).unwrap(),
            b"a\r\n.\r\nb\r\n"
        );
    }

    #[test]
    fn long_line_is_reported_and_skipped() {
        let mut input = b"a\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\r\n.\r\n");
        let (m, _) = run(&input, 64);
        assert_eq!(m, Err(DataProblem::LineTooLong));
    }

    #[test]
    fn too_big() {
        let mut r = DataReceiver::new(10, 1000);
        assert_eq!(r.feed(b"0123456789\r\n.\r\n"), Feed::Done(15));
        assert_eq!(r.finish(), Err(DataProblem::TooBig));
    }
}
