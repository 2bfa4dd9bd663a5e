//! Who a request or connection comes from: the device it authenticated as
//! and the user that device acts for.

use baraza_protocol::DeviceId;
use baraza_records::Principal;

/// Who is on the other end of a connection or request: the device and the
/// user it acts for, resolved when it authenticated.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The device.
    pub device: DeviceIdentity,
    /// The user, role and areas.
    pub principal: Principal,
}

impl Caller {
    /// A fingerprint of what the user may read: role and areas.
    pub fn scope(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut areas = self.principal.areas.clone();
        areas.sort();
        let text = format!("{}|{}", self.principal.role.name(), areas.join("|"));
        hex::encode(&Sha256::digest(text.as_bytes())[..12])
    }
}

/// The device a connection authenticated as.
#[derive(Clone, Debug)]
pub struct DeviceIdentity {
    /// Stable device id. Bytes, not text: a device whose stored id does not
    /// parse never gets an identity, so nothing can check an actor against
    /// an id that means nothing.
    pub id: DeviceId,
    /// Human-readable name given at `device add`.
    pub name: String,
    /// The user who enrolled the device, if a user did.
    pub user: Option<String>,
    /// Set to retire: upload, then wipe.
    pub retiring: bool,
    /// The read scope it last caught up under (see `DeviceRecord::scope`).
    pub scope: Option<String>,
}

/// What the review desk's changes name as their device.
pub const DESK_DEVICE_NAME: &str = "review desk";

/// The device id the review desk authors a supervisor's changes
/// under: derived from the user, so every server node agrees on it and a
/// record's history can tell the desk's changes from a tablet's. Device
/// ids in the registry are random, so none can be mistaken for one.
pub fn desk_device_id(user: &str) -> DeviceId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("baraza review desk:{user}").as_bytes());
    let mut id = [0u8; DeviceId::LEN];
    id.copy_from_slice(&digest[..DeviceId::LEN]);
    DeviceId::from_bytes(id)
}
