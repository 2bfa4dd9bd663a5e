//! The base layer's front door: [`BaseClient`], a tablet's records on the
//! device. Opening the sealed store, every edit and read, `status` and the
//! wipe work with no network at all; the networked [`Client`](crate::Client)
//! is this plus a server to sync with.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use automerge::{ActorId, Automerge};
use baraza_protocol::DocId;
use serde::Serialize;
use tokio::sync::Notify;

use baraza_records::ops::Stamp;
use baraza_records::{ops, FieldValue, Header, Kind};

use super::record::{self, Record, Summary};
use super::store::{LocalStore, Rejection, DEFAULT_OPEN_DEADLINE};
use crate::error::ClientError;

/// What `status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Records held on this device.
    pub records: u64,
    /// Records with changes the server has not acknowledged.
    pub unacknowledged: u64,
    /// Records whose changes the server refused, with the rule and reason.
    /// Their changes stay on the device and show in `get`.
    pub refused: Vec<RefusedRecord>,
    /// When the last sync settled (seconds since the Unix epoch).
    pub last_sync: Option<u64>,
    /// The feed position this device has received up to.
    pub cursor: u64,
    /// The configured server.
    pub server: Option<String>,
}

/// A record the server refused, as `status` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusedRecord {
    /// The record id.
    pub id: String,
    /// Why, with the rule broken if a rule refused it.
    pub rejection: Rejection,
}

/// What a wipe removed, for the app to show and report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WipeReport {
    /// `retired` (handed back: everything the server lacked was uploaded
    /// first) or `revoked` (lost or stolen: nothing more was uploaded).
    pub reason: String,
    /// Every record id that was on the device.
    pub records: Vec<String>,
    /// Of those, the ones with changes the server never acknowledged:
    /// after a retirement, only records the server refused.
    pub unacknowledged: Vec<String>,
}

/// Wipes the store and says what went. The app should also delete the
/// store's key from the platform keystore. Only the server decides that a
/// device is wiped; the sync layer calls this when it says so.
pub(crate) fn wipe(store: &LocalStore, reason: &str) -> Result<WipeReport, ClientError> {
    let (records, unacknowledged) = store.wipe()?;
    let report = WipeReport {
        reason: reason.to_string(),
        records: records.iter().map(|id| id.to_string()).collect(),
        unacknowledged: unacknowledged.iter().map(|id| id.to_string()).collect(),
    };
    tracing::warn!(
        reason,
        records = report.records.len(),
        unacknowledged = report.unacknowledged.len(),
        "local store wiped"
    );
    Ok(report)
}

/// A tablet's records on the device, with no network: the base the
/// networked [`Client`](crate::Client) is built on.
#[derive(Clone)]
pub struct BaseClient {
    pub(crate) store: LocalStore,
    /// Woken by every local edit, so a sync in progress sends it.
    pub(crate) local_edits: Arc<Notify>,
    /// Woken by every attachment added, so the upload queue takes it.
    pub(crate) attachments_added: Arc<Notify>,
}

