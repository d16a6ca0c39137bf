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
    /// An in-memory pipe: sessions driven by transcript tests, without sockets.
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
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
        let ok = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.upgrade(acceptor)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                false
            }
        };
        let version = match self {
            Stream::Tls(s) => s.get_ref().1.protocol_version(),
            _ => None,
        };
        crate::metrics::tls_handshake(acceptor, ok, version);
        ok
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
            #[cfg(test)]
            Stream::Memory($s) => {
                let $s = Pin::new($s);
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

/// Counts open connections in total, per IP and per protocol (so that one protocol's
/// clients, say POP3 sessions trickling a byte at a time, cannot take every slot and lock
/// out SMTP and IMAP).
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    max_per_protocol: HashMap<&'static str, usize>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_protocol: HashMap<&'static str, usize>,
}

/// Held while a connection is open; releases its slot on drop.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    protocol: &'static str,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnRefused {
    /// Too many connections overall.
    Total,
    /// Too many from this IP.
    PerIp,
    /// Too many of this protocol.
    Protocol,
}

impl ConnLimits {
    /// Limits with the given maxima and no cap per protocol.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Self::with_protocols(max_total, max_per_ip, &[])
    }

    /// Limits with the given maxima, and at most `max` connections of each `(protocol, max)`.
    pub fn with_protocols(
        max_total: usize,
        max_per_ip: usize,
        per_protocol: &[(&'static str, usize)],
    ) -> Arc<Self> {
        Arc::new(ConnLimits {
            max_total,
            max_per_ip,
            max_per_protocol: per_protocol.iter().copied().collect(),
            open: Mutex::new(Open::default()),
        })
    }

    /// Take a slot for a connection from `ip` to `protocol` ("smtp", "imap", "pop3").
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        protocol: &'static str,
    ) -> Result<ConnSlot, ConnRefused> {
        let mut g = self.open.lock().expect("conn limits");
        if g.total >= self.max_total {
            return Err(ConnRefused::Total);
        }
        if g.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(ConnRefused::PerIp);
        }
        let in_protocol = g.per_protocol.get(protocol).copied().unwrap_or(0);
        if self
            .max_per_protocol
            .get(protocol)
            .is_some_and(|&max| in_protocol >= max)
        {
            return Err(ConnRefused::Protocol);
        }
        *g.per_ip.entry(ip).or_insert(0) += 1;
        *g.per_protocol.entry(protocol).or_insert(0) += 1;
        g.total += 1;
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
            protocol,
        })
    }

    /// Open connections right now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("conn limits").total
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut g = self.limits.open.lock().expect("conn limits");
        g.total -= 1;
        if let Some(n) = g.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.per_ip.remove(&self.ip);
            }
        }
        if let Some(n) = g.per_protocol.get_mut(self.protocol) {
            *n -= 1;
        }
    }
}

/// Failed authentication attempts within a window, shared by SMTP, IMAP and POP3, counted
/// twice: per client IP (all accounts together: `max_per_ip`) and per client IP and target
/// account (`max`). A success resets only that account's count for that IP, so an attacker
/// who logs in to an account of its own now and then does not reset the guesses against
/// another one. Every attempt is admitted by [`AuthThrottle::begin`] and holds its place
/// until its outcome is recorded: check and record are one step, so a burst of simultaneous
/// attempts cannot all pass the check before the first failure is counted (attempts beyond
/// the limit wait for those in flight, then count against it).
pub struct AuthThrottle {
    max: u32,
    max_per_ip: u32,
    window: Duration,
    state: Mutex<Failures>,
    settled: tokio::sync::Notify,
}

#[derive(Default)]
struct Failures {
    ip: HashMap<IpAddr, Count>,
    account: HashMap<(IpAddr, String), Count>,
}

/// Failures in the current window, and attempts whose outcome is not known yet.
#[derive(Clone, Copy)]
struct Count {
    failed: u32,
    pending: u32,
    since: Instant,
}

impl Count {
    fn fresh() -> Self {
        Count {
            failed: 0,
            pending: 0,
            since: Instant::now(),
        }
    }

    fn current(&mut self, window: Duration) -> &mut Self {
        if self.since.elapsed() >= window {
            self.failed = 0;
            self.since = Instant::now();
        }
        self
    }
}

/// Why [`AuthThrottle::begin`] refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled;

/// An admitted authentication attempt; record its outcome with [`AuthAttempt::succeed`] or
/// [`AuthAttempt::fail`]. Dropped unrecorded (the client vanished mid-check), it counts as a
/// failure.
pub struct AuthAttempt {
    throttle: Arc<AuthThrottle>,
    ip: IpAddr,
    account: String,
    open: bool,
}

