//! A newly posted officer's tablet pulls the station's records over a link
//! that drops again and again. Each connection it makes is cut after a
//! fixed number of bytes from the server; it still ends up with every
//! record, because each try resumes from the cursor the last one reached
//! instead of starting over, and the bytes it takes stay within a small
//! multiple of one uncut cold start. Its progress events foretell the
//! size of the download.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baraza_tests::{ServerProcess, Tablet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RECORDS: usize = 1_500;
/// Bytes from the server each connection is allowed before it is cut:
/// more than one catch-up batch, less than the whole cold start.
const CUT_AFTER: u64 = 40 * 1024;
const TRIES_MAX: usize = 40;

/// A TCP forwarder on 127.0.0.1 that counts the bytes coming down, and
/// cuts every connection once `cut_after` of them have passed (if set).
struct Link {
    addr: SocketAddr,
    down: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl Link {
    async fn start(upstream: SocketAddr, cut_after: Option<u64>) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (total, count) = (down.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let total = total.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    forward(client, server, cut_after, total).await;
                });
            }
        });
        Link {
            addr,
            down,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

async fn forward(
    client: TcpStream,
    server: TcpStream,
    cut_after: Option<u64>,
    total: Arc<AtomicU64>,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
    });
    let mut passed = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let want = match cut_after {
            Some(limit) if passed >= limit => break,
            Some(limit) => buf.len().min((limit - passed) as usize),
            None => buf.len(),
        };
        let n = match server_rx.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if client_tx.write_all(&buf[..n]).await.is_err() {
            break;
        }
        passed += n as u64;
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
    // Both ways at once, as a dropped radio link does.
    up.abort();
    let _ = client_tx.shutdown().await;
}

/// The receiving side of one progress event: to receive, received, bytes
/// received, bytes expected, ms left.
type Receiving = (u64, u64, u64, Option<u64>, Option<u64>);

/// The receiving side of every progress event of one sync.
#[derive(Default)]
struct Progress {
    seen: std::sync::Mutex<Vec<Receiving>>,
}

impl baraza_client::SyncListener for Progress {
    fn on_event(&self, event: baraza_client::SyncEvent) {
        if let baraza_client::SyncEvent::Progress {
            to_receive,
            received,
            bytes_received,
            bytes_expected,
            receive_ms_left,
            ..
        } = event
        {
            self.seen.lock().unwrap().push((
                to_receive,
                received,
                bytes_received,
                bytes_expected,
                receive_ms_left,
            ));
        }
    }
}

impl Progress {
    /// What a progress bar showed halfway through a cold start: every
    /// record announced, and a download size and time left estimated
    /// close to the `total` bytes the whole cold start took on the wire.
    fn estimated_halfway_within(&self, total: u64) {
        let seen = self.seen.lock().unwrap();
        let before_any = seen.iter().take_while(|e| e.1 == 0);
        assert!(before_any.clone().all(|e| e.3.is_none() && e.4.is_none()));
        let halfway = seen
            .iter()
            .find(|e| e.1 >= RECORDS as u64 / 2)
            .unwrap_or_else(|| panic!("no event halfway: {:?}", seen.last()));
        let (to_receive, _, bytes, expected, ms_left) = *halfway;
        assert_eq!(to_receive, RECORDS as u64, "{halfway:?}");
        let expected = expected.expect("an estimate halfway");
        assert!(expected >= bytes, "{halfway:?}");
        assert!(
            expected * 3 >= total * 2 && expected * 2 <= total * 3,
            "expected {expected} B halfway; the cold start took {total} B"
        );
        assert!(ms_left.is_some(), "{halfway:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_cut_again_and_again_resumes_and_ends_with_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let station = Tablet::new(&server, "station tablet");
    for n in 0..RECORDS {
        station
            .create(vec![
                (
                    "title".into(),
                    format!("OB/{n:05}/2025 market lighting meeting"),
                ),
                ("place".into(), "Kibera market".into()),
            ])
            .unwrap();
    }
    station.sync_within(Duration::from_secs(300)).await;

    // One uncut cold start, for the measure.
    let clear = Link::start(server.addr(), None).await;
    let first = Tablet::new(&server, "first new tablet");
    first
        .client()
        .configure(&clear.url(), Some(&server.ca_path()), first.token())
        .unwrap();
    let progress = Progress::default();
    first
        .sync_heard_by(&progress, Duration::from_secs(300))
        .await;
    assert_eq!(first.client().list().unwrap().len(), RECORDS);
    let uncut = clear.down.load(Ordering::Relaxed);
    assert!(
        uncut > 2 * CUT_AFTER,
        "the cold start ({uncut} B) must be cut at least twice"
    );
    progress.estimated_halfway_within(uncut);

    // The same over a link cut every CUT_AFTER bytes.
    let cutting = Link::start(server.addr(), Some(CUT_AFTER)).await;
    let posted = Tablet::new(&server, "newly posted tablet");
    posted
        .client()
        .configure(&cutting.url(), Some(&server.ca_path()), posted.token())
        .unwrap();
    let listener = baraza_client::NoListener;
    let mut tries = 0;
    let mut held = Vec::new();
    let done = loop {
        tries += 1;
        if tries > TRIES_MAX {
            break false;
        }
        let result = tokio::time::timeout(
            Duration::from_secs(120),
            posted.client().sync_once(&listener),
        )
        .await
        .expect("a sync on a cut link ends by itself");
        let now = posted.client().list().unwrap().len();
        held.push(now);
        if result.is_ok() && now == RECORDS {
            break true;
        }
    };
    let taken = cutting.down.load(Ordering::Relaxed);
    eprintln!(
        "uncut: {uncut} B; cut every {CUT_AFTER} B: {tries} tries, {taken} B, records held after each: {held:?}"
    );
    assert!(
        done,
        "no complete cold start in {TRIES_MAX} tries: {held:?}"
    );
    assert!(tries >= 3, "the link was cut {} times", tries - 1);
    assert!(cutting.connections.load(Ordering::Relaxed) >= 3);
    // Resumed, not restarted: a restart could never pass the first cut,
    // and the records held only grow.
    assert!(held.windows(2).all(|w| w[0] <= w[1]), "{held:?}");
    assert!(
        taken <= 2 * uncut,
        "a cut cold start took {taken} B against {uncut} B uncut"
    );
    assert_eq!(posted.all_heads(), first.all_heads());
}
