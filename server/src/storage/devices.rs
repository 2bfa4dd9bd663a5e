//! Device records and their token hashes: the [`DeviceStore`] trait and
//! what it keeps. The rules (token format, names, revocation, rotation)
//! are `identity::devices::DeviceRegistry`'s.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::store::StoreError;

/// SHA-256 of a token: the only form in which tokens are stored.
///
/// A fast unsalted hash is right here, unlike for passwords: tokens are 256
/// random bits, so there is no dictionary to try and a slow hash would only
/// slow every connection down. Lookup by hash also means no comparison of
/// secret bytes happens, so there is no timing side channel to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a token as presented by a client.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }
}

/// What is stored for each device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Stable id, 32 hex characters.
    pub id: String,
    /// Name given at registration.
    pub name: String,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Registration time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Reported lost or stolen: refused at once with `revoked`, and told
    /// to wipe without uploading.
    pub revoked: bool,
    /// Being handed back: at its next connection it uploads what the
    /// server lacks, then is told to wipe.
    #[serde(default)]
    pub retiring: bool,
    /// When a retiring device reported its store wiped (unix seconds);
    /// its token is refused from then on.
    #[serde(default)]
    pub retired_at: Option<u64>,
    /// When the current token expires (unix seconds); None for records
    /// written before tokens expired: their creation plus the lifetime.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// The token before the last rotation, still accepted until the new
    /// one is first used (the rotation's reply may have been lost).
    #[serde(default)]
    pub previous_token_hash: Option<String>,
    /// What its user could read (role and areas, fingerprinted) when the
    /// device last caught up with the feed: when that changes, the feed is
    /// sent again so records newly in scope reach it.
    #[serde(default)]
    pub scope: Option<String>,
    /// The user who enrolled it (devices added by an admin have none).
    #[serde(default)]
    pub user: Option<String>,
}

/// Storage for device records, keyed by id and by token hash.
///
/// Kept synchronous and small so that a PostgreSQL implementation is a
/// straightforward port; every method can fail.
pub trait DeviceStore: Send + Sync {
    /// Stores a new record and its token-hash index entry, both or neither.
    fn insert(&self, record: &DeviceRecord, token_hash: &TokenHash) -> Result<(), StoreError>;
    /// The record whose token hashes to `hash`, revoked or not.
    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<DeviceRecord>, StoreError>;
    /// All records, in id order.
    fn all(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Forgets a token hash (a rotated-away token).
    fn remove_token(&self, hash: &TokenHash) -> Result<(), StoreError>;
    /// One record by device id.
    fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    /// Notes the heads of records last acknowledged to a device (record,
    /// heads; a record named twice keeps its last). Not flushed: it serves
    /// the audit entry written when a device is revoked, and the
    /// acknowledged data itself is durable elsewhere.
    fn note_acks(&self, id: &str, acks: &[(String, Vec<String>)]) -> Result<(), StoreError>;
    /// Every record acknowledged to a device, with its last heads.
    fn acks(&self, id: &str) -> Result<Vec<(String, Vec<String>)>, StoreError>;
    /// Changes a device's record; `false` if there is no such device.
    fn update(&self, id: &str, change: &dyn Fn(&mut DeviceRecord)) -> Result<bool, StoreError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;
}
