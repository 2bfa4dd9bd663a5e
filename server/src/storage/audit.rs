//! The audit log: append-only and hash-chained. Each entry carries the
//! hash of the one before it, so editing or removing any entry breaks the
//! chain, and `baraza-server audit verify` finds where. Entries hold who,
//! what and when; never passwords, tokens or contact details.
//!
//! [`AuditLog`] is the chain: it numbers and hashes entries and verifies
//! them. [`AuditStore`] is where entries are kept (the sled one is
//! [`crate::storage::sled::SledAuditStore`]); it knows nothing of hashes,
//! and serialises appends, so that one chain has one order whichever
//! process or node appends.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why the log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error("audit store: {0}")]
    Store(#[from] crate::storage::store::StoreError),
    /// An entry does not decode.
    #[error("audit entry {0} does not decode")]
    Corrupt(u64),
}

/// One entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// UTC time, milliseconds since the epoch.
    pub at_ms: u64,
    /// What happened (`login_failed`, `device_enrolled`, `sync`, ...).
    pub event: String,
    /// Details as JSON (ids, counts, reasons).
    pub details: serde_json::Value,
    /// Hash of the previous entry (hex; zeros for the first).
    pub prev: String,
    /// Hash of this entry's other fields (hex).
    pub hash: String,
}

fn entry_hash(
    seq: u64,
    at_ms: u64,
    event: &str,
    details: &serde_json::Value,
    prev: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    h.update((event.len() as u64).to_be_bytes());
    h.update(event.as_bytes());
    let details = details.to_string();
    h.update((details.len() as u64).to_be_bytes());
    h.update(details.as_bytes());
    h.update(prev.as_bytes());
    hex::encode(h.finalize())
}

const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry as kept: its position, and the entry if it decodes (one that
/// does not is reported by position, not skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The position it is kept under.
    pub seq: u64,
    /// The entry, if its stored form decodes.
    pub entry: Option<Entry>,
}

impl Kept {
    /// The entry, or [`AuditError::Corrupt`] naming its position.
    fn decoded(self) -> Result<Entry, AuditError> {
        self.entry.ok_or(AuditError::Corrupt(self.seq))
    }
}

/// Where the audit log's entries are kept, in order, with a head naming
/// the last one (position and hash), written with it.
pub trait AuditStore: Send + Sync {
    /// Appends the entry `next` makes of the last one kept (None for an
    /// empty log) and moves the head to it, durably. Appends are
    /// serialised: the entry kept is the one `next` made of the entry that
    /// really is the last. A backend whose writers race (several nodes)
    /// may call `next` again with a newer last entry.
    fn append(
        &self,
        next: &mut dyn FnMut(Option<Kept>) -> Result<Entry, AuditError>,
    ) -> Result<Entry, AuditError>;
    /// The last entry kept.
    fn last(&self) -> Result<Option<Kept>, AuditError>;
    /// The entry kept at `seq`.
    fn get(&self, seq: u64) -> Result<Option<Kept>, AuditError>;
    /// Up to `limit` entries kept after position `after`, in order.
    fn after(&self, after: u64, limit: usize) -> Result<Vec<Kept>, AuditError>;
    /// The last `n` entries kept, in order.
    fn tail(&self, n: usize) -> Result<Vec<Kept>, AuditError>;
    /// The head: the position and hash it names (position 0 if its stored
    /// form is unreadable); None if there is none.
    fn head(&self) -> Result<Option<(u64, String)>, AuditError>;
}

/// Entries read at a time when walking the whole log.
const PAGE: usize = 1024;

/// The hash-chained log over any [`AuditStore`]. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    store: Arc<dyn AuditStore>,
    /// Told of every entry once it is durable (see `integrity`).
    anchor: Option<Arc<crate::storage::integrity::Anchor>>,
}

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry is intact and the chain is whole.
    Intact {
        /// Entries checked.
        entries: u64,
    },
    /// The first place where the log was tampered with.
    Broken {
        /// The entry (or position) where the chain breaks.
        at: u64,
        /// What is wrong there.
        reason: String,
    },
}

