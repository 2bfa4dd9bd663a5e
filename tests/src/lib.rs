//! The end-to-end harness: real `baraza-server` processes, real TLS with
//! the server's generated development CA, real sled files in temporary
//! directories, and tablets that are real [`baraza_client::Client`]s.
//!
//! It is not a simulator: dropped, duplicated and reordered messages are
//! the `sync-protocol` simulator's job. The faults here are the ones only
//! real processes have: SIGKILL, SIGTERM, restarts on the same directory,
//! hostile bytes on a real socket.
//!
//! Layout (everything a test uses is re-exported here, so test files
//! import from the crate root):
//! - [`process`]: where the workspace binaries are, bounded runs and waits.
//! - [`server_process`]: [`ServerProcess`] starts, restarts, kills (`-9`)
//!   and stops (SIGTERM) a server on a data directory, and registers users
//!   and devices on it.
//! - [`tablet`]: [`Tablet`], a `Client` in its own directory with its own
//!   device token and its own random store key ([`new_key`]);
//!   [`recorder`]: [`Recorder`], a listener that keeps sync events.
//! - [`cli`](mod@cli): the `baraza` command-line tablet, with a key file beside its
//!   data dir.
//! - [`net`]: TLS trusting the dev CA, TCP from a chosen loopback address.
//! - [`link`]: links that cut uploads ([`Link`]) or change bytes in
//!   flight ([`Middlebox`]).
//! - [`raw_connection`]: [`RawConnection`], a sync WebSocket that sends
//!   whatever bytes a test wants and decodes what the server answers.
//! - [`http`]: the one HTTP client of the harness and of `baraza-bench`;
//!   [`api`]: HTTPS requests to a `ServerProcess` that fail the test.
//! - [`desk_session`]: [`DeskSession`], a supervisor signed in at the
//!   review desk; [`review_world`]: [`ReviewWorld`], the review tests'
//!   common story.
//! - [`sse`]: the review desk's event stream; [`webdriver`]: headless
//!   Chromium for the browser tests.
//!
//! The binaries: a test crate cannot see another package's
//! `CARGO_BIN_EXE_*`, so [`binary`] looks for them next to the test
//! executable. Run `cargo build --workspace --bins` before `cargo test`.
//!
//! Every wait is bounded, and all traffic stays on 127.0.0.1.

pub mod api;
pub mod cli;
pub mod desk_session;
pub mod http;
pub mod link;
pub mod net;
pub mod process;
pub mod raw_connection;
pub mod recorder;
pub mod review_world;
pub mod server_process;
pub mod sse;
pub mod tablet;
pub mod webdriver;

pub use api::{
    https_get, https_request, https_request_from, https_request_raw, https_request_with, HttpReply,
};
pub use cli::{cli, cli_fails, run_cli, write_offline_ca};
pub use desk_session::DeskSession;
pub use link::{Link, Middlebox};
pub use net::{tcp_connect_from, tls_connector, FRAME_TIMEOUT};
pub use process::{binary, run_bounded, wait_until};
pub use raw_connection::{actor_for, push_since, upgrade_status, RawConnection};
pub use recorder::Recorder;
pub use review_world::ReviewWorld;
pub use server_process::{
    device_of, pin_to_sled, postgres_database, run_server_command, user_for, ServerProcess,
    EXIT_TIMEOUT, HARNESS_PASSWORD, STARTUP_TIMEOUT, TEST_AREAS,
};
pub use tablet::{new_key, Tablet, SYNC_TIMEOUT};
