//! The server's live documents: a bounded cache over the [`Store`], and the
//! committer that makes writes durable in groups.
//!
//! Connection tasks apply changes to a cached document under its own lock,
//! then hand the resulting chunk to the committer thread. The committer
//! takes every write waiting at that moment, commits them in one
//! transaction with one flush (group commit: many connections share the
//! cost of a flush), and only then answers each writer. Nobody is told a
//! change is stored before that answer.
//!
//! Compaction is the store's, not the cache's: once a document has gathered
//! enough chunks, the compactor thread loads it from the store, checks it,
//! saves it whole and asks the store to [`Store::fold`] exactly the chunks
//! it read into that save. The cached copy never stands in for what is
//! stored, so a chunk written meanwhile (by this node or, with a shared
//! database, another) is kept.
//!
//! Cold starts are served from snapshots: once a record has been left alone
//! for [`SNAPSHOT_QUIET`] and the committer has been idle for
//! [`SNAPSHOT_IDLE`] (after a burst, not during one), the compactor saves
//! it whole beside its chunks ([`Store::keep_snapshot`]). A device that
//! never had the record is sent that save and the chunks after it: one
//! compact document instead of every change it was made of, which a
//! tablet loads without replaying them. The save is not compressed on its
//! own: packed frames compress a batch of records together, which shares
//! field names, places and authors across records (measured: 153 against
//! 313 bytes a record, `cargo run --release -p baraza-bench --example
//! cold_bytes`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::Automerge;
use baraza_protocol::docsync::{self, ApplyError};
use baraza_protocol::{to_heads, DocDelta, DocId, Seq};
use tokio::sync::{oneshot, watch};

use crate::engine::recent::RecentLogs;
use crate::storage::catch_up::{CatchUpBatch, DocReads};
use crate::storage::store::{DocWrite, IndexEntry, Receipt, Store, StoreError, StoredDoc};

/// Chunks a document may accumulate before it is folded into one save.
const CHUNKS_BEFORE_COMPACTION: u32 = 64;
/// Most writes committed in one transaction.
const WRITES_PER_COMMIT_MAX: usize = 1024;
/// How long a record is left unwritten before it is snapshotted.
pub const SNAPSHOT_QUIET: Duration = Duration::from_secs(2);
/// How long the committer must have been idle before the compactor takes
/// snapshots: they wait out an ingest burst rather than compete with it.
pub const SNAPSHOT_IDLE: Duration = Duration::from_millis(500);
/// Most records waiting to be snapshotted; a record beyond it is
/// snapshotted when it is next written or read whole.
const SNAPSHOTS_WAITING_MAX: usize = 65_536;

/// What the compactor is asked to do with a record.
#[derive(Clone, Copy, Debug)]
enum Compact {
    /// Fold its chunks now: it has gathered enough.
    Fold(DocId),
    /// It was written (or read whole without a snapshot): snapshot it once
    /// it has been left alone.
    Snapshot(DocId),
}

/// A loaded document and what the store holds of it.
pub struct LiveDoc {
    /// The document.
    pub doc: Automerge,
    /// Chunks stored so far.
    pub chunks: u32,
    /// Bytes stored so far (approximate: a fold does not tell the cache).
    pub bytes: usize,
    /// Operations the document holds (counted at load, then added to): the
    /// limit that run-length-encoded changes cannot slip past.
    pub ops: usize,
    /// The record's header once read: admission refuses any change to it,
    /// so every push need not read it again.
    header: Option<baraza_records::Header>,
    /// Which copy of the record this is: what its writes are checked
    /// against before they are stored.
    copy: Copy,
}

/// Which copy of a record a write was made on. A write is judged on the
/// copy it was applied to, so it may be stored only if that copy held
/// every stored change of the record: `gen` is the record's generation
/// on this node when the copy was made (see [`Queued::void`]), `base` the
/// feed position of the record's latest write the copy was loaded with
/// (the store refuses the write if another writer wrote the record after
/// it: [`Store::commit_unless_stale`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Copy {
    gen: u64,
    base: Seq,
}

impl LiveDoc {
    /// The record's header (None while it has none, or it is malformed).
    pub fn header(&mut self) -> Option<baraza_records::Header> {
        if self.header.is_none() {
            self.header = baraza_records::Header::read(&self.doc).ok();
        }
        self.header.clone()
    }

    /// A document nobody has written yet.
    pub fn empty() -> LiveDoc {
        LiveDoc {
            doc: Automerge::new(),
            chunks: 0,
            bytes: 0,
            ops: 0,
            header: None,
            copy: Copy::default(),
        }
    }
}

/// A stored value of the wrong shape is damage to that record.
fn damage(id: DocId, e: StoreError) -> DocsError {
    match e {
        StoreError::Corrupt { .. } => DocsError::Load(id, e.to_string()),
        other => DocsError::Store(other),
    }
}

/// What the store holds of a record, loaded and checked: bytes that do not
/// decode (or make automerge panic), or that load to other heads than the
/// commit recorded, are damage.
fn load_checked(id: DocId, stored: &StoredDoc) -> Result<Automerge, DocsError> {
    let doc = docsync::contained(|| {
        Automerge::load(&stored.bytes).map_err(|e| ApplyError::Corrupt(e.to_string()))
    })
    .map_err(|e| DocsError::Load(id, e.to_string()))?;
    loads_to(&doc, &stored.heads).map_err(|wrong| {
        DocsError::Load(
            id,
            format!(
                "its {} stored chunks load to {wrong}, recorded at feed position {}",
                stored.positions.len(),
                stored.seq
            ),
        )
    })?;
    Ok(doc)
}

/// Whether `doc` is at exactly the heads a commit recorded; if not, what
/// it holds instead.
fn loads_to(doc: &Automerge, recorded: &[baraza_protocol::Head]) -> Result<(), String> {
    let mut have = to_heads(&doc.get_heads());
    let mut want = recorded.to_vec();
    have.sort();
    want.sort();
    if have == want {
        Ok(())
    } else {
        Err(format!("heads {have:?}, not the heads {want:?}"))
    }
}

/// Operations a document holds, from its changes' metadata (no op is read).
fn ops_of(doc: &Automerge) -> usize {
    doc.get_changes_meta(&[])
        .iter()
        .map(|m| (m.max_op + 1).saturating_sub(m.start_op) as usize)
        .sum()
}

