//! Baraza's client SDK: what a tablet app embeds.
//!
//! A [`Client`] keeps the device's records in a local sled store and works
//! fully offline: create, set and splice are durable on the device before
//! they return. Syncing (once on demand, or in the background with
//! reconnect, exponential backoff and jitter) runs the protocol crate's
//! [`baraza_protocol::ClientDriver`] over a TLS WebSocket; progress reaches
//! the app through a [`SyncListener`].
//!
//! Two layers, as modules of this crate:
//! - **base** ([`BaseClient`]): the sealed store, records, local edits and
//!   reads, `status`, and the state the sync driver keeps (acknowledged
//!   heads, unacknowledged records, refusals, the feed cursor). It does not
//!   know the network: no URL, TLS, socket or server reply reaches it.
//! - **net** ([`Client`]): the base plus a server: `configure`, `enroll`,
//!   `sync_once`, `start_background`, the transport, token rotation and
//!   the wipe the server orders. It does not know how records are stored,
//!   sealed or typed; it drives the base through the crate-private store.
//!
//! A `Client` dereferences to its `BaseClient`, so an app holds one object.
//! The store, seal, sync and transport internals are not public.
//!
//! Not here: the wire format and the reconciliation rules (in
//! `baraza-protocol`), the record schemas (`baraza-records`), anything the
//! server decides, and a terminal (the `baraza` CLI is the `baraza-cli`
//! crate).
//!
//! Typical flow: `Client::open(dir, key)` (the 32-byte key from the
//! platform keystore; the store is sealed with it on disk) →
//! `configure(url, ca, token)` once → edits at any time → `sync_once` or
//! `start_background`. A damaged store is refused, within a deadline,
//! with [`ClientError::DamagedStore`]; a wrong key with
//! [`ClientError::WrongKey`].
//!
//! The public API is kept small and FFI-friendly (strings, integers, plain
//! structs, one callback trait) for the UniFFI bindings to come.

mod base;
mod error;
mod net;

pub use baraza_records::AttachmentRef;
pub use base::{
    Attachment, BaseClient, Content, Field, PrefetchPolicy, Record, RefusedRecord, Rejection,
    Status, Summary, UploadState, WipeReport, DEFAULT_OPEN_DEADLINE, KEY_LEN, STORE_OPEN_THREAD,
};
pub use error::{AuthRefusal, ClientError};
pub use net::UPLOAD_CHUNK_MAX;
pub use net::{
    BackgroundSync, Client, Enrolment, NoListener, SyncEvent, SyncListener, SyncReport,
    UploadReport,
};
