//! The HTTP API: routes and their JSON, over the engine and the identity
//! registries.
//!
//! Routes:
//! - `GET /healthz` answers `ok`.
//! - `GET /v1/sync` upgrades to a WebSocket for a device presenting
//!   `Authorization: Bearer <token>`, and hands the socket to
//!   [`SyncHub::serve_socket`]. Without a valid token it answers 401 before
//!   any upgrade.
//! - `POST /v1/enroll` ([`login`]) and `/v1/admin/users` ([`admin`]).
//! - `/v1/records/{id}/attachments/{sha256}` ([`attachments`]): upload in
//!   resumable chunks, download with ranges.
//! - `/review` and `/review/api/` ([`review`]); `GET /` and
//!   `/favicon.ico` redirect there. HEAD is answered on the desk's pages
//!   and assets (and those redirects) as GET is, without the body.

pub mod admin;
pub mod attachments;
pub mod export;
pub mod login;
pub mod review;
pub mod review_events;
pub mod thumbnail;

use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::config::LimitsConfig;
use crate::engine::hub::SyncHub;
use crate::identity::caller::Caller;
use crate::identity::devices::Auth;
use crate::identity::devices::DeviceRegistry;
use crate::net::ConnectionSlot;
use baraza_protocol::{AuthRefusal, REFUSAL_HEADER};

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
    pub users: crate::identity::users::UserRegistry,
    /// Review desk sessions.
    pub review_sessions: crate::api::review::Sessions,
    /// Attachments' bytes, judged.
    pub attachments: Arc<crate::engine::attachments::Attachments>,
}

