//! The immutable header every record carries.

use automerge::transaction::Transactable;
use automerge::{ObjType, ScalarValue, Value, ROOT};
use serde::{Deserialize, Serialize};

use crate::read::Reader;
use crate::schema::Kind;
use crate::validate::SchemaError;

/// Who made a record, where, when, and what it is. Written in the same
/// change that creates the record and never changed after: the server
/// indexes records by it and refuses changes to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The record id (the document id).
    pub id: String,
    /// What kind of record.
    pub kind: Kind,
    /// The area (beat, ward or district) it belongs to.
    pub area: String,
    /// The user who created it.
    pub created_by_user: String,
    /// The device it was created on.
    pub created_by_device: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The schema version it was created under.
    pub schema: u64,
}

fn read_str(
    doc: &(impl Reader + ?Sized),
    obj: &automerge::ObjId,
    field: &'static str,
) -> Result<String, SchemaError> {
    let values = doc.all(obj, field.into());
    if values.len() > 1 {
        return Err(SchemaError::HeaderChanged(field));
    }
    match values.first() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(v) => Ok(v.to_string()),
            _ => Err(SchemaError::Header {
                field,
                reason: "must be a string".into(),
            }),
        },
        _ => Err(SchemaError::Header {
            field,
            reason: "missing".into(),
        }),
    }
}

fn read_int(
    doc: &(impl Reader + ?Sized),
    obj: &automerge::ObjId,
    field: &'static str,
) -> Result<i64, SchemaError> {
    let values = doc.all(obj, field.into());
    if values.len() > 1 {
        return Err(SchemaError::HeaderChanged(field));
    }
    match values.first() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Int(v) | ScalarValue::Timestamp(v) => Ok(*v),
            ScalarValue::Uint(v) => i64::try_from(*v).map_err(|_| SchemaError::Header {
                field,
                reason: "out of range".into(),
            }),
            _ => Err(SchemaError::Header {
                field,
                reason: "must be an integer".into(),
            }),
        },
        _ => Err(SchemaError::Header {
            field,
            reason: "missing".into(),
        }),
    }
}

impl Header {
    /// Reads the header of a record.
    pub fn read(doc: &(impl Reader + ?Sized)) -> Result<Header, SchemaError> {
        let headers = doc.all(&ROOT, "header".into());
        if headers.len() > 1 {
            return Err(SchemaError::HeaderChanged("header"));
        }
        let Some((Value::Object(ObjType::Map), obj)) = headers.first().cloned() else {
            return Err(SchemaError::NoHeader);
        };
        let kind_name = read_str(doc, &obj, "kind")?;
        let kind = Kind::parse(&kind_name).ok_or_else(|| SchemaError::Header {
            field: "kind",
            reason: format!("unknown kind {kind_name:?}"),
        })?;
        let schema = read_int(doc, &obj, "schema")?;
        Ok(Header {
            id: read_str(doc, &obj, "id")?,
            kind,
            area: read_str(doc, &obj, "area")?,
            created_by_user: read_str(doc, &obj, "created_by_user")?,
            created_by_device: read_str(doc, &obj, "created_by_device")?,
            created_at: read_int(doc, &obj, "created_at")?,
            schema: u64::try_from(schema).map_err(|_| SchemaError::Header {
                field: "schema",
                reason: "negative".into(),
            })?,
        })
    }

    /// Writes the header into a new record.
    pub fn write<T: Transactable>(&self, tx: &mut T) -> Result<(), automerge::AutomergeError> {
        let obj = tx.put_object(ROOT, "header", ObjType::Map)?;
        tx.put(&obj, "id", self.id.as_str())?;
        tx.put(&obj, "kind", self.kind.name())?;
        tx.put(&obj, "area", self.area.as_str())?;
        tx.put(&obj, "created_by_user", self.created_by_user.as_str())?;
        tx.put(&obj, "created_by_device", self.created_by_device.as_str())?;
        tx.put(&obj, "created_at", self.created_at)?;
        tx.put(&obj, "schema", self.schema as i64)?;
        Ok(())
    }

    /// The first field in which `other` differs, if any.
    pub fn differs_from(&self, other: &Header) -> Option<&'static str> {
        if self.id != other.id {
            Some("id")
        } else if self.kind != other.kind {
            Some("kind")
        } else if self.area != other.area {
            Some("area")
        } else if self.created_by_user != other.created_by_user {
            Some("created_by_user")
        } else if self.created_by_device != other.created_by_device {
            Some("created_by_device")
        } else if self.created_at != other.created_at {
            Some("created_at")
        } else if self.schema != other.schema {
            Some("schema")
        } else {
            None
        }
    }
}
