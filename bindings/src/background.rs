//! The background sync: a foreign-implemented [`SyncListener`] receives
//! [`SyncProgress`] events, and [`BackgroundSync`] stops it.

use std::sync::{Arc, Mutex};

use baraza_client as sdk;

use crate::types::{SyncProgress, SyncSummary, WipeReport};

/// Receives a sync's progress. Implemented in Kotlin or Swift; called on
/// one of the tablet's own threads, never the UI thread, so post to the
/// UI and return quickly.
#[uniffi::export(with_foreign)]
pub trait SyncListener: Send + Sync {
    /// One event; see [`SyncProgress`].
    fn on_event(&self, event: SyncProgress);
}

/// One side's counts: records to go, records done, bytes.
type Side = (u64, u64, u64);

/// Turns the SDK's events into [`SyncProgress`], sending `ToSend` and
/// `ToReceive` only when their side moved, so a progress bar is not
/// called for nothing.
pub(crate) struct Relay {
    listener: Arc<dyn SyncListener>,
    /// The last counts sent, sending side then receiving side.
    last: Mutex<(Option<Side>, Option<Side>)>,
}

impl Relay {
    pub(crate) fn new(listener: Arc<dyn SyncListener>) -> Relay {
        Relay {
            listener,
            last: Mutex::new((None, None)),
        }
    }
}

impl sdk::SyncListener for Relay {
    fn on_event(&self, event: sdk::SyncEvent) {
        let out = match event {
            sdk::SyncEvent::Connecting { attempt } => {
                if let Ok(mut last) = self.last.lock() {
                    *last = (None, None);
                }
                vec![SyncProgress::Connecting { attempt }]
            }
            sdk::SyncEvent::Connected => vec![SyncProgress::Connected],
            sdk::SyncEvent::Progress {
                to_send,
                sent,
                to_receive,
                received,
                bytes_sent,
                bytes_received,
                bytes_expected,
                receive_ms_left,
            } => {
                let send = (to_send, sent, bytes_sent);
                let receive = (to_receive, received, bytes_received);
                let mut out = Vec::new();
                // A poisoned lock only means a listener panicked before:
                // send both sides rather than nothing.
                let (send_moved, receive_moved) = match self.last.lock() {
                    Ok(mut last) => {
                        let moved = (last.0 != Some(send), last.1 != Some(receive));
                        *last = (Some(send), Some(receive));
                        moved
                    }
                    Err(_) => (true, true),
                };
                if send_moved {
                    out.push(SyncProgress::ToSend {
                        records_to_send: to_send,
                        records_sent: sent,
                        bytes_sent,
                    });
                }
                if receive_moved {
                    out.push(SyncProgress::ToReceive {
                        records_to_receive: to_receive,
                        records_received: received,
                        bytes_received,
                        bytes_expected,
                        receive_ms_left,
                    });
                }
                out
            }
            sdk::SyncEvent::Settled(report) => vec![SyncProgress::Done {
                summary: SyncSummary::from(report),
            }],
            sdk::SyncEvent::Failed {
                message,
                retry_in_ms,
            } => vec![SyncProgress::Error {
                message,
                retry_in_ms,
            }],
            sdk::SyncEvent::Stopped { refusal, message } => {
                vec![SyncProgress::Stopped {
                    reason_code: refusal.code().into(),
                    message,
                }]
            }
            sdk::SyncEvent::Wiped(report) => vec![SyncProgress::Wiped {
                report: WipeReport::from(report),
            }],
            sdk::SyncEvent::Attachment {
                record,
                sha256,
                upload,
                done,
                total,
            } => vec![SyncProgress::Attachment {
                record,
                sha256,
                upload,
                done,
                total,
            }],
            sdk::SyncEvent::AttachmentRefused {
                record,
                sha256,
                code,
                limit,
                message,
            } => vec![SyncProgress::AttachmentRefused {
                record,
                sha256,
                code,
                limit,
                message,
            }],
        };
        for event in out {
            self.listener.on_event(event);
        }
    }
}

/// A background sync in progress: live changes both ways, reconnecting
/// with backoff and jitter after a failure, until [`stop`](Self::stop)
/// (or the server ends the device: then a `Stopped` or `Wiped` event).
#[derive(uniffi::Object)]
pub struct BackgroundSync {
    pub(crate) inner: Mutex<Option<sdk::BackgroundSync>>,
    pub(crate) runtime: tokio::runtime::Handle,
}

#[uniffi::export]
impl BackgroundSync {
    /// Stops syncing and waits for the connection to close. Stopping
    /// twice is harmless.
    pub async fn stop(&self) {
        let taken = self.inner.lock().ok().and_then(|mut inner| inner.take());
        if let Some(background) = taken {
            // Awaited on the tablet's runtime: the SDK's stop awaits a
            // tokio task, which the foreign executor cannot drive itself.
            let _ = self
                .runtime
                .spawn(async move { background.stop().await })
                .await;
        }
    }

    /// True until `stop` was called or the server ended the device.
    pub fn is_running(&self) -> bool {
        self.inner
            .lock()
            .map(|i| i.as_ref().is_some_and(|b| !b.is_finished()))
            .unwrap_or(false)
    }
}
