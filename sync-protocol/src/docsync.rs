//! Pure functions over automerge documents that both sides of a session
//! use: which changes to send, how to apply what arrived, and how to fold
//! acknowledged heads into what a client knows the server holds.

use std::collections::BTreeSet;

use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use crate::message::{to_hashes, to_heads, Head};

/// Why bytes from a peer could not be applied to a document.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Bytes that are not automerge changes or documents.
    #[error("corrupt automerge data: {0}")]
    Corrupt(String),
}

/// Concatenates changes into the chunk form `load_incremental` reads.
pub fn encode_changes<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Vec<u8> {
    let mut out = Vec::new();
    for c in changes {
        out.extend_from_slice(c.raw_bytes());
    }
    out
}

/// The changes in `doc` that a peer holding `known` lacks.
pub fn changes_since(doc: &Automerge, known: &[Head]) -> Vec<Change> {
    doc.get_changes(&to_hashes(known))
}

/// Parses raw change bytes sent one change per element, refusing corrupt
/// ones before anything touches a document.
pub fn parse_changes(raw: &[serde_bytes::ByteBuf]) -> Result<Vec<Change>, ApplyError> {
    raw.iter()
        .map(|b| Change::from_bytes(b.to_vec()).map_err(|e| ApplyError::Corrupt(e.to_string())))
        .collect()
}

/// Applies chunk bytes (changes or a saved document) to `doc`.
pub fn apply_chunks(doc: &mut Automerge, data: &[u8]) -> Result<(), ApplyError> {
    if data.is_empty() {
        return Ok(());
    }
    doc.load_incremental(data)
        .map(|_| ())
        .map_err(|e| ApplyError::Corrupt(e.to_string()))
}

/// Which of `heads` the document does not have (yet): non-empty means the
/// sender assumed a base we lack, so the two sides must fall back to the
/// automerge sync protocol for this document.
pub fn missing(doc: &Automerge, heads: &[Head]) -> Vec<Head> {
    to_heads(&doc.get_missing_deps(&to_hashes(heads)))
}

/// What a client may treat as stored on the server after learning that the
/// server holds `more` in addition to `known`. Hashes the document does not
/// hold are dropped: they cannot serve as a base for a push. When the union
/// covers the whole document the answer collapses to the document's heads,
/// which keeps the stored set at the size of the heads.
pub fn merge_known(doc: &Automerge, known: &[Head], more: &[Head]) -> Vec<Head> {
    let union: BTreeSet<ChangeHash> = known
        .iter()
        .chain(more.iter())
        .copied()
        .map(ChangeHash::from)
        .collect();
    let union: Vec<ChangeHash> = union.into_iter().collect();
    let absent: BTreeSet<ChangeHash> = doc.get_missing_deps(&union).into_iter().collect();
    let present: Vec<ChangeHash> = union.into_iter().filter(|h| !absent.contains(h)).collect();
    if doc.get_changes(&present).is_empty() {
        to_heads(&doc.get_heads())
    } else {
        to_heads(&present)
    }
}

/// What applying a push did to the server's copy.
#[derive(Debug)]
pub struct Applied {
    /// New changes, as chunk bytes to append to the stored log (empty if the
    /// push held nothing new).
    pub new_chunk: Vec<u8>,
    /// The server's heads afterwards.
    pub heads: Vec<Head>,
    /// What the pushing client lacks, as chunk bytes.
    pub reply: Vec<u8>,
    /// True if the push built on changes we do not hold; its changes wait in
    /// automerge's queue and the sync protocol must fill the gap.
    pub base_missing: bool,
}

/// Applies a client's changes to the server's copy of a document.
pub fn apply_push(
    doc: &mut Automerge,
    changes: Vec<Change>,
    client_heads: &[Head],
) -> Result<Applied, ApplyError> {
    let before = doc.get_heads();
    doc.apply_changes(changes)
        .map_err(|e| ApplyError::Corrupt(e.to_string()))?;
    let new_chunk = if doc.get_heads() == before {
        Vec::new()
    } else {
        encode_changes(&doc.get_changes(&before))
    };
    let base_missing = !missing(doc, client_heads).is_empty();
    let reply = if base_missing {
        Vec::new()
    } else {
        encode_changes(&changes_since(doc, client_heads))
    };
    Ok(Applied {
        new_chunk,
        heads: to_heads(&doc.get_heads()),
        reply,
        base_missing,
    })
}

/// True when the document holds changes the server does not (as far as
/// `known` says).
pub fn has_unacknowledged(doc: &Automerge, known: &[Head]) -> bool {
    !changes_since(doc, known).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::ROOT;

    fn doc_with(field: &str, value: &str) -> Automerge {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, field, value).unwrap();
        tx.commit();
        doc
    }

    #[test]
    fn known_collapses_to_heads_once_everything_is_acknowledged() {
        let doc = doc_with("title", "baraza");
        let heads = to_heads(&doc.get_heads());
        assert!(has_unacknowledged(&doc, &[]));
        let known = merge_known(&doc, &[], &heads);
        assert_eq!(known, heads);
        assert!(!has_unacknowledged(&doc, &known));
    }

    #[test]
    fn unknown_hashes_are_not_kept_as_known() {
        let doc = doc_with("title", "baraza");
        let stranger = Head::from(ChangeHash([7; 32]));
        let known = merge_known(&doc, &[], &[stranger]);
        assert!(!known.contains(&stranger));
        assert!(has_unacknowledged(&doc, &known));
    }

    #[test]
    fn changes_since_known_apply_on_a_replica() {
        let mut a = doc_with("title", "one");
        let mut b = Automerge::new();
        apply_chunks(&mut b, &a.save()).unwrap();
        let base = to_heads(&a.get_heads());
        let mut tx = a.transaction();
        tx.put(ROOT, "place", "market").unwrap();
        tx.commit();
        let delta = changes_since(&a, &base);
        assert_eq!(delta.len(), 1);
        apply_chunks(&mut b, &encode_changes(&delta)).unwrap();
        assert_eq!(a.get_heads(), b.get_heads());
        assert!(missing(&b, &to_heads(&a.get_heads())).is_empty());
    }

    #[test]
    fn corrupt_bytes_are_an_error() {
        let mut doc = Automerge::new();
        assert!(apply_chunks(&mut doc, b"\x85\x6f\x4a\x83garbage").is_err());
        assert!(parse_changes(&[serde_bytes::ByteBuf::from(b"nope".to_vec())]).is_err());
    }
}
