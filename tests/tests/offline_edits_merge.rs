//! An officer and a community liaison edit the same meeting record while
//! both are offline, then reconnect: every edit survives, concurrent text
//! edits interleave, a field both changed shows both values, and the server
//! still holds the merged record after a graceful restart.

use baraza_client::Field;
use baraza_tests::{ServerProcess, Tablet};

fn sorted_values(field: &Field) -> Vec<String> {
    let mut all = field.conflicts.clone();
    all.push(field.value.clone());
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_and_liaison_edit_a_meeting_offline_then_reconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&tmp.path().join("server"));
    let officer = Tablet::new(&server, "officer's tablet");
    let liaison = Tablet::new(&server, "liaison's tablet");

    // The officer opens the meeting record and syncs it; the liaison gets it.
    let id = officer
        .create(vec![("title".into(), "Community baraza".into())])
        .unwrap();
    officer
        .splice(&id, "notes", 0, 0, "Residents raised street lighting.")
        .unwrap();
    let first = officer.sync().await;
    assert_eq!((first.docs_sent, first.unacknowledged), (1, 0));
    let fetched = liaison.sync().await;
    assert_eq!(fetched.docs_received, 1);
    assert_eq!(liaison.heads(&id).unwrap(), officer.heads(&id).unwrap());

    // Both go offline (they simply do not sync) and edit the same record.
    officer.set(&id, "place", "Chief's camp, Kibera").unwrap();
    liaison.set(&id, "facilitator", "Chief Odhiambo").unwrap();
    officer.splice(&id, "notes", 0, 0, "Officer: ").unwrap();
    let end = liaison.field(&id, "notes").value.chars().count() as u64;
    liaison
        .splice(&id, "notes", end, 0, " Liaison: follow up on Tuesday.")
        .unwrap();
    officer.set(&id, "title", "Baraza with the elders").unwrap();
    liaison
        .set(&id, "title", "Baraza with the youth group")
        .unwrap();
    assert!(officer.get(&id).unwrap().unacknowledged);
    assert!(liaison.get(&id).unwrap().unacknowledged);

    // They reconnect one after the other. (What each sync costs is
    // reconnect_cost.rs's story; this one is about what ends up where.)
    let a = officer.sync().await;
    assert_eq!(
        (a.docs_sent, a.docs_received, a.unacknowledged),
        (1, 0, 0),
        "the officer is not sent its own edits back"
    );
    let b = liaison.sync().await;
    assert_eq!((b.docs_sent, b.unacknowledged), (1, 0));
    assert_eq!(b.docs_received, 1, "the liaison gets the officer's edits");
    let a = officer.sync().await;
    assert_eq!(a.docs_sent, 0);
    assert_eq!(a.docs_received, 1, "the officer gets the liaison's edits");

    // Both tablets now show the same record, with nothing lost.
    let heads = officer.heads(&id).unwrap();
    assert_eq!(heads.len(), 2, "two concurrent branches, merged: {heads:?}");
    assert_eq!(liaison.heads(&id).unwrap(), heads);
    let record = officer.get(&id).unwrap();
    assert_eq!(liaison.get(&id).unwrap().fields, record.fields);
    assert!(!record.unacknowledged);
    assert_eq!(
        officer.field(&id, "place").value,
        "Chief's camp, Kibera",
        "the officer's field survives"
    );
    assert_eq!(
        officer.field(&id, "facilitator").value,
        "Chief Odhiambo",
        "the liaison's field survives"
    );
    let notes = officer.field(&id, "notes");
    assert!(notes.text);
    assert_eq!(
        notes.value,
        "Officer: Residents raised street lighting. Liaison: follow up on Tuesday."
    );
    let title = officer.field(&id, "title");
    assert_eq!(title.conflicts.len(), 1, "{title:?}");
    assert_eq!(
        sorted_values(&title),
        vec!["Baraza with the elders", "Baraza with the youth group"]
    );

    // A graceful restart keeps the merged record and the store's identity.
    let status = server.terminate();
    assert!(status.success(), "exit {status:?}; log:\n{}", server.log());
    server.restart();
    officer.point_at(&server);
    let again = officer.sync().await;
    assert_eq!(
        (again.docs_sent, again.docs_received, again.unacknowledged),
        (0, 0, 0),
        "a clean restart keeps the store's identity, so the officer re-offers nothing"
    );
    assert_eq!(officer.heads(&id).unwrap(), heads);

    // A tablet that never saw the record gets it whole from the server.
    let newcomer = Tablet::new(&server, "sergeant's tablet");
    let report = newcomer.sync().await;
    assert_eq!(report.docs_received, 1);
    assert_eq!(newcomer.list().unwrap(), vec![id.clone()]);
    assert_eq!(newcomer.heads(&id).unwrap(), heads);
    assert_eq!(newcomer.get(&id).unwrap().fields, record.fields);
}
