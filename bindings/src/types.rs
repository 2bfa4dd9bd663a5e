//! The records and enums that cross the boundary, converted from the
//! SDK's reading types. Times are `*_ms` (milliseconds since the Unix
//! epoch) everywhere.

use baraza_client as sdk;

/// The kinds of record (`records/src/schema.rs` lists their fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum RecordKind {
    /// A community meeting (baraza): attendees, concerns, action items.
    Meeting,
    /// An officer's patrol: observations, some with GPS.
    PatrolNote,
    /// A citizen's feedback, with follow-ups.
    Feedback,
    /// A complainant's contact details (author and supervisors only).
    FeedbackContact,
}

impl RecordKind {
    /// The kind's name in the schema (`patrol_note`).
    pub(crate) fn name(self) -> &'static str {
        self.schema().name()
    }

    fn schema(self) -> baraza_records::Kind {
        match self {
            RecordKind::Meeting => baraza_records::Kind::Meeting,
            RecordKind::PatrolNote => baraza_records::Kind::PatrolNote,
            RecordKind::Feedback => baraza_records::Kind::Feedback,
            RecordKind::FeedbackContact => baraza_records::Kind::FeedbackContact,
        }
    }

    pub(crate) fn from_schema(kind: baraza_records::Kind) -> RecordKind {
        match kind {
            baraza_records::Kind::Meeting => RecordKind::Meeting,
            baraza_records::Kind::PatrolNote => RecordKind::PatrolNote,
            baraza_records::Kind::Feedback => RecordKind::Feedback,
            baraza_records::Kind::FeedbackContact => RecordKind::FeedbackContact,
        }
    }

    pub(crate) fn parse(name: &str) -> Option<RecordKind> {
        baraza_records::Kind::parse(name).map(RecordKind::from_schema)
    }
}

/// Where a record stands in review.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ReviewState {
    /// Not submitted yet.
    Draft,
    /// Waiting for a supervisor.
    Submitted,
    /// Approved by a supervisor of the area.
    Approved,
    /// Returned for changes (see the comments).
    Returned,
}

impl From<baraza_records::ReviewState> for ReviewState {
    fn from(state: baraza_records::ReviewState) -> ReviewState {
        match state {
            baraza_records::ReviewState::Draft => ReviewState::Draft,
            baraza_records::ReviewState::Submitted => ReviewState::Submitted,
            baraza_records::ReviewState::Approved => ReviewState::Approved,
            baraza_records::ReviewState::Returned => ReviewState::Returned,
        }
    }
}

/// A supervisor's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ReviewDecision {
    /// Approve (refused while a conflict stands).
    Approved,
    /// Return for changes.
    Returned,
}

/// A field given by name with its value as text, typed by the record's
/// schema on the way in (a time is milliseconds since the epoch as text,
/// a flag `true`/`false`).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct FieldEntry {
    /// The field's name (`place`).
    pub name: String,
    /// Its value as text (`Chief's camp`).
    pub value: String,
}

/// A field's value in full, nested lists and maps included.
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum FieldValue {
    /// A string set whole (enums too).
    Str {
        /// The string.
        value: String,
    },
    /// Collaborative text (edited with `splice`).
    Text {
        /// The text.
        value: String,
    },
    /// A whole number.
    Int {
        /// The number.
        value: i64,
    },
    /// A flag.
    Bool {
        /// The flag.
        value: bool,
    },
    /// A time the schema declares.
    Time {
        /// Milliseconds since the Unix epoch.
        value_ms: i64,
    },
    /// A list, in order. (Not `List`: Kotlin's own `List` would clash.)
    ListValue {
        /// Its items.
        items: Vec<FieldValue>,
    },
    /// A map, by key.
    MapValue {
        /// Its entries, in key order.
        entries: Vec<MapEntry>,
    },
    /// Anything else a document can hold (counters, bytes), as text.
    Other {
        /// The value shown as text.
        value: String,
    },
}

/// One entry of a [`FieldValue::MapValue`].
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct MapEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: FieldValue,
}

