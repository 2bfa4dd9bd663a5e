//! Checking a record against its schema: the header is well formed and
//! never changes, and every known field holds a value of its type
//! (every value, where devices set it concurrently).

use automerge::{Automerge, ObjId, ObjType, ReadDoc, ScalarValue, Value, ROOT};

use crate::header::Header;
use crate::schema::{FieldSpec, FieldType, HEADER, REVIEW};

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
        FieldType::Enum(_) => "one of a set of strings".into(),
        FieldType::List(_) => "list".into(),
        FieldType::Map(_) => "map".into(),
    }
}

fn check_value(
    doc: &Automerge,
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
            for i in 0..doc.length(obj) {
                let item_path = format!("{path}.{i}");
                for (value, id) in doc.get_all(obj, i).unwrap_or_default() {
                    match value {
                        Value::Object(ObjType::Map) => check_map(doc, &id, spec, &item_path)?,
                        other => {
                            return Err(SchemaError::WrongType {
                                path: item_path,
                                expected: "map".into(),
                                found: describe(&other),
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

/// Checks the known fields of one map. Unknown keys are left alone: a newer
/// schema may have written them.
fn check_map(
    doc: &Automerge,
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
        let values = doc
            .get_all(obj, field.name)
            .map_err(|e| SchemaError::WrongType {
                path: path.clone(),
                expected: expected(field.ty),
                found: e.to_string(),
            })?;
        for (value, id) in &values {
            check_value(doc, &path, field.ty, value, id)?;
        }
    }
    Ok(())
}

/// Checks a whole record: its header, the review block and its kind's fields.
pub fn validate(doc: &Automerge) -> Result<Header, SchemaError> {
    let header = Header::read(doc)?;
    let Some((Value::Object(ObjType::Map), header_obj)) = doc.get(ROOT, "header").ok().flatten()
    else {
        return Err(SchemaError::NoHeader);
    };
    check_map(doc, &header_obj, HEADER, "header")?;
    check_map(doc, &ROOT, header.kind.fields(), "")?;
    match doc.get(ROOT, "review").ok().flatten() {
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
/// before them (None for a new record): valid, and the header unchanged.
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
    Ok(header)
}
