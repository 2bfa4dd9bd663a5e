//! The tablet's local store: every record the device holds, what the
//! server is known to hold of each, and the sync cursor, in sled.
//!
//! Trees: `docs` (id → saved automerge document), `chunks` ((id, n) →
//! changes appended since that save), `known` (id → heads the server
//! acknowledged), `unacked` (ids with changes the server has not
//! acknowledged), `refused` (id → the server's reason), `meta` (settings,
//! store id, cursor, last sync), and attachments' bytes and states
//! (`attachments.rs`). A local edit is flushed before the call
//! that made it returns: the tablet forgets nothing it was told to record.
//!
//! Every value is sealed ([`super::seal`]) under the key the app supplies,
//! bound to its tree and sled key; keys (record ids, setting names) stay in
//! the clear so lookups and scans work unchanged. The one plaintext value is
//! the format marker in `meta`: the format version and a sealed constant,
//! which tells a wrong key apart before anything is read or written.
//!
//! Opening runs on a thread of its own under a deadline (`open_guard`):
//! sled 0.34 can panic on a damaged log, and damage can leave a tree scan
//! yielding the same error forever. Before the store is handed out, every
//! tree is read through once and every value opened (`validate`), so a
//! damaged store is refused at the door with
//! [`ClientError::DamagedStore`], told apart from a wrong key. Counting
//! records stops at the first error instead of using sled's `len`, which
//! loops on such a tree.
//!
//! Writes append only the new changes (a full save every
//! [`CHUNKS_BEFORE_SAVE`] writes), and recently used documents stay loaded
//! in a small cache: receiving a change costs an apply, not a load and a
//! compressed save of the whole record.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use automerge::{Automerge, ChangeHash};
use baraza_protocol::{docsync, DeviceName, DocId, ErrorCode, Head, Replica, Seq, StoreId};

use super::seal::Sealer;
use crate::error::ClientError;

mod attachments;
mod open_guard;
pub use attachments::{AttachmentState, UploadState, PIECE_BYTES};
pub use open_guard::THREAD_NAME as STORE_OPEN_THREAD;

/// Appended chunks a record may gather before the next write saves it whole.
pub const CHUNKS_BEFORE_SAVE: u32 = 32;
/// Records kept loaded.
const CACHE_DOCS: usize = 256;
/// sled's page cache for the store. Its default (1 GiB) lets a cold start
/// of 100,000 records keep every page it wrote in memory, over 400 MiB on
/// a tablet whose app may be killed at half that; a tablet's reads are of
/// the few records a person has open, and writes go to the log anyway.
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

struct Cached {
    doc: Automerge,
    /// Heads of what is on disk.
    saved: Vec<ChangeHash>,
    /// Chunks appended since the last full save.
    chunks: u32,
}

/// A sled tree whose values are sealed: the only way the store writes or
/// reads values, so none can reach the disk in the clear.
#[derive(Clone)]
struct SealedTree {
    tree: sled::Tree,
    name: &'static str,
    sealer: Arc<Sealer>,
}

impl SealedTree {
    fn open(db: &sled::Db, name: &'static str, sealer: &Arc<Sealer>) -> sled::Result<Self> {
        Ok(SealedTree {
            tree: db.open_tree(name)?,
            name,
            sealer: sealer.clone(),
        })
    }