impl From<sdk::Content> for FieldValue {
    fn from(content: sdk::Content) -> FieldValue {
        match content {
            sdk::Content::Str(value) => FieldValue::Str { value },
            sdk::Content::Text(value) => FieldValue::Text { value },
            sdk::Content::Int(value) => FieldValue::Int { value },
            sdk::Content::Bool(value) => FieldValue::Bool { value },
            sdk::Content::Time(value_ms) => FieldValue::Time { value_ms },
            sdk::Content::List(items) => FieldValue::ListValue {
                items: items.into_iter().map(FieldValue::from).collect(),
            },
            sdk::Content::Map(entries) => FieldValue::MapValue {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| MapEntry {
                        key,
                        value: value.into(),
                    })
                    .collect(),
            },
            sdk::Content::Other(value) => FieldValue::Other { value },
        }
    }
}

/// One field of a record.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct FieldView {
    /// Its name.
    pub name: String,
    /// The value in full (the winning one where devices disagree).
    pub value: FieldValue,
    /// The value in one line (`[2 items]` for a list).
    pub shown: String,
    /// True for a text field (edited with `splice`).
    pub is_text: bool,
    /// True when devices set it concurrently to different values: see
    /// [`RecordView::conflicts`] for each value, who set it and when.
    pub in_conflict: bool,
}

/// One of the values of a conflicting field.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ConflictValue {
    /// The value, shown as text.
    pub value: String,
    /// The user who set it, when the change names one.
    pub user: Option<String>,
    /// The device that set it (hex).
    pub device_id: String,
    /// The name the device was registered under, when the server told
    /// this tablet (or it is this tablet).
    pub device_name: Option<String>,
    /// When it was set, by that device's clock (a change keeps its time
    /// to the second, so this is a whole number of seconds in ms).
    pub time_ms: i64,
    /// True for the value shown as the field's value.
    pub winner: bool,
}

/// A field whose value devices set differently while offline. Setting
/// the field again resolves it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Conflict {
    /// The field (`place`, or `attendees[0].name` within a list).
    pub path: String,
    /// Every value, the winner among them.
    pub values: Vec<ConflictValue>,
}

/// One change to a record.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct HistoryEntry {
    /// The change's hash (hex).
    pub hash: String,
    /// The user it names.
    pub user: Option<String>,
    /// The device that made it (hex).
    pub device_id: String,
    /// The device's registered name, when known.
    pub device_name: Option<String>,
    /// When, by that device's clock (to the second, in ms).
    pub time_ms: i64,
    /// What it did (`set place by liaison.achieng`).
    pub message: Option<String>,
    /// The fields it touched.
    pub fields: Vec<String>,
}

/// A comment left with a review decision.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ReviewComment {
    /// Who wrote it.
    pub by: String,
    /// When.
    pub at_ms: i64,
    /// What it says.
    pub text: String,
}

/// Why the server refused a record's changes (they stay on the tablet).
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Rejection {
    /// The server's code (`Forbidden`, `InvalidRecord`, ...).
    pub code: String,
    /// The rule broken, when a rule refused it (`own_areas`).
    pub rule: Option<String>,
    /// The server's explanation.
    pub message: String,
}

impl From<sdk::Rejection> for Rejection {
    fn from(r: sdk::Rejection) -> Rejection {
        Rejection {
            code: r.code,
            rule: r.rule,
            message: r.message,
        }
    }
}

/// A record read whole.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct RecordView {
    /// The record id.
    pub id: String,
    /// Its kind; None for a document without a readable header.
    pub kind: Option<RecordKind>,
    /// The area it is filed under.
    pub area: String,
    /// Who created it.
    pub created_by_user: String,
    /// The device it was created on (hex).
    pub created_by_device: String,
    /// When it was created, by the creating device's clock.
    pub created_at_ms: i64,
    /// Every field, by name.
    pub fields: Vec<FieldView>,
    /// Fields devices set differently, each value with who and when.
    pub conflicts: Vec<Conflict>,
    /// Every change, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Where it stands in review.
    pub review_state: ReviewState,
    /// Reviewers' comments, oldest first.
    pub review_comments: Vec<ReviewComment>,
    /// True while the server has not acknowledged every change.
    pub unacknowledged: bool,
    /// Set when the server refused its changes.
    pub rejection: Option<Rejection>,
}

