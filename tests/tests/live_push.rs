//! The duty officer's tablet stays connected in the background. When a
//! patrol reports an incident, it appears on the duty officer's tablet
//! without anyone pressing sync, and an edit made at the desk travels back
//! the same way.

use std::sync::Arc;
use std::time::Duration;

use baraza_client::SyncEvent;
use baraza_tests::{run_cli, user_for, wait_until, Recorder, ServerProcess, Tablet};

/// How long a live change may take to show up on a connected tablet.
const LIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_reported_on_patrol_appears_on_the_duty_officers_tablet() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let duty = Tablet::new(&server, "duty officer's tablet");
    let patrol = Tablet::new(&server, "patrol tablet");

    // The duty officer's tablet connects and settles (nothing to exchange).
    let events = Arc::new(Recorder::default());
    let background = duty.start_background(events.clone()).unwrap();
    wait_until("the duty tablet has settled", LIVE_TIMEOUT, || {
        events.count(|e| matches!(e, SyncEvent::Settled(_))) > 0
    })
    .await;

    // A patrol reports an incident and syncs once.
    let id = patrol
        .create(vec![
            ("title".into(), "Market stall fire, Gikomba".into()),
            ("place".into(), "Gikomba market".into()),
        ])
        .unwrap();
    let report = patrol.sync().await;
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));

    // The duty tablet receives it on the connection it already has.
    wait_until("the incident reaches the duty tablet", LIVE_TIMEOUT, || {
        duty.list().unwrap().contains(&id)
    })
    .await;
    assert_eq!(duty.heads(&id).unwrap(), patrol.heads(&id).unwrap());
    assert_eq!(duty.field(&id, "title").value, "Market stall fire, Gikomba");

    // The duty officer assigns it; the background sync pushes the edit by
    // itself and the patrol picks it up at its next sync.
    duty.set(&id, "facilitator", "Sgt. Wanjiru").unwrap();
    wait_until("the assignment is acknowledged", LIVE_TIMEOUT, || {
        duty.status().unwrap().unacknowledged == 0
    })
    .await;
    let report = patrol.sync().await;
    assert_eq!(report.docs_received, 1);
    assert_eq!(patrol.field(&id, "facilitator").value, "Sgt. Wanjiru");

    // A tablet running the command-line app updates it too; the duty
    // tablet sees that live as well.
    let cli_dir = tmp.path().join("cli-tablet");
    let token = server.add_device("command-line tablet");
    run_cli(
        &cli_dir,
        &[
            "init",
            "--server",
            &server.url(),
            "--ca",
            server.ca_path().to_str().unwrap(),
            "--token",
            &token,
            "--user",
            &user_for("command-line tablet"),
        ],
    );
    run_cli(&cli_dir, &["sync"]);
    run_cli(&cli_dir, &["set", &id, "place", "fire out, no injuries"]);
    run_cli(&cli_dir, &["sync"]);
    wait_until(
        "the CLI tablet's update reaches the duty tablet",
        LIVE_TIMEOUT,
        || duty.value(&id, "place").as_deref() == Some("fire out, no injuries"),
    )
    .await;

    // All of that happened on the one connection the duty tablet opened.
    assert_eq!(
        events.count(|e| matches!(e, SyncEvent::Connecting { .. })),
        1,
        "the duty tablet reconnected instead of receiving live: {:?}",
        events.events()
    );
    tokio::time::timeout(LIVE_TIMEOUT, background.stop())
        .await
        .expect("the background sync stops when asked");
}
