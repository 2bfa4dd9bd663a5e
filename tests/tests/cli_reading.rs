//! Reading records on the command-line tablet, as an officer would: a
//! meeting shown in full (who came, the headcount, times a person can
//! read), a listing that says what each record is and whether the server
//! has it, conflicts and history that name the other tablet, and writes
//! that say what they did.

use std::path::Path;
use std::time::Duration;

use baraza_tests::{cli, run_bounded, run_cli, ServerProcess, SYNC_TIMEOUT};

/// A zone three hours east of UTC, as Nairobi is, spelt as a POSIX TZ
/// rule so the test needs no zoneinfo files.
const NAIROBI: &str = "EAT-3";

/// Runs the CLI in Nairobi's offset, requires success, returns (stdout, stderr).
fn baraza(dir: &Path, args: &[&str]) -> (String, String) {
    let out = run_bounded(cli(dir).env("TZ", NAIROBI).args(args), SYNC_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "baraza {args:?} failed ({:?}): {stderr}",
        out.status
    );
    (String::from_utf8(out.stdout).expect("UTF-8 output"), stderr)
}

/// A command-line tablet registered as `device` for `user`, filing under kibera.
fn tablet(server: &ServerProcess, dir: &Path, device: &str, user: &str) {
    let token = server.add_device_for(device, user);
    run_cli(
        dir,
        &[
            "init",
            "--server",
            &server.url(),
            "--ca",
            server.ca_path().to_str().expect("a UTF-8 path"),
            "--token",
            &token,
            "--user",
            user,
            "--area",
            "kibera",
        ],
    );
}