    fn unseal(&self, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ClientError> {
        // The key itself was checked against the format marker at open, so
        // a value that does not open was altered or moved, not sealed
        // under another key.
        self.sealer
            .open(self.name, key, sealed)
            .map_err(|_| ClientError::Corrupt {
                what: self.name,
                reason: "a value does not authenticate under this store's key: \
                         altered, or moved from elsewhere"
                    .into(),
            })
    }

    fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, ClientError> {
        let key = key.as_ref();
        self.tree
            .get(key)?
            .map(|v| self.unseal(key, &v))
            .transpose()
    }

    fn insert(&self, key: impl AsRef<[u8]>, value: &[u8]) -> Result<(), ClientError> {
        let key = key.as_ref();
        self.tree
            .insert(key, self.sealer.seal(self.name, key, value)?)?;
        Ok(())
    }

    fn remove(&self, key: impl AsRef<[u8]>) -> Result<(), ClientError> {
        self.tree.remove(key)?;
        Ok(())
    }

    /// Keys and opened values, in key order.
    fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(sled::IVec, Vec<u8>), ClientError>> + '_ {
        self.tree.scan_prefix(prefix).map(move |item| {
            let (k, v) = item?;
            let plain = self.unseal(&k, &v)?;
            Ok((k, plain))
        })
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = sled::Result<sled::IVec>> {
        self.tree.scan_prefix(prefix).keys()
    }

    /// Entries in the tree. Not sled's `len`: on a tree with a page it
    /// cannot read, sled's iterator yields the same error forever and
    /// `len` never returns; this stops at the first error.
    fn len(&self) -> Result<usize, ClientError> {
        let mut n = 0;
        for key in self.tree.iter().keys() {
            key?;
            n += 1;
        }
        Ok(n)
    }

    fn clear(&self) -> Result<(), ClientError> {
        self.tree.clear()?;
        Ok(())
    }
}

/// The sled-backed local store. Clones share the database, the cache and
/// the write lock.
#[derive(Clone)]
pub struct LocalStore {
    db: sled::Db,
    docs: SealedTree,
    chunks: SealedTree,
    cache: Arc<Mutex<lru::LruCache<DocId, Cached>>>,
    write_lock: Arc<Mutex<()>>,
    known: SealedTree,
    unacked: SealedTree,
    refused: SealedTree,
    meta: SealedTree,
    attachments: SealedTree,
    attachment_state: SealedTree,
}

const CURSOR: &[u8] = b"cursor";
const STORE: &[u8] = b"store_id";
const LAST_SYNC: &[u8] = b"last_sync";
/// Names of devices as the server told them: JSON, device id (hex) → name.
const DEVICE_NAMES: &[u8] = b"device_names";
/// The plaintext marker in `meta`: [`STORE_FORMAT`], then [`KEY_CHECK`] sealed.
const FORMAT: &[u8] = b"format";
/// Version of the store's layout; 1 is the first sealed one.
const STORE_FORMAT: u8 = 1;
const KEY_CHECK: &[u8] = b"baraza tablet store key check";
const TREES: [&str; 8] = [
    "docs",
    "chunks",
    "known",
    "unacked",
    "refused",
    "meta",
    "attachments",
    "attachment_state",
];

/// How long opening the store may take before it is given up as stuck:
/// far beyond what a healthy tablet store needs (well under a second for
/// thousands of records), short enough that an app is not left hanging.
pub const DEFAULT_OPEN_DEADLINE: Duration = Duration::from_secs(20);

impl LocalStore {
    /// Opens or creates the store in `dir`, sealed under `key` (32 bytes),
    /// giving up after [`DEFAULT_OPEN_DEADLINE`]; see
    /// [`open_within`](Self::open_within). Only this module's tests open a
    /// store directly; the SDK opens through `BaseClient::open_within`.
    #[cfg(test)]
    pub fn open(dir: &Path, key: &[u8]) -> Result<LocalStore, ClientError> {
        Self::open_within(dir, key, DEFAULT_OPEN_DEADLINE)
    }

    /// Opens or creates the store in `dir`, sealed under `key` (32 bytes).
    /// A store sealed with another key is refused with
    /// [`ClientError::WrongKey`] before anything is read or written. A
    /// damaged one (sled fails or panics, a tree cannot be read through,
    /// no value opens under the key) is refused with
    /// [`ClientError::DamagedStore`], as is an open that has not finished
    /// after `deadline`: that one is left running on its own thread, and
    /// opening the same store again in this process fails at once until
    /// it ends; restart the process before retrying.
    pub fn open_within(
        dir: &Path,
        key: &[u8],
        deadline: Duration,
    ) -> Result<LocalStore, ClientError> {
        let sealer = Arc::new(Sealer::new(key)?);
        let path = dir.join("store");
        let at = path.clone();
        open_guard::run(&path, deadline, move || {
            Self::open_now(&at, sealer).map_err(|e| as_damage(&at, e))
        })
    }

