//! Cutting what the server sends to the frame limit, and the error code
//! for bytes that do not apply.

use automerge::Automerge;

use crate::docsync::{self, ApplyError};
use crate::message::ErrorCode;

/// Bytes of a `Changes` frame besides its data and heads (type, numbers,
/// document id, CBOR headers), with room to spare.
pub(super) const CHANGES_FRAME_OVERHEAD: usize = 256;

/// The error code a peer is told for bytes that could not be applied.
pub fn apply_error_code(err: &ApplyError) -> ErrorCode {
    match err {
        ApplyError::TooManyOps { .. } => ErrorCode::TooManyChanges,
        ApplyError::Corrupt(_) | ApplyError::Encoding(_) | ApplyError::Panicked(_) => {
            ErrorCode::CorruptChanges
        }
    }
}

/// Cuts a document's bytes into parts of at most `budget` bytes that each
/// apply on their own after the ones before: at chunk boundaries, and a
/// save too large for one frame is re-encoded as its changes. A single
/// change larger than the budget goes alone (pushes never admit one).
pub(super) fn split_for_frames(data: Vec<u8>, budget: usize) -> Vec<Vec<u8>> {
    let Ok(chunks) = docsync::split_chunks(&data) else {
        return vec![data];
    };
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    for (kind, chunk) in chunks {
        if chunk.len() > budget && kind == docsync::ChunkKind::Document {
            match Automerge::load(chunk) {
                Ok(doc) => {
                    pieces.extend(doc.get_changes(&[]).iter().map(|c| c.raw_bytes().to_vec()))
                }
                Err(_) => pieces.push(chunk.to_vec()),
            }
        } else {
            pieces.push(chunk.to_vec());
        }
    }
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for piece in pieces {
        match parts.last_mut() {
            Some(part) if part.len() + piece.len() <= budget => part.extend_from_slice(&piece),
            _ => parts.push(piece),
        }
    }
    parts
}
