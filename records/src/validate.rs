//! Checking a record against its schema: the header is well formed and
//! never changes, and every known field holds a value of its type
//! (every value, where devices set it concurrently). What changes add is
//! held to more ([`validate_additions`]): no keys the schema lacks (in
//! records of a schema version this one knows) and numbers in range.

use automerge::{ActorId, Automerge, Change, ObjId, ObjType, ScalarValue, Value, ROOT};

use crate::read::Reader;

use crate::header::Header;
use crate::schema::{names, FieldSpec, FieldType, HEADER, REVIEW, SCHEMA_VERSION};

/// Why a record does not fit its schema. Names the field, so a refusal can
/// tell the device exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// No `header` map.
    #[error("the record has no header")]
    NoHeader,
    /// A header field is missing or malformed.
    #[error("header field {field}: {reason}")]
    Header {
        /// The header field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A header field differs from what was stored: headers are written once.
    #[error("header field {0} was changed; a record's header is immutable")]
    HeaderChanged(&'static str),
    /// A field holds a value of the wrong type.
    #[error("field {path}: expected {expected}, found {found}")]
    WrongType {
        /// Dotted path, list elements by index (`action_items.2.status`).
        path: String,
        /// The schema's type.
        expected: String,
        /// What the record holds.
        found: String,
    },
    /// A change adds a key the schema does not have (a typo, or an app
    /// writing what it should not) to a record whose schema version is
    /// not newer than this one.
    #[error(
        "unknown field {path}: a {kind} record (schema version {SCHEMA_VERSION}) has no such \
         field; the fields there are {}",
        known.join(", ")
    )]
    UnknownField {
        /// Dotted path of the key (`attendees.0.nmae`).
        path: String,
        /// The record's kind.
        kind: &'static str,
        /// The keys allowed beside it.
        known: Vec<&'static str>,
    },
    /// A change puts a number outside its field's range (a latitude of -91).
    #[error("field {path}: {reason}")]
    OutOfRange {
        /// Dotted path (`observations.0.gps.lat`).
        path: String,
        /// The value and the range it missed.
        reason: String,
    },
    /// A field holds a value outside its allowed set.
    #[error("field {path}: {value:?} is not one of {allowed:?}")]
    NotAllowed {
        /// Dotted path.
        path: String,
        /// The value found.
        value: String,
        /// The values allowed.
        allowed: &'static [&'static str],
    },
}

fn describe(value: &Value<'_>) -> String {
    match value {
        Value::Object(t) => format!("{t:?}").to_lowercase(),
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(_) => "string".into(),
            ScalarValue::Int(_) | ScalarValue::Uint(_) => "integer".into(),
            ScalarValue::F64(_) => "float".into(),
            ScalarValue::Boolean(_) => "boolean".into(),
            ScalarValue::Timestamp(_) => "timestamp".into(),
            ScalarValue::Bytes(_) => "bytes".into(),
            ScalarValue::Counter(_) => "counter".into(),
            ScalarValue::Null => "null".into(),
            _ => "unknown value".into(),
        },
    }
}

fn expected(ty: FieldType) -> String {
    match ty {
        FieldType::Str => "string".into(),
        FieldType::Text => "text".into(),
        FieldType::Int => "integer".into(),
        FieldType::Bool => "boolean".into(),
        FieldType::Time => "time (integer milliseconds)".into(),
        FieldType::Digest => "a SHA-256 digest (64 lowercase hex digits)".into(),
        FieldType::Enum(_) => "one of a set of strings".into(),
        FieldType::List(_) => "list".into(),
        FieldType::Map(_) => "map".into(),
    }
}

