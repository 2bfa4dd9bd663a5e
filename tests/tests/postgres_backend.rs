//! The server on PostgreSQL (`--store postgres://...`), as police IT
//! would run it: users and devices added with the admin commands against
//! the database while no server runs, records synced, the server stopped
//! and started again with everything still there. Several nodes on one
//! database: `two_nodes.rs`.

use baraza_tests::{postgres_database, ServerProcess, Tablet, HARNESS_PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_keeps_users_devices_records_and_audit_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let mut server = ServerProcess::start_on_postgres(&tmp.path().join("node"), &url);
    let officer = Tablet::new(&server, "kibera tablet");
    let id = officer
        .create(vec![("title".into(), "Market patrol".into())])
        .unwrap();
    let report = officer.sync().await;
    assert_eq!(
        (report.docs_sent, report.unacknowledged),
        (1, 0),
        "{report:?}"
    );

    // Stopped; an admin adds a user against the database directly.
    assert!(server.terminate().success());
    let added = server.command(
        &[
            "user",
            "add",
            "--name",
            "sgt.wanjiru",
            "--role",
            "supervisor",
            "--area",
            "unassigned",
        ],
        &format!("{HARNESS_PASSWORD}\n"),
    );
    assert!(added.status.success(), "{added:?}");
    let listed = server.command(&["user", "list"], "");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("sgt.wanjiru"), "{listed}");

    // Started again: the record, the devices and the new user are there.
    server.restart();
    let desk = Tablet::for_user(&server, "desk tablet", "sgt.wanjiru", "unassigned");
    desk.sync().await;
    assert_eq!(
        desk.value(&id, "title").as_deref(),
        Some("Market patrol"),
        "the record synced before the restart reaches a new tablet"
    );
    officer.point_at(&server);
    let again = officer.sync().await;
    assert_eq!(again.docs_sent, 0, "nothing is re-offered: {again:?}");

    // One audit chain, verified against the database.
    let verified = server.command(&["audit", "verify"], "");
    assert!(
        verified.status.success(),
        "audit verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let events: Vec<String> = server
        .audit_entries()
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert!(events.iter().any(|e| e == "user_added"), "{events:?}");
    assert!(events.iter().any(|e| e == "sync"), "{events:?}");

    assert_eq!(desk.sync().await.unacknowledged, 0);
}
