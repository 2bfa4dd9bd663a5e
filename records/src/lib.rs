//! Baraza's records: the typed shapes of what community policing records
//! (meetings, patrol notes, citizens' feedback and its restricted contact
//! details), shared by the tablet SDK and the server.
//!
//! A record is one Automerge document: an immutable [`Header`], the kind's
//! fields ([`schema`]), and a review block. [`ops`] makes each edit one
//! timestamped change; [`validate`] (the record as it stands) and
//! [`validate_additions`] (what new changes put into it) are what the
//! server runs on every incoming change; [`inspect`] finds conflicts and
//! history for people.
//!
//! No I/O, no clock: callers pass the time in.

pub mod access;
pub mod attachment;
pub mod header;
pub mod inspect;
pub mod ops;
pub mod read;
pub mod schema;
pub mod validate;

pub use access::{Principal, Refusal, Role};
pub use attachment::AttachmentRef;
pub use header::Header;
pub use inspect::{
    conflicts, effects, has_conflict, history, review_comments, review_edits, review_state,
    submitted_at, title, ChangeEffects, CommentFieldEdit, Conflict, ConflictValue, HistoryEntry,
    ReviewBlock, ReviewComment, ReviewEdit,
};
pub use ops::{EditError, FieldValue};
pub use read::{Reader, Snapshot};
pub use schema::{Bounds, FieldSpec, FieldType, Kind, ReviewState, SCHEMA_VERSION};
pub use validate::{validate, validate_additions, validate_change, SchemaError};
