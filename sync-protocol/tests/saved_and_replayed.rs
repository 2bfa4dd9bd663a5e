//! A record a tablet loads from a saved document (a cold start's snapshot,
//! and the chunks written after it) is the same record as one it built by
//! replaying every change: the same heads, values and conflicts, and the
//! same changes once it is edited offline and merged with the server's
//! concurrent edits.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjType, ReadDoc, ROOT};
use baraza_protocol::docsync;
use proptest::prelude::*;

/// One edit of a record: which writer, which field, what value.
#[derive(Clone, Debug)]
enum Edit {
    Put {
        writer: u8,
        field: u8,
        value: String,
    },
    Note {
        writer: u8,
        at: usize,
        text: String,
    },
    Item {
        writer: u8,
        text: String,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0u8..3, 0u8..4, "[a-z ]{0,12}").prop_map(|(writer, field, value)| Edit::Put {
            writer,
            field,
            value
        }),
        (0u8..3, 0usize..40, "[a-z ]{1,8}").prop_map(|(writer, at, text)| Edit::Note {
            writer,
            at,
            text
        }),
        (0u8..3, "[a-z]{1,8}").prop_map(|(writer, text)| Edit::Item { writer, text }),
    ]
}

/// A record with a text and a list made up front, as typed records are.
fn record() -> Automerge {
    let mut doc = Automerge::new();
    doc.set_actor(ActorId::from([9u8; 16]));
    let mut tx = doc.transaction();
    tx.put_object(ROOT, "notes", ObjType::Text).unwrap();
    tx.put_object(ROOT, "items", ObjType::List).unwrap();
    tx.commit_with(CommitOptions::default().with_time(1_000));
    doc
}

/// Applies `edit` as one change at a fixed time to a fork of `doc`, under
/// an actor made of its writer and `branch` (changes made from the same
/// state need actors of their own); returns the change's bytes.
fn change(doc: &Automerge, edit: &Edit, branch: u8, time: i64) -> Vec<u8> {
    let writer = match edit {
        Edit::Put { writer, .. } | Edit::Note { writer, .. } | Edit::Item { writer, .. } => *writer,
    };
    let mut fork = doc.fork();
    let mut actor = [writer; 16];
    actor[0] = branch;
    fork.set_actor(ActorId::from(actor));
    let before = fork.get_heads();
    let mut tx = fork.transaction();
    match edit {
        Edit::Put { field, value, .. } => {
            tx.put(ROOT, format!("field{field}"), value.as_str())
                .unwrap();
        }
        Edit::Note { at, text, .. } => {
            let (_, notes) = tx.get(ROOT, "notes").unwrap().unwrap();
            let len = tx.length(&notes);
            tx.splice_text(&notes, (*at).min(len), 0, text).unwrap();
        }
        Edit::Item { text, .. } => {
            let (_, items) = tx.get(ROOT, "items").unwrap().unwrap();
            let len = tx.length(&items);
            tx.insert(&items, len, text.as_str()).unwrap();
        }
    }
    tx.commit_with(CommitOptions::default().with_time(time));
    docsync::encode_changes(&fork.get_changes(&before))
}

/// Everything a reader sees of a record, conflicts included.
fn seen(doc: &Automerge) -> String {
    let mut out = format!("{:?}\n", doc.get_heads());
    for key in doc.keys(ROOT) {
        let all: Vec<_> = doc.get_all(ROOT, &key).unwrap().into_iter().collect();
        out.push_str(&format!("{key}: {all:?}\n"));
    }
    let (_, notes) = doc.get(ROOT, "notes").unwrap().unwrap();
    out.push_str(&format!("notes: {:?}\n", doc.text(&notes).unwrap()));
    let (_, items) = doc.get(ROOT, "items").unwrap().unwrap();
    let items: Vec<_> = (0..doc.length(&items))
        .map(|i| doc.get_all(&items, i).unwrap())
        .collect();
    out.push_str(&format!("items: {items:?}\n"));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_record_loaded_from_its_save_merges_exactly_as_one_replayed_from_its_changes(
        history in prop::collection::vec(edit(), 1..12),
        later in prop::collection::vec(edit(), 0..4),
        offline in prop::collection::vec(edit(), 1..4),
        concurrent in prop::collection::vec(edit(), 0..4),
    ) {
        // The server's copy: its history (writers edit from the latest
        // state, or from the start, so some edits are concurrent), then a
        // snapshot, then later writes.
        let mut server = record();
        let start = server.clone();
        for (i, e) in history.iter().enumerate() {
            let from = if i % 3 == 2 { &start } else { &server };
            let bytes = change(from, e, i as u8, 2_000 + i as i64);
            docsync::apply_chunks(&mut server, &bytes).unwrap();
        }
        let snapshot = server.save_nocompress();
        let snapshot_heads = server.get_heads();
        for (i, e) in later.iter().enumerate() {
            let bytes = change(&server, e, 100 + i as u8, 3_000 + i as i64);
            docsync::apply_chunks(&mut server, &bytes).unwrap();
        }
        let mut cold = snapshot;
        cold.extend(docsync::encode_changes(&server.get_changes(&snapshot_heads)));
        let replay = docsync::encode_changes(&server.get_changes(&[]));

        let mut from_save = Automerge::new();
        docsync::apply_chunks(&mut from_save, &cold).unwrap();
        let mut replayed = Automerge::new();
        docsync::apply_chunks(&mut replayed, &replay).unwrap();
        prop_assert_eq!(seen(&from_save), seen(&server));
        prop_assert_eq!(seen(&replayed), seen(&server));

        // The same offline edits on both tablets make the same changes...
        let mut server_side = server.clone();
        for (i, e) in offline.iter().enumerate() {
            let a = change(&from_save, e, 200, 4_000 + i as i64);
            let b = change(&replayed, e, 200, 4_000 + i as i64);
            prop_assert_eq!(&a, &b);
            docsync::apply_chunks(&mut from_save, &a).unwrap();
            docsync::apply_chunks(&mut replayed, &b).unwrap();
        }
        // ...and merged with the server's concurrent edits, the two end
        // the same, both ways round.
        for (i, e) in concurrent.iter().enumerate() {
            let bytes = change(&server_side, e, 201, 5_000 + i as i64);
            docsync::apply_chunks(&mut server_side, &bytes).unwrap();
        }
        let theirs = docsync::encode_changes(&server_side.get_changes(&server.get_heads()));
        docsync::apply_chunks(&mut from_save, &theirs).unwrap();
        docsync::apply_chunks(&mut replayed, &theirs).unwrap();
        let ours = docsync::encode_changes(&from_save.get_changes(&server.get_heads()));
        docsync::apply_chunks(&mut server_side, &ours).unwrap();
        prop_assert_eq!(seen(&from_save), seen(&replayed));
        prop_assert_eq!(seen(&server_side), seen(&replayed));
    }
}
