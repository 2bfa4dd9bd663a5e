//! [`AuditStore`] over sled: trees `audit` (seq, 8 bytes big-endian → the
//! entry as JSON) and `audit_head` (`head` → seq | hash).

use std::sync::Mutex;

use crate::storage::audit::{AuditError, AuditStore, Entry, Kept};
use crate::storage::store::StoreError;

const HEAD_KEY: &[u8] = b"head";

/// The audit log's entries in sled.
pub struct SledAuditStore {
    db: sled::Db,
    entries: sled::Tree,
    head: sled::Tree,
    /// Serialises appends so the chain has one order.
    lock: Mutex<()>,
}

impl SledAuditStore {
    /// Opens (creating if needed) the audit trees of `db`.
    pub fn open(db: &sled::Db) -> Result<SledAuditStore, StoreError> {
        Ok(SledAuditStore {
            entries: db.open_tree("audit")?,
            head: db.open_tree("audit_head")?,
            db: db.clone(),
            lock: Mutex::new(()),
        })
    }
}

fn kept(k: &[u8], v: &[u8]) -> Kept {
    Kept {
        seq: k.try_into().map(u64::from_be_bytes).unwrap_or(0),
        entry: serde_json::from_slice(v).ok(),
    }
}

fn store_error(e: sled::Error) -> AuditError {
    AuditError::Store(e.into())
}

impl AuditStore for SledAuditStore {
    fn append(
        &self,
        next: &mut dyn FnMut(Option<Kept>) -> Result<Entry, AuditError>,
    ) -> Result<Entry, AuditError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.last()?;
        let entry = next(last)?;
        let bytes = serde_json::to_vec(&entry).map_err(|_| AuditError::Corrupt(entry.seq))?;
        self.entries
            .insert(entry.seq.to_be_bytes(), bytes)
            .map_err(store_error)?;
        let mut head = entry.seq.to_be_bytes().to_vec();
        head.extend_from_slice(entry.hash.as_bytes());
        self.head.insert(HEAD_KEY, head).map_err(store_error)?;
        self.db.flush().map_err(store_error)?;
        Ok(entry)
    }

    fn last(&self) -> Result<Option<Kept>, AuditError> {
        Ok(self
            .entries
            .last()
            .map_err(store_error)?
            .map(|(k, v)| kept(&k, &v)))
    }

    fn get(&self, seq: u64) -> Result<Option<Kept>, AuditError> {
        Ok(self
            .entries
            .get(seq.to_be_bytes())
            .map_err(store_error)?
            .map(|v| Kept {
                seq,
                entry: serde_json::from_slice(&v).ok(),
            }))
    }

    fn after(&self, after: u64, limit: usize) -> Result<Vec<Kept>, AuditError> {
        let range = (
            std::ops::Bound::Excluded(after.to_be_bytes()),
            std::ops::Bound::Unbounded,
        );
        self.entries
            .range(range)
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(store_error)?;
                Ok(kept(&k, &v))
            })
            .collect()
    }

    fn tail(&self, n: usize) -> Result<Vec<Kept>, AuditError> {
        let mut tail = self
            .entries
            .iter()
            .rev()
            .take(n)
            .map(|item| {
                let (k, v) = item.map_err(store_error)?;
                Ok(kept(&k, &v))
            })
            .collect::<Result<Vec<_>, AuditError>>()?;
        tail.reverse();
        Ok(tail)
    }

    fn head(&self) -> Result<Option<(u64, String)>, AuditError> {
        Ok(self.head.get(HEAD_KEY).map_err(store_error)?.map(|head| {
            let seq = head
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            let hash = String::from_utf8_lossy(head.get(8..).unwrap_or_default()).into_owned();
            (seq, hash)
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::audit::{AuditLog, Verdict};

    fn log() -> (tempfile::TempDir, Arc<SledAuditStore>, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = Arc::new(SledAuditStore::open(&db).unwrap());
        (dir, store.clone(), AuditLog::new(store))
    }

    #[test]
    fn an_intact_log_verifies() {
        let (_d, _kept, log) = log();
        for i in 0..5 {
            log.append("sync", serde_json::json!({ "n": i })).unwrap();
        }
        assert_eq!(log.verify().unwrap(), Verdict::Intact { entries: 5 });
    }

    #[test]
    fn one_changed_byte_is_found() {
        let (_d, kept, log) = log();
        for i in 0..5 {
            log.append("sync", serde_json::json!({ "n": i })).unwrap();
        }
        let key = 3u64.to_be_bytes();
        let mut bytes = kept.entries.get(key).unwrap().unwrap().to_vec();
        let pos = bytes.windows(5).position(|w| w == b"\"n\":2").unwrap() + 4;
        bytes[pos] = b'7';
        kept.entries.insert(key, bytes).unwrap();
        assert!(matches!(
            log.verify().unwrap(),
            Verdict::Broken { at: 3, .. }
        ));
    }

    #[test]
    fn a_removed_entry_is_found_in_the_middle_or_at_the_end() {
        let (_d, kept, log) = log();
        for i in 0..5 {
            log.append("sync", serde_json::json!({ "n": i })).unwrap();
        }
        kept.entries.remove(5u64.to_be_bytes()).unwrap();
        assert!(matches!(log.verify().unwrap(), Verdict::Broken { .. }));
        kept.entries.remove(2u64.to_be_bytes()).unwrap();
        assert!(matches!(
            log.verify().unwrap(),
            Verdict::Broken { at: 2, .. }
        ));
    }
}
