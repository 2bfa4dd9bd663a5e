//! Editing records: each operation is one automerge change, stamped with
//! the time and named after the operation, checked against the schema
//! before it is made.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};

use crate::header::Header;
use crate::schema::{FieldSpec, FieldType, Kind};
use crate::validate::SchemaError;

/// A value for a scalar field.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    /// A string (also enums).
    Str(String),
    /// A whole number.
    Int(i64),
    /// A flag.
    Bool(bool),
    /// Milliseconds since the epoch.
    Time(i64),
}

impl FieldValue {
    /// Parses text typed by a person into the field's type.
    pub fn parse(ty: FieldType, text: &str) -> Result<FieldValue, String> {
        match ty {
            FieldType::Str | FieldType::Enum(_) => Ok(FieldValue::Str(text.to_string())),
            FieldType::Digest if crate::attachment::is_digest(text) => {
                Ok(FieldValue::Str(text.to_string()))
            }
            FieldType::Digest => Err(format!("{text:?} is not a SHA-256 digest in hex")),
            FieldType::Int => text
                .parse()
                .map(FieldValue::Int)
                .map_err(|_| format!("{text:?} is not a whole number")),
            FieldType::Time => text
                .parse()
                .map(FieldValue::Time)
                .map_err(|_| format!("{text:?} is not a time in milliseconds since 1970")),
            FieldType::Bool => match text {
                "true" | "yes" => Ok(FieldValue::Bool(true)),
                "false" | "no" => Ok(FieldValue::Bool(false)),
                _ => Err(format!("{text:?} is not true or false")),
            },
            FieldType::Text | FieldType::List(_) | FieldType::Map(_) => {
                Err("this field is not set whole".into())
            }
        }
    }

    fn scalar(&self) -> ScalarValue {
        match self {
            FieldValue::Str(s) => ScalarValue::Str(s.as_str().into()),
            FieldValue::Int(i) | FieldValue::Time(i) => ScalarValue::Int(*i),
            FieldValue::Bool(b) => ScalarValue::Boolean(*b),
        }
    }
}

/// Why an edit was not made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The record does not fit its schema (or has no header).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The field is not part of this kind of record (or of this list's
    /// items, or this map).
    #[error(
        "a {kind} record has no field {field:?}; the fields there are {}",
        known.join(", ")
    )]
    UnknownField {
        /// The record's kind.
        kind: &'static str,
        /// The field asked for.
        field: String,
        /// The fields there are, where it was asked for.
        known: Vec<&'static str>,
    },
    /// The value does not fit the field.
    #[error("field {field}: {reason}")]
    BadValue {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A list position past the end.
    #[error("{field} has no item {index}")]
    NoItem {
        /// The list field.
        field: String,
        /// The index asked for.
        index: usize,
    },
    /// automerge refused the operation.
    #[error("document: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

fn spec<'a>(fields: &'a [FieldSpec], name: &str, kind: Kind) -> Result<&'a FieldSpec, EditError> {
    fields
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| EditError::UnknownField {
            kind: kind.name(),
            field: name.to_string(),
            known: crate::schema::names(fields),
        })
}

/// Checks a value against its field's spec: type, allowed values, range.
pub fn check_value(field: &str, spec: &FieldSpec, value: &FieldValue) -> Result<(), EditError> {
    check_scalar(field, spec.ty, value)?;
    let Some(bounds) = spec.bounds else {
        return Ok(());
    };
    let checked = match value {
        FieldValue::Str(text) => bounds.check_text(text),
        FieldValue::Int(v) | FieldValue::Time(v) => bounds.check(*v as f64),
        FieldValue::Bool(_) => Ok(()),
    };
    checked.map_err(|reason| EditError::BadValue {
        field: field.to_string(),
        reason,
    })
}

