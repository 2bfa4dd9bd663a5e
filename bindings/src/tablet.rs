//! [`Tablet`]: the one object an app holds. It owns the SDK's client and
//! a tokio runtime; async calls run on that runtime and the foreign
//! coroutine awaits them, so cancelling it aborts the work.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use baraza_client::{self as sdk, Client, ClientError, NoListener};

use crate::background::{BackgroundSync, Relay, SyncListener};
use crate::error::TabletError;
use crate::types::*;

/// The file in the data dir holding the server's CA certificate, written
/// at enrolment (a certificate is public; the store key never is here).
const CA_FILE: &str = "server-ca.pem";

/// A tablet: its sealed store of records and its link to the server.
#[derive(uniffi::Object)]
pub struct Tablet {
    client: Client,
    data_dir: PathBuf,
    /// Taken only in `drop`, to shut the runtime down without waiting.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// The running background sync, so a second one is refused.
    background: Mutex<Weak<BackgroundSync>>,
}

impl Drop for Tablet {
    fn drop(&mut self) {
        // The last reference may go on any thread, including one of the
        // runtime's own (a listener holding the tablet): a blocking
        // shutdown there would panic, so leave the tasks to end alone.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts a task when the future awaiting it is dropped: that is how a
/// cancelled Kotlin coroutine or Swift task stops the work.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn invalid(field: &str, message: impl Into<String>) -> TabletError {
    TabletError::InvalidInput {
        field: field.into(),
        detail: message.into(),
    }
}

fn pairs(entries: Vec<FieldEntry>) -> Vec<(String, String)> {
    entries.into_iter().map(|e| (e.name, e.value)).collect()
}

/// Named values, leaving out those not given.
fn given(values: &[(&str, Option<String>)]) -> Vec<(String, String)> {
    values
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.clone()?)))
        .collect()
}

/// The SDK's listener for a call given an optional foreign one: the
/// relay to it, or one that ignores everything.
fn relay_to(listener: Option<Arc<dyn SyncListener>>) -> Arc<dyn sdk::SyncListener> {
    match listener {
        Some(listener) => Arc::new(Relay::new(listener)),
        None => Arc::new(NoListener),
    }
}

/// The media type of a file by its extension, for the types a tablet
/// records and the server accepts by default. Kept to these few on
/// purpose: the server checks the type anyway, and an app that knows
/// better passes it.
fn mime_of(path: &Path) -> Option<&'static str> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match extension.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "m4a" | "mp4a" => "audio/mp4",
        "aac" => "audio/aac",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "amr" => "audio/amr",
        _ => return None,
    })
}

/// The device part of an actor id (its first 16 bytes, hex).
fn device_of(actor: &str) -> String {
    actor.get(..2 * 16).unwrap_or(actor).to_string()
}

impl Tablet {
    /// Runs `work` on the tablet's runtime and awaits it from whatever
    /// executor the foreign side polls with.
    async fn on_runtime<T, F>(&self, work: F) -> Result<T, TabletError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        let task = self.handle.spawn(work);
        let _abort = AbortOnDrop(task.abort_handle());
        match task.await {
            Ok(result) => result.map_err(TabletError::from),
            Err(e) if e.is_cancelled() => Err(TabletError::Cancelled),
            Err(e) => Err(TabletError::Sync {
                detail: format!("the sync task failed: {e}"),
            }),
        }
    }

    fn open_with(
        data_dir: String,
        key: Vec<u8>,
        deadline: Duration,
    ) -> Result<Arc<Tablet>, TabletError> {
        let data_dir = PathBuf::from(data_dir);
        let client = Client::open_within(&data_dir, &key, deadline)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("baraza-tablet")
            .enable_all()
            .build()
            .map_err(|e| TabletError::Storage {
                detail: format!("cannot start the tablet's threads: {e}"),
            })?;
        Ok(Arc::new(Tablet {
            client,
            data_dir,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            background: Mutex::new(Weak::new()),
        }))
    }
}

