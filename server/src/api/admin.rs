//! The admin HTTP API: users and their areas, for administrators at a
//! tablet or browser rather than a shell on the server.
//!
//! Routes (JSON in and out):
//! - `GET  /v1/admin/users` → 200 `{"users": [user, ...]}`
//! - `POST /v1/admin/users` `{"name", "role", "areas", "password"}` → 201
//!   `{"user": user}`
//! - `GET  /v1/admin/users/{name}` → 200 `{"user": user}`
//! - `PUT  /v1/admin/users/{name}/areas` `{"areas": [...]}` → 200 `{"user": user}`
//! - `POST /v1/admin/users/{name}/disable`, `/enable`, `/release` (a
//!   lockout) → 200 `{"user": user}`
//!
//! where a user is `{"name", "role", "areas", "disabled", "locked"}`, never
//! a password or its hash.
//!
//! Authentication is the device token (`Authorization: Bearer`) of a device
//! enrolled by a user who has role `admin` and is not disabled: a missing or
//! unknown token gets 401, any other device 403 (audited as
//! `admin_forbidden`). Failures are `{"error": "..."}` with 400 (bad input,
//! weak password, unknown role), 404 (no such user), 409 (name taken, or an
//! administrator disabling their own account) or 503.
//!
//! Every change goes through [`admin::execute_for`], the same code as the
//! `user` commands and the admin socket, so the same rules apply and the
//! same audit entries are written, naming the administrator and device.

use std::sync::Arc;

use hyper::body::Bytes;
use serde::Deserialize;
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::admin::{self, AdminError, AdminReply, AdminRequest, Registries, Requester};
use crate::api::AppState;
use crate::identity::users::{Role, UserError};

/// Largest request body; a user with many areas is a few kilobytes.
const BODY_BYTES_MAX: u64 = 64 * 1024;

/// `POST /v1/admin/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddUser {
    name: String,
    role: String,
    #[serde(default)]
    areas: Vec<String>,
    password: String,
}

/// `PUT /v1/admin/users/{name}/areas`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetAreas {
    areas: Vec<String>,
}

/// What a request asks for, once its path and body are read.
enum Call {
    /// One user, read-only.
    Get(String),
    /// A command shared with the CLI and the admin socket.
    Execute(AdminRequest),
}

/// A refusal: the status and the message for `{"error": ...}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn into_response(self) -> warp::reply::Response {
        let body = warp::reply::json(&serde_json::json!({ "error": self.message }));
        let reply = warp::reply::with_status(body, self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            warp::reply::with_header(reply, "www-authenticate", "Bearer").into_response()
        } else {
            reply.into_response()
        }
    }
}

/// The admin routes under `/v1/admin/users`.
pub fn routes(
    state: &AppState,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    let registries = Arc::new(Registries {
        devices: state.devices.clone(),
        users: state.users.clone(),
        audit: state.hub.audit().clone(),
        records: crate::admin::Records::Live(state.hub.clone()),
    });
    let shared = registries.clone();
    let api = warp::any().map(move || shared.clone());
    let headers = warp::header::headers_cloned();
    let body = warp::body::content_length_limit(BODY_BYTES_MAX).and(warp::body::bytes());

    let list = warp::path!("v1" / "admin" / "users")
        .and(warp::get())
        .and(api.clone())
        .and(headers)
        .and_then(|api, headers| respond(api, headers, Ok(Call::Execute(AdminRequest::UserList))));
    let add = warp::path!("v1" / "admin" / "users")
        .and(warp::post())
        .and(api.clone())
        .and(headers)
        .and(body)
        .and_then(|api, headers, body: Bytes| {
            let call = parse::<AddUser>(&body).map(|add| {
                Call::Execute(AdminRequest::UserAdd {
                    name: add.name,
                    role: add.role,
                    areas: add.areas,
                    password: add.password,
                })
            });
            respond(api, headers, call)
        });
    let get = warp::path!("v1" / "admin" / "users" / String)
        .and(warp::get())
        .and(api.clone())
        .and(headers)
        .and_then(|name: String, api, headers| {
            respond(api, headers, path_name(&name).map(Call::Get))
        });
    let areas = warp::path!("v1" / "admin" / "users" / String / "areas")
        .and(warp::put())
        .and(api.clone())
        .and(headers)
        .and(body)
        .and_then(|name: String, api, headers, body: Bytes| {
            let call = path_name(&name).and_then(|name| {
                let areas = parse::<SetAreas>(&body)?.areas;
                Ok(Call::Execute(AdminRequest::UserAreas { name, areas }))
            });
            respond(api, headers, call)
        });
    let disable = state_change("disable", registries.clone(), |name| {
        AdminRequest::UserDisable {
            name,
            disabled: true,
        }
    });
    let enable = state_change("enable", registries.clone(), |name| {
        AdminRequest::UserDisable {
            name,
            disabled: false,
        }
    });
    let release = state_change("release", registries, |name| AdminRequest::UserRelease {
        name,
    });

    list.or(add)
        .unify()
        .or(get)
        .unify()
        .or(areas)
        .unify()
        .or(disable)
        .unify()
        .or(enable)
        .unify()
        .or(release)
        .unify()
}

