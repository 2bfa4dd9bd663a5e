//! What each kind of record holds: field names, types, allowed values.
//!
//! Layout of every record document: `header` (a map written once at
//! creation), the kind's fields at the root, and `review`. Fields a newer
//! schema version adds are simply other keys: an older client neither
//! reads nor drops them, and the server does not check them in records
//! whose header names a newer version than [`SCHEMA_VERSION`]. In records
//! of a version it knows, a key the schema lacks is a mistake (a typo
//! such as `titel`) and new ones are refused.

use serde::{Deserialize, Serialize};

/// The version of these schemas written into new records' headers.
pub const SCHEMA_VERSION: u64 = 1;

/// The kinds of record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A community meeting (a baraza).
    Meeting,
    /// An officer's notes from a patrol.
    PatrolNote,
    /// A citizen's complaint, commendation, concern or suggestion.
    Feedback,
    /// The contact details of a feedback's author: kept apart so they can
    /// be restricted and erased on their own.
    FeedbackContact,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::Meeting,
        Kind::PatrolNote,
        Kind::Feedback,
        Kind::FeedbackContact,
    ];

    /// The name stored in headers and used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Meeting => "meeting",
            Kind::PatrolNote => "patrol_note",
            Kind::Feedback => "feedback",
            Kind::FeedbackContact => "feedback_contact",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// One of the kind's body fields.
    pub fn field(self, name: &str) -> Option<&'static FieldSpec> {
        self.fields().iter().find(|f| f.name == name)
    }

    /// The kind's body fields.
    pub fn fields(self) -> &'static [FieldSpec] {
        match self {
            Kind::Meeting => MEETING,
            Kind::PatrolNote => PATROL_NOTE,
            Kind::Feedback => FEEDBACK,
            Kind::FeedbackContact => FEEDBACK_CONTACT,
        }
    }
}

/// The type of a field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldType {
    /// A string set whole (last writer wins, concurrent sets conflict).
    Str,
    /// Collaborative text, merged by character.
    Text,
    /// A whole number.
    Int,
    /// A true/false flag.
    Bool,
    /// Milliseconds since the Unix epoch.
    Time,
    /// A SHA-256 digest as 64 lowercase hex digits: how a record names an
    /// attachment's bytes, which are not in the document.
    Digest,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// A list whose elements are maps with these fields (merged element by
    /// element).
    List(&'static [FieldSpec]),
    /// A nested map with these fields.
    Map(&'static [FieldSpec]),
}

/// The inclusive range a number must fall in. Numbers held as strings
/// (coordinates, kept as typed so no digit is lost to a float) must also
/// read as a finite decimal number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// The smallest value allowed.
    pub min: f64,
    /// The largest value allowed.
    pub max: f64,
}

impl Bounds {
    /// Why `value` is outside these bounds, if it is.
    pub fn check(&self, value: f64) -> Result<(), String> {
        if !value.is_finite() {
            Err(format!("{value} is not a finite number"))
        } else if value < self.min && self.max == f64::MAX {
            Err(format!("{value} is less than {}", self.min))
        } else if value < self.min || value > self.max {
            Err(format!("{value} is outside {}..={}", self.min, self.max))
        } else {
            Ok(())
        }
    }

    /// Reads a number held as a string and checks it.
    pub fn check_text(&self, text: &str) -> Result<(), String> {
        match text.trim().parse::<f64>() {
            Ok(v) => self.check(v),
            Err(_) => Err(format!("{text:?} is not a decimal number")),
        }
    }
}

/// One field of a schema.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FieldSpec {
    /// Key in the document.
    pub name: &'static str,
    /// Its type.
    pub ty: FieldType,
    /// For a number (or a number held as a string), the range it must be in.
    pub bounds: Option<Bounds>,
}

impl FieldSpec {
    /// For a list or map field, the fields of its items.
    pub fn parts(&self) -> &'static [FieldSpec] {
        match self.ty {
            FieldType::List(parts) | FieldType::Map(parts) => parts,
            _ => &[],
        }
    }
}

