//! Durable storage of documents and the changes feed: the [`Store`] trait
//! and the types it carries.
//!
//! [`Store`] is the seam a PostgreSQL backend plugs into, so every call can
//! fail and nothing above it knows which backend it runs on; the sled one
//! is [`crate::storage::sled::SledStore`]. What a backend keeps:
//! - every write's chunk of changes, by feed position, and compacted saves:
//!   a document is the concatenation of its chunks, and what a client
//!   holding the document as of position `s` lacks is the chunks after
//!   `s` (catch-up and live push read bytes, they load no document);
//! - the feed: one entry per write, each kept, so a client's cursor always
//!   means "every document as of its last write at or before here";
//! - each document's heads after each write, so catch-up sends only what
//!   a client lacks since the position its cursor names;
//! - when the server first stored each change, and a record's implausible
//!   claimed times ([`ClockSkew`]);
//! - the record index, access and summary rows ([`IndexEntry`]), written
//!   with each admitted write, so neither listings nor read checks load a
//!   document;
//! - the store id and whether the last stop was clean.

use baraza_protocol::{DocId, Head, Seq, StoreId};
use baraza_records::{Kind, Principal, Role};

/// A storage failure. The caller acknowledges nothing that hit one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend reported an error (I/O, corruption, a lost
    /// connection), as the backend's own error.
    #[error("database: {0}")]
    Db(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored value has an unexpected shape.
    #[error("corrupt stored value in {tree}: {reason}")]
    Corrupt {
        /// Where it is kept (a sled tree, a table).
        tree: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The database was migrated by a newer server than this one: its
    /// schema is one this binary does not know, so it refuses to touch it.
    #[error("the database's schema is version {found}, newer than this server knows ({known}): run the newer server, or restore a backup taken before the upgrade")]
    SchemaTooNew {
        /// The version the database is at.
        found: i32,
        /// The newest version this binary knows.
        known: i32,
    },
}
/// Heads as stored by every backend: their 32-byte hashes, one after
/// another.
pub(crate) fn heads_bytes(heads: &[Head]) -> Vec<u8> {
    heads
        .iter()
        .flat_map(|h| h.as_bytes().iter().copied())
        .collect()
}

/// Heads stored as [`heads_bytes`] made them, read back from `table`.
pub(crate) fn heads_from_bytes(v: &[u8], table: &'static str) -> Result<Vec<Head>, StoreError> {
    if !v.len().is_multiple_of(32) {
        return Err(StoreError::Corrupt {
            tree: table,
            reason: format!("heads of {} bytes", v.len()),
        });
    }
    Ok(v.chunks_exact(32)
        .map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            Head::from(automerge::ChangeHash(b))
        })
        .collect())
}

/// One document write in a batch.
#[derive(Debug, Clone)]
pub struct DocWrite {
    /// The document.
    pub doc: DocId,
    /// New changes as chunk bytes.
    pub chunk: Vec<u8>,
    /// The document's heads after them.
    pub heads: Vec<Head>,
    /// `chunk` is the whole document, rebuilt from a device's copy of a
    /// damaged record: every chunk stored before goes. Only a quarantined
    /// record is rebuilt (nobody else writes it meanwhile); compaction is
    /// [`Store::fold`], which keeps what it did not read.
    pub rebuild: bool,
    /// Where the record now sits in the listing index.
    pub index: Option<IndexEntry>,
    /// Erase the record instead: every chunk, head and index entry goes,
    /// a tombstone stays (for read checks and to refuse it coming back)
    /// and the feed gets an entry so devices delete it.
    pub erase: bool,
    /// When the changes in `chunk` reached the server, if they are new.
    pub receipt: Option<Receipt>,
}

/// When the server received changes, kept per change beside the time each
/// change claims (tablets' clocks can be years off, and the merge trusts
/// no clock, so this is only for people reading the record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The server's time at receipt, milliseconds since the epoch.
    pub at_ms: i64,
    /// The changes first stored by this write.
    pub changes: Vec<Head>,
    /// Claimed times among them too far ahead of `at_ms`, if any.
    pub skew: Option<ClockSkew>,
}

