//! Police IT moves a station's server from the embedded store to
//! PostgreSQL: `baraza-server migrate --from-data DIR --to postgres://...`
//! copies the stopped server's data into an empty database and checks
//! it; tablets that synced with the old server then reconcile with the
//! new one and exchange only what changed since, not everything they hold.

use std::process::Command;
use std::time::Duration;

use baraza_tests::{binary, pin_to_sled, postgres_database, run_bounded, ServerProcess, Tablet};

fn migrate(from: &std::path::Path, to: &str) -> std::process::Output {
    run_bounded(
        Command::new(binary("baraza-server"))
            .arg("migrate")
            .arg("--from-data")
            .arg(from)
            .args(["--to", to]),
        Duration::from_secs(120),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_server_moved_to_postgres_keeps_everything_and_tablets_send_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("station");
    pin_to_sled(&data);
    let mut old = ServerProcess::start(&data);
    let patrol = Tablet::new(&old, "patrol tablet");
    let desk = Tablet::new(&old, "desk tablet");
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            patrol
                .create(vec![("title".into(), format!("Baraza {n}"))])
                .unwrap(),
        );
    }
    patrol.sync().await;
    patrol.set(&ids[0], "place", "Chief's camp").unwrap();
    patrol.sync().await;
    // One record written often enough to be folded into one save on the
    // old server: its history comes across too.
    for n in 0..66 {
        patrol
            .set(&ids[2], "place", &format!("checkpoint {n}"))
            .unwrap();
        patrol.sync().await;
    }
    assert_eq!(desk.sync().await.docs_received, 3);
    assert!(old.terminate().success());

    let url = postgres_database();
    let out = migrate(&data, &url);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("migrated and checked: 3 records"), "{said}");

    // The same station, now on PostgreSQL.
    let new = ServerProcess::start_on_postgres(&data, &url);
    patrol.point_at(&new);
    desk.point_at(&new);
    let again = patrol.sync().await;
    assert_eq!(
        (again.docs_sent, again.docs_received, again.unacknowledged),
        (0, 0, 0),
        "nothing re-sent either way: {again:?}"
    );
    patrol.set(&ids[1], "place", "Market").unwrap();
    assert_eq!(patrol.sync().await.docs_sent, 1);
    let caught_up = desk.sync().await;
    assert_eq!(caught_up.docs_received, 1, "{caught_up:?}");
    assert_eq!(
        desk.value(&ids[0], "place").as_deref(),
        Some("Chief's camp")
    );
    assert_eq!(desk.value(&ids[1], "place").as_deref(), Some("Market"));
    assert_eq!(
        desk.value(&ids[2], "place").as_deref(),
        Some("checkpoint 65")
    );
    assert_eq!(desk.history(&ids[2]).unwrap().len(), 67);
    assert_eq!(desk.all_heads(), patrol.all_heads());

    // The audit chain came across whole and goes on.
    let verified = new.command(&["audit", "verify"], "");
    assert!(verified.status.success(), "{verified:?}");
    let events: Vec<String> = new
        .audit_entries()
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert!(
        events.iter().filter(|e| *e == "sync").count() >= 4,
        "{events:?}"
    );

    // A database that holds data is refused, and left as it was.
    let twice = migrate(&data, &url);
    assert!(!twice.status.success());
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("not empty"),
        "{twice:?}"
    );
}
