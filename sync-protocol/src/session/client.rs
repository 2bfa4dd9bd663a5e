//! The tablet's end of a connection.

use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::Automerge;
use serde_bytes::ByteBuf;

use super::fallback::Fallback;
use super::wire::Wire;
use super::SessionError;
use crate::docsync::{self, ApplyError};
use crate::limits::Limits;
use crate::message::*;

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
    Established {
        welcome_seq: Seq,
        /// The packing the welcome chose: packed frames are taken only then.
        packing: Option<Packing>,
    },
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
    changes_early: BTreeSet<u64>,
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
            packing: vec![Packing::Deflate],
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
            ClientPhase::Established { welcome_seq, .. } => {
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
            (
                ClientPhase::Established {
                    packing: Some(agreed),
                    ..
                },
                Message::Packed(packed),
            ) if packed.packing == *agreed => {
                for inner in self.wire.unpack(&packed)? {
                    match self.wire.decode(&inner)? {
                        // One level only: a packed frame inside is refused
                        // like any message out of place.
                        Some(Message::Packed(_)) => return Err(self.wire.unexpected("packed")),
                        Some(message) => self.handle_message(message, &mut events)?,
                        None => {}
                    }
                }
            }
            (_, message) => self.handle_message(message, &mut events)?,
        }
        Ok(events)
    }

    fn handle_message(
        &mut self,
        message: Message,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), SessionError> {
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
                self.phase = ClientPhase::Established {
                    welcome_seq: w.seq,
                    packing: w.packing.filter(|p| *p == Packing::Deflate),
                };
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
                    return Ok(());
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
        Ok(())
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