/// Claimed times of a record (change times, the header's `created_at`)
/// that were too far ahead of the server's clock when they arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClockSkew {
    /// How many claimed times were too far ahead.
    pub times: u32,
    /// The furthest ahead of the server's time at receipt, in ms.
    pub ahead_ms_max: i64,
    /// That claimed time, milliseconds since the epoch.
    pub claimed_ms: i64,
}

impl ClockSkew {
    /// Both together: counts add up, the furthest ahead is kept.
    pub fn merge(self, other: ClockSkew) -> ClockSkew {
        let furthest = if other.ahead_ms_max > self.ahead_ms_max {
            other
        } else {
            self
        };
        ClockSkew {
            times: self.times.saturating_add(other.times),
            ..furthest
        }
    }
}

impl DocWrite {
    /// The write that erases `doc`.
    pub fn erasure(doc: DocId) -> DocWrite {
        DocWrite {
            doc,
            chunk: Vec::new(),
            heads: Vec::new(),
            rebuild: false,
            index: None,
            erase: true,
            receipt: None,
        }
    }
}

/// What the listing index knows of a record: enough to filter a list of
/// thousands without loading a document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexEntry {
    /// Record kind name.
    pub kind: String,
    /// Area.
    pub area: String,
    /// Review state.
    pub state: baraza_records::ReviewState,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
    /// The user who created it: besides role and area, what decides who
    /// may read it. Kept beside the index (`record_access`), not in its key.
    pub created_by: String,
    /// What the desk's queue shows of it, kept beside the index too
    /// (`record_summary`).
    #[serde(flatten)]
    pub summary: RecordSummary,
}

/// What a list row shows of a record beyond its index key, so the queue
/// tells records apart without loading any: computed from the record as
/// each admitted write leaves it, stored in `record_summary` in the same
/// transaction. Records last written before it was kept list with the
/// defaults (null, false, 0) until the server fills theirs in, once, in
/// the background after it starts (`SyncHub::fill_summaries`), or their
/// next write does.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordSummary {
    /// A title (`baraza_records::title`); never contact details.
    pub title: Option<String>,
    /// When its review state last became `submitted`: the claimed time of
    /// that change, ms. A write that does not set it keeps the one stored.
    pub submitted_at: Option<i64>,
    /// True while any field holds conflicting values.
    pub conflicts: bool,
    /// How many review comments it has.
    pub comments: u32,
}

impl RecordSummary {}

/// What read checks need of a record, without loading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAccess {
    /// Record kind name.
    pub kind: String,
    /// Area.
    pub area: String,
    /// The user who created it.
    pub created_by: String,
}

impl RecordAccess {}

/// A listing query; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// Record kind name.
    pub kind: Option<String>,
    /// Area.
    pub area: Option<String>,
    /// Review state.
    pub state: Option<baraza_records::ReviewState>,
    /// Created at or after (milliseconds since the epoch).
    pub since: Option<i64>,
}

/// Whose records a listing may return, as data a backend can turn into a
/// query (a closure could not be): those `own` names as creator, whatever
/// their kind and area, and those of `kinds` in `areas`. Built from the
/// caller by [`ReadScope::of`], so it says what
/// [`Principal::may_read_parts`] says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadScope {
    /// The user whose own records are readable; None for nobody's.
    pub own: Option<String>,
    /// Kinds readable in `areas`.
    pub kinds: Vec<Kind>,
    /// Areas in which `kinds` are readable.
    pub areas: Vec<String>,
}

impl ReadScope {
    /// What `who` may read.
    pub fn of(who: &Principal) -> ReadScope {
        // An admin reads no records, not even ones they created.
        if who.role == Role::Admin {
            return ReadScope::default();
        }
        // The kinds the role reads in its areas, asked of the one rule; the
        // creator is a name no user has (names hold no NUL), so their own
        // records do not count here.
        let stranger = format!("{}\0", who.user);
        let kinds = match who.areas.first() {
            Some(area) => Kind::ALL
                .into_iter()
                .filter(|kind| who.may_read_parts(*kind, area, &stranger))
                .collect(),
            None => Vec::new(),
        };
        ReadScope {
            own: Some(who.user.clone()),
            kinds,
            areas: who.areas.clone(),
        }
    }