/// Most entries kept before expired ones are swept out.
const THROTTLE_ENTRIES: usize = 100_000;

/// Longest an attempt waits for others in flight before it is refused.
const THROTTLE_WAIT: Duration = Duration::from_secs(10);

impl AuthThrottle {
    /// At most `max` failures per IP and account, and `max_per_ip` per IP, per `window`.
    pub fn new(max: u32, max_per_ip: u32, window: Duration) -> Arc<Self> {
        Arc::new(AuthThrottle {
            max,
            max_per_ip: max_per_ip.max(max),
            window,
            state: Mutex::new(Failures::default()),
            settled: tokio::sync::Notify::new(),
        })
    }

    /// Whether `ip` is blocked for every account (its failures reached `max_per_ip`).
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let mut g = self.state.lock().expect("throttle");
        let window = self.window;
        g.ip.get_mut(&ip)
            .is_some_and(|c| c.current(window).failed >= self.max_per_ip)
    }

    /// Admit an attempt by `ip` at `account` (any spelling: it is normalized), or refuse it
    /// because either count reached its limit. When only attempts still in flight fill the
    /// limit, wait for them to settle.
    pub async fn begin(
        self: &Arc<Self>,
        ip: IpAddr,
        account: &str,
    ) -> Result<AuthAttempt, Throttled> {
        let account = crate::store::normalize_address(account);
        let deadline = tokio::time::Instant::now() + THROTTLE_WAIT;
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.try_begin(ip, &account) {
                Ok(true) => {
                    return Ok(AuthAttempt {
                        throttle: self.clone(),
                        ip,
                        account,
                        open: true,
                    });
                }
                Ok(false) => {
                    if tokio::time::timeout_at(deadline, settled).await.is_err() {
                        return Err(Throttled);
                    }
                }
                Err(t) => return Err(t),
            }
        }
    }

    /// Ok(true): admitted; Ok(false): full with attempts in flight; Err: over the limit.
    fn try_begin(&self, ip: IpAddr, account: &str) -> Result<bool, Throttled> {
        let mut g = self.state.lock().expect("throttle");
        let window = self.window;
        if g.ip.len() + g.account.len() > THROTTLE_ENTRIES {
            g.ip.retain(|_, c| c.pending > 0 || c.since.elapsed() < window);
            g.account
                .retain(|_, c| c.pending > 0 || c.since.elapsed() < window);
        }
        let by_ip = *g.ip.entry(ip).or_insert_with(Count::fresh).current(window);
        let key = (ip, account.to_string());
        let by_account = *g
            .account
            .entry(key.clone())
            .or_insert_with(Count::fresh)
            .current(window);
        if by_ip.failed >= self.max_per_ip || by_account.failed >= self.max {
            return Err(Throttled);
        }
        if by_ip.failed + by_ip.pending >= self.max_per_ip
            || by_account.failed + by_account.pending >= self.max
        {
            return Ok(false);
        }
        g.ip.get_mut(&ip).expect("entry").pending += 1;
        g.account.get_mut(&key).expect("entry").pending += 1;
        Ok(true)
    }

    fn settle(&self, ip: IpAddr, account: &str, outcome: Settled) -> bool {
        let mut g = self.state.lock().expect("throttle");
        let window = self.window;
        let failed = outcome == Settled::Failed;
        let mut blocked = false;
        if let Some(c) = g.ip.get_mut(&ip) {
            c.pending = c.pending.saturating_sub(1);
            if failed {
                c.current(window).failed += 1;
                c.since = Instant::now();
                blocked |= c.failed >= self.max_per_ip;
            }
        }
        let key = (ip, account.to_string());
        if let Some(c) = g.account.get_mut(&key) {
            c.pending = c.pending.saturating_sub(1);
            match outcome {
                Settled::Failed => {
                    c.current(window).failed += 1;
                    c.since = Instant::now();
                    blocked |= c.failed >= self.max;
                }
                // A success resets this account's count for this IP, nothing else.
                Settled::Succeeded => {
                    c.failed = 0;
                    if c.pending == 0 {
                        g.account.remove(&key);
                    }
                }
                // Undecided: the earlier failures stand.
                Settled::Released => {}
            }
        }
        drop(g);
        self.settled.notify_waiters();
        blocked
    }
}

/// How an attempt ended, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Succeeded,
    Failed,
    Released,
}

impl AuthAttempt {
    /// The credentials were right.
    pub fn succeed(mut self) {
        self.open = false;
        self.throttle
            .settle(self.ip, &self.account, Settled::Succeeded);
    }

