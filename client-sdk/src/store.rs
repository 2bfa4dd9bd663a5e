//! The tablet's local store: every record the device holds, what the
//! server is known to hold of each, and the sync cursor, in sled.
//!
//! Trees: `docs` (id → saved automerge document), `known` (id → heads the
//! server acknowledged), `unacked` (ids with changes the server has not
//! acknowledged), `refused` (id → the server's reason), `meta` (settings,
//! store id, cursor, last sync). A local edit is flushed before the call
//! that made it returns: the tablet forgets nothing it was told to record.

use std::path::Path;

use automerge::Automerge;
use baraza_protocol::{DocId, ErrorCode, Head, Replica, Seq, StoreId};

use crate::error::ClientError;

/// The sled-backed local store.
#[derive(Clone)]
pub struct LocalStore {
    db: sled::Db,
    docs: sled::Tree,
    known: sled::Tree,
    unacked: sled::Tree,
    refused: sled::Tree,
    meta: sled::Tree,
}

const CURSOR: &[u8] = b"cursor";
const STORE: &[u8] = b"store_id";
const LAST_SYNC: &[u8] = b"last_sync";

impl LocalStore {
    /// Opens or creates the store in `dir`.
    pub fn open(dir: &Path) -> Result<LocalStore, ClientError> {
        let db = sled::open(dir.join("store"))?;
        Ok(LocalStore {
            docs: db.open_tree("docs")?,
            known: db.open_tree("known")?,
            unacked: db.open_tree("unacked")?,
            refused: db.open_tree("refused")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), ClientError> {
        self.db.flush()?;
        Ok(())
    }

    /// Reads a setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, ClientError> {
        match self.meta.get(format!("setting/{key}"))? {
            Some(v) => Ok(Some(String::from_utf8(v.to_vec()).map_err(|e| {
                ClientError::Corrupt {
                    what: "setting",
                    reason: e.to_string(),
                }
            })?)),
            None => Ok(None),
        }
    }

    /// Writes a setting durably.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), ClientError> {
        self.meta
            .insert(format!("setting/{key}"), value.as_bytes())?;
        self.flush()
    }

    /// Loads a record's document.
    pub fn load(&self, id: DocId) -> Result<Option<Automerge>, ClientError> {
        match self.docs.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(Automerge::load(&bytes).map_err(|e| {
                ClientError::Corrupt {
                    what: "document",
                    reason: e.to_string(),
                }
            })?)),
            None => Ok(None),
        }
    }

    /// Stores a document edited on this device, durably, and marks it as
    /// needing to reach the server.
    pub fn save_local_edit(&self, id: DocId, doc: &Automerge) -> Result<(), ClientError> {
        self.docs.insert(id.as_bytes(), doc.save())?;
        self.unacked.insert(id.as_bytes(), &[])?;
        self.refused.remove(id.as_bytes())?;
        self.flush()
    }

    /// All record ids held, in id order.
    pub fn ids(&self) -> Result<Vec<DocId>, ClientError> {
        self.docs.iter().keys().map(|k| doc_id(&k?)).collect()
    }

    /// How many records have changes the server has not acknowledged.
    pub fn unacknowledged_count(&self) -> usize {
        self.unacked.len()
    }

    /// Records the server refused, with its reasons.
    pub fn refusals(&self) -> Result<Vec<(DocId, String)>, ClientError> {
        self.refused
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((doc_id(&k)?, String::from_utf8_lossy(&v).into_owned()))
            })
            .collect()
    }

    /// The cursor and store id of the last sync.
    pub fn cursor_state(&self) -> Result<(Option<StoreId>, Seq), ClientError> {
        let store = match self.meta.get(STORE)? {
            Some(v) if v.len() == 16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&v);
                Some(StoreId::from_bytes(b))
            }
            _ => None,
        };
        let cursor = match self.meta.get(CURSOR)? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            _ => 0,
        };
        Ok((store, cursor))
    }

    /// When the last sync completed (seconds since the Unix epoch).
    pub fn last_sync(&self) -> Result<Option<u64>, ClientError> {
        Ok(self.meta.get(LAST_SYNC)?.and_then(|v| {
            let arr: [u8; 8] = v.as_ref().try_into().ok()?;
            Some(u64::from_be_bytes(arr))
        }))
    }

    /// Records a completed sync.
    pub fn set_last_sync(&self, unix_secs: u64) -> Result<(), ClientError> {
        self.meta.insert(LAST_SYNC, &unix_secs.to_be_bytes())?;
        Ok(())
    }

    /// How many records the device holds.
    pub fn count(&self) -> usize {
        self.docs.len()
    }
}

fn doc_id(bytes: &[u8]) -> Result<DocId, ClientError> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| ClientError::Corrupt {
        what: "record id",
        reason: format!("{} bytes", bytes.len()),
    })?;
    Ok(DocId::from_bytes(arr))
}

fn heads_bytes(heads: &[Head]) -> Vec<u8> {
    heads
        .iter()
        .flat_map(|h| h.as_bytes().iter().copied())
        .collect()
}

fn heads_from(bytes: &[u8]) -> Vec<Head> {
    bytes
        .chunks_exact(32)
        .map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            Head::from(automerge::ChangeHash(b))
        })
        .collect()
}

impl Replica for LocalStore {
    type Error = ClientError;

    fn doc(&mut self, id: DocId) -> Result<Option<Automerge>, ClientError> {
        self.load(id)
    }

    fn put_doc(&mut self, id: DocId, doc: &Automerge) -> Result<(), ClientError> {
        self.docs.insert(id.as_bytes(), doc.save())?;
        Ok(())
    }

    fn known(&mut self, id: DocId) -> Result<Vec<Head>, ClientError> {
        Ok(self
            .known
            .get(id.as_bytes())?
            .map(|v| heads_from(&v))
            .unwrap_or_default())
    }

    fn set_known(&mut self, id: DocId, heads: &[Head], settled: bool) -> Result<(), ClientError> {
        self.known.insert(id.as_bytes(), heads_bytes(heads))?;
        if settled {
            self.unacked.remove(id.as_bytes())?;
        }
        Ok(())
    }

    fn unacknowledged(&mut self) -> Result<Vec<DocId>, ClientError> {
        self.unacked.iter().keys().map(|k| doc_id(&k?)).collect()
    }

    fn cursor(&mut self) -> Result<(Option<StoreId>, Seq), ClientError> {
        self.cursor_state()
    }

    fn set_cursor(&mut self, store: StoreId, seq: Seq) -> Result<(), ClientError> {
        // Flushed, and after the documents it vouches for (sled keeps the
        // order of writes), so a crash never leaves a cursor ahead of them.
        self.meta.insert(STORE, &store.as_bytes()[..])?;
        self.meta.insert(CURSOR, &seq.to_be_bytes())?;
        self.flush()
    }

    fn reset(&mut self, store: StoreId) -> Result<(), ClientError> {
        self.known.clear()?;
        for id in self.docs.iter().keys() {
            self.unacked.insert(id?, &[])?;
        }
        self.meta.insert(STORE, &store.as_bytes()[..])?;
        self.meta.insert(CURSOR, &0u64.to_be_bytes())?;
        self.flush()
    }

    fn refused(&mut self, id: DocId, code: ErrorCode, message: &str) -> Result<(), ClientError> {
        tracing::warn!(doc = %id, ?code, "server refused changes: {message}");
        self.refused
            .insert(id.as_bytes(), format!("{code:?}: {message}").as_bytes())?;
        Ok(())
    }
}
