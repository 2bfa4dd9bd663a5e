//! Attachments as records see them: a reference (digest, size, type,
//! name, when and by whom) in a list field of [`ATTACHMENT`] items. The
//! bytes are not in the document; the server and the tablet keep them
//! beside it, named by the digest, so a reference can only ever stand for
//! the bytes it was made for.
//!
//! Who may read or upload an attachment follows the records that refer to
//! it, so the question "does this record refer to these bytes" is asked
//! here, from the record itself ([`refs`]), every value counted, those a
//! conflict keeps beside the shown one too.

use automerge::{ObjId, ObjType, ScalarValue, Value, ROOT};
use serde::{Deserialize, Serialize};

use crate::read::Reader;
use crate::schema::{is_attachments, FieldType, Kind, ATTACHMENT};

/// True if `text` is a SHA-256 digest as this crate writes them: 64
/// lowercase hex digits.
pub fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One attachment's reference, as a record holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// The list field it is in (`photos`).
    pub field: String,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// How many bytes.
    pub size_bytes: u64,
    /// Their media type (`image/jpeg`).
    pub mime: String,
    /// The name a person gave them (a file name).
    pub name: String,
    /// When it was attached, milliseconds since 1970.
    pub created_at_ms: i64,
    /// The user who attached it.
    pub created_by: String,
}

/// True if `path` names a list of attachments in records of `kind`: a
/// root field (`photos`) or one in an item of a root list
/// (`observations.2.photos`).
pub fn is_attachment_list(kind: Kind, path: &str) -> bool {
    crate::ops::ListPath::parse(path)
        .and_then(|p| p.spec(kind).ok())
        .is_some_and(|spec| is_attachments(spec.ty))
}

/// The attachment lists of `kind`, for messages: `photos`,
/// `observations.N.photos`.
pub fn attachment_lists(kind: Kind) -> Vec<String> {
    let mut out = Vec::new();
    for field in kind.fields() {
        if is_attachments(field.ty) {
            out.push(field.name.to_string());
        } else if let FieldType::List(parts) = field.ty {
            for part in parts.iter().filter(|p| is_attachments(p.ty)) {
                out.push(format!("{}.N.{}", field.name, part.name));
            }
        }
    }
    out
}

/// Every attachment reference a record of `kind` holds, in field order
/// and list order (lists in items of a root list too, as
/// `observations.2.photos`), each digest once (the first reference to it
/// wins: the same bytes attached twice are one attachment). Items missing
/// a digest or size, or holding one of the wrong type, are passed over:
/// the schema check refuses them before they are stored.
pub fn refs(doc: &(impl Reader + ?Sized), kind: Kind) -> Vec<AttachmentRef> {
    let mut found: Vec<AttachmentRef> = Vec::new();
    for field in kind.fields() {
        if is_attachments(field.ty) {
            for (value, list) in doc.all(&ROOT, field.name.into()).iter() {
                if matches!(value, Value::Object(ObjType::List)) {
                    read_list(doc, list, field.name, &mut found);
                }
            }
            continue;
        }
        let FieldType::List(parts) = field.ty else {
            continue;
        };
        let inner: Vec<&str> = parts
            .iter()
            .filter(|p| is_attachments(p.ty))
            .map(|p| p.name)
            .collect();
        if inner.is_empty() {
            continue;
        }
        for (value, list) in doc.all(&ROOT, field.name.into()).iter() {
            if !matches!(value, Value::Object(ObjType::List)) {
                continue;
            }
            for i in 0..doc.length_of(list) {
                for (item, item_id) in doc.all(list, i.into()).iter() {
                    if !matches!(item, Value::Object(ObjType::Map)) {
                        continue;
                    }
                    for name in &inner {
                        for (value, sub) in doc.all(item_id, (*name).into()).iter() {
                            if matches!(value, Value::Object(ObjType::List)) {
                                let path = format!("{}.{i}.{name}", field.name);
                                read_list(doc, sub, &path, &mut found);
                            }
                        }
                    }
                }
            }
        }
    }
    found
}

