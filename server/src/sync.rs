//! The WebSocket sync endpoint: one task per connection drives a
//! [`ServerSession`] and carries out its events against [`Docs`].
//!
//! The task `select!`s on the socket, on writes becoming durable (to answer
//! pushes in order), on the durable feed moving (live push to this device)
//! and on shutdown. Pushes are pipelined: the task keeps reading while
//! earlier pushes wait for their group commit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use baraza_protocol::docsync;
use baraza_protocol::{
    DocId, ErrorCode, Feed, Head, Limits, PushOutcome, Seq, ServerEvent, ServerSession,
};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use warp::ws::{Message as WsMessage, WebSocket};

use crate::docs::{Docs, DocsError};
use crate::store::{IndexEntry, RecordFilter, RecordRow, SledStore, Store};
use baraza_records::Header;

/// Documents kept in memory by default.
pub const CACHE_DOCS_DEFAULT: usize = 4096;
/// Feed entries read per catch-up step, bounding what one step holds.
const CATCH_UP_BATCH: usize = 256;

/// Everything the sync endpoint needs, shared by all connections.
pub struct SyncHub {
    docs: Arc<Docs>,
    limits: Limits,
    audit: crate::audit::AuditLog,
}

/// The device a connection authenticated as.
#[derive(Clone, Debug)]
pub struct DeviceIdentity {
    /// Stable device id (hex).
    pub id: String,
    /// Human-readable name given at `device add`.
    pub name: String,
    /// The user who enrolled the device, if a user did.
    pub user: Option<String>,
}

type Completion = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A write this connection waits on, in the order it must answer them.
enum Done {
    Push {
        doc: DocId,
        heads: Vec<Head>,
        reply: Vec<u8>,
        base_missing: bool,
        stored: Result<Seq, String>,
    },
    Sync {
        doc: DocId,
        heads: Vec<Head>,
        stored: Result<Seq, String>,
    },
}

async fn wait_stored(
    rx: Option<oneshot::Receiver<Result<Seq, String>>>,
    now: Seq,
) -> Result<Seq, String> {
    match rx {
        Some(rx) => rx
            .await
            .unwrap_or_else(|_| Err("the server is shutting down".into())),
        None => Ok(now),
    }
}

/// Writes every queued frame, flushing once at the end rather than per
/// frame: a catch-up batch is hundreds of small frames.
async fn send_all(
    session: &mut ServerSession,
    sink: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
) -> Result<(), warp::Error> {
    let mut any = false;
    while let Some(frame) = session.poll_transmit() {
        sink.feed(WsMessage::binary(frame)).await?;
        any = true;
    }
    if any {
        sink.flush().await?;
    }
    Ok(())
}

impl SyncHub {
    /// Opens the document store inside `db` with default limits.
    pub fn open(db: sled::Db) -> anyhow::Result<Arc<SyncHub>> {
        SyncHub::open_with(db, Limits::DEFAULT, CACHE_DOCS_DEFAULT)
    }

    /// Opens the document store inside `db`.
    pub fn open_with(
        db: sled::Db,
        limits: Limits,
        cache_docs: usize,
    ) -> anyhow::Result<Arc<SyncHub>> {
        let audit = crate::audit::AuditLog::open(&db)?;
        let store = SledStore::open(db, rand::random())?;
        tracing::info!(
            store = ?store.store_id(),
            documents = store.doc_count()?,
            feed = store.latest_seq()?,
            "document store open"
        );
        let docs = Docs::start(Arc::new(store), cache_docs)?;
        Ok(Arc::new(SyncHub {
            docs,
            limits,
            audit,
        }))
    }

    /// Records matching a filter, from the index (no document is loaded).
    pub fn list_records(
        &self,
        filter: &RecordFilter,
        limit: usize,
    ) -> Result<Vec<RecordRow>, DocsError> {
        Ok(self.docs.store().list_records(filter, limit)?)
    }

