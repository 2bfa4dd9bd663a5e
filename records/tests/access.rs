//! The access rules on their own: who reads which kinds where, and which
//! writes each rule refuses, by name.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ActorId, Automerge, Change, ChangeHash, ObjId, ObjType, ReadDoc, ROOT};
use baraza_records::access::{rules, Principal, Role};
use baraza_records::ops::{self, FieldValue, Stamp};
use baraza_records::ReviewState;
use baraza_records::{review_comments, review_state, Header, Kind, SCHEMA_VERSION};

fn header(kind: Kind, area: &str, by: &str) -> Header {
    Header {
        id: "0f0f0f0f-0000-4000-8000-000000000001".into(),
        kind,
        area: area.into(),
        created_by_user: by.into(),
        created_by_device: "dev-1".into(),
        created_at: 1_700_000_000_000,
        schema: SCHEMA_VERSION,
    }
}

fn who(user: &str, role: Role, areas: &[&str]) -> Principal {
    Principal {
        user: user.into(),
        role,
        areas: areas.iter().map(|a| a.to_string()).collect(),
    }
}

fn at(by: &str) -> Stamp<'_> {
    Stamp { now_ms: 1_000, by }
}

/// A record created by `creator`, and the changes since `before` made by
/// `edit` under `editor`'s name.
fn edited(
    h: &Header,
    editor: &str,
    edit: impl FnOnce(&mut Automerge, Stamp<'_>),
) -> (Automerge, Vec<Change>) {
    let mut doc = Automerge::new();
    ops::create(&mut doc, h, at(&h.created_by_user)).unwrap();
    let before: Vec<ChangeHash> = doc.get_heads();
    edit(&mut doc, at(editor));
    let changes = doc.get_changes(&before);
    (doc, changes)
}

fn created(h: &Header) -> (Automerge, Vec<Change>) {
    let mut doc = Automerge::new();
    ops::create(&mut doc, h, at(&h.created_by_user)).unwrap();
    let changes = doc.get_changes(&[]);
    (doc, changes)
}

#[test]
fn reads_go_by_role_kind_and_area_and_everyone_reads_their_own() {
    let officer = who("ofc", Role::Officer, &["east"]);
    let liaison = who("lia", Role::Liaison, &["east"]);
    let supervisor = who("sup", Role::Supervisor, &["east"]);
    let admin = who("adm", Role::Admin, &["east"]);
    let cases = [
        (Kind::PatrolNote, [true, false, true, false]),
        (Kind::Meeting, [true, true, true, false]),
        (Kind::Feedback, [false, true, true, false]),
        (Kind::FeedbackContact, [false, false, true, false]),
    ];
    for (kind, expected) in cases {
        let h = header(kind, "east", "someone.else");
        let got = [&officer, &liaison, &supervisor, &admin].map(|p| p.may_read(&h));
        assert_eq!(got, expected, "{kind:?} in the reader's area");
        let away = header(kind, "west", "someone.else");
        for p in [&officer, &liaison, &supervisor, &admin] {
            assert!(
                !p.may_read(&away),
                "{} reads {kind:?} of another area",
                p.user
            );
        }
        // Their own record, even of a kind their role does not read and in
        // an area they left.
        assert!(officer.may_read(&header(kind, "west", "ofc")));
    }
}

#[test]
fn an_officer_may_not_approve_and_a_supervisor_of_the_area_may() {
    let h = header(Kind::PatrolNote, "east", "ofc");
    let officer = who("ofc", Role::Officer, &["east"]);
    let (doc, changes) = edited(&h, "ofc", |d, s| {
        ops::review(d, ReviewState::Approved, None, s).unwrap()
    });
    let refused = officer.check_write(&h, false, &doc, &changes).unwrap_err();
    assert_eq!(refused.rule, rules::REVIEW);

    // Submitting is the author's own step.
    let (doc, changes) = edited(&h, "ofc", |d, s| {
        ops::review(d, ReviewState::Submitted, None, s).unwrap()
    });
    assert!(officer.check_write(&h, false, &doc, &changes).is_ok());

    let supervisor = who("sup", Role::Supervisor, &["east"]);
    let (doc, changes) = edited(&h, "sup", |d, s| {
        ops::review(d, ReviewState::Returned, Some(("sup", "add the beat")), s).unwrap()
    });
    let summary = supervisor.check_write(&h, false, &doc, &changes).unwrap();
    assert_eq!(summary.decisions, vec![ReviewState::Returned]);

    let elsewhere = who("sup2", Role::Supervisor, &["west"]);
    let (doc, changes) = edited(&h, "sup2", |d, s| {
        ops::review(d, ReviewState::Approved, None, s).unwrap()
    });
    let refused = elsewhere
        .check_write(&h, false, &doc, &changes)
        .unwrap_err();
    assert_eq!(refused.rule, rules::OWN_AREAS);
}

#[test]
fn new_records_must_be_the_users_own_of_a_kind_their_role_creates() {
    let liaison = who("lia", Role::Liaison, &["east"]);
    let h = header(Kind::Meeting, "east", "lia");
    let (doc, changes) = created(&h);
    assert!(liaison.check_write(&h, true, &doc, &changes).is_ok());

    let h = header(Kind::PatrolNote, "east", "lia");
    let (doc, changes) = created(&h);
    let refused = liaison.check_write(&h, true, &doc, &changes).unwrap_err();
    assert_eq!(refused.rule, rules::KIND_FOR_ROLE);

    let h = header(Kind::Meeting, "east", "someone.else");
    let (doc, changes) = created(&h);
    let refused = liaison.check_write(&h, true, &doc, &changes).unwrap_err();
    assert_eq!(refused.rule, rules::CREATOR);

    let h = header(Kind::Meeting, "west", "lia");
    let (doc, changes) = created(&h);
    let refused = liaison.check_write(&h, true, &doc, &changes).unwrap_err();
    assert_eq!(refused.rule, rules::OWN_AREAS);

    let admin = who("adm", Role::Admin, &["east"]);
    let h = header(Kind::Meeting, "east", "adm");
    let (doc, changes) = created(&h);
    let refused = admin.check_write(&h, true, &doc, &changes).unwrap_err();
    assert_eq!(refused.rule, rules::ADMIN_NO_RECORDS);
}

#[test]
fn contact_details_are_edited_only_by_their_author_and_area_supervisors() {
    let h = header(Kind::FeedbackContact, "east", "ofc");
    let set_phone = |d: &mut Automerge, s: Stamp<'_>| {
        ops::set(d, "phone", FieldValue::Str("+254 700 000000".into()), s).unwrap()
    };
    for (p, allowed) in [
        (who("ofc", Role::Officer, &["east"]), true),
        (who("sup", Role::Supervisor, &["east"]), true),
        (who("lia", Role::Liaison, &["east"]), false),
        (who("ofc2", Role::Officer, &["east"]), false),
    ] {
        let (doc, changes) = edited(&h, &p.user, set_phone);
        match p.check_write(&h, false, &doc, &changes) {
            Ok(_) => assert!(allowed, "{} edited contact details", p.user),
            Err(refusal) => {
                assert!(!allowed, "{} was refused: {refusal}", p.user);
                assert_eq!(refusal.rule, rules::CONTACT);
            }
        }
    }
}

