//! Review desk sessions as stored: the [`SessionStore`] trait and the
//! [`ReviewSession`] it keeps. Creating, expiring and checking them is the
//! desk's (`api::review::Sessions`).

use serde::{Deserialize, Serialize};

use crate::storage::store::StoreError;

/// A signed-in supervisor, as stored under the hash of the cookie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewSession {
    /// The supervisor's user name.
    pub user: String,
    /// The CSRF token the desk's requests carry.
    pub csrf: String,
    /// When it ends, unix seconds.
    pub expires_at: u64,
}

/// Where review sessions are kept, by the SHA-256 of their cookie (so a
/// copy of the store holds no usable cookie).
pub trait SessionStore: Send + Sync {
    /// Stores a session.
    fn put(&self, key: &[u8; 32], session: &ReviewSession) -> Result<(), StoreError>;
    /// The session under `key`, if any; [`StoreError::Corrupt`] for a
    /// stored value that does not decode (the caller ends it).
    fn get(&self, key: &[u8; 32]) -> Result<Option<ReviewSession>, StoreError>;
    /// Forgets a session.
    fn remove(&self, key: &[u8; 32]) -> Result<(), StoreError>;
}
