//! The session kit: what every protocol session (SMTP, IMAP, POP3; ManageSieve later) does
//! the same way, written once. [`serve`] is the prologue of a connection (its span, the
//! implicit-TLS handshake, the connected/closed log lines); [`Conn`] is the line connection
//! (input and output buffers, over-long-line handling, the error count, reads bounded by a
//! deadline and by shutdown, the STARTTLS upgrade). The protocol sessions keep only their
//! own rules: codecs, states and replies.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::listener::{Listener, Protocol};
use crate::net::Stream;

/// Serve one connection: open its span (`smtp`/`imap`/`pop3` with a session id, the peer
/// and the listener), do the TLS handshake of an implicit-TLS listener, log "connected",
/// run `body` on the stream, and log how the session ended.
pub async fn serve<F, Fut>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    listener: Listener,
    acceptor: &tokio_rustls::TlsAcceptor,
    body: F,
) where
    F: FnOnce(Stream) -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    let id = crate::net::session_id();
    // Span names are static: one arm per protocol.
    let span = match listener.protocol() {
        Protocol::Smtp => {
            tracing::info_span!("smtp", session = %id, peer = %peer, listener = listener.name())
        }
        Protocol::Imap => {
            tracing::info_span!("imap", session = %id, peer = %peer, listener = listener.name())
        }
        Protocol::Pop3 => {
            tracing::info_span!("pop3", session = %id, peer = %peer, listener = listener.name())
        }
        Protocol::ManageSieve => {
            tracing::info_span!("managesieve", session = %id, peer = %peer, listener = listener.name())
        }
    };
    async move {
        let Some(stream) = crate::net::accept_stream(tcp, listener.implicit_tls(), acceptor).await
        else {
            return;
        };
        tracing::debug!("connected");
        if let Err(e) = body(stream).await {
            tracing::debug!(error = %e, "session ended with I/O error");
        }
        tracing::debug!("closed");
    }
    .instrument(span)
    .await
}

/// A codec's line splitter: the next line without its ending, and the bytes it used.
pub type Framer = fn(&[u8]) -> Option<(&[u8], usize)>;

/// What a session does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Write what is buffered and close.
    Close,
    /// The positive reply to STARTTLS/STLS is buffered: upgrade ([`Conn::start_tls`]).
    StartTls,
}

/// What a wait for input ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes arrived (appended to [`Conn::inbuf`]).
    Data,
    /// The client closed the connection.
    Closed,
    /// Nothing arrived before the deadline.
    TimedOut,
    /// The server is shutting down (only while the caller allowed it to interrupt).
    Shutdown,
}

/// One complete line, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line without its line ending.
    Line(Vec<u8>),
    /// A line over the limit was dropped: answer it (once per line) and count the error.
    TooLong,
    /// No complete line buffered yet.
    More,
}

/// A client connection with its buffers.
pub struct Conn {
    /// The socket, plain or TLS.
    pub stream: Stream,
    /// Bytes read and not consumed yet.
    pub inbuf: Vec<u8>,
    /// Replies rendered and not written yet.
    pub out: Vec<u8>,
    errors: usize,
    /// The rest of an over-long line is skipped up to its end.
    discard_line: bool,
    /// A write failed or timed out: the client is gone, nothing more is written.
    broken: bool,
}

