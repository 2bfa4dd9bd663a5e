//! Attachments over HTTP, behind a device token, apart from record sync:
//!
//! - `GET /v1/records/{id}/attachments/{sha256}/upload`: where an upload
//!   stands, `{"offset", "size", "complete", "chunk_max"}`: the tablet
//!   asks before it sends, so a cut upload resumes at the last byte the
//!   server holds, in chunks of at most `chunk_max` bytes.
//! - `PUT /v1/records/{id}/attachments/{sha256}?offset=N`: one chunk
//!   (at most `chunk_max_bytes`), its SHA-256 in the `baraza-chunk-sha256`
//!   header; answered after the chunk is durable, with the status after
//!   it. 409 with the status when `offset` is not where the held bytes
//!   end. The chunk that completes the bytes is answered after they hash
//!   to their name.
//! - `GET /v1/records/{id}/attachments/{sha256}`: the bytes, streamed a
//!   piece at a time (memory per download is one piece, whatever the
//!   size), with `Range: bytes=START-[END]` answered 206 so a cut
//!   download resumes.
//!
//! Every refusal is JSON `{"error": code, "message": text}` (and `limit`
//! for a limit); a record or attachment the caller may not read is 404
//! `not_found`, exactly as a missing one.

use std::sync::Arc;

use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::engine::attachments::{AttachmentError, Attachments, ChunkOutcome, UploadStatus};
use crate::identity::caller::Caller;
use baraza_protocol::DocId;

/// The header carrying a chunk's own SHA-256, hex.
pub const CHUNK_SHA_HEADER: &str = "baraza-chunk-sha256";

/// Bytes read from the store per piece of a download.
const PIECE_BYTES: usize = 256 << 10;

fn error(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": code, "message": message })),
        status,
    )
    .into_response()
}

fn status_json(status: &UploadStatus) -> serde_json::Value {
    serde_json::json!({
        "offset": status.offset,
        "size": status.size,
        "complete": status.complete,
    })
}

fn refused(e: AttachmentError) -> warp::reply::Response {
    match &e {
        AttachmentError::Absent => error(StatusCode::NOT_FOUND, "not_found", "no such attachment"),
        AttachmentError::NotWritable { .. } => {
            error(StatusCode::FORBIDDEN, "not_writable", &e.to_string())
        }
        AttachmentError::Limit(limit) => {
            let status = if limit.limit == "mime_allowed" {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            } else {
                StatusCode::PAYLOAD_TOO_LARGE
            };
            warp::reply::with_status(
                warp::reply::json(&serde_json::json!({
                    "error": "over_limit",
                    "limit": limit.limit,
                    "message": limit.message,
                })),
                status,
            )
            .into_response()
        }
        AttachmentError::NotUploaded => error(
            StatusCode::NOT_FOUND,
            "not_uploaded",
            "the attachment's bytes have not reached the server yet",
        ),
        AttachmentError::Storage(_) | AttachmentError::Docs(_) => {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "attachment request failed"
            );
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "attachment storage unavailable",
            )
        }
    }
}

/// Runs blocking attachment work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AttachmentError> + Send + 'static,
) -> Result<T, AttachmentError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(_) => Err(AttachmentError::Storage(
            crate::storage::store::StoreError::Db("attachment task failed".into()),
        )),
    }
}

