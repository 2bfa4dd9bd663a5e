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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::identity::users::{Role, UserRegistry};
    use crate::storage::sled::SledThrottles;

    #[test]
    fn passwords_are_stored_hashed() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = Arc::new(SledUserStore::open(&db).unwrap());
        let users = UserRegistry::new(store.clone(), Arc::new(SledThrottles::open(&db).unwrap()));
        users
            .add("njeri", Role::Officer, &[], "radio check 1900")
            .unwrap();
        let stored = store.tree.get("njeri").unwrap().unwrap();
        let text = String::from_utf8_lossy(&stored);
        assert!(!text.contains("radio check 1900"));
        assert!(text.contains("$argon2id$"));
        assert_eq!(users.list().unwrap().len(), 1);
        store.tree.insert("garbled", &b"{"[..]).unwrap();
        assert!(matches!(
            store.get("garbled"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
