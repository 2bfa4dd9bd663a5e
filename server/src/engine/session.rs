//! One device's sync session: a thin loop around the protocol crate's
//! [`ServerDriver`], which holds every ordering rule (no feed while pushes
//! wait for their commit, acks only once durable and in arrival order,
//! reads bounded by the durable watermark, retire and scope steps, the idle
//! timeout). This file only carries out what the driver asks for: judge a
//! push on a fork and hand it to the committer, read the feed, look up
//! names, note scopes, and feed back what happened.
//!
//! Admission is a decision on a fork: the device's changes are applied to a
//! copy of the cached document, the schema and access rules judge the copy,
//! and the cached document is replaced by it only when the change is
//! admitted. A refused change leaves the cache and the store as they were.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use baraza_protocol::docsync::{self, ApplyError};
use baraza_protocol::{
    AuditEvent, CloseReason, Commit, DeviceName, DocId, DriverConfig, ErrorCode, Head, Opening,
    PushWrite, RecordTally, Refusal, Seq, ServerDriver, Standing, SyncMsg, Task, WriteId,
};
use baraza_records::access::WriteSummary;
use baraza_records::Header;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::watch;
use warp::ws::{Message as WsMessage, WebSocket};

use super::{
    admit, hex_heads, index_entry, split_admitted, wait_stored, SyncHub, Target, Working,
    CATCH_UP_BATCH, DAMAGED,
};
use crate::engine::docs::{Docs, DocsError, LiveDoc, NotStored};
use crate::identity::caller::Caller;
use crate::identity::devices::{Auth, DeviceRegistry};
use crate::identity::users::UserRegistry;
use crate::storage::store::{StoreError, WriteChecks};

/// Frames already received, or writes already durable, taken together with
/// the one that woke the session, at most: enough for a tablet's backlog
/// of pushes to be read ahead in one batch, few enough that one session's
/// turn stays short.
const TAKEN_AT_ONCE: usize = 64;

/// One message (or the end) of a device's WebSocket, given to the driver.
fn on_frame(
    driver: &mut ServerDriver,
    frame: Option<Result<WsMessage, warp::Error>>,
    now: Duration,
    device: &crate::identity::caller::DeviceIdentity,
) {
    match frame {
        Some(Ok(msg)) if msg.is_binary() || msg.is_text() => {
            if let Err(err) = driver.handle_frame(now, msg.as_bytes()) {
                tracing::debug!(device = %device.id, error = %err, "closing session");
            }
        }
        Some(Ok(msg)) if msg.is_ping() || msg.is_pong() => driver.handle_ping(now),
        Some(Ok(msg)) if msg.is_close() => driver.handle_closed(now, CloseReason::Disconnected),
        Some(Ok(_)) => {}
        Some(Err(err)) => {
            tracing::debug!(device = %device.id, error = %err, "websocket error");
            driver.handle_closed(now, CloseReason::Disconnected);
        }
        None => driver.handle_closed(now, CloseReason::Disconnected),
    }
}

/// A write handed to the committer, and what to tell the driver once it is
/// durable (or failed).
type Waiting = Pin<Box<dyn Future<Output = Stored> + Send>>;

/// A write's outcome as the committer reports it.
struct Stored {
    write: WriteId,
    doc: DocId,
    heads: Vec<Head>,
    /// The push reply (changes the device lacks); empty for a sync write.
    reply: Vec<u8>,
    base_missing: bool,
    /// What the write did, when it stored new changes.
    wrote: Option<WriteSummary>,
    stored: Result<Seq, NotStored>,
    /// The push again, kept where another node may overtake the copy it
    /// was judged on, with the attempts made so far.
    retry: Option<(Box<PushWrite>, u8)>,
}

/// Times a push is judged again after other nodes' writes overtook the
/// copy it was judged on, before the device is told to send it later.
const OVERTAKEN_RETRIES: u8 = 3;

impl Stored {
    /// The push to judge again, if another node's write overtook it and
    /// it has tries left.
    fn overtaken(&mut self) -> Option<(PushWrite, u8)> {
        if self.stored != Err(NotStored::Overtaken) {
            return None;
        }
        match self.retry.take() {
            Some((push, tried)) if tried < OVERTAKEN_RETRIES => Some((*push, tried + 1)),
            _ => None,
        }
    }
}

fn refusal(code: ErrorCode, message: String) -> Refusal {
    Refusal {
        code,
        rule: None,
        message,
    }
}

