//! The SMTP client used for outbound delivery (RFC 5321 §4.5.3.2 timeouts, EHLO→HELO
//! fallback, opportunistic STARTTLS, PIPELINING, SIZE, 8BITMIME/SMTPUTF8, DSN, AUTH PLAIN for
//! a smart host).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A reply from the remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    /// Three-digit code.
    pub code: u16,
    /// Text of all lines joined with " / ".
    pub text: String,
}

impl RemoteReply {
    /// 2xx
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 5xx
    pub fn permanent(&self) -> bool {
        self.code >= 500
    }
}

impl std::fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Why a connection-level step failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network failure or timeout: try the next host.
    #[error("{0}")]
    Io(String),
    /// The server answered a connection-level command with an error.
    #[error("{0}")]
    Reply(RemoteReply),
    /// TLS was required and could not be had: no STARTTLS, a refused STARTTLS, a failed
    /// handshake or a certificate not valid for the host.
    #[error("{0}")]
    Tls(String),
}

impl ClientError {
    /// A [`ClientError::Tls`].
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientError::Tls(_))
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An open SMTP client session.
pub struct Client {
    conn: Option<Conn>,
    buf: Vec<u8>,
    /// EHLO keywords (upper case).
    pub extensions: Vec<String>,
    /// What happened with TLS, for logs and Received-style notes.
    pub tls: String,
    /// TLS is up and the server's certificate was verified for its name.
    pub verified: bool,
    /// Why the certificate did not verify, when TLS is up and it did not.
    pub verify_error: Option<String>,
    peer: SocketAddr,
}

/// Certificate verification that records failure instead of refusing (opportunistic TLS,
/// RFC 7435): the session is encrypted either way.
#[derive(Debug)]
struct Opportunistic {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    verified: Arc<AtomicBool>,
    error: Arc<std::sync::Mutex<Option<String>>>,
}