/// A record in a listing.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RecordSummary {
    /// The record id.
    pub id: String,
    /// Its kind; None for a document without a readable header.
    pub kind: Option<RecordKind>,
    /// The area.
    pub area: String,
    /// What names it (a meeting's title, a patrol note's beat, ...).
    pub title: String,
    /// Where it stands in review.
    pub review_state: ReviewState,
    /// True when the server acknowledged every change.
    pub synced: bool,
    /// True when the server refused its changes.
    pub refused: bool,
    /// When it was created, 0 if unknown.
    pub created_at_ms: i64,
}

impl From<sdk::Summary> for RecordSummary {
    fn from(s: sdk::Summary) -> RecordSummary {
        RecordSummary {
            id: s.id,
            kind: RecordKind::parse(&s.kind),
            area: s.area,
            title: s.title,
            review_state: s.review_state.into(),
            synced: s.synced,
            refused: s.refused,
            created_at_ms: s.created_at_ms,
        }
    }
}

/// Which local records to list; every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, uniffi::Record)]
pub struct RecordFilter {
    /// Only this kind.
    #[uniffi(default = None)]
    pub kind: Option<RecordKind>,
    /// Only this area.
    #[uniffi(default = None)]
    pub area: Option<String>,
    /// Only this review state.
    #[uniffi(default = None)]
    pub review_state: Option<ReviewState>,
    /// Only records with changes the server has not acknowledged.
    #[uniffi(default = false)]
    pub unsynced_only: bool,
    /// Only records whose title contains this (ignoring case).
    #[uniffi(default = None)]
    pub title_contains: Option<String>,
}

impl RecordFilter {
    pub(crate) fn accepts(&self, s: &RecordSummary) -> bool {
        self.kind.is_none_or(|k| s.kind == Some(k))
            && self.area.as_ref().is_none_or(|a| &s.area == a)
            && self.review_state.is_none_or(|r| s.review_state == r)
            && (!self.unsynced_only || !s.synced)
            && self
                .title_contains
                .as_ref()
                .is_none_or(|t| s.title.to_lowercase().contains(&t.to_lowercase()))
    }
}

/// A GPS point: decimal degrees and whole metres.
#[derive(Clone, Copy, Debug, PartialEq, uniffi::Record)]
pub struct GpsPoint {
    /// Latitude, -90..=90.
    pub lat: f64,
    /// Longitude, -180..=180.
    pub lon: f64,
    /// Accuracy in metres, at least 1.
    pub accuracy_m: i64,
}

/// A record the server refused, as `status` lists it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct RefusedRecord {
    /// The record id.
    pub id: String,
    /// Why.
    pub rejection: Rejection,
}

/// The tablet's local state of sync.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct TabletStatus {
    /// Records held.
    pub records: u64,
    /// Records with changes the server has not acknowledged.
    pub unacknowledged: u64,
    /// Records the server refused, with why.
    pub refused: Vec<RefusedRecord>,
    /// When the last sync settled.
    pub last_sync_ms: Option<u64>,
    /// The feed position received up to.
    pub cursor: u64,
    /// The server enrolled with.
    pub server: Option<String>,
    /// This tablet's device id (hex), once enrolled.
    pub device_id: Option<String>,
    /// The user new records are filed under.
    pub user: Option<String>,
    /// The area new records are filed under.
    pub area: String,
}

/// What a wipe removed.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct WipeReport {
    /// `retired` or `revoked`.
    pub reason: String,
    /// Every record id that was on the tablet.
    pub records: Vec<String>,
    /// Of those, the ones the server never acknowledged.
    pub unacknowledged: Vec<String>,
}

impl From<sdk::WipeReport> for WipeReport {
    fn from(r: sdk::WipeReport) -> WipeReport {
        WipeReport {
            reason: r.reason,
            records: r.records,
            unacknowledged: r.unacknowledged,
        }
    }
}

/// What enrolment gave this tablet.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Enrolment {
    /// The device id (hex).
    pub device_id: String,
    /// The user.
    pub user: String,
    /// Their role (`officer`, `liaison`, `supervisor`, `admin`).
    pub role: String,
    /// Their areas; new records go to the first.
    pub areas: Vec<String>,
    /// When the token expires (the SDK rotates it at half its life).
    pub expires_at_ms: Option<u64>,
    /// True when this store's own device was enrolled again.
    pub reenrolled: bool,
}