fn parse_id(id: &str) -> Result<DocId, ClientError> {
    id.parse().map_err(|_| ClientError::BadId(id.to_string()))
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl BaseClient {
    /// Opens (or creates) the device's store in `data_dir`. Every record,
    /// setting and sync state is sealed on disk under `key`: 32 bytes the
    /// app keeps in the platform keystore (Android Keystore, iOS Keychain),
    /// never in the data dir. The same key must be given every time: a store
    /// sealed with another is refused with [`ClientError::WrongKey`] and left
    /// as it was; a key of another length with [`ClientError::KeyLength`].
    ///
    /// A damaged store is refused with [`ClientError::DamagedStore`] (never
    /// mistaken for a wrong key), and so is one that has not opened after
    /// [`DEFAULT_OPEN_DEADLINE`](crate::DEFAULT_OPEN_DEADLINE); see
    /// [`open_within`](Self::open_within).
    pub fn open(data_dir: &Path, key: &[u8]) -> Result<BaseClient, ClientError> {
        Self::open_within(data_dir, key, DEFAULT_OPEN_DEADLINE)
    }

    /// [`open`](Self::open), giving up after `deadline` instead of the
    /// default. The store is opened, and read through once to check it, on
    /// a thread of its own: a damaged store can leave sled stuck, and that
    /// thread cannot be stopped, so when the deadline passes it is left
    /// running and [`ClientError::DamagedStore`] returned. Opening the same
    /// store again in this process then fails at once (until that thread
    /// ends, if it ever does): restart the app's process before retrying.
    pub fn open_within(
        data_dir: &Path,
        key: &[u8],
        deadline: Duration,
    ) -> Result<BaseClient, ClientError> {
        if key.len() != super::seal::KEY_LEN {
            return Err(ClientError::KeyLength(key.len()));
        }
        std::fs::create_dir_all(data_dir).map_err(|e| ClientError::Store(sled::Error::Io(e)))?;
        let store = LocalStore::open_within(data_dir, key, deadline)?;
        Ok(BaseClient {
            store,
            local_edits: Arc::new(Notify::new()),
            attachments_added: Arc::new(Notify::new()),
        })
    }

    /// Sets who and where new records are filed under.
    pub fn set_identity(&self, user: &str, area: &str) -> Result<(), ClientError> {
        self.store.set_setting("user", user)?;
        self.store.set_setting("area", area)
    }

    fn actor(&self) -> Result<ActorId, ClientError> {
        let hex = self
            .store
            .setting("actor")?
            .ok_or(ClientError::NotConfigured)?;
        Ok(ActorId::from(decode_hex(&hex).ok_or(
            ClientError::Corrupt {
                what: "actor id",
                reason: "not hex".into(),
            },
        )?))
    }

    pub(super) fn edit<F>(&self, id: DocId, create: bool, f: F) -> Result<(), ClientError>
    where
        F: FnOnce(&mut Automerge, Stamp<'_>) -> Result<(), ClientError>,
    {
        let actor = self.actor()?;
        let user = self.store.setting("user")?.unwrap_or_default();
        let at = Stamp {
            now_ms: now_ms(),
            by: &user,
        };
        let _guard = self.store.write_lock();
        let mut doc = match self.store.load(id)? {
            Some(doc) => doc,
            None if create => Automerge::new(),
            None => return Err(ClientError::NotFound(id.to_string())),
        };
        doc.set_actor(actor);
        f(&mut doc, at)?;
        self.store.save_local_edit(id, &doc)?;
        self.local_edits.notify_one();
        Ok(())
    }

    /// The device this store belongs to (hex), once enrolled or configured.
    pub fn device_id(&self) -> Result<Option<String>, ClientError> {
        self.store.setting("device_id")
    }

    /// The user new records are filed under, once enrolled.
    pub fn user(&self) -> Result<Option<String>, ClientError> {
        self.store.setting("user")
    }

    /// The area new records are filed under unless told otherwise.
    pub fn area(&self) -> Result<String, ClientError> {
        Ok(self
            .store
            .setting("area")?
            .unwrap_or_else(|| "unassigned".to_string()))
    }

    /// Creates a meeting record in the configured area with the given
    /// fields; returns its id.
    pub fn create(&self, fields: Vec<(String, String)>) -> Result<String, ClientError> {
        self.create_record(Kind::Meeting.name(), &self.area()?, fields)
    }

    /// Creates a record of `kind` in `area`, with the given fields (typed by
    /// the kind's schema; a field it does not have is refused and nothing
    /// is created).
    pub fn create_record(
        &self,
        kind: &str,
        area: &str,
        fields: Vec<(String, String)>,
    ) -> Result<String, ClientError> {
        let kind = Kind::parse(kind).ok_or_else(|| ClientError::BadEdit {
            field: "kind".into(),
            message: format!(
                "unknown record kind {kind:?}; kinds: {}",
                Kind::ALL.map(|k| k.name()).join(", ")
            ),
        })?;
        let device = self
            .store
            .setting("device_id")?
            .ok_or(ClientError::NotConfigured)?;
        let id = DocId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
        let now = now_ms();
        let header = Header {
            id: id.to_string(),
            kind,
            area: area.to_string(),
            created_by_user: self
                .store
                .setting("user")?
                .unwrap_or_else(|| device.clone()),
            created_by_device: device,
            created_at: now,
            schema: baraza_records::SCHEMA_VERSION,
        };
        let typed = fields
            .iter()
            .map(|(k, v)| Ok((k.as_str(), record::typed(kind, k, v)?)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        self.edit(id, true, |doc, at| {
            Ok(ops::create_with(doc, &header, &typed, at)?)
        })?;
        Ok(id.to_string())
    }

    /// Sets a field, typed by the record's schema. A field the schema does
    /// not have is refused ([`baraza_records::EditError::UnknownField`],
    /// naming the fields there are), as the server would refuse it.
    pub fn set(&self, id: &str, field: &str, value: &str) -> Result<(), ClientError> {
        self.edit(parse_id(id)?, false, |doc, at| {
            record::set(doc, field, value, at)
        })
    }

    /// Splices text into a text field (created if absent).
    pub fn splice(
        &self,
        id: &str,
        field: &str,
        pos: u64,
        delete: i64,
        text: &str,
    ) -> Result<(), ClientError> {
        self.edit(parse_id(id)?, false, |doc, at| {
            record::splice(doc, field, pos as usize, delete as isize, text, at)
        })
    }

    /// One record.
    pub fn get(&self, id: &str) -> Result<Record, ClientError> {
        let doc_id = parse_id(id)?;
        let doc = self
            .store
            .load(doc_id)?
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        Ok(Record {
            id: doc_id.to_string(),
            header: Header::read(&doc).ok(),
            fields: record::fields(&doc),
            unacknowledged: self.store.is_unacknowledged(doc_id)?,
            rejected: self.store.rejection(doc_id)?,
            review_state: baraza_records::review_state(&doc),
            review_comments: baraza_records::review_comments(&doc),
        })
    }

    /// Every record id held, in id order.
    pub fn list(&self) -> Result<Vec<String>, ClientError> {
        Ok(self
            .store
            .ids()?
            .into_iter()
            .map(|id| id.to_string())
            .collect())
    }

    /// Every record held, in id order, with what a listing shows of it.
    pub fn records(&self) -> Result<Vec<Summary>, ClientError> {
        let mut out = Vec::new();
        for id in self.store.ids()? {
            let Some(doc) = self.store.load(id)? else {
                continue;
            };
            let header = Header::read(&doc).ok();
            let title = header
                .as_ref()
                .and_then(|h| {
                    let name = record::title_field(h.kind);
                    record::fields(&doc).into_iter().find(|f| f.name == name)
                })
                .map(|f| f.value)
                .unwrap_or_default();
            out.push(Summary {
                id: id.to_string(),
                kind: header
                    .as_ref()
                    .map(|h| h.kind.name().to_string())
                    .unwrap_or_default(),
                area: header.as_ref().map(|h| h.area.clone()).unwrap_or_default(),
                title,
                review_state: baraza_records::review_state(&doc),
                synced: !self.store.is_unacknowledged(id)?,
                refused: self.store.rejection(id)?.is_some(),
                created_at_ms: header.as_ref().map(|h| h.created_at).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// The name of the device an actor id (hex) belongs to: as the server
    /// named it to this tablet, or this device's own; None if unknown.
    pub fn device_name(&self, actor: &str) -> Result<Option<String>, ClientError> {
        let Some(device) = actor.get(..2 * baraza_protocol::DeviceId::LEN) else {
            return Ok(None);
        };
        self.store.device_name(device)
    }

    /// Local state of sync.
    pub fn status(&self) -> Result<Status, ClientError> {
        let (_, cursor) = self.store.cursor_state()?;
        Ok(Status {
            records: self.store.count()? as u64,
            unacknowledged: self.store.unacknowledged_count()? as u64,
            refused: self
                .store
                .refusals()?
                .into_iter()
                .map(|(id, rejection)| RefusedRecord {
                    id: id.to_string(),
                    rejection,
                })
                .collect(),
            last_sync: self.store.last_sync()?,
            cursor,
            server: self.store.setting("server")?,
        })
    }

    fn kind_of(&self, id: DocId) -> Result<Kind, ClientError> {
        let doc = self
            .store
            .load(id)?
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        Ok(Header::read(&doc)
            .map_err(baraza_records::EditError::from)?
            .kind)
    }

    /// Parses `field=value` texts into the typed values of a list's items.
    fn item_values(
        &self,
        id: DocId,
        list: &str,
        values: &[(String, String)],
    ) -> Result<Vec<(String, FieldValue)>, ClientError> {
        let kind = self.kind_of(id)?;
        let spec = kind.field(list).ok_or_else(|| {
            let lists: Vec<&str> = kind
                .fields()
                .iter()
                .filter(|f| {
                    matches!(
                        f.ty,
                        baraza_records::FieldType::List(_) | baraza_records::FieldType::Map(_)
                    )
                })
                .map(|f| f.name)
                .collect();
            ClientError::BadEdit {
                field: list.to_string(),
                message: format!(
                    "a {} record has no list or map {list:?}; its lists and maps are {}",
                    kind.name(),
                    lists.join(", ")
                ),
            }
        })?;
        values
            .iter()
            .map(|(name, text)| {
                let part = spec
                    .parts()
                    .iter()
                    .find(|p| p.name == name)
                    .ok_or_else(|| ClientError::BadEdit {
                        field: format!("{list}.{name}"),
                        message: format!(
                            "items of {list} have no field {name:?}; their fields are {}",
                            baraza_records::schema::names(spec.parts()).join(", ")
                        ),
                    })?;
                let value =
                    FieldValue::parse(part.ty, text).map_err(|reason| ClientError::BadEdit {
                        field: format!("{list}.{name}"),
                        message: format!("{list}.{name}: {reason}"),
                    })?;
                Ok((name.clone(), value))
            })
            .collect()
    }

    /// Adds an item to a list field (an attendee, a concern, an action item,
    /// an observation, a follow-up); returns its position. Lists merge item
    /// by item across devices.
    pub fn add_item(
        &self,
        id: &str,
        list: &str,
        values: Vec<(String, String)>,
    ) -> Result<u64, ClientError> {
        let doc_id = parse_id(id)?;
        let typed = self.item_values(doc_id, list, &values)?;
        let mut index = 0;
        self.edit(doc_id, false, |doc, at| {
            let pairs: Vec<(&str, FieldValue)> =
                typed.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            index = ops::append(doc, list, &pairs, at)?;
            Ok(())
        })?;
        Ok(index as u64)
    }

    /// Sets keys of a map field (a meeting's headcount: `women`, `men`,
    /// ...), typed by the schema.
    pub fn set_map(
        &self,
        id: &str,
        field: &str,
        values: Vec<(String, String)>,
    ) -> Result<(), ClientError> {
        let doc_id = parse_id(id)?;
        // A map's keys are typed like a list item's: the same lookup.
        let typed = self.item_values(doc_id, field, &values)?;
        self.edit(doc_id, false, |doc, at| {
            let pairs: Vec<(&str, FieldValue)> =
                typed.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            Ok(ops::set_map(doc, field, &pairs, at)?)
        })
    }

    /// Sets one field of a list item (e.g. an action item's status).
    pub fn set_item(
        &self,
        id: &str,
        list: &str,
        index: u64,
        field: &str,
        value: &str,
    ) -> Result<(), ClientError> {
        let doc_id = parse_id(id)?;
        let mut typed =
            self.item_values(doc_id, list, &[(field.to_string(), value.to_string())])?;
        let (_, value) = typed.remove(0);
        self.edit(doc_id, false, |doc, at| {
            Ok(ops::set_item(doc, list, index as usize, field, value, at)?)
        })
    }

    /// Removes a list item.
    pub fn remove_item(&self, id: &str, list: &str, index: u64) -> Result<(), ClientError> {
        self.edit(parse_id(id)?, false, |doc, at| {
            Ok(ops::remove(doc, list, index as usize, at)?)
        })
    }

    /// Checks a GPS point before it is attached: latitude -90..=90 and
    /// longitude -180..=180 in decimal degrees, accuracy at least 1 m.
    /// [`set_gps`](Self::set_gps) checks the same; checking first lets an
    /// app refuse a bad point before it makes the observation.
    pub fn check_gps(lat: &str, lon: &str, accuracy_m: i64) -> Result<(), ClientError> {
        Ok(ops::check_item_map(
            Kind::PatrolNote,
            "observations",
            "gps",
            &gps_values(lat, lon, accuracy_m),
        )?)
    }

    /// Attaches a GPS point to an observation of a patrol note; a point out
    /// of range is refused (see [`check_gps`](Self::check_gps)).
    pub fn set_gps(
        &self,
        id: &str,
        observation: u64,
        lat: &str,
        lon: &str,
        accuracy_m: i64,
    ) -> Result<(), ClientError> {
        self.edit(parse_id(id)?, false, |doc, at| {
            Ok(ops::set_item_map(
                doc,
                "observations",
                observation as usize,
                "gps",
                &gps_values(lat, lon, accuracy_m),
                at,
            )?)
        })
    }

    /// Adds a follow-up to a feedback record and moves its status (one change).
    pub fn follow_up(&self, id: &str, status: &str, note: &str) -> Result<(), ClientError> {
        self.edit(parse_id(id)?, false, |doc, at| {
            Ok(ops::follow_up(doc, status, note, at)?)
        })
    }

    /// Submits a record for review.
    pub fn submit(&self, id: &str) -> Result<(), ClientError> {
        self.edit(parse_id(id)?, false, |doc, at| {
            Ok(ops::review(
                doc,
                baraza_records::ReviewState::Submitted,
                None,
                at,
            )?)
        })
    }

    /// Records a review decision (approved or returned, with an optional
    /// comment; another state is refused as invalid input). Only a supervisor of the record's area may: the
    /// server rejects anyone else's decision, and this device then keeps it
    /// marked rejected.
    pub fn review(
        &self,
        id: &str,
        decision: baraza_records::ReviewState,
        comment: Option<String>,
    ) -> Result<(), ClientError> {
        let user = self.store.setting("user")?.unwrap_or_default();
        self.edit(parse_id(id)?, false, |doc, at| {
            Ok(ops::review(
                doc,
                decision,
                comment.as_deref().map(|c| (user.as_str(), c)),
                at,
            )?)
        })
    }

    /// Fields that devices set differently while offline, each value with
    /// the device (actor) that set it and when. Setting the field again
    /// resolves it.
    pub fn conflicts(&self, id: &str) -> Result<Vec<baraza_records::Conflict>, ClientError> {
        let doc = self
            .store
            .load(parse_id(id)?)?
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        Ok(baraza_records::conflicts(&doc))
    }

    /// Every change to a record: who (actor, whose first 16 bytes are the
    /// device id), when, and which fields it touched.
    pub fn history(&self, id: &str) -> Result<Vec<baraza_records::HistoryEntry>, ClientError> {
        let doc = self
            .store
            .load(parse_id(id)?)?
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        Ok(baraza_records::history(&doc))
    }

    /// The heads of a record, hex-encoded, for comparing replicas.
    pub fn heads(&self, id: &str) -> Result<Vec<String>, ClientError> {
        let doc = self
            .store
            .load(parse_id(id)?)?
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        Ok(doc.get_heads().iter().map(|h| h.to_string()).collect())
    }
}

/// A GPS point as the schema's `gps` map holds it: degrees as typed.
fn gps_values(lat: &str, lon: &str, accuracy_m: i64) -> [(&'static str, FieldValue); 3] {
    [
        ("lat", FieldValue::Str(lat.trim().into())),
        ("lon", FieldValue::Str(lon.trim().into())),
        ("accuracy_m", FieldValue::Int(accuracy_m)),
    ]
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