/// The routes, given the bearer authentication the records routes use.
pub fn routes<A>(
    attachments: Arc<Attachments>,
    auth: A,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
where
    A: Filter<Extract = (Caller,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    let chunk_max = attachments.limits().chunk_max_bytes as u64;
    let service = attachments.clone();
    let status = warp::path!("v1" / "records" / String / "attachments" / String / "upload")
        .and(warp::get())
        .and(auth.clone())
        .and_then(move |id: String, sha: String, caller: Caller| {
            let service = service.clone();
            async move {
                let Ok(doc) = id.parse::<DocId>() else {
                    return Ok::<_, Rejection>(refused(AttachmentError::Absent));
                };
                let chunk_max = service.limits().chunk_max_bytes;
                Ok(
                    match blocking(move || service.status(&caller, doc, &sha)).await {
                        Ok(status) => {
                            let mut body = status_json(&status);
                            body["chunk_max"] = chunk_max.into();
                            warp::reply::json(&body).into_response()
                        }
                        Err(e) => refused(e),
                    },
                )
            }
        });
    let service = attachments.clone();
    let put = warp::path!("v1" / "records" / String / "attachments" / String)
        .and(warp::put())
        .and(auth.clone())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(chunk_max))
        .and(warp::body::bytes())
        .and_then(
            move |id: String,
                  sha: String,
                  caller: Caller,
                  query: std::collections::HashMap<String, String>,
                  headers: HeaderMap,
                  body: bytes::Bytes| {
                let service = service.clone();
                async move {
                    let Ok(doc) = id.parse::<DocId>() else {
                        return Ok::<_, Rejection>(refused(AttachmentError::Absent));
                    };
                    let Some(offset) = query.get("offset").and_then(|o| o.parse::<u64>().ok())
                    else {
                        return Ok(error(
                            StatusCode::BAD_REQUEST,
                            "bad_offset",
                            "offset must be the byte the chunk starts at",
                        ));
                    };
                    let Some(chunk_sha) = headers
                        .get(CHUNK_SHA_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(crate::storage::attachments::parse_digest)
                    else {
                        return Ok(error(
                            StatusCode::BAD_REQUEST,
                            "no_chunk_digest",
                            "a chunk needs its SHA-256 in the baraza-chunk-sha256 header",
                        ));
                    };
                    let done = blocking(move || {
                        service.upload(&caller, doc, &sha, offset, &body, &chunk_sha)
                    })
                    .await;
                    Ok(match done {
                        Ok(ChunkOutcome::Held(status)) => {
                            let code = if status.complete {
                                StatusCode::CREATED
                            } else {
                                StatusCode::OK
                            };
                            warp::reply::with_status(warp::reply::json(&status_json(&status)), code)
                                .into_response()
                        }
                        Ok(ChunkOutcome::NotAtEnd(status)) => {
                            let mut body = status_json(&status);
                            body["error"] = "not_at_end".into();
                            body["message"] =
                                "the chunk does not start where the held bytes end".into();
                            warp::reply::with_status(warp::reply::json(&body), StatusCode::CONFLICT)
                                .into_response()
                        }
                        Ok(ChunkOutcome::ChunkCorrupt) => error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "chunk_corrupt",
                            "the chunk does not match its digest; nothing was written; send it again",
                        ),
                        Ok(ChunkOutcome::PastEnd) => error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "past_end",
                            "the chunk runs past the attachment's size in the record",
                        ),
                        Ok(ChunkOutcome::NotItsBytes) => error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "not_its_bytes",
                            "the bytes do not hash to the attachment's digest; they were dropped",
                        ),
                        Err(e) => refused(e),
                    })
                }
            },
        );
    let service = attachments;
    let get = warp::path!("v1" / "records" / String / "attachments" / String)
        .and(warp::get())
        .and(auth)
        .and(warp::header::optional::<String>("range"))
        .and_then(
            move |id: String, sha: String, caller: Caller, range: Option<String>| {
                let service = service.clone();
                async move {
                    let Ok(doc) = id.parse::<DocId>() else {
                        return Ok::<_, Rejection>(refused(AttachmentError::Absent));
                    };
                    let opened = {
                        let service = service.clone();
                        blocking(move || service.open(&caller, doc, &sha)).await
                    };
                    Ok(match opened {
                        Ok((reference, digest)) => {
                            download(service, reference, digest, range.as_deref())
                        }
                        Err(e) => refused(e),
                    })
                }
            },
        );
    status.or(put).unify().or(get).unify()
}

/// `bytes=START-` or `bytes=START-END` (one range; anything else is
/// answered whole, as RFC 9110 allows).
fn parse_range(header: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = match end.trim() {
        "" => size.checked_sub(1)?,
        e => e.parse::<u64>().ok()?.min(size.saturating_sub(1)),
    };
    if start >= size || end < start {
        return Some(Err(()));
    }
    Some(Ok((start, end + 1)))
}

pub(crate) fn download(
    service: Arc<Attachments>,
    reference: baraza_records::AttachmentRef,
    digest: crate::storage::attachments::Digest,
    range: Option<&str>,
) -> warp::reply::Response {
    let size = reference.size_bytes;
    let (start, stop, partial) = match range.and_then(|r| parse_range(r, size)) {
        None => (0, size, false),
        Some(Ok((start, stop))) => (start, stop, true),
        Some(Err(())) => {
            let mut response = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "bad_range",
                "the range is outside the attachment",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert("content-range", v);
            }
            return response;
        }
    };
    // Two pieces in flight at most: a slow reader holds the reads back.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut at = start;
        while at < stop {
            let len = PIECE_BYTES.min((stop - at) as usize);
            let service = service.clone();
            let piece = blocking(move || service.read(&digest, at, len)).await;
            let piece = match piece {
                Ok(Some(piece)) if piece.len() == len => piece,
                other => {
                    tracing::error!(
                        ok = other.is_ok(),
                        "an attachment's bytes could not be read"
                    );
                    let _ = tx
                        .send(Err(std::io::Error::other("attachment bytes unavailable")))
                        .await;
                    return;
                }
            };
            at += len as u64;
            if tx.send(Ok(bytes::Bytes::from(piece))).await.is_err() {
                return;
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = warp::reply::stream(body).into_response();
    let headers = response.headers_mut();
    let mime = HeaderValue::from_str(&reference.mime)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert("content-type", mime);
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("accept-ranges", HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&(stop - start).to_string()) {
        headers.insert("content-length", v);
    }
    if partial {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", stop - 1)) {
            headers.insert("content-range", v);
        }
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_one_span() {
        assert_eq!(parse_range("bytes=0-", 10), Some(Ok((0, 10))));
        assert_eq!(parse_range("bytes=4-", 10), Some(Ok((4, 10))));
        assert_eq!(parse_range("bytes=2-5", 10), Some(Ok((2, 6))));
        assert_eq!(parse_range("bytes=2-50", 10), Some(Ok((2, 10))));
        assert_eq!(parse_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,4-5", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }
}
