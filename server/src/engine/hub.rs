//! The WebSocket sync endpoint: one task per connection drives a
//! [`ServerSession`] and carries out its events against [`Docs`].
//!
//! The task `select!`s on the socket, on writes becoming durable (to answer
//! pushes in order), on the durable feed moving (live push to this device)
//! and on shutdown. Pushes are pipelined: the task keeps reading while
//! earlier pushes wait for their group commit.

use std::sync::Arc;

use baraza_protocol::docsync;
use baraza_protocol::{DeviceId, DeviceName, DocId, ErrorCode, Feed, Head, Limits, Seq};
use tokio::sync::{oneshot, watch};

use crate::engine::docs::{Docs, DocsError, LiveDoc, NotStored};
use crate::engine::view::{
    ConflictValueView, ConflictView, DeviceLabel, FieldValue, HistoryView, RecordView,
};
use crate::identity::caller::{desk_device_id, Caller, DeviceIdentity, DESK_DEVICE_NAME};
use crate::storage::catch_up::{BatchReads, CatchUpBatch};
use crate::storage::store::{ClockSkew, IndexEntry, Receipt, RecordFilter, RecordRow, WriteChecks};
use baraza_records::access::WriteSummary;
use baraza_records::{Header, Kind, Principal};

/// Reports panics that [`docsync::contained`] catches (automerge failing
/// an internal check on a device's bytes) as one log line each, and leaves
/// every other panic to the default report: those are bugs of ours.
pub fn report_contained_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if docsync::is_contained() {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::warn!(at = %at, "the automerge library failed an internal check on a device's input; contained, and the change refused");
        } else {
            default(info);
        }
    }));
}

/// Claimed times further ahead of the server's clock than this (one day,
/// in ms) flag a record when `[records] clock_ahead_max_ms` is not set.
pub const CLOCK_AHEAD_MAX_MS_DEFAULT: i64 = 86_400_000;

/// Records whose access facts (kind, area, creator) are kept in memory:
/// about 100 bytes each, so a few megabytes however many records the
/// server holds.
const ACCESS_CACHE_MAX: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(65_536) {
    Some(n) => n,
    None => unreachable!(),
};

/// Documents kept in memory by default.
pub const CACHE_DOCS_DEFAULT: usize = 4096;
/// Feed entries read per catch-up step, bounding what one step holds. A
/// step ends with the cursor a tablet stores, so it is also what a cold
/// start cut mid-way loses: 64 records pack into about 12 KB, half a
/// second of a 256 kbit/s link, for about 5% more bytes than steps of 256
/// (measured with the bench's S2 and S2c at 10,000 records).
const CATCH_UP_BATCH: usize = 64;

/// Everything the sync endpoint needs, shared by all connections.
pub struct SyncHub {
    docs: Arc<Docs>,
    limits: Limits,
    audit: crate::storage::audit::AuditLog,
    /// Off only to measure what the write-rule inspection costs; the
    /// server warns loudly when started that way.
    write_rules: std::sync::atomic::AtomicBool,
    /// How far ahead of the server's clock a claimed time may be before
    /// the record is flagged, in ms (`[records] clock_ahead_max_ms`).
    clock_ahead_max_ms: std::sync::atomic::AtomicI64,
    /// Ends the actor ids of changes made at the review desk, so two
    /// server processes never author under the same actor.
    desk_actor_suffix: [u8; 8],
    /// What read checks need of the records seen most recently, at most
    /// [`ACCESS_CACHE_MAX`]: a server holding more records reads the rest
    /// from the store's access rows again.
    access_cache: std::sync::RwLock<lru::LruCache<DocId, Arc<Access>>>,
    /// Frames from devices being decoded and applied at once, at most.
    work_slots: tokio::sync::Semaphore,
    /// A sync session silent this long is closed (`session_idle_ms`).
    session_idle_ms: std::sync::atomic::AtomicU64,
    /// Damaged records being rebuilt from devices' copies, by the sync
    /// protocol from an empty document.
    repairs: std::sync::Mutex<std::collections::HashMap<DocId, automerge::Automerge>>,
    /// Set at shutdown: the background filling of list row summaries
    /// stops, and `flush` waits (on `filling`) for the record in hand.
    closing: std::sync::atomic::AtomicBool,
    /// Held while a summary is filled in.
    filling: std::sync::Mutex<()>,
    /// Other nodes write the same store: a copy a write was judged on may
    /// be overtaken, so pushes are kept to be judged again.
    shared: std::sync::atomic::AtomicBool,
    /// Attachments' bytes: an erased record's go with it.
    attachments: Arc<dyn crate::storage::attachments::AttachmentStore>,
}

/// What [`SyncHub::attachment_of`] found: the record's area and kind,
/// the reference asked for and every reference the record holds.
#[derive(Clone, Debug)]
pub struct RecordAttachments {
    /// The record's area.
    pub area: String,
    /// The record's kind.
    pub kind: Kind,
    /// The reference asked for.
    pub one: baraza_records::AttachmentRef,
    /// Every reference the record holds, that one included.
    pub all: Vec<baraza_records::AttachmentRef>,
}

/// What a device's changes are applied to (see [`SyncHub::target`]).
enum Target {
    /// The record as stored (or a new one): its cached copy.
    Stored(crate::engine::docs::DocHandle),
    /// A record the caller may not read: an empty copy, never stored.
    Hidden,
    /// A record found damaged, which this device's copy may repair.
    Repair,
}

/// Marks a quarantine set because stored bytes were found damaged (one an
/// administrator set is lifted only by an administrator).
const DAMAGED: &str = "damaged: ";

/// The copy a device's changes are applied to: the cached document under
/// its lock, or, for a record the caller may not read, an empty one that
/// is never stored, so it is answered as a missing record is.
enum Working<'a> {
    Held(std::sync::MutexGuard<'a, LiveDoc>),
    Scratch(Box<LiveDoc>),
}

impl<'a> Working<'a> {
    fn of(handle: Option<&'a crate::engine::docs::DocHandle>) -> Working<'a> {
        match handle {
            Some(h) => Working::Held(h.lock().unwrap_or_else(|p| p.into_inner())),
            None => Working::Scratch(Box::new(LiveDoc::empty())),
        }
    }
}

impl std::ops::Deref for Working<'_> {
    type Target = LiveDoc;
    fn deref(&self) -> &LiveDoc {
        match self {
            Working::Held(live) => live,
            Working::Scratch(live) => live,
        }
    }
}

