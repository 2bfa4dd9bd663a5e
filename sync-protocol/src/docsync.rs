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
    /// A chunk of a kind devices may not send: a compressed change, a
    /// whole document or a bundle. Their decoded size is only known after
    /// inflating them, and the SDK never sends them.
    #[error(
        "{0} chunks are not accepted from devices; send each change uncompressed, as the SDK does"
    )]
    Encoding(&'static str),
    /// The changes hold more operations than allowed once decoded.
    #[error("changes holding {ops} operations exceed the limit of {limit} per message")]
    TooManyOps {
        /// Operations found so far.
        ops: usize,
        /// Operations allowed.
        limit: usize,
    },
    /// The automerge library panicked on these bytes. The document it was
    /// working on may be half-changed and must not be used again.
    #[error("automerge could not process these changes (internal panic: {0})")]
    Panicked(String),
}

/// The four bytes every automerge chunk starts with.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// What an automerge chunk holds, read from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// A saved document (its columns may be DEFLATE-compressed).
    Document,
    /// One change, uncompressed.
    Change,
    /// One DEFLATE-compressed change.
    Compressed,
    /// Several changes in one chunk.
    Bundle,
    /// A type this library does not know.
    Unknown(u8),
}

impl ChunkKind {
    fn name(self) -> &'static str {
        match self {
            ChunkKind::Document => "document",
            ChunkKind::Change => "change",
            ChunkKind::Compressed => "compressed change",
            ChunkKind::Bundle => "bundle",
            ChunkKind::Unknown(_) => "unknown",
        }
    }
}

/// Splits concatenated automerge chunks at their headers (magic, checksum,
/// type, length) without decoding or inflating any of them.
pub fn split_chunks(data: &[u8]) -> Result<Vec<(ChunkKind, &[u8])>, ApplyError> {
    let corrupt = |why: &str| ApplyError::Corrupt(why.to_string());
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.len() < 9 || rest[..4] != CHUNK_MAGIC {
            return Err(corrupt(
                "a chunk does not start with automerge's magic bytes",
            ));
        }
        let kind = match rest[8] {
            0 => ChunkKind::Document,
            1 => ChunkKind::Change,
            2 => ChunkKind::Compressed,
            3 => ChunkKind::Bundle,
            other => ChunkKind::Unknown(other),
        };
        let (len, used) = uleb128(&rest[9..]).ok_or_else(|| corrupt("bad chunk length"))?;
        let start = 9 + used;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= rest.len())
            .ok_or_else(|| corrupt("a chunk is longer than the bytes that hold it"))?;
        out.push((kind, &rest[..end]));
        rest = &rest[end..];
    }
    Ok(out)
}

/// Checks concatenated chunks against the checksums in their headers
/// without decoding them (a compressed change's checksum is of its
/// inflated bytes, so those are only split). Returns how many there are.
pub fn verify_chunks(data: &[u8]) -> Result<usize, ApplyError> {
    use sha2::{Digest, Sha256};
    let chunks = split_chunks(data)?;
    for (i, (kind, chunk)) in chunks.iter().enumerate() {
        if *kind == ChunkKind::Compressed {
            continue;
        }
        let sum = Sha256::digest(&chunk[8..]);
        if sum[..4] != chunk[4..8] {
            return Err(ApplyError::Corrupt(format!(
                "chunk {i} ({}) fails its checksum",
                kind.name()
            )));
        }
    }
    Ok(chunks.len())
}