impl Conn {
    /// A connection over `stream`, its output buffer sized for the protocol's replies.
    pub fn new(stream: Stream, out_capacity: usize) -> Self {
        Conn {
            stream,
            inbuf: Vec::new(),
            out: Vec::with_capacity(out_capacity),
            errors: 0,
            discard_line: false,
            broken: false,
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Whether a write failed: the client is gone.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Write what is buffered. With `within`, a client that takes no data for that long
    /// counts as gone (back-pressure for big responses): the output is dropped and every
    /// later flush fails at once, so nothing more is rendered for a vanished client.
    pub async fn flush(&mut self, within: Option<Duration>) -> io::Result<()> {
        if self.broken {
            self.out.clear();
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        let written = match within {
            Some(d) => tokio::time::timeout(d, write)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => write.await,
        };
        self.out.clear();
        if let Err(e) = written {
            self.broken = true;
            return Err(e);
        }
        Ok(())
    }

    /// Wait for input until `until`. With `shutdown_wakes`, a server shutdown ends the wait
    /// (a session waiting for a command says goodbye; one in the middle of a command does not).
    pub async fn read(
        &mut self,
        until: Instant,
        shutdown: &CancellationToken,
        shutdown_wakes: bool,
    ) -> io::Result<Input> {
        let read = tokio::select! {
            r = tokio::time::timeout_at(until.into(), self.stream.read_more(&mut self.inbuf)) => r,
            _ = shutdown.cancelled(), if shutdown_wakes => return Ok(Input::Shutdown),
        };
        match read {
            Ok(Ok(0)) => Ok(Input::Closed),
            Ok(Ok(_)) => Ok(Input::Data),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Input::TimedOut),
        }
    }

    /// Take the next line framed by `frame` (a codec's line splitter). `limit` is the longest
    /// line accepted, line ending included, for a line starting like its argument (POP3
    /// allows longer AUTH lines). An over-long line is reported once and skipped to its end.
    pub fn next_line(&mut self, frame: Framer, limit: impl Fn(&[u8]) -> usize) -> Line {
        loop {
            let Some((line, used)) = frame(&self.inbuf) else {
                if self.inbuf.len() > limit(&self.inbuf) {
                    // Drop the partial over-long line and skip the rest of it.
                    self.inbuf.clear();
                    if !self.discard_line {
                        self.discard_line = true;
                        return Line::TooLong;
                    }
                }
                return Line::More;
            };
            let line = line.to_vec();
            self.inbuf.drain(..used);
            if std::mem::take(&mut self.discard_line) {
                continue;
            }
            if line.len() + 2 > limit(&line) {
                return Line::TooLong;
            }
            return Line::Line(line);
        }
    }

    /// Count a client error; true once `max` are reached (the session says so and closes).
    pub fn count_error(&mut self, max: usize) -> bool {
        self.errors += 1;
        self.errors >= max
    }

    /// STARTTLS/STLS after its positive reply was buffered: write it, forget anything the
    /// client pipelined behind the command (RFC 3207 §4.2, RFC 2595 §4: it must not be acted
    /// on once TLS is up), and do the handshake. Ok(false) when the handshake failed (the
    /// session ends).
    pub async fn start_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<bool> {
        self.flush(None).await?;
        self.inbuf.clear();
        Ok(self.stream.start_tls(acceptor).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        let (a, _b) = tokio::io::duplex(64);
        Conn::new(Stream::Memory(a), 64)
    }

    fn frame(buf: &[u8]) -> Option<(&[u8], usize)> {
        crate::smtp::codec::next_line(buf)
    }

    #[tokio::test]
    async fn over_long_lines_are_reported_once_and_skipped() {
        let mut c = conn();
        c.inbuf.extend_from_slice(b"NOOP\r\n0123456789");
        assert_eq!(c.next_line(frame, |_| 8), Line::Line(b"NOOP".to_vec()));
        // A partial line already over the limit: reported, dropped.
        assert_eq!(c.next_line(frame, |_| 8), Line::TooLong);
        assert!(c.inbuf.is_empty());
        // Its rest, up to the line end, is skipped without a second report.
        c.inbuf.extend_from_slice(b"abcdef");
        assert_eq!(c.next_line(frame, |_| 8), Line::More);
        c.inbuf.extend_from_slice(b"\r\nQUIT\r\n");
        assert_eq!(c.next_line(frame, |_| 8), Line::Line(b"QUIT".to_vec()));
        // A complete line over the limit.
        c.inbuf.extend_from_slice(b"ABCDEFGH\r\n");
        assert_eq!(c.next_line(frame, |_| 8), Line::TooLong);
        assert_eq!(c.next_line(frame, |_| 8), Line::More);
    }

    #[tokio::test]
    async fn errors_count_up_to_the_limit() {
        let mut c = conn();
        assert!(!c.count_error(2));
        assert!(c.count_error(2));
    }
}
