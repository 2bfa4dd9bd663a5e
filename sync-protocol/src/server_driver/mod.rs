//! The server's side of a sync, with no I/O: [`ServerDriver`].
//!
//! [`ServerSession`] knows the messages; the driver knows the server's
//! ordering rules around them, which used to live in the socket loop:
//!
//! - **No feed while pushes wait for their commit.** The feed may already
//!   show a pending push's write, and only the push's reply (which marks
//!   the document as carried) keeps a device from being sent its own
//!   changes back. So a feed read is asked for only when no write is
//!   pending, and a read answered after a push arrived is not done.
//! - **Acknowledgements only after commit**, in the order the writes
//!   arrived (writes to one document are answered in the order they were
//!   applied), whatever order the storage answers in.
//! - **The feed never passes the durable watermark**: every read is bounded
//!   by the position the caller last reported through
//!   [`ServerDriver::handle_durable`], below which no write may still
//!   appear.
//! - **Retire and scope steps**: a retiring device is asked, once, after
//!   the welcome; its fatal `retired` goodbye marks it retired; once caught
//!   up to the welcome's position the device's scope is noted (so a later
//!   change of role or areas refeeds it); a revoked device is cut at once
//!   with `revoked`; a changed scope ends the session once what is pending
//!   is answered, so the device reconnects under its new scope.
//! - **Idle timeout**: a session that heard no frame and no ping from its
//!   device for [`DriverConfig::idle`], and owes it no answer, is closed.
//!   Halfway there the driver asks for a transport ping
//!   ([`poll_keepalive`](ServerDriver::poll_keepalive)): a tablet that only
//!   listens (a live session on a busy feed sends nothing, and the SDK
//!   pings only after 30 s without a frame) answers it with a pong, which
//!   keeps it open; a vanished one does not, and is closed.
//!
//! The crate knows no clock: `now` is a [`Duration`] since any fixed
//! point the caller picks (the server: a `tokio::time::Instant` taken when
//! the socket opened), and [`ServerDriver::poll_timeout`] answers on the
//! same scale.
//!
//! # Inputs
//!
//! | call | when |
//! | --- | --- |
//! | [`handle_frame`](ServerDriver::handle_frame) | a binary frame arrived (only while [`wants_frames`](ServerDriver::wants_frames)) |
//! | [`handle_ping`](ServerDriver::handle_ping) | the transport saw a ping (or pong) from the device |
//! | [`handle_commit`](ServerDriver::handle_commit) | a [`Task::Admit`] or [`Task::Sync`] was decided: stored durably, refused, failed |
//! | [`handle_durable`](ServerDriver::handle_durable) | the durable feed watermark moved |
//! | [`handle_standing`](ServerDriver::handle_standing) | the device's standing changed (retiring, revoked, token invalid, scope changed) |
//! | [`handle_feed`](ServerDriver::handle_feed) | carrying out a [`Task::ReadFeed`], with the caller's view of the feed |
//! | [`handle_timeout`](ServerDriver::handle_timeout) | the deadline from [`poll_timeout`](ServerDriver::poll_timeout) passed |
//! | [`handle_closed`](ServerDriver::handle_closed) | the socket closed or the server shuts down |
//!
//! While carrying out a task the caller may also call
//! [`start_sync`](ServerDriver::start_sync) (a push whose base the server
//! lacks; a damaged record to repair), [`apply_sync`](ServerDriver::apply_sync)
//! (a [`Task::Sync`] against the loaded document) and
//! [`unnamed_devices`](ServerDriver::unnamed_devices) (which authors of a
//! push reply to look up for [`Commit::Stored::names`]).
//!
//! # Outputs, drained after every input
//!
//! - [`poll_transmit`](ServerDriver::poll_transmit): frames to send, in order.
//! - [`poll_task`](ServerDriver::poll_task): storage work ([`Task`]).
//! - [`poll_audit`](ServerDriver::poll_audit): audit entries ([`AuditEvent`]);
//!   exactly one [`AuditEvent::SessionEnded`] per session.
//! - [`poll_timeout`](ServerDriver::poll_timeout): the next deadline, if any.
//! - [`poll_keepalive`](ServerDriver::poll_keepalive): send a WebSocket ping now.
//! - [`is_closed`](ServerDriver::is_closed) / [`close_reason`](ServerDriver::close_reason):
//!   once closed, send what is queued, then close the socket.
//!
//! # How the server drives it
//!
//! One task per socket; `start` is a `tokio::time::Instant` taken at the
//! upgrade and `now()` is `start.elapsed()`.
//!
//! ```text
//! let config = DriverConfig { idle: from [sync] config, ..DriverConfig::new(limits, store_id) };
//! let mut driver = ServerDriver::new(config, Opening {
//!     durable: *durable_rx.borrow(),          // the committer's durable watermark
//!     refeed: device.scope.is_some_and(|s| s != caller.scope()),
//!     standing: Retiring if device.retiring else Active,
//!     own_name: DeviceId::from_hex(&device.id) with device.name,
//! }, now());
//! loop {
//!     // 1. carry out every task, in order, before anything else is fed:
//!     while let Some(task) = driver.poll_task() { match task {
//!         Task::Admit(w) => on a fork: target, limits, apply, rules (device bytes:
//!             block_in_place under a work slot, as frames are handled today);
//!             refused -> driver.handle_commit(now(), w.write, Commit::Refused(..));
//!             admitted -> if base_missing { driver.start_sync(w.doc, &fork) },
//!                 submit to the committer, push its wait onto `pending`
//!                 (FuturesUnordered is enough: the driver restores the order);
//!         Task::Sync { write, msg } -> load a fork, driver.apply_sync(msg.doc, &mut fork,
//!             &msg.data), judge and submit as for a push (or Commit::NoAck for an
//!             unfinished repair);
//!         Task::ReadFeed(_) -> driver.handle_feed(now(), &mut HubFeed { .. }) (block_in_place);
//!         Task::OfferRepairs -> for each damaged record the caller may read:
//!             driver.start_sync(id, &Automerge::new());
//!         Task::NoteScope -> devices.set_scope(device, caller.scope()) if it differs;
//!         Task::MarkRetired { .. } -> devices.mark_retired(device, clock);
//!     }}
//!     // 2. write the audit entries (AuditEvent::SessionEnded is the `sync` entry),
//!     // 3. send every frame from poll_transmit (and a ping if poll_keepalive), flush once,
//!     // 4. if driver.is_closed(): WebSocket close (1001 on shutdown, 1000 otherwise); break.
//!     let deadline = driver.poll_timeout().map(|d| start + d);
//!     tokio::select! {
//!         biased;
//!         _ = shutdown.changed() => driver.handle_closed(now(), CloseReason::Shutdown),
//!         frame = stream.next(), if driver.wants_frames() => match frame {
//!             binary  -> driver.handle_frame(now(), bytes)  (log the error at debug),
//!             ping/pong -> driver.handle_ping(now()),
//!             close, error or end -> driver.handle_closed(now(), CloseReason::Disconnected),
//!         },
//!         Some((write, commit)) = pending.next() => {
//!             Stored: note the ack (devices.note_ack), audit the write's decisions;
//!             Failed: forget the cached copy (docs.forget);
//!             driver.handle_commit(now(), write, commit)
//!         }
//!         _ = standing_rx.changed() => match devices.standing(device) {
//!             Ok(Auth::Device(d)) if d.retiring => driver.handle_standing(now(), Standing::Retiring),
//!             Ok(Auth::Device(_)) => if the user's role or areas, read again, differ from
//!                 caller.scope(): driver.handle_standing(now(), Standing::ScopeChanged),
//!             Ok(Auth::Revoked) => driver.handle_standing(now(), Standing::Revoked),
//!             Ok(_) => driver.handle_standing(now(), Standing::TokenInvalid),
//!             Err(_) => log; the session goes on,
//!         },
//!         _ = durable_rx.changed() => driver.handle_durable(now(), *durable_rx.borrow()),
//!         _ = sleep_until(deadline), if deadline.is_some() => driver.handle_timeout(now()),
//!     }
//! }
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use automerge::Automerge;