    /// The open itself, on the guard's thread.
    fn open_now(path: &Path, sealer: Arc<Sealer>) -> Result<LocalStore, ClientError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()?;
        check_or_mark(&db, &sealer)?;
        validate(&db, &sealer, path)?;
        let cap = std::num::NonZeroUsize::new(CACHE_DOCS).unwrap_or(std::num::NonZeroUsize::MIN);
        Ok(LocalStore {
            docs: SealedTree::open(&db, "docs", &sealer)?,
            chunks: SealedTree::open(&db, "chunks", &sealer)?,
            cache: Arc::new(Mutex::new(lru::LruCache::new(cap))),
            write_lock: Arc::new(Mutex::new(())),
            known: SealedTree::open(&db, "known", &sealer)?,
            unacked: SealedTree::open(&db, "unacked", &sealer)?,
            refused: SealedTree::open(&db, "refused", &sealer)?,
            meta: SealedTree::open(&db, "meta", &sealer)?,
            attachments: SealedTree::open(&db, "attachments", &sealer)?,
            attachment_state: SealedTree::open(&db, "attachment_state", &sealer)?,
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
            Some(v) => Ok(Some(String::from_utf8(v).map_err(|e| {
                ClientError::Corrupt {
                    what: "setting",
                    reason: e.to_string(),
                }
            })?)),
            None => Ok(None),
        }
    }

    /// The name the server gave a device (32 hex digits), if it did.
    pub fn device_name(&self, device: &str) -> Result<Option<String>, ClientError> {
        Ok(self
            .all_device_names()?
            .remove(&device.to_ascii_lowercase()))
    }

