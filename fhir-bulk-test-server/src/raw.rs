//! A scripted raw-socket HTTP/1.1 server for hostile-server tests.
//!
//! [`TestServer`](crate::TestServer) is a well-behaved server with injectable faults. A
//! [`RawServer`] is the opposite: every byte of every answer is what the test script says, so
//! it can send what no HTTP library would: a `Content-Length` longer or shorter than the body,
//! a body cut mid-line, gzip labels on plain bytes, escape sequences in headers, a connection
//! that never closes. It listens on `127.0.0.1` on a free port and records every request.
//!
//! ```no_run
//! use fhir_bulk_test_server::raw::{RawReply, RawServer};
//!
//! # async fn example() -> std::io::Result<()> {
//! // Every request gets a body that claims 100 bytes and delivers 10, then the connection closes.
//! let server = RawServer::start(|_request, _n| {
//!     RawReply::response(200, &[("Content-Length", "100")], b"{\"a\":1}\n{\"b")
//! })
//! .await?;
//! println!("{}", server.url("/file"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The most header bytes a request may have before the server drops the connection.
const MAX_HEAD: usize = 64 * 1024;
/// The most body bytes of a request the server reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One request as the raw server read it off the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target as sent, e.g. `/files/1?x=y`.
    pub target: String,
    /// Header names (as sent) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (read per `Content-Length`; chunked bodies are not decoded).
    pub body: Vec<u8>,
    /// Which accepted connection (0, 1, ...) carried the request.
    pub connection: usize,
}

impl RawRequest {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What happens to the connection after a reply's bytes were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum After {
    /// Close the connection (the default).
    Close,
    /// Read the next request on the same connection.
    KeepAlive,
    /// Keep the connection open and silent until the server stops.
    Hang,
}

/// The bytes to write for one request, and what to do after.
#[derive(Clone, PartialEq, Eq)]
pub struct RawReply {
    bytes: Vec<u8>,
    delay: Duration,
    after: After,
    /// Built by [`RawReply::framed`]: a well-behaved answer, which says `Connection: close`
    /// when the connection closes after it.
    framed: bool,
}

impl fmt::Debug for RawReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawReply")
            .field("bytes", &self.bytes.len())
            .field("delay", &self.delay)
            .field("after", &self.after)
            .finish()
    }
}

