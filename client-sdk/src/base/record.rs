//! Reading and editing a record's fields. A field is a scalar (set whole),
//! a text (spliced by character, so two people typing in the same field
//! merge), or a list or map of those ([`Content`] holds it in full). Only
//! fields of the record's schema are edited.

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use serde::Serialize;

use baraza_records::ops::{commit_options, Stamp};
use baraza_records::schema::names;
use baraza_records::{EditError, FieldSpec, FieldType, FieldValue, Header, Kind};

use crate::error::ClientError;

/// A field's value in full, typed by the record's schema where it knows
/// the field (so a time is told from a number), nested lists and maps
/// included.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Content {
    /// A string set whole (enums too).
    Str(String),
    /// Collaborative text.
    Text(String),
    /// A whole number.
    Int(i64),
    /// A flag.
    Bool(bool),
    /// A time the schema declares: milliseconds since the Unix epoch.
    Time(i64),
    /// A list, in order.
    List(Vec<Content>),
    /// A map, by key.
    Map(Vec<(String, Content)>),
    /// Anything else automerge can hold (counters, bytes), as text.
    Other(String),
}

/// One field of a record as a person sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// The value in one line (the winning one where there is a conflict):
    /// scalars and text as they are, a list as `[N items]`. [`Field::content`]
    /// has it in full.
    pub value: String,
    /// The value in full (the winning one where there is a conflict).
    pub content: Content,
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
    /// What its header says (kind, area, creator, creation time); None for
    /// a document without a readable header.
    pub header: Option<Header>,
    /// Its fields, by name.
    pub fields: Vec<Field>,
    /// True if it has changes the server has not acknowledged.
    pub unacknowledged: bool,
    /// Set when the server refused this record's changes: they stay here,
    /// marked, until the user edits again or a supervisor sorts it out.
    pub rejected: Option<super::store::Rejection>,
    /// Where it is in review.
    pub review_state: baraza_records::ReviewState,
    /// What reviewers wrote with their decisions ("add the attendee count").
    pub review_comments: Vec<baraza_records::ReviewComment>,
}

/// A record in a listing: enough to pick it out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The record id.
    pub id: String,
    /// Its kind (`meeting`), empty for a document without a readable header.
    pub kind: String,
    /// The area it is filed under.
    pub area: String,
    /// What names it: a meeting's title, a patrol note's beat, what a
    /// feedback is about, a contact's name; empty if not set.
    pub title: String,
    /// Where it is in review.
    pub review_state: baraza_records::ReviewState,
    /// True when the server has acknowledged every change to it.
    pub synced: bool,
    /// True when the server refused its changes (see `status`).
    pub refused: bool,
    /// When it was created (milliseconds since the epoch, the creating
    /// device's clock), 0 if unknown.
    pub created_at_ms: i64,
}

/// The field that names a record of `kind` in listings.
pub fn title_field(kind: Kind) -> &'static str {
    match kind {
        Kind::Meeting => "title",
        Kind::PatrolNote => "beat",
        Kind::Feedback => "about",
        Kind::FeedbackContact => "name",
    }
}

/// The fields of a document.
pub fn fields(doc: &Automerge) -> Vec<Field> {
    let kind = Header::read(doc).ok().map(|h| h.kind);
    doc.keys(ROOT)
        .filter(|name| name != "header")
        .map(|name| {
            let spec = kind.and_then(|k| k.field(&name)).copied();
            let all = doc.get_all(ROOT, name.as_str()).unwrap_or_default();
            let mut values = all.iter().map(|(v, obj)| {
                let text = matches!(v, Value::Object(ObjType::Text));
                (
                    baraza_records::inspect::show(doc, v, obj),
                    content(doc, v, obj, spec.map(|s| s.ty), 0),
                    text,
                )
            });
            // get_all lists the winner last.
            let (value, content, text) = values
                .next_back()
                .unwrap_or_else(|| (String::new(), Content::Str(String::new()), false));
            let conflicts = values.map(|(v, _, _)| v).collect();
            Field {
                name,
                value,
                content,
                text,
                conflicts,
            }
        })
        .collect()
}

/// Levels of lists and maps read into a [`Content`]; our schemas use two
/// (an observation's `gps`), the rest is room for a newer schema. Deeper
/// values (only a hostile or broken device writes them) show as text.
const DEPTH_MAX: usize = 16;