use crate::docsync::ApplyError;
use crate::message::*;
use crate::session::{Feed, PushOutcome, ServerEvent, ServerSession, SessionError};
use crate::tally::RecordTally;

mod steps;
mod types;
pub use types::*;

#[cfg(test)]
mod tests;

/// Where the driver stands, named for what it waits for.
#[derive(Debug)]
enum Phase {
    /// The connection is open and no hello has arrived.
    WaitingForHello,
    /// Welcomed: pushes, repairs and the feed flow.
    Streaming(Streaming),
    /// Ending (the device's scope changed): no more frames are read and
    /// no feed goes out; pending writes are answered, then it closes.
    Draining {
        /// Why it ends.
        reason: CloseReason,
    },
    /// Over: nothing more is read or sent after what is queued.
    Closed {
        /// Why it ended.
        reason: CloseReason,
    },
}

/// What a welcomed session tracks besides the session itself.
#[derive(Debug)]
struct Streaming {
    /// A feed read asked for and not yet carried out.
    reading: Option<FeedRead>,
    /// The scope was noted once caught up to the welcome.
    scope_noted: bool,
    /// The device was asked to retire.
    retire_asked: bool,
}

/// The keepalive ping, within one idle period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keepalive {
    /// Less than half the idle time passed since the device was heard.
    NotDue,
    /// Half passed: the caller is to send a ping.
    Due,
    /// The caller took the ping; the pong, or the idle close, follows.
    Sent,
}