const fn f(name: &'static str, ty: FieldType) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        bounds: None,
    }
}

const fn bounded(name: &'static str, ty: FieldType, min: f64, max: f64) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        bounds: Some(Bounds { min, max }),
    }
}

/// The names of some fields, for messages that list what is allowed.
pub fn names(fields: &[FieldSpec]) -> Vec<&'static str> {
    fields.iter().map(|f| f.name).collect()
}

/// Review states, by name: the values `review.state` may hold (the schema's
/// enum of [`ReviewState::name`]s).
pub const REVIEW_STATES: &[&str] = &["draft", "submitted", "approved", "returned"];

/// Where a record is in review.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    /// Being written; the creator may submit it.
    Draft,
    /// Waiting for a supervisor.
    Submitted,
    /// A supervisor approved it.
    Approved,
    /// A supervisor sent it back with a comment; the creator may submit it
    /// again.
    Returned,
}

impl ReviewState {
    /// Every state, in the order a record moves through them.
    pub const ALL: [ReviewState; 4] = [
        ReviewState::Draft,
        ReviewState::Submitted,
        ReviewState::Approved,
        ReviewState::Returned,
    ];

    /// The name stored in records, indexes and the API.
    pub fn name(self) -> &'static str {
        match self {
            ReviewState::Draft => "draft",
            ReviewState::Submitted => "submitted",
            ReviewState::Approved => "approved",
            ReviewState::Returned => "returned",
        }
    }

    /// The state a name stands for; None for any other string.
    pub fn parse(name: &str) -> Option<ReviewState> {
        ReviewState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// A decision: a state only a supervisor of the record's area may set.
    pub fn is_decision(self) -> bool {
        matches!(self, ReviewState::Approved | ReviewState::Returned)
    }
}

impl std::fmt::Display for ReviewState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
/// Action item states.
pub const ACTION_STATES: &[&str] = &["open", "in_progress", "done", "dropped"];
/// Feedback categories.
pub const FEEDBACK_CATEGORIES: &[&str] = &["complaint", "commendation", "concern", "suggestion"];
/// Feedback states.
pub const FEEDBACK_STATES: &[&str] = &["received", "acknowledged", "referred", "resolved"];
/// How feedback reached the police.
pub const FEEDBACK_CHANNELS: &[&str] = &["in_person", "phone", "meeting", "letter", "other"];

const COMMENT: &[FieldSpec] = &[
    f("by", FieldType::Str),
    f("at", FieldType::Time),
    f("text", FieldType::Str),
];

/// The review block every record carries.
pub const REVIEW: &[FieldSpec] = &[
    f("state", FieldType::Enum(REVIEW_STATES)),
    f("comments", FieldType::List(COMMENT)),
];

/// The header every record carries, written once.
pub const HEADER: &[FieldSpec] = &[
    f("id", FieldType::Str),
    f("kind", FieldType::Str),
    f("area", FieldType::Str),
    f("created_by_user", FieldType::Str),
    f("created_by_device", FieldType::Str),
    f("created_at", FieldType::Time),
    f("schema", FieldType::Int),
];

const ATTENDEE: &[FieldSpec] = &[
    f("name", FieldType::Str),
    f("role", FieldType::Str),
    f("gender", FieldType::Str),
    f("age_band", FieldType::Str),
];

const HEADCOUNT: &[FieldSpec] = &[
    f("women", FieldType::Int),
    f("men", FieldType::Int),
    f("youth", FieldType::Int),
    f("elders", FieldType::Int),
    f("total", FieldType::Int),
];

const CONCERN: &[FieldSpec] = &[
    f("topic", FieldType::Str),
    f("text", FieldType::Str),
    f("raised_by", FieldType::Str),
];

