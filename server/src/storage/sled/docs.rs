//! [`Store`] over sled: the documents, the changes feed and the record
//! index. [`SledStore`] keeps:
//! - `doc_chunks`: (doc, seq) → the chunk of changes written at that feed
//!   position, or the save that folded every chunk up to it in
//!   ([`Store::fold`]; saves folded before that sit at 0). A document is the
//!   concatenation of its chunks, and what a client holding the document
//!   as of position `s` lacks is the chunks after `s`: catch-up and live
//!   push read bytes, they load no document.
//! - `doc_meta`: doc → (latest feed seq, chunk count, position up to which
//!   chunks were compacted into the save).
//! - `feed`: seq → doc, one entry per write. Every write stays, so a
//!   client's cursor always means "every document as of its last write at
//!   or before here" (catch-up skips the repeats of a document it already
//!   sent whole). Trimming entries below every device's cursor is future work.
//! - `doc_log`: (doc, seq) → heads after that write, so catch-up can send a
//!   client only what it lacks since the position its cursor names.
//! - `change_received`: (doc, change hash) → when the server first stored
//!   that change (ms, its own clock), beside the time the change claims.
//! - `record_clock`: doc → the record's claimed times found implausible
//!   ([`ClockSkew`]), for the review desk and exports.
//! - `record_index` (kind | area | state | created_at | doc),
//!   `record_index_by_doc`, `record_access` (kind, area, creator) and
//!   `record_summary` (title, submitted time, conflicts, comment count,
//!   JSON): what listings and read checks need, written with each
//!   admitted write, so neither loads a document.
//! - `doc_snapshots`: doc → a feed position and the document as of it,
//!   saved whole ([`Store::keep_snapshot`]): what a cold start is sent,
//!   with the chunks after it. A copy beside the chunks, which stay.
//! - `meta`: the store id and the clean-shutdown marker.
//!
//! Durability: [`Store::commit`] writes a whole batch in one sled
//! transaction and then flushes. sled 0.34's flush uses `sync_file_range`,
//! which does not flush the disk's write cache (sled issue 1452): after a
//! power cut the newest acknowledged batches may be gone. A kill -9 loses
//! nothing (the data is in the page cache). Either way the store notices
//! that it was not shut down cleanly and takes a new store id, which makes
//! every tablet re-offer what it holds at its next sync: the tablets keep
//! full replicas, so they heal the server.

use std::path::Path;

use baraza_protocol::{DocId, Head, Seq, StoreId};
use baraza_records::ReviewState;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::storage::store::{
    ClockSkew, DocChunks, DocWrite, IndexEntry, ReadScope, RecordAccess, RecordFilter, RecordRow,
    RecordSummary, Store, StoreError, StoredDoc,
};

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}

/// `record_clock` value: times (4) | ahead_ms_max (8) | claimed_ms (8).
fn encode_skew(skew: &ClockSkew) -> [u8; 20] {
    let mut v = [0u8; 20];
    v[..4].copy_from_slice(&skew.times.to_be_bytes());
    v[4..12].copy_from_slice(&skew.ahead_ms_max.to_be_bytes());
    v[12..].copy_from_slice(&skew.claimed_ms.to_be_bytes());
    v
}

fn decode_skew(v: &[u8]) -> Result<ClockSkew, StoreError> {
    let corrupt = || StoreError::Corrupt {
        tree: "record_clock",
        reason: format!("value of {} bytes", v.len()),
    };
    let v: &[u8; 20] = v.try_into().map_err(|_| corrupt())?;
    let mut times = [0u8; 4];
    let mut ahead = [0u8; 8];
    let mut claimed = [0u8; 8];
    times.copy_from_slice(&v[..4]);
    ahead.copy_from_slice(&v[4..12]);
    claimed.copy_from_slice(&v[12..]);
    Ok(ClockSkew {
        times: u32::from_be_bytes(times),
        ahead_ms_max: i64::from_be_bytes(ahead),
        claimed_ms: i64::from_be_bytes(claimed),
    })
}

/// `change_received` key: doc (16) | change hash (32).
fn receipt_key(doc: DocId, change: &Head) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.extend_from_slice(doc.as_bytes());
    k.extend_from_slice(change.as_bytes());
    k
}

fn decode_summary(v: &[u8]) -> Result<RecordSummary, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        tree: "record_summary",
        reason: e.to_string(),
    })
}

fn encode_summary(summary: &RecordSummary) -> Vec<u8> {
    // A struct of plain values always serialises.
    serde_json::to_vec(summary).unwrap_or_default()
}

fn encode_access(access: &RecordAccess) -> Vec<u8> {
    [&access.kind, &access.area, &access.created_by]
        .map(|s| s.replace('\0', ""))
        .join("\0")
        .into_bytes()
}

fn decode_access(v: &[u8]) -> Result<RecordAccess, StoreError> {
    let text = std::str::from_utf8(v).map_err(|e| StoreError::Corrupt {
        tree: "record_access",
        reason: e.to_string(),
    })?;
    let mut parts = text.splitn(3, '\0');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(kind), Some(area), Some(created_by)) => Ok(RecordAccess {
            kind: kind.into(),
            area: area.into(),
            created_by: created_by.into(),
        }),
        _ => Err(StoreError::Corrupt {
            tree: "record_access",
            reason: "expected kind, area and creator".into(),
        }),
    }
}

