//! A reader of the review desk's event stream (`GET /review/api/events`),
//! as a browser's `EventSource` reads it: over one TLS connection through
//! the harness's HTTP client ([`crate::http`]), the body split into events
//! and comments as it arrives. Every read is bounded by the caller's
//! limit, and so is an event's size.

use std::time::{Duration, Instant};

use crate::api::endpoint_at;
use crate::http::{self, Read, Request, Response};
use crate::server_process::ServerProcess;

/// How long the stream's response head may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest event (or run of bytes without a blank line) read; the
/// desk's events are one record row each, far smaller.
const EVENT_BYTES_MAX: usize = 1024 * 1024;

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
    response: Response,
    /// Body bytes not yet split into events.
    pending: Vec<u8>,
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
        let endpoint = endpoint_at(addr, ca);
        let mut headers = vec![("Accept", "text/event-stream")];
        if let Some(cookie) = cookie {
            headers.push(("Cookie", cookie));
        }
        let request = Request {
            headers: &headers,
            ..Request::new("GET", "/review/api/events")
        };
        let response = http::open(&endpoint, request, OPEN_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("the event stream's head in time: {e:#}"));
        let head = response.head.clone();
        if response.status != 200 {
            return (head, None);
        }
        // A stream is sent chunked: a length would mean a body that ends.
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        let stream = EventStream {
            response,
            pending: Vec::new(),
            ended: false,
        };
        (head, Some(stream))
    }

    /// The first complete event block (up to a blank line) in `pending`.
    fn take_block(&mut self) -> Option<String> {
        let at = self.pending.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.pending.drain(..at + 2).collect();
        Some(String::from_utf8_lossy(&block).into_owned())
    }

    /// The next event or comment within `limit`; None if the stream ended
    /// or nothing came in time.
    pub async fn next(&mut self, limit: Duration) -> Option<Sse> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(block) = self.take_block() {
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
            assert!(
                self.pending.len() <= EVENT_BYTES_MAX,
                "an event longer than {EVENT_BYTES_MAX} bytes"
            );
            if self.ended {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.response.read(left).await {
                Read::Data(bytes) => self.pending.extend_from_slice(&bytes),
                Read::End => self.ended = true,
                Read::Quiet => return None,
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