    /// Whether a record of kind `kind` in `area`, created by `created_by`,
    /// is in scope. A kind this server does not know is in nobody's.
    pub fn admits(&self, kind: &str, area: &str, created_by: &str) -> bool {
        let Some(kind) = Kind::parse(kind) else {
            return false;
        };
        self.own.as_deref() == Some(created_by)
            || (self.kinds.contains(&kind) && self.areas.iter().any(|a| a == area))
    }
}

/// One row of a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordRow {
    /// Record id.
    pub id: String,
    /// Index fields.
    #[serde(flatten)]
    pub entry: IndexEntry,
}

/// A record's standing as admission checks it ([`Store::write_checks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteChecks {
    /// [`Store::erased`].
    pub erased: Option<RecordAccess>,
    /// [`Store::access_of`].
    pub access: Option<RecordAccess>,
    /// [`Store::doc_seq`] is some: the record is stored.
    pub stored: bool,
    /// [`Store::quarantined`].
    pub quarantined: Option<String>,
}

/// The chunks a client lacks, and the state they bring it to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocChunks {
    /// Concatenated chunks written after the client's position.
    pub bytes: Vec<u8>,
    /// Each chunk's feed position and where it ends in `bytes`, oldest
    /// first: what a reader further on lacks is a tail of `bytes`.
    pub ends: Vec<(Seq, usize)>,
    /// The feed position of the document's latest write.
    pub seq: Seq,
    /// The document's heads after that write.
    pub heads: Vec<Head>,
    /// Nothing of the document is stored at or before the position asked
    /// after: `bytes` is all of it, and a reader there has none of it.
    pub whole: bool,
}

/// What is stored of one document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredDoc {
    /// All chunks, concatenated: loads with `Automerge::load`.
    pub bytes: Vec<u8>,
    /// Where each chunk sits, oldest first: what [`Store::fold`] is told
    /// it folded.
    pub positions: Vec<Seq>,
    /// Feed position of the latest write.
    pub seq: Seq,
    /// The document's heads after that write, as recorded at commit: what
    /// the bytes must load to.
    pub heads: Vec<Head>,
}

