//! Records as the field uses them: typed edits on several offline devices
//! merge element by element, conflicts and history name who did what, and
//! the schema check catches what the server must refuse.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ReadDoc, ROOT};
use baraza_records::ops::{self, FieldValue};
use baraza_records::*;
use proptest::prelude::*;

fn header(kind: Kind) -> Header {
    Header {
        id: "0f0f0f0f-0000-4000-8000-000000000001".into(),
        kind,
        area: "kibera-north".into(),
        created_by_user: "liaison.achieng".into(),
        created_by_device: "dev-1".into(),
        created_at: 1_700_000_000_000,
        schema: SCHEMA_VERSION,
    }
}

fn device(doc: &Automerge, actor: u8) -> Automerge {
    let mut d = doc.fork();
    d.set_actor(ActorId::from(vec![actor; 16]));
    d
}

fn s(v: &str) -> FieldValue {
    FieldValue::Str(v.into())
}

#[test]
fn every_kind_starts_valid() {
    for kind in Kind::ALL {
        let mut doc = Automerge::new();
        ops::create(&mut doc, &header(kind), 1_700_000_000_000).unwrap();
        assert_eq!(validate(&doc).unwrap().kind, kind);
    }
}

/// A record made with its first fields is one change, reads as if each
/// field had been set after it, and is smaller saved; a field that does not
/// fit makes nothing.
#[test]
fn a_record_made_with_its_fields_is_one_smaller_change_and_a_bad_field_makes_nothing() {
    let fields = [
        ("title", s("Baraza at the chief's camp")),
        ("place", s("Olympic grounds")),
        ("held_at", FieldValue::Time(1_700_000_100_000)),
    ];
    let mut whole = Automerge::new();
    ops::create_with(&mut whole, &header(Kind::Meeting), &fields, 1_000).unwrap();
    let mut by_field = Automerge::new();
    ops::create(&mut by_field, &header(Kind::Meeting), 1_000).unwrap();
    for (name, value) in &fields {
        ops::set(&mut by_field, name, value.clone(), 1_000).unwrap();
    }
    assert_eq!(whole.get_changes(&[]).len(), 1);
    validate(&whole).unwrap();
    for (name, _) in &fields {
        assert_eq!(
            whole.get(ROOT, *name).unwrap().map(|(v, _)| v.to_string()),
            by_field
                .get(ROOT, *name)
                .unwrap()
                .map(|(v, _)| v.to_string()),
            "{name}"
        );
    }
    assert!(whole.save().len() < by_field.save().len());

    for bad in [
        ("titel", s("typo")),
        ("held_at", s("not a time")),
        ("attendees", s("a list is not set whole")),
    ] {
        let mut doc = Automerge::new();
        assert!(ops::create_with(
            &mut doc,
            &header(Kind::Meeting),
            std::slice::from_ref(&bad),
            1_000
        )
        .is_err());
        assert!(doc.get_changes(&[]).is_empty(), "{bad:?}");
    }
}

