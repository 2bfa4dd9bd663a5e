//! What goes into and comes out of a [`ServerDriver`](super::ServerDriver).

use std::time::Duration;

use crate::limits::Limits;
use crate::message::*;
use crate::tally::RecordTally;

/// How a server runs its sessions.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The protocol's limits.
    pub limits: Limits,
    /// The store's id, named in every welcome.
    pub store: StoreId,
    /// A session that heard nothing from its device for this long, and
    /// owes it nothing, is closed. Longer than the SDK's own idle time,
    /// after which a quiet tablet pings.
    pub idle: Duration,
    /// Feed entries per [`Task::ReadFeed`].
    pub feed_batch: usize,
    /// Records listed by name per direction in the session's audit entry
    /// (all are counted).
    pub records_listed_max: usize,
}

/// What the server knows of a connection when it opens.
#[derive(Clone, Debug)]
pub struct Opening {
    /// The durable feed position now.
    pub durable: Seq,
    /// The user's scope changed since this device last caught up: the
    /// feed goes out again from the start.
    pub refeed: bool,
    /// The device's standing now.
    pub standing: Standing,
    /// The device's own id and registered name, sent right after the
    /// welcome to a client that asks for names.
    pub own_name: Option<DeviceName>,
}

/// The standing of the device a session acts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// In good standing.
    Active,
    /// Being retired: asked once to upload, wipe and say goodbye.
    Retiring,
    /// Reported lost or stolen: cut at once with `revoked`.
    Revoked,
    /// Its token no longer authenticates (expired, replaced, retired):
    /// cut with `forbidden`.
    TokenInvalid,
    /// The user's role or areas changed: the session ends once pending
    /// writes are answered, and the device reconnects under its new scope.
    ScopeChanged,
}

/// Names one write handed to storage, for its [`Commit`]. Counted per
/// driver, so a seeded run numbers its writes the same way every time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteId(pub(super) u64);

/// Storage work the driver asks for. Carry out every task, in order,
/// before feeding the driver anything else.
#[derive(Debug)]
pub enum Task {
    /// Judge a push on a fork of the document (target, limits, apply,
    /// schema and rules); commit it only if admitted; answer with
    /// [`ServerDriver::handle_commit`](super::ServerDriver::handle_commit).
    Admit(PushWrite),
    /// Load (a fork of) the document, pass the message to
    /// [`ServerDriver::apply_sync`](super::ServerDriver::apply_sync), then
    /// judge and commit what it added as for a push, and answer with
    /// [`ServerDriver::handle_commit`](super::ServerDriver::handle_commit).
    Sync {
        /// The write to answer.
        write: WriteId,
        /// The device's sync message.
        msg: SyncMsg,
    },
    /// Read the caller's view of the feed: call
    /// [`ServerDriver::handle_feed`](super::ServerDriver::handle_feed).
    ReadFeed(FeedRead),
    /// The welcome went out: start a repair
    /// ([`ServerDriver::start_sync`](super::ServerDriver::start_sync) from
    /// an empty document) for every damaged record the caller may read.
    OfferRepairs,
    /// The device caught up to the welcome under the user's current
    /// scope: note that scope against the device (if it differs), so a
    /// later change refeeds it.
    NoteScope,
    /// The retiring device reported its store wiped: mark it retired.
    MarkRetired {
        /// The device's own report.
        report: String,
    },
}

/// A push to admit, as [`Task::Admit`] carries it.
#[derive(Debug, Clone)]
pub struct PushWrite {
    /// The write to answer.
    pub write: WriteId,
    /// The document.
    pub doc: DocId,
    /// The heads the device believes the server holds.
    pub base: Vec<Head>,
    /// The device's heads after its changes.
    pub heads: Vec<Head>,
    /// The changes, parsed and held to the per-message operation limit.
    pub changes: Vec<automerge::Change>,
    /// Their size in bytes, for the document size limit.
    pub bytes: usize,
    /// Operations they hold, for the document's operation limit.
    pub ops: usize,
}

