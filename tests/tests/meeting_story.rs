//! A community liaison and an officer edit the same meeting record on
//! their tablets while both are offline, then sync through a real server:
//! both attendees and both action items survive, the notes hold both
//! edits, the place they set differently is a visible conflict naming
//! both devices, and the history names both.

use baraza_tests::{device_of, ServerProcess, Tablet};

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liaison_and_an_officer_record_one_meeting_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("liaison.achieng", "liaison", &["kibera-north"]);
    server.add_user("cpl.otieno", "officer", &["kibera-north"]);
    let liaison = Tablet::for_user(
        &server,
        "liaison's tablet",
        "liaison.achieng",
        "kibera-north",
    );
    let officer = Tablet::for_user(&server, "officer's tablet", "cpl.otieno", "kibera-north");

    let id = liaison
        .create_record(
            "meeting",
            "kibera-north",
            vec![kv("title", "Baraza on street lighting")],
        )
        .unwrap();
    liaison
        .splice(&id, "notes", 0, 0, "Lamps out on Olympic road.")
        .unwrap();
    liaison.sync().await;
    officer.sync().await;

    // Offline, each records what they saw.
    liaison
        .add_item(
            &id,
            "attendees",
            vec![kv("name", "Mama Wanjiru"), kv("role", "elder")],
        )
        .unwrap();
    officer
        .add_item(
            &id,
            "attendees",
            vec![kv("name", "Otieno"), kv("role", "youth leader")],
        )
        .unwrap();
    liaison
        .add_item(
            &id,
            "action_items",
            vec![kv("text", "Report lamps to county"), kv("status", "open")],
        )
        .unwrap();
    officer
        .add_item(
            &id,
            "action_items",
            vec![
                kv("text", "Night patrols on Olympic road"),
                kv("owner", "OCS"),
            ],
        )
        .unwrap();
    liaison.splice(&id, "notes", 0, 0, "Liaison: ").unwrap();
    let end = officer.field(&id, "notes").value.chars().count() as u64;
    officer
        .splice(&id, "notes", end, 0, " Officer: patrols agreed.")
        .unwrap();
    liaison.set(&id, "place", "Chief's camp").unwrap();
    officer.set(&id, "place", "Social hall").unwrap();
    // A typed field refuses a value of the wrong type before anything syncs.
    assert!(officer.set(&id, "held_at", "yesterday").is_err());

    liaison.sync().await;
    officer.sync().await;
    liaison.sync().await;
    assert_eq!(liaison.heads(&id).unwrap(), officer.heads(&id).unwrap());

    let record = liaison.get(&id).unwrap();
    let value = |name: &str| {
        record
            .fields
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .value
            .clone()
    };
    assert_eq!(value("attendees"), "[2 items]");
    assert_eq!(value("action_items"), "[2 items]");
    assert_eq!(
        value("notes"),
        "Liaison: Lamps out on Olympic road. Officer: patrols agreed."
    );

    let liaison_device = device_of(liaison.token());
    let officer_device = device_of(officer.token());
    for tablet in [&liaison, &officer] {
        let conflicts = tablet.conflicts(&id).unwrap();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].path, "place");
        let mut seen: Vec<(String, String, Option<String>)> = conflicts[0]
            .values
            .iter()
            .map(|v| (v.value.clone(), v.actor[..32].to_string(), v.user.clone()))
            .collect();
        seen.sort();
        let mut expected = vec![
            (
                "Chief's camp".to_string(),
                liaison_device.clone(),
                Some("liaison.achieng".to_string()),
            ),
            (
                "Social hall".to_string(),
                officer_device.clone(),
                Some("cpl.otieno".to_string()),
            ),
        ];
        expected.sort();
        assert_eq!(seen, expected);
    }

    let history = officer.history(&id).unwrap();
    let by = |device: &str, field: &str| {
        history
            .iter()
            .any(|h| h.actor.starts_with(device) && h.fields.iter().any(|f| f == field))
    };
    assert!(by(&liaison_device, "attendees") && by(&officer_device, "attendees"));
    assert!(by(&liaison_device, "place") && by(&officer_device, "place"));
    assert!(by(&officer_device, "notes"));
    // Each change names its user as well as its device.
    for h in history
        .iter()
        .filter(|h| h.actor.starts_with(&officer_device))
    {
        assert_eq!(h.user.as_deref(), Some("cpl.otieno"), "{h:?}");
    }
    assert!(history
        .iter()
        .any(|h| h.user.as_deref() == Some("liaison.achieng")
            && h.fields.iter().any(|f| f == "attendees")));

    // Setting the field again resolves the conflict, on every tablet.
    officer.set(&id, "place", "Chief's camp").unwrap();
    officer.sync().await;
    liaison.sync().await;
    assert!(liaison.conflicts(&id).unwrap().is_empty());
    assert_eq!(liaison.field(&id, "place").value, "Chief's camp");
    // Submitting is the creator's step (rule review_state_by_supervisor).
    liaison.submit(&id).unwrap();
    let report = liaison.sync().await;
    assert_eq!(
        (report.refused, report.unacknowledged),
        (0, 0),
        "{report:?}"
    );
    officer.sync().await;
    assert_eq!(
        officer.get(&id).unwrap().review_state,
        baraza_records::ReviewState::Submitted
    );
}