/// `POST /v1/admin/users/{name}/{verb}`, a change without a body.
fn state_change(
    verb: &'static str,
    api: Arc<Registries>,
    request: fn(String) -> AdminRequest,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    warp::path!("v1" / "admin" / "users" / String / ..)
        .and(warp::path(verb))
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::any().map(move || api.clone()))
        .and(warp::header::headers_cloned())
        .and_then(move |name: String, api, headers| {
            let call = path_name(&name).map(|name| Call::Execute(request(name)));
            respond(api, headers, call)
        })
}

async fn respond(
    api: Arc<Registries>,
    headers: HeaderMap,
    call: Result<Call, ApiError>,
) -> Result<warp::reply::Response, Rejection> {
    Ok(serve(api, headers, call).await)
}

/// Authorises, then carries out `call`. The caller is checked before the
/// request's own faults are reported, so only administrators learn why a
/// request was malformed.
async fn serve(
    api: Arc<Registries>,
    headers: HeaderMap,
    call: Result<Call, ApiError>,
) -> warp::reply::Response {
    let admin = match authorize(&api, &headers).await {
        Ok(admin) => admin,
        Err(refusal) => return refusal.into_response(),
    };
    let call = match call {
        Ok(call) => call,
        Err(refusal) => return refusal.into_response(),
    };
    if let Call::Execute(AdminRequest::UserDisable {
        name,
        disabled: true,
    }) = &call
    {
        // The last administrator could otherwise lock everyone out of the
        // API; another administrator, or the command line, can still do it.
        if *name == admin.user {
            return ApiError::new(StatusCode::CONFLICT, "you cannot disable your own account")
                .into_response();
        }
    }
    let created = matches!(call, Call::Execute(AdminRequest::UserAdd { .. }));
    // Only the command's name: a user_add request carries a password.
    let what = match &call {
        Call::Get(_) => "user_get",
        Call::Execute(request) => request.name(),
    };
    tracing::info!(cmd = what, by = %admin.user, device = %admin.device, "admin API request");
    let outcome = tokio::task::spawn_blocking(move || match call {
        Call::Get(name) => match api.users.get(&name) {
            Ok(Some(user)) => Ok(AdminReply::User { user: user.into() }),
            Ok(None) => Err(AdminError::Users(UserError::NotFound(name))),
            Err(error) => Err(error.into()),
        },
        Call::Execute(request) => admin::execute_for(&api, request, Some(&admin)),
    })
    .await;
    match outcome {
        Ok(Ok(AdminReply::User { user })) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &serde_json::json!({ "user": user }))
        }
        Ok(Ok(AdminReply::Users { users })) => {
            json(StatusCode::OK, &serde_json::json!({ "users": users }))
        }
        Ok(Ok(other)) => {
            // Only user commands are routed here.
            tracing::error!(reply = ?std::mem::discriminant(&other), "unexpected admin reply");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "unexpected reply").into_response()
        }
        Ok(Err(error)) => refusal(&error).into_response(),
        Err(error) => {
            tracing::error!(%error, "admin API task failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "user store unavailable").into_response()
        }
    }
}

/// The administrator behind a request's bearer token, or the refusal.
async fn authorize(api: &Arc<Registries>, headers: &HeaderMap) -> Result<Requester, ApiError> {
    let token = super::bearer_token(headers)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token"))?
        .to_string();
    let api = api.clone();
    // Lookups touch disk; keep them off the async workers.
    let verdict = tokio::task::spawn_blocking(move || {
        let Some(device) = api
            .devices
            .authenticate(&token)
            .map_err(|error| {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "device lookup failed"
                );
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "device store unavailable")
            })?
            .device()
        else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unknown or revoked device token",
            ));
        };
        let user = match &device.user {
            Some(name) => api.users.get(name).map_err(|error| {
                tracing::error!(
                    error = &error as &dyn std::error::Error,
                    "user lookup failed"
                );
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "user store unavailable")
            })?,
            None => None,
        };
        let why = match &user {
            Some(user) if user.role == Role::Admin && !user.disabled => {
                return Ok(Requester {
                    user: user.name.clone(),
                    device: device.id.to_hex(),
                })
            }
            Some(user) if user.role == Role::Admin => "the administrator's account is disabled",
            Some(_) => "the admin API needs an administrator's device",
            None => "the admin API needs a device enrolled by an administrator",
        };
        tracing::warn!(device = %device.id, user = ?device.user, why, "admin API refused");
        api.audit.record(
            "admin_forbidden",
            serde_json::json!({ "device": device.id.to_hex(), "user": device.user, "reason": why }),
        );
        Err(ApiError::new(StatusCode::FORBIDDEN, why))
    })
    .await;
    verdict.unwrap_or_else(|error| {
        tracing::error!(%error, "admin API authorisation task failed");
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "device store unavailable",
        ))
    })
}

