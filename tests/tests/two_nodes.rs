//! Two server nodes on one PostgreSQL database, as a national deployment
//! runs them behind a load balancer: a tablet may reach either. A change
//! accepted by one node reaches a tablet connected to the other while it
//! stays connected; offline edits that meet on different nodes converge
//! with the conflict kept; a device revoked through one node is cut off
//! on the other mid-session; and a node killed with `kill -9` while
//! tablets push through both loses nothing it acknowledged, while the
//! other node keeps serving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baraza_client::SyncEvent;
use baraza_tests::{device_of, postgres_database, wait_until, Recorder, ServerProcess, Tablet};

/// How long a change may take to cross from one node to a tablet on the
/// other (the target is under a second; this only bounds the test).
const LIVE_TIMEOUT: Duration = Duration::from_secs(20);

fn two_nodes(tmp: &std::path::Path) -> (ServerProcess, ServerProcess) {
    let url = postgres_database();
    let a = ServerProcess::start_on_postgres(&tmp.join("node a"), &url);
    let b = ServerProcess::start_on_postgres(&tmp.join("node b"), &url);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablets_on_two_nodes_see_each_others_changes_live_and_converge_offline_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let patrol = Tablet::new(&a, "patrol tablet");
    let duty = Tablet::new(&b, "duty tablet");

    // The duty tablet stays connected to node B.
    let events = Arc::new(Recorder::default());
    let background = duty.start_background(events.clone()).unwrap();
    wait_until("the duty tablet has settled", LIVE_TIMEOUT, || {
        events.count(|e| matches!(e, SyncEvent::Settled(_))) > 0
    })
    .await;

    // A patrol reports through node A; node B pushes it to the duty tablet
    // on the connection it already has.
    let id = patrol
        .create(vec![("title".into(), "Market stall fire, Gikomba".into())])
        .unwrap();
    let report = patrol.sync().await;
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));
    let sent = Instant::now();
    wait_until(
        "the report reaches the tablet on node B",
        LIVE_TIMEOUT,
        || duty.list().unwrap().contains(&id),
    )
    .await;
    eprintln!(
        "crossed from node A to a tablet on node B in {:?}",
        sent.elapsed()
    );
    assert_eq!(duty.heads(&id).unwrap(), patrol.heads(&id).unwrap());
    assert_eq!(
        events.count(|e| matches!(e, SyncEvent::Connecting { .. })),
        1,
        "the duty tablet reconnected instead of receiving live: {:?}",
        events.events()
    );

    // The duty tablet's own edit goes up through node B by itself, and
    // the patrol fetches it through node A.
    duty.set(&id, "place", "Gikomba market").unwrap();
    wait_until(
        "the duty tablet's edit is acknowledged",
        LIVE_TIMEOUT,
        || duty.status().unwrap().unacknowledged == 0,
    )
    .await;
    background.stop().await;
    assert_eq!(patrol.sync().await.docs_received, 1);
    assert_eq!(
        patrol.value(&id, "place").as_deref(),
        Some("Gikomba market")
    );

    // Offline, both set the title; each reconnects to a different node.
    patrol
        .set(&id, "title", "Stall fire, Gikomba north gate")
        .unwrap();
    duty.set(&id, "title", "Stall fire, Gikomba east gate")
        .unwrap();
    patrol.sync().await;
    duty.sync().await;
    patrol.sync().await;
    assert_eq!(duty.sync().await.unacknowledged, 0);
    assert_eq!(duty.heads(&id).unwrap(), patrol.heads(&id).unwrap());
    for tablet in [&patrol, &duty] {
        let title = tablet.field(&id, "title");
        let mut seen = title.conflicts.clone();
        seen.push(title.value.clone());
        seen.sort();
        assert_eq!(
            seen,
            vec![
                "Stall fire, Gikomba east gate".to_string(),
                "Stall fire, Gikomba north gate".to_string()
            ],
            "both values are kept as a conflict on every tablet"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_through_one_node_is_cut_off_mid_session_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    let lost = Tablet::new(&b, "lost tablet");
    lost.create(vec![("title".into(), "Beat B4".into())])
        .unwrap();
    let events = Arc::new(Recorder::default());
    let background = lost.start_background(events.clone()).unwrap();
    wait_until(
        "the tablet's live session on node B settles",
        LIVE_TIMEOUT,
        || events.count(|e| matches!(e, SyncEvent::Settled(_))) > 0,
    )
    .await;

    // Revoked through node A's admin socket.
    let out = a.command(&["device", "revoke", "--id", &device_of(lost.token())], "");
    assert!(out.status.success(), "{out:?}");
    wait_until("the tablet on node B wipes itself", LIVE_TIMEOUT, || {
        events.wiped().is_some()
    })
    .await;
    let report = events.wiped().unwrap();
    assert_eq!(report.reason, "revoked");
    // Cut on its live connection to node B, not refused at a reconnect.
    assert_eq!(
        events.count(|e| matches!(e, SyncEvent::Connecting { .. })),
        1,
        "{:?}",
        events.events()
    );
    assert!(lost.list().unwrap().is_empty());
    background.stop().await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_tablets_push_through_both_loses_nothing_it_acknowledged() {
    const TABLETS: usize = 20;
    const RECORDS: usize = 10;
    let tmp = tempfile::tempdir().unwrap();
    let (mut a, b) = two_nodes(tmp.path());
    let tablets: Vec<Tablet> = (0..TABLETS)
        .map(|i| {
            Tablet::new(
                if i.is_multiple_of(2) { &a } else { &b },
                &format!("tablet {i}"),
            )
        })
        .collect();
    for (i, tablet) in tablets.iter().enumerate() {
        for r in 0..RECORDS {
            tablet
                .create(vec![("title".into(), format!("tablet {i}, meeting {r}"))])
                .unwrap();
        }
    }
    let on_a = |i: usize| i.is_multiple_of(2);

    // Every tablet pushes at once; node A is killed once its tablets'
    // pushes are under way.
    let heard: Vec<Arc<Recorder>> = (0..TABLETS).map(|_| Arc::default()).collect();
    let syncs = futures_util::future::join_all(tablets.iter().zip(&heard).map(|(t, h)| {
        tokio::time::timeout(Duration::from_secs(120), t.client().sync_once(h.as_ref()))
    }));
    let kill = async {
        wait_until("node A's tablets are pushing", LIVE_TIMEOUT, || {
            (0..TABLETS).filter(|&i| on_a(i)).any(|i| {
                heard[i].count(|e| matches!(e, SyncEvent::Progress { sent, .. } if *sent > 0)) > 0
            })
        })
        .await;
        a.kill9();
    };
    let (results, ()) = tokio::join!(syncs, kill);

    // Node B kept serving: each of its tablets finished with nothing left.
    for (i, result) in results.iter().enumerate().filter(|(i, _)| !on_a(*i)) {
        match result {
            Ok(Ok(report)) => assert_eq!(report.unacknowledged, 0, "tablet {i}: {report:?}"),
            other => panic!("tablet {i} on the surviving node: {other:?}"),
        }
    }

    // Whatever node A acknowledged is in the database: a tablet on node B
    // receives every record any tablet holds as acknowledged.
    let reader = Tablet::new(&b, "reader tablet");
    reader.sync().await;
    let mut acknowledged = 0;
    let mut unacknowledged = [0u64; TABLETS];
    for (i, tablet) in tablets.iter().enumerate() {
        for summary in tablet.records().unwrap() {
            if summary.synced {
                acknowledged += 1;
                assert_eq!(
                    reader.heads(&summary.id).ok(),
                    Some(tablet.heads(&summary.id).unwrap()),
                    "tablet {i}'s acknowledged record {} is not in the database",
                    summary.id
                );
            } else {
                unacknowledged[i] += 1;
            }
        }
    }
    eprintln!(
        "node A killed with {} records unacknowledged; {acknowledged} records held as acknowledged checked",
        unacknowledged.iter().sum::<u64>()
    );

    // Node A's tablets carry on with node B and send only what was never
    // acknowledged: the store id is the database's.
    for (i, tablet) in tablets.iter().enumerate().filter(|(i, _)| on_a(*i)) {
        tablet.point_at(&b);
        let report = tablet.sync().await;
        assert_eq!(
            (report.docs_sent, report.unacknowledged),
            (unacknowledged[i], 0),
            "tablet {i}: {report:?}"
        );
    }
    reader.sync().await;
    assert_eq!(reader.list().unwrap().len(), TABLETS * RECORDS);
    for tablet in [&tablets[0], &tablets[1]] {
        tablet.sync().await;
        assert_eq!(tablet.list().unwrap().len(), TABLETS * RECORDS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_new_areas_given_through_one_node_reach_their_tablet_live_on_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes(tmp.path());
    a.add_user("ofc.west", "officer", &["west"]);
    a.add_user("sup.grow", "supervisor", &["east"]);
    let away = Tablet::for_user(&a, "west tablet", "ofc.west", "west");
    let supervisor = Tablet::for_user(&b, "supervisor tablet", "sup.grow", "east");
    let west = away
        .create_record("patrol_note", "west", vec![("beat".into(), "W1".into())])
        .unwrap();
    away.sync().await;
    let events = Arc::new(Recorder::default());
    let background = supervisor.start_background(events.clone()).unwrap();
    wait_until(
        "the supervisor's session on node B settles",
        LIVE_TIMEOUT,
        || events.count(|e| matches!(e, SyncEvent::Settled(_))) > 0,
    )
    .await;
    assert!(supervisor.list().unwrap().is_empty());

    // Given the west too, through node A: node B's session for the
    // supervisor ends its feed under the old scope, and the tablet is fed
    // again under the new one without anyone pressing sync.
    let out = a.command(
        &[
            "user", "areas", "--name", "sup.grow", "--area", "east", "--area", "west",
        ],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    wait_until(
        "the west record reaches the supervisor",
        LIVE_TIMEOUT,
        || supervisor.list().unwrap().contains(&west),
    )
    .await;
    assert_eq!(supervisor.field(&west, "beat").value, "W1");
    background.stop().await;
}
