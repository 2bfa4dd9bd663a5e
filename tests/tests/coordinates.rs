//! Every latitude in Nairobi is negative. An officer on patrol in Kibera
//! types `--gps -1.3127,36.7850,8` and the point is stored as typed; a
//! latitude of -91 is refused by the tablet before any observation is
//! made, and by the server when an app pushes one anyway, naming the field.

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc, ROOT};
use baraza_protocol::{to_heads, DocId, ErrorCode, Message};
use baraza_tests::{
    actor_for, cli_fails, device_of, https_get, push_since, run_cli, user_for, RawConnection,
    ServerProcess,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_southern_latitude_is_typed_and_an_impossible_one_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let dir = tmp.path().join("cli-tablet");
    let token = server.add_device("officer's tablet");
    run_cli(
        &dir,
        &[
            "init",
            "--server",
            &server.url(),
            "--ca",
            server.ca_path().to_str().unwrap(),
            "--token",
            &token,
            "--user",
            &user_for("officer's tablet"),
        ],
    );
    let id = run_cli(&dir, &["patrol", "new", "Kibera B4"]);
    let id = id.trim();

    let index = run_cli(
        &dir,
        &[
            "patrol",
            "observe",
            id,
            "Crowd gathering at the Olympic stage",
            "--gps",
            "-1.3127,36.7850,8",
        ],
    );
    assert_eq!(index.trim(), "0");
    // `show` summarises lists for now (issue 11, item 4): the point itself
    // is read back from the change history and from the server below.
    let shown = run_cli(&dir, &["show", id]);
    assert!(shown.contains("observations"), "{shown}");
    let history = run_cli(&dir, &["history", id]);
    assert!(history.contains("set observations.0.gps"), "{history}");

    // Out of range, not a number, no accuracy: each refused by the tablet,
    // naming the field, and no observation is left behind.
    for (gps, naming) in [
        ("-91,36.7850,8", "observations.gps.lat"),
        ("-1.3127,181,8", "observations.gps.lon"),
        ("-1.3127,36.7850,0", "observations.gps.accuracy_m"),
        ("NaN,36.7850,8", "observations.gps.lat"),
        ("south,36.7850,8", "observations.gps.lat"),
    ] {
        let err = cli_fails(&dir, &["patrol", "observe", id, "x", "--gps", gps]);
        assert!(err.contains(naming), "{gps}: {err}");
    }
    let err = cli_fails(
        &dir,
        &["patrol", "observe", id, "x", "--gps", "-91,36.7850,8"],
    );
    assert!(err.contains("-90"), "the range is named: {err}");

    // The server holds the point as typed, and no observation was left
    // behind by the refused ones.
    run_cli(&dir, &["sync"]);
    let (status, body) = https_get(&server, &format!("/v1/records/{id}"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let observations = view["fields"]["observations"].as_array().unwrap();
    assert_eq!(observations.len(), 1, "{view}");
    assert_eq!(observations[0]["gps"]["lat"], "-1.3127", "{view}");
    assert_eq!(observations[0]["gps"]["lon"], "36.7850", "{view}");
    assert_eq!(observations[0]["gps"]["accuracy_m"], 8, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_a_latitude_past_the_pole_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let token = server.add_device("tablet with a broken GPS driver");
    let user = user_for("tablet with a broken GPS driver");
    let device = device_of(&token);
    let at = baraza_records::ops::Stamp {
        now_ms: 1_700_000_000_000,
        by: &user,
    };
    let id = DocId::from_bytes(*b"patrol-with-gps!");
    let mut doc = Automerge::new();
    doc.set_actor(actor_for(&device, 2));
    let header = baraza_records::Header {
        id: id.to_string(),
        kind: baraza_records::Kind::PatrolNote,
        area: "kibera-north".into(),
        created_by_user: user.clone(),
        created_by_device: device.clone(),
        created_at: 1_700_000_000_000,
        schema: baraza_records::SCHEMA_VERSION,
    };
    baraza_records::ops::create(&mut doc, &header, at).unwrap();
    baraza_records::ops::append(
        &mut doc,
        "observations",
        &[(
            "text",
            baraza_records::FieldValue::Str("Stalls closed early".into()),
        )],
        at,
    )
    .unwrap();
    let mut raw = RawConnection::open(&server, &token).await;
    raw.hello().await;
    raw.send(&push_since(id, &[], &doc)).await;
    match raw.next_reply().await {
        Some(Message::Ack(ack)) => assert_eq!(ack.heads, to_heads(&doc.get_heads())),
        other => panic!("expected an ack, got {other:?}"),
    }
    let stored = doc;
    let base = to_heads(&stored.get_heads());
    let observations = stored.get(ROOT, "observations").unwrap().unwrap().1;
    let item = stored.get(&observations, 0).unwrap().unwrap().1;

    // A GPS point written straight into the record, past what the SDK allows.
    let with_gps = |lat: &str, lon: &str, accuracy: i64| {
        let mut doc = stored.fork();
        doc.set_actor(actor_for(&device, 2));
        let mut tx = doc.transaction();
        let gps = tx.put_object(&item, "gps", ObjType::Map).unwrap();
        tx.put(&gps, "lat", lat).unwrap();
        tx.put(&gps, "lon", lon).unwrap();
        tx.put(&gps, "accuracy_m", accuracy).unwrap();
        tx.commit_with(baraza_records::ops::commit_options("set gps", at));
        doc
    };
    for (point, naming) in [
        (with_gps("-91", "36.7850", 8), "observations.0.gps.lat"),
        (with_gps("-1.3127", "-180.5", 8), "observations.0.gps.lon"),
        (
            with_gps("-1.3127", "36.7850", 0),
            "observations.0.gps.accuracy_m",
        ),
        (with_gps("inf", "36.7850", 8), "observations.0.gps.lat"),
    ] {
        raw.send(&push_since(id, &base, &point)).await;
        let error = raw.expect_error().await;
        assert_eq!(error.code, ErrorCode::InvalidRecord, "{error:?}");
        assert!(!error.fatal, "{error:?}");
        for part in [id.to_string().as_str(), naming] {
            assert!(error.message.contains(part), "{error:?} should name {part}");
        }
    }

    // A true point from the same device is stored.
    let good = with_gps("-1.3127", "36.7850", 8);
    raw.send(&push_since(id, &base, &good)).await;
    match raw.next_reply().await {
        Some(Message::Ack(ack)) => assert_eq!(ack.heads, to_heads(&good.get_heads())),
        other => panic!("expected an ack, got {other:?}"),
    }
}
