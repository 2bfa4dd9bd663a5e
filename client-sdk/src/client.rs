//! The SDK's front door: [`Client`]. Small on purpose: strings, numbers,
//! plain structs and one listener trait, so UniFFI can carry it to Kotlin
//! and Swift unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use automerge::{ActorId, Automerge};
use baraza_protocol::{DocId, Limits};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::error::ClientError;
use crate::record::{self, Record};
use crate::store::LocalStore;
use crate::sync::{self, Mode, SyncListener, SyncReport};
use crate::transport::Endpoint;

/// What `status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Records held on this device.
    pub records: u64,
    /// Records with changes the server has not acknowledged.
    pub unacknowledged: u64,
    /// Records whose changes the server refused, with the reason.
    pub refused: Vec<(String, String)>,
    /// When the last sync settled (seconds since the Unix epoch).
    pub last_sync: Option<u64>,
    /// The feed position this device has received up to.
    pub cursor: u64,
    /// The configured server.
    pub server: Option<String>,
}

/// A background sync in progress; dropping it does not stop it, `stop` does.
pub struct BackgroundSync {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BackgroundSync {
    /// Stops syncing and waits for the connection to close.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A tablet's records and its link to the server.
#[derive(Clone)]
pub struct Client {
    store: LocalStore,
    actor: ActorId,
    local_edits: Arc<Notify>,
    limits: Limits,
}

fn parse_id(id: &str) -> Result<DocId, ClientError> {
    id.parse().map_err(|_| ClientError::BadId(id.to_string()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Client {
    /// Opens (or creates) the device's store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Client, ClientError> {
        std::fs::create_dir_all(data_dir).map_err(|e| ClientError::Store(sled::Error::Io(e)))?;
        let store = LocalStore::open(data_dir)?;
        // One actor id per device install: the server will tie it to the
        // device's registration, so edits are attributable.
        let actor = match store.setting("actor")? {
            Some(hex) => ActorId::from(decode_hex(&hex).ok_or(ClientError::Corrupt {
                what: "actor id",
                reason: "not hex".into(),
            })?),
            None => {
                let bytes: [u8; 16] = rand::random();
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                store.set_setting("actor", &hex)?;
                ActorId::from(bytes.to_vec())
            }
        };
        Ok(Client {
            store,
            actor,
            local_edits: Arc::new(Notify::new()),
            limits: Limits::DEFAULT,
        })
    }

    /// Sets the server, the CA file to trust and the device token.
    pub fn configure(
        &self,
        server: &str,
        ca_file: Option<&Path>,
        token: &str,
    ) -> Result<(), ClientError> {
        self.store.set_setting("server", server)?;
        if let Some(ca) = ca_file {
            let abs = std::fs::canonicalize(ca).map_err(|e| {
                ClientError::Tls(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            self.store.set_setting("ca_file", &abs.to_string_lossy())?;
        }
        self.store.set_setting("token", token)
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let url = self
            .store
            .setting("server")?
            .ok_or(ClientError::NotConfigured)?;
        let token = self
            .store
            .setting("token")?
            .ok_or(ClientError::NotConfigured)?;
        let ca_file = self.store.setting("ca_file")?.map(PathBuf::from);
        Ok(Endpoint {
            url,
            ca_file,
            token,
        })
    }

    fn edit<F>(&self, id: DocId, create: bool, f: F) -> Result<(), ClientError>
    where
        F: FnOnce(&mut Automerge) -> Result<(), ClientError>,
    {
        let _guard = self.store.write_lock();
        let mut doc = match self.store.load(id)? {
            Some(doc) => doc,
            None if create => Automerge::new(),
            None => return Err(ClientError::NotFound(id.to_string())),
        };
        doc.set_actor(self.actor.clone());
        f(&mut doc)?;
        self.store.save_local_edit(id, &doc)?;
        self.local_edits.notify_one();
        Ok(())
    }

    /// Creates a record with the given scalar fields; returns its id.
    pub fn create(&self, fields: Vec<(String, String)>) -> Result<String, ClientError> {
        let id = DocId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
        let now = now_ms();
        self.edit(id, true, |doc| {
            let mut tx = doc.transaction();
            for (k, v) in &fields {
                automerge::transaction::Transactable::put(
                    &mut tx,
                    automerge::ROOT,
                    k.as_str(),
                    v.as_str(),
                )?;
            }
            tx.commit_with(automerge::transaction::CommitOptions::default().with_time(now / 1000));
            Ok(())
        })?;
        Ok(id.to_string())
    }

    /// Sets a scalar field.
    pub fn set(&self, id: &str, field: &str, value: &str) -> Result<(), ClientError> {
        self.edit(parse_id(id)?, false, |doc| {
            record::set(doc, field, value, now_ms())
        })
    }

    /// Splices text into a text field (created if absent).
    pub fn splice(
        &self,
        id: &str,
        field: &str,
        pos: u64,
        delete: i64,
        text: &str,
    ) -> Result<(), ClientError> {
        self.edit(parse_id(id)?, false, |doc| {
            record::splice(doc, field, pos as usize, delete as isize, text, now_ms())
        })
    }

    /// One record.
    pub fn get(&self, id: &str) -> Result<Record, ClientError> {
        let doc_id = parse_id(id)?;
        let doc = self
            .store
            .load(doc_id)?
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        let unacknowledged =
            baraza_protocol::Replica::unacknowledged(&mut self.store.clone())?.contains(&doc_id);
        Ok(Record {
            id: doc_id.to_string(),
            fields: record::fields(&doc),
            unacknowledged,
        })
    }

    /// Every record id held, in id order.
    pub fn list(&self) -> Result<Vec<String>, ClientError> {
        Ok(self
            .store
            .ids()?
            .into_iter()
            .map(|id| id.to_string())
            .collect())
    }

    /// Local state of sync.
    pub fn status(&self) -> Result<Status, ClientError> {
        let (_, cursor) = self.store.cursor_state()?;
        Ok(Status {
            records: self.store.count() as u64,
            unacknowledged: self.store.unacknowledged_count() as u64,
            refused: self
                .store
                .refusals()?
                .into_iter()
                .map(|(id, why)| (id.to_string(), why))
                .collect(),
            last_sync: self.store.last_sync()?,
            cursor,
            server: self.store.setting("server")?,
        })
    }

    /// Syncs once: returns when everything local is acknowledged and
    /// everything remote received, or with the reason it could not.
    pub async fn sync_once(&self, listener: &dyn SyncListener) -> Result<SyncReport, ClientError> {
        let endpoint = self.endpoint()?;
        let (_tx, mut stop) = watch::channel(false);
        listener.on_event(sync::SyncEvent::Connecting { attempt: 1 });
        sync::run_connection(
            &self.store,
            &endpoint,
            &self.limits,
            Mode::Once,
            &self.local_edits,
            &mut stop,
            listener,
        )
        .await
    }

    /// Starts syncing in the background (live changes, reconnect with
    /// backoff) on the current tokio runtime.
    pub fn start_background(
        &self,
        listener: Arc<dyn SyncListener>,
    ) -> Result<BackgroundSync, ClientError> {
        let endpoint = self.endpoint()?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(sync::run_background(
            self.store.clone(),
            endpoint,
            self.limits.clone(),
            self.local_edits.clone(),
            stop_rx,
            listener,
        ));
        Ok(BackgroundSync { stop, task })
    }

    /// The heads of a record, hex-encoded, for comparing replicas.
    pub fn heads(&self, id: &str) -> Result<Vec<String>, ClientError> {
        let doc = self
            .store
            .load(parse_id(id)?)?
            .ok_or_else(|| ClientError::NotFound(id.to_string()))?;
        Ok(doc.get_heads().iter().map(|h| h.to_string()).collect())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