/// The status and message for a failed command. Server-side failures are
/// logged in full and answered without internals.
fn refusal(error: &AdminError) -> ApiError {
    let status = match error {
        AdminError::UnknownRole(_)
        | AdminError::Users(
            UserError::WeakPassword(_) | UserError::InvalidName(_) | UserError::InvalidAreas(_),
        ) => StatusCode::BAD_REQUEST,
        AdminError::Users(UserError::NotFound(_)) => StatusCode::NOT_FOUND,
        AdminError::Users(UserError::Exists(_)) => StatusCode::CONFLICT,
        _ => {
            tracing::error!(error = %admin::error_chain(error), "admin API request failed");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "user store unavailable");
        }
    };
    ApiError::new(status, error.to_string())
}

/// Reads a JSON body. serde's messages can quote the offending value,
/// which could be a password, so only missing and unknown fields (which
/// name a field, not a value) are passed on.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        let message = error.to_string();
        let detail = if message.starts_with("missing field") || message.starts_with("unknown field")
        {
            message
        } else {
            "the body is not the JSON object expected".to_string()
        };
        ApiError::new(StatusCode::BAD_REQUEST, detail)
    })
}

/// A user name from a path segment, percent-decoded (warp hands segments
/// over as sent).
fn path_name(segment: &str) -> Result<String, ApiError> {
    percent_decode(segment).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the user name in the path is not valid percent-encoded UTF-8",
        )
    })
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn json(status: StatusCode, body: &serde_json::Value) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("cpl.otieno").as_deref(), Some("cpl.otieno"));
        assert_eq!(percent_decode("Wanjir%C5%A9").as_deref(), Some("Wanjirũ"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn failures_map_to_statuses() {
        let status = |e: AdminError| refusal(&e).status;
        assert_eq!(
            status(AdminError::Users(UserError::WeakPassword("short"))),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(AdminError::UnknownRole("chief".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(AdminError::Users(UserError::NotFound("x".into()))),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(AdminError::Users(UserError::Exists("x".into()))),
            StatusCode::CONFLICT
        );
        let internal = refusal(&AdminError::Users(UserError::Corrupt("x".into())));
        assert_eq!(internal.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!internal.message.contains("corrupt"));
    }

    #[test]
    fn bad_bodies_never_echo_values() {
        let wrong_type =
            parse::<AddUser>(br#"{"name":"njeri","role":"officer","password":123456789}"#)
                .err()
                .unwrap();
        assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
        assert!(
            !wrong_type.message.contains("123456789"),
            "{}",
            wrong_type.message
        );
        let missing = parse::<AddUser>(br#"{"name":"njeri","role":"officer"}"#)
            .err()
            .unwrap();
        assert!(missing.message.contains("password"), "{}", missing.message);
        let typo = parse::<SetAreas>(br#"{"area":["mathare"]}"#).err().unwrap();
        assert!(
            typo.message.contains("unknown field `area`"),
            "{}",
            typo.message
        );
        let add =
            parse::<AddUser>(br#"{"name":"njeri","role":"officer","password":"radio check 1900"}"#)
                .ok()
                .unwrap();
        assert!(add.areas.is_empty());
    }

    fn registries() -> (tempfile::TempDir, Arc<Registries>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::sled::open_path(dir.path()).unwrap();
        (dir, Arc::new(Registries::open(&storage)))
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            warp::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn only_an_enabled_administrators_device_is_let_in() {
        let (_dir, api) = registries();
        api.users
            .add("amina", Role::Admin, &[], "keys to the station")
            .unwrap();
        api.users
            .add(
                "otieno",
                Role::Officer,
                &["mathare".into()],
                "night patrol B4",
            )
            .unwrap();
        let admin = api
            .devices
            .add_for_user("office pc", Some("amina"))
            .unwrap();
        let officer = api.devices.add_for_user("tablet", Some("otieno")).unwrap();
        let unowned = api.devices.add("kiosk").unwrap();

        let who = authorize(&api, &bearer(&admin.token)).await.unwrap();
        assert_eq!(who.user, "amina");
        assert_eq!(who.device, admin.identity.id.to_hex());
        let status = |r: Result<Requester, ApiError>| r.err().map(|e| e.status);
        assert_eq!(
            status(authorize(&api, &HeaderMap::new()).await),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(authorize(&api, &bearer("bz_nope")).await),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            status(authorize(&api, &bearer(&officer.token)).await),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(authorize(&api, &bearer(&unowned.token)).await),
            Some(StatusCode::FORBIDDEN)
        );
        api.users.set_disabled("amina", true).unwrap();
        assert_eq!(
            status(authorize(&api, &bearer(&admin.token)).await),
            Some(StatusCode::FORBIDDEN)
        );
        let forbidden = api
            .audit
            .entries()
            .filter_map(Result::ok)
            .filter(|e| e.event == "admin_forbidden")
            .count();
        assert_eq!(forbidden, 3);
    }
}
