//! One connection to a milter: connect and negotiate within the connect timeout, send
//! commands, read replies within a timeout (a `PROGRESS` reply starts it again). Byte layouts
//! are the codec's; what the replies mean is the engine's.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::codec::{self, Agreed, Command, Decoder, Negotiation, Reply};
use crate::hooks::filter_config::MilterAddr;

/// What went wrong on the connection; after any of these it is dropped.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Connecting, reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The milter closed the connection.
    #[error("the milter closed the connection")]
    Closed,
    /// Bytes that are not the milter protocol.
    #[error("{0}")]
    Protocol(String),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// A negotiated connection.
pub struct Conn {
    stream: Stream,
    decoder: Decoder,
    /// Bytes read but not decoded yet.
    pending: Vec<u8>,
    out: Vec<u8>,
    /// What the negotiation agreed.
    pub agreed: Agreed,
}

impl Drop for Conn {
    /// Say goodbye (`QUIT`) without waiting: a milter that sees a bare close may log it as
    /// an error.
    fn drop(&mut self) {
        let mut quit = Vec::new();
        if Command::Quit.encode(&mut quit).is_ok() {
            let _ = match &self.stream {
                Stream::Tcp(s) => s.try_write(&quit),
                Stream::Unix(s) => s.try_write(&quit),
            };
        }
    }
}

/// Acknowledge what arrives at once rather than after the delayed-ACK timer (Linux: the
/// setting lasts until the next receive, so it is renewed before each read). A milter sends
/// its end-of-message modifications and decision as separate writes; with Nagle's algorithm
/// on its side (libmilter does not turn it off) each write after the first waits for our
/// acknowledgement of the one before, which the delayed-ACK timer holds back 40 ms while we
/// have nothing to send: 40 ms per modification per message.
fn quick_ack(s: &TcpStream) {
    // A failure only leaves the kernel's default.
    let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
}

impl Conn {
    /// Connect to `addr` and negotiate, all within `timeout`.
    pub async fn open(addr: &MilterAddr, timeout: Duration) -> Result<Conn, ConnError> {
        let open = async {
            let stream = match addr {
                MilterAddr::Tcp(a) => {
                    let s = TcpStream::connect(a).await?;
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
                MilterAddr::Unix(p) => Stream::Unix(UnixStream::connect(p).await?),
            };
            let mut conn = Conn {
                stream,
                decoder: Decoder::new(),
                pending: Vec::new(),
                out: Vec::new(),
                agreed: Negotiation::CORVUS
                    .agree(&Reply::OptNeg {
                        version: codec::PROTOCOL_VERSION,
                        actions: 0,
                        protocol: 0,
                        macro_lists: Vec::new(),
                    })
                    .expect("our own offer is agreeable"),
            };
            conn.queue(&Negotiation::CORVUS.command())?;
            conn.flush().await?;
            let reply = conn.read_reply().await?;
            conn.agreed = Negotiation::CORVUS
                .agree(&reply)
                .map_err(|e| ConnError::Protocol(e.to_string()))?;
            Ok::<_, ConnError>(conn)
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ConnError::Timeout(timeout))?
    }

    /// Add `cmd` to what goes out with the next [`Self::flush`].
    pub fn queue(&mut self, cmd: &Command) -> Result<(), ConnError> {
        cmd.encode(&mut self.out)
            .map_err(|e| ConnError::Protocol(e.to_string()))
    }

    /// Write what is queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(&self.out).await?,
            Stream::Unix(s) => s.write_all(&self.out).await?,
        }
        self.out.clear();
        Ok(())
    }

    /// Write what is queued and read the next reply within `timeout` (a `PROGRESS` reply
    /// starts the wait again; it is not returned).
    pub async fn exchange(&mut self, timeout: Duration) -> Result<Reply, ConnError> {
        tokio::time::timeout(timeout, self.flush())
            .await
            .map_err(|_| ConnError::Timeout(timeout))??;
        loop {
            let r = tokio::time::timeout(timeout, self.read_reply())
                .await
                .map_err(|_| ConnError::Timeout(timeout))??;
            if r != Reply::Progress {
                return Ok(r);
            }
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, ConnError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let mut input = self.pending.as_slice();
            let decoded = self.decoder.decode(&mut input);
            let used = self.pending.len() - input.len();
            self.pending.drain(..used);
            match decoded {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(ConnError::Protocol(e.to_string())),
            }
            let n = match &mut self.stream {
                Stream::Tcp(s) => {
                    quick_ack(s);
                    s.read(&mut chunk).await?
                }
                Stream::Unix(s) => s.read(&mut chunk).await?,
            };
            if n == 0 {
                return Err(ConnError::Closed);
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}