#[test]
fn a_liaison_and_an_officer_edit_one_meeting_offline() {
    let mut origin = Automerge::new();
    origin.set_actor(ActorId::from(vec![1; 16]));
    ops::create(&mut origin, &header(Kind::Meeting), 1_000).unwrap();
    ops::splice(
        &mut origin,
        "notes",
        0,
        0,
        "Lighting on Olympic road.",
        2_000,
    )
    .unwrap();

    let mut liaison = device(&origin, 2);
    let mut officer = device(&origin, 3);
    ops::append(
        &mut liaison,
        "attendees",
        &[("name", s("Mama Wanjiru")), ("role", s("elder"))],
        3_000,
    )
    .unwrap();
    ops::append(
        &mut officer,
        "attendees",
        &[("name", s("Otieno")), ("role", s("youth leader"))],
        3_000,
    )
    .unwrap();
    ops::append(
        &mut liaison,
        "action_items",
        &[
            ("text", s("Report lamps")),
            ("owner", s("county")),
            ("status", s("open")),
        ],
        4_000,
    )
    .unwrap();
    ops::append(
        &mut officer,
        "action_items",
        &[
            ("text", s("Night patrols")),
            ("owner", s("OCS")),
            ("status", s("open")),
        ],
        4_000,
    )
    .unwrap();
    ops::splice(&mut liaison, "notes", 0, 0, "Liaison: ", 5_000).unwrap();
    let end = officer
        .text(officer.get(ROOT, "notes").unwrap().unwrap().1)
        .unwrap()
        .chars()
        .count();
    ops::splice(&mut officer, "notes", end, 0, " Officer: agreed.", 5_000).unwrap();
    ops::set(&mut liaison, "place", s("Chief's camp"), 6_000).unwrap();
    ops::set(&mut officer, "place", s("Social hall"), 7_000).unwrap();

    liaison.merge(&mut officer).unwrap();
    officer.merge(&mut liaison).unwrap();
    assert_eq!(liaison.get_heads(), officer.get_heads());
    validate(&liaison).unwrap();

    let (_, attendees) = liaison.get(ROOT, "attendees").unwrap().unwrap();
    assert_eq!(liaison.length(&attendees), 2);
    let (_, items) = liaison.get(ROOT, "action_items").unwrap().unwrap();
    assert_eq!(liaison.length(&items), 2);
    let (_, notes) = liaison.get(ROOT, "notes").unwrap().unwrap();
    assert_eq!(
        liaison.text(&notes).unwrap(),
        "Liaison: Lighting on Olympic road. Officer: agreed."
    );

    let conflicts = conflicts(&liaison);
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].path, "place");
    assert!(baraza_records::has_conflict(&liaison));
    let mut who: Vec<(String, String, i64)> = conflicts[0]
        .values
        .iter()
        .map(|v| (v.value.clone(), v.actor.clone(), v.time))
        .collect();
    who.sort();
    assert_eq!(
        who,
        vec![
            ("Chief's camp".into(), "02".repeat(16), 6),
            ("Social hall".into(), "03".repeat(16), 7),
        ]
    );

    // Setting the field again resolves the conflict.
    ops::set(&mut liaison, "place", s("Chief's camp"), 8_000).unwrap();
    assert!(baraza_records::conflicts(&liaison).is_empty());
    assert!(!baraza_records::has_conflict(&liaison));

    let history = history(&liaison);
    let authors: std::collections::BTreeSet<String> =
        history.iter().map(|h| h.actor.clone()).collect();
    assert!(authors.contains(&"02".repeat(16)) && authors.contains(&"03".repeat(16)));
    let place_edits: Vec<_> = history
        .iter()
        .filter(|h| h.fields.contains(&"place".to_string()))
        .collect();
    assert_eq!(place_edits.len(), 3);
    assert!(history
        .iter()
        .any(|h| h.fields == vec!["attendees".to_string()]
            && h.message.as_deref() == Some("add to attendees")));
}

#[test]
fn the_schema_check_names_what_is_wrong() {
    let mut doc = Automerge::new();
    ops::create(&mut doc, &header(Kind::Feedback), 0).unwrap();
    let before = doc.fork();

    // A wrong type in a known field.
    let mut bad = doc.fork();
    let mut tx = bad.transaction();
    tx.put(ROOT, "anonymous", "maybe").unwrap();
    tx.commit();
    match validate_change(Some(&before), &bad) {
        Err(SchemaError::WrongType { path, .. }) => assert_eq!(path, "anonymous"),
        other => panic!("{other:?}"),
    }

    // A value outside an enum.
    let mut bad = doc.fork();
    let mut tx = bad.transaction();
    tx.put(ROOT, "category", "gossip").unwrap();
    tx.commit();
    assert!(
        matches!(validate(&bad), Err(SchemaError::NotAllowed { path, .. }) if path == "category")
    );

    // A changed header.
    let mut bad = doc.fork();
    let (_, h) = bad.get(ROOT, "header").unwrap().unwrap();
    let mut tx = bad.transaction();
    tx.put(&h, "area", "somewhere-else").unwrap();
    tx.commit();
    assert_eq!(
        validate_change(Some(&before), &bad).unwrap_err(),
        SchemaError::HeaderChanged("area")
    );

    // No header at all.
    let mut bare = Automerge::new();
    let mut tx = bare.transaction();
    tx.put(ROOT, "title", "x").unwrap();
    tx.commit();
    assert_eq!(validate(&bare).unwrap_err(), SchemaError::NoHeader);

    // The edit API refuses bad values before making a change.
    assert!(ops::set(&mut doc, "category", s("gossip"), 0).is_err());
    assert!(ops::set(&mut doc, "no_such_field", s("x"), 0).is_err());
}

