//! The HTTPS listener: TLS, HTTP/1.1 via hyper, routes via warp.
//!
//! Routes:
//! - `GET /healthz` answers `ok`.
//! - `GET /v1/sync` upgrades to a WebSocket for a device presenting
//!   `Authorization: Bearer <token>`, and hands the socket to
//!   [`SyncHub::serve_socket`]. Without a valid token it answers 401 before
//!   any upgrade.
//! - `POST /v1/enroll` (`login.rs`) and `/v1/admin/users` (`admin_api.rs`).
//!
//! One task per TCP connection; a semaphore bounds connections and sync
//! sessions together. A bad handshake or stray plain-HTTP request ends only
//! its own connection. On shutdown: stop accepting, tell every connection
//! and session, wait a bounded time, flush the hub.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::config::LimitsConfig;
use crate::devices::Auth;
use crate::devices::DeviceRegistry;
use crate::sync::{Caller, SyncHub};

/// Open TCP connections plus live sync sessions, at most.
pub const CONNECTIONS_MAX: usize = 4096;
/// A client that has not finished the TLS handshake by then is dropped, so
/// idle half-open connections cannot use up the connection slots.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Likewise for a client that is slow to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for connections and sessions to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the request handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The sync engine; sockets are handed to it after authentication.
    pub hub: Arc<SyncHub>,
    /// Token → device lookups.
    pub devices: DeviceRegistry,
    /// Limits from the config file; sizes the WebSocket codec.
    pub limits: LimitsConfig,
    /// Users, for enrolment.
    pub users: crate::users::UserRegistry,
    /// Review desk sessions.
    pub review_sessions: crate::review::Sessions,
}

/// Why a request was refused. Turned into a plain-text response by
/// [`recover`]; the messages never include the token.
#[derive(Debug)]
enum Refusal {
    /// 401: no `Authorization: Bearer` header.
    MissingToken,
    /// 401: the token matches no device.
    UnknownToken,
    /// 401: the device was reported lost or stolen; the body starts with
    /// `revoked` so the tablet knows to wipe.
    Revoked,
    /// 401: the device was retired and wiped.
    Retired,
    /// 401: the token's lifetime passed without a rotation.
    Expired,
    /// 401: the device's user is unknown or disabled, or it has none.
    NoUser(&'static str),
    /// 503: the device store failed, or the server is at capacity or
    /// shutting down.
    Unavailable(&'static str),
}

impl warp::reject::Reject for Refusal {}

/// Serves HTTPS on `listener` until `shutdown` completes, then stops
/// accepting, signals sync sessions to end, waits up to five seconds for
/// connections and sessions, and flushes the hub.
///
/// Errors only if flushing fails: failures of single connections are logged
/// and do not stop the server.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let hub = state.hub.clone();

    accept_loop(
        listener,
        TlsAcceptor::from(tls),
        state,
        slots.clone(),
        stop_rx,
        shutdown,
    )
    .await;

    // Whatever happens below, new work is refused from here on.
    let _ = stop_tx.send(true);
    let everything = u32::try_from(CONNECTIONS_MAX).unwrap_or(u32::MAX);
    match tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(everything)).await {
        Ok(_) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            still_open = CONNECTIONS_MAX.saturating_sub(slots.available_permits()),
            "connections still open after {SHUTDOWN_GRACE:?}; flushing anyway"
        ),
    }
    tokio::task::spawn_blocking(move || hub.flush()).await??;
    tracing::info!("sync hub flushed");
    Ok(())
}

/// Accepts until `shutdown`. Owns the routes so that, once it returns, only
/// connection and session tasks still hold connection slots.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: AppState,
    slots: Arc<Semaphore>,
    stop_rx: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    let service =
        TowerToHyperService::new(warp::service(routes(state, slots.clone(), stop_rx.clone())));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // ALPN only offers http/1.1 and WebSocket needs HTTP/1.1 upgrades, so
    // there is no reason to let clients start HTTP/2 by prior knowledge.
    let builder = Arc::new(builder.http1_only());

    tokio::pin!(shutdown);
    loop {
        // Taking the slot before accepting leaves excess clients in the
        // kernel's backlog instead of accepting and dropping them.
        let slot = tokio::select! {
            _ = &mut shutdown => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
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
        // Sync frames are small and answered at once; Nagle's algorithm
        // against the peer's delayed ACK would add 40 ms stalls to each
        // exchange.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(
            tcp,
            peer,
            acceptor.clone(),
            builder.clone(),
            service.clone(),
            stop_rx.clone(),
            slot,
        ));
    }
}

async fn serve_connection<S>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    mut stop_rx: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let tls = tokio::select! {
        _ = stopped(&mut stop_rx) => return,
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

    let service = crate::peer::WithPeer::new(service, peer);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped(&mut stop_rx) => {
            // Lets an in-flight request finish and closes idle keep-alive
            // connections now instead of at the end of the grace period.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Completes once shutdown has begun (or the server is gone). Returns no
/// `watch::Ref`, which must not be held across an await.
async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|stop| *stop).await;
}

