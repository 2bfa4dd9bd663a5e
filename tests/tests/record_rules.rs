//! The server checks every incoming change against the record schemas and
//! against who is pushing it. A device with a buggy or hostile app sends
//! changes that break the rules; each is refused with an error naming the
//! record and the field (or the actor), nothing of it is stored, and a
//! valid change from the same device in the same session is stored.

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ReadDoc, ROOT};
use baraza_protocol::{to_heads, DocId, ErrorCode, Message};
use baraza_records::ops;
use baraza_tests::{
    actor_for, device_of, push_since, user_for, RawConnection, ServerProcess, Tablet,
};

/// A change made on a copy of the record, by `actor`.
fn edit(
    base: &Automerge,
    actor: ActorId,
    f: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
) -> Automerge {
    let mut doc = base.fork();
    doc.set_actor(actor);
    let mut tx = doc.transaction();
    f(&mut tx);
    tx.commit();
    doc
}

async fn refused(raw: &mut RawConnection, message: &Message, code: ErrorCode, naming: &str) {
    raw.send(message).await;
    let error = raw.expect_error().await;
    assert_eq!(error.code, code, "{error:?}");
    assert!(!error.fatal, "{error:?}");
    assert!(
        error.message.contains(naming),
        "{error:?} should name {naming}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_break_the_rules_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let liaison = Tablet::new(&server, "liaison's tablet");
    let id_text = liaison
        .create(vec![("title".into(), "Baraza at the chief's camp".into())])
        .unwrap();
    liaison.sync().await;
    let id: DocId = id_text.parse().unwrap();

    let token = server.add_device("tablet with a rogue app");
    let rogue_device = device_of(&token);
    let mine = actor_for(&rogue_device, 1);
    let mut rogue = RawConnection::open(&server, &token).await;
    rogue.hello().await;
    let stored = rogue.record_from_feed(id).await;
    let base = to_heads(&stored.get_heads());
    let (_, header) = stored.get(ROOT, "header").unwrap().unwrap();

    // Moving the record to another area by editing its header.
    let moved = edit(&stored, mine.clone(), |tx| {
        tx.put(&header, "area", "somewhere-else").unwrap();
    });
    refused(
        &mut rogue,
        &push_since(id, &base, &moved),
        ErrorCode::InvalidRecord,
        "header field area",
    )
    .await;

    // A wrong type in a known field.
    let garbled = edit(&stored, mine.clone(), |tx| {
        tx.put(ROOT, "held_at", "last tuesday").unwrap();
    });
    refused(
        &mut rogue,
        &push_since(id, &base, &garbled),
        ErrorCode::InvalidRecord,
        "held_at",
    )
    .await;

    // A change claiming to come from the liaison's device.
    let liaison_actor = actor_for(&device_of(liaison.token()), 9);
    let spoofed = edit(&stored, liaison_actor, |tx| {
        tx.put(ROOT, "place", "forged").unwrap();
    });
    refused(
        &mut rogue,
        &push_since(id, &base, &spoofed),
        ErrorCode::Forbidden,
        "actor",
    )
    .await;

    // A record with no header at all.
    let mut bare = Automerge::new();
    bare.set_actor(mine.clone());
    let mut tx = bare.transaction();
    tx.put(ROOT, "title", "no header").unwrap();
    tx.commit();
    let bare_id = DocId::from_bytes([0xb4; 16]);
    refused(
        &mut rogue,
        &push_since(bare_id, &[], &bare),
        ErrorCode::InvalidRecord,
        "no header",
    )
    .await;

    // The same device's valid change in the same session is stored.
    let mut fixed = stored.fork();
    fixed.set_actor(mine);
    ops::set(
        &mut fixed,
        "place",
        ops::FieldValue::Str("Chief's camp, Kibera".into()),
        ops::Stamp {
            now_ms: 1_700_000_000_000,
            by: &user_for("tablet with a rogue app"),
        },
    )
    .unwrap();
    rogue.send(&push_since(id, &base, &fixed)).await;
    match rogue.next_reply().await {
        Some(Message::Ack(ack)) => assert_eq!(ack.heads, to_heads(&fixed.get_heads())),
        other => panic!("expected an ack, got {other:?}"),
    }

    // Meanwhile another device's valid change goes through; the liaison
    // sees it, the rogue's valid change, and nothing of the refused ones.
    liaison
        .set(&id_text, "facilitator", "Chief Odhiambo")
        .unwrap();
    let report = liaison.sync().await;
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));
    let record = liaison.get(&id_text).unwrap();
    let value = |name: &str| {
        record
            .fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value.clone())
    };
    assert_eq!(value("place").as_deref(), Some("Chief's camp, Kibera"));
    assert_eq!(value("facilitator").as_deref(), Some("Chief Odhiambo"));
    assert_eq!(value("held_at"), None);
    assert!(!liaison.list().unwrap().contains(&bare_id.to_string()));
    let fresh = Tablet::new(&server, "sergeant's tablet");
    fresh.sync().await;
    assert_eq!(fresh.all_heads(), liaison.all_heads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_from_a_newer_schema_survives_an_older_tablets_edit() {
    use baraza_records::ops::FieldValue;
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));

    // A tablet running a newer app version writes a patrol note with a
    // field this version's schema does not know.
    let token = server.add_device("tablet with a newer app");
    let user = user_for("tablet with a newer app");
    let at = ops::Stamp {
        now_ms: 1_700_000_000_000,
        by: &user,
    };
    let device = device_of(&token);
    let id = DocId::from_bytes(*b"newer-app-record");
    let mut doc = Automerge::new();
    doc.set_actor(actor_for(&device, 7));
    let header = baraza_records::Header {
        id: id.to_string(),
        kind: baraza_records::Kind::PatrolNote,
        area: "kibera-north".into(),
        created_by_user: user.clone(),
        created_by_device: device.clone(),
        created_at: 1_700_000_000_000,
        schema: baraza_records::SCHEMA_VERSION + 1,
    };
    ops::create(&mut doc, &header, at).unwrap();
    ops::set(&mut doc, "beat", FieldValue::Str("B4".into()), at).unwrap();
    let mut tx = doc.transaction();
    tx.put(ROOT, "vehicle", "KDA 123X").unwrap();
    tx.commit_with(ops::commit_options("set vehicle", at));
    let mut newer = RawConnection::open(&server, &token).await;
    newer.hello().await;
    newer.send(&push_since(id, &[], &doc)).await;
    assert!(matches!(newer.next_reply().await, Some(Message::Ack(_))));

    // A tablet with this version edits the record and syncs it back.
    let older = Tablet::new(&server, "tablet with this app");
    older.sync().await;
    let id_text = id.to_string();
    older.set(&id_text, "beat", "B5").unwrap();
    let report = older.sync().await;
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));

    // The newer field is still there, on the server and on the tablet.
    let fresh = Tablet::new(&server, "sergeant's tablet");
    fresh.sync().await;
    for tablet in [&older, &fresh] {
        let record = tablet.get(&id_text).unwrap();
        let value = |name: &str| {
            record
                .fields
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.value.clone())
        };
        assert_eq!(value("vehicle").as_deref(), Some("KDA 123X"));
        assert_eq!(value("beat").as_deref(), Some("B5"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_size_limit_is_refused_by_name() {
    use baraza_records::ops::FieldValue;
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(
        &tmp.path().join("server"),
        "[limits]\ndoc_bytes_max = 4096\n",
    );
    let token = server.add_device("tablet pasting a whole book into the notes");
    let device = device_of(&token);
    let id = DocId::from_bytes(*b"oversized-record");
    let mut doc = Automerge::new();
    doc.set_actor(actor_for(&device, 3));
    let header = baraza_records::Header {
        id: id.to_string(),
        kind: baraza_records::Kind::Feedback,
        area: "eastleigh".into(),
        created_by_user: "pc.kiprotich".into(),
        created_by_device: device.clone(),
        created_at: 1_700_000_000_000,
        schema: baraza_records::SCHEMA_VERSION,
    };
    ops::create(&mut doc, &header, 1_700_000_000_000).unwrap();
    // Incompressible text, so the change really is over the limit.
    let mut seed = 7u64;
    let text: String = (0..8000)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + (seed >> 59) as u8 % 26)
        })
        .collect();
    ops::splice(&mut doc, "description", 0, 0, &text, 1_700_000_000_000).unwrap();
    ops::set(
        &mut doc,
        "about",
        FieldValue::Str("x".into()),
        1_700_000_000_000,
    )
    .unwrap();

    let mut raw = RawConnection::open(&server, &token).await;
    raw.hello().await;
    refused(
        &mut raw,
        &push_since(id, &[], &doc),
        ErrorCode::DocTooLarge,
        &id.to_string(),
    )
    .await;

    // Nothing of it was stored.
    let fresh = Tablet::new(&server, "sergeant's tablet");
    let report = fresh.sync().await;
    assert_eq!(report.docs_received, 0);
    assert!(fresh.list().unwrap().is_empty());
}
