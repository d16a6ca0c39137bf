//! HTTP to rspamd's workers, on hyper's HTTP/1.1 client connection: one connection per
//! request (rspamd 3.4 answers every request with `Connection: close`, and its controller
//! sends bodies with 204 replies, which a kept-alive connection could not follow), the reply
//! body read up to a bound, everything within one timeout. No TLS: the workers speak plain
//! HTTP on loopback or a private network.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::hooks::filter_config::HttpUrl;

/// Longest reply body (rspamd's JSON with every symbol's options is a few KiB).
const MAX_BODY: usize = 4 << 20;

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
    /// Could not connect.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The exchange failed: not HTTP, cut short, too large.
    #[error("{0}")]
    Protocol(String),
}

/// A client for one worker (its URL).
pub struct Client {
    url: HttpUrl,
    authority: HeaderValue,
}

impl Client {
    /// A client for `url`.
    pub fn new(url: HttpUrl) -> Self {
        let authority = HeaderValue::from_str(&url.authority())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Client { url, authority }
    }

    /// The worker's URL.
    pub fn url(&self) -> &HttpUrl {
        &self.url
    }

    /// POST `body` to `path` with `headers`, within `timeout` all told.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        self.request("POST", path, headers, body, timeout).await
    }

    /// GET `path`, within `timeout`.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<Response, HttpError> {
        self.request("GET", path, &[], Bytes::new(), timeout).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let protocol = |e: &dyn std::fmt::Display| HttpError::Protocol(e.to_string());
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url.prefix))
            .header(HOST, self.authority.clone())
            .header(CONNECTION, HeaderValue::from_static("close"))
            .header(CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            // Values come from the envelope and the session; none may end the line.
            let value: String = value
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| protocol(&e))?;
            let value = HeaderValue::from_str(&value).map_err(|e| protocol(&e))?;
            req = req.header(name, value);
        }
        let req = req.body(Full::new(body)).map_err(|e| protocol(&e))?;
        let exchange = async {
            let stream = TcpStream::connect(self.url.authority()).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| protocol(&e))?;
            // The connection runs beside the request and ends with it (the worker closes).
            let conn = tokio::spawn(conn);
            let resp = sender.send_request(req).await.map_err(|e| protocol(&e))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Protocol(format!("reply body: {e}")))?
                .to_bytes()
                .to_vec();
            drop(sender);
            conn.abort();
            Ok(Response { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A server that answers each connection's one request with the next of `replies`; it
    /// returns the requests it read.
    async fn serve(replies: Vec<&'static [u8]>) -> (HttpUrl, tokio::task::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = HttpUrl::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for r in replies {
                let (s, _) = l.accept().await.unwrap();
                let mut s = BufReader::new(s);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap() == 0 {
                        break;
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                s.read_exact(&mut body).await.unwrap();
                seen.push(head + String::from_utf8_lossy(&body).as_ref());
                s.get_mut().write_all(r).await.unwrap();
            }
            seen
        });
        (url, task)
    }

    #[tokio::test]
    async fn content_length_chunked_and_close_delimited_replies() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nto the end",
            // rspamd's controller: a body after 204.
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\nContent-Length: 20\r\n\r\n{\"error\":\"too few\"}",
        ])
        .await;
        let c = Client::new(url);
        let t = Duration::from_secs(5);
        let r = c
            .post(
                "/checkv2",
                &[("Rcpt", "a@b\r\nX: y")],
                Bytes::from_static(b"msg"),
                t,
            )
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = c.post("/checkv2", &[], Bytes::new(), t).await.unwrap();
        assert_eq!(r.body, b"abcde");
        let r = c.post("/checkv2", &[], Bytes::new(), t).await.unwrap();
        assert_eq!(r.body, b"to the end");
        let r = c.post("/learnspam", &[], Bytes::new(), t).await.unwrap();
        assert_eq!(r.status, 204);
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 4);
        assert!(
            seen[0].starts_with("POST /checkv2 HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("rcpt: a@b  X: y\r\n"), "{}", seen[0]);
        assert!(seen[0].ends_with("\r\n\r\nmsg"));
    }

    #[tokio::test]
    async fn garbage_and_oversized_replies_are_errors() {
        for reply in [
            &b"SMTP 220 hello\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ] {
            let (url, _server) = serve(vec![reply]).await;
            let c = Client::new(url);
            let r = c
                .post("/x", &[], Bytes::new(), Duration::from_secs(5))
                .await;
            assert!(r.is_err(), "{reply:?}: {r:?}");
        }
        // Nobody listening.
        let url = HttpUrl::parse("http://127.0.0.1:1").unwrap();
        let e = Client::new(url)
            .post("/x", &[], Bytes::new(), Duration::from_secs(5))
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
        let e = Client::new(url)
            .post("/x", &[], Bytes::new(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Timeout(_)));
    }
}