impl From<sdk::Enrolment> for Enrolment {
    fn from(e: sdk::Enrolment) -> Enrolment {
        Enrolment {
            device_id: e.device_id,
            user: e.user,
            role: e.role,
            areas: e.areas,
            expires_at_ms: e.expires_at.map(|s| s.saturating_mul(1000)),
            reenrolled: e.reenrolled,
        }
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq, uniffi::Record)]
pub struct SyncSummary {
    /// Records pushed to the server.
    pub records_sent: u64,
    /// Records the server sent changes for.
    pub records_received: u64,
    /// Records the server refused (their changes stay on the tablet).
    pub refused: u64,
    /// Records still waiting for the server's acknowledgement.
    pub unacknowledged: u64,
    /// How long the sync itself took, in microseconds, from connecting to
    /// the last acknowledgement (what reaching the app took is not in it).
    pub elapsed_us: u64,
    /// Attachments the upload pass after the records left whole on the
    /// server.
    pub attachments_uploaded: u64,
    /// Attachments still queued: their record had not reached the server,
    /// or the upload pass failed (it does not fail the sync); the next
    /// sync or the background sync tries again.
    pub attachments_waiting: u64,
    /// Attachments the server refused in this pass; each stays on the
    /// tablet with its reason ([`UploadState::Refused`]).
    pub attachments_refused: u64,
}

impl From<sdk::SyncReport> for SyncSummary {
    fn from(r: sdk::SyncReport) -> SyncSummary {
        SyncSummary {
            records_sent: r.docs_sent,
            records_received: r.docs_received,
            refused: r.refused,
            unacknowledged: r.unacknowledged,
            elapsed_us: u64::try_from(r.elapsed.as_micros()).unwrap_or(u64::MAX),
            attachments_uploaded: r.attachments.uploaded,
            attachments_waiting: r.attachments.waiting,
            attachments_refused: r.attachments.refused,
        }
    }
}

/// Where an attachment's upload stands. An enum rather than a string so
/// an app's `when`/`switch` is checked for every state, and a refusal
/// carries its reason.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum UploadState {
    /// Attached on this tablet; queued for the next upload pass.
    Pending,
    /// The server holds the bytes whole.
    Uploaded,
    /// The server refused the bytes. They stay on the tablet until the
    /// app deletes the attachment (`delete_attachment`).
    Refused {
        /// The server's code (`over_limit`, `not_writable`,
        /// `not_its_bytes`).
        code: String,
        /// The limit broken, for `over_limit` (`size_max_bytes`,
        /// `record_max_bytes`, `mime_allowed`).
        limit: Option<String>,
        /// The server's words.
        message: String,
    },
    /// Attached on another device: fetched on request
    /// (`fetch_attachment`), never uploaded from here.
    Remote,
}

impl From<sdk::UploadState> for UploadState {
    fn from(state: sdk::UploadState) -> UploadState {
        match state {
            sdk::UploadState::Pending => UploadState::Pending,
            sdk::UploadState::Uploaded => UploadState::Uploaded,
            sdk::UploadState::Refused {
                code,
                limit,
                message,
            } => UploadState::Refused {
                code,
                limit,
                message,
            },
            sdk::UploadState::Remote => UploadState::Remote,
        }
    }
}

/// One attachment of a record (a photo, a recording, a scanned page):
/// the reference the record holds, flattened, with what this tablet holds
/// of its bytes and where its upload stands.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct AttachmentInfo {
    /// The record's attachment list it is in (`photos`, `audio`,
    /// `attendance_sheet`, `documents`).
    pub field: String,
    /// Its SHA-256 (64 lowercase hex digits): how the calls name it.
    pub sha256: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its media type (`image/jpeg`).
    pub mime: String,
    /// The name it was attached under (a file name).
    pub name: String,
    /// When it was attached, by the attaching device's clock.
    pub created_at_ms: i64,
    /// The user who attached it.
    pub created_by: String,
    /// Bytes of it on this tablet (less than `size_bytes` while a fetch
    /// is under way or was cut).
    pub held_bytes: u64,
    /// True when all its bytes are on this tablet, checked against the
    /// digest: `attachment_bytes` returns them without the network.
    pub complete: bool,
    /// Where its upload stands.
    pub upload: UploadState,
}

