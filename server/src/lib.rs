//! Baraza's sync server: serves `/v1/sync` WebSockets over HTTPS to
//! registered devices, and the `device` administration commands.
//!
//! Layout:
//! - [`config`]: command line, config file, resolved [`config::ServeConfig`].
//! - [`data_dir`]: the data directory and the one place the database is opened.
//! - [`tls`]: operator or generated development certificates, rustls config.
//! - [`devices`]: device registry and bearer tokens (hashes only on disk).
//! - [`admin`]: `device add|list|revoke`, and the admin socket a running
//!   server answers them on.
//! - [`http`]: the TLS listener, routes, connection limits, graceful shutdown;
//!   [`peer`] carries each connection's address to the routes.
//! - [`login`]: `POST /v1/enroll`, with per-account lockout and per-address
//!   throttling; [`admin_api`]: `/v1/admin/users` for administrators.
//! - [`sync`]: the sync hub that each authenticated WebSocket is handed to.
//! - [`review`]: the supervisors' review desk page and API; [`export`]:
//!   its CSV, GeoJSON and indicators.
//! - [`clock`]: the wall clock, read in one place.
//!
//! Typical flow (`main.rs`): resolve config → open data dir and database →
//! open the device registry and the sync hub → build TLS → bind the admin
//! socket and the listener → [`http::serve`] until SIGTERM/Ctrl-C.
//!
//! Unix only: the admin socket is a Unix domain socket.

pub mod admin;
pub mod admin_api;
pub mod audit;
pub mod clock;
pub mod config;
pub mod data_dir;
pub mod devices;
pub mod docs;
pub mod export;
pub mod http;
pub mod integrity;
pub mod login;
pub mod peer;
pub mod review;
pub mod review_events;
pub mod store;
pub mod sync;
pub mod tls;
pub mod users;
