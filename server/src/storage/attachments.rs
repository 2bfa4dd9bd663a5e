//! [`AttachmentStore`]: the bytes of attachments, named by their SHA-256,
//! kept beside the records that refer to them (a record holds only the
//! reference). An upload grows a partial copy chunk by chunk, each chunk
//! durable before it is acknowledged, so a cut link resumes at the last
//! byte held; the copy becomes whole only when its bytes hash to its
//! name, and a whole copy is never written again.
//!
//! Implementations: [`FileAttachments`] (files under the data directory,
//! the embedded default beside sled), [`MemoryAttachments`] (tests and
//! temporary stores), and PostgreSQL's (`postgres::attachments`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use baraza_protocol::DocId;

use crate::storage::store::StoreError;

/// An attachment's name: the SHA-256 of its bytes.
pub type Digest = [u8; 32];

/// How much of an attachment is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// None of it.
    Nothing,
    /// The first this many bytes of an upload, durably.
    Partial(u64),
    /// All of it, checked against its name: this many bytes.
    Whole(u64),
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The bytes are durably held; the partial copy is now this long.
    To(u64),
    /// The append was not at the end of what is held (a chunk resent
    /// after its acknowledgement was lost, or a second uploader): nothing
    /// was written, and this is what is held.
    NotAtEnd(Held),
}

/// What making a partial copy whole found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The bytes hash to their name: they are whole now (or were already).
    Whole(u64),
    /// They do not: the partial copy was removed, so the upload starts
    /// again from byte 0.
    Mismatch,
}

/// One attachment as kept, for garbage collection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// Its digest.
    pub sha: Digest,
    /// How much of it is held.
    pub held: Held,
    /// When its bytes last changed, ms since 1970.
    pub changed_ms: u64,
    /// The records it was uploaded for or asked about, as noted.
    pub owners: Vec<DocId>,
}

/// Where attachment bytes are kept.
pub trait AttachmentStore: Send + Sync {
    /// How much of `sha` is held.
    fn held(&self, sha: &Digest) -> Result<Held, StoreError>;
    /// Appends `bytes` to the partial copy of `sha` if `offset` is where
    /// it ends (0 for a new one), durably before returning. Nothing is
    /// written to a whole copy.
    fn append(&self, sha: &Digest, offset: u64, bytes: &[u8]) -> Result<Appended, StoreError>;
    /// Hashes the partial copy of `sha`: whole if the hash is its name,
    /// removed if not.
    fn finish(&self, sha: &Digest) -> Result<Finished, StoreError>;
    /// Up to `len` bytes of the whole copy of `sha` from `offset` (fewer
    /// at its end); None if it is not whole.
    fn read(&self, sha: &Digest, offset: u64, len: usize) -> Result<Option<Vec<u8>>, StoreError>;
    /// Forgets `sha`, whole or partial, and its owners.
    fn remove(&self, sha: &Digest) -> Result<(), StoreError>;
    /// Notes, durably, that record `record` refers to `sha` (its device
    /// asked about or uploaded it), so garbage collection asks that
    /// record before it removes the bytes. Noting twice is noting once.
    fn note_owner(&self, sha: &Digest, record: DocId) -> Result<(), StoreError>;
    /// Every attachment held, whole or partial, with its owners.
    fn kept(&self) -> Result<Vec<Kept>, StoreError>;
}

/// Parses a digest written as 64 hex digits.
pub fn parse_digest(text: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    // Only the lowercase form names an attachment in a record.
    (hex::encode(out) == text).then_some(out)
}

/// Uploads appending at once to one store, by digest: appends to one
/// digest take turns, appends to others do not wait for them.
const STRIPES: usize = 64;

fn stripe(sha: &Digest) -> usize {
    usize::from(sha[0]) % STRIPES
}

fn io_error(e: io::Error) -> StoreError {
    StoreError::Db(Box::new(e))
}