    /// Every device name held, by device id (hex). One sealed value, not a
    /// key per device: sled keys are plaintext, and device ids are not to
    /// be read off a copied store.
    fn all_device_names(&self) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        match self.meta.get(DEVICE_NAMES)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| ClientError::Corrupt {
                what: "device names",
                reason: e.to_string(),
            }),
            None => Ok(Default::default()),
        }
    }

    /// Writes a setting durably.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), ClientError> {
        self.meta
            .insert(format!("setting/{key}"), value.as_bytes())?;
        self.flush()
    }

    /// Held while reading, changing and writing back a document, by the
    /// app's edits and by the sync alike: without it an edit could write
    /// back a copy that misses changes the sync stored meanwhile.
    pub fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, lru::LruCache<DocId, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads a record's document.
    pub fn load(&self, id: DocId) -> Result<Option<Automerge>, ClientError> {
        if let Some(c) = self.cache().get(&id) {
            return Ok(Some(c.doc.clone()));
        }
        let Some(mut bytes) = self.docs.get(id.as_bytes())? else {
            return Ok(None);
        };
        let mut chunks = 0;
        for item in self.chunks.scan_prefix(id.as_bytes()) {
            bytes.extend_from_slice(&item?.1);
            chunks += 1;
        }
        let doc = Automerge::load(&bytes).map_err(|e| ClientError::Corrupt {
            what: "document",
            reason: e.to_string(),
        })?;
        self.remember(id, &doc, chunks);
        Ok(Some(doc))
    }

    /// Writes a document: the changes since what is on disk, or the whole
    /// document when it is new or has gathered enough chunks.
    fn write(&self, id: DocId, doc: &Automerge) -> Result<(), ClientError> {
        let cached = |s: &Self| s.cache().get(&id).map(|c| (c.saved.clone(), c.chunks));
        let mut on_disk = cached(self);
        if on_disk.is_none() && self.load(id)?.is_some() {
            on_disk = cached(self);
        }
        let chunks = match on_disk {
            Some((saved, chunks)) if chunks < CHUNKS_BEFORE_SAVE => {
                let delta = doc.save_after(&saved);
                if delta.is_empty() {
                    return Ok(());
                }
                let mut key = id.as_bytes().to_vec();
                key.extend_from_slice(&chunks.to_be_bytes());
                self.chunks.insert(key, &delta)?;
                chunks + 1
            }
            _ => {
                // The save goes first: a crash between the two leaves old
                // chunks beside it, which load as duplicates and are ignored.
                self.docs.insert(id.as_bytes(), &doc.save())?;
                for key in self.chunks.keys_with_prefix(id.as_bytes()) {
                    self.chunks.remove(key?)?;
                }
                0
            }
        };
        self.remember(id, doc, chunks);
        Ok(())
    }

    /// Caches a document exactly as it now is on disk.
    fn remember(&self, id: DocId, doc: &Automerge, chunks: u32) {
        self.cache().put(
            id,
            Cached {
                doc: doc.clone(),
                saved: doc.get_heads(),
                chunks,
            },
        );
    }

    /// Stores a document edited on this device, durably, and marks it as
    /// needing to reach the server.
    pub fn save_local_edit(&self, id: DocId, doc: &Automerge) -> Result<(), ClientError> {
        self.write(id, doc)?;
        self.unacked.insert(id.as_bytes(), b"")?;
        self.refused.remove(id.as_bytes())?;
        self.flush()
    }

    /// All record ids held, in id order.
    pub fn ids(&self) -> Result<Vec<DocId>, ClientError> {
        self.docs
            .keys_with_prefix(b"")
            .map(|k| doc_id(&k?))
            .collect()
    }

    /// True if the record has changes the server has not acknowledged.
    pub fn is_unacknowledged(&self, id: DocId) -> Result<bool, ClientError> {
        Ok(self.unacked.get(id.as_bytes())?.is_some())
    }

    /// How many records have changes the server has not acknowledged.
    pub fn unacknowledged_count(&self) -> Result<usize, ClientError> {
        self.unacked.len()
    }

    /// Records the server refused, with its reasons.
    pub fn refusals(&self) -> Result<Vec<(DocId, Rejection)>, ClientError> {
        self.refused
            .scan_prefix(b"")
            .map(|item| {
                let (k, v) = item?;
                Ok((doc_id(&k)?, Rejection::decode(&v)))
            })
            .collect()
    }

    /// Why the server refused this record's changes, if it did.
    pub fn rejection(&self, id: DocId) -> Result<Option<Rejection>, ClientError> {
        Ok(self
            .refused
            .get(id.as_bytes())?
            .map(|v| Rejection::decode(&v)))
    }

    /// Deletes one record and everything kept about it.
    pub fn delete(&self, id: DocId) -> Result<(), ClientError> {
        self.cache().pop(&id);
        for key in self.chunks.keys_with_prefix(id.as_bytes()) {
            self.chunks.remove(key?)?;
        }
        for tree in [&self.docs, &self.known, &self.unacked, &self.refused] {
            tree.remove(id.as_bytes())?;
        }
        self.remove_attachments_of(id)?;
        self.flush()
    }

    /// Deletes every record, the token and the sync state: what a retired
    /// or lost device does. Returns the ids wiped and, of those, the ones
    /// whose changes the server never acknowledged.
    pub fn wipe(&self) -> Result<(Vec<DocId>, Vec<DocId>), ClientError> {
        let all = self.ids()?;
        let unacked: Vec<DocId> = self
            .unacked
            .keys_with_prefix(b"")
            .map(|k| doc_id(&k?))
            .collect::<Result<_, _>>()?;
        self.cache().clear();
        for tree in [
            &self.docs,
            &self.chunks,
            &self.known,
            &self.unacked,
            &self.refused,
            &self.meta,
            &self.attachments,
            &self.attachment_state,
        ] {
            tree.clear()?;
        }
        self.flush()?;
        Ok((all, unacked))
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
            let arr: [u8; 8] = v.as_slice().try_into().ok()?;
            Some(u64::from_be_bytes(arr))
        }))
    }

    /// Records a completed sync.
    pub fn set_last_sync(&self, unix_secs: u64) -> Result<(), ClientError> {
        self.meta.insert(LAST_SYNC, &unix_secs.to_be_bytes())
    }

    /// How many records the device holds.
    pub fn count(&self) -> Result<usize, ClientError> {
        self.docs.len()
    }
}

/// Why the server refused a record's changes. The changes stay on the
/// device; the record is not offered again until it is edited.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    /// The server's error code (`Forbidden`, `InvalidRecord`, ...).
    pub code: String,
    /// The access rule broken, when a rule refused it.
    pub rule: Option<String>,
    /// The server's explanation.
    pub message: String,
}

impl Rejection {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Rejection {
        serde_json::from_slice(bytes).unwrap_or_else(|_| Rejection {
            code: "Unknown".into(),
            rule: None,
            message: String::from_utf8_lossy(bytes).into_owned(),
        })
    }
}

