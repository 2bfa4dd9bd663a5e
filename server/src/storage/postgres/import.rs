//! Moving a deployment from the embedded store to PostgreSQL
//! (`baraza-server migrate --from-data DIR --to postgres://...`): every
//! record with its whole history at the same feed positions, the store
//! id, users, devices (tokens, acknowledged heads) and the audit chain
//! entry by entry, copied from any [`Storage`] into an empty database and
//! then checked against the source before it is called done.
//!
//! Kept as they were, so tablets that synced with the old server
//! reconcile with the new one rather than re-send: the store id, each
//! feed position (a tablet's cursor names one) and each record's heads
//! at it. Not copied: review desk sessions (supervisors sign in again),
//! login throttles (they are minutes long) and snapshots (the new server
//! takes them again).

use std::collections::HashMap;

use baraza_protocol::{docsync, DocId, Seq};

use crate::storage::audit::{AuditError, AuditLog, Verdict};
use crate::storage::postgres::{bundle, Pg, PgStore};
use crate::storage::store::{DocWrite, Receipt, Store, StoreError};
use crate::storage::Storage;

/// Feed entries and audit entries read at a time.
const PAGE: usize = 1024;

/// What a migration copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Records (not counting erased ones).
    pub records: usize,
    /// Feed entries, at the same positions.
    pub feed: u64,
    /// Users.
    pub users: usize,
    /// Devices.
    pub devices: usize,
    /// Audit entries, the chain intact.
    pub audit: u64,
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The target database holds data already: nothing was written.
    #[error("the target database is not empty ({0}); migrate into a new, empty database")]
    NotEmpty(&'static str),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log could not be read or written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A record's stored chunks did not split as the store said.
    #[error("record {0} as stored in the source does not split into its chunks: {1}")]
    Chunks(DocId, String),
    /// The copy differs from the source.
    #[error("the copy differs from the source: {0}")]
    Differs(String),
}

/// Copies everything `from` holds into the empty database at `url`, then
/// checks the copy: counts, every record's position, heads and bytes, the
/// users and devices, the audit chain (verified, ending at the same hash).
pub fn import(from: &Storage, url: &str) -> Result<Imported, ImportError> {
    let pg = Pg::connect(url)?;
    let to = bundle(pg.clone())?;
    let mut docs = PgStore::open(pg)?;
    if docs.feed_watermark()? > 0 || docs.doc_count()? > 0 {
        return Err(ImportError::NotEmpty("it holds records"));
    }
    if !to.users.list()?.is_empty() || !to.devices.all()?.is_empty() {
        return Err(ImportError::NotEmpty("it holds users or devices"));
    }
    if to.audit.last()?.is_some() {
        return Err(ImportError::NotEmpty("it holds an audit log"));
    }
    docs.adopt_store_id(from.docs.store_id())?;
    copy_records(&*from.docs, &docs)?;
    for user in from.users.list()? {
        to.users.put(&user, true)?;
    }
    for device in from.devices.all()? {
        for hash in std::iter::once(&device.token_hash).chain(&device.previous_token_hash) {
            if let Some(hash) = token_hash(hash) {
                to.devices.insert(&device, &hash)?;
            }
        }
        to.devices
            .note_acks(&device.id, &from.devices.acks(&device.id)?)?;
    }
    let source = AuditLog::new(from.audit.clone());
    for entry in source.entries() {
        let entry = entry?;
        to.audit.append(&mut |_| Ok(entry.clone()))?;
    }
    check(from, &to, &docs)
}

/// A stored token hash (hex) as the device store takes it.
fn token_hash(hex_hash: &str) -> Option<crate::storage::devices::TokenHash> {
    let bytes: [u8; 32] = hex::decode(hex_hash).ok()?.try_into().ok()?;
    Some(crate::storage::devices::TokenHash(bytes))
}

