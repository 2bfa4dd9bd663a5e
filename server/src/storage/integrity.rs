//! What the server checks of its own data, so that damage is found and
//! refused rather than served short.
//!
//! The embedded database recovers from a damaged or truncated log by
//! dropping its tail in silence, so nothing inside the database can vouch
//! for how far it reached. The [`Anchor`] is a small file beside it (`DATA/anchor`),
//! written with `fsync` after every commit of the feed and every audit
//! entry: the feed position and the last audit entry's hash. At start,
//! [`quick_check`] compares the database against it and checks the feed
//! and the audit chain near their ends; its cost does not grow with the
//! number of records. `baraza-server check` runs [`full_check`] offline:
//! every record, the whole feed, index and access rows, the whole chain.
//!
//! The anchor may lag the database (a crash between the two writes), never
//! lead it: a database behind its anchor lost acknowledged data.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::storage::audit::{AuditLog, Verdict};
use crate::storage::store::Store;

/// Bytes of one anchor slot; the file holds two, written in turn, so a
/// write torn by a power cut leaves the other intact.
const SLOT_BYTES: u64 = 128;
const SLOT_MAGIC: &[u8; 4] = b"BZA1";
/// Feed entries and audit entries read back at start, at most.
const TAIL_CHECKED: usize = 1024;

/// What the anchor vouches for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnchorState {
    /// The feed reached at least this position.
    pub feed: u64,
    /// The audit log reached at least this entry...
    pub audit_seq: u64,
    /// ...whose hash (hex) is this.
    pub audit_hash: String,
}

/// Why the anchor file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The file could not be read or written.
    #[error("anchor file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Neither slot holds a valid record.
    #[error("anchor file {0} is damaged: neither copy checks out")]
    Damaged(PathBuf),
}

/// The anchor file, kept open for writing.
pub struct Anchor {
    path: PathBuf,
    inner: Mutex<AnchorInner>,
}

struct AnchorInner {
    file: File,
    state: AnchorState,
    counter: u64,
}

fn encode_slot(counter: u64, s: &AnchorState) -> Vec<u8> {
    let mut v = Vec::with_capacity(SLOT_BYTES as usize);
    v.extend_from_slice(SLOT_MAGIC);
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(&s.feed.to_be_bytes());
    v.extend_from_slice(&s.audit_seq.to_be_bytes());
    let hash = hex::decode(&s.audit_hash).unwrap_or_default();
    let mut h = [0u8; 32];
    if hash.len() == 32 {
        h.copy_from_slice(&hash);
    }
    v.extend_from_slice(&h);
    let sum = Sha256::digest(&v);
    v.extend_from_slice(&sum[..8]);
    v.resize(SLOT_BYTES as usize, 0);
    v
}

fn decode_slot(b: &[u8]) -> Option<(u64, AnchorState)> {
    if b.len() < 68 || &b[..4] != SLOT_MAGIC || Sha256::digest(&b[..60])[..8] != b[60..68] {
        return None;
    }
    let u = |r: std::ops::Range<usize>| b.get(r)?.try_into().ok().map(u64::from_be_bytes);
    let hash = &b[28..60];
    Some((
        u(4..12)?,
        AnchorState {
            feed: u(12..20)?,
            audit_seq: u(20..28)?,
            audit_hash: if hash.iter().all(|x| *x == 0) {
                String::new()
            } else {
                hex::encode(hash)
            },
        },
    ))
}

impl Anchor {
    /// The anchor file's place in a data directory.
    pub fn path_in(data: &Path) -> PathBuf {
        data.join("anchor")
    }