/// Checks the format marker against `sealer`, or writes it into a new
/// store. Runs before anything else touches the trees, so a wrong key
/// changes nothing.
fn check_or_mark(db: &sled::Db, sealer: &Sealer) -> Result<(), ClientError> {
    let meta = db.open_tree("meta")?;
    match meta.get(FORMAT)? {
        Some(marker) => {
            let (&version, check) = marker.split_first().ok_or(ClientError::UnsealedStore)?;
            if version > STORE_FORMAT {
                return Err(ClientError::StoreFormat(version));
            }
            match sealer.open("meta", FORMAT, check) {
                Ok(plain) if plain == KEY_CHECK => Ok(()),
                _ => Err(ClientError::WrongKey),
            }
        }
        None => {
            // Records written before stores were sealed would be read as
            // corrupt, and sealing them in place would leave their old
            // plaintext in sled's log: refuse instead.
            for name in TREES {
                if db.tree_names().iter().any(|t| t == name.as_bytes())
                    && !db.open_tree(name)?.is_empty()
                {
                    return Err(ClientError::UnsealedStore);
                }
            }
            let mut marker = vec![STORE_FORMAT];
            marker.extend_from_slice(&sealer.seal("meta", FORMAT, KEY_CHECK)?);
            meta.insert(FORMAT, marker)?;
            db.flush()?;
            Ok(())
        }
    }
}

