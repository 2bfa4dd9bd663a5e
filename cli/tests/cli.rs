//! The `baraza` tablet CLI works offline: records are created, edited,
//! shown and listed with no server, and survive the process ending. Its
//! store is sealed under a key from a key file or a passphrase.

// The damaged stores are written through the SDK; the SDK's own tests
// (client-sdk/tests/damaged_store.rs) use the same ones, so one copy.
#[path = "../../client-sdk/tests/damage/mod.rs"]
mod damage;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `baraza` binary with no `BARAZA_*` settings leaking in from the
/// environment the tests run in.
fn baraza_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baraza"));
    for var in [
        "BARAZA_TABLET_DATA",
        "BARAZA_TOKEN",
        "BARAZA_LOG",
        "BARAZA_KEY_FILE",
        "BARAZA_OPEN_TIMEOUT",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs `baraza --data DATA ARGS` with `stdin` as its input and no
/// `BARAZA_*` settings leaking in.
fn run(data: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut command = baraza_command();
    let mut child = command
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run baraza");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write to baraza");
    let out = child.wait_with_output().expect("wait for baraza");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The tablet's data dir and key file inside a test's directory.
fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("tablet"), dir.join("tablet.key"))
}

/// `baraza` on the tablet in `dir`, with its key file.
fn baraza(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let (data, key) = paths(dir);
    let mut full = vec!["--key-file", key.to_str().expect("a UTF-8 path")];
    full.extend_from_slice(args);
    run(&data, &full, "")
}

/// Every byte of every file under `dir`.
fn bytes_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out
}

fn found_in(dir: &Path, needle: &str) -> Option<PathBuf> {
    bytes_under(dir)
        .into_iter()
        .find(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(path, _)| path)
}

/// A CA certificate (its key thrown away): `init` checks the CA file it is
/// given, and these tests need no server.
const TEST_CA: &str = include_str!("fixtures/ca.pem");

fn init_args(ca: &str) -> Vec<String> {
    let token = format!("bz_{}_{}", "ab".repeat(16), "cd".repeat(32));
    [
        "init",
        "--server",
        "https://127.0.0.1:9",
        "--ca",
        ca,
        "--token",
        &token,
        "--user",
        "cpl.achieng",
        "--area",
        "mathare",
    ]
    .map(String::from)
    .to_vec()
}

/// Sets a tablet up without any server: enrolment data only. `init`
/// creates the key file.
fn enrol_offline(dir: &Path) {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, TEST_CA).unwrap();
    let args = init_args(&ca.to_string_lossy());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = baraza(dir, &args);
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
    let fields = &record["fields"];
    assert_eq!(fields["beat"], "B5", "{json}");
    assert_eq!(fields["notes"], "Calm night.");
    assert_eq!(fields["officer"], "Cpl. Achieng");
    assert_eq!(fields["observations"], serde_json::json!([]));
    assert_eq!(record["kind"], "patrol_note");
    assert_eq!(record["synced"], false);

    let (ok, list, _) = baraza(dir.path(), &["--json", "list"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&list).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    assert_eq!(listed[0]["title"], "B5");

    let (ok, status, _) = baraza(dir.path(), &["--json", "status"]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["unacknowledged"], 1);
    assert_eq!(status["last_sync"], serde_json::Value::Null);
}

#[test]
fn mistakes_get_clear_errors() {
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(paths(fresh.path()).1, "7e".repeat(32)).unwrap();
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

#[test]
fn init_creates_a_private_key_file_and_only_that_key_opens_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (data, key_file) = paths(dir.path());
    enrol_offline(dir.path());
    let hex = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(hex.trim().len(), 64, "64 hex digits");
    assert!(hex.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is its owner's only");
    }
    let phrase = "Boda boda rider reported missing near Kariobangi";
    let (ok, id, err) = baraza(dir.path(), &["new", "--set", &format!("title={phrase}")]);
    assert!(ok, "{err}");
    assert_eq!(
        found_in(&data, phrase),
        None,
        "the title is readable on disk"
    );

    // The same key as 32 raw bytes opens it too.
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let raw_file = dir.path().join("raw.key");
    std::fs::write(&raw_file, &raw).unwrap();
    let raw_path = raw_file.to_str().unwrap();
    let (ok, shown, err) = run(&data, &["--key-file", raw_path, "show", id.trim()], "");
    assert!(ok, "{err}");
    assert!(shown.contains(phrase), "{shown}");

    // Another key is refused, clearly, and nothing changes.
    let other = dir.path().join("other.key");
    std::fs::write(&other, "11".repeat(32)).unwrap();
    let other = other.to_str().unwrap();
    let (ok, _, err) = run(&data, &["--key-file", other, "list"], "");
    assert!(!ok);
    assert!(err.contains("wrong key"), "{err}");
    assert!(!err.contains("inside the data dir"), "{err}");
    let (ok, _, err) = run(
        &data,
        &[
            "--key-file",
            other,
            "init",
            "--server",
            "x",
            "--ca",
            "y",
            "--token",
            "z",
        ],
        "",
    );
    assert!(!ok);
    assert!(err.contains("wrong key"), "{err}");
    let (ok, list, _) = baraza(dir.path(), &["list"]);
    assert!(ok);
    let listed: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, [id.trim()]);

    // A key file that holds no key, or is missing, is named as the problem.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    let (ok, _, err) = run(&data, &["--key-file", bad.to_str().unwrap(), "list"], "");
    assert!(!ok);
    assert!(
        err.contains("64 hex digits") && !err.contains("not a key"),
        "{err}"
    );
    let missing = dir.path().join("missing.key");
    let (ok, _, err) = run(
        &data,
        &["--key-file", missing.to_str().unwrap(), "list"],
        "",
    );
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
    // init never makes a new key for a store that exists.
    let args = init_args("ca.pem");
    let mut full = vec!["--key-file", missing.to_str().unwrap()];
    full.extend(args.iter().map(String::as_str));
    let (ok, _, err) = run(&data, &full, "");
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!missing.exists());
}

