//! Baraza's client SDK: what a tablet app embeds.
//!
//! A [`Client`] keeps the device's records in a local sled store and works
//! fully offline: create, set and splice are durable on the device before
//! they return. Syncing (once on demand, or in the background with
//! reconnect, exponential backoff and jitter) runs the protocol crate's
//! [`baraza_protocol::ClientDriver`] over a TLS WebSocket; progress reaches
//! the app through a [`SyncListener`].
//!
//! Not here: the wire format and the reconciliation rules (in
//! `baraza-protocol`), and anything the server decides.
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

pub mod client;
pub mod error;
pub mod record;
pub mod seal;
pub mod store;
pub mod sync;
pub mod transport;

pub use client::{BackgroundSync, Client, Enrolment, RefusedRecord, Status};
pub use error::ClientError;
pub use record::{Content, Field, Record, Summary};
pub use seal::KEY_LEN;
pub use store::{Rejection, DEFAULT_OPEN_DEADLINE, STORE_OPEN_THREAD};
pub use sync::{NoListener, SyncEvent, SyncListener, SyncReport, WipeReport};