/// Index key: kind | 0 | area | 0 | state | 0 | created_at (8, biased) | doc.
/// Kind, area and state are text without NUL, so a filter on a leading run
/// of them is a prefix scan.
fn index_key(doc: DocId, e: &IndexEntry) -> Vec<u8> {
    let state = e.state.name();
    let mut k = Vec::with_capacity(e.kind.len() + e.area.len() + state.len() + 27);
    for part in [e.kind.as_str(), e.area.as_str(), state] {
        k.extend(part.bytes().filter(|b| *b != 0));
        k.push(0);
    }
    k.extend_from_slice(&((e.created_at as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(doc.as_bytes());
    k
}

fn parse_index_key(k: &[u8]) -> Option<RecordRow> {
    let mut parts = k.splitn(4, |b| *b == 0);
    let kind = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let area = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let state = ReviewState::parse(std::str::from_utf8(parts.next()?).ok()?)?;
    let rest = parts.next()?;
    if rest.len() != 24 {
        return None;
    }
    let created_at = (u64::from_be_bytes(rest[..8].try_into().ok()?) ^ (1 << 63)) as i64;
    let doc = DocId::from_bytes(rest[8..].try_into().ok()?);
    Some(RecordRow {
        id: doc.to_string(),
        entry: IndexEntry {
            kind,
            area,
            state,
            created_at,
            created_by: String::new(),
            summary: RecordSummary::default(),
        },
    })
}

/// The sled implementation.
pub struct SledStore {
    db: sled::Db,
    chunks: sled::Tree,
    meta_docs: sled::Tree,
    feed: sled::Tree,
    log: sled::Tree,
    index: sled::Tree,
    index_by_doc: sled::Tree,
    access: sled::Tree,
    erased: sled::Tree,
    quarantine: sled::Tree,
    received: sled::Tree,
    clock: sled::Tree,
    summary: sled::Tree,
    /// Record → its snapshot's feed position (8 bytes) and the save.
    snapshots: sled::Tree,
    meta: sled::Tree,
    id: StoreId,
    /// Whether the last stop before this open was clean.
    clean_at_open: bool,
    /// Serialises commits so feed positions follow commit order: the
    /// watermark is then simply the last committed position.
    commit_lock: std::sync::Mutex<Seq>,
    /// Every record in `erased` or `quarantine` (and perhaps a few no
    /// longer there): sled lets one process open the database, so a record
    /// not named here is in neither tree, and every push and every feed
    /// read asks. Names are added before the tree is written and removed
    /// after, so a name here is only ever a hint to read the tree.
    flagged: std::sync::RwLock<Flagged>,
}

#[derive(Default)]
struct Flagged {
    erased: std::collections::HashSet<DocId>,
    quarantined: std::collections::HashSet<DocId>,
}

const CLEAN_KEY: &[u8] = b"clean_shutdown";
/// Reads of a document taken again when a write to it lands meanwhile;
/// past this many the read fails as busy rather than spin.
const LOAD_ATTEMPTS: u32 = 8;
const ID_KEY: &[u8] = b"store_id";

impl SledStore {
    /// Opens (or creates) the store in `db`. `fresh_id` supplies a new store
    /// id when there is none, or when the last stop was not clean.
    pub fn open(db: sled::Db, fresh_id: [u8; 16]) -> Result<SledStore, StoreError> {
        let meta = db.open_tree("meta")?;
        let clean = meta.remove(CLEAN_KEY)?.is_some();
        let id = match meta.get(ID_KEY)? {
            Some(v) if clean && v.len() == 16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&v);
                StoreId::from_bytes(b)
            }
            previous => {
                if previous.is_some() {
                    tracing::warn!(
                        "store was not shut down cleanly; taking a new store id so tablets re-offer their records"
                    );
                }
                meta.insert(ID_KEY, &fresh_id[..])?;
                StoreId::from_bytes(fresh_id)
            }
        };
        db.flush()?;
        let feed = db.open_tree("feed")?;
        let latest = match feed.last()? {
            Some((k, _)) => seq_from(&k, "feed")?,
            None => 0,
        };
        let erased = db.open_tree("erased")?;
        let quarantine = db.open_tree("quarantine")?;
        let mut flagged = Flagged::default();
        for (tree, set, name) in [
            (&erased, &mut flagged.erased, "erased"),
            (&quarantine, &mut flagged.quarantined, "quarantine"),
        ] {
            for key in tree.iter().keys() {
                set.insert(doc_from(&key?, name)?);
            }
        }
        Ok(SledStore {
            chunks: db.open_tree("doc_chunks")?,
            meta_docs: db.open_tree("doc_meta")?,
            log: db.open_tree("doc_log")?,
            index: db.open_tree("record_index")?,
            access: db.open_tree("record_access")?,
            erased,
            quarantine,
            flagged: std::sync::RwLock::new(flagged),
            index_by_doc: db.open_tree("record_index_by_doc")?,
            received: db.open_tree("change_received")?,
            clock: db.open_tree("record_clock")?,
            summary: db.open_tree("record_summary")?,
            snapshots: db.open_tree("doc_snapshots")?,
            feed,
            meta,
            db,
            id,
            clean_at_open: clean,
            commit_lock: std::sync::Mutex::new(latest),
        })
    }

    fn flags(&self) -> std::sync::RwLockReadGuard<'_, Flagged> {
        self.flagged.read().unwrap_or_else(|p| p.into_inner())
    }

    fn flags_mut(&self) -> std::sync::RwLockWriteGuard<'_, Flagged> {
        self.flagged.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a standalone store in a directory (tests, tools).
    pub fn open_path(path: &Path, fresh_id: [u8; 16]) -> Result<SledStore, StoreError> {
        SledStore::open(sled::open(path)?, fresh_id)
    }
}

/// A stored value of a fixed width, or what is wrong with it.
fn fixed<const N: usize>(
    bytes: &[u8],
    tree: &'static str,
    what: &str,
) -> Result<[u8; N], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree,
        reason: format!("{what} of {} bytes", bytes.len()),
    })
}