    /// Reads what the anchor at `path` vouches for; None if there is none
    /// yet (a new data directory, or one from before anchors).
    pub fn read(path: &Path) -> Result<Option<AnchorState>, AnchorError> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f
                .read_to_end(&mut bytes)
                .map_err(|source| AnchorError::Io {
                    path: path.into(),
                    source,
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AnchorError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        let slots: Vec<(u64, AnchorState)> = bytes
            .chunks(SLOT_BYTES as usize)
            .take(2)
            .filter_map(decode_slot)
            .collect();
        match slots.into_iter().max_by_key(|(c, _)| *c) {
            Some((_, state)) => Ok(Some(state)),
            None => Err(AnchorError::Damaged(path.into())),
        }
    }

    /// Opens (or creates) the anchor, starting from `state`.
    pub fn open(path: &Path, state: AnchorState) -> Result<Anchor, AnchorError> {
        let io = |source| AnchorError::Io {
            path: path.into(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // Numbering goes on from the copies already there, so the newest
        // write is the one `read` picks.
        let mut old = Vec::new();
        file.read_to_end(&mut old).map_err(io)?;
        let counter = old
            .chunks(SLOT_BYTES as usize)
            .take(2)
            .filter_map(decode_slot)
            .map(|(c, _)| c)
            .max()
            .unwrap_or(0);
        let anchor = Anchor {
            path: path.into(),
            inner: Mutex::new(AnchorInner {
                file,
                state: state.clone(),
                counter,
            }),
        };
        anchor.write(|s| *s = state)?;
        Ok(anchor)
    }

    fn write(&self, change: impl FnOnce(&mut AnchorState)) -> Result<(), AnchorError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut inner.state);
        inner.counter += 1;
        let slot = encode_slot(inner.counter, &inner.state);
        let at = (inner.counter % 2) * SLOT_BYTES;
        let io = |source| AnchorError::Io {
            path: self.path.clone(),
            source,
        };
        inner.file.seek(SeekFrom::Start(at)).map_err(io)?;
        inner.file.write_all(&slot).map_err(io)?;
        inner.file.sync_data().map_err(io)
    }

    /// The feed reached `seq` durably.
    pub fn note_feed(&self, seq: u64) {
        if let Err(err) = self.write(|s| s.feed = s.feed.max(seq)) {
            tracing::error!(error = %err, "could not write the anchor");
        }
    }

    /// The audit log reached entry `seq` with `hash` durably.
    pub fn note_audit(&self, seq: u64, hash: &str) {
        if let Err(err) = self.write(|s| {
            if seq >= s.audit_seq {
                s.audit_seq = seq;
                s.audit_hash = hash.to_string();
            }
        }) {
            tracing::error!(error = %err, "could not write the anchor");
        }
    }
}

/// One thing found wrong, named for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is damaged (`feed`, `audit log`, `record ID`, `index`, ...).
    pub what: String,
    /// How.
    pub how: String,
    /// What `check --repair` would do about it, if anything.
    pub repair: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.how)
    }
}

fn problem(what: impl Into<String>, how: impl Into<String>) -> Problem {
    Problem {
        what: what.into(),
        how: how.into(),
        repair: None,
    }
}

/// Reads every whole attachment and checks its bytes hash to its name
/// (the files under `DATA/attachments`, or the database's rows, altered or
/// cut short). Costs a read of every attachment: `check` runs it, start
/// does not. Nothing is repaired: a damaged attachment comes back from a
/// backup of the attachments, or from the tablet that attached it.
pub fn attachment_check(store: &dyn crate::storage::attachments::AttachmentStore) -> Vec<Problem> {
    use crate::storage::attachments::Held;
    use sha2::Digest as _;
    const PIECE: usize = 1 << 20;
    let kept = match store.kept() {
        Ok(kept) => kept,
        Err(e) => return vec![problem("attachments", e.to_string())],
    };
    let mut found = Vec::new();
    for k in kept {
        let Held::Whole(size) = k.held else {
            continue;
        };
        let name = hex::encode(k.sha);
        let mut hasher = sha2::Sha256::new();
        let mut at = 0u64;
        let mut short = false;
        while at < size {
            match store.read(&k.sha, at, PIECE) {
                Ok(Some(piece)) if !piece.is_empty() => {
                    hasher.update(&piece);
                    at += piece.len() as u64;
                }
                Ok(_) => {
                    short = true;
                    break;
                }
                Err(e) => {
                    found.push(problem(format!("attachment {name}"), e.to_string()));
                    short = true;
                    break;
                }
            }
        }
        if short {
            found.push(problem(
                format!("attachment {name}"),
                format!("holds {at} of its {size} bytes"),
            ));
        } else if <[u8; 32]>::from(hasher.finalize()) != k.sha {
            found.push(problem(
                format!("attachment {name}"),
                "its bytes do not hash to its name: altered",
            ));
        }
    }
    found
}

