//! What a supervisor needs to see of a record beyond its values: fields
//! set differently on several devices (conflicts), and who changed what,
//! when (history).

use automerge::{Automerge, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value, ROOT};
use serde::Serialize;

/// One of the values a conflicted field holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConflictValue {
    /// The value, as text.
    pub value: String,
    /// The automerge actor that set it (hex): maps to a device.
    pub actor: String,
    /// When the change that set it was made (seconds since the epoch).
    pub time: i64,
    /// The user the change names, if any.
    pub user: Option<String>,
    /// True for the value automerge shows by default.
    pub winner: bool,
}

/// A field that devices set differently while offline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// Dotted path of the field (`place`, `action_items.1.status`).
    pub path: String,
    /// Every value, the default one last.
    pub values: Vec<ConflictValue>,
}

/// One change in a record's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The change hash (hex).
    pub hash: String,
    /// The actor that made it (hex): maps to a device.
    pub actor: String,
    /// When (seconds since the epoch), as the device's clock said.
    pub time: i64,
    /// The change's message, if any (the SDK writes the operation's name).
    pub message: Option<String>,
    /// The user the change names, if any.
    pub user: Option<String>,
    /// Top-level fields it touched.
    pub fields: Vec<String>,
}

/// Renders a value for people.
pub fn show(doc: &Automerge, value: &Value<'_>, obj: &ObjId) -> String {
    match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => s.to_string(),
            other => other.to_string(),
        },
        Value::Object(ObjType::Text) => doc.text(obj).unwrap_or_default(),
        Value::Object(ObjType::List) => format!("[{} items]", doc.length(obj)),
        Value::Object(t) => format!("<{t:?}>").to_lowercase(),
    }
}

/// The user a change message names (`"set place by cpl.achieng"`).
pub fn user_of(message: Option<&str>) -> Option<String> {
    message
        .and_then(|m| m.rsplit_once(crate::ops::BY))
        .map(|(_, user)| user.to_string())
}

fn who(doc: &Automerge, id: &ObjId) -> (String, i64, Option<String>) {
    let actor = match id {
        ObjId::Id(_, actor, _) => actor.to_hex_string(),
        ObjId::Root => String::new(),
    };
    let meta = doc
        .hash_for_opid(id)
        .and_then(|h| doc.get_change_meta_by_hash(&h));
    let time = meta.as_ref().map(|m| m.timestamp).unwrap_or(0);
    let user = meta.as_ref().and_then(|m| user_of(m.message.as_deref()));
    (actor, time, user)
}

fn collect(doc: &Automerge, obj: &ObjId, prefix: &str, out: &mut Vec<Conflict>) {
    let props: Vec<Prop> = match doc.object_type(obj) {
        Ok(ObjType::Map) | Ok(ObjType::Table) => doc.keys(obj).map(Prop::Map).collect(),
        Ok(ObjType::List) => (0..doc.length(obj)).map(Prop::Seq).collect(),
        _ => return,
    };
    for prop in props {
        let name = match &prop {
            Prop::Map(k) => k.clone(),
            Prop::Seq(i) => i.to_string(),
        };
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        let values = doc.get_all(obj, prop).unwrap_or_default();
        if values.len() > 1 {
            let n = values.len();
            out.push(Conflict {
                path: path.clone(),
                values: values
                    .iter()
                    .enumerate()
                    .map(|(i, (v, id))| {
                        let (actor, time, user) = who(doc, id);
                        ConflictValue {
                            value: show(doc, v, id),
                            actor,
                            time,
                            user,
                            winner: i + 1 == n,
                        }
                    })
                    .collect(),
            });
        }
        // Recurse into the value shown, where edits keep happening.
        if let Some((Value::Object(ObjType::Map | ObjType::List), child)) = values.last().cloned() {
            collect(doc, &child, &path, out);
        }
    }
}