/// A feed read: entries with `after < seq <= upto`, at most `limit` per
/// read. `upto` is the durable watermark when the read was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedRead {
    /// What the device was sent up to.
    pub after: Seq,
    /// The watermark: no read goes past it.
    pub upto: Seq,
    /// Entries per read.
    pub limit: usize,
}

/// How a write ended, as storage reports it.
#[derive(Debug)]
pub enum Commit {
    /// Admitted and durable (or nothing new to store): the device gets the
    /// reply and its ack.
    Stored {
        /// The server's heads after the write, all durable.
        heads: Vec<Head>,
        /// For a push: changes the device lacks (empty for a sync write).
        reply: Vec<u8>,
        /// The feed position the heads are durable at.
        seq: Seq,
        /// The push assumed a base the server lacks (the caller started
        /// a sync for it while admitting).
        base_missing: bool,
        /// Names of the authors in `reply` the device was not told yet
        /// (from [`ServerDriver::unnamed_devices`](super::ServerDriver::unnamed_devices)).
        names: Vec<DeviceName>,
        /// The write stored something new (counted in the audit).
        changed: bool,
    },
    /// Not admitted: nothing was stored, the live document is unchanged.
    Refused(Refusal),
    /// Admitted but not stored (the storage failed): nothing acknowledged.
    /// The caller drops its cached copy of the document, which may hold
    /// the write the store does not.
    Failed {
        /// What failed, for the device.
        message: String,
    },
    /// Carried out with nothing to tell the device (a repair still
    /// collecting the device's changes).
    NoAck,
}

/// Why a write was refused, as the device is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// The access rule broken, if a rule refused it (the code is then
    /// `forbidden`).
    pub rule: Option<String>,
    /// The explanation, naming the record and field or actor.
    pub message: String,
}

/// Entries for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditEvent {
    /// The session ended: the `sync` entry.
    SessionEnded(SyncSummary),
    /// A retiring device reported its store wiped.
    DeviceRetired {
        /// The device's own report.
        report: String,
    },
}

/// What a session did, bounded, for its audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSummary {
    /// Frames received from the device.
    pub frames_received: u64,
    /// Records stored for the device, with their heads (the first ones),
    /// and how many in all.
    pub received: RecordTally,
    /// Records sent to the device, likewise.
    pub sent: RecordTally,
    /// What the device was sent up to in the feed.
    pub feed_position: Seq,
    /// Why the session ended (None while it runs).
    pub reason: Option<CloseReason>,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing heard from the device for the idle time. No frame says so:
    /// close the socket (WebSocket close 1000).
    Idle,
    /// The device was revoked; the `revoked` frame is queued.
    Revoked,
    /// The device's token stopped authenticating; a `forbidden` frame is
    /// queued.
    TokenInvalid,
    /// The user's scope changed: reconnecting refeeds under the new one.
    ScopeChanged,
    /// The retiring device said goodbye after wiping.
    Retired,
    /// The device broke the protocol or ended it with a fatal error; the
    /// error frame, where one is due, is queued.
    Protocol(String),
    /// The feed could not be read.
    FeedFailed,
    /// The socket closed.
    Disconnected,
    /// The server is shutting down (WebSocket close 1001).
    Shutdown,
}

impl DriverConfig {
    /// A quiet session is closed after this long (pings keep it open).
    pub const IDLE_DEFAULT: Duration = Duration::from_secs(5 * 60);
    /// Feed entries per read, so a long catch-up does not hold the store.
    pub const FEED_BATCH_DEFAULT: usize = 256;

    /// Defaults for a store.
    pub fn new(limits: Limits, store: StoreId) -> Self {
        DriverConfig {
            limits,
            store,
            idle: Self::IDLE_DEFAULT,
            feed_batch: Self::FEED_BATCH_DEFAULT,
            records_listed_max: RecordTally::CAP_DEFAULT,
        }
    }
}
