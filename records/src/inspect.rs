//! What a supervisor needs to see of a record beyond its values: fields
//! set differently on several devices (conflicts), and who changed what,
//! when (history).

use std::collections::HashMap;
use std::ops::ControlFlow;

use automerge::{
    ActorId, Automerge, ChangeHash, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value, ROOT,
};
use serde::Serialize;

use crate::read::Reader;
use crate::schema::ReviewState;

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
pub fn show(doc: &(impl Reader + ?Sized), value: &Value<'_>, obj: &ObjId) -> String {
    match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => s.to_string(),
            other => other.to_string(),
        },
        Value::Object(ObjType::Text) => doc.text_of(obj),
        Value::Object(ObjType::List) => format!("[{} items]", doc.length_of(obj)),
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

/// Walks every field of `obj` (nested ones included) that holds more than
/// one value, giving `found` its dotted path and values, until `found`
/// breaks.
fn each_conflict(
    doc: &(impl Reader + ?Sized),
    obj: &ObjId,
    prefix: &str,
    found: &mut impl FnMut(String, &[(Value<'_>, ObjId)]) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let props: Vec<Prop> = match doc.type_of(obj) {
        Some(ObjType::Map | ObjType::Table) => {
            doc.keys_of(obj).into_iter().map(Prop::Map).collect()
        }
        Some(ObjType::List) => (0..doc.length_of(obj)).map(Prop::Seq).collect(),
        _ => return ControlFlow::Continue(()),
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
        let values = doc.all(obj, prop);
        if values.len() > 1 {
            found(path.clone(), &values)?;
        }
        // Recurse into the value shown, where edits keep happening.
        if let Some((Value::Object(ObjType::Map | ObjType::List), child)) = values.last() {
            each_conflict(doc, child, &path, found)?;
        }
    }
    ControlFlow::Continue(())
}

/// The record's review state: `draft` if it has none, or holds a value the
/// schema never allowed (a record from before the schema checked it).
pub fn review_state(doc: &(impl Reader + ?Sized)) -> ReviewState {
    let stored = match doc.shown(&ROOT, "review".into()) {
        Some((Value::Object(ObjType::Map), review)) => match doc.shown(&review, "state".into()) {
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Str(v) => ReviewState::parse(v),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    stored.unwrap_or(ReviewState::Draft)
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
pub fn review_comments(doc: &(impl Reader + ?Sized)) -> Vec<ReviewComment> {
    let Some((Value::Object(ObjType::Map), review)) = doc.shown(&ROOT, "review".into()) else {
        return Vec::new();
    };
    let Some((Value::Object(ObjType::List), list)) = doc.shown(&review, "comments".into()) else {
        return Vec::new();
    };
    let text = |obj: &ObjId, key: &str| match doc.shown(obj, key.into()) {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(v) => v.to_string(),
            other => other.to_string(),
        },
        _ => String::new(),
    };
    (0..doc.length_of(&list))
        .filter_map(|i| match doc.shown(&list, i.into()) {
            Some((Value::Object(ObjType::Map), item)) => Some(ReviewComment {
                by: text(&item, "by"),
                at: match doc.shown(&item, "at".into()) {
                    Some((Value::Scalar(s), _)) => s.as_i64().unwrap_or(0),
                    _ => 0,
                },
                text: text(&item, "text"),
            }),
            _ => None,
        })
        .collect()
}

/// Most characters of a [`title`].
pub const TITLE_CHARS_MAX: usize = 120;

/// What tells a record apart in a list: a meeting's `title`, a patrol
/// note's `beat`, a feedback's `about`, or else the first non-empty line of
/// its `description` (or `notes`), cut to [`TITLE_CHARS_MAX`] characters.
/// None for contact details: a list shows no one's name or phone number.
pub fn title(doc: &(impl Reader + ?Sized), kind: crate::Kind) -> Option<String> {
    use crate::Kind;
    let (first, fallback) = match kind {
        Kind::Meeting => ("title", "notes"),
        Kind::PatrolNote => ("beat", "notes"),
        Kind::Feedback => ("about", "description"),
        Kind::FeedbackContact => return None,
    };
    let line = |key: &str| {
        let (value, obj) = doc.shown(&ROOT, key.into())?;
        if !matches!(value, Value::Object(ObjType::Text) | Value::Scalar(_)) {
            return None;
        }
        let text = show(doc, &value, &obj);
        let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
        Some(line.chars().take(TITLE_CHARS_MAX).collect::<String>())
    };
    line(first).or_else(|| line(fallback))
}

/// When the record's standing `submitted` review state was set: the
/// claimed time (ms) of the change that set it, the latest if concurrent
/// changes each set it. None unless the state is `submitted` now. Reads
/// the value's op ids, no diff: cheap enough for every admitted write.
pub fn submitted_at(doc: &(impl Reader + ?Sized)) -> Option<i64> {
    let Some((Value::Object(ObjType::Map), review)) = doc.shown(&ROOT, "review".into()) else {
        return None;
    };
    let am = doc.doc();
    doc.all(&review, "state".into())
        .iter()
        .filter(|(v, _)| v.as_str() == Some("submitted"))
        .filter_map(|(_, id)| {
            let meta = am.get_change_meta_by_hash(&am.hash_for_opid(id)?)?;
            Some(meta.timestamp.saturating_mul(1000))
        })
        .max()
}

/// Every conflicted field of a record, nested ones included.
pub fn conflicts(doc: &(impl Reader + ?Sized)) -> Vec<Conflict> {
    let mut out = Vec::new();
    let _ = each_conflict(doc, &ROOT, "", &mut |path, values| {
        let n = values.len();
        out.push(Conflict {
            path,
            values: values
                .iter()
                .enumerate()
                .map(|(i, (v, id))| {
                    let (actor, time, user) = who(doc.doc(), id);
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
        ControlFlow::Continue(())
    });
    out
}

/// Whether any field of a record holds conflicting values: the walk of
/// [`conflicts`], stopping at the first, without reading who set what
/// (every admitted write asks, for the list row).
pub fn has_conflict(doc: &(impl Reader + ?Sized)) -> bool {
    each_conflict(doc, &ROOT, "", &mut |_, _| ControlFlow::Break(())).is_break()
}

/// What one change did, as its history entry shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeEffects {
    /// Top-level fields it touched, sorted.
    pub fields: Vec<String>,
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

/// What a change did to a field of a review comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommentFieldEdit {
    /// Set a value.
    Put,
    /// Deleted the field.
    Delete,
    /// Put an object (a map, list or text) where a plain value belongs.
    Object,
}

/// One thing a change did to a record's review block (`review`, its
/// `state`, its `comments` and the comments themselves), read from the
/// change's own operations and seen against its own dependencies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReviewEdit {
    /// Made the review block where the record had none, and it stands alone.
    BlockMade,
    /// Deleted the review block, overwrote it, or put a value beside it
    /// (a conflict on the root key `review`).
    BlockReplaced,
    /// Set the review state (deleting it reads as `draft`).
    State {
        /// The state as the change's dependencies had it (every value, if
        /// they conflicted; `draft` if there was none).
        from: Vec<String>,
        /// The state it set.
        to: String,
        /// Values standing beside it in the document now: the states of
        /// concurrent changes it did not overwrite.
        beside: Vec<String>,
    },
    /// Made the comments list where there was none, and it stands alone.
    CommentsMade,
    /// Deleted or overwrote the comments list, or put a value beside it.
    CommentsReplaced,
    /// Added a comment to the list.
    CommentAdded {
        /// Every `by` the change gave it (exactly one if well made).
        by: Vec<String>,
        /// False if it went before a comment the dependencies had.
        appended: bool,
    },
    /// Deleted or overwrote an item of the comments list, or inserted
    /// something that is not a comment (a map).
    CommentRemoved,
    /// Changed a field of a comment.
    CommentField {
        /// The comment's author as the dependencies had it (every value,
        /// if they conflicted); None for a comment the same change added.
        author: Option<Vec<String>>,
        /// The field.
        field: String,
        /// What was done to it.
        edit: CommentFieldEdit,
    },
    /// Set a key of the review block other than `state` and `comments`.
    OtherField(String),
}

type OpKey = (u64, ActorId);

fn op_key(id: &ObjId) -> Option<OpKey> {
    match id {
        ObjId::Id(counter, actor, _) => Some((*counter, actor.clone())),
        ObjId::Root => None,
    }
}

fn legacy_key(id: &automerge::legacy::OpId) -> OpKey {
    (id.counter(), id.actor().clone())
}

fn text_of(value: &Value<'_>) -> String {
    match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(v) => v.to_string(),
            other => other.to_string(),
        },
        Value::Object(t) => format!("<{t:?}>").to_lowercase(),
    }
}

fn scalar_text(value: &ScalarValue) -> String {
    match value {
        ScalarValue::Str(v) => v.to_string(),
        other => other.to_string(),
    }
}

/// Every value of `prop` in `obj` as of `heads`.
fn values_at(
    doc: &Automerge,
    obj: &ObjId,
    prop: impl Into<Prop>,
    heads: &[ChangeHash],
) -> Vec<(Value<'static>, ObjId)> {
    doc.get_all_at(obj, prop, heads)
        .unwrap_or_default()
        .into_iter()
        .map(|(v, id)| (v.into_owned(), id))
        .collect()
}

struct ReviewMapNow {
    id: ObjId,
    state: Vec<(OpKey, String)>,
    comments: Vec<OpKey>,
}

struct CommentsNow {
    id: ObjId,
    /// Where each item (by the id of its value) stands in the list.
    index: HashMap<OpKey, usize>,
}

/// A record's review block as the document holds it now, every
/// conflicting value included: read once to judge each of several changes
/// ([`ReviewBlock::edits`]).
#[derive(Default)]
pub struct ReviewBlock {
    block: Vec<OpKey>,
    maps: HashMap<OpKey, ReviewMapNow>,
    lists: HashMap<OpKey, CommentsNow>,
    items: HashMap<OpKey, ObjId>,
}

impl ReviewBlock {
    /// Reads the review block of the record `doc` holds.
    pub fn read(doc: &(impl Reader + ?Sized)) -> ReviewBlock {
        let mut now = ReviewBlock::default();
        for (value, id) in doc.all(&ROOT, "review".into()).iter() {
            let Some(key) = op_key(id) else { continue };
            now.block.push(key.clone());
            if !matches!(value, Value::Object(ObjType::Map)) {
                continue;
            }
            let state = doc
                .all(id, "state".into())
                .iter()
                .filter_map(|(v, vid)| op_key(vid).map(|k| (k, text_of(v))))
                .collect();
            let mut comments = Vec::new();
            for (value, list) in doc.all(id, "comments".into()).iter() {
                let Some(list_key) = op_key(list) else {
                    continue;
                };
                comments.push(list_key.clone());
                if !matches!(value, Value::Object(ObjType::List)) {
                    continue;
                }
                let mut index = HashMap::new();
                for i in 0..doc.length_of(list) {
                    for (value, item) in doc.all(list, i.into()).iter() {
                        let Some(item_key) = op_key(item) else {
                            continue;
                        };
                        index.insert(item_key.clone(), i);
                        if matches!(value, Value::Object(ObjType::Map)) {
                            now.items.insert(item_key, item.clone());
                        }
                    }
                }
                now.lists.insert(
                    list_key,
                    CommentsNow {
                        id: list.clone(),
                        index,
                    },
                );
            }
            now.maps.insert(
                key,
                ReviewMapNow {
                    id: id.clone(),
                    state,
                    comments,
                },
            );
        }
        now
    }
}

/// Where an operation lands in the review block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Map,
    List,
    Item,
}

/// Everything `change` (which must be in `doc`) did to the review block,
/// in the order of its operations (comments added last). Every operation
/// on the root key `review`, on a review map, on a comments list or on a
/// comment counts, whether or not it wins against concurrent changes; an
/// operation on an object the review block no longer holds changes
/// nothing and is left out.
pub fn review_edits(doc: &Automerge, change: &automerge::Change) -> Vec<ReviewEdit> {
    ReviewBlock::read(doc).edits(doc, change)
}

impl ReviewBlock {
    /// What `change` (which must be in `doc`, the record this block was
    /// read from) did to the review block: [`review_edits`].
    pub fn edits(&self, doc: &Automerge, change: &automerge::Change) -> Vec<ReviewEdit> {
        let deps = change.deps();
        let expanded = change.decode();
        let actor = change.actor_id();
        let start = change.start_op().get();
        let mut out = Vec::new();
        // Review objects this change made (a review map, a comments list, a comment).
        let mut made: HashMap<OpKey, Place> = HashMap::new();
        // Comments this change added: their list and the `by`s given.
        let mut added: Vec<(OpKey, OpKey, Vec<String>)> = Vec::new();
        for (offset, op) in expanded.operations.iter().enumerate() {
            let this: OpKey = (start + offset as u64, actor.clone());
            let field = match &op.key {
                automerge::legacy::Key::Map(k) => Some(k.to_string()),
                automerge::legacy::Key::Seq(_) => None,
            };
            let obj = match &op.obj {
                automerge::legacy::ObjectId::Root => {
                    if field.as_deref() != Some("review") {
                        continue;
                    }
                    let alone = self.block == [this.clone()];
                    match op.action {
                        automerge::legacy::OpType::Make(ObjType::Map) => {
                            made.insert(this, Place::Map);
                            out.push(if op.pred.is_empty() && alone {
                                ReviewEdit::BlockMade
                            } else {
                                ReviewEdit::BlockReplaced
                            });
                        }
                        _ => out.push(ReviewEdit::BlockReplaced),
                    }
                    continue;
                }
                automerge::legacy::ObjectId::Id(id) => legacy_key(id),
            };
            let new = made.get(&obj).copied();
            let place = match new {
                Some(place) => place,
                None if self.maps.contains_key(&obj) => Place::Map,
                None if self.lists.contains_key(&obj) => Place::List,
                None if self.items.contains_key(&obj) => Place::Item,
                None => continue,
            };
            let is_new = new.is_some();
            match place {
                Place::Map => {
                    let map = self.maps.get(&obj);
                    match field.as_deref() {
                        Some("state") => {
                            let to = match &op.action {
                                automerge::legacy::OpType::Put(v) => scalar_text(v),
                                automerge::legacy::OpType::Delete => "draft".to_string(),
                                automerge::legacy::OpType::Make(t) => {
                                    format!("<{t:?}>").to_lowercase()
                                }
                                other => format!("{other:?}"),
                            };
                            let mut from: Vec<String> = match (is_new, map) {
                                (false, Some(map)) => values_at(doc, &map.id, "state", deps)
                                    .iter()
                                    .map(|(v, _)| text_of(v))
                                    .collect(),
                                _ => Vec::new(),
                            };
                            if from.is_empty() {
                                from.push("draft".to_string());
                            }
                            let beside = match map {
                                Some(map) if map.state.iter().any(|(k, _)| *k == this) => map
                                    .state
                                    .iter()
                                    .filter(|(k, _)| *k != this)
                                    .map(|(_, v)| v.clone())
                                    .collect(),
                                _ => Vec::new(),
                            };
                            out.push(ReviewEdit::State { from, to, beside });
                        }
                        Some("comments") => {
                            let alone = map.is_some_and(|m| m.comments == [this.clone()]);
                            match op.action {
                                automerge::legacy::OpType::Make(ObjType::List) => {
                                    made.insert(this, Place::List);
                                    out.push(if op.pred.is_empty() && alone {
                                        ReviewEdit::CommentsMade
                                    } else {
                                        ReviewEdit::CommentsReplaced
                                    });
                                }
                                _ => out.push(ReviewEdit::CommentsReplaced),
                            }
                        }
                        other => out.push(ReviewEdit::OtherField(
                            other.unwrap_or("(a list position)").to_string(),
                        )),
                    }
                }
                Place::List => {
                    if op.insert && op.action == automerge::legacy::OpType::Make(ObjType::Map) {
                        made.insert(this.clone(), Place::Item);
                        added.push((this, obj, Vec::new()));
                    } else {
                        out.push(ReviewEdit::CommentRemoved);
                    }
                }
                Place::Item => {
                    let name = field.unwrap_or_else(|| "(a list position)".to_string());
                    let edit = match &op.action {
                        automerge::legacy::OpType::Delete => CommentFieldEdit::Delete,
                        automerge::legacy::OpType::Make(_) => CommentFieldEdit::Object,
                        _ => CommentFieldEdit::Put,
                    };
                    if is_new {
                        if let Some((_, _, by)) = added.iter_mut().find(|(k, _, _)| *k == obj) {
                            if name == "by" {
                                by.push(match &op.action {
                                    automerge::legacy::OpType::Put(v) => scalar_text(v),
                                    _ => String::new(),
                                });
                            }
                        }
                        if edit != CommentFieldEdit::Put {
                            out.push(ReviewEdit::CommentField {
                                author: None,
                                field: name,
                                edit,
                            });
                        }
                    } else {
                        let author = self
                            .items
                            .get(&obj)
                            .map(|item| {
                                values_at(doc, item, "by", deps)
                                    .iter()
                                    .map(|(v, _)| text_of(v))
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.push(ReviewEdit::CommentField {
                            author: Some(author),
                            field: name,
                            edit,
                        });
                    }
                }
            }
        }
        for (item, list, by) in added {
            let appended = match self.lists.get(&list) {
                Some(comments) if !made.contains_key(&list) => match comments.index.get(&item) {
                    Some(&at) => {
                        let len = doc.length_at(&comments.id, deps);
                        (0..len).all(|i| {
                            values_at(doc, &comments.id, i, deps)
                                .iter()
                                .filter_map(|(_, id)| op_key(id))
                                .all(|earlier| comments.index.get(&earlier).is_none_or(|&e| e < at))
                        })
                    }
                    None => true,
                },
                _ => true,
            };
            out.push(ReviewEdit::CommentAdded { by, appended });
        }
        out
    }
}
