//! Logging in. Two doors take a user name and password: `POST /v1/enroll`
//! (here), where a tablet logs in once and gets its own device token tied
//! to that user, and the review desk's `POST /review/api/login`
//! (`review.rs`). Both go through one [`LoginGate`], built once per server
//! (`http.rs`), so that:
//!
//! - every refusal looks the same from outside. An unknown name, a wrong
//!   password, a locked or disabled account, and a door that does not
//!   admit the user (the review desk is for supervisors) all get the same
//!   status and body ([`REFUSED`]) after the same work: one argon2
//!   verification (against a stand-in hash when the account cannot log in
//!   anyway, see `users.rs`) and one audit entry. So a stranger learns
//!   neither which names exist nor which accounts are locked; the holder
//!   of a locked or disabled account hears of it from an administrator.
//!   The real reason is in the audit log (`login_failed`, or
//!   `review_login_refused` for a non-supervisor), which callers never see.
//! - one per-address throttle ([`LoginThrottle`]) counts the failures of
//!   both doors: after
//!   [`ATTEMPTS_PER_ADDRESS_MAX`](crate::identity::users::ATTEMPTS_PER_ADDRESS_MAX)
//!   failed logins within
//!   [`ADDRESS_WINDOW_SECS`](crate::identity::users::ADDRESS_WINDOW_SECS) seconds,
//!   through either door, the address gets 429 with `Retry-After`, and the
//!   password is not even checked. This is what stops one client from
//!   guessing many names without locking any one of them. Refusals are
//!   audited as `login_throttled` once per address and window, so a flood
//!   cannot flood the audit log too. A successful login is forgiven, so
//!   only failures add up.
//!
//! Per account (`users.rs`), five failures in fifteen minutes lock it until
//! an administrator releases it.
//!
//! A tablet whose store already belongs to a device (its token expired,
//! say) sends that `device_id` when it enrols again. Once the password is
//! right, that same device gets a new token ([`DeviceRegistry::reenroll`],
//! audited `device_reenrolled`): a new device would strand every change
//! the tablet wrote offline, since those are authored under the old
//! device's actor ids. A revoked or retired device, or one another user
//! enrolled, is refused with a JSON `{error, rule}` (audited
//! `device_reenrol_refused`); only a user who just proved their password
//! hears why, so it tells a stranger nothing.
//!
//! The address is the TCP peer (see `peer.rs`): Baraza terminates TLS
//! itself, so there is no proxy header to trust.

use crate::clock::unix_now;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hyper::body::Bytes;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::api::AppState;
use crate::identity::devices::{
    DeviceError, DeviceRegistry, NewDevice, ReenrolRefusal, Reenrolment,
};
use crate::identity::users::{LoginError, LoginThrottle, Role, User, UserRegistry};
use crate::storage::audit::AuditLog;

/// The one answer to every refused login, whatever the reason.
pub const REFUSED: &str = "wrong user name or password";

/// Largest enrolment request body.
const BODY_BYTES_MAX: u64 = 16 * 1024;

/// Which door a login came through: it decides who may pass with a right
/// password, and names the door in the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    /// `POST /v1/enroll`: any enabled user.
    Enrolment,
    /// `POST /review/api/login`: supervisors only.
    ReviewDesk,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Enrolment => "enrolment",
            Door::ReviewDesk => "review desk",
        }
    }

    /// The audit event and reason for turning away `user`, whose password
    /// was right, or `None` if this door admits them.
    fn turns_away(self, user: &User) -> Option<(&'static str, &'static str)> {
        match self {
            Door::Enrolment => None,
            Door::ReviewDesk => (user.role != Role::Supervisor)
                .then_some(("review_login_refused", "not a supervisor")),
        }
    }
}

/// How the gate turned a login away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateError {
    /// Any refused login, whatever the reason: answer 401 [`REFUSED`].
    Refused,
    /// Too many failures from this address: answer 429 with this many
    /// seconds (at least one) in `Retry-After`.
    Throttled(u64),
    /// The user store failed; nothing was decided and nothing counted.
    Unavailable,
}

/// The one place user names and passwords are checked, for both doors.
pub struct LoginGate {
    users: UserRegistry,
    audit: AuditLog,
    throttle: Mutex<LoginThrottle>,
}