const ACTION_ITEM: &[FieldSpec] = &[
    f("text", FieldType::Str),
    f("owner", FieldType::Str),
    f("due", FieldType::Time),
    f("status", FieldType::Enum(ACTION_STATES)),
];

/// A GPS point. Latitude and longitude are decimal degrees kept as typed;
/// the accuracy is whole metres, and a fix claiming 0 m is not one.
pub const GPS: &[FieldSpec] = &[
    bounded("lat", FieldType::Str, -90.0, 90.0),
    bounded("lon", FieldType::Str, -180.0, 180.0),
    bounded("accuracy_m", FieldType::Int, 1.0, f64::MAX),
];

const OBSERVATION: &[FieldSpec] = &[
    f("at", FieldType::Time),
    f("text", FieldType::Str),
    f("gps", FieldType::Map(GPS)),
    f("tags", FieldType::Str),
    f("photos", FieldType::List(ATTACHMENT)),
];

const FOLLOW_UP: &[FieldSpec] = &[
    f("at", FieldType::Time),
    f("by", FieldType::Str),
    f("status", FieldType::Enum(FEEDBACK_STATES)),
    f("note", FieldType::Str),
];

/// An attachment's reference, as an item of a list of attachments: the
/// bytes live beside the record (uploaded on their own queue) and are
/// named by their digest, so the document stays small and the reference
/// cannot point at other bytes than those it was made for.
pub const ATTACHMENT: &[FieldSpec] = &[
    f("sha256", FieldType::Digest),
    bounded("size_bytes", FieldType::Int, 0.0, f64::MAX),
    f("mime", FieldType::Str),
    f("name", FieldType::Str),
    f("created_at", FieldType::Time),
    f("created_by", FieldType::Str),
];

/// True for a list of attachment references ([`ATTACHMENT`] items).
pub fn is_attachments(ty: FieldType) -> bool {
    matches!(ty, FieldType::List(parts) if parts == ATTACHMENT)
}

const MEETING: &[FieldSpec] = &[
    f("title", FieldType::Str),
    f("held_at", FieldType::Time),
    f("place", FieldType::Str),
    f("facilitator", FieldType::Str),
    f("attendees", FieldType::List(ATTENDEE)),
    f("headcount", FieldType::Map(HEADCOUNT)),
    f("concerns", FieldType::List(CONCERN)),
    f("action_items", FieldType::List(ACTION_ITEM)),
    f("notes", FieldType::Text),
    f("photos", FieldType::List(ATTACHMENT)),
    f("audio", FieldType::List(ATTACHMENT)),
    f("attendance_sheet", FieldType::List(ATTACHMENT)),
];

const PATROL_NOTE: &[FieldSpec] = &[
    f("officer", FieldType::Str),
    f("beat", FieldType::Str),
    f("started_at", FieldType::Time),
    f("ended_at", FieldType::Time),
    f("observations", FieldType::List(OBSERVATION)),
    f("notes", FieldType::Text),
    f("photos", FieldType::List(ATTACHMENT)),
];

const FEEDBACK: &[FieldSpec] = &[
    f("channel", FieldType::Enum(FEEDBACK_CHANNELS)),
    f("category", FieldType::Enum(FEEDBACK_CATEGORIES)),
    f("about", FieldType::Str),
    f("description", FieldType::Text),
    f("anonymous", FieldType::Bool),
    f("status", FieldType::Enum(FEEDBACK_STATES)),
    f("follow_ups", FieldType::List(FOLLOW_UP)),
    f("contact", FieldType::Str),
    f("photos", FieldType::List(ATTACHMENT)),
    f("documents", FieldType::List(ATTACHMENT)),
];

const FEEDBACK_CONTACT: &[FieldSpec] = &[
    f("feedback", FieldType::Str),
    f("name", FieldType::Str),
    f("phone", FieldType::Str),
    f("email", FieldType::Str),
    f("address", FieldType::Str),
    f("documents", FieldType::List(ATTACHMENT)),
];
