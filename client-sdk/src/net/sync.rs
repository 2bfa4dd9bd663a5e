//! Driving a sync over the network: one connection runs the protocol's
//! sans-IO [`ClientDriver`] against the base layer's [`LocalStore`] (its
//! `Replica`), moving the driver's frames over the WebSocket; the
//! background loop reconnects with exponential backoff and jitter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baraza_protocol::{ClientDriver, DriveError, Limits};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::transport::{self, Endpoint};
use crate::base::{wipe, LocalStore, WipeReport};
use crate::error::ClientError;

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Records pushed to the server.
    pub docs_sent: u64,
    /// Records the server sent changes for.
    pub docs_received: u64,
    /// Distinct records reconciled either way.
    pub docs_reconciled: u64,
    /// Records the server refused (their changes stay on the device).
    pub refused: u64,
    /// Records still waiting for the server's acknowledgement.
    pub unacknowledged: u64,
    /// From the start of connecting to this report: an app shows it, and a
    /// binding's caller can tell the sync's own time from the crossing.
    #[serde(rename = "elapsed_us", serialize_with = "as_micros")]
    pub elapsed: Duration,
    /// What the upload pass after it did with attachments (`sync_once`;
    /// empty from a live connection, whose uploads run beside it).
    pub attachments: super::attachments::UploadReport,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Progress and outcome of syncing, for a UI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum SyncEvent {
    /// Connecting (attempt number, from 1).
    Connecting {
        /// Attempt number.
        attempt: u32,
    },
    /// Connected and handshaking.
    Connected,
    /// Work done so far in this connection, for a progress bar.
    Progress {
        /// Records waiting to be pushed (not yet on the wire).
        to_send: u64,
        /// Records pushed.
        sent: u64,
        /// Records changed on the server since this tablet's cursor, as
        /// feed positions (the server's `Welcome` position minus the
        /// cursor the tablet connected with): an upper bound on the records
        /// to receive, since the feed keeps one entry per record at its
        /// latest write. 0 until the server has answered.
        to_receive: u64,
        /// Records received.
        received: u64,
        /// Bytes of frames sent on this connection.
        bytes_sent: u64,
        /// Bytes of frames received on this connection.
        bytes_received: u64,
        /// The bytes this connection is expected to receive in all: those
        /// so far plus the records still to receive at the mean size of
        /// those received. An estimate that firms up as records arrive,
        /// and high when fewer records than `to_receive` come; `None`
        /// until a record has arrived.
        bytes_expected: Option<u64>,
        /// Time left to receive `bytes_expected` at this connection's rate
        /// so far, in milliseconds; `None` while `bytes_expected` is.
        receive_ms_left: Option<u64>,
    },
    /// Everything local acknowledged, everything remote received.
    Settled(SyncReport),
    /// The connection failed; retrying after the delay (background only).
    Failed {
        /// Why.
        message: String,
        /// Delay before the next attempt, in milliseconds.
        retry_in_ms: u64,
    },
    /// The server refused the device; background sync stopped.
    Stopped {
        /// Why, as a type.
        refusal: crate::AuthRefusal,
        /// Why, for a person.
        message: String,
    },
    /// The device was retired or revoked and wiped its store; background
    /// sync stopped.
    Wiped(WipeReport),
    /// Bytes of an attachment moved: sent (upload) or received, of its
    /// total.
    Attachment {
        /// The record it belongs to.
        record: String,
        /// Its digest.
        sha256: String,
        /// True for an upload, false for a download.
        upload: bool,
        /// Bytes the server holds (upload) or the tablet holds (download).
        done: u64,
        /// Its size.
        total: u64,
    },
    /// The server refused an attachment's upload; it stays on the tablet
    /// with the reason until the app deletes it.
    AttachmentRefused {
        /// The record it belongs to.
        record: String,
        /// Its digest.
        sha256: String,
        /// The server's code (`over_limit`, `not_writable`, ...).
        code: String,
        /// The limit broken, for `over_limit`.
        limit: Option<String>,
        /// The server's words.
        message: String,
    },
}

