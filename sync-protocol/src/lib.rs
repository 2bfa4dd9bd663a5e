//! Baraza's wire protocol and sync session, with no I/O.
//!
//! This crate is what a tablet and the server agree on: the messages
//! ([`message`]), their encoding ([`codec`], the only place that knows CBOR),
//! the limits ([`limits`]), the session state machines ([`session`])
//! that reconcile many Automerge documents over one connection, and the
//! drivers that carry out a session's events with their ordering rules:
//! [`ClientDriver`] over a tablet's [`Replica`], and [`ServerDriver`],
//! which asks the server for storage work ([`Task`]) and is told how it
//! went ([`Commit`], the durable watermark, the device's [`Standing`], the
//! time). [`RecordTally`] bounds what a session keeps for its audit entry.
//!
//! It is not a runtime: there is no tokio, no socket, no sled and no clock
//! here: time comes in as a value, storage as traits or tasks. The server
//! and the client SDK each drive a session over their own transport and
//! store; the simulator tests drive both drivers over memory.
//!
//! A typical connection: the client sends `Hello{cursor}`; the server
//! answers `Welcome` and streams `Changes` for every document changed in its
//! feed since the cursor, then `Cursor`; meanwhile the client pipelines one
//! `Push` per locally changed document (its changes since the heads the
//! server last acknowledged) and the server answers each, once durable, with
//! the changes the client lacks and an `Ack`. Where the two sides do not
//! share known heads, the automerge sync protocol (`Sync`) takes over for
//! that document.

pub mod codec;
pub mod docsync;
pub mod limits;
pub mod message;
pub mod refusal;
pub mod replica;
pub mod server_driver;
pub mod session;
pub mod tally;

pub use limits::Limits;
pub use message::*;
pub use refusal::{AuthRefusal, REFUSAL_HEADER};
pub use replica::{ClientDriver, DriveError, Replica};
pub use server_driver::{
    AuditEvent, CloseReason, Commit, DriverConfig, FeedRead, Opening, PushWrite, Refusal,
    ServerDriver, Standing, SyncSummary, Task, WriteId,
};
pub use session::*;
pub use tally::RecordTally;
