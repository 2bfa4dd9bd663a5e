//! The server keeps an index of records by kind, area, review state and
//! date, and answers listings and single-record reads over HTTPS to any
//! registered device: a station computer lists the submitted meetings of
//! its area and opens one with its conflicts and history.

use baraza_tests::{https_get, ServerProcess, Tablet};

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_lists_and_reads_records_through_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let liaison = Tablet::new(&server, "liaison's tablet");
    let officer = Tablet::new(&server, "officer's tablet");

    let meeting = liaison
        .create_record(
            "meeting",
            "kibera-north",
            vec![kv("title", "Lighting baraza")],
        )
        .unwrap();
    let other_area = liaison
        .create_record(
            "meeting",
            "mathare",
            vec![kv("title", "Water point baraza")],
        )
        .unwrap();
    let patrol = officer
        .create_record("patrol_note", "kibera-north", vec![kv("beat", "B4")])
        .unwrap();
    liaison.sync().await;
    officer.sync().await;
    // Both set the place offline; the liaison submits the meeting.
    liaison.set(&meeting, "place", "Chief's camp").unwrap();
    officer.set(&meeting, "place", "Social hall").unwrap();
    liaison.submit(&meeting).unwrap();
    liaison.sync().await;
    officer.sync().await;

    let token = server.add_device("station computer");
    let list = |query: &'static str| {
        let server = &server;
        let token = token.clone();
        async move {
            let (status, body) =
                https_get(server, &format!("/v1/records{query}"), Some(&token)).await;
            assert_eq!(status, 200, "{body}");
            let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
            let mut ids: Vec<String> = rows
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    assert_eq!(
        list("?kind=meeting&area=kibera-north").await,
        vec![meeting.clone()]
    );
    assert_eq!(
        list("?kind=meeting").await,
        sorted(vec![meeting.clone(), other_area.clone()])
    );
    assert_eq!(
        list("?area=kibera-north").await,
        sorted(vec![meeting.clone(), patrol.clone()])
    );
    assert_eq!(
        list("?kind=meeting&area=kibera-north&state=submitted").await,
        vec![meeting.clone()]
    );
    assert_eq!(
        list("?kind=meeting&area=mathare&state=submitted").await,
        Vec::<String>::new()
    );
    assert_eq!(list("?since=99999999999999").await, Vec::<String>::new());
    assert_eq!(list("").await.len(), 3);

    let (status, body) = https_get(&server, &format!("/v1/records/{meeting}"), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["header"]["kind"], "meeting");
    assert_eq!(view["header"]["area"], "kibera-north");
    assert_eq!(view["review_state"], "submitted");
    assert_eq!(view["fields"]["title"], "Lighting baraza");
    let conflicts = view["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0]["path"], "place");
    assert_eq!(conflicts[0]["values"].as_array().unwrap().len(), 2);
    let history = view["history"].as_array().unwrap();
    assert!(history.len() >= 4, "{history:?}");
    assert!(history.iter().any(|h| h["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "review")));

    // No token, a bad token, an unknown record.
    assert_eq!(https_get(&server, "/v1/records", None).await.0, 401);
    assert_eq!(
        https_get(&server, "/v1/records", Some("bz_nope")).await.0,
        401
    );
    let missing = "00000000-0000-4000-8000-000000000000";
    assert_eq!(
        https_get(&server, &format!("/v1/records/{missing}"), Some(&token))
            .await
            .0,
        404
    );
}