impl std::ops::DerefMut for Working<'_> {
    fn deref_mut(&mut self) -> &mut LiveDoc {
        match self {
            Working::Held(live) => live,
            Working::Scratch(live) => live,
        }
    }
}

/// What read checks need of a record.
struct Access {
    kind: Kind,
    area: String,
    created_by: String,
}

/// Why a change made at the review desk was not stored.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    /// No such record, or one the supervisor may not read (the same).
    #[error("no such record")]
    NotFound,
    /// The edit itself failed (unknown field, wrong type).
    #[error("{0}")]
    Edit(String),
    /// A rule refused it.
    #[error("{message}")]
    Refused {
        /// The rule, if a rule refused it.
        rule: Option<baraza_records::access::Rule>,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Docs(#[from] DocsError),
}

/// Why a record could not be erased.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// No such record.
    #[error("no record {0}")]
    NotFound(DocId),
    /// Only contact details are erased.
    #[error("record {0} is a {1} record; only feedback_contact records can be erased")]
    NotContact(DocId, String),
    /// The store failed.
    #[error(transparent)]
    Docs(#[from] DocsError),
}

impl From<crate::storage::store::StoreError> for EraseError {
    fn from(e: crate::storage::store::StoreError) -> Self {
        EraseError::Docs(DocsError::Store(e))
    }
}

#[path = "nodes.rs"]
mod nodes;
#[path = "session.rs"]
mod session;

/// Waits for a write handed to the committer; one with nothing to store
/// is done at once, at the feed position `now`.
async fn wait_stored(
    rx: Option<oneshot::Receiver<Result<Seq, NotStored>>>,
    now: Seq,
) -> Result<Seq, NotStored> {
    match rx {
        Some(rx) => rx
            .await
            .unwrap_or_else(|_| Err(NotStored::Failed("the server is shutting down".into()))),
        None => Ok(now),
    }
}

/// Heads as the audit log and device records keep them: hex.
fn hex_heads(heads: &[Head]) -> Vec<String> {
    heads.iter().map(|h| format!("{h:?}")).collect()
}

impl SyncHub {
    /// Opens the hub over `storage` with default limits.
    pub fn open(storage: &crate::storage::Storage) -> anyhow::Result<Arc<SyncHub>> {
        SyncHub::open_with(storage, Limits::DEFAULT, CACHE_DOCS_DEFAULT)
    }

    /// Opens the hub over `storage`.
    pub fn open_with(
        storage: &crate::storage::Storage,
        limits: Limits,
        cache_docs: usize,
    ) -> anyhow::Result<Arc<SyncHub>> {
        SyncHub::open_checked(storage, limits, cache_docs, None)
    }

    /// Opens the hub over `storage`, and with `anchor` (the anchor file's
    /// path) first checks the stores against it and the ends of the feed
    /// and audit chain, refusing to open damaged data; then keeps the
    /// anchor up to date.
    pub fn open_checked(
        storage: &crate::storage::Storage,
        limits: Limits,
        cache_docs: usize,
        anchor: Option<&std::path::Path>,
    ) -> anyhow::Result<Arc<SyncHub>> {
        let mut audit = crate::storage::audit::AuditLog::new(storage.audit.clone());
        let store = storage.docs.clone();
        let mut anchored = None;
        if let Some(path) = anchor {
            use crate::storage::integrity::{quick_check, Anchor, AnchorState};
            let vouched = Anchor::read(path)?;
            let problems = quick_check(&*store, &audit, vouched.as_ref());
            if !problems.is_empty() {
                let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
                anyhow::bail!(
                    "the data directory is damaged; refusing to start rather than serve less than was acknowledged:\n{}\n\
                     Run `baraza-server check --data DIR` for a full report, and see README's recovery section.",
                    list.join("\n")
                );
            }
            let (audit_seq, audit_hash) = audit.last()?;
            let now = AnchorState {
                feed: store.feed_watermark()?,
                audit_seq,
                audit_hash,
            };
            let anchor = Arc::new(Anchor::open(path, now)?);
            audit = audit.with_anchor(anchor.clone());
            anchored = Some(anchor);
        }
        tracing::info!(
            store = ?store.store_id(),
            documents = store.doc_count()?,
            feed = store.feed_watermark()?,
            "document store open"
        );
        let docs = Docs::start_anchored(store, cache_docs, anchored)?;
        Ok(Arc::new(SyncHub {
            docs,
            limits,
            audit,
            write_rules: std::sync::atomic::AtomicBool::new(true),
            clock_ahead_max_ms: std::sync::atomic::AtomicI64::new(CLOCK_AHEAD_MAX_MS_DEFAULT),
            access_cache: std::sync::RwLock::new(lru::LruCache::new(ACCESS_CACHE_MAX)),
            desk_actor_suffix: rand::random(),
            repairs: Default::default(),
            work_slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
            ),
            session_idle_ms: std::sync::atomic::AtomicU64::new(
                crate::config::SESSION_IDLE_MS_DEFAULT,
            ),
            closing: std::sync::atomic::AtomicBool::new(false),
            filling: std::sync::Mutex::new(()),
            shared: std::sync::atomic::AtomicBool::new(false),
            attachments: storage.attachments.clone(),
        }))
    }

    /// Starts filling in, on a thread of its own, the list row summaries
    /// of records last written before the server kept them (see
    /// `fill_summaries`). The serving server calls it once; tools that
    /// open the store for one command do not.
    pub fn start_filling_summaries(self: &Arc<Self>) -> std::io::Result<()> {
        // In the background: it loads records, and starting must not
        // cost time in proportion to the records held.
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("baraza-summaries".into())
            .spawn(move || SyncHub::fill_summaries(weak))?;
        Ok(())
    }

    /// Fills in, once, the list row summaries of records last written
    /// before the server kept them (a data dir from an older version):
    /// each such record is loaded and its summary computed as an admitted
    /// write computes it, then stored unless a write got there first.
    /// Stops at shutdown; a record that does not load is left to list
    /// with the defaults.
    fn fill_summaries(hub: std::sync::Weak<SyncHub>) {
        const BATCH: usize = 64;
        let mut after = None;
        let mut filled = 0usize;
        loop {
            let Some(hub) = hub.upgrade() else { return };
            let batch = match hub.docs.store().unsummarised(after, BATCH) {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(error = %err, "could not look for records without a list row summary");
                    return;
                }
            };
            if batch.is_empty() {
                break;
            }
            for id in batch {
                after = Some(id);
                let _filling = hub.filling.lock().unwrap_or_else(|p| p.into_inner());
                if hub.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let stored = hub.summary_of(id).and_then(|summary| match summary {
                    Some(summary) => Ok(hub.docs.store().fill_summary(id, &summary)?),
                    None => Ok(false),
                });
                match stored {
                    Ok(true) => filled += 1,
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(record = %id, error = %err, "could not fill in a record's list row summary")
                    }
                }
            }
        }
        if filled > 0 {
            tracing::info!(
                records = filled,
                "list row summaries filled in for records stored before they were kept"
            );
        }
    }

    /// A record's list row summary as it stands now.
    fn summary_of(
        &self,
        id: DocId,
    ) -> Result<Option<crate::storage::store::RecordSummary>, DocsError> {
        let handle = self.docs.handle(id)?;
        let live = handle.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Header::read(&live.doc)
            .ok()
            .map(|header| index_entry(header, &live.doc).summary))
    }

    /// Turns the write-rule inspection off (true) or on. Only for
    /// measuring its cost: without it, any user may approve anything.
    pub fn set_skip_write_rules(&self, skip: bool) {
        if skip {
            tracing::warn!(
                "write rules are OFF: any device may change any field of records it can \
                 write (for benchmarks only)"
            );
        }
        self.write_rules
            .store(!skip, std::sync::atomic::Ordering::Relaxed);
    }

    /// Flags records whose claimed times are more than `ms` ahead of the
    /// server's clock when they arrive.
    pub fn set_clock_ahead_max_ms(&self, ms: u64) {
        self.clock_ahead_max_ms.store(
            i64::try_from(ms).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Closes sync sessions that hear nothing from their device for `idle`.
    pub fn set_session_idle(&self, idle: std::time::Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        self.session_idle_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn session_idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.session_idle_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// What the clock check of changes arriving now compares against.
    fn clock_check(&self) -> ClockCheck {
        ClockCheck {
            now_ms: i64::try_from(crate::clock::unix_now_ms()).unwrap_or(i64::MAX),
            ahead_max_ms: self
                .clock_ahead_max_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A record's implausible claimed times, if any (from a small tree,
    /// no document loaded): for the desk's list.
    pub fn clock_skew(&self, id: DocId) -> Result<Option<ClockSkew>, DocsError> {
        Ok(self.docs.store().clock_skew(id)?)
    }

    /// Records matching a filter that `who` may read, from the index (no
    /// document is loaded).
    pub fn list_records(
        &self,
        who: &Principal,
        filter: &RecordFilter,
        limit: usize,
    ) -> Result<Vec<RecordRow>, DocsError> {
        let scope = crate::storage::store::ReadScope::of(who);
        Ok(self.docs.store().list_records(filter, &scope, limit)?)
    }

    /// One record's listing row if `who` may read it, by the rule
    /// [`SyncHub::list_records`] applies (no document is loaded).
    pub fn record_row(&self, who: &Principal, id: DocId) -> Result<Option<RecordRow>, DocsError> {
        Ok(self.docs.store().record_row(id)?.filter(|row| {
            Kind::parse(&row.entry.kind).is_some_and(|kind| {
                who.may_read_parts(kind, &row.entry.area, &row.entry.created_by)
            })
        }))
    }

    /// Watches the feed position up to which writes are durable: what
    /// wakes live sync sessions, and the review desk's event streams.
    pub fn durable(&self) -> watch::Receiver<Seq> {
        self.docs.durable()
    }

    /// The records written at feed positions `after < seq <= upto`, at
    /// most `limit` entries, oldest first (a record written twice is
    /// there twice).
    pub fn written_after(
        &self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, DocsError> {
        Ok(self.docs.store().entries_after(after, upto, limit)?)
    }

    /// One record as an export holds it, if `who` may read it; with
    /// `contacts`, a feedback record carries its contact details too
    /// (when `who` may read those). Not audited here: the export is, once.
    pub fn export_record(
        &self,
        who: &Principal,
        id: DocId,
        contacts: bool,
    ) -> Result<Option<crate::engine::view::ExportRecord>, DocsError> {
        if !self.readable(who, id)? {
            return Ok(None);
        }
        let (header, review_state, fields, decisions) = {
            let handle = self.docs.handle(id)?;
            let live = handle.lock().unwrap_or_else(|p| p.into_inner());
            let Ok(header) = Header::read(&live.doc) else {
                return Ok(None);
            };
            // Decisions from the change messages (`review returned by ...`):
            // cheap, no diff needed.
            let decisions = live
                .doc
                .get_changes(&[])
                .iter()
                .filter_map(|c| c.message())
                .filter_map(|m| m.strip_prefix("review "))
                .filter_map(|m| m.split(' ').next())
                .filter_map(baraza_records::ReviewState::parse)
                .filter(|d| d.is_decision())
                .collect();
            (
                header,
                baraza_records::review_state(&live.doc),
                field_tree(&live.doc, &automerge::ROOT),
                decisions,
            )
        };
        let mut contact = None;
        if contacts && header.kind == Kind::Feedback {
            if let Some(cid) = fields
                .get("contact")
                .and_then(FieldValue::as_text)
                .and_then(|c| c.parse::<DocId>().ok())
            {
                if self.readable(who, cid)? {
                    let handle = self.docs.handle(cid)?;
                    let live = handle.lock().unwrap_or_else(|p| p.into_inner());
                    contact = Some(field_tree(&live.doc, &automerge::ROOT));
                }
            }
        }
        Ok(Some(crate::engine::view::ExportRecord {
            id: id.to_string(),
            header,
            review_state,
            fields,
            contact,
            decisions,
            clock: self.docs.store().clock_skew(id)?,
        }))
    }

    /// A record's field values, for free-text search.
    pub fn record_fields(&self, id: DocId) -> Result<FieldValue, DocsError> {
        let handle = self.docs.handle(id)?;
        let live = handle.lock().unwrap_or_else(|p| p.into_inner());
        Ok(field_tree(&live.doc, &automerge::ROOT))
    }

    /// The reference to the attachment `sha256` that record `id` holds,
    /// with every reference it holds, if `who` may read the record and it
    /// holds that one: who may read an attachment follows the record. A
    /// quarantined or erased record holds none.
    pub fn attachment_of(
        &self,
        who: &Principal,
        id: DocId,
        sha256: &str,
    ) -> Result<Option<RecordAttachments>, DocsError> {
        let store = self.docs.store();
        if store.doc_seq(id)?.is_none()
            || !self.readable(who, id)?
            || store.quarantined(id)?.is_some()
            || store.erased(id)?.is_some()
        {
            return Ok(None);
        }
        let handle = self.docs.handle(id)?;
        let live = handle.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(header) = Header::read(&live.doc) else {
            return Ok(None);
        };
        let all = baraza_records::attachment::refs(&live.doc, header.kind);
        let Some(one) = all.iter().find(|r| r.sha256 == sha256).cloned() else {
            return Ok(None);
        };
        Ok(Some(RecordAttachments {
            area: header.area,
            kind: header.kind,
            one,
            all,
        }))
    }

    /// True if record `id` holds a reference to `sha256` (whoever may read
    /// it); false for a record erased, quarantined or not there.
    pub fn refers_to(&self, id: DocId, sha256: &str) -> Result<bool, DocsError> {
        let store = self.docs.store();
        if store.doc_seq(id)?.is_none()
            || store.erased(id)?.is_some()
            || store.quarantined(id)?.is_some()
        {
            return Ok(false);
        }
        let handle = self.docs.handle(id)?;
        let live = handle.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Header::read(&live.doc)
            .ok()
            .and_then(|h| baraza_records::attachment::find(&live.doc, h.kind, sha256))
            .is_some())
    }

    /// Every digest any stored record refers to: a walk of the whole
    /// feed, for garbage collection to confirm what it would remove.
    /// Blocking, and costly in proportion to the records held.
    pub fn referenced_digests(&self) -> Result<std::collections::HashSet<String>, DocsError> {
        let store = self.docs.store();
        let upto = store.feed_watermark()?;
        let mut found = std::collections::HashSet::new();
        let mut after = 0;
        // Each step moves past at least one entry, and the feed below
        // the watermark is finite.
        loop {
            let entries = store.entries_after(after, upto, 1024)?;
            let Some(&(last, _)) = entries.last() else {
                break;
            };
            for (_, id) in entries {
                if store.erased(id)?.is_some() || store.quarantined(id)?.is_some() {
                    continue;
                }
                let handle = self.docs.handle(id)?;
                let live = handle.lock().unwrap_or_else(|p| p.into_inner());
                if let Ok(h) = Header::read(&live.doc) {
                    found.extend(
                        baraza_records::attachment::refs(&live.doc, h.kind)
                            .into_iter()
                            .map(|r| r.sha256),
                    );
                }
            }
            after = last;
        }
        Ok(found)
    }

    /// True if `who` may read the record (false if there is none).
    fn readable(&self, who: &Principal, id: DocId) -> Result<bool, DocsError> {
        Ok(self
            .access(id)?
            .is_some_and(|a| who.may_read_parts(a.kind, &a.area, &a.created_by)))
    }

    /// Kind, area and creator of a stored record. Headers never change, so
    /// what was read once is kept: catch-up asks for every feed entry of
    /// every connection.
    fn access(&self, id: DocId) -> Result<Option<Arc<Access>>, DocsError> {
        self.access_given(id, None)
    }

    /// [`SyncHub::access`], given what admission read of the record
    /// already: the store is asked only for a record stored before the
    /// access index existed.
    fn access_checked(
        &self,
        id: DocId,
        checks: &WriteChecks,
    ) -> Result<Option<Arc<Access>>, DocsError> {
        self.access_given(id, Some(checks))
    }

    fn access_given(
        &self,
        id: DocId,
        given: Option<&WriteChecks>,
    ) -> Result<Option<Arc<Access>>, DocsError> {
        // Peeked under the read lock so catch-ups do not queue on one
        // another; entries age in the order they were stored.
        if let Some(a) = self.read_cache().peek(&id) {
            return Ok(Some(a.clone()));
        }
        let row = match given {
            Some(checks) => checks.access.clone(),
            None => self.docs.store().access_of(id)?,
        };
        let stored = |hub: &Self| -> Result<bool, DocsError> {
            Ok(match given {
                Some(checks) => checks.stored,
                None => hub.docs.store().doc_seq(id)?.is_some(),
            })
        };
        let found = match row {
            Some(a) => access_from_row(&a),
            None if stored(self)? => {
                // Stored before the access index existed: read the header.
                let handle = self.docs.handle(id)?;
                let live = handle.lock().unwrap_or_else(|p| p.into_inner());
                Header::read(&live.doc).ok().map(|h| Access {
                    kind: h.kind,
                    area: h.area,
                    created_by: h.created_by_user,
                })
            }
            None => None,
        };
        let Some(found) = found else {
            // Not cached: the record may arrive later.
            return Ok(None);
        };
        let found = Arc::new(found);
        self.access_cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .put(id, found.clone());
        Ok(Some(found))
    }

    /// Keeps the access rows a catch-up batch read (not yet cached ones),
    /// so its read checks find them without asking the store.
    fn remember_access(&self, batch: &CatchUpBatch) {
        let fresh: Vec<(DocId, Access)> = {
            let cache = self.read_cache();
            batch
                .records
                .iter()
                .filter(|(id, _)| !cache.contains(id))
                .filter_map(|(id, r)| Some((*id, access_from_row(r.access.as_ref()?)?)))
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let mut cache = self.access_cache.write().unwrap_or_else(|p| p.into_inner());
        for (id, access) in fresh {
            cache.put(id, Arc::new(access));
        }
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, lru::LruCache<DocId, Arc<Access>>> {
        self.access_cache.read().unwrap_or_else(|p| p.into_inner())
    }

    /// One record as JSON: header, review state, fields, conflicts (each
    /// value with its actor and time) and history (who, when, which
    /// fields). None if there is no such record, and likewise if `caller`
    /// may not read it: the two must look the same. Every read is audited,
    /// refused ones too.
    ///
    /// Each conflicting value and history entry names its `device` (the
    /// first 16 bytes of its actor id, hex) and `device_name`: the
    /// registry's name, looked up as the sync protocol's device names are
    /// ([`DeviceRegistry::names`](crate::identity::devices::DeviceRegistry::names)),
    /// or [`DESK_DEVICE_NAME`] for changes made at the review desk.
    pub fn record_view(
        &self,
        caller: &Caller,
        id: DocId,
        devices: &crate::identity::devices::DeviceRegistry,
    ) -> Result<Option<RecordView>, DocsError> {
        let exists = self.docs.store().doc_seq(id)?.is_some();
        if !exists || !self.readable(&caller.principal, id)? {
            self.audit.record(
                "record_read_refused",
                serde_json::json!({
                    "record": id.to_string(),
                    "user": caller.principal.user,
                    "device": caller.device.id.to_hex(),
                    "exists": exists,
                }),
            );
            return Ok(None);
        }
        let handle = self.docs.handle(id)?;
        let live = handle.lock().unwrap_or_else(|p| p.into_inner());
        let doc = &live.doc;
        let header = Header::read(doc).ok();
        let restricted = header
            .as_ref()
            .is_some_and(|h| h.kind == Kind::FeedbackContact);
        self.audit.record(
            if restricted {
                "restricted_read"
            } else {
                "record_read"
            },
            serde_json::json!({
                "record": id.to_string(),
                "user": caller.principal.user,
                "device": caller.device.id.to_hex(),
            }),
        );
        let store = self.docs.store();
        let received: std::collections::HashMap<String, i64> = store
            .received(id)?
            .into_iter()
            .map(|(hash, at)| (hex::encode(hash.as_bytes()), at))
            .collect();
        let ahead_max = self.clock_check().ahead_max_ms;
        // Each change's claimed time (seconds, the tablet's clock) beside
        // when the server first stored it (ms, its own clock).
        let entries = baraza_records::history(doc);
        let conflicts = baraza_records::conflicts(doc);
        let actors = entries.iter().map(|e| e.actor.as_str()).chain(
            conflicts
                .iter()
                .flat_map(|c| c.values.iter().map(|v| v.actor.as_str())),
        );
        let namer = DeviceNamer::new(actors, devices);
        let history = entries
            .into_iter()
            .map(|entry| {
                let at = received.get(&entry.hash).copied();
                let implausible = at.is_some_and(|at| {
                    entry.time.saturating_mul(1000).saturating_sub(at) > ahead_max
                });
                let by = namer.label(&entry.actor, entry.user.as_deref());
                HistoryView {
                    entry,
                    received_at_ms: at,
                    clock_implausible: implausible,
                    by,
                }
            })
            .collect();
        let conflicts = conflicts
            .into_iter()
            .map(|conflict| ConflictView {
                path: conflict.path,
                values: conflict
                    .values
                    .into_iter()
                    .map(|value| {
                        let by = namer.label(&value.actor, value.user.as_deref());
                        ConflictValueView { value, by }
                    })
                    .collect(),
            })
            .collect();
        Ok(Some(RecordView {
            id: id.to_string(),
            header,
            review_state: baraza_records::review_state(doc),
            review_comments: baraza_records::review_comments(doc),
            fields: field_tree(doc, &automerge::ROOT),
            conflicts,
            history,
            clock: store.clock_skew(id)?,
        }))
    }

    /// Makes a change on behalf of a supervisor at the review desk (a
    /// decision, a conflict resolved): an automerge change attributed to
    /// them, admitted by the same rules as a device's, stored durably
    /// before this returns, and sent to tablets by the feed like any other.
    /// Another node's write to the record meanwhile makes it edit and
    /// judge again on the record as stored, a few times.
    pub async fn author(
        &self,
        caller: &Caller,
        id: DocId,
        edit: impl Fn(
            &mut automerge::Automerge,
            baraza_records::ops::Stamp<'_>,
        ) -> Result<(), baraza_records::EditError>,
    ) -> Result<WriteSummary, DeskError> {
        let mut tried = 0;
        loop {
            match self.author_once(caller, id, &edit).await? {
                Ok(summary) => return Ok(summary),
                Err(NotStored::Overtaken) if tried < 3 => tried += 1,
                Err(failed) => return Err(DeskError::Docs(DocsError::Commit(failed.to_string()))),
            }
        }
    }

    async fn author_once(
        &self,
        caller: &Caller,
        id: DocId,
        edit: &impl Fn(
            &mut automerge::Automerge,
            baraza_records::ops::Stamp<'_>,
        ) -> Result<(), baraza_records::EditError>,
    ) -> Result<Result<WriteSummary, NotStored>, DeskError> {
        if !self.readable(&caller.principal, id)? {
            return Err(DeskError::NotFound);
        }
        let (rx, summary) = {
            let handle = self.docs.handle(id)?;
            let mut live = handle.lock().unwrap_or_else(|p| p.into_inner());
            let before = live.doc.get_heads();
            let before_header = live.header();
            // Edited and judged on a fork: the cached copy changes only
            // once the edit is admitted.
            let mut fork = live.doc.clone();
            let mut actor = caller.device.id.as_bytes().to_vec();
            actor.extend_from_slice(&self.desk_actor_suffix);
            fork.set_actor(automerge::ActorId::from(actor));
            let now_ms = crate::clock::unix_now_ms() as i64;
            let stamp = baraza_records::ops::Stamp {
                now_ms,
                by: &caller.principal.user,
            };
            match docsync::contained(|| Ok(edit(&mut fork, stamp))) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(DeskError::Edit(err.to_string())),
                Err(_) => {
                    tracing::error!(doc = %id, "automerge failed an internal check on a desk edit; refused");
                    return Err(DeskError::Edit(
                        "the record could not be edited; try again".into(),
                    ));
                }
            }
            let rules = Some(&caller.principal);
            let clock = self.clock_check();
            let changes = fork.get_changes(&before);
            let (index, summary, receipt) = admit(
                id,
                &caller.device,
                rules,
                &fork,
                &changes,
                before_header,
                clock,
            )
            .map_err(|refused| DeskError::Refused {
                rule: refused.rule,
                message: refused.reason.unwrap_or(refused.message),
            })?;
            let chunk = docsync::encode_changes(&changes);
            live.doc = fork;
            let rx = Docs::write_for(id, &mut live, chunk, Some(index), Some(receipt))
                .map(|w| self.docs.submit(w));
            (rx, summary)
        };
        let now = *self.docs.durable().borrow();
        if let Err(not) = wait_stored(rx, now).await {
            return Ok(Err(not));
        }
        self.audit_decisions(caller, id, &summary.decisions);
        Ok(Ok(summary))
    }

    /// Audits review decisions a write made, once it is durable.
    fn audit_decisions(
        &self,
        caller: &Caller,
        id: DocId,
        decisions: &[baraza_records::ReviewState],
    ) {
        for decision in decisions {
            self.audit.record(
                "review_decision",
                serde_json::json!({
                    "record": id.to_string(),
                    "decision": decision,
                    "user": caller.principal.user,
                    "device": caller.device.id.to_hex(),
                }),
            );
        }
    }

    /// Audits a change refused by a rule or a check.
    fn audit_refusal(&self, caller: &Caller, id: DocId, rule: Option<&str>, reason: &str) {
        self.audit.record(
            "change_refused",
            serde_json::json!({
                "device": caller.device.id.to_hex(),
                "user": caller.principal.user,
                "record": id.to_string(),
                "rule": rule,
                "reason": reason,
            }),
        );
    }

    /// Erases a record of contact details at an administrator's request:
    /// removed from the server, and from every device at its next sync
    /// (or at once on a live one). Only `feedback_contact` records may be
    /// erased; other records are evidence. Blocking.
    pub fn erase_record(&self, id: DocId, by: &str) -> Result<(), EraseError> {
        let store = self.docs.store();
        let kind = match store.access_of(id)? {
            Some(a) => a.kind,
            None if store.doc_seq(id)?.is_some() => {
                let handle = self.docs.handle(id)?;
                let live = handle.lock().unwrap_or_else(|p| p.into_inner());
                Header::read(&live.doc)
                    .map(|h| h.kind.name().to_string())
                    .unwrap_or_default()
            }
            None => return Err(EraseError::NotFound(id)),
        };
        if kind != Kind::FeedbackContact.name() {
            return Err(EraseError::NotContact(id, kind));
        }
        // Read before the record goes: its attachments go with it.
        let attached: Vec<baraza_records::AttachmentRef> = match store.erased(id)? {
            Some(_) => Vec::new(),
            None => {
                let handle = self.docs.handle(id)?;
                let live = handle.lock().unwrap_or_else(|p| p.into_inner());
                Header::read(&live.doc)
                    .map(|h| baraza_records::attachment::refs(&live.doc, h.kind))
                    .unwrap_or_default()
            }
        };
        let seq = self.docs.erase(id)?;
        for r in &attached {
            if let Some(digest) = crate::storage::attachments::parse_digest(&r.sha256) {
                self.attachments.remove(&digest)?;
            }
        }
        self.access_cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .pop(&id);
        tracing::info!(record = %id, "record erased");
        self.audit.record(
            "record_erased",
            serde_json::json!({
                "record": id.to_string(),
                "kind": kind,
                "by": by,
                "feed": seq,
                "attachments_erased": attached.len(),
            }),
        );
        Ok(())
    }

    /// Holds back a record found damaged on reading: quarantined (its
    /// stored bytes kept as they are), dropped from the cache, reported and
    /// audited. Devices are told it is held back; `baraza-server check`
    /// lists it and README's recovery section says what to do.
    pub fn quarantine_damaged(&self, id: DocId, why: &str) -> Result<(), DocsError> {
        tracing::error!(record = %id, damage = %why, "stored record is damaged; quarantined");
        self.docs
            .store()
            .quarantine(id, &format!("damaged: {why}"))?;
        self.docs.forget(id);
        self.audit.record(
            "record_damaged",
            serde_json::json!({ "record": id.to_string(), "damage": why }),
        );
        Ok(())
    }

    /// Quarantines a record at an administrator's request (`record
    /// quarantine`), so that one bad record cannot block a feed: devices
    /// are told it is held back, pushes to it are refused, and the read API
    /// answers as for a missing record. `lift` releases it. Audited.
    pub fn set_quarantine(
        &self,
        id: DocId,
        reason: Option<&str>,
        by: &str,
    ) -> Result<bool, DocsError> {
        let store = self.docs.store();
        let changed = match reason {
            Some(reason) => {
                if store.doc_seq(id)?.is_none() {
                    return Ok(false);
                }
                store.quarantine(id, &format!("quarantined by {by}: {reason}"))?;
                self.docs.forget(id);
                true
            }
            None => store.release_quarantine(id)?,
        };
        if changed {
            self.audit.record(
                if reason.is_some() {
                    "record_quarantined"
                } else {
                    "record_quarantine_lifted"
                },
                serde_json::json!({ "record": id.to_string(), "by": by, "reason": reason }),
            );
        }
        Ok(changed)
    }

    /// The audit log.
    pub fn audit(&self) -> &crate::storage::audit::AuditLog {
        &self.audit
    }

    /// The limits this hub enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Commits what is queued, flushes, and marks the store cleanly closed.
    /// Called once at graceful shutdown.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Waits for a summary being filled in: nothing is written after
        // the store is marked closed.
        drop(self.filling.lock().unwrap_or_else(|p| p.into_inner()));
        self.docs.shutdown()?;
        Ok(())
    }
}

#[cfg(test)]
impl SyncHub {
    /// Stores whole records as one commit, as if a device had pushed
    /// them (no rules): for tests of what reads the store and the feed.
    pub(crate) async fn store_all_for_test(&self, records: &[(DocId, automerge::Automerge)]) {
        let mut waits = Vec::new();
        for (id, doc) in records {
            let entry = index_entry(Header::read(doc).unwrap(), doc);
            let handle = self.docs.handle(*id).unwrap();
            let mut live = handle.lock().unwrap();
            let before = live.doc.get_heads();
            live.doc = doc.clone();
            let chunk = docsync::encode_changes(&doc.get_changes(&before));
            let write = Docs::write_for(*id, &mut live, chunk, Some(entry), None).unwrap();
            waits.push(self.docs.submit(write));
        }
        for wait in waits {
            wait.await.unwrap().unwrap();
        }
    }

    /// [`SyncHub::store_all_for_test`] of one record.
    pub(crate) async fn store_for_test(&self, id: DocId, doc: &automerge::Automerge) {
        self.store_all_for_test(&[(id, doc.clone())]).await
    }
}

/// Names the devices behind actor ids, for the record view: one registry
/// lookup for every device a record's changes come from.
struct DeviceNamer {
    names: std::collections::HashMap<DeviceId, String>,
}

impl DeviceNamer {
    fn new<'a>(
        actors: impl Iterator<Item = &'a str>,
        devices: &crate::identity::devices::DeviceRegistry,
    ) -> DeviceNamer {
        let ids: std::collections::BTreeSet<DeviceId> =
            actors.filter_map(device_of_actor).collect();
        let ids: Vec<DeviceId> = ids.into_iter().collect();
        // A registry that cannot be read costs the desk names, not the
        // record: it shows device ids instead.
        let names = devices.names(&ids).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "could not look up device names");
            Vec::new()
        });
        DeviceNamer {
            names: names.into_iter().map(|n| (n.device, n.name)).collect(),
        }
    }

    /// Adds `device` and `device_name` to `value`, the JSON of something
    /// authored under `actor` naming `user`.
    fn label(&self, actor: &str, user: Option<&str>) -> DeviceLabel {
        let device = device_of_actor(actor);
        let name = device.and_then(|d| {
            self.names.get(&d).cloned().or_else(|| {
                user.filter(|u| desk_device_id(u) == d)
                    .map(|_| DESK_DEVICE_NAME.to_string())
            })
        });
        DeviceLabel {
            device: device.map(|d| d.to_hex()),
            device_name: name,
        }
    }
}