/// What an error met while opening says about the store. sled's I/O
/// errors (permissions, a full disk, the lock held by another process)
/// stay as they are; anything else sled reports, and values that do not
/// read back, mean the files are damaged. The key's own verdicts
/// (wrong key, unsealed store, newer format) pass through.
fn as_damage(path: &Path, e: ClientError) -> ClientError {
    let reason = match e {
        ClientError::Store(sled::Error::Io(_)) => return e,
        ClientError::Store(other) => format!("sled: {other}"),
        ClientError::Corrupt { what, reason } => format!("its {what} does not read back: {reason}"),
        other => return other,
    };
    ClientError::DamagedStore {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads every tree through and opens every value, once, before the store
/// is handed out. Any read error is damage: sled would repeat it on every
/// scan of that tree (its `len` never returns on one). Keys must come in
/// strictly rising order, as sled sorts them; otherwise its pages are
/// linked wrongly and a scan could go round for ever. If the format marker
/// opened (checked just before) but no value does, the values were
/// altered or replaced: damage, not a wrong key. A few values that do not
/// open are left to be reported, as corrupt, by the reads that meet them,
/// so the rest of the store stays usable.
fn validate(db: &sled::Db, sealer: &Sealer, path: &Path) -> Result<(), ClientError> {
    let damaged = |reason: String| ClientError::DamagedStore {
        path: path.to_path_buf(),
        reason,
    };
    let existing = db.tree_names();
    let (mut values, mut unopened) = (0usize, 0usize);
    for name in TREES {
        if !existing.iter().any(|t| t == name.as_bytes()) {
            continue;
        }
        let tree = db.open_tree(name)?;
        let mut last: Option<sled::IVec> = None;
        for item in tree.iter() {
            let (key, value) = item.map_err(|e| {
                damaged(format!(
                    "its {name} tree cannot be read through ({e}): a file of it is missing, \
                     cut short or altered"
                ))
            })?;
            if last.as_ref().is_some_and(|l| *l >= key) {
                return Err(damaged(format!(
                    "its {name} tree lists keys out of order: its pages are linked wrongly"
                )));
            }
            // Of attachments' pieces, the first of each is opened: the
            // rest hold bytes a read checks anyway, and opening every
            // photo at every start would cost seconds.
            let marker = name == "meta" && key == FORMAT;
            let later_piece = name == "attachments" && !key.ends_with(&[0, 0, 0, 0]);
            if !marker && !later_piece {
                values += 1;
                if sealer.open(name, &key, &value).is_err() {
                    unopened += 1;
                }
            }
            last = Some(key);
        }
    }
    if values > 0 && unopened == values {
        return Err(damaged(format!(
            "none of its {values} values opens under the key that opens its format marker: \
             they were altered or replaced"
        )));
    }
    if unopened > 0 {
        tracing::warn!(
            store = %path.display(),
            unopened,
            values,
            "some stored values do not authenticate; they read as corrupt"
        );
    }
    Ok(())
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
        self.write(id, doc)
    }

    fn put_received(
        &mut self,
        id: DocId,
        doc: &Automerge,
        bytes: &[u8],
    ) -> Result<(), ClientError> {
        // Kept as received when every chunk passes its checksum (loading an
        // empty document ignores a damaged tail, which must not be kept);
        // saved afresh otherwise. Not cached: a cold start's records are
        // each written once and rarely read again soon.
        if docsync::verify_chunks(bytes).is_err() {
            return self.write(id, doc);
        }
        self.docs.insert(id.as_bytes(), bytes)?;
        for key in self.chunks.keys_with_prefix(id.as_bytes()) {
            self.chunks.remove(key?)?;
        }
        self.cache().pop(&id);
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
        self.known.insert(id.as_bytes(), &heads_bytes(heads))?;
        if settled {
            self.unacked.remove(id.as_bytes())?;
        }
        Ok(())
    }

    fn unacknowledged(&mut self) -> Result<Vec<DocId>, ClientError> {
        // A refused record waits for its next local edit: offering the same
        // changes again would only be refused again.
        let mut out = Vec::new();
        for key in self.unacked.keys_with_prefix(b"") {
            let key = key?;
            if self.refused.get(&key)?.is_none() {
                out.push(doc_id(&key)?);
            }
        }
        Ok(out)
    }

    fn cursor(&mut self) -> Result<(Option<StoreId>, Seq), ClientError> {
        self.cursor_state()
    }

    fn set_cursor(&mut self, store: StoreId, seq: Seq) -> Result<(), ClientError> {
        // Flushed, and after the documents it vouches for (sled keeps the
        // order of writes), so a crash never leaves a cursor ahead of them.
        self.meta.insert(STORE, store.as_bytes())?;
        self.meta.insert(CURSOR, &seq.to_be_bytes())?;
        self.flush()
    }

    fn reset(&mut self, store: StoreId) -> Result<(), ClientError> {
        self.known.clear()?;
        for id in self.docs.keys_with_prefix(b"") {
            self.unacked.insert(id?, b"")?;
        }
        self.meta.insert(STORE, store.as_bytes())?;
        self.meta.insert(CURSOR, &0u64.to_be_bytes())?;
        self.flush()
    }

    fn refused(
        &mut self,
        id: DocId,
        code: ErrorCode,
        rule: Option<&str>,
        message: &str,
    ) -> Result<(), ClientError> {
        tracing::warn!(doc = %id, ?code, ?rule, "server refused changes: {message}");
        let rejection = Rejection {
            code: format!("{code:?}"),
            rule: rule.map(str::to_string),
            message: message.to_string(),
        };
        self.refused.insert(id.as_bytes(), &rejection.encode())?;
        self.flush()
    }

    fn erase(&mut self, id: DocId) -> Result<(), ClientError> {
        tracing::info!(doc = %id, "record erased by an administrator");
        self.delete(id)
    }

    fn device_names(&mut self, names: &[DeviceName]) -> Result<(), ClientError> {
        // Sealed like everything else in `meta` (a device's name can name
        // its officer), and wiped with it. Made durable with the cursor.
        let mut all = self.all_device_names()?;
        for n in names {
            all.insert(n.device.to_hex(), n.name.clone());
        }
        let bytes = serde_json::to_vec(&all).map_err(|e| ClientError::Corrupt {
            what: "device names",
            reason: e.to_string(),
        })?;
        self.meta.insert(DEVICE_NAMES, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    const KEY: [u8; 32] = [0x5a; 32];

    /// Every byte of every file under `dir`.
    fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                } else {
                    out.push((path.clone(), std::fs::read(&path).unwrap()));
                }
            }
        }
        out
    }

    /// Opens a store just closed in this process. sled lets go of its lock
    /// file only once its background threads drop their last handle, a
    /// moment after the store is dropped, so a lock error is waited out.
    fn reopen(dir: &Path, key: &[u8]) -> Result<LocalStore, ClientError> {
        waiting_out_lock(|| LocalStore::open(dir, key))
    }

    fn waiting_out_lock<T>(
        mut open: impl FnMut() -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open() {
                Err(ClientError::Store(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_copied_store_reveals_no_record_text_or_setting_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocId::from_bytes([9; 16]);
        let phrase = "Witness saw a grey Probox near Kamukunji";
        let token = "bz_0123456789abcdef0123456789abcdef_s3cr3t-t0ken";
        let mut doc = Automerge::new();
        let mut sealed_plaintexts = Vec::new();
        {
            let store = LocalStore::open(dir.path(), &KEY).unwrap();
            store.set_setting("token", token).unwrap();
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, "title", phrase).unwrap();
            tx.commit();
            store.save_local_edit(id, &doc).unwrap();
            sealed_plaintexts.push(doc.save());
            let before = doc.get_heads();
            let mut tx = doc.transaction();
            let notes = tx
                .put_object(automerge::ROOT, "notes", automerge::ObjType::Text)
                .unwrap();
            tx.splice_text(&notes, 0, 0, phrase).unwrap();
            tx.commit();
            store.save_local_edit(id, &doc).unwrap();
            sealed_plaintexts.push(doc.save_after(&before));
            let mut r = store.clone();
            r.refused(id, ErrorCode::InvalidRecord, None, phrase)
                .unwrap();
            r.set_cursor(StoreId::from_bytes([1; 16]), 42).unwrap();
            store.flush().unwrap();
        }
        // The control: what the store sealed (a whole save, then one
        // appended chunk) carries the phrase in the clear, so a store
        // writing them as they are would be found out by this search.
        for bytes in &sealed_plaintexts {
            assert!(contains(bytes, phrase.as_bytes()));
        }
        let files = files_under(dir.path());
        assert!(!files.is_empty());
        for (path, bytes) in &files {
            for secret in [phrase, token, "s3cr3t-t0ken"] {
                assert!(
                    !contains(bytes, secret.as_bytes()),
                    "{secret:?} is readable in {}",
                    path.display()
                );
            }
        }

        // Another key is refused, and the store is left as it was.
        let wrong = [0xa5; 32];
        match reopen(dir.path(), &wrong) {
            Err(ClientError::WrongKey) => {}
            Err(other) => panic!("expected WrongKey, got {other}"),
            Ok(_) => panic!("another key opened the store"),
        }
        assert!(matches!(
            LocalStore::open(dir.path(), &KEY[..31]),
            Err(ClientError::KeyLength(31))
        ));
        let store = reopen(dir.path(), &KEY).unwrap();
        assert_eq!(store.setting("token").unwrap().as_deref(), Some(token));
        assert_eq!(
            store.load(id).unwrap().unwrap().get_heads(),
            doc.get_heads()
        );
        assert_eq!(
            store.cursor_state().unwrap(),
            (Some(StoreId::from_bytes([1; 16])), 42)
        );
        assert!(store.refusals().unwrap()[0].1.message.contains(phrase));
    }

    #[test]
    fn a_value_moved_to_another_record_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (DocId::from_bytes([1; 16]), DocId::from_bytes([2; 16]));
        let store = LocalStore::open(dir.path(), &KEY).unwrap();
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "title", "a").unwrap();
        tx.commit();
        store.save_local_edit(a, &doc).unwrap();
        let raw = store.docs.tree.get(a.as_bytes()).unwrap().unwrap();
        store.docs.tree.insert(b.as_bytes(), raw).unwrap();
        store.cache().clear();
        assert!(store.load(a).unwrap().is_some());
        assert!(matches!(
            store.load(b),
            Err(ClientError::Corrupt { what: "docs", .. })
        ));
    }

    /// Replaces the values at `keys` in `tree` of the closed store in
    /// `dir` with ones sealed in place, but under another key.
    fn reseal_elsewhere(dir: &Path, tree: &'static str, keys: &[&[u8]]) {
        let db = waiting_out_lock(|| Ok(sled::open(dir.join("store"))?)).unwrap();
        let other = Sealer::new(&[0xa5; 32]).unwrap();
        let t = db.open_tree(tree).unwrap();
        for key in keys {
            t.insert(key, other.seal(tree, key, b"replaced").unwrap())
                .unwrap();
        }
        db.flush().unwrap();
    }

    #[test]
    fn a_store_whose_values_do_not_open_under_the_checked_key_is_damaged_not_a_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (DocId::from_bytes([1; 16]), DocId::from_bytes([2; 16]));
        {
            let store = LocalStore::open(dir.path(), &KEY).unwrap();
            store.set_setting("token", "bz_x_y").unwrap();
            let mut doc = Automerge::new();
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, "title", "a").unwrap();
            tx.commit();
            store.save_local_edit(a, &doc).unwrap();
            store.save_local_edit(b, &doc).unwrap();
        }
        // One value altered: the store opens, the rest reads, that record
        // is corrupt.
        reseal_elsewhere(dir.path(), "docs", &[a.as_bytes()]);
        let store = reopen(dir.path(), &KEY).unwrap();
        assert!(store.load(b).unwrap().is_some());
        assert!(matches!(
            store.load(a),
            Err(ClientError::Corrupt { what: "docs", .. })
        ));
        assert_eq!(store.count().unwrap(), 2);
        drop(store);

        // Every value but the format marker altered: the marker opens, so
        // the key is right and the store is damaged.
        reseal_elsewhere(dir.path(), "docs", &[b.as_bytes()]);
        reseal_elsewhere(dir.path(), "unacked", &[a.as_bytes(), b.as_bytes()]);
        reseal_elsewhere(dir.path(), "meta", &[b"setting/token"]);
        match reopen(dir.path(), &KEY) {
            Err(ClientError::DamagedStore { path, reason }) => {
                assert_eq!(path, dir.path().join("store"));
                assert!(reason.contains("none of its 5 values"), "{reason}");
            }
            Err(other) => panic!("expected DamagedStore, got {other}"),
            Ok(_) => panic!("a store none of whose values open was opened"),
        }
        // Another key still fails on the marker, as a wrong key.
        assert!(matches!(
            reopen(dir.path(), &[0xa5; 32]),
            Err(ClientError::WrongKey)
        ));
    }

    #[test]
    fn a_store_written_before_sealing_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("store")).unwrap();
            db.open_tree("docs")
                .unwrap()
                .insert([7; 16], &b"plain automerge bytes"[..])
                .unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            reopen(dir.path(), &KEY),
            Err(ClientError::UnsealedStore)
        ));
        let db = waiting_out_lock(|| Ok(sled::open(dir.path().join("store"))?)).unwrap();
        assert!(db.open_tree("meta").unwrap().get(FORMAT).unwrap().is_none());
    }

    #[test]
    fn appended_chunks_and_periodic_saves_load_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocId::from_bytes([3; 16]);
        let mut doc = Automerge::new();
        let heads = {
            let store = LocalStore::open(dir.path(), &KEY).unwrap();
            // More writes than CHUNKS_BEFORE_SAVE, so both paths run.
            for i in 0..(CHUNKS_BEFORE_SAVE as i64 * 2 + 5) {
                let mut tx = doc.transaction();
                tx.put(automerge::ROOT, "count", i).unwrap();
                tx.commit();
                store.save_local_edit(id, &doc).unwrap();
            }
            assert!(store.chunks.len().unwrap() < CHUNKS_BEFORE_SAVE as usize);
            doc.get_heads()
        };
        let reopened = reopen(dir.path(), &KEY).unwrap();
        let loaded = reopened.load(id).unwrap().unwrap();
        assert_eq!(loaded.get_heads(), heads);
        assert_eq!(reopened.unacknowledged_count().unwrap(), 1);
    }

    /// A record received whole is kept as the bytes it came in, and loads
    /// to the same record after a reopen; bytes whose checksums fail are
    /// never kept as they are (loading ignored their damaged tail).
    #[test]
    fn a_received_record_is_kept_as_received_unless_its_checksums_fail() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(dir.path(), &KEY).unwrap();
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "place", "Kibera market").unwrap();
        tx.commit();
        let sent = doc.save_nocompress();
        let id = DocId::from_bytes([3; 16]);
        store.put_received(id, &doc, &sent).unwrap();
        let kept = store.docs.get(id.as_bytes()).unwrap().unwrap();
        assert_eq!(kept, sent);
        // A damaged chunk after a good one: what loaded is the good one.
        let mut more = doc.fork();
        let mut tx = more.transaction();
        tx.put(automerge::ROOT, "place", "Mathare").unwrap();
        tx.commit();
        let mut damaged = sent.clone();
        let mut tail = docsync::encode_changes(&more.get_changes(&doc.get_heads()));
        let last = tail.len() - 1;
        tail[last] ^= 0x01;
        damaged.extend(tail);
        let other = DocId::from_bytes([4; 16]);
        store.put_received(other, &doc, &damaged).unwrap();
        assert_ne!(store.docs.get(other.as_bytes()).unwrap().unwrap(), damaged);
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path(), &KEY).unwrap();
        for id in [id, other] {
            let loaded = store.load(id).unwrap().unwrap();
            assert_eq!(loaded.get_heads(), doc.get_heads());
        }
    }
}
