//! A reader of the review desk's event stream (`GET /review/api/events`),
//! as a browser's `EventSource` reads it: over one TLS connection, the
//! chunked body parsed into events and comments as they arrive. Every
//! read is bounded by the caller's limit.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{tls_connector, ServerProcess};

/// One server-sent event, or a comment line.
#[derive(Debug, Clone, PartialEq)]
pub enum Sse {
    /// An event: its type (`message` if it names none) and its data.
    Event {
        /// The `event:` field.
        event: String,
        /// The `data:` lines, joined.
        data: String,
    },
    /// A comment line (`: keepalive`), its text trimmed.
    Comment(String),
}

/// An open `GET /review/api/events` stream, read as it comes.
pub struct EventStream {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    /// Bytes after the response head, still chunk-encoded.
    raw: Vec<u8>,
    /// De-chunked text not yet split into events.
    text: String,
    /// True once the server ended the body or closed the connection.
    pub ended: bool,
}

impl EventStream {
    /// Opens the stream; returns the response head and, if it is 200, the
    /// stream.
    pub async fn open(
        server: &ServerProcess,
        cookie: Option<&str>,
    ) -> (String, Option<EventStream>) {
        EventStream::open_at(server.addr(), &server.ca_path(), cookie).await
    }

    /// [`EventStream::open`] on the server at `addr` whose CA is `ca`.
    pub async fn open_at(
        addr: std::net::SocketAddr,
        ca: &std::path::Path,
        cookie: Option<&str>,
    ) -> (String, Option<EventStream>) {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("TCP connect");
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
        let mut tls = tls_connector(ca)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /review/api/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{cookie}\r\n"
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        let head_end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let mut buf = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, tls.read(&mut buf))
                .await
                .expect("the response head in time")
                .unwrap();
            assert!(n > 0, "closed before the head: {raw:?}");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let rest = raw[head_end + 4..].to_vec();
        if !head.starts_with("HTTP/1.1 200") {
            return (head, None);
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        let stream = EventStream {
            tls,
            raw: rest,
            text: String::new(),
            ended: false,
        };
        (head, Some(stream))
    }

    /// Moves complete chunks from `raw` to `text`; notes the last chunk.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.raw[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("a chunk size");
            if size == 0 {
                self.ended = true;
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.text
                .push_str(&String::from_utf8_lossy(&self.raw[start..start + size]));
            self.raw.drain(..start + size + 2);
        }
    }

    /// The next event or comment within `limit`; None if the stream ended
    /// or nothing came in time.
    pub async fn next(&mut self, limit: Duration) -> Option<Sse> {
        let deadline = Instant::now() + limit;
        loop {
            self.dechunk();
            if let Some(at) = self.text.find("\n\n") {
                let block: String = self.text.drain(..at + 2).collect();
                let mut event = String::from("message");
                let mut data = Vec::new();
                let mut comment = None;
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        comment = Some(c.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_string());
                    }
                }
                if data.is_empty() {
                    if let Some(c) = comment {
                        return Some(Sse::Comment(c));
                    }
                    continue;
                }
                return Some(Sse::Event {
                    event,
                    data: data.join("\n"),
                });
            }
            if self.ended {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut buf = [0u8; 8192];
            match tokio::time::timeout(left, self.tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.ended = true;
                }
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Reads until a record event for `id` arrives (within `limit`),
    /// returning its row and the ids of the record events before it.
    pub async fn until_record(
        &mut self,
        id: &str,
        limit: Duration,
    ) -> (serde_json::Value, Vec<String>) {
        let deadline = Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Sse::Event { event, data }) if event == "record" => {
                    let row: serde_json::Value = serde_json::from_str(&data).unwrap();
                    let got = row["id"].as_str().unwrap().to_string();
                    if got == id {
                        return (row, before);
                    }
                    before.push(got);
                }
                Some(Sse::Event { event, data }) => panic!("unexpected event {event}: {data}"),
                Some(Sse::Comment(_)) => {}
                None => panic!("no event for {id} within {limit:?} (seen {before:?})"),
            }
        }
    }
}