/// How the user a session acts for stands now, if that differs from when
/// it connected: disabled or gone (the session ends), or given another
/// role or areas (the session drains, and the device is fed again under
/// the new scope when it reconnects). None while nothing changed, or
/// when the user cannot be read (the session goes on).
fn user_standing(users: &UserRegistry, caller: &Caller) -> Option<Standing> {
    let user = match users.get(&caller.principal.user) {
        Ok(user) => user,
        Err(err) => {
            tracing::warn!(device = %caller.device.id, error = %err, "user lookup failed");
            return None;
        }
    };
    match user {
        Some(u) if !u.disabled => {
            let now = Caller {
                device: caller.device.clone(),
                principal: baraza_records::Principal {
                    user: u.name,
                    role: u.role,
                    areas: u.areas,
                },
            };
            (now.scope() != caller.scope()).then_some(Standing::ScopeChanged)
        }
        _ => Some(Standing::TokenInvalid),
    }
}

fn quarantined(id: DocId) -> Refusal {
    refusal(
        ErrorCode::Quarantined,
        format!(
            "record {id} is held back by the server for now; keep your copy and sync again later"
        ),
    )
}

/// What one session needs while it carries out the driver's tasks.
struct Ctx<'a> {
    caller: &'a Caller,
    devices: &'a DeviceRegistry,
    pending: &'a mut FuturesOrdered<Waiting>,
    /// The driver asked for a feed read, carried out once nothing else is
    /// ready (see the loop).
    feed_due: &'a mut bool,
    /// Admission's checks of the records this batch of tasks writes, read
    /// together; each is taken by the first task for its record.
    checks: HashMap<DocId, WriteChecks>,
}