/// The actors whose changes concatenated chunks hold, read from the chunk
/// headers alone (nothing is decoded or inflated): a change's author, a
/// saved document's actor table. Compressed changes and bundles, which
/// the server never stores from devices, are skipped, as are chunks that
/// do not parse: naming authors is a courtesy, never a check.
pub fn chunk_actors(data: &[u8]) -> Vec<Vec<u8>> {
    let Ok(chunks) = split_chunks(data) else {
        return Vec::new();
    };
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (kind, chunk) in chunks {
        let mut r = Reader {
            bytes: chunk,
            at: 9,
        };
        if r.uleb().is_none() {
            continue;
        }
        match kind {
            ChunkKind::Change => {
                let Some(deps) = r.uleb().and_then(|d| d.checked_mul(32)) else {
                    continue;
                };
                if r.take(deps).is_none() {
                    continue;
                }
                if let Some(actor) = r.uleb().and_then(|n| r.take(n)) {
                    out.push(actor.to_vec());
                }
            }
            ChunkKind::Document => {
                let Some(count) = r.uleb() else { continue };
                for _ in 0..count {
                    match r.uleb().and_then(|n| r.take(n)) {
                        Some(actor) => out.push(actor.to_vec()),
                        None => break,
                    }
                }
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// An unsigned LEB128 number and how many bytes it took; None if it runs
/// past the input or past 64 bits.
fn uleb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && part > 1 {
            return None;
        }
        value |= part << shift;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

thread_local! {
    /// How deep this thread is inside [`contained`] calls.
    static CONTAINED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// True while this thread runs inside [`contained`]: a panic hook can tell
/// a caught library panic from a bug that will unwind further.
pub fn is_contained() -> bool {
    CONTAINED.with(|c| c.get() > 0)
}

/// Runs automerge on bytes from a peer, turning a panic inside the library
/// into [`ApplyError::Panicked`]: a crafted change must cost its sender a
/// refusal, not the server a poisoned document. Whatever `f` was changing
/// must be dropped when this returns that error.
pub fn contained<T>(f: impl FnOnce() -> Result<T, ApplyError>) -> Result<T, ApplyError> {
    CONTAINED.with(|c| c.set(c.get() + 1));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(c.get().saturating_sub(1)));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(ApplyError::Panicked(message))
        }
    }
}

/// Operations a change holds once decoded.
pub fn ops_in(change: &Change) -> usize {
    change.len()
}

/// The spec of a change's action column (column 4, run-length-encoded
/// integers): it has one entry per operation.
const ACTION_COLUMN_SPEC: u64 = (4 << 4) | 2;

/// How many operations a change chunk holds, read from the run lengths of
/// its action column without expanding them: automerge's own parse walks
/// every operation (seconds for the ten million a 54-byte change can
/// claim), so the limit must be applied before it runs.
pub fn count_ops(chunk: &[u8]) -> Result<u64, ApplyError> {
    let corrupt = |why: &str| ApplyError::Corrupt(format!("change chunk: {why}"));
    let mut r = Reader {
        bytes: chunk,
        at: 8,
    };
    r.take(1).ok_or_else(|| corrupt("no type"))?;
    let len = r.uleb().ok_or_else(|| corrupt("no length"))?;
    if usize::try_from(len).ok() != Some(chunk.len() - r.at) {
        return Err(corrupt("length does not match"));
    }
    let deps = r.uleb().ok_or_else(|| corrupt("no dependencies"))?;
    r.take(
        deps.checked_mul(32)
            .ok_or_else(|| corrupt("dependencies"))?,
    )
    .ok_or_else(|| corrupt("dependencies"))?;
    let actor = r.uleb().ok_or_else(|| corrupt("no actor"))?;
    r.take(actor).ok_or_else(|| corrupt("actor"))?;
    for field in ["sequence number", "start op", "time"] {
        r.uleb().ok_or_else(|| corrupt(field))?;
    }
    let message = r.uleb().ok_or_else(|| corrupt("no message"))?;
    r.take(message).ok_or_else(|| corrupt("message"))?;
    let others = r.uleb().ok_or_else(|| corrupt("no actors"))?;
    for _ in 0..others {
        let n = r.uleb().ok_or_else(|| corrupt("actor"))?;
        r.take(n).ok_or_else(|| corrupt("actor"))?;
    }
    let columns = r.uleb().ok_or_else(|| corrupt("no columns"))?;
    let mut specs = Vec::new();
    for _ in 0..columns.min(64) {
        let spec = r.uleb().ok_or_else(|| corrupt("column"))?;
        let len = r.uleb().ok_or_else(|| corrupt("column"))?;
        specs.push((spec, len));
    }
    let mut ops = 0u64;
    for (spec, len) in specs {
        let data = r.take(len).ok_or_else(|| corrupt("column data"))?;
        if spec == ACTION_COLUMN_SPEC {
            ops = rle_entries(data).ok_or_else(|| corrupt("action column"))?;
        }
    }
    Ok(ops)
}

/// Entries in a run-length-encoded integer column: runs (count, value),
/// literal runs (-count, values) and null runs (0, count).
fn rle_entries(data: &[u8]) -> Option<u64> {
    let mut r = Reader { bytes: data, at: 0 };
    let mut total = 0u64;
    while r.at < data.len() {
        let count = r.sleb()?;
        if count > 0 {
            r.uleb()?;
            total = total.checked_add(count as u64)?;
        } else if count < 0 {
            let n = count.unsigned_abs();
            for _ in 0..n {
                r.uleb()?;
            }
            total = total.checked_add(n)?;
        } else {
            total = total.checked_add(r.uleb()?)?;
        }
    }
    Some(total)
}

/// A cursor over bytes for the header walks above.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let end = self.at.checked_add(usize::try_from(n).ok()?)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn uleb(&mut self) -> Option<u64> {
        let (v, used) = uleb128(self.bytes.get(self.at..)?)?;
        self.at += used;
        Some(v)
    }

    fn sleb(&mut self) -> Option<i64> {
        let mut value: i64 = 0;
        let mut shift = 0u32;
        loop {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            if shift >= 64 {
                return None;
            }
            value |= i64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                return Some(value);
            }
        }
    }
}

