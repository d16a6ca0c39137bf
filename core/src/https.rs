//! HTTPS requests Corvus makes itself: MTA-STS policy fetches (RFC 8461 §3.3) and the ACME
//! exchanges (RFC 8555). One request
//! per connection over hyper's HTTP/1.1 client, the certificate verified against the system
//! roots and `[tls] trust_roots` for the host name, the host resolved through Corvus' own
//! resolver, everything within one timeout and the body read up to a bound. Redirects are
//! never followed: a 3xx is an answer like any other status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A reply.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`, lower case, "" when absent.
    pub content_type: String,
    /// Body (of a 200 only), at most the bound asked for.
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The host has no address, or DNS failed.
    #[error("{0}")]
    Dns(String),
    /// Could not connect, or the TLS handshake failed (certificate not valid for the name).
    #[error("{0}")]
    Connect(String),
    /// No complete answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Not HTTP, cut short, or a body over the bound.
    #[error("{0}")]
    Protocol(String),
}

/// The TLS client of every request: verified, HTTP/1.1 by ALPN.
fn connector(trust_roots: Option<&std::path::Path>) -> Result<TlsConnector, HttpsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Connect(e.to_string()))?
        .with_root_certificates(crate::tls::outbound_roots(trust_roots))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// TLS for `host` over `stream`, then HTTP/1.1: the request sender, and the connection's
/// task (aborted when the answer is read).
async fn handshake<B>(
    trust_roots: Option<&std::path::Path>,
    host: &str,
    stream: TcpStream,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<B>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    HttpsError,
>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| HttpsError::Dns(format!("{host:?} is not a host name")))?;
    let tls = connector(trust_roots)?
        .connect(name, stream)
        .await
        .map_err(|e| HttpsError::Connect(format!("TLS with {host}: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| HttpsError::Protocol(e.to_string()))?;
    Ok((sender, tokio::spawn(conn)))
}

/// Send `req` (an absolute `https://` URI) and read the answer, at most `max_body` bytes of
/// it: for clients that bring their own requests (ACME). The host is resolved by the system
/// (an admin-configured URL, not a name from mail).
pub async fn send<B>(
    trust_roots: Option<&std::path::Path>,
    req: Request<B>,
    max_body: usize,
) -> Result<(http::response::Parts, Bytes), HttpsError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let protocol = |e: &dyn std::fmt::Display| HttpsError::Protocol(e.to_string());
    let (mut parts, body) = req.into_parts();
    if parts.uri.scheme_str() != Some("https") {
        return Err(HttpsError::Protocol(format!(
            "{} is not an https:// URL",
            parts.uri
        )));
    }
    let host = parts
        .uri
        .host()
        .ok_or_else(|| HttpsError::Protocol(format!("{} names no host", parts.uri)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parts.uri.port_u16().unwrap_or(443);
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    parts.headers.insert(
        HOST,
        HeaderValue::from_str(&authority).map_err(|e| protocol(&e))?,
    );
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("close"));
    // Origin form on the wire.
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|e| protocol(&e))?;
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| HttpsError::Connect(format!("{host}:{port}: {e}")))?;
    let (mut sender, conn) = handshake(trust_roots, &host, stream).await?;
    let resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| protocol(&e))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| HttpsError::Protocol(format!("body: {e}")))?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok((parts, body))
}

/// GET `https://host:port/path`, reading at most `max_body` bytes of the answer, all within
/// `timeout`.
pub async fn get(
    resolver: &hickory_resolver::TokioResolver,
    trust_roots: Option<&std::path::Path>,
    host: &str,
    port: u16,
    path: &str,
    max_body: usize,
    timeout: Duration,
) -> Result<Response, HttpsError> {
    let protocol = |e: &dyn std::fmt::Display| HttpsError::Protocol(e.to_string());
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let req = Request::builder()
        .method("GET")
        .uri(path)
        .header(
            HOST,
            HeaderValue::from_str(&authority).map_err(|e| protocol(&e))?,
        )
        .header(CONNECTION, HeaderValue::from_static("close"))
        .header(
            USER_AGENT,
            HeaderValue::from_static(concat!("corvus/", env!("CARGO_PKG_VERSION"))),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| protocol(&e))?;
    let exchange = async {
        let ips = resolver
            .lookup_ip(format!("{}.", host.trim_end_matches('.')))
            .await
            .map_err(|e| HttpsError::Dns(format!("{host}: {e}")))?;
        let mut last = HttpsError::Dns(format!("{host}: no address records"));
        let mut stream = None;
        for ip in ips.iter().take(4) {
            match TcpStream::connect(SocketAddr::new(ip, port)).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = HttpsError::Connect(format!("{host} [{ip}]:{port}: {e}")),
            }
        }
        let stream = stream.ok_or(last)?;
        let (mut sender, conn) = handshake(trust_roots, host, stream).await?;
        let resp = sender.send_request(req).await.map_err(|e| protocol(&e))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        // Only a 200's body is used; others are not read (a server may not even end them).
        if status != 200 {
            conn.abort();
            return Ok(Response {
                status,
                content_type,
                body: Vec::new(),
            });
        }
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HttpsError::Protocol(format!("body larger than {max_body} bytes"))
                } else {
                    HttpsError::Protocol(format!("body: {e}"))
                }
            })?
            .to_bytes()
            .to_vec();
        drop(sender);
        conn.abort();
        Ok(Response {
            status,
            content_type,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpsError::Timeout(timeout))?
}
