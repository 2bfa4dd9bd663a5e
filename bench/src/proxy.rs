//! A byte-counting TCP forwarder on 127.0.0.1.
//!
//! Clients connect to the proxy instead of the server; it opens one
//! upstream connection per client connection and copies bytes both ways,
//! counting them. It sees TLS records, not plaintext, so the counts are
//! what a tablet's radio would carry (minus TCP/IP headers).
//!
//! It runs on its own thread and single-threaded runtime, so a client busy
//! on the benchmark's runtime does not delay the forwarding.
//!
//! It can also play a slow link ([`Link`]): each direction is paced to a
//! rate and every byte arrives a fixed delay after it was sent, with a
//! bounded buffer in between, as a 2G radio link does. Connections opened
//! after [`CountingProxy::shape`] get the link.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Bytes each way and connections accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Client → server bytes.
    pub up: u64,
    /// Server → client bytes.
    pub down: u64,
    /// Client connections accepted.
    pub connections: u64,
}

impl Traffic {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            up: self.up - earlier.up,
            down: self.down - earlier.down,
            connections: self.connections - earlier.connections,
        }
    }
}

/// A link to play: the same rate and one-way delay each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Bytes a second each way.
    pub bytes_per_sec: u64,
    /// How long after it is sent each byte arrives, beside the pacing.
    pub delay: Duration,
}

impl Link {
    /// A link of `kbit_per_sec` (1,000 bits) each way and `delay_ms` one way.
    pub fn kbit(kbit_per_sec: u64, delay_ms: u64) -> Link {
        Link {
            bytes_per_sec: (kbit_per_sec * 1000 / 8).max(1),
            delay: Duration::from_millis(delay_ms),
        }
    }

    /// The rate in kbit/s (1,000 bits), as given to [`Link::kbit`].
    pub fn kbit_per_sec(&self) -> u64 {
        self.bytes_per_sec * 8 / 1000
    }

    /// The link as a scenario's JSON reports it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kbit_per_sec": self.kbit_per_sec(),
            "delay_ms": self.delay.as_millis() as u64,
        })
    }
}

/// Bytes a shaped direction holds between its two ends (the link's
/// buffer): more waits in the sender's TCP stack.
const LINK_BUFFER_CHUNKS: usize = 16;
/// Bytes read and paced at a time on a shaped link (about a packet).
const LINK_CHUNK: usize = 1460;

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    accepted: AtomicU64,
    open: AtomicU64,
    /// The link new connections get (none: as fast as loopback).
    link: std::sync::Mutex<Option<Link>>,
    /// Bytes from the server after which new connections are cut.
    cut_after: std::sync::Mutex<Option<u64>>,
    /// Bytes to the server after which new connections are cut.
    cut_up_after: std::sync::Mutex<Option<u64>>,
}