/// The device an actor id (hex) belongs to: its first 16 bytes.
fn device_of_actor(actor: &str) -> Option<DeviceId> {
    DeviceId::of_actor(&hex::decode(actor).ok()?)
}

/// A document's current values as JSON (the value shown where fields
/// conflict; `conflicts` lists the others).
/// A record's content (the header left out at the root) as a typed tree.
fn field_tree(doc: &automerge::Automerge, obj: &automerge::ObjId) -> FieldValue {
    use automerge::{ObjType, ReadDoc, ScalarValue, Value};
    let value = |v: Value<'_>, id: automerge::ObjId| match v {
        Value::Object(ObjType::Map | ObjType::Table | ObjType::List) => field_tree(doc, &id),
        Value::Object(ObjType::Text) => FieldValue::Text(doc.text(&id).unwrap_or_default()),
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => FieldValue::Text(s.to_string()),
            ScalarValue::Int(i) | ScalarValue::Timestamp(i) => FieldValue::Int(*i),
            ScalarValue::Uint(u) => FieldValue::Uint(*u),
            ScalarValue::F64(f) => FieldValue::Float(*f),
            ScalarValue::Boolean(b) => FieldValue::Bool(*b),
            ScalarValue::Null => FieldValue::Null,
            other => FieldValue::Text(other.to_string()),
        },
    };
    match doc.object_type(obj) {
        Ok(ObjType::List) => FieldValue::List(
            (0..doc.length(obj))
                .filter_map(|i| doc.get(obj, i).ok().flatten())
                .map(|(v, id)| value(v, id))
                .collect(),
        ),
        _ => FieldValue::Map(
            doc.keys(obj)
                .filter(|k| !(obj == &automerge::ROOT && k == "header"))
                .filter_map(|k| {
                    let (v, id) = doc.get(obj, k.as_str()).ok().flatten()?;
                    Some((k, value(v, id)))
                })
                .collect(),
        ),
    }
}

