//! The upload queue never stalls. A tablet whose server is out of reach
//! keeps trying on its own, with backoff and jitter, and delivers what it
//! wrote once the server is back, without waiting for another edit; after
//! a long healthy connection drops it tries again soon, not after the
//! backoff of its earlier failures; an edit made while a sync runs goes in
//! that sync or the next; and a tablet that was offline for a week with
//! 1,000 unsynced changes catches up in one sync.
//!
//! The tablet reaches the server through a small TCP relay on 127.0.0.1
//! that the test turns off and on: "off" closes every connection it
//! accepts and cuts the ones it carries, as a lost network does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baraza_client::{SyncEvent, SyncListener};
use baraza_tests::{wait_until, Recorder, ServerProcess, Tablet};
use tokio::net::{TcpListener, TcpStream};

/// How long the background loop may take to deliver once the server is
/// reachable again: a few of its shortest backoffs.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP relay to the server that can be switched off.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let carried = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let up = up.clone();
            let carried = carried.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    carried.lock().unwrap().push(task);
                }
            }
        });
        Relay {
            addr,
            up,
            carried,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The network goes: new connections are closed, open ones cut.
    fn off(&self) {
        self.up.store(false, Ordering::SeqCst);
        for task in self.carried.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn on(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.off();
        self.accept.abort();
    }
}

fn failures(events: &Recorder) -> Vec<u64> {
    events
        .events()
        .into_iter()
        .filter_map(|e| match e {
            SyncEvent::Failed { retry_in_ms, .. } => Some(retry_in_ms),
            _ => None,
        })
        .collect()
}

fn meeting(title: &str) -> Vec<(String, String)> {
    vec![("title".into(), title.into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patrol_tablet_out_of_coverage_retries_on_its_own_and_delivers_when_the_network_returns()
{
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let patrol = Tablet::new(&server, "patrol tablet");
    let station = Tablet::new(&server, "station tablet");
    let relay = Relay::start(server.addr()).await;
    patrol
        .configure(&relay.url(), Some(&server.ca_path()), patrol.token())
        .unwrap();

    // Out of coverage: the record is written, the background sync starts
    // and fails, again and again, with nothing else written.
    relay.off();
    let id = patrol.create(meeting("Roadblock at Kangemi")).unwrap();
    let events = Arc::new(Recorder::default());
    let background = patrol
        .start_background(events.clone() as Arc<dyn SyncListener>)
        .unwrap();
    wait_until("three failed attempts", RECOVERY_TIMEOUT, || {
        failures(&events).len() >= 3
    })
    .await;
    let delays = failures(&events);
    // Exponential with jitter in the upper half: attempt 1 waits
    // 250..=500 ms, attempt 3 1,000..=2,000 ms.
    assert!(
        delays[0] <= 500 && delays[2] >= 1_000 && delays[2] > delays[0],
        "backoff did not grow: {delays:?}"
    );
    assert_eq!(patrol.status().unwrap().unacknowledged, 1);

    // Coverage returns; nobody touches the tablet, and the record arrives.
    relay.on();
    wait_until("the record is acknowledged", RECOVERY_TIMEOUT, || {
        patrol
            .status()
            .map(|s| s.unacknowledged == 0)
            .unwrap_or(false)
    })
    .await;
    station.sync().await;
    assert_eq!(
        station.value(&id, "title").as_deref(),
        Some("Roadblock at Kangemi")
    );

    // The network drops after the connection had been up: the next
    // attempt comes after the shortest backoff, not after the longer one
    // the earlier failures had reached.
    let before = failures(&events).len();
    relay.off();
    wait_until(
        "the dropped connection is noticed",
        RECOVERY_TIMEOUT,
        || failures(&events).len() > before,
    )
    .await;
    let after_drop = failures(&events)[before];
    assert!(
        after_drop <= 500,
        "a connection that had been up retried after {after_drop} ms"
    );

    // And it keeps going: an edit while off arrives once back on.
    patrol.set(&id, "place", "Kangemi stage").unwrap();
    relay.on();
    wait_until("the edit is acknowledged", RECOVERY_TIMEOUT, || {
        patrol
            .status()
            .map(|s| s.unacknowledged == 0)
            .unwrap_or(false)
    })
    .await;
    background.stop().await;
    station.sync().await;
    assert_eq!(
        station.value(&id, "place").as_deref(),
        Some("Kangemi stage")
    );
}

/// Records the first progress event, so the test can write while a sync
/// is under way.
struct WriteDuringSync {
    tablet_dir_client: baraza_client::Client,
    written: Mutex<Option<String>>,
}

impl SyncListener for WriteDuringSync {
    fn on_event(&self, event: SyncEvent) {
        if !matches!(event, SyncEvent::Progress { .. }) {
            return;
        }
        let mut written = self.written.lock().unwrap();
        if written.is_none() {
            let id = self
                .tablet_dir_client
                .create(meeting("Written while syncing"))
                .unwrap();
            *written = Some(id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_while_a_sync_runs_is_sent_in_that_sync_or_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let tablet = Tablet::new(&server, "liaison tablet");
    let other = Tablet::new(&server, "desk tablet");
    for i in 0..50 {
        tablet.create(meeting(&format!("Baraza {i}"))).unwrap();
    }
    let listener = WriteDuringSync {
        tablet_dir_client: tablet.client().clone(),
        written: Mutex::new(None),
    };
    let first = tablet.sync_once(&listener).await.unwrap();
    let id = listener
        .written
        .lock()
        .unwrap()
        .clone()
        .expect("a progress event came");
    if first.unacknowledged > 0 {
        // Not in that sync: it must go in the next.
        assert_eq!(first.unacknowledged, 1);
        let second = tablet.sync().await;
        assert_eq!(second.unacknowledged, 0);
    }
    assert_eq!(tablet.status().unwrap().unacknowledged, 0);
    other.sync().await;
    assert_eq!(
        other.value(&id, "title").as_deref(),
        Some("Written while syncing")
    );
    assert_eq!(other.list().unwrap().len(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_offline_for_a_week_with_a_thousand_changes_catches_up_in_one_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let tablet = Tablet::new(&server, "rural post tablet");
    let other = Tablet::new(&server, "county tablet");

    // A week of work offline: 100 meetings with five edits each, and one
    // long meeting whose notes were typed in 500 separate edits.
    let mut changes = 0;
    for day in 0..100 {
        let id = tablet.create(meeting(&format!("Meeting {day}"))).unwrap();
        changes += 1;
        for edit in 0..4 {
            tablet
                .set(&id, "place", &format!("Village hall {edit}"))
                .unwrap();
            changes += 1;
        }
    }
    let long = tablet.create(meeting("The long meeting")).unwrap();
    for i in 0..499 {
        tablet.splice(&long, "notes", i, 0, "x").unwrap();
    }
    changes += 500;
    assert_eq!(changes, 1_000);
    assert_eq!(tablet.status().unwrap().unacknowledged, 101);

    // One sync: everything acknowledged.
    let report = tablet.sync().await;
    assert_eq!(report.unacknowledged, 0, "{report:?}");
    assert_eq!(report.refused, 0, "{report:?}");
    assert_eq!(report.docs_sent, 101);

    // The server has it all: another tablet gets identical records.
    other.sync().await;
    assert_eq!(other.all_heads(), tablet.all_heads());
    assert_eq!(other.value(&long, "notes").map(|n| n.len()), Some(499));
}