/// Receives sync events. Implemented by the app (or a UniFFI callback).
pub trait SyncListener: Send + Sync {
    /// Called from the sync task; must not block for long.
    fn on_event(&self, event: SyncEvent);
}

/// A listener that ignores everything.
pub struct NoListener;

impl SyncListener for NoListener {
    fn on_event(&self, _: SyncEvent) {}
}

/// How one connection should end.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Return once settled.
    Once,
    /// Stay connected for live changes until stopped.
    Live,
}

/// No frame for this long while work is outstanding ends a one-shot sync.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn drive_err(e: DriveError<ClientError>) -> ClientError {
    match e {
        DriveError::Store(e) => e,
        DriveError::Session(e) => ClientError::Sync(e.to_string()),
    }
}

/// Handles a driver failure: a `revoked` from the server wipes the store
/// at once, without uploading anything more.
fn drive_failed(store: &LocalStore, e: DriveError<ClientError>) -> ClientError {
    if let DriveError::Session(baraza_protocol::SessionError::Peer {
        code: baraza_protocol::ErrorCode::Revoked,
        ..
    }) = &e
    {
        return match wipe(store, "revoked") {
            Ok(report) => ClientError::Wiped(report),
            Err(err) => err,
        };
    }
    drive_err(e)
}

/// A connection refused because the device was reported lost or stolen.
fn revoked_at_connect(store: &LocalStore, err: ClientError) -> ClientError {
    if err.auth_refusal() == Some(crate::AuthRefusal::Revoked) {
        return match wipe(store, "revoked") {
            Ok(report) => ClientError::Wiped(report),
            Err(e) => e,
        };
    }
    err
}

/// What one connection has moved so far, for [`SyncEvent::Progress`].
struct Moved {
    /// The cursor the tablet connected with.
    cursor_at_start: u64,
    /// The server's feed position in its `Welcome`, once it arrived.
    welcome_seq: Option<u64>,
    bytes_sent: u64,
    bytes_received: u64,
    /// When the connection was made, for the receive rate.
    started: std::time::Instant,
}

/// What is left of a download, estimated from what came so far: the
/// total bytes expected and the milliseconds left, as in
/// [`SyncEvent::Progress`]. Pure, so the arithmetic is tested alone.
fn receive_estimate(
    to_receive: u64,
    received: u64,
    bytes_received: u64,
    elapsed: Duration,
) -> (Option<u64>, Option<u64>) {
    if received == 0 {
        return (None, None);
    }
    let per_record = bytes_received as f64 / received as f64;
    let left = to_receive.saturating_sub(received) as f64 * per_record;
    let expected = bytes_received.saturating_add(left as u64);
    let elapsed_ms = elapsed.as_millis() as f64;
    let ms_left = (bytes_received > 0 && elapsed_ms > 0.0)
        .then(|| (left / (bytes_received as f64 / elapsed_ms)) as u64);
    (Some(expected), ms_left)
}

impl Moved {
    fn new(cursor_at_start: u64) -> Moved {
        Moved {
            cursor_at_start,
            welcome_seq: None,
            bytes_sent: 0,
            bytes_received: 0,
            started: std::time::Instant::now(),
        }
    }

    fn progress(&self, to_send: u64, sent: u64, received: u64) -> SyncEvent {
        let to_receive = self.welcome_seq.unwrap_or(0);
        let (bytes_expected, receive_ms_left) = receive_estimate(
            to_receive,
            received,
            self.bytes_received,
            self.started.elapsed(),
        );
        SyncEvent::Progress {
            to_send,
            sent,
            to_receive,
            received,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            bytes_expected,
            receive_ms_left,
        }
    }