/// What [`admit`] lets through: where the record sits in the index, what
/// the write did, and when its changes arrived.
type Admitted = (IndexEntry, WriteSummary, Receipt);

fn split_admitted(
    admitted: Option<Admitted>,
) -> (Option<IndexEntry>, Option<WriteSummary>, Option<Receipt>) {
    match admitted {
        Some((index, wrote, receipt)) => (Some(index), Some(wrote), Some(receipt)),
        None => (None, None, None),
    }
}

/// The server's time for changes arriving now, and how far ahead of it a
/// claimed time may be.
#[derive(Clone, Copy, Debug)]
struct ClockCheck {
    now_ms: i64,
    ahead_max_ms: i64,
}

impl ClockCheck {
    /// The receipt of `changes` (and of `created_at`, a new record's
    /// claimed creation time): the merge ignores every clock, so claimed
    /// times are only noted, and flagged when implausible.
    fn receipt(&self, changes: &[automerge::Change], created_at: Option<i64>) -> Receipt {
        // Change times are whole seconds (`ops::commit_options`).
        let claimed = changes
            .iter()
            .map(|c| c.timestamp().saturating_mul(1000))
            .chain(created_at);
        let mut skew: Option<ClockSkew> = None;
        for claimed_ms in claimed {
            let ahead = claimed_ms.saturating_sub(self.now_ms);
            if ahead > self.ahead_max_ms {
                let this = ClockSkew {
                    times: 1,
                    ahead_ms_max: ahead,
                    claimed_ms,
                };
                skew = Some(skew.map_or(this, |s| s.merge(this)));
            }
        }
        Receipt {
            at_ms: self.now_ms,
            changes: changes
                .iter()
                .map(|c| baraza_protocol::Head::from(c.hash()))
                .collect(),
            skew,
        }
    }
}