#[test]
fn a_change_naming_another_user_is_refused() {
    let h = header(Kind::Meeting, "east", "ofc");
    let officer = who("ofc", Role::Officer, &["east"]);
    let (doc, changes) = edited(&h, "sup", |d, s| {
        ops::set(d, "place", FieldValue::Str("hall".into()), s).unwrap()
    });
    let refused = officer.check_write(&h, false, &doc, &changes).unwrap_err();
    assert_eq!(refused.rule, rules::ATTRIBUTION);
}

// ---------------------------------------------------------------------------
// The review block: what a malicious tablet could push, made with raw
// automerge transactions under the officer's own name and actor.
// ---------------------------------------------------------------------------

fn officer_actor() -> ActorId {
    ActorId::from(vec![1u8; 16])
}

fn desk_actor() -> ActorId {
    ActorId::from(vec![2u8; 16])
}

/// `ofc`'s patrol note of area east, submitted, then returned by `sup`
/// with a comment on the supervisor's own device (as the desk would).
fn returned_note(h: &Header) -> Automerge {
    let mut doc = Automerge::new();
    doc.set_actor(officer_actor());
    ops::create(&mut doc, h, at("ofc")).unwrap();
    ops::review(&mut doc, ReviewState::Submitted, None, at("ofc")).unwrap();
    let mut desk = doc.fork();
    desk.set_actor(desk_actor());
    ops::review(
        &mut desk,
        ReviewState::Returned,
        Some(("sup", "add the beat")),
        at("sup"),
    )
    .unwrap();
    doc.merge(&mut desk).unwrap();
    doc
}

