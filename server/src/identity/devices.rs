//! The devices allowed to sync, and their bearer tokens.
//!
//! A device is registered by an administrator (`baraza-server device add`),
//! which prints a token once; the tablet presents it as
//! `Authorization: Bearer <token>` when opening `/v1/sync`. Only the
//! SHA-256 of a token is stored. [`DeviceRegistry`] holds the rules (token
//! format, names, revocation); [`DeviceStore`] (in `storage::devices`, with
//! the records it keeps) is the storage underneath.

use crate::clock::unix_now;
use std::sync::Arc;

use rand::TryRngCore;

use crate::identity::caller::DeviceIdentity;
pub use crate::storage::devices::{DeviceRecord, DeviceStore, TokenHash};
use crate::storage::store::StoreError;

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

impl From<StoreError> for DeviceError {
    fn from(error: StoreError) -> Self {
        DeviceError::Storage(Box::new(error))
    }
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

    /// Makes live sessions read their device's standing again: another
    /// node (or an admin command elsewhere) changed a device or a user.
    pub fn wake(&self) {
        self.changed.send_modify(|n| *n += 1);
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

    /// Notes the heads of records last acknowledged to a device (record,
    /// heads), in one write.
    pub fn note_acks(
        &self,
        id: &baraza_protocol::DeviceId,
        acks: &[(String, Vec<String>)],
    ) -> Result<(), DeviceError> {
        Ok(self.store.note_acks(&id.to_hex(), acks)?)
    }

    /// What the server last acknowledged to a device, per record: on a
    /// revoked device, anything beyond these heads never reached us.
    pub fn acknowledged(&self, id: &str) -> Result<Vec<(String, Vec<String>)>, DeviceError> {
        Ok(self.store.acks(id)?)
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
        Ok(self.store.all()?)
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
        Ok(self.store.flush()?)
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
