//! Attachments' bytes on the tablet, sealed like every other value, and
//! where each stands with the server.
//!
//! Trees: `attachments` ((record id, digest, piece number) → one sealed
//! piece of [`PIECE_BYTES`], the last one shorter), `attachment_state`
//! ((record id, digest) → [`AttachmentState`] as JSON). Bytes are kept
//! per record, not shared between records that hold the same digest, so
//! a record's deletion or erasure takes exactly its own bytes with it.
//! Pieces are written in order, so the bytes held are always a prefix:
//! a cut download resumes at its length.

use baraza_protocol::DocId;
use serde::{Deserialize, Serialize};

use super::LocalStore;
use crate::error::ClientError;

/// Bytes per sealed piece.
pub const PIECE_BYTES: usize = 64 * 1024;

/// Where an attachment's upload stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UploadState {
    /// Attached on this tablet; its bytes wait for the upload queue (which
    /// asks the server where to resume).
    Pending,
    /// The server holds the bytes whole.
    Uploaded,
    /// The server refused them. They stay on the tablet until the app
    /// deletes the attachment.
    Refused {
        /// The server's code (`over_limit`, `not_writable`,
        /// `not_its_bytes`).
        code: String,
        /// The limit broken, for `over_limit` (`size_max_bytes`,
        /// `record_max_bytes`, `mime_allowed`).
        limit: Option<String>,
        /// The server's words.
        message: String,
    },
    /// Attached on another device: the tablet fetches it, never uploads.
    Remote,
}

/// What the tablet keeps about one attachment of one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentState {
    /// Its upload.
    pub upload: UploadState,
    /// The bytes are all here and hash to the digest.
    pub complete: bool,
}

fn key(id: DocId, sha: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.extend_from_slice(id.as_bytes());
    k.extend_from_slice(sha);
    k
}

fn piece_key(id: DocId, sha: &[u8; 32], n: u32) -> Vec<u8> {
    let mut k = key(id, sha);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn corrupt(reason: impl ToString) -> ClientError {
    ClientError::Corrupt {
        what: "attachment_state",
        reason: reason.to_string(),
    }
}

impl LocalStore {
    /// Keeps the bytes of a new attachment of record `id`, durably, as
    /// pending upload. Called before the record change that refers to
    /// them, so a reference on the tablet always has its bytes.
    pub fn put_attachment(
        &self,
        id: DocId,
        sha: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), ClientError> {
        self.remove_pieces(id, sha)?;
        for (n, piece) in bytes.chunks(PIECE_BYTES).enumerate() {
            let n = u32::try_from(n).map_err(|_| corrupt("attachment too large"))?;
            self.attachments.insert(piece_key(id, sha, n), piece)?;
        }
        self.set_attachment_state(
            id,
            sha,
            &AttachmentState {
                upload: UploadState::Pending,
                complete: true,
            },
        )
    }

    /// What the tablet keeps about an attachment, if anything.
    pub fn attachment_state(
        &self,
        id: DocId,
        sha: &[u8; 32],
    ) -> Result<Option<AttachmentState>, ClientError> {
        self.attachment_state
            .get(key(id, sha))?
            .map(|v| serde_json::from_slice(&v).map_err(corrupt))
            .transpose()
    }

    /// Records where an attachment stands, durably.
    pub fn set_attachment_state(
        &self,
        id: DocId,
        sha: &[u8; 32],
        state: &AttachmentState,
    ) -> Result<(), ClientError> {
        let value = serde_json::to_vec(state).map_err(corrupt)?;
        self.attachment_state.insert(key(id, sha), &value)?;
        self.flush()
    }

    /// Every attachment waiting to be uploaded, by record.
    pub fn pending_uploads(&self) -> Result<Vec<(DocId, [u8; 32])>, ClientError> {
        let mut out = Vec::new();
        for item in self.attachment_state.scan_prefix(b"") {
            let (k, v) = item?;
            let state: AttachmentState = serde_json::from_slice(&v).map_err(corrupt)?;
            if state.upload != UploadState::Pending {
                continue;
            }
            let (Ok(id), Ok(sha)) = (
                <[u8; 16]>::try_from(&k[..16.min(k.len())]),
                <[u8; 32]>::try_from(&k[16.min(k.len())..]),
            ) else {
                return Err(corrupt("a key of the wrong length"));
            };
            out.push((DocId::from_bytes(id), sha));
        }
        Ok(out)
    }

    /// How many bytes of an attachment are held (a prefix).
    pub fn attachment_held(&self, id: DocId, sha: &[u8; 32]) -> Result<u64, ClientError> {
        let mut held = 0u64;
        for item in self.attachments.scan_prefix(&key(id, sha)) {
            let (_, piece) = item?;
            held += piece.len() as u64;
        }
        Ok(held)
    }

    /// Adds downloaded bytes at `offset`, which must be where the held
    /// bytes end on a piece boundary; durable before it returns.
    pub fn append_attachment(
        &self,
        id: DocId,
        sha: &[u8; 32],
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), ClientError> {
        if !offset.is_multiple_of(PIECE_BYTES as u64) {
            return Err(corrupt("a download resumed off a piece boundary"));
        }
        let first = offset / PIECE_BYTES as u64;
        for (i, piece) in bytes.chunks(PIECE_BYTES).enumerate() {
            let n = u32::try_from(first + i as u64).map_err(|_| corrupt("attachment too large"))?;
            self.attachments.insert(piece_key(id, sha, n), piece)?;
        }
        self.flush()
    }

    /// Up to `len` bytes of an attachment from `offset`.
    pub fn read_attachment(
        &self,
        id: DocId,
        sha: &[u8; 32],
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::with_capacity(len.min(1 << 20));
        let mut n = offset / PIECE_BYTES as u64;
        let mut skip = (offset % PIECE_BYTES as u64) as usize;
        while out.len() < len {
            let Ok(index) = u32::try_from(n) else { break };
            let Some(piece) = self.attachments.get(piece_key(id, sha, index))? else {
                break;
            };
            let take = (piece.len().saturating_sub(skip)).min(len - out.len());
            out.extend_from_slice(&piece[skip.min(piece.len())..skip.min(piece.len()) + take]);
            skip = 0;
            n += 1;
            if piece.len() < PIECE_BYTES {
                break;
            }
        }
        Ok(out)
    }

    fn remove_pieces(&self, id: DocId, sha: &[u8; 32]) -> Result<(), ClientError> {
        for k in self.attachments.keys_with_prefix(&key(id, sha)) {
            self.attachments.remove(k?)?;
        }
        Ok(())
    }

    /// Forgets an attachment's bytes (kept: nothing), durably.
    pub fn remove_attachment(&self, id: DocId, sha: &[u8; 32]) -> Result<(), ClientError> {
        self.remove_pieces(id, sha)?;
        self.attachment_state.remove(key(id, sha))?;
        self.flush()
    }

    /// Forgets the bytes held of an unfinished download, keeping its
    /// state, so it starts again.
    pub fn restart_download(&self, id: DocId, sha: &[u8; 32]) -> Result<(), ClientError> {
        self.remove_pieces(id, sha)?;
        self.flush()
    }

    /// Forgets every attachment of record `id` (it was deleted or erased).
    pub(super) fn remove_attachments_of(&self, id: DocId) -> Result<(), ClientError> {
        for k in self.attachments.keys_with_prefix(id.as_bytes()) {
            self.attachments.remove(k?)?;
        }
        for k in self.attachment_state.keys_with_prefix(id.as_bytes()) {
            self.attachment_state.remove(k?)?;
        }
        Ok(())
    }
}
