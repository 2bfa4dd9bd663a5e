//! Users as stored: the [`UserStore`] trait and the [`User`] it keeps. The
//! rules (names, passwords, lockout) are `identity::users::UserRegistry`'s.

use serde::{Deserialize, Serialize};

use crate::storage::store::StoreError;
use baraza_records::access::Role;

/// A user as stored. The password hash is in PHC string form.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Areas (beats, wards, districts) the user works in.
    pub areas: Vec<String>,
    /// Disabled users cannot log in.
    pub disabled: bool,
    /// Locked after repeated failures, until an admin releases the account.
    /// The failures themselves are counted by the
    /// [`ThrottleStore`](crate::storage::throttles::ThrottleStore), so that
    /// nodes sharing a database count them together.
    pub locked: bool,
    pub(crate) password_hash: String,
}

/// Where users are kept, by name.
pub trait UserStore: Send + Sync {
    /// A user by name.
    fn get(&self, name: &str) -> Result<Option<User>, StoreError>;
    /// Stores a user, new or changed. With `durably` false the write need
    /// not reach the disk before returning (see `UserRegistry::login`).
    fn put(&self, user: &User, durably: bool) -> Result<(), StoreError>;
    /// Every user, by name.
    fn list(&self) -> Result<Vec<User>, StoreError>;
}