/// The live copy of `id`: what is stored, checked, with what was queued
/// (of generation `queued.0`) applied on top.
fn live_of(
    id: DocId,
    (gen, queued): (u64, Vec<Vec<u8>>),
    stored: Option<StoredDoc>,
) -> Result<LiveDoc, DocsError> {
    let mut live = match stored {
        Some(stored) => {
            let doc = load_checked(id, &stored)?;
            LiveDoc {
                doc,
                chunks: stored.positions.len() as u32,
                bytes: stored.bytes.len(),
                ops: 0,
                header: None,
                copy: Copy {
                    gen,
                    base: stored.seq,
                },
            }
        }
        None => LiveDoc {
            copy: Copy { gen, base: 0 },
            ..LiveDoc::empty()
        },
    };
    for chunk in queued {
        docsync::contained(|| docsync::apply_chunks(&mut live.doc, &chunk))
            .map_err(|e| DocsError::Load(id, format!("a queued write does not apply: {e}")))?;
    }
    live.ops = ops_of(&live.doc);
    Ok(live)
}

/// A handle on one cached document.
pub type DocHandle = Arc<Mutex<LiveDoc>>;

/// Why a document could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored bytes did not load, or loaded to other heads than were
    /// recorded when they were committed: the record is damaged.
    #[error("stored document {0} is damaged: {1}")]
    Load(DocId, String),
    /// The committer is gone (server shutting down).
    #[error("the committer has stopped")]
    Stopped,
    /// The committer could not store a write.
    #[error("the write was not stored: {0}")]
    Commit(String),
}

struct Job {
    write: DocWrite,
    /// Fold the document once this write is committed.
    fold: bool,
    /// The copy it was made on; None for a write that stands on its own
    /// (an erasure, a rebuild from a device's copy).
    copy: Option<Copy>,
    reply: oneshot::Sender<Result<Seq, NotStored>>,
    ticket: u64,
}

/// A write ready for [`Docs::submit`], and whether the document is due to
/// be folded after it.
pub struct Pending {
    write: DocWrite,
    fold: bool,
    copy: Option<Copy>,
}

impl From<DocWrite> for Pending {
    fn from(write: DocWrite) -> Pending {
        Pending {
            write,
            fold: false,
            copy: None,
        }
    }
}

/// Why a write handed to the committer was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotStored {
    /// The copy it was made on was overtaken (another node wrote the
    /// record, or an earlier write made on the copy failed): it is to be
    /// judged again on the record as stored.
    #[error("the record was changed meanwhile (on another server node, or by a write that failed); send it again")]
    Overtaken,
    /// The store failed, or the server is stopping.
    #[error("{0}")]
    Failed(String),
}

/// Chunks handed to the committer and not yet committed, per document. A
/// live copy rebuilt from the store meanwhile (after a panic, an eviction
/// or a failed restore) replays them, or the next compaction would save
/// the document without them.
#[derive(Default)]
struct Queued {
    next: u64,
    /// Ticket, the generation of the copy it was made on, and the chunk.
    chunks: std::collections::HashMap<DocId, Vec<(u64, u64, Vec<u8>)>>,
    /// Records' generations, for those ever voided (others are at 0).
    gens: std::collections::HashMap<DocId, u64>,
}

impl Queued {
    fn gen(&self, id: DocId) -> u64 {
        self.gens.get(&id).copied().unwrap_or(0)
    }

    /// Voids every copy of `id` made so far: a write of theirs failed (so
    /// every later write on them builds on a change that is not stored),
    /// or another node wrote the record. Their writes still queued are
    /// refused when the committer reaches them, no reload replays them,
    /// and a cached copy is not handed out again.
    fn void(&mut self, id: DocId) {
        *self.gens.entry(id).or_default() += 1;
    }

    /// Drops a write's chunk from those waiting: it was stored or refused.
    fn unqueue(&mut self, id: DocId, ticket: u64) {
        if let Some(list) = self.chunks.get_mut(&id) {
            list.retain(|(t, _, _)| *t != ticket);
            if list.is_empty() {
                self.chunks.remove(&id);
            }
        }
    }

    /// Whether a write made on `copy` of `id` may still be stored.
    fn current(&self, id: DocId, copy: Option<Copy>) -> bool {
        copy.is_none_or(|c| c.gen >= self.gen(id))
    }
}

/// Documents, cache and committer.
pub struct Docs {
    store: Arc<dyn Store>,
    capacity: usize,
    /// Each live copy with the copy it is (read without locking it).
    cache: Mutex<lru::LruCache<DocId, (DocHandle, Copy)>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    queued: Arc<Mutex<Queued>>,
    durable: watch::Receiver<Seq>,
    /// Moved by the committer after each commit, and by [`Docs::advance`]
    /// when another node's writes are committed.
    durable_tx: Arc<watch::Sender<Seq>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    compactor: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Asks the compactor for snapshots of records read whole without one.
    compact: Mutex<Option<mpsc::Sender<Compact>>>,
    recent: Arc<RecentLogs>,
}

/// What the committer and the compactor share.
struct CompactionState {
    started: Instant,
    /// Milliseconds from `started` to the last commit.
    last_commit_ms: AtomicU64,
}

