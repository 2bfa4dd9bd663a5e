//! The sans-IO sync session: both ends of one connection.
//!
//! A session never touches a socket, a disk or a clock. Frames go in through
//! `handle_frame`; what the driver must do comes out as events; frames to
//! send come out of `poll_transmit`. Documents are passed in by the driver
//! when the session needs to read or change one, so the same session runs
//! over sled on the server, over the tablet's store, and over plain memory
//! in the simulator tests.
//!
//! Call order for both types: create, then loop { `handle_frame` for each
//! received frame and act on the events; call the `*_applied` / `send_*`
//! methods as the driver's work completes; drain `poll_transmit` }.
//! Stop when `is_closed` says so.
//!
//! Layout: `client` is the tablet's end, `server` the server's, `feed`
//! what catch-up reads; `wire` (framing, errors, decode) and `fallback`
//! (the automerge sync protocol per document) are shared by both; `frames`
//! cuts what the server sends to the frame limit.

mod client;
mod fallback;
mod feed;
mod frames;
mod server;
mod wire;

pub use client::{ClientEvent, ClientSession, SyncCounts};
pub use feed::{DocDelta, Feed};
pub use frames::apply_error_code;
pub use server::{PushOutcome, ServerEvent, ServerSession};

use crate::codec::CodecError;
use crate::message::ErrorCode;

/// A fault that ends the session. The error frame telling the peer (where
/// there is one) is already queued when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer sent a frame we could not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The peer speaks a protocol version we do not.
    #[error("protocol version {got} is not supported; supported versions: {supported:?}")]
    UnsupportedVersion {
        /// What the peer asked for.
        got: u32,
        /// What we speak.
        supported: &'static [u32],
    },
    /// A message that is not allowed at this point of the session.
    #[error("unexpected {0} message at this point of the session")]
    Unexpected(&'static str),
    /// Change messages before a cursor went missing.
    #[error("cursor follows {expected} change messages but only {got} arrived in order")]
    Gap {
        /// Messages the cursor vouches for.
        expected: u64,
        /// Messages received without a gap.
        got: u64,
    },
    /// The peer reported a fatal error.
    #[error("peer closed the session: {code:?}: {message}")]
    Peer {
        /// The peer's reason code.
        code: ErrorCode,
        /// The peer's explanation.
        message: String,
    },
}

#[cfg(test)]
mod tests;