/// Why [`admit`] refused a write.
struct Refused {
    code: ErrorCode,
    rule: Option<baraza_records::access::Rule>,
    /// For the device: the record and why.
    message: String,
    /// A rule's own reason, without the record (the desk names it already).
    reason: Option<String>,
}

/// Decides whether changes a device just added to a record may stay: every
/// new change must be authored under one of the device's own actor ids
/// (automerge does not authenticate actors, so the server must), the
/// record must still fit its schema with its header unchanged, what the
/// changes add must hold no field the schema lacks (unless the record is
/// of a newer schema version) and no number out of range, a new record
/// must name the pushing device as its creator, and (unless `rules`
/// is None) the user's access rules must allow every change.
fn admit(
    id: DocId,
    device: &DeviceIdentity,
    rules: Option<&Principal>,
    doc: &automerge::Automerge,
    changes: &[automerge::Change],
    before_header: Option<Header>,
    clock: ClockCheck,
) -> Result<Admitted, Refused> {
    let prefix = device.id.as_bytes();
    for change in changes {
        if !change.actor_id().to_bytes().starts_with(prefix) {
            return Err(Refused {
                code: ErrorCode::Forbidden,
                rule: Some(baraza_records::access::rules::DEVICE_ACTOR),
                reason: None,
                message: format!(
                    "record {id}: change {} is authored under actor {}, which is not one of this device's; \
                     a device may only author changes under its own actor ids",
                    change.hash(),
                    change.actor_id()
                ),
            });
        }
    }
    let invalid = |e: String| Refused {
        code: ErrorCode::InvalidRecord,
        rule: None,
        message: format!("record {id}: {e}"),
        reason: None,
    };
    // Every check below reads the record; reading it whole once is cheaper
    // than each seeking its keys in the document.
    let view = baraza_records::Snapshot::read(doc);
    let header = baraza_records::validate(&view).map_err(|e| invalid(e.to_string()))?;
    if header.id != id.to_string() {
        return Err(invalid(format!(
            "header field id: {:?} is not this record's id",
            header.id
        )));
    }
    let is_new = before_header.is_none();
    match before_header {
        Some(old) => {
            if let Some(field) = old.differs_from(&header) {
                return Err(invalid(
                    baraza_records::SchemaError::HeaderChanged(field).to_string(),
                ));
            }
        }
        None if header.created_by_device != device.id.to_hex() => {
            return Err(invalid(format!(
                "header field created_by_device: names {:?}, but the record was pushed by device {}",
                header.created_by_device, device.id
            )));
        }
        None => {}
    }
    baraza_records::validate_additions(&view, changes).map_err(|e| Refused {
        code: match e {
            baraza_records::SchemaError::UnknownField { .. } => ErrorCode::UnknownField,
            _ => ErrorCode::InvalidRecord,
        },
        rule: None,
        message: format!("record {id}: {e}"),
        reason: None,
    })?;
    let summary = match rules {
        Some(who) => who
            .check_write(&header, is_new, &view, changes)
            .map_err(|r| Refused {
                code: ErrorCode::Forbidden,
                rule: Some(r.rule),
                message: format!("record {id}: {}", r.reason),
                reason: Some(r.reason),
            })?,
        None => WriteSummary::default(),
    };
    let receipt = clock.receipt(changes, is_new.then_some(header.created_at));
    Ok((index_entry(header, &view), summary, receipt))
}

