//! The sans-IO sync session: both ends of one connection.
//!
//! A session never touches a socket, a disk or a clock. Frames go in through
//! `handle_frame`; what the driver must do comes out as events; frames to
//! send come out of `poll_transmit`. Documents are passed in by the driver
//! when the session needs to read or change one, so the same session runs
//! over sled on the server, over the tablet's store, and over plain memory
//! in the simulator tests.
//!
//! Call order for both types: create, then loop { `handle_frame` for each
//! received frame and act on the events; call the `*_applied` / `send_*`
//! methods as the driver's work completes; drain `poll_transmit` }.
//! Stop when `is_closed` says so.

use std::collections::{HashMap, HashSet, VecDeque};

use automerge::sync::{self, SyncDoc};
use automerge::Automerge;
use serde_bytes::ByteBuf;

use crate::codec::{self, CodecError};
use crate::docsync::{self, ApplyError};
use crate::limits::Limits;
use crate::message::*;

/// A fault that ends the session. The error frame telling the peer (where
/// there is one) is already queued when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer sent a frame we could not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The peer speaks a protocol version we do not.
    #[error("protocol version {got} is not supported; supported versions: {supported:?}")]
    UnsupportedVersion {
        /// What the peer asked for.
        got: u32,
        /// What we speak.
        supported: &'static [u32],
    },
    /// A message that is not allowed at this point of the session.
    #[error("unexpected {0} message at this point of the session")]
    Unexpected(&'static str),
    /// Change messages before a cursor went missing.
    #[error("cursor follows {expected} change messages but only {got} arrived in order")]
    Gap {
        /// Messages the cursor vouches for.
        expected: u64,
        /// Messages received without a gap.
        got: u64,
    },
    /// The peer reported a fatal error.
    #[error("peer closed the session: {code:?}: {message}")]
    Peer {
        /// The peer's reason code.
        code: ErrorCode,
        /// The peer's explanation.
        message: String,
    },
}

/// Everything a session keeps between frames that both roles share.
#[derive(Debug)]
struct Wire {
    limits: Limits,
    outgoing: VecDeque<Vec<u8>>,
    closed: bool,
}

impl Wire {
    fn new(limits: Limits) -> Self {
        Wire {
            limits,
            outgoing: VecDeque::new(),
            closed: false,
        }
    }

    fn send(&mut self, message: &Message) {
        // Our own types always encode; if one ever did not, dropping the frame
        // is safe: every message is re-derivable from state at the next sync.
        if let Ok(frame) = codec::encode(message) {
            self.outgoing.push_back(frame);
        }
    }

    fn send_error(&mut self, code: ErrorCode, doc: Option<DocId>, message: String, fatal: bool) {
        self.send_error_rule(code, doc, message, fatal, None);
    }

    fn send_error_rule(
        &mut self,
        code: ErrorCode,
        doc: Option<DocId>,
        message: String,
        fatal: bool,
        rule: Option<String>,
    ) {
        self.send(&Message::Error(ErrorMsg {
            code,
            doc,
            message,
            fatal,
            rule,
        }));
        if fatal {
            self.closed = true;
        }
    }

