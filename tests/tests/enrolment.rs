//! An officer enrols a tablet by logging in once; the tablet gets its own
//! token tied to the officer and files records under them. Five wrong
//! passwords lock the account, the right one is then refused too, until an
//! administrator releases it (through the admin API, or on the command
//! line). The guesser is never told the account is locked: every refusal
//! reads "wrong user name or password"; administrators see the lock. One
//! address trying many names is throttled with 429 before any password is
//! checked.

use std::path::Path;

use baraza_client::{AuthRefusal, Client, ClientError};
use baraza_tests::{https_request, new_key, run_server_command, HttpReply, ServerProcess};

/// What every refused login answers, whatever the reason.
const REFUSED: &str = "wrong user name or password";
use serde_json::json;

/// `baraza_server::identity::users::ATTEMPTS_PER_ADDRESS_MAX`: failed logins one
/// address may make per minute.
const ATTEMPTS_PER_ADDRESS_MAX: usize = 20;

fn user_cmd(data: &Path, args: &[&str], stdin: &str) {
    let mut full = vec!["user"];
    full.extend_from_slice(args);
    let out = run_server_command(data, &full, stdin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn enroll(server: &ServerProcess, dir: &Path, password: &str) -> Result<Client, ClientError> {
    let client = Client::open(dir, &new_key()).unwrap();
    client
        .enroll(
            &server.url(),
            &server.ca_path(),
            "otieno",
            password,
            "Mathare tablet 2",
        )
        .await?;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_enrols_a_tablet_and_a_guesser_locks_the_account() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    user_cmd(
        &data,
        &[
            "add", "--name", "otieno", "--role", "officer", "--area", "mathare",
        ],
        "night patrol B4\n",
    );
    user_cmd(
        &data,
        &["add", "--name", "amina", "--role", "admin"],
        "keys to the station\n",
    );
    let server = ServerProcess::start(&data);

    // The officer's tablet: enrol, record, sync.
    let tablet = enroll(&server, &tmp.path().join("tablet"), "night patrol B4")
        .await
        .unwrap();
    let id = tablet
        .create_record(
            "patrol_note",
            &tablet.area().unwrap(),
            vec![("beat".into(), "B4".into())],
        )
        .unwrap();
    let report = tablet.sync_once(&baraza_client::NoListener).await.unwrap();
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));
    let history = tablet.history(&id).unwrap();
    assert_eq!(history[0].user.as_deref(), Some("otieno"));

    // Someone else guesses the password.
    guess_until_locked(&server, tmp.path(), "first").await;
    // The account is locked, as an administrator's `user list` shows...
    assert_eq!(listed_status(&data, "otieno"), "locked");
    // ...so even the right password is refused, with the answer a wrong
    // one gets: a stranger cannot learn that the account exists or is
    // locked.
    let locked = enroll(&server, &tmp.path().join("officer-2"), "night patrol B4").await;
    assert!(
        matches!(locked, Err(ClientError::Unauthorized { ref message, refusal: AuthRefusal::Login }) if message == REFUSED),
        "{:?}",
        locked.as_ref().err()
    );
    // ...but the tablet already enrolled keeps syncing with its own token.
    tablet.set(&id, "beat", "B5").unwrap();
    assert_eq!(
        tablet
            .sync_once(&baraza_client::NoListener)
            .await
            .unwrap()
            .unacknowledged,
        0
    );

    // An administrator, at their own enrolled device, sees the lockout and
    // releases it through the admin API.
    let admin = Client::open(&tmp.path().join("admin"), &new_key())
        .unwrap()
        .enroll(
            &server.url(),
            &server.ca_path(),
            "amina",
            "keys to the station",
            "station office",
        )
        .await
        .unwrap();
    let shown = https_request(
        &server,
        "GET",
        "/v1/admin/users/otieno",
        Some(&admin.token),
        None,
    )
    .await;
    assert_eq!(shown.json()["user"]["locked"], true, "{shown:?}");
    let released = https_request(
        &server,
        "POST",
        "/v1/admin/users/otieno/release",
        Some(&admin.token),
        None,
    )
    .await;
    assert_eq!(released.status, 200, "{released:?}");
    assert_eq!(released.json()["user"]["locked"], false, "{released:?}");
    assert_eq!(listed_status(&data, "otieno"), "active");
    assert!(
        enroll(&server, &tmp.path().join("officer-3"), "night patrol B4")
            .await
            .is_ok()
    );

    // Locked again, the command line releases it just the same.
    guess_until_locked(&server, tmp.path(), "second").await;
    assert_eq!(listed_status(&data, "otieno"), "locked");
    assert!(matches!(
        enroll(&server, &tmp.path().join("officer-3b"), "night patrol B4").await,
        Err(ClientError::Unauthorized { ref message, refusal: AuthRefusal::Login }) if message == REFUSED
    ));
    user_cmd(&data, &["release", "--name", "otieno"], "");
    assert!(
        enroll(&server, &tmp.path().join("officer-4"), "night patrol B4")
            .await
            .is_ok()
    );
}

