//! The devices allowed to sync, and their bearer tokens.
//!
//! A device is registered by an administrator (`baraza-server device add`),
//! which prints a token once; the tablet presents it as
//! `Authorization: Bearer <token>` when opening `/v1/sync`. Only the
//! SHA-256 of a token is stored. [`DeviceRegistry`] holds the rules (token
//! format, names, revocation); [`DeviceStore`] is the storage underneath,
//! implemented over sled today by [`SledDeviceStore`].

use crate::clock::unix_now;
use std::sync::Arc;

use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::caller::DeviceIdentity;

/// Every token starts with this, so a leaked token is recognisable in logs,
/// pastes and secret scanners.
pub const TOKEN_PREFIX: &str = "bz_";
/// Longest device name accepted, in characters.
pub const NAME_CHARS_MAX: usize = 128;
/// Random bytes in a token (256 bits).
const TOKEN_RANDOM_BYTES: usize = 32;
/// Random bytes in a device id.
const ID_RANDOM_BYTES: usize = 16;

/// Failures of device operations.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The storage backend failed.
    #[error("device storage failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored record could not be decoded.
    #[error("device record {key} is corrupt")]
    Corrupt {
        /// The record's key, printable.
        key: String,
        /// Why it could not be decoded.
        #[source]
        source: serde_json::Error,
    },
    /// The name given to `add` is empty, too long or has control characters.
    #[error("invalid device name: {0}")]
    InvalidName(&'static str),
    /// No device has this id.
    #[error("no device with id {0}")]
    NotFound(String),
    /// A stored record's id is not 32 hex digits: the record is refused
    /// rather than given an identity whose actor check could not hold.
    #[error("device record {key} has an id that is not 32 hex digits")]
    BadId {
        /// The stored id, printable.
        key: String,
    },
    /// The operating system's random number generator failed.
    #[error("cannot read random bytes from the operating system")]
    Random(#[source] rand::rand_core::OsError),
}

impl From<sled::Error> for DeviceError {
    fn from(error: sled::Error) -> Self {
        DeviceError::Storage(Box::new(error))
    }
}

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

impl DeviceRecord {
    /// The identity handed to the sync layer; refused for a record whose id
    /// does not parse (fails closed).
    pub fn identity(&self) -> Result<DeviceIdentity, DeviceError> {
        let id =
            baraza_protocol::DeviceId::from_hex(&self.id).ok_or_else(|| DeviceError::BadId {
                key: self.id.escape_debug().to_string(),
            })?;
        Ok(DeviceIdentity {
            id,
            name: self.name.clone(),
            user: self.user.clone(),
            retiring: self.retiring,
            scope: self.scope.clone(),
        })
    }

    /// The device's state as `device list` shows it.
    pub fn state(&self) -> &'static str {
        match (self.revoked, self.retired_at, self.retiring) {
            (true, _, _) => "revoked",
            (false, Some(_), _) => "retired",
            (false, None, true) => "retiring",
            (false, None, false) => "active",
        }
    }
}

/// What a presented token turned out to be.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A device in good standing (possibly retiring).
    Device(DeviceIdentity),
    /// No device has this token.
    Unknown,
    /// The device was reported lost or stolen: it must wipe.
    Revoked,
    /// The device was retired and has wiped itself.
    Retired,
    /// The token's lifetime passed without a rotation: enroll again.
    Expired,
}

/// A rotated token, handed to the device once.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new bearer token.
    pub token: String,
    /// When it expires (unix seconds).
    pub expires_at: u64,
}

/// Device tokens live this long unless configured: long enough for a
/// tablet left in a drawer over a holiday, short enough that a token
/// copied off a device dies on its own.
pub const TOKEN_LIFETIME_DEFAULT_SECS: u64 = 90 * 24 * 3600;

impl Auth {
    /// The device, if in good standing.
    pub fn device(self) -> Option<DeviceIdentity> {
        match self {
            Auth::Device(d) => Some(d),
            _ => None,
        }
    }
}