/// Where a record sits in the listing index, and what its list row shows,
/// as `doc` (the record after an admitted write) has it.
fn index_entry(header: Header, doc: &impl baraza_records::Reader) -> IndexEntry {
    IndexEntry {
        kind: header.kind.name().to_string(),
        state: baraza_records::review_state(doc),
        created_at: header.created_at,
        summary: crate::storage::store::RecordSummary {
            title: baraza_records::title(doc, header.kind),
            submitted_at: baraza_records::submitted_at(doc),
            conflicts: baraza_records::has_conflict(doc),
            comments: u32::try_from(baraza_records::review_comments(doc).len()).unwrap_or(u32::MAX),
        },
        area: header.area,
        created_by: header.created_by_user,
    }
}

/// A stored access row as the read checks use it; None for a kind this
/// server does not know.
fn access_from_row(a: &crate::storage::store::RecordAccess) -> Option<Access> {
    Some(Access {
        kind: Kind::parse(&a.kind)?,
        area: a.area.clone(),
        created_by: a.created_by.clone(),
    })
}

/// The store seen as one user's [`Feed`]: records they may not read are
/// not in it.
struct HubFeed<'a> {
    hub: &'a SyncHub,
    who: &'a Principal,
    devices: &'a crate::identity::devices::DeviceRegistry,
    /// What [`Feed::prepare`] read ahead for the entries being sent.
    batch: CatchUpBatch,
}

