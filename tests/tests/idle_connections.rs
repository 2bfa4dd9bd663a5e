//! Clients that connect and then say nothing cannot take the connection
//! slots tablets need. The server (with a small `[connections]` table)
//! closes a connection over its address's share at once, closes silent
//! connections (raw TCP, or TLS-handshaken but with no request) at their
//! deadline, and meanwhile, or right after, a tablet still gets `/healthz`
//! and a sync through. When every slot is taken, connections idle between
//! requests give way, while an upgraded sync session keeps its slot.
//!
//! The flood comes from 127.0.0.2 and up, the tablet from 127.0.0.1: the
//! server counts connections per address. Every loop is bounded, every
//! wait has a limit, and everything stays on loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use baraza_tests::{
    https_get, tcp_connect_from, tls_connector, RawConnection, ServerProcess, Tablet,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const CONNECTIONS_MAX: usize = 12;
const PER_ADDRESS_MAX: usize = 6;
/// Both the handshake and the idle deadline.
const DEADLINE: Duration = Duration::from_millis(4000);
/// What a busy machine may add to a deadline before a close is noticed.
const SLACK: Duration = Duration::from_secs(6);
/// How long a closed-at-once connection may take to be seen closed: well
/// under the deadline, so it cannot be the deadline that closed it.
const AT_ONCE: Duration = Duration::from_millis(1500);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn config() -> String {
    format!(
        "[connections]\n\
         connections_max = {CONNECTIONS_MAX}\n\
         connections_per_address_max = {PER_ADDRESS_MAX}\n\
         handshake_timeout_ms = {}\n\
         idle_timeout_ms = {}\n",
        DEADLINE.as_millis(),
        DEADLINE.as_millis()
    )
}

/// A connection the test holds open and never sends a request on.
enum Silent {
    /// Connected, not even a ClientHello.
    Tcp(TcpStream),
    /// Through the TLS handshake, then nothing.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Silent {
    async fn open(server: &ServerProcess, from: IpAddr, tls: bool) -> Silent {
        let tcp = tcp_connect_from(server, from).await;
        if !tls {
            return Silent::Tcp(tcp);
        }
        let name = ServerName::try_from("localhost").unwrap();
        let handshake = tls_connector(&server.ca_path()).connect(name, tcp);
        let stream = tokio::time::timeout(Duration::from_secs(15), handshake)
            .await
            .expect("the server takes the TLS handshake in time")
            .expect("a TLS handshake");
        Silent::Tls(Box::new(stream))
    }

    /// How long until the server closes it, or None if it is still open
    /// after `limit`.
    async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        match self {
            Silent::Tcp(tcp) => closed_within(tcp, limit).await,
            Silent::Tls(tls) => closed_within(tls.as_mut(), limit).await,
        }
    }
}

/// Reads until the peer closes (end of stream or a reset) or `limit`
/// passes. The server sends no application data on these connections, so
/// anything read is a test failure.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
        Ok(Ok(n)) => panic!(
            "the server sent {n} bytes to a silent client: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// `count` silent connections from `from`, alternating raw TCP and TLS.
/// Ends with a TLS one, so once it returns the server has accepted them all
/// (it accepts in order, and the last handshake needed it).
async fn flood(server: &ServerProcess, from: IpAddr, count: usize) -> Vec<Silent> {
    let mut held = Vec::new();
    for i in 0..count {
        let tls = (count - i) % 2 == 1;
        held.push(Silent::open(server, from, tls).await);
    }
    held
}

/// Waits for every silent connection to be closed by `deadline`.
async fn all_closed_by(held: &mut [Silent], deadline: Instant, what: &str) {
    for (i, silent) in held.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            silent.closed_within(left).await.is_some(),
            "{what} connection {i} was still open after its deadline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_capped_per_address_and_closed_at_their_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_config(&tmp.path().join("server"), &config());
    let tablet = Tablet::new(&server, "patrol tablet");
    let id = tablet
        .create_record(
            "patrol_note",
            "unassigned",
            vec![("beat".into(), "B4".into())],
        )
        .unwrap();

    // One address takes its whole share, half raw TCP, half past TLS.
    let opened = Instant::now();
    let mut held = flood(&server, loopback(2), PER_ADDRESS_MAX).await;

    // More from that address are closed as soon as they are accepted...
    for i in 0..4 {
        let mut extra = Silent::open(&server, loopback(2), false).await;
        assert!(
            extra.closed_within(AT_ONCE).await.is_some(),
            "connection {i} over the address's share was not closed at once"
        );
    }
    // ...while its first connections are still open: the cap, not the
    // deadline, closed those.
    for (i, silent) in held.iter_mut().enumerate() {
        assert!(
            silent
                .closed_within(Duration::from_millis(50))
                .await
                .is_none(),
            "silent connection {i} was closed {:?} after opening, before its deadline",
            opened.elapsed()
        );
    }

    // The tablet, from its own address, is served meanwhile.
    let (status, body) = https_get(&server, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let report = tablet.sync_within(Duration::from_secs(60)).await;
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));

    // The server closes the silent connections at their deadline.
    all_closed_by(&mut held, opened + DEADLINE + SLACK, "first flood").await;

    // Now silent connections from several addresses take every slot. The
    // tablet waits for their deadline, not for ever.
    let opened = Instant::now();
    let mut held = flood(&server, loopback(3), PER_ADDRESS_MAX).await;
    held.extend(flood(&server, loopback(4), CONNECTIONS_MAX - PER_ADDRESS_MAX).await);
    let (status, body) = https_get(&server, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(
        opened.elapsed() < DEADLINE + SLACK,
        "the tablet waited {:?} for a slot",
        opened.elapsed()
    );
    tablet.set(&id, "beat", "B5").unwrap();
    let report = tablet.sync_within(Duration::from_secs(60)).await;
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));
    all_closed_by(&mut held, opened + DEADLINE + SLACK, "second flood").await;
}

