//! A refused change racing a valid one on the same record: the server
//! judges each on a fork, so the refused one leaves nothing behind in the
//! cached copy or the store, and the valid one lands whole.

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc, ROOT};
use baraza_protocol::{to_heads, DocId, ErrorCode};
use baraza_records::ops;
use baraza_tests::{
    actor_for, device_of, https_get, push_since, RawConnection, ServerProcess, Tablet,
};

const OFFICER: &str = "cpl.otieno";
const ROUNDS: usize = 4;

/// The record through `GET /v1/records/{id}`.
async fn view(server: &ServerProcess, token: &str, id: &str) -> serde_json::Value {
    let (status, body) = https_get(server, &format!("/v1/records/{id}"), Some(token)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn history_hashes(view: &serde_json::Value) -> Vec<String> {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hash"].as_str().unwrap().to_string())
        .collect()
}

/// An officer's device approving its own record: refused by the review
/// rules whatever else is happening to the record.
fn self_approval(base: &Automerge, actor: &automerge::ActorId) -> Automerge {
    let mut doc = base.fork();
    doc.set_actor(actor.clone());
    let mut tx = doc.transaction();
    let review = match tx.get(ROOT, "review").unwrap() {
        Some((automerge::Value::Object(ObjType::Map), id)) => id,
        _ => tx.put_object(ROOT, "review", ObjType::Map).unwrap(),
    };
    tx.put(&review, "state", "approved").unwrap();
    let stamp = ops::Stamp {
        now_ms: 1_700_000_500_000,
        by: OFFICER,
    };
    tx.commit_with(ops::commit_options("edit review", stamp));
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_racing_a_valid_one_leaves_only_the_valid_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user(OFFICER, "officer", &["kibera"]);
    let officer = Tablet::for_user(&server, "officer's tablet", OFFICER, "kibera");
    let id_text = officer
        .create_record("patrol_note", "kibera", vec![("beat".into(), "B0".into())])
        .unwrap();
    let report = officer.sync().await;
    assert_eq!(
        (report.refused, report.unacknowledged),
        (0, 0),
        "{report:?}"
    );
    let id: DocId = id_text.parse().unwrap();

    let token = server.add_device_for("officer's rogue app", OFFICER);
    let actor = actor_for(&device_of(&token), 1);
    let mut forged_hashes = Vec::new();
    for round in 0..ROUNDS {
        let mut rogue = RawConnection::open(&server, &token).await;
        rogue.hello().await;
        let stored = rogue.record_from_feed(id).await;
        let forged = self_approval(&stored, &actor);
        forged_hashes.push(forged.get_heads()[0].to_string());
        let beat = format!("B{}", round + 1);
        officer.set(&id_text, "beat", &beat).unwrap();

        // Both at once, to the same record.
        let refused = async {
            rogue
                .send(&push_since(id, &to_heads(&stored.get_heads()), &forged))
                .await;
            rogue.expect_error().await
        };
        let (error, report) = tokio::join!(refused, officer.sync());
        assert_eq!(error.code, ErrorCode::Forbidden, "{error:?}");
        assert!(error.rule.is_some(), "{error:?}");
        assert_eq!(error.doc, Some(id), "{error:?}");
        assert_eq!(
            (report.refused, report.unacknowledged),
            (0, 0),
            "{report:?}"
        );

        let seen = view(&server, &token, &id_text).await;
        assert_eq!(seen["fields"]["beat"], beat.as_str(), "{seen}");
        assert_ne!(seen["review_state"], "approved", "{seen}");
        let hashes = history_hashes(&seen);
        for hash in &forged_hashes {
            assert!(!hashes.contains(hash), "refused change {hash} was kept");
        }
    }

    // What the store holds is what the cache served: nothing refused, every
    // valid edit.
    assert!(server.terminate().success());
    server.restart();
    officer.point_at(&server);
    let seen = view(&server, &token, &id_text).await;
    assert_eq!(
        seen["fields"]["beat"],
        format!("B{ROUNDS}").as_str(),
        "{seen}"
    );
    assert_ne!(seen["review_state"], "approved", "{seen}");
    let hashes = history_hashes(&seen);
    for hash in &forged_hashes {
        assert!(!hashes.contains(hash), "refused change {hash} was stored");
    }
    let report = officer.sync().await;
    assert_eq!(
        (report.refused, report.unacknowledged),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(
        officer.value(&id_text, "beat").as_deref(),
        Some(format!("B{ROUNDS}").as_str())
    );
}