#[test]
fn fields_from_a_newer_schema_survive_an_older_clients_edit() {
    let mut newer = Automerge::new();
    ops::create(&mut newer, &header(Kind::PatrolNote), 0).unwrap();
    let mut tx = newer.transaction();
    tx.put(ROOT, "vehicle", "KDA 123X").unwrap();
    tx.commit();
    let mut older = newer.fork();
    ops::set(&mut older, "beat", s("B4"), 0).unwrap();
    validate(&older).unwrap();
    newer.merge(&mut older).unwrap();
    let (v, _) = newer.get(ROOT, "vehicle").unwrap().unwrap();
    assert_eq!(v.as_str(), Some("KDA 123X"));
}

/// A change made straight with automerge, as a buggy app would.
fn raw_change(
    doc: &Automerge,
    f: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
) -> Automerge {
    let mut d = doc.fork();
    let mut tx = d.transaction();
    f(&mut tx);
    tx.commit();
    d
}

#[test]
fn new_unknown_fields_are_refused_where_the_schema_version_is_known() {
    let mut doc = Automerge::new();
    ops::create(&mut doc, &header(Kind::Meeting), 0).unwrap();
    let typo = raw_change(&doc, |tx| {
        tx.put(ROOT, "titel", "Baraza").unwrap();
    });
    match validate_change(Some(&doc), &typo) {
        Err(SchemaError::UnknownField { path, kind, known }) => {
            assert_eq!((path.as_str(), kind), ("titel", "meeting"));
            assert!(known.contains(&"title") && known.contains(&"review"));
        }
        other => panic!("{other:?}"),
    }
    // validate alone judges the whole record as stored: unknown keys are
    // left alone, so records stored before this rule still load.
    validate(&typo).unwrap();

    // Nested: a key the items of a list do not have.
    let attendees = doc.get(ROOT, "attendees").unwrap().unwrap().1;
    let nested = raw_change(&doc, |tx| {
        let item = tx
            .insert_object(&attendees, 0, automerge::ObjType::Map)
            .unwrap();
        tx.put(&item, "nmae", "Otieno").unwrap();
    });
    assert!(matches!(
        validate_change(Some(&doc), &nested),
        Err(SchemaError::UnknownField { path, .. }) if path == "attendees.0.nmae"
    ));

    // A record already holding an unknown key takes other edits, and a
    // delete of the typo; only new values under unknown keys are refused.
    let mut later = typo.fork();
    ops::set(&mut later, "title", s("Baraza"), 0).unwrap();
    validate_change(Some(&typo), &later).unwrap();
    let fixed = raw_change(&typo, |tx| tx.delete(ROOT, "titel").unwrap());
    validate_change(Some(&typo), &fixed).unwrap();
    let again = raw_change(&typo, |tx| {
        tx.put(ROOT, "titel", "Baraza 2").unwrap();
    });
    assert!(matches!(
        validate_change(Some(&typo), &again),
        Err(SchemaError::UnknownField { .. })
    ));

    // A newer schema's record keeps its own fields.
    let mut newer_header = header(Kind::Meeting);
    newer_header.schema = SCHEMA_VERSION + 1;
    let mut newer = Automerge::new();
    ops::create(&mut newer, &newer_header, 0).unwrap();
    let extra = raw_change(&newer, |tx| {
        tx.put(ROOT, "livestream_url", "https://example.org")
            .unwrap();
    });
    validate_change(Some(&newer), &extra).unwrap();
    validate_change(None, &extra).unwrap();
}

