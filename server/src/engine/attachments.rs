//! Attachments' bytes, judged: who may upload or read them follows the
//! record that refers to them ([`SyncHub::attachment_of`]), the limits of
//! `[attachments]` name themselves when they refuse, and an upload grows
//! chunk by chunk in the [`AttachmentStore`], each chunk checked against
//! its own digest before it is written and the whole against its name
//! before it is served.
//!
//! The record change that refers to an attachment syncs as any other, so
//! by the time bytes arrive the server knows their size, type and digest
//! from the record; nothing about the bytes is taken from the upload.

use std::sync::Arc;

use baraza_protocol::DocId;
use baraza_records::{AttachmentRef, Role};
use sha2::{Digest as _, Sha256};

use crate::engine::docs::DocsError;
use crate::engine::hub::{RecordAttachments, SyncHub};
use crate::identity::caller::Caller;
use crate::storage::attachments::{
    parse_digest, Appended, AttachmentStore, Digest, Finished, Held,
};
use crate::storage::store::StoreError;

/// What `[attachments]` allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentLimits {
    /// Bytes one attachment may hold (`size_max_bytes`).
    pub size_max_bytes: u64,
    /// Bytes all of one record's attachments may hold together
    /// (`record_max_bytes`).
    pub record_max_bytes: u64,
    /// Media types accepted (`mime_allowed`); `type/*` accepts a family.
    pub mime_allowed: Vec<String>,
    /// Bytes one uploaded chunk may hold (`chunk_max_bytes`).
    pub chunk_max_bytes: usize,
}

impl Default for AttachmentLimits {
    fn default() -> Self {
        AttachmentLimits {
            size_max_bytes: 32 << 20,
            record_max_bytes: 128 << 20,
            mime_allowed: [
                "image/jpeg",
                "image/png",
                "image/webp",
                "audio/*",
                "application/pdf",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            chunk_max_bytes: 1 << 20,
        }
    }
}

impl AttachmentLimits {
    fn mime_ok(&self, mime: &str) -> bool {
        self.mime_allowed
            .iter()
            .any(|allowed| match allowed.strip_suffix("/*") {
                Some(family) => mime
                    .split_once('/')
                    .is_some_and(|(f, rest)| f == family && !rest.is_empty()),
                None => allowed == mime,
            })
    }

    /// The limit an attachment of `record` breaks, if it breaks one.
    fn judge(&self, record: &RecordAttachments) -> Option<LimitRefusal> {
        let one = &record.one;
        if one.size_bytes > self.size_max_bytes {
            return Some(LimitRefusal {
                limit: "size_max_bytes",
                message: format!(
                    "{} is {} bytes; an attachment may hold at most {} (limit size_max_bytes)",
                    one.name, one.size_bytes, self.size_max_bytes
                ),
            });
        }
        let total: u64 = record.all.iter().map(|r| r.size_bytes).sum();
        if total > self.record_max_bytes {
            return Some(LimitRefusal {
                limit: "record_max_bytes",
                message: format!(
                    "the record's attachments hold {total} bytes together; a record may hold at \
                     most {} (limit record_max_bytes)",
                    self.record_max_bytes
                ),
            });
        }
        if !self.mime_ok(&one.mime) {
            return Some(LimitRefusal {
                limit: "mime_allowed",
                message: format!(
                    "{} is of type {:?}, which is not accepted here; accepted: {} (limit \
                     mime_allowed)",
                    one.name,
                    one.mime,
                    self.mime_allowed.join(", ")
                ),
            });
        }
        None
    }
}

/// An attachment refused by a limit, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitRefusal {
    /// The setting of `[attachments]` it breaks.
    pub limit: &'static str,
    /// What it is and what is allowed, for people.
    pub message: String,
}

/// Where an upload stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadStatus {
    /// Bytes durably held: where the next chunk starts.
    pub offset: u64,
    /// Bytes in all, from the record's reference.
    pub size: u64,
    /// All of them are held and hash to the digest.
    pub complete: bool,
}

/// What a chunk did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Written and durable; the status after it.
    Held(UploadStatus),
    /// Not at the end of what is held: nothing written; send from here.
    NotAtEnd(UploadStatus),
    /// The chunk does not hash to the digest sent with it (changed in
    /// flight): nothing written.
    ChunkCorrupt,
    /// The chunk runs past the attachment's size: nothing written.
    PastEnd,
    /// The whole does not hash to the attachment's name: dropped, the
    /// upload starts again from byte 0.
    NotItsBytes,
}