    /// Notes a received frame; the first is the server's `Welcome`, read
    /// (once) for the feed position it announces.
    fn received(&mut self, frame: &[u8], limits: &Limits) {
        self.bytes_received += frame.len() as u64;
        if self.welcome_seq.is_none() {
            // Only the first frame is decoded here (the driver decodes
            // every frame anyway); anything but a Welcome counts as none.
            self.welcome_seq = Some(match baraza_protocol::codec::decode(frame, limits) {
                Ok(baraza_protocol::Message::Welcome(welcome)) => {
                    // A reset or refeed starts the feed again from the start.
                    let from = if welcome.reset || welcome.refeed {
                        0
                    } else {
                        self.cursor_at_start
                    };
                    welcome.seq.saturating_sub(from)
                }
                _ => 0,
            });
        }
    }
}

/// Remembers when the current token was issued and when it expires.
pub(crate) fn note_token_life(
    store: &LocalStore,
    issued: u64,
    expires: u64,
) -> Result<(), ClientError> {
    store.set_setting("token_issued_at", &issued.to_string())?;
    store.set_setting("token_expires_at", &expires.to_string())
}

/// Trades the token for a new one once half its life has passed. A
/// failure leaves the old token in place (it stays valid until the new
/// one is used), so the sync goes on either way.
async fn rotate_if_due(store: &LocalStore, endpoint: &Endpoint) -> Endpoint {
    let mut endpoint = endpoint.clone();
    let setting = |k: &str| {
        store
            .setting(k)
            .ok()
            .flatten()
            .and_then(|v| v.parse::<u64>().ok())
    };
    // The store may hold a newer token than the endpoint was built with.
    if let Ok(Some(token)) = store.setting("token") {
        endpoint.token = token;
    }
    let (Some(issued), Some(expires), Some(ca)) = (
        setting("token_issued_at"),
        setting("token_expires_at"),
        endpoint.ca_file.clone(),
    ) else {
        return endpoint;
    };
    let now = now_secs();
    if now < issued + expires.saturating_sub(issued) / 2 {
        return endpoint;
    }
    let reply =
        transport::post_json(&endpoint.url, &ca, "/v1/token", "{}", Some(&endpoint.token)).await;
    #[derive(serde::Deserialize)]
    struct Rotated {
        token: String,
        expires_at: u64,
    }
    match reply {
        Ok(transport::Reply {
            status: 200, body, ..
        }) => match serde_json::from_str::<Rotated>(&body) {
            Ok(r) => {
                let stored = store
                    .set_setting("token", &r.token)
                    .and_then(|()| note_token_life(store, now, r.expires_at));
                match stored {
                    Ok(()) => {
                        tracing::info!("device token rotated");
                        endpoint.token = r.token;
                    }
                    Err(err) => tracing::warn!(error = %err, "could not keep the rotated token"),
                }
            }
            Err(err) => tracing::warn!(error = %err, "unreadable token rotation reply"),
        },
        Ok(transport::Reply {
            status, refusal, ..
        }) => tracing::warn!(status, refusal = refusal.code(), "token rotation refused"),
        Err(err) => tracing::warn!(error = %err, "token rotation failed"),
    }
    endpoint
}