/// A value in full, typed by `ty` where the schema gives one.
fn content(
    doc: &Automerge,
    value: &Value<'_>,
    obj: &ObjId,
    ty: Option<FieldType>,
    depth: usize,
) -> Content {
    match value {
        Value::Scalar(s) => match (s.as_ref(), ty) {
            (ScalarValue::Int(i), Some(FieldType::Time)) => Content::Time(*i),
            (ScalarValue::Uint(u), Some(FieldType::Time)) => {
                Content::Time(i64::try_from(*u).unwrap_or(i64::MAX))
            }
            (ScalarValue::Str(s), _) => Content::Str(s.to_string()),
            (ScalarValue::Int(i), _) => Content::Int(*i),
            (ScalarValue::Boolean(b), _) => Content::Bool(*b),
            (other, _) => Content::Other(other.to_string()),
        },
        Value::Object(ObjType::Text) => Content::Text(doc.text(obj).unwrap_or_default()),
        Value::Object(_) if depth >= DEPTH_MAX => {
            Content::Other(baraza_records::inspect::show(doc, value, obj))
        }
        Value::Object(ObjType::List) => {
            let item = match ty {
                Some(FieldType::List(parts)) => Some(FieldType::Map(parts)),
                _ => None,
            };
            Content::List(
                (0..doc.length(obj))
                    .filter_map(|i| doc.get(obj, i).ok().flatten())
                    .map(|(v, id)| content(doc, &v, &id, item, depth + 1))
                    .collect(),
            )
        }
        Value::Object(ObjType::Map | ObjType::Table) => {
            let parts: &[FieldSpec] = match ty {
                Some(FieldType::Map(parts)) => parts,
                _ => &[],
            };
            Content::Map(
                doc.keys(obj)
                    .filter_map(|key| {
                        let (v, id) = doc.get(obj, key.as_str()).ok().flatten()?;
                        let ty = parts.iter().find(|p| p.name == key).map(|p| p.ty);
                        let shown = content(doc, &v, &id, ty, depth + 1);
                        Some((key, shown))
                    })
                    .collect(),
            )
        }
    }
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
    let kind = Header::read(doc).map_err(EditError::from)?.kind;
    let typed = typed(kind, field, value)?;
    Ok(baraza_records::ops::set(doc, field, typed, at)?)
}

/// A value typed by a person, typed by the kind's schema: refused for the
/// header and review block, for a field the kind does not have (naming the
/// ones it has) and for a value that does not fit.
pub fn typed(kind: Kind, field: &str, value: &str) -> Result<FieldValue, ClientError> {
    if matches!(field, "header" | "review") {
        return Err(ClientError::BadEdit {
            field: field.to_string(),
            message: format!(
                "{field} is not set by hand (the header is fixed at creation; review with submit)"
            ),
        });
    }
    let spec = known_field(kind, field)?;
    FieldValue::parse(spec.ty, value).map_err(|reason| ClientError::BadEdit {
        field: field.to_string(),
        message: format!("field {field}: {reason}"),
    })
}

/// The schema's spec for a field of this kind, or the refusal naming the
/// fields it has.
fn known_field(kind: Kind, field: &str) -> Result<FieldSpec, ClientError> {
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
    let kind = Header::read(doc).map_err(EditError::from)?.kind;
    if known_field(kind, field)?.ty != FieldType::Text {
        return Err(not_text(field));
    }
    let mut tx = doc.transaction();
    let obj = match tx.get(ROOT, field)? {
        Some((Value::Object(ObjType::Text), obj)) => obj,
        Some(_) => return Err(not_text(field)),
        None => tx.put_object(ROOT, field, ObjType::Text)?,
    };
    let len = tx.length(&obj);
    if pos > len {
        return Err(ClientError::BadEdit {
            field: field.to_string(),
            message: format!("position {pos} is past the end of {field:?} ({len} characters)"),
        });
    }
    tx.splice_text(&obj, pos, delete, text)?;
    tx.commit_with(commit_options(&format!("type in {field}"), at));
    Ok(())
}

fn not_text(field: &str) -> ClientError {
    ClientError::BadEdit {
        field: field.to_string(),
        message: format!("field {field:?} is not a text field; use set"),
    }
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
    fn lists_maps_and_times_are_read_in_full() {
        let mut doc = Automerge::new();
        let header = Header {
            id: "00000000-0000-0000-0000-000000000001".into(),
            kind: Kind::Meeting,
            area: "kibera".into(),
            created_by_user: "lia.achieng".into(),
            created_by_device: "0".repeat(32),
            created_at: 5,
            schema: baraza_records::SCHEMA_VERSION,
        };
        baraza_records::ops::create(&mut doc, &header, 0).unwrap();
        let name = |n: &str| ("name", FieldValue::Str(n.into()));
        baraza_records::ops::append(&mut doc, "attendees", &[name("Otieno")], 0).unwrap();
        baraza_records::ops::set_map(&mut doc, "headcount", &[("women", FieldValue::Int(12))], 0)
            .unwrap();
        set(&mut doc, "held_at", "1780000000000", 0.into()).unwrap();
        let f = fields(&doc);
        let get = |n: &str| f.iter().find(|f| f.name == n).unwrap().content.clone();
        assert_eq!(
            get("attendees"),
            Content::List(vec![Content::Map(vec![(
                "name".into(),
                Content::Str("Otieno".into())
            )])])
        );
        assert_eq!(
            get("headcount"),
            Content::Map(vec![("women".into(), Content::Int(12))])
        );
        assert_eq!(get("held_at"), Content::Time(1_780_000_000_000));
    }

    #[test]
    fn splicing_a_scalar_is_refused() {
        let mut a = meeting();
        set(&mut a, "place", "market", 0.into()).unwrap();
        assert!(matches!(
            splice(&mut a, "place", 0, 0, "x", 0.into()),
            Err(ClientError::BadEdit { .. })
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