/// Storage for device records, keyed by id and by token hash.
///
/// Kept synchronous and small so that a PostgreSQL implementation is a
/// straightforward port; every method can fail.
pub trait DeviceStore: Send + Sync {
    /// Stores a new record and its token-hash index entry, both or neither.
    fn insert(&self, record: &DeviceRecord, token_hash: &TokenHash) -> Result<(), DeviceError>;
    /// The record whose token hashes to `hash`, revoked or not.
    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<DeviceRecord>, DeviceError>;
    /// All records, in id order.
    fn all(&self) -> Result<Vec<DeviceRecord>, DeviceError>;
    /// Forgets a token hash (a rotated-away token).
    fn remove_token(&self, hash: &TokenHash) -> Result<(), DeviceError>;
    /// One record by device id.
    fn get(&self, id: &str) -> Result<Option<DeviceRecord>, DeviceError>;
    /// Notes the heads of a record last acknowledged to a device. Not
    /// flushed: it serves the audit entry written when a device is
    /// revoked, and the acknowledged data itself is durable elsewhere.
    fn note_ack(&self, id: &str, record: &str, heads: &[String]) -> Result<(), DeviceError>;
    /// Every record acknowledged to a device, with its last heads.
    fn acks(&self, id: &str) -> Result<Vec<(String, Vec<String>)>, DeviceError>;
    /// Changes a device's record; `false` if there is no such device.
    fn update(&self, id: &str, change: &dyn Fn(&mut DeviceRecord)) -> Result<bool, DeviceError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), DeviceError>;
}

/// [`DeviceStore`] over two sled trees: `devices` (id → record as JSON) and
/// `device_tokens` (token hash → id).
#[derive(Clone)]
pub struct SledDeviceStore {
    db: sled::Db,
    devices: sled::Tree,
    tokens: sled::Tree,
    acks: sled::Tree,
}

impl SledDeviceStore {
    /// Opens (creating if needed) the device trees in `db`.
    pub fn open(db: &sled::Db) -> Result<SledDeviceStore, DeviceError> {
        Ok(SledDeviceStore {
            db: db.clone(),
            devices: db.open_tree("devices")?,
            tokens: db.open_tree("device_tokens")?,
            acks: db.open_tree("device_acks")?,
        })
    }

    fn decode(key: &[u8], bytes: &[u8]) -> Result<DeviceRecord, DeviceError> {
        serde_json::from_slice(bytes).map_err(|source| DeviceError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    }
}

impl DeviceStore for SledDeviceStore {
    fn insert(&self, record: &DeviceRecord, token_hash: &TokenHash) -> Result<(), DeviceError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

        let json = serde_json::to_vec(record).map_err(|source| DeviceError::Corrupt {
            key: record.id.clone(),
            source,
        })?;
        let result = (&self.devices, &self.tokens).transaction(|(devices, tokens)| {
            devices.insert(record.id.as_bytes(), json.as_slice())?;
            tokens.insert(&token_hash.0[..], record.id.as_bytes())?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            // The closure never aborts, so this arm cannot be taken; it is
            // mapped rather than unwrapped to keep the function total.
            Err(TransactionError::Abort(())) => Err(DeviceError::Storage(
                "device insert transaction aborted".into(),
            )),
        }
    }

    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<DeviceRecord>, DeviceError> {
        let Some(id) = self.tokens.get(hash.0)? else {
            return Ok(None);
        };
        match self.devices.get(&id)? {
            Some(bytes) => Self::decode(&id, &bytes).map(Some),
            // An index entry without its record: treat as unknown rather
            // than fail, so a half-deleted device can never authenticate.
            None => Ok(None),
        }
    }

