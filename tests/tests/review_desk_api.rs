//! The review desk's server side for issue 12, against a real server: the
//! queue tells records apart from the index alone (title, submitted time,
//! a conflict marker, a comment count; never contact details); conflicts
//! and history name devices; a record is approved only once its conflicts
//! are resolved, at the desk and from a supervisor's tablet alike; a supervisor's event stream brings records synced in
//! their areas and nothing from other areas, survives the idle deadline,
//! keeps alive and ends with the session; `/` and the favicon redirect,
//! HEAD answers; exports carry ISO 8601 times; records stored before the
//! queue's summaries were kept list at once and get theirs filled in.

use std::time::{Duration, Instant};

use baraza_tests::sse::{EventStream, Sse};
use baraza_tests::{
    https_request_with, pin_to_sled, DeskSession, ReviewWorld, ServerProcess, Tablet,
};
use serde_json::json;

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The list row of `id` (which must be listed).
async fn listed_row(desk: &DeskSession<'_>, id: &str) -> serde_json::Value {
    let rows = desk.rows("").await;
    rows.iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not listed: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_tells_records_apart_conflicts_name_devices_and_approval_waits_for_resolution() {
    // A meeting the liaison and the officer placed differently offline,
    // submitted; a patrol note and a feedback with its contact details.
    let world = ReviewWorld::open().await;
    let (server, officer, liaison) = (&world.server, &world.officer, &world.liaison);
    let meeting = world.meeting.clone();
    let before_submit = now_ms() - 2_000;
    let patrol = officer
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    officer.submit(&patrol).unwrap();
    let feedback = officer
        .create_record(
            "feedback",
            "kibera",
            vec![kv("category", "complaint"), kv("about", "Noise at night")],
        )
        .unwrap();
    let contact = officer
        .create_record(
            "feedback_contact",
            "kibera",
            vec![kv("feedback", &feedback), kv("phone", "+254 722 000 111")],
        )
        .unwrap();
    assert_eq!(liaison.sync().await.refused, 0);
    assert_eq!(officer.sync().await.refused, 0);
    let desk = DeskSession::open(server, "sgt.wanjiru").await;

    // The queue: titles by kind, the submitted time, the conflict marker,
    // the comment count; old keys still there.
    let row = listed_row(&desk, &meeting).await;
    assert_eq!(row["title"], "Street lighting baraza", "{row}");
    assert_eq!(row["conflicts"], true, "{row}");
    assert_eq!(row["comments"], 0, "{row}");
    let submitted_at = row["submitted_at"].as_i64().expect("a submitted time");
    assert!(
        (before_submit..=now_ms() + 2_000).contains(&submitted_at),
        "{row}"
    );
    for key in [
        "id",
        "kind",
        "area",
        "state",
        "created_at",
        "created_by",
        "clock",
    ] {
        assert!(row.get(key).is_some(), "{key} missing from {row}");
    }
    let row = listed_row(&desk, &patrol).await;
    assert_eq!(
        (&row["title"], &row["conflicts"]),
        (&json!("B4"), &json!(false))
    );
    assert!(row["submitted_at"].is_i64(), "{row}");
    let row = listed_row(&desk, &feedback).await;
    assert_eq!(row["title"], "Noise at night");
    assert!(row["submitted_at"].is_null(), "a draft: {row}");
    // Contact details never make a title.
    let row = listed_row(&desk, &contact).await;
    assert!(row["title"].is_null(), "{row}");
    let listing = desk.get("/review/api/records").await.body;
    assert!(!listing.contains("722 000 111"), "{listing}");

    // Each conflicting value names its device, and so does the history.
    let view = desk.record(&meeting).await;
    let conflict = &view["conflicts"][0];
    assert_eq!(conflict["path"], "place", "{view}");
    let mut named: Vec<(String, String)> = conflict["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let device = v["device"].as_str().expect("a device id");
            assert_eq!(device.len(), 32, "{v}");
            assert!(v["actor"].as_str().unwrap().starts_with(device), "{v}");
            (
                v["user"].as_str().unwrap().to_string(),
                v["device_name"]
                    .as_str()
                    .expect("a device name")
                    .to_string(),
            )
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        vec![
            ("cpl.otieno".to_string(), "officer's tablet".to_string()),
            ("lia.achieng".to_string(), "liaison's tablet".to_string()),
        ]
    );
    let history = view["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .all(|h| h["device_name"].is_string() && h["device"].is_string()),
        "{view}"
    );

    // Approving over the conflict is refused, with the rule, and nothing
    // is stored.
    let path = format!("/review/api/records/{meeting}/decision");
    let refused = desk.post(&path, json!({ "decision": "approved" })).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let body = refused.json();
    assert_eq!(body["rule"], "unresolved_conflict", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("resolve the conflicts first") && error.contains("place"),
        "{error}"
    );
    let view = desk.record(&meeting).await;
    assert_eq!(view["review_state"], "submitted");
    assert_eq!(view["history"].as_array().unwrap().len(), history.len());
    assert!(!server
        .audit_entries()
        .iter()
        .any(|e| e["event"] == "review_decision" && e["details"]["record"] == meeting.as_str()));

    // A supervisor's tablet cannot approve around it: the same rule
    // refuses its push, and the tablet keeps its change marked.
    let sergeant = Tablet::for_user(server, "sergeant's tablet", "sgt.wanjiru", "kibera");
    sergeant.sync().await;
    sergeant
        .review(&meeting, baraza_records::ReviewState::Approved, None)
        .unwrap();
    assert_eq!(sergeant.sync().await.refused, 1);
    let refusal = sergeant
        .status()
        .unwrap()
        .refused
        .into_iter()
        .find(|r| r.id == meeting)
        .expect("the approval is marked refused");
    assert_eq!(
        refusal.rejection.rule.as_deref(),
        Some("unresolved_conflict"),
        "{refusal:?}"
    );
    assert_eq!(desk.record(&meeting).await["review_state"], "submitted");

    // Resolved, it is approved; the desk's changes are the review desk's.
    let resolved = desk
        .post(
            &format!("/review/api/records/{meeting}/resolve"),
            json!({ "path": "place", "value": "Social hall" }),
        )
        .await;
    assert_eq!(resolved.status, 200, "{}", resolved.body);
    assert_eq!(listed_row(&desk, &meeting).await["conflicts"], false);
    let approved = desk
        .post(
            &path,
            json!({ "decision": "approved", "comment": "thank you" }),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let row = listed_row(&desk, &meeting).await;
    assert_eq!(row["state"], "approved", "{row}");
    assert_eq!(row["comments"], 1, "{row}");
    assert_eq!(
        row["submitted_at"], submitted_at,
        "the submission stays on record"
    );
    let view = desk.record(&meeting).await;
    let last = view["history"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(last["device_name"], "review desk", "{last}");
    assert_eq!(last["user"], "sgt.wanjiru");

    // The tablets' read API names devices the same way.
    let (status, body) = baraza_tests::https_get(
        server,
        &format!("/v1/records/{meeting}"),
        Some(officer.token()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(view["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["device_name"] == "liaison's tablet"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisors_stream_brings_their_areas_records_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    // A short idle deadline: the stream must outlive it.
    let server = ServerProcess::start_with_config(
        &tmp.path().join("server"),
        "[connections]\nidle_timeout_ms = 1000\n",
    );
    server.add_user("cpl.otieno", "officer", &["kibera"]);
    server.add_user("cpl.njoroge", "officer", &["mathare"]);
    server.add_user("sgt.wanjiru", "supervisor", &["kibera"]);
    let here = Tablet::for_user(&server, "kibera tablet", "cpl.otieno", "kibera");
    let away = Tablet::for_user(&server, "mathare tablet", "cpl.njoroge", "mathare");

    // Without a session: 401, no stream.
    let (head, stream) = EventStream::open(&server, None).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(stream.is_none());

    let desk = DeskSession::open(&server, "sgt.wanjiru").await;
    let (head, stream) = EventStream::open(&server, Some(&desk.cookie)).await;
    let mut stream = stream.unwrap_or_else(|| panic!("no stream: {head}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert_eq!(
        stream.next(Duration::from_secs(10)).await,
        Some(Sse::Comment("connected".into()))
    );

    // Past the idle deadline, a record from another area, then one from
    // the supervisor's: only the second arrives, within a second or so of
    // its sync being acknowledged.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let hidden = away
        .create_record("patrol_note", "mathare", vec![kv("beat", "M1")])
        .unwrap();
    assert_eq!(away.sync().await.refused, 0);
    let shown = here
        .create_record("patrol_note", "kibera", vec![kv("beat", "K7")])
        .unwrap();
    here.submit(&shown).unwrap();
    assert_eq!(here.sync().await.refused, 0);
    let acked = Instant::now();
    let (row, before) = stream.until_record(&shown, Duration::from_secs(10)).await;
    assert!(
        acked.elapsed() < Duration::from_secs(2),
        "{:?}",
        acked.elapsed()
    );
    // The feed holds the other area's write first: had it been sent, it
    // would have come before.
    assert!(!before.contains(&hidden), "{before:?}");
    assert_eq!(row["title"], "K7", "{row}");
    assert_eq!(row["state"], "submitted");
    assert_eq!(row["area"], "kibera");
    assert!(row.get("clock").is_some(), "{row}");

    // The same row the list shows.
    let listed = listed_row(&desk, &shown).await;
    assert_eq!(listed, row);

    // A change to it comes as its row again.
    here.set(&shown, "beat", "K8").unwrap();
    here.sync().await;
    let (row, before) = stream.until_record(&shown, Duration::from_secs(10)).await;
    assert_eq!(row["title"], "K8");
    assert!(!before.contains(&hidden), "{before:?}");

    // An idle stream keeps alive (every 15 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next(left).await {
            Some(Sse::Comment(c)) if c == "keepalive" => break,
            Some(Sse::Event { event, data }) => {
                assert_ne!(event, "record", "nothing was written: {data}");
            }
            Some(Sse::Comment(_)) => {}
            None => panic!("no keepalive within 20 s"),
        }
    }

    // Signing out ends the stream.
    assert_eq!(desk.post("/review/api/logout", json!({})).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stream.ended {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the stream outlived its session");
        if let Some(Sse::Event { event, .. }) = stream.next(left).await {
            assert_ne!(event, "record");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_and_favicon_redirect_head_answers_and_exports_write_iso_times() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("cpl.otieno", "officer", &["kibera"]);
    server.add_user("sgt.wanjiru", "supervisor", &["kibera"]);

    let root = https_request_with(&server, "GET", "/", &[], None).await;
    assert_eq!(root.status, 303, "{root:?}");
    assert_eq!(root.header("location"), Some("/review"));
    let icon = https_request_with(&server, "GET", "/favicon.ico", &[], None).await;
    assert_eq!(icon.status, 303, "{icon:?}");
    assert_eq!(icon.header("location"), Some("/review/favicon.svg"));

    // HEAD: the headers GET would send, no body.
    for (path, kind) in [
        ("/review", "text/html"),
        ("/review/app.js", "text/javascript"),
        ("/review/app.css", "text/css"),
    ] {
        let get = https_request_with(&server, "GET", path, &[], None).await;
        let head = https_request_with(&server, "HEAD", path, &[], None).await;
        assert_eq!(head.status, 200, "{path}: {head:?}");
        assert!(head.body.is_empty(), "{path}: {}", head.body);
        assert!(
            head.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "{path}"
        );
        assert!(head.header("content-security-policy").is_some(), "{path}");
    }
    let head = https_request_with(&server, "HEAD", "/", &[], None).await;
    assert_eq!(
        (head.status, head.header("location")),
        (303, Some("/review"))
    );
    assert!(head.body.is_empty());
    // Not the API: HEAD there is no read.
    let api = https_request_with(&server, "HEAD", "/review/api/records", &[], None).await;
    assert_ne!(api.status, 200);

    // Exports: ISO 8601 times with the offset.
    let officer = Tablet::for_user(&server, "officer's tablet", "cpl.otieno", "kibera");
    let meeting = officer
        .create_record(
            "meeting",
            "kibera",
            vec![kv("title", "Water point"), kv("held_at", "1764590400000")],
        )
        .unwrap();
    let patrol = officer
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    officer
        .add_item(
            &patrol,
            "observations",
            vec![kv("text", "Light out"), kv("at", "1764594000000")],
        )
        .unwrap();
    officer
        .set_gps(&patrol, 0, "-1.3133", "36.7869", 12)
        .unwrap();
    assert_eq!(officer.sync().await.refused, 0);
    let desk = DeskSession::open(&server, "sgt.wanjiru").await;
    let created_ms = listed_row(&desk, &meeting).await["created_at"]
        .as_i64()
        .unwrap();
    let csv = desk.get("/review/api/export.csv?kind=meeting").await.body;
    let lines: Vec<&str> = csv.lines().collect();
    let head: Vec<&str> = lines[0].split(',').collect();
    let row: Vec<&str> = lines[1].split(',').collect();
    let cell = |name: &str| row[head.iter().position(|h| *h == name).unwrap()];
    assert_eq!(cell("held_at"), "2025-12-01T12:00:00Z", "{csv}");
    let created = cell("created_at");
    assert!(is_iso_utc(created), "{created}");
    assert_eq!(&created[..4], &iso_year(created_ms), "{created}");
    let geo = desk.get("/review/api/export.geojson").await.json();
    let props = &geo["features"][0]["properties"];
    assert_eq!(props["at"], "2025-12-01T13:00:00Z", "{geo}");
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
fn is_iso_utc(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && text.ends_with('Z')
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19]
            .iter()
            .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit))
}

/// The UTC year of a time in ms (days from the epoch, by whole years).
fn iso_year(ms: i64) -> String {
    let mut days = ms.div_euclid(86_400_000);
    let mut year = 1970;
    loop {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let length = if leap { 366 } else { 365 };
        if days < length {
            return year.to_string();
        }
        days -= length;
        year += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stored_before_list_summaries_list_at_once_and_get_theirs_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    // It drops a tree from sled's own files.
    pin_to_sled(&data);
    let mut server = ServerProcess::start(&data);
    server.add_user("cpl.otieno", "officer", &["kibera"]);
    server.add_user("sgt.wanjiru", "supervisor", &["kibera"]);
    let officer = Tablet::for_user(&server, "officer's tablet", "cpl.otieno", "kibera");
    let patrol = officer
        .create_record("patrol_note", "kibera", vec![kv("beat", "B9")])
        .unwrap();
    officer.submit(&patrol).unwrap();
    assert_eq!(officer.sync().await.refused, 0);
    assert_eq!(server.terminate().code(), Some(0));
    // The data dir of a server from before list summaries: none kept.
    {
        let db = sled::open(data.join("db")).unwrap();
        assert!(db.drop_tree("record_summary").unwrap());
        db.flush().unwrap();
    }
    server.restart();
    let desk = DeskSession::open(&server, "sgt.wanjiru").await;
    // It lists (with the defaults, or already filled in), and is filled
    // in soon after the start without a write.
    let row = listed_row(&desk, &patrol).await;
    assert_eq!(row["state"], "submitted", "{row}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = listed_row(&desk, &patrol).await;
        if row["title"] == "B9" {
            assert!(row["submitted_at"].is_i64(), "{row}");
            assert_eq!(row["conflicts"], false);
            break;
        }
        assert!(row["title"].is_null(), "{row}");
        assert!(Instant::now() < deadline, "never filled in: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        server.log().contains("list row summaries filled in"),
        "{}",
        server.log()
    );
}