/// A write handed to storage and not yet answered to the device.
#[derive(Debug)]
struct Pending {
    write: WriteId,
    doc: DocId,
    kind: WriteKind,
    /// The storage's answer, held until every earlier write is answered.
    result: Option<Commit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    Push,
    Sync,
}

/// The server's end of one sync connection, with its ordering rules and
/// its timer. See the module documentation for the call order.
#[derive(Debug)]
pub struct ServerDriver {
    config: DriverConfig,
    session: ServerSession,
    phase: Phase,
    /// The durable feed position: no feed read goes past it.
    watermark: Seq,
    /// The user's scope changed since the device last caught up.
    refeed: bool,
    /// The device is being retired.
    retiring: bool,
    own_name: Option<DeviceName>,
    /// Writes in the order they arrived; bounded by the frames read, which
    /// stop at `pushes_in_flight_max` pending writes.
    writes: VecDeque<Pending>,
    next_write: u64,
    tasks: VecDeque<Task>,
    audits: VecDeque<AuditEvent>,
    /// When the device was last heard from, or last answered.
    last_heard: Duration,
    keepalive: Keepalive,
    frames_received: u64,
    /// The records this connection stored for the device, bounded.
    received: RecordTally,
}

impl ServerDriver {
    /// A driver for a connection just opened, waiting for the hello. A
    /// device already revoked or without a valid token is closed at once.
    pub fn new(config: DriverConfig, opening: Opening, now: Duration) -> Self {
        let mut session = ServerSession::new(config.limits.clone());
        session.set_sent_records_cap(config.records_listed_max);
        let received = RecordTally::new(config.records_listed_max);
        let mut driver = ServerDriver {
            config,
            session,
            phase: Phase::WaitingForHello,
            watermark: opening.durable,
            refeed: opening.refeed,
            retiring: false,
            own_name: opening.own_name,
            writes: VecDeque::new(),
            next_write: 0,
            tasks: VecDeque::new(),
            audits: VecDeque::new(),
            last_heard: now,
            keepalive: Keepalive::NotDue,
            frames_received: 0,
            received,
        };
        driver.handle_standing(now, opening.standing);
        driver
    }