fn check_value(
    doc: &(impl Reader + ?Sized),
    path: &str,
    ty: FieldType,
    value: &Value<'_>,
    obj: &ObjId,
) -> Result<(), SchemaError> {
    let wrong = || SchemaError::WrongType {
        path: path.to_string(),
        expected: expected(ty),
        found: describe(value),
    };
    match (ty, value) {
        (FieldType::Str, Value::Scalar(s)) if matches!(s.as_ref(), ScalarValue::Str(_)) => Ok(()),
        (FieldType::Digest, Value::Scalar(s)) => match s.as_ref() {
            ScalarValue::Str(v) if crate::attachment::is_digest(v) => Ok(()),
            _ => Err(wrong()),
        },
        (FieldType::Text, Value::Object(ObjType::Text)) => Ok(()),
        (FieldType::Int, Value::Scalar(s))
            if matches!(s.as_ref(), ScalarValue::Int(_) | ScalarValue::Uint(_)) =>
        {
            Ok(())
        }
        (FieldType::Bool, Value::Scalar(s)) if matches!(s.as_ref(), ScalarValue::Boolean(_)) => {
            Ok(())
        }
        (FieldType::Time, Value::Scalar(s))
            if matches!(s.as_ref(), ScalarValue::Int(_) | ScalarValue::Timestamp(_)) =>
        {
            Ok(())
        }
        (FieldType::Enum(allowed), Value::Scalar(s)) => match s.as_ref() {
            ScalarValue::Str(v) if allowed.contains(&v.as_str()) => Ok(()),
            ScalarValue::Str(v) => Err(SchemaError::NotAllowed {
                path: path.to_string(),
                value: v.to_string(),
                allowed,
            }),
            _ => Err(wrong()),
        },
        (FieldType::Map(spec), Value::Object(ObjType::Map)) => check_map(doc, obj, spec, path),
        (FieldType::List(spec), Value::Object(ObjType::List)) => {
            for i in 0..doc.length_of(obj) {
                let item_path = format!("{path}.{i}");
                for (value, id) in doc.all(obj, i.into()).iter() {
                    match value {
                        Value::Object(ObjType::Map) => check_map(doc, id, spec, &item_path)?,
                        other => {
                            return Err(SchemaError::WrongType {
                                path: item_path,
                                expected: "map".into(),
                                found: describe(other),
                            })
                        }
                    }
                }
            }
            Ok(())
        }
        _ => Err(wrong()),
    }
}

/// Checks the known fields of one map. Unknown keys are left alone here: a
/// newer schema may have written them, and records stored before unknown
/// keys were refused must still load ([`validate_additions`] judges new
/// ones).
fn check_map(
    doc: &(impl Reader + ?Sized),
    obj: &ObjId,
    spec: &[FieldSpec],
    prefix: &str,
) -> Result<(), SchemaError> {
    for field in spec {
        let path = if prefix.is_empty() {
            field.name.to_string()
        } else {
            format!("{prefix}.{}", field.name)
        };
        for (value, id) in doc.all(obj, field.name.into()).iter() {
            check_value(doc, &path, field.ty, value, id)?;
        }
    }
    Ok(())
}

/// Checks a whole record: its header, the review block and its kind's fields.
pub fn validate(doc: &(impl Reader + ?Sized)) -> Result<Header, SchemaError> {
    let header = Header::read(doc)?;
    let Some((Value::Object(ObjType::Map), header_obj)) = doc.shown(&ROOT, "header".into()) else {
        return Err(SchemaError::NoHeader);
    };
    check_map(doc, &header_obj, HEADER, "header")?;
    check_map(doc, &ROOT, header.kind.fields(), "")?;
    match doc.shown(&ROOT, "review".into()) {
        Some((Value::Object(ObjType::Map), review)) => check_map(doc, &review, REVIEW, "review")?,
        Some((other, _)) => {
            return Err(SchemaError::WrongType {
                path: "review".into(),
                expected: "map".into(),
                found: describe(&other),
            })
        }
        None => {}
    }
    Ok(header)
}

/// Checks a record after changes were applied to it, against the copy
/// before them (None for a new record): valid, the header unchanged, and
/// what the changes added fits [`validate_additions`].
pub fn validate_change(
    before: Option<&Automerge>,
    after: &Automerge,
) -> Result<Header, SchemaError> {
    let header = validate(after)?;
    if let Some(before) = before {
        let old = Header::read(before)?;
        if let Some(field) = old.differs_from(&header) {
            return Err(SchemaError::HeaderChanged(field));
        }
    }
    let since = before.map(|b| b.get_heads()).unwrap_or_default();
    validate_additions(after, &after.get_changes(&since))?;
    Ok(header)
}

