//! Reading a record's values: straight from its document, or from a
//! [`Snapshot`] that read every map and list of it once.
//!
//! The server judges each pushed record with several walks (the schema,
//! what the changes added, the review block, the listing's row), and
//! automerge seeks every key it is asked for through its columns, which
//! costs more than reading each object whole once. Every walk is written
//! against [`Reader`], so the same code reads either way: a caller with
//! one question asks the document, a caller with many takes a snapshot.

use std::borrow::Cow;
use std::collections::HashMap;

use automerge::{Automerge, ObjId, ObjType, Prop, ReadDoc, Value, ROOT};

/// Every value a key or list position holds, in automerge's order: the
/// value shown by default last, concurrent ones before it.
pub type Values<'a> = Cow<'a, [(Value<'a>, ObjId)]>;

/// What the record crate's walks read of a record.
pub trait Reader {
    /// The document itself, for what a walk reads rarely (change
    /// metadata, texts, values at earlier heads).
    fn doc(&self) -> &Automerge;
    /// Every value of `prop` in `obj` (none if `obj` is not an object).
    fn all(&self, obj: &ObjId, prop: Prop) -> Values<'_>;
    /// The keys of a map, sorted.
    fn keys_of(&self, obj: &ObjId) -> Vec<String>;
    /// The length of a list (0 for anything else).
    fn length_of(&self, obj: &ObjId) -> usize;
    /// What kind of object `obj` is.
    fn type_of(&self, obj: &ObjId) -> Option<ObjType>;

    /// The value `prop` shows by default.
    fn shown(&self, obj: &ObjId, prop: Prop) -> Option<(Value<'_>, ObjId)> {
        match self.all(obj, prop) {
            Cow::Borrowed(all) => all.last().cloned(),
            Cow::Owned(mut all) => all.pop(),
        }
    }

    /// A text object's content (empty for anything else).
    fn text_of(&self, obj: &ObjId) -> String {
        ReadDoc::text(self.doc(), obj).unwrap_or_default()
    }
}

impl Reader for Automerge {
    fn doc(&self) -> &Automerge {
        self
    }

    fn all(&self, obj: &ObjId, prop: Prop) -> Values<'_> {
        Cow::Owned(self.get_all(obj, prop).unwrap_or_default())
    }

    fn keys_of(&self, obj: &ObjId) -> Vec<String> {
        match ReadDoc::object_type(self, obj) {
            Ok(ObjType::Map | ObjType::Table) => ReadDoc::keys(self, obj).collect(),
            _ => Vec::new(),
        }
    }

    fn length_of(&self, obj: &ObjId) -> usize {
        match ReadDoc::object_type(self, obj) {
            Ok(ObjType::List | ObjType::Text) => ReadDoc::length(self, obj),
            _ => 0,
        }
    }

    fn type_of(&self, obj: &ObjId) -> Option<ObjType> {
        ReadDoc::object_type(self, obj).ok()
    }
}

impl<R: Reader + ?Sized> Reader for &R {
    fn doc(&self) -> &Automerge {
        (**self).doc()
    }
    fn all(&self, obj: &ObjId, prop: Prop) -> Values<'_> {
        (**self).all(obj, prop)
    }
    fn keys_of(&self, obj: &ObjId) -> Vec<String> {
        (**self).keys_of(obj)
    }
    fn length_of(&self, obj: &ObjId) -> usize {
        (**self).length_of(obj)
    }
    fn type_of(&self, obj: &ObjId) -> Option<ObjType> {
        (**self).type_of(obj)
    }
}

type Slot = Vec<(Value<'static>, ObjId)>;

enum Object {
    /// Keys sorted, as automerge iterates them.
    Map(Vec<(String, Slot)>),
    List(Vec<Slot>),
    /// Its content stays in the document: few walks read it.
    Text,
}

/// Every map and list of a record, read in one pass per object (a key's
/// concurrent values read only where automerge flags a conflict). Holds
/// the document for what it does not copy (texts, change metadata).
pub struct Snapshot<'a> {
    doc: &'a Automerge,
    objects: HashMap<ObjId, Object>,
}

