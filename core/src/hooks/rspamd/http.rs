//! The little HTTP/1.1 client rspamd needs: one POST with a body, a reply with a status and a
//! bounded body (Content-Length, chunked, or up to the close). Connections to a worker are
//! kept alive and reused when the worker allows it; a reused connection that turns out closed
//! is retried once on a new one. No TLS: rspamd's workers speak plain HTTP on loopback or a
//! private network.
//!
//! No HTTP crate is in the dependency tree, and what rspamd needs is this small; see
//! ARCHITECTURE.md ("rspamd and milters").

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::hooks::filter_config::HttpUrl;

/// Longest reply header block.
const MAX_HEAD: usize = 64 * 1024;
/// Longest reply body (rspamd's JSON with every symbol's options is a few KiB).
const MAX_BODY: usize = 4 << 20;
/// Idle connections kept per worker.
const MAX_IDLE: usize = 32;

/// A reply.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// What went wrong talking to the worker.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Could not connect, or the connection broke.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The reply is not HTTP, or too large.
    #[error("bad reply: {0}")]
    Protocol(String),
}

/// A client for one worker (its URL), with the worker's idle connections.
pub struct Client {
    url: HttpUrl,
    keep_alive: bool,
    idle: Mutex<Vec<BufReader<TcpStream>>>,
}

