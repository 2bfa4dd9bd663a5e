//! The audit log: append-only and hash-chained. Each entry carries the
//! hash of the one before it, so editing or removing any entry breaks the
//! chain, and `baraza-server audit verify` finds where. Entries hold who,
//! what and when; never passwords, tokens or contact details.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why the log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database failed.
    #[error("audit store: {0}")]
    Store(#[from] sled::Error),
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

const HEAD_KEY: &[u8] = b"head";
const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The log over sled trees `audit` (seq → entry) and `audit_head`.
#[derive(Clone)]
pub struct AuditLog {
    db: sled::Db,
    entries: sled::Tree,
    head: sled::Tree,
    /// Serialises appends so the chain has one order.
    lock: Arc<Mutex<()>>,
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
    /// Opens the log in `db`.
    pub fn open(db: &sled::Db) -> Result<AuditLog, AuditError> {
        Ok(AuditLog {
            entries: db.open_tree("audit")?,
            head: db.open_tree("audit_head")?,
            db: db.clone(),
            lock: Arc::new(Mutex::new(())),
            anchor: None,
        })
    }

    /// Notes every entry in `anchor` once it is durable.
    pub fn with_anchor(mut self, anchor: Arc<crate::storage::integrity::Anchor>) -> AuditLog {
        self.anchor = Some(anchor);
        self
    }

    /// The last entry's number and hash (0 and "" for an empty log).
    pub fn last(&self) -> Result<(u64, String), AuditError> {
        match self.entries.last()? {
            Some((_, v)) => {
                let e: Entry = serde_json::from_slice(&v).map_err(|_| AuditError::Corrupt(0))?;
                Ok((e.seq, e.hash))
            }
            None => Ok((0, String::new())),
        }
    }

    /// Entry number `seq`, if there is one.
    pub fn entry(&self, seq: u64) -> Result<Option<Entry>, AuditError> {
        match self.entries.get(seq.to_be_bytes())? {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|_| AuditError::Corrupt(seq))?,
            )),
            None => Ok(None),
        }
    }

    /// Checks the last `n` entries as [`AuditLog::verify`] checks all of
    /// them, and that the head names the last. Returns the last entry's
    /// number and what is broken, if anything.
    pub fn verify_tail(&self, n: usize) -> Result<(u64, Option<String>), AuditError> {
        let mut tail: Vec<(u64, Vec<u8>)> = Vec::with_capacity(n.min(4096));
        for item in self.entries.iter().rev().take(n) {
            let (k, v) = item?;
            let seq = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            tail.push((seq, v.to_vec()));
        }
        tail.reverse();
        let mut prev: Option<String> = None;
        let mut expected: Option<u64> = None;
        let mut last = 0;
        for (key_seq, v) in tail {
            let Ok(entry) = serde_json::from_slice::<Entry>(&v) else {
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
            let hash = entry_hash(
                entry.seq,
                entry.at_ms,
                &entry.event,
                &entry.details,
                &entry.prev,
            );
            if hash != entry.hash {
                return Ok((
                    key_seq,
                    Some(format!("entry {key_seq}'s contents were changed")),
                ));
            }
            expected = Some(key_seq + 1);
            last = key_seq;
            prev = Some(entry.hash);
        }
        let head = self.head.get(HEAD_KEY)?;
        let head_seq = head
            .as_ref()
            .and_then(|h| h.get(..8))
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if head_seq != last {
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
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, prev) = match self.entries.last()? {
            Some((_, v)) => {
                let last: Entry = serde_json::from_slice(&v).map_err(|_| AuditError::Corrupt(0))?;
                (last.seq + 1, last.hash)
            }
            None => (1, ZERO.to_string()),
        };
        let at_ms = crate::clock::unix_now_ms();
        let hash = entry_hash(seq, at_ms, event, &details, &prev);
        let entry = Entry {
            seq,
            at_ms,
            event: event.to_string(),
            details,
            prev,
            hash,
        };
        let bytes = serde_json::to_vec(&entry).map_err(|_| AuditError::Corrupt(seq))?;
        self.entries.insert(seq.to_be_bytes(), bytes)?;
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(entry.hash.as_bytes());
        self.head.insert(HEAD_KEY, head)?;
        self.db.flush()?;
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

    /// Every entry, in order.
    pub fn entries(&self) -> impl Iterator<Item = Result<Entry, AuditError>> + '_ {
        self.entries.iter().map(|item| {
            let (k, v) = item?;
            let seq = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            serde_json::from_slice(&v).map_err(|_| AuditError::Corrupt(seq))
        })
    }

    /// Checks every entry's hash, the chain, the numbering, and that the
    /// last entry is the one the head names.
    pub fn verify(&self) -> Result<Verdict, AuditError> {
        let mut prev = ZERO.to_string();
        let mut expected = 1u64;
        for item in self.entries.iter() {
            let (k, v) = item?;
            let key_seq = k.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            let Ok(entry) = serde_json::from_slice::<Entry>(&v) else {
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
            let hash = entry_hash(
                entry.seq,
                entry.at_ms,
                &entry.event,
                &entry.details,
                &entry.prev,
            );
            if hash != entry.hash {
                return Ok(Verdict::Broken {
                    at: entry.seq,
                    reason: "its contents were changed".into(),
                });
            }
            prev = entry.hash;
            expected += 1;
        }
        let last = expected - 1;
        if let Some(head) = self.head.get(HEAD_KEY)? {
            let head_seq = head
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if head_seq != last || head.get(8..) != Some(prev.as_bytes()) {
                return Ok(Verdict::Broken {
                    at: head_seq,
                    reason: format!(
                        "the log ends at entry {last} but its head names entry {head_seq}"
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        (dir, AuditLog::open(&db).unwrap())
    }

    #[test]
    fn an_intact_log_verifies() {
        let (_d, log) = log();
        for i in 0..5 {
            log.append("sync", serde_json::json!({ "n": i })).unwrap();
        }
        assert_eq!(log.verify().unwrap(), Verdict::Intact { entries: 5 });
    }

    #[test]
    fn one_changed_byte_is_found() {
        let (_d, log) = log();
        for i in 0..5 {
            log.append("sync", serde_json::json!({ "n": i })).unwrap();
        }
        let key = 3u64.to_be_bytes();
        let mut bytes = log.entries.get(key).unwrap().unwrap().to_vec();
        let pos = bytes.windows(5).position(|w| w == b"\"n\":2").unwrap() + 4;
        bytes[pos] = b'7';
        log.entries.insert(key, bytes).unwrap();
        assert!(matches!(
            log.verify().unwrap(),
            Verdict::Broken { at: 3, .. }
        ));
    }

    #[test]
    fn a_removed_entry_is_found_in_the_middle_or_at_the_end() {
        let (_d, log) = log();
        for i in 0..5 {
            log.append("sync", serde_json::json!({ "n": i })).unwrap();
        }
        log.entries.remove(5u64.to_be_bytes()).unwrap();
        assert!(matches!(log.verify().unwrap(), Verdict::Broken { .. }));
        log.entries.remove(2u64.to_be_bytes()).unwrap();
        assert!(matches!(
            log.verify().unwrap(),
            Verdict::Broken { at: 2, .. }
        ));
    }
}
