//! The DATA receiver (RFC 5321 §4.1.1.4, §4.5.2), sans I/O: feed bytes, get the message with
//! dot-stuffing undone once `CRLF.CRLF` is seen.
//!
//! Only `<CRLF>.<CRLF>` ends the data (RFC 5321 §4.1.1.4); a `.` line ended by a bare LF does
//! not, so `\n.\n` cannot split one message into two ("SMTP smuggling"). Bare LF / bare CR
//! are recorded so the session can refuse the message (RFC 5321 §2.3.8) or store it with CRLF.

/// What went wrong with the data, reported after the end of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// The message grew past the size limit.
    TooBig,
    /// A line was longer than the line limit.
    LineTooLong,
    /// A bare LF or bare CR was seen.
    BareNewline,
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
                continue;
            }
            let (line, crlf) = match raw.strip_suffix(b"\r") {
                Some(l) => (l, true),
                None => (raw, false),
            };
            if crlf && line == b"." {
                return Feed::Done(pos);
            }
            if !crlf || memchr::memchr(b'\r', line).is_some() {
                self.flag(DataProblem::BareNewline);
            }
            if line.len() + 2 > self.max_line {
                self.flag(DataProblem::LineTooLong);
            }
            // RFC 5321 §4.5.2: remove one leading dot.
            let line = line.strip_prefix(b".").unwrap_or(line);
            if self.message.len() + line.len() + 2 > self.max_size {
                self.flag(DataProblem::TooBig);
                continue;
            }
            self.message.extend_from_slice(line);
            self.message.extend_from_slice(b"\r\n");
        }
        Feed::More(pos)
    }

    fn flag(&mut self, p: DataProblem) {
        match p {
            DataProblem::TooBig => self.too_big = true,
            DataProblem::LineTooLong => self.too_long = true,
            DataProblem::BareNewline => self.bare = true,
        }
    }

    /// The decoded message, or the most useful problem seen (size first). With
    /// `allow_bare`, bare LF/CR lines were stored with CRLF and are not a problem.
    pub fn finish_with(self, allow_bare: bool) -> Result<Vec<u8>, DataProblem> {
        if self.too_big {
            Err(DataProblem::TooBig)
        } else if self.too_long {
            Err(DataProblem::LineTooLong)
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

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }
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