    fn remove_token(&self, hash: &TokenHash) -> Result<(), DeviceError> {
        self.tokens.remove(hash.0)?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<DeviceRecord>, DeviceError> {
        match self.devices.get(id.as_bytes())? {
            Some(bytes) => Self::decode(id.as_bytes(), &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn note_ack(&self, id: &str, record: &str, heads: &[String]) -> Result<(), DeviceError> {
        let key = format!("{id}/{record}");
        self.acks
            .insert(key.as_bytes(), heads.join(",").as_bytes())?;
        Ok(())
    }

    fn acks(&self, id: &str) -> Result<Vec<(String, Vec<String>)>, DeviceError> {
        let prefix = format!("{id}/");
        let mut out = Vec::new();
        for item in self.acks.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            let record = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let heads = String::from_utf8_lossy(&v)
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect();
            out.push((record, heads));
        }
        Ok(out)
    }

    fn all(&self) -> Result<Vec<DeviceRecord>, DeviceError> {
        self.devices
            .iter()
            .map(|entry| {
                let (key, bytes) = entry?;
                Self::decode(&key, &bytes)
            })
            .collect()
    }

    fn update(&self, id: &str, change: &dyn Fn(&mut DeviceRecord)) -> Result<bool, DeviceError> {
        let Some(bytes) = self.devices.get(id.as_bytes())? else {
            return Ok(false);
        };
        let mut record = Self::decode(id.as_bytes(), &bytes)?;
        change(&mut record);
        let json = serde_json::to_vec(&record).map_err(|source| DeviceError::Corrupt {
            key: id.to_string(),
            source,
        })?;
        self.devices.insert(id.as_bytes(), json)?;
        Ok(true)
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.db.flush()?;
        Ok(())
    }
}

/// A freshly registered device and its token, which exists nowhere else.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// The device's identity.
    pub identity: DeviceIdentity,
    /// The bearer token, to hand to the device once.
    pub token: String,
}

/// The outcome of [`DeviceRegistry::reenroll`].
#[derive(Debug, Clone)]
pub enum Reenrolment {
    /// The same device, with a new token.
    Reissued(NewDevice),
    /// Not re-enrolled, and why; nothing was changed.
    Refused(ReenrolRefusal),
}

/// Why a device could not be enrolled again. Each has a stable code the
/// tablet matches on ([`ReenrolRefusal::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReenrolRefusal {
    /// No device has this id (the store came from another server, say).
    UnknownDevice,
    /// The device was enrolled by another user, or added for none.
    OtherUser,
    /// The device was reported lost or stolen.
    Revoked,
    /// The device was retired and wiped itself.
    Retired,
}

impl ReenrolRefusal {
    /// The code the enrolment reply carries, which is also the rule named.
    pub fn code(self) -> &'static str {
        match self {
            ReenrolRefusal::UnknownDevice => "unknown_device",
            ReenrolRefusal::OtherUser => "device_of_another_user",
            ReenrolRefusal::Revoked => "device_revoked",
            ReenrolRefusal::Retired => "device_retired",
        }
    }

    /// What a person is told.
    pub fn message(self, id: &str) -> String {
        match self {
            ReenrolRefusal::UnknownDevice => format!(
                "this tablet's store belongs to device {id}, which this server does not know; \
                 its records were left as they are: enrol with a new data dir"
            ),
            ReenrolRefusal::OtherUser => format!(
                "this tablet's store belongs to device {id}, which another user enrolled; \
                 its records were left as they are: that user enrols it again, or use a new data dir"
            ),
            ReenrolRefusal::Revoked => format!(
                "device {id} was reported lost or stolen and cannot be enrolled again; \
                 ask an administrator"
            ),
            ReenrolRefusal::Retired => format!(
                "device {id} was retired and cannot be enrolled again: enrol with a new data dir"
            ),
        }
    }
}

/// Registers, authenticates, lists and revokes devices. Cheap to clone.
#[derive(Clone)]
pub struct DeviceRegistry {
    store: Arc<dyn DeviceStore>,
    /// Bumped whenever a device is revoked or set to retire, so live
    /// sessions re-check their device at once rather than at reconnect.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    lifetime: u64,
}

impl DeviceRegistry {
    /// A registry over any store.
    pub fn new(store: Arc<dyn DeviceStore>) -> DeviceRegistry {
        DeviceRegistry {
            store,
            changed: Arc::new(tokio::sync::watch::Sender::new(0)),
            lifetime: TOKEN_LIFETIME_DEFAULT_SECS,
        }
    }

    /// The same registry issuing tokens that live `secs` seconds.
    pub fn with_token_lifetime(mut self, secs: u64) -> DeviceRegistry {
        self.lifetime = secs.max(1);
        self
    }

    /// When a record's current token expires.
    fn expiry(&self, record: &DeviceRecord) -> u64 {
        record
            .expires_at
            .unwrap_or(record.created_at.saturating_add(self.lifetime))
    }

    fn issue_secret(id: &str) -> Result<String, DeviceError> {
        // The device id travels in the token so a tablet knows, offline,
        // which actor ids the server will accept from it; only the secret
        // part authenticates (the whole token is hashed).
        Ok(format!(
            "{TOKEN_PREFIX}{id}_{}",
            hex::encode(random_bytes::<TOKEN_RANDOM_BYTES>()?)
        ))
    }

