//! The HTTPS listener: TLS, HTTP/1.1 via hyper, and the connection limits;
//! the routes it serves are built by `api` and handed in, so the listener
//! knows nothing of what they do.
//!
//! One task per TCP connection. A bad handshake or stray plain-HTTP request
//! ends only its own connection. Connections are bounded three ways
//! ([`ConnectionLimits`]), so that clients which connect and then say
//! nothing cannot take the slots tablets need:
//! - deadlines: from accept to the end of the TLS handshake
//!   (`handshake_timeout`), then to the complete headers of the first
//!   request and from each response to the next request's headers
//!   (`idle_timeout`, hyper's header read timeout);
//! - per client address ([`super::peer::client_key`]): at most
//!   `connections_per_address_max` connections that are not sync sessions;
//!   one over that is closed as soon as it is accepted;
//! - in all: `connections_max` slots. A slot is taken before accepting and
//!   held through the handshake and the HTTP exchanges; a sync upgrade
//!   hands it to the session, so a socket is one slot whatever it carries.
//!   When every slot is taken and a client waits for one, connections
//!   that have served a request and are between requests close (one with a
//!   request in flight finishes it first), and so do connections that have
//!   been open longer than `first_request_grace` without a complete first
//!   request (in the handshake or after it). Slots go to requests rather
//!   than to idle keep-alive sockets or to a flood of silent ones, while a
//!   tablet a few slow round trips from its first request keeps its own.
//!
//! On shutdown: stop accepting, tell every connection and session, wait a
//! bounded time, flush the hub.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_rustls::TlsAcceptor;

use crate::config::ConnectionLimits;

/// How long shutdown waits for connections and sessions to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Least time between two warnings that every connection slot is taken, so
/// a flood does not flood the log too.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// What each connection serves: the routes `api` builds, as a hyper
/// service. Given the connection slot and the stop signal, which sync
/// upgrades take over and watch.
pub trait Routes:
    hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = warp::reply::Response,
        Future: Send + 'static,
        Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Routes for T where
    T: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Future: Send + 'static,
            Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves HTTPS on `listener` until `shutdown` completes, then stops
/// accepting, signals sync sessions to end and waits up to five seconds for
/// connections and sessions. Failures of single connections are logged and
/// do not stop the server; the caller flushes what the sessions wrote.
pub async fn serve<R, S>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    routes: R,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) where
    R: FnOnce(Arc<Semaphore>, watch::Receiver<bool>) -> S,
    S: Routes,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    // The semaphore cannot hold more; no real server gets near it.
    let connections_max = limits.connections_max.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(connections_max));

    accept_loop(
        listener,
        TlsAcceptor::from(tls),
        routes,
        limits,
        slots.clone(),
        stop_rx,
        shutdown,
    )
    .await;

    // Whatever happens below, new work is refused from here on.
    let _ = stop_tx.send(true);
    let everything = u32::try_from(connections_max).unwrap_or(u32::MAX);
    let closed = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(everything)).await;
    match closed {
        Ok(_) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            still_open = connections_max.saturating_sub(slots.available_permits()),
            "connections still open after {SHUTDOWN_GRACE:?}; flushing anyway"
        ),
    }
}

/// What every connection task needs from the accept loop.
struct Listener<S> {
    acceptor: TlsAcceptor,
    http: hyper::server::conn::http1::Builder,
    service: S,
    handshake_timeout: Duration,
    first_request_grace: Duration,
    stop_rx: watch::Receiver<bool>,
    pressure: Arc<Pressure>,
}

/// Whether a client is waiting for a slot, for connections between
/// requests to see and close. A watch channel would not do: it keeps only
/// the latest value, so a connection polled after the slot was found would
/// miss the moment it was needed.
#[derive(Default)]
struct Pressure {
    /// True while the accept loop holds a client and waits for a slot.
    full: AtomicBool,
    /// How many times that has happened, so a connection can tell whether
    /// it did since the connection's first request.
    episodes: AtomicU64,
    /// Woken each time.
    wake: Notify,
}

