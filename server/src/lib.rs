//! Baraza's sync server: serves `/v1/sync` WebSockets over HTTPS to
//! registered devices, the records and review desk API, and the
//! administration commands.
//!
//! Layout, one folder per concern (dependencies point down this list, never
//! up):
//! - [`admin`]: `user|device|record|audit` commands, and the admin socket a
//!   running server answers them on.
//! - [`api`]: routes and their JSON: the sync upgrade, records, enrolment,
//!   token rotation, the admin API, the review desk page and API, exports.
//! - [`net`]: the TLS listener, connection limits, certificates, peer
//!   addresses. Runs whatever service `api` hands it.
//! - [`engine`]: the sync hub, admission, the document cache, the feed
//!   view, the desk's author, erasure.
//! - [`identity`]: users, devices and tokens, login throttles, the caller.
//! - [`storage`]: one trait per concern (documents and feed, users,
//!   devices, audit, review sessions, login throttles), the bundle of
//!   them, the data directory, integrity checks; only `storage::sled`
//!   knows sled.
//! - [`config`] and [`clock`]: settings, and the wall clock read in one
//!   place.
//!
//! Typical flow (`main.rs`): resolve config → open data dir and database →
//! open the device registry and the sync hub → build TLS → bind the admin
//! socket and the listener → [`net::serve`] with [`api::service`] until
//! SIGTERM/Ctrl-C → flush.
//!
//! Unix only: the admin socket is a Unix domain socket.

pub mod admin;
pub mod api;
pub mod clock;
pub mod config;
pub mod engine;
pub mod identity;
pub mod net;
pub mod storage;
