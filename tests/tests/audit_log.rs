//! The audit log records logins (failed ones too), enrolments, syncs and
//! administrators' changes, hash-chained: `audit verify` passes on the real
//! log and fails after one byte of an entry is changed, or an entry removed.

use baraza_client::{Client, NoListener};
use baraza_tests::{new_key, pin_to_sled, run_server_command, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_complete_and_tampering_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    // It edits the audit log in sled's own files.
    pin_to_sled(&data);
    let added = run_server_command(
        &data,
        &[
            "user",
            "add",
            "--name",
            "wanjiru",
            "--role",
            "supervisor",
            "--area",
            "kibera-north",
        ],
        "review queue 2024\n",
    );
    assert!(added.status.success());
    let mut server = ServerProcess::start(&data);
    let tablet = Client::open(&tmp.path().join("tablet"), &new_key()).unwrap();
    assert!(tablet
        .enroll(
            &server.url(),
            &server.ca_path(),
            "wanjiru",
            "not it",
            "tablet"
        )
        .await
        .is_err());
    tablet
        .enroll(
            &server.url(),
            &server.ca_path(),
            "wanjiru",
            "review queue 2024",
            "tablet",
        )
        .await
        .unwrap();
    tablet
        .create_record(
            "meeting",
            "kibera-north",
            vec![("title".into(), "Audit baraza".into())],
        )
        .unwrap();
    tablet.sync_once(&NoListener).await.unwrap();
    drop(tablet);
    assert!(server.terminate().success());

    let verified = run_server_command(&data, &["audit", "verify"], "");
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let exported = run_server_command(&data, &["audit", "export"], "");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&exported.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    for wanted in ["user_added", "login_failed", "device_enrolled", "sync"] {
        assert!(events.contains(&wanted), "no {wanted} in {events:?}");
    }
    let text = String::from_utf8_lossy(&exported.stdout);
    assert!(
        !text.contains("review queue 2024"),
        "a password reached the audit log"
    );

    // Tamper with the stored log while the server is stopped.
    let tampered = |edit: &dyn Fn(&sled::Tree)| {
        let db = sled::open(data.join("db")).unwrap();
        edit(&db.open_tree("audit").unwrap());
        db.flush().unwrap();
    };
    tampered(&|tree| {
        let key = 2u64.to_be_bytes();
        let mut bytes = tree.get(key).unwrap().unwrap().to_vec();
        let at = bytes.iter().position(|b| *b == b'"').unwrap() + 1;
        bytes[at] ^= 0x01;
        tree.insert(key, bytes).unwrap();
    });
    let broken = run_server_command(&data, &["audit", "verify"], "");
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("entry 2"));

    // Put that entry back as it was, then remove another one.
    tampered(&|tree| {
        let key = 2u64.to_be_bytes();
        let mut bytes = tree.get(key).unwrap().unwrap().to_vec();
        let at = bytes.iter().position(|b| *b == b'"').unwrap() + 1;
        bytes[at] ^= 0x01;
        tree.insert(key, bytes).unwrap();
    });
    assert!(run_server_command(&data, &["audit", "verify"], "")
        .status
        .success());
    tampered(&|tree| {
        tree.remove(3u64.to_be_bytes()).unwrap();
    });
    let broken = run_server_command(&data, &["audit", "verify"], "");
    assert!(!broken.status.success());
    assert!(String::from_utf8_lossy(&broken.stderr).contains("entry 3"));
}