fn check_scalar(field: &str, ty: FieldType, value: &FieldValue) -> Result<(), EditError> {
    let ok = match (ty, value) {
        (FieldType::Str, FieldValue::Str(_)) => true,
        (FieldType::Digest, FieldValue::Str(s)) => crate::attachment::is_digest(s),
        (FieldType::Enum(allowed), FieldValue::Str(s)) => {
            if !allowed.contains(&s.as_str()) {
                return Err(EditError::BadValue {
                    field: field.to_string(),
                    reason: format!("{s:?} is not one of {allowed:?}"),
                });
            }
            true
        }
        (FieldType::Int, FieldValue::Int(_)) => true,
        (FieldType::Time, FieldValue::Time(_) | FieldValue::Int(_)) => true,
        (FieldType::Bool, FieldValue::Bool(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(EditError::BadValue {
            field: field.to_string(),
            reason: format!("{value:?} does not fit a {ty:?} field"),
        })
    }
}

/// When an edit is made and by whom. The user travels in the change's
/// message (`"set place by cpl.achieng"`), so history and conflicts can
/// name a person as well as the device; enrolment (issue 4) lets the
/// server check it against the device's user.
#[derive(Clone, Copy, Debug)]
pub struct Stamp<'a> {
    /// Milliseconds since the epoch.
    pub now_ms: i64,
    /// The user making the edit ("" if unknown).
    pub by: &'a str,
}

impl From<i64> for Stamp<'static> {
    fn from(now_ms: i64) -> Self {
        Stamp { now_ms, by: "" }
    }
}

/// Separates the operation from the user in a change message.
pub const BY: &str = " by ";

/// The commit options every edit uses: the operation and user as the
/// message, the time in whole seconds.
pub fn commit_options(op: &str, at: Stamp<'_>) -> CommitOptions {
    let message = if at.by.is_empty() {
        op.to_string()
    } else {
        format!("{op}{BY}{}", at.by)
    };
    CommitOptions::default()
        .with_message(message)
        .with_time(at.now_ms / 1000)
}

fn commit(tx: automerge::transaction::Transaction<'_>, op: &str, at: Stamp<'_>) {
    tx.commit_with(commit_options(op, at));
}

fn list_obj<T: Transactable + ReadDoc>(tx: &mut T, field: &str) -> Result<ObjId, EditError> {
    match tx.get(ROOT, field)? {
        Some((Value::Object(ObjType::List), obj)) => Ok(obj),
        _ => Ok(tx.put_object(ROOT, field, ObjType::List)?),
    }
}

/// Starts a record: header, draft review block, and the kind's lists and
/// texts, so later edits from several devices land in the same objects.
pub fn create<'a>(
    doc: &mut Automerge,
    header: &Header,
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    create_with(doc, header, &[], at)
}

/// Starts a record as [`create`] does, with its first scalar fields set in
/// the same change. Each change costs a record for good: its hash, actor,
/// time and message travel and are stored with every copy, so a record
/// made whole in one change is about a sixth smaller saved than one made a
/// field at a time. Every field is checked first; one that does not fit
/// creates nothing.
pub fn create_with<'a>(
    doc: &mut Automerge,
    header: &Header,
    fields: &[(&str, FieldValue)],
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    for (name, value) in fields {
        check_value(name, spec(header.kind.fields(), name, header.kind)?, value)?;
    }
    let mut tx = doc.transaction();
    header.write(&mut tx)?;
    let review = tx.put_object(ROOT, "review", ObjType::Map)?;
    tx.put(&review, "state", crate::schema::ReviewState::Draft.name())?;
    tx.put_object(&review, "comments", ObjType::List)?;
    for f in header.kind.fields() {
        match f.ty {
            FieldType::List(_) => {
                tx.put_object(ROOT, f.name, ObjType::List)?;
            }
            FieldType::Text => {
                tx.put_object(ROOT, f.name, ObjType::Text)?;
            }
            FieldType::Map(_) => {
                tx.put_object(ROOT, f.name, ObjType::Map)?;
            }
            _ => {}
        }
    }
    for (name, value) in fields {
        tx.put(ROOT, *name, value.scalar())?;
    }
    commit(tx, &format!("create {}", header.kind.name()), at.into());
    Ok(())
}