/// The warp routes, with refusals turned into responses.
fn routes(
    state: AppState,
    slots: Arc<Semaphore>,
    stop_rx: watch::Receiver<bool>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone + Send + Sync + 'static {
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok");

    let records = records_routes(&state);
    let enroll = crate::login::enroll_route(&state);
    let admin = crate::admin_api::routes(&state);
    let rotate = rotate_route(&state);
    let review = crate::review::routes(&state, state.review_sessions.clone())
        .or(crate::review::page())
        .unify();
    let auth_state = state.clone();
    let sync = warp::path!("v1" / "sync")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and_then(move |headers: HeaderMap| {
            let state = auth_state.clone();
            async move { authenticate(&headers, &state).await }
        })
        .and(warp::ws())
        .and_then(move |device: Caller, ws: warp::ws::Ws| {
            let state = state.clone();
            let slots = slots.clone();
            let stop_rx = stop_rx.clone();
            async move { upgrade(device, ws, state, slots, stop_rx) }
        });

    healthz
        .or(sync)
        .or(records)
        .or(enroll)
        .or(rotate)
        .or(review)
        .or(admin)
        .recover(recover)
}

/// Most rows one listing returns.
const LIST_ROWS_MAX: usize = 1000;

/// `GET /v1/records?kind=&area=&state=&since=` (from the index) and
/// `GET /v1/records/{id}` (fields, conflicts, history), behind a device
/// token. Reads run off the async workers: they touch disk.
fn records_routes(
    state: &AppState,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone + Send + Sync + 'static {
    let auth_state = state.clone();
    let auth = warp::header::headers_cloned().and_then(move |headers: HeaderMap| {
        let state = auth_state.clone();
        async move { authenticate(&headers, &state).await }
    });
    let hub = state.hub.clone();
    let list = warp::path!("v1" / "records")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and_then(
            move |caller: Caller, query: std::collections::HashMap<String, String>| {
                let hub = hub.clone();
                async move {
                    let since = match query.get("since").map(|s| s.parse::<i64>()) {
                        Some(Ok(t)) => Some(t),
                        Some(Err(_)) => {
                            return Ok::<_, Rejection>(text_reply(
                                StatusCode::BAD_REQUEST,
                                "since must be milliseconds since 1970",
                            ))
                        }
                        None => None,
                    };
                    let filter = crate::store::RecordFilter {
                        kind: query.get("kind").cloned(),
                        area: query.get("area").cloned(),
                        state: query.get("state").cloned(),
                        since,
                    };
                    tracing::debug!(device = %caller.device.id, ?filter, "list records");
                    let rows = tokio::task::spawn_blocking(move || {
                        hub.list_records(&caller.principal, &filter, LIST_ROWS_MAX)
                    })
                    .await;
                    Ok(match rows {
                        Ok(Ok(rows)) => {
                            warp::reply::with_status(warp::reply::json(&rows), StatusCode::OK)
                                .into_response()
                        }
                        _ => {
                            text_reply(StatusCode::SERVICE_UNAVAILABLE, "record index unavailable")
                        }
                    })
                }
            },
        );
    let hub = state.hub.clone();
    let one = warp::path!("v1" / "records" / String)
        .and(warp::get())
        .and(auth)
        .and_then(move |id: String, caller: Caller| {
            let hub = hub.clone();
            async move {
                let Ok(doc) = id.parse::<baraza_protocol::DocId>() else {
                    return Ok::<_, Rejection>(text_reply(StatusCode::NOT_FOUND, "no such record"));
                };
                tracing::debug!(device = %caller.device.id, record = %doc, "read record");
                let view = tokio::task::spawn_blocking(move || hub.record_view(&caller, doc)).await;
                Ok(match view {
                    Ok(Ok(Some(view))) => {
                        warp::reply::with_status(warp::reply::json(&view), StatusCode::OK)
                            .into_response()
                    }
                    Ok(Ok(None)) => text_reply(StatusCode::NOT_FOUND, "no such record"),
                    _ => text_reply(StatusCode::SERVICE_UNAVAILABLE, "record store unavailable"),
                })
            }
        });
    list.or(one)
}

fn text_reply(status: StatusCode, body: &'static str) -> warp::reply::Response {
    warp::reply::with_status(body, status).into_response()
}

/// `POST /v1/token`: a device trades its token for a new one with a full
/// lifetime. The old token keeps working until the new one is first used.
fn rotate_route(
    state: &AppState,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    let devices = state.devices.clone();
    let hub = state.hub.clone();
    warp::path!("v1" / "token")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and_then(move |headers: HeaderMap| {
            let devices = devices.clone();
            let hub = hub.clone();
            async move {
                let Some(token) = bearer_token(&headers).map(str::to_string) else {
                    return Ok::<_, Rejection>(unauthorized("missing bearer token"));
                };
                let now = crate::clock::unix_now();
                let rotated =
                    tokio::task::spawn_blocking(move || devices.rotate_at(&token, now)).await;
                Ok(match rotated {
                    Ok(Ok(Some(r))) => {
                        let id = r
                            .token
                            .strip_prefix(crate::devices::TOKEN_PREFIX)
                            .and_then(|rest| rest.split('_').next())
                            .unwrap_or_default()
                            .to_string();
                        tracing::info!(device = %id, "device token rotated");
                        hub.audit()
                            .record("token_rotated", serde_json::json!({ "device": id }));
                        warp::reply::json(&serde_json::json!({
                            "token": r.token,
                            "expires_at": r.expires_at,
                        }))
                        .into_response()
                    }
                    Ok(Ok(None)) => unauthorized(
                        "cannot rotate: the token is unknown, revoked, retired or expired",
                    ),
                    _ => text_reply(StatusCode::SERVICE_UNAVAILABLE, "device store unavailable"),
                })
            }
        })
}

