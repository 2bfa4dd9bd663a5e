//! A [`SyncListener`] that keeps every event, for tests that watch a
//! background sync rather than a single `sync_once`.

use std::sync::Mutex;

use baraza_client::{SyncEvent, SyncListener};

/// A listener that keeps every event, for tests that watch a background sync.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<SyncEvent>>,
}

impl Recorder {
    /// A copy of the events so far.
    pub fn events(&self) -> Vec<SyncEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The wipe report, once the tablet has wiped itself.
    pub fn wiped(&self) -> Option<baraza_client::WipeReport> {
        self.events().into_iter().find_map(|e| match e {
            SyncEvent::Wiped(r) => Some(r),
            _ => None,
        })
    }

    /// How many events so far match `pred`.
    pub fn count(&self, pred: impl Fn(&SyncEvent) -> bool) -> usize {
        self.events().iter().filter(|e| pred(e)).count()
    }
}

impl SyncListener for Recorder {
    fn on_event(&self, event: SyncEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }
}
