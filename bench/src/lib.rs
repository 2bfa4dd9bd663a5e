//! Baraza's end-to-end benchmarks, run by the `baraza-bench` binary.
//!
//! Every scenario starts a real `baraza-server` process (found next to the
//! benchmark executable) on 127.0.0.1 with TLS and its own temporary data
//! directory, and drives real [`baraza_client::Client`]s against it:
//!
//! - S1 reconnect: a client holding many synced records reconnects after
//!   editing some offline while another device edited others.
//! - S2 cold start: an empty client pulls every record; S2b does it again
//!   after S1's edits (records whose latest write moved past others').
//! - S3 fan-in: many clients that edited offline reconnect at once; the
//!   time of each change's acknowledgement is inferred by a listener
//!   (the SDK does not report acks one by one).
//!
//! Bytes are counted at the TCP level (TLS records included) by a small
//! forwarding proxy ([`proxy::CountingProxy`]) placed between client and
//! server. Nothing here asserts on time: the numbers are reported, not
//! judged. Every wait is bounded and all traffic stays on loopback.

pub mod proxy;
pub mod records;
pub mod scenarios;
pub mod server;
pub mod stats;