/// Runs one connection. Returns the report when settled (Once) or when the
/// server closes (Live).
pub(crate) async fn run_connection(
    store: &LocalStore,
    endpoint: &Endpoint,
    limits: &Limits,
    mode: Mode,
    local_edits: &Notify,
    stop: &mut watch::Receiver<bool>,
    listener: &dyn SyncListener,
) -> Result<SyncReport, ClientError> {
    let started = Instant::now();
    let endpoint = &rotate_if_due(store, endpoint).await;
    let mut ws = transport::connect(endpoint, limits.frame_bytes_max)
        .await
        .map_err(|e| revoked_at_connect(store, e))?;
    listener.on_event(SyncEvent::Connected);
    let mut replica = store.clone();
    let mut driver = ClientDriver::new(limits.clone(), &mut replica).map_err(drive_err)?;
    let mut moved = Moved::new(store.cursor_state()?.1);
    let mut settled_reported = false;
    loop {
        {
            let _guard = store.write_lock();
            driver.pump(&mut replica).map_err(drive_err)?;
        }
        let mut queued = false;
        while let Some(frame) = driver.poll_transmit() {
            moved.bytes_sent += frame.len() as u64;
            ws.feed(WsMessage::binary(frame))
                .await
                .map_err(|e| ClientError::Sync(format!("send: {e}")))?;
            queued = true;
        }
        if queued {
            ws.flush()
                .await
                .map_err(|e| ClientError::Sync(format!("send: {e}")))?;
        }
        if driver.is_closed() {
            return Err(ClientError::Sync("the session was closed".into()));
        }
        let counts = driver.counts();
        if driver.retire_requested() && driver.is_settled() {
            // Everything the server lacked is acknowledged (or refused and
            // reported): wipe, then tell the server, which ends the token.
            let report = {
                let _guard = store.write_lock();
                wipe(store, "retired")?
            };
            driver.goodbye(
                baraza_protocol::ErrorCode::Retired,
                format!(
                    "wiped {} records, {} not acknowledged",
                    report.records.len(),
                    report.unacknowledged.len()
                ),
            );
            while let Some(frame) = driver.poll_transmit() {
                let _ = ws.feed(WsMessage::binary(frame)).await;
            }
            let _ = ws.flush().await;
            let _ = ws.close(None).await;
            return Err(ClientError::Wiped(report));
        }
        if driver.is_settled() {
            let report = report(store, &counts, started)?;
            if !settled_reported {
                store.set_last_sync(now_secs())?;
                store.flush()?;
                listener.on_event(SyncEvent::Settled(report.clone()));
                settled_reported = true;
            }
            if mode == Mode::Once {
                let _ = ws.close(None).await;
                return Ok(report);
            }
        } else {
            settled_reported = false;
            listener.on_event(moved.progress(
                driver.queued() as u64,
                counts.docs_sent as u64,
                counts.docs_received as u64,
            ));
        }
        tokio::select! {
            frame = tokio::time::timeout(IDLE_TIMEOUT, ws.next()) => match frame {
                Err(_) if mode == Mode::Once => return Err(ClientError::Timeout(IDLE_TIMEOUT.as_secs())),
                Err(_) => {
                    // Keep an idle live connection alive through middleboxes.
                    ws.send(WsMessage::Ping(Vec::new().into())).await
                        .map_err(|e| ClientError::Sync(format!("send: {e}")))?;
                }
                Ok(Some(Ok(WsMessage::Binary(bytes)))) => {
                    moved.received(&bytes, limits);
                    let handled = {
                        let _guard = store.write_lock();
                        driver.handle_frame(&bytes, &mut replica)
                    };
                    handled.map_err(|e| drive_failed(store, e))?;
                }
                Ok(Some(Ok(WsMessage::Close(frame)))) => {
                    let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    if mode == Mode::Live && reason.contains("shutting down") {
                        return Err(ClientError::Sync(format!("server closed: {reason}")));
                    }
                    return Err(ClientError::Sync(format!("server closed the connection {reason}")));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(ClientError::Sync(format!("receive: {e}"))),
                Ok(None) => return Err(ClientError::Sync("connection lost".into())),
            },
            _ = local_edits.notified() => {
                for id in baraza_protocol::Replica::unacknowledged(&mut replica)? {
                    driver.enqueue(id);
                }
            }
            _ = stop.changed() => {
                let _ = ws.close(None).await;
                return report(store, &driver.counts(), started);
            }
        }
    }
}

fn report(
    store: &LocalStore,
    counts: &baraza_protocol::SyncCounts,
    started: Instant,
) -> Result<SyncReport, ClientError> {
    Ok(SyncReport {
        elapsed: started.elapsed(),
        docs_sent: counts.docs_sent as u64,
        docs_received: counts.docs_received as u64,
        docs_reconciled: counts.docs_reconciled as u64,
        refused: store.refusals()?.len() as u64,
        unacknowledged: store.unacknowledged_count()? as u64,
        attachments: Default::default(),
    })
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Backoff before attempt `attempt` (1-based): exponential from 500 ms,
/// capped at 60 s, with full jitter in the upper half so a fleet of tablets
/// that lost the server together does not return together.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base_ms = 500u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(7));
    let capped = base_ms.min(60_000) as f64;
    let jitter = jitter.clamp(0.0, 1.0);
    Duration::from_millis((capped * (0.5 + 0.5 * jitter)) as u64)
}

/// Passes events on, noting whether the connection got as far as the
/// server (so the background loop knows the backoff may start again).
struct Watched<'a> {
    inner: &'a dyn SyncListener,
    connected: AtomicBool,
}

