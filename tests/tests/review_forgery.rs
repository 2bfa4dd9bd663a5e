//! A supervisor's review cannot be forged, rewritten or undone from an
//! officer's device. A real server; a real return with a comment at the
//! review desk; then a second device of the officer's, running a rogue
//! app, pushes hand-made changes to the review block through the sync
//! protocol. Each is refused naming its rule, nothing of it is stored
//! (the read API and another device show the supervisor's review as it
//! was), and the ordinary flow (fix, resubmit, approve) still works.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, ObjId, ObjType, ReadDoc, ROOT};
use baraza_protocol::{to_heads, DocId, ErrorCode, Head, Message};
use baraza_records::ops;
use baraza_tests::{
    actor_for, device_of, https_get, push_since, DeskSession, HttpReply, RawConnection,
    ServerProcess, Tablet,
};
use serde_json::json;

const OFFICER: &str = "cpl.otieno";
const SUPERVISOR: &str = "sgt.wanjiru";
const RETURN_COMMENT: &str = "add the patrol's end time";

/// The record as the server holds it, from a new connection's catch-up.
async fn snapshot(server: &ServerProcess, token: &str, id: DocId) -> (RawConnection, Automerge) {
    let mut raw = RawConnection::open(server, token).await;
    raw.hello().await;
    loop {
        match raw.next_message().await {
            Some(Message::Changes(c)) if c.doc == id => {
                let mut doc = Automerge::new();
                doc.load_incremental(&c.data).unwrap();
                return (raw, doc);
            }
            Some(_) => {}
            None => panic!("the server closed before sending the record"),
        }
    }
}

