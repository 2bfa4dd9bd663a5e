//! The client's side of a sync, over any store.
//!
//! [`ClientDriver`] wraps a [`ClientSession`] and carries out its events
//! against a [`Replica`]: the tablet's sled store in the SDK, a map in the
//! simulator. It decides which documents to push, folds acknowledgements
//! into what the client knows the server holds, and moves the cursor. The
//! store is a trait whose calls can fail, so a full disk on a tablet ends
//! the sync with an error instead of losing an edit.

use std::collections::{HashSet, VecDeque};

use automerge::Automerge;

use crate::docsync;
use crate::limits::Limits;
use crate::message::*;
use crate::session::{ClientEvent, ClientSession, SessionError, SyncCounts};

/// A client's durable state, as the sync needs it.
pub trait Replica {
    /// The store's failure type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Loads a document, if held.
    fn doc(&mut self, id: DocId) -> Result<Option<Automerge>, Self::Error>;
    /// Stores a document (new or changed by the sync).
    fn put_doc(&mut self, id: DocId, doc: &Automerge) -> Result<(), Self::Error>;
    /// Stores a document this replica did not hold, received as `bytes`
    /// (a saved document and chunks, as the server keeps it) that load to
    /// exactly `doc`. A store may keep the bytes as they are instead of
    /// saving `doc` again: a cold start receives thousands.
    fn put_received(
        &mut self,
        id: DocId,
        doc: &Automerge,
        _bytes: &[u8],
    ) -> Result<(), Self::Error> {
        self.put_doc(id, doc)
    }
    /// Heads the server is known to hold for the document.
    fn known(&mut self, id: DocId) -> Result<Vec<Head>, Self::Error>;
    /// Records what the server holds; `settled` is true when that covers
    /// the whole document, so it no longer needs pushing.
    fn set_known(&mut self, id: DocId, heads: &[Head], settled: bool) -> Result<(), Self::Error>;
    /// Documents with changes the server has not acknowledged.
    fn unacknowledged(&mut self) -> Result<Vec<DocId>, Self::Error>;
    /// The store id and cursor of the last sync.
    fn cursor(&mut self) -> Result<(Option<StoreId>, Seq), Self::Error>;
    /// Moves the cursor. Must not be durable before the documents stored
    /// ahead of it are.
    fn set_cursor(&mut self, store: StoreId, seq: Seq) -> Result<(), Self::Error>;
    /// The server's store changed: forget the cursor and all known heads, so
    /// every document is offered again.
    fn reset(&mut self, store: StoreId) -> Result<(), Self::Error>;
    /// The server refused a document's changes for good (a rule, the
    /// schema, the size): keep them, say why and by which rule, and stop
    /// offering the document until it is edited again.
    fn refused(
        &mut self,
        id: DocId,
        code: ErrorCode,
        rule: Option<&str>,
        message: &str,
    ) -> Result<(), Self::Error>;
    /// An administrator erased the document: delete it and everything kept
    /// about it, unsent changes included.
    fn erase(&mut self, id: DocId) -> Result<(), Self::Error>;
    /// The server named these devices (authors of changes this replica
    /// holds): keep the names, replacing older ones. Need not be durable
    /// before the cursor is.
    fn device_names(&mut self, _names: &[DeviceName]) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriveError<E: std::error::Error + 'static> {
    /// The session failed (bad frame, version, peer error).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(#[source] E),
}

/// One sync connection's worth of client work.
#[derive(Debug)]
pub struct ClientDriver {
    session: ClientSession,
    queue: VecDeque<DocId>,
    queued: HashSet<DocId>,
    refused: HashSet<DocId>,
    store: Option<StoreId>,
    /// A cursor that arrived while a repair was open, persisted once the
    /// repairs are done.
    held_cursor: Option<Seq>,
    retire_requested: bool,
}

impl ClientDriver {
    /// Starts a session from the replica's cursor and queues every document
    /// with unacknowledged changes.
    pub fn new<R: Replica>(limits: Limits, replica: &mut R) -> Result<Self, DriveError<R::Error>> {
        let (store, cursor) = replica.cursor().map_err(DriveError::Store)?;
        let mut driver = ClientDriver {
            session: ClientSession::new(limits, store, cursor),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            refused: HashSet::new(),
            store,
            held_cursor: None,
            retire_requested: false,
        };
        for id in replica.unacknowledged().map_err(DriveError::Store)? {
            driver.enqueue(id);
        }
        Ok(driver)
    }

    /// Queues a document the app changed while connected.
    pub fn enqueue(&mut self, id: DocId) {
        if !self.refused.contains(&id) && self.queued.insert(id) {
            self.queue.push_back(id);
        }
    }

