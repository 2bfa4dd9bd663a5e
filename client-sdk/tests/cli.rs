//! The `baraza` tablet CLI works offline: records are created, edited,
//! shown and listed with no server, and survive the process ending.

use std::process::Command;

fn baraza(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baraza"))
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .expect("run baraza");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sets a tablet up without any server: enrolment data only.
fn enrol_offline(dir: &std::path::Path) {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "not needed offline").unwrap();
    let token = format!("bz_{}_{}", "ab".repeat(16), "cd".repeat(32));
    let ca = ca.to_string_lossy().into_owned();
    let (ok, _, err) = baraza(
        dir,
        &[
            "init",
            "--server",
            "https://127.0.0.1:9",
            "--ca",
            &ca,
            "--token",
            &token,
            "--user",
            "cpl.achieng",
            "--area",
            "mathare",
        ],
    );
    assert!(ok, "{err}");
}

#[test]
fn an_officer_records_offline_and_the_record_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    enrol_offline(dir.path());
    let (ok, id, err) = baraza(
        dir.path(),
        &[
            "new",
            "--kind",
            "patrol_note",
            "--set",
            "officer=Cpl. Achieng",
            "--set",
            "beat=B4",
        ],
    );
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");

    assert!(baraza(dir.path(), &["set", &id, "beat", "B5"]).0);
    assert!(
        baraza(
            dir.path(),
            &["splice", &id, "notes", "0", "0", "Quiet night."]
        )
        .0
    );
    assert!(baraza(dir.path(), &["splice", &id, "notes", "0", "5", "Calm"]).0);

    let (ok, json, _) = baraza(dir.path(), &["--json", "show", &id]);
    assert!(ok);
    let record: serde_json::Value = serde_json::from_str(&json).unwrap();
    let field = |name: &str| {
        record["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no field {name} in {json}"))
            .clone()
    };
    assert_eq!(field("beat")["value"], "B5");
    assert_eq!(field("notes")["value"], "Calm night.");
    assert_eq!(field("notes")["text"], true);
    assert_eq!(field("officer")["value"], "Cpl. Achieng");
    assert_eq!(record["unacknowledged"], true);

    let (ok, list, _) = baraza(dir.path(), &["--json", "list"]);
    assert!(ok);
    let ids: Vec<String> = serde_json::from_str(&list).unwrap();
    assert_eq!(ids, vec![id.clone()]);

    let (ok, status, _) = baraza(dir.path(), &["--json", "status"]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["unacknowledged"], 1);
    assert_eq!(status["last_sync"], serde_json::Value::Null);
}

#[test]
fn mistakes_get_clear_errors() {
    let fresh = tempfile::tempdir().unwrap();
    let (ok, _, err) = baraza(fresh.path(), &["new", "--set", "title=x"]);
    assert!(!ok);
    assert!(err.contains("not set up"), "{err}");
    let (ok, _, err) = baraza(fresh.path(), &["sync"]);
    assert!(!ok);
    assert!(err.contains("not set up"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    enrol_offline(dir.path());
    let (ok, _, err) = baraza(dir.path(), &["set", "not-an-id", "f", "v"]);
    assert!(!ok);
    assert!(err.contains("is not a record id"), "{err}");

    let (ok, id, _) = baraza(dir.path(), &["new", "--set", "place=market"]);
    assert!(ok);
    let (ok, _, err) = baraza(dir.path(), &["splice", id.trim(), "place", "0", "0", "x"]);
    assert!(!ok);
    assert!(err.contains("not a text field"), "{err}");

    // Typed fields refuse values of the wrong type, naming the field.
    let (ok, _, err) = baraza(dir.path(), &["set", id.trim(), "held_at", "last tuesday"]);
    assert!(!ok);
    assert!(err.contains("held_at"), "{err}");
    let (ok, _, err) = baraza(dir.path(), &["new", "--kind", "burglary"]);
    assert!(!ok);
    assert!(err.contains("unknown record kind"), "{err}");
}
