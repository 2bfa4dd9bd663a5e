//! The access rules on their own: who reads which kinds where, and which
//! writes each rule refuses, by name.

use automerge::{Automerge, Change, ChangeHash};
use baraza_records::access::{rules, Principal, Role};
use baraza_records::ops::{self, FieldValue, Stamp};
use baraza_records::{Header, Kind, SCHEMA_VERSION};

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
        ops::review(d, "approved", None, s).unwrap()
    });
    let refused = officer.check_write(&h, false, &doc, &changes).unwrap_err();
    assert_eq!(refused.rule, rules::REVIEW);

    // Submitting is the author's own step.
    let (doc, changes) = edited(&h, "ofc", |d, s| {
        ops::review(d, "submitted", None, s).unwrap()
    });
    assert!(officer.check_write(&h, false, &doc, &changes).is_ok());

    let supervisor = who("sup", Role::Supervisor, &["east"]);
    let (doc, changes) = edited(&h, "sup", |d, s| {
        ops::review(d, "returned", Some(("sup", "add the beat")), s).unwrap()
    });
    let summary = supervisor.check_write(&h, false, &doc, &changes).unwrap();
    assert_eq!(summary.decisions, vec!["returned".to_string()]);

    let elsewhere = who("sup2", Role::Supervisor, &["west"]);
    let (doc, changes) = edited(&h, "sup2", |d, s| {
        ops::review(d, "approved", None, s).unwrap()
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