/// Attachments as files under a directory: `whole/ab/<sha>` once checked,
/// `partial/<sha>` while an upload grows. Each append is written and
/// `fsync`ed before it is acknowledged; a copy becomes whole by a rename
/// followed by an `fsync` of the directory, so after a crash a name under
/// `whole/` always holds all its bytes. A partial copy's length is what
/// is held: bytes of a chunk written before a crash but never
/// acknowledged are bytes of that chunk (each chunk is checked before it
/// is written), and the hash check at the end catches any that are not.
pub struct FileAttachments {
    root: PathBuf,
    locks: Vec<Mutex<()>>,
}

impl FileAttachments {
    /// The store in `root`, made if missing.
    pub fn open(root: &Path) -> Result<FileAttachments, StoreError> {
        for dir in ["whole", "partial", "owners"] {
            crate::storage::data_dir::create_private_dir(&root.join(dir)).map_err(io_error)?;
        }
        Ok(FileAttachments {
            root: root.to_path_buf(),
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    fn whole_path(&self, sha: &Digest) -> PathBuf {
        let name = hex::encode(sha);
        self.root.join("whole").join(&name[..2]).join(name)
    }

    fn partial_path(&self, sha: &Digest) -> PathBuf {
        self.root.join("partial").join(hex::encode(sha))
    }

    fn owners_path(&self, sha: &Digest) -> PathBuf {
        self.root.join("owners").join(hex::encode(sha))
    }

    fn owners_of(&self, sha: &Digest) -> Result<Vec<DocId>, StoreError> {
        let text = match std::fs::read_to_string(self.owners_path(sha)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(e)),
        };
        // A line cut short by a crash is not an owner: it was never
        // acknowledged as one.
        Ok(text
            .lines()
            .filter_map(|line| line.trim().parse::<DocId>().ok())
            .collect())
    }

    fn lock(&self, sha: &Digest) -> std::sync::MutexGuard<'_, ()> {
        self.locks[stripe(sha)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn held_unlocked(&self, sha: &Digest) -> Result<Held, StoreError> {
        if let Some(len) = file_len(&self.whole_path(sha))? {
            return Ok(Held::Whole(len));
        }
        Ok(match file_len(&self.partial_path(sha))? {
            Some(len) => Held::Partial(len),
            None => Held::Nothing,
        })
    }
}

fn file_len(path: &Path) -> Result<Option<u64>, StoreError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

/// Appends `bytes` to the file at `path` (made if missing) and syncs
/// them; with `new_name`, its directory too, so the name survives a
/// crash as well as the bytes.
fn append_durably(path: &Path, bytes: &[u8], new_name: bool) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error)?;
    file.write_all(bytes).map_err(io_error)?;
    file.sync_data().map_err(io_error)?;
    match path.parent() {
        Some(dir) if new_name => sync_dir(dir),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error)
}

impl AttachmentStore for FileAttachments {
    fn held(&self, sha: &Digest) -> Result<Held, StoreError> {
        self.held_unlocked(sha)
    }

    fn append(&self, sha: &Digest, offset: u64, bytes: &[u8]) -> Result<Appended, StoreError> {
        let _turn = self.lock(sha);
        let held = self.held_unlocked(sha)?;
        let at = match held {
            Held::Nothing => 0,
            Held::Partial(len) => len,
            Held::Whole(_) => return Ok(Appended::NotAtEnd(held)),
        };
        if at != offset {
            return Ok(Appended::NotAtEnd(held));
        }
        append_durably(&self.partial_path(sha), bytes, at == 0)?;
        Ok(Appended::To(at + bytes.len() as u64))
    }