impl<'a> HubFeed<'a> {
    fn new(
        hub: &'a SyncHub,
        who: &'a Principal,
        devices: &'a crate::identity::devices::DeviceRegistry,
    ) -> HubFeed<'a> {
        HubFeed {
            hub,
            who,
            devices,
            batch: CatchUpBatch::default(),
        }
    }

    fn reads(&self) -> BatchReads<'_> {
        BatchReads {
            batch: &self.batch,
            store: self.hub.docs.store().as_ref(),
        }
    }
}

impl Feed for HubFeed<'_> {
    type Error = DocsError;

    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, DocsError> {
        let (entries, checks) = self
            .hub
            .docs
            .store()
            .entries_after_checked(after, upto, limit)?;
        self.batch = checks;
        Ok(entries)
    }

    fn prepare(&mut self, wants: &[(DocId, Seq, Seq)]) -> Result<(), DocsError> {
        let read = self.hub.docs.catch_up_batch(wants, &self.batch)?;
        self.batch.merge(read);
        self.hub.remember_access(&self.batch);
        Ok(())
    }

    fn erased(&mut self, doc: DocId) -> Result<bool, DocsError> {
        // Only those who could read it are told: an erasure names a record.
        Ok(match self.hub.docs.store().erased(doc)? {
            Some(a) => Kind::parse(&a.kind)
                .is_some_and(|kind| self.who.may_read_parts(kind, &a.area, &a.created_by)),
            None => false,
        })
    }

    fn quarantined(&mut self, doc: DocId) -> Result<bool, DocsError> {
        Ok(self.hub.readable(self.who, doc)? && self.reads().quarantined(doc)?.is_some())
    }

    fn device_names(&mut self, devices: &[DeviceId]) -> Result<Vec<DeviceName>, DocsError> {
        // A registry that cannot be read costs the tablet names, not the
        // sync: it shows device ids instead.
        Ok(self.devices.names(devices).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "could not look up device names");
            Vec::new()
        }))
    }

    fn changes_since(
        &mut self,
        doc: DocId,
        base: Seq,
        at: Seq,
    ) -> Result<Option<baraza_protocol::DocDelta>, DocsError> {
        if !self.hub.readable(self.who, doc)? || self.reads().quarantined(doc)?.is_some() {
            return Ok(None);
        }
        match self.delta(doc, base, at) {
            // Damage found while reading: the record is held back and the
            // client told (see `quarantined`), never sent short, and the
            // rest of the feed goes on.
            Err(DocsError::Load(id, why)) => {
                self.hub.quarantine_damaged(id, &why)?;
                Ok(None)
            }
            other => other,
        }
    }
}