/// The references in one list of attachments, added to `found` unless
/// their digest is there already.
fn read_list(
    doc: &(impl Reader + ?Sized),
    list: &ObjId,
    path: &str,
    found: &mut Vec<AttachmentRef>,
) {
    for i in 0..doc.length_of(list) {
        for (item, id) in doc.all(list, i.into()).iter() {
            if !matches!(item, Value::Object(ObjType::Map)) {
                continue;
            }
            if let Some(r) = read_item(doc, id, path) {
                if !found.iter().any(|f| f.sha256 == r.sha256) {
                    found.push(r);
                }
            }
        }
    }
}

/// The reference to `sha256` a record holds, if it holds one.
pub fn find(doc: &(impl Reader + ?Sized), kind: Kind, sha256: &str) -> Option<AttachmentRef> {
    refs(doc, kind).into_iter().find(|r| r.sha256 == sha256)
}

/// Where in list `field` (a root list, or `observations.2.photos`) the
/// items referring to `sha256` are (shown values only: what a removal by
/// position removes), last first, so they can be removed in that order
/// without moving one another.
pub fn positions(doc: &(impl Reader + ?Sized), field: &str, sha256: &str) -> Vec<usize> {
    let list = match crate::ops::ListPath::parse(field) {
        Some(crate::ops::ListPath::Root(name)) => doc.shown(&ROOT, name.into()),
        Some(crate::ops::ListPath::InItem { list, index, field }) => {
            match doc.shown(&ROOT, list.into()) {
                Some((Value::Object(ObjType::List), outer)) => {
                    match doc.shown(&outer, index.into()) {
                        Some((Value::Object(ObjType::Map), item)) => doc.shown(&item, field.into()),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        None => None,
    };
    let Some((Value::Object(ObjType::List), list)) = list else {
        return Vec::new();
    };
    let mut found: Vec<usize> = (0..doc.length_of(&list))
        .filter(|i| match doc.shown(&list, (*i).into()) {
            Some((Value::Object(ObjType::Map), item)) => {
                read_item(doc, &item, field).is_some_and(|r| r.sha256 == sha256)
            }
            _ => false,
        })
        .collect();
    found.reverse();
    found
}

fn read_item(doc: &(impl Reader + ?Sized), item: &ObjId, field: &str) -> Option<AttachmentRef> {
    let scalar = |key: &str| -> Option<ScalarValue> {
        match doc.shown(item, key.into())? {
            (Value::Scalar(s), _) => Some(s.into_owned()),
            _ => None,
        }
    };
    let text = |key: &str| match scalar(key) {
        Some(ScalarValue::Str(s)) => s.to_string(),
        _ => String::new(),
    };
    let int = |key: &str| match scalar(key) {
        Some(ScalarValue::Int(v)) => Some(v),
        Some(ScalarValue::Uint(v)) => i64::try_from(v).ok(),
        Some(ScalarValue::Timestamp(v)) => Some(v),
        _ => None,
    };
    debug_assert_eq!(ATTACHMENT[0].name, "sha256");
    let sha256 = text("sha256");
    if !is_digest(&sha256) {
        return None;
    }
    Some(AttachmentRef {
        field: field.to_string(),
        sha256,
        size_bytes: u64::try_from(int("size_bytes")?).ok()?,
        mime: text("mime"),
        name: text("name"),
        created_at_ms: int("created_at").unwrap_or_default(),
        created_by: text("created_by"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::Header;
    use crate::ops::{self, FieldValue};
    use automerge::Automerge;

    fn meeting() -> Automerge {
        let header = Header {
            id: "0123456789abcdef0123456789abcdef".into(),
            kind: Kind::Meeting,
            area: "kisumu".into(),
            created_by_user: "liaison".into(),
            created_by_device: "dev".into(),
            created_at: 1,
            schema: crate::SCHEMA_VERSION,
        };
        let mut doc = Automerge::new();
        ops::create(&mut doc, &header, 1).unwrap();
        doc
    }

    fn item(sha: &str, size: i64) -> Vec<(&'static str, FieldValue)> {
        vec![
            ("sha256", FieldValue::Str(sha.into())),
            ("size_bytes", FieldValue::Int(size)),
            ("mime", FieldValue::Str("image/jpeg".into())),
            ("name", FieldValue::Str("scene.jpg".into())),
            ("created_at", FieldValue::Time(5)),
            ("created_by", FieldValue::Str("liaison".into())),
        ]
    }

    #[test]
    fn references_are_read_from_every_attachment_field() {
        let mut doc = meeting();
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        ops::append(&mut doc, "photos", &item(&a, 10), 2).unwrap();
        ops::append(&mut doc, "audio", &item(&b, 20), 3).unwrap();
        ops::append(&mut doc, "attendance_sheet", &item(&a, 10), 4).unwrap();
        let found = refs(&doc, Kind::Meeting);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].field, "photos");
        assert_eq!(found[0].size_bytes, 10);
        assert_eq!(found[0].created_at_ms, 5);
        assert_eq!(found[1].sha256, b);
        assert_eq!(find(&doc, Kind::Meeting, &b).unwrap().field, "audio");
        assert!(find(&doc, Kind::Meeting, &"c".repeat(64)).is_none());
    }

    #[test]
    fn an_observations_photos_are_found_and_removed_by_their_path() {
        let header = Header {
            id: "0123456789abcdef0123456789abcdef".into(),
            kind: Kind::PatrolNote,
            area: "kisumu".into(),
            created_by_user: "officer".into(),
            created_by_device: "dev".into(),
            created_at: 1,
            schema: crate::SCHEMA_VERSION,
        };
        let mut doc = Automerge::new();
        ops::create(&mut doc, &header, 1).unwrap();
        ops::append(
            &mut doc,
            "observations",
            &[("text", FieldValue::Str("gate".into()))],
            2,
        )
        .unwrap();
        ops::append(
            &mut doc,
            "observations",
            &[("text", FieldValue::Str("road".into()))],
            3,
        )
        .unwrap();
        let a = "a".repeat(64);
        assert!(is_attachment_list(
            Kind::PatrolNote,
            "observations.1.photos"
        ));
        assert!(is_attachment_list(Kind::PatrolNote, "photos"));
        assert!(!is_attachment_list(Kind::PatrolNote, "observations.1.text"));
        assert!(!is_attachment_list(Kind::PatrolNote, "observations.photos"));
        ops::append(&mut doc, "observations.1.photos", &item(&a, 7), 4).unwrap();
        assert!(
            ops::append(&mut doc, "observations.5.photos", &item(&a, 7), 4).is_err(),
            "no such observation"
        );
        let found = refs(&doc, Kind::PatrolNote);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "observations.1.photos");
        crate::validate(&doc).unwrap();
        assert_eq!(positions(&doc, "observations.1.photos", &a), vec![0]);
        ops::remove(&mut doc, "observations.1.photos", 0, 5).unwrap();
        assert!(refs(&doc, Kind::PatrolNote).is_empty());
        assert_eq!(
            attachment_lists(Kind::PatrolNote),
            vec!["observations.N.photos".to_string(), "photos".to_string()]
        );
    }

    #[test]
    fn a_digest_that_is_not_one_is_refused() {
        let mut doc = meeting();
        for bad in ["A".repeat(64), "a".repeat(63), "g".repeat(64)] {
            let err = ops::append(&mut doc, "photos", &item(&bad, 1), 2);
            assert!(err.is_err(), "{bad} was taken");
        }
        assert!(ops::append(&mut doc, "photos", &item(&"a".repeat(64), -1), 2).is_err());
        assert!(refs(&doc, Kind::Meeting).is_empty());
        assert!(is_digest(&"0".repeat(64)));
    }
}
