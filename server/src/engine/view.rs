//! What the engine returns to `api` for it to render: typed views, never
//! JSON text or HTTP.

use baraza_records::Header;

/// A record as an export reads it.
#[derive(Debug, Clone)]
pub struct ExportRecord {
    /// Record id.
    pub id: String,
    /// Its header.
    pub header: Header,
    /// Review state.
    pub review_state: String,
    /// Field values as JSON (the header left out).
    pub fields: serde_json::Value,
    /// A feedback record's contact details, only when asked for.
    pub contact: Option<serde_json::Value>,
    /// Review decisions ever made on it, oldest first (`approved`,
    /// `returned`), from its change history.
    pub decisions: Vec<String>,
    /// Claimed times that were implausibly far ahead of the server's clock
    /// when they arrived, if any.
    pub clock: Option<crate::storage::store::ClockSkew>,
}