#[uniffi::export]
impl Tablet {
    /// Opens (or creates) the tablet's store in `data_dir`, sealed with
    /// `key`: 32 bytes the app keeps in the platform keystore (Android
    /// Keystore, iOS Keychain), never in the data dir. Another length is
    /// `InvalidInput(key)`; a store sealed with another key is `WrongKey`
    /// and left as it was; a damaged one is `DamagedStore`. Blocks while
    /// the store is checked (at most 20 s): call it off the UI thread.
    #[uniffi::constructor]
    pub fn open(data_dir: String, key: Vec<u8>) -> Result<Arc<Tablet>, TabletError> {
        Tablet::open_with(data_dir, key, sdk::DEFAULT_OPEN_DEADLINE)
    }

    /// [`open`](Self::open), giving up on a stuck store after
    /// `deadline_ms` instead of 20 s.
    #[uniffi::constructor]
    pub fn open_within(
        data_dir: String,
        key: Vec<u8>,
        deadline_ms: u64,
    ) -> Result<Arc<Tablet>, TabletError> {
        Tablet::open_with(data_dir, key, Duration::from_millis(deadline_ms))
    }

    /// Enrols this tablet with the server at `server_url` (`https://...`),
    /// trusting the CA certificate `ca_pem` (PEM text; a development
    /// server's is `DATA/tls/ca.pem`). The user logs in once; the server
    /// gives this device its own token, and new records go to the user's
    /// first area. The password is not kept. A store that already belongs
    /// to a device (its token expired, say) asks for that same device again.
    pub async fn enroll(
        &self,
        server_url: String,
        ca_pem: String,
        user: String,
        password: String,
        device_name: String,
    ) -> Result<Enrolment, TabletError> {
        if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(invalid("ca_pem", "no PEM certificate in it"));
        }
        let ca_file = self.data_dir.join(CA_FILE);
        std::fs::write(&ca_file, ca_pem.as_bytes()).map_err(|e| TabletError::Storage {
            detail: format!("cannot write {}: {e}", ca_file.display()),
        })?;
        let client = self.client.clone();
        let enrolment = self
            .on_runtime(async move {
                client
                    .enroll(&server_url, &ca_file, &user, &password, &device_name)
                    .await
            })
            .await?;
        Ok(enrolment.into())
    }

    /// Syncs once: returns when everything local is acknowledged and
    /// everything the server has for this tablet received, or with why it
    /// could not (`Offline`, `Expired`, `Revoked` with the wipe report,
    /// ...). Progress goes to `listener` if one is given. Cancelling the
    /// coroutine stops the sync; nothing is lost (what was acknowledged
    /// stays acknowledged, the rest goes next time).
    pub async fn sync(
        &self,
        listener: Option<Arc<dyn SyncListener>>,
    ) -> Result<SyncSummary, TabletError> {
        let client = self.client.clone();
        let listener = relay_to(listener);
        let report = self
            .on_runtime(async move { client.sync_once(listener.as_ref()).await })
            .await?;
        Ok(report.into())
    }

    /// Uploads the attachments queued on this tablet, each resuming where
    /// the server's copy ends; one pass (`sync` and the background sync
    /// run one after the records too). An attachment whose record has not
    /// reached the server yet is counted as waiting: sync first. Bytes
    /// moving go to `listener` as `Attachment` events, refusals as
    /// `AttachmentRefused`. Cancelling the coroutine stops the pass; what
    /// the server acknowledged is kept, and the next pass resumes there.
    pub async fn upload_attachments(
        &self,
        listener: Option<Arc<dyn SyncListener>>,
    ) -> Result<UploadSummary, TabletError> {
        let client = self.client.clone();
        let listener = relay_to(listener);
        let report = self
            .on_runtime(async move { client.upload_attachments(listener.as_ref()).await })
            .await?;
        Ok(report.into())
    }

    /// The bytes of attachment `sha256` of record `id`: from the tablet
    /// when they are here, else fetched from the server and kept (so a
    /// second call needs no network). A cut or cancelled download resumes
    /// where it stopped next time; the bytes are checked against the
    /// digest before they are returned. `NotFound` when the record has no
    /// such attachment; `Sync` when its bytes have not reached the server
    /// yet (the attaching tablet has not uploaded them).
    pub async fn fetch_attachment(
        &self,
        id: String,
        sha256: String,
        listener: Option<Arc<dyn SyncListener>>,
    ) -> Result<Vec<u8>, TabletError> {
        let client = self.client.clone();
        let listener = relay_to(listener);
        self.on_runtime(async move {
            client
                .fetch_attachment(&id, &sha256, listener.as_ref())
                .await
        })
        .await
    }

    /// Starts syncing in the background: live changes both ways; after a
    /// failure it retries on its own with exponential backoff and jitter;
    /// edits made meanwhile go out in the running connection or the next.
    /// Events reach `listener`. One at a time per tablet
    /// (`AlreadyRunning`).
    pub fn start_background(
        &self,
        listener: Arc<dyn SyncListener>,
    ) -> Result<Arc<BackgroundSync>, TabletError> {
        // A poisoned lock holds a valid Weak all the same.
        let mut running = self.background.lock().unwrap_or_else(|p| p.into_inner());
        if running.upgrade().is_some_and(|b| b.is_running()) {
            return Err(TabletError::AlreadyRunning);
        }
        let relay: Arc<dyn sdk::SyncListener> = Arc::new(Relay::new(listener));
        let inner = {
            // start_background spawns on the current runtime.
            let _entered = self.handle.enter();
            self.client.start_background(relay)?
        };
        let background = Arc::new(BackgroundSync {
            inner: Mutex::new(Some(inner)),
            runtime: self.handle.clone(),
        });
        *running = Arc::downgrade(&background);
        Ok(background)
    }

    /// Creates a record of `kind` in `area` (the enrolled user's first
    /// area if None) with the given fields; returns its id. A field the
    /// kind does not have is `InvalidInput` naming it, and nothing is
    /// created.
    pub fn create_record(
        &self,
        kind: RecordKind,
        area: Option<String>,
        fields: Vec<FieldEntry>,
    ) -> Result<String, TabletError> {
        let area = match area {
            Some(area) => area,
            None => self.client.area()?,
        };
        Ok(self
            .client
            .create_record(kind.name(), &area, pairs(fields))?)
    }

    /// Creates a meeting in the enrolled area; returns its id.
    pub fn create_meeting(
        &self,
        title: String,
        place: Option<String>,
        held_at_ms: Option<i64>,
    ) -> Result<String, TabletError> {
        let fields = given(&[
            ("title", Some(title)),
            ("place", place),
            ("held_at", held_at_ms.map(|t| t.to_string())),
        ]);
        let area = self.client.area()?;
        Ok(self
            .client
            .create_record(RecordKind::Meeting.name(), &area, fields)?)
    }

    /// Creates a patrol note for `beat` in the enrolled area.
    pub fn create_patrol_note(
        &self,
        beat: String,
        officer: Option<String>,
        started_at_ms: Option<i64>,
    ) -> Result<String, TabletError> {
        let fields = given(&[
            ("beat", Some(beat)),
            ("officer", officer),
            ("started_at", started_at_ms.map(|t| t.to_string())),
        ]);
        let area = self.client.area()?;
        Ok(self
            .client
            .create_record(RecordKind::PatrolNote.name(), &area, fields)?)
    }

    /// Creates a citizen's feedback: `channel` (`in_person`, `phone`,
    /// `meeting`, `letter`, `other`), `category` (`complaint`,
    /// `commendation`, `concern`, `suggestion`), what it is about.
    pub fn create_feedback(
        &self,
        channel: String,
        category: String,
        about: String,
    ) -> Result<String, TabletError> {
        let fields = given(&[
            ("channel", Some(channel)),
            ("category", Some(category)),
            ("about", Some(about)),
            ("status", Some("received".into())),
        ]);
        let area = self.client.area()?;
        Ok(self
            .client
            .create_record(RecordKind::Feedback.name(), &area, fields)?)
    }

    /// Sets a field, typed by the record's schema (a time as milliseconds
    /// since the epoch in text).
    pub fn set_field(&self, id: String, field: String, value: String) -> Result<(), TabletError> {
        Ok(self.client.set(&id, &field, &value)?)
    }

    /// Splices `text` into a text field at character `position`, deleting
    /// `delete` characters first; two people typing in one field merge.
    pub fn splice(
        &self,
        id: String,
        field: String,
        position: u64,
        delete: u64,
        text: String,
    ) -> Result<(), TabletError> {
        let delete = i64::try_from(delete).map_err(|_| invalid("delete", "too large"))?;
        Ok(self.client.splice(&id, &field, position, delete, &text)?)
    }

    /// Adds an item to a list field; returns its position.
    pub fn add_item(
        &self,
        id: String,
        list: String,
        values: Vec<FieldEntry>,
    ) -> Result<u64, TabletError> {
        Ok(self.client.add_item(&id, &list, pairs(values))?)
    }

    /// Sets one field of a list item.
    pub fn set_item(
        &self,
        id: String,
        list: String,
        index: u64,
        field: String,
        value: String,
    ) -> Result<(), TabletError> {
        Ok(self.client.set_item(&id, &list, index, &field, &value)?)
    }

    /// Removes a list item.
    pub fn remove_item(&self, id: String, list: String, index: u64) -> Result<(), TabletError> {
        Ok(self.client.remove_item(&id, &list, index)?)
    }

    /// Sets keys of a map field (a meeting's `headcount`).
    pub fn set_map(
        &self,
        id: String,
        field: String,
        values: Vec<FieldEntry>,
    ) -> Result<(), TabletError> {
        Ok(self.client.set_map(&id, &field, pairs(values))?)
    }

    /// Adds an attendee to a meeting; returns its position.
    pub fn add_attendee(
        &self,
        id: String,
        name: String,
        role: Option<String>,
    ) -> Result<u64, TabletError> {
        let values = given(&[("name", Some(name)), ("role", role)]);
        Ok(self.client.add_item(&id, "attendees", values)?)
    }

    /// Adds a concern raised at a meeting; returns its position.
    pub fn add_concern(
        &self,
        id: String,
        topic: String,
        text: String,
        raised_by: Option<String>,
    ) -> Result<u64, TabletError> {
        let values = given(&[
            ("topic", Some(topic)),
            ("text", Some(text)),
            ("raised_by", raised_by),
        ]);
        Ok(self.client.add_item(&id, "concerns", values)?)
    }

    /// Adds an action item to a meeting (status `open`); returns its
    /// position.
    pub fn add_action_item(
        &self,
        id: String,
        text: String,
        owner: Option<String>,
        due_ms: Option<i64>,
    ) -> Result<u64, TabletError> {
        let values = given(&[
            ("text", Some(text)),
            ("owner", owner),
            ("due", due_ms.map(|t| t.to_string())),
            ("status", Some("open".into())),
        ]);
        Ok(self.client.add_item(&id, "action_items", values)?)
    }

    /// Moves an action item's status (`open`, `in_progress`, `done`,
    /// `dropped`).
    pub fn set_action_status(
        &self,
        id: String,
        index: u64,
        status: String,
    ) -> Result<(), TabletError> {
        Ok(self
            .client
            .set_item(&id, "action_items", index, "status", &status)?)
    }

    /// Adds an observation to a patrol note, with a GPS point if given
    /// (checked first: a point out of range adds nothing); returns its
    /// position.
    pub fn add_observation(
        &self,
        id: String,
        text: String,
        at_ms: Option<i64>,
        gps: Option<GpsPoint>,
    ) -> Result<u64, TabletError> {
        if let Some(gps) = gps {
            sdk::BaseClient::check_gps(&gps.lat.to_string(), &gps.lon.to_string(), gps.accuracy_m)?;
        }
        let values = given(&[("text", Some(text)), ("at", at_ms.map(|t| t.to_string()))]);
        let index = self.client.add_item(&id, "observations", values)?;
        if let Some(gps) = gps {
            self.set_gps(id, index, gps)?;
        }
        Ok(index)
    }

    /// Attaches a GPS point to an observation.
    pub fn set_gps(&self, id: String, observation: u64, gps: GpsPoint) -> Result<(), TabletError> {
        Ok(self.client.set_gps(
            &id,
            observation,
            &gps.lat.to_string(),
            &gps.lon.to_string(),
            gps.accuracy_m,
        )?)
    }

    /// Adds a follow-up to a feedback record and moves its status
    /// (`received`, `acknowledged`, `referred`, `resolved`).
    pub fn follow_up(&self, id: String, status: String, note: String) -> Result<(), TabletError> {
        Ok(self.client.follow_up(&id, &status, &note)?)
    }

    /// Submits a record for review.
    pub fn submit(&self, id: String) -> Result<(), TabletError> {
        Ok(self.client.submit(&id)?)
    }

    /// A supervisor's decision, with an optional comment. Only a
    /// supervisor of the record's area may: the server refuses anyone
    /// else's, and the record then shows the rejection.
    pub fn review(
        &self,
        id: String,
        decision: ReviewDecision,
        comment: Option<String>,
    ) -> Result<(), TabletError> {
        let decision = match decision {
            ReviewDecision::Approved => baraza_records::ReviewState::Approved,
            ReviewDecision::Returned => baraza_records::ReviewState::Returned,
        };
        Ok(self.client.review(&id, decision, comment)?)
    }

    /// Attaches `bytes` (a photo, a recording, a scanned page) to the
    /// attachment list `field` of record `id` (`photos`, `audio`,
    /// `attendance_sheet`, `documents`), as media type `mime`
    /// (`image/jpeg`) under `name`. The bytes are sealed on the tablet
    /// before the record refers to them, so a reference always has its
    /// bytes here; the upload is queued for the next sync. A list the
    /// kind does not have, or a `mime` that is not `type/subtype`, is
    /// `InvalidInput` naming it, and nothing is attached.
    pub fn attach(
        &self,
        id: String,
        field: String,
        bytes: Vec<u8>,
        mime: String,
        name: String,
    ) -> Result<AttachmentInfo, TabletError> {
        let reference = self.client.attach(&id, &field, &bytes, &mime, &name)?;
        let held = reference.size_bytes;
        Ok(AttachmentInfo::new(
            reference,
            held,
            true,
            UploadState::Pending,
        ))
    }

    /// [`attach`](Self::attach) with the bytes of the file at `path`
    /// (read whole; the server takes at most 32 MiB by default), under
    /// the file's name. Without `mime` it is told by the extension for
    /// the usual types (`jpg`, `png`, `webp`, `pdf`, `m4a`, `aac`, `mp3`,
    /// `ogg`, `opus`, `wav`, `amr`); another extension is
    /// `InvalidInput(mime)`: pass the type. A file that cannot be read is
    /// `InvalidInput(path)`.
    pub fn attach_file(
        &self,
        id: String,
        field: String,
        path: String,
        mime: Option<String>,
    ) -> Result<AttachmentInfo, TabletError> {
        let file = Path::new(&path);
        // The type first: a refusal should not cost reading a recording.
        let mime = match mime {
            Some(mime) => mime,
            None => mime_of(file)
                .ok_or_else(|| {
                    invalid(
                        "mime",
                        format!("no media type given, and none known for {path:?}'s extension"),
                    )
                })?
                .to_string(),
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| invalid("path", format!("{path:?} names no file")))?;
        let bytes = std::fs::read(file)
            .map_err(|e| invalid("path", format!("cannot read {path:?}: {e}")))?;
        self.attach(id, field, bytes, mime, name)
    }

    /// Every attachment record `id` refers to, in the order of its
    /// lists, with what the tablet holds of each and where its upload
    /// stands.
    pub fn attachments(&self, id: String) -> Result<Vec<AttachmentInfo>, TabletError> {
        Ok(self
            .client
            .attachments(&id)?
            .into_iter()
            .map(AttachmentInfo::from)
            .collect())
    }

    /// The bytes of attachment `sha256` of record `id` if all of them are
    /// on this tablet (attached here, or fetched), checked against the
    /// digest; None otherwise, without touching the network (see
    /// `fetch_attachment`).
    pub fn attachment_bytes(
        &self,
        id: String,
        sha256: String,
    ) -> Result<Option<Vec<u8>>, TabletError> {
        Ok(self.client.attachment_bytes(&id, &sha256)?)
    }

    /// Deletes attachment `sha256` from record `id`: its reference leaves
    /// the record (a change, synced as any other) and its bytes and queued
    /// upload leave the tablet. What an app offers for an attachment the
    /// server refused.
    pub fn delete_attachment(&self, id: String, sha256: String) -> Result<(), TabletError> {
        Ok(self.client.delete_attachment(&id, &sha256)?)
    }

    /// A record read whole: every field in full, conflicts with each
    /// value's user, device and time, history, review state and comments,
    /// and the server's rejection if any.
    pub fn record(&self, id: String) -> Result<RecordView, TabletError> {
        let record = self.client.get(&id)?;
        let device_name = |actor: &str| self.client.device_name(actor).ok().flatten();
        let conflicts = self
            .client
            .conflicts(&id)?
            .into_iter()
            .map(|c| Conflict {
                path: c.path,
                values: c
                    .values
                    .into_iter()
                    .map(|v| ConflictValue {
                        device_name: device_name(&v.actor),
                        device_id: device_of(&v.actor),
                        value: v.value,
                        user: v.user,
                        time_ms: v.time.saturating_mul(1000),
                        winner: v.winner,
                    })
                    .collect(),
            })
            .collect();
        let history = self
            .client
            .history(&id)?
            .into_iter()
            .map(|h| HistoryEntry {
                device_name: device_name(&h.actor),
                device_id: device_of(&h.actor),
                hash: h.hash,
                user: h.user,
                time_ms: h.time.saturating_mul(1000),
                message: h.message,
                fields: h.fields,
            })
            .collect();
        let header = record.header;
        Ok(RecordView {
            id: record.id,
            kind: header.as_ref().map(|h| RecordKind::from_schema(h.kind)),
            area: header.as_ref().map(|h| h.area.clone()).unwrap_or_default(),
            created_by_user: header
                .as_ref()
                .map(|h| h.created_by_user.clone())
                .unwrap_or_default(),
            created_by_device: header
                .as_ref()
                .map(|h| h.created_by_device.clone())
                .unwrap_or_default(),
            created_at_ms: header.as_ref().map(|h| h.created_at).unwrap_or(0),
            fields: record
                .fields
                .into_iter()
                .map(|f| FieldView {
                    name: f.name,
                    value: f.content.into(),
                    shown: f.value,
                    is_text: f.text,
                    in_conflict: !f.conflicts.is_empty(),
                })
                .collect(),
            conflicts,
            history,
            review_state: record.review_state.into(),
            review_comments: record
                .review_comments
                .into_iter()
                .map(|c| ReviewComment {
                    by: c.by,
                    at_ms: c.at,
                    text: c.text,
                })
                .collect(),
            unacknowledged: record.unacknowledged,
            rejection: record.rejected.map(Rejection::from),
        })
    }

    /// The records on this tablet that pass `filter`, in id order.
    pub fn list(&self, filter: RecordFilter) -> Result<Vec<RecordSummary>, TabletError> {
        Ok(self
            .client
            .records()?
            .into_iter()
            .map(RecordSummary::from)
            .filter(|s| filter.accepts(s))
            .collect())
    }

    /// The tablet's local state of sync.
    pub fn status(&self) -> Result<TabletStatus, TabletError> {
        let status = self.client.status()?;
        Ok(TabletStatus {
            records: status.records,
            unacknowledged: status.unacknowledged,
            refused: status
                .refused
                .into_iter()
                .map(|r| RefusedRecord {
                    id: r.id,
                    rejection: r.rejection.into(),
                })
                .collect(),
            last_sync_ms: status.last_sync.map(|s| s.saturating_mul(1000)),
            cursor: status.cursor,
            server: status.server,
            device_id: self.client.device_id()?,
            user: self.client.user()?,
            area: self.client.area()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_type_is_told_by_its_usual_extensions_only() {
        assert_eq!(
            mime_of(Path::new("/sdcard/DCIM/market.JPG")),
            Some("image/jpeg")
        );
        assert_eq!(mime_of(Path::new("minutes.pdf")), Some("application/pdf"));
        assert_eq!(mime_of(Path::new("elder.m4a")), Some("audio/mp4"));
        assert_eq!(mime_of(Path::new("notes.bin")), None);
        assert_eq!(mime_of(Path::new("README")), None);
    }
}
