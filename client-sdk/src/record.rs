//! Reading and editing a record's fields. Issue-2 records are flat: each
//! field is a scalar (set whole) or a text (spliced by character, so two
//! people typing in the same field merge).

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc, Value, ROOT};
use serde::Serialize;

use baraza_records::ops::{commit_options, Stamp};
use baraza_records::{FieldSpec, FieldType, FieldValue, Header};

use crate::error::ClientError;

/// One field of a record as a person sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// The value shown (the winning one where there is a conflict).
    pub value: String,
    /// True for text fields (edited with splice).
    pub text: bool,
    /// Other values set concurrently by other devices, kept until someone
    /// sets the field again.
    pub conflicts: Vec<String>,
}

/// A record as a person sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    /// The record id.
    pub id: String,
    /// Its fields, by name.
    pub fields: Vec<Field>,
    /// True if it has changes the server has not acknowledged.
    pub unacknowledged: bool,
    /// Set when the server refused this record's changes: they stay here,
    /// marked, until the user edits again or a supervisor sorts it out.
    pub rejected: Option<crate::store::Rejection>,
    /// `draft`, `submitted`, `approved` or `returned`.
    pub review_state: String,
    /// What reviewers wrote with their decisions ("add the attendee count").
    pub review_comments: Vec<baraza_records::ReviewComment>,
}

/// The fields of a document.
pub fn fields(doc: &Automerge) -> Vec<Field> {
    doc.keys(ROOT)
        .filter(|name| name != "header")
        .map(|name| {
            let all = doc.get_all(ROOT, name.as_str()).unwrap_or_default();
            let mut values = all.iter().map(|(v, obj)| {
                let text = matches!(v, Value::Object(ObjType::Text));
                (baraza_records::inspect::show(doc, v, obj), text)
            });
            // get_all lists the winner last.
            let (value, text) = values.next_back().unwrap_or_else(|| (String::new(), false));
            let conflicts = values.map(|(v, _)| v).collect();
            Field {
                name,
                value,
                text,
                conflicts,
            }
        })
        .collect()
}

/// Sets a scalar field.
pub fn set(
    doc: &mut Automerge,
    field: &str,
    value: &str,
    at: Stamp<'_>,
) -> Result<(), ClientError> {
    if matches!(field, "header" | "review") {
        return Err(ClientError::BadEdit(format!(
            "{field} is not set by hand (the header is fixed at creation; review with submit)"
        )));
    }
    if let Some(spec) = known_field(doc, field) {
        let typed = FieldValue::parse(spec.ty, value)
            .map_err(|reason| ClientError::BadEdit(format!("field {field}: {reason}")))?;
        return Ok(baraza_records::ops::set(doc, field, typed, at)?);
    }
    // A field the schema does not know: kept as a string, like the fields a
    // newer schema adds.
    let mut tx = doc.transaction();
    tx.put(ROOT, field, value)?;
    tx.commit_with(commit_options(&format!("set {field}"), at));
    Ok(())
}

/// The schema's spec for a field of this record, if its kind has one.
fn known_field(doc: &Automerge, field: &str) -> Option<FieldSpec> {
    let kind = Header::read(doc).ok()?.kind;
    kind.fields().iter().find(|f| f.name == field).copied()
}

/// Splices into a text field, creating it if absent.
pub fn splice(
    doc: &mut Automerge,
    field: &str,
    pos: usize,
    delete: isize,
    text: &str,
    at: Stamp<'_>,
) -> Result<(), ClientError> {
    if let Some(spec) = known_field(doc, field) {
        if spec.ty != FieldType::Text {
            return Err(ClientError::BadEdit(format!(
                "field {field:?} is not a text field; use set"
            )));
        }
    }
    let mut tx = doc.transaction();
    let obj = match tx.get(ROOT, field)? {
        Some((Value::Object(ObjType::Text), obj)) => obj,
        Some(_) => {
            return Err(ClientError::BadEdit(format!(
                "field {field:?} is not a text field; use set"
            )))
        }
        None => tx.put_object(ROOT, field, ObjType::Text)?,
    };
    let len = tx.length(&obj);
    if pos > len {
        return Err(ClientError::BadEdit(format!(
            "position {pos} is past the end of {field:?} ({len} characters)"
        )));
    }
    tx.splice_text(&obj, pos, delete, text)?;
    tx.commit_with(commit_options(&format!("type in {field}"), at));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_sets_show_as_conflicts_and_text_merges() {
        let mut a = Automerge::new();
        splice(&mut a, "notes", 0, 0, "hello", 0.into()).unwrap();
        let mut b = a.fork();
        set(&mut a, "place", "market", 0.into()).unwrap();
        set(&mut b, "place", "school", 0.into()).unwrap();
        splice(&mut a, "notes", 5, 0, " world", 0.into()).unwrap();
        splice(&mut b, "notes", 0, 0, ">> ", 0.into()).unwrap();
        a.merge(&mut b).unwrap();
        let f = fields(&a);
        let place = f.iter().find(|f| f.name == "place").unwrap();
        assert_eq!(place.conflicts.len(), 1);
        let mut both = vec![place.value.clone(), place.conflicts[0].clone()];
        both.sort();
        assert_eq!(both, vec!["market", "school"]);
        let notes = f.iter().find(|f| f.name == "notes").unwrap();
        assert!(notes.text);
        assert_eq!(notes.value, ">> hello world");
    }

    #[test]
    fn splicing_a_scalar_is_refused() {
        let mut a = Automerge::new();
        set(&mut a, "place", "market", 0.into()).unwrap();
        assert!(matches!(
            splice(&mut a, "place", 0, 0, "x", 0.into()),
            Err(ClientError::BadEdit(_))
        ));
    }
}