impl CompactionState {
    fn committed(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_commit_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_commit_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

impl Docs {
    /// Starts the committer over `store`, caching up to `cache_docs` documents.
    pub fn start(store: Arc<dyn Store>, cache_docs: usize) -> Result<Arc<Docs>, DocsError> {
        Docs::start_anchored(store, cache_docs, None)
    }

    /// [`Docs::start`], noting every committed feed position in `anchor`
    /// before any writer is answered.
    pub fn start_anchored(
        store: Arc<dyn Store>,
        cache_docs: usize,
        anchor: Option<Arc<crate::storage::integrity::Anchor>>,
    ) -> Result<Arc<Docs>, DocsError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (fold_tx, fold_rx) = mpsc::channel::<Compact>();
        let compaction = Arc::new(CompactionState {
            started: Instant::now(),
            last_commit_ms: AtomicU64::new(0),
        });
        let (durable_tx, durable) = watch::channel(store.feed_watermark()?);
        let durable_tx = Arc::new(durable_tx);
        let queued: Arc<Mutex<Queued>> = Arc::default();
        let recent: Arc<RecentLogs> = Arc::default();
        let committer = Committer {
            recent: recent.clone(),
            store: store.clone(),
            durable: durable_tx.clone(),
            queued: queued.clone(),
            anchor,
            folds: fold_tx.clone(),
            compaction: compaction.clone(),
        };
        let spawn_failed = |e| DocsError::Store(StoreError::Db(Box::new(e)));
        let compactor_store = store.clone();
        let compactor_state = compaction;
        let compactor = std::thread::Builder::new()
            .name("baraza-compactor".into())
            .spawn(move || compact_loop(compactor_store.as_ref(), &compactor_state, fold_rx))
            .map_err(spawn_failed)?;
        let handle = std::thread::Builder::new()
            .name("baraza-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(spawn_failed)?;
        Ok(Arc::new(Docs {
            store,
            capacity: cache_docs.max(1),
            // Unbounded to the lru crate: `put` on a full cache would evict
            // by itself, including a document someone holds. `handle`
            // enforces the bound instead.
            cache: Mutex::new(lru::LruCache::unbounded()),
            jobs: Mutex::new(Some(tx)),
            queued,
            durable,
            durable_tx,
            committer: Mutex::new(Some(handle)),
            compactor: Mutex::new(Some(compactor)),
            compact: Mutex::new(Some(fold_tx)),
            recent,
        }))
    }

    /// What a reader holding `id` as of feed position `base` lacks, for its
    /// feed entry at `at`, from chunks shared by every reader; None if the
    /// store holds no chunks after `base` (see [`RecentLogs::after`]). A
    /// reader that has none of the record (it was first written after
    /// `base`, as most are in a long catch-up) gets its snapshot instead
    /// where one is kept: the same state in fewer bytes, loaded without
    /// replaying each change.
    pub fn recent_after(
        &self,
        id: DocId,
        base: Seq,
        at: Seq,
    ) -> Result<Option<DocDelta>, DocsError> {
        self.recent_after_with(self.store.as_ref(), id, base, at)
    }

    /// [`Docs::recent_after`], reading through `reads` (a catch-up batch
    /// in front of the store).
    pub fn recent_after_with<R: DocReads + ?Sized>(
        &self,
        reads: &R,
        id: DocId,
        base: Seq,
        at: Seq,
    ) -> Result<Option<DocDelta>, DocsError> {
        let Some(lacking) = self.recent.after(reads, id, base, at)? else {
            return Ok(None);
        };
        if lacking.whole {
            if let Some(saved) = self.snapshot_and_after(reads, id)? {
                return Ok(Some(saved));
            }
        }
        Ok(Some(lacking.delta))
    }

    /// Reads ahead what catch-up is about to send of `wants` (`(doc,
    /// base, at)`) and `have` lacks: the checks of each, and the bytes of
    /// those the recent logs do not hold. Nothing is read when nothing is
    /// lacking.
    pub fn catch_up_batch(
        &self,
        wants: &[(DocId, Seq, Seq)],
        have: &CatchUpBatch,
    ) -> Result<CatchUpBatch, DocsError> {
        let epoch = self.recent.epoch();
        let asked: Vec<(DocId, Option<Seq>)> = wants
            .iter()
            .filter_map(|&(doc, base, at)| {
                let held = base > 0 && self.recent.holds(doc, base, at);
                match (held, have.records.contains_key(&doc)) {
                    (true, true) => None,
                    (true, false) => Some((doc, None)),
                    (false, _) => Some((doc, Some(base))),
                }
            })
            .collect();
        let mut batch = if asked.is_empty() {
            CatchUpBatch::default()
        } else {
            self.store.catch_up_batch(&asked)?
        };
        batch.epoch = epoch;
        Ok(batch)
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Watches the feed position up to which everything is durable.
    pub fn durable(&self) -> watch::Receiver<Seq> {
        self.durable.clone()
    }

    /// How many documents are in memory.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The cached document, loading it (or starting an empty one) on a miss.
    /// A cached copy that was voided since it was made counts as a miss.
    pub fn handle(&self, id: DocId) -> Result<DocHandle, DocsError> {
        let cached = self.cache_lock().get(&id).cloned();
        if let Some((h, copy)) = cached {
            if self.queued_lock().current(id, Some(copy)) {
                return Ok(h);
            }
        }
        let live = self.load_live(id)?;
        Ok(self.cache_live(id, live))
    }

    /// Caches a copy just loaded, unless another task cached one as new
    /// meanwhile (there must be one copy); the copy in the cache.
    fn cache_live(&self, id: DocId, live: LiveDoc) -> DocHandle {
        let copy = live.copy;
        let mut cache = self.cache_lock();
        // Another task may have loaded it meanwhile: there must be one copy.
        if let Some((h, theirs)) = cache.get(&id) {
            if theirs.gen >= copy.gen {
                return h.clone();
            }
        }
        let handle = Arc::new(Mutex::new(live));
        cache.put(id, (handle.clone(), copy));
        // Only documents nobody holds may leave: two live copies of one
        // document could each compact away the other's changes. A held
        // document is moved to the front and passed over; the scan is
        // bounded so a cache full of held documents just stays over size.
        let mut passes = cache.len();
        while cache.len() > self.capacity && passes > 0 {
            passes -= 1;
            let Some((id, entry)) = cache.pop_lru() else {
                break;
            };
            if Arc::strong_count(&entry.0) > 1 {
                cache.put(id, entry);
            }
        }
        handle
    }

    /// The document as stored plus what is queued for it, checked: bytes
    /// that do not decode (or make automerge panic), or that load to other
    /// heads than the commit recorded, are damage and are reported, never
    /// served as a shorter document.
    fn load_live(&self, id: DocId) -> Result<LiveDoc, DocsError> {
        // Queued first, stored second: a chunk committed in between is
        // then in both, and applying a change twice is harmless.
        let queued = self.queued_of(id);
        let stored = self.store.load(id).map_err(|e| damage(id, e))?;
        live_of(id, queued, stored)
    }

    /// What is queued of `id`'s current generation, with the generation:
    /// chunks of a voided copy will not be stored.
    fn queued_of(&self, id: DocId) -> (u64, Vec<Vec<u8>>) {
        let q = self.queued_lock();
        let gen = q.gen(id);
        let chunks = q
            .chunks
            .get(&id)
            .map(|list| {
                list.iter()
                    .filter(|(_, g, _)| *g == gen)
                    .map(|(_, _, c)| c.clone())
                    .collect()
            })
            .unwrap_or_default();
        (gen, chunks)
    }

    /// Loads those of `ids` not cached into the cache, read from the store
    /// together: a session about to admit a batch of pushes asks once, not
    /// once a record. Best effort: a record that fails to load here (or a
    /// failed read) is left to [`Docs::handle`], which says why.
    pub fn prefetch(&self, ids: &[DocId]) {
        let missing: Vec<DocId> = {
            let cache = self.cache_lock();
            let mut seen = HashSet::new();
            ids.iter()
                .copied()
                .filter(|id| !cache.contains(id) && seen.insert(*id))
                .collect()
        };
        if missing.len() < 2 {
            return;
        }
        // As in load_live: every queued read before the stored one.
        let queued: Vec<_> = missing.iter().map(|id| self.queued_of(*id)).collect();
        let Ok(stored) = self.store.load_many(&missing) else {
            return;
        };
        for ((id, queued), stored) in missing.into_iter().zip(queued).zip(stored) {
            let Ok(live) = live_of(id, queued, stored) else {
                continue;
            };
            self.cache_live(id, live);
        }
    }

    /// Another node wrote `id` at feed position `seq`: a cached copy
    /// loaded before that lacks the change, so it is voided (writes made
    /// on it are refused as stale rather than judged on less than the
    /// record holds; the next use loads it again).
    pub fn written_elsewhere(&self, id: DocId, seq: Seq) {
        let cached = self.cache_lock().peek(&id).map(|(_, copy)| *copy);
        if cached.is_some_and(|copy| copy.base >= seq) {
            return;
        }
        self.queued_lock().void(id);
    }

    /// Another node erased, rebuilt or quarantined `id`: every copy and
    /// every shared read of it is void.
    pub fn rewritten_elsewhere(&self, id: DocId) {
        self.queued_lock().void(id);
        self.recent.forget(id);
        self.forget(id);
    }

    /// Voids every cached copy: after news of other nodes' writes may have
    /// been missed (the listening connection was down), none is trusted.
    pub fn void_cached(&self) {
        let ids: Vec<DocId> = self.cache_lock().iter().map(|(id, _)| *id).collect();
        let mut q = self.queued_lock();
        for id in ids {
            q.void(id);
        }
    }

    /// Moves the feed position readers may read up to, to `mark` (the
    /// store's watermark after another node's commit); never back.
    pub fn advance(&self, mark: Seq) {
        advance(&self.durable_tx, mark);
    }

    fn queued_lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops a document from the cache so the next use reloads what is
    /// stored: after a failed write the cached copy holds changes the store
    /// does not.
    pub fn forget(&self, id: DocId) {
        self.cache_lock().pop(&id);
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<DocId, (DocHandle, Copy)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prepares the write of `chunk` (changes just applied to `live`),
    /// with when they arrived. Returns None if there is nothing new.
    pub fn write_for(
        id: DocId,
        live: &mut LiveDoc,
        chunk: Vec<u8>,
        index: Option<IndexEntry>,
        receipt: Option<Receipt>,
    ) -> Option<Pending> {
        if chunk.is_empty() {
            return None;
        }
        live.chunks += 1;
        live.bytes += chunk.len();
        // Counted here rather than asked of the store on every write; if
        // the fold finds the chunks moved on, the next count asks again.
        let fold = live.chunks >= CHUNKS_BEFORE_COMPACTION;
        if fold {
            live.chunks = 1;
        }
        Some(Pending {
            write: DocWrite {
                doc: id,
                chunk,
                heads: to_heads(&live.doc.get_heads()),
                rebuild: false,
                index,
                erase: false,
                receipt,
            },
            fold,
            copy: Some(live.copy),
        })
    }

    /// Erases a record and waits until that is durable. Holds the
    /// record's lock throughout, so writes queued before it commit before
    /// it, and writes after it find the tombstone. Blocking.
    pub fn erase(&self, id: DocId) -> Result<Seq, DocsError> {
        let handle = self.handle(id)?;
        let mut live = handle.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self
            .submit(DocWrite::erasure(id))
            .blocking_recv()
            .map_err(|_| DocsError::Stopped)?
            .map_err(|e| DocsError::Commit(e.to_string()))?;
        *live = LiveDoc::empty();
        self.forget(id);
        Ok(seq)
    }

    /// Queues a write; the receiver answers with its feed position once
    /// durable. A write made on a voided copy is refused at once.
    pub fn submit(&self, pending: impl Into<Pending>) -> oneshot::Receiver<Result<Seq, NotStored>> {
        let Pending { write, fold, copy } = pending.into();
        let (reply, rx) = oneshot::channel();
        let ticket = {
            let mut queued = self.queued_lock();
            if !queued.current(write.doc, copy) {
                let _ = reply.send(Err(NotStored::Overtaken));
                return rx;
            }
            queued.next += 1;
            let ticket = queued.next;
            if !write.chunk.is_empty() {
                let gen = copy.map_or(queued.gen(write.doc), |c| c.gen);
                queued.chunks.entry(write.doc).or_default().push((
                    ticket,
                    gen,
                    write.chunk.clone(),
                ));
            }
            ticket
        };
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = jobs.as_ref() {
            // If the committer is gone the reply sender drops and the writer
            // sees the channel closed: it acknowledges nothing.
            let _ = tx.send(Job {
                write,
                fold,
                copy,
                reply,
                ticket,
            });
        }
        rx
    }

    /// Stops the committer after it has committed everything queued (and
    /// the compactor after the folds asked of it), then marks the store
    /// cleanly closed.
    pub fn shutdown(&self) -> Result<(), DocsError> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.compact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // The committer first: it holds the compactor's queue.
        for thread in [&self.committer, &self.compactor] {
            if let Some(h) = thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = h.join();
            }
        }
        self.store.close_cleanly()?;
        Ok(())
    }

    /// A document whole, for a client that never had it: its snapshot and
    /// the chunks after it, or else every chunk stored (and a snapshot is
    /// asked for).
    pub fn stored(&self, id: DocId) -> Result<Option<DocDelta>, DocsError> {
        self.stored_with(self.store.as_ref(), id)
    }

    /// [`Docs::stored`], reading through `reads` (a catch-up batch in
    /// front of the store).
    pub fn stored_with<R: DocReads + ?Sized>(
        &self,
        reads: &R,
        id: DocId,
    ) -> Result<Option<DocDelta>, DocsError> {
        if let Some(delta) = self.snapshot_and_after(reads, id)? {
            return Ok(Some(delta));
        }
        let Some(stored) = reads.load(id).map_err(|e| damage(id, e))? else {
            return Ok(None);
        };
        // Not loaded (a cold start reads thousands), but every chunk's
        // checksum is checked, so a flipped byte is never sent on.
        let chunks = docsync::verify_chunks(&stored.bytes)
            .map_err(|e| DocsError::Load(id, e.to_string()))?;
        if chunks > 1 {
            if let Some(tx) = self
                .compact
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                let _ = tx.send(Compact::Snapshot(id));
            }
        }
        let heads = reads.heads_at(id, stored.seq)?.unwrap_or_default();
        Ok(Some(DocDelta {
            heads,
            data: stored.bytes,
            seq: stored.seq,
        }))
    }

    /// The record's snapshot and the chunks written after it, both
    /// checked. None when there is no snapshot, or it is no use (the
    /// chunks after it were folded away, or it fails its checksum: the
    /// chunks are read instead, so a damaged copy costs bytes, never
    /// changes).
    fn snapshot_and_after<R: DocReads + ?Sized>(
        &self,
        reads: &R,
        id: DocId,
    ) -> Result<Option<DocDelta>, DocsError> {
        let (seq, saved) = match reads.snapshot(id) {
            Ok(Some(kept)) => kept,
            Ok(None) => return Ok(None),
            Err(err) => {
                tracing::warn!(record = %id, error = %err, "unreadable snapshot; sending the chunks");
                return Ok(None);
            }
        };
        let Some(after) = reads.chunks_after(id, seq).map_err(|e| damage(id, e))? else {
            return Ok(None);
        };
        if let Err(err) = docsync::verify_chunks(&saved) {
            tracing::warn!(record = %id, error = %err, "damaged snapshot; sending the chunks");
            return Ok(None);
        }
        docsync::verify_chunks(&after.bytes).map_err(|e| DocsError::Load(id, e.to_string()))?;
        let mut data = saved;
        data.extend_from_slice(&after.bytes);
        Ok(Some(DocDelta {
            heads: after.heads,
            data,
            seq: after.seq,
        }))
    }
}

/// The committer thread's state.
struct Committer {
    store: Arc<dyn Store>,
    /// Set to the store's feed watermark after each commit: what feed
    /// readers may read up to (not the positions this node was handed, which
    /// a backend with other writers may put above it).
    durable: Arc<watch::Sender<Seq>>,
    queued: Arc<Mutex<Queued>>,
    anchor: Option<Arc<crate::storage::integrity::Anchor>>,
    /// Documents due a fold or a snapshot, for the compactor.
    folds: mpsc::Sender<Compact>,
    compaction: Arc<CompactionState>,
    /// Forgotten around every erasure and rebuild.
    recent: Arc<RecentLogs>,
}

impl Committer {
    fn run(self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < WRITES_PER_COMMIT_MAX {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.commit(jobs);
        }
    }

