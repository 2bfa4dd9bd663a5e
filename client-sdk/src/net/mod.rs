//! The networked layer: the [`Client`] an app holds, the base layer plus a
//! server.
//!
//! Transport (TLS through rustls trusting the configured CA, the sync
//! WebSocket, the small HTTPS calls for enrolment and token rotation), one
//! sync connection pumping the protocol's sans-IO driver over the socket,
//! the background loop with backoff and jitter, and the progress events an
//! app listens to.
//!
//! What it does not know: how records are stored or sealed, their fields
//! and schemas (the base layer and `baraza-records`), and the protocol's
//! reconciliation rules (`baraza-protocol`'s driver decides what to send).

mod attachments;
mod client;
mod sync;
mod transport;

pub use attachments::{UploadReport, CHUNK_MAX as UPLOAD_CHUNK_MAX};
pub use client::{BackgroundSync, Client, Enrolment};
pub use sync::{NoListener, SyncEvent, SyncListener, SyncReport};