/// True for `2026-05-28T23:26:40+03:00`: ISO 8601 to the second with an offset.
fn is_iso_with_offset(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 25
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16, 22].iter().all(|&i| b[i] == b':')
        && (b[19] == b'+' || b[19] == b'-')
        && s.chars()
            .enumerate()
            .filter(|(i, _)| ![4, 7, 10, 13, 16, 19, 22].contains(i))
            .all(|(_, c)| c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_is_shown_in_full_with_readable_times_and_as_real_json() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("lia.achieng", "liaison", &["kibera"]);
    let dir = tmp.path().join("tablet");
    tablet(&server, &dir, "Kibera tablet 3", "lia.achieng");

    let (out, err) = baraza(
        &dir,
        &[
            "new",
            "--kind",
            "meeting",
            "--set",
            "title=Market baraza",
            "--set",
            "place=Market hall",
        ],
    );
    let id = out.trim().to_string();
    assert_eq!(
        out,
        format!("{id}\n"),
        "new prints the id alone, for $(...)"
    );
    assert!(
        err.contains(&format!("created meeting record {id} in area kibera")),
        "{err}"
    );
    let (out, err) = baraza(
        &dir,
        &["meeting", "attend", &id, "Otieno", "--role", "youth leader"],
    );
    assert_eq!(out.trim(), "0");
    assert!(err.contains("added attendee \"Otieno\""), "{err}");
    baraza(
        &dir,
        &["meeting", "attend", &id, "Achieng", "--role", "elder"],
    );
    let (_, err) = baraza(
        &dir,
        &["map", &id, "headcount", "women=12", "men=9", "total=21"],
    );
    assert!(
        err.contains(&format!(
            "set women, men, total of headcount of record {id}"
        )),
        "{err}"
    );
    // 2026-05-28 20:26:40 UTC.
    let (_, err) = baraza(&dir, &["set", &id, "held_at", "1780000000000"]);
    assert!(
        err.contains(&format!("set held_at of record {id}")),
        "{err}"
    );
    let (_, err) = baraza(
        &dir,
        &[
            "splice",
            &id,
            "notes",
            "0",
            "0",
            "Lights on the market road.",
        ],
    );
    assert!(
        err.contains(&format!("edited notes of record {id}")),
        "{err}"
    );

    let (shown, _) = baraza(&dir, &["show", &id]);
    for expected in [
        "  kind: meeting\n",
        "  area: kibera\n",
        "  synced: no",
        "  review: draft\n",
        "  title: Market baraza\n",
        "  attendees: (2 items)\n    - name: Otieno\n      role: youth leader\n    - name: Achieng\n      role: elder\n",
        "  headcount:\n",
        "    women: 12\n",
        "    total: 21\n",
        "  held_at: 2026-05-28T23:26:40+03:00\n",
        "  notes (text): Lights on the market road.\n",
    ] {
        assert!(shown.contains(expected), "{expected:?} not in:\n{shown}");
    }
    assert!(
        !shown.contains("items]") && !shown.contains("<map>"),
        "{shown}"
    );
    let created = shown
        .lines()
        .find_map(|l| l.strip_prefix("  created: "))
        .expect("a created line");
    let (when, by) = created.split_once(" by ").expect("created WHEN by WHO");
    assert!(
        is_iso_with_offset(when) && when.ends_with("+03:00"),
        "{when}"
    );
    assert!(by.starts_with("lia.achieng on "), "{by}");

    let (json, _) = baraza(&dir, &["--json", "show", &id]);
    let view: serde_json::Value = serde_json::from_str(&json).expect("show --json is JSON");
    let fields = &view["fields"];
    let attendees = fields["attendees"]
        .as_array()
        .expect("attendees as an array");
    assert_eq!(attendees.len(), 2);
    assert_eq!(attendees[0]["name"], "Otieno");
    assert_eq!(attendees[0]["role"], "youth leader");
    assert_eq!(attendees[1]["name"], "Achieng");
    assert_eq!(fields["headcount"]["women"], 12);
    assert_eq!(fields["headcount"]["men"], 9);
    assert_eq!(fields["held_at_ms"], 1_780_000_000_000i64);
    assert_eq!(fields["held_at"], "2026-05-28T23:26:40+03:00");
    assert_eq!(fields["notes"], "Lights on the market road.");
    assert_eq!(view["kind"], "meeting");
    assert_eq!(view["area"], "kibera");
    assert_eq!(view["synced"], false);
    let created_ms = view["created_at_ms"]
        .as_i64()
        .expect("created_at_ms a number");
    assert!(created_ms > 1_700_000_000_000, "{created_ms}");
    assert!(
        is_iso_with_offset(view["created_at"].as_str().expect("created_at a string")),
        "{view}"
    );

    baraza(&dir, &["sync"]);
    let (shown, _) = baraza(&dir, &["show", &id]);
    assert!(shown.contains("  synced: yes\n"), "{shown}");
    // The server named this tablet to itself at the sync.
    assert!(shown.contains("on \"Kibera tablet 3\""), "{shown}");
    let (json, _) = baraza(&dir, &["--json", "show", &id]);
    let view: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(view["synced"], true);
    assert_eq!(view["created_by_device_name"], "Kibera tablet 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_says_what_each_record_is_and_whether_the_server_has_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("sgt.wanjiru", "supervisor", &["kibera"]);
    let dir = tmp.path().join("tablet");
    tablet(&server, &dir, "Station tablet", "sgt.wanjiru");

    let (meeting, _) = baraza(&dir, &["meeting", "new", "Market baraza"]);
    let meeting = meeting.trim().to_string();
    baraza(&dir, &["sync"]);
    let (_, err) = baraza(&dir, &["submit", &meeting]);
    assert!(
        err.contains(&format!("submitted record {meeting} for review")),
        "{err}"
    );
    baraza(&dir, &["sync"]);
    let (patrol, _) = baraza(&dir, &["patrol", "new", "Beat 7"]);
    let patrol = patrol.trim().to_string();

    let (listed, _) = baraza(&dir, &["list"]);
    let mut lines = listed.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(header, ["ID", "KIND", "AREA", "REVIEW", "SYNCED", "TITLE"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{listed}");
    let row = |id: &str| {
        rows.iter()
            .find(|r| r[0] == id)
            .unwrap_or_else(|| panic!("{id} not listed:\n{listed}"))
            .clone()
    };
    assert_eq!(
        row(&meeting)[1..],
        ["meeting", "kibera", "submitted", "yes", "Market", "baraza"]
    );
    assert_eq!(
        row(&patrol)[1..],
        ["patrol_note", "kibera", "draft", "no", "Beat", "7"]
    );

    let (json, _) = baraza(&dir, &["--json", "list"]);
    let listed: serde_json::Value = serde_json::from_str(&json).expect("list --json is JSON");
    let listed = listed.as_array().expect("an array");
    let entry = listed
        .iter()
        .find(|r| r["id"] == patrol.as_str())
        .expect("the patrol note");
    assert_eq!(entry["kind"], "patrol_note");
    assert_eq!(entry["title"], "Beat 7");
    assert_eq!(entry["review_state"], "draft");
    assert_eq!(entry["synced"], false);
    assert!(entry["created_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(is_iso_with_offset(entry["created_at"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_history_name_the_other_tablet() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("lia.achieng", "liaison", &["kibera"]);
    server.add_user("cpl.otieno", "officer", &["kibera"]);
    let liaison = tmp.path().join("liaison");
    let officer = tmp.path().join("officer");
    tablet(&server, &liaison, "Kibera tablet 3", "lia.achieng");
    tablet(&server, &officer, "Patrol tablet 7", "cpl.otieno");

    let (id, _) = baraza(&liaison, &["meeting", "new", "Lighting baraza"]);
    let id = id.trim().to_string();
    baraza(&liaison, &["sync"]);
    baraza(&officer, &["sync"]);
    // Both offline, each places the meeting somewhere else.
    baraza(&liaison, &["set", &id, "place", "Chief's camp"]);
    baraza(&officer, &["set", &id, "place", "Social hall"]);
    baraza(&liaison, &["sync"]);
    baraza(&officer, &["sync"]);
    baraza(&liaison, &["sync"]);

    let (conflicts, _) = baraza(&liaison, &["conflicts", &id]);
    assert!(conflicts.starts_with("place:\n"), "{conflicts}");
    let officers = conflicts
        .lines()
        .find(|l| l.contains("\"Social hall\""))
        .unwrap_or_else(|| panic!("the officer's value:\n{conflicts}"));
    assert!(
        officers.contains("set on \"Patrol tablet 7\" (cpl.otieno) at "),
        "{officers}"
    );
    let at = officers
        .split(" at ")
        .nth(1)
        .expect("a time")
        .trim_end_matches(", shown");
    assert!(is_iso_with_offset(at) && at.ends_with("+03:00"), "{at}");
    assert!(
        conflicts.contains("\"Chief's camp\" set on \"Kibera tablet 3\" (lia.achieng)"),
        "{conflicts}"
    );
    assert!(!conflicts.contains("unix seconds"), "{conflicts}");

    let (json, _) = baraza(&liaison, &["--json", "conflicts", &id]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("conflicts --json is JSON");
    let values = json[0]["values"].as_array().expect("values");
    let theirs = values
        .iter()
        .find(|v| v["value"] == "Social hall")
        .expect("the officer's value");
    assert_eq!(theirs["device_name"], "Patrol tablet 7");
    assert_eq!(theirs["user"], "cpl.otieno");
    assert!(theirs["at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(is_iso_with_offset(theirs["at"].as_str().unwrap()));

    let (history, _) = baraza(&liaison, &["history", &id]);
    let line = history
        .lines()
        .find(|l| l.contains("set place by cpl.otieno"))
        .unwrap_or_else(|| panic!("the officer's change:\n{history}"));
    let (when, rest) = line.split_once("  ").expect("WHEN  WHO: WHAT");
    assert!(is_iso_with_offset(when), "{line}");
    assert_eq!(rest, "\"Patrol tablet 7\": set place by cpl.otieno [place]");
    assert!(
        history
            .lines()
            .any(|l| l.ends_with(
                "\"Kibera tablet 3\": create meeting by lia.achieng [header, title, held_at]"
            ) || l.contains("\"Kibera tablet 3\": create meeting by lia.achieng")),
        "{history}"
    );
    let (json, _) = baraza(&officer, &["--json", "history", &id]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("history --json is JSON");
    let created = json
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["message"] == "create meeting by lia.achieng")
        .expect("the creation");
    // The officer's tablet was told the liaison's tablet's name too.
    assert_eq!(created["device_name"], "Kibera tablet 3");
    assert!(is_iso_with_offset(created["at"].as_str().unwrap()));
    assert_eq!(created["at_ms"].as_i64().unwrap() % 1000, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_server_never_named_is_shown_by_its_id() {
    let tmp = tempfile::tempdir().unwrap();
    // A token for a device id this server never registered: the tablet
    // works offline, and has no name for itself.
    let ca = tmp.path().join("ca.pem");
    baraza_tests::write_offline_ca(&ca);
    let dir = tmp.path().join("tablet");
    let device = "0123456789abcdef0123456789abcdef";
    run_cli(
        &dir,
        &[
            "init",
            "--server",
            "https://127.0.0.1:9",
            "--ca",
            ca.to_str().unwrap(),
            "--token",
            &format!("bz_{device}_secret"),
            "--user",
            "lia.achieng",
            "--area",
            "kibera",
        ],
    );
    let (id, _) = baraza(&dir, &["meeting", "new", "Lighting baraza"]);
    let (history, _) = baraza(&dir, &["history", id.trim()]);
    assert!(
        history.contains(&format!("device {device}: create meeting by lia.achieng")),
        "{history}"
    );
    let out = run_bounded(
        cli(&dir).args(["--json", "history", id.trim()]),
        Duration::from_secs(30),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["device"], device);
    assert!(json[0]["device_name"].is_null());
}
