//! Baraza's tablet SDK for Kotlin (Android) and Swift (iOS), through
//! UniFFI proc-macros: what an app team links instead of Rust.
//!
//! One object, [`Tablet`], owns the SDK's [`baraza_client::Client`] and a
//! tokio runtime of its own, so the foreign side never sees Rust's async:
//! `sync()`, `enroll()`, `upload_attachments()` and `fetch_attachment()`
//! are Kotlin `suspend` / Swift `async` functions whose work runs on that
//! runtime, and cancelling the coroutine (or task) aborts it. Everything else is a plain blocking call that returns
//! once the edit is durable on the device; call it off the UI thread.
//!
//! What crosses the boundary is FFI-shaped: records and enums of strings,
//! integers and byte strings ([`RecordView`], [`FieldValue`],
//! [`SyncProgress`]); times are `*_ms`, milliseconds since the Unix epoch;
//! one flat error enum, [`TabletError`], whose variants an app switches on;
//! one foreign-implemented callback interface, [`SyncListener`], for the
//! background sync's progress.
//!
//! Typical flow (Kotlin):
//! ```text
//! val tablet = Tablet.open(filesDir.path + "/baraza", keyFromKeystore)
//! tablet.enroll(url, caPem, user, password, "Kibera tablet 2")
//! val id = tablet.createMeeting("Market baraza", "Market hall", null)
//! tablet.addAttendee(id, "Mzee Otieno", "elder")
//! val photo = tablet.attach(id, "photos", jpegBytes, "image/jpeg", "hall.jpg")
//! tablet.sync(null)                        // suspend; uploads the photo too
//! val bytes = other.fetchAttachment(id, photo.sha256, null)   // suspend
//! val bg = tablet.startBackground(listener)
//! bg.stop()                                // suspend
//! ```
//!
//! Not here: anything about how records are stored, sealed, typed or
//! synced (`baraza-client` and below). This crate only converts.
//! `src/bin/uniffi-bindgen.rs` is the generator, built from the same
//! UniFFI version; `scripts/bindings` runs it.

mod background;
mod error;
mod tablet;
mod types;

pub use background::{BackgroundSync, SyncListener};
pub use error::TabletError;
pub use tablet::Tablet;
pub use types::*;

uniffi::setup_scaffolding!();
