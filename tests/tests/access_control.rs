//! Who may read and change what, end to end through a real server: for
//! each role, records of each kind in and out of its areas reach its
//! tablet (feed and read API) or do not, and a refused read looks exactly
//! like a missing record. Writes outside the rules are rejected whole,
//! named by rule, kept on the tablet marked rejected, and audited.

use std::collections::BTreeSet;

use std::time::Duration;

use baraza_tests::{
    cli, https_get, run_bounded, run_cli, run_server_command, ServerProcess, Tablet,
};

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

struct Person {
    user: String,
    tablet: Tablet,
}

fn person(server: &ServerProcess, user: &str, role: &str, areas: &[&str]) -> Person {
    server.add_user(user, role, areas);
    let tablet = Tablet::for_user(server, &format!("{user}'s tablet"), user, areas[0]);
    Person {
        user: user.to_string(),
        tablet,
    }
}

/// Ids a listing returned.
async fn listed(server: &ServerProcess, token: &str) -> BTreeSet<String> {
    let (status, body) = https_get(server, "/v1/records", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reads_and_writes_only_what_its_role_and_areas_allow() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let officer = person(&server, "ofc.east", "officer", &["east"]);
    let liaison = person(&server, "lia.east", "liaison", &["east"]);
    let supervisor = person(&server, "sup.east", "supervisor", &["east"]);
    let away = person(&server, "ofc.west", "officer", &["west"]);
    let west_supervisor = person(&server, "sup.west", "supervisor", &["west"]);

    // One record of each kind in each area, by people who may create them.
    let mut made: Vec<(&str, &str, String)> = Vec::new();
    for (who, kind, area) in [
        (&officer, "patrol_note", "east"),
        (&liaison, "meeting", "east"),
        (&liaison, "feedback", "east"),
        (&officer, "feedback_contact", "east"),
        (&away, "patrol_note", "west"),
        (&away, "meeting", "west"),
        (&away, "feedback", "west"),
        (&away, "feedback_contact", "west"),
    ] {
        let id = who.tablet.create_record(kind, area, vec![]).unwrap();
        made.push((kind, area, id));
    }
    for p in [&officer, &liaison, &away] {
        let report = p.tablet.sync().await;
        assert_eq!(
            (report.unacknowledged, report.refused),
            (0, 0),
            "{report:?}"
        );
    }

    // What each may read: by role and kind in their areas, plus their own.
    let expect = |role: &str, user_areas: &[&str], own: &[&str]| -> BTreeSet<String> {
        made.iter()
            .filter(|(kind, area, id)| {
                own.contains(&id.as_str())
                    || (user_areas.contains(area)
                        && match role {
                            "officer" => matches!(*kind, "patrol_note" | "meeting"),
                            "liaison" => matches!(*kind, "meeting" | "feedback"),
                            "supervisor" => true,
                            _ => false,
                        })
            })
            .map(|(_, _, id)| id.clone())
            .collect()
    };
    let mine = |p: &Person| -> Vec<String> { p.tablet.list().unwrap() };
    let officer_own = mine(&officer);
    let liaison_own = mine(&liaison);
    let away_own = mine(&away);
    let cases = [
        (
            &officer,
            expect("officer", &["east"], &as_str(&officer_own)),
        ),
        (
            &liaison,
            expect("liaison", &["east"], &as_str(&liaison_own)),
        ),
        (&supervisor, expect("supervisor", &["east"], &[])),
        (&away, expect("officer", &["west"], &as_str(&away_own))),
        (&west_supervisor, expect("supervisor", &["west"], &[])),
    ];
    // The expectations are not trivial: every reader misses something.
    for (_, expected) in &cases {
        assert!(!expected.is_empty() && expected.len() < made.len());
    }
    let nowhere = "00000000-0000-4000-8000-000000000000";
    let (absent_status, absent_body) = https_get(
        &server,
        &format!("/v1/records/{nowhere}"),
        Some(officer.tablet.token()),
    )
    .await;
    assert_eq!(absent_status, 404);
    for (p, expected) in &cases {
        p.tablet.sync().await;
        let held: BTreeSet<String> = p.tablet.list().unwrap().into_iter().collect();
        assert_eq!(&held, expected, "records on {}'s tablet", p.user);
        assert_eq!(&listed(&server, p.tablet.token()).await, expected);
        for (kind, area, id) in &made {
            let (status, body) = https_get(
                &server,
                &format!("/v1/records/{id}"),
                Some(p.tablet.token()),
            )
            .await;
            if expected.contains(id) {
                assert_eq!(status, 200, "{kind} in {area}: {body}");
            } else {
                // Exactly what a record that does not exist looks like.
                assert_eq!(
                    (status, &body),
                    (absent_status, &absent_body),
                    "{kind} in {area}"
                );
            }
        }
    }
    // Refused reads are logged; restricted ones audited by name.
    let log = server.audit_entries();
    assert!(log
        .iter()
        .any(|e| e["event"] == "record_read_refused" && e["details"]["exists"] == true));
    assert!(log
        .iter()
        .any(|e| e["event"] == "restricted_read" && e["details"]["user"] == "sup.east"));

    // Writes. A liaison may not create patrol notes; an officer may not
    // create records outside their areas. Both are rejected by rule and
    // stay on the tablet, marked.
    let patrol = liaison
        .tablet
        .create_record("patrol_note", "east", vec![kv("beat", "B4")])
        .unwrap();
    let elsewhere = officer
        .tablet
        .create_record("meeting", "west", vec![kv("title", "not mine to hold")])
        .unwrap();
    // Contact details: only the author and supervisors of the area edit.
    let contact = &made[3].2;
    supervisor
        .tablet
        .set(contact, "phone", "+254 700 000 001")
        .unwrap();
    for (p, id, rule) in [
        (&liaison, &patrol, "kind_for_role"),
        (&officer, &elsewhere, "own_areas"),
    ] {
        let report = p.tablet.sync().await;
        assert_eq!(report.refused, 1, "{report:?}");
        let record = p.tablet.get(id).unwrap();
        let rejected = record.rejected.expect("marked rejected");
        assert_eq!(rejected.rule.as_deref(), Some(rule));
        assert!(record.unacknowledged, "the change is kept");
        let (status, _) = https_get(
            &server,
            &format!("/v1/records/{id}"),
            Some(supervisor.tablet.token()),
        )
        .await;
        assert_eq!(status, 404, "nothing of a rejected record is stored");
        // Not offered again until edited: the next sync sends nothing.
        assert_eq!(p.tablet.sync().await.docs_sent, 0);
    }
    assert_eq!(supervisor.tablet.sync().await.refused, 0);
    officer.tablet.sync().await;
    assert_eq!(
        officer.tablet.field(contact, "phone").value,
        "+254 700 000 001"
    );

    // Reassigned: the officer moves to the west. Their east patrol note is
    // still theirs to read, but no longer theirs to change.
    let out = run_server_command(
        server.data_dir(),
        &["user", "areas", "--name", "ofc.east", "--area", "west"],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let patrol_east = &made[0].2;
    officer.tablet.set(patrol_east, "beat", "B9").unwrap();
    officer.tablet.sync().await;
    let record = officer.tablet.get(patrol_east).unwrap();
    assert_eq!(
        record.rejected.and_then(|r| r.rule).as_deref(),
        Some("own_areas")
    );
    let log = server.audit_entries();
    let refusals: Vec<_> = log
        .iter()
        .filter(|e| e["event"] == "change_refused")
        .map(|e| e["details"]["rule"].as_str().unwrap_or("").to_string())
        .collect();
    for rule in ["kind_for_role", "own_areas"] {
        assert!(refusals.iter().any(|r| r == rule), "{refusals:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_cannot_approve_their_own_record_and_a_supervisor_can() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let officer = person(&server, "cpl.otieno", "officer", &["kibera-north"]);
    let supervisor = person(&server, "sgt.wanjiru", "supervisor", &["kibera-north"]);

    let id = officer
        .tablet
        .create_record("patrol_note", "kibera-north", vec![kv("beat", "B4")])
        .unwrap();
    officer.tablet.submit(&id).unwrap();
    assert_eq!(officer.tablet.sync().await.refused, 0);

    // The officer's app approves its own record.
    officer
        .tablet
        .review(
            &id,
            baraza_records::ReviewState::Approved,
            Some("looks fine to me".into()),
        )
        .unwrap();
    let report = officer.tablet.sync().await;
    assert_eq!(report.refused, 1, "{report:?}");
    let record = officer.tablet.get(&id).unwrap();
    let rejected = record.rejected.clone().expect("marked rejected");
    assert_eq!(
        rejected.rule.as_deref(),
        Some("review_by_area_supervisor"),
        "{rejected:?}"
    );
    assert!(record.unacknowledged);
    // Kept on the device, as the officer made it.
    let history = officer.tablet.history(&id).unwrap();
    assert_eq!(
        history.last().and_then(|h| h.message.clone()).as_deref(),
        Some("review approved by cpl.otieno")
    );
    let status = officer.tablet.status().unwrap();
    assert_eq!(status.refused.len(), 1);
    assert_eq!(status.refused[0].id, id);

    // The server's copy is unchanged: still submitted.
    let (code, body) = https_get(
        &server,
        &format!("/v1/records/{id}"),
        Some(supervisor.tablet.token()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["review_state"], "submitted");

    // The supervisor of the area returns it with a comment; that stands,
    // reaches the officer, and is audited as a decision.
    supervisor.tablet.sync().await;
    supervisor
        .tablet
        .review(
            &id,
            baraza_records::ReviewState::Returned,
            Some("add the patrol's end time".into()),
        )
        .unwrap();
    assert_eq!(supervisor.tablet.sync().await.refused, 0);
    let (_, body) = https_get(
        &server,
        &format!("/v1/records/{id}"),
        Some(supervisor.tablet.token()),
    )
    .await;
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["review_state"], "returned");
    assert!(body.contains("add the patrol's end time"));

    let log = server.audit_entries();
    assert!(log.iter().any(|e| e["event"] == "change_refused"
        && e["details"]["rule"] == "review_by_area_supervisor"
        && e["details"]["user"] == "cpl.otieno"));
    assert!(log.iter().any(|e| e["event"] == "review_decision"
        && e["details"]["decision"] == "returned"
        && e["details"]["user"] == "sgt.wanjiru"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_shows_a_rejected_decision_with_its_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("pc.kiprotich", "officer", &["eastleigh"]);
    let token = server.add_device_for("command-line tablet", "pc.kiprotich");
    let dir = tmp.path().join("cli");
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
            "pc.kiprotich",
            "--area",
            "eastleigh",
        ],
    );
    let id = run_cli(&dir, &["new", "--kind", "patrol_note", "--set", "beat=B2"])
        .trim()
        .to_string();
    run_cli(&dir, &["sync"]);
    run_cli(&dir, &["review", &id, "approved"]);
    let sync = run_bounded(cli(&dir).arg("sync"), Duration::from_secs(30));
    assert!(!sync.status.success(), "a refused change fails the sync");
    let stderr = String::from_utf8_lossy(&sync.stderr);
    assert!(
        stderr.contains("rejected") && stderr.contains("review_by_area_supervisor"),
        "{stderr}"
    );
    let shown = run_cli(&dir, &["show", &id]);
    assert!(
        shown.contains("REJECTED by rule review_by_area_supervisor"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_given_a_new_area_receives_its_earlier_records() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let away = person(&server, "ofc.west", "officer", &["west"]);
    let supervisor = person(&server, "sup.grow", "supervisor", &["east"]);
    let east = supervisor
        .tablet
        .create_record("meeting", "east", vec![kv("title", "East baraza")])
        .unwrap();
    let west = away
        .tablet
        .create_record("patrol_note", "west", vec![kv("beat", "W1")])
        .unwrap();
    away.tablet.sync().await;
    supervisor.tablet.sync().await;
    assert_eq!(supervisor.tablet.list().unwrap(), vec![east.clone()]);

    // Their feed cursor is past the west record now; the new area must
    // still bring it.
    let out = run_server_command(
        server.data_dir(),
        &[
            "user", "areas", "--name", "sup.grow", "--area", "east", "--area", "west",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let report = supervisor.tablet.sync().await;
    assert_eq!(report.unacknowledged, 0);
    let mut held = supervisor.tablet.list().unwrap();
    held.sort();
    let mut expected = vec![east, west.clone()];
    expected.sort();
    assert_eq!(held, expected);
    assert_eq!(supervisor.tablet.field(&west, "beat").value, "W1");
    // Once caught up under the new scope, the next sync is back to normal.
    let again = supervisor.tablet.sync().await;
    assert_eq!(again.docs_received, 0, "{again:?}");
}