impl Pressure {
    fn begin(&self) {
        self.episodes.fetch_add(1, Ordering::SeqCst);
        self.full.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    fn end(&self) {
        self.full.store(false, Ordering::SeqCst);
    }

    /// Completes once a client has waited for a slot at any time since
    /// `episodes` was `since`.
    async fn felt_since(&self, since: u64) {
        // Made before looking, so a wake-up sent after the look counts.
        let wake = self.wake.notified();
        if self.full.load(Ordering::SeqCst) || self.episodes.load(Ordering::SeqCst) != since {
            return;
        }
        wake.await;
    }

    /// Completes once a client waits for a slot at or after `from`: the
    /// time a silent connection has had its grace.
    async fn felt_after(&self, from: Instant) {
        tokio::time::sleep_until(from.into()).await;
        let since = self.episodes.load(Ordering::SeqCst);
        self.felt_since(since).await;
    }
}

/// What the connection task learns from its service.
#[derive(Default)]
struct Activity {
    /// `Pressure::episodes` when the first request came.
    first_request_at: std::sync::OnceLock<u64>,
    first_request: Notify,
    /// A request asked to upgrade to a sync session. Such a connection is
    /// never asked to shut down: hyper would then answer the upgrade with
    /// `Connection: close`, which no WebSocket client accepts, and once
    /// upgraded the session holds the slot on its own terms anyway.
    upgrading: AtomicBool,
}

/// Accepts until `shutdown`. Owns the routes so that, once it returns, only
/// connection and session tasks still hold connection slots.
async fn accept_loop<S: Routes>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    routes: impl FnOnce(Arc<Semaphore>, watch::Receiver<bool>) -> S,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    stop_rx: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let service = routes(slots.clone(), stop_rx.clone());
    // HTTP/1.1 only: ALPN offers nothing else and WebSocket needs HTTP/1.1
    // upgrades. hyper's own HTTP/1 connection (not hyper-util's `auto`,
    // which first waits, with no deadline, for bytes telling HTTP/1 from
    // HTTP/2) starts the header read timeout as soon as it is polled, so
    // the idle deadline covers the first request too.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    let shared = Arc::new(Listener {
        acceptor,
        http,
        service,
        handshake_timeout: limits.handshake_timeout,
        first_request_grace: limits.first_request_grace,
        stop_rx,
        pressure: Arc::default(),
    });
    let addresses = AddressCounts::new(limits.connections_per_address_max);
    let mut warned_full: Option<Instant> = None;

    tokio::pin!(shutdown);
    loop {
        // A slot is taken before accepting where one is free. Where none
        // is, one client is accepted and waits for one, and the rest stay
        // in the kernel's backlog: so the server is "full" only when a
        // client is really waiting, not whenever the last slot is used.
        let free = slots.clone().try_acquire_owned();
        if let Err(TryAcquireError::Closed) = free {
            return;
        }
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    // Errors such as EMFILE persist for a while; pausing
                    // keeps this loop from spinning on them.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(from_address) = addresses.admit(peer.ip()) else {
            // Dropping the socket closes it now (and gives back its slot).
            tracing::debug!(%peer, "too many connections from this address; closed");
            continue;
        };
        // A slot may have come free while this client was awaited.
        let slot = match free.or_else(|_| slots.clone().try_acquire_owned()) {
            Ok(slot) => slot,
            Err(_) => {
                if warned_full.is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL) {
                    tracing::warn!(
                        connections_max = limits.connections_max,
                        "every connection slot is taken; closing idle keep-alive connections"
                    );
                    warned_full = Some(Instant::now());
                }
                // Connections between requests see this and close.
                shared.pressure.begin();
                let slot = tokio::select! {
                    _ = &mut shutdown => return,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                };
                shared.pressure.end();
                slot
            }
        };
        // Sync frames are small and answered at once; Nagle's algorithm
        // against the peer's delayed ACK would add 40 ms stalls to each
        // exchange.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(
            shared.clone(),
            tcp,
            peer,
            slot,
            from_address,
        ));
    }
}