/// Parses one change sent by a device: exactly one uncompressed change
/// chunk, holding at most `ops_max` operations. Compressed ones are
/// refused unread, so no input is inflated; the operations are counted
/// before automerge walks them.
fn parse_device_change(bytes: &[u8], ops_max: usize) -> Result<Change, ApplyError> {
    match split_chunks(bytes)?.as_slice() {
        [(ChunkKind::Change, _)] => {}
        [(kind, _)] => return Err(ApplyError::Encoding(kind.name())),
        _ => {
            return Err(ApplyError::Corrupt(
                "a change element must hold exactly one change chunk".into(),
            ))
        }
    }
    let ops = count_ops(bytes)?;
    if ops > ops_max as u64 {
        return Err(ApplyError::TooManyOps {
            ops: usize::try_from(ops).unwrap_or(usize::MAX),
            limit: ops_max,
        });
    }
    let change = contained(|| {
        Change::from_bytes(bytes.to_vec()).map_err(|e| ApplyError::Corrupt(e.to_string()))
    })?;
    if change.len() as u64 != ops {
        return Err(ApplyError::Corrupt(format!(
            "change claims {ops} operations in its action column but holds {}",
            change.len()
        )));
    }
    Ok(change)
}

/// Parses the changes of a device's sync message, checking each chunk as
/// [`parse_changes`] does, and returns the message.
pub fn parse_device_sync(
    data: &[u8],
    ops_max: usize,
) -> Result<(automerge::sync::Message, Vec<Change>), ApplyError> {
    let msg = contained(|| {
        automerge::sync::Message::decode(data).map_err(|e| ApplyError::Corrupt(e.to_string()))
    })?;
    let mut budget = OpBudget::new(ops_max);
    let mut changes = Vec::new();
    for entry in msg.changes.iter() {
        for (kind, chunk) in split_chunks(entry)? {
            if kind != ChunkKind::Change {
                return Err(ApplyError::Encoding(kind.name()));
            }
            changes.push(budget.parse(chunk)?);
        }
    }
    Ok((msg, changes))
}

/// The operations the changes of one message may hold, spent change by
/// change, so the refusal names the message's total and its limit.
struct OpBudget {
    used: usize,
    max: usize,
}

impl OpBudget {
    fn new(max: usize) -> OpBudget {
        OpBudget { used: 0, max }
    }