#[test]
fn without_a_key_file_a_passphrase_seals_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tablet");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TEST_CA).unwrap();
    let args = init_args(&ca.to_string_lossy());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let passphrase = "mvua ya masika 2024\n";
    let (ok, _, err) = run(&data, &args, passphrase);
    assert!(ok, "{err}");
    let salt = std::fs::read_to_string(data.join("key-salt")).unwrap();
    assert!(salt.starts_with("argon2id "), "{salt}");

    let phrase = "Water kiosk dispute at Mathare 4A";
    let (ok, id, err) = run(
        &data,
        &["new", "--set", &format!("title={phrase}")],
        passphrase,
    );
    assert!(ok, "{err}");
    assert_eq!(
        found_in(&data, phrase),
        None,
        "the title is readable on disk"
    );
    assert_eq!(
        found_in(&data, "mvua ya masika"),
        None,
        "the passphrase is on disk"
    );
    let (ok, shown, _) = run(&data, &["show", id.trim()], passphrase);
    assert!(ok);
    assert!(shown.contains(phrase), "{shown}");

    let (ok, _, err) = run(&data, &["show", id.trim()], "mvua ya masika 2025\n");
    assert!(!ok);
    assert!(err.contains("wrong key"), "{err}");
    let (ok, _, err) = run(&data, &["list"], "");
    assert!(!ok);
    assert!(err.contains("no key"), "{err}");
}

#[test]
fn a_key_file_kept_inside_the_data_dir_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tablet");
    let key = data.join("store.key");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TEST_CA).unwrap();
    let mut args = vec!["--key-file".to_string(), key.to_string_lossy().into_owned()];
    args.extend(init_args(&ca.to_string_lossy()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run(&data, &args, "");
    assert!(ok, "{err}");
    assert!(err.contains("inside the data dir"), "{err}");
}

/// Runs `baraza --data DATA --key-file KEY ARGS`, killing it if it has not
/// ended after `limit`: a hang fails the test instead of stalling it.
/// Returns success, stderr and how long it ran.
fn run_within(data: &Path, key: &Path, args: &[&str], limit: Duration) -> (bool, String, Duration) {
    let mut command = baraza_command();
    let started = Instant::now();
    let mut child = command
        .arg("--data")
        .arg(data)
        .arg("--key-file")
        .arg(key)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run baraza");
    loop {
        if let Some(status) = child.try_wait().expect("poll baraza") {
            let out = child.wait_with_output().expect("collect baraza's output");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            return (status.success(), stderr, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`baraza {}` still running after {limit:?}: it hangs",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A key file holding `key` as 64 hex digits, beside (not inside) `data`.
fn key_file(dir: &Path, name: &str, key: &[u8; 32]) -> PathBuf {
    let path = dir.join(name);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, hex).unwrap();
    path
}

#[test]
fn a_damaged_store_is_named_and_refused_in_bounded_time_and_a_wrong_key_is_told_apart() {
    const LIMIT: Duration = Duration::from_secs(60);
    let tmp = tempfile::tempdir().unwrap();
    let right = key_file(tmp.path(), "right.key", &damage::KEY);
    let wrong = key_file(tmp.path(), "wrong.key", &damage::OTHER_KEY);

    // A missing blob file: `status` spun forever counting records.
    let data = tmp.path().join("missing-blob");
    damage::remove_blob(&data);
    let store = data.join("store");
    let (ok, err, took) = run_within(&data, &right, &["status"], LIMIT);
    assert!(!ok, "status succeeded on a damaged store: {err}");
    assert!(err.contains("damaged"), "{err}");
    assert!(
        err.contains(&store.display().to_string()),
        "names the store: {err}"
    );
    assert!(!err.contains("wrong key"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let (ok, err, _) = run_within(&data, &wrong, &["status"], LIMIT);
    assert!(!ok);
    assert!(err.contains("wrong key"), "{err}");
    assert!(!err.contains("damaged"), "{err}");

    // Segments claiming the same place in the log: sled panicked opening it.
    let data = tmp.path().join("duplicate-segment");
    damage::duplicate_segment_header(&data);
    let store = data.join("store");
    let (ok, err, took) = run_within(&data, &right, &["status"], LIMIT);
    assert!(!ok, "status succeeded on a damaged store: {err}");
    assert!(err.contains("damaged"), "{err}");
    assert!(
        err.contains(&store.display().to_string()),
        "names the store: {err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