/// Sets a scalar field of the record's kind.
pub fn set<'a>(
    doc: &mut Automerge,
    field: &str,
    value: FieldValue,
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    let kind = Header::read(doc)?.kind;
    let spec = spec(kind.fields(), field, kind)?;
    check_value(field, spec, &value)?;
    let mut tx = doc.transaction();
    tx.put(ROOT, field, value.scalar())?;
    commit(tx, &format!("set {field}"), at.into());
    Ok(())
}

/// Types into a text field: at `pos`, deletes `delete` characters, inserts `text`.
pub fn splice<'a>(
    doc: &mut Automerge,
    field: &str,
    pos: usize,
    delete: usize,
    text: &str,
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    let kind = Header::read(doc)?.kind;
    let spec = spec(kind.fields(), field, kind)?;
    if spec.ty != FieldType::Text {
        return Err(EditError::BadValue {
            field: field.into(),
            reason: "not a text field; use set".into(),
        });
    }
    let mut tx = doc.transaction();
    let obj = match tx.get(ROOT, field)? {
        Some((Value::Object(ObjType::Text), obj)) => obj,
        _ => tx.put_object(ROOT, field, ObjType::Text)?,
    };
    let len = tx.length(&obj);
    if pos > len || pos + delete > len {
        return Err(EditError::BadValue {
            field: field.into(),
            reason: format!("position {pos}+{delete} is past the end ({len} characters)"),
        });
    }
    tx.splice_text(&obj, pos, delete as isize, text)?;
    commit(tx, &format!("type in {field}"), at.into());
    Ok(())
}

/// Where a list is: a root field (`attendees`), or a list in an item of
/// a root list (`observations.2.photos`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListPath<'p> {
    /// A root field.
    Root(&'p str),
    /// Field `field` of item `index` of root list `list`.
    InItem {
        /// The root list.
        list: &'p str,
        /// The item's position.
        index: usize,
        /// The item's list field.
        field: &'p str,
    },
}

impl<'p> ListPath<'p> {
    /// `name` or `list.index.field`; None for anything else.
    pub fn parse(path: &'p str) -> Option<ListPath<'p>> {
        let mut parts = path.split('.');
        let first = parts.next()?;
        match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => Some(ListPath::Root(first)),
            (Some(index), Some(field), None) => Some(ListPath::InItem {
                list: first,
                index: index.parse().ok()?,
                field,
            }),
            _ => None,
        }
    }

    /// The spec of the list this path names, in records of `kind`.
    pub fn spec(&self, kind: Kind) -> Result<&'static FieldSpec, EditError> {
        match *self {
            ListPath::Root(name) => spec(kind.fields(), name, kind),
            ListPath::InItem { list, field, .. } => {
                let FieldType::List(parts) = spec(kind.fields(), list, kind)?.ty else {
                    return Err(EditError::BadValue {
                        field: list.into(),
                        reason: "not a list".into(),
                    });
                };
                spec(parts, field, kind)
            }
        }
    }

    /// The list object, made (empty) if the record has none there yet;
    /// for a list in an item, the item must exist.
    fn obj<T: Transactable + ReadDoc>(&self, tx: &mut T) -> Result<ObjId, EditError> {
        match *self {
            ListPath::Root(name) => list_obj(tx, name),
            ListPath::InItem { list, index, field } => {
                let item = item_obj(tx, list, index)?;
                match tx.get(&item, field)? {
                    Some((Value::Object(ObjType::List), obj)) => Ok(obj),
                    _ => Ok(tx.put_object(&item, field, ObjType::List)?),
                }
            }
        }
    }
}

fn list_path(path: &str) -> Result<ListPath<'_>, EditError> {
    ListPath::parse(path).ok_or_else(|| EditError::BadValue {
        field: path.into(),
        reason: "a list is named as FIELD or LIST.INDEX.FIELD".into(),
    })
}