    /// Decodes a frame, answering a decode failure with an error frame. A
    /// frame that is too large, not CBOR, or shaped past the codec's bounds
    /// (only a hostile or broken peer builds one) cannot be trusted to be
    /// followed by well-formed ones, so those close the session; an unknown
    /// type or a known type with bad fields is refused alone, and a push
    /// with too many changes is refused for its document alone, as any
    /// other refused push is.
    fn decode(&mut self, frame: &[u8]) -> Result<Option<Message>, SessionError> {
        match codec::decode(frame, &self.limits) {
            Ok(m) => Ok(Some(m)),
            Err(err) => {
                let (code, doc, fatal) = match &err {
                    CodecError::TooLarge { .. } => (ErrorCode::FrameTooLarge, None, true),
                    CodecError::MalformedCbor(_) | CodecError::TooComplex { .. } => {
                        (ErrorCode::MalformedFrame, None, true)
                    }
                    CodecError::TooManyChanges { doc, .. } => {
                        (ErrorCode::TooManyChanges, *doc, false)
                    }
                    CodecError::UnknownType(_) => (ErrorCode::UnknownMessageType, None, false),
                    CodecError::Invalid { .. } | CodecError::Encode(_) => {
                        (ErrorCode::MalformedFrame, None, false)
                    }
                };
                self.send_error(code, doc, err.to_string(), fatal);
                if fatal {
                    Err(SessionError::Codec(err))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn unexpected(&mut self, kind: &'static str) -> SessionError {
        self.send_error(
            ErrorCode::UnexpectedMessage,
            None,
            format!("unexpected {kind} message at this point of the session"),
            true,
        );
        SessionError::Unexpected(kind)
    }
}

/// Per-document automerge sync states for the fallback path. Kept only for
/// the life of a connection: a live `sync::State` reused across a dropped
/// message can stall, so every connection starts them afresh.
#[derive(Debug, Default)]
struct Fallback {
    states: HashMap<DocId, sync::State>,
    /// Set on the server: what arrives comes from devices and is checked
    /// chunk by chunk (no compressed chunks, no whole documents, operations
    /// within the limit), and what goes out advertises no capabilities, so
    /// devices answer with plain changes (automerge's v1 messages) rather
    /// than compressed saves that could not be checked before inflating.
    from_devices: bool,
}

impl Fallback {
    fn outgoing(&self, id: DocId, mut msg: sync::Message) -> Message {
        if self.from_devices {
            msg.flags = None;
        }
        Message::Sync(SyncMsg {
            doc: id,
            data: ByteBuf::from(msg.encode()),
        })
    }

    fn start(&mut self, wire: &mut Wire, id: DocId, doc: &Automerge) {
        let state = self.states.entry(id).or_default();
        if let Some(msg) = doc.generate_sync_message(state) {
            let out = self.outgoing(id, msg);
            wire.send(&out);
        }
    }

    /// Applies one sync message and queues our answer. Returns whether the
    /// document changed, and whether this side has nothing more to say.
    fn receive(
        &mut self,
        wire: &mut Wire,
        id: DocId,
        doc: &mut Automerge,
        data: &[u8],
    ) -> Result<(bool, bool), ApplyError> {
        let msg = if self.from_devices {
            let (msg, changes) = docsync::parse_device_sync(data, wire.limits.ops_per_message_max)?;
            docsync::contained(|| docsync::check_counters(doc, &changes))?;
            msg
        } else {
            sync::Message::decode(data).map_err(|e| ApplyError::Corrupt(e.to_string()))?
        };
        let state = self.states.entry(id).or_default();
        let before = doc.get_heads();
        docsync::contained(|| {
            doc.receive_sync_message(state, msg)
                .map_err(|e| ApplyError::Corrupt(e.to_string()))
        })?;
        let changed = doc.get_heads() != before;
        let reply = docsync::contained(|| Ok(doc.generate_sync_message(state)))?;
        let done = match reply {
            Some(reply) => {
                let out = self.outgoing(id, reply);
                wire.send(&out);
                false
            }
            None => true,
        };
        if done {
            self.states.remove(&id);
        }
        Ok((changed, done))
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// What the client driver must act on.
#[derive(Debug, PartialEq)]
pub enum ClientEvent {
    /// The server accepted the hello. On `reset`, the driver forgets its
    /// cursor and what it believed the server holds, and pushes everything.
    Welcomed {
        /// The server's store id, to keep with the cursor.
        store: StoreId,
        /// True when the client must re-offer all it holds.
        reset: bool,
    },
    /// Apply these bytes to the document, then call
    /// [`ClientSession::changes_applied`].
    Changes(Changes),
    /// These heads of the document are durable on the server.
    Acked {
        /// The document.
        doc: DocId,
        /// Durable heads.
        heads: Vec<Head>,
    },
    /// Load the document and pass it with the bytes to
    /// [`ClientSession::receive_sync`].
    Sync(SyncMsg),
    /// The feed position reached; persist it once everything before it is
    /// stored locally.
    Cursor(Seq),
    /// The server refused something about one document (or, with no
    /// document, about one message); the session goes on.
    Refused {
        /// The document, if the refusal is about one.
        doc: Option<DocId>,
        /// Why.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// The access rule broken, if the refusal is by a rule.
        rule: Option<String>,
    },
    /// The server asks this device to retire: push what is not
    /// acknowledged, then wipe (see [`ClientSession::goodbye`]).
    RetireRequested,
    /// The names of devices whose changes follow (or came before): keep
    /// them to show who made a change.
    DeviceNames(Vec<DeviceName>),
}

/// Counts a sync reports as progress and at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// Distinct documents pushed to the server.
    pub docs_sent: usize,
    /// Distinct documents for which the server sent changes.
    pub docs_received: usize,
    /// Distinct documents touched by this session either way.
    pub docs_reconciled: usize,
    /// Pushes acknowledged durable.
    pub acks: usize,
    /// Refusals received.
    pub refusals: usize,
    /// Documents whose changes arrived without their base, so the sync
    /// protocol had to repair them. Zero in a healthy sync.
    pub repairs: usize,
}

#[derive(Debug)]
enum ClientPhase {
    WaitingForWelcome,
    Established { welcome_seq: Seq },
}

/// The tablet's end of a connection.
#[derive(Debug)]
pub struct ClientSession {
    wire: Wire,
    phase: ClientPhase,
    cursor: Seq,
    in_flight: HashMap<DocId, Vec<Head>>,
    fallback: Fallback,
    touched: HashSet<DocId>,
    sent: HashSet<DocId>,
    received: HashSet<DocId>,
    counts: SyncCounts,
    /// Every `Changes` numbered up to here has arrived.
    changes_contiguous: u64,
    /// Numbers above `changes_contiguous` that arrived early.
    changes_early: std::collections::BTreeSet<u64>,
    /// The highest feed position an ack named: the cursor must reach it
    /// before the session is settled.
    acked_seq: Seq,
}

impl ClientSession {
    /// Starts a session; the hello is queued at once. `store` and `cursor`
    /// are what the client persisted from its last sync (None and 0 if it
    /// never synced).
    pub fn new(limits: Limits, store: Option<StoreId>, cursor: Seq) -> Self {
        let mut wire = Wire::new(limits);
        wire.send(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            store,
            cursor,
            names: true,
        }));
        ClientSession {
            wire,
            phase: ClientPhase::WaitingForWelcome,
            cursor,
            in_flight: HashMap::new(),
            fallback: Fallback::default(),
            touched: HashSet::new(),
            sent: HashSet::new(),
            received: HashSet::new(),
            counts: SyncCounts::default(),
            changes_contiguous: 0,
            changes_early: Default::default(),
            acked_seq: 0,
        }
    }

    /// Takes the next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.wire.outgoing.pop_front()
    }

    fn note_changes_number(&mut self, n: u64) {
        if n <= self.changes_contiguous {
            return;
        }
        self.changes_early.insert(n);
        while self.changes_early.remove(&(self.changes_contiguous + 1)) {
            self.changes_contiguous += 1;
        }
    }

    /// True once the session has failed or was closed by the server.
    pub fn is_closed(&self) -> bool {
        self.wire.closed
    }

    /// How many more pushes may be started now.
    pub fn push_capacity(&self) -> usize {
        if matches!(self.phase, ClientPhase::WaitingForWelcome) {
            return 0;
        }
        self.wire
            .limits
            .pushes_in_flight_max
            .saturating_sub(self.in_flight.len())
    }

    /// Documents being repaired through the sync protocol. While any is
    /// open the driver must not persist a cursor: the cursor would vouch for
    /// changes the repair has not delivered yet.
    pub fn repairs_open(&self) -> usize {
        self.fallback.states.len()
    }

    /// True when this document has a push awaiting its acknowledgement.
    pub fn is_in_flight(&self, doc: DocId) -> bool {
        self.in_flight.contains_key(&doc)
    }

    /// Counts so far.
    pub fn counts(&self) -> SyncCounts {
        let mut c = self.counts.clone();
        c.docs_reconciled = self.touched.len();
        c.docs_sent = self.sent.len();
        c.docs_received = self.received.len();
        c
    }

    /// True when every push was acknowledged, no fallback exchange is open
    /// and the client has received the feed up to where it stood at the hello.
    pub fn is_settled(&self) -> bool {
        match self.phase {
            ClientPhase::WaitingForWelcome => false,
            ClientPhase::Established { welcome_seq } => {
                self.in_flight.is_empty()
                    && self.fallback.states.is_empty()
                    && self.cursor >= welcome_seq.max(self.acked_seq)
            }
        }
    }

    /// Offers the document's changes since `known` (the heads the server
    /// acknowledged before). Returns false if there was nothing to send, or
    /// the session cannot take pushes now.
    pub fn push(&mut self, id: DocId, doc: &Automerge, known: &[Head]) -> bool {
        if self.push_capacity() == 0 || self.in_flight.contains_key(&id) {
            return false;
        }
        let changes = docsync::changes_since(doc, known);
        if changes.is_empty() {
            return false;
        }
        // The longest run of changes (oldest first, so it is causally
        // closed) that fits the server's limits goes now; the rest follow
        // once it is acknowledged. A single change too large for a push
        // goes through the sync protocol, where the server judges it.
        let limits = &self.wire.limits;
        let (mut bytes, mut ops, mut fits) = (1024usize, 0usize, 0usize);
        for change in &changes {
            bytes += change.raw_bytes().len();
            ops += docsync::ops_in(change);
            if fits + 1 > limits.changes_per_message_max
                || bytes > limits.frame_bytes_max
                || ops > limits.ops_per_message_max
            {
                break;
            }
            fits += 1;
        }
        let heads = if fits == changes.len() {
            to_heads(&doc.get_heads())
        } else {
            prefix_heads(&changes[..fits])
        };
        if fits == 0 {
            let heads = to_heads(&doc.get_heads());
            self.fallback.start(&mut self.wire, id, doc);
            self.in_flight.insert(id, heads);
            self.touched.insert(id);
            self.sent.insert(id);
            return true;
        }
        self.wire.send(&Message::Push(Push {
            doc: id,
            base: known.to_vec(),
            heads: heads.clone(),
            changes: changes[..fits]
                .iter()
                .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
                .collect(),
        }));
        self.in_flight.insert(id, heads);
        self.touched.insert(id);
        self.sent.insert(id);
        true
    }

    /// Ends the session with a last word to the server (a retired device's
    /// report that it wiped its store).
    pub fn goodbye(&mut self, code: ErrorCode, message: String) {
        self.wire.send_error(code, None, message, true);
    }

    /// Feeds one received frame.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<Vec<ClientEvent>, SessionError> {
        let Some(message) = self.wire.decode(frame)? else {
            return Ok(Vec::new());
        };
        let mut events = Vec::new();
        match (&self.phase, message) {
            (ClientPhase::WaitingForWelcome, Message::Welcome(w)) => {
                if !SUPPORTED_VERSIONS.contains(&w.version) {
                    self.wire.closed = true;
                    return Err(SessionError::UnsupportedVersion {
                        got: w.version,
                        supported: SUPPORTED_VERSIONS,
                    });
                }
                if w.reset || w.refeed {
                    self.cursor = 0;
                }
                self.phase = ClientPhase::Established { welcome_seq: w.seq };
                events.push(ClientEvent::Welcomed {
                    store: w.store,
                    reset: w.reset,
                });
            }
            (_, Message::Error(e)) => {
                self.counts.refusals += 1;
                if e.fatal {
                    self.wire.closed = true;
                    return Err(SessionError::Peer {
                        code: e.code,
                        message: e.message,
                    });
                }
                if e.code == ErrorCode::Retired && e.doc.is_none() {
                    self.counts.refusals -= 1;
                    events.push(ClientEvent::RetireRequested);
                    return Ok(events);
                }
                if let Some(doc) = e.doc {
                    // The push is over: keeping it in flight would wait forever.
                    self.in_flight.remove(&doc);
                    self.fallback.states.remove(&doc);
                }
                events.push(ClientEvent::Refused {
                    doc: e.doc,
                    code: e.code,
                    message: e.message,
                    rule: e.rule,
                });
            }
            (ClientPhase::Established { .. }, Message::Changes(c)) => {
                self.note_changes_number(c.n);
                self.touched.insert(c.doc);
                self.received.insert(c.doc);
                events.push(ClientEvent::Changes(c));
            }
            (ClientPhase::Established { .. }, Message::Ack(a)) => {
                // The server acks a push only after applying it, so an ack ends
                // the push; the driver folds the heads into what it knows the
                // server holds and pushes again whatever is still not covered.
                self.in_flight.remove(&a.doc);
                self.acked_seq = self.acked_seq.max(a.seq);
                self.counts.acks += 1;
                events.push(ClientEvent::Acked {
                    doc: a.doc,
                    heads: a.heads,
                });
            }
            (ClientPhase::Established { .. }, Message::Sync(s)) => {
                self.touched.insert(s.doc);
                events.push(ClientEvent::Sync(s));
            }
            (ClientPhase::Established { .. }, Message::Devices(d)) => {
                // Bounded by the codec's array limit already; a server
                // sending more than it should is cut, not obeyed.
                let mut names = d.names;
                names.truncate(DevicesMsg::NAMES_MAX);
                events.push(ClientEvent::DeviceNames(names));
            }
            (ClientPhase::Established { .. }, Message::Cursor(c)) => {
                // A cursor is only true if every change message before it
                // arrived; if one went missing the connection is not to be
                // trusted, and the next one starts from the old cursor.
                if c.n > self.changes_contiguous {
                    self.wire.closed = true;
                    return Err(SessionError::Gap {
                        expected: c.n,
                        got: self.changes_contiguous,
                    });
                }
                if c.seq > self.cursor {
                    self.cursor = c.seq;
                    events.push(ClientEvent::Cursor(c.seq));
                }
            }
            (_, other) => return Err(self.wire.unexpected(other.kind())),
        }
        Ok(events)
    }

    /// Reports that a [`ClientEvent::Changes`] was applied. If the document
    /// still lacks some of the server's heads (the server assumed a base we
    /// do not have), the sync protocol takes over for that document.
    pub fn changes_applied(&mut self, id: DocId, doc: &Automerge, server_heads: &[Head]) {
        if !docsync::missing(doc, server_heads).is_empty() {
            self.counts.repairs += 1;
            self.fallback.start(&mut self.wire, id, doc);
        }
    }

    /// Ends a repair once an ack shows the server holds exactly this
    /// document's state. The sync protocol ends when one side has nothing
    /// more to say; if that side is the server, the client would otherwise
    /// wait for a message that never comes.
    pub fn repair_settled(&mut self, id: DocId, doc: &Automerge, acked: &[Head]) {
        if !self.fallback.states.contains_key(&id) {
            return;
        }
        let mut ours = to_heads(&doc.get_heads());
        let mut theirs = acked.to_vec();
        ours.sort();
        theirs.sort();
        if ours == theirs {
            self.fallback.states.remove(&id);
        }
    }

    /// Handles a [`ClientEvent::Sync`] against the loaded document. Returns
    /// true if the document changed (the driver must store it).
    pub fn receive_sync(
        &mut self,
        id: DocId,
        doc: &mut Automerge,
        data: &[u8],
    ) -> Result<bool, ApplyError> {
        self.fallback
            .receive(&mut self.wire, id, doc, data)
            .map(|(changed, _)| changed)
    }
}

/// The heads of a causally closed run of changes: those no other change of
/// the run depends on.
fn prefix_heads(changes: &[automerge::Change]) -> Vec<Head> {
    let depended: HashSet<automerge::ChangeHash> = changes
        .iter()
        .flat_map(|c| c.deps().iter().copied())
        .collect();
    to_heads(
        &changes
            .iter()
            .map(|c| c.hash())
            .filter(|h| !depended.contains(h))
            .collect::<Vec<_>>(),
    )
}

/// Bytes of a `Changes` frame besides its data and heads (type, numbers,
/// document id, CBOR headers), with room to spare.
const CHANGES_FRAME_OVERHEAD: usize = 256;

/// The error code a peer is told for bytes that could not be applied.
pub fn apply_error_code(err: &ApplyError) -> ErrorCode {
    match err {
        ApplyError::TooManyOps { .. } => ErrorCode::TooManyChanges,
        ApplyError::Corrupt(_) | ApplyError::Encoding(_) | ApplyError::Panicked(_) => {
            ErrorCode::CorruptChanges
        }
    }
}

/// Cuts a document's bytes into parts of at most `budget` bytes that each
/// apply on their own after the ones before: at chunk boundaries, and a
/// save too large for one frame is re-encoded as its changes. A single
/// change larger than the budget goes alone (pushes never admit one).
fn split_for_frames(data: Vec<u8>, budget: usize) -> Vec<Vec<u8>> {
    let Ok(chunks) = docsync::split_chunks(&data) else {
        return vec![data];
    };
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    for (kind, chunk) in chunks {
        if chunk.len() > budget && kind == docsync::ChunkKind::Document {
            match Automerge::load(chunk) {
                Ok(doc) => {
                    pieces.extend(doc.get_changes(&[]).iter().map(|c| c.raw_bytes().to_vec()))
                }
                Err(_) => pieces.push(chunk.to_vec()),
            }
        } else {
            pieces.push(chunk.to_vec());
        }
    }
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for piece in pieces {
        match parts.last_mut() {
            Some(part) if part.len() + piece.len() <= budget => part.extend_from_slice(&piece),
            _ => parts.push(piece),
        }
    }
    parts
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// What the server driver must act on.
#[derive(Debug)]
pub enum ServerEvent {
    /// A client said hello; answer with [`ServerSession::accept`].
    Hello(Hello),
    /// A push with its changes already parsed (corrupt ones never get here).
    /// Apply it durably, then call [`ServerSession::push_applied`] or
    /// [`ServerSession::refuse`].
    Push {
        /// The document.
        doc: DocId,
        /// The heads the client believes we hold.
        base: Vec<Head>,
        /// The client's heads after its changes.
        heads: Vec<Head>,
        /// The parsed changes.
        changes: Vec<automerge::Change>,
        /// Their size in bytes, for the document size limit.
        bytes: usize,
        /// Operations they hold once decoded, for the document's limit.
        ops: usize,
    },
    /// A sync-protocol message; load the document and call
    /// [`ServerSession::receive_sync`].
    Sync(SyncMsg),
}

/// The server's changes feed and documents, as catch-up reads them.
pub trait Feed {
    /// The store's failure type.
    type Error;
    /// Feed entries with `after < seq <= upto`, oldest first, at most `limit`:
    /// one per durable write.
    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, Self::Error>;
    /// The document as it is now, as the bytes a client lacks that holds it
    /// as of feed position `base` (its last write at or before `base`; the
    /// whole document when `base` is 0 or the document is newer); None if
    /// the document is unknown. A store that keeps each write's chunk by
    /// feed position answers with reads alone.
    fn changes_since(&mut self, doc: DocId, base: Seq) -> Result<Option<DocDelta>, Self::Error>;
    /// True if `doc`, which [`Feed::changes_since`] did not find, was
    /// erased and this client must be told to delete it.
    fn erased(&mut self, _doc: DocId) -> Result<bool, Self::Error> {
        Ok(false)
    }
    /// True if `doc`, which [`Feed::changes_since`] did not find, is held
    /// back (damaged or quarantined) and this client must be told so.
    fn quarantined(&mut self, _doc: DocId) -> Result<bool, Self::Error> {
        Ok(false)
    }
    /// The names of those of `devices` that have one, for a client that
    /// asked for names ([`Hello::names`]). Unknown devices are left out.
    fn device_names(&mut self, _devices: &[DeviceId]) -> Result<Vec<DeviceName>, Self::Error> {
        Ok(Vec::new())
    }
}

/// What catch-up sends of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocDelta {
    /// The document's heads in this state.
    pub heads: Vec<Head>,
    /// Chunk bytes the client lacks.
    pub data: Vec<u8>,
    /// A feed position this state includes every write up to: later feed
    /// entries for the document up to here need not be sent again.
    pub seq: Seq,
}

/// The result of applying a push, as the driver reports it back.
#[derive(Debug)]
pub struct PushOutcome {
    /// The server's heads after the push, all durable.
    pub heads: Vec<Head>,
    /// Changes the client lacks (what other devices added meanwhile).
    pub reply: Vec<u8>,
    /// The feed position the reply reflects; later feed entries for this
    /// document are still sent, earlier ones are skipped as already covered.
    pub seq: Seq,
    /// True if the push assumed a base we do not have: the driver must then
    /// call [`ServerSession::start_sync`] instead of relying on the reply.
    pub base_missing: bool,
}

#[derive(Debug)]
enum ServerPhase {
    WaitingForHello,
    WaitingForAccept,
    Established,
}

/// The server's end of a connection.
#[derive(Debug)]
pub struct ServerSession {
    wire: Wire,
    phase: ServerPhase,
    sent_seq: Seq,
    /// Documents whose push replies already carried the server's state up
    /// to the given feed position; the feed skips them up to there, so a
    /// device is not sent back its own changes.
    covered: HashMap<DocId, Seq>,
    fallback: Fallback,
    changes_sent: u64,
    /// Every document sent and the heads it was sent at, for the audit.
    sent_records: Vec<(DocId, Vec<Head>)>,
    welcome_seq: Seq,
    /// Set when the client's hello asked for device names.
    names_wanted: bool,
    /// Devices whose names this connection has looked up (found or not),
    /// so each is asked for and sent once per connection.
    named: HashSet<DeviceId>,
}

impl ServerSession {
    /// A session waiting for the client's hello.
    pub fn new(limits: Limits) -> Self {
        ServerSession {
            wire: Wire::new(limits),
            phase: ServerPhase::WaitingForHello,
            sent_seq: 0,
            covered: HashMap::new(),
            fallback: Fallback {
                states: HashMap::new(),
                from_devices: true,
            },
            changes_sent: 0,
            sent_records: Vec::new(),
            welcome_seq: 0,
            names_wanted: false,
            named: HashSet::new(),
        }
    }