/// Checks, at a cost that does not grow with the records held: the
/// database reaches what the anchor vouches for, the feed's last entries
/// are contiguous and name stored (or erased) records, and the audit
/// chain's last entries link up to its head.
pub fn quick_check(
    store: &dyn Store,
    audit: &AuditLog,
    anchor: Option<&AnchorState>,
) -> Vec<Problem> {
    let mut found = Vec::new();
    let latest = match store.feed_watermark() {
        Ok(s) => s,
        Err(e) => return vec![problem("feed", e.to_string())],
    };
    found.extend(feed_against_anchor(latest, anchor));
    found.extend(feed_tail(store, latest, TAIL_CHECKED));
    match audit.verify_tail(TAIL_CHECKED) {
        Ok((last, None)) => {
            if let Some(a) = anchor {
                found.extend(audit_against_anchor(audit, last, a));
            }
        }
        Ok((_, Some(broken))) => found.push(problem("audit log", broken)),
        Err(e) => found.push(problem("audit log", e.to_string())),
    }
    found
}

/// The feed must reach the position the anchor vouches for.
fn feed_against_anchor(latest: u64, anchor: Option<&AnchorState>) -> Option<Problem> {
    let a = anchor.filter(|a| latest < a.feed)?;
    Some(problem(
        "feed",
        format!(
            "the database's feed ends at position {latest}, but position {} was committed: acknowledged writes are missing",
            a.feed
        ),
    ))
}

fn audit_against_anchor(audit: &AuditLog, last: u64, a: &AnchorState) -> Vec<Problem> {
    if a.audit_seq == 0 {
        return Vec::new();
    }
    if last < a.audit_seq {
        return vec![problem(
            "audit log",
            format!(
                "the log ends at entry {last}, but entry {} was written: entries are missing",
                a.audit_seq
            ),
        )];
    }
    match audit.entry(a.audit_seq) {
        Ok(Some(e)) if e.hash == a.audit_hash => Vec::new(),
        Ok(_) => vec![problem(
            "audit log",
            format!(
                "entry {} is not the one that was written (its hash differs from the anchor's)",
                a.audit_seq
            ),
        )],
        Err(e) => vec![problem("audit log", e.to_string())],
    }
}

/// The last `n` feed entries up to `latest`: no position missing, each
/// naming a record the store holds or erased.
fn feed_tail(store: &dyn Store, latest: u64, n: usize) -> Vec<Problem> {
    let after = latest.saturating_sub(n as u64);
    let entries = match store.entries_after(after, latest, n) {
        Ok(e) => e,
        Err(e) => return vec![problem("feed", e.to_string())],
    };
    let mut found = Vec::new();
    let mut expected = after + 1;
    for (seq, doc) in entries {
        if seq != expected {
            found.push(problem(
                "feed",
                format!("positions {expected} to {} are missing", seq - 1),
            ));
        }
        expected = seq + 1;
        let known = matches!(store.doc_seq(doc), Ok(Some(s)) if s >= seq)
            || matches!(store.erased(doc), Ok(Some(_)));
        if !known {
            found.push(problem(
                format!("record {doc}"),
                format!("feed position {seq} names it, but the store does not hold it as of then"),
            ));
        }
    }
    if latest > 0 && expected != latest + 1 {
        found.push(problem(
            "feed",
            format!("the feed ends at {}, not at {latest}", expected - 1),
        ));
    }
    found
}