    // ------------------------------------------------------------ outputs

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.session.poll_transmit()
    }

    /// The next storage task, in the order they must be carried out.
    pub fn poll_task(&mut self) -> Option<Task> {
        self.tasks.pop_front()
    }

    /// The next audit entry to write.
    pub fn poll_audit(&mut self) -> Option<AuditEvent> {
        self.audits.pop_front()
    }

    /// When [`ServerDriver::handle_timeout`] is next due, on the scale of
    /// `now`: halfway through the idle time (for a keepalive), then at its
    /// end. None when closed, or while a write is pending: the device is
    /// then waiting on the server, not idle.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if matches!(self.phase, Phase::Closed { .. }) || !self.writes.is_empty() {
            return None;
        }
        Some(match self.keepalive {
            Keepalive::NotDue => self.last_heard.saturating_add(self.config.idle / 2),
            Keepalive::Due | Keepalive::Sent => self.last_heard.saturating_add(self.config.idle),
        })
    }

    /// True once when the caller should send the device a transport ping
    /// (WebSocket ping): half the idle time passed without a word from it.
    /// Its pong comes back through [`ServerDriver::handle_ping`].
    pub fn poll_keepalive(&mut self) -> bool {
        if self.keepalive == Keepalive::Due && !self.is_closed() {
            self.keepalive = Keepalive::Sent;
            return true;
        }
        false
    }

    /// True while the caller should read frames: open, and fewer writes
    /// pending than a device may pipeline (reading stops there, which
    /// holds a flooding device back at the socket).
    pub fn wants_frames(&self) -> bool {
        matches!(self.phase, Phase::WaitingForHello | Phase::Streaming(_))
            && self.writes.len() < self.config.limits.pushes_in_flight_max
    }

    /// True once the session is over: send what is queued and close.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed { .. })
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match &self.phase {
            Phase::Closed { reason } => Some(reason),
            _ => None,
        }
    }

    /// The session, for what it reports (feed position, sent records).
    pub fn session(&self) -> &ServerSession {
        &self.session
    }

    /// Writes handed to storage and not yet answered.
    pub fn pending_writes(&self) -> usize {
        self.writes.len()
    }

    /// What the session-end audit entry would say now.
    pub fn summary(&self) -> SyncSummary {
        SyncSummary {
            frames_received: self.frames_received,
            received: self.received.clone(),
            sent: self.session.sent_tally().clone(),
            feed_position: self.session.sent_seq(),
            reason: self.close_reason().cloned(),
        }
    }

    // ------------------------------------------------------------- inputs

    /// Feeds one frame from the device. An error ends the session (its
    /// error frame, where there is one, is queued); the caller logs it.
    pub fn handle_frame(&mut self, now: Duration, frame: &[u8]) -> Result<(), SessionError> {
        if !matches!(self.phase, Phase::WaitingForHello | Phase::Streaming(_)) {
            return Ok(());
        }
        self.heard(now);
        self.frames_received = self.frames_received.saturating_add(1);
        let events = match self.session.handle_frame(frame) {
            Ok(events) => events,
            Err(SessionError::Peer {
                code: ErrorCode::Retired,
                message,
            }) if self.retiring => {
                // The retiring device wiped its store: its token ends here.
                self.tasks.push_back(Task::MarkRetired {
                    report: message.clone(),
                });
                self.audits
                    .push_back(AuditEvent::DeviceRetired { report: message });
                self.finish(CloseReason::Retired);
                return Ok(());
            }
            Err(err) => {
                self.finish(CloseReason::Protocol(err.to_string()));
                return Err(err);
            }
        };
        for event in events {
            self.on_event(event);
        }
        self.advance();
        Ok(())
    }

    /// The transport saw a ping or pong: the device is there.
    pub fn handle_ping(&mut self, now: Duration) {
        if !self.is_closed() {
            self.heard(now);
        }
    }

    /// The storage's answer to a [`Task::Admit`] or [`Task::Sync`]. Answers
    /// go to the device in the order the writes arrived; an unknown or
    /// repeated `write` is ignored.
    pub fn handle_commit(&mut self, now: Duration, write: WriteId, commit: Commit) {
        let Some(slot) = self
            .writes
            .iter_mut()
            .find(|p| p.write == write && p.result.is_none())
        else {
            return;
        };
        slot.result = Some(commit);
        while self.writes.front().is_some_and(|p| p.result.is_some()) {
            let Some(Pending {
                doc,
                kind,
                result: Some(result),
                ..
            }) = self.writes.pop_front()
            else {
                break;
            };
            self.answer(doc, kind, result);
            // An answer is activity: the device waited on us, not idled.
            self.heard(now);
        }
        self.advance();
    }

    /// The durable feed position moved to `seq` (it never moves back; a
    /// lower value is ignored).
    pub fn handle_durable(&mut self, _now: Duration, seq: Seq) {
        self.watermark = self.watermark.max(seq);
        self.advance();
    }

    /// The device's standing changed.
    pub fn handle_standing(&mut self, _now: Duration, standing: Standing) {
        if matches!(self.phase, Phase::Closed { .. }) {
            return;
        }
        match standing {
            Standing::Active => {}
            Standing::Retiring => self.retiring = true,
            Standing::Revoked => {
                self.session.close_with(
                    ErrorCode::Revoked,
                    "this device was reported lost or stolen: wipe it without uploading".into(),
                );
                return self.finish(CloseReason::Revoked);
            }
            Standing::TokenInvalid => {
                self.session.close_with(
                    ErrorCode::Forbidden,
                    "this device's token is no longer valid".into(),
                );
                return self.finish(CloseReason::TokenInvalid);
            }
            Standing::ScopeChanged => {
                // What the feed may send was decided under the old scope:
                // stop it, answer what is pending, and let the device
                // reconnect, to be refed under the new one.
                self.phase = Phase::Draining {
                    reason: CloseReason::ScopeChanged,
                };
            }
        }
        self.advance();
    }

    /// Carries out a [`Task::ReadFeed`] against the caller's view of the
    /// feed (what this device may read). Does nothing if no read is due,
    /// or if a write arrived since the task was given (its reply goes
    /// first; the read is asked for again after). A feed failure ends the
    /// session and is returned for the caller to log.
    pub fn handle_feed<F: Feed>(&mut self, _now: Duration, feed: &mut F) -> Result<(), F::Error> {
        let Phase::Streaming(streaming) = &mut self.phase else {
            return Ok(());
        };
        let Some(read) = streaming.reading.take() else {
            return Ok(());
        };
        if self.writes.is_empty() {
            if let Err(err) = self.session.catch_up(feed, read.upto, read.limit) {
                self.finish(CloseReason::FeedFailed);
                return Err(err);
            }
        }
        self.advance();
        Ok(())
    }

    /// The deadline from [`ServerDriver::poll_timeout`] passed: halfway
    /// through the idle time a keepalive falls due; a device heard from
    /// not once in the whole idle time is closed. Early calls do nothing.
    pub fn handle_timeout(&mut self, now: Duration) {
        if matches!(self.phase, Phase::Closed { .. }) || !self.writes.is_empty() {
            return;
        }
        if now >= self.last_heard.saturating_add(self.config.idle) {
            self.finish(CloseReason::Idle);
        } else if self.keepalive == Keepalive::NotDue
            && now >= self.last_heard.saturating_add(self.config.idle / 2)
        {
            self.keepalive = Keepalive::Due;
        }
    }

    /// The socket closed, or the server is shutting down.
    pub fn handle_closed(&mut self, _now: Duration, reason: CloseReason) {
        if !self.is_closed() {
            self.finish(reason);
        }
    }

    // ---------------------------------------- calls while carrying out tasks

    /// Starts the sync protocol for a document: a push whose base the
    /// server lacks (`base_missing` on applying it, called before the
    /// push's commit is answered), or a damaged record to repair from an
    /// empty document ([`Task::OfferRepairs`]).
    pub fn start_sync(&mut self, doc: DocId, current: &Automerge) {
        if matches!(self.phase, Phase::Streaming(_)) {
            self.session.start_sync(doc, current);
        }
    }

    /// Applies a [`Task::Sync`]'s message to the loaded document (a fork:
    /// nothing is kept unless admitted) and queues the server's answer.
    /// Returns true if the document changed.
    pub fn apply_sync(
        &mut self,
        doc: DocId,
        current: &mut Automerge,
        data: &[u8],
    ) -> Result<bool, ApplyError> {
        self.session.receive_sync(doc, current, data)
    }

    /// Of the authors of `data` (a push reply about to be answered), those
    /// whose names this device asked for and was not sent yet; look them
    /// up for [`Commit::Stored::names`].
    pub fn unnamed_devices(&mut self, data: &[u8]) -> Vec<DeviceId> {
        self.session.unnamed_devices(data)
    }
}
