//! `POST /v1/enroll`: a user logs in from a tablet and the tablet gets its
//! own device token, tied to that user.
//!
//! Two brakes on password guessing:
//! - per account (`users.rs`): five failures in fifteen minutes lock it
//!   until an administrator releases it; a locked, disabled or unknown
//!   account gets 401 with the reason (unknown and wrong password read the
//!   same);
//! - per source address ([`LoginThrottle`]): after
//!   [`ATTEMPTS_PER_ADDRESS_MAX`](crate::users::ATTEMPTS_PER_ADDRESS_MAX)
//!   failed logins within
//!   [`ADDRESS_WINDOW_SECS`](crate::users::ADDRESS_WINDOW_SECS) seconds,
//!   the address gets 429 with `Retry-After`, and
//!   the password is not even checked. This is what stops one client from
//!   guessing many names without locking any one of them. Refusals are
//!   audited as `login_throttled` once per address and window, so a flood
//!   cannot flood the audit log too.
//!
//! The address is the TCP peer (see `peer.rs`): Baraza terminates TLS
//! itself, so there is no proxy header to trust.

use crate::clock::unix_now;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hyper::body::Bytes;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::devices::{DeviceError, DeviceRegistry};
use crate::http::AppState;
use crate::users::{LoginError, LoginThrottle, UserRegistry};

/// Largest enrolment request body.
const BODY_BYTES_MAX: u64 = 16 * 1024;

/// What a tablet sends to enrol: a user's login and a name for the device.
#[derive(serde::Deserialize)]
struct EnrollRequest {
    user: String,
    password: String,
    device_name: String,
}

/// What the enrolment handler shares across requests.
struct Enrolment {
    users: UserRegistry,
    devices: DeviceRegistry,
    audit: crate::audit::AuditLog,
    throttle: Mutex<LoginThrottle>,
}

/// The `POST /v1/enroll` route, with its own per-address throttle.
pub fn enroll_route(
    state: &AppState,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    let shared = Arc::new(Enrolment {
        users: state.users.clone(),
        devices: state.devices.clone(),
        audit: state.hub.audit().clone(),
        throttle: Mutex::new(LoginThrottle::default()),
    });
    warp::path!("v1" / "enroll")
        .and(warp::post())
        .and(crate::peer::remote())
        .and(warp::body::content_length_limit(BODY_BYTES_MAX))
        .and(warp::body::bytes())
        .and_then(move |peer: Option<SocketAddr>, body: Bytes| {
            let shared = shared.clone();
            async move { Ok::<_, Rejection>(enroll(shared, peer, body).await) }
        })
}

async fn enroll(
    shared: Arc<Enrolment>,
    peer: Option<SocketAddr>,
    body: Bytes,
) -> warp::reply::Response {
    // serde's messages can quote the offending value, which could be a
    // password; say only what is expected.
    let Ok(request) = serde_json::from_slice::<EnrollRequest>(&body) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a JSON object with user, password and device_name".into(),
        );
    };
    let address = match peer {
        Some(peer) => peer.ip(),
        None => {
            // Only a wiring mistake gets here. All such requests share one
            // bucket, so logins stay throttled rather than unthrottled.
            tracing::error!("enrolment request without a peer address");
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    };
    let key = crate::peer::client_key(address);
    let now = unix_now();

    let admitted = lock(&shared.throttle).attempt(key, now);
    if let Err(LoginError::Throttled(wait)) = admitted {
        let report = lock(&shared.throttle).report_refusal(key, now);
        if report {
            tracing::warn!(%address, user = %request.user, "login throttled");
            let shared = shared.clone();
            let details = serde_json::json!({
                "address": address.to_string(),
                "user": request.user,
                "retry_after_s": wait,
            });
            let _ = tokio::task::spawn_blocking(move || {
                shared.audit.record("login_throttled", details)
            })
            .await;
        } else {
            tracing::debug!(%address, "login throttled");
        }
        return throttled(wait);
    }

    let name = request.user.clone();
    let worker = shared.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let user = worker
            .users
            .login(&request.user, &request.password, now)
            .map_err(Failure::Login)?;
        let device = worker
            .devices
            .add_for_user(&request.device_name, Some(&user.name))
            .map_err(Failure::Device)?;
        worker.audit.record(
            "device_enrolled",
            serde_json::json!({ "user": user.name, "device": device.identity.id }),
        );
        Ok::<_, Failure>((user, device))
    })
    .await;

    match outcome {
        Ok(Ok((user, device))) => {
            lock(&shared.throttle).forgive(key, now);
            tracing::info!(user = %user.name, device = %device.identity.id, "device enrolled");
            let expires_at = shared
                .devices
                .expires_at(&device.identity.id)
                .ok()
                .flatten();
            warp::reply::json(&serde_json::json!({
                "token": device.token,
                "device_id": device.identity.id,
                "user": user.name,
                "role": user.role,
                "areas": user.areas,
                "expires_at": expires_at,
            }))
            .into_response()
        }
        Ok(Err(Failure::Login(LoginError::Unavailable))) | Err(_) => {
            lock(&shared.throttle).forgive(key, now);
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "enrolment unavailable".into(),
            )
        }
        Ok(Err(Failure::Device(DeviceError::InvalidName(why)))) => {
            // The login itself was right.
            lock(&shared.throttle).forgive(key, now);
            text(
                StatusCode::BAD_REQUEST,
                format!("invalid device name: {why}"),
            )
        }
        Ok(Err(Failure::Device(error))) => {
            lock(&shared.throttle).forgive(key, now);
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "cannot register an enrolled device"
            );
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "enrolment unavailable".into(),
            )
        }
        Ok(Err(Failure::Login(refusal))) => {
            tracing::info!(reason = %refusal, %address, "enrolment refused");
            let reason = refusal.to_string();
            let details = serde_json::json!({
                "user": name,
                "reason": reason,
                "address": address.to_string(),
            });
            let _ =
                tokio::task::spawn_blocking(move || shared.audit.record("login_failed", details))
                    .await;
            text(StatusCode::UNAUTHORIZED, reason)
        }
    }
}

/// Why an enrolment failed after the throttle let it through.
enum Failure {
    Login(LoginError),
    Device(DeviceError),
}

fn throttled(wait: u64) -> warp::reply::Response {
    // At least one second: "retry after 0" would invite a busy loop.
    let wait = wait.max(1);
    warp::reply::with_status(
        warp::reply::with_header(
            LoginError::Throttled(wait).to_string(),
            "retry-after",
            wait.to_string(),
        ),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .into_response()
}

fn text(status: StatusCode, body: String) -> warp::reply::Response {
    warp::reply::with_status(body, status).into_response()
}

/// The throttle's state stays consistent even if a holder panicked (every
/// update is a single push or remove), so a poisoned lock is taken over.
fn lock(throttle: &Mutex<LoginThrottle>) -> std::sync::MutexGuard<'_, LoginThrottle> {
    throttle.lock().unwrap_or_else(|p| p.into_inner())
}
