//! Reading and editing a record's fields by name: a scalar is set whole, a
//! text spliced by character (so two people typing in the same field
//! merge). Only fields of the record's schema are edited.

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc, Value, ROOT};
use serde::Serialize;

use baraza_records::ops::{commit_options, Stamp};
use baraza_records::schema::names;
use baraza_records::{EditError, FieldSpec, FieldType, FieldValue, Header};

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

/// Sets a scalar field. A field the record's schema does not have is
/// refused, naming the fields it has: stored, a typo (`titel`) would sync
/// and show as a field of its own, and the server refuses it anyway.
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
    let spec = known_field(doc, field)?;
    let typed = FieldValue::parse(spec.ty, value)
        .map_err(|reason| ClientError::BadEdit(format!("field {field}: {reason}")))?;
    Ok(baraza_records::ops::set(doc, field, typed, at)?)
}

/// The schema's spec for a field of this record, or the refusal naming the
/// fields its kind has.
fn known_field(doc: &Automerge, field: &str) -> Result<FieldSpec, ClientError> {
    let kind = Header::read(doc).map_err(EditError::from)?.kind;
    match kind.field(field) {
        Some(spec) => Ok(*spec),
        None => Err(EditError::UnknownField {
            kind: kind.name(),
            field: field.to_string(),
            known: names(kind.fields()),
        }
        .into()),
    }
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
    if known_field(doc, field)?.ty != FieldType::Text {
        return Err(ClientError::BadEdit(format!(
            "field {field:?} is not a text field; use set"
        )));
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
    use baraza_records::{ops, Kind};

    fn meeting() -> Automerge {
        let mut doc = Automerge::new();
        let header = Header {
            id: "00000000000000000000000000000001".into(),
            kind: Kind::Meeting,
            area: "kibera".into(),
            created_by_user: "cpl.otieno".into(),
            created_by_device: "d".into(),
            created_at: 0,
            schema: baraza_records::SCHEMA_VERSION,
        };
        ops::create(&mut doc, &header, 0).unwrap();
        doc
    }

    #[test]
    fn concurrent_sets_show_as_conflicts_and_text_merges() {
        let mut a = meeting();
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
        let mut a = meeting();
        set(&mut a, "place", "market", 0.into()).unwrap();
        assert!(matches!(
            splice(&mut a, "place", 0, 0, "x", 0.into()),
            Err(ClientError::BadEdit(_))
        ));
    }

    #[test]
    fn a_misspelt_field_is_refused_naming_the_real_ones_and_changes_nothing() {
        let mut a = meeting();
        let heads = a.get_heads();
        for result in [
            set(&mut a, "titel", "Baraza", 0.into()),
            splice(&mut a, "nots", 0, 0, "x", 0.into()),
        ] {
            match result {
                Err(ClientError::Edit(EditError::UnknownField { kind, known, .. })) => {
                    assert_eq!(kind, "meeting");
                    assert!(known.contains(&"title") && known.contains(&"notes"));
                }
                other => panic!("expected an unknown field, got {other:?}"),
            }
        }
        assert_eq!(a.get_heads(), heads);
        assert!(fields(&a)
            .iter()
            .all(|f| f.name != "titel" && f.name != "nots"));
    }
}