/// Appends an item (a map) to a list field, at the root (`attendees`) or
/// in an item of a root list (`observations.2.photos`); returns its
/// index.
pub fn append<'a>(
    doc: &mut Automerge,
    field: &str,
    values: &[(&str, FieldValue)],
    at: impl Into<Stamp<'a>>,
) -> Result<usize, EditError> {
    let kind = Header::read(doc)?.kind;
    let path = list_path(field)?;
    let FieldType::List(item_spec) = path.spec(kind)?.ty else {
        return Err(EditError::BadValue {
            field: field.into(),
            reason: "not a list".into(),
        });
    };
    for (name, value) in values {
        let s = spec(item_spec, name, kind)?;
        check_value(&format!("{field}.{name}"), s, value)?;
    }
    let mut tx = doc.transaction();
    let list = path.obj(&mut tx)?;
    let index = tx.length(&list);
    let item = tx.insert_object(&list, index, ObjType::Map)?;
    for (name, value) in values {
        tx.put(&item, *name, value.scalar())?;
    }
    commit(tx, &format!("add to {field}"), at.into());
    Ok(index)
}

/// Checks the values of a nested map of a list's items (e.g. an
/// observation's GPS point) against the schema, without a record: so a
/// caller can refuse a bad point before making any change.
pub fn check_item_map(
    kind: Kind,
    field: &str,
    key: &str,
    values: &[(&str, FieldValue)],
) -> Result<(), EditError> {
    let FieldType::List(item_spec) = spec(kind.fields(), field, kind)?.ty else {
        return Err(EditError::BadValue {
            field: field.into(),
            reason: "not a list".into(),
        });
    };
    let FieldType::Map(parts) = spec(item_spec, key, kind)?.ty else {
        return Err(EditError::BadValue {
            field: format!("{field}.{key}"),
            reason: "not a map".into(),
        });
    };
    for (name, value) in values {
        check_value(
            &format!("{field}.{key}.{name}"),
            spec(parts, name, kind)?,
            value,
        )?;
    }
    Ok(())
}

/// Sets keys of a map field (a meeting's `headcount`), making the map if
/// the record has none. Keys are set one by one in the map that is there,
/// so two devices counting different groups offline both keep theirs.
pub fn set_map<'a>(
    doc: &mut Automerge,
    field: &str,
    values: &[(&str, FieldValue)],
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    let kind = Header::read(doc)?.kind;
    let FieldType::Map(parts) = spec(kind.fields(), field, kind)?.ty else {
        return Err(EditError::BadValue {
            field: field.into(),
            reason: "not a map".into(),
        });
    };
    for (name, value) in values {
        check_value(&format!("{field}.{name}"), spec(parts, name, kind)?, value)?;
    }
    let mut tx = doc.transaction();
    let map = match tx.get(ROOT, field)? {
        Some((Value::Object(ObjType::Map), obj)) => obj,
        _ => tx.put_object(ROOT, field, ObjType::Map)?,
    };
    for (name, value) in values {
        tx.put(&map, *name, value.scalar())?;
    }
    commit(tx, &format!("set {field}"), at.into());
    Ok(())
}

/// Puts a nested map (e.g. an observation's GPS point) into a list item.
pub fn set_item_map<'a>(
    doc: &mut Automerge,
    field: &str,
    index: usize,
    key: &str,
    values: &[(&str, FieldValue)],
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    check_item_map(Header::read(doc)?.kind, field, key, values)?;
    let mut tx = doc.transaction();
    let item = item_obj(&mut tx, field, index)?;
    let map = tx.put_object(&item, key, ObjType::Map)?;
    for (name, value) in values {
        tx.put(&map, *name, value.scalar())?;
    }
    commit(tx, &format!("set {field}.{index}.{key}"), at.into());
    Ok(())
}

fn item_obj<T: Transactable + ReadDoc>(
    tx: &mut T,
    field: &str,
    index: usize,
) -> Result<ObjId, EditError> {
    let Some((Value::Object(ObjType::List), list)) = tx.get(ROOT, field)? else {
        return Err(EditError::NoItem {
            field: field.into(),
            index,
        });
    };
    match tx.get(&list, index)? {
        Some((Value::Object(ObjType::Map), item)) => Ok(item),
        _ => Err(EditError::NoItem {
            field: field.into(),
            index,
        }),
    }
}