    /// Issues a new token for the device presenting `token`, valid for a
    /// full lifetime from `now`. The presented token stays valid until the
    /// new one is first used, so a reply lost on the way cannot lock the
    /// tablet out; None if `token` is not a device in good standing.
    pub fn rotate_at(&self, token: &str, now: u64) -> Result<Option<Rotated>, DeviceError> {
        let presented = TokenHash::of(token);
        let Some(mut record) = self.store.find_by_token(&presented)? else {
            return Ok(None);
        };
        if record.revoked || record.retired_at.is_some() || now >= self.expiry(&record) {
            return Ok(None);
        }
        let presented_hex = hex::encode(presented.0);
        if presented_hex == record.token_hash {
            record.previous_token_hash = Some(presented_hex);
        } else if let Some(unused) = decode_hash(&record.token_hash) {
            // The presented token is the previous one: the last rotation's
            // token never arrived. Drop it; the previous stays as it is.
            self.store.remove_token(&unused)?;
        }
        let new = Self::issue_secret(&record.id)?;
        let hash = TokenHash::of(&new);
        record.token_hash = hex::encode(hash.0);
        let expires_at = now.saturating_add(self.lifetime);
        record.expires_at = Some(expires_at);
        self.store.insert(&record, &hash)?;
        self.store.flush()?;
        Ok(Some(Rotated {
            token: new,
            expires_at,
        }))
    }

    /// When the token of the device `id` expires.
    pub fn expires_at(&self, id: &baraza_protocol::DeviceId) -> Result<Option<u64>, DeviceError> {
        Ok(self.store.get(&id.to_hex())?.map(|r| self.expiry(&r)))
    }

    /// Fires when some device's standing changed.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A registry over the device trees of `db`.
    pub fn open_sled(db: &sled::Db) -> Result<DeviceRegistry, DeviceError> {
        Ok(DeviceRegistry::new(Arc::new(SledDeviceStore::open(db)?)))
    }

    /// Registers a device named `name` and returns its token.
    ///
    /// The store is flushed before returning: a token printed to an
    /// administrator must survive a crash right after, or the tablet it is
    /// typed into would be locked out with no explanation.
    pub fn add(&self, name: &str) -> Result<NewDevice, DeviceError> {
        self.add_for_user(name, None)
    }

    /// Registers a device enrolled by `user` and returns its token.
    pub fn add_for_user(&self, name: &str, user: Option<&str>) -> Result<NewDevice, DeviceError> {
        let name = validate_name(name)?;
        let id = hex::encode(random_bytes::<ID_RANDOM_BYTES>()?);
        let token = Self::issue_secret(&id)?;
        let hash = TokenHash::of(&token);
        let record = DeviceRecord {
            id,
            name,
            token_hash: hex::encode(hash.0),
            created_at: unix_now(),
            revoked: false,
            retiring: false,
            retired_at: None,
            expires_at: Some(unix_now().saturating_add(self.lifetime)),
            previous_token_hash: None,
            scope: None,
            user: user.map(str::to_string),
        };
        self.store.insert(&record, &hash)?;
        self.store.flush()?;
        Ok(NewDevice {
            identity: record.identity()?,
            token,
        })
    }

    /// Issues a new token for the existing device `id` on behalf of
    /// `user`, whose password was just checked: a tablet enrolling again on
    /// its own store (after its token expired, say) keeps its device, so
    /// the actor ids its unsynced changes were authored under stay its
    /// own. Every earlier token of the device ends. Refused, changing
    /// nothing, for a device another user (or no user) enrolled, and for a
    /// revoked or retired one: re-enrolment must not revive those.
    pub fn reenroll(&self, id: &str, user: &str, now: u64) -> Result<Reenrolment, DeviceError> {
        let Some(mut record) = self.store.get(id)? else {
            return Ok(Reenrolment::Refused(ReenrolRefusal::UnknownDevice));
        };
        if record.revoked {
            return Ok(Reenrolment::Refused(ReenrolRefusal::Revoked));
        }
        if record.retired_at.is_some() {
            return Ok(Reenrolment::Refused(ReenrolRefusal::Retired));
        }
        if record.user.as_deref() != Some(user) {
            return Ok(Reenrolment::Refused(ReenrolRefusal::OtherUser));
        }
        for old in [
            Some(record.token_hash.clone()),
            record.previous_token_hash.take(),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(hash) = decode_hash(&old) {
                self.store.remove_token(&hash)?;
            }
        }
        let token = Self::issue_secret(&record.id)?;
        let hash = TokenHash::of(&token);
        record.token_hash = hex::encode(hash.0);
        record.expires_at = Some(now.saturating_add(self.lifetime));
        self.store.insert(&record, &hash)?;
        self.store.flush()?;
        // Live sessions on an old token re-check their standing.
        self.changed.send_modify(|n| *n += 1);
        Ok(Reenrolment::Reissued(NewDevice {
            identity: record.identity()?,
            token,
        }))
    }