async fn serve_connection<S>(
    shared: Arc<Listener<S>>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    _from_address: AddressSlot,
) where
    S: Routes,
{
    let mut stop_rx = shared.stop_rx.clone();
    // Past this, a connection still without a request gives way to a
    // client waiting for a slot.
    let grace_ends = Instant::now() + shared.first_request_grace;
    let handshake = tokio::time::timeout(shared.handshake_timeout, shared.acceptor.accept(tcp));
    let tls = tokio::select! {
        _ = stopped(&mut stop_rx) => return,
        _ = shared.pressure.felt_after(grace_ends) => {
            tracing::debug!(%peer, "every slot taken: closing a connection still in its handshake");
            return;
        }
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };

    let activity = Arc::new(Activity::default());
    let service = PerConnection {
        inner: super::peer::WithPeer::new(shared.service.clone(), peer),
        slot: ConnectionSlot(Arc::new(Mutex::new(Some(slot)))),
        activity: activity.clone(),
        pressure: shared.pressure.clone(),
    };
    let connection = shared
        .http
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(connection);
    let evicted = async {
        // A connection that has not sent its first request yet may be a
        // tablet a slow round trip away from it: within its grace it is held
        // to the idle deadline only.
        tokio::select! {
            _ = activity.first_request.notified() => {}
            _ = shared.pressure.felt_after(grace_ends) => return,
        }
        let since = activity.first_request_at.get().copied().unwrap_or(0);
        shared.pressure.felt_since(since).await;
        if activity.upgrading.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped(&mut stop_rx) => {
            // Lets an in-flight request finish and closes idle keep-alive
            // connections now instead of at the end of the grace period.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        _ = evicted => {
            tracing::debug!(%peer, "every slot taken: closing after the current request");
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// The connection slot of the socket a request came on, as a request
/// extension, so that a sync upgrade can take it over: the socket stays
/// one slot when it turns into a session, and the session keeps it.
#[derive(Clone)]
pub struct ConnectionSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl ConnectionSlot {
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        // A poisoned lock still holds a valid Option.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Wraps a connection's service: stamps each request with the connection's
/// slot and tells the connection task that a request came.
#[derive(Clone)]
struct PerConnection<S> {
    inner: S,
    slot: ConnectionSlot,
    activity: Arc<Activity>,
    pressure: Arc<Pressure>,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for PerConnection<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: hyper::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.slot.clone());
        // HEAD on the desk's pages is answered as GET; hyper, which noted
        // the request's method, sends the headers and leaves the body out.
        if request.method() == warp::http::Method::HEAD && answers_head(request.uri().path()) {
            *request.method_mut() = warp::http::Method::GET;
        }
        if request.headers().contains_key(warp::http::header::UPGRADE) {
            self.activity.upgrading.store(true, Ordering::SeqCst);
        }
        // Noted here, not when the connection task is next polled, so that
        // pressure in between is not missed.
        self.activity
            .first_request_at
            .get_or_init(|| self.pressure.episodes.load(Ordering::SeqCst));
        // A stored permit is enough: the task only needs to learn it once.
        self.activity.first_request.notify_one();
        self.inner.call(request)
    }
}

/// The paths where HEAD is answered as GET would be: the review desk's
/// page and assets, and the redirects to it. Not its API, whose GETs do
/// work a HEAD has no use for, nor the sync endpoint.
fn answers_head(path: &str) -> bool {
    matches!(path, "/" | "/favicon.ico" | "/review" | "/review/")
        || (path.starts_with("/review/") && !path.starts_with("/review/api/"))
}

/// Open connections per client address, sync sessions not included.
struct AddressCounts {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One open connection counted against its address; dropping it (when the
/// connection task ends) takes it off the count.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl AddressCounts {
    fn new(max: usize) -> AddressCounts {
        AddressCounts {
            counts: Arc::default(),
            max,
        }
    }

    /// Counts a new connection from `addr`, or refuses it if its address
    /// (IPv4, or IPv6 /64) has `max` open already. Only addresses with open
    /// connections are remembered, so the map is bounded by the slots.
    fn admit(&self, addr: IpAddr) -> Option<AddressSlot> {
        let key = super::peer::client_key(addr);
        let mut counts = lock_counts(&self.counts);
        let count = counts.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.counts.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = lock_counts(&self.counts);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Every update is a single increment, decrement or removal, so a poisoned
/// lock still holds consistent counts.
fn lock_counts(
    counts: &Mutex<HashMap<IpAddr, usize>>,
) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
    counts.lock().unwrap_or_else(|p| p.into_inner())
}

/// Completes once shutdown has begun (or the server is gone). Returns no
/// `watch::Ref`, which must not be held across an await.
async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_answered_on_the_desks_pages_but_not_its_api() {
        for path in [
            "/",
            "/favicon.ico",
            "/review",
            "/review/app.js",
            "/review/i18n/sw.json",
        ] {
            assert!(answers_head(path), "{path}");
        }
        for path in [
            "/review/api/records",
            "/v1/sync",
            "/v1/records",
            "/reviewer",
        ] {
            assert!(!answers_head(path), "{path}");
        }
    }

    #[test]
    fn each_address_gets_its_share_of_connections_and_no_more() {
        let counts = AddressCounts::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = counts.admit(ip("127.0.0.2")).unwrap();
        let second = counts.admit(ip("127.0.0.2")).unwrap();
        assert!(counts.admit(ip("127.0.0.2")).is_none());
        // Another address is counted apart; one IPv6 /64 is one client.
        let _other = counts.admit(ip("127.0.0.3")).unwrap();
        let _v6 = counts.admit(ip("2001:db8:1:2::1")).unwrap();
        let _v6_too = counts.admit(ip("2001:db8:1:2::ffff")).unwrap();
        assert!(counts.admit(ip("2001:db8:1:2:aaaa::9")).is_none());
        // A closed connection frees its place.
        drop(first);
        let _again = counts.admit(ip("127.0.0.2")).unwrap();
        assert!(counts.admit(ip("127.0.0.2")).is_none());
        drop(second);
        drop(_again);
        // Addresses with nothing open are forgotten.
        assert!(!lock_counts(&counts.counts).contains_key(&ip("127.0.0.2")));
    }
}