impl SyncHub {
    /// Serves one authenticated device's WebSocket until it closes, the
    /// driver ends the session, or the server shuts down.
    pub async fn serve_socket(
        self: Arc<Self>,
        ws: WebSocket,
        caller: Caller,
        devices: DeviceRegistry,
        users: UserRegistry,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let device = &caller.device;
        let start = tokio::time::Instant::now();
        let now = || start.elapsed();
        let mut standing = devices.changes();
        let mut standing_open = true;
        let (mut sink, mut stream) = ws.split();
        let mut durable = self.docs.durable();
        let mut durable_open = true;
        let mut pending: FuturesOrdered<Waiting> = FuturesOrdered::new();
        let mut feed_due = false;
        let config = DriverConfig {
            idle: self.session_idle(),
            feed_batch: CATCH_UP_BATCH,
            ..DriverConfig::new(self.limits.clone(), self.docs.store().store_id())
        };
        let opening = Opening {
            durable: *durable.borrow(),
            // The user's scope changed since this device last caught up:
            // records now readable may lie behind its cursor.
            refeed: device.scope.as_ref().is_some_and(|s| *s != caller.scope()),
            standing: if device.retiring {
                Standing::Retiring
            } else {
                Standing::Active
            },
            // Its own name first: a tablet enrolled by token alone learns
            // what the registry calls it.
            own_name: Some(DeviceName {
                device: device.id,
                name: device.name.clone(),
            }),
        };
        let mut driver = ServerDriver::new(config, opening, now());
        // Pushes whose copy another node's write overtook, judged again
        // on the record as stored.
        let mut retries: Vec<(PushWrite, u8)> = Vec::new();
        tracing::info!(device = %device.id, name = %device.name, "device connected");
        loop {
            if !retries.is_empty() {
                let Ok(_slot) = self.work_slots.acquire().await else {
                    break;
                };
                tokio::task::block_in_place(|| {
                    for (push, tried) in retries.drain(..) {
                        let write = push.write;
                        match self.on_push(&mut driver, &caller, push, tried, None) {
                            Ok(waiting) => pending.push_back(waiting),
                            Err(refused) => {
                                driver.handle_commit(now(), write, Commit::Refused(refused))
                            }
                        }
                    }
                });
            }
            if self
                .carry_out(
                    &mut driver,
                    &caller,
                    &devices,
                    &mut pending,
                    &mut feed_due,
                    now,
                )
                .await
                .is_err()
            {
                break;
            }
            if let Some(first) = driver.poll_audit() {
                tokio::task::block_in_place(|| {
                    self.audit_session_event(&caller, first);
                    while let Some(event) = driver.poll_audit() {
                        self.audit_session_event(&caller, event);
                    }
                });
            }
            let keepalive = driver.poll_keepalive();
            if send_all(&mut driver, keepalive, &mut sink).await.is_err() {
                break;
            }
            if driver.is_closed() {
                let _ = match driver.close_reason() {
                    Some(CloseReason::Shutdown) => {
                        sink.send(WsMessage::close_with(1001u16, "server shutting down"))
                            .await
                    }
                    _ => sink.close().await,
                };
                break;
            }
            let deadline = driver.poll_timeout().map(|at| start + at);
            tokio::select! {
                biased;
                _ = shutdown.changed() => driver.handle_closed(now(), CloseReason::Shutdown),
                frame = stream.next(), if driver.wants_frames() => {
                    on_frame(&mut driver, frame, now(), device);
                    // Frames already here are taken too, so that their
                    // tasks are carried out as one batch, read ahead
                    // together (a reconnecting tablet sends its pushes
                    // back to back).
                    let mut taken = 1;
                    while taken < TAKEN_AT_ONCE && driver.wants_frames() && !driver.is_closed() {
                        let Some(frame) = stream.next().now_or_never() else {
                            break;
                        };
                        on_frame(&mut driver, frame, now(), device);
                        taken += 1;
                    }
                }
                Some(done) = pending.next() => {
                    // A group commit makes a batch of writes durable at
                    // once: those already done are answered together, their
                    // acks noted in one write.
                    let mut ready = vec![done];
                    while ready.len() < TAKEN_AT_ONCE {
                        match pending.next().now_or_never() {
                            Some(Some(done)) => ready.push(done),
                            _ => break,
                        }
                    }
                    let mut stored = Vec::with_capacity(ready.len());
                    for mut done in ready {
                        match done.overtaken() {
                            Some(again) => retries.push(again),
                            None => stored.push(done),
                        }
                    }
                    // Notes the acks and audits the decisions: storage
                    // writes, kept off the async workers.
                    tokio::task::block_in_place(|| {
                        self.note_acks(&caller, &devices, &stored);
                        for done in stored {
                            let (write, commit) = self.on_stored(&mut driver, &caller, &devices, done);
                            driver.handle_commit(now(), write, commit);
                        }
                    });
                }
                changed = standing.changed(), if standing_open => {
                    if changed.is_err() {
                        standing_open = false;
                        continue;
                    }
                    match tokio::task::block_in_place(|| devices.standing(&device.id)) {
                        Ok(Auth::Device(d)) if d.retiring => {
                            driver.handle_standing(now(), Standing::Retiring)
                        }
                        Ok(Auth::Device(_)) => {
                            if let Some(standing) = tokio::task::block_in_place(|| user_standing(&users, &caller)) {
                                tracing::info!(device = %device.id, standing = ?standing, "the device's user changed during its session");
                                driver.handle_standing(now(), standing);
                            }
                        }
                        Ok(Auth::Revoked) => {
                            tracing::info!(device = %device.id, "device revoked during its session");
                            driver.handle_standing(now(), Standing::Revoked);
                        }
                        Ok(_) => driver.handle_standing(now(), Standing::TokenInvalid),
                        Err(err) => {
                            tracing::warn!(device = %device.id, error = %err, "device lookup failed")
                        }
                    }
                }
                changed = durable.changed(), if durable_open => match changed {
                    Ok(()) => {
                        let seq = *durable.borrow_and_update();
                        driver.handle_durable(now(), seq);
                    }
                    Err(_) => durable_open = false,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    driver.handle_timeout(now());
                    if driver.is_closed() {
                        tracing::info!(device = %device.id, "sync session idle; closed");
                    }
                }
                // Last, and only when nothing above is ready: a device's
                // own frames and their acks come first. A device pushing
                // a backlog is not sent the feed between its pushes (the
                // driver drops a read a newer push overtook), so an
                // ingest storm does not make every session re-read the
                // feed after every commit.
                _ = std::future::ready(()), if feed_due => {
                    feed_due = false;
                    tokio::task::block_in_place(|| {
                        let mut feed = super::HubFeed::new(&self, &caller.principal, &devices);
                        if let Err(err) = driver.handle_feed(now(), &mut feed) {
                            tracing::warn!(device = %device.id, error = %err, "catch-up failed");
                        }
                    });
                }
            }
        }
        // The driver writes the session's audit entry once it closes; a
        // loop left because the socket failed closes it here.
        driver.handle_closed(now(), CloseReason::Disconnected);
        while let Some(event) = driver.poll_audit() {
            self.audit_session_event(&caller, event);
        }
        tracing::info!(device = %device.id, frames = driver.summary().frames_received, "device disconnected");
    }