    /// The devices whose changes `data` (chunks about to be sent) holds
    /// and whose names this client has not been sent yet: the driver looks
    /// them up and passes what it finds to
    /// [`ServerSession::send_device_names`] *before* sending `data`, so the
    /// names arrive ahead of the changes they describe. Empty unless the
    /// client asked for names. Each device is returned once per connection.
    pub fn unnamed_devices(&mut self, data: &[u8]) -> Vec<DeviceId> {
        if !self.names_wanted {
            return Vec::new();
        }
        docsync::chunk_actors(data)
            .iter()
            .filter_map(|actor| DeviceId::of_actor(actor))
            .filter(|device| self.named.insert(*device))
            .collect()
    }

    /// Sends device names (a client that did not ask gets nothing). Names
    /// longer than [`DevicesMsg::NAME_CHARS_MAX`] characters are cut; more
    /// than [`DevicesMsg::NAMES_MAX`] go in several messages.
    pub fn send_device_names(&mut self, names: Vec<DeviceName>) {
        if !self.names_wanted || names.is_empty() {
            return;
        }
        let names: Vec<DeviceName> = names
            .into_iter()
            .map(|n| {
                self.named.insert(n.device);
                DeviceName {
                    device: n.device,
                    name: n.name.chars().take(DevicesMsg::NAME_CHARS_MAX).collect(),
                }
            })
            .collect();
        for part in names.chunks(DevicesMsg::NAMES_MAX) {
            self.wire.send(&Message::Devices(DevicesMsg {
                names: part.to_vec(),
            }));
        }
    }