    /// Parses one change against what is left. `parse_device_change`
    /// checks the counted operations against it and that the change holds
    /// exactly those, so `used` never passes `max`.
    fn parse(&mut self, bytes: &[u8]) -> Result<Change, ApplyError> {
        let used = self.used;
        let change = parse_device_change(bytes, self.max - used).map_err(|e| match e {
            ApplyError::TooManyOps { ops: more, .. } => ApplyError::TooManyOps {
                ops: used.saturating_add(more),
                limit: self.max,
            },
            other => other,
        })?;
        self.used += ops_in(&change);
        Ok(change)
    }
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
/// ones, compressed ones and more than `ops_max` operations in all before
/// anything touches a document. Returns the changes and their operations.
pub fn parse_changes(
    raw: &[serde_bytes::ByteBuf],
    ops_max: usize,
) -> Result<(Vec<Change>, usize), ApplyError> {
    let mut budget = OpBudget::new(ops_max);
    let changes = raw
        .iter()
        .map(|bytes| budget.parse(bytes))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((changes, budget.used))
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
    /// The same changes, oldest first, for whoever judges them.
    pub new_changes: Vec<Change>,
    /// The server's heads afterwards.
    pub heads: Vec<Head>,
    /// What the pushing client lacks, as chunk bytes.
    pub reply: Vec<u8>,
    /// True if the push built on changes we do not hold; its changes wait in
    /// automerge's queue and the sync protocol must fill the gap.
    pub base_missing: bool,
}

/// Refuses changes that break the counters automerge trusts without
/// checking (and asserts on, or silently drops operations over, halfway
/// through applying them): each actor's sequence numbers run on without a
/// gap, a change's operations are numbered above those of every change it
/// depends on, and within 32 bits.
pub fn check_counters(doc: &Automerge, changes: &[Change]) -> Result<(), ApplyError> {
    use std::collections::HashMap;
    let bad = |c: &Change, why: String| {
        Err(ApplyError::Corrupt(format!(
            "change {} of actor {}: {why}",
            c.hash(),
            c.actor_id()
        )))
    };
    let fresh: Vec<&Change> = changes
        .iter()
        .filter(|c| doc.get_change_meta_by_hash(&c.hash()).is_none())
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let mut last_seq: HashMap<automerge::ActorId, u64> = HashMap::new();
    for meta in doc.get_changes_meta(&[]) {
        let seq = last_seq.entry(meta.actor.into_owned()).or_insert(0);
        *seq = (*seq).max(meta.seq);
    }
    let mut max_ops: HashMap<ChangeHash, u64> = HashMap::new();
    for c in fresh {
        // A change whose base is missing waits in automerge's queue (the
        // sync protocol then fills the gap); it is applied, contained,
        // once its dependencies arrive.
        let based = c
            .deps()
            .iter()
            .all(|d| max_ops.contains_key(d) || doc.get_change_meta_by_hash(d).is_some());
        if !based {
            continue;
        }
        let ops = c.len() as u64;
        let max_op = match c.start_op().get().checked_add(ops) {
            Some(end) if end <= u64::from(u32::MAX) => end.saturating_sub(1),
            _ => return bad(c, "its operation counters run past 32 bits".into()),
        };
        let previous = last_seq.get(c.actor_id()).copied().unwrap_or(0);
        if c.seq() != previous + 1 {
            return bad(
                c,
                format!("sequence number {} does not follow {previous}", c.seq()),
            );
        }
        for dep in c.deps() {
            let dep_max = match max_ops.get(dep) {
                Some(m) => Some(*m),
                None => doc.get_change_meta_by_hash(dep).map(|m| m.max_op),
            };
            if dep_max.is_some_and(|m| c.start_op().get() <= m) {
                return bad(
                    c,
                    "its operations are numbered at or below those of a change it depends on"
                        .into(),
                );
            }
        }
        last_seq.insert(c.actor_id().clone(), c.seq());
        max_ops.insert(c.hash(), max_op);
    }
    Ok(())
}

/// Applies a client's changes to the server's copy of a document. Every
/// automerge call on them is [`contained`]: after an
/// [`ApplyError::Panicked`] the document must be rebuilt.
pub fn apply_push(
    doc: &mut Automerge,
    changes: Vec<Change>,
    client_heads: &[Head],
) -> Result<Applied, ApplyError> {
    contained(|| apply_push_inner(doc, changes, client_heads))
}

fn apply_push_inner(
    doc: &mut Automerge,
    changes: Vec<Change>,
    client_heads: &[Head],
) -> Result<Applied, ApplyError> {
    let before = doc.get_heads();
    check_counters(doc, &changes)?;
    doc.apply_changes(changes)
        .map_err(|e| ApplyError::Corrupt(e.to_string()))?;
    // Computed here, inside the containment: for some crafted changes
    // automerge reports success but panics when asked for them back.
    let new_changes = if doc.get_heads() == before {
        Vec::new()
    } else {
        doc.get_changes(&before)
    };
    let new_chunk = encode_changes(&new_changes);
    let base_missing = !missing(doc, client_heads).is_empty();
    let reply = if base_missing {
        Vec::new()
    } else {
        encode_changes(&changes_since(doc, client_heads))
    };
    Ok(Applied {
        new_chunk,
        new_changes,
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
    fn the_actors_of_changes_and_of_a_saved_document_are_read_from_headers() {
        let mut a = doc_with("place", "market");
        a.set_actor(automerge::ActorId::from(vec![1u8; 24]));
        let mut b = a.fork();
        b.set_actor(automerge::ActorId::from(vec![2u8; 24]));
        let mut tx = b.transaction();
        tx.put(automerge::ROOT, "place", "school").unwrap();
        tx.commit();
        let mut tx = a.transaction();
        tx.put(automerge::ROOT, "title", "lighting").unwrap();
        tx.commit();
        a.merge(&mut b).unwrap();
        let mut expected: Vec<Vec<u8>> = a
            .get_changes(&[])
            .iter()
            .map(|c| c.actor_id().to_bytes().to_vec())
            .collect();
        expected.sort();
        expected.dedup();
        assert_eq!(
            expected.len(),
            3,
            "the first change's random actor, 1 and 2"
        );
        assert_eq!(chunk_actors(&a.save()), expected);
        assert_eq!(chunk_actors(&encode_changes(&a.get_changes(&[]))), expected);
        assert!(chunk_actors(b"not automerge").is_empty());
    }

    #[test]
    fn corrupt_bytes_are_an_error() {
        let mut doc = Automerge::new();
        assert!(apply_chunks(&mut doc, b"\x85\x6f\x4a\x83garbage").is_err());
        assert!(parse_changes(&[serde_bytes::ByteBuf::from(b"nope".to_vec())], 10).is_err());
    }

    fn one_change(text_len: usize) -> Change {
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        let text = tx
            .put_object(ROOT, "notes", automerge::ObjType::Text)
            .unwrap();
        tx.splice_text(&text, 0, 0, &"a".repeat(text_len)).unwrap();
        tx.commit();
        doc.get_changes(&[]).remove(0)
    }

    #[test]
    fn compressed_changes_are_refused_without_inflating_them() {
        let mut change = one_change(4096);
        let compressed = change.bytes().to_vec();
        assert_eq!(
            split_chunks(&compressed).unwrap()[0].0,
            ChunkKind::Compressed
        );
        let err = parse_changes(&[serde_bytes::ByteBuf::from(compressed)], 1 << 20).unwrap_err();
        assert!(
            matches!(err, ApplyError::Encoding("compressed change")),
            "{err}"
        );
        // The same change uncompressed is accepted.
        let raw = serde_bytes::ByteBuf::from(change.raw_bytes().to_vec());
        let (parsed, ops) = parse_changes(&[raw], 1 << 20).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(ops, 4097);
    }

    #[test]
    fn operations_are_counted_against_the_limit_once_decoded() {
        let change = one_change(1000);
        let raw = serde_bytes::ByteBuf::from(change.raw_bytes().to_vec());
        assert_eq!(count_ops(&raw).unwrap(), 1001);
        let err = parse_changes(&[raw.clone(), raw], 1500).unwrap_err();
        assert!(
            matches!(err, ApplyError::TooManyOps { limit: 1500, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_run_length_bomb_is_refused_before_automerge_walks_it() {
        // 54 bytes whose action column is one run of ten million entries
        // (found while fuzzing automerge 0.12; its own parse takes seconds).
        let bomb = hex::decode(
            "856f4a836d869bac012c0001010101000000051506340442055605700580ade204016b80ade20480ade2040180ade2040080ade20400",
        )
        .unwrap();
        assert_eq!(count_ops(&bomb).unwrap(), 10_000_000);
        let err = parse_changes(&[serde_bytes::ByteBuf::from(bomb)], 100_000).unwrap_err();
        assert!(
            matches!(
                err,
                ApplyError::TooManyOps {
                    ops: 10_000_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn chunks_split_at_their_headers_and_lies_about_length_are_corrupt() {
        let a = one_change(3);
        let b = one_change(5);
        let both = encode_changes([&a, &b]);
        let parts = split_chunks(&both).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, a.raw_bytes());
        assert_eq!(parts[1].1, b.raw_bytes());
        assert!(split_chunks(&both[..both.len() - 1]).is_err());
        let mut lying = a.raw_bytes().to_vec();
        lying[9] = 0xff;
        lying.truncate(12);
        assert!(split_chunks(&lying).is_err());
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let a = one_change(50);
        let mut doc = Automerge::new();
        doc.apply_changes([a.clone()]).unwrap();
        let mut data = encode_changes([&a]);
        data.extend(doc.save());
        assert_eq!(verify_chunks(&data).unwrap(), 2);
        for at in [20, data.len() - 3] {
            let mut bad = data.clone();
            bad[at] ^= 0x40;
            assert!(verify_chunks(&bad).is_err(), "flip at {at} not caught");
        }
    }

    #[test]
    fn a_panic_inside_the_library_becomes_an_error() {
        let result: Result<(), ApplyError> = contained(|| panic!("collector assertion"));
        assert!(matches!(result, Err(ApplyError::Panicked(m)) if m == "collector assertion"));
    }
}