impl HubFeed<'_> {
    fn delta(
        &mut self,
        doc: DocId,
        base: Seq,
        at: Seq,
    ) -> Result<Option<baraza_protocol::DocDelta>, DocsError> {
        let docs = &self.hub.docs;
        let store = docs.store();
        let reads = self.reads();
        if base == 0 {
            // A client that never had the document gets the stored bytes as
            // they are: no document is loaded, so a cold start costs reads only.
            return docs.stored_with(&reads, doc);
        }
        // Every connection reads each new write: the chunks are read and
        // checked once and shared.
        if let Some(delta) = docs.recent_after_with(&reads, doc, base, at)? {
            return Ok(Some(delta));
        }
        // Compacted past the client's position: compute the delta.
        let Some(base_heads) = store.heads_at(doc, base)? else {
            return docs.stored(doc);
        };
        let handle = docs.handle(doc)?;
        let live = handle.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the document's lock: every committed write was
        // applied to the live copy before its commit, so this copy holds
        // at least the state at that position.
        let seq = store.doc_seq(doc)?.unwrap_or(0);
        let data = docsync::encode_changes(&docsync::changes_since(&live.doc, &base_heads));
        Ok(Some(baraza_protocol::DocDelta {
            heads: baraza_protocol::to_heads(&live.doc.get_heads()),
            data,
            seq,
        }))
    }
}
