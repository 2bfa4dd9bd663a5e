//! The station's server loses power (SIGKILL) in the middle of a tablet's
//! big upload. Whatever the server acknowledged before dying must still be
//! there after it restarts, and the tablet, which keeps everything until it
//! is acknowledged, heals the rest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baraza_client::NoListener;
use baraza_tests::{postgres_database, ServerProcess, Tablet, SYNC_TIMEOUT};

const RECORDS: usize = 500;
/// The kill comes once this many are acknowledged: well into the upload,
/// well before its end.
const ACKNOWLEDGED_BEFORE_KILL: usize = RECORDS / 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_acknowledged_before_a_kill9_survive_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    kill9_story(server, Backend::Sled).await;
}

/// The same on PostgreSQL, where the store id is the database's: after
/// the kill the patrol tablet re-offers only what was not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_acknowledged_records_survive_a_kill9_and_nothing_else_is_re_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_on_postgres(&tmp.path().join("server"), &postgres_database());
    kill9_story(server, Backend::Postgres).await;
}

#[derive(PartialEq)]
enum Backend {
    Sled,
    Postgres,
}

async fn kill9_story(mut server: ServerProcess, backend: Backend) {
    let patrol = Tablet::new(&server, "patrol tablet");

    // A day of occurrence-book entries taken offline.
    let created = Instant::now();
    let mut ids = Vec::with_capacity(RECORDS);
    for n in 0..RECORDS {
        let id = patrol
            .create(vec![
                ("title".into(), format!("OB/{n:04}/2025")),
                (
                    "place".into(),
                    format!("Patrol note {n}: all quiet at the market."),
                ),
            ])
            .unwrap();
        ids.push(id);
    }
    eprintln!("created {RECORDS} records in {:?}", created.elapsed());
    assert_eq!(patrol.status().unwrap().unacknowledged, RECORDS as u64);

    // The upload starts; once the server has acknowledged part of it, the
    // server dies without a chance to flush or say goodbye.
    let uploader = patrol.client().clone();
    let upload = tokio::spawn(async move { uploader.sync_once(&NoListener).await });
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let left = patrol.status().unwrap().unacknowledged;
        if left <= (RECORDS - ACKNOWLEDGED_BEFORE_KILL) as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline && !upload.is_finished(),
            "the server acknowledged nothing; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill9();
    let outcome = tokio::time::timeout(SYNC_TIMEOUT, upload)
        .await
        .expect("the interrupted sync returns")
        .expect("the sync task does not panic");

    // What the tablet saw acknowledged, with the heads it had then.
    let acknowledged: BTreeMap<String, Vec<String>> = ids
        .iter()
        .filter(|id| !patrol.get(id).unwrap().unacknowledged)
        .map(|id| (id.clone(), patrol.heads(id).unwrap()))
        .collect();
    eprintln!(
        "{} of {RECORDS} records acknowledged before the kill (sync ended with {:?})",
        acknowledged.len(),
        outcome.as_ref().map(|r| r.unacknowledged)
    );
    assert!(acknowledged.len() >= ACKNOWLEDGED_BEFORE_KILL);
    let unacknowledged = patrol.status().unwrap().unacknowledged as usize;
    assert_eq!(acknowledged.len() + unacknowledged, RECORDS);
    if unacknowledged > 0 {
        assert!(
            outcome.is_err(),
            "a sync cut short must say so: {outcome:?}"
        );
    }

    // The server comes back on the same directory. A tablet that was never
    // in touch with the patrol tablet finds every acknowledged record, whole.
    server.restart();
    let desk = Tablet::new(&server, "front desk tablet");
    desk.sync().await;
    let on_server = desk.all_heads();
    for (id, heads) in &acknowledged {
        assert_eq!(
            on_server.get(id),
            Some(heads),
            "record {id} was acknowledged before the kill but the server lost it"
        );
    }

    // The patrol tablet reconnects and re-offers what was not acknowledged.
    patrol.point_at(&server);
    let healed = patrol.sync().await;
    assert_eq!(healed.unacknowledged, 0, "{healed:?}");
    assert_eq!(healed.refused, 0, "{healed:?}");
    if backend == Backend::Postgres {
        // sled cannot tell a kill from a lost disk cache, so it takes a
        // new store id and every tablet re-offers all it holds; the
        // database lost nothing it committed, so only the rest goes.
        assert_eq!(
            healed.docs_sent as usize, unacknowledged,
            "only the unacknowledged records are offered again: {healed:?}"
        );
    }
    assert_eq!(patrol.status().unwrap().unacknowledged, 0);

    desk.sync().await;
    let everything = patrol.all_heads();
    assert_eq!(everything.len(), RECORDS);
    assert_eq!(desk.all_heads(), everything);
}