/// Checks what `changes` (already applied to `doc`) put into it: no key
/// the schema lacks, anywhere (root, header, review block, list items,
/// nested maps), unless the header names a schema version newer than
/// [`SCHEMA_VERSION`] (a newer app's fields are kept, not judged); and
/// every bounded number in range. Values already there before the changes
/// are not judged: records stored before these rules still load and take
/// edits, and only new writes are refused.
pub fn validate_additions(
    doc: &(impl Reader + ?Sized),
    changes: &[Change],
) -> Result<(), SchemaError> {
    let header = Header::read(doc)?;
    let walk = Additions {
        doc,
        made: changes
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| (c.actor_id().clone(), c.start_op().get(), c.max_op()))
            .collect(),
        unknown_refused: header.schema <= SCHEMA_VERSION,
        kind: header.kind.name(),
    };
    let mut root: Vec<FieldSpec> = header.kind.fields().to_vec();
    root.push(FieldSpec {
        name: "header",
        ty: FieldType::Map(HEADER),
        bounds: None,
    });
    root.push(FieldSpec {
        name: "review",
        ty: FieldType::Map(REVIEW),
        bounds: None,
    });
    walk.map(&ROOT, &root, "")
}

/// The walk of [`validate_additions`].
struct Additions<'a, R: Reader + ?Sized> {
    doc: &'a R,
    /// Each change's actor and first and last operation counters: a value
    /// whose id falls in one was put by these changes.
    made: Vec<(ActorId, u64, u64)>,
    unknown_refused: bool,
    kind: &'static str,
}

impl<R: Reader + ?Sized> Additions<'_, R> {
    fn is_new(&self, id: &ObjId) -> bool {
        match id {
            ObjId::Id(counter, actor, _) => self
                .made
                .iter()
                .any(|(a, first, last)| a == actor && (*first..=*last).contains(counter)),
            ObjId::Root => false,
        }
    }

    fn map(&self, obj: &ObjId, spec: &[FieldSpec], prefix: &str) -> Result<(), SchemaError> {
        for key in self.doc.keys_of(obj) {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let values = self.doc.all(obj, key.as_str().into());
            let Some(field) = spec.iter().find(|f| f.name == key) else {
                if self.unknown_refused && values.iter().any(|(_, id)| self.is_new(id)) {
                    return Err(SchemaError::UnknownField {
                        path,
                        kind: self.kind,
                        known: names(spec),
                    });
                }
                continue;
            };
            for (value, id) in values.iter() {
                self.value(field, &path, value, id)?;
            }
        }
        Ok(())
    }

    fn value(
        &self,
        field: &FieldSpec,
        path: &str,
        value: &Value<'_>,
        id: &ObjId,
    ) -> Result<(), SchemaError> {
        match (field.ty, value) {
            (FieldType::Map(parts), Value::Object(ObjType::Map)) => self.map(id, parts, path),
            (FieldType::List(parts), Value::Object(ObjType::List)) => {
                for i in 0..self.doc.length_of(id) {
                    for (item, item_id) in self.doc.all(id, i.into()).iter() {
                        if let Value::Object(ObjType::Map) = item {
                            self.map(item_id, parts, &format!("{path}.{i}"))?;
                        }
                    }
                }
                Ok(())
            }
            (_, Value::Scalar(s)) => match field.bounds {
                Some(bounds) if self.is_new(id) => {
                    let checked = match s.as_ref() {
                        ScalarValue::Str(text) => bounds.check_text(text),
                        ScalarValue::Int(v) => bounds.check(*v as f64),
                        ScalarValue::Uint(v) => bounds.check(*v as f64),
                        ScalarValue::F64(v) => bounds.check(*v),
                        // A wrong type is validate's to report.
                        _ => Ok(()),
                    };
                    checked.map_err(|reason| SchemaError::OutOfRange {
                        path: path.to_string(),
                        reason,
                    })
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}