    fn finish(&self, sha: &Digest) -> Result<Finished, StoreError> {
        let _turn = self.lock(sha);
        match self.held_unlocked(sha)? {
            Held::Whole(len) => return Ok(Finished::Whole(len)),
            Held::Nothing => return Ok(Finished::Mismatch),
            Held::Partial(_) => {}
        }
        let partial = self.partial_path(sha);
        let mut file = File::open(&partial).map_err(io_error)?;
        let mut hasher = Sha256::new();
        let len = io::copy(&mut file, &mut hasher).map_err(io_error)?;
        if <[u8; 32]>::from(hasher.finalize()) != *sha {
            std::fs::remove_file(&partial).map_err(io_error)?;
            return Ok(Finished::Mismatch);
        }
        let whole = self.whole_path(sha);
        let dir = whole.parent().unwrap_or(&self.root).to_path_buf();
        crate::storage::data_dir::create_private_dir(&dir).map_err(io_error)?;
        std::fs::rename(&partial, &whole).map_err(io_error)?;
        sync_dir(&dir)?;
        sync_dir(&self.root.join("partial"))?;
        Ok(Finished::Whole(len))
    }

    fn read(&self, sha: &Digest, offset: u64, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let mut file = match File::open(self.whole_path(sha)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
        let mut out = Vec::with_capacity(len.min(1 << 20));
        file.take(len as u64)
            .read_to_end(&mut out)
            .map_err(io_error)?;
        Ok(Some(out))
    }

    fn remove(&self, sha: &Digest) -> Result<(), StoreError> {
        let _turn = self.lock(sha);
        for path in [
            self.whole_path(sha),
            self.partial_path(sha),
            self.owners_path(sha),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }

    fn note_owner(&self, sha: &Digest, record: DocId) -> Result<(), StoreError> {
        let _turn = self.lock(sha);
        let owners = self.owners_of(sha)?;
        if owners.contains(&record) {
            return Ok(());
        }
        append_durably(
            &self.owners_path(sha),
            format!("{record}\n").as_bytes(),
            owners.is_empty(),
        )?;
        Ok(())
    }

    fn kept(&self) -> Result<Vec<Kept>, StoreError> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut files = Vec::new();
        let whole = self.root.join("whole");
        for dir in std::fs::read_dir(&whole).map_err(io_error)? {
            let dir = dir.map_err(io_error)?.path();
            if dir.is_dir() {
                for f in std::fs::read_dir(&dir).map_err(io_error)? {
                    files.push(f.map_err(io_error)?.path());
                }
            }
        }
        for f in std::fs::read_dir(self.root.join("partial")).map_err(io_error)? {
            files.push(f.map_err(io_error)?.path());
        }
        for path in files {
            let Some(sha) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_digest)
            else {
                continue;
            };
            if !seen.insert(sha) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                // Moved to whole/ or removed since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(e)),
            };
            let changed_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            out.push(Kept {
                sha,
                held: self.held_unlocked(&sha)?,
                changed_ms,
                owners: self.owners_of(&sha)?,
            });
        }
        Ok(out)
    }
}

/// Attachments in memory, gone with the store (tests, temporary stores).
#[derive(Default)]
pub struct MemoryAttachments {
    held: Mutex<HashMap<Digest, (Vec<u8>, bool)>>,
    owners: Mutex<HashMap<Digest, Vec<DocId>>>,
}