/// One raw change on a copy of `base`, truthfully signed by the officer
/// under the rogue device's own actor: only the review rules can stop it.
fn forge(base: &Automerge, actor: &ActorId, f: impl FnOnce(&mut Transaction<'_>)) -> Automerge {
    let mut doc = base.fork();
    doc.set_actor(actor.clone());
    let mut tx = doc.transaction();
    f(&mut tx);
    let stamp = ops::Stamp {
        now_ms: 1_700_000_500_000,
        by: OFFICER,
    };
    tx.commit_with(ops::commit_options("edit review", stamp));
    doc
}

fn obj(doc: &impl ReadDoc, parent: &ObjId, key: &str, ty: ObjType) -> ObjId {
    match doc.get(parent, key).unwrap() {
        Some((automerge::Value::Object(t), id)) if t == ty => id,
        other => panic!("{key} is not a {ty:?}: {other:?}"),
    }
}

fn review(doc: &impl ReadDoc) -> ObjId {
    obj(doc, &ROOT, "review", ObjType::Map)
}

fn comments(doc: &impl ReadDoc) -> ObjId {
    obj(doc, &review(doc), "comments", ObjType::List)
}

fn first_comment(doc: &impl ReadDoc) -> ObjId {
    match doc.get(comments(doc), 0).unwrap() {
        Some((automerge::Value::Object(ObjType::Map), id)) => id,
        other => panic!("no first comment: {other:?}"),
    }
}

/// Pushes `forged` and requires a refusal by `rule` for this record.
async fn refused(
    raw: &mut RawConnection,
    id: DocId,
    base: &[Head],
    forged: &Automerge,
    rule: &str,
) {
    raw.send(&push_since(id, base, forged)).await;
    let error = raw.expect_error().await;
    assert_eq!(error.code, ErrorCode::Forbidden, "{error:?}");
    assert_eq!(error.rule.as_deref(), Some(rule), "{error:?}");
    assert_eq!(error.doc, Some(id), "{error:?}");
    assert!(!error.fatal, "{error:?}");
    assert!(error.message.contains("review"), "{error:?}");
}

async fn decide(desk: &DeskSession<'_>, id: &str, decision: &str, comment: &str) -> HttpReply {
    let body = json!({ "decision": decision, "comment": comment });
    desk.post(&format!("/review/api/records/{id}/decision"), body)
        .await
}

/// The record through `GET /v1/records/{id}`.
async fn view(server: &ServerProcess, token: &str, id: &str) -> serde_json::Value {
    let (status, body) = https_get(server, &format!("/v1/records/{id}"), Some(token)).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn comment_pairs(view: &serde_json::Value) -> Vec<(String, String)> {
    view["review_comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["by"].as_str().unwrap().to_string(),
                c["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn history_hashes(view: &serde_json::Value) -> Vec<String> {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hash"].as_str().unwrap().to_string())
        .collect()
}

/// The record shows `state` and holds none of the forged changes.
fn untouched(view: &serde_json::Value, state: &str, forged: &[String]) {
    assert_eq!(view["review_state"], state, "{view}");
    let hashes = history_hashes(view);
    for hash in forged {
        assert!(!hashes.contains(hash), "forged change {hash} was stored");
    }
}

fn last_hash(doc: &Automerge) -> String {
    doc.get_heads()[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officers_device_cannot_forge_rewrite_or_undo_a_supervisors_review() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user(OFFICER, "officer", &["kibera"]);
    server.add_user(SUPERVISOR, "supervisor", &["kibera"]);
    let officer = Tablet::for_user(&server, "officer's tablet", OFFICER, "kibera");
    let sergeant = Tablet::for_user(&server, "sergeant's tablet", SUPERVISOR, "kibera");

    // The officer files and submits a patrol note; the supervisor returns
    // it at the desk with a comment.
    let beat = ("beat".to_string(), "B4".to_string());
    let id_text = officer
        .create_record("patrol_note", "kibera", vec![beat])
        .unwrap();
    officer.submit(&id_text).unwrap();
    let report = officer.sync().await;
    assert_eq!(
        (report.refused, report.unacknowledged),
        (0, 0),
        "{report:?}"
    );
    let desk = DeskSession::open(&server, SUPERVISOR).await;
    let returned = decide(&desk, &id_text, "returned", RETURN_COMMENT).await;
    assert_eq!(returned.status, 200, "{}", returned.body);
    let id: DocId = id_text.parse().unwrap();

    // The officer's second device, with a rogue app.
    let token = server.add_device_for("officer's rogue app", OFFICER);
    let actor = actor_for(&device_of(&token), 1);
    let (mut rogue, stored) = snapshot(&server, &token, id).await;
    let base = to_heads(&stored.get_heads());
    let the_return = vec![(SUPERVISOR.to_string(), RETURN_COMMENT.to_string())];

    let forgeries: Vec<(&str, Automerge, &str)> = vec![
        (
            "a comment appended in the supervisor's name",
            forge(&stored, &actor, |tx| {
                let list = comments(tx);
                let end = tx.length(&list);
                let c = tx.insert_object(&list, end, ObjType::Map).unwrap();
                tx.put(&c, "by", SUPERVISOR).unwrap();
                tx.put(&c, "at", 1_700_000_500_000i64).unwrap();
                tx.put(&c, "text", "withdrawn, approved as it is").unwrap();
            }),
            "review_comment_author",
        ),
        (
            "the supervisor's comment rewritten",
            forge(&stored, &actor, |tx| {
                let c = first_comment(tx);
                tx.put(&c, "text", "looks good").unwrap();
            }),
            "review_comment_author",
        ),
        (
            "the supervisor's comment deleted",
            forge(&stored, &actor, |tx| {
                let list = comments(tx);
                tx.delete(&list, 0).unwrap();
            }),
            "review_comments_append_only",
        ),
        (
            "the review block deleted (back to a draft with no comments)",
            forge(&stored, &actor, |tx| tx.delete(ROOT, "review").unwrap()),
            "review_comments_append_only",
        ),
        (
            "the review block replaced by a fresh one",
            forge(&stored, &actor, |tx| {
                let fresh = tx.put_object(ROOT, "review", ObjType::Map).unwrap();
                tx.put(&fresh, "state", "submitted").unwrap();
                tx.put_object(&fresh, "comments", ObjType::List).unwrap();
            }),
            "review_comments_append_only",
        ),
        (
            "the returned record set back to draft",
            forge(&stored, &actor, |tx| {
                let r = review(tx);
                tx.put(&r, "state", "draft").unwrap();
            }),
            "review_state_by_supervisor",
        ),
    ];
    let mut forged_hashes = Vec::new();
    for (what, forged, rule) in &forgeries {
        // Each is a real change the rogue could make: it does what it says.
        assert!(
            baraza_records::review_comments(forged) != baraza_records::review_comments(&stored)
                || baraza_records::review_state(forged) != baraza_records::ReviewState::Returned,
            "{what} changes nothing"
        );
        refused(&mut rogue, id, &base, forged, rule).await;
        forged_hashes.push(last_hash(forged));
    }

    // Nothing of them is stored: the read API, and another device.
    let seen = view(&server, sergeant.token(), &id_text).await;
    untouched(&seen, "returned", &forged_hashes);
    assert_eq!(comment_pairs(&seen), the_return);
    let report = sergeant.sync().await;
    assert_eq!(report.refused, 0, "{report:?}");
    let held = sergeant.get(&id_text).unwrap();
    assert_eq!(held.review_state, baraza_records::ReviewState::Returned);
    assert_eq!(held.review_comments.len(), 1);
    assert_eq!(held.review_comments[0].by, SUPERVISOR);
    assert_eq!(held.review_comments[0].text, RETURN_COMMENT);

    // The ordinary flow still works: the officer's own tablet shows the
    // return, the officer fixes the note and resubmits it, and the
    // supervisor approves with a comment.
    officer.sync().await;
    let record = officer.get(&id_text).unwrap();
    assert_eq!(record.review_state, baraza_records::ReviewState::Returned);
    assert_eq!(record.review_comments[0].text, RETURN_COMMENT);
    officer.set(&id_text, "ended_at", "1700003600000").unwrap();
    officer.submit(&id_text).unwrap();
    let report = officer.sync().await;
    assert_eq!(
        (report.refused, report.unacknowledged),
        (0, 0),
        "{report:?}"
    );
    assert_eq!(
        view(&server, sergeant.token(), &id_text).await["review_state"],
        "submitted"
    );
    let approved = decide(&desk, &id_text, "approved", "complete now").await;
    assert_eq!(approved.status, 200, "{}", approved.body);

    // Undoing the approval: outright, or by a resubmission made on the
    // copy from before it (the rogue still holds it), which against its
    // own dependencies is a creator resubmitting a returned record but
    // lands beside the approval, and would win it with enough typing.
    let (mut rogue, decided) = snapshot(&server, &token, id).await;
    let decided_base = to_heads(&decided.get_heads());
    let to_draft = forge(&decided, &actor, |tx| {
        let r = review(tx);
        tx.put(&r, "state", "draft").unwrap();
    });
    refused(
        &mut rogue,
        id,
        &decided_base,
        &to_draft,
        "review_state_by_supervisor",
    )
    .await;
    let mut stale = stored.fork();
    stale.set_actor(actor_for(&device_of(&token), 2));
    let at = ops::Stamp {
        now_ms: 1_700_000_600_000,
        by: OFFICER,
    };
    for _ in 0..60 {
        ops::splice(&mut stale, "notes", 0, 0, ".", at).unwrap();
    }
    ops::review(&mut stale, baraza_records::ReviewState::Submitted, None, at).unwrap();
    let mut merged = decided.fork();
    merged.merge(&mut stale.clone()).unwrap();
    assert_eq!(
        baraza_records::review_state(&merged),
        baraza_records::ReviewState::Submitted,
        "unchecked, the stale resubmission would undo the approval"
    );
    refused(
        &mut rogue,
        id,
        &decided_base,
        &merged,
        "review_state_by_supervisor",
    )
    .await;
    forged_hashes.push(last_hash(&to_draft));
    forged_hashes.push(last_hash(&stale));

    let seen = view(&server, sergeant.token(), &id_text).await;
    untouched(&seen, "approved", &forged_hashes);
    assert_eq!(
        comment_pairs(&seen),
        vec![
            (SUPERVISOR.to_string(), RETURN_COMMENT.to_string()),
            (SUPERVISOR.to_string(), "complete now".to_string()),
        ]
    );
    sergeant.sync().await;
    officer.sync().await;
    for tablet in [&sergeant, &officer] {
        let record = tablet.get(&id_text).unwrap();
        assert_eq!(record.review_state, baraza_records::ReviewState::Approved);
        assert_eq!(record.review_comments.len(), 2);
        assert!(record.rejected.is_none());
    }
    assert_eq!(sergeant.all_heads(), officer.all_heads());

    // Every refusal is audited under its rule and the officer's name.
    let log = server.audit_entries();
    let refusals: Vec<&str> = log
        .iter()
        .filter(|e| e["event"] == "change_refused" && e["details"]["user"] == OFFICER)
        .map(|e| e["details"]["rule"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(refusals.len(), forgeries.len() + 2, "{refusals:?}");
    for rule in [
        "review_comment_author",
        "review_comments_append_only",
        "review_state_by_supervisor",
    ] {
        assert!(refusals.contains(&rule), "{refusals:?}");
    }
}
