//! The server's end of a connection.

use std::collections::{HashMap, HashSet};

use automerge::Automerge;
use serde_bytes::ByteBuf;

use super::fallback::Fallback;
use super::feed::Feed;
use super::frames::{apply_error_code, split_for_frames, CHANGES_FRAME_OVERHEAD};
use super::wire::Wire;
use super::SessionError;
use crate::docsync::{self, ApplyError};
use crate::limits::Limits;
use crate::message::*;
use crate::tally::RecordTally;

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

/// Where the server's end stands, named for what it waits for.
#[derive(Debug)]
enum ServerPhase {
    /// Nothing arrived yet; only a hello is allowed.
    WaitingForHello,
    /// The hello arrived and was handed to the driver, which answers with
    /// [`ServerSession::accept`].
    WaitingForAccept,
    /// Welcomed: pushes, sync messages and the feed flow.
    Established(Streaming),
}

/// What an established session knows of the client's place in the feed.
#[derive(Clone, Copy, Debug)]
struct Streaming {
    /// The feed position the welcome named.
    welcome_seq: Seq,
    /// Everything up to here was sent (or covered) and the cursor said so.
    sent_seq: Seq,
    /// The client's hello asked for device names.
    names_wanted: bool,
}

/// The server's end of a connection.
#[derive(Debug)]
pub struct ServerSession {
    wire: Wire,
    phase: ServerPhase,
    /// Documents whose push replies already carried the server's state up
    /// to the given feed position; the feed skips them up to there, so a
    /// device is not sent back its own changes.
    covered: HashMap<DocId, Seq>,
    fallback: Fallback,
    changes_sent: u64,
    /// The documents sent and the heads they were sent at, for the
    /// audit: bounded, since a live connection can last for days.
    sent_records: RecordTally,
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
            covered: HashMap::new(),
            fallback: Fallback {
                states: HashMap::new(),
                from_devices: true,
            },
            changes_sent: 0,
            sent_records: RecordTally::default(),
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
        if !self.names_wanted() {
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
        if !self.names_wanted() || names.is_empty() {
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
        self.sent_records.note(doc, &heads);
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
        self.wire.next_frame()
    }

    /// True once the connection should be closed (after sending what is queued).
    pub fn is_closed(&self) -> bool {
        self.wire.closed
    }

    /// True once the hello was accepted: the feed may be streamed.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, ServerPhase::Established(_))
    }

    fn streaming(&self) -> Option<Streaming> {
        match self.phase {
            ServerPhase::Established(s) => Some(s),
            _ => None,
        }
    }

    fn names_wanted(&self) -> bool {
        self.streaming().is_some_and(|s| s.names_wanted)
    }

    /// The first documents this connection sent changes of, with the
    /// heads they brought the client to, in order; at most
    /// [`RecordTally::cap`] of them ([`ServerSession::sent_tally`] counts
    /// them all).
    pub fn sent_records(&self) -> &[(DocId, Vec<Head>)] {
        self.sent_records.listed()
    }

    /// The documents this connection sent, bounded, with their count.
    pub fn sent_tally(&self) -> &RecordTally {
        &self.sent_records
    }

    /// Lists at most `cap` sent documents from now on (the audit's bound).
    pub fn set_sent_records_cap(&mut self, cap: usize) {
        if self.sent_records.count() == 0 {
            self.sent_records = RecordTally::new(cap);
        }
    }

    /// How many change messages this connection has sent.
    pub fn records_sent(&self) -> u64 {
        self.changes_sent
    }

    /// The feed position up to which this client has been sent everything.
    pub fn sent_seq(&self) -> Seq {
        self.streaming().map_or(0, |s| s.sent_seq)
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
            (ServerPhase::Established(_), Message::Push(push)) => Ok(self.check_push(push)),
            (ServerPhase::Established(_), Message::Sync(s)) => Ok(vec![ServerEvent::Sync(s)]),
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
        let packing = hello
            .packing
            .iter()
            .copied()
            .find(|p| *p == Packing::Deflate);
        self.phase = ServerPhase::Established(Streaming {
            welcome_seq: seq,
            sent_seq: if reset || refeed { 0 } else { hello.cursor },
            names_wanted: hello.names,
        });
        self.wire.send(&Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            store,
            seq,
            reset,
            refeed,
            packing,
        }));
        if let Some(packing) = packing {
            self.wire.pack_from_here(packing);
        }
    }

    /// The feed position the welcome named.
    pub fn welcome_seq(&self) -> Seq {
        self.streaming().map_or(0, |s| s.welcome_seq)
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
            Some(&c) => Some(c.max(self.sent_seq())),
            None => Some(self.sent_seq()),
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
        let Some(streaming) = self.streaming() else {
            return Ok(false);
        };
        if upto <= streaming.sent_seq {
            return Ok(false);
        }
        let entries = feed.entries_after(streaming.sent_seq, upto, batch)?;
        let reached = if entries.len() < batch {
            upto
        } else {
            entries.last().map(|e| e.0).unwrap_or(upto)
        };
        let wants: Vec<(DocId, Seq, Seq)> = entries
            .iter()
            .filter_map(|&(seq, doc)| Some((doc, self.feed_base(doc, seq)?, seq)))
            .collect();
        if !wants.is_empty() {
            feed.prepare(&wants)?;
        }
        for (seq, doc) in entries {
            let Some(base_seq) = self.feed_base(doc, seq) else {
                continue;
            };
            if let Some(delta) = feed.changes_since(doc, base_seq, seq)? {
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
        self.wire.pack_queued();
        Ok(reached < upto)
    }

    /// Sends changes the client lacks.
    pub fn send_changes(&mut self, doc: DocId, heads: Vec<Head>, data: Vec<u8>) {
        self.send_changes_msg(doc, heads, data);
    }

    /// Everything up to `seq` has been sent.
    pub fn caught_up(&mut self, seq: Seq) {
        let ServerPhase::Established(streaming) = &mut self.phase else {
            // Nothing is streamed before the welcome, so nothing is vouched for.
            return;
        };
        if seq <= streaming.sent_seq && seq != 0 {
            return;
        }
        streaming.sent_seq = seq;
        self.covered.retain(|_, c| *c > seq);
        self.wire.send(&Message::Cursor(CursorMsg {
            seq,
            n: self.changes_sent,
        }));
    }
}

#[cfg(test)]
impl ServerSession {
    /// Forgets what was sent, as if the feed were read afresh.
    pub(super) fn forget_sent(&mut self) {
        if let ServerPhase::Established(s) = &mut self.phase {
            s.sent_seq = 0;
        }
        self.covered.clear();
    }
}