    /// What a token is: a device in good standing, or why not.
    pub fn authenticate(&self, token: &str) -> Result<Auth, DeviceError> {
        self.authenticate_at(token, unix_now())
    }

    /// [`DeviceRegistry::authenticate`] at time `now` (unix seconds). The
    /// first use of a rotated token retires the one before it.
    pub fn authenticate_at(&self, token: &str, now: u64) -> Result<Auth, DeviceError> {
        let hash = TokenHash::of(token);
        let Some(mut record) = self.store.find_by_token(&hash)? else {
            return Ok(Auth::Unknown);
        };
        if record.revoked {
            return Ok(Auth::Revoked);
        }
        if record.retired_at.is_some() {
            return Ok(Auth::Retired);
        }
        if now >= self.expiry(&record) {
            return Ok(Auth::Expired);
        }
        if hex::encode(hash.0) == record.token_hash {
            if let Some(previous) = record.previous_token_hash.take() {
                if let Some(old) = decode_hash(&previous) {
                    self.store.remove_token(&old)?;
                }
                self.store.insert(&record, &hash)?;
                self.store.flush()?;
            }
        }
        Ok(Auth::Device(record.identity()?))
    }

    /// The standing of a device by id, for sessions re-checking it.
    pub fn standing(&self, id: &baraza_protocol::DeviceId) -> Result<Auth, DeviceError> {
        Ok(match self.store.get(&id.to_hex())? {
            None => Auth::Unknown,
            Some(r) if r.revoked => Auth::Revoked,
            Some(r) if r.retired_at.is_some() => Auth::Retired,
            Some(r) => Auth::Device(r.identity()?),
        })
    }

    /// Notes the heads of a record last acknowledged to a device.
    pub fn note_ack(
        &self,
        id: &baraza_protocol::DeviceId,
        record: &str,
        heads: &[String],
    ) -> Result<(), DeviceError> {
        self.store.note_ack(&id.to_hex(), record, heads)
    }

    /// What the server last acknowledged to a device, per record: on a
    /// revoked device, anything beyond these heads never reached us.
    pub fn acknowledged(&self, id: &str) -> Result<Vec<(String, Vec<String>)>, DeviceError> {
        self.store.acks(id)
    }

