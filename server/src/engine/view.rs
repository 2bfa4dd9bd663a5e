//! What the engine returns to `api` for it to render: typed views, never
//! JSON or HTTP.

use baraza_records::Header;

/// A record as an export reads it.
#[derive(Debug, Clone)]
pub struct ExportRecord {
    /// Record id.
    pub id: String,
    /// Its header.
    pub header: Header,
    /// Review state.
    pub review_state: baraza_records::ReviewState,
    /// Field values (the header left out).
    pub fields: FieldValue,
    /// A feedback record's contact details, only when asked for.
    pub contact: Option<FieldValue>,
    /// Review decisions ever made on it, oldest first, from its change
    /// history.
    pub decisions: Vec<baraza_records::ReviewState>,
    /// Claimed times that were implausibly far ahead of the server's clock
    /// when they arrived, if any.
    pub clock: Option<crate::storage::store::ClockSkew>,
}

/// A record's content as a tree: what [`SyncHub::record_view`] and the
/// text of `record show` read, the header left out. Serialised as the
/// plain JSON it looks like (`untagged`).
///
/// [`SyncHub::record_view`]: crate::engine::hub::SyncHub::record_view
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// No value.
    Null,
    /// true or false.
    Bool(bool),
    /// A signed number (or a timestamp, in ms).
    Int(i64),
    /// An unsigned number.
    Uint(u64),
    /// A floating-point number.
    Float(f64),
    /// Text, or any other scalar spelled as text.
    Text(String),
    /// A list, in order.
    List(Vec<FieldValue>),
    /// A map, by key.
    Map(std::collections::BTreeMap<String, FieldValue>),
}

impl FieldValue {
    /// A map's value at `key`; None for a missing key or a value that is
    /// not a map.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        match self {
            FieldValue::Map(m) => m.get(key),
            _ => None,
        }
    }

    /// The text, if it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            FieldValue::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// The device behind a change, for a person: its id (the actor id's first
/// 16 bytes, hex) and the name the registry gives it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceLabel {
    /// The device id, hex; None for an actor id too short to carry one.
    pub device: Option<String>,
    /// The registered name (or the review desk's), if known.
    pub device_name: Option<String>,
}

/// One change of a record's history, with when the server got it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HistoryView {
    /// The change as the records crate reads it.
    #[serde(flatten)]
    pub entry: baraza_records::HistoryEntry,
    /// When the server first stored it (ms, the server's clock).
    pub received_at_ms: Option<i64>,
    /// Its claimed time was further ahead of `received_at_ms` than the
    /// server allows.
    pub clock_implausible: bool,
    /// The device that made it.
    #[serde(flatten)]
    pub by: DeviceLabel,
}

/// One of the values a conflicting field holds, with its device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConflictValueView {
    /// The value as the records crate reads it.
    #[serde(flatten)]
    pub value: baraza_records::ConflictValue,
    /// The device that set it.
    #[serde(flatten)]
    pub by: DeviceLabel,
}

/// A field set differently on different devices.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConflictView {
    /// Dotted path of the field.
    pub path: String,
    /// Every value, the default one last.
    pub values: Vec<ConflictValueView>,
}

/// A record whole, as the read API and the desk show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RecordView {
    /// Record id.
    pub id: String,
    /// Its header, if it reads.
    pub header: Option<Header>,
    /// Review state.
    pub review_state: baraza_records::ReviewState,
    /// Review comments, oldest first.
    pub review_comments: Vec<baraza_records::ReviewComment>,
    /// Field values, the header left out.
    pub fields: FieldValue,
    /// Fields holding conflicting values.
    pub conflicts: Vec<ConflictView>,
    /// Every change, oldest first.
    pub history: Vec<HistoryView>,
    /// Claimed times implausibly far ahead, if any.
    pub clock: Option<crate::storage::store::ClockSkew>,
}
