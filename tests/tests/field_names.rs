//! A typo in a field name is not stored. An officer types `titel` for
//! `title`: the tablet refuses it, naming the fields a meeting has, and
//! nothing reaches the server. An app that writes unknown fields anyway
//! (a bug, or a hostile device) is refused by the server with
//! `unknown_field`, wherever in the record the key is (root, list items,
//! the review block, the header), and its next good change is stored. A
//! record written by a newer app, whose header names a newer schema
//! version, keeps its extra fields.

use std::path::Path;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, ReadDoc, ROOT};
use baraza_protocol::{to_heads, DocId, ErrorCode, Message};
use baraza_records::ops::{self, FieldValue, Stamp};
use baraza_tests::{
    actor_for, cli_fails, device_of, push_since, run_cli, user_for, RawConnection, ServerProcess,
    Tablet,
};

/// One change on a copy of `base`, by `actor`.
fn edit(
    base: &Automerge,
    actor: &ActorId,
    f: impl FnOnce(&mut automerge::transaction::Transaction<'_>),
) -> Automerge {
    let mut doc = base.fork();
    doc.set_actor(actor.clone());
    let mut tx = doc.transaction();
    f(&mut tx);
    tx.commit();
    doc
}

fn init_cli(server: &ServerProcess, dir: &Path, name: &str) {
    let token = server.add_device(name);
    run_cli(
        dir,
        &[
            "init",
            "--server",
            &server.url(),
            "--ca",
            server.ca_path().to_str().unwrap(),
            "--token",
            &token,
            "--user",
            &user_for(name),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_field_is_refused_on_the_tablet_naming_the_real_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let dir = tmp.path().join("cli-tablet");
    init_cli(&server, &dir, "officer's tablet");

    let id = run_cli(&dir, &["meeting", "new", "Baraza at the chief's camp"]);
    let id = id.trim();
    let err = cli_fails(&dir, &["set", id, "titel", "Baraza with the elders"]);
    assert!(err.contains("\"titel\""), "{err}");
    for field in ["title", "held_at", "place", "facilitator", "notes"] {
        assert!(err.contains(field), "the error should name {field}: {err}");
    }
    // A feedback's text goes in `description`; `text` is refused, and the
    // record is not created at all.
    let before = run_cli(&dir, &["list"]);
    let err = cli_fails(
        &dir,
        &[
            "new",
            "--kind",
            "feedback",
            "--set",
            "text=The patrol car blocks the market gate",
        ],
    );
    assert!(
        err.contains("\"text\"") && err.contains("description"),
        "{err}"
    );
    assert_eq!(run_cli(&dir, &["list"]), before);
    // The same for splice and for the fields of a list's items.
    let err = cli_fails(&dir, &["splice", id, "nots", "0", "0", "x"]);
    assert!(err.contains("notes"), "{err}");
    let err = cli_fails(&dir, &["add", id, "attendees", "nmae=Otieno"]);
    assert!(err.contains("\"nmae\"") && err.contains("name"), "{err}");

    // The right spelling works; after a sync the server holds no `titel`.
    run_cli(&dir, &["set", id, "title", "Baraza with the elders"]);
    run_cli(&dir, &["sync"]);
    let shown = run_cli(&dir, &["show", id]);
    assert!(shown.contains("title: Baraza with the elders"), "{shown}");
    assert!(!shown.contains("titel"), "{shown}");
    let sergeant = Tablet::new(&server, "sergeant's tablet");
    sergeant.sync().await;
    let record = sergeant.get(id).unwrap();
    let names: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"title"), "{names:?}");
    assert!(!names.contains(&"titel"), "{names:?}");
    assert_eq!(sergeant.list().unwrap(), vec![id.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_unknown_fields_anywhere_in_a_current_record() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let liaison = Tablet::new(&server, "liaison's tablet");
    let id_text = liaison
        .create(vec![("title".into(), "Baraza on street lighting".into())])
        .unwrap();
    liaison.sync().await;
    let id: DocId = id_text.parse().unwrap();

    let token = server.add_device("tablet with a careless app");
    let mine = actor_for(&device_of(&token), 1);
    let mut raw = RawConnection::open(&server, &token).await;
    raw.hello().await;
    let stored = raw.record_from_feed(id).await;
    let base = to_heads(&stored.get_heads());
    let obj = |key: &str| stored.get(ROOT, key).unwrap().unwrap().1;
    let (header, review, attendees) = (obj("header"), obj("review"), obj("attendees"));

    let root = edit(&stored, &mine, |tx| {
        tx.put(ROOT, "titel", "Baraza with the elders").unwrap();
    });
    let item = edit(&stored, &mine, |tx| {
        let a = tx.insert_object(&attendees, 0, ObjType::Map).unwrap();
        tx.put(&a, "nmae", "Otieno").unwrap();
    });
    let in_review = edit(&stored, &mine, |tx| {
        tx.put(&review, "reviewed_by", "sgt.wanjiru").unwrap();
    });
    let in_header = edit(&stored, &mine, |tx| {
        tx.put(&header, "priority", "high").unwrap();
    });
    for (doc, path, known) in [
        (&root, "titel", "title"),
        (&item, "attendees.0.nmae", "age_band"),
        (&in_review, "review.reviewed_by", "comments"),
        (&in_header, "header.priority", "created_by_user"),
    ] {
        raw.send(&push_since(id, &base, doc)).await;
        let error = raw.expect_error().await;
        assert_eq!(error.code, ErrorCode::UnknownField, "{error:?}");
        assert!(!error.fatal, "{error:?}");
        assert_eq!(error.doc, Some(id), "{error:?}");
        for part in [id_text.as_str(), path, known] {
            assert!(error.message.contains(part), "{error:?} should name {part}");
        }
    }

    // The record stays usable: the same device's good change is stored.
    let mut good = stored.fork();
    good.set_actor(mine);
    let user = user_for("tablet with a careless app");
    let at = Stamp {
        now_ms: 1_700_000_000_000,
        by: &user,
    };
    ops::set(
        &mut good,
        "title",
        FieldValue::Str("Lights baraza".into()),
        at,
    )
    .unwrap();
    ops::append(
        &mut good,
        "attendees",
        &[("name", FieldValue::Str("Otieno".into()))],
        at,
    )
    .unwrap();
    raw.send(&push_since(id, &base, &good)).await;
    match raw.next_reply().await {
        Some(Message::Ack(ack)) => assert_eq!(ack.heads, to_heads(&good.get_heads())),
        other => panic!("expected an ack, got {other:?}"),
    }
    liaison.sync().await;
    let record = liaison.get(&id_text).unwrap();
    assert_eq!(liaison.field(&id_text, "title").value, "Lights baraza");
    assert!(record
        .fields
        .iter()
        .all(|f| f.name != "titel" && f.name != "priority"));
    let heads: Vec<String> = good.get_heads().iter().map(|h| h.to_string()).collect();
    assert_eq!(liaison.heads(&id_text).unwrap(), heads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schemas_fields_are_kept_and_a_current_records_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let token = server.add_device("tablet with a newer app");
    let user = user_for("tablet with a newer app");
    let device = device_of(&token);
    let at = Stamp {
        now_ms: 1_700_000_000_000,
        by: &user,
    };
    let record = |id: DocId, schema: u64| {
        let mut doc = Automerge::new();
        doc.set_actor(actor_for(&device, 7));
        let header = baraza_records::Header {
            id: id.to_string(),
            kind: baraza_records::Kind::Meeting,
            area: "kibera-north".into(),
            created_by_user: user.clone(),
            created_by_device: device.clone(),
            created_at: 1_700_000_000_000,
            schema,
        };
        ops::create(&mut doc, &header, at).unwrap();
        let attendees = doc.get(ROOT, "attendees").unwrap().unwrap().1;
        let mut tx = doc.transaction();
        tx.put(ROOT, "livestream_url", "https://example.org/baraza")
            .unwrap();
        let a = tx.insert_object(&attendees, 0, ObjType::Map).unwrap();
        tx.put(&a, "name", "Mama Wanjiru").unwrap();
        tx.put(&a, "phone_consent", true).unwrap();
        tx.commit_with(ops::commit_options("add livestream", at));
        doc
    };
    let mut raw = RawConnection::open(&server, &token).await;
    raw.hello().await;

    // The same record under this server's schema version: refused whole.
    let current = DocId::from_bytes(*b"current-schema!!");
    raw.send(&push_since(
        current,
        &[],
        &record(current, baraza_records::SCHEMA_VERSION),
    ))
    .await;
    let error = raw.expect_error().await;
    assert_eq!(error.code, ErrorCode::UnknownField, "{error:?}");
    assert!(error.message.contains(&current.to_string()), "{error:?}");

    // Under a newer version: stored, extra fields and all.
    let newer = DocId::from_bytes(*b"newer-schema-rec");
    let doc = record(newer, baraza_records::SCHEMA_VERSION + 1);
    raw.send(&push_since(newer, &[], &doc)).await;
    match raw.next_reply().await {
        Some(Message::Ack(ack)) => assert_eq!(ack.heads, to_heads(&doc.get_heads())),
        other => panic!("expected an ack, got {other:?}"),
    }
    let fresh = Tablet::new(&server, "sergeant's tablet");
    fresh.sync().await;
    assert_eq!(fresh.list().unwrap(), vec![newer.to_string()]);
    assert_eq!(
        fresh.field(&newer.to_string(), "livestream_url").value,
        "https://example.org/baraza"
    );
}
