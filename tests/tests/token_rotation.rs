//! Device tokens expire and are rotated: an enrolled tablet trades its
//! token for a new one once half its life has passed, the old one ends
//! when the new one is used, and a tablet that stays away for a whole
//! lifetime is refused with `expired` and must be enrolled again.
//!
//! The server runs with a six-second token lifetime; the waits below are
//! that lifetime passing, not assertions about speed.

use std::time::{Duration, Instant};

use baraza_client::{Client, ClientError, NoListener};
use baraza_tests::{new_key, upgrade_status, ServerProcess, HARNESS_PASSWORD};

const LIFETIME_SECS: u64 = 6;

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn rotations(server: &ServerProcess) -> usize {
    server
        .audit_entries()
        .iter()
        .filter(|e| e["event"] == "token_rotated")
        .count()
}

async fn enrolled(server: &ServerProcess, dir: &std::path::Path) -> (Client, String) {
    let client = Client::open(dir, &new_key()).unwrap();
    let enrolment = client
        .enroll(
            &server.url(),
            &server.ca_path(),
            "cpl.achieng",
            HARNESS_PASSWORD,
            "patrol tablet",
        )
        .await
        .unwrap();
    assert!(enrolment.expires_at.is_some());
    (client, enrolment.token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_at_half_life_and_expire_after_a_whole_one() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(
        &tmp.path().join("server"),
        &format!("[access]\ntoken_lifetime_secs = {LIFETIME_SECS}\n"),
    );
    server.add_user("cpl.achieng", "officer", &["kibera"]);

    let started = Instant::now();
    let (tablet, first_token) = enrolled(&server, &tmp.path().join("tablet")).await;
    let (drawer, _) = enrolled(&server, &tmp.path().join("drawer")).await;
    let id = tablet
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    tablet.sync_once(&NoListener).await.unwrap();
    assert_eq!(rotations(&server), 0, "too early to rotate");

    // Past half the lifetime: the next sync rotates first.
    tokio::time::sleep(
        (Duration::from_secs(LIFETIME_SECS) / 2 + Duration::from_millis(500))
            .saturating_sub(started.elapsed()),
    )
    .await;
    tablet.set(&id, "beat", "B5").unwrap();
    let report = tablet.sync_once(&NoListener).await.unwrap();
    assert_eq!(report.unacknowledged, 0);
    assert_eq!(rotations(&server), 1);
    // The new token was used, so the first one is over.
    assert_eq!(
        upgrade_status(&server, Some(&format!("Bearer {first_token}"))).await,
        401
    );

    // The drawer tablet never synced: after a whole lifetime its token is
    // refused as expired. The rotated tablet, well inside its new
    // lifetime, still syncs.
    tokio::time::sleep(
        (Duration::from_secs(LIFETIME_SECS) + Duration::from_millis(500))
            .saturating_sub(started.elapsed()),
    )
    .await;
    match drawer.sync_once(&NoListener).await {
        Err(ClientError::Unauthorized { refusal, message }) => {
            assert!(message.starts_with("expired"), "{message}");
            assert_eq!(refusal, baraza_client::AuthRefusal::Expired, "{message}");
        }
        other => panic!("expected an expired token, got {other:?}"),
    }
    tablet.sync_once(&NoListener).await.unwrap();
}
