//! Catch-up's reads of many records at once.
//!
//! Catch-up sends each feed entry's record to a client: whether it is
//! held back, who may read it, and its bytes (a snapshot and the chunks
//! after it, or the chunks after the client's position). Read one record
//! at a time, that is several statements per entry, which costs a sled
//! tree next to nothing and a database a round trip each: a cold start of
//! 10,000 records made 40,000 of them. A backend with round trips answers
//! [`Store::catch_up_batch`] for a whole batch of entries in one read; the
//! engine then reads through a [`BatchReads`] view, which answers from the
//! batch what it holds and asks the store for the rest, so what is sent
//! and every check on it stay the same either way.
//!
//! A batch is read after the feed entries it serves, so it holds every
//! write up to them; it lives for one catch-up call. Its chunks may be
//! kept for other readers like any read's, judged by when it was read.

use std::collections::HashMap;

use baraza_protocol::{DocId, Head, Seq};

use crate::storage::store::{DocChunks, RecordAccess, Store, StoreError, StoredDoc};

/// What a batch read found of one record, as the store's single-record
/// reads would have answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchRecord {
    /// [`Store::quarantined`].
    pub quarantined: Option<String>,
    /// [`Store::access_of`].
    pub access: Option<RecordAccess>,
    /// [`Store::snapshot`], read for a reader at position 0 only.
    pub snapshot: Option<Option<(Seq, Vec<u8>)>>,
    /// [`Store::chunks_after`] at the position given as the map's key.
    pub chunks: Vec<(Seq, Option<DocChunks>)>,
    /// [`Store::load`], when the batch read all of the record's chunks and
    /// found as many as were committed (otherwise the store is asked, and
    /// says what is wrong).
    pub load: Option<StoredDoc>,
    /// [`Store::heads_at`] the record's latest position: (position, heads).
    pub latest: Option<(Seq, Vec<Head>)>,
}

/// Records read together for one catch-up call.
#[derive(Debug, Clone, Default)]
pub struct CatchUpBatch {
    /// Per record asked about. One absent was not read: ask the store.
    pub records: HashMap<DocId, BatchRecord>,
    /// The recent logs' epoch before the read began (set by whoever asked
    /// for it; see [`DocReads::read_at_epoch`]).
    pub epoch: u64,
}

impl CatchUpBatch {
    /// Takes in what a later read found: its records replace these
    /// (they were read later), and its epoch stands for the bytes it read.
    pub fn merge(&mut self, later: CatchUpBatch) {
        self.records.extend(later.records);
        self.epoch = later.epoch;
    }
}

/// The single-record reads catch-up makes, answered by a store or by a
/// batch in front of one.
pub trait DocReads {
    /// [`Store::snapshot`].
    fn snapshot(&self, doc: DocId) -> Result<Option<(Seq, Vec<u8>)>, StoreError>;
    /// [`Store::chunks_after`].
    fn chunks_after(&self, doc: DocId, after: Seq) -> Result<Option<DocChunks>, StoreError>;
    /// [`Store::load`].
    fn load(&self, doc: DocId) -> Result<Option<StoredDoc>, StoreError>;
    /// [`Store::heads_at`].
    fn heads_at(&self, doc: DocId, seq: Seq) -> Result<Option<Vec<Head>>, StoreError>;
    /// For answers read ahead, the [`crate::engine::recent`] epoch their
    /// read began at: a cache that keeps them must judge them by that
    /// moment, not by when they were used, or an erasure or rebuild in
    /// between would go unnoticed. None for answers read on the spot.
    fn read_at_epoch(&self) -> Option<u64>;
}

impl DocReads for dyn Store {
    fn snapshot(&self, doc: DocId) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        Store::snapshot(self, doc)
    }

    fn chunks_after(&self, doc: DocId, after: Seq) -> Result<Option<DocChunks>, StoreError> {
        Store::chunks_after(self, doc, after)
    }

    fn load(&self, doc: DocId) -> Result<Option<StoredDoc>, StoreError> {
        Store::load(self, doc)
    }

    fn heads_at(&self, doc: DocId, seq: Seq) -> Result<Option<Vec<Head>>, StoreError> {
        Store::heads_at(self, doc, seq)
    }

    fn read_at_epoch(&self) -> Option<u64> {
        None
    }
}

/// A batch in front of its store.
pub struct BatchReads<'a> {
    /// What the batch read.
    pub batch: &'a CatchUpBatch,
    /// Everything else.
    pub store: &'a dyn Store,
}

impl BatchReads<'_> {
    fn record(&self, doc: DocId) -> Option<&BatchRecord> {
        self.batch.records.get(&doc)
    }

    /// [`Store::quarantined`].
    pub fn quarantined(&self, doc: DocId) -> Result<Option<String>, StoreError> {
        match self.record(doc) {
            Some(r) => Ok(r.quarantined.clone()),
            None => self.store.quarantined(doc),
        }
    }
}

impl DocReads for BatchReads<'_> {
    fn snapshot(&self, doc: DocId) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        match self.record(doc).and_then(|r| r.snapshot.as_ref()) {
            Some(kept) => Ok(kept.clone()),
            None => Store::snapshot(self.store, doc),
        }
    }

    fn chunks_after(&self, doc: DocId, after: Seq) -> Result<Option<DocChunks>, StoreError> {
        let found = self
            .record(doc)
            .and_then(|r| r.chunks.iter().find(|(at, _)| *at == after));
        match found {
            Some((_, chunks)) => Ok(chunks.clone()),
            None => Store::chunks_after(self.store, doc, after),
        }
    }

    fn load(&self, doc: DocId) -> Result<Option<StoredDoc>, StoreError> {
        match self.record(doc).and_then(|r| r.load.as_ref()) {
            Some(stored) => Ok(Some(stored.clone())),
            None => Store::load(self.store, doc),
        }
    }

    fn heads_at(&self, doc: DocId, seq: Seq) -> Result<Option<Vec<Head>>, StoreError> {
        match self.record(doc).and_then(|r| r.latest.as_ref()) {
            Some((at, heads)) if *at == seq => Ok(Some(heads.clone())),
            _ => Store::heads_at(self.store, doc, seq),
        }
    }

    fn read_at_epoch(&self) -> Option<u64> {
        Some(self.batch.epoch)
    }
}
