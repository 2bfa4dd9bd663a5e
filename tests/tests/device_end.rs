//! The two ways a device ends. Lost or stolen: revoked, refused at once
//! (even mid-session), it wipes without uploading and reports what the
//! server never got; the server's audit names what it last acknowledged.
//! Handed back: retired, it uploads what the server lacks, wipes, reports,
//! and its token ends.

use std::sync::Arc;
use std::time::Duration;

use baraza_client::{ClientError, SyncEvent};
use baraza_tests::{
    device_of, https_get, run_server_command, upgrade_status, wait_until, Recorder, ServerProcess,
    Tablet,
};

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn admin(server: &ServerProcess, args: &[&str]) {
    let out = run_server_command(server.data_dir(), args, "");
    assert!(out.status.success(), "{args:?}: {out:?}");
}

struct Beat {
    server: ServerProcess,
    supervisor: Tablet,
    _tmp: tempfile::TempDir,
}

impl Beat {
    fn open() -> Beat {
        let tmp = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&tmp.path().join("server"));
        server.add_user("cpl.achieng", "officer", &["kibera"]);
        server.add_user("sgt.wanjiru", "supervisor", &["kibera"]);
        let supervisor = Tablet::for_user(&server, "station tablet", "sgt.wanjiru", "kibera");
        Beat {
            server,
            supervisor,
            _tmp: tmp,
        }
    }

    fn officer_tablet(&self, name: &str) -> Tablet {
        Tablet::for_user(&self.server, name, "cpl.achieng", "kibera")
    }

    /// A field of a record as the server holds it, read by the supervisor.
    async fn served(&self, id: &str, field: &str) -> Option<String> {
        let (status, body) = https_get(
            &self.server,
            &format!("/v1/records/{id}"),
            Some(self.supervisor.token()),
        )
        .await;
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        view["fields"][field].as_str().map(str::to_string)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_mid_session_wipes_and_reports_what_the_server_never_got() {
    let beat = Beat::open();
    let tablet = beat.officer_tablet("patrol tablet");
    let patrol = tablet
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    tablet.sync().await;
    // A record the server refuses (outside the officer's areas) stays
    // unacknowledged on the tablet.
    let refused = tablet
        .create_record("meeting", "mathare", vec![kv("title", "not my beat")])
        .unwrap();
    assert_eq!(tablet.sync().await.refused, 1);

    let events = Arc::new(Recorder::default());
    let background = tablet.start_background(events.clone()).unwrap();
    wait_until("the live session settles", Duration::from_secs(20), || {
        events.count(|e| matches!(e, SyncEvent::Settled(_))) > 0
    })
    .await;

    admin(
        &beat.server,
        &["device", "revoke", "--id", &device_of(tablet.token())],
    );
    wait_until("the tablet wipes itself", Duration::from_secs(20), || {
        events.wiped().is_some()
    })
    .await;
    let report = events.wiped().unwrap();
    assert_eq!(report.reason, "revoked");
    // Cut on the live connection, not refused at a reconnect.
    assert_eq!(
        events.count(|e| matches!(e, SyncEvent::Connecting { .. })),
        1
    );
    let mut wiped = report.records.clone();
    wiped.sort();
    let mut expected = vec![patrol.clone(), refused.clone()];
    expected.sort();
    assert_eq!(wiped, expected);
    assert_eq!(report.unacknowledged, vec![refused.clone()]);
    assert!(tablet.list().unwrap().is_empty());
    assert!(matches!(
        tablet.sync_once(&baraza_client::NoListener).await,
        Err(ClientError::NotConfigured)
    ));
    background.stop().await;

    // The server refuses the token with `revoked`, and its audit says
    // what it last acknowledged to the device.
    assert_eq!(
        upgrade_status(&beat.server, Some(&format!("Bearer {}", tablet.token()))).await,
        401
    );
    let log = beat.server.audit_entries();
    let revoked = log
        .iter()
        .find(|e| e["event"] == "device_revoked")
        .expect("a device_revoked entry");
    let acked = revoked["details"]["last_acknowledged"].as_array().unwrap();
    assert!(
        acked
            .iter()
            .any(|a| a["record"] == patrol.as_str() && !a["heads"].as_array().unwrap().is_empty()),
        "{revoked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_with_offline_edits_is_refused_at_connect_and_uploads_nothing() {
    let beat = Beat::open();
    let tablet = beat.officer_tablet("tablet left in a matatu");
    let id = tablet
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    tablet.sync().await;
    tablet.set(&id, "beat", "B7 (offline edit)").unwrap();

    admin(
        &beat.server,
        &["device", "revoke", "--id", &device_of(tablet.token())],
    );
    match tablet.sync_once(&baraza_client::NoListener).await {
        Err(ClientError::Wiped(report)) => {
            assert_eq!(report.reason, "revoked");
            assert_eq!(report.records, vec![id.clone()]);
            assert_eq!(report.unacknowledged, vec![id.clone()]);
        }
        other => panic!("expected a wipe, got {other:?}"),
    }
    assert!(tablet.list().unwrap().is_empty());
    assert_eq!(beat.served(&id, "beat").await.as_deref(), Some("B4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_device_uploads_first_then_wipes_and_its_token_ends() {
    let beat = Beat::open();
    let tablet = beat.officer_tablet("tablet handed back");
    let id = tablet
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    tablet.sync().await;
    // Edited offline, then handed back before it synced again.
    tablet
        .set(&id, "beat", "B5, written on the way back")
        .unwrap();
    let late = tablet
        .create_record("patrol_note", "kibera", vec![kv("beat", "B6")])
        .unwrap();

    admin(
        &beat.server,
        &["device", "retire", "--id", &device_of(tablet.token())],
    );
    match tablet.sync_once(&baraza_client::NoListener).await {
        Err(ClientError::Wiped(report)) => {
            assert_eq!(report.reason, "retired");
            assert_eq!(report.records.len(), 2);
            assert!(report.unacknowledged.is_empty(), "{report:?}");
        }
        other => panic!("expected a wipe, got {other:?}"),
    }
    assert!(tablet.list().unwrap().is_empty());
    // Everything it held reached the server before the wipe.
    assert_eq!(
        beat.served(&id, "beat").await.as_deref(),
        Some("B5, written on the way back")
    );
    assert_eq!(beat.served(&late, "beat").await.as_deref(), Some("B6"));
    // Its token is over, and the audit records the report.
    wait_until(
        "the server marks the device retired",
        Duration::from_secs(10),
        || {
            beat.server
                .audit_entries()
                .iter()
                .any(|e| e["event"] == "device_retired")
        },
    )
    .await;
    assert_eq!(
        upgrade_status(&beat.server, Some(&format!("Bearer {}", tablet.token()))).await,
        401
    );
    let out = run_server_command(beat.server.data_dir(), &["device", "list"], "");
    let listing = String::from_utf8(out.stdout).unwrap();
    let line = listing
        .lines()
        .find(|l| l.contains("tablet handed back"))
        .unwrap();
    assert!(line.contains("\tretired\t"), "{listing}");
}
