//! The network edge: the TLS listener and its connection limits, the
//! certificates, and the peer address each request carries. Knows nothing
//! of records, devices or routes: `api` hands it the service to run.

pub mod listener;
pub mod peer;
pub mod tls;

pub use listener::{serve, ConnectionSlot, Routes};