    fn send_changes_msg(&mut self, doc: DocId, heads: Vec<Head>, data: Vec<u8>) {
        self.sent_records.push((doc, heads.clone()));
        let budget = self
            .wire
            .limits
            .frame_bytes_max
            .saturating_sub(CHANGES_FRAME_OVERHEAD + 34 * heads.len());
        let parts = if data.len() <= budget {
            vec![data]
        } else {
            split_for_frames(data, budget)
        };
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.into_iter().enumerate() {
            self.changes_sent += 1;
            // Only the last part names the heads: a client that has applied
            // an earlier part lacks them, and would take that for a
            // missing base and start a repair.
            let heads = if i == last { heads.clone() } else { Vec::new() };
            self.wire.send(&Message::Changes(Changes {
                n: self.changes_sent,
                doc,
                heads,
                data: ByteBuf::from(part),
            }));
        }
    }

    /// Takes the next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.wire.outgoing.pop_front()
    }

    /// True once the connection should be closed (after sending what is queued).
    pub fn is_closed(&self) -> bool {
        self.wire.closed
    }

    /// True once the hello was accepted: the feed may be streamed.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, ServerPhase::Established)
    }

    /// Every document this connection sent changes of, with the heads
    /// they brought the client to, in order.
    pub fn sent_records(&self) -> &[(DocId, Vec<Head>)] {
        &self.sent_records
    }

    /// How many change messages this connection has sent.
    pub fn records_sent(&self) -> u64 {
        self.changes_sent
    }

    /// The feed position up to which this client has been sent everything.
    pub fn sent_seq(&self) -> Seq {
        self.sent_seq
    }

    /// Feeds one received frame.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<Vec<ServerEvent>, SessionError> {
        let Some(message) = self.wire.decode(frame)? else {
            return Ok(Vec::new());
        };
        match (&self.phase, message) {
            (ServerPhase::WaitingForHello, Message::Hello(hello)) => {
                if !SUPPORTED_VERSIONS.contains(&hello.version) {
                    let err = SessionError::UnsupportedVersion {
                        got: hello.version,
                        supported: SUPPORTED_VERSIONS,
                    };
                    self.wire.send_error(
                        ErrorCode::UnsupportedVersion,
                        None,
                        err.to_string(),
                        true,
                    );
                    return Err(err);
                }
                self.phase = ServerPhase::WaitingForAccept;
                Ok(vec![ServerEvent::Hello(hello)])
            }
            (ServerPhase::Established, Message::Push(push)) => Ok(self.check_push(push)),
            (ServerPhase::Established, Message::Sync(s)) => Ok(vec![ServerEvent::Sync(s)]),
            (_, Message::Error(e)) if e.fatal => {
                self.wire.closed = true;
                Err(SessionError::Peer {
                    code: e.code,
                    message: e.message,
                })
            }
            (_, Message::Error(_)) => Ok(Vec::new()),
            (_, other) => Err(self.wire.unexpected(other.kind())),
        }
    }

    /// Parses a push's changes. Their count was bounded while decoding
    /// (`CodecError::TooManyChanges`, refused in `Wire::decode`), before
    /// the array was built.
    fn check_push(&mut self, push: Push) -> Vec<ServerEvent> {
        let bytes = push.changes.iter().map(|c| c.len()).sum();
        match docsync::parse_changes(&push.changes, self.wire.limits.ops_per_message_max) {
            Ok((changes, ops)) => vec![ServerEvent::Push {
                doc: push.doc,
                base: push.base,
                heads: push.heads,
                changes,
                bytes,
                ops,
            }],
            Err(err) => {
                self.refuse(push.doc, apply_error_code(&err), err.to_string());
                Vec::new()
            }
        }
    }

    /// Answers the hello. `seq` is the feed's current position. A cursor
    /// from another store, or one ahead of ours (we lost writes we had
    /// acknowledged, which only a disk that ignored a flush can cause),
    /// resets the client so it offers everything it holds again.
    pub fn accept(&mut self, hello: &Hello, store: StoreId, seq: Seq) {
        self.accept_with(hello, store, seq, false);
    }

    /// [`ServerSession::accept`], sending the whole feed again when
    /// `refeed` (the client may now read what it could not before).
    pub fn accept_with(&mut self, hello: &Hello, store: StoreId, seq: Seq, refeed: bool) {
        let reset = (hello.cursor > 0 && hello.store != Some(store)) || hello.cursor > seq;
        let refeed = refeed && !reset && hello.cursor > 0;
        self.sent_seq = if reset || refeed { 0 } else { hello.cursor };
        self.welcome_seq = seq;
        self.names_wanted = hello.names;
        self.phase = ServerPhase::Established;
        self.wire.send(&Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            store,
            seq,
            reset,
            refeed,
        }));
    }

    /// The feed position the welcome named.
    pub fn welcome_seq(&self) -> Seq {
        self.welcome_seq
    }

    /// Refuses one document's push or sync message; the session goes on.
    pub fn refuse(&mut self, doc: DocId, code: ErrorCode, message: String) {
        self.wire.send_error(code, Some(doc), message, false);
    }

    /// Refuses one document's changes because they break an access rule.
    pub fn refuse_by_rule(&mut self, doc: DocId, rule: &str, message: String) {
        self.wire.send_error_rule(
            ErrorCode::Forbidden,
            Some(doc),
            message,
            false,
            Some(rule.to_string()),
        );
    }

    /// Tells the client, once, that the device is being retired: it
    /// uploads what the server lacks, wipes, and says goodbye.
    pub fn request_retirement(&mut self) {
        self.wire.send_error(
            ErrorCode::Retired,
            None,
            "this device is being retired: upload what is not acknowledged, then wipe".into(),
            false,
        );
    }

    /// Ends the session with a fatal error (the device was revoked).
    pub fn close_with(&mut self, code: ErrorCode, message: String) {
        self.wire.send_error(code, None, message, true);
    }

    /// Sends the reply to a push once it is durable.
    pub fn push_applied(&mut self, doc: DocId, outcome: PushOutcome) {
        if !outcome.reply.is_empty() {
            self.send_changes_msg(doc, outcome.heads.clone(), outcome.reply);
        }
        self.wire.send(&Message::Ack(Ack {
            doc,
            heads: outcome.heads,
            seq: outcome.seq,
        }));
        // A push whose base we lack got no reply: the feed must still send
        // this document.
        if !outcome.base_missing {
            let entry = self.covered.entry(doc).or_insert(0);
            *entry = (*entry).max(outcome.seq);
        }
    }

    /// Starts the sync protocol for a document whose base we lack.
    pub fn start_sync(&mut self, id: DocId, doc: &Automerge) {
        self.fallback.start(&mut self.wire, id, doc);
    }

    /// Applies a sync message to the loaded document and queues our answer.
    /// Returns true if the document changed; the driver stores it and then
    /// calls [`ServerSession::acknowledge`].
    pub fn receive_sync(
        &mut self,
        id: DocId,
        doc: &mut Automerge,
        data: &[u8],
    ) -> Result<bool, ApplyError> {
        self.fallback
            .receive(&mut self.wire, id, doc, data)
            .map(|(changed, _)| changed)
    }

    /// Tells the client these heads are durable as of feed position `seq`.
    pub fn acknowledge(&mut self, doc: DocId, heads: Vec<Head>, seq: Seq) {
        self.wire.send(&Message::Ack(Ack { doc, heads, seq }));
    }

    /// For a feed entry (document changed at `seq`), decides whether to send
    /// it and from which feed position the client's copy is known: `None`
    /// means skip (a push reply or an earlier entry already carried it).
    ///
    /// Why the base is right: the feed keeps every write, and a cursor `c`
    /// is only sent once every write up to `c` was sent or covered, so a
    /// client at `c` holds every document as of its last write at or
    /// before `c`.
    pub fn feed_base(&self, doc: DocId, seq: Seq) -> Option<Seq> {
        match self.covered.get(&doc) {
            Some(&c) if c >= seq => None,
            Some(&c) => Some(c.max(self.sent_seq)),
            None => Some(self.sent_seq),
        }
    }

    /// Streams every feed entry after what this client was sent, up to
    /// `upto` (the feed's durable position), then the cursor. Reads at most
    /// `batch` entries per call to the feed, so a long catch-up does not
    /// hold the store for long; call again while it returns true.
    pub fn catch_up<F: Feed>(
        &mut self,
        feed: &mut F,
        upto: Seq,
        batch: usize,
    ) -> Result<bool, F::Error> {
        if !self.is_established() || upto <= self.sent_seq {
            return Ok(false);
        }
        let entries = feed.entries_after(self.sent_seq, upto, batch)?;
        let reached = if entries.len() < batch {
            upto
        } else {
            entries.last().map(|e| e.0).unwrap_or(upto)
        };
        for (seq, doc) in entries {
            let Some(base_seq) = self.feed_base(doc, seq) else {
                continue;
            };
            if let Some(delta) = feed.changes_since(doc, base_seq)? {
                if !delta.data.is_empty() {
                    let unnamed = self.unnamed_devices(&delta.data);
                    if !unnamed.is_empty() {
                        let names = feed.device_names(&unnamed)?;
                        self.send_device_names(names);
                    }
                    self.send_changes_msg(doc, delta.heads, delta.data);
                }
                // The document went out as it is now, which covers its later
                // writes in the feed: skip those, so a cold start sends each
                // document once however often it was written.
                let entry = self.covered.entry(doc).or_insert(0);
                *entry = (*entry).max(delta.seq);
            } else if feed.erased(doc)? {
                self.wire.send_error(
                    ErrorCode::Erased,
                    Some(doc),
                    format!("record {doc} was erased by an administrator"),
                    false,
                );
            } else if feed.quarantined(doc)? {
                // Said, not skipped in silence: the client learns the feed
                // holds something it is not sent yet.
                self.wire.send_error(
                    ErrorCode::Quarantined,
                    Some(doc),
                    format!("record {doc} is held back by the server for now; keep your copy"),
                    false,
                );
            }
        }
        self.caught_up(reached);
        Ok(reached < upto)
    }

    /// Sends changes the client lacks.
    pub fn send_changes(&mut self, doc: DocId, heads: Vec<Head>, data: Vec<u8>) {
        self.send_changes_msg(doc, heads, data);
    }

    /// Everything up to `seq` has been sent.
    pub fn caught_up(&mut self, seq: Seq) {
        if seq <= self.sent_seq && seq != 0 {
            return;
        }
        self.sent_seq = seq;
        self.covered.retain(|_, c| *c > seq);
        self.wire.send(&Message::Cursor(CursorMsg {
            seq,
            n: self.changes_sent,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::ReadDoc;

    /// Text that DEFLATE cannot shrink much, so a save stays large.
    fn noise(seed: usize) -> String {
        let mut x = (seed as u64).wrapping_mul(6364136223846793005) ^ 0x9e37_79b9;
        (0..300)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'a' + ((x >> 33) % 26) as u8)
            })
            .collect()
    }

    fn written(changes: usize) -> Automerge {
        let mut doc = Automerge::new();
        for i in 0..changes {
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, format!("field{i}"), noise(i))
                .unwrap();
            tx.commit();
        }
        doc
    }

    #[test]
    fn a_document_larger_than_a_frame_goes_in_parts_that_each_apply() {
        let doc = written(40);
        let mut data = doc.save();
        // A save, then later chunks, as the store holds them.
        let mut later = doc.fork();
        let mut tx = later.transaction();
        tx.put(automerge::ROOT, "late", noise(999)).unwrap();
        tx.commit();
        data.extend(docsync::encode_changes(
            &later.get_changes(&doc.get_heads()),
        ));
        let budget = 2_000;
        assert!(data.len() > budget);
        let parts = split_for_frames(data, budget);
        assert!(parts.len() > 1);
        let mut replica = Automerge::new();
        for part in &parts {
            assert!(part.len() <= budget, "a part of {} bytes", part.len());
            docsync::apply_chunks(&mut replica, part).unwrap();
            // Each part builds on the ones before: nothing waits for a base.
            assert!(replica.get_missing_deps(&[]).is_empty());
        }
        assert_eq!(replica.get_heads(), later.get_heads());
    }

    /// One document written by device 7, as a feed of one entry.
    struct OneDoc {
        doc: Automerge,
        asked: Vec<Vec<DeviceId>>,
    }

    impl Feed for OneDoc {
        type Error = std::convert::Infallible;
        fn entries_after(
            &mut self,
            after: Seq,
            upto: Seq,
            _limit: usize,
        ) -> Result<Vec<(Seq, DocId)>, Self::Error> {
            Ok((after < 1 && upto >= 1)
                .then_some((1, DocId::from_bytes([1; 16])))
                .into_iter()
                .collect())
        }
        fn changes_since(&mut self, _: DocId, _: Seq) -> Result<Option<DocDelta>, Self::Error> {
            Ok(Some(DocDelta {
                heads: to_heads(&self.doc.get_heads()),
                data: self.doc.save(),
                seq: 1,
            }))
        }
        fn device_names(&mut self, devices: &[DeviceId]) -> Result<Vec<DeviceName>, Self::Error> {
            self.asked.push(devices.to_vec());
            Ok(devices
                .iter()
                .map(|d| DeviceName {
                    device: *d,
                    name: "Kibera tablet 3".into(),
                })
                .collect())
        }
    }

    fn feed_of_device_7() -> OneDoc {
        let mut doc = Automerge::new();
        let mut actor = vec![7u8; 16];
        actor.extend([9u8; 8]);
        doc.set_actor(automerge::ActorId::from(actor));
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "place", "market").unwrap();
        tx.commit();
        OneDoc {
            doc,
            asked: Vec::new(),
        }
    }

    fn caught_up(names: bool, feed: &mut OneDoc) -> Vec<Message> {
        let mut session = ServerSession::new(Limits::DEFAULT);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            store: None,
            cursor: 0,
            names,
        };
        session.accept(&hello, StoreId::from_bytes([2; 16]), 1);
        session.catch_up(feed, 1, 10).unwrap();
        // A second pass over the same device asks for nothing more.
        session.sent_seq = 0;
        session.covered.clear();
        session.catch_up(feed, 1, 10).unwrap();
        std::iter::from_fn(|| session.poll_transmit())
            .map(|f| codec::decode(&f, &Limits::DEFAULT).unwrap())
            .collect()
    }

    #[test]
    fn a_client_that_asks_is_told_device_names_before_their_changes_once() {
        let mut feed = feed_of_device_7();
        let kinds: Vec<&str> = caught_up(true, &mut feed)
            .iter()
            .map(|m| m.kind())
            .collect();
        assert_eq!(
            kinds,
            ["welcome", "devices", "changes", "cursor", "changes", "cursor"]
        );
        assert_eq!(feed.asked, vec![vec![DeviceId::from_bytes([7; 16])]]);
    }

    #[test]
    fn a_client_that_does_not_ask_gets_no_names_and_costs_no_lookups() {
        let mut feed = feed_of_device_7();
        let messages = caught_up(false, &mut feed);
        assert!(messages.iter().all(|m| m.kind() != "devices"));
        assert!(feed.asked.is_empty());
    }

    #[test]
    fn the_server_session_sends_no_frame_over_its_limit() {
        let limits = Limits {
            frame_bytes_max: 4_096,
            ..Limits::DEFAULT
        };
        let doc = written(60);
        let mut session = ServerSession::new(limits.clone());
        session.send_changes(
            DocId::from_bytes([1; 16]),
            to_heads(&doc.get_heads()),
            doc.save(),
        );
        let mut frames = 0;
        while let Some(frame) = session.poll_transmit() {
            assert!(frame.len() <= limits.frame_bytes_max, "{}", frame.len());
            frames += 1;
        }
        assert!(frames > 1);
    }
}