    /// One record as JSON: header, review state, fields, conflicts (each
    /// value with its actor and time) and history (who, when, which
    /// fields). None if there is no such record.
    pub fn record_view(&self, id: DocId) -> Result<Option<serde_json::Value>, DocsError> {
        self.audit.record(
            "record_read",
            serde_json::json!({ "record": id.to_string() }),
        );
        if self.docs.store().doc_seq(id)?.is_none() {
            return Ok(None);
        }
        let handle = self.docs.handle(id)?;
        let live = handle.lock().unwrap_or_else(|p| p.into_inner());
        let doc = &live.doc;
        let header = Header::read(doc).ok();
        Ok(Some(serde_json::json!({
            "id": id.to_string(),
            "header": header,
            "review_state": baraza_records::review_state(doc),
            "fields": to_json(doc, &automerge::ROOT),
            "conflicts": baraza_records::conflicts(doc),
            "history": baraza_records::history(doc),
        })))
    }

    /// The audit log.
    pub fn audit(&self) -> &crate::audit::AuditLog {
        &self.audit
    }

    /// The limits this hub enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Commits what is queued, flushes, and marks the store cleanly closed.
    /// Called once at graceful shutdown.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.docs.shutdown()?;
        Ok(())
    }

    /// Serves one upgraded WebSocket until it closes or `shutdown` fires.
    pub async fn serve_socket(
        self: Arc<Self>,
        ws: WebSocket,
        device: DeviceIdentity,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (mut sink, mut stream) = ws.split();
        let mut session = ServerSession::new(self.limits.clone());
        let mut durable = self.docs.durable();
        let mut durable_open = true;
        let mut pending: FuturesOrdered<Completion> = FuturesOrdered::new();
        let mut frames = 0usize;
        tracing::info!(device = %device.id, name = %device.name, "device connected");
        loop {
            if send_all(&mut session, &mut sink).await.is_err() {
                break;
            }
            if session.is_closed() {
                let _ = sink.close().await;
                break;
            }
            let reading = pending.len() < self.limits.pushes_in_flight_max;
            let feed_due = session.is_established()
                && pending.is_empty()
                && session.sent_seq() < *durable.borrow();
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    let _ = sink.send(WsMessage::close_with(1001u16, "server shutting down")).await;
                    break;
                }
                frame = stream.next(), if reading => match frame {
                    Some(Ok(msg)) if msg.is_binary() || msg.is_text() => {
                        if let Err(err) = self.on_frame(&mut session, msg.as_bytes(), &mut pending, &device) {
                            tracing::debug!(device = %device.id, error = %err, "closing session");
                        }
                        frames += 1;
                    }
                    Some(Ok(msg)) if msg.is_close() => break,
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        tracing::debug!(device = %device.id, error = %err, "websocket error");
                        break;
                    }
                    None => break,
                },
                Some(done) = pending.next() => self.on_done(&mut session, done),
                changed = durable.changed(), if durable_open => {
                    if changed.is_err() {
                        durable_open = false;
                    }
                }
                // The feed goes out only when nothing above is ready: a
                // device's own pushes and their acks come first, one batch
                // per pass. Never while pushes wait for their commit: the
                // feed may already show their writes, and only the push
                // replies (which mark those documents as carried) keep a
                // device from being sent its own changes back.
                _ = std::future::ready(()), if feed_due => {
                    let mut feed = HubFeed { docs: &self.docs };
                    if let Err(err) = session.catch_up(&mut feed, *durable.borrow(), CATCH_UP_BATCH) {
                        tracing::warn!(device = %device.id, error = %err, "catch-up failed");
                        break;
                    }
                }
            }
        }
        tracing::info!(device = %device.id, frames, "device disconnected");
        self.audit.record(
            "sync",
            serde_json::json!({
                "device": device.id,
                "user": device.user,
                "frames_received": frames,
                "records_sent": session.records_sent(),
                "feed_position": session.sent_seq(),
            }),
        );
    }

    fn on_frame(
        &self,
        session: &mut ServerSession,
        frame: &[u8],
        pending: &mut FuturesOrdered<Completion>,
        device: &DeviceIdentity,
    ) -> Result<(), baraza_protocol::SessionError> {
        for event in session.handle_frame(frame)? {
            match event {
                ServerEvent::Hello(hello) => {
                    let seq = *self.docs.durable().borrow();
                    session.accept(&hello, self.docs.store().store_id(), seq);
                    tracing::debug!(device = %device.id, cursor = hello.cursor, feed = seq, "hello");
                }
                ServerEvent::Push {
                    doc,
                    heads,
                    changes,
                    bytes,
                    ..
                } => self.on_push(session, pending, device, doc, heads, changes, bytes),
                ServerEvent::Sync(msg) => {
                    self.on_sync(session, pending, device, msg.doc, &msg.data)
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_push(
        &self,
        session: &mut ServerSession,
        pending: &mut FuturesOrdered<Completion>,
        device: &DeviceIdentity,
        id: DocId,
        client_heads: Vec<Head>,
        changes: Vec<automerge::Change>,
        bytes: usize,
    ) {
        let handle = match self.docs.handle(id) {
            Ok(h) => h,
            Err(err) => return self.storage_refusal(session, id, &err),
        };
        let mut live = handle.lock().unwrap_or_else(|p| p.into_inner());
        if live.bytes + bytes > self.limits.doc_bytes_max {
            let message = format!(
                "document {id} would grow to {} bytes, over the limit of {} bytes",
                live.bytes + bytes,
                self.limits.doc_bytes_max
            );
            return session.refuse(id, ErrorCode::DocTooLarge, message);
        }
        let before = live.doc.get_heads();
        let before_header = Header::read(&live.doc).ok();
        let applied = match docsync::apply_push(&mut live.doc, changes, &client_heads) {
            Ok(a) => a,
            Err(err) => {
                self.docs.restore(id, &mut live);
                return session.refuse(
                    id,
                    ErrorCode::CorruptChanges,
                    format!("document {id}: {err}"),
                );
            }
        };
        let mut index = None;
        if !applied.new_chunk.is_empty() {
            index = match self.admit_or_refuse(
                session,
                device,
                id,
                &mut live,
                &before,
                before_header,
            ) {
                Some(entry) => Some(entry),
                None => return,
            };
        }
        if applied.base_missing {
            session.start_sync(id, &live.doc);
        }
        // Submitted under the document's lock, so writes to one document
        // reach the committer in the order they were applied.
        let rx =
            Docs::write_for(id, &mut live, applied.new_chunk, index).map(|w| self.docs.submit(w));
        drop(live);
        let now = *self.docs.durable().borrow();
        let heads = applied.heads;
        let reply = applied.reply;
        let base_missing = applied.base_missing;
        pending.push_back(Box::pin(async move {
            Done::Push {
                doc: id,
                heads,
                reply,
                base_missing,
                stored: wait_stored(rx, now).await,
            }
        }));
    }

    fn on_sync(
        &self,
        session: &mut ServerSession,
        pending: &mut FuturesOrdered<Completion>,
        device: &DeviceIdentity,
        id: DocId,
        data: &[u8],
    ) {
        let handle = match self.docs.handle(id) {
            Ok(h) => h,
            Err(err) => return self.storage_refusal(session, id, &err),
        };
        let mut live = handle.lock().unwrap_or_else(|p| p.into_inner());
        let before = live.doc.get_heads();
        let before_header = Header::read(&live.doc).ok();
        match session.receive_sync(id, &mut live.doc, data) {
            Ok(_) => {}
            Err(err) => {
                self.docs.restore(id, &mut live);
                return session.refuse(
                    id,
                    ErrorCode::CorruptChanges,
                    format!("document {id}: {err}"),
                );
            }
        }
        let chunk = docsync::encode_changes(&live.doc.get_changes(&before));
        let mut index = None;
        if !chunk.is_empty() {
            index = match self.admit_or_refuse(
                session,
                device,
                id,
                &mut live,
                &before,
                before_header,
            ) {
                Some(entry) => Some(entry),
                None => return,
            };
        }
        if live.bytes + chunk.len() > self.limits.doc_bytes_max {
            self.docs.restore(id, &mut live);
            let message = format!(
                "document {id} would grow past the limit of {} bytes",
                self.limits.doc_bytes_max
            );
            return session.refuse(id, ErrorCode::DocTooLarge, message);
        }
        let rx = Docs::write_for(id, &mut live, chunk, index).map(|w| self.docs.submit(w));
        let heads = baraza_protocol::to_heads(&live.doc.get_heads());
        drop(live);
        let now = *self.docs.durable().borrow();
        pending.push_back(Box::pin(async move {
            Done::Sync {
                doc: id,
                heads,
                stored: wait_stored(rx, now).await,
            }
        }));
    }

    /// Runs [`admit`] on changes just applied to `live`. On refusal the
    /// live copy is restored, the refusal audited and sent, and None
    /// returned: the caller stops there.
    fn admit_or_refuse(
        &self,
        session: &mut ServerSession,
        device: &DeviceIdentity,
        id: DocId,
        live: &mut crate::docs::LiveDoc,
        before: &[automerge::ChangeHash],
        before_header: Option<Header>,
    ) -> Option<IndexEntry> {
        match admit(id, device, &live.doc, before, before_header) {
            Ok(entry) => Some(entry),
            Err((code, message)) => {
                self.docs.restore(id, live);
                tracing::info!(doc = %id, device = %device.id, %message, "change refused");
                self.audit.record(
                    "change_refused",
                    serde_json::json!({
                        "device": device.id,
                        "user": device.user,
                        "record": id.to_string(),
                        "reason": message,
                    }),
                );
                session.refuse(id, code, message);
                None
            }
        }
    }

    fn on_done(&self, session: &mut ServerSession, done: Done) {
        match done {
            Done::Push {
                doc,
                heads,
                reply,
                base_missing,
                stored: Ok(seq),
            } => session.push_applied(
                doc,
                PushOutcome {
                    heads,
                    reply,
                    seq,
                    base_missing,
                },
            ),
            Done::Sync {
                doc,
                heads,
                stored: Ok(seq),
            } => session.acknowledge(doc, heads, seq),
            Done::Push {
                doc,
                stored: Err(err),
                ..
            }
            | Done::Sync {
                doc,
                stored: Err(err),
                ..
            } => {
                self.docs.forget(doc);
                session.refuse(
                    doc,
                    ErrorCode::StorageFailure,
                    format!("document {doc} was not stored: {err}; retry later"),
                );
            }
        }
    }

    fn storage_refusal(&self, session: &mut ServerSession, id: DocId, err: &DocsError) {
        tracing::error!(doc = %id, error = %err, "could not load document");
        session.refuse(
            id,
            ErrorCode::StorageFailure,
            format!("document {id} could not be loaded: {err}"),
        );
    }
}

/// A document's current values as JSON (the value shown where fields
/// conflict; `conflicts` lists the others).
fn to_json(doc: &automerge::Automerge, obj: &automerge::ObjId) -> serde_json::Value {
    use automerge::{ObjType, ReadDoc, ScalarValue, Value};
    let value = |v: Value<'_>, id: automerge::ObjId| match v {
        Value::Object(ObjType::Map | ObjType::Table | ObjType::List) => to_json(doc, &id),
        Value::Object(ObjType::Text) => {
            serde_json::Value::String(doc.text(&id).unwrap_or_default())
        }
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => serde_json::Value::String(s.to_string()),
            ScalarValue::Int(i) | ScalarValue::Timestamp(i) => serde_json::json!(i),
            ScalarValue::Uint(u) => serde_json::json!(u),
            ScalarValue::F64(f) => serde_json::json!(f),
            ScalarValue::Boolean(b) => serde_json::json!(b),
            ScalarValue::Null => serde_json::Value::Null,
            other => serde_json::Value::String(other.to_string()),
        },
    };
    match doc.object_type(obj) {
        Ok(ObjType::List) => serde_json::Value::Array(
            (0..doc.length(obj))
                .filter_map(|i| doc.get(obj, i).ok().flatten())
                .map(|(v, id)| value(v, id))
                .collect(),
        ),
        _ => serde_json::Value::Object(
            doc.keys(obj)
                .filter(|k| !(obj == &automerge::ROOT && k == "header"))
                .filter_map(|k| {
                    let (v, id) = doc.get(obj, k.as_str()).ok().flatten()?;
                    Some((k, value(v, id)))
                })
                .collect(),
        ),
    }
}

/// Decides whether changes a device just added to a record may stay: every
/// new change must be authored under one of the device's own actor ids
/// (automerge does not authenticate actors, so the server must), and the
/// record must still fit its schema with its header unchanged. A new
/// record must name the pushing device as its creator.
fn admit(
    id: DocId,
    device: &DeviceIdentity,
    doc: &automerge::Automerge,
    before: &[automerge::ChangeHash],
    before_header: Option<Header>,
) -> Result<IndexEntry, (ErrorCode, String)> {
    let prefix = hex::decode(&device.id).unwrap_or_default();
    for change in doc.get_changes(before) {
        if !change.actor_id().to_bytes().starts_with(&prefix) {
            return Err((
                ErrorCode::Forbidden,
                format!(
                    "record {id}: change {} is authored under actor {}, which is not one of this device's; \
                     a device may only author changes under its own actor ids",
                    change.hash(),
                    change.actor_id()
                ),
            ));
        }
    }
    let invalid = |e: String| (ErrorCode::InvalidRecord, format!("record {id}: {e}"));
    let header = baraza_records::validate(doc).map_err(|e| invalid(e.to_string()))?;
    if header.id != id.to_string() {
        return Err(invalid(format!(
            "header field id: {:?} is not this record's id",
            header.id
        )));
    }
    match before_header {
        Some(old) => {
            if let Some(field) = old.differs_from(&header) {
                return Err(invalid(
                    baraza_records::SchemaError::HeaderChanged(field).to_string(),
                ));
            }
        }
        None if header.created_by_device != device.id => {
            return Err(invalid(format!(
                "header field created_by_device: names {:?}, but the record was pushed by device {}",
                header.created_by_device, device.id
            )));
        }
        None => {}
    }
    Ok(IndexEntry {
        kind: header.kind.name().to_string(),
        area: header.area,
        state: baraza_records::review_state(doc),
        created_at: header.created_at,
    })
}

/// The store seen as the session's [`Feed`].
struct HubFeed<'a> {
    docs: &'a Docs,
}