/// Document storage. Implementations must make `commit` atomic and durable
/// before returning, give each write a feed position no other write has,
/// and keep [`Store::feed_watermark`] honest.
///
/// Positions need not become visible in order: with several writers (server
/// nodes on one database) a write may take position 7, and commit after
/// another writer's 8 is read. What a reader must never do is pass 7
/// before it commits or is abandoned, or a device's cursor would move past
/// a write it never received. So readers of the feed (devices' catch-up and
/// live push, the desk's event stream) read only up to the watermark, and
/// the watermark is the backend's promise: no write at or below it is
/// still to appear.
pub trait Store: Send + Sync + 'static {
    /// This store's identity (changes after an unclean stop).
    fn store_id(&self) -> StoreId;
    /// The feed watermark: the highest position at or below which every
    /// write that will ever be there is committed and readable. Never goes
    /// back. A backend whose positions are assigned under one lock in
    /// commit order (sled) answers its last committed position; one with
    /// concurrent writers answers below the oldest position still in
    /// flight.
    fn feed_watermark(&self) -> Result<Seq, StoreError>;
    /// Loads a document.
    fn load(&self, doc: DocId) -> Result<Option<StoredDoc>, StoreError>;
    /// Commits writes atomically and durably; returns their feed positions.
    fn commit(&self, writes: &[DocWrite]) -> Result<Vec<Seq>, StoreError>;
    /// [`Store::commit`], except that a write whose `bases` entry is
    /// `Some(base)` (it was judged on a copy of its record loaded as of
    /// feed position `base`) is left out, and answered None, if another
    /// writer has written or erased that record since `base`: it was
    /// judged without their change, so it must be judged again. Writes of
    /// this store's own handle after `base` do not count (the copy holds
    /// them). A backend that one process holds alone (sled) has no other
    /// writer and stores every write.
    fn commit_unless_stale(
        &self,
        writes: &[DocWrite],
        bases: &[Option<Seq>],
    ) -> Result<Vec<Option<Seq>>, StoreError> {
        let _ = bases;
        Ok(self.commit(writes)?.into_iter().map(Some).collect())
    }
    /// Compaction: replaces the chunks at `chunks` (positions a caller read
    /// with [`Store::load`]) with `saved`, the document they load to saved
    /// whole, kept at the highest of those positions. Chunks after it stay.
    /// If the document's chunks at or below that position are no longer
    /// exactly `chunks` (a write landed there that the caller did not read,
    /// another fold ran, the record was erased), nothing changes and the
    /// answer is false: a fold never deletes a chunk it did not fold in.
    fn fold(&self, doc: DocId, chunks: &[Seq], saved: &[u8]) -> Result<bool, StoreError>;
    /// Keeps `saved`, the document as of feed position `seq` (every write
    /// up to there, none after) saved whole, for cold starts: a device
    /// that never had the record is sent it and the chunks written after
    /// `seq`, not every change it was ever made of. A snapshot is a copy,
    /// never the only one: the chunks stay. Keeps nothing and answers
    /// false if the record is gone or erased, if `seq` is not a position
    /// the record stands at or passed since its last rebuild or fold, or
    /// if a snapshot as recent is kept. An erasure or a rebuild drops it.
    fn keep_snapshot(&self, doc: DocId, seq: Seq, saved: &[u8]) -> Result<bool, StoreError>;
    /// The snapshot kept of a document: its feed position and bytes.
    fn snapshot(&self, doc: DocId) -> Result<Option<(Seq, Vec<u8>)>, StoreError>;
    /// Feed entries with `after < seq <= upto`, oldest first, one per write;
    /// `upto` is at most the watermark.
    fn entries_after(
        &self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, StoreError>;
    /// The feed position of a document's latest write.
    fn doc_seq(&self, doc: DocId) -> Result<Option<Seq>, StoreError>;
    /// The chunks written to a document after feed position `after`, with
    /// the position of the latest; None if the document is unknown or was
    /// compacted past `after` (then only the whole document will do).
    fn chunks_after(&self, doc: DocId, after: Seq) -> Result<Option<DocChunks>, StoreError>;
    /// Up to `limit` records from the index matching `filter` and within
    /// `scope` (the caller's read rule, applied before the limit counts).
    fn list_records(
        &self,
        filter: &RecordFilter,
        scope: &ReadScope,
        limit: usize,
    ) -> Result<Vec<RecordRow>, StoreError>;
    /// A document's heads as of feed position `seq`.
    fn heads_at(&self, doc: DocId, seq: Seq) -> Result<Option<Vec<Head>>, StoreError>;
    /// Kind, area and creator of a record, for read checks; None if the
    /// store has no such record (or indexed it before it kept these).
    fn access_of(&self, doc: DocId) -> Result<Option<RecordAccess>, StoreError>;
    /// Kind, area and creator of an erased record; None if not erased.
    fn erased(&self, doc: DocId) -> Result<Option<RecordAccess>, StoreError>;
    /// Holds a record back from every device and reader (damaged, or
    /// quarantined by an administrator), keeping what is stored of it.
    fn quarantine(&self, doc: DocId, reason: &str) -> Result<(), StoreError>;
    /// Lifts a quarantine; false if the record was not quarantined.
    fn release_quarantine(&self, doc: DocId) -> Result<bool, StoreError>;
    /// Why a record is quarantined; None if it is not.
    fn quarantined(&self, doc: DocId) -> Result<Option<String>, StoreError>;
    /// Every quarantined record and why.
    fn quarantines(&self) -> Result<Vec<(DocId, String)>, StoreError>;
    /// The feed watermark just after a commit that returned `committed`
    /// (its positions; empty if it stored nothing). A backend that knows
    /// it without asking says so; the default asks.
    fn watermark_after(&self, _committed: &[Seq]) -> Result<Seq, StoreError> {
        self.feed_watermark()
    }
    /// [`Store::entries_after`] for catch-up, with the checks (quarantine
    /// and access, as [`Store::catch_up_batch`] reads them with no
    /// position) of each entry's record read along when that costs no more
    /// round trips; the default reads none.
    fn entries_after_checked(
        &self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<(Vec<(Seq, DocId)>, crate::storage::catch_up::CatchUpBatch), StoreError> {
        Ok((self.entries_after(after, upto, limit)?, Default::default()))
    }
    /// What admission checks of each of `docs` before judging a write to
    /// it, in their order, read together: a backend with round trips
    /// answers a session's batch of pushes in one.
    fn write_checks(&self, docs: &[DocId]) -> Result<Vec<WriteChecks>, StoreError> {
        docs.iter()
            .map(|&doc| {
                Ok(WriteChecks {
                    erased: self.erased(doc)?,
                    access: self.access_of(doc)?,
                    stored: self.doc_seq(doc)?.is_some(),
                    quarantined: self.quarantined(doc)?,
                })
            })
            .collect()
    }
    /// [`Store::load`] of each of `docs`, in their order, read together:
    /// a backend with round trips answers in one. A record that fails to
    /// load fails the whole read (the caller loads them one by one then).
    fn load_many(&self, docs: &[DocId]) -> Result<Vec<Option<StoredDoc>>, StoreError> {
        docs.iter().map(|&doc| self.load(doc)).collect()
    }
    /// What catch-up will read of each of `wants` (a record and the
    /// position its reader holds it as of, or None when only its checks
    /// are wanted, its bytes being at hand), read together; see
    /// [`crate::storage::catch_up`]. A record left out is read one call at
    /// a time, so the default, for a backend without round trips, reads
    /// nothing ahead.
    fn catch_up_batch(
        &self,
        _wants: &[(DocId, Option<Seq>)],
    ) -> Result<crate::storage::catch_up::CatchUpBatch, StoreError> {
        Ok(Default::default())
    }
    /// Marks a clean shutdown (after flushing).
    fn close_cleanly(&self) -> Result<(), StoreError>;
    /// How many documents are stored.
    fn doc_count(&self) -> Result<usize, StoreError>;
    /// When the server first stored each change of a record it knows of
    /// (change hash, milliseconds since the epoch); changes stored before
    /// receipts were kept have none.
    fn received(&self, doc: DocId) -> Result<Vec<(Head, i64)>, StoreError>;
    /// A record's claimed times found implausible on arrival, if any.
    fn clock_skew(&self, doc: DocId) -> Result<Option<ClockSkew>, StoreError>;
    /// One record's listing row, from the index (no document loaded);
    /// None if it is not indexed (unknown, erased, or stored before the
    /// index existed).
    fn record_row(&self, doc: DocId) -> Result<Option<RecordRow>, StoreError>;
    /// Up to `limit` indexed records after `after` (by id) that have no
    /// list row summary yet (last written before summaries were kept),
    /// in id order.
    fn unsummarised(&self, after: Option<DocId>, limit: usize) -> Result<Vec<DocId>, StoreError>;
    /// Stores a record's summary unless one is there already (a write
    /// since has its own, newer one); true if stored.
    fn fill_summary(&self, doc: DocId, summary: &RecordSummary) -> Result<bool, StoreError>;
    /// Whether the stop before this open was clean (tools that only read
    /// mark it clean again when they close, so they change nothing).
    fn opened_clean(&self) -> bool;
    /// Every stored record (not erased ones), for the full check.
    fn all_docs(&self) -> Result<Vec<DocId>, StoreError>;
    /// What is wrong with a record's index and access rows, if anything:
    /// every record written since the index existed has both, pointing at
    /// each other.
    fn index_rows_agree(&self, doc: DocId) -> Result<Option<String>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_scope_admits_exactly_what_the_read_rule_lets_through() {
        let areas = ["kibera", "mathare", ""];
        let users = ["lia", "ofc", ""];
        for role in [Role::Officer, Role::Liaison, Role::Supervisor, Role::Admin] {
            for own_areas in [
                vec![],
                vec!["kibera".to_string()],
                vec!["kibera".into(), "mathare".into()],
            ] {
                let who = Principal {
                    user: "lia".into(),
                    role,
                    areas: own_areas,
                };
                let scope = ReadScope::of(&who);
                for kind in Kind::ALL {
                    for area in areas {
                        for creator in users {
                            assert_eq!(
                                scope.admits(kind.name(), area, creator),
                                who.may_read_parts(kind, area, creator),
                                "{who:?} reading a {kind:?} in {area:?} by {creator:?}"
                            );
                        }
                    }
                }
                assert!(!scope.admits("unknown_kind", "kibera", "lia"));
            }
        }
    }
}
