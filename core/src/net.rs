//! Transport plumbing shared by every protocol: a stream that is plain TCP or TLS (so STARTTLS
//! can upgrade in place), connection limits per client IP and in total, sessions per
//! authenticated user, and an auth-failure rate limiter.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection, before or after TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// Placeholder while upgrading.
    Upgrading,
}

impl Stream {
    /// Read what the peer sent onto the end of `buf`, straight into its spare capacity: a
    /// session waiting here holds no read buffer of its own in its future (a 16 KiB array
    /// there was most of every connection's task). `buf` is given [`READ_ROOM`] bytes of room
    /// first: capacity, whose pages stay untouched until data arrives. Ok(0) is the end of
    /// the stream.
    pub async fn read_more(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        buf.reserve(READ_ROOM);
        self.read_buf(buf).await
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Negotiated TLS version and cipher, for Received headers.
    pub fn tls_info(&self) -> Option<String> {
        match self {
            Stream::Tls(s) => {
                let (_, conn) = s.get_ref();
                let v = conn
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let c = conn
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default();
                Some(format!("{} {}", v.replace("TLSv1_", "TLS1."), c))
            }
            _ => None,
        }
    }

    /// Upgrade to TLS within [`HANDSHAKE_TIMEOUT`] (implicit TLS, STARTTLS, STLS); false
    /// (logged at debug) when the handshake failed or timed out: the session ends then.
    pub async fn start_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> bool {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.upgrade(acceptor)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                false
            }
        }
    }

    /// Upgrade a plain stream to TLS.
    pub async fn upgrade(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        match std::mem::replace(self, Stream::Upgrading) {
            Stream::Plain(tcp) => {
                let tls = acceptor.accept(tcp).await?;
                *self = Stream::Tls(Box::new(tls));
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("already TLS"))
            }
        }
    }
}

/// Spare room [`Stream::read_more`] reads into: with less, a 5 KB message took one more read.
pub const READ_ROOM: usize = 16 * 1024;

/// How long a client may take over a TLS handshake (implicit TLS or STARTTLS).
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A session's id in the logs: 12 hex digits.
pub fn session_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The stream of a new connection: plain, or for the implicit-TLS listeners after the
/// handshake (`None` when it failed or took longer than [`HANDSHAKE_TIMEOUT`]).
pub async fn accept_stream(
    tcp: tokio::net::TcpStream,
    implicit_tls: bool,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> Option<Stream> {
    let mut stream = Stream::Plain(tcp);
    if implicit_tls && !stream.start_tls(acceptor).await {
        return None;
    }
    Some(stream)
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Upgrading => Poll::Ready(Err(io::Error::other("stream is being upgraded"))),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// Counts open connections in total and per IP.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Held while a connection is open; releases its slot on drop.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnRefused {
    /// Too many connections overall.
    Total,
    /// Too many from this IP.
    PerIp,
}

impl ConnLimits {
    /// Limits with the given maxima.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnLimits {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Take a slot for `ip`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, ConnRefused> {
        let mut g = self.open.lock().expect("conn limits");
        if g.0 >= self.max_total {
            return Err(ConnRefused::Total);
        }
        let n = g.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(ConnRefused::PerIp);
        }
        *n += 1;
        g.0 += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Open connections right now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("conn limits").0
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.limits.open.lock().expect("conn limits");
        g.0 -= 1;
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// Authenticated sessions per user (IMAP): several devices with a few connections each are
/// normal, one account holding hundreds of sessions (a looping client, a leaked password)
/// is not. The maximum is passed to [`UserLimits::acquire`], so it follows the current
/// configuration.
#[derive(Default)]
pub struct UserLimits {
    open: Mutex<HashMap<String, usize>>,
}

/// Held by a logged-in session; releases the user's slot on drop, so a session that ends
/// any way at all (LOGOUT, disconnect, timeout, a panicking task) gives it back.
pub struct UserSlot {
    limits: Arc<UserLimits>,
    user: String,
}

impl UserLimits {
    /// Take one of `user`'s `max` slots; `Err(open)` when all are in use.
    pub fn acquire(self: &Arc<Self>, user: &str, max: usize) -> Result<UserSlot, usize> {
        let mut g = self.open.lock().expect("user limits");
        let n = g.entry(user.to_string()).or_insert(0);
        if *n >= max {
            let open = *n;
            if open == 0 {
                g.remove(user);
            }
            return Err(open);
        }
        *n += 1;
        Ok(UserSlot {
            limits: self.clone(),
            user: user.to_string(),
        })
    }

    /// Sessions `user` holds right now.
    pub fn open(&self, user: &str) -> usize {
        let g = self.open.lock().expect("user limits");
        g.get(user).copied().unwrap_or(0)
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut g = self.limits.open.lock().expect("user limits");
        if let Some(n) = g.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                g.remove(&self.user);
            }
        }
    }
}

/// Failed authentication attempts per IP within a window (shared by SMTP, IMAP, POP3).
pub struct AuthThrottle {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthThrottle {
    /// At most `max` failures per `window`.
    pub fn new(max: u32, window: Duration) -> Arc<Self> {
        Arc::new(AuthThrottle {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `ip` is currently blocked.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let mut g = self.failures.lock().expect("throttle");
        match g.get(&ip) {
            Some((n, since)) if since.elapsed() < self.window => *n >= self.max,
            Some(_) => {
                g.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Record a failure; returns whether the IP is now blocked.
    pub fn fail(&self, ip: IpAddr) -> bool {
        let mut g = self.failures.lock().expect("throttle");
        if g.len() > 100_000 {
            let window = self.window;
            g.retain(|_, (_, t)| t.elapsed() < window);
        }
        let e = g.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
        e.1 = Instant::now();
        e.0 >= self.max
    }

    /// Forget failures after a success.
    pub fn succeed(&self, ip: IpAddr) {
        self.failures.lock().expect("throttle").remove(&ip);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn user_slots_are_counted_per_user_and_released_on_drop() {
        let l = Arc::new(UserLimits::default());
        let a1 = l.acquire("a@x", 2).unwrap();
        let _a2 = l.acquire("a@x", 2).unwrap();
        assert_eq!(l.acquire("a@x", 2).err(), Some(2));
        let b = l.acquire("b@x", 2).unwrap(); // another user is not affected
        drop(a1);
        assert_eq!(l.open("a@x"), 1);
        let _a3 = l.acquire("a@x", 2).unwrap();
        drop(b);
        assert_eq!(l.open("b@x"), 0);
        assert!(l.open.lock().unwrap().get("b@x").is_none()); // no entry left behind
        assert_eq!(l.acquire("c@x", 0).err(), Some(0));
        assert!(l.open.lock().unwrap().get("c@x").is_none());
    }

    use super::*;

    #[test]
    fn limits() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(ConnRefused::PerIp));
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(ConnRefused::Total));
        drop(s1);
        assert!(l.acquire(a).is_ok());
    }

    #[test]
    fn throttle() {
        let t = AuthThrottle::new(2, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!t.fail(a));
        assert!(!t.blocked(a));
        assert!(t.fail(a));
        assert!(t.blocked(a));
        t.succeed(a);
        assert!(!t.blocked(a));
    }
}