impl Feed for HubFeed<'_> {
    type Error = DocsError;

    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, DocsError> {
        Ok(self.docs.store().entries_after(after, upto, limit)?)
    }

    fn changes_since(
        &mut self,
        doc: DocId,
        base: Seq,
    ) -> Result<Option<baraza_protocol::DocDelta>, DocsError> {
        let store = self.docs.store();
        if base == 0 {
            // A client that never had the document gets the stored bytes as
            // they are: no document is loaded, so a cold start costs reads only.
            return self.docs.stored(doc);
        }
        if let Some(c) = store.chunks_after(doc, base)? {
            return Ok(Some(baraza_protocol::DocDelta {
                heads: c.heads,
                data: c.bytes,
                seq: c.seq,
            }));
        }
        // Compacted past the client's position: compute the delta.
        let Some(base_heads) = store.heads_at(doc, base)? else {
            return self.docs.stored(doc);
        };
        let handle = self.docs.handle(doc)?;
        let live = handle.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the document's lock: every committed write was
        // applied to the live copy before its commit, so this copy holds
        // at least the state at that position.
        let seq = store.doc_seq(doc)?.unwrap_or(0);
        let data = docsync::encode_changes(&docsync::changes_since(&live.doc, &base_heads));
        Ok(Some(baraza_protocol::DocDelta {
            heads: baraza_protocol::to_heads(&live.doc.get_heads()),
            data,
            seq,
        }))
    }
}
