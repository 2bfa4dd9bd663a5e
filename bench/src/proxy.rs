//! A byte-counting TCP forwarder on 127.0.0.1.
//!
//! Clients connect to the proxy instead of the server; it opens one
//! upstream connection per client connection and copies bytes both ways,
//! counting them. It sees TLS records, not plaintext, so the counts are
//! what a tablet's radio would carry (minus TCP/IP headers).
//!
//! It runs on its own thread and single-threaded runtime, so a client busy
//! on the benchmark's runtime does not delay the forwarding.

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

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
    accepted: AtomicU64,
    open: AtomicU64,
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
    tokio::join!(
        pump(client_read, server_write, &counters.up),
        pump(server_read, client_write, &counters.down),
    );
}

/// Copies until end of stream or an error, then half-closes the other side
/// so the peer sees the same end.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, count: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
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
}
