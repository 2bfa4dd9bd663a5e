//! The SDK's front door: [`Client`]. Small on purpose: strings, numbers,
//! plain structs and one listener trait, so UniFFI can carry it to Kotlin
//! and Swift unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use automerge::{ActorId, Automerge};
use baraza_protocol::{DocId, Limits};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use baraza_records::ops::Stamp;
use baraza_records::{ops, FieldValue, Header, Kind};

use crate::error::ClientError;
use crate::record::{self, Record, Summary};
use crate::store::{LocalStore, Rejection};
use crate::sync::{self, Mode, SyncListener, SyncReport};
use crate::transport::Endpoint;

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

/// What enrolment gave this tablet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Enrolment {
    /// The device's own token (kept in the store, never shown again).
    #[serde(skip_serializing)]
    pub token: String,
    /// The device id.
    pub device_id: String,
    /// The user.
    pub user: String,
    /// Their role.
    pub role: String,
    /// Their areas.
    pub areas: Vec<String>,
    /// When the token expires (unix seconds); the SDK rotates it at half
    /// its life, whenever it syncs.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// True when the store's own device was enrolled again (its changes
    /// not yet synced stay deliverable), false for a new device.
    #[serde(default)]
    pub reenrolled: bool,
}

/// A background sync in progress; dropping it does not stop it, `stop` does.
pub struct BackgroundSync {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BackgroundSync {
    /// Stops syncing and waits for the connection to close.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A tablet's records and its link to the server.
#[derive(Clone)]
pub struct Client {
    store: LocalStore,
    local_edits: Arc<Notify>,
    limits: Limits,
}

fn parse_id(id: &str) -> Result<DocId, ClientError> {
    id.parse().map_err(|_| ClientError::BadId(id.to_string()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Client {
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
    pub fn open(data_dir: &Path, key: &[u8]) -> Result<Client, ClientError> {
        Self::open_within(data_dir, key, crate::store::DEFAULT_OPEN_DEADLINE)
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
    ) -> Result<Client, ClientError> {
        if key.len() != crate::seal::KEY_LEN {
            return Err(ClientError::KeyLength(key.len()));
        }
        std::fs::create_dir_all(data_dir).map_err(|e| ClientError::Store(sled::Error::Io(e)))?;
        let store = LocalStore::open_within(data_dir, key, deadline)?;
        Ok(Client {
            store,
            local_edits: Arc::new(Notify::new()),
            limits: Limits::DEFAULT,
        })
    }

    /// Sets the server, the CA file to trust and the device token. The
    /// token names the device; this install then authors its changes under
    /// an actor id that starts with the device id, which is what the server
    /// accepts from this device. `area` and `user` are what new records are
    /// filed under until enrolment (issue 4) provides them.
    pub fn configure(
        &self,
        server: &str,
        ca_file: Option<&Path>,
        token: &str,
    ) -> Result<(), ClientError> {
        crate::transport::check_endpoint(server, ca_file)?;
        self.store.set_setting("server", server)?;
        if let Some(ca) = ca_file {
            let abs = std::fs::canonicalize(ca).map_err(|e| {
                ClientError::Tls(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            self.store.set_setting("ca_file", &abs.to_string_lossy())?;
        }
        self.store.set_setting("token", token)?;
        // A token set by hand has no known lifetime; enrolment notes it.
        self.store.set_setting("token_issued_at", "")?;
        self.store.set_setting("token_expires_at", "")?;
        if let Some(device) = device_id_of(token) {
            let actor = self.store.setting("actor")?.unwrap_or_default();
            if self.store.setting("device_id")?.as_deref() != Some(device.as_str())
                || !actor.starts_with(&device)
            {
                // A few random bytes after the device id keep two installs
                // with the same token from reusing each other's sequence numbers.
                let suffix: [u8; 8] = rand::random();
                let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
                self.store.set_setting("actor", &format!("{device}{hex}"))?;
                self.store.set_setting("device_id", &device)?;
            }
        }
        Ok(())
    }

    /// Enrols this tablet: the user logs in once (online) and the server
    /// issues the device its own token, tied to the user; the tablet then
    /// files new records under the user and their first area. The password
    /// is not kept.
    ///
    /// A store that already belongs to a device (one whose token expired,
    /// say) asks for that same device again, so the changes it holds keep
    /// their author and stay deliverable. The server refuses that for a
    /// revoked or retired device, or one another user enrolled
    /// ([`ClientError::EnrolRefused`]), and the store is left unchanged.
    pub async fn enroll(
        &self,
        server: &str,
        ca_file: &Path,
        user: &str,
        password: &str,
        device_name: &str,
    ) -> Result<Enrolment, ClientError> {
        let mut body = serde_json::json!({
            "user": user,
            "password": password,
            "device_name": device_name,
        });
        if let Some(device) = self.store.setting("device_id")? {
            body["device_id"] = serde_json::Value::String(device);
        }
        let (status, reply) =
            crate::transport::post_json(server, ca_file, "/v1/enroll", &body.to_string(), None)
                .await?;
        if status == 401 {
            return Err(ClientError::Unauthorized(reply.trim().to_string()));
        }
        if status == 403 || status == 409 {
            #[derive(serde::Deserialize)]
            struct Refusal {
                error: String,
                rule: String,
            }
            if let Ok(refusal) = serde_json::from_str::<Refusal>(&reply) {
                return Err(ClientError::EnrolRefused {
                    rule: refusal.rule,
                    message: refusal.error,
                });
            }
        }
        if status != 200 {
            return Err(ClientError::Connect {
                url: server.to_string(),
                reason: format!("HTTP {status}: {}", reply.trim()),
            });
        }
        let enrolment: Enrolment =
            serde_json::from_str(&reply).map_err(|e| ClientError::Connect {
                url: server.to_string(),
                reason: format!("unreadable enrolment reply: {e}"),
            })?;
        self.configure(server, Some(ca_file), &enrolment.token)?;
        if let Some(expires) = enrolment.expires_at {
            crate::sync::note_token_life(&self.store, sync::now_secs(), expires)?;
        }
        let area = enrolment
            .areas
            .first()
            .cloned()
            .unwrap_or_else(|| "unassigned".into());
        self.set_identity(&enrolment.user, &area)?;
        Ok(enrolment)
    }

    /// Sets who and where new records are filed under.
    pub fn set_identity(&self, user: &str, area: &str) -> Result<(), ClientError> {
        self.store.set_setting("user", user)?;
        self.store.set_setting("area", area)
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let url = self
            .store
            .setting("server")?
            .ok_or(ClientError::NotConfigured)?;
        let token = self
            .store
            .setting("token")?
            .ok_or(ClientError::NotConfigured)?;
        let ca_file = self.store.setting("ca_file")?.map(PathBuf::from);
        Ok(Endpoint {
            url,
            ca_file,
            token,
        })
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

    fn edit<F>(&self, id: DocId, create: bool, f: F) -> Result<(), ClientError>
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
        let kind = Kind::parse(kind).ok_or_else(|| {
            ClientError::BadEdit(format!(
                "unknown record kind {kind:?}; kinds: {}",
                Kind::ALL.map(|k| k.name()).join(", ")
            ))
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
        self.edit(id, true, |doc, at| {
            ops::create(doc, &header, at)?;
            for (k, v) in &fields {
                record::set(doc, k, v, at)?;
            }
            Ok(())
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

    /// Syncs once: returns when everything local is acknowledged and
    /// everything remote received, or with the reason it could not.
    pub async fn sync_once(&self, listener: &dyn SyncListener) -> Result<SyncReport, ClientError> {
        let endpoint = self.endpoint()?;
        let (_tx, mut stop) = watch::channel(false);
        listener.on_event(sync::SyncEvent::Connecting { attempt: 1 });
        sync::run_connection(
            &self.store,
            &endpoint,
            &self.limits,
            Mode::Once,
            &self.local_edits,
            &mut stop,
            listener,
        )
        .await
    }

    /// Starts syncing in the background (live changes, reconnect with
    /// backoff) on the current tokio runtime.
    pub fn start_background(
        &self,
        listener: Arc<dyn SyncListener>,
    ) -> Result<BackgroundSync, ClientError> {
        let endpoint = self.endpoint()?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(sync::run_background(
            self.store.clone(),
            endpoint,
            self.limits.clone(),
            self.local_edits.clone(),
            stop_rx,
            listener,
        ));
        Ok(BackgroundSync { stop, task })
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
            ClientError::BadEdit(format!(
                "a {} record has no list or map {list:?}; its lists and maps are {}",
                kind.name(),
                lists.join(", ")
            ))
        })?;
        values
            .iter()
            .map(|(name, text)| {
                let part = spec
                    .parts()
                    .iter()
                    .find(|p| p.name == name)
                    .ok_or_else(|| {
                        ClientError::BadEdit(format!(
                            "items of {list} have no field {name:?}; their fields are {}",
                            baraza_records::schema::names(spec.parts()).join(", ")
                        ))
                    })?;
                let value = FieldValue::parse(part.ty, text)
                    .map_err(|reason| ClientError::BadEdit(format!("{list}.{name}: {reason}")))?;
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
            Ok(ops::review(doc, "submitted", None, at)?)
        })
    }

    /// Records a review decision (`approved` or `returned`, with an
    /// optional comment). Only a supervisor of the record's area may: the
    /// server rejects anyone else's decision, and this device then keeps it
    /// marked rejected.
    pub fn review(
        &self,
        id: &str,
        decision: &str,
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

/// The device id a token carries (`bz_<device id>_<secret>`), if any.
fn device_id_of(token: &str) -> Option<String> {
    let rest = token.strip_prefix("bz_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 32 && !secret.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| id.to_ascii_lowercase())
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