fn seq_from(bytes: &[u8], tree: &'static str) -> Result<Seq, StoreError> {
    Ok(u64::from_be_bytes(fixed(bytes, tree, "sequence")?))
}

/// The feed position in a `doc_chunks` key (0 for a save compacted before
/// saves were kept at the position they fold up to).
fn chunk_position(key: &[u8]) -> Result<Seq, StoreError> {
    match key.get(16..) {
        Some(seq) => seq_from(seq, "doc_chunks"),
        None => Err(StoreError::Corrupt {
            tree: "doc_chunks",
            reason: format!("key of {} bytes", key.len()),
        }),
    }
}

fn log_key(doc: DocId, seq: Seq) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(doc.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// What `doc_meta` holds of a document. The latest heads are kept here so
/// catch-up, which reads this value anyway, need not search the heads log.
#[derive(Clone, Default)]
struct DocMeta {
    seq: Seq,
    chunks: u32,
    compacted: Seq,
    heads: Vec<Head>,
}

/// doc_meta value: seq (8) | chunks (4) | compacted (8) | heads (32 each).
fn encode_meta(m: &DocMeta) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + 32 * m.heads.len());
    v.extend_from_slice(&m.seq.to_be_bytes());
    v.extend_from_slice(&m.chunks.to_be_bytes());
    v.extend_from_slice(&m.compacted.to_be_bytes());
    v.extend_from_slice(&encode_heads(&m.heads));
    v
}

fn decode_meta(v: &[u8]) -> Result<DocMeta, StoreError> {
    if v.len() < 20 {
        return Err(StoreError::Corrupt {
            tree: "doc_meta",
            reason: format!("value of {} bytes", v.len()),
        });
    }
    let mut c = [0u8; 4];
    c.copy_from_slice(&v[8..12]);
    Ok(DocMeta {
        seq: seq_from(&v[..8], "doc_meta")?,
        chunks: u32::from_be_bytes(c),
        compacted: seq_from(&v[12..20], "doc_meta")?,
        heads: decode_heads(&v[20..])?,
    })
}

fn encode_heads(heads: &[Head]) -> Vec<u8> {
    crate::storage::store::heads_bytes(heads)
}

fn decode_heads(v: &[u8]) -> Result<Vec<Head>, StoreError> {
    crate::storage::store::heads_from_bytes(v, "doc_log")
}

fn doc_from(bytes: &[u8], tree: &'static str) -> Result<DocId, StoreError> {
    Ok(DocId::from_bytes(fixed(bytes, tree, "document id")?))
}

impl Store for SledStore {
    fn opened_clean(&self) -> bool {
        self.clean_at_open
    }

    fn all_docs(&self) -> Result<Vec<DocId>, StoreError> {
        self.meta_docs
            .iter()
            .keys()
            .map(|k| doc_from(&k?, "doc_meta"))
            .collect()
    }

    fn index_rows_agree(&self, doc: DocId) -> Result<Option<String>, StoreError> {
        let key = doc.as_bytes();
        let by_doc = self.index_by_doc.get(key)?;
        let access = self.access.get(key)?;
        Ok(match (by_doc, access) {
            (None, None) => None,
            (Some(k), Some(_)) if self.index.contains_key(&k)? => None,
            (Some(_), Some(_)) => Some("its index row is missing".into()),
            (Some(_), None) => Some("its access row is missing".into()),
            (None, Some(_)) => Some("its index row is missing".into()),
        })
    }

    fn store_id(&self) -> StoreId {
        self.id
    }

    fn feed_watermark(&self) -> Result<Seq, StoreError> {
        Ok(self
            .commit_lock
            .lock()
            .map(|g| *g)
            .unwrap_or_else(|p| *p.into_inner()))
    }