/// A TLS connection that has had one `GET /healthz` answered and is kept
/// alive, idle.
async fn kept_alive(server: &ServerProcess) -> TlsStream<TcpStream> {
    let tcp = tcp_connect_from(server, loopback(1)).await;
    let name = ServerName::try_from("localhost").unwrap();
    let exchange = async {
        let mut tls = tls_connector(&server.ca_path())
            .connect(name, tcp)
            .await
            .expect("a TLS handshake");
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        // Content-Length 2: the answer ends with the body "ok".
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..64 {
            let n = tls.read(&mut buf).await.expect("read the answer");
            assert!(
                n > 0,
                "the server closed a kept-alive connection: {answer:?}"
            );
            answer.extend_from_slice(&buf[..n]);
            if answer.ends_with(b"\r\n\r\nok") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{text}"
        );
        assert!(
            !text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        tls
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .expect("the kept-alive exchange finishes in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_give_way_when_every_slot_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    // A long idle deadline: only giving way can free the slots in time.
    let server = ServerProcess::start_with_config(
        &tmp.path().join("server"),
        "[connections]\n\
         connections_max = 4\n\
         connections_per_address_max = 16\n\
         idle_timeout_ms = 120000\n",
    );
    let token = server.add_device("desk tablet");

    // One sync session, upgraded but not yet past its hello, and three
    // idle keep-alive connections: every slot.
    let mut session = RawConnection::open(&server, &token).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(kept_alive(&server).await);
    }

    // A new client is served within seconds, not after two minutes...
    let started = Instant::now();
    let (status, body) = https_get(&server, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(started.elapsed() < Duration::from_secs(15));
    // ...because the idle connections were closed to make room...
    for (i, tls) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(tls, Duration::from_secs(15)).await.is_some(),
            "idle keep-alive connection {i} was not closed; log:\n{}",
            server.log()
        );
    }
    // ...while the sync session, a live request, kept its slot.
    let welcome = session.hello().await;
    assert_eq!(welcome.version, baraza_protocol::PROTOCOL_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_past_their_grace_give_way_to_a_tablet() {
    const GRACE: Duration = Duration::from_millis(1000);
    let tmp = tempfile::tempdir().unwrap();
    // Deadlines of minutes: only giving way can free the slots in time.
    let server = ServerProcess::start_with_config(
        &tmp.path().join("server"),
        &format!(
            "[connections]\n\
             connections_max = {CONNECTIONS_MAX}\n\
             connections_per_address_max = {CONNECTIONS_MAX}\n\
             handshake_timeout_ms = 120000\n\
             idle_timeout_ms = 120000\n\
             first_request_grace_ms = {}\n",
            GRACE.as_millis()
        ),
    );
    let tablet = Tablet::new(&server, "patrol tablet");
    tablet
        .create_record(
            "patrol_note",
            "unassigned",
            vec![("beat".into(), "B4".into())],
        )
        .unwrap();

    // Every slot: half raw TCP (stuck before the handshake), half through
    // TLS and silent after it.
    let mut held = flood(&server, loopback(2), CONNECTIONS_MAX).await;
    tokio::time::sleep(GRACE + Duration::from_millis(200)).await;

    // The tablet syncs within seconds, not after two minutes...
    let started = Instant::now();
    let report = tablet.sync_within(Duration::from_secs(60)).await;
    assert_eq!((report.docs_sent, report.unacknowledged), (1, 0));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the tablet waited {:?}",
        started.elapsed()
    );
    // ...because the silent connections were closed to make room.
    for (i, silent) in held.iter_mut().enumerate() {
        assert!(
            silent
                .closed_within(Duration::from_secs(15))
                .await
                .is_some(),
            "silent connection {i} was still open; log:\n{}",
            server.log()
        );
    }

    // While a flood keeps opening new silent connections (each waiting for
    // a slot presses the server), every sync goes through. (Under heavier
    // load, the hostile benchmark saw an upgrade asked to shut down
    // mid-request answered with `Connection: close`, which the WebSocket
    // client refuses; this flood is milder and rarely hits that moment.)
    let flood = async {
        let mut held = Vec::new();
        // Faster than slots age past their grace: a client is waiting for a
        // slot nearly all the time.
        for _ in 0..40 * CONNECTIONS_MAX {
            let open = async {
                let socket = tokio::net::TcpSocket::new_v4().ok()?;
                socket
                    .bind(std::net::SocketAddr::new(loopback(3), 0))
                    .ok()?;
                let tcp = socket.connect(server.addr()).await.ok()?;
                let name = ServerName::try_from("localhost").ok()?;
                tls_connector(&server.ca_path())
                    .connect(name, tcp)
                    .await
                    .ok()
            };
            if let Ok(Some(tls)) = tokio::time::timeout(Duration::from_secs(5), open).await {
                held.push(tls);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        held.len()
    };
    let syncs = async {
        for round in 0..4 {
            tablet
                .create_record(
                    "patrol_note",
                    "unassigned",
                    vec![("beat".into(), format!("C{round}"))],
                )
                .unwrap();
            let report = tablet.sync_within(Duration::from_secs(60)).await;
            assert_eq!(
                (report.docs_sent, report.unacknowledged),
                (1, 0),
                "sync {round} under the flood"
            );
        }
    };
    let (opened, ()) = tokio::join!(flood, syncs);
    assert!(opened > 0, "the flood opened no connection");
}
