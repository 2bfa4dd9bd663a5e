//! An officer's tablet stays in a drawer past its token's lifetime with
//! work on it that never synced. The sync says the token expired and to
//! enrol again; enrolling again on the same data dir with the officer's
//! password gives the SAME device a new token, so every record written
//! offline is delivered, attributed to that device and officer. A revoked
//! device cannot come back that way, nor can another user take the
//! tablet over; and a failed `enroll` or `init` leaves no key file or
//! store behind (but never removes one that was there).
//!
//! The server runs with a six-second token lifetime; the waits below are
//! that lifetime passing, not assertions about speed.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use baraza_tests::{cli, run_cli, run_server_command, ServerProcess, Tablet, HARNESS_PASSWORD};

const LIFETIME_SECS: u64 = 6;
const OFFICER: &str = "cpl.achieng";
const LIAISON: &str = "lia.wairimu";
const SUPERVISOR: &str = "sgt.mutua";

fn key_file(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// Runs the CLI with `stdin` as its input, bounded like `run_cli`.
fn cli_with_input(data: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cli(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baraza");
    if let Some(mut input) = child.stdin.take() {
        // A command that fails before it reads its input (a bad URL, a
        // refusal) may exit first: its status and output say what happened.
        match input.write_all(stdin.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write to baraza: {e}"),
            _ => {}
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("baraza finished in time")
        .expect("baraza ran")
}

fn enroll(server: &ServerProcess, data: &Path, user: &str, password: &str) -> Output {
    let url = server.url();
    let ca = server.ca_path();
    cli_with_input(
        data,
        &[
            "enroll",
            "--server",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--user",
            user,
            "--device-name",
            "patrol tablet",
        ],
        &format!("{password}\n"),
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The device id `enroll` printed.
fn enrolled_device(out: &Output) -> String {
    assert!(out.status.success(), "enroll failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    stdout
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no device id in {stdout:?}"))
        .to_string()
}

fn status(data: &Path) -> serde_json::Value {
    serde_json::from_str(&run_cli(data, &["status", "--json"])).expect("status as JSON")
}

/// A server with an officer, a liaison and a supervisor of kibera; tokens
/// live `lifetime_secs` if given, else the default 90 days.
fn server_with_users(tmp: &Path, lifetime_secs: Option<u64>) -> ServerProcess {
    let config = lifetime_secs
        .map(|secs| format!("[access]\ntoken_lifetime_secs = {secs}\n"))
        .unwrap_or_default();
    let server = ServerProcess::start_with_config(&tmp.join("server"), &config);
    server.add_user(OFFICER, "officer", &["kibera"]);
    server.add_user(LIAISON, "liaison", &["kibera"]);
    server.add_user(SUPERVISOR, "supervisor", &["kibera"]);
    server
}

fn events<'a>(entries: &'a [serde_json::Value], event: &str) -> Vec<&'a serde_json::Value> {
    entries.iter().filter(|e| e["event"] == event).collect()
}

/// The `details` of an audit entry (or the entry itself, if flat).
fn details(entry: &serde_json::Value) -> &serde_json::Value {
    entry.get("details").unwrap_or(entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_tablet_enrolled_again_delivers_its_offline_work_as_the_same_device() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server_with_users(tmp.path(), Some(LIFETIME_SECS));
    let tablet = tmp.path().join("tablet");

    let device = enrolled_device(&enroll(&server, &tablet, OFFICER, HARNESS_PASSWORD));
    let synced = run_cli(
        &tablet,
        &["new", "--kind", "patrol_note", "--set", "beat=B4"],
    )
    .trim()
    .to_string();
    run_cli(&tablet, &["sync"]);
    let last_sync = std::time::Instant::now();

    // Offline: a new record, and an edit of the synced one.
    let offline = run_cli(
        &tablet,
        &["new", "--kind", "patrol_note", "--set", "beat=B5"],
    )
    .trim()
    .to_string();
    run_cli(&tablet, &["set", &synced, "beat", "B6"]);

    // A whole lifetime passes without a sync (a rotation at the last sync
    // would have given a token ending before this, too).
    tokio::time::sleep(
        (Duration::from_secs(LIFETIME_SECS) + Duration::from_millis(800))
            .saturating_sub(last_sync.elapsed()),
    )
    .await;
    let refused = run_bounded_cli(&tablet, &["sync"]);
    assert!(!refused.status.success());
    let why = text(&refused.stderr);
    assert!(
        why.contains("expired") && why.contains("enroll"),
        "the expiry should say to enrol again: {why}"
    );
    assert_eq!(status(&tablet)["unacknowledged"], 2);

    // Another user cannot take the tablet over: refused, naming the rule,
    // and nothing on the tablet changes.
    let taken = enroll(&server, &tablet, LIAISON, HARNESS_PASSWORD);
    assert!(!taken.status.success());
    let why = text(&taken.stderr);
    assert!(why.contains("device_of_another_user"), "{why}");
    assert_eq!(status(&tablet)["unacknowledged"], 2);

    // The officer enrols again: the same device, a new token.
    let again = enroll(&server, &tablet, OFFICER, HARNESS_PASSWORD);
    assert_eq!(enrolled_device(&again), device);
    assert!(
        text(&again.stdout).contains("again"),
        "{}",
        text(&again.stdout)
    );

    // Everything written offline is acknowledged.
    run_cli(&tablet, &["sync"]);
    let after = status(&tablet);
    assert_eq!(after["unacknowledged"], 0, "{after}");
    assert_eq!(after["refused"], serde_json::json!([]), "{after}");

    // The server holds it, attributed to the same device and officer.
    let sergeant = Tablet::for_user(&server, "sergeant's tablet", SUPERVISOR, "kibera");
    sergeant.sync().await;
    assert_eq!(sergeant.value(&offline, "beat").as_deref(), Some("B5"));
    assert_eq!(sergeant.value(&synced, "beat").as_deref(), Some("B6"));
    for id in [&offline, &synced] {
        for change in sergeant.history(id).unwrap() {
            assert!(
                change.actor.starts_with(&device),
                "change by actor {} is not device {device}'s",
                change.actor
            );
            assert_eq!(change.user.as_deref(), Some(OFFICER));
        }
    }

    let audit = server.audit_entries();
    let enrolled = events(&audit, "device_enrolled");
    assert_eq!(enrolled.len(), 1, "one device only: {enrolled:?}");
    let reenrolled = events(&audit, "device_reenrolled");
    assert_eq!(reenrolled.len(), 1, "{reenrolled:?}");
    assert_eq!(details(reenrolled[0])["device"], device.as_str());
    assert_eq!(details(reenrolled[0])["user"], OFFICER);
    let refusals = events(&audit, "device_reenrol_refused");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(details(refusals[0])["rule"], "device_of_another_user");
    assert_eq!(details(refusals[0])["user"], LIAISON);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tablet_is_not_revived_by_enrolling_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server_with_users(tmp.path(), None);
    let tablet = tmp.path().join("tablet");

    let device = enrolled_device(&enroll(&server, &tablet, OFFICER, HARNESS_PASSWORD));
    run_cli(
        &tablet,
        &["new", "--kind", "patrol_note", "--set", "beat=B4"],
    );
    run_cli(&tablet, &["sync"]);
    run_cli(
        &tablet,
        &["new", "--kind", "patrol_note", "--set", "beat=B5"],
    );

    let revoked = run_server_command(
        server.data_dir(),
        &["device", "revoke", "--id", &device],
        "",
    );
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));

    // With the right password, still refused, naming the rule; the store
    // is left as it was and no new device is made.
    let again = enroll(&server, &tablet, OFFICER, HARNESS_PASSWORD);
    assert!(!again.status.success(), "{}", text(&again.stdout));
    let why = text(&again.stderr);
    assert!(
        why.contains("device_revoked") && why.contains("lost or stolen"),
        "{why}"
    );
    let kept = status(&tablet);
    assert_eq!(
        (kept["records"].as_u64(), kept["unacknowledged"].as_u64()),
        (Some(2), Some(1))
    );

    let audit = server.audit_entries();
    assert!(events(&audit, "device_reenrolled").is_empty());
    assert_eq!(events(&audit, "device_enrolled").len(), 1);
    let refusals = events(&audit, "device_reenrol_refused");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(details(refusals[0])["rule"], "device_revoked");
    let listed = run_server_command(server.data_dir(), &["device", "list"], "");
    let listed = text(&listed.stdout);
    let line = listed
        .lines()
        .find(|l| l.contains(&device))
        .unwrap_or_else(|| panic!("{device} not listed: {listed}"));
    assert!(line.contains("revoked"), "{line}");

    // Its next sync is told it was revoked, as before.
    let wiped = run_bounded_cli(&tablet, &["sync"]);
    assert!(!wiped.status.success());
    assert!(
        text(&wiped.stderr).contains("revoked"),
        "{}",
        text(&wiped.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_enroll_or_init_leaves_nothing_behind_and_keeps_what_was_there() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server_with_users(tmp.path(), None);
    let url = server.url();
    let ca = server.ca_path();
    let ca = ca.to_str().unwrap();
    let not_pem = tmp.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    let missing_ca = tmp.path().join("missing.pem");
    let missing_ca = missing_ca.to_str().unwrap();
    let token = server.add_device_for("init tablet", OFFICER);

    let enroll_args = |server_url: &str, ca: &str| -> Vec<String> {
        [
            "enroll",
            "--server",
            server_url,
            "--ca",
            ca,
            "--user",
            OFFICER,
            "--device-name",
            "patrol tablet",
        ]
        .map(str::to_string)
        .to_vec()
    };
    let init_args = |server_url: &str, ca: &str| -> Vec<String> {
        [
            "init", "--server", server_url, "--ca", ca, "--token", &token,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let failures: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "wrong password",
            enroll_args(&url, ca),
            "not the password\n",
        ),
        (
            "nothing listening",
            enroll_args("https://127.0.0.1:1", ca),
            "",
        ),
        ("not a URL", enroll_args("tablet.example", ca), ""),
        ("no such CA file", enroll_args(&url, missing_ca), ""),
        (
            "a CA file that is no certificate",
            enroll_args(&url, not_pem),
            "",
        ),
        ("init: not a URL", init_args("ftp://127.0.0.1", ca), ""),
        ("init: no such CA file", init_args(&url, missing_ca), ""),
        (
            "init: a CA file that is no certificate",
            init_args(&url, not_pem),
            "",
        ),
    ];
    for (i, (what, args, input)) in failures.iter().enumerate() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let input = if input.is_empty() { "x\n" } else { input };
        // A data dir that does not exist yet, and one that does but is empty.
        for existing in [false, true] {
            let data = tmp.path().join(format!("tablet-{i}-{existing}"));
            if existing {
                std::fs::create_dir(&data).unwrap();
            }
            let out = cli_with_input(&data, &args, input);
            assert!(!out.status.success(), "{what}: succeeded");
            assert!(!key_file(&data).exists(), "{what}: key file left behind");
            if existing {
                assert!(data.is_dir(), "{what}: the existing data dir was removed");
                let left: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
                assert!(left.is_empty(), "{what}: left {left:?}");
            } else {
                assert!(!data.exists(), "{what}: data dir left behind");
            }
        }
    }

    // A tablet already set up keeps its store and key file when a later
    // init or enroll fails.
    let set_up = tmp.path().join("set-up");
    enrolled_device(&enroll(&server, &set_up, OFFICER, HARNESS_PASSWORD));
    let id = run_cli(
        &set_up,
        &["new", "--kind", "patrol_note", "--set", "beat=B4"],
    );
    for args in [
        init_args(&url, not_pem),
        enroll_args("https://127.0.0.1:1", ca),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli_with_input(&set_up, &args, "x\n");
        assert!(!out.status.success());
        assert!(key_file(&set_up).exists() && set_up.join("store").exists());
        assert_eq!(status(&set_up)["records"], 1);
    }
    run_cli(&set_up, &["show", id.trim()]);
    run_cli(&set_up, &["sync"]);
}

/// Runs the CLI without requiring success.
fn run_bounded_cli(data: &Path, args: &[&str]) -> Output {
    baraza_tests::run_bounded(cli(data).args(args), baraza_tests::SYNC_TIMEOUT)
}