impl Client {
    /// A client for `url`; `keep_alive` false sends every request on a connection of its own
    /// (rspamd's controller sends bodies with 204 replies, which keep-alive framing cannot
    /// follow).
    pub fn new(url: HttpUrl, keep_alive: bool) -> Self {
        Client {
            url,
            keep_alive,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The worker's URL.
    pub fn url(&self) -> &HttpUrl {
        &self.url
    }

    fn take_idle(&self) -> Option<BufReader<TcpStream>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, conn: BufReader<TcpStream>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// POST `body` to `path` with `headers`, within `timeout` all told.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        self.request("POST", path, headers, body, timeout).await
    }

    /// GET `path`, within `timeout`.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<Response, HttpError> {
        self.request("GET", path, &[], b"", timeout).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let head = self.request_head(method, path, headers, body.len());
        let attempt = async {
            if self.keep_alive
                && let Some(conn) = self.take_idle()
            {
                // An idle connection the worker closed meanwhile fails before any reply
                // byte: then, and only then, the request goes again on a new connection.
                match self.exchange(conn, &head, body).await {
                    Err(Fail::BeforeReply(_)) => {}
                    other => return other.map_err(Fail::into_error),
                }
            }
            let conn = BufReader::new(TcpStream::connect(self.url.authority()).await?);
            self.exchange(conn, &head, body)
                .await
                .map_err(Fail::into_error)
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    fn request_head(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        len: usize,
    ) -> Vec<u8> {
        let mut h = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {len}\r\nConnection: {}\r\n",
            self.url.prefix,
            self.url.authority(),
            if self.keep_alive {
                "keep-alive"
            } else {
                "close"
            }
        );
        for (name, value) in headers {
            // Values come from the envelope and the session; none may end the line.
            let value: String = value
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            h.push_str(name);
            h.push_str(": ");
            h.push_str(&value);
            h.push_str("\r\n");
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    async fn exchange(
        &self,
        mut conn: BufReader<TcpStream>,
        head: &[u8],
        body: &[u8],
    ) -> Result<Response, Fail> {
        let stream = conn.get_mut();
        stream.write_all(head).await.map_err(Fail::BeforeReply)?;
        stream.write_all(body).await.map_err(Fail::BeforeReply)?;
        stream.flush().await.map_err(Fail::BeforeReply)?;
        let (response, reusable) = read_response(&mut conn).await?;
        if reusable && self.keep_alive {
            self.give_back(conn);
        }
        Ok(response)
    }
}

/// A failure before the first reply byte (a stale kept-alive connection: worth one retry)
/// or after.
enum Fail {
    BeforeReply(std::io::Error),
    After(HttpError),
}

impl Fail {
    fn into_error(self) -> HttpError {
        match self {
            Fail::BeforeReply(e) => HttpError::Io(e),
            Fail::After(e) => e,
        }
    }
}

impl From<HttpError> for Fail {
    fn from(e: HttpError) -> Self {
        Fail::After(e)
    }
}

fn protocol(what: impl Into<String>) -> Fail {
    Fail::After(HttpError::Protocol(what.into()))
}

/// Read one reply: its status, its body, and whether the connection can carry another.
async fn read_response(conn: &mut BufReader<TcpStream>) -> Result<(Response, bool), Fail> {
    let mut line = Vec::new();
    let n = conn
        .read_until(b'\n', &mut line)
        .await
        .map_err(Fail::BeforeReply)?;
    if n == 0 {
        return Err(Fail::BeforeReply(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let status_line = String::from_utf8_lossy(&line).trim_end().to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| protocol(format!("not an HTTP status line: {:?}", cut(&status_line))))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut keep = version == "HTTP/1.1";
    let mut total = line.len();
    loop {
        line.clear();
        let n = conn
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| Fail::After(e.into()))?;
        total += n;
        if n == 0 || total > MAX_HEAD {
            return Err(protocol("reply header cut short or too long"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            break;
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(protocol(format!("bad header line {:?}", cut(text))));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(
                    value
                        .parse()
                        .map_err(|_| protocol(format!("bad Content-Length {value:?}")))?,
                )
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => {
                if value.eq_ignore_ascii_case("close") {
                    keep = false;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    keep = true;
                }
            }
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(conn).await?
    } else if let Some(len) = length {
        if len > MAX_BODY {
            return Err(protocol(format!("reply body of {len} bytes is too large")));
        }
        let mut b = vec![0; len];
        conn.read_exact(&mut b)
            .await
            .map_err(|e| Fail::After(e.into()))?;
        b
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        keep = false;
        let mut b = Vec::new();
        (&mut *conn)
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut b)
            .await
            .map_err(|e| Fail::After(e.into()))?;
        if b.len() > MAX_BODY {
            return Err(protocol("reply body too large"));
        }
        b
    };
    // Bytes already waiting after the reply (a body the status said would not be there)
    // would be read as the next reply: such a connection is not reused.
    if !conn.buffer().is_empty() {
        keep = false;
    }
    Ok((Response { status, body }, keep))
}

async fn read_chunked(conn: &mut BufReader<TcpStream>) -> Result<Vec<u8>, Fail> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        conn.read_until(b'\n', &mut line)
            .await
            .map_err(|e| Fail::After(e.into()))?;
        let text = String::from_utf8_lossy(&line);
        let size = text.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| protocol(format!("bad chunk size {:?}", cut(&text))))?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                line.clear();
                let n = conn
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| Fail::After(e.into()))?;
                if n == 0 || line == b"\r\n" || line == b"\n" {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(protocol("reply body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..])
            .await
            .map_err(|e| Fail::After(e.into()))?;
        line.clear();
        conn.read_until(b'\n', &mut line)
            .await
            .map_err(|e| Fail::After(e.into()))?;
    }
}

fn cut(s: &str) -> &str {
    crate::hooks::outcome::cut(s, 80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that takes one connection per entry of `conns` and answers its requests with
    /// that entry's replies in turn; it returns the requests it read.
    async fn serve(
        conns: Vec<Vec<&'static [u8]>>,
    ) -> (HttpUrl, tokio::task::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = HttpUrl::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for replies in conns {
                let (s, _) = l.accept().await.unwrap();
                let mut s = BufReader::new(s);
                for r in replies {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if s.read_line(&mut line).await.unwrap() == 0 {
                            return seen;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    let mut body = vec![0; len];
                    s.read_exact(&mut body).await.unwrap();
                    seen.push(head + String::from_utf8_lossy(&body).as_ref());
                    s.get_mut().write_all(r).await.unwrap();
                }
            }
            seen
        });
        (url, task)
    }

    #[tokio::test]
    async fn content_length_chunked_and_kept_alive_connections() {
        // Two requests on one kept-alive connection; the third on it is told to close; the
        // fourth needs a new connection.
        let (url, server) = serve(vec![
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            ],
            vec![b"HTTP/1.0 200 OK\r\n\r\nto the end"],
        ])
        .await;
        let c = Client::new(url, true);
        let t = Duration::from_secs(5);
        let r = c
            .post("/checkv2", &[("Rcpt", "a@b\r\nX: y")], b"msg", t)
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = c.post("/checkv2", &[], b"", t).await.unwrap();
        assert_eq!(r.body, b"next");
        let r = c.post("/checkv2", &[], b"x", t).await.unwrap();
        assert_eq!(r.body, b"abcde");
        let r = c.post("/checkv2", &[], b"y", t).await.unwrap();
        assert_eq!(r.body, b"to the end");
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 4);
        assert!(seen[0].contains("Rcpt: a@b  X: y\r\n"), "{}", seen[0]);
        assert!(seen[0].ends_with("\r\n\r\nmsg"));
    }

    #[tokio::test]
    async fn garbage_and_oversized_replies_are_errors() {
        for reply in [
            &b"SMTP 220 hello\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ] {
            let (url, _server) = serve(vec![vec![reply]]).await;
            let c = Client::new(url, false);
            assert!(
                c.post("/x", &[], b"", Duration::from_secs(5))
                    .await
                    .is_err()
            );
        }
        // Nobody listening.
        let url = HttpUrl::parse("http://127.0.0.1:1").unwrap();
        let e = Client::new(url, false)
            .post("/x", &[], b"", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Io(_)), "{e}");
    }

    #[tokio::test]
    async fn a_silent_worker_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = HttpUrl::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        let _keep = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let e = Client::new(url, false)
            .post("/x", &[], b"", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)));
    }
}
