//! Attachments over the network, apart from record sync: the upload queue
//! and lazy downloads, over one kept HTTPS connection per pass.
//!
//! Upload: for each attachment pending on the tablet, ask the server where
//! it stands (the offset it durably holds), then send the rest in chunks,
//! each with its own SHA-256 and acknowledged only once durable. A cut
//! costs at most the chunk in flight: the next pass asks again. Chunks
//! are sized to the link: about [`CHUNK_SECONDS`] of what the last chunk
//! achieved, between [`CHUNK_MIN`] and the server's limit, so a 2G link
//! sends small ones and loopback large ones. A refusal by a limit, by the
//! write rules or by the hash check is kept on the tablet with its reason
//! (the attachment stays until the app deletes it); "not found" means the
//! record change that refers to the bytes has not reached the server yet,
//! and the attachment waits for the next pass.
//!
//! Download: ranged requests of [`DOWNLOAD_PIECE`] from the bytes already
//! held, each written (sealed) before the next is asked for, so a cut
//! download resumes where it stopped; the whole is checked against its
//! digest before it is handed out.

use std::time::{Duration, Instant};

use baraza_protocol::DocId;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::sync::{SyncEvent, SyncListener};
use super::transport::{Endpoint, HttpsSession};
use crate::base::{AttachmentState, LocalStore, UploadState, PIECE_BYTES};
use crate::error::ClientError;

/// Smallest chunk sent.
pub const CHUNK_MIN: usize = 16 * 1024;
/// Largest chunk sent (the server's default limit).
pub const CHUNK_MAX: usize = 1024 * 1024;
/// The chunk to start with, before the link's rate is known.
const CHUNK_FIRST: usize = 64 * 1024;
/// How long a chunk should take on the wire: long enough that the wait
/// for each acknowledgement is a small part of it, short enough that a
/// cut costs little.
pub const CHUNK_SECONDS: f64 = 4.0;
/// Bytes asked for per download request (a whole number of pieces).
const DOWNLOAD_PIECE: usize = 16 * PIECE_BYTES;
/// A corrupted chunk is resent this many times before the pass gives up.
const CORRUPT_RETRIES: u32 = 8;
/// Reply bodies of the upload status and chunk answers are small.
const STATUS_REPLY_MAX: usize = 16 * 1024;

/// What one upload pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UploadReport {
    /// Attachments the server now holds whole.
    pub uploaded: u64,
    /// Attachments still waiting (their record has not reached the
    /// server yet).
    pub waiting: u64,
    /// Attachments the server refused (kept on the tablet).
    pub refused: u64,
    /// Bytes of chunks sent.
    pub bytes_sent: u64,
    /// Attachments fetched by the prefetch policy (`sync_once` only).
    pub fetched: u64,
}

#[derive(Deserialize)]
struct StatusBody {
    offset: u64,
    size: u64,
    complete: bool,
    /// The server's largest chunk (in the status answer only).
    #[serde(default)]
    chunk_max: Option<usize>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    complete: Option<bool>,
}

/// Chooses chunk sizes from the rate the last chunk achieved.
#[derive(Clone, Debug)]
pub struct ChunkSizer {
    next: usize,
    max: usize,
}

impl Default for ChunkSizer {
    fn default() -> Self {
        ChunkSizer {
            next: CHUNK_FIRST,
            max: CHUNK_MAX,
        }
    }
}

impl ChunkSizer {
    /// The size to send next.
    pub fn next(&self) -> usize {
        self.next
    }

    /// A chunk of `bytes` took `took` from send to acknowledgement.
    pub fn took(&mut self, bytes: usize, took: Duration) {
        let secs = took.as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        let wanted = (rate * CHUNK_SECONDS) as usize;
        // At most doubling per chunk: one fast chunk is not a fast link.
        self.next = wanted
            .clamp(CHUNK_MIN.min(self.max), self.max)
            .min(self.next.saturating_mul(2));
    }

    /// The server takes chunks of at most `max` bytes.
    pub fn limit_to(&mut self, max: usize) {
        self.max = max.clamp(1, CHUNK_MAX);
        self.next = self.next.min(self.max);
    }