/// A running proxy; dropping it stops it and closes its connections.
pub struct CountingProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingProxy {
    /// Listens on an ephemeral 127.0.0.1 port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<CountingProxy> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the proxy")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the proxy runtime")?;
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("bench-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    accept_loop(listener, upstream, thread_counters, stopped).await;
                });
                // Dropping the runtime cancels the relays still running.
            })
            .context("cannot start the proxy thread")?;
        Ok(CountingProxy {
            addr,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Plays `link` (or none) on connections opened from now on.
    pub fn shape(&self, link: Option<Link>) {
        *self.counters.link.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }

    /// Cuts each connection opened from now on once `bytes` have come down
    /// it (none: never), as a link that drops every so often does.
    pub fn cut_every(&self, bytes: Option<u64>) {
        *self
            .counters
            .cut_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = bytes;
    }

    /// Cuts each connection opened from now on once `bytes` have gone up
    /// it (none: never): an upload over a link that drops.
    pub fn cut_up_every(&self, bytes: Option<u64>) {
        *self
            .counters
            .cut_up_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = bytes;
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Totals since the proxy started.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            up: self.counters.up.load(Ordering::SeqCst),
            down: self.counters.down.load(Ordering::SeqCst),
            connections: self.counters.accepted.load(Ordering::SeqCst),
        }
    }

    /// Waits (at most `max`) until no connection is open, so the closing
    /// handshake of a finished sync is counted with it. Returns false if
    /// connections were still open at the deadline.
    pub fn wait_idle(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        loop {
            if self.counters.open.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    counters: Arc<Counters>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    counters.accepted.fetch_add(1, Ordering::SeqCst);
                    counters.open.fetch_add(1, Ordering::SeqCst);
                    let counters = counters.clone();
                    tokio::spawn(async move {
                        relay(client, upstream, &counters).await;
                        counters.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                // Transient (EMFILE and the like): pause rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, counters: &Counters) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let link = *counters.link.lock().unwrap_or_else(|p| p.into_inner());
    let cut = *counters.cut_after.lock().unwrap_or_else(|p| p.into_inner());
    let cut_up = *counters
        .cut_up_after
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let up = async {
        match link {
            None => pump(client_read, server_write, &counters.up, cut_up).await,
            Some(link) => pump_shaped(client_read, server_write, &counters.up, link, cut_up).await,
        }
    };
    let down = async {
        match link {
            None => pump(server_read, client_write, &counters.down, cut).await,
            Some(link) => pump_shaped(server_read, client_write, &counters.down, link, cut).await,
        }
    };
    if cut.is_some() || cut_up.is_some() {
        // A cut ends the connection both ways at once, as a dropped link
        // does: whichever side ends first drops the other's sockets.
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    } else {
        tokio::join!(up, down);
    }
}

/// [`pump`] over a slow link: each chunk leaves once the line is free and
/// has carried it at the link's rate, and arrives `link.delay` later.
async fn pump_shaped(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    count: &AtomicU64,
    link: Link,
    cut: Option<u64>,
) {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(LINK_BUFFER_CHUNKS);
    let send = async move {
        let mut line_free = tokio::time::Instant::now();
        let mut buf = vec![0u8; LINK_CHUNK];
        let mut passed = 0u64;
        loop {
            let want = match cut {
                Some(limit) if passed >= limit => break,
                Some(limit) => buf.len().min((limit - passed) as usize),
                None => buf.len(),
            };
            let n = match from.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            passed += n as u64;
            count.fetch_add(n as u64, Ordering::SeqCst);
            let on_line = Duration::from_secs_f64(n as f64 / link.bytes_per_sec as f64);
            line_free = line_free.max(tokio::time::Instant::now()) + on_line;
            // The sender waits while the line carries the chunk.
            tokio::time::sleep_until(line_free).await;
            if tx
                .send((line_free + link.delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let deliver = async {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(send, deliver);
}

/// Copies until end of stream or an error, then half-closes the other side
/// so the peer sees the same end.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    count: &AtomicU64,
    cut: Option<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut passed = 0u64;
    loop {
        let want = match cut {
            Some(limit) if passed >= limit => break,
            Some(limit) => buf.len().min((limit - passed) as usize),
            None => buf.len(),
        };
        match from.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                passed += n as u64;
                count.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_and_counts_both_ways() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"world!!").unwrap();
        });
        let proxy = CountingProxy::start(upstream).unwrap();
        {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(proxy.addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"hello").unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"world!!");
        }
        server.join().unwrap();
        assert!(proxy.wait_idle(Duration::from_secs(10)));
        assert_eq!(
            proxy.traffic(),
            Traffic {
                up: 5,
                down: 7,
                connections: 1
            }
        );
    }

    /// A shaped link delivers every byte in order, and never sooner than
    /// its rate and delay allow (a lower bound: a slow machine only adds).
    #[test]
    fn a_shaped_link_delivers_everything_no_faster_than_its_rate_and_delay() {
        let payload: Vec<u8> = (0..8_000u32).map(|i| (i % 251) as u8).collect();
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        let sent = payload.clone();
        let server = std::thread::spawn(move || {
            use std::io::Write;
            let (mut s, _) = echo.accept().unwrap();
            s.write_all(&sent).unwrap();
        });
        let proxy = CountingProxy::start(upstream).unwrap();
        proxy.shape(Some(Link::kbit(64, 200)));
        let start = Instant::now();
        {
            use std::io::Read;
            let mut c = std::net::TcpStream::connect(proxy.addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert!(got == payload, "{} bytes arrived, not in order", got.len());
        }
        // 8,000 bytes at 8,000 bytes a second, plus 200 ms on the way.
        assert!(
            start.elapsed() >= Duration::from_millis(1_150),
            "{:?}",
            start.elapsed()
        );
        server.join().unwrap();
    }
}
