//! Baraza's end-to-end benchmarks, run by the `baraza-bench` binary.
//!
//! Every scenario starts a real `baraza-server` process (found next to the
//! benchmark executable) on 127.0.0.1 with TLS and its own temporary data
//! directory, and drives real [`baraza_client::Client`]s (or, for S3,
//! protocol-level clients) against it:
//!
//! - S1 reconnect: a client holding many synced records reconnects after
//!   editing some offline while another device edited others.
//! - S2 cold start: an empty client pulls every record; S2b does it again
//!   after S1's edits (records whose latest write moved past others').
//! - S3 fan-in (server ingest): many devices push their offline work at
//!   once over real TLS WebSockets, speaking the wire protocol directly
//!   ([`light`], [`scenarios::s3_ingest`]): each change's acknowledgement is timed exactly, and the
//!   clients decode but never apply what they download, so the server,
//!   not the simulated tablets, gets the machine.
//! - S3-sdk: the same fan-in with full SDK clients, each applying
//!   everyone's records; the time of each change's acknowledgement is
//!   inferred by a listener (the SDK does not report acks one by one).
//!
//! - desk live: from a tablet's acknowledged submit to the record's
//!   event on an open review desk's stream ([`scenarios::desk_live`]).
//! - hostile: the server's peak memory under inputs built against its
//!   limits, and S1 while thousands of idle connections and repeated
//!   deflate bombs are held against it ([`scenarios::hostile`]).
//!
//! Bytes are counted at the TCP level (TLS records included) by a small
//! forwarding proxy ([`proxy::CountingProxy`]) placed between client and
//! server. Nothing here asserts on time: the numbers are reported, not
//! judged. Every wait is bounded and all traffic stays on loopback.

// The S3 result is one large `json!` literal.
#![recursion_limit = "256"]

pub mod light;
pub mod proxy;
pub mod records;
pub mod scenarios;
pub mod server;
pub mod stats;