impl AuditLog {
    /// The log kept in `store`.
    pub fn new(store: Arc<dyn AuditStore>) -> AuditLog {
        AuditLog {
            store,
            anchor: None,
        }
    }

    /// Notes every entry in `anchor` once it is durable.
    pub fn with_anchor(mut self, anchor: Arc<crate::storage::integrity::Anchor>) -> AuditLog {
        self.anchor = Some(anchor);
        self
    }

    /// The last entry's number and hash (0 and "" for an empty log).
    pub fn last(&self) -> Result<(u64, String), AuditError> {
        match self.store.last()? {
            Some(kept) => {
                let e = kept.entry.ok_or(AuditError::Corrupt(0))?;
                Ok((e.seq, e.hash))
            }
            None => Ok((0, String::new())),
        }
    }

    /// Entry number `seq`, if there is one.
    pub fn entry(&self, seq: u64) -> Result<Option<Entry>, AuditError> {
        self.store.get(seq)?.map(Kept::decoded).transpose()
    }

    /// Checks the last `n` entries as [`AuditLog::verify`] checks all of
    /// them, and that the head names no entry beyond the last (entries
    /// after the head are appends made while this read). Returns the last entry's
    /// number and what is broken, if anything.
    pub fn verify_tail(&self, n: usize) -> Result<(u64, Option<String>), AuditError> {
        // The head first: an entry appended meanwhile (by another node on
        // a shared database) then lies beyond it, never before.
        let head_seq = self.store.head()?.map_or(0, |(seq, _)| seq);
        let tail = self.store.tail(n)?;
        let mut prev: Option<String> = None;
        let mut expected: Option<u64> = None;
        let mut last = 0;
        for Kept {
            seq: key_seq,
            entry,
        } in tail
        {
            let Some(entry) = entry else {
                return Ok((key_seq, Some(format!("entry {key_seq} does not decode"))));
            };
            if entry.seq != key_seq || expected.is_some_and(|e| e != key_seq) {
                return Ok((
                    key_seq,
                    Some(format!("entries before {key_seq} are missing")),
                ));
            }
            if prev.as_ref().is_some_and(|p| *p != entry.prev)
                || (entry.seq == 1 && entry.prev != ZERO)
            {
                return Ok((
                    key_seq,
                    Some(format!("entry {key_seq} does not follow the one before it")),
                ));
            }
            if hash_of(&entry) != entry.hash {
                return Ok((
                    key_seq,
                    Some(format!("entry {key_seq}'s contents were changed")),
                ));
            }
            expected = Some(key_seq + 1);
            last = key_seq;
            prev = Some(entry.hash);
        }
        if head_seq > last {
            return Ok((
                last,
                Some(format!(
                    "the log ends at entry {last} but its head names entry {head_seq}"
                )),
            ));
        }
        Ok((last, None))
    }

    /// Appends an entry, durably.
    pub fn append(&self, event: &str, details: serde_json::Value) -> Result<Entry, AuditError> {
        let entry = self.store.append(&mut |last| {
            let (seq, prev) = match last {
                Some(kept) => {
                    let last = kept.entry.ok_or(AuditError::Corrupt(0))?;
                    (last.seq + 1, last.hash)
                }
                None => (1, ZERO.to_string()),
            };
            let at_ms = crate::clock::unix_now_ms();
            let details = details.clone();
            let hash = entry_hash(seq, at_ms, event, &details, &prev);
            Ok(Entry {
                seq,
                at_ms,
                event: event.to_string(),
                details,
                prev,
                hash,
            })
        })?;
        if let Some(anchor) = &self.anchor {
            anchor.note_audit(entry.seq, &entry.hash);
        }
        Ok(entry)
    }

