//! A complainant's contact details reach only the officer who took them
//! and the area's supervisors; every read through the API is audited; an
//! administrator's erasure removes them from the server and, at their next
//! sync, from every device, including one that edited them offline.

use baraza_tests::{https_get, run_server_command, ServerProcess, Tablet};

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_details_are_restricted_audited_and_erased_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("pc.kiprotich", "officer", &["eastleigh"]);
    server.add_user("lia.njeri", "liaison", &["eastleigh"]);
    server.add_user("sgt.wanjiru", "supervisor", &["eastleigh"]);
    let officer = Tablet::for_user(&server, "officer's tablet", "pc.kiprotich", "eastleigh");
    let liaison = Tablet::for_user(&server, "liaison's tablet", "lia.njeri", "eastleigh");
    let desk = Tablet::for_user(&server, "supervisor's desk", "sgt.wanjiru", "eastleigh");
    let field = Tablet::for_user(&server, "supervisor's tablet", "sgt.wanjiru", "eastleigh");

    let feedback = officer
        .create_record(
            "feedback",
            "eastleigh",
            vec![
                kv("category", "complaint"),
                kv("about", "Harassment at the stage"),
            ],
        )
        .unwrap();
    let contact = officer
        .create_record(
            "feedback_contact",
            "eastleigh",
            vec![kv("feedback", &feedback), kv("phone", "+254 711 222 333")],
        )
        .unwrap();
    assert_eq!(officer.sync().await.refused, 0);
    for t in [&liaison, &desk, &field] {
        t.sync().await;
    }
    // The liaison reads the feedback, not the contact; supervisors both.
    assert!(liaison.list().unwrap().contains(&feedback));
    assert!(!liaison.list().unwrap().contains(&contact));
    assert_eq!(desk.field(&contact, "phone").value, "+254 711 222 333");
    assert_eq!(field.field(&contact, "phone").value, "+254 711 222 333");

    let (status, body) = https_get(
        &server,
        &format!("/v1/records/{contact}"),
        Some(desk.token()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = https_get(
        &server,
        &format!("/v1/records/{contact}"),
        Some(liaison.token()),
    )
    .await;
    assert_eq!(status, 404);
    let log = server.audit_entries();
    assert!(log.iter().any(|e| e["event"] == "restricted_read"
        && e["details"]["record"] == contact.as_str()
        && e["details"]["user"] == "sgt.wanjiru"));
    // The audit never holds the details themselves.
    assert!(!serde_json::to_string(&log).unwrap().contains("711 222 333"));

    // The field tablet edits the contact offline while an administrator
    // erases it; the desk and the officer are online.
    field.set(&contact, "phone", "+254 700 999 888").unwrap();
    let out = run_server_command(
        server.data_dir(),
        &["record", "erase", "--id", &contact],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    // Only contact details can be erased.
    let out = run_server_command(
        server.data_dir(),
        &["record", "erase", "--id", &feedback],
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only feedback_contact"));

    let (status, _) = https_get(
        &server,
        &format!("/v1/records/{contact}"),
        Some(desk.token()),
    )
    .await;
    assert_eq!(status, 404, "gone from the server");
    for t in [&desk, &officer] {
        t.sync().await;
        assert!(
            !t.list().unwrap().contains(&contact),
            "gone from the device"
        );
        assert!(t.list().unwrap().contains(&feedback));
    }
    // The offline edit does not bring it back: the push is refused as
    // erased and the tablet deletes its copy, unsent change and all.
    field.sync().await;
    assert!(!field.list().unwrap().contains(&contact));
    let (status, _) = https_get(
        &server,
        &format!("/v1/records/{contact}"),
        Some(desk.token()),
    )
    .await;
    assert_eq!(status, 404);
    assert!(server
        .audit_entries()
        .iter()
        .any(|e| e["event"] == "record_erased" && e["details"]["record"] == contact.as_str()));
}