/// Every feed entry of `from`, in order, at its own position.
fn copy_records(from: &dyn Store, to: &PgStore) -> Result<(), ImportError> {
    let upto = from.feed_watermark()?;
    // A record's chunks by position, read at its first entry and dropped
    // after its latest: memory for the records between, not the store.
    let mut open: HashMap<DocId, HashMap<Seq, Vec<u8>>> = HashMap::new();
    let mut after = 0;
    loop {
        let entries = from.entries_after(after, upto, PAGE)?;
        for &(seq, doc) in &entries {
            if let Some(tombstone) = from.erased(doc)? {
                to.import(seq, &DocWrite::erasure(doc), &[], Some(&tombstone))?;
                continue;
            }
            let latest = from.doc_seq(doc)?;
            let chunks = match open.entry(doc) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(chunks_by_position(from, doc)?)
                }
            };
            let chunk = chunks.remove(&seq).unwrap_or_default();
            let last = latest == Some(seq);
            let write = DocWrite {
                doc,
                chunk,
                heads: from.heads_at(doc, seq)?.unwrap_or_default(),
                rebuild: false,
                index: if last {
                    from.record_row(doc)?.map(|row| row.entry)
                } else {
                    None
                },
                erase: false,
                receipt: if last {
                    from.clock_skew(doc)?.map(|skew| Receipt {
                        skew: Some(skew),
                        ..Receipt::default()
                    })
                } else {
                    None
                },
            };
            let received = if last {
                from.received(doc)?
            } else {
                Vec::new()
            };
            to.import(seq, &write, &received, None)?;
            if last {
                open.remove(&doc);
            }
        }
        match entries.last() {
            Some(&(seq, _)) if entries.len() == PAGE => after = seq,
            _ => break,
        }
    }
    for (doc, reason) in from.quarantines()? {
        to.quarantine(doc, &reason)?;
    }
    Ok(())
}

/// What `from` holds of `doc`, chunk by chunk, by feed position.
fn chunks_by_position(from: &dyn Store, doc: DocId) -> Result<HashMap<Seq, Vec<u8>>, ImportError> {
    let Some(stored) = from.load(doc)? else {
        return Ok(HashMap::new());
    };
    let chunks = docsync::split_chunks(&stored.bytes)
        .map_err(|e| ImportError::Chunks(doc, e.to_string()))?;
    if chunks.len() != stored.positions.len() {
        return Err(ImportError::Chunks(
            doc,
            format!(
                "{} chunks at {} positions",
                chunks.len(),
                stored.positions.len()
            ),
        ));
    }
    Ok(stored
        .positions
        .iter()
        .zip(chunks)
        .map(|(seq, (_, bytes))| (*seq, bytes.to_vec()))
        .collect())
}

/// The copy, checked against the source.
fn check(from: &Storage, to: &Storage, docs: &PgStore) -> Result<Imported, ImportError> {
    let differs = |what: String| Err(ImportError::Differs(what));
    if docs.store_id() != from.docs.store_id() {
        return differs("store id".into());
    }
    let feed = from.docs.feed_watermark()?;
    if docs.feed_watermark()? != feed {
        return differs(format!(
            "feed watermark {} for {feed}",
            docs.feed_watermark()?
        ));
    }
    let mut after = 0;
    loop {
        let want = from.docs.entries_after(after, feed, PAGE)?;
        if docs.entries_after(after, feed, PAGE)? != want {
            return differs(format!("feed entries after {after}"));
        }
        match want.last() {
            Some(&(seq, _)) if want.len() == PAGE => after = seq,
            _ => break,
        }
    }
    let records = from.docs.all_docs()?;
    if docs.doc_count()? != records.len() {
        return differs(format!(
            "{} records for {}",
            docs.doc_count()?,
            records.len()
        ));
    }
    for &doc in &records {
        let (want, got) = (from.docs.load(doc)?, docs.load(doc)?);
        let same = match (&want, &got) {
            (Some(w), Some(g)) => w.bytes == g.bytes && w.heads == g.heads && w.seq == g.seq,
            (None, None) => true,
            _ => false,
        };
        if !same {
            return differs(format!("record {doc}"));
        }
    }
    let names = |users: Vec<crate::storage::users::User>| {
        let mut names: Vec<String> = users.into_iter().map(|u| u.name).collect();
        names.sort();
        names
    };
    let users = names(from.users.list()?);
    if names(to.users.list()?) != users {
        return differs("users".into());
    }
    let sorted = |mut devices: Vec<crate::storage::devices::DeviceRecord>| {
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        devices
    };
    let devices = sorted(from.devices.all()?);
    if sorted(to.devices.all()?) != devices {
        return differs("devices".into());
    }
    let audit = match AuditLog::new(to.audit.clone()).verify()? {
        Verdict::Intact { entries } => entries,
        Verdict::Broken { at, reason } => {
            return differs(format!("the audit chain breaks at entry {at}: {reason}"))
        }
    };
    if AuditLog::new(to.audit.clone()).last()? != AuditLog::new(from.audit.clone()).last()? {
        return differs("the audit chain's last entry".into());
    }
    Ok(Imported {
        records: records.len(),
        feed,
        users: users.len(),
        devices: devices.len(),
        audit,
    })
}