    /// Carries out every task the driver has queued, in order. Decoding
    /// and judging a device's bytes is CPU work on untrusted input: it runs
    /// off the async workers (block_in_place) under a work slot, a bounded
    /// number at once, so heavy pushes cannot stall other devices.
    async fn carry_out(
        &self,
        driver: &mut ServerDriver,
        caller: &Caller,
        devices: &DeviceRegistry,
        pending: &mut FuturesOrdered<Waiting>,
        feed_due: &mut bool,
        now: impl Fn() -> Duration,
    ) -> Result<(), ()> {
        // Tasks beget tasks (a refusal answered at once may let a feed read
        // fall due), so this drains until the driver has none left; every
        // pass answers at least one task, and the driver queues a bounded
        // number per input.
        loop {
            let mut tasks = Vec::new();
            while let Some(task) = driver.poll_task() {
                tasks.push(task);
            }
            if tasks.is_empty() {
                return Ok(());
            }
            let judging = tasks
                .iter()
                .any(|t| matches!(t, Task::Admit(_) | Task::Sync { .. }));
            let _slot = if judging {
                Some(self.work_slots.acquire().await.map_err(|_| ())?)
            } else {
                None
            };
            tokio::task::block_in_place(|| {
                let checks = if judging {
                    self.read_ahead(&tasks)
                } else {
                    HashMap::new()
                };
                let mut ctx = Ctx {
                    caller,
                    devices,
                    pending: &mut *pending,
                    feed_due: &mut *feed_due,
                    checks,
                };
                for task in tasks {
                    self.carry_out_one(driver, &mut ctx, task, &now);
                }
            });
        }
    }

    fn carry_out_one(
        &self,
        driver: &mut ServerDriver,
        ctx: &mut Ctx<'_>,
        task: Task,
        now: &impl Fn() -> Duration,
    ) {
        let caller = ctx.caller;
        let device = &caller.device;
        match task {
            Task::Admit(push) => {
                let write = push.write;
                let checks = ctx.checks.remove(&push.doc);
                match self.on_push(driver, caller, push, 0, checks) {
                    Ok(waiting) => ctx.pending.push_back(waiting),
                    Err(refused) => driver.handle_commit(now(), write, Commit::Refused(refused)),
                }
            }
            Task::Sync { write, msg } => {
                let checks = ctx.checks.remove(&msg.doc);
                match self.on_sync(driver, caller, write, msg, checks) {
                    Ok(Some(waiting)) => ctx.pending.push_back(waiting),
                    Ok(None) => driver.handle_commit(now(), write, Commit::NoAck),
                    Err(refused) => driver.handle_commit(now(), write, Commit::Refused(refused)),
                }
            }
            Task::ReadFeed(_) => *ctx.feed_due = true,
            Task::OfferRepairs => self.offer_repairs(driver, caller),
            Task::NoteScope => {
                // Caught up under the user's current scope: noted, so a
                // later change of role or areas sends the feed again.
                let scope = caller.scope();
                if device.scope.as_deref() != Some(scope.as_str()) {
                    if let Err(err) = ctx.devices.set_scope(&device.id, &scope) {
                        tracing::warn!(device = %device.id, error = %err, "could not note the device's scope");
                    }
                }
            }
            Task::MarkRetired { .. } => {
                let at = crate::clock::unix_now();
                if let Err(err) = ctx.devices.mark_retired(&device.id, at) {
                    tracing::error!(device = %device.id, error = %err, "could not mark the device retired");
                }
                tracing::info!(device = %device.id, "device retired and wiped");
            }
        }
    }

    /// Notes, in one write, the heads each stored write acknowledges.
    fn note_acks(&self, caller: &Caller, devices: &DeviceRegistry, done: &[Stored]) {
        let acks: Vec<(String, Vec<String>)> = done
            .iter()
            .filter(|d| d.stored.is_ok())
            .map(|d| (d.doc.to_string(), hex_heads(&d.heads)))
            .collect();
        if acks.is_empty() {
            return;
        }
        if let Err(err) = devices.note_acks(&caller.device.id, &acks) {
            tracing::warn!(device = %caller.device.id, error = %err, "could not note acknowledgements");
        }
    }

    /// A committed (or failed) write, as the driver is told it: the
    /// decisions audited, the authors named (its ack is noted beforehand,
    /// with those made durable with it, by [`SyncHub::note_acks`]).
    fn on_stored(
        &self,
        driver: &mut ServerDriver,
        caller: &Caller,
        devices: &DeviceRegistry,
        done: Stored,
    ) -> (WriteId, Commit) {
        let seq = match done.stored {
            Ok(seq) => seq,
            Err(message) => {
                self.docs.forget(done.doc);
                return (
                    done.write,
                    Commit::Failed {
                        message: message.to_string(),
                    },
                );
            }
        };
        let changed = done.wrote.is_some();
        if let Some(wrote) = &done.wrote {
            self.audit_decisions(caller, done.doc, &wrote.decisions);
        }
        let unnamed = if done.reply.is_empty() {
            Vec::new()
        } else {
            driver.unnamed_devices(&done.reply)
        };
        let names = if unnamed.is_empty() {
            Vec::new()
        } else {
            devices.names(&unnamed).unwrap_or_else(|err| {
                tracing::warn!(device = %caller.device.id, error = %err, "could not look up device names");
                Vec::new()
            })
        };
        (
            done.write,
            Commit::Stored {
                heads: done.heads,
                reply: done.reply,
                seq,
                base_missing: done.base_missing,
                names,
                changed,
            },
        )
    }

