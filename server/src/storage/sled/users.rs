//! [`UserStore`] over sled: tree `users` (name → the user as JSON).

use crate::storage::store::StoreError;
use crate::storage::users::{User, UserStore};

/// Users in sled.
pub struct SledUserStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledUserStore {
    /// Opens (creating if needed) the users tree of `db`.
    pub fn open(db: &sled::Db) -> Result<SledUserStore, StoreError> {
        Ok(SledUserStore {
            tree: db.open_tree("users")?,
            db: db.clone(),
        })
    }
}

/// A user that does not decode, named (what is wrong with it could quote
/// its password hash).
fn corrupt(name: &[u8]) -> StoreError {
    StoreError::Corrupt {
        tree: "users",
        reason: String::from_utf8_lossy(name).into_owned(),
    }
}

impl UserStore for SledUserStore {
    fn get(&self, name: &str) -> Result<Option<User>, StoreError> {
        match self.tree.get(name.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| corrupt(name.as_bytes())),
            None => Ok(None),
        }
    }

    fn put(&self, user: &User, durably: bool) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(user).map_err(|_| corrupt(user.name.as_bytes()))?;
        self.tree.insert(user.name.as_bytes(), bytes)?;
        // An unflushed write still reaches the disk with the next flush of
        // the same database (the audit entry every login failure makes),
        // or sled's own periodic flush.
        if durably {
            self.db.flush()?;
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<User>, StoreError> {
        self.tree
            .iter()
            .map(|item| {
                let (k, v) = item?;
                serde_json::from_slice(&v).map_err(|_| corrupt(&k))
            })
            .collect()
    }
}
