//! Two station tablets each hold the station's 10,000 records. After a
//! shift offline in which each edited 50 of them, reconnecting costs the
//! records that changed, not the records that exist: the last tablet to
//! sync sends its 50 and receives the other's 50, and nothing else.

use std::time::{Duration, Instant};

use baraza_tests::{ServerProcess, Tablet};

const RECORDS: usize = 10_000;
const EDITS_EACH: usize = 50;
/// A cold start of all records through one connection.
const BULK_SYNC_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_after_a_shift_costs_only_the_records_that_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let front_desk = Tablet::new(&server, "front desk tablet");
    let patrol = Tablet::new(&server, "patrol tablet");

    // The front desk holds the station's records and uploads them.
    let started = Instant::now();
    let ids: Vec<String> = (0..RECORDS)
        .map(|n| {
            front_desk
                .create(vec![
                    ("title".into(), format!("OB/{n:05}/2025")),
                    ("place".into(), "open".into()),
                ])
                .unwrap()
        })
        .collect();
    eprintln!(
        "created {RECORDS} records in {:?} ({:?} per record)",
        started.elapsed(),
        started.elapsed() / RECORDS as u32
    );
    let started = Instant::now();
    let upload = front_desk.sync_within(BULK_SYNC_TIMEOUT).await;
    eprintln!("uploaded {RECORDS} records in {:?}", started.elapsed());
    assert_eq!(upload.docs_sent, RECORDS as u64);
    assert_eq!(upload.unacknowledged, 0);

    // The patrol tablet is set up from scratch: a cold start of everything.
    let started = Instant::now();
    let cold = patrol.sync_within(BULK_SYNC_TIMEOUT).await;
    eprintln!("cold start of {RECORDS} records in {:?}", started.elapsed());
    assert_eq!(cold.docs_received, RECORDS as u64);
    assert_eq!(cold.docs_sent, 0);
    assert_eq!(patrol.status().unwrap().records, RECORDS as u64);

    // A shift offline: each tablet closes 50 different cases.
    let (desk_edits, patrol_edits) = ids.split_at(EDITS_EACH);
    let patrol_edits = &patrol_edits[..EDITS_EACH];
    for id in desk_edits {
        front_desk.set(id, "place", "closed at the desk").unwrap();
    }
    for id in patrol_edits {
        patrol.set(id, "place", "closed on patrol").unwrap();
    }

    // The patrol tablet reconnects first and uploads its 50.
    let patrol_sync = patrol.sync().await;
    assert_eq!(patrol_sync.docs_sent, EDITS_EACH as u64, "{patrol_sync:?}");
    assert_eq!(patrol_sync.unacknowledged, 0);

    // Then the front desk: exactly its 50 out, the patrol's 50 in.
    let started = Instant::now();
    let desk_sync = front_desk.sync().await;
    eprintln!("reconnect after the shift took {:?}", started.elapsed());
    assert_eq!(
        (
            desk_sync.docs_sent,
            desk_sync.docs_received,
            desk_sync.docs_reconciled
        ),
        (EDITS_EACH as u64, EDITS_EACH as u64, 2 * EDITS_EACH as u64),
        "the reconnect touched more than the changed records: {desk_sync:?}"
    );
    assert_eq!(desk_sync.unacknowledged, 0);
    for id in patrol_edits {
        assert_eq!(front_desk.field(id, "place").value, "closed on patrol");
    }

    // The patrol tablet picks up the desk's 50, and the two agree on all.
    let patrol_sync = patrol.sync().await;
    assert_eq!(patrol_sync.docs_sent, 0);
    for id in desk_edits {
        assert_eq!(patrol.field(id, "place").value, "closed at the desk");
    }
    assert_eq!(patrol.all_heads(), front_desk.all_heads());
}