    /// Judges a push on a fork of the record and, if admitted, makes the
    /// fork the cached copy and hands the write to the committer.
    fn on_push(
        &self,
        driver: &mut ServerDriver,
        caller: &Caller,
        push: PushWrite,
        tried: u8,
        checks: Option<WriteChecks>,
    ) -> Result<Waiting, Refusal> {
        let id = push.doc;
        let retry = self
            .shared
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| (Box::new(push.clone()), tried));
        let handle = match self.target(caller, id, checks)? {
            Target::Stored(handle) => Some(handle),
            Target::Hidden => None,
            Target::Repair => return Err(quarantined(id)),
        };
        let mut working = Working::of(handle.as_ref());
        let live: &mut LiveDoc = &mut working;
        self.within_limits(id, live, push.bytes, push.ops)?;
        let before_header = live.header();
        let mut fork = live.doc.clone();
        let applied = docsync::apply_push(&mut fork, push.changes, &push.heads)
            .map_err(|err| self.refuse_applied(caller, id, &err))?;
        let mut admitted = None;
        if !applied.new_chunk.is_empty() {
            admitted = Some(self.judge(caller, id, &fork, &applied.new_changes, before_header)?);
            // Judged like any new record, refused only if it passed.
            if handle.is_none() {
                return Err(hidden_creation(id));
            }
        }
        if applied.base_missing {
            driver.start_sync(id, &fork);
        }
        let (wrote, stored) = self.keep_fork(id, live, fork, applied.new_chunk, push.ops, admitted);
        drop(working);
        let write = push.write;
        let (heads, reply, base_missing) = (applied.heads, applied.reply, applied.base_missing);
        Ok(Box::pin(async move {
            Stored {
                write,
                doc: id,
                heads,
                reply,
                base_missing,
                wrote,
                stored: stored.await,
                retry,
            }
        }))
    }

    /// A sync message for a record: applied to a fork, judged, and stored
    /// if it brought admitted changes. None for a repair still gathering
    /// the record's changes (nothing to acknowledge yet).
    fn on_sync(
        &self,
        driver: &mut ServerDriver,
        caller: &Caller,
        write: WriteId,
        msg: SyncMsg,
        checks: Option<WriteChecks>,
    ) -> Result<Option<Waiting>, Refusal> {
        let id = msg.doc;
        let handle = match self.target(caller, id, checks)? {
            Target::Stored(handle) => Some(handle),
            Target::Hidden => None,
            Target::Repair => {
                return self
                    .on_repair_sync(driver, caller, id, &msg.data)
                    .map(|()| None)
            }
        };
        let mut working = Working::of(handle.as_ref());
        let live: &mut LiveDoc = &mut working;
        let before = live.doc.get_heads();
        let before_header = live.header();
        let mut fork = live.doc.clone();
        driver
            .apply_sync(id, &mut fork, &msg.data)
            .map_err(|err| self.refuse_applied(caller, id, &err))?;
        let new_changes = docsync::contained(|| Ok(fork.get_changes(&before)))
            .map_err(|err| self.refuse_applied(caller, id, &err))?;
        let chunk = docsync::encode_changes(&new_changes);
        let ops: usize = new_changes.iter().map(docsync::ops_in).sum();
        let mut admitted = None;
        if !chunk.is_empty() {
            // Checked once applied: what a sync message holds is only
            // known then (the message itself was held to the per-message
            // operation limit before it was applied).
            self.within_limits(id, live, chunk.len(), ops)?;
            admitted = Some(self.judge(caller, id, &fork, &new_changes, before_header)?);
            if handle.is_none() {
                return Err(hidden_creation(id));
            }
        }
        let (wrote, stored) = self.keep_fork(id, live, fork, chunk, ops, admitted);
        let heads = baraza_protocol::to_heads(&live.doc.get_heads());
        drop(working);
        Ok(Some(Box::pin(async move {
            Stored {
                write,
                doc: id,
                heads,
                reply: Vec::new(),
                base_missing: false,
                wrote,
                stored: stored.await,
                retry: None,
            }
        })))
    }

    /// Makes a judged fork the cached copy and hands its new chunk (if
    /// any) to the committer. Called under the document's lock, so writes
    /// to one document reach the committer in the order they were applied.
    /// Returns what the write did and the wait for it to be durable.
    fn keep_fork(
        &self,
        id: DocId,
        live: &mut LiveDoc,
        fork: automerge::Automerge,
        chunk: Vec<u8>,
        ops: usize,
        admitted: Option<super::Admitted>,
    ) -> (
        Option<WriteSummary>,
        impl Future<Output = Result<Seq, NotStored>> + Send + 'static,
    ) {
        live.doc = fork;
        if admitted.is_some() {
            live.ops += ops;
        }
        let (index, wrote, receipt) = split_admitted(admitted);
        let rx = Docs::write_for(id, live, chunk, index, receipt).map(|w| self.docs.submit(w));
        let at = *self.docs.durable().borrow();
        (wrote, wait_stored(rx, at))
    }

    /// Refuses what grows a document past its byte or operation limit,
    /// counted on what the changes decode to.
    fn within_limits(
        &self,
        id: DocId,
        live: &LiveDoc,
        bytes: usize,
        ops: usize,
    ) -> Result<(), Refusal> {
        if live.bytes + bytes > self.limits.doc_bytes_max {
            return Err(refusal(
                ErrorCode::DocTooLarge,
                format!(
                    "document {id} would grow to {} bytes, over the limit of {} bytes",
                    live.bytes + bytes,
                    self.limits.doc_bytes_max
                ),
            ));
        }
        if live.ops + ops > self.limits.doc_ops_max {
            return Err(refusal(
                ErrorCode::DocTooLarge,
                format!(
                    "document {id} would hold {} operations, over the limit of {}",
                    live.ops + ops,
                    self.limits.doc_ops_max
                ),
            ));
        }
        Ok(())
    }

    /// Answers bytes that could not be applied. They were applied to a
    /// fork, so the cached copy is whole whatever automerge did to it.
    fn refuse_applied(&self, caller: &Caller, id: DocId, err: &ApplyError) -> Refusal {
        if let ApplyError::Panicked(why) = err {
            tracing::error!(doc = %id, device = %caller.device.id, panic = %why, "automerge failed an internal check on a device's changes; refused");
            self.audit_refusal(caller, id, None, &err.to_string());
        }
        refusal(
            baraza_protocol::apply_error_code(err),
            format!("document {id}: {err}"),
        )
    }

    /// Runs [`admit`] on a fork the device's changes were applied to; a
    /// refusal is audited and returned.
    fn judge(
        &self,
        caller: &Caller,
        id: DocId,
        fork: &automerge::Automerge,
        changes: &[automerge::Change],
        before_header: Option<Header>,
    ) -> Result<super::Admitted, Refusal> {
        let clock = self.clock_check();
        let rules = self
            .write_rules
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(&caller.principal);
        // The schema and rule checks read what the changes built; a panic
        // there is contained like one while applying them.
        let checked = docsync::contained(|| {
            Ok(admit(
                id,
                &caller.device,
                rules,
                fork,
                changes,
                before_header,
                clock,
            ))
        })
        .map_err(|err| self.refuse_applied(caller, id, &err))?;
        checked.map_err(|refused| {
            tracing::info!(doc = %id, device = %caller.device.id, rule = ?refused.rule, message = %refused.message, "change refused");
            self.audit_refusal(caller, id, refused.rule.map(|r| r.name()), &refused.message);
            Refusal {
                code: refused.code,
                rule: refused.rule.map(|r| r.name().to_string()),
                message: refused.message,
            }
        })
    }

    /// Asks this device, by the sync protocol from an empty document, for
    /// every damaged record it may read: a device that holds one answers
    /// with its changes, which rebuild it (see `on_repair_sync`).
    fn offer_repairs(&self, driver: &mut ServerDriver, caller: &Caller) {
        let damaged = match self.docs.store().quarantines() {
            Ok(q) => q,
            Err(err) => {
                tracing::error!(error = %err, "could not list quarantined records");
                return;
            }
        };
        for (id, why) in damaged {
            if why.starts_with(DAMAGED) && self.readable(&caller.principal, id).unwrap_or(false) {
                driver.start_sync(id, &automerge::Automerge::new());
            }
        }
    }

    /// A device's copy of a damaged record, arriving by the sync protocol.
    /// Once the rebuilt copy holds every head the store recorded, it is
    /// stored at exactly those heads as one compacted save (replacing the
    /// damaged chunks), and the quarantine is lifted when that is durable.
    /// Only what the server had acknowledged goes in: the changes were
    /// admitted when first stored, and their hashes prove them the same;
    /// anything newer the device holds it pushes afterwards, admitted as
    /// usual.
    fn on_repair_sync(
        &self,
        driver: &mut ServerDriver,
        caller: &Caller,
        id: DocId,
        data: &[u8],
    ) -> Result<(), Refusal> {
        let store = self.docs.store();
        let recorded = match store.heads_at(id, Seq::MAX) {
            Ok(Some(h)) => baraza_protocol::to_hashes(&h),
            Ok(None) => return Err(quarantined(id)),
            Err(err) => return Err(self.storage_refusal(id, &DocsError::Store(err))),
        };
        let mut repairs = self.repairs.lock().unwrap_or_else(|p| p.into_inner());
        let doc = repairs.entry(id).or_default();
        if let Err(err) = driver.apply_sync(id, doc, data) {
            repairs.remove(&id);
            return Err(refusal(
                baraza_protocol::apply_error_code(&err),
                format!("document {id}: {err}"),
            ));
        }
        let complete = recorded
            .iter()
            .all(|h| doc.get_change_meta_by_hash(h).is_some());
        if !complete {
            return Ok(());
        }
        let rebuilt = docsync::contained(|| {
            doc.fork_at(&recorded)
                .map_err(|e| ApplyError::Corrupt(e.to_string()))
        });
        repairs.remove(&id);
        drop(repairs);
        let rebuilt = match rebuilt {
            Ok(d) => d,
            Err(err) => {
                tracing::error!(record = %id, error = %err, "a device's copy did not rebuild a damaged record");
                return Err(quarantined(id));
            }
        };
        let index = Header::read(&rebuilt)
            .ok()
            .map(|h| index_entry(h, &rebuilt));
        let write = crate::storage::store::DocWrite {
            doc: id,
            chunk: rebuilt.save(),
            heads: baraza_protocol::to_heads(&rebuilt.get_heads()),
            rebuild: true,
            index,
            erase: false,
            receipt: None,
        };
        self.docs.forget(id);
        let rx = self.docs.submit(write);
        tracing::info!(record = %id, device = %caller.device.id, "damaged record rebuilt from a device's copy");
        // Lifted once durable, on a task of its own: the device may hang up
        // before then, and the repair must not depend on it staying.
        let store = self.docs.store().clone();
        let audit = self.audit.clone();
        let by = serde_json::json!({
            "record": id.to_string(),
            "device": caller.device.id.to_hex(),
            "user": caller.principal.user,
        });
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(_)) => match store.release_quarantine(id) {
                    Ok(_) => audit.record("record_repaired", by),
                    Err(err) => {
                        tracing::error!(record = %id, error = %err, "could not lift a repaired record's quarantine")
                    }
                },
                _ => {
                    tracing::error!(record = %id, "the rebuilt record was not stored; it stays quarantined")
                }
            }
        });
        Ok(())
    }

    /// Reads ahead for a batch of tasks that write several records: their
    /// admission checks in one read, and their stored copies loaded into
    /// the cache in another, so a reconnecting tablet's hundred pushes
    /// cost two round trips to a database, not two hundred. Best effort:
    /// what is not read here is read per record as before.
    fn read_ahead(&self, tasks: &[Task]) -> HashMap<DocId, WriteChecks> {
        let mut seen = HashSet::new();
        let ids: Vec<DocId> = tasks
            .iter()
            .filter_map(|t| match t {
                Task::Admit(push) => Some(push.doc),
                Task::Sync { msg, .. } => Some(msg.doc),
                _ => None,
            })
            .filter(|id| seen.insert(*id))
            .collect();
        if ids.len() < 2 {
            return HashMap::new();
        }
        let checks = match self.docs.store().write_checks(&ids) {
            Ok(checks) if checks.len() == ids.len() => checks,
            _ => return HashMap::new(),
        };
        // Only records admission will load: not erased, not quarantined.
        let loads: Vec<DocId> = ids
            .iter()
            .zip(&checks)
            .filter(|(_, c)| c.stored && c.erased.is_none() && c.quarantined.is_none())
            .map(|(id, _)| *id)
            .collect();
        self.docs.prefetch(&loads);
        ids.into_iter().zip(checks).collect()
    }

    /// What a device's changes to `id` are applied to (a stored or new
    /// record's cached copy, loaded here). A record the caller
    /// may not read (or an erased one it could not read) is `Hidden`: it is
    /// answered as one that does not exist, from an empty copy, and the
    /// attempt is audited.
    fn target(
        &self,
        caller: &Caller,
        id: DocId,
        checks: Option<WriteChecks>,
    ) -> Result<Target, Refusal> {
        let hidden = |hub: &Self| {
            hub.audit.record(
                "record_write_refused",
                serde_json::json!({
                    "record": id.to_string(),
                    "user": caller.principal.user,
                    "device": caller.device.id.to_hex(),
                }),
            );
            Ok(Target::Hidden)
        };
        let checks = match checks {
            Some(checks) => checks,
            None => match self.docs.store().write_checks(&[id]) {
                Ok(mut checks) if checks.len() == 1 => checks.remove(0),
                Ok(_) => {
                    let err = StoreError::Corrupt {
                        tree: "docs",
                        reason: "write checks answered another number of records".into(),
                    };
                    return Err(self.storage_refusal(id, &DocsError::Store(err)));
                }
                Err(err) => return Err(self.storage_refusal(id, &DocsError::Store(err))),
            },
        };
        match checks.erased {
            None => {}
            Some(a) => {
                let could_read = baraza_records::Kind::parse(&a.kind).is_some_and(|kind| {
                    caller
                        .principal
                        .may_read_parts(kind, &a.area, &a.created_by)
                });
                if !could_read {
                    return hidden(self);
                }
                return Err(refusal(
                    ErrorCode::Erased,
                    format!("record {id} was erased by an administrator; delete it"),
                ));
            }
        }
        match self.access_checked(id, &checks) {
            Ok(Some(a))
                if !caller
                    .principal
                    .may_read_parts(a.kind, &a.area, &a.created_by) =>
            {
                return hidden(self)
            }
            Ok(_) => {}
            Err(err) => return Err(self.storage_refusal(id, &err)),
        }
        match checks.quarantined {
            None => self
                .docs
                .handle(id)
                .map(Target::Stored)
                .map_err(|e| self.storage_refusal(id, &e)),
            Some(why) if why.starts_with(DAMAGED) => Ok(Target::Repair),
            Some(_) => Err(quarantined(id)),
        }
    }

    /// A record that could not be loaded: one whose stored bytes are
    /// damaged is quarantined (and rebuilt from a device's copy later).
    fn storage_refusal(&self, id: DocId, err: &DocsError) -> Refusal {
        if let DocsError::Load(_, why) = err {
            if let Err(err) = self.quarantine_damaged(id, why) {
                tracing::error!(record = %id, error = %err, "could not quarantine a damaged record");
            }
            return quarantined(id);
        }
        tracing::error!(doc = %id, error = %err, "could not load document");
        refusal(
            ErrorCode::StorageFailure,
            format!("document {id} could not be loaded: {err}"),
        )
    }

    /// The driver's audit events as audit log entries.
    fn audit_session_event(&self, caller: &Caller, event: AuditEvent) {
        match event {
            AuditEvent::SessionEnded(summary) => {
                let details = serde_json::json!({
                    "device": caller.device.id.to_hex(),
                    "user": caller.principal.user,
                    "frames_received": summary.frames_received,
                    "received": tally_json(&summary.received),
                    "received_count": summary.received.count(),
                    "sent": tally_json(&summary.sent),
                    "sent_count": summary.sent.count(),
                    "feed_position": summary.feed_position,
                });
                self.audit.record("sync", details);
            }
            AuditEvent::DeviceRetired { report } => self.audit.record(
                "device_retired",
                serde_json::json!({
                    "device": caller.device.id.to_hex(),
                    "user": caller.principal.user,
                    "report": report,
                }),
            ),
        }
    }
}

/// A bounded list of records and heads, as the `sync` audit entry lists
/// them (the full count beside it).
fn tally_json(tally: &RecordTally) -> serde_json::Value {
    tally
        .listed()
        .iter()
        .map(|(doc, heads)| serde_json::json!({ "record": doc.to_string(), "heads": hex_heads(heads) }))
        .collect()
}

/// A whole new record pushed under the id of one the caller may not read:
/// it cannot be stored, and saying why would confirm the id.
fn hidden_creation(id: DocId) -> Refusal {
    refusal(
        ErrorCode::InvalidRecord,
        format!("record {id}: this record id cannot be used; create records with fresh ids"),
    )
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes every queued frame (and a keepalive ping when due), flushing
/// once at the end rather than per frame: a catch-up batch is hundreds of
/// small frames.
async fn send_all(
    driver: &mut ServerDriver,
    ping: bool,
    sink: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
) -> Result<(), warp::Error> {
    let mut any = false;
    while let Some(frame) = driver.poll_transmit() {
        sink.feed(WsMessage::binary(frame)).await?;
        any = true;
    }
    if ping {
        sink.feed(WsMessage::ping(Vec::new())).await?;
        any = true;
    }
    if any {
        sink.flush().await?;
    }
    Ok(())
}
