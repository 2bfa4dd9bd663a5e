//! Links between a tablet and a server that misbehave as field links do,
//! all on 127.0.0.1:
//! - [`Link`]: a TCP forwarder counting the bytes each way, which can cut
//!   every connection once a number of bytes have gone up it (a 2G link
//!   dropping mid-upload).
//! - [`Middlebox`]: a TLS-terminating forwarder with a CA of its own (the
//!   tablet is told to trust it), which changes one byte of the first
//!   chunk uploaded through it: what a broken proxy or a bad buffer does to
//!   bytes that TLS alone would have protected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A counting, cutting TCP forwarder.
pub struct Link {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
}

impl Link {
    /// Forwards to `upstream`; with `cut_up_after`, each connection is cut
    /// (both ways at once) once that many bytes have gone up it.
    pub async fn start(upstream: SocketAddr, cut_up_after: Option<u64>) -> Link {
        Link::shaped(upstream, cut_up_after, None).await
    }

    /// [`Link::start`], with the bytes going up held to `up_rate` bytes a
    /// second.
    pub async fn shaped(
        upstream: SocketAddr,
        cut_up_after: Option<u64>,
        up_rate: Option<u64>,
    ) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a link");
        let addr = listener.local_addr().expect("the link's address");
        let up = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let (total, count, cut) = (up.clone(), connections.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let (total, cut) = (total.clone(), cut.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                        let _ = client_tx.shutdown().await;
                    });
                    let was_cut = pump_up(
                        &mut client_rx,
                        &mut server_tx,
                        cut_up_after,
                        up_rate,
                        &total,
                    )
                    .await;
                    if was_cut {
                        cut.fetch_add(1, Ordering::Relaxed);
                    }
                    down.abort();
                    let _ = server_tx.shutdown().await;
                });
            }
        });
        Link {
            addr,
            up,
            connections,
            cuts,
        }
    }

    /// The URL a tablet syncs through.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Bytes that went up (tablet to server), every connection together.
    pub fn bytes_up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Connections made through the link.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections the link cut.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

/// Copies up until the end or the cut; true if it was cut.
async fn pump_up(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    cut_after: Option<u64>,
    rate: Option<u64>,
    total: &AtomicU64,
) -> bool {
    let mut passed = 0u64;
    let started = tokio::time::Instant::now();
    let mut buf = vec![0u8; 4 * 1024];
    loop {
        let want = match cut_after {
            Some(limit) if passed >= limit => return true,
            Some(limit) => buf.len().min((limit - passed) as usize),
            None => buf.len(),
        };
        let n = match from.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if let Some(rate) = rate {
            // Held back until the rate allows what has passed so far.
            let due = Duration::from_secs_f64((passed + n as u64) as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(started + due).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
        passed += n as u64;
        total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A TLS-terminating forwarder that changes one byte of the body of the
/// first `PUT` through it.
pub struct Middlebox {
    addr: SocketAddr,
    ca: PathBuf,
    changed: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Middlebox {
    /// Forwards to the server at `upstream`, whose CA is `server_ca`.
    pub async fn start(upstream: SocketAddr, server_ca: &Path) -> Middlebox {
        let dir = tempfile::tempdir().expect("a directory for the middlebox's CA");
        let (ca, acceptor) = crate::net::test_tls_acceptor(dir.path());
        let connector = crate::net::tls_connector(server_ca);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let changed = Arc::new(AtomicBool::new(false));
        let flag = changed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, connector, flag) =
                    (acceptor.clone(), connector.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(tcp) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
                        .expect("a server name");
                    let Ok(server) = connector.connect(name, tcp).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = tokio::io::split(client);
                    let (mut server_rx, mut server_tx) = tokio::io::split(server);
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                    });
                    change_first_put(&mut client_rx, &mut server_tx, &flag).await;
                    down.abort();
                });
            }
        });
        Middlebox {
            addr,
            ca,
            changed,
            _dir: dir,
        }
    }

    /// The URL a tablet syncs through.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA a tablet must trust to talk through it.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// True once it has changed a byte.
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }
}

/// Copies up, flipping the 100th byte of the first PUT's body.
async fn change_first_put(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    changed: &AtomicBool,
) {
    // Bytes of the current request's head seen so far, while looking for
    // a PUT's end of headers; then the body's bytes counted.
    let mut head: Vec<u8> = Vec::new();
    let mut body_seen: Option<usize> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        if !changed.load(Ordering::Relaxed) {
            let mut i = 0;
            while i < chunk.len() && !changed.load(Ordering::Relaxed) {
                match body_seen {
                    None => {
                        head.push(chunk[i]);
                        if head.len() > 16 * 1024 {
                            // Not a request head (WebSocket frames).
                            head.clear();
                        }
                        if head.ends_with(b"\r\n\r\n") {
                            if head.starts_with(b"PUT ") {
                                body_seen = Some(0);
                            }
                            head.clear();
                        }
                    }
                    Some(seen) => {
                        if seen == 100 {
                            chunk[i] ^= 0x5a;
                            changed.store(true, Ordering::Relaxed);
                        }
                        body_seen = Some(seen + 1);
                    }
                }
                i += 1;
            }
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}