impl<'a> Snapshot<'a> {
    /// Reads `doc` whole: every object reachable from the root through any
    /// value, shown or concurrent.
    pub fn read(doc: &'a Automerge) -> Snapshot<'a> {
        let mut objects = HashMap::new();
        let mut todo = vec![(ROOT, ObjType::Map)];
        while let Some((obj, kind)) = todo.pop() {
            let mut children = |slot: &Slot| {
                for (value, id) in slot {
                    if let Value::Object(kind) = value {
                        todo.push((id.clone(), *kind));
                    }
                }
            };
            let object = match kind {
                ObjType::Map | ObjType::Table => {
                    let mut entries = Vec::new();
                    for item in doc.map_range(&obj, ..) {
                        let slot: Slot = if item.conflict {
                            owned(doc.get_all(&obj, item.key.as_ref()).unwrap_or_default())
                        } else {
                            vec![(item.value.clone().into_value(), item.id())]
                        };
                        children(&slot);
                        entries.push((item.key.into_owned(), slot));
                    }
                    Object::Map(entries)
                }
                ObjType::List => {
                    let mut items = Vec::new();
                    for item in doc.list_range(&obj, ..) {
                        let slot: Slot = if item.conflict {
                            owned(doc.get_all(&obj, item.index).unwrap_or_default())
                        } else {
                            vec![(item.value.clone().into_value(), item.id())]
                        };
                        children(&slot);
                        items.push(slot);
                    }
                    Object::List(items)
                }
                ObjType::Text => Object::Text,
            };
            objects.insert(obj, object);
        }
        Snapshot { doc, objects }
    }
}

fn owned(values: Vec<(Value<'_>, ObjId)>) -> Slot {
    values
        .into_iter()
        .map(|(v, id)| (v.into_owned(), id))
        .collect()
}

impl Reader for Snapshot<'_> {
    fn doc(&self) -> &Automerge {
        self.doc
    }

    fn all(&self, obj: &ObjId, prop: Prop) -> Values<'_> {
        let slot = match (self.objects.get(obj), &prop) {
            (Some(Object::Map(entries)), Prop::Map(key)) => entries
                .binary_search_by(|(k, _)| k.as_str().cmp(key))
                .ok()
                .map(|i| &entries[i].1),
            (Some(Object::List(items)), Prop::Seq(i)) => items.get(*i),
            _ => None,
        };
        Cow::Borrowed(slot.map_or(&[][..], |s| s.as_slice()))
    }

    fn keys_of(&self, obj: &ObjId) -> Vec<String> {
        match self.objects.get(obj) {
            Some(Object::Map(entries)) => entries.iter().map(|(k, _)| k.clone()).collect(),
            _ => Vec::new(),
        }
    }

    fn length_of(&self, obj: &ObjId) -> usize {
        match self.objects.get(obj) {
            Some(Object::List(items)) => items.len(),
            Some(Object::Text) => ReadDoc::length(self.doc, obj),
            _ => 0,
        }
    }

    fn type_of(&self, obj: &ObjId) -> Option<ObjType> {
        match self.objects.get(obj)? {
            Object::Map(_) => Some(ObjType::Map),
            Object::List(_) => Some(ObjType::List),
            Object::Text => Some(ObjType::Text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::ActorId;

    fn conflicted() -> Automerge {
        let mut a = Automerge::new();
        a.set_actor(ActorId::from(vec![1]));
        let mut tx = a.transaction();
        tx.put(ROOT, "place", "market").unwrap();
        let list = tx.put_object(ROOT, "items", ObjType::List).unwrap();
        let item = tx.insert_object(&list, 0, ObjType::Map).unwrap();
        tx.put(&item, "status", "open").unwrap();
        tx.put_object(ROOT, "notes", ObjType::Text).unwrap();
        tx.commit();
        let mut b = a.fork();
        b.set_actor(ActorId::from(vec![2]));
        for (doc, place, status) in [(&mut a, "well", "done"), (&mut b, "school", "late")] {
            let mut tx = doc.transaction();
            tx.put(ROOT, "place", place).unwrap();
            tx.put(&item, "status", status).unwrap();
            tx.commit();
        }
        a.merge(&mut b).unwrap();
        a
    }

    /// Whatever a walk asks, the snapshot answers as the document does:
    /// every value, in the same order, with the same ids.
    #[test]
    fn a_snapshot_reads_what_the_document_holds() {
        let doc = conflicted();
        let snap = Snapshot::read(&doc);
        let mut objs = vec![ROOT];
        let mut seen = 0;
        while let Some(obj) = objs.pop() {
            seen += 1;
            assert_eq!(snap.type_of(&obj), doc.type_of(&obj));
            assert_eq!(Reader::keys_of(&snap, &obj), Reader::keys_of(&doc, &obj));
            assert_eq!(
                Reader::length_of(&snap, &obj),
                Reader::length_of(&doc, &obj)
            );
            let props: Vec<Prop> = match Reader::type_of(&doc, &obj) {
                Some(ObjType::Map) => Reader::keys_of(&doc, &obj)
                    .into_iter()
                    .map(Prop::Map)
                    .chain([Prop::Map("absent".into())])
                    .collect(),
                Some(ObjType::List) => (0..=Reader::length_of(&doc, &obj)).map(Prop::Seq).collect(),
                _ => Vec::new(),
            };
            for prop in props {
                let (ours, theirs) = (snap.all(&obj, prop.clone()), doc.all(&obj, prop));
                assert_eq!(ours, theirs);
                for (value, id) in ours.iter() {
                    if matches!(value, Value::Object(ObjType::Map | ObjType::List)) {
                        objs.push(id.clone());
                    }
                }
            }
        }
        assert_eq!(seen, 3, "root, the list and its item");
        assert_eq!(snap.all(&ROOT, Prop::Map("place".into())).len(), 2);
        let notes = snap.shown(&ROOT, Prop::Map("notes".into())).unwrap().1;
        assert_eq!(snap.type_of(&notes), Some(ObjType::Text));
    }
}