impl RawReply {
    /// Exactly these bytes (status line, headers and body written by the test).
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            delay: Duration::ZERO,
            after: After::Close,
            framed: false,
        }
    }

    /// An HTTP/1.1 answer with exactly these headers and body: no header is added, so a
    /// `Content-Length` (or its absence) is the script's choice.
    pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Self {
        let mut bytes = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
        for (name, value) in headers {
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        Self::bytes(bytes)
    }

    /// A well-framed answer: these headers plus a `Content-Length` that matches the body,
    /// and `Connection: close` when the connection closes after it (the default; not with
    /// [`RawReply::keep_alive`] or [`RawReply::hang`]), as a well-behaved server says, so a
    /// client never sends its next request on a connection being closed.
    pub fn framed(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Self {
        let len = body.len().to_string();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("Content-Length", &len));
        Self {
            framed: true,
            ..Self::response(status, &all, body)
        }
    }

    /// The bytes to write: a framed answer that closes the connection gets `Connection:
    /// close` at the end of its head.
    fn wire_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        let head_end = self.bytes.windows(4).position(|w| w == b"\r\n\r\n");
        match head_end {
            Some(end) if self.framed && self.after == After::Close => {
                let mut bytes = Vec::with_capacity(self.bytes.len() + 19);
                bytes.extend_from_slice(&self.bytes[..end + 2]);
                bytes.extend_from_slice(b"Connection: close\r\n");
                bytes.extend_from_slice(&self.bytes[end + 2..]);
                bytes.into()
            }
            _ => self.bytes.as_slice().into(),
        }
    }

    /// Waits this long before writing anything.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Keeps the connection for the next request instead of closing it.
    #[must_use]
    pub fn keep_alive(mut self) -> Self {
        self.after = After::KeepAlive;
        self
    }

    /// Keeps the connection open and silent after the bytes (a server that stalls forever).
    #[must_use]
    pub fn hang(mut self) -> Self {
        self.after = After::Hang;
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

type Script = dyn Fn(&RawRequest, usize) -> RawReply + Send + Sync;

struct Shared {
    script: Box<Script>,
    requests: Mutex<Vec<RawRequest>>,
    connections: AtomicUsize,
}

/// A scripted HTTP/1.1 server on `127.0.0.1`; stops when dropped.
pub struct RawServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for RawServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RawServer {
    /// Starts the server. `script` is called for every request with the request and its
    /// number (0, 1, ... across all connections) and returns the bytes to answer.
    pub async fn start<F>(script: F) -> io::Result<Self>
    where
        F: Fn(&RawRequest, usize) -> RawReply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let accept = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = accept.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, n, accept.clone()));
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many TCP connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, connection: usize, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf, connection).await else {
            return;
        };
        let index = {
            let mut requests = shared
                .requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            requests.push(request.clone());
            requests.len() - 1
        };
        let reply = (shared.script)(&request, index);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        if stream.write_all(&reply.wire_bytes()).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        match reply.after {
            After::KeepAlive => continue,
            After::Close => {
                let _ = stream.shutdown().await;
                return;
            }
            After::Hang => {
                // Hold the socket until the peer goes away (the server task is aborted on drop,
                // but connection tasks are detached: they end when the client closes).
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

/// Reads one request (head + `Content-Length` body); `None` when the peer closed or sent
/// something too large to be a request.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    connection: usize,
) -> Option<RawRequest> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    if len > MAX_BODY {
        return None;
    }
    let body_start = head_end + 4;
    while buf.len() < body_start + len {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[body_start..body_start + len].to_vec();
    buf.drain(..body_start + len);
    Some(RawRequest {
        method,
        target,
        headers,
        body,
        connection,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(server: &RawServer, path: &str) -> (Vec<u8>, TcpStream) {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Test: yes\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        out.extend_from_slice(&chunk[..n]);
        (out, stream)
    }

    /// A framed answer that closes says so; one that keeps the connection does not, and
    /// scripted bytes get nothing added.
    #[tokio::test]
    async fn a_framed_answer_that_closes_says_connection_close() {
        let server = RawServer::start(|r, _| match r.path() {
            "/keep" => RawReply::framed(200, &[("X-A", "1")], b"ok").keep_alive(),
            _ => RawReply::framed(200, &[("X-A", "1")], b"ok"),
        })
        .await
        .unwrap();
        let (out, _) = get(&server, "/close").await;
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
        let (out, _) = get(&server, "/keep").await;
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok"
        );
    }

    #[tokio::test]
    async fn writes_exactly_the_scripted_bytes_and_records_the_request() {
        let server = RawServer::start(|r, n| {
            RawReply::response(
                200,
                &[("Content-Length", "99")],
                format!("{n}{}", r.path()).as_bytes(),
            )
        })
        .await
        .unwrap();
        let (out, mut stream) = get(&server, "/a?b=c").await;
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n0/a");
        // Closed after the bytes, although the length promised more.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, "GET");
        assert_eq!(requests[0].target, "/a?b=c");
        assert_eq!(requests[0].header("x-test"), Some("yes"));
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn keep_alive_serves_the_next_request_on_the_same_connection() {
        let server = RawServer::start(|_, n| {
            RawReply::framed(200, &[], n.to_string().as_bytes()).keep_alive()
        })
        .await
        .unwrap();
        let (first, mut stream) = get(&server, "/1").await;
        assert!(first.ends_with(b"\r\n\r\n0"));
        stream
            .write_all(b"POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(chunk[..n].ends_with(b"\r\n\r\n1"));
        let requests = server.requests();
        assert_eq!(requests[1].body, b"abc");
        assert_eq!(requests[1].connection, 0);
        assert_eq!(server.connections(), 1);
    }
}
