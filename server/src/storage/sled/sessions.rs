//! [`SessionStore`] over sled: tree `review_sessions` (cookie hash → the
//! session as JSON).

use crate::storage::sessions::{ReviewSession, SessionStore};
use crate::storage::store::StoreError;

/// Review desk sessions in sled.
pub struct SledSessionStore {
    tree: sled::Tree,
}

impl SledSessionStore {
    /// Opens (creating if needed) the sessions tree of `db`.
    pub fn open(db: &sled::Db) -> Result<SledSessionStore, StoreError> {
        Ok(SledSessionStore {
            tree: db.open_tree("review_sessions")?,
        })
    }
}

impl SessionStore for SledSessionStore {
    fn put(&self, key: &[u8; 32], session: &ReviewSession) -> Result<(), StoreError> {
        let json = serde_json::to_vec(session).map_err(|e| StoreError::Corrupt {
            tree: "review_sessions",
            reason: e.to_string(),
        })?;
        self.tree.insert(key, json)?;
        Ok(())
    }

    fn get(&self, key: &[u8; 32]) -> Result<Option<ReviewSession>, StoreError> {
        let Some(v) = self.tree.get(key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                tree: "review_sessions",
                reason: e.to_string(),
            })
    }

    fn remove(&self, key: &[u8; 32]) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_kept_until_removed_and_a_garbled_one_is_reported() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = SledSessionStore::open(&db).unwrap();
        let session = ReviewSession {
            user: "wanjiru".into(),
            csrf: "c".into(),
            expires_at: 10,
        };
        store.put(&[1; 32], &session).unwrap();
        assert_eq!(store.get(&[1; 32]).unwrap(), Some(session));
        assert_eq!(store.get(&[2; 32]).unwrap(), None);
        store.remove(&[1; 32]).unwrap();
        assert_eq!(store.get(&[1; 32]).unwrap(), None);
        store.tree.insert([3; 32], &b"not json"[..]).unwrap();
        assert!(matches!(
            store.get(&[3; 32]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