    /// The registered names of those of `ids` the registry knows (revoked
    /// and retired ones too: their changes stay in records), for tablets
    /// that show who made a change.
    pub fn names(
        &self,
        ids: &[baraza_protocol::DeviceId],
    ) -> Result<Vec<baraza_protocol::DeviceName>, DeviceError> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(record) = self.store.get(&id.to_hex())? {
                out.push(baraza_protocol::DeviceName {
                    device: *id,
                    name: record.name,
                });
            }
        }
        Ok(out)
    }

    /// Every registered device, revoked ones included.
    pub fn list(&self) -> Result<Vec<DeviceRecord>, DeviceError> {
        self.store.all()
    }

    /// Ends a lost or stolen device: its live sessions are cut with
    /// `revoked`, new ones refused, and the device wipes without uploading.
    pub fn revoke(&self, id: &str) -> Result<(), DeviceError> {
        self.change(id, &|r| r.revoked = true)
    }

    /// Starts retiring a device handed back: at its next connection it
    /// uploads what the server lacks, then is told to wipe.
    pub fn retire(&self, id: &str) -> Result<(), DeviceError> {
        self.change(id, &|r| r.retiring = true)
    }

    /// Notes what the device's user could read when it caught up.
    pub fn set_scope(
        &self,
        id: &baraza_protocol::DeviceId,
        scope: &str,
    ) -> Result<(), DeviceError> {
        let scope = scope.to_string();
        if !self
            .store
            .update(&id.to_hex(), &|r| r.scope = Some(scope.clone()))?
        {
            return Err(DeviceError::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// A retiring device reported its store wiped; its token ends here.
    pub fn mark_retired(
        &self,
        id: &baraza_protocol::DeviceId,
        now: u64,
    ) -> Result<(), DeviceError> {
        self.change(&id.to_hex(), &|r| r.retired_at = Some(now))
    }

    fn change(&self, id: &str, change: &dyn Fn(&mut DeviceRecord)) -> Result<(), DeviceError> {
        if !self.store.update(id, change)? {
            return Err(DeviceError::NotFound(id.to_string()));
        }
        self.store.flush()?;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Makes every earlier change durable.
    pub fn flush(&self) -> Result<(), DeviceError> {
        self.store.flush()
    }
}

fn validate_name(name: &str) -> Result<String, DeviceError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(DeviceError::InvalidName("it is empty"));
    }
    if name.chars().count() > NAME_CHARS_MAX {
        return Err(DeviceError::InvalidName("it is longer than 128 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(DeviceError::InvalidName("it contains control characters"));
    }
    Ok(name.to_string())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], DeviceError> {
    let mut bytes = [0u8; N];
    // OsRng directly: it reports failure instead of panicking as the
    // thread-local generator would.
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(DeviceError::Random)?;
    Ok(bytes)
}

fn decode_hash(hex_text: &str) -> Option<TokenHash> {
    let bytes: [u8; 32] = hex::decode(hex_text).ok()?.try_into().ok()?;
    Some(TokenHash(bytes))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_rotated_token_replaces_the_old_one_once_used_and_tokens_expire() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let registry = DeviceRegistry::open_sled(&db)
            .unwrap()
            .with_token_lifetime(100);
        let old = registry.add_for_user("tablet", Some("ofc")).unwrap().token;
        let now = unix_now();
        let first = registry.rotate_at(&old, now).unwrap().unwrap();
        assert_eq!(first.expires_at, now + 100);
        // The reply is lost: the tablet still holds the old token, which
        // still works, and rotates again; the unused one is dropped.
        assert!(registry
            .authenticate_at(&old, now)
            .unwrap()
            .device()
            .is_some());
        let second = registry.rotate_at(&old, now).unwrap().unwrap();
        assert!(matches!(
            registry.authenticate_at(&first.token, now).unwrap(),
            Auth::Unknown
        ));
        // The new token's first use ends the old one.
        assert!(registry
            .authenticate_at(&second.token, now)
            .unwrap()
            .device()
            .is_some());
        assert!(matches!(
            registry.authenticate_at(&old, now).unwrap(),
            Auth::Unknown
        ));
        // A token not rotated within its lifetime expires, and cannot be
        // rotated any more.
        assert!(matches!(
            registry.authenticate_at(&second.token, now + 100).unwrap(),
            Auth::Expired
        ));
        assert!(registry
            .rotate_at(&second.token, now + 100)
            .unwrap()
            .is_none());
    }
    use super::*;

    fn registry() -> (tempfile::TempDir, sled::Db, DeviceRegistry) {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(tmp.path()).open().unwrap();
        let registry = DeviceRegistry::open_sled(&db).unwrap();
        (tmp, db, registry)
    }

    #[test]
    fn a_registered_tablet_authenticates_with_its_token_and_nothing_else() {
        let (_tmp, _db, registry) = registry();
        let tablet = registry.add("  Kibera station tablet 3 ").unwrap();
        assert!(tablet.token.starts_with(TOKEN_PREFIX));
        assert_eq!(tablet.token.len(), TOKEN_PREFIX.len() + 32 + 1 + 64);
        assert!(tablet.token[TOKEN_PREFIX.len()..].starts_with(&tablet.identity.id.to_hex()));
        assert_eq!(tablet.identity.name, "Kibera station tablet 3");

        let who = registry
            .authenticate(&tablet.token)
            .unwrap()
            .device()
            .unwrap();
        assert_eq!(who.id, tablet.identity.id);
        assert_eq!(
            registry
                .authenticate("bz_wrong")
                .unwrap()
                .device()
                .map(|d| d.id),
            None
        );
        assert_eq!(
            registry.authenticate("").unwrap().device().map(|d| d.id),
            None
        );
    }

    #[test]
    fn only_the_token_hash_is_stored() {
        let (_tmp, db, registry) = registry();
        let tablet = registry.add("t").unwrap();
        let secret = &tablet.token[TOKEN_PREFIX.len()..];
        for name in db.tree_names() {
            for entry in db.open_tree(name).unwrap().iter() {
                let (k, v) = entry.unwrap();
                for bytes in [&k[..], &v[..]] {
                    let text = String::from_utf8_lossy(bytes);
                    assert!(!text.contains(secret), "token stored in clear");
                }
            }
        }
        let listed = registry.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].token_hash,
            hex::encode(TokenHash::of(&tablet.token).0)
        );
    }

    #[test]
    fn a_revoked_device_no_longer_authenticates() {
        let (_tmp, _db, registry) = registry();
        let lost = registry.add("lost tablet").unwrap();
        let kept = registry.add("kept tablet").unwrap();
        registry.revoke(&lost.identity.id.to_hex()).unwrap();
        assert!(matches!(
            registry.authenticate(&lost.token).unwrap(),
            Auth::Revoked
        ));
        assert!(registry
            .authenticate(&kept.token)
            .unwrap()
            .device()
            .is_some());
        assert!(matches!(
            registry.revoke("nope"),
            Err(DeviceError::NotFound(_))
        ));
        let revoked: Vec<bool> = registry.list().unwrap().iter().map(|d| d.revoked).collect();
        assert_eq!(revoked.iter().filter(|r| **r).count(), 1);
    }

    #[test]
    fn devices_survive_reopening_the_database() {
        let tmp = tempfile::tempdir().unwrap();
        let token = {
            let db = sled::Config::new().path(tmp.path()).open().unwrap();
            DeviceRegistry::open_sled(&db)
                .unwrap()
                .add("t")
                .unwrap()
                .token
        };
        let db = sled::Config::new().path(tmp.path()).open().unwrap();
        let registry = DeviceRegistry::open_sled(&db).unwrap();
        assert!(registry.authenticate(&token).unwrap().device().is_some());
    }

    #[test]
    fn a_device_record_whose_id_does_not_parse_gets_no_identity() {
        // Such an id once gave an empty actor prefix, which every actor
        // matches: a record with it must authenticate as nothing at all.
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(tmp.path()).open().unwrap();
        let store = Arc::new(SledDeviceStore::open(&db).unwrap());
        let registry = DeviceRegistry::new(store.clone());
        let token = format!("{TOKEN_PREFIX}zz_secret");
        let hash = TokenHash::of(&token);
        let record = DeviceRecord {
            id: "zz-not-hex".into(),
            name: "odd".into(),
            token_hash: hex::encode(hash.0),
            created_at: unix_now(),
            revoked: false,
            retiring: false,
            retired_at: None,
            expires_at: None,
            previous_token_hash: None,
            scope: None,
            user: Some("ofc".into()),
        };
        store.insert(&record, &hash).unwrap();
        match registry.authenticate(&token) {
            Err(DeviceError::BadId { key }) => assert_eq!(key, "zz-not-hex"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn enrolling_again_keeps_the_device_for_its_own_user_only() {
        let (_tmp, _db, registry) = registry();
        let first = registry.add_for_user("tablet", Some("ofc")).unwrap();
        let id = first.identity.id.to_hex();
        let now = unix_now();
        let Reenrolment::Reissued(again) = registry.reenroll(&id, "ofc", now).unwrap() else {
            panic!("the owner re-enrols their device");
        };
        assert_eq!(again.identity.id.to_hex(), id);
        assert!(matches!(
            registry.authenticate(&first.token).unwrap(),
            Auth::Unknown
        ));
        assert_eq!(
            registry
                .authenticate(&again.token)
                .unwrap()
                .device()
                .map(|d| d.id.to_hex()),
            Some(id.clone())
        );
        let refused = |who: &str| match registry.reenroll(&id, who, now).unwrap() {
            Reenrolment::Refused(why) => Some(why),
            Reenrolment::Reissued(_) => None,
        };
        assert_eq!(refused("someone.else"), Some(ReenrolRefusal::OtherUser));
        assert!(matches!(
            registry.reenroll(&"0".repeat(32), "ofc", now).unwrap(),
            Reenrolment::Refused(ReenrolRefusal::UnknownDevice)
        ));
        registry.revoke(&id).unwrap();
        assert_eq!(refused("ofc"), Some(ReenrolRefusal::Revoked));
        // Still revoked, and the token it had is still refused as such.
        assert!(matches!(
            registry.authenticate(&again.token).unwrap(),
            Auth::Revoked
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        let (_tmp, _db, registry) = registry();
        for name in ["", "   ", "a\nb", &"x".repeat(NAME_CHARS_MAX + 1)] {
            assert!(matches!(
                registry.add(name),
                Err(DeviceError::InvalidName(_))
            ));
        }
        assert!(registry.add(&"é".repeat(NAME_CHARS_MAX)).is_ok());
    }
}
