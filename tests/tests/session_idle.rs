//! A sync session that hears nothing from its device for the configured
//! idle time is closed; halfway through, the server pings, and a device
//! that is there (its WebSocket answers pings while it reads) stays.

use std::time::{Duration, Instant};

use baraza_tests::{RawConnection, ServerProcess};

const IDLE: Duration = Duration::from_millis(2000);
/// Long enough for a listening session to have been closed twice over had
/// its pongs not counted.
const WATCH: Duration = Duration::from_millis(5000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_is_closed_while_a_listening_one_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!("[connections]\nsession_idle_ms = {}\n", IDLE.as_millis());
    let server = ServerProcess::start_with_config(&tmp.path().join("server"), &config);
    let quiet_token = server.add_device("a tablet that went away");
    let listening_token = server.add_device("a tablet that only listens");

    let mut quiet = RawConnection::open(&server, &quiet_token).await;
    quiet.hello().await;
    let mut listening = RawConnection::open(&server, &listening_token).await;
    listening.hello().await;
    let started = Instant::now();

    // The listening one reads (and so answers the server's pings) without
    // sending a frame; the server must not close it.
    let stayed = tokio::time::timeout(WATCH, async {
        loop {
            if listening.next_reply().await.is_none() {
                return;
            }
        }
    })
    .await;
    assert!(
        stayed.is_err(),
        "the listening session was closed after {:?}",
        started.elapsed()
    );

    // The quiet one read nothing, so answered no ping: closed by now.
    quiet.expect_closed().await;
    let log = server.log();
    assert!(log.contains("sync session idle; closed"), "{log}");
}