/// The status column of `user list` (through the running server's admin
/// socket) for `name`.
fn listed_status(data: &Path, name: &str) -> String {
    let out = run_server_command(data, &["user", "list"], "");
    assert!(out.status.success(), "{out:?}");
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    list.lines()
        .find(|line| line.split('\t').next() == Some(name))
        .and_then(|line| line.rsplit('\t').next())
        .unwrap_or_else(|| panic!("{name} is not in the user list:\n{list}"))
        .to_string()
}

/// Five wrong passwords for otieno, the fifth locking the account: all
/// five answered alike.
async fn guess_until_locked(server: &ServerProcess, dir: &Path, round: &str) {
    for attempt in 1..=5 {
        let refused = enroll(
            server,
            &dir.join(format!("guess-{round}-{attempt}")),
            "password guess",
        )
        .await
        .err()
        .expect("a wrong password is refused");
        let ClientError::Unauthorized { message, refusal } = refused else {
            panic!("expected a refusal, got {refused:?}");
        };
        assert_eq!(message, REFUSED, "attempt {attempt}");
        assert_eq!(refusal, AuthRefusal::Login, "attempt {attempt}");
    }
}

async fn enroll_raw(server: &ServerProcess, user: &str, password: &str) -> HttpReply {
    let body = json!({ "user": user, "password": password, "device_name": "tablet" });
    https_request(server, "POST", "/v1/enroll", None, Some(&body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_guessing_many_names_is_throttled() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    user_cmd(
        &data,
        &[
            "add", "--name", "otieno", "--role", "officer", "--area", "mathare",
        ],
        "night patrol B4\n",
    );
    let server = ServerProcess::start(&data);

    // A successful login does not count towards the throttle.
    let enrolled = enroll_raw(&server, "otieno", "night patrol B4").await;
    assert_eq!(enrolled.status, 200, "{enrolled:?}");
    // One guess per name never locks an account, which is why the address
    // is throttled.
    for i in 0..ATTEMPTS_PER_ADDRESS_MAX {
        let refused = enroll_raw(&server, &format!("guess-{i}"), "password guess").await;
        assert_eq!(
            (refused.status, refused.body.as_str()),
            (401, REFUSED),
            "attempt {i}: {refused:?}"
        );
    }
    // Now even the right password is not looked at.
    for _ in 0..2 {
        let throttled = enroll_raw(&server, "otieno", "night patrol B4").await;
        assert_eq!(throttled.status, 429, "{throttled:?}");
        assert!(
            throttled
                .body
                .contains("too many login attempts from this address"),
            "{throttled:?}"
        );
        let wait: u64 = throttled
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a Retry-After in seconds: {throttled:?}"));
        assert!((1..=60).contains(&wait), "{wait}");
    }

    let exported = run_server_command(&data, &["audit", "export"], "");
    assert!(exported.status.success(), "{exported:?}");
    let export = String::from_utf8_lossy(&exported.stdout).into_owned();
    let entries: Vec<serde_json::Value> = export
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let events = |name: &str| {
        entries
            .iter()
            .filter(|e| e["event"] == name)
            .collect::<Vec<_>>()
    };
    // Once per address and window, however many refusals.
    let throttled = events("login_throttled");
    assert_eq!(throttled.len(), 1, "{export}");
    assert_eq!(throttled[0]["details"]["address"], "127.0.0.1", "{export}");
    assert_eq!(throttled[0]["details"]["user"], "otieno", "{export}");
    assert_eq!(
        events("login_failed").len(),
        ATTEMPTS_PER_ADDRESS_MAX,
        "{export}"
    );
    assert_eq!(events("device_enrolled").len(), 1, "{export}");
    assert!(!export.contains("night patrol") && !export.contains("password guess"));
    assert!(!server.log().contains("night patrol"));
}