    /// A new connection: start again from [`CHUNK_FIRST`] at most, since
    /// the link may not be the one the last pass learnt (a tablet that
    /// left Wi-Fi for 2G would otherwise start with a chunk of a minute),
    /// and after a cut the first chunks are the ones most likely lost.
    pub fn new_pass(&mut self) {
        self.next = self.next.min(CHUNK_FIRST).min(self.max);
    }

    /// A chunk failed in flight: the next is smaller.
    pub fn failed(&mut self) {
        self.next = (self.next / 2).max(CHUNK_MIN.min(self.max));
    }
}

fn path(id: DocId, sha: &str) -> String {
    format!("/v1/records/{id}/attachments/{sha}")
}

fn unauthorized(reply: &super::transport::BytesReply) -> ClientError {
    ClientError::Unauthorized {
        refusal: reply.refusal,
        message: String::from_utf8_lossy(&reply.body).into_owned(),
    }
}

fn failed(reply: &super::transport::BytesReply, what: &str) -> ClientError {
    ClientError::Sync(format!(
        "{what}: the server answered {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    ))
}

fn refused(
    store: &LocalStore,
    id: DocId,
    digest: &[u8; 32],
    body: &ErrorBody,
) -> Result<(), ClientError> {
    tracing::warn!(record = %id, code = %body.error, "attachment refused by the server");
    store.set_attachment_state(
        id,
        digest,
        &AttachmentState {
            upload: UploadState::Refused {
                code: body.error.clone(),
                limit: body.limit.clone(),
                message: body.message.clone(),
            },
            complete: true,
        },
    )
}

/// Outcome of one attachment's upload.
enum Uploaded {
    Whole,
    Waiting,
    Refused,
}

/// Uploads every pending attachment it can, over one connection.
pub(crate) async fn upload_pending(
    store: &LocalStore,
    endpoint: &Endpoint,
    sizer: &mut ChunkSizer,
    listener: &dyn SyncListener,
) -> Result<UploadReport, ClientError> {
    let mut report = UploadReport::default();
    let pending = store.pending_uploads()?;
    if pending.is_empty() {
        return Ok(report);
    }
    let mut session = HttpsSession::open(endpoint).await?;
    sizer.new_pass();
    for (id, digest) in pending {
        match upload_one(
            store,
            &mut session,
            id,
            &digest,
            sizer,
            listener,
            &mut report,
        )
        .await?
        {
            Uploaded::Whole => report.uploaded += 1,
            Uploaded::Waiting => report.waiting += 1,
            Uploaded::Refused => report.refused += 1,
        }
    }
    Ok(report)
}

async fn upload_one(
    store: &LocalStore,
    session: &mut HttpsSession,
    id: DocId,
    digest: &[u8; 32],
    sizer: &mut ChunkSizer,
    listener: &dyn SyncListener,
    report: &mut UploadReport,
) -> Result<Uploaded, ClientError> {
    let sha = hex::encode(digest);
    let path = path(id, &sha);
    let reply = session
        .send(
            hyper::Method::GET,
            &format!("{path}/upload"),
            &[],
            Vec::new(),
            STATUS_REPLY_MAX,
        )
        .await?;
    let mut status: StatusBody = match reply.status {
        200 => serde_json::from_slice(&reply.body).map_err(|e| ClientError::Sync(e.to_string()))?,
        401 => return Err(unauthorized(&reply)),
        404 => return Ok(Uploaded::Waiting),
        403 | 413 | 415 => {
            let body: ErrorBody = serde_json::from_slice(&reply.body)
                .map_err(|e| ClientError::Sync(e.to_string()))?;
            refused(store, id, digest, &body)?;
            emit_refused(listener, id, &sha, &body);
            return Ok(Uploaded::Refused);
        }
        _ => return Err(failed(&reply, "upload status")),
    };
    if let Some(max) = status.chunk_max {
        sizer.limit_to(max);
    }
    let mut corrupt = 0u32;
    let mut restarted = false;
    while !status.complete {
        let offset = status.offset;
        let len = sizer
            .next()
            .min((status.size - offset.min(status.size)) as usize);
        let chunk = store.read_attachment(id, digest, offset, len)?;
        if chunk.len() != len {
            return Err(ClientError::Corrupt {
                what: "attachments",
                reason: format!("the tablet holds fewer bytes of {sha} than its reference says"),
            });
        }
        let chunk_sha = hex::encode(Sha256::digest(&chunk));
        let started = Instant::now();
        let sent = session
            .send(
                hyper::Method::PUT,
                &format!("{path}?offset={offset}"),
                &[
                    ("baraza-chunk-sha256", chunk_sha),
                    ("content-type", "application/octet-stream".into()),
                ],
                chunk,
                STATUS_REPLY_MAX,
            )
            .await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(e) => {
                sizer.failed();
                return Err(e);
            }
        };
        match reply.status {
            200 | 201 => {
                sizer.took(len, started.elapsed());
                report.bytes_sent += len as u64;
                status = serde_json::from_slice(&reply.body)
                    .map_err(|e| ClientError::Sync(e.to_string()))?;
            }
            409 => {
                let body: ErrorBody = serde_json::from_slice(&reply.body)
                    .map_err(|e| ClientError::Sync(e.to_string()))?;
                status.offset = body.offset.unwrap_or(0);
                status.complete = body.complete.unwrap_or(false);
            }
            401 => return Err(unauthorized(&reply)),
            404 => return Ok(Uploaded::Waiting),
            422 | 403 | 413 | 415 => {
                let body: ErrorBody = serde_json::from_slice(&reply.body)
                    .map_err(|e| ClientError::Sync(e.to_string()))?;
                match body.error.as_str() {
                    "chunk_corrupt" if corrupt < CORRUPT_RETRIES => {
                        corrupt += 1;
                        sizer.failed();
                        tracing::info!(record = %id, offset, "chunk changed in flight; sending it again");
                    }
                    "not_its_bytes" if !restarted => {
                        restarted = true;
                        status.offset = 0;
                    }
                    _ => {
                        refused(store, id, digest, &body)?;
                        emit_refused(listener, id, &sha, &body);
                        return Ok(Uploaded::Refused);
                    }
                }
            }
            _ => return Err(failed(&reply, "upload")),
        }
        listener.on_event(SyncEvent::Attachment {
            record: id.to_string(),
            sha256: sha.clone(),
            upload: true,
            done: status.offset,
            total: status.size,
        });
    }
    store.set_attachment_state(
        id,
        digest,
        &AttachmentState {
            upload: UploadState::Uploaded,
            complete: true,
        },
    )?;
    tracing::info!(record = %id, bytes = status.size, "attachment uploaded");
    Ok(Uploaded::Whole)
}

fn emit_refused(listener: &dyn SyncListener, id: DocId, sha: &str, body: &ErrorBody) {
    listener.on_event(SyncEvent::AttachmentRefused {
        record: id.to_string(),
        sha256: sha.to_string(),
        code: body.error.clone(),
        limit: body.limit.clone(),
        message: body.message.clone(),
    });
}

/// The background upload queue: a pass whenever an attachment is added
/// (`wake`), again soon while some wait for their record to reach the
/// server, and after a failure with the sync's backoff; until `stop`.
pub(crate) async fn run_uploader(
    store: LocalStore,
    endpoint: Endpoint,
    wake: std::sync::Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    listener: std::sync::Arc<dyn SyncListener>,
) {
    let mut sizer = ChunkSizer::default();
    let mut attempt = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let pass = tokio::select! {
            pass = upload_pending(&store, &endpoint, &mut sizer, listener.as_ref()) => pass,
            _ = stop.changed() => return,
        };
        let delay = match pass {
            Ok(report) if report.waiting > 0 => {
                attempt = attempt.saturating_add(1);
                super::sync::backoff(attempt, rand::random())
            }
            Ok(_) => {
                attempt = 0;
                // Nothing waits: sleep until an attachment is added (or
                // a while, in case one was added by another handle).
                Duration::from_secs(300)
            }
            Err(ClientError::Unauthorized { .. }) => return,
            Err(error) => {
                attempt = attempt.saturating_add(1);
                tracing::info!(%error, "attachment upload pass failed; retrying");
                super::sync::backoff(attempt, rand::random())
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Fetches the bytes of attachment `sha` of record `id` into the store,
/// resuming from what is held, and returns them once whole and checked.
pub(crate) async fn fetch(
    store: &LocalStore,
    endpoint: &Endpoint,
    id: DocId,
    digest: &[u8; 32],
    size: u64,
    listener: &dyn SyncListener,
) -> Result<Vec<u8>, ClientError> {
    let sha = hex::encode(digest);
    let state = store.attachment_state(id, digest)?;
    if !state.as_ref().is_some_and(|s| s.complete) {
        if state.is_none() {
            store.set_attachment_state(
                id,
                digest,
                &AttachmentState {
                    upload: UploadState::Remote,
                    complete: false,
                },
            )?;
        }
        let mut held = store.attachment_held(id, digest)?;
        if !held.is_multiple_of(PIECE_BYTES as u64) && held < size {
            // Only a whole download ends off a piece boundary.
            store.restart_download(id, digest)?;
            held = 0;
        }
        let mut session = HttpsSession::open(endpoint).await?;
        while held < size {
            let last = (held + DOWNLOAD_PIECE as u64).min(size) - 1;
            let reply = session
                .send(
                    hyper::Method::GET,
                    &path(id, &sha),
                    &[("range", format!("bytes={held}-{last}"))],
                    Vec::new(),
                    DOWNLOAD_PIECE,
                )
                .await?;
            match reply.status {
                206 => {}
                200 if held == 0 && reply.body.len() as u64 == size => {}
                401 => return Err(unauthorized(&reply)),
                404 => {
                    let code = serde_json::from_slice::<ErrorBody>(&reply.body)
                        .map(|b| b.error)
                        .unwrap_or_default();
                    return Err(if code == "not_uploaded" {
                        ClientError::Sync(format!(
                            "attachment {sha} has not reached the server yet"
                        ))
                    } else {
                        ClientError::NotFound(format!("{id} attachment {sha}"))
                    });
                }
                _ => return Err(failed(&reply, "download")),
            }
            if reply.body.is_empty() {
                return Err(failed(&reply, "download (empty piece)"));
            }
            store.append_attachment(id, digest, held, &reply.body)?;
            held += reply.body.len() as u64;
            listener.on_event(SyncEvent::Attachment {
                record: id.to_string(),
                sha256: sha.clone(),
                upload: false,
                done: held.min(size),
                total: size,
            });
        }
        let bytes = store.read_attachment(id, digest, 0, usize::MAX)?;
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != *digest {
            store.restart_download(id, digest)?;
            return Err(ClientError::Corrupt {
                what: "attachments",
                reason: format!("the downloaded bytes do not hash to {sha}; dropped"),
            });
        }
        let upload = state.map(|s| s.upload).unwrap_or(UploadState::Remote);
        store.set_attachment_state(
            id,
            digest,
            &AttachmentState {
                upload,
                complete: true,
            },
        )?;
        return Ok(bytes);
    }
    let bytes = store.read_attachment(id, digest, 0, usize::MAX)?;
    if <[u8; 32]>::from(Sha256::digest(&bytes)) != *digest {
        return Err(ClientError::Corrupt {
            what: "attachments",
            reason: format!("the bytes of {sha} held here do not hash to it"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_the_link_rate_within_bounds() {
        let mut sizer = ChunkSizer::default();
        assert_eq!(sizer.next(), CHUNK_FIRST);
        // 32 KB/s (256 kbit/s): four seconds is 128 KiB, reached by
        // doubling.
        sizer.took(64 * 1024, Duration::from_secs(2));
        assert_eq!(sizer.next(), 128 * 1024);
        sizer.took(128 * 1024, Duration::from_secs(4));
        assert_eq!(sizer.next(), 128 * 1024);
        // Loopback: as large as allowed, doubling at most.
        sizer.took(128 * 1024, Duration::from_millis(1));
        assert_eq!(sizer.next(), 256 * 1024);
        for _ in 0..10 {
            sizer.took(sizer.next(), Duration::from_millis(1));
        }
        assert_eq!(sizer.next(), CHUNK_MAX);
        // A very slow link: never below the floor.
        sizer.took(1024, Duration::from_secs(10));
        assert_eq!(sizer.next(), CHUNK_MIN);
        sizer.failed();
        assert_eq!(sizer.next(), CHUNK_MIN);
        // A new pass starts small, whatever the last one learnt.
        for _ in 0..10 {
            sizer.took(sizer.next(), Duration::from_millis(1));
        }
        sizer.new_pass();
        assert_eq!(sizer.next(), CHUNK_FIRST);
    }
}