/// Why an attachment request was answered as it was, other than with
/// what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// No such attachment, or one the caller may not reach: the two look
    /// the same.
    #[error("no such attachment")]
    Absent,
    /// The caller may read the record but not write it.
    #[error("user {user} may not add attachments to this record")]
    NotWritable {
        /// The caller's user.
        user: String,
    },
    /// A limit refuses it.
    #[error("{}", .0.message)]
    Limit(LimitRefusal),
    /// The bytes are not on the server yet.
    #[error("the attachment's bytes have not been uploaded yet")]
    NotUploaded,
    /// Storage failed.
    #[error("attachment storage unavailable")]
    Storage(#[from] StoreError),
    /// The record could not be read.
    #[error("record store unavailable")]
    Docs(#[from] DocsError),
}

/// Attachments as the API serves them.
pub struct Attachments {
    hub: Arc<SyncHub>,
    store: Arc<dyn AttachmentStore>,
    limits: AttachmentLimits,
}

impl Attachments {
    /// Attachments of `hub`'s records, kept in `store`, under `limits`.
    pub fn new(
        hub: Arc<SyncHub>,
        store: Arc<dyn AttachmentStore>,
        limits: AttachmentLimits,
    ) -> Attachments {
        Attachments { hub, store, limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &AttachmentLimits {
        &self.limits
    }

    /// The record's reference to `sha`, if `caller` may read it; a refusal
    /// is audited and looks like absence.
    fn reach(
        &self,
        caller: &Caller,
        id: DocId,
        sha: &str,
        action: &'static str,
    ) -> Result<(RecordAttachments, Digest), AttachmentError> {
        let found = match parse_digest(sha) {
            Some(digest) => self
                .hub
                .attachment_of(&caller.principal, id, sha)?
                .map(|r| (r, digest)),
            None => None,
        };
        found.ok_or_else(|| {
            self.hub.audit().record(
                "attachment_refused",
                serde_json::json!({
                    "record": id.to_string(),
                    "sha256": sha,
                    "action": action,
                    "user": caller.principal.user,
                    "device": caller.device.id.to_hex(),
                }),
            );
            AttachmentError::Absent
        })
    }

    /// For an upload: the record's reference, if `caller` may write the
    /// record and the attachment is within the limits.
    fn reach_to_write(
        &self,
        caller: &Caller,
        id: DocId,
        sha: &str,
    ) -> Result<(RecordAttachments, Digest), AttachmentError> {
        let (record, digest) = self.reach(caller, id, sha, "upload")?;
        let who = &caller.principal;
        if who.role == Role::Admin || !who.works_in(&record.area) {
            return Err(AttachmentError::NotWritable {
                user: who.user.clone(),
            });
        }
        if let Some(refusal) = self.limits.judge(&record) {
            self.hub.audit().record(
                "attachment_over_limit",
                serde_json::json!({
                    "record": id.to_string(),
                    "sha256": sha,
                    "limit": refusal.limit,
                    "device": caller.device.id.to_hex(),
                }),
            );
            return Err(AttachmentError::Limit(refusal));
        }
        Ok((record, digest))
    }

    fn status_of(&self, digest: &Digest, size: u64) -> Result<UploadStatus, AttachmentError> {
        Ok(match self.store.held(digest)? {
            Held::Nothing => UploadStatus {
                offset: 0,
                size,
                complete: false,
            },
            Held::Partial(offset) => UploadStatus {
                offset,
                size,
                complete: false,
            },
            Held::Whole(len) => UploadStatus {
                offset: len,
                size,
                complete: true,
            },
        })
    }

    /// Where the upload of `sha` to record `id` stands: the offset to send
    /// from. Blocking.
    pub fn status(
        &self,
        caller: &Caller,
        id: DocId,
        sha: &str,
    ) -> Result<UploadStatus, AttachmentError> {
        let (record, digest) = self.reach_to_write(caller, id, sha)?;
        // Noted before the answer: garbage collection asks this record,
        // whichever device made the bytes whole.
        self.store.note_owner(&digest, id)?;
        self.status_of(&digest, record.one.size_bytes)
    }

    /// Takes one chunk of the upload of `sha` at `offset`, checked against
    /// `chunk_sha`; durable before it returns. The chunk that completes
    /// the bytes makes them whole if they hash to `sha`. Blocking.
    pub fn upload(
        &self,
        caller: &Caller,
        id: DocId,
        sha: &str,
        offset: u64,
        chunk: &[u8],
        chunk_sha: &Digest,
    ) -> Result<ChunkOutcome, AttachmentError> {
        let (record, digest) = self.reach_to_write(caller, id, sha)?;
        let size = record.one.size_bytes;
        if <[u8; 32]>::from(Sha256::digest(chunk)) != *chunk_sha {
            tracing::warn!(record = %id, offset, "attachment chunk does not match its digest");
            return Ok(ChunkOutcome::ChunkCorrupt);
        }
        if offset.saturating_add(chunk.len() as u64) > size {
            return Ok(ChunkOutcome::PastEnd);
        }
        if offset == 0 {
            self.store.note_owner(&digest, id)?;
        }
        let end = match self.store.append(&digest, offset, chunk)? {
            Appended::NotAtEnd(_) => {
                return Ok(ChunkOutcome::NotAtEnd(self.status_of(&digest, size)?));
            }
            Appended::To(end) => end,
        };
        if end < size {
            return Ok(ChunkOutcome::Held(UploadStatus {
                offset: end,
                size,
                complete: false,
            }));
        }
        match self.store.finish(&digest)? {
            Finished::Whole(len) => {
                tracing::info!(record = %id, bytes = len, "attachment stored");
                self.hub.audit().record(
                    "attachment_stored",
                    serde_json::json!({
                        "record": id.to_string(),
                        "sha256": sha,
                        "size_bytes": len,
                        "field": record.one.field,
                        "user": caller.principal.user,
                        "device": caller.device.id.to_hex(),
                    }),
                );
                Ok(ChunkOutcome::Held(UploadStatus {
                    offset: len,
                    size,
                    complete: true,
                }))
            }
            Finished::Mismatch => {
                tracing::warn!(record = %id, "uploaded bytes do not hash to the attachment's name");
                self.hub.audit().record(
                    "attachment_hash_mismatch",
                    serde_json::json!({
                        "record": id.to_string(),
                        "sha256": sha,
                        "device": caller.device.id.to_hex(),
                    }),
                );
                Ok(ChunkOutcome::NotItsBytes)
            }
        }
    }

    /// The reference to `sha` in record `id` and how many bytes are
    /// whole, for a download; a refusal is audited and looks like
    /// absence. Blocking.
    pub fn open(
        &self,
        caller: &Caller,
        id: DocId,
        sha: &str,
    ) -> Result<(AttachmentRef, Digest), AttachmentError> {
        let (record, digest) = self.reach(caller, id, sha, "read")?;
        match self.store.held(&digest)? {
            Held::Whole(len) if len == record.one.size_bytes => {
                self.hub.audit().record(
                    "attachment_read",
                    serde_json::json!({
                        "record": id.to_string(),
                        "sha256": sha,
                        "user": caller.principal.user,
                        "device": caller.device.id.to_hex(),
                    }),
                );
                Ok((record.one, digest))
            }
            _ => Err(AttachmentError::NotUploaded),
        }
    }

    /// Up to `len` bytes of a whole attachment from `offset`. Blocking.
    pub fn read(
        &self,
        digest: &Digest,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, AttachmentError> {
        Ok(self.store.read(digest, offset, len)?)
    }
}

/// What one garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Attachments held.
    pub held: usize,
    /// Of those, removed: no record refers to them any more, and they
    /// have been left alone for the grace period.
    pub removed: usize,
}

impl Attachments {
    /// Removes the bytes no record refers to any more that have not
    /// changed for `grace_ms` (an upload abandoned, an attachment deleted
    /// from its record). An attachment is a candidate when none of the
    /// records noted as its owners refers to it; candidates are then
    /// checked against every record the store holds, so bytes a record
    /// refers to are never removed, however it came to refer to them.
    /// Blocking.
    pub fn collect_garbage(
        &self,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Collected, AttachmentError> {
        let kept = self.store.kept()?;
        let mut report = Collected {
            held: kept.len(),
            removed: 0,
        };
        let mut candidates = Vec::new();
        for k in kept {
            if now_ms.saturating_sub(k.changed_ms) < grace_ms {
                continue;
            }
            let sha = hex::encode(k.sha);
            let mut owned = false;
            for owner in &k.owners {
                if self.hub.refers_to(*owner, &sha)? {
                    owned = true;
                    break;
                }
            }
            if !owned {
                candidates.push((k.sha, sha));
            }
        }
        if candidates.is_empty() {
            return Ok(report);
        }
        let referenced = self.hub.referenced_digests()?;
        for (digest, sha) in candidates {
            if referenced.contains(&sha) {
                continue;
            }
            self.store.remove(&digest)?;
            report.removed += 1;
            tracing::info!(sha256 = %sha, "attachment no record refers to removed");
            self.hub
                .audit()
                .record("attachment_collected", serde_json::json!({ "sha256": sha }));
        }
        Ok(report)
    }

    /// Collects garbage every `every`, on a thread of its own, for as
    /// long as the process runs.
    pub fn start_collecting(
        self: &Arc<Self>,
        grace: std::time::Duration,
        every: std::time::Duration,
    ) -> std::io::Result<()> {
        let attachments = self.clone();
        std::thread::Builder::new()
            .name("baraza-attachment-gc".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let now = crate::clock::unix_now_ms();
                match attachments.collect_garbage(now, grace.as_millis() as u64) {
                    Ok(done) if done.removed > 0 => {
                        tracing::info!(
                            held = done.held,
                            removed = done.removed,
                            "attachments collected"
                        )
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "attachment garbage collection failed; trying again later"
                    ),
                }
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_families_are_accepted_by_their_prefix() {
        let limits = AttachmentLimits::default();
        assert!(limits.mime_ok("image/jpeg"));
        assert!(limits.mime_ok("audio/ogg"));
        assert!(!limits.mime_ok("audio/"));
        assert!(!limits.mime_ok("audiox/ogg"));
        assert!(!limits.mime_ok("text/html"));
        assert!(!limits.mime_ok("image/svg+xml"), "svg can carry script");
    }
}