impl SyncListener for Watched<'_> {
    fn on_event(&self, event: SyncEvent) {
        if event == SyncEvent::Connected {
            self.connected.store(true, Ordering::Relaxed);
        }
        self.inner.on_event(event);
    }
}

/// The background loop: connect, stay live, reconnect on failure.
pub(crate) async fn run_background(
    store: LocalStore,
    endpoint: Endpoint,
    limits: Limits,
    local_edits: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    listener: Arc<dyn SyncListener>,
) {
    let mut attempt = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        attempt += 1;
        listener.on_event(SyncEvent::Connecting { attempt });
        let watched = Watched {
            inner: listener.as_ref(),
            connected: AtomicBool::new(false),
        };
        let result = run_connection(
            &store,
            &endpoint,
            &limits,
            Mode::Live,
            &local_edits,
            &mut stop,
            &watched,
        )
        .await;
        let connected = watched.connected.load(Ordering::Relaxed);
        if *stop.borrow() {
            return;
        }
        if connected {
            // A live connection that ends (the server restarts, the
            // network drops after hours) starts the backoff again from its
            // shortest delay: the attempts before it succeeded say nothing
            // about this failure, and a tablet must not wait a minute to
            // send what was written while it was connected.
            attempt = 1;
        }
        match result {
            Err(ClientError::Unauthorized { refusal, message }) => {
                listener.on_event(SyncEvent::Stopped { refusal, message });
                return;
            }
            Err(ClientError::Wiped(report)) => {
                listener.on_event(SyncEvent::Wiped(report));
                return;
            }
            Err(err) => {
                let delay = backoff(attempt, rand::random());
                listener.on_event(SyncEvent::Failed {
                    message: err.to_string(),
                    retry_in_ms: delay.as_millis() as u64,
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
            }
            Ok(_) => attempt = 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps_and_jitters_within_bounds() {
        assert_eq!(backoff(1, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(2, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(30, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(30, 0.0), Duration::from_secs(30));
    }

    /// Nothing is promised before a record arrives; after, the total is
    /// what came plus the rest at the mean size, and the time left is the
    /// rest at the rate so far.
    #[test]
    fn the_download_estimate_scales_what_came_to_what_is_left() {
        let second = Duration::from_secs(1);
        assert_eq!(receive_estimate(10_000, 0, 900, second), (None, None));
        // 1,000 of 10,000 records in 200 KB over 2 s: 9,000 more at 200 B
        // is 1.8 MB, at 100 KB/s 18 s.
        assert_eq!(
            receive_estimate(10_000, 1_000, 200_000, 2 * second),
            (Some(2_000_000), Some(18_000))
        );
        // Done, or more came than announced: nothing is left.
        assert_eq!(
            receive_estimate(10, 12, 2_400, second),
            (Some(2_400), Some(0))
        );
        assert_eq!(receive_estimate(10, 1, 100, Duration::ZERO).1, None);
    }
}