impl AttachmentInfo {
    /// An attachment as the tablet holds it: its reference, flattened.
    pub(crate) fn new(
        reference: sdk::AttachmentRef,
        held_bytes: u64,
        complete: bool,
        upload: UploadState,
    ) -> AttachmentInfo {
        AttachmentInfo {
            field: reference.field,
            sha256: reference.sha256,
            size_bytes: reference.size_bytes,
            mime: reference.mime,
            name: reference.name,
            created_at_ms: reference.created_at_ms,
            created_by: reference.created_by,
            held_bytes,
            complete,
            upload,
        }
    }
}

impl From<sdk::Attachment> for AttachmentInfo {
    fn from(a: sdk::Attachment) -> AttachmentInfo {
        AttachmentInfo::new(a.reference, a.held_bytes, a.complete, a.upload.into())
    }
}

/// What one upload pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, uniffi::Record)]
pub struct UploadSummary {
    /// Attachments the server now holds whole.
    pub uploaded: u64,
    /// Attachments still queued (their record has not reached the server
    /// yet: sync first).
    pub waiting: u64,
    /// Attachments the server refused (kept on the tablet with why).
    pub refused: u64,
    /// Bytes of chunks sent.
    pub bytes_sent: u64,
}

impl From<sdk::UploadReport> for UploadSummary {
    fn from(r: sdk::UploadReport) -> UploadSummary {
        UploadSummary {
            uploaded: r.uploaded,
            waiting: r.waiting,
            refused: r.refused,
            bytes_sent: r.bytes_sent,
        }
    }
}

/// A progress event of a sync, for a progress bar and a status line.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum SyncProgress {
    /// Connecting (attempt number, from 1).
    Connecting {
        /// Attempt number.
        attempt: u32,
    },
    /// Connected; the server is answering.
    Connected,
    /// Uploading: records still to push, records pushed, bytes sent.
    ToSend {
        /// Records not yet pushed.
        records_to_send: u64,
        /// Records pushed so far.
        records_sent: u64,
        /// Bytes sent so far on this connection.
        bytes_sent: u64,
    },
    /// Downloading: records changed on the server since the last sync
    /// (an upper bound: feed positions), records received, bytes.
    ToReceive {
        /// Records to receive, at most.
        records_to_receive: u64,
        /// Records received so far.
        records_received: u64,
        /// Bytes received so far on this connection.
        bytes_received: u64,
        /// The bytes this connection is expected to receive in all, an
        /// estimate from the mean size of the records so far; `None`
        /// until a record has arrived.
        bytes_expected: Option<u64>,
        /// Time left at this connection's rate so far, for "about a
        /// minute left"; `None` while `bytes_expected` is.
        receive_ms_left: Option<u64>,
    },
    /// Everything local acknowledged, everything remote received.
    Done {
        /// What the sync did.
        summary: SyncSummary,
    },
    /// The connection failed; the background sync retries after the
    /// delay (with backoff and jitter), without waiting for an edit.
    Error {
        /// What failed.
        message: String,
        /// Delay before the next attempt.
        retry_in_ms: u64,
    },
    /// The server refused the device: background sync stopped.
    /// `reason_code` as in [`TabletError::Unauthorised`](crate::TabletError).
    Stopped {
        /// A stable code (`expired`, `unknown_token`, ...).
        reason_code: String,
        /// What the server said.
        message: String,
    },
    /// The device was retired or revoked and its store wiped: background
    /// sync stopped.
    Wiped {
        /// What was wiped.
        report: WipeReport,
    },
    /// Bytes of an attachment moved, for a progress bar per attachment.
    Attachment {
        /// The record it belongs to.
        record: String,
        /// Its digest.
        sha256: String,
        /// True for an upload, false for a download.
        upload: bool,
        /// Bytes the server (upload) or the tablet (download) holds.
        done: u64,
        /// Its size.
        total: u64,
    },
    /// The server refused an attachment; it stays on the tablet with the
    /// reason until the app deletes it.
    AttachmentRefused {
        /// The record it belongs to.
        record: String,
        /// Its digest.
        sha256: String,
        /// The server's code (`over_limit`, `not_writable`, ...).
        code: String,
        /// The limit broken, for `over_limit`.
        limit: Option<String>,
        /// The server's words.
        message: String,
    },
}