impl ServerCertVerifier for Opportunistic {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        self.verified.store(result.is_ok(), Ordering::Relaxed);
        if let Err(e) = result {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn tls_connector(
    verified: Arc<AtomicBool>,
    error: Arc<std::sync::Mutex<Option<String>>>,
    trust_roots: Option<&std::path::Path>,
    strict: bool,
) -> Result<TlsConnector, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        crate::tls::outbound_roots(trust_roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ClientError::Io(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Io(e.to_string()))?;
    let config = if strict {
        // The handshake fails unless the chain leads to a trusted root and names the host.
        verified.store(true, Ordering::Relaxed);
        builder.with_webpki_verifier(inner).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Opportunistic {
                inner,
                verified,
                error,
            }))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS client that accepts only a certificate matching `records` (DANE).
fn dane_connector(records: &[crate::dane::Tlsa]) -> Result<TlsConnector, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Io(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::dane::Verifier::new(records)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// How an outbound connection uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy<'a> {
    /// STARTTLS when offered; the certificate is checked and the result only recorded
    /// (RFC 7435), as for MX delivery.
    Opportunistic {
        /// `[tls] trust_roots`.
        trust_roots: Option<&'a std::path::Path>,
    },
    /// STARTTLS required and the certificate verified against the trusted roots and the
    /// host name, or no mail (and no credentials) is sent: the smart host with
    /// `relay_require_tls`.
    Verified {
        /// `[tls] trust_roots`.
        trust_roots: Option<&'a std::path::Path>,
    },
    /// STARTTLS required, the certificate checked and the result only recorded: DANE for a
    /// host whose TLSA records are all unusable (RFC 7672 §3.1.3: TLS, unauthenticated).
    Required {
        /// `[tls] trust_roots`.
        trust_roots: Option<&'a std::path::Path>,
    },
    /// STARTTLS required and the certificate matched against the host's TLSA records (DANE,
    /// RFC 7672), not against any CA.
    Dane {
        /// The usable TLSA records.
        records: &'a [crate::dane::Tlsa],
    },
}

/// A TCP connection to `addr`, from `source` when given (`[delivery] source_ip`; an address
/// of the other family than `addr` is not used for it).
async fn open(addr: SocketAddr, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 5321 §4.5.3.2: initial 220 5 min, MAIL 5 min, RCPT 5 min, DATA 2 min, data block
/// 3 min, final dot 10 min.
const GREETING_TIMEOUT: Duration = Duration::from_secs(300);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const DATA_INIT_TIMEOUT: Duration = Duration::from_secs(120);
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);

impl Client {
    /// Connect, read the greeting, EHLO (or HELO), and upgrade with STARTTLS when offered.
    /// [`TlsPolicy::Verified`] refuses to go on without TLS and a verified certificate for
    /// `server_name` (smart host setting).
    pub async fn connect(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        helo: &str,
        server_name: &str,
        policy: TlsPolicy<'_>,
    ) -> Result<Client, ClientError> {
        let (require_tls, trust_roots, dane) = match policy {
            TlsPolicy::Opportunistic { trust_roots } => (false, trust_roots, None),
            TlsPolicy::Verified { trust_roots } | TlsPolicy::Required { trust_roots } => {
                (true, trust_roots, None)
            }
            TlsPolicy::Dane { records } => (true, None, Some(records)),
        };
        let strict = matches!(policy, TlsPolicy::Verified { .. });
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, open(addr, source))
            .await
            .map_err(|_| ClientError::Io(format!("connect to {addr} timed out")))?
            .map_err(|e| ClientError::Io(format!("connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut c = Client {
            conn: Some(Conn::Plain(tcp)),
            buf: Vec::new(),
            extensions: Vec::new(),
            tls: "none".into(),
            verified: false,
            verify_error: None,
            peer: addr,
        };
        let greet = c.read_reply(GREETING_TIMEOUT).await?;
        if !greet.ok() {
            return Err(ClientError::Reply(greet));
        }
        c.hello(helo).await?;
        if c.has("STARTTLS") {
            let r = c.command("STARTTLS", COMMAND_TIMEOUT).await?;
            if r.ok() {
                let verified = Arc::new(AtomicBool::new(false));
                let error = Arc::new(std::sync::Mutex::new(None));
                let connector = match dane {
                    Some(records) => dane_connector(records)?,
                    None => tls_connector(verified.clone(), error.clone(), trust_roots, strict)?,
                };
                let name = ServerName::try_from(server_name.to_string())
                    .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
                let Some(Conn::Plain(tcp)) = c.conn.take() else {
                    return Err(ClientError::Io("bad state".into()));
                };
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| ClientError::Tls("TLS handshake timed out".into()))?
                    .map_err(|e| {
                        if require_tls {
                            let trusted = if dane.is_some() {
                                "DANE: the TLSA records of the host"
                            } else {
                                "system roots and tls.trust_roots"
                            };
                            ClientError::Tls(format!(
                                "TLS handshake with {server_name} failed, certificate not verified \
                                 (trusted: {trusted}): {e}"
                            ))
                        } else {
                            ClientError::Tls(format!("TLS handshake: {e}"))
                        }
                    })?;
                let version = tls
                    .get_ref()
                    .1
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                c.verified = verified.load(Ordering::Relaxed) || dane.is_some();
                c.verify_error = error.lock().unwrap_or_else(|e| e.into_inner()).take();
                c.tls = format!(
                    "{version} ({})",
                    if dane.is_some() {
                        "DANE verified"
                    } else if c.verified {
                        "verified"
                    } else {
                        "certificate not verified"
                    }
                );
                c.conn = Some(Conn::Tls(Box::new(tls)));
                c.buf.clear();
                c.hello(helo).await?;
            } else if require_tls {
                return Err(ClientError::Tls(format!("STARTTLS refused: {r}")));
            }
        } else if require_tls {
            return Err(ClientError::Tls(format!(
                "{addr} does not offer STARTTLS and TLS is required"
            )));
        }
        Ok(c)
    }

    async fn hello(&mut self, helo: &str) -> Result<(), ClientError> {
        let r = self
            .command(&format!("EHLO {helo}"), COMMAND_TIMEOUT)
            .await?;
        if r.ok() {
            self.extensions = r
                .text
                .split(" / ")
                .skip(1)
                .map(|l| l.to_ascii_uppercase())
                .collect();
            return Ok(());
        }
        let r = self
            .command(&format!("HELO {helo}"), COMMAND_TIMEOUT)
            .await?;
        if r.ok() {
            self.extensions.clear();
            Ok(())
        } else {
            Err(ClientError::Reply(r))
        }
    }

    /// Whether the server announced the EHLO keyword.
    pub fn has(&self, kw: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.split_whitespace().next() == Some(kw))
    }

    /// The SIZE limit the server announced, if any.
    pub fn size_limit(&self) -> Option<u64> {
        self.extensions
            .iter()
            .find_map(|e| e.strip_prefix("SIZE ").and_then(|n| n.trim().parse().ok()))
            .filter(|n| *n > 0)
    }

    /// AUTH PLAIN for a smart host.
    pub async fn auth(&mut self, user: &str, pass: &str) -> Result<(), ClientError> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        let r = self
            .command(&format!("AUTH PLAIN {token}"), COMMAND_TIMEOUT)
            .await?;
        if r.ok() {
            Ok(())
        } else {
            Err(ClientError::Reply(r))
        }
    }