/// `returned_note`, fixed and resubmitted by `ofc`, then approved by `sup`.
fn approved_note(h: &Header) -> Automerge {
    let mut doc = returned_note(h);
    ops::set(&mut doc, "beat", FieldValue::Str("B4".into()), at("ofc")).unwrap();
    ops::review(&mut doc, ReviewState::Submitted, None, at("ofc")).unwrap();
    let mut desk = doc.fork();
    desk.set_actor(desk_actor());
    ops::review(
        &mut desk,
        ReviewState::Approved,
        Some(("sup", "good")),
        at("sup"),
    )
    .unwrap();
    doc.merge(&mut desk).unwrap();
    doc
}

/// One raw change on a copy of `base`, under `user`'s name and `actor`,
/// and the changes the server would check.
fn raw_change(
    base: &Automerge,
    actor: ActorId,
    user: &str,
    f: impl FnOnce(&mut Transaction<'_>),
) -> (Automerge, Vec<Change>) {
    let before = base.get_heads();
    let mut doc = base.fork();
    doc.set_actor(actor);
    let mut tx = doc.transaction();
    f(&mut tx);
    tx.commit_with(ops::commit_options("edit review", at(user)));
    let changes = doc.get_changes(&before);
    assert_eq!(changes.len(), 1);
    (doc, changes)
}

fn forged(base: &Automerge, f: impl FnOnce(&mut Transaction<'_>)) -> (Automerge, Vec<Change>) {
    raw_change(base, officer_actor(), "ofc", f)
}

fn review_obj(doc: &impl ReadDoc) -> ObjId {
    match doc.get(ROOT, "review").unwrap() {
        Some((automerge::Value::Object(ObjType::Map), id)) => id,
        other => panic!("no review map: {other:?}"),
    }
}

fn comments_obj(doc: &impl ReadDoc) -> ObjId {
    match doc.get(review_obj(doc), "comments").unwrap() {
        Some((automerge::Value::Object(ObjType::List), id)) => id,
        other => panic!("no comments list: {other:?}"),
    }
}

fn comment_obj(doc: &impl ReadDoc, index: usize) -> ObjId {
    match doc.get(comments_obj(doc), index).unwrap() {
        Some((automerge::Value::Object(ObjType::Map), id)) => id,
        other => panic!("no comment {index}: {other:?}"),
    }
}

fn officer() -> Principal {
    who("ofc", Role::Officer, &["east"])
}

fn supervisor() -> Principal {
    who("sup", Role::Supervisor, &["east"])
}

/// The rule `p` refuses the change with; panics if it is accepted.
fn refused_by(
    p: &Principal,
    h: &Header,
    (doc, changes): &(Automerge, Vec<Change>),
) -> baraza_records::access::Rule {
    match p.check_write(h, false, doc, changes) {
        Ok(_) => panic!("{} may not push this change, but it was accepted", p.user),
        Err(refusal) => {
            assert!(refusal.reason.contains("change "), "{refusal}");
            refusal.rule
        }
    }
}

#[test]
fn a_comment_in_a_supervisors_name_is_refused() {
    let h = header(Kind::PatrolNote, "east", "ofc");
    let doc = returned_note(&h);
    let append = |by: Option<&str>| {
        forged(&doc, |tx| {
            let comments = comments_obj(tx);
            let end = tx.length(&comments);
            let c = tx.insert_object(&comments, end, ObjType::Map).unwrap();
            if let Some(by) = by {
                tx.put(&c, "by", by).unwrap();
            }
            tx.put(&c, "at", 2_000).unwrap();
            tx.put(&c, "text", "approved, no changes needed").unwrap();
        })
    };
    let forgery = append(Some("sup"));
    // Unchecked, the record would show the supervisor saying it.
    assert_eq!(review_comments(&forgery.0).last().unwrap().by, "sup");
    let refusal = officer()
        .check_write(&h, false, &forgery.0, &forgery.1)
        .unwrap_err();
    assert_eq!(refusal.rule, rules::REVIEW_COMMENT_AUTHOR);
    assert!(refusal.reason.contains("ofc"), "{refusal}");
    // A comment naming nobody is refused too: its author could be filled
    // in later by anyone.
    assert_eq!(
        refused_by(&officer(), &h, &append(None)),
        rules::REVIEW_COMMENT_AUTHOR
    );
    // Signed as the officer, it is theirs to add.
    let own = append(Some("ofc"));
    assert!(officer().check_write(&h, false, &own.0, &own.1).is_ok());
}

#[test]
fn nobody_rewrites_a_comment_they_did_not_write() {
    let h = header(Kind::PatrolNote, "east", "ofc");
    let doc = returned_note(&h);
    let rewritten = forged(&doc, |tx| {
        let c = comment_obj(tx, 0);
        tx.put(&c, "text", "all fine").unwrap();
    });
    assert_eq!(review_comments(&rewritten.0)[0].text, "all fine");
    assert_eq!(
        refused_by(&officer(), &h, &rewritten),
        rules::REVIEW_COMMENT_AUTHOR
    );
    // Nor another supervisor of the area.
    let other = who("sup2", Role::Supervisor, &["east"]);
    let by_other = raw_change(&doc, desk_actor(), "sup2", |tx| {
        let c = comment_obj(tx, 0);
        tx.put(&c, "text", "never mind").unwrap();
    });
    assert_eq!(
        refused_by(&other, &h, &by_other),
        rules::REVIEW_COMMENT_AUTHOR
    );
    // Its author may amend it, but not hand it to someone else.
    let amended = raw_change(&doc, desk_actor(), "sup", |tx| {
        let c = comment_obj(tx, 0);
        tx.put(&c, "text", "add the beat and the end time").unwrap();
    });
    assert!(supervisor()
        .check_write(&h, false, &amended.0, &amended.1)
        .is_ok());
    let handed = raw_change(&doc, desk_actor(), "sup", |tx| {
        let c = comment_obj(tx, 0);
        tx.put(&c, "by", "ofc").unwrap();
    });
    assert_eq!(
        refused_by(&supervisor(), &h, &handed),
        rules::REVIEW_COMMENT_AUTHOR
    );
}

#[test]
fn comments_are_never_deleted() {
    let h = header(Kind::PatrolNote, "east", "ofc");
    let doc = returned_note(&h);
    let deleted = forged(&doc, |tx| {
        let comments = comments_obj(tx);
        tx.delete(&comments, 0).unwrap();
    });
    assert!(review_comments(&deleted.0).is_empty());
    assert_eq!(
        refused_by(&officer(), &h, &deleted),
        rules::REVIEW_COMMENTS_APPEND_ONLY
    );
    // Not even by their author.
    let by_author = raw_change(&doc, desk_actor(), "sup", |tx| {
        let comments = comments_obj(tx);
        tx.delete(&comments, 0).unwrap();
    });
    assert_eq!(
        refused_by(&supervisor(), &h, &by_author),
        rules::REVIEW_COMMENTS_APPEND_ONLY
    );
    // Nor overwritten in place, nor emptied field by field.
    let overwritten = forged(&doc, |tx| {
        let comments = comments_obj(tx);
        tx.put(&comments, 0, "gone").unwrap();
    });
    assert_eq!(
        refused_by(&officer(), &h, &overwritten),
        rules::REVIEW_COMMENTS_APPEND_ONLY
    );
    let emptied = raw_change(&doc, desk_actor(), "sup", |tx| {
        let c = comment_obj(tx, 0);
        tx.delete(&c, "text").unwrap();
    });
    assert_eq!(
        refused_by(&supervisor(), &h, &emptied),
        rules::REVIEW_COMMENTS_APPEND_ONLY
    );
    // The whole list, deleted or swapped for an empty one.
    let list_gone = forged(&doc, |tx| {
        let review = review_obj(tx);
        tx.delete(&review, "comments").unwrap();
    });
    let list_swapped = forged(&doc, |tx| {
        let review = review_obj(tx);
        tx.put_object(&review, "comments", ObjType::List).unwrap();
    });
    for forgery in [&list_gone, &list_swapped] {
        assert!(review_comments(&forgery.0).is_empty());
        assert_eq!(
            refused_by(&officer(), &h, forgery),
            rules::REVIEW_COMMENTS_APPEND_ONLY
        );
    }
    // A comment slipped in before the supervisor's.
    let first = forged(&doc, |tx| {
        let comments = comments_obj(tx);
        let c = tx.insert_object(&comments, 0, ObjType::Map).unwrap();
        tx.put(&c, "by", "ofc").unwrap();
        tx.put(&c, "text", "submitted complete").unwrap();
    });
    assert_eq!(
        refused_by(&officer(), &h, &first),
        rules::REVIEW_COMMENTS_APPEND_ONLY
    );
}

#[test]
fn the_review_block_is_never_deleted_or_replaced() {
    let h = header(Kind::PatrolNote, "east", "ofc");
    let doc = returned_note(&h);
    let deleted = forged(&doc, |tx| tx.delete(ROOT, "review").unwrap());
    // Unchecked, the returned record would be a draft with no comments.
    assert_eq!(review_state(&deleted.0), ReviewState::Draft);
    assert!(review_comments(&deleted.0).is_empty());
    let replaced = forged(&doc, |tx| {
        let review = tx.put_object(ROOT, "review", ObjType::Map).unwrap();
        tx.put(&review, "state", "submitted").unwrap();
        tx.put_object(&review, "comments", ObjType::List).unwrap();
    });
    assert_eq!(review_state(&replaced.0), ReviewState::Submitted);
    let scalar = forged(&doc, |tx| tx.put(ROOT, "review", "none").unwrap());
    for forgery in [&deleted, &replaced, &scalar] {
        assert_eq!(
            refused_by(&officer(), &h, forgery),
            rules::REVIEW_COMMENTS_APPEND_ONLY
        );
    }
    // Supervisors neither.
    let by_supervisor = raw_change(&doc, desk_actor(), "sup", |tx| {
        tx.delete(ROOT, "review").unwrap()
    });
    assert_eq!(
        refused_by(&supervisor(), &h, &by_supervisor),
        rules::REVIEW_COMMENTS_APPEND_ONLY
    );
    // Nor does it grow keys of its own.
    let extra = forged(&doc, |tx| {
        let review = review_obj(tx);
        tx.put(&review, "reviewed_by", "sup").unwrap();
    });
    assert_eq!(refused_by(&officer(), &h, &extra), rules::REVIEW_FIELDS);
}

#[test]
fn a_review_block_made_beside_the_real_one_is_refused() {
    // A record from before review blocks (header only): making one is
    // fine, making one beside another device's is not.
    let h = header(Kind::PatrolNote, "east", "ofc");
    let mut doc = Automerge::new();
    doc.set_actor(officer_actor());
    let mut tx = doc.transaction();
    h.write(&mut tx).unwrap();
    tx.commit_with(ops::commit_options("create patrol_note", at("ofc")));
    let base = doc.fork();
    let mut desk = doc.fork();
    desk.set_actor(desk_actor());
    ops::review(
        &mut desk,
        ReviewState::Returned,
        Some(("sup", "add the beat")),
        at("sup"),
    )
    .unwrap();
    doc.merge(&mut desk).unwrap();

    let alone = forged(&base, |tx| {
        let review = tx.put_object(ROOT, "review", ObjType::Map).unwrap();
        tx.put(&review, "state", "submitted").unwrap();
    });
    assert!(officer().check_write(&h, false, &alone.0, &alone.1).is_ok());

    // The same change meeting the supervisor's block on the server.
    let before = doc.get_heads();
    let mut merged = doc.fork();
    merged.merge(&mut alone.0.clone()).unwrap();
    let changes = merged.get_changes(&before);
    assert_eq!(changes.len(), 1);
    assert_eq!(merged.get_all(ROOT, "review").unwrap().len(), 2);
    assert_eq!(
        refused_by(&officer(), &h, &(merged, changes)),
        rules::REVIEW_COMMENTS_APPEND_ONLY
    );
}

#[test]
fn only_a_supervisor_moves_a_record_out_of_approved_or_returned() {
    let h = header(Kind::PatrolNote, "east", "ofc");
    let put_state = |doc: &Automerge, state: &'static str| {
        forged(doc, move |tx| {
            let review = review_obj(tx);
            tx.put(&review, "state", state).unwrap();
        })
    };
    let approved = approved_note(&h);
    let returned = returned_note(&h);
    for (doc, state) in [
        (&approved, "draft"),
        (&approved, "submitted"),
        (&returned, "draft"),
    ] {
        let forgery = put_state(doc, state);
        assert_eq!(review_state(&forgery.0).name(), state);
        assert_eq!(
            refused_by(&officer(), &h, &forgery),
            rules::REVIEW_STATE,
            "{state}"
        );
    }
    let unset = forged(&approved, |tx| {
        let review = review_obj(tx);
        tx.delete(&review, "state").unwrap();
    });
    assert_eq!(review_state(&unset.0), ReviewState::Draft);
    assert_eq!(refused_by(&officer(), &h, &unset), rules::REVIEW_STATE);
    // Withdrawing a submission is not the creator's either.
    let mut submitted = Automerge::new();
    submitted.set_actor(officer_actor());
    ops::create(&mut submitted, &h, at("ofc")).unwrap();
    ops::review(&mut submitted, ReviewState::Submitted, None, at("ofc")).unwrap();
    assert_eq!(
        refused_by(&officer(), &h, &put_state(&submitted, "draft")),
        rules::REVIEW_STATE
    );
    // Submitting is the creator's: another officer may not submit it.
    let colleague = who("ofc2", Role::Officer, &["east"]);
    let theirs = raw_change(&returned, ActorId::from(vec![3u8; 16]), "ofc2", |tx| {
        let review = review_obj(tx);
        tx.put(&review, "state", "submitted").unwrap();
    });
    assert_eq!(refused_by(&colleague, &h, &theirs), rules::REVIEW_STATE);
    // The creator resubmits the returned record; a supervisor may reopen
    // an approved one.
    let resubmitted = put_state(&returned, "submitted");
    assert!(officer()
        .check_write(&h, false, &resubmitted.0, &resubmitted.1)
        .is_ok());
    let reopened = raw_change(&approved, desk_actor(), "sup", |tx| {
        let review = review_obj(tx);
        tx.put(&review, "state", "draft").unwrap();
    });
    assert!(supervisor()
        .check_write(&h, false, &reopened.0, &reopened.1)
        .is_ok());
}

#[test]
fn a_state_set_beside_a_decision_it_did_not_see_is_refused() {
    // The officer's tablet goes back to when the record was returned,
    // types enough to outnumber the supervisor's approval, and
    // "resubmits": against its own dependencies that is a creator
    // submitting a returned record, but it lands beside the approval.
    let h = header(Kind::PatrolNote, "east", "ofc");
    let returned = returned_note(&h);
    let stale = returned.get_heads();
    let doc = approved_note(&h);
    let before = doc.get_heads();
    let mut tablet = doc.fork_at(&stale).unwrap();
    tablet.set_actor(ActorId::from(vec![9u8; 16]));
    for _ in 0..50 {
        ops::splice(&mut tablet, "notes", 0, 0, "x", at("ofc")).unwrap();
    }
    let mut tx = tablet.transaction();
    let review = review_obj(&tx);
    tx.put(&review, "state", "submitted").unwrap();
    tx.commit_with(ops::commit_options("review submitted", at("ofc")));
    let mut merged = doc.fork();
    merged.merge(&mut tablet).unwrap();
    let changes = merged.get_changes(&before);
    // Unchecked, the approval would be undone.
    assert_eq!(review_state(&merged), ReviewState::Submitted);
    assert_eq!(
        merged.get_all(review_obj(&merged), "state").unwrap().len(),
        2
    );
    let refusal = officer()
        .check_write(&h, false, &merged, &changes)
        .unwrap_err();
    assert_eq!(refusal.rule, rules::REVIEW_STATE);
    assert!(refusal.reason.contains("approved"), "{refusal}");
}

#[test]
fn the_normal_review_flow_passes() {
    let h = header(Kind::PatrolNote, "east", "ofc");
    let (officer, supervisor) = (officer(), supervisor());
    let mut doc = Automerge::new();
    doc.set_actor(officer_actor());
    let step = |doc: &mut Automerge,
                p: &Principal,
                is_new: bool,
                edit: &dyn Fn(&mut Automerge, Stamp<'_>)| {
        let before = doc.get_heads();
        edit(doc, at(&p.user));
        let changes = doc.get_changes(&before);
        p.check_write(&h, is_new, doc, &changes)
            .unwrap_or_else(|r| panic!("{} was refused: {r}", p.user))
    };
    step(&mut doc, &officer, true, &|d, s| {
        ops::create(d, &h, s).unwrap()
    });
    step(&mut doc, &officer, false, &|d, s| {
        ops::review(d, ReviewState::Submitted, Some(("ofc", "ready")), s).unwrap()
    });
    let wrote = step(&mut doc, &supervisor, false, &|d, s| {
        ops::review(d, ReviewState::Returned, Some(("sup", "add the beat")), s).unwrap()
    });
    assert_eq!(wrote.decisions, vec![ReviewState::Returned]);
    step(&mut doc, &officer, false, &|d, s| {
        ops::set(d, "beat", FieldValue::Str("B4".into()), s).unwrap();
        ops::review(d, ReviewState::Submitted, None, s).unwrap()
    });
    let wrote = step(&mut doc, &supervisor, false, &|d, s| {
        ops::review(d, ReviewState::Approved, Some(("sup", "good")), s).unwrap()
    });
    assert_eq!(wrote.decisions, vec![ReviewState::Approved]);
    assert_eq!(review_state(&doc), ReviewState::Approved);
    let by: Vec<String> = review_comments(&doc).into_iter().map(|c| c.by).collect();
    assert_eq!(by, ["ofc", "sup", "sup"]);
}

#[test]
fn a_record_with_a_conflict_is_approved_only_once_it_is_resolved() {
    let h = header(Kind::PatrolNote, "east", "ofc");
    let supervisor = supervisor();
    let mut base = Automerge::new();
    base.set_actor(officer_actor());
    ops::create(&mut base, &h, at("ofc")).unwrap();
    // Two devices set the beat while offline: a conflict.
    let mut one = base.fork().with_actor(ActorId::from(vec![1u8; 24]));
    let mut two = base.fork().with_actor(ActorId::from(vec![2u8; 24]));
    ops::set(&mut one, "beat", FieldValue::Str("B4".into()), at("ofc")).unwrap();
    ops::set(&mut two, "beat", FieldValue::Str("B5".into()), at("ofc")).unwrap();
    one.merge(&mut two).unwrap();
    let mut doc = one;

    // Returning it is fine: the officer fixes it.
    let before = doc.get_heads();
    let mut returned = doc.fork();
    ops::review(
        &mut returned,
        ReviewState::Returned,
        Some(("sup", "which beat?")),
        at("sup"),
    )
    .unwrap();
    let changes = returned.get_changes(&before);
    assert!(supervisor
        .check_write(&h, false, &returned, &changes)
        .is_ok());

    // Approving it is not, and the refusal names the field.
    let mut approved = doc.fork();
    ops::review(&mut approved, ReviewState::Approved, None, at("sup")).unwrap();
    let changes = approved.get_changes(&before);
    let refused = supervisor
        .check_write(&h, false, &approved, &changes)
        .unwrap_err();
    assert_eq!(refused.rule, rules::UNRESOLVED_CONFLICT);
    assert!(refused.reason.contains("beat"), "{refused}");

    // Resolved and approved in one go passes.
    ops::set(&mut doc, "beat", FieldValue::Str("B4".into()), at("sup")).unwrap();
    ops::review(&mut doc, ReviewState::Approved, None, at("sup")).unwrap();
    let changes = doc.get_changes(&before);
    let wrote = supervisor.check_write(&h, false, &doc, &changes).unwrap();
    assert_eq!(wrote.decisions, vec![ReviewState::Approved]);
}

#[test]
fn a_list_row_names_the_record_but_never_a_contact() {
    use baraza_records::{submitted_at, title};
    let (mut doc, _) = created(&header(Kind::Feedback, "east", "ofc"));
    assert_eq!(title(&doc, Kind::Feedback), None);
    ops::splice(
        &mut doc,
        "description",
        0,
        0,
        "\n  Noise at night\nfrom the bar",
        at("ofc"),
    )
    .unwrap();
    assert_eq!(
        title(&doc, Kind::Feedback).as_deref(),
        Some("Noise at night")
    );
    ops::set(
        &mut doc,
        "about",
        FieldValue::Str("Bar noise".into()),
        at("ofc"),
    )
    .unwrap();
    assert_eq!(title(&doc, Kind::Feedback).as_deref(), Some("Bar noise"));
    let (contact, _) = created(&header(Kind::FeedbackContact, "east", "ofc"));
    assert_eq!(title(&contact, Kind::FeedbackContact), None);

    assert_eq!(submitted_at(&doc), None);
    ops::review(
        &mut doc,
        ReviewState::Submitted,
        None,
        Stamp {
            now_ms: 7_000,
            by: "ofc",
        },
    )
    .unwrap();
    assert_eq!(submitted_at(&doc), Some(7_000));
    ops::review(&mut doc, ReviewState::Approved, None, at("sup")).unwrap();
    assert_eq!(submitted_at(&doc), None, "only while it stands");
}

#[test]
fn every_rule_has_one_name_that_reads_back_as_itself() {
    use baraza_records::access::Rule;
    let mut names = std::collections::BTreeSet::new();
    for rule in Rule::ALL {
        assert!(names.insert(rule.name()), "{} named twice", rule.name());
        assert_eq!(Rule::parse(rule.name()), Some(rule));
        assert_eq!(
            serde_json::to_value(rule).unwrap(),
            serde_json::json!(rule.name())
        );
    }
    assert_eq!(Rule::parse("no_such_rule"), None);
}

#[test]
fn every_review_state_is_the_schema_s_value_of_its_name() {
    use baraza_records::schema::REVIEW_STATES;
    let names: Vec<&str> = ReviewState::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(names, REVIEW_STATES);
    for state in ReviewState::ALL {
        assert_eq!(ReviewState::parse(state.name()), Some(state));
        assert_eq!(
            serde_json::to_value(state).unwrap(),
            serde_json::json!(state.name())
        );
        assert_eq!(
            state.is_decision(),
            matches!(state, ReviewState::Approved | ReviewState::Returned)
        );
    }
    assert_eq!(ReviewState::parse("Approved"), None);
}