/// Sets one field of a list item (e.g. an action item's status).
pub fn set_item<'a>(
    doc: &mut Automerge,
    field: &str,
    index: usize,
    name: &str,
    value: FieldValue,
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    let kind = Header::read(doc)?.kind;
    let FieldType::List(item_spec) = spec(kind.fields(), field, kind)?.ty else {
        return Err(EditError::BadValue {
            field: field.into(),
            reason: "not a list".into(),
        });
    };
    check_value(
        &format!("{field}.{name}"),
        spec(item_spec, name, kind)?,
        &value,
    )?;
    let mut tx = doc.transaction();
    let item = item_obj(&mut tx, field, index)?;
    tx.put(&item, name, value.scalar())?;
    commit(tx, &format!("set {field}.{index}.{name}"), at.into());
    Ok(())
}

/// Removes a list item (of a root list, or of a list in an item:
/// `observations.2.photos`).
pub fn remove<'a>(
    doc: &mut Automerge,
    field: &str,
    index: usize,
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    let path = list_path(field)?;
    let mut tx = doc.transaction();
    let found = match path {
        ListPath::Root(name) => tx.get(ROOT, name)?,
        ListPath::InItem {
            list,
            index: item,
            field: inner,
        } => {
            let item = item_obj(&mut tx, list, item)?;
            tx.get(&item, inner)?
        }
    };
    let Some((Value::Object(ObjType::List), list)) = found else {
        return Err(EditError::NoItem {
            field: field.into(),
            index,
        });
    };
    if index >= tx.length(&list) {
        return Err(EditError::NoItem {
            field: field.into(),
            index,
        });
    }
    tx.delete(&list, index)?;
    commit(tx, &format!("remove {field}.{index}"), at.into());
    Ok(())
}

/// Adds a follow-up to a feedback record and moves its status, in one change.
pub fn follow_up<'a>(
    doc: &mut Automerge,
    status: &str,
    note: &str,
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    let at: Stamp<'a> = at.into();
    let kind = Header::read(doc)?.kind;
    if kind != Kind::Feedback {
        return Err(EditError::UnknownField {
            kind: kind.name(),
            field: "follow_ups".into(),
            known: crate::schema::names(kind.fields()),
        });
    }
    check_scalar(
        "status",
        FieldType::Enum(crate::schema::FEEDBACK_STATES),
        &FieldValue::Str(status.into()),
    )?;
    let mut tx = doc.transaction();
    let list = list_obj(&mut tx, "follow_ups")?;
    let pos = tx.length(&list);
    let item = tx.insert_object(&list, pos, ObjType::Map)?;
    tx.put(&item, "at", at.now_ms)?;
    tx.put(&item, "by", at.by)?;
    tx.put(&item, "status", status)?;
    tx.put(&item, "note", note)?;
    tx.put(ROOT, "status", status)?;
    commit(tx, &format!("follow up: {status}"), at);
    Ok(())
}

/// Sets the review state (submitting for review, or a supervisor's decision)
/// and, if given, adds a comment in the same change.
pub fn review<'a>(
    doc: &mut Automerge,
    state: crate::schema::ReviewState,
    comment: Option<(&str, &str)>,
    at: impl Into<Stamp<'a>>,
) -> Result<(), EditError> {
    let at: Stamp<'a> = at.into();
    let mut tx = doc.transaction();
    let review = match tx.get(ROOT, "review")? {
        Some((Value::Object(ObjType::Map), obj)) => obj,
        _ => tx.put_object(ROOT, "review", ObjType::Map)?,
    };
    tx.put(&review, "state", state.name())?;
    if let Some((by, text)) = comment {
        let comments = match tx.get(&review, "comments")? {
            Some((Value::Object(ObjType::List), obj)) => obj,
            _ => tx.put_object(&review, "comments", ObjType::List)?,
        };
        let pos = tx.length(&comments);
        let c = tx.insert_object(&comments, pos, ObjType::Map)?;
        tx.put(&c, "by", by)?;
        tx.put(&c, "at", at.now_ms)?;
        tx.put(&c, "text", text)?;
    }
    commit(tx, &format!("review {state}"), at);
    Ok(())
}