impl LoginGate {
    /// A gate with a fresh throttle. Build one per server and hand it to
    /// both doors: two gates would mean two throttles.
    pub fn new(users: UserRegistry, audit: AuditLog) -> LoginGate {
        LoginGate {
            throttle: Mutex::new(LoginThrottle::new(users.throttles())),
            users,
            audit,
        }
    }

    /// Checks a login from `peer` at `door`; the user if they may pass.
    /// Never logs the password.
    pub async fn check(
        &self,
        door: Door,
        peer: Option<SocketAddr>,
        name: &str,
        password: String,
    ) -> Result<User, GateError> {
        let address = match peer {
            Some(peer) => peer.ip(),
            None => {
                // Only a wiring mistake gets here. All such requests share
                // one bucket, so logins stay throttled rather than
                // unthrottled.
                tracing::error!(door = door.name(), "login request without a peer address");
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
        };
        let key = crate::net::peer::client_key(address);
        let now = unix_now();

        let admitted = self.throttle().attempt(key, now);
        if let Err(LoginError::Throttled(wait)) = admitted {
            // "Retry after 0" would invite a busy loop.
            let wait = wait.max(1);
            if self.throttle().report_refusal(key, now) {
                tracing::warn!(%address, user = %name, door = door.name(), "login throttled");
                let audit = self.audit.clone();
                let details = serde_json::json!({
                    "address": address.to_string(),
                    "user": name,
                    "retry_after_s": wait,
                    "via": door.name(),
                });
                let _ =
                    tokio::task::spawn_blocking(move || audit.record("login_throttled", details))
                        .await;
            } else {
                tracing::debug!(%address, "login throttled");
            }
            return Err(GateError::Throttled(wait));
        }

        let users = self.users.clone();
        let audit = self.audit.clone();
        let name = name.to_string();
        // The verification and the audit entry of a refusal run in one
        // blocking task, so every refusal does the same work before it is
        // answered.
        let outcome = tokio::task::spawn_blocking(move || {
            let refusal = match users.login(&name, &password, now) {
                Ok(user) => match door.turns_away(&user) {
                    None => return Ok(user),
                    Some((event, reason)) => (event, reason.to_string()),
                },
                Err(LoginError::Unavailable) => return Err(None),
                Err(error) => ("login_failed", error.to_string()),
            };
            let (event, reason) = refusal;
            tracing::info!(%reason, %address, door = door.name(), "login refused");
            audit.record(
                event,
                serde_json::json!({
                    "user": name,
                    "reason": reason,
                    "address": address.to_string(),
                    "via": door.name(),
                }),
            );
            Err(Some(GateError::Refused))
        })
        .await;

        match outcome {
            Ok(Ok(user)) => {
                self.throttle().forgive(key, now);
                Ok(user)
            }
            Ok(Err(Some(refused))) => Err(refused),
            // The server failed, not the password: it does not count.
            Ok(Err(None)) | Err(_) => {
                self.throttle().forgive(key, now);
                tracing::error!(door = door.name(), "user store unavailable for a login");
                Err(GateError::Unavailable)
            }
        }
    }

    /// The throttle's state stays consistent even if a holder panicked
    /// (every update is a single push or remove), so a poisoned lock is
    /// taken over.
    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a tablet sends to enrol: a user's login and a name for the device.
#[derive(serde::Deserialize)]
struct EnrollRequest {
    user: String,
    password: String,
    device_name: String,
    /// The device the tablet's store already belongs to, when it enrols
    /// again (its token expired, say): the same device gets a new token.
    #[serde(default)]
    device_id: Option<String>,
}

/// What enrolment did, once the user's password was right.
enum Enrolled {
    /// A new device.
    New(NewDevice),
    /// The tablet's own device again, with a new token.
    Again(NewDevice),
    /// The tablet's device may not be enrolled again: nothing changed.
    Refused(String, ReenrolRefusal),
}

/// What the enrolment handler shares across requests.
struct Enrolment {
    gate: Arc<LoginGate>,
    devices: DeviceRegistry,
    audit: AuditLog,
}

/// The `POST /v1/enroll` route, behind the server's one `gate`.
pub fn enroll_route(
    state: &AppState,
    gate: Arc<LoginGate>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    let shared = Arc::new(Enrolment {
        gate,
        devices: state.devices.clone(),
        audit: state.hub.audit().clone(),
    });
    warp::path!("v1" / "enroll")
        .and(warp::post())
        .and(crate::net::peer::remote())
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
    // Checked before the password, so it cannot reach a log or a message
    // as anything but a device id.
    if let Some(id) = &request.device_id {
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return text(
                StatusCode::BAD_REQUEST,
                "device_id must be 32 lowercase hex digits".into(),
            );
        }
    }
    let user = match shared
        .gate
        .check(Door::Enrolment, peer, &request.user, request.password)
        .await
    {
        Ok(user) => user,
        Err(GateError::Refused) => {
            return warp::reply::with_status(
                warp::reply::with_header(
                    REFUSED,
                    baraza_protocol::REFUSAL_HEADER,
                    baraza_protocol::AuthRefusal::LoginRefused.code(),
                ),
                StatusCode::UNAUTHORIZED,
            )
            .into_response()
        }
        Err(GateError::Throttled(wait)) => return throttled(wait),
        Err(GateError::Unavailable) => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "enrolment unavailable".into(),
            )
        }
    };

    // From here the login was right: what fails is not a guess, and a
    // refusal may say why.
    let worker = shared.clone();
    let device_name = request.device_name;
    let device_id = request.device_id;
    let outcome = tokio::task::spawn_blocking(move || {
        let enrolled = match device_id {
            Some(id) => match worker.devices.reenroll(&id, &user.name, unix_now())? {
                Reenrolment::Reissued(device) => {
                    worker.audit.record(
                        "device_reenrolled",
                        serde_json::json!({ "user": user.name, "device": device.identity.id.to_hex() }),
                    );
                    Enrolled::Again(device)
                }
                Reenrolment::Refused(why) => {
                    worker.audit.record(
                        "device_reenrol_refused",
                        serde_json::json!({ "user": user.name, "device": id, "rule": why.code() }),
                    );
                    Enrolled::Refused(id, why)
                }
            },
            None => {
                let device = worker
                    .devices
                    .add_for_user(&device_name, Some(&user.name))?;
                worker.audit.record(
                    "device_enrolled",
                    serde_json::json!({ "user": user.name, "device": device.identity.id.to_hex() }),
                );
                Enrolled::New(device)
            }
        };
        Ok::<_, DeviceError>((user, enrolled))
    })
    .await;

    match outcome {
        Ok(Ok((user, Enrolled::Refused(id, why)))) => {
            tracing::info!(user = %user.name, device = %id, rule = why.code(), "re-enrolment refused");
            let status = match why {
                ReenrolRefusal::Revoked | ReenrolRefusal::Retired => StatusCode::FORBIDDEN,
                ReenrolRefusal::UnknownDevice | ReenrolRefusal::OtherUser => StatusCode::CONFLICT,
            };
            warp::reply::with_status(
                warp::reply::json(&serde_json::json!({
                    "error": why.message(&id),
                    "rule": why.code(),
                })),
                status,
            )
            .into_response()
        }
        Ok(Ok((user, Enrolled::New(device)))) => enrolled_reply(&shared, &user, &device, false),
        Ok(Ok((user, Enrolled::Again(device)))) => enrolled_reply(&shared, &user, &device, true),
        Ok(Err(DeviceError::InvalidName(why))) => text(
            StatusCode::BAD_REQUEST,
            format!("invalid device name: {why}"),
        ),
        Ok(Err(error)) => {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "cannot register an enrolled device"
            );
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "enrolment unavailable".into(),
            )
        }
        Err(error) => {
            tracing::error!(%error, "enrolment task failed");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "enrolment unavailable".into(),
            )
        }
    }
}

/// The token and what the tablet files records under; `again` when the
/// tablet's own device was enrolled again.
fn enrolled_reply(
    shared: &Enrolment,
    user: &User,
    device: &NewDevice,
    again: bool,
) -> warp::reply::Response {
    tracing::info!(user = %user.name, device = %device.identity.id, again, "device enrolled");
    let expires_at = shared
        .devices
        .expires_at(&device.identity.id)
        .ok()
        .flatten();
    warp::reply::json(&serde_json::json!({
        "token": device.token,
        "device_id": device.identity.id.to_hex(),
        "device_name": device.identity.name,
        "reenrolled": again,
        "user": user.name,
        "role": user.role,
        "areas": user.areas,
        "expires_at": expires_at,
    }))
    .into_response()
}

fn throttled(wait: u64) -> warp::reply::Response {
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