/// Everything: every record decodes and loads to its recorded heads, the
/// whole feed has no holes, every record has its index and access rows,
/// the whole audit chain verifies, and the anchor agrees. For `baraza-
/// server check`; reads the whole database.
pub fn full_check(
    store: &dyn Store,
    audit: &AuditLog,
    anchor: Option<&AnchorState>,
) -> Vec<Problem> {
    let mut found = Vec::new();
    let latest = store.feed_watermark().unwrap_or(0);
    found.extend(feed_against_anchor(latest, anchor));
    found.extend(feed_tail(
        store,
        latest,
        usize::try_from(latest).unwrap_or(usize::MAX),
    ));
    match store.all_docs() {
        Ok(docs) => {
            for doc in docs {
                if let Some(p) = check_record(store, doc) {
                    found.push(p);
                }
            }
        }
        Err(e) => found.push(problem("records", e.to_string())),
    }
    match audit.verify() {
        Ok(Verdict::Intact { entries }) => {
            if let Some(a) = anchor {
                found.extend(audit_against_anchor(audit, entries, a));
            }
        }
        Ok(Verdict::Broken { at, reason }) => {
            found.push(problem("audit log", format!("entry {at}: {reason}")))
        }
        Err(e) => found.push(problem("audit log", e.to_string())),
    }
    found
}

fn check_record(store: &dyn Store, doc: baraza_protocol::DocId) -> Option<Problem> {
    let damaged = |how: String| {
        Some(Problem {
            what: format!("record {doc}"),
            how,
            repair: Some(
                "quarantine it (devices are told it is held back); tablets that hold it \
                 re-offer it after the restore described in README's recovery section"
                    .into(),
            ),
        })
    };
    let stored = match store.load(doc) {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => return damaged(e.to_string()),
    };
    if let Err(e) = baraza_protocol::docsync::verify_chunks(&stored.bytes) {
        return damaged(e.to_string());
    }
    let loaded = baraza_protocol::docsync::contained(|| {
        automerge::Automerge::load(&stored.bytes)
            .map_err(|e| baraza_protocol::docsync::ApplyError::Corrupt(e.to_string()))
    });
    match loaded {
        Ok(d) => {
            let mut have = baraza_protocol::to_heads(&d.get_heads());
            let mut want = stored.heads.clone();
            have.sort();
            want.sort();
            if have != want {
                return damaged("its chunks load to other heads than were recorded".into());
            }
        }
        Err(e) => return damaged(e.to_string()),
    }
    match store.index_rows_agree(doc) {
        Ok(None) => None,
        Ok(Some(how)) => Some(Problem {
            what: format!("record {doc}"),
            how,
            repair: Some("rewrite its index and access rows from the record's header".into()),
        }),
        Err(e) => Some(problem(format!("record {doc}"), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_altered_attachment_is_named() {
        use crate::storage::attachments::{AttachmentStore, FileAttachments};
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let store = FileAttachments::open(dir.path()).unwrap();
        let bytes = b"a signed attendance sheet".to_vec();
        let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        store.append(&sha, 0, &bytes).unwrap();
        store.finish(&sha).unwrap();
        assert!(attachment_check(&store).is_empty());
        let name = hex::encode(sha);
        let file = dir.path().join("whole").join(&name[..2]).join(&name);
        std::fs::write(&file, b"a forged attendance sheet").unwrap();
        let found = attachment_check(&store);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].what, format!("attachment {name}"));
    }

    use super::*;

    fn state(feed: u64) -> AnchorState {
        AnchorState {
            feed,
            audit_seq: feed * 2,
            audit_hash: "ab".repeat(32),
        }
    }

    #[test]
    fn the_newest_write_wins_across_reopens_and_a_torn_copy_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = Anchor::path_in(dir.path());
        assert_eq!(Anchor::read(&path).unwrap(), None);
        let a = Anchor::open(&path, state(1)).unwrap();
        a.note_feed(5);
        drop(a);
        assert_eq!(Anchor::read(&path).unwrap().unwrap().feed, 5);
        // Reopened at a lower state (a repair): that is what counts now.
        drop(Anchor::open(&path, state(2)).unwrap());
        assert_eq!(Anchor::read(&path).unwrap(), Some(state(2)));
        // A write torn in the newest copy leaves the older one.
        let a = Anchor::open(&path, state(3)).unwrap();
        let newest = a.inner.lock().unwrap().counter;
        drop(a);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[((newest % 2) * SLOT_BYTES) as usize + 14] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Anchor::read(&path).unwrap(), Some(state(2)));
        // Both torn: damaged, not silently absent.
        std::fs::write(&path, vec![7u8; 256]).unwrap();
        assert!(matches!(Anchor::read(&path), Err(AnchorError::Damaged(_))));
    }
}