#[test]
fn coordinates_are_checked_when_written() {
    let mut doc = Automerge::new();
    ops::create(&mut doc, &header(Kind::PatrolNote), 0).unwrap();
    ops::append(&mut doc, "observations", &[("text", s("Stalls closed"))], 0).unwrap();
    let point = |lat: &str, lon: &str, acc: i64| {
        [
            ("lat", s(lat)),
            ("lon", s(lon)),
            ("accuracy_m", FieldValue::Int(acc)),
        ]
    };
    let mut good = doc.fork();
    ops::set_item_map(
        &mut good,
        "observations",
        0,
        "gps",
        &point("-1.3127", "36.7850", 8),
        0,
    )
    .unwrap();
    validate_change(Some(&doc), &good).unwrap();
    for (lat, lon, acc, field) in [
        ("-91", "36.7850", 8, "lat"),
        ("90.0001", "36.7850", 8, "lat"),
        ("-1.3", "180.5", 8, "lon"),
        ("-1.3", "36.7", 0, "accuracy_m"),
        ("NaN", "36.7", 8, "lat"),
        ("-1,3", "36.7", 8, "lat"),
    ] {
        let mut d = doc.fork();
        let before = d.get_heads();
        match ops::set_item_map(&mut d, "observations", 0, "gps", &point(lat, lon, acc), 0) {
            Err(EditError::BadValue { field: f, .. }) => {
                assert_eq!(f, format!("observations.gps.{field}"))
            }
            other => panic!("{lat},{lon},{acc}: {other:?}"),
        }
        assert_eq!(d.get_heads(), before, "nothing is changed");
    }
    // Written past the edit API, the server's check names the field; an
    // out-of-range point already stored does not block other edits.
    let item = doc
        .get(doc.get(ROOT, "observations").unwrap().unwrap().1, 0)
        .unwrap()
        .unwrap()
        .1;
    let bad = raw_change(&doc, |tx| {
        let gps = tx
            .put_object(&item, "gps", automerge::ObjType::Map)
            .unwrap();
        tx.put(&gps, "lat", "-91").unwrap();
    });
    assert!(matches!(
        validate_change(Some(&doc), &bad),
        Err(SchemaError::OutOfRange { path, .. }) if path == "observations.0.gps.lat"
    ));
    let mut later = bad.fork();
    ops::set(&mut later, "beat", s("B4"), 0).unwrap();
    validate_change(Some(&bad), &later).unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Attend(u8),
    Observe(u8),
    Type(usize, u8),
    Set(u8),
    Status(usize),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::Attend),
        any::<u8>().prop_map(Op::Observe),
        (any::<usize>(), any::<u8>()).prop_map(|(p, c)| Op::Type(p, c)),
        any::<u8>().prop_map(Op::Set),
        any::<usize>().prop_map(Op::Status),
    ]
}