/// The record's review state (`draft` if it has none).
pub fn review_state(doc: &Automerge) -> String {
    match doc.get(ROOT, "review") {
        Ok(Some((Value::Object(ObjType::Map), review))) => match doc.get(&review, "state") {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(v) => v.to_string(),
                _ => "draft".into(),
            },
            _ => "draft".into(),
        },
        _ => "draft".into(),
    }
}

/// A comment left with a review decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReviewComment {
    /// Who wrote it.
    pub by: String,
    /// When (milliseconds since the epoch).
    pub at: i64,
    /// What it says.
    pub text: String,
}

/// The comments left with review decisions, oldest first.
pub fn review_comments(doc: &Automerge) -> Vec<ReviewComment> {
    let Ok(Some((Value::Object(ObjType::Map), review))) = doc.get(ROOT, "review") else {
        return Vec::new();
    };
    let Ok(Some((Value::Object(ObjType::List), list))) = doc.get(&review, "comments") else {
        return Vec::new();
    };
    let text = |obj: &ObjId, key: &str| match doc.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(v) => v.to_string(),
            other => other.to_string(),
        },
        _ => String::new(),
    };
    (0..doc.length(&list))
        .filter_map(|i| match doc.get(&list, i) {
            Ok(Some((Value::Object(ObjType::Map), item))) => Some(ReviewComment {
                by: text(&item, "by"),
                at: match doc.get(&item, "at") {
                    Ok(Some((Value::Scalar(s), _))) => s.as_i64().unwrap_or(0),
                    _ => 0,
                },
                text: text(&item, "text"),
            }),
            _ => None,
        })
        .collect()
}

/// Every conflicted field of a record, nested ones included.
pub fn conflicts(doc: &Automerge) -> Vec<Conflict> {
    let mut out = Vec::new();
    collect(doc, &ROOT, "", &mut out);
    out
}

/// What one change did, as the server's write rules need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeEffects {
    /// Top-level fields it touched, sorted.
    pub fields: Vec<String>,
    /// Review states it set (`review.state`), in order.
    pub review_states: Vec<String>,
}

/// What `change` (which must be in `doc`) did, seen against its own
/// dependencies: a value it set counts even if a concurrent change wins.
pub fn effects(doc: &Automerge, change: &automerge::Change) -> ChangeEffects {
    let mut out = ChangeEffects::default();
    for patch in doc.diff(change.deps(), &[change.hash()]) {
        let field = match (patch.path.first(), &patch.action) {
            (Some((_, Prop::Map(k))), _) => Some(k.clone()),
            (Some((_, Prop::Seq(_))), _) => None,
            (
                None,
                automerge::PatchAction::PutMap { key, .. }
                | automerge::PatchAction::DeleteMap { key }
                | automerge::PatchAction::Conflict {
                    prop: Prop::Map(key),
                }
                | automerge::PatchAction::Increment {
                    prop: Prop::Map(key),
                    ..
                },
            ) => Some(key.clone()),
            (None, _) => None,
        };
        let in_review = matches!(patch.path.as_slice(), [(_, Prop::Map(k))] if k == "review");
        if let (true, automerge::PatchAction::PutMap { key, value, .. }) =
            (in_review, &patch.action)
        {
            if key == "state" {
                out.review_states.push(match &value.0 {
                    Value::Scalar(s) => match s.as_ref() {
                        ScalarValue::Str(v) => v.to_string(),
                        other => other.to_string(),
                    },
                    Value::Object(t) => format!("{t:?}"),
                });
            }
        }
        out.fields.extend(field);
    }
    out.fields.sort();
    out.fields.dedup();
    out
}

/// The record's changes, oldest first, with the fields each touched.
pub fn history(doc: &Automerge) -> Vec<HistoryEntry> {
    doc.get_changes(&[])
        .iter()
        .map(|change| HistoryEntry {
            hash: change.hash().to_string(),
            actor: change.actor_id().to_hex_string(),
            time: change.timestamp(),
            message: change.message().map(|m| m.to_string()),
            user: user_of(change.message()),
            fields: effects(doc, change).fields,
        })
        .collect()
}