    fn commit(&self, jobs: Vec<Job>) {
        // A write made on a copy voided since it was submitted is refused
        // before the store sees it: it builds on a change not stored.
        let (jobs, doomed): (Vec<Job>, Vec<Job>) = {
            let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
            let (jobs, doomed): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|j| q.current(j.write.doc, j.copy));
            for job in &doomed {
                q.unqueue(job.write.doc, job.ticket);
            }
            (jobs, doomed)
        };
        for job in doomed {
            let _ = job.reply.send(Err(NotStored::Overtaken));
        }
        if jobs.is_empty() {
            return;
        }
        // The writes move into the batch (chunks are not copied); what
        // answers each writer stays beside them.
        let mut writes = Vec::with_capacity(jobs.len());
        let mut bases = Vec::with_capacity(jobs.len());
        let mut answers = Vec::with_capacity(jobs.len());
        for job in jobs {
            let ask = if job.fold {
                Some(Compact::Fold(job.write.doc))
            } else if job.write.erase {
                None
            } else {
                Some(Compact::Snapshot(job.write.doc))
            };
            answers.push((job.write.doc, job.ticket, job.copy, ask, job.reply));
            bases.push(job.copy.map(|c| c.base));
            writes.push(job.write);
        }
        // An erasure or rebuild changes what the record's chunks say:
        // nothing read before it is served after it.
        let rewritten: Vec<DocId> = writes
            .iter()
            .filter(|w| w.erase || w.rebuild)
            .map(|w| w.doc)
            .collect();
        for doc in &rewritten {
            self.recent.forget(*doc);
        }
        let result = self.store.commit_unless_stale(&writes, &bases);
        self.compaction.committed();
        for doc in &rewritten {
            self.recent.forget(*doc);
        }
        // Committed or failed, these are no longer waiting. A write not
        // stored voids the copy it was made on first, in the same lock,
        // so no reload replays the writes made on that copy after it.
        let outcomes: Vec<Option<Seq>> = {
            let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
            let outcomes = match &result {
                Ok(outcomes) => outcomes.clone(),
                Err(_) => vec![None; answers.len()],
            };
            for ((doc, ticket, copy, _, _), outcome) in answers.iter().zip(&outcomes) {
                if outcome.is_none() && q.current(*doc, *copy) {
                    q.void(*doc);
                }
                q.unqueue(*doc, *ticket);
            }
            outcomes
        };
        let why = match &result {
            Ok(_) => NotStored::Overtaken,
            Err(err) => {
                tracing::error!(error = %err, writes = writes.len(), "commit failed; nothing acknowledged");
                NotStored::Failed(err.to_string())
            }
        };
        if let Some(last) = outcomes.iter().flatten().max() {
            if let Some(anchor) = &self.anchor {
                anchor.note_feed(*last);
            }
        }
        if result.is_ok() {
            let committed: Vec<Seq> = outcomes.iter().flatten().copied().collect();
            match self.store.watermark_after(&committed) {
                Ok(mark) => advance(&self.durable, mark),
                // The writes are stored; readers catch up at the next commit.
                Err(err) => tracing::error!(error = %err, "could not read the feed watermark"),
            }
        }
        for ((doc, _, _, ask, reply), outcome) in answers.into_iter().zip(outcomes) {
            match outcome {
                Some(seq) => {
                    if let Some(ask) = ask {
                        let _ = self.folds.send(ask);
                    }
                    let _ = reply.send(Ok(seq));
                }
                None => {
                    if result.is_ok() {
                        tracing::info!(record = %doc, "a write's copy of its record was overtaken by another node's; not stored");
                    }
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    }
}

/// Moves `durable` up to `mark`, never back, waking readers only if it moved.
fn advance(durable: &watch::Sender<Seq>, mark: Seq) {
    durable.send_if_modified(|at| {
        let moved = mark > *at;
        *at = (*at).max(mark);
        moved
    });
}

/// The compactor thread: folds each record it is told is due, those asked
/// for while it worked taken together so a busy record is folded once;
/// and snapshots each record written, once it has been left alone for
/// [`SNAPSHOT_QUIET`] and the committer idle for [`SNAPSHOT_IDLE`]. Ends
/// when every sender is gone, leaving snapshots not yet taken (the next
/// read of such a record whole asks again).
fn compact_loop(store: &dyn Store, state: &CompactionState, rx: mpsc::Receiver<Compact>) {
    let mut waiting = Waiting::default();
    loop {
        let wait = match waiting.oldest() {
            Some(at) => (at + SNAPSHOT_QUIET)
                .saturating_duration_since(Instant::now())
                .max(SNAPSHOT_IDLE.saturating_sub(state.idle_for())),
            None => Duration::from_secs(3600),
        };
        let mut folds = std::collections::BTreeSet::new();
        let mut take = |ask: Compact, waiting: &mut Waiting| match ask {
            Compact::Fold(id) => {
                folds.insert(id);
            }
            Compact::Snapshot(id) => waiting.note(id),
        };
        match rx.recv_timeout(wait) {
            Ok(ask) => take(ask, &mut waiting),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(more) = rx.try_recv() {
            take(more, &mut waiting);
        }
        for id in folds {
            fold_now(store, id);
        }
        // Oldest write first, while the committer stays idle; a shutdown
        // does not wait for the rest.
        let (mut looked, mut taken) = (0u64, 0u64);
        while state.idle_for() >= SNAPSHOT_IDLE {
            match rx.try_recv() {
                Ok(Compact::Fold(id)) => fold_now(store, id),
                Ok(Compact::Snapshot(id)) => waiting.note(id),
                Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let Some(id) = waiting.pop_quiet() else {
                break;
            };
            looked += 1;
            match snapshot(store, id) {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(record = %id, error = %err, "could not snapshot a record")
                }
            }
        }
        if looked > 0 && waiting.written.is_empty() {
            tracing::info!(looked, taken, "snapshots taken; none waiting");
        }
    }
}

fn fold_now(store: &dyn Store, id: DocId) {
    match fold(store, id) {
        Ok(true) => tracing::debug!(record = %id, "folded"),
        Ok(false) => tracing::debug!(record = %id, "not folded: it moved on meanwhile"),
        Err(err) => tracing::warn!(record = %id, error = %err, "could not fold a record"),
    }
}

/// Records waiting for a snapshot: the last write of each, and the writes
/// in order (a record written again leaves a stale entry, skipped when it
/// comes up). Bounded by [`SNAPSHOTS_WAITING_MAX`] records.
#[derive(Default)]
struct Waiting {
    written: std::collections::HashMap<DocId, Instant>,
    order: std::collections::VecDeque<(Instant, DocId)>,
}

impl Waiting {
    fn note(&mut self, id: DocId) {
        if self.written.len() >= SNAPSHOTS_WAITING_MAX && !self.written.contains_key(&id) {
            return;
        }
        let now = Instant::now();
        self.written.insert(id, now);
        self.order.push_back((now, id));
        if self.order.len() > 2 * SNAPSHOTS_WAITING_MAX {
            // Records written over and over during a long burst: keep one
            // entry each.
            let mut order: Vec<(Instant, DocId)> =
                self.written.iter().map(|(id, at)| (*at, *id)).collect();
            order.sort_unstable();
            self.order = order.into();
        }
    }

    fn oldest(&self) -> Option<Instant> {
        self.order.front().map(|(at, _)| *at)
    }

    /// The next record left alone for [`SNAPSHOT_QUIET`], if any.
    fn pop_quiet(&mut self) -> Option<DocId> {
        while let Some(&(at, id)) = self.order.front() {
            if at.elapsed() < SNAPSHOT_QUIET {
                return None;
            }
            self.order.pop_front();
            if self.written.get(&id) == Some(&at) {
                self.written.remove(&id);
                return Some(id);
            }
        }
        None
    }
}

/// Snapshots what the store holds of `id` ([`Store::keep_snapshot`]),
/// checked first like a fold. Nothing is kept for a record stored as one
/// chunk (a save, or a record made in one change: that is what a cold
/// start is sent), or whose snapshot is as recent as what is stored.
pub fn snapshot(store: &dyn Store, id: DocId) -> Result<bool, DocsError> {
    let Some(stored) = store.load(id)? else {
        return Ok(false);
    };
    // A record stored as one chunk is sent as it is: a save of one change
    // is no smaller than the change, and packed frames of changes made
    // alike deflate further than saves do.
    let one_chunk = docsync::split_chunks(&stored.bytes).is_ok_and(|c| c.len() == 1);
    if one_chunk {
        return Ok(false);
    }
    if let Ok(Some((kept, _))) = store.snapshot(id) {
        if kept >= stored.seq {
            return Ok(false);
        }
    }
    let doc = load_checked(id, &stored)?;
    let saved = docsync::contained(|| Ok(doc.save_nocompress()))
        .map_err(|e| DocsError::Load(id, e.to_string()))?;
    Ok(store.keep_snapshot(id, stored.seq, &saved)?)
}

/// Folds what the store holds of `id` into one save, checked first: bytes
/// that do not load to the heads the store recorded are left as they are
/// (a read reports them as damage).
pub fn fold(store: &dyn Store, id: DocId) -> Result<bool, DocsError> {
    let Some(stored) = store.load(id)? else {
        return Ok(false);
    };
    if stored.positions.len() < 2 {
        return Ok(false);
    }
    let doc = load_checked(id, &stored)?;
    // Uncompressed, like a snapshot: this is what a cold start reads when
    // it finds no snapshot, and packed frames compress it better so.
    let saved = docsync::contained(|| Ok(doc.save_nocompress()))
        .map_err(|e| DocsError::Load(id, e.to_string()))?;
    Ok(store.fold(id, &stored.positions, &saved)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sled::SledStore;
    use automerge::ReadDoc;

    #[test]
    fn the_cache_stays_bounded_but_never_drops_a_document_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_path(dir.path(), [1; 16]).unwrap();
        let docs = Docs::start(Arc::new(store), 2).unwrap();
        let id = |b: u8| DocId::from_bytes([b; 16]);
        let held = docs.handle(id(1)).unwrap();
        for b in 2..10 {
            docs.handle(id(b)).unwrap();
        }
        // The held document is still the one live copy...
        assert!(Arc::ptr_eq(&held, &docs.handle(id(1)).unwrap()));
        // ...and the documents nobody holds were evicted down to the bound.
        assert_eq!(docs.cached(), 2);
        drop(held);
        for b in 10..14 {
            docs.handle(id(b)).unwrap();
        }
        assert_eq!(docs.cached(), 2);
        docs.shutdown().unwrap();
    }

    /// One more change to the cached copy of `id`, written through the
    /// committer; returns its feed position once durable.
    fn edit(docs: &Docs, id: DocId, n: u32) -> Seq {
        edit_queued(docs, id, n).blocking_recv().unwrap().unwrap()
    }

    /// A change to the cached copy of `id`, handed to the committer
    /// without waiting.
    fn edit_queued(docs: &Docs, id: DocId, n: u32) -> oneshot::Receiver<Result<Seq, NotStored>> {
        use automerge::transaction::Transactable;
        let handle = docs.handle(id).unwrap();
        let mut live = handle.lock().unwrap();
        let before = live.doc.get_heads();
        let mut tx = live.doc.transaction();
        tx.put(automerge::ROOT, format!("k{n}"), i64::from(n))
            .unwrap();
        tx.commit();
        let chunk = docsync::encode_changes(&live.doc.get_changes(&before));
        let pending = Docs::write_for(id, &mut live, chunk, None, None).unwrap();
        docs.submit(pending)
    }

    /// Records loaded ahead in one read are the copies later uses get, as
    /// loading them one at a time would make them (queued writes too).
    #[test]
    fn records_loaded_ahead_are_the_copies_later_uses_get() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_path(dir.path(), [1; 16]).unwrap();
        let docs = Docs::start(Arc::new(store), 16).unwrap();
        let id = |b: u8| DocId::from_bytes([b; 16]);
        for b in 1..=3 {
            edit(&docs, id(b), u32::from(b));
            docs.forget(id(b));
        }
        // A write of record 3 queued, not yet read back: the copy loaded
        // ahead holds it too.
        let queued = edit_queued(&docs, id(3), 30);
        docs.forget(id(3));
        docs.prefetch(&[id(1), id(2), id(3), id(2), id(7)]);
        assert_eq!(docs.cached(), 4, "three stored records and a new one");
        let held = docs.handle(id(2)).unwrap();
        assert!(Arc::ptr_eq(&held, &docs.handle(id(2)).unwrap()));
        for (b, keys) in [(1, vec!["k1"]), (2, vec!["k2"]), (3, vec!["k3", "k30"])] {
            let handle = docs.handle(id(b)).unwrap();
            let live = handle.lock().unwrap();
            for k in keys {
                assert!(
                    live.doc.get(automerge::ROOT, k).unwrap().is_some(),
                    "{b}: {k}"
                );
            }
        }
        queued.blocking_recv().unwrap().unwrap();
        docs.shutdown().unwrap();
    }

    /// Two nodes on one database: a copy on node B that node A's write
    /// overtook is refused, with every write made on it, and B's next
    /// write is made on the record as stored, which then loads whole
    /// (no stored change depends on a refused one).
    #[test]
    fn writes_on_a_copy_another_node_overtook_are_refused_and_the_next_copy_is_fresh() {
        use crate::storage::postgres::{testing, Pg, PgStore};
        let url = testing::database_url();
        let open = || {
            let store: Arc<dyn Store> =
                Arc::new(PgStore::open(Pg::connect(&url).unwrap()).unwrap());
            Docs::start(store, 8).unwrap()
        };
        let (a, b) = (open(), open());
        let id = DocId::from_bytes([21; 16]);
        edit(&a, id, 0);
        drop(b.handle(id).unwrap());
        edit(&a, id, 1);
        // Two writes pipelined on B's stale copy: neither is stored.
        let (w2, w3) = (edit_queued(&b, id, 2), edit_queued(&b, id, 3));
        assert!(w2.blocking_recv().unwrap().is_err());
        assert!(w3.blocking_recv().unwrap().is_err());
        let stored_at = edit(&b, id, 4);
        let stored = b.store().load(id).unwrap().unwrap();
        assert_eq!(stored.seq, stored_at);
        let doc = load_checked(id, &stored).unwrap();
        for (n, kept) in [(0, true), (1, true), (2, false), (3, false), (4, true)] {
            assert_eq!(
                doc.get(automerge::ROOT, format!("k{n}")).unwrap().is_some(),
                kept,
                "k{n}"
            );
        }
        // A's copy lacks B's write: refused until A hears of it.
        assert!(edit_queued(&a, id, 5).blocking_recv().unwrap().is_err());
        a.written_elsewhere(id, stored_at);
        // Heard of A's next write, B voids its copy before writing on it.
        let at = edit(&a, id, 5);
        b.written_elsewhere(id, at);
        edit(&b, id, 6);
        let doc = load_checked(id, &b.store().load(id).unwrap().unwrap()).unwrap();
        assert!(doc.get(automerge::ROOT, "k5").unwrap().is_some());
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    }

    /// Readers share what the store holds of a record: each is sent the
    /// chunks after its own position, a newer write is read again, and
    /// nothing read before an erasure is served after it.
    #[test]
    fn shared_chunks_follow_new_writes_and_are_forgotten_on_erasure() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open_path(dir.path(), [1; 16]).unwrap());
        let docs = Docs::start(store.clone(), 8).unwrap();
        let id = DocId::from_bytes([5; 16]);
        let first = edit(&docs, id, 1);
        let second = edit(&docs, id, 2);
        let from_start = docs.recent_after(id, first - 1, second).unwrap().unwrap();
        let from_first = docs.recent_after(id, first, second).unwrap().unwrap();
        let stored = store.chunks_after(id, first).unwrap().unwrap();
        assert_eq!(from_first.data, stored.bytes);
        assert_eq!(from_first.seq, second);
        assert!(from_start.data.len() > from_first.data.len());
        assert!(from_start.data.ends_with(&from_first.data));
        // A write after the shared copy was read: its entry reads it.
        let third = edit(&docs, id, 3);
        let after = docs.recent_after(id, second, third).unwrap().unwrap();
        assert_eq!(after.seq, third);
        assert_eq!(
            after.data,
            store.chunks_after(id, second).unwrap().unwrap().bytes
        );
        assert!(!after.data.is_empty());
        // Erased: an earlier entry read now finds nothing to send.
        docs.erase(id).unwrap();
        assert_eq!(docs.recent_after(id, first, second).unwrap(), None);
        docs.shutdown().unwrap();
    }

