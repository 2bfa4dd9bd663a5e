//! The one HTTP client of the harness and of `baraza-bench`: hyper's
//! HTTP/1.1 client connection (`hyper::client::conn::http1`) over a
//! connection opened here, TLS through tokio-rustls or plain TCP (for
//! chromedriver). Hyper reads the status line, the headers and sized or
//! chunked bodies; nothing in the harness or the bench parses HTTP by hand.
//!
//! One connection per request (`Connection: close`), not hyper-util's
//! pooled client, because what the tests and benchmarks measure depends
//! on the connection: the server counts and throttles per source address,
//! so each connection's local address is chosen ([`Endpoint::from`]); the
//! benchmarks time a request from a fresh TLS handshake, as a browser's
//! after a pause; and a pool would hold open connections the connection
//! limits count.
//!
//! Bounds: TCP connect and TLS handshake within [`CONNECT_TIMEOUT`]; a
//! whole exchange within the caller's limit; a collected body of at most
//! [`BODY_BYTES_MAX`]; a streamed body ([`Response::read`]) one piece at a
//! time, each read within the caller's limit.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::net::tcp_from;

/// TCP connect and TLS handshake together must be done within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest body [`send`] collects (a review list of a thousand rows or
/// a browser screenshot is well under it); a larger one is an error rather
/// than memory filled.
pub const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Where requests go: an address, TLS or not, and the local address to
/// connect from.
#[derive(Clone)]
pub struct Endpoint {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    from: Option<IpAddr>,
}

impl Endpoint {
    /// Plain HTTP to `addr` (chromedriver on loopback).
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            tls: None,
            from: None,
        }
    }

    /// HTTPS to `addr` through `tls`, checking the certificate for `name`.
    pub fn tls(addr: SocketAddr, tls: TlsConnector, name: ServerName<'static>) -> Endpoint {
        Endpoint {
            addr,
            tls: Some((tls, name)),
            from: None,
        }
    }

    /// The same endpoint reached from the local address `local` (the
    /// system's choice when None); `127.0.0.2` and up work on Linux
    /// without setup.
    pub fn from(mut self, local: Option<IpAddr>) -> Endpoint {
        self.from = local;
        self
    }

    /// What the `Host` header says: the certificate's name, else the IP.
    fn host(&self) -> String {
        match &self.tls {
            Some((_, ServerName::DnsName(name))) => name.as_ref().to_string(),
            _ => self.addr.ip().to_string(),
        }
    }
}

/// What one exchange answered, body collected.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The status line and headers as hyper parsed them, one per line
    /// (names in lower case), for messages and substring checks.
    pub head: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (decoded from its transfer encoding), as UTF-8 (lossy).
    pub body: String,
}

impl HttpReply {
    /// A header's value (name case-insensitive), if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// An answer whose status and headers have arrived and whose body is read
/// as it comes. Dropping it closes the connection.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line and headers, as in [`HttpReply::head`].
    pub head: String,
    /// The headers.
    pub headers: HeaderMap,
    body: Incoming,
    connection: Driver,
}

/// What one [`Response::read`] got.
#[derive(Debug)]
pub enum Read {
    /// The next piece of the body.
    Data(Bytes),
    /// The body ended (or the connection failed: the stream is over).
    End,
    /// Nothing came within the limit; the stream is still open.
    Quiet,
}

impl Response {
    /// The next piece of the body within `limit`.
    pub async fn read(&mut self, limit: Duration) -> Read {
        // A frame may be trailers rather than data; a body has few of them,
        // so this loop ends with the body or the deadline.
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Read::Quiet,
                Ok(None | Some(Err(_))) => return Read::End,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Read::Data(data);
                    }
                }
            }
        }
    }

    /// The whole body, at most [`BODY_BYTES_MAX`] bytes.
    pub async fn collect(self) -> anyhow::Result<HttpReply> {
        let Response {
            status,
            head,
            headers,
            body,
            connection,
        } = self;
        let bytes = Limited::new(body, BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
            .to_bytes();
        drop(connection);
        Ok(HttpReply {
            status,
            head,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// The task that does a connection's reading and writing for hyper;
/// aborted when the response is dropped, so no connection outlives it.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request: what [`send`] and [`open`] send.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path and query.
    pub path: &'a str,
    /// Extra headers (cookies, CSRF tokens, `Authorization`).
    pub headers: &'a [(&'a str, &'a str)],
    /// A JSON body, sent as `application/json` (and so is an empty one on
    /// any method but GET).
    pub body: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// `method path` with no headers and no body.
    pub fn new(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            headers: &[],
            body: None,
        }
    }

    fn build(&self, host: String) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
        let mut request = hyper::Request::builder()
            .method(self.method)
            .uri(self.path)
            .header(header::HOST, host)
            .header(header::CONNECTION, "close");
        for (name, value) in self.headers {
            request = request.header(*name, *value);
        }
        if self.body.is_some() || self.method != "GET" {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        request
            .body(Full::new(Bytes::from(self.body.unwrap_or("").to_owned())))
            .context("building the request")
    }
}

/// One request and its whole answer, within `limit` (connect included).
pub async fn send(
    endpoint: &Endpoint,
    request: Request<'_>,
    limit: Duration,
) -> anyhow::Result<HttpReply> {
    let exchange = async { open(endpoint, request, limit).await?.collect().await };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no whole answer within {limit:?}"))?
        .with_context(|| format!("{} {}", request.method, request.path))
}

/// One request, returning as soon as the status and headers are in
/// (within `limit`, connect included); the body is read from the
/// [`Response`].
pub async fn open(
    endpoint: &Endpoint,
    request: Request<'_>,
    limit: Duration,
) -> anyhow::Result<Response> {
    let request = request.build(endpoint.host())?;
    let too_slow = || anyhow::anyhow!("no connection within {CONNECT_TIMEOUT:?}");
    let exchange = async {
        let tcp = tcp_from(endpoint.addr, endpoint.from);
        match &endpoint.tls {
            Some((tls, name)) => {
                let handshake = async {
                    let tcp = tcp.await?;
                    tls.connect(name.clone(), tcp)
                        .await
                        .context("TLS handshake")
                };
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| too_slow())??;
                exchange_on(tls, request).await
            }
            None => {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tcp)
                    .await
                    .map_err(|_| too_slow())??;
                exchange_on(tcp, request).await
            }
        }
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {limit:?}"))?
}

/// Sends `request` over `io` with hyper and waits for the response head.
async fn exchange_on<T>(io: T, request: hyper::Request<Full<Bytes>>) -> anyhow::Result<Response>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP handshake")?;
    // The connection future does the socket's reading and writing; it ends
    // when the server closes after its answer (Connection: close).
    let connection = Driver(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .context("no HTTP answer")?;
    let (parts, body) = response.into_parts();
    let head = render_head(parts.version, parts.status, &parts.headers);
    Ok(Response {
        status: parts.status.as_u16(),
        head,
        headers: parts.headers,
        body,
        connection,
    })
}

/// `HTTP/1.1 200 OK` and `name: value` lines, from what hyper parsed.
fn render_head(version: hyper::Version, status: hyper::StatusCode, headers: &HeaderMap) -> String {
    let mut head = format!("{version:?} {status}");
    for (name, value) in headers {
        let value = value.to_str().unwrap_or("<binary>");
        let _ = write!(head, "\r\n{name}: {value}");
    }
    head
}
