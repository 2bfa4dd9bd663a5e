//! The base layer: a tablet's records with no network.
//!
//! The sealed sled store ([`LocalStore`], which is the `Replica` the
//! protocol's sync driver reads and writes: acknowledged heads, the
//! unacknowledged set, refusals, the feed cursor), the fields of a record
//! as an app reads them, local edits, `status` and the wipe.
//!
//! What it does not know: servers, URLs, TLS, sockets, tokens on the wire
//! or how a sync is carried. Nothing here imports from `net`; the
//! net layer reaches in only through what this module exports.

mod attachments;
mod client;
mod record;
mod seal;
mod store;

pub(crate) use attachments::{parse_id, parse_sha};
pub use attachments::{Attachment, PrefetchPolicy};
pub(crate) use client::wipe;
pub use client::{BaseClient, RefusedRecord, Status, WipeReport};
pub use record::{Content, Field, Record, Summary};
pub use seal::KEY_LEN;
pub(crate) use store::LocalStore;
pub use store::{
    AttachmentState, Rejection, UploadState, DEFAULT_OPEN_DEADLINE, PIECE_BYTES, STORE_OPEN_THREAD,
};