    #[test]
    fn the_compactor_folds_a_busy_record_from_the_store_and_loses_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open_path(dir.path(), [1; 16]).unwrap());
        let docs = Docs::start(store.clone(), 8).unwrap();
        let id = DocId::from_bytes([7; 16]);
        let writes = CHUNKS_BEFORE_COMPACTION + 5;
        for n in 0..writes {
            edit(&docs, id, n);
        }
        // Folded in the background, once the 64th write was durable.
        let mut folded = false;
        for _ in 0..200 {
            let stored = store.load(id).unwrap().unwrap();
            if stored.positions.len() < CHUNKS_BEFORE_COMPACTION as usize {
                folded = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        assert!(folded, "the record was never folded");
        docs.shutdown().unwrap();
        drop(docs);
        // What the store holds loads to every change, from the store alone.
        let stored = store.load(id).unwrap().unwrap();
        let doc = Automerge::load(&stored.bytes).unwrap();
        assert_eq!(doc.get_changes(&[]).len(), writes as usize);
        assert_eq!(loads_to(&doc, &stored.heads), Ok(()));
        for n in 0..writes {
            assert!(doc.get(automerge::ROOT, format!("k{n}")).unwrap().is_some());
        }
    }

    #[test]
    fn a_fold_keeps_a_chunk_written_after_it_read_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open_path(dir.path(), [1; 16]).unwrap());
        let docs = Docs::start(store.clone(), 8).unwrap();
        let id = DocId::from_bytes([8; 16]);
        for n in 0..3 {
            edit(&docs, id, n);
        }
        // The compactor's read, then a write it never saw, then its fold.
        let read = store.load(id).unwrap().unwrap();
        let saved = Automerge::load(&read.bytes).unwrap().save();
        let late = edit(&docs, id, 3);
        assert!(store.fold(id, &read.positions, &saved).unwrap());
        let stored = store.load(id).unwrap().unwrap();
        assert_eq!(stored.positions, vec![read.seq, late]);
        let doc = Automerge::load(&stored.bytes).unwrap();
        assert!(doc.get(automerge::ROOT, "k3").unwrap().is_some());
        assert_eq!(loads_to(&doc, &stored.heads), Ok(()));
        // Folding it again (the compactor's own call) reads it afresh.
        assert!(fold(store.as_ref(), id).unwrap());
        assert_eq!(store.load(id).unwrap().unwrap().positions, vec![late]);
        docs.shutdown().unwrap();
    }

    /// Waits (bounded) until the compactor has snapshotted `id`.
    fn snapshot_of(store: &dyn Store, id: DocId) -> Option<(Seq, Vec<u8>)> {
        let wait = SNAPSHOT_QUIET + SNAPSHOT_IDLE + Duration::from_secs(10);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(kept) = store.snapshot(id).unwrap() {
                return Some(kept);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A record left alone is snapshotted; a cold start is then sent the
    /// snapshot and the chunks written after it, which load to exactly the
    /// record; an erasure drops the snapshot with the record.
    #[test]
    fn a_quiet_record_is_snapshotted_and_a_cold_start_is_sent_it_and_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open_path(dir.path(), [1; 16]).unwrap());
        let docs = Docs::start(store.clone(), 8).unwrap();
        let id = DocId::from_bytes([9; 16]);
        for n in 0..5 {
            edit(&docs, id, n);
        }
        let (at, saved) =
            snapshot_of(store.as_ref(), id).expect("the record was never snapshotted");
        assert_eq!(Some(at), store.doc_seq(id).unwrap());
        let chunks = docsync::split_chunks(&saved).unwrap();
        assert!(matches!(
            chunks.as_slice(),
            [(docsync::ChunkKind::Document, _)]
        ));
        // Written again: the cold start gets the snapshot and the new chunk.
        let late = edit(&docs, id, 5);
        let sent = docs.stored(id).unwrap().unwrap();
        assert!(sent.data.starts_with(&saved));
        assert_eq!(sent.seq, late);
        let mut tablet = Automerge::new();
        docsync::apply_chunks(&mut tablet, &sent.data).unwrap();
        let stored = store.load(id).unwrap().unwrap();
        assert_eq!(loads_to(&tablet, &stored.heads), Ok(()));
        assert_eq!(to_heads(&tablet.get_heads()), sent.heads);
        for n in 0..6 {
            assert!(tablet
                .get(automerge::ROOT, format!("k{n}"))
                .unwrap()
                .is_some());
        }
        // The chunks are all still there: the snapshot is a copy.
        assert_eq!(stored.positions.len(), 6);
        docs.erase(id).unwrap();
        assert_eq!(store.snapshot(id).unwrap(), None);
        assert_eq!(docs.stored(id).unwrap(), None);
        docs.shutdown().unwrap();
    }

    /// A long catch-up reads from a position past zero: a record first
    /// written after it is sent its snapshot, as a cold start's first batch
    /// is, while a reader holding some of the record gets only what it lacks.
    #[test]
    fn a_reader_with_none_of_a_record_is_sent_its_snapshot_wherever_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open_path(dir.path(), [1; 16]).unwrap());
        let docs = Docs::start(store.clone(), 8).unwrap();
        let (earlier, id) = (DocId::from_bytes([11; 16]), DocId::from_bytes([12; 16]));
        let before = edit(&docs, earlier, 0);
        let first = edit(&docs, id, 0);
        for n in 1..5 {
            edit(&docs, id, n);
        }
        let (at, saved) =
            snapshot_of(store.as_ref(), id).expect("the record was never snapshotted");
        let sent = docs.recent_after(id, before, at).unwrap().unwrap();
        assert_eq!(sent.data, saved);
        assert_eq!(sent.seq, at);
        let part = docs.recent_after(id, first, at).unwrap().unwrap();
        assert_eq!(
            part.data,
            store.chunks_after(id, first).unwrap().unwrap().bytes
        );
        // Written again: the snapshot and the chunk after it, loading to
        // the record as stored.
        let late = edit(&docs, id, 5);
        let sent = docs.recent_after(id, before, late).unwrap().unwrap();
        assert!(sent.data.starts_with(&saved) && sent.data.len() > saved.len());
        let mut tablet = Automerge::new();
        docsync::apply_chunks(&mut tablet, &sent.data).unwrap();
        let stored = store.load(id).unwrap().unwrap();
        assert_eq!(loads_to(&tablet, &stored.heads), Ok(()));
        assert_eq!(to_heads(&tablet.get_heads()), sent.heads);
        docs.shutdown().unwrap();
    }

    /// A snapshot that fails its checksum costs bytes, never changes: the
    /// chunks are sent instead. A snapshot older than a rebuild or for an
    /// erased record is not kept.
    #[test]
    fn a_damaged_or_stale_snapshot_is_never_what_a_cold_start_gets() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open_path(dir.path(), [1; 16]).unwrap());
        let docs = Docs::start(store.clone(), 8).unwrap();
        let id = DocId::from_bytes([10; 16]);
        let first = edit(&docs, id, 0);
        let last = edit(&docs, id, 1);
        let good = Automerge::load(&store.load(id).unwrap().unwrap().bytes).unwrap();
        let mut damaged = good.save_nocompress();
        let at = damaged.len() / 2;
        damaged[at] ^= 0x40;
        // Kept at an earlier position than the compactor would, so the
        // chunk after it is sent too.
        assert!(store.keep_snapshot(id, first, &damaged).unwrap());
        let sent = docs.stored(id).unwrap().unwrap();
        assert!(!sent.data.starts_with(&damaged[..at + 1]));
        assert_eq!(sent.data, store.load(id).unwrap().unwrap().bytes);
        assert_eq!(sent.seq, last);
        // Past the record's last write, or as old as the kept one: refused.
        assert!(!store.keep_snapshot(id, last + 1, &good.save()).unwrap());
        assert!(!store.keep_snapshot(id, first, &good.save()).unwrap());
        docs.erase(id).unwrap();
        assert!(!store.keep_snapshot(id, last, &good.save()).unwrap());
        docs.shutdown().unwrap();
    }
}
