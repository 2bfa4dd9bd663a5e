//! An officer enrols a tablet by logging in once; the tablet gets its own
//! token tied to the officer and files records under them. Five wrong
//! passwords lock the account, the right one is then refused too, until an
//! administrator releases it.

use std::path::Path;

use baraza_client::{Client, ClientError};
use baraza_tests::{new_key, run_server_command, ServerProcess};

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
    for attempt in 1..=5 {
        let refused = enroll(
            &server,
            &tmp.path().join(format!("guess-{attempt}")),
            "password guess",
        )
        .await
        .err()
        .expect("a wrong password is refused");
        let ClientError::Unauthorized(reason) = refused else {
            panic!("expected a refusal, got {refused:?}");
        };
        if attempt < 5 {
            assert!(reason.contains("wrong user name or password"), "{reason}");
        } else {
            assert!(reason.contains("locked"), "{reason}");
        }
    }
    // Now even the right password is refused...
    let locked = enroll(&server, &tmp.path().join("officer-2"), "night patrol B4").await;
    assert!(matches!(locked, Err(ClientError::Unauthorized(ref r)) if r.contains("locked")));
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
    // An administrator releases the account.
    user_cmd(&data, &["release", "--name", "otieno"], "");
    assert!(
        enroll(&server, &tmp.path().join("officer-3"), "night patrol B4")
            .await
            .is_ok()
    );
}
