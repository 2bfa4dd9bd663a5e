//! The sled backend, the embedded default: every storage trait over one
//! sled database in `DATA/db`, and the one place that opens it; beside it,
//! attachments' bytes as files in `DATA/attachments` (sled holds values in
//! memory and rewrites them as it compacts, which photos must not cost).
//! Nothing outside this folder names a sled type.
//!
//! Durability: sled 0.34's flush uses `sync_file_range`, which does not
//! flush the disk's write cache (sled issue 1452), so after a power cut
//! the newest acknowledged writes may be gone; a kill -9 loses nothing.
//! [`SledStore`] notices the unclean stop and takes a new store id, so
//! tablets re-offer what they hold. sled lets one process open a
//! database, so while a server runs, admin commands go through its admin
//! socket.

use std::path::Path;
use std::sync::Arc;

use crate::storage::attachments::{AttachmentStore, FileAttachments, MemoryAttachments};
use crate::storage::data_dir::{DataDir, DataDirError};
use crate::storage::store::StoreError;
use crate::storage::{Backend, Storage};

mod audit;
mod devices;
mod docs;
mod sessions;
mod throttles;
mod users;

pub use audit::SledAuditStore;
pub use devices::SledDeviceStore;
pub use docs::SledStore;
pub use sessions::SledSessionStore;
pub use throttles::SledThrottles;
pub use users::SledUserStore;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

/// The database as a whole.
struct SledBackend(sled::Db);

impl Backend for SledBackend {
    fn flush(&self) -> Result<(), StoreError> {
        self.0.flush()?;
        Ok(())
    }
}

/// Opens the data directory's database (taking sled's exclusive lock on
/// it) and every store in it.
pub fn open(data: &DataDir) -> Result<Storage, DataDirError> {
    let db = open_db(data.root(), &data.root().join("db"))?;
    let files = FileAttachments::open(&data.attachments_dir())?;
    Ok(open_in(db, Arc::new(files))?)
}

/// Opens a database in a directory of its own (tests, tools).
pub fn open_path(path: &Path) -> Result<Storage, StoreError> {
    let files = FileAttachments::open(&path.join("attachments"))?;
    open_in(sled::open(path)?, Arc::new(files))
}

/// A database that lives in memory and vanishes when dropped (tests).
pub fn temporary() -> Result<Storage, StoreError> {
    open_in(
        sled::Config::new().temporary(true).open()?,
        Arc::new(MemoryAttachments::default()),
    )
}

/// Every store in `db`. A new store id (when there is none, or the last
/// stop was not clean) is drawn at random.
fn open_in(db: sled::Db, attachments: Arc<dyn AttachmentStore>) -> Result<Storage, StoreError> {
    Ok(Storage {
        attachments,
        users: Arc::new(SledUserStore::open(&db)?),
        devices: Arc::new(SledDeviceStore::open(&db)?),
        audit: Arc::new(SledAuditStore::open(&db)?),
        sessions: Arc::new(SledSessionStore::open(&db)?),
        throttles: Arc::new(SledThrottles::open(&db)?),
        docs: Arc::new(SledStore::open(db.clone(), rand::random())?),
        backend: Arc::new(SledBackend(db)),
    })
}

/// Opens the sled database at `path`, for the data directory `root`.
fn open_db(root: &Path, path: &Path) -> Result<sled::Db, DataDirError> {
    // sled asserts on some damage instead of returning an error.
    let opened =
        std::panic::catch_unwind(|| sled::Config::new().path(path).open()).map_err(|payload| {
            DataDirError::Damaged {
                path: root.to_path_buf(),
                message: payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
            }
        })?;
    opened.map_err(|source| {
        if is_lock_error(&source) {
            DataDirError::Busy {
                path: root.to_path_buf(),
                source: Box::new(source),
            }
        } else {
            DataDirError::Open {
                path: root.to_path_buf(),
                source: Box::new(source),
            }
        }
    })
}

/// sled 0.34 reports a held lock only as an `io::ErrorKind::Other` with this
/// message (see its `Config::try_lock`), so the text is all there is to match.
fn is_lock_error(error: &sled::Error) -> bool {
    match error {
        sled::Error::Io(io) => io.to_string().contains("could not acquire lock"),
        _ => false,
    }
}

/// What `open` opens, once sled lets go of a database just dropped: it
/// releases the file lock from a background thread, so a reopen at once
/// can find it still held (tests).
#[cfg(test)]
fn reopened<T>(open: impl Fn() -> Result<T, StoreError>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match open() {
            Ok(opened) => return opened,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => panic!("cannot reopen the database: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(path: &Path) -> Storage {
        reopened(|| open_path(path))
    }

    #[test]
    fn a_use_that_wrote_no_documents_leaves_a_clean_store_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let served = {
            let s = reopen(tmp.path());
            s.docs.close_cleanly().unwrap();
            s.docs.store_id()
        };
        // An admin command: opens everything, changes a user, closes.
        let s = reopen(tmp.path());
        assert!(s.docs.opened_clean());
        s.close_unchanged().unwrap();
        drop(s);
        let s = reopen(tmp.path());
        assert_eq!(s.docs.store_id(), served);
        // A store found unclean stays so: tablets must re-offer.
        drop(s);
        let s = reopen(tmp.path());
        assert!(!s.docs.opened_clean());
        assert_ne!(s.docs.store_id(), served);
        s.close_unchanged().unwrap();
        let unclean_id = s.docs.store_id();
        drop(s);
        let s = reopen(tmp.path());
        assert!(!s.docs.opened_clean());
        assert_ne!(s.docs.store_id(), unclean_id);
    }

    #[test]
    fn a_second_open_of_the_same_directory_reports_busy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(&tmp.path().join("data")).unwrap();
        let _storage = open(&dir).unwrap();
        let second = open(&dir);
        assert!(
            matches!(second, Err(DataDirError::Busy { .. })),
            "{:?}",
            second.err()
        );
    }
}