    /// Takes the next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.session.poll_transmit()
    }

    /// True once the connection should be dropped.
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// Everything local acknowledged, everything remote received.
    pub fn is_settled(&self) -> bool {
        self.queue.is_empty() && self.session.is_settled()
    }

    /// True once the server asked this device to retire: when settled, the
    /// app wipes the store and calls [`ClientDriver::goodbye`].
    pub fn retire_requested(&self) -> bool {
        self.retire_requested
    }

    /// Ends the session with a last word to the server.
    pub fn goodbye(&mut self, code: ErrorCode, message: String) {
        self.session.goodbye(code, message);
    }

    /// Documents still waiting to be pushed.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Counts for progress reports.
    pub fn counts(&self) -> SyncCounts {
        self.session.counts()
    }

    /// Starts as many queued pushes as the session allows.
    pub fn pump<R: Replica>(&mut self, replica: &mut R) -> Result<(), DriveError<R::Error>> {
        while self.session.push_capacity() > 0 {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            if self.session.is_in_flight(id) {
                // Pushed again once the ack for the earlier push is in.
                self.queue.push_back(id);
                break;
            }
            self.queued.remove(&id);
            let Some(doc) = replica.doc(id).map_err(DriveError::Store)? else {
                continue;
            };
            let known = replica.known(id).map_err(DriveError::Store)?;
            if !self.session.push(id, &doc, &known) {
                // Nothing unacknowledged after all (an ack raced the edit).
                let known = docsync::merge_known(&doc, &known, &[]);
                let settled = !docsync::has_unacknowledged(&doc, &known);
                replica
                    .set_known(id, &known, settled)
                    .map_err(DriveError::Store)?;
            }
        }
        Ok(())
    }

    /// Feeds one received frame and carries out what it asks.
    pub fn handle_frame<R: Replica>(
        &mut self,
        frame: &[u8],
        replica: &mut R,
    ) -> Result<(), DriveError<R::Error>> {
        for event in self.session.handle_frame(frame)? {
            self.handle_event(event, replica)
                .map_err(DriveError::Store)?;
        }
        if self.session.repairs_open() == 0 {
            if let (Some(seq), Some(store)) = (self.held_cursor.take(), self.store) {
                replica.set_cursor(store, seq).map_err(DriveError::Store)?;
            }
        }
        self.pump(replica)
    }

    fn handle_event<R: Replica>(
        &mut self,
        event: ClientEvent,
        replica: &mut R,
    ) -> Result<(), R::Error> {
        match event {
            ClientEvent::Welcomed { store, reset } => {
                self.store = Some(store);
                if reset {
                    replica.reset(store)?;
                    for id in replica.unacknowledged()? {
                        self.enqueue(id);
                    }
                }
            }
            ClientEvent::Changes(c) => {
                let held = replica.doc(c.doc)?;
                let new = held.is_none();
                let mut doc = held.unwrap_or_default();
                match docsync::apply_chunks(&mut doc, &c.data) {
                    Ok(()) => {
                        if new {
                            replica.put_received(c.doc, &doc, &c.data)?;
                        } else {
                            replica.put_doc(c.doc, &doc)?;
                        }
                        self.fold_known(c.doc, &doc, &c.heads, replica)?;
                        self.session.changes_applied(c.doc, &doc, &c.heads);
                    }
                    Err(err) => {
                        // The sync protocol recomputes from scratch what we lack.
                        replica.refused(
                            c.doc,
                            ErrorCode::CorruptChanges,
                            None,
                            &err.to_string(),
                        )?;
                        self.session.changes_applied(c.doc, &doc, &c.heads);
                    }
                }
            }
            ClientEvent::Acked { doc: id, heads } => {
                if let Some(doc) = replica.doc(id)? {
                    self.fold_known(id, &doc, &heads, replica)?;
                    self.session.repair_settled(id, &doc, &heads);
                }
            }
            ClientEvent::Sync(s) => {
                let mut doc = replica.doc(s.doc)?.unwrap_or_default();
                match self.session.receive_sync(s.doc, &mut doc, &s.data) {
                    Ok(true) => replica.put_doc(s.doc, &doc)?,
                    Ok(false) => {}
                    Err(err) => {
                        replica.refused(s.doc, ErrorCode::CorruptChanges, None, &err.to_string())?
                    }
                }
            }
            ClientEvent::Cursor(seq) => self.held_cursor = Some(seq),
            ClientEvent::Refused {
                doc,
                code,
                message,
                rule,
            } => {
                if let Some(id) = doc {
                    // Not offered again in this session whatever the reason;
                    // a storage failure is retried at the next one.
                    self.refused.insert(id);
                    match code {
                        ErrorCode::Erased => replica.erase(id)?,
                        ErrorCode::StorageFailure | ErrorCode::Quarantined => {}
                        _ => replica.refused(id, code, rule.as_deref(), &message)?,
                    }
                }
            }
            ClientEvent::RetireRequested => self.retire_requested = true,
            ClientEvent::DeviceNames(names) => replica.device_names(&names)?,
        }
        Ok(())
    }

    fn fold_known<R: Replica>(
        &mut self,
        id: DocId,
        doc: &Automerge,
        heads: &[Head],
        replica: &mut R,
    ) -> Result<(), R::Error> {
        let known = replica.known(id)?;
        let known = docsync::merge_known(doc, &known, heads);
        let settled = !docsync::has_unacknowledged(doc, &known);
        replica.set_known(id, &known, settled)?;
        if !settled && !self.session.is_in_flight(id) {
            self.enqueue(id);
        }
        Ok(())
    }
}