impl AttachmentStore for MemoryAttachments {
    fn held(&self, sha: &Digest) -> Result<Held, StoreError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match held.get(sha) {
            None => Held::Nothing,
            Some((bytes, true)) => Held::Whole(bytes.len() as u64),
            Some((bytes, false)) => Held::Partial(bytes.len() as u64),
        })
    }

    fn append(&self, sha: &Digest, offset: u64, bytes: &[u8]) -> Result<Appended, StoreError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if !held.contains_key(sha) {
            if offset != 0 {
                return Ok(Appended::NotAtEnd(Held::Nothing));
            }
            held.insert(*sha, (Vec::new(), false));
        }
        let Some(entry) = held.get_mut(sha) else {
            return Ok(Appended::NotAtEnd(Held::Nothing));
        };
        match entry {
            (have, true) => Ok(Appended::NotAtEnd(Held::Whole(have.len() as u64))),
            (have, false) if have.len() as u64 != offset => {
                Ok(Appended::NotAtEnd(Held::Partial(have.len() as u64)))
            }
            (have, false) => {
                have.extend_from_slice(bytes);
                Ok(Appended::To(have.len() as u64))
            }
        }
    }

    fn finish(&self, sha: &Digest) -> Result<Finished, StoreError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let Some((bytes, whole)) = held.get_mut(sha) else {
            return Ok(Finished::Mismatch);
        };
        if <[u8; 32]>::from(Sha256::digest(&bytes[..])) == *sha {
            *whole = true;
            return Ok(Finished::Whole(bytes.len() as u64));
        }
        held.remove(sha);
        Ok(Finished::Mismatch)
    }

    fn read(&self, sha: &Digest, offset: u64, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match held.get(sha) {
            Some((bytes, true)) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(len).min(bytes.len());
                Some(bytes[start..end].to_vec())
            }
            _ => None,
        })
    }

    fn remove(&self, sha: &Digest) -> Result<(), StoreError> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha);
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha);
        Ok(())
    }

    fn note_owner(&self, sha: &Digest, record: DocId) -> Result<(), StoreError> {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let of = owners.entry(*sha).or_default();
        if !of.contains(&record) {
            of.push(record);
        }
        Ok(())
    }

    fn kept(&self) -> Result<Vec<Kept>, StoreError> {
        let shas: Vec<Digest> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        shas.into_iter()
            .map(|sha| {
                Ok(Kept {
                    sha,
                    held: self.held(&sha)?,
                    // Memory stores live for a test: their bytes are as
                    // old as the store.
                    changed_ms: 0,
                    owners: owners.get(&sha).cloned().unwrap_or_default(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! The [`AttachmentStore`] contract as checks over `&dyn
    //! AttachmentStore`, run on every implementation.

    use super::*;

    fn digest(bytes: &[u8]) -> Digest {
        Sha256::digest(bytes).into()
    }

    /// Every check, in turn, on an empty store.
    pub fn run(store: &dyn AttachmentStore) {
        an_upload_grows_in_order_and_becomes_whole(store);
        bytes_that_do_not_hash_to_their_name_are_dropped(store);
        removed_attachments_are_gone(store);
        owners_are_noted_once_and_listed(store);
    }

    fn owners_are_noted_once_and_listed(store: &dyn AttachmentStore) {
        let sha = digest(b"a photo two records share");
        store.append(&sha, 0, b"a photo two records share").unwrap();
        store.finish(&sha).unwrap();
        let half = digest(b"half an upload");
        store.append(&half, 0, b"half").unwrap();
        let (a, b) = (DocId::from_bytes([1; 16]), DocId::from_bytes([2; 16]));
        store.note_owner(&sha, a).unwrap();
        store.note_owner(&sha, b).unwrap();
        store.note_owner(&sha, a).unwrap();
        store.note_owner(&half, b).unwrap();
        let kept = store.kept().unwrap();
        let whole = kept.iter().find(|k| k.sha == sha).unwrap();
        assert_eq!(whole.held, Held::Whole(25));
        let mut owners = whole.owners.clone();
        owners.sort_by_key(|d| *d.as_bytes());
        assert_eq!(owners, vec![a, b]);
        let partial = kept.iter().find(|k| k.sha == half).unwrap();
        assert_eq!(
            (partial.held, partial.owners.clone()),
            (Held::Partial(4), vec![b])
        );
        store.remove(&sha).unwrap();
        store.remove(&half).unwrap();
        assert!(store
            .kept()
            .unwrap()
            .iter()
            .all(|k| k.sha != sha && k.sha != half));
    }

    fn an_upload_grows_in_order_and_becomes_whole(store: &dyn AttachmentStore) {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let sha = digest(&bytes);
        assert_eq!(store.held(&sha).unwrap(), Held::Nothing);
        assert_eq!(
            store.append(&sha, 5, &bytes[..10]).unwrap(),
            Appended::NotAtEnd(Held::Nothing),
            "an append past the end writes nothing"
        );
        assert_eq!(
            store.append(&sha, 0, &bytes[..4000]).unwrap(),
            Appended::To(4000)
        );
        assert_eq!(
            store.append(&sha, 0, &bytes[..4000]).unwrap(),
            Appended::NotAtEnd(Held::Partial(4000)),
            "a chunk sent twice is written once"
        );
        assert_eq!(store.held(&sha).unwrap(), Held::Partial(4000));
        assert_eq!(
            store.read(&sha, 0, 10).unwrap(),
            None,
            "partial bytes are not served"
        );
        assert_eq!(
            store.append(&sha, 4000, &bytes[4000..]).unwrap(),
            Appended::To(10_000)
        );
        assert_eq!(store.finish(&sha).unwrap(), Finished::Whole(10_000));
        assert_eq!(store.finish(&sha).unwrap(), Finished::Whole(10_000));
        assert_eq!(store.held(&sha).unwrap(), Held::Whole(10_000));
        assert_eq!(
            store.append(&sha, 10_000, b"more").unwrap(),
            Appended::NotAtEnd(Held::Whole(10_000)),
            "a whole copy takes no more bytes"
        );
        assert_eq!(store.read(&sha, 0, 20_000).unwrap().unwrap(), bytes);
        assert_eq!(
            store.read(&sha, 9_990, 100).unwrap().unwrap(),
            bytes[9_990..].to_vec()
        );
        assert_eq!(
            store.read(&sha, 1_000, 3_500).unwrap().unwrap(),
            bytes[1_000..4_500].to_vec(),
            "a range across the chunks as they were sent"
        );
    }

    fn bytes_that_do_not_hash_to_their_name_are_dropped(store: &dyn AttachmentStore) {
        let sha = digest(b"the real photo");
        assert_eq!(
            store.append(&sha, 0, b"a forged photo").unwrap(),
            Appended::To(14)
        );
        assert_eq!(store.finish(&sha).unwrap(), Finished::Mismatch);
        assert_eq!(store.held(&sha).unwrap(), Held::Nothing);
        assert_eq!(
            store.append(&sha, 0, b"the real photo").unwrap(),
            Appended::To(14)
        );
        assert_eq!(store.finish(&sha).unwrap(), Finished::Whole(14));
    }

    fn removed_attachments_are_gone(store: &dyn AttachmentStore) {
        let sha = digest(b"erase me");
        store.append(&sha, 0, b"erase me").unwrap();
        store.finish(&sha).unwrap();
        let partial = digest(b"half");
        store.append(&partial, 0, b"ha").unwrap();
        store.remove(&sha).unwrap();
        store.remove(&partial).unwrap();
        assert_eq!(store.held(&sha).unwrap(), Held::Nothing);
        assert_eq!(store.held(&partial).unwrap(), Held::Nothing);
        assert_eq!(store.read(&sha, 0, 8).unwrap(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_keep_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(&FileAttachments::open(dir.path()).unwrap());
    }

    #[test]
    fn memory_keeps_the_contract() {
        conformance::run(&MemoryAttachments::default());
    }

    #[test]
    fn files_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"a signed statement".to_vec();
        let sha: Digest = Sha256::digest(&bytes).into();
        let store = FileAttachments::open(dir.path()).unwrap();
        store.append(&sha, 0, &bytes[..6]).unwrap();
        drop(store);
        let store = FileAttachments::open(dir.path()).unwrap();
        assert_eq!(store.held(&sha).unwrap(), Held::Partial(6));
        store.append(&sha, 6, &bytes[6..]).unwrap();
        store.finish(&sha).unwrap();
        drop(store);
        let store = FileAttachments::open(dir.path()).unwrap();
        assert_eq!(store.read(&sha, 0, 100).unwrap().unwrap(), bytes);
    }

    #[test]
    fn only_lowercase_hex_names_an_attachment() {
        let text = "ab".repeat(32);
        assert_eq!(parse_digest(&text), Some([0xab; 32]));
        assert_eq!(parse_digest(&text.to_uppercase()), None);
        assert_eq!(parse_digest("abc"), None);
    }
}
