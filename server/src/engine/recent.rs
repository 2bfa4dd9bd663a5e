//! The chunks of recently written records, read from the store once and
//! shared by every connection's catch-up.
//!
//! When many tablets are connected, each write is read back by every one
//! whose user may read it, each from its own feed position. Without a
//! shared copy every reader scans and checks the same chunks again. A
//! cached log holds what the store had after some position (`from`), so
//! it serves any reader at or beyond that position, for any feed entry at
//! or below the latest write it holds. It is only ever filled from the
//! store (committed writes, checksums verified), never from a live copy.
//!
//! An erasure or a rebuild changes what a record's chunks say; the
//! committer forgets the record before and after such a commit, and a
//! read that began before a forget is not kept.

use std::sync::Mutex;

use baraza_protocol::{docsync, DocDelta, DocId, Seq};

use crate::engine::docs::DocsError;
use crate::storage::catch_up::DocReads;
use crate::storage::store::DocChunks;

/// Records whose recent chunks are kept: readers of a busy feed are
/// thousands of entries apart, and each record they share is read once.
const LOGS_MAX: usize = 16384;
/// Bytes kept in all.
const BYTES_MAX: usize = 32 << 20;
/// Largest log kept (bytes): a big record is read from the store each time
/// rather than held.
const LOG_BYTES_MAX: usize = 64 << 10;

/// A record's chunks after `from`, as the store had them.
struct Log {
    from: Seq,
    chunks: DocChunks,
}

impl Log {
    /// What a reader holding the record as of `base` (>= `from`) lacks.
    fn after(&self, base: Seq) -> Lacking {
        let c = &self.chunks;
        let start = c
            .ends
            .iter()
            .take_while(|(seq, _)| *seq <= base)
            .last()
            .map_or(0, |(_, end)| *end);
        Lacking {
            delta: DocDelta {
                heads: c.heads.clone(),
                data: c.bytes.get(start..).unwrap_or_default().to_vec(),
                seq: c.seq,
            },
            whole: c.whole && start == 0,
        }
    }
}

/// What a reader lacks of a record.
#[derive(Debug, PartialEq)]
pub struct Lacking {
    /// The chunks it lacks and the state they bring it to.
    pub delta: DocDelta,
    /// It has none of the record: the chunks are all there are, and a
    /// saved copy would do as well.
    pub whole: bool,
}

struct Inner {
    logs: lru::LruCache<DocId, std::sync::Arc<Log>>,
    /// Chunk bytes the logs hold.
    bytes: usize,
    /// Moved by every forget: a read that began at another epoch may hold
    /// what was just erased or rebuilt, so it is not kept.
    epoch: u64,
}

/// Recent records' chunks, bounded in count and size.
pub struct RecentLogs {
    inner: Mutex<Inner>,
}

impl Default for RecentLogs {
    fn default() -> Self {
        RecentLogs {
            inner: Mutex::new(Inner {
                // Bounded by `put` below, in count and bytes.
                logs: lru::LruCache::unbounded(),
                bytes: 0,
                epoch: 0,
            }),
        }
    }
}

impl RecentLogs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a reader holding `doc` as of feed position `base` lacks, for a
    /// feed entry at position `at`: a state that includes every write up
    /// to `at`. None if the store has no chunks after `base` (the record is
    /// unknown, erased, or compacted past `base`).
    pub fn after<R: DocReads + ?Sized>(
        &self,
        reads: &R,
        doc: DocId,
        base: Seq,
        at: Seq,
    ) -> Result<Option<Lacking>, DocsError> {
        let epoch = {
            let mut inner = self.lock();
            if let Some(log) = inner.logs.get(&doc) {
                if log.chunks.seq >= at && base >= log.from {
                    return Ok(Some(log.after(base)));
                }
            }
            reads.read_at_epoch().unwrap_or(inner.epoch)
        };
        let Some(chunks) = reads.chunks_after(doc, base)? else {
            return Ok(None);
        };
        // Every chunk's checksum is checked, so a flipped byte is never
        // sent on (nor kept for the next reader).
        docsync::verify_chunks(&chunks.bytes).map_err(|e| DocsError::Load(doc, e.to_string()))?;
        let log = Log { from: base, chunks };
        let delta = log.after(base);
        if log.chunks.bytes.len() <= LOG_BYTES_MAX {
            let mut inner = self.lock();
            // The newer log wins; of two as new, the one serving more readers.
            let better = inner.logs.peek(&doc).is_none_or(|old| {
                (log.chunks.seq, std::cmp::Reverse(log.from))
                    > (old.chunks.seq, std::cmp::Reverse(old.from))
            });
            if inner.epoch == epoch && better {
                inner.put(doc, log);
            }
        }
        Ok(Some(delta))
    }

    /// True if a reader holding `doc` as of `base` would be answered for
    /// the entry at `at` from memory, without reading the store.
    pub fn holds(&self, doc: DocId, base: Seq, at: Seq) -> bool {
        self.lock()
            .logs
            .peek(&doc)
            .is_some_and(|log| log.chunks.seq >= at && base >= log.from)
    }

    /// The epoch now: a read begun now is kept only if no forget comes
    /// before it is (see [`crate::storage::catch_up::DocReads::read_at_epoch`]).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Drops what is kept of `doc`, and keeps no read already under way.
    pub fn forget(&self, doc: DocId) {
        let mut inner = self.lock();
        inner.epoch = inner.epoch.wrapping_add(1);
        if let Some(old) = inner.logs.pop(&doc) {
            inner.bytes -= old.chunks.bytes.len();
        }
    }
}

impl Inner {
    fn put(&mut self, doc: DocId, log: Log) {
        self.bytes += log.chunks.bytes.len();
        if let Some(old) = self.logs.put(doc, std::sync::Arc::new(log)) {
            self.bytes -= old.chunks.bytes.len();
        }
        while self.logs.len() > LOGS_MAX || self.bytes > BYTES_MAX {
            match self.logs.pop_lru() {
                Some((_, old)) => self.bytes -= old.chunks.bytes.len(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(from: Seq, parts: &[(Seq, &[u8])]) -> Log {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (seq, part) in parts {
            bytes.extend_from_slice(part);
            ends.push((*seq, bytes.len()));
        }
        Log {
            from,
            chunks: DocChunks {
                bytes,
                ends,
                seq: parts.last().map_or(from, |p| p.0),
                heads: Vec::new(),
                whole: true,
            },
        }
    }

    /// A reader further on than the log's start is sent only the chunks
    /// after its own position.
    #[test]
    fn a_reader_gets_the_chunks_after_its_position() {
        let l = log(3, &[(5, b"ab"), (9, b"c"), (12, b"de")]);
        assert_eq!(l.after(3).delta.data, b"abcde");
        assert_eq!(l.after(5).delta.data, b"cde");
        assert_eq!(l.after(10).delta.data, b"de");
        assert_eq!(l.after(12).delta.data, b"");
        assert_eq!(l.after(12).delta.seq, 12);
        // Only a reader before the first chunk lacks the record whole.
        assert!(l.after(3).whole && l.after(4).whole);
        assert!(!l.after(5).whole);
    }
}