/// Why a request was refused. Turned into a plain-text response by
/// [`recover`]; the messages never include the token.
#[derive(Debug)]
enum Rejected {
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

impl warp::reject::Reject for Rejected {}

impl Rejected {
    /// The code a client switches on, sent beside the message.
    fn code(&self) -> AuthRefusal {
        match self {
            Rejected::MissingToken => AuthRefusal::MissingToken,
            Rejected::UnknownToken => AuthRefusal::UnknownToken,
            Rejected::Revoked => AuthRefusal::Revoked,
            Rejected::Retired => AuthRefusal::Retired,
            Rejected::Expired => AuthRefusal::Expired,
            Rejected::NoUser(_) => AuthRefusal::NoUser,
            Rejected::Unavailable(_) => AuthRefusal::Unavailable,
        }
    }
}

/// The routes as the hyper service the listener runs on each connection.
pub fn service(
    state: AppState,
    slots: Arc<Semaphore>,
    stop_rx: watch::Receiver<bool>,
) -> impl crate::net::Routes {
    hyper_util::service::TowerToHyperService::new(warp::service(routes(state, slots, stop_rx)))
}

/// The warp routes, with refusals turned into responses.
fn routes(
    state: AppState,
    slots: Arc<Semaphore>,
    stop_rx: watch::Receiver<bool>,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone + Send + Sync + 'static {
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok");

    let records = records_routes(&state);
    // One gate for both login doors, so that their failures count against
    // one throttle per address.
    let gate = Arc::new(crate::api::login::LoginGate::new(
        state.users.clone(),
        state.hub.audit().clone(),
    ));
    let enroll = crate::api::login::enroll_route(&state, gate.clone());
    let admin = crate::api::admin::routes(&state);
    let rotate = rotate_route(&state);
    let redirects = crate::api::review::redirects();
    let review =
        crate::api::review::routes(&state, state.review_sessions.clone(), gate, stop_rx.clone())
            .or(crate::api::review::page())
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
        .and(warp::ext::optional::<ConnectionSlot>())
        .and_then(
            move |device: Caller, ws: warp::ws::Ws, slot: Option<ConnectionSlot>| {
                let state = state.clone();
                let slots = slots.clone();
                let stop_rx = stop_rx.clone();
                async move { upgrade(device, ws, state, slot, slots, stop_rx) }
            },
        );

    healthz
        .or(sync)
        .or(records)
        .or(enroll)
        .or(rotate)
        .or(review)
        .or(redirects)
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
    let attachments = crate::api::attachments::routes(state.attachments.clone(), auth.clone());
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
                    let state = match state_filter(&query) {
                        Ok(state) => state,
                        Err(why) => {
                            return Ok(text_reply(StatusCode::BAD_REQUEST, why));
                        }
                    };
                    let filter = crate::storage::store::RecordFilter {
                        kind: query.get("kind").cloned(),
                        area: query.get("area").cloned(),
                        state,
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
    let devices = state.devices.clone();
    let one = warp::path!("v1" / "records" / String)
        .and(warp::get())
        .and(auth)
        .and_then(move |id: String, caller: Caller| {
            let hub = hub.clone();
            let devices = devices.clone();
            async move {
                let Ok(doc) = id.parse::<baraza_protocol::DocId>() else {
                    return Ok::<_, Rejection>(text_reply(StatusCode::NOT_FOUND, "no such record"));
                };
                tracing::debug!(device = %caller.device.id, record = %doc, "read record");
                let view =
                    tokio::task::spawn_blocking(move || hub.record_view(&caller, doc, &devices))
                        .await;
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
    list.or(one).or(attachments)
}

/// A listing's `state` parameter: a review state's name, or what the names
/// are (an unknown one is a mistake worth saying, not an empty list).
pub(crate) fn state_filter(
    query: &std::collections::HashMap<String, String>,
) -> Result<Option<baraza_records::ReviewState>, &'static str> {
    match query.get("state") {
        None => Ok(None),
        Some(name) => baraza_records::ReviewState::parse(name)
            .map(Some)
            .ok_or("state must be draft, submitted, approved or returned"),
    }
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
                    return Ok::<_, Rejection>(unauthorized(
                        AuthRefusal::MissingToken,
                        "missing bearer token",
                    ));
                };
                let now = crate::clock::unix_now();
                let rotated =
                    tokio::task::spawn_blocking(move || devices.rotate_at(&token, now)).await;
                Ok(match rotated {
                    Ok(Ok(Some(r))) => {
                        let id = r
                            .token
                            .strip_prefix(crate::identity::devices::TOKEN_PREFIX)
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
                        AuthRefusal::UnknownToken,
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
    let token =
        bearer_token(headers).ok_or_else(|| warp::reject::custom(Rejected::MissingToken))?;
    let token = token.to_string();
    let devices = state.devices.clone();
    let users = state.users.clone();
    // The lookups may touch disk; keep them off the async workers.
    let found = tokio::task::spawn_blocking(move || {
        let device = match devices.authenticate(&token)? {
            Auth::Device(d) => d,
            Auth::Unknown => return Ok(Err(Rejected::UnknownToken)),
            Auth::Revoked => return Ok(Err(Rejected::Revoked)),
            Auth::Retired => return Ok(Err(Rejected::Retired)),
            Auth::Expired => return Ok(Err(Rejected::Expired)),
        };
        let Some(name) = device.user.clone() else {
            return Ok(Err(Rejected::NoUser(
                "this device is tied to no user; enroll it or add it with --user",
            )));
        };
        let user = users
            .get(&name)
            .map_err(|e| crate::identity::devices::DeviceError::Storage(Box::new(e)))?;
        Ok::<_, crate::identity::devices::DeviceError>(match user {
            Some(u) if !u.disabled => Ok(Caller {
                device,
                principal: baraza_records::Principal {
                    user: u.name,
                    role: u.role,
                    areas: u.areas,
                },
            }),
            _ => Err(Rejected::NoUser(
                "this device's user is disabled or unknown",
            )),
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
            Err(warp::reject::custom(Rejected::Unavailable(
                "device store unavailable",
            )))
        }
        Err(error) => {
            tracing::error!(%error, "device lookup task failed");
            Err(warp::reject::custom(Rejected::Unavailable(
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
    connection_slot: Option<ConnectionSlot>,
    slots: Arc<Semaphore>,
    stop_rx: watch::Receiver<bool>,
) -> Result<warp::reply::Response, Rejection> {
    if *stop_rx.borrow() {
        return Err(warp::reject::custom(Rejected::Unavailable(
            "server is shutting down",
        )));
    }
    // The session outlives the HTTP connection task (hyper hands the socket
    // over on upgrade, and the task ends), so it takes over the socket's
    // slot. If the client goes away before the upgrade, the slot is dropped
    // with the callback below; the connection task ends then too.
    let slot = match connection_slot.and_then(|s| s.take()) {
        Some(slot) => slot,
        // Only a request that did not come through `serve_connection` (or a
        // second upgrade on one connection, which hyper does not allow) has
        // no slot to hand over.
        None => slots
            .try_acquire_owned()
            .map_err(|_| warp::reject::custom(Rejected::Unavailable("too many connections")))?,
    };
    tracing::info!(device_id = %caller.device.id, device_name = %caller.device.name, "sync session starting");
    let bytes_max = state.limits.ws_message_bytes_max();
    let hub = state.hub;
    let devices = state.devices;
    let users = state.users;
    let reply = ws
        .max_message_size(bytes_max)
        .max_frame_size(bytes_max)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            let device_id = caller.device.id;
            hub.serve_socket(socket, caller, devices, users, stop_rx)
                .await;
            tracing::info!(%device_id, "sync session ended");
        });
    Ok(reply.into_response())
}

async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Rejection> {
    let Some(refusal) = rejection.find::<Rejected>() else {
        return Err(rejection);
    };
    let code = refusal.code();
    let response = match refusal {
        Rejected::MissingToken => unauthorized(code, "missing bearer token"),
        Rejected::UnknownToken => unauthorized(code, "unknown device token"),
        Rejected::Revoked => unauthorized(code, "revoked: this device was reported lost or stolen"),
        Rejected::Retired => {
            unauthorized(code, "retired: this device was retired; enroll it again")
        }
        Rejected::Expired => unauthorized(
            code,
            "expired: this device's token expired; enroll it again",
        ),
        Rejected::NoUser(why) => unauthorized(code, why),
        Rejected::Unavailable(why) => warp::reply::with_status(
            warp::reply::with_header(*why, REFUSAL_HEADER, code.code()),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .into_response(),
    };
    Ok(response)
}

/// A 401 with its message for people and its code for programs.
fn unauthorized(code: AuthRefusal, why: &'static str) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::with_header(
            warp::reply::with_header(why, "www-authenticate", "Bearer"),
            REFUSAL_HEADER,
            code.code(),
        ),
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