    fn load(&self, doc: DocId) -> Result<Option<StoredDoc>, StoreError> {
        // The scan is not one transaction with the meta it is checked
        // against: a commit or a fold landing during it changes the meta,
        // and then the read is simply taken again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(raw) = self.meta_docs.get(doc.as_bytes())? else {
                return Ok(None);
            };
            let meta = decode_meta(&raw)?;
            let mut bytes = Vec::new();
            let mut positions = Vec::new();
            for item in self.chunks.scan_prefix(doc.as_bytes()) {
                let (k, v) = item?;
                bytes.extend_from_slice(&v);
                positions.push(chunk_position(&k)?);
            }
            if positions.len() == meta.chunks as usize {
                return Ok(Some(StoredDoc {
                    bytes,
                    positions,
                    seq: meta.seq,
                    heads: meta.heads,
                }));
            }
            let moved = self.meta_docs.get(doc.as_bytes())?.as_ref() != Some(&raw);
            if moved && attempts >= LOAD_ATTEMPTS {
                // Not damage: the caller refuses for now and is asked again.
                return Err(StoreError::Db(Box::new(std::io::Error::other(format!(
                    "record {doc} changed under {attempts} reads in a row"
                )))));
            }
            if !moved {
                // A chunk lost (or left over) says the database lost writes.
                return Err(StoreError::Corrupt {
                    tree: "doc_chunks",
                    reason: format!(
                        "record {doc} has {} stored chunks but {} were committed",
                        positions.len(),
                        meta.chunks
                    ),
                });
            }
        }
    }

    fn fold(&self, doc: DocId, chunks: &[Seq], saved: &[u8]) -> Result<bool, StoreError> {
        let Some(&upto) = chunks.iter().max() else {
            return Ok(false);
        };
        // Held so no commit (an erasure above all) lands between the scan
        // and the transaction; the transaction still re-checks what it
        // removes, so a scan gone stale changes nothing.
        let _commits = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = Vec::new();
        for key in self
            .chunks
            .range(log_key(doc, 0)..=log_key(doc, upto))
            .keys()
        {
            present.push(chunk_position(&key?)?);
        }
        let mut wanted = chunks.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if present != wanted {
            return Ok(false);
        }
        let folded = (&self.chunks, &self.meta_docs).transaction(|(chunks_tx, metas)| {
            let Some(v) = metas.get(doc.as_bytes())? else {
                return Ok(false);
            };
            let mut meta = decode_meta(&v).map_err(ConflictableTransactionError::Abort)?;
            // Every check before the first change: returning Ok commits
            // whatever was changed before it.
            for &at in &present {
                if chunks_tx.get(&log_key(doc, at)[..])?.is_none() {
                    return Ok(false);
                }
            }
            for &at in &present {
                chunks_tx.remove(&log_key(doc, at)[..])?;
            }
            chunks_tx.insert(&log_key(doc, upto)[..], saved)?;
            let Some(kept) = meta.chunks.checked_sub(present.len() as u32) else {
                return Err(ConflictableTransactionError::Abort(StoreError::Corrupt {
                    tree: "doc_meta",
                    reason: format!(
                        "record {doc} counts {} chunks but {} are stored at or below {upto}",
                        meta.chunks,
                        present.len()
                    ),
                }));
            };
            meta.chunks = kept + 1;
            meta.compacted = meta.compacted.max(upto);
            metas.insert(doc.as_bytes(), encode_meta(&meta))?;
            Ok(true)
        })?;
        // Not flushed here: a fold lost in a crash leaves the chunks it
        // would have replaced, which load to the same document, and sled
        // recovers a prefix of its log, so the next commit's flush carries it.
        Ok(folded)
    }

    fn commit(&self, writes: &[DocWrite]) -> Result<Vec<Seq>, StoreError> {
        let mut next = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        let first = *next + 1;
        let seqs: Vec<Seq> = (first..first + writes.len() as u64).collect();
        // Transactional trees cannot scan, so the chunk keys a compaction
        // removes are listed first; commits are serialised by the lock we
        // hold, so the list cannot go stale.
        type Doomed = (Vec<sled::IVec>, Vec<sled::IVec>, Vec<sled::IVec>);
        let mut doomed: Vec<Doomed> = Vec::with_capacity(writes.len());
        {
            let mut flags = self.flags_mut();
            flags
                .erased
                .extend(writes.iter().filter(|w| w.erase).map(|w| w.doc));
        }
        for w in writes {
            if w.rebuild || w.erase {
                // Outside the transaction, which then need not span one
                // more tree on every commit: a snapshot is a copy, and
                // dropping one that a failed commit did not need to drop
                // costs the next cold start a read of the chunks.
                self.snapshots.remove(w.doc.as_bytes())?;
            }
            let mut keys = Vec::new();
            let mut logs = Vec::new();
            let mut receipts = Vec::new();
            if w.rebuild || w.erase {
                for item in self.chunks.scan_prefix(w.doc.as_bytes()).keys() {
                    keys.push(item?);
                }
            }
            if w.erase {
                for item in self.log.scan_prefix(w.doc.as_bytes()).keys() {
                    logs.push(item?);
                }
                for item in self.received.scan_prefix(w.doc.as_bytes()).keys() {
                    receipts.push(item?);
                }
            }
            doomed.push((keys, logs, receipts));
        }
        (
            &self.chunks,
            &self.meta_docs,
            &self.feed,
            &self.log,
            &self.index,
            &self.index_by_doc,
            &self.access,
            &self.erased,
            &self.received,
            &self.clock,
            &self.summary,
        )
            .transaction(
                |(
                    chunks,
                    metas,
                    feed,
                    log,
                    index,
                    by_doc,
                    access,
                    erased,
                    received,
                    clock,
                    summaries,
                )| {
                    for ((w, &seq), (doomed, doomed_logs, doomed_receipts)) in
                        writes.iter().zip(&seqs).zip(&doomed)
                    {
                        let key = w.doc.as_bytes();
                        if w.erase {
                            for k in doomed {
                                chunks.remove(k)?;
                            }
                            for k in doomed_logs {
                                log.remove(k)?;
                            }
                            for k in doomed_receipts {
                                received.remove(k)?;
                            }
                            clock.remove(&key[..])?;
                            summaries.remove(&key[..])?;
                            metas.remove(&key[..])?;
                            if let Some(old) = by_doc.remove(&key[..])? {
                                index.remove(old)?;
                            }
                            let who = access.remove(&key[..])?.unwrap_or_default();
                            erased.insert(&key[..], who)?;
                            feed.insert(&seq.to_be_bytes()[..], &key[..])?;
                            continue;
                        }
                        let mut meta = match metas.get(key)? {
                            Some(v) => {
                                decode_meta(&v).map_err(ConflictableTransactionError::Abort)?
                            }
                            None => DocMeta::default(),
                        };
                        if w.rebuild {
                            for k in doomed {
                                chunks.remove(k)?;
                            }
                            meta.chunks = 0;
                            meta.compacted = seq;
                        }
                        if !w.chunk.is_empty() {
                            chunks.insert(&log_key(w.doc, seq)[..], w.chunk.as_slice())?;
                            meta.chunks += 1;
                        }
                        meta.seq = seq;
                        meta.heads = w.heads.clone();
                        feed.insert(&seq.to_be_bytes()[..], &key[..])?;
                        log.insert(&log_key(w.doc, seq)[..], encode_heads(&w.heads))?;
                        if let Some(receipt) = &w.receipt {
                            // The first receipt of a change stands: a change
                            // offered again (after a store reset) arrived first
                            // back then.
                            for change in &receipt.changes {
                                let k = receipt_key(w.doc, change);
                                if received.get(&k)?.is_none() {
                                    received.insert(k, &receipt.at_ms.to_be_bytes()[..])?;
                                }
                            }
                            if let Some(skew) = receipt.skew {
                                let merged = match clock.get(&key[..])? {
                                    Some(v) => decode_skew(&v)
                                        .map_err(ConflictableTransactionError::Abort)?
                                        .merge(skew),
                                    None => skew,
                                };
                                clock.insert(&key[..], &encode_skew(&merged)[..])?;
                            }
                        }
                        metas.insert(&key[..], encode_meta(&meta))?;
                        if let Some(entry) = &w.index {
                            let new_key = index_key(w.doc, entry);
                            if let Some(old) = by_doc.insert(&key[..], new_key.as_slice())? {
                                if old.as_ref() != new_key.as_slice() {
                                    index.remove(old)?;
                                }
                            }
                            index.insert(new_key, &[][..])?;
                            let who = RecordAccess {
                                kind: entry.kind.clone(),
                                area: entry.area.clone(),
                                created_by: entry.created_by.clone(),
                            };
                            access.insert(&key[..], encode_access(&who))?;
                            // Commits are in order per record, so the time
                            // an earlier write noted is there to keep.
                            let mut summary = entry.summary.clone();
                            if summary.submitted_at.is_none() {
                                if let Some(old) = summaries.get(&key[..])? {
                                    summary.submitted_at = decode_summary(&old)
                                        .map_err(ConflictableTransactionError::Abort)?
                                        .submitted_at;
                                }
                            }
                            summaries.insert(&key[..], encode_summary(&summary))?;
                        }
                    }
                    Ok(())
                },
            )?;
        self.db.flush()?;
        if let Some(&last) = seqs.last() {
            *next = last;
        }
        Ok(seqs)
    }

    fn entries_after(
        &self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, StoreError> {
        let mut out = Vec::new();
        let start = after.saturating_add(1).to_be_bytes();
        let end = upto.to_be_bytes();
        for item in self.feed.range(start..=end).take(limit) {
            let (k, v) = item?;
            out.push((seq_from(&k, "feed")?, doc_from(&v, "feed")?));
        }
        Ok(out)
    }

    fn keep_snapshot(&self, doc: DocId, seq: Seq, saved: &[u8]) -> Result<bool, StoreError> {
        // Under the commit lock, so no erasure or rebuild lands between
        // the checks and the insert.
        let _commits = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.flags().erased.contains(&doc) {
            return Ok(false);
        }
        let Some(meta) = self.meta_docs.get(doc.as_bytes())? else {
            return Ok(false);
        };
        let meta = decode_meta(&meta)?;
        if seq > meta.seq || seq < meta.compacted {
            return Ok(false);
        }
        if let Some((kept, _)) = self.snapshot(doc)? {
            if kept >= seq {
                return Ok(false);
            }
        }
        let mut value = seq.to_be_bytes().to_vec();
        value.extend_from_slice(saved);
        // Not flushed: a snapshot lost in a crash is taken again.
        self.snapshots.insert(doc.as_bytes(), value)?;
        Ok(true)
    }

    fn snapshot(&self, doc: DocId) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        let Some(v) = self.snapshots.get(doc.as_bytes())? else {
            return Ok(None);
        };
        let Some((seq, saved)) = v.split_first_chunk::<8>() else {
            return Err(StoreError::Corrupt {
                tree: "doc_snapshots",
                reason: format!("record {doc}'s snapshot is {} bytes", v.len()),
            });
        };
        Ok(Some((Seq::from_be_bytes(*seq), saved.to_vec())))
    }

    fn doc_seq(&self, doc: DocId) -> Result<Option<Seq>, StoreError> {
        match self.meta_docs.get(doc.as_bytes())? {
            Some(v) => Ok(Some(decode_meta(&v)?.seq)),
            None => Ok(None),
        }
    }

    fn chunks_after(&self, doc: DocId, after: Seq) -> Result<Option<DocChunks>, StoreError> {
        let Some(meta) = self.meta_docs.get(doc.as_bytes())? else {
            return Ok(None);
        };
        let meta = decode_meta(&meta)?;
        if after < meta.compacted {
            return Ok(None);
        }
        // Positions start at 1; a fold leaves its save at a position, so a
        // compacted record is never whole after it.
        let whole = after == 0
            || self
                .chunks
                .range(log_key(doc, 0)..=log_key(doc, after))
                .next_back()
                .is_none();
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        let start = log_key(doc, after.saturating_add(1));
        let end = log_key(doc, Seq::MAX);
        for item in self.chunks.range(start..=end) {
            let (key, chunk) = item?;
            bytes.extend_from_slice(&chunk);
            ends.push((chunk_position(&key)?, bytes.len()));
        }
        Ok(Some(DocChunks {
            bytes,
            ends,
            seq: meta.seq,
            heads: meta.heads,
            whole,
        }))
    }

    fn list_records(
        &self,
        filter: &RecordFilter,
        scope: &ReadScope,
        limit: usize,
    ) -> Result<Vec<RecordRow>, StoreError> {
        // The longest leading run of given fields is a prefix; the rest
        // filter. An area without a kind is one prefix per kind (there are
        // four), so listing an area never scans other areas' records.
        let prefix_of = |kind: &str| {
            let mut prefix = Vec::new();
            let state = filter.state.map(ReviewState::name);
            for part in [Some(kind), filter.area.as_deref(), state] {
                match part {
                    Some(p) => {
                        prefix.extend(p.bytes().filter(|b| *b != 0));
                        prefix.push(0);
                    }
                    None => break,
                }
            }
            prefix
        };
        let prefixes: Vec<Vec<u8>> = match (&filter.kind, &filter.area) {
            (Some(kind), _) => vec![prefix_of(kind)],
            (None, Some(_)) => baraza_records::Kind::ALL
                .iter()
                .map(|k| prefix_of(k.name()))
                .collect(),
            (None, None) => vec![Vec::new()],
        };
        let mut out = Vec::new();
        let keys = prefixes
            .iter()
            .flat_map(|prefix| self.index.scan_prefix(prefix).keys());
        for item in keys {
            let key = item?;
            let Some(row) = parse_index_key(&key) else {
                return Err(StoreError::Corrupt {
                    tree: "record_index",
                    reason: "unparsable key".into(),
                });
            };
            let e = &row.entry;
            let keep = filter.kind.as_ref().is_none_or(|k| *k == e.kind)
                && filter.area.as_ref().is_none_or(|a| *a == e.area)
                && filter.state.as_ref().is_none_or(|s| *s == e.state)
                && filter.since.is_none_or(|t| e.created_at >= t);
            if keep {
                let mut row = row;
                let doc = &key[key.len() - 16..];
                if let Some(v) = self.access.get(doc)? {
                    row.entry.created_by = decode_access(&v)?.created_by;
                }
                let e = &row.entry;
                if !scope.admits(&e.kind, &e.area, &e.created_by) {
                    continue;
                }
                if let Some(v) = self.summary.get(doc)? {
                    row.entry.summary = decode_summary(&v)?;
                }
                out.push(row);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn heads_at(&self, doc: DocId, seq: Seq) -> Result<Option<Vec<Head>>, StoreError> {
        let start = log_key(doc, 0);
        let end = log_key(doc, seq);
        match self.log.range(start..=end).next_back() {
            Some(item) => Ok(Some(decode_heads(&item?.1)?)),
            None => Ok(None),
        }
    }

    fn access_of(&self, doc: DocId) -> Result<Option<RecordAccess>, StoreError> {
        match self.access.get(doc.as_bytes())? {
            Some(v) => Ok(Some(decode_access(&v)?)),
            None => Ok(None),
        }
    }

    fn erased(&self, doc: DocId) -> Result<Option<RecordAccess>, StoreError> {
        if !self.flags().erased.contains(&doc) {
            return Ok(None);
        }
        match self.erased.get(doc.as_bytes())? {
            Some(v) if v.is_empty() => Ok(Some(RecordAccess {
                kind: String::new(),
                area: String::new(),
                created_by: String::new(),
            })),
            Some(v) => Ok(Some(decode_access(&v)?)),
            None => Ok(None),
        }
    }

    fn quarantine(&self, doc: DocId, reason: &str) -> Result<(), StoreError> {
        self.flags_mut().quarantined.insert(doc);
        self.quarantine.insert(doc.as_bytes(), reason.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    fn release_quarantine(&self, doc: DocId) -> Result<bool, StoreError> {
        let was = self.quarantine.remove(doc.as_bytes())?.is_some();
        self.db.flush()?;
        self.flags_mut().quarantined.remove(&doc);
        Ok(was)
    }

    fn quarantined(&self, doc: DocId) -> Result<Option<String>, StoreError> {
        if !self.flags().quarantined.contains(&doc) {
            return Ok(None);
        }
        Ok(self
            .quarantine
            .get(doc.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn quarantines(&self) -> Result<Vec<(DocId, String)>, StoreError> {
        self.quarantine
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((
                    doc_from(&k, "quarantine")?,
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    fn close_cleanly(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.meta.insert(CLEAN_KEY, &[1u8][..])?;
        self.db.flush()?;
        Ok(())
    }

    fn doc_count(&self) -> Result<usize, StoreError> {
        Ok(self.meta_docs.len())
    }

    fn received(&self, doc: DocId) -> Result<Vec<(Head, i64)>, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt {
            tree: "change_received",
            reason: what.to_string(),
        };
        self.received
            .scan_prefix(doc.as_bytes())
            .map(|item| {
                let (k, v) = item?;
                let hash: [u8; 32] = k
                    .get(16..)
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| corrupt("key of the wrong length"))?;
                let at: [u8; 8] = v[..]
                    .try_into()
                    .map_err(|_| corrupt("time of the wrong length"))?;
                Ok((
                    Head::from(automerge::ChangeHash(hash)),
                    i64::from_be_bytes(at),
                ))
            })
            .collect()
    }

    fn clock_skew(&self, doc: DocId) -> Result<Option<ClockSkew>, StoreError> {
        match self.clock.get(doc.as_bytes())? {
            Some(v) => Ok(Some(decode_skew(&v)?)),
            None => Ok(None),
        }
    }

    fn unsummarised(&self, after: Option<DocId>, limit: usize) -> Result<Vec<DocId>, StoreError> {
        let keys = match after {
            Some(doc) => self
                .index_by_doc
                .range((
                    std::ops::Bound::Excluded(doc.as_bytes().to_vec()),
                    std::ops::Bound::Unbounded,
                ))
                .keys(),
            None => self.index_by_doc.iter().keys(),
        };
        let mut out = Vec::new();
        for key in keys {
            let key = key?;
            if !self.summary.contains_key(&key)? {
                out.push(doc_from(&key, "record_index_by_doc")?);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn fill_summary(&self, doc: DocId, summary: &RecordSummary) -> Result<bool, StoreError> {
        let stored = self.summary.compare_and_swap(
            doc.as_bytes(),
            None as Option<&[u8]>,
            Some(encode_summary(summary)),
        )?;
        Ok(stored.is_ok())
    }

    fn record_row(&self, doc: DocId) -> Result<Option<RecordRow>, StoreError> {
        let key = doc.as_bytes();
        let Some(index_key) = self.index_by_doc.get(key)? else {
            return Ok(None);
        };
        let mut row = parse_index_key(&index_key).ok_or_else(|| StoreError::Corrupt {
            tree: "record_index_by_doc",
            reason: "unparsable index key".into(),
        })?;
        if let Some(v) = self.access.get(key)? {
            row.entry.created_by = decode_access(&v)?.created_by;
        }
        if let Some(v) = self.summary.get(key)? {
            row.entry.summary = decode_summary(&v)?;
        }
        Ok(Some(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::store::Receipt;

    fn head(b: u8) -> Head {
        Head::from(automerge::ChangeHash([b; 32]))
    }

    #[test]
    fn the_sled_store_meets_the_store_contract() {
        crate::storage::conformance::every_check(&|| {
            let db = sled::Config::new().temporary(true).open().unwrap();
            Box::new(SledStore::open(db, [1; 16]).unwrap())
        });
    }

    #[test]
    fn feed_keeps_every_write_and_history_of_heads() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_path(dir.path(), [1; 16]).unwrap();
        let a = DocId::from_bytes([1; 16]);
        let b = DocId::from_bytes([2; 16]);
        let w = |doc, h| DocWrite {
            erase: false,
            receipt: None,
            doc,
            chunk: vec![h],
            heads: vec![head(h)],
            rebuild: false,
            index: None,
        };
        assert_eq!(store.commit(&[w(a, 1), w(b, 2)]).unwrap(), vec![1, 2]);
        assert_eq!(store.commit(&[w(a, 3)]).unwrap(), vec![3]);
        assert_eq!(
            store.entries_after(0, 3, 10).unwrap(),
            vec![(1, a), (2, b), (3, a)]
        );
        assert_eq!(store.entries_after(1, 3, 1).unwrap(), vec![(2, b)]);
        assert_eq!(store.doc_seq(a).unwrap(), Some(3));
        assert_eq!(store.heads_at(a, 2).unwrap(), Some(vec![head(1)]));
        assert_eq!(store.heads_at(a, 3).unwrap(), Some(vec![head(3)]));
        assert_eq!(store.heads_at(b, 1).unwrap(), None);
        let loaded = store.load(a).unwrap().unwrap();
        assert_eq!(loaded.bytes, vec![1, 3]);
        assert_eq!(loaded.positions, vec![1, 3]);
    }

    #[test]
    fn the_first_receipt_of_a_change_stands_and_skews_add_up_until_erased() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_path(dir.path(), [1; 16]).unwrap();
        let a = DocId::from_bytes([1; 16]);
        let skew = |ahead| ClockSkew {
            times: 1,
            ahead_ms_max: ahead,
            claimed_ms: 1_000 + ahead,
        };
        let w = |h: u8, at_ms, skew| DocWrite {
            doc: a,
            chunk: vec![h],
            heads: vec![head(h)],
            rebuild: false,
            index: None,
            erase: false,
            receipt: Some(Receipt {
                at_ms,
                changes: vec![head(h), head(1)],
                skew,
            }),
        };
        store.commit(&[w(1, 1_000, Some(skew(50)))]).unwrap();
        store.commit(&[w(2, 2_000, Some(skew(90)))]).unwrap();
        store.commit(&[w(3, 3_000, None)]).unwrap();
        let mut received = store.received(a).unwrap();
        received.sort();
        let mut expected = vec![(head(1), 1_000), (head(2), 2_000), (head(3), 3_000)];
        expected.sort();
        assert_eq!(received, expected);
        assert_eq!(
            store.clock_skew(a).unwrap(),
            Some(ClockSkew {
                times: 2,
                ahead_ms_max: 90,
                claimed_ms: 1_090
            })
        );
        store.commit(&[DocWrite::erasure(a)]).unwrap();
        assert!(store.received(a).unwrap().is_empty());
        assert_eq!(store.clock_skew(a).unwrap(), None);
    }

    fn reopen(path: &Path, fresh_id: [u8; 16]) -> SledStore {
        super::super::reopened(|| SledStore::open_path(path, fresh_id))
    }

    #[test]
    fn an_unclean_stop_changes_the_store_id_and_a_clean_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let id1 = {
            let s = reopen(dir.path(), [1; 16]);
            s.close_cleanly().unwrap();
            s.store_id()
        };
        let id2 = {
            let s = reopen(dir.path(), [2; 16]);
            s.store_id() // dropped without close_cleanly: like a crash
        };
        assert_eq!(id1, id2);
        let s = reopen(dir.path(), [3; 16]);
        assert_eq!(s.store_id(), StoreId::from_bytes([3; 16]));
        assert_eq!(s.feed_watermark().unwrap(), 0);
    }

    #[test]
    fn list_rows_keep_their_submitted_time_and_old_rows_list_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_path(dir.path(), [1; 16]).unwrap();
        let a = DocId::from_bytes([1; 16]);
        let entry = |state: ReviewState, submitted_at| IndexEntry {
            kind: "meeting".into(),
            area: "kibera".into(),
            state,
            created_at: 5,
            created_by: "lia".into(),
            summary: RecordSummary {
                title: Some("Water point".into()),
                submitted_at,
                conflicts: state == ReviewState::Submitted,
                comments: 0,
            },
        };
        let w = |h: u8, index| DocWrite {
            doc: a,
            chunk: vec![h],
            heads: vec![head(h)],
            rebuild: false,
            index: Some(index),
            erase: false,
            receipt: None,
        };
        store
            .commit(&[w(1, entry(ReviewState::Submitted, Some(7_000)))])
            .unwrap();
        // A later write (the state moved on) keeps when it was submitted.
        store
            .commit(&[w(2, entry(ReviewState::Approved, None))])
            .unwrap();
        let row = store.record_row(a).unwrap().unwrap();
        assert_eq!(row.entry.state, ReviewState::Approved);
        assert_eq!(row.entry.created_by, "lia");
        assert_eq!(row.entry.summary.submitted_at, Some(7_000));
        assert!(!row.entry.summary.conflicts);
        let all = |s: &SledStore| {
            let lia = ReadScope {
                own: Some("lia".into()),
                ..ReadScope::default()
            };
            s.list_records(&RecordFilter::default(), &lia, 10).unwrap()
        };
        assert_eq!(all(&store), vec![row.clone()]);

        // A data dir from before summaries: the row lists with defaults,
        // is found unsummarised, and a fill stands only where none is.
        store.summary.remove(a.as_bytes()).unwrap();
        let listed = all(&store);
        assert_eq!(listed[0].entry.summary, RecordSummary::default());
        assert_eq!(listed[0].entry.state, ReviewState::Approved);
        assert_eq!(store.unsummarised(None, 10).unwrap(), vec![a]);
        assert!(store.unsummarised(Some(a), 10).unwrap().is_empty());
        assert!(store.fill_summary(a, &row.entry.summary).unwrap());
        assert!(!store.fill_summary(a, &RecordSummary::default()).unwrap());
        assert_eq!(all(&store), vec![row]);
        assert!(store.unsummarised(None, 10).unwrap().is_empty());
    }

    /// Erased and quarantined records are known without reading their
    /// trees for every other record, and still after a reopen.
    #[test]
    fn erasures_and_quarantines_are_found_again_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            DocId::from_bytes([1; 16]),
            DocId::from_bytes([2; 16]),
            DocId::from_bytes([3; 16]),
        );
        {
            let store = SledStore::open_path(dir.path(), [1; 16]).unwrap();
            store.commit(&[DocWrite::erasure(a)]).unwrap();
            store.quarantine(b, "damaged: test").unwrap();
            store.quarantine(c, "held").unwrap();
            assert!(store.release_quarantine(c).unwrap());
            assert!(store.erased(a).unwrap().is_some());
            assert_eq!(
                store.quarantined(b).unwrap().as_deref(),
                Some("damaged: test")
            );
            assert_eq!(store.quarantined(c).unwrap(), None);
            assert_eq!(store.erased(b).unwrap(), None);
            store.close_cleanly().unwrap();
        }
        let store = SledStore::open_path(dir.path(), [1; 16]).unwrap();
        assert!(store.erased(a).unwrap().is_some());
        assert_eq!(store.erased(b).unwrap(), None);
        assert_eq!(
            store.quarantined(b).unwrap().as_deref(),
            Some("damaged: test")
        );
        assert_eq!(store.quarantined(a).unwrap(), None);
        assert_eq!(store.quarantined(c).unwrap(), None);
    }

    #[test]
    fn a_fold_replaces_the_chunks_it_read_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_path(dir.path(), [1; 16]).unwrap();
        let a = DocId::from_bytes([1; 16]);
        for i in 0..3u8 {
            store
                .commit(&[DocWrite {
                    erase: false,
                    receipt: None,
                    doc: a,
                    chunk: vec![i],
                    heads: vec![head(i)],
                    rebuild: false,
                    index: None,
                }])
                .unwrap();
        }
        // What a client holding the document as of position 1 lacks.
        let chunks = |bytes: Vec<u8>, ends: Vec<(Seq, usize)>, seq: Seq, h: u8| DocChunks {
            bytes,
            ends,
            seq,
            heads: vec![head(h)],
            whole: false,
        };
        // One from before its first write lacks it whole.
        let all = store.chunks_after(a, 0).unwrap().unwrap();
        assert!(all.whole);
        assert_eq!(all.bytes, vec![0, 1, 2]);
        assert_eq!(
            store.chunks_after(a, 1).unwrap(),
            Some(chunks(vec![1, 2], vec![(2, 1), (3, 2)], 3, 2))
        );
        assert_eq!(
            store.chunks_after(a, 3).unwrap(),
            Some(chunks(vec![], vec![], 3, 2))
        );
        let read = store.load(a).unwrap().unwrap();
        assert_eq!(read.positions, vec![1, 2, 3]);
        // A write lands after the compactor read the document: the fold
        // replaces what it read and keeps the newer chunk.
        store
            .commit(&[DocWrite {
                erase: false,
                receipt: None,
                doc: a,
                chunk: vec![9],
                heads: vec![head(9)],
                rebuild: false,
                index: None,
            }])
            .unwrap();
        assert!(store.fold(a, &read.positions, &[7, 7]).unwrap());
        let loaded = store.load(a).unwrap().unwrap();
        assert_eq!(loaded.bytes, vec![7, 7, 9]);
        assert_eq!(loaded.positions, vec![3, 4]);
        assert_eq!(loaded.heads, vec![head(9)]);
        // Folded up to position 3: a client there lacks only the new chunk,
        // one behind it needs the whole document.
        assert_eq!(store.chunks_after(a, 2).unwrap(), None);
        assert_eq!(
            store.chunks_after(a, 3).unwrap(),
            Some(chunks(vec![9], vec![(4, 1)], 4, 9))
        );
        // A fold from a stale read (the chunks it names are gone, or one
        // it did not read is there) changes nothing.
        assert!(!store.fold(a, &read.positions, &[6]).unwrap());
        assert!(!store.fold(a, &[4], &[6]).unwrap());
        assert!(!store.fold(a, &[], &[6]).unwrap());
        assert_eq!(store.load(a).unwrap().unwrap().bytes, vec![7, 7, 9]);
        // Its own read folds again; an erased record does not.
        assert!(store.fold(a, &loaded.positions, &[8]).unwrap());
        assert_eq!(store.load(a).unwrap().unwrap().positions, vec![4]);
        store.commit(&[DocWrite::erasure(a)]).unwrap();
        assert!(!store.fold(a, &[4], &[5]).unwrap());
        assert_eq!(store.load(a).unwrap(), None);
    }
}