    /// Send a command line and read the reply.
    pub async fn command(
        &mut self,
        line: &str,
        timeout: Duration,
    ) -> Result<RemoteReply, ClientError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(timeout).await
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let fut = async {
            match self.conn.as_mut() {
                Some(Conn::Plain(s)) => write_all(s, data).await,
                Some(Conn::Tls(s)) => write_all(s.as_mut(), data).await,
                None => Err(std::io::Error::other("not connected")),
            }
        };
        tokio::time::timeout(Duration::from_secs(180), fut)
            .await
            .map_err(|_| ClientError::Io("write timed out".into()))??;
        Ok(())
    }

    /// Read one (possibly multi-line) reply.
    pub async fn read_reply(&mut self, timeout: Duration) -> Result<RemoteReply, ClientError> {
        let mut lines = Vec::new();
        loop {
            while let Some(nl) = memchr::memchr(b'\n', &self.buf) {
                let line: Vec<u8> = self.buf.drain(..nl + 1).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if line.len() < 3 {
                    return Err(ClientError::Io(format!(
                        "{}: malformed reply {line:?}",
                        self.peer
                    )));
                }
                // `get`, not `[..3]`: the remote may send a multi-byte character there.
                let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
                    ClientError::Io(format!("{}: malformed reply {line:?}", self.peer))
                })?;
                let more = line.as_bytes().get(3) == Some(&b'-');
                lines.push(line.get(4..).unwrap_or("").to_string());
                if !more {
                    return Ok(RemoteReply {
                        code,
                        text: lines.join(" / "),
                    });
                }
            }
            if self.buf.len() > 64 * 1024 {
                return Err(ClientError::Io("reply too long".into()));
            }
            let mut chunk = [0u8; 4096];
            let fut = async {
                match self.conn.as_mut() {
                    Some(Conn::Plain(s)) => s.read(&mut chunk).await,
                    Some(Conn::Tls(s)) => s.read(&mut chunk).await,
                    None => Err(std::io::Error::other("not connected")),
                }
            };
            let n = tokio::time::timeout(timeout, fut).await.map_err(|_| {
                ClientError::Io(format!("{}: timeout waiting for reply", self.peer))
            })??;
            if n == 0 {
                return Err(ClientError::Io(format!("{}: connection closed", self.peer)));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One transaction: MAIL, RCPTs (pipelined when offered), DATA. Returns the reply for
    /// each recipient: the RCPT refusal, or the final reply after the data.
    pub async fn send(
        &mut self,
        from: &str,
        mail_params: &str,
        rcpts: &[(String, String)],
        message: &[u8],
    ) -> Result<Vec<RemoteReply>, ClientError> {
        let pipelining = self.has("PIPELINING");
        let mail = format!("MAIL FROM:<{from}>{mail_params}\r\n");
        let mut rcpt_lines = Vec::new();
        for (addr, params) in rcpts {
            rcpt_lines.push(format!("RCPT TO:<{addr}>{params}\r\n"));
        }
        let mut replies = Vec::with_capacity(rcpts.len());
        let mail_reply;
        if pipelining {
            let mut batch = mail.clone().into_bytes();
            for l in &rcpt_lines {
                batch.extend_from_slice(l.as_bytes());
            }
            self.write(&batch).await?;
            mail_reply = self.read_reply(COMMAND_TIMEOUT).await?;
            for _ in &rcpt_lines {
                replies.push(self.read_reply(COMMAND_TIMEOUT).await?);
            }
        } else {
            self.write(mail.as_bytes()).await?;
            mail_reply = self.read_reply(COMMAND_TIMEOUT).await?;
            if mail_reply.ok() {
                for l in &rcpt_lines {
                    self.write(l.as_bytes()).await?;
                    replies.push(self.read_reply(COMMAND_TIMEOUT).await?);
                }
            }
        }
        if !mail_reply.ok() {
            let _ = self.command("RSET", COMMAND_TIMEOUT).await;
            return Ok(vec![mail_reply; rcpts.len()]);
        }
        if !replies.iter().any(|r| r.ok()) {
            let _ = self.command("RSET", COMMAND_TIMEOUT).await;
            return Ok(replies);
        }
        let r = self.command("DATA", DATA_INIT_TIMEOUT).await?;
        if r.code != 354 {
            return Ok(replies
                .into_iter()
                .map(|x| if x.ok() { r.clone() } else { x })
                .collect());
        }
        self.write(&dot_stuff(message)).await?;
        let end = self.read_reply(DATA_END_TIMEOUT).await?;
        Ok(replies
            .into_iter()
            .map(|x| if x.ok() { end.clone() } else { x })
            .collect())
    }

    /// Say goodbye (errors ignored).
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.command("QUIT", Duration::from_secs(10)),
        )
        .await;
    }
}

async fn write_all<S: AsyncWrite + AsyncRead + Unpin>(
    s: &mut S,
    data: &[u8],
) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.flush().await
}

/// Message bytes with every line ending as CRLF, leading dots doubled, and the final
/// `.` line appended (RFC 5321 §4.5.2).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' if message.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                at_line_start = true;
                continue;
            }
            b'\n' | b'\r' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".x\n.\n"), b"..x\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
    }
}