    /// Nothing was decided (the store could not be read, a hook deferred): the attempt ends
    /// without counting as a failure and without clearing the failures before it.
    pub fn release(mut self) {
        self.open = false;
        self.throttle
            .settle(self.ip, &self.account, Settled::Released);
    }

    /// The credentials were wrong; true when this IP, or this account from this IP, is now
    /// blocked.
    pub fn fail(mut self) -> bool {
        self.open = false;
        self.throttle
            .settle(self.ip, &self.account, Settled::Failed)
    }
}

impl Drop for AuthAttempt {
    fn drop(&mut self) {
        if self.open {
            self.throttle
                .settle(self.ip, &self.account, Settled::Failed);
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn limits() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a, "smtp").unwrap();
        let _s2 = l.acquire(a, "smtp").unwrap();
        assert_eq!(l.acquire(a, "smtp").err(), Some(ConnRefused::PerIp));
        let _s3 = l.acquire(b, "smtp").unwrap();
        assert_eq!(l.acquire(b, "smtp").err(), Some(ConnRefused::Total));
        drop(s1);
        assert!(l.acquire(a, "smtp").is_ok());
    }

    #[test]
    fn one_protocol_cannot_take_every_slot() {
        let l = ConnLimits::with_protocols(4, 10, &[("pop3", 2)]);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let p1 = l.acquire(a, "pop3").unwrap();
        let _p2 = l.acquire(a, "pop3").unwrap();
        assert_eq!(l.acquire(a, "pop3").err(), Some(ConnRefused::Protocol));
        let _s = l.acquire(a, "smtp").unwrap();
        let _i = l.acquire(a, "imap").unwrap();
        drop(p1);
        assert!(l.acquire(a, "pop3").is_ok());
    }

    #[tokio::test]
    async fn throttle_counts_per_ip_and_account() {
        let t = AuthThrottle::new(2, 4, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(!t.begin(a, "victim@x").await.unwrap().fail());
        // The attacker's own successful login does not reset the victim's count.
        t.begin(a, "me@x").await.unwrap().succeed();
        assert!(
            t.begin(a, "Victim@X").await.unwrap().fail(),
            "blocked for this account"
        );
        assert_eq!(t.begin(a, "victim@x").await.err(), Some(Throttled));
        assert!(!t.blocked(a), "other accounts still try from a");
        // Another IP is counted apart.
        assert!(t.begin(b, "victim@x").await.is_ok());
        // Failures on other accounts add up per IP.
        assert!(!t.begin(a, "c@x").await.unwrap().fail());
        assert!(t.begin(a, "d@x").await.unwrap().fail());
        assert!(t.blocked(a));
        assert_eq!(t.begin(a, "me@x").await.err(), Some(Throttled));
        // A success resets only its own account's count.
        let t = AuthThrottle::new(2, 10, Duration::from_secs(60));
        assert!(!t.begin(a, "me@x").await.unwrap().fail());
        t.begin(a, "me@x").await.unwrap().succeed();
        assert!(!t.begin(a, "me@x").await.unwrap().fail());
    }

    #[tokio::test]
    async fn simultaneous_attempts_are_counted_before_they_are_checked() {
        let t = AuthThrottle::new(5, 5, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let checked = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let tasks: Vec<_> = (0..45)
            .map(|_| {
                let (t, checked) = (t.clone(), checked.clone());
                tokio::spawn(async move {
                    if let Ok(attempt) = t.begin(a, "victim@x").await {
                        checked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        attempt.fail();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(checked.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn an_undecided_attempt_neither_counts_nor_clears_failures() {
        let t = AuthThrottle::new(2, 10, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!t.begin(a, "v@x").await.unwrap().fail());
        // A store error or a hook's tempfail: released, and the failure before it stands.
        t.begin(a, "v@x").await.unwrap().release();
        t.begin(a, "v@x").await.unwrap().release();
        assert!(
            t.begin(a, "v@x").await.unwrap().fail(),
            "second failure blocks"
        );
        assert_eq!(t.begin(a, "v@x").await.err(), Some(Throttled));
    }

    #[tokio::test]
    async fn an_abandoned_attempt_counts_as_a_failure() {
        let t = AuthThrottle::new(1, 5, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        drop(t.begin(a, "v@x").await.unwrap());
        assert_eq!(t.begin(a, "v@x").await.err(), Some(Throttled));
    }

    #[tokio::test]
    async fn parallel_good_logins_wait_instead_of_failing() {
        let t = AuthThrottle::new(2, 2, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move {
                    let attempt = t.begin(a, "me@x").await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    attempt.succeed();
                    Ok::<_, Throttled>(())
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(()));
        }
    }
}
