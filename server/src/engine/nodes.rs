//! What the other server nodes on a shared database did, heard through
//! the backend's [`Notice`]s and applied to this node's live state: its
//! copies of records, the feed position its sessions read up to, and its
//! sessions' standing. A node alone on its store (sled) hears nothing and
//! runs none of this.

use std::sync::Arc;

use crate::identity::devices::DeviceRegistry;
use crate::storage::notices::Notice;

use super::SyncHub;

/// Feed entries read at once when another node's commit is heard.
const ENTRIES_PER_READ: usize = 1024;

/// Notices heard together at most.
const NOTICES_AT_ONCE: usize = 256;

impl SyncHub {
    /// Follows what other nodes do, on a thread of its own, until the
    /// backend stops telling or the hub is gone.
    pub fn follow_other_nodes(
        self: &Arc<Self>,
        notices: std::sync::mpsc::Receiver<Notice>,
        devices: DeviceRegistry,
    ) -> std::io::Result<()> {
        self.shared
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let hub = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("baraza-nodes".into())
            .spawn(move || {
                // Under load another node commits faster than one read per
                // notice keeps up with: what has queued is heard together.
                while let Ok(first) = notices.recv() {
                    let mut batch = vec![first];
                    while batch.len() < NOTICES_AT_ONCE {
                        match notices.try_recv() {
                            Ok(notice) => batch.push(notice),
                            Err(_) => break,
                        }
                    }
                    let Some(hub) = hub.upgrade() else { return };
                    hub.heard(batch, &devices);
                }
            })?;
        Ok(())
    }

    /// Applies notices heard together: each in turn, except that the
    /// feed positions others committed are read in one pass and the
    /// watermark once, after them (voiding a copy and moving the
    /// watermark on are the same whenever they come).
    fn heard(&self, notices: Vec<Notice>, devices: &DeviceRegistry) {
        let mut wrote = Vec::new();
        for notice in notices {
            self.heard_one(notice, devices, &mut wrote);
        }
        if !wrote.is_empty() {
            self.void_written(&wrote);
            self.advance_to_watermark();
        }
    }

    /// One notice; the positions of a write are only noted in `wrote`.
    fn heard_one(&self, notice: Notice, devices: &DeviceRegistry, wrote: &mut Vec<(u64, u64)>) {
        match notice {
            Notice::Wrote { first, last } => wrote.push((first, last)),
            Notice::Rewritten(id) => {
                self.docs.rewritten_elsewhere(id);
                self.access_cache
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop(&id);
            }
            // Sessions read their device's standing again.
            Notice::Device | Notice::User => devices.wake(),
            Notice::Resumed => {
                // What was said while nobody listened is unknown: no copy,
                // access fact or standing held here is trusted.
                self.docs.void_cached();
                self.access_cache
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                devices.wake();
                self.advance_to_watermark();
                tracing::info!("listening to the other nodes");
            }
        }
    }

    /// Voids this node's copies of the records other nodes wrote at the
    /// positions `first..=last` of each of `ranges`, read from the feed in
    /// one pass over them all (this node's own writes in between are
    /// passed over).
    fn void_written(&self, ranges: &[(u64, u64)]) {
        let (Some(first), Some(last)) = (
            ranges.iter().map(|r| r.0).min(),
            ranges.iter().map(|r| r.1).max(),
        ) else {
            return;
        };
        let theirs = |seq: u64| ranges.iter().any(|&(f, l)| (f..=l).contains(&seq));
        let store = self.docs.store();
        let mut after = first.saturating_sub(1);
        // Bounded: each pass moves `after` on or stops.
        while after < last {
            let entries = match store.entries_after(after, last, ENTRIES_PER_READ) {
                Ok(entries) => entries,
                Err(err) => {
                    // Their writes are still refused at commit if a copy
                    // here lacks them; only the cache is slower to learn.
                    tracing::warn!(error = %err, "could not read another node's writes");
                    return;
                }
            };
            for (seq, id) in entries.iter().filter(|(seq, _)| theirs(*seq)) {
                self.docs.written_elsewhere(*id, *seq);
            }
            match entries.last() {
                Some((seq, _)) if entries.len() == ENTRIES_PER_READ => after = *seq,
                _ => return,
            }
        }
    }

    /// Lets this node's feed readers read what the store now holds.
    fn advance_to_watermark(&self) {
        match self.docs.store().feed_watermark() {
            Ok(mark) => self.docs.advance(mark),
            Err(err) => tracing::warn!(error = %err, "could not read the feed watermark"),
        }
    }
}