/// Checks the bearer token and resolves the user the device acts for.
/// Runs before the WebSocket filter, so a client without a valid token
/// gets a 401, never an upgrade.
async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Caller, Rejection> {
    let token = bearer_token(headers).ok_or_else(|| warp::reject::custom(Refusal::MissingToken))?;
    let token = token.to_string();
    let devices = state.devices.clone();
    let users = state.users.clone();
    // The lookups may touch disk; keep them off the async workers.
    let found = tokio::task::spawn_blocking(move || {
        let device = match devices.authenticate(&token)? {
            Auth::Device(d) => d,
            Auth::Unknown => return Ok(Err(Refusal::UnknownToken)),
            Auth::Revoked => return Ok(Err(Refusal::Revoked)),
            Auth::Retired => return Ok(Err(Refusal::Retired)),
            Auth::Expired => return Ok(Err(Refusal::Expired)),
        };
        let Some(name) = device.user.clone() else {
            return Ok(Err(Refusal::NoUser(
                "this device is tied to no user; enroll it or add it with --user",
            )));
        };
        let user = users
            .get(&name)
            .map_err(|e| crate::devices::DeviceError::Storage(Box::new(e)))?;
        Ok::<_, crate::devices::DeviceError>(match user {
            Some(u) if !u.disabled => Ok(Caller {
                device,
                principal: baraza_records::Principal {
                    user: u.name,
                    role: u.role,
                    areas: u.areas,
                },
            }),
            _ => Err(Refusal::NoUser("this device's user is disabled or unknown")),
        })
    })
    .await;
    match found {
        Ok(Ok(Ok(caller))) => Ok(caller),
        Ok(Ok(Err(refusal))) => Err(warp::reject::custom(refusal)),
        Ok(Err(error)) => {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "device lookup failed"
            );
            Err(warp::reject::custom(Refusal::Unavailable(
                "device store unavailable",
            )))
        }
        Err(error) => {
            tracing::error!(%error, "device lookup task failed");
            Err(warp::reject::custom(Refusal::Unavailable(
                "device store unavailable",
            )))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 9110 §11.1).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(warp::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn upgrade(
    caller: Caller,
    ws: warp::ws::Ws,
    state: AppState,
    slots: Arc<Semaphore>,
    stop_rx: watch::Receiver<bool>,
) -> Result<warp::reply::Response, Rejection> {
    if *stop_rx.borrow() {
        return Err(warp::reject::custom(Refusal::Unavailable(
            "server is shutting down",
        )));
    }
    // The session outlives the HTTP connection task (hyper hands the socket
    // over on upgrade), so it takes its own slot.
    let Ok(slot) = slots.try_acquire_owned() else {
        return Err(warp::reject::custom(Refusal::Unavailable(
            "too many connections",
        )));
    };
    tracing::info!(device_id = %caller.device.id, device_name = %caller.device.name, "sync session starting");
    let bytes_max = state.limits.ws_message_bytes_max();
    let hub = state.hub;
    let devices = state.devices;
    let reply = ws
        .max_message_size(bytes_max)
        .max_frame_size(bytes_max)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            let device_id = caller.device.id.clone();
            hub.serve_socket(socket, caller, devices, stop_rx).await;
            tracing::info!(%device_id, "sync session ended");
        });
    Ok(reply.into_response())
}

async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Rejection> {
    let Some(refusal) = rejection.find::<Refusal>() else {
        return Err(rejection);
    };
    let response = match refusal {
        Refusal::MissingToken => unauthorized("missing bearer token"),
        Refusal::UnknownToken => unauthorized("unknown device token"),
        Refusal::Revoked => unauthorized("revoked: this device was reported lost or stolen"),
        Refusal::Retired => unauthorized("retired: this device was retired; enroll it again"),
        Refusal::Expired => unauthorized("expired: this device's token expired; enroll it again"),
        Refusal::NoUser(why) => unauthorized(why),
        Refusal::Unavailable(why) => {
            warp::reply::with_status(*why, StatusCode::SERVICE_UNAVAILABLE).into_response()
        }
    };
    Ok(response)
}

fn unauthorized(why: &'static str) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::with_header(why, "www-authenticate", "Bearer"),
        StatusCode::UNAUTHORIZED,
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            warp::http::header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer_token(&headers("Bearer bz_abc")), Some("bz_abc"));
        assert_eq!(bearer_token(&headers("bearer  bz_abc ")), Some("bz_abc"));
        assert_eq!(bearer_token(&headers("Basic dXNlcjpwdw==")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