fn apply(doc: &mut Automerge, op: &Op, kind: Kind) -> Option<String> {
    match (op, kind) {
        (Op::Attend(n), Kind::Meeting) => {
            let name = format!("person-{n}-{}", doc.get_actor());
            ops::append(doc, "attendees", &[("name", s(&name))], 0).unwrap();
            Some(name)
        }
        (Op::Observe(n), _) | (Op::Attend(n), _) => {
            let text = format!("seen-{n}-{}", doc.get_actor());
            ops::append(doc, "action_items", &[("text", s(&text))], 0).unwrap();
            Some(text)
        }
        (Op::Type(p, c), _) => {
            let (_, notes) = doc.get(ROOT, "notes").unwrap().unwrap();
            let len = doc.text(&notes).unwrap().chars().count();
            let ch = char::from(b'a' + c % 26).to_string();
            ops::splice(doc, "notes", p % (len + 1), 0, &ch, 0).unwrap();
            None
        }
        (Op::Set(v), _) => {
            ops::set(doc, "place", s(&format!("place-{v}")), 0).unwrap();
            None
        }
        (Op::Status(i), _) => {
            let (_, items) = doc.get(ROOT, "action_items").unwrap().unwrap();
            let len = doc.length(&items);
            if len > 0 {
                ops::set_item(doc, "action_items", i % len, "status", s("done"), 0).unwrap();
            }
            None
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Three devices edit offline and sync in any order: they end identical,
    /// with every list element and every typed character present.
    #[test]
    fn offline_edits_on_three_devices_converge(
        ops_per_device in proptest::collection::vec(proptest::collection::vec(arb_op(), 0..12), 3),
        order in proptest::sample::subsequence(vec![0usize, 1, 2, 3, 4, 5], 6).prop_shuffle(),
    ) {
        let mut origin = Automerge::new();
        ops::create(&mut origin, &header(Kind::Meeting), 0).unwrap();
        let mut devices: Vec<Automerge> = (0..3).map(|i| device(&origin, i as u8 + 1)).collect();
        let mut added: Vec<String> = Vec::new();
        let mut typed = 0usize;
        for (d, ops) in devices.iter_mut().zip(&ops_per_device) {
            for op in ops {
                if let Some(x) = apply(d, op, Kind::Meeting) {
                    added.push(x);
                }
                if matches!(op, Op::Type(..)) {
                    typed += 1;
                }
            }
        }
        // Pairwise merges in a random order, then a final round so everyone
        // has everything.
        let pairs = [(0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)];
        for i in order {
            let (a, b) = pairs[i];
            let mut other = devices[b].clone();
            devices[a].merge(&mut other).unwrap();
        }
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    let mut other = devices[b].clone();
                    devices[a].merge(&mut other).unwrap();
                }
            }
        }
        let heads = devices[0].get_heads();
        for d in &devices {
            prop_assert_eq!(d.get_heads(), heads.clone());
            validate(d).unwrap();
        }
        let d = &devices[0];
        let mut present: Vec<String> = Vec::new();
        for list in ["attendees", "action_items"] {
            let (_, obj) = d.get(ROOT, list).unwrap().unwrap();
            for i in 0..d.length(&obj) {
                let (_, item) = d.get(&obj, i).unwrap().unwrap();
                for key in ["name", "text"] {
                    if let Some((v, _)) = d.get(&item, key).unwrap() {
                        present.push(v.as_str().unwrap_or_default().to_string());
                    }
                }
            }
        }
        added.sort();
        present.sort();
        prop_assert_eq!(present, added);
        let (_, notes) = d.get(ROOT, "notes").unwrap().unwrap();
        prop_assert_eq!(d.text(&notes).unwrap().chars().count(), typed);
    }
}

#[test]
fn a_follow_up_is_one_change_that_moves_the_status() {
    let mut doc = Automerge::new();
    ops::create(&mut doc, &header(Kind::Feedback), 0).unwrap();
    let before = doc.get_changes(&[]).len();
    ops::follow_up(
        &mut doc,
        "acknowledged",
        "Called the complainant back",
        ops::Stamp {
            now_ms: 5_000,
            by: "sgt.mwangi",
        },
    )
    .unwrap();
    assert_eq!(doc.get_changes(&[]).len(), before + 1);
    validate(&doc).unwrap();
    let (status, _) = doc.get(ROOT, "status").unwrap().unwrap();
    assert_eq!(status.as_str(), Some("acknowledged"));
    let last = history(&doc).pop().unwrap();
    assert_eq!(last.user.as_deref(), Some("sgt.mwangi"));
    assert_eq!(
        last.fields,
        vec!["follow_ups".to_string(), "status".to_string()]
    );
    assert!(ops::follow_up(&mut doc, "lost", "x", 0).is_err());
}