    /// Appends, logging (not failing) if the store refuses: an audit
    /// failure must not take a sync down, but it must be visible.
    pub fn record(&self, event: &str, details: serde_json::Value) {
        if let Err(error) = self.append(event, details) {
            tracing::error!(%error, event, "could not write the audit log");
        }
    }

    /// Every entry, in order, read a page at a time.
    pub fn entries(&self) -> impl Iterator<Item = Result<Entry, AuditError>> + '_ {
        self.kept().map(|kept| kept.and_then(Kept::decoded))
    }

    /// Every entry as kept, in order, read a page at a time.
    fn kept(&self) -> impl Iterator<Item = Result<Kept, AuditError>> + '_ {
        let mut after = 0;
        let mut page = std::collections::VecDeque::new();
        let mut done = false;
        std::iter::from_fn(move || {
            if page.is_empty() && !done {
                match self.store.after(after, PAGE) {
                    Ok(next) => {
                        done = next.len() < PAGE;
                        page.extend(next);
                    }
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
            }
            let kept = page.pop_front()?;
            after = kept.seq;
            Some(Ok(kept))
        })
    }

    /// Checks every entry's hash, the chain, the numbering, and that the
    /// head names an entry the log holds, with that entry's hash (entries
    /// after it are appends made while this read: on a shared database
    /// other nodes write while `audit verify` runs).
    pub fn verify(&self) -> Result<Verdict, AuditError> {
        // The head first: an entry appended meanwhile (by another node on
        // a shared database) then lies beyond it, never before, and is
        // checked with the rest of the chain.
        let head = self.store.head()?;
        let mut head_found = None;
        let mut prev = ZERO.to_string();
        let mut expected = 1u64;
        for kept in self.kept() {
            let Kept {
                seq: key_seq,
                entry,
            } = kept?;
            let Some(entry) = entry else {
                return Ok(Verdict::Broken {
                    at: key_seq,
                    reason: "the entry does not decode".into(),
                });
            };
            if entry.seq != expected || key_seq != expected {
                return Ok(Verdict::Broken {
                    at: expected,
                    reason: format!("entry {expected} is missing (found {})", entry.seq),
                });
            }
            if entry.prev != prev {
                return Ok(Verdict::Broken {
                    at: entry.seq,
                    reason: "it does not follow the entry before it".into(),
                });
            }
            if hash_of(&entry) != entry.hash {
                return Ok(Verdict::Broken {
                    at: entry.seq,
                    reason: "its contents were changed".into(),
                });
            }
            if head.as_ref().is_some_and(|(seq, _)| *seq == entry.seq) {
                head_found = Some(entry.hash.clone());
            }
            prev = entry.hash;
            expected += 1;
        }
        let last = expected - 1;
        // Read before the walk, so None may mean entries came since: the
        // head is asked again.
        let head = match head {
            None if last > 0 => self.store.head()?,
            head => head,
        };
        if let Some((head_seq, head_hash)) = head {
            if head_seq > last {
                return Ok(Verdict::Broken {
                    at: head_seq,
                    reason: format!(
                        "the log ends at entry {last} but its head names entry {head_seq}"
                    ),
                });
            }
            let at_head = match head_found {
                Some(hash) => Some(hash),
                // The head re-read after the walk names an entry it saw.
                None => self
                    .store
                    .get(head_seq)?
                    .and_then(|k| k.entry)
                    .map(|e| e.hash),
            };
            if at_head.as_deref() != Some(head_hash.as_str()) {
                return Ok(Verdict::Broken {
                    at: head_seq,
                    reason: format!("the head does not match entry {head_seq}"),
                });
            }
        } else if last > 0 {
            return Ok(Verdict::Broken {
                at: last,
                reason: "the log has entries but no head".into(),
            });
        }
        Ok(Verdict::Intact { entries: last })
    }
}

/// The hash an entry's other fields give.
fn hash_of(entry: &Entry) -> String {
    entry_hash(
        entry.seq,
        entry.at_ms,
        &entry.event,
        &entry.details,
        &entry.prev,
    )
}
