//! The supervisors' review desk API, under `/review/api/`: JSON over the
//! same TLS server, behind a login session (a cookie), for reading merged
//! records and deciding on them.
//!
//! - `POST login` `{user, password}`: supervisors only. Sets the session
//!   cookie (HttpOnly, Secure, SameSite=Strict, Path=/review) and answers
//!   `{user, areas, csrf}`. It goes through the server's one
//!   [`LoginGate`](crate::api::login::LoginGate), as enrolment does: failures
//!   count towards the account's lockout and the one per-address throttle
//!   both doors share, and every refusal answers alike (401
//!   `{"error": "wrong user name or password"}`), a non-supervisor's right
//!   password included.
//! - `POST logout`.
//! - `GET records?kind=&area=&state=&from=&to=&q=&limit=`: from the index
//!   (`from`/`to` are creation times in ms; `q` is free text, matched in
//!   the records the index already narrowed down). Each row: `id`, `kind`,
//!   `area`, `state`, `created_at`, `created_by`, `title`, `submitted_at`,
//!   `conflicts`, `comments`, `clock`; no document is loaded.
//! - `GET events`: server-sent events, each admitted write to a record the
//!   supervisor may read as its list row (`crate::api::review_events`).
//! - `GET records/{id}`: fields, conflicts, history (each change's claimed
//!   time beside when the server first stored it; conflicting values and
//!   history entries name their `device` and `device_name`), review comments, and
//!   `clock`, set when claimed times were implausibly far ahead of the
//!   server's clock on arrival (`[records] clock_ahead_max_ms`); list rows
//!   carry `clock` too.
//! - `POST records/{id}/decision` `{decision: approved|returned, comment}`.
//!   Approving while a conflict stands is refused with 409 and the rule
//!   `unresolved_conflict`; other refusals by rule are 403 with theirs.
//! - `POST records/{id}/resolve` `{path, value}`: sets a conflicted field
//!   to one of its values or a new one (`place`, `action_items.1.status`).
//!
//! Every state-changing request must carry the session's CSRF token in
//! `X-CSRF-Token`. Decisions and resolutions are automerge changes the
//! server makes on the supervisor's behalf ([`SyncHub::author`]), so they
//! reach tablets at their next sync like any other change. Sessions are
//! kept hashed in the database (`review_sessions`), so any server node
//! sharing it could serve them.

use crate::clock::unix_now;
use std::net::SocketAddr;
use std::sync::Arc;

use baraza_protocol::DocId;
use baraza_records::ops::{self, FieldValue};
use baraza_records::{FieldType, Header, Kind, Principal, Role};
use hyper::body::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::api::login::{Door, GateError, LoginGate};
use crate::api::AppState;
use crate::engine::hub::{DeskError, SyncHub};
use crate::identity::caller::{Caller, DeviceIdentity};
use crate::identity::users::{LoginError, UserRegistry};
use crate::storage::sessions::{ReviewSession as Session, SessionStore};
use crate::storage::store::{RecordFilter, StoreError};

/// The session cookie's name.
pub const COOKIE: &str = "baraza_review";
/// A session lasts one long shift.
const SESSION_SECS: u64 = 10 * 3600;
/// Largest request body.
const BODY_BYTES_MAX: u64 = 64 * 1024;
/// Most rows one listing returns.
const ROWS_MAX: usize = 1000;

/// Review sessions, kept in a [`SessionStore`] under the hash of their
/// cookie. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    /// Bumped when a session ends, so open event streams check theirs.
    ended: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Sessions {
    /// The sessions kept in `store`.
    pub fn new(store: Arc<dyn SessionStore>) -> Sessions {
        Sessions {
            store,
            ended: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    fn create(&self, user: &str, now: u64) -> Result<(String, Session), StoreError> {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let session = Session {
            user: user.to_string(),
            csrf: hex::encode(rand::random::<[u8; 32]>()),
            expires_at: now + SESSION_SECS,
        };
        self.store.put(&key_of(&id), &session)?;
        Ok((id, session))
    }

    fn find(&self, id: &str, now: u64) -> Result<Option<Session>, StoreError> {
        let key = key_of(id);
        match self.store.get(&key) {
            Ok(Some(s)) if s.expires_at > now => Ok(Some(s)),
            Ok(None) => Ok(None),
            // Expired, or garbled: either way it ends here.
            Ok(Some(_)) | Err(StoreError::Corrupt { .. }) => {
                self.store.remove(&key)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn end(&self, id: &str) -> Result<(), StoreError> {
        self.store.remove(&key_of(id))?;
        self.ended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// What a session is kept under: the SHA-256 of its cookie, so the store
/// holds no cookie a copy of it could sign in with.
fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

struct Desk {
    hub: Arc<SyncHub>,
    users: UserRegistry,
    devices: crate::identity::devices::DeviceRegistry,
    sessions: Sessions,
    gate: Arc<LoginGate>,
    attachments: Arc<crate::engine::attachments::Attachments>,
    thumbnails: crate::api::thumbnail::Thumbnails,
}

/// A refusal before any work: turned into a JSON error reply.
struct Refused(StatusCode, std::borrow::Cow<'static, str>);

impl Refused {
    fn reply(self) -> warp::reply::Response {
        error(self.0, self.1)
    }
}

/// A JSON error reply.
fn error(status: StatusCode, message: impl Into<String>) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message.into() })),
        status,
    )
    .into_response()
}

fn ok(value: serde_json::Value) -> warp::reply::Response {
    warp::reply::json(&value).into_response()
}

/// The value of the session cookie, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(warp::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_string())
        })
}

/// The supervisor the desk acts for, as a [`Caller`]: the "device" is the
/// desk itself, with an id derived from the user, so the desk's changes
/// carry actor ids of their own.
fn desk_caller(principal: Principal) -> Caller {
    Caller {
        device: DeviceIdentity {
            id: crate::identity::caller::desk_device_id(&principal.user),
            name: crate::identity::caller::DESK_DEVICE_NAME.into(),
            user: Some(principal.user.clone()),
            retiring: false,
            scope: None,
        },
        principal,
    }
}

impl Desk {
    /// The signed-in supervisor, checked against the user store on every
    /// request (a disabled account or a lost role ends the session), and
    /// for state-changing requests the CSRF token.
    fn caller(&self, headers: &HeaderMap, changing: bool) -> Result<(Caller, String), Refused> {
        let unauthorized = || Refused(StatusCode::UNAUTHORIZED, "sign in first".into());
        let id = session_cookie(headers).ok_or_else(unauthorized)?;
        let csrf = changing.then(|| {
            headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        });
        Ok((self.session_caller(&id, csrf)?, id))
    }

    /// The supervisor of the session `id`, checked as [`Desk::caller`]
    /// says; with `csrf`, the token a state-changing request sent.
    fn session_caller(&self, id: &str, csrf: Option<&str>) -> Result<Caller, Refused> {
        let unauthorized = || Refused(StatusCode::UNAUTHORIZED, "sign in first".into());
        let session = self
            .sessions
            .find(id, unix_now())
            .map_err(|_| {
                Refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "session store unavailable".into(),
                )
            })?
            .ok_or_else(unauthorized)?;
        if let Some(sent) = csrf {
            if sent.is_empty() || sent != session.csrf {
                return Err(Refused(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token".into(),
                ));
            }
        }
        let user = self
            .users
            .get(&session.user)
            .map_err(|_| {
                Refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "user store unavailable".into(),
                )
            })?
            .filter(|u| !u.disabled && u.role == Role::Supervisor)
            .ok_or_else(unauthorized)?;
        let principal = Principal {
            user: user.name,
            role: user.role,
            areas: user.areas,
        };
        Ok(desk_caller(principal))
    }

    /// The signed-in supervisor and the listing filters of a read
    /// request (the list, exports and indicators share them).
    fn reading(
        &self,
        headers: &HeaderMap,
        query: &std::collections::HashMap<String, String>,
        limit_max: usize,
    ) -> Result<(Caller, Selection), Refused> {
        let (caller, _) = self.caller(headers, false)?;
        let selection = Selection::parse(query, limit_max)
            .map_err(|why| Refused(StatusCode::BAD_REQUEST, why.into()))?;
        Ok((caller, selection))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionRequest {
    decision: String,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    path: String,
    value: String,
}

/// The page's assets, embedded: the desk works on a station LAN with no
/// internet, and nothing is fetched from elsewhere.
const INDEX_HTML: &str = include_str!("../../assets/review/index.html");
const APP_JS: &str = include_str!("../../assets/review/app.js");
const APP_CSS: &str = include_str!("../../assets/review/app.css");
const FAVICON_SVG: &str = include_str!("../../assets/review/favicon.svg");
/// The page's interface strings, one flat `{"key": "text"}` catalogue per
/// language (a translator edits these, not the code); English first, the
/// fallback for a key another lacks (a test keeps them complete).
const CATALOGUES: [(&str, &str); 5] = [
    ("en", include_str!("../../assets/review/i18n/en.json")),
    ("fr", include_str!("../../assets/review/i18n/fr.json")),
    ("sw", include_str!("../../assets/review/i18n/sw.json")),
    ("pt", include_str!("../../assets/review/i18n/pt.json")),
    ("ar", include_str!("../../assets/review/i18n/ar.json")),
];

#[cfg(test)]
#[path = "review_page_tests.rs"]
mod page_tests;

/// No inline script or style, nothing from elsewhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; media-src 'self'; connect-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the headers every review desk response carries.
fn hardened(reply: warp::reply::Response) -> warp::reply::Response {
    let mut reply = reply;
    let headers = reply.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        if let Ok(value) = warp::http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    reply
}

fn asset(body: &'static str, content_type: &'static str) -> warp::reply::Response {
    warp::reply::with_header(body, "content-type", content_type).into_response()
}

/// The page and its assets, at `/review`.
pub fn page(
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    let index = warp::path!("review")
        .and(warp::get())
        .map(|| asset(INDEX_HTML, "text/html; charset=utf-8"));
    let js = warp::path!("review" / "app.js")
        .and(warp::get())
        .map(|| asset(APP_JS, "text/javascript; charset=utf-8"));
    let css = warp::path!("review" / "app.css")
        .and(warp::get())
        .map(|| asset(APP_CSS, "text/css; charset=utf-8"));
    let favicon = warp::path!("review" / "favicon.svg")
        .and(warp::get())
        .map(|| asset(FAVICON_SVG, "image/svg+xml"));
    let i18n = warp::path!("review" / "i18n" / String)
        .and(warp::get())
        .map(|file: String| {
            let found = file
                .strip_suffix(".json")
                .and_then(|lang| CATALOGUES.iter().find(|(l, _)| *l == lang));
            match found {
                Some((_, body)) => asset(body, "application/json; charset=utf-8"),
                None => error(StatusCode::NOT_FOUND, "no such language"),
            }
        });
    index
        .or(js)
        .unify()
        .or(css)
        .unify()
        .or(favicon)
        .unify()
        .or(i18n)
        .unify()
        .map(hardened)
}

/// `GET /` and `GET /favicon.ico`: to the desk, the one page this server
/// has for people, and to its icon.
pub fn redirects(
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    let see = |to: &'static str| {
        warp::redirect::see_other(warp::http::Uri::from_static(to)).into_response()
    };
    let root = warp::path::end()
        .and(warp::get())
        .map(move || see("/review"));
    let favicon = warp::path!("favicon.ico")
        .and(warp::get())
        .map(move || see("/review/favicon.svg"));
    root.or(favicon).unify().map(hardened)
}

/// The routes under `/review/api/`, logins behind the server's one `gate`;
/// event streams end when `stop` turns true (shutdown).
pub fn routes(
    state: &AppState,
    sessions: Sessions,
    gate: Arc<LoginGate>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone + Send + Sync + 'static
{
    let desk = Arc::new(Desk {
        hub: state.hub.clone(),
        users: state.users.clone(),
        devices: state.devices.clone(),
        sessions,
        gate,
        attachments: state.attachments.clone(),
        thumbnails: Default::default(),
    });
    let with_desk = warp::any().map(move || desk.clone());
    let body = warp::body::content_length_limit(BODY_BYTES_MAX).and(warp::body::bytes());

    let login = warp::path!("review" / "api" / "login")
        .and(warp::post())
        .and(with_desk.clone())
        .and(crate::net::peer::remote())
        .and(body)
        .and_then(
            |desk, peer, body| async move { Ok::<_, Rejection>(login(desk, peer, body).await) },
        );
    let logout = warp::path!("review" / "api" / "logout")
        .and(warp::post())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .map(
            |desk: Arc<Desk>, headers: HeaderMap| match desk.caller(&headers, true) {
                Ok((_, id)) => match desk.sessions.end(&id) {
                    Ok(()) => warp::reply::with_header(
                        ok(serde_json::json!({ "signed_out": true })),
                        "set-cookie",
                        format!(
                            "{COOKIE}=; Path=/review; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
                        ),
                    )
                    .into_response(),
                    Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "session store unavailable"),
                },
                Err(refused) => refused.reply(),
            },
        );
    let session = warp::path!("review" / "api" / "session")
        .and(warp::get())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .map(|desk: Arc<Desk>, headers: HeaderMap| {
            let Some(id) = session_cookie(&headers) else {
                return error(StatusCode::UNAUTHORIZED, "sign in first");
            };
            match (
                desk.caller(&headers, false),
                desk.sessions.find(&id, unix_now()),
            ) {
                (Ok((caller, _)), Ok(Some(session))) => ok(serde_json::json!({
                    "user": caller.principal.user,
                    "areas": caller.principal.areas,
                    "csrf": session.csrf,
                })),
                (Err(refused), _) => refused.reply(),
                _ => error(StatusCode::UNAUTHORIZED, "sign in first"),
            }
        });
    let list = warp::path!("review" / "api" / "records")
        .and(warp::get())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and_then(|desk, headers, query| async move {
            Ok::<_, Rejection>(list(desk, headers, query).await)
        });
    let csv = warp::path!("review" / "api" / "export.csv")
        .and(warp::get())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and_then(|desk, headers, query| async move {
            Ok::<_, Rejection>(export(desk, headers, "csv", query).await)
        });
    let geojson = warp::path!("review" / "api" / "export.geojson")
        .and(warp::get())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and_then(|desk, headers, query| async move {
            Ok::<_, Rejection>(export(desk, headers, "geojson", query).await)
        });
    let indicators = warp::path!("review" / "api" / "indicators")
        .and(warp::get())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and_then(|desk, headers, query| async move {
            Ok::<_, Rejection>(indicators(desk, headers, query).await)
        });
    let one = warp::path!("review" / "api" / "records" / String)
        .and(warp::get())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .and_then(
            |id: String, desk: Arc<Desk>, headers: HeaderMap| async move {
                Ok::<_, Rejection>(show(desk, headers, id).await)
            },
        );
    let decide = warp::path!("review" / "api" / "records" / String / "decision")
        .and(warp::post())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(BODY_BYTES_MAX).and(warp::body::bytes()))
        .and_then(
            |id: String, desk: Arc<Desk>, headers: HeaderMap, body: Bytes| async move {
                Ok::<_, Rejection>(decide(desk, headers, id, body).await)
            },
        );
    let events = warp::path!("review" / "api" / "events")
        .and(warp::get())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .map(move |desk: Arc<Desk>, headers: HeaderMap| events(desk, &headers, stop.clone()));
    let attachment = warp::path!("review" / "api" / "records" / String / "attachments" / String)
        .and(warp::get())
        .and(with_desk.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and_then(
            |id: String,
             sha: String,
             desk: Arc<Desk>,
             headers: HeaderMap,
             query: std::collections::HashMap<String, String>| async move {
                Ok::<_, Rejection>(
                    attachment(desk, headers, id, sha, query.contains_key("thumb")).await,
                )
            },
        );
    let resolve = warp::path!("review" / "api" / "records" / String / "resolve")
        .and(warp::post())
        .and(with_desk)
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(BODY_BYTES_MAX).and(warp::body::bytes()))
        .and_then(
            |id: String, desk: Arc<Desk>, headers: HeaderMap, body: Bytes| async move {
                Ok::<_, Rejection>(resolve(desk, headers, id, body).await)
            },
        );
    login
        .or(logout)
        .unify()
        .or(session)
        .unify()
        .or(list)
        .unify()
        .or(one)
        .unify()
        .or(decide)
        .unify()
        .or(resolve)
        .unify()
        .or(csv)
        .unify()
        .or(geojson)
        .unify()
        .or(indicators)
        .unify()
        .or(events)
        .unify()
        .or(attachment)
        .unify()
        .map(hardened)
}

/// `GET records/{id}/attachments/{sha256}[?thumb]`: an attachment of a
/// record the supervisor may read, as the device API serves it (ranges
/// for audio), or with `thumb` the server's thumbnail of a photo. What
/// is neither photo nor audio is sent to be saved, not shown in the page.
async fn attachment(
    desk: Arc<Desk>,
    headers: HeaderMap,
    id: String,
    sha: String,
    thumb: bool,
) -> warp::reply::Response {
    use crate::engine::attachments::AttachmentError;
    let (caller, _) = match desk.caller(&headers, false) {
        Ok(found) => found,
        Err(refused) => return refused.reply(),
    };
    let Ok(doc) = id.parse::<DocId>() else {
        return error(StatusCode::NOT_FOUND, "no such attachment");
    };
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let worker = desk.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let (reference, digest) = worker.attachments.open(&caller, doc, &sha)?;
        if !thumb {
            return Ok((reference, digest, None));
        }
        if !crate::api::thumbnail::can_thumbnail(&reference.mime) {
            return Err(AttachmentError::NotUploaded);
        }
        let size = usize::try_from(reference.size_bytes).unwrap_or(usize::MAX);
        let made = worker.thumbnails.get(&digest, || {
            worker.attachments.read(&digest, 0, size).ok().flatten()
        });
        Ok((reference, digest, made))
    })
    .await;
    match opened {
        Ok(Ok((_, _, Some(thumbnail)))) => {
            warp::reply::with_header(thumbnail.to_vec(), "content-type", "image/jpeg")
                .into_response()
        }
        Ok(Ok((_, _, None))) if thumb => error(StatusCode::NOT_FOUND, "no preview"),
        Ok(Ok((reference, digest, None))) => {
            let shown = reference.mime.starts_with("audio/")
                || crate::api::thumbnail::can_thumbnail(&reference.mime);
            let mut reply = crate::api::attachments::download(
                desk.attachments.clone(),
                reference,
                digest,
                range.as_deref(),
            );
            if !shown {
                reply.headers_mut().insert(
                    "content-disposition",
                    warp::http::HeaderValue::from_static("attachment"),
                );
            }
            reply
        }
        Ok(Err(AttachmentError::Absent)) => error(StatusCode::NOT_FOUND, "no such attachment"),
        Ok(Err(AttachmentError::NotUploaded)) => error(StatusCode::NOT_FOUND, "not uploaded yet"),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "attachment storage unavailable",
        ),
    }
}

/// `GET events`: the live stream (see [`crate::api::review_events`]).
fn events(
    desk: Arc<Desk>,
    headers: &HeaderMap,
    stop: tokio::sync::watch::Receiver<bool>,
) -> warp::reply::Response {
    let (caller, id) = match desk.caller(headers, false) {
        Ok(found) => found,
        Err(refused) => return refused.reply(),
    };
    let checker = desk.clone();
    let check: crate::api::review_events::SessionCheck = Arc::new(move || {
        checker
            .session_caller(&id, None)
            .ok()
            .map(|caller| caller.principal)
    });
    let source = crate::api::review_events::EventSource {
        hub: desk.hub.clone(),
        check,
        sessions_ended: desk.sessions.ended.subscribe(),
        stop,
        buffered_max: crate::api::review_events::EVENTS_BUFFERED_MAX,
        entries_per_wake_max: crate::api::review_events::ENTRIES_PER_WAKE_MAX,
    };
    let stream = crate::api::review_events::start(source, caller.principal);
    warp::sse::reply(stream).into_response()
}

/// `GET indicators?area=&from=&to=`: the report figures over every record
/// the supervisor may read that matches.
async fn indicators(
    desk: Arc<Desk>,
    headers: HeaderMap,
    query: std::collections::HashMap<String, String>,
) -> warp::reply::Response {
    let (caller, mut selection) = match desk.reading(&headers, &query, EXPORT_ROWS_MAX) {
        Ok(read) => read,
        Err(refused) => return refused.reply(),
    };
    selection.filter.kind = None;
    selection.filter.state = None;
    let hub = desk.hub.clone();
    let built = tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        for row in selection.rows(&hub, &caller.principal)? {
            let Ok(id) = row.id.parse::<DocId>() else {
                continue;
            };
            if !matches!(
                row.entry.kind.as_str(),
                "meeting" | "feedback" | "patrol_note"
            ) {
                continue;
            }
            records.extend(hub.export_record(&caller.principal, id, false)?);
        }
        Ok::<_, crate::engine::docs::DocsError>(crate::api::export::indicators(&records))
    })
    .await;
    match built {
        Ok(Ok(figures)) => ok(figures),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "record store unavailable"),
    }
}

async fn login(desk: Arc<Desk>, peer: Option<SocketAddr>, body: Bytes) -> warp::reply::Response {
    // serde's messages can quote the offending value (a password): say
    // only what is expected.
    let Ok(request) = serde_json::from_slice::<LoginRequest>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"user\", \"password\"}");
    };
    let user = match desk
        .gate
        .check(Door::ReviewDesk, peer, &request.user, request.password)
        .await
    {
        Ok(user) => user,
        Err(GateError::Refused) => {
            return error(StatusCode::UNAUTHORIZED, crate::api::login::REFUSED)
        }
        Err(GateError::Throttled(wait)) => {
            return warp::reply::with_header(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    LoginError::Throttled(wait).to_string(),
                ),
                "retry-after",
                wait.to_string(),
            )
            .into_response()
        }
        Err(GateError::Unavailable) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "sign-in unavailable")
        }
    };
    let worker = desk.clone();
    let address = peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let created = tokio::task::spawn_blocking(move || {
        let created = worker.sessions.create(&user.name, unix_now())?;
        worker.hub.audit().record(
            "review_login",
            serde_json::json!({ "user": user.name, "address": address }),
        );
        Ok::<_, StoreError>((user, created))
    })
    .await;
    match created {
        Ok(Ok((user, (id, session)))) => warp::reply::with_header(
            ok(serde_json::json!({
                "user": user.name,
                "areas": user.areas,
                "csrf": session.csrf,
            })),
            "set-cookie",
            format!(
                "{COOKIE}={id}; Path=/review; Max-Age={SESSION_SECS}; HttpOnly; Secure; SameSite=Strict"
            ),
        )
        .into_response(),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "sign-in unavailable"),
    }
}

/// A listing's filters, as the list and the exports take them.
struct Selection {
    filter: RecordFilter,
    to: Option<i64>,
    text: Option<String>,
    limit: usize,
}

impl Selection {
    fn parse(
        query: &std::collections::HashMap<String, String>,
        limit_max: usize,
    ) -> Result<Selection, String> {
        let number = |name: &str| match query.get(name).map(|v| v.parse::<i64>()) {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(_)) => Err(format!("{name} must be milliseconds since 1970")),
        };
        let from = number("from")?;
        let to = number("to")?;
        Ok(Selection {
            filter: RecordFilter {
                kind: query.get("kind").cloned(),
                area: query.get("area").cloned(),
                state: super::state_filter(query).map_err(str::to_string)?,
                since: from,
            },
            to,
            text: query
                .get("q")
                .map(|q| q.trim().to_lowercase())
                .filter(|q| !q.is_empty()),
            limit: query
                .get("limit")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(limit_max)
                .min(limit_max),
        })
    }

    /// The rows `who` may read that match, from the index; free text is
    /// matched in the records the index already narrowed down. Blocking.
    fn rows(
        &self,
        hub: &SyncHub,
        who: &Principal,
    ) -> Result<Vec<crate::storage::store::RecordRow>, crate::engine::docs::DocsError> {
        // Without filters beyond the index's, the index stops at the limit.
        let index_limit = if self.to.is_none() && self.text.is_none() {
            self.limit
        } else {
            usize::MAX
        };
        let rows = hub.list_records(who, &self.filter, index_limit)?;
        let mut out = Vec::new();
        for row in rows {
            if self.to.is_some_and(|t| row.entry.created_at > t) {
                continue;
            }
            if let Some(q) = &self.text {
                let Ok(id) = row.id.parse::<DocId>() else {
                    continue;
                };
                let text = serde_json::to_string(&hub.record_fields(id)?).unwrap_or_default();
                if !text.to_lowercase().contains(q) {
                    continue;
                }
            }
            out.push(row);
            if out.len() >= self.limit {
                break;
            }
        }
        Ok(out)
    }
}

async fn list(
    desk: Arc<Desk>,
    headers: HeaderMap,
    query: std::collections::HashMap<String, String>,
) -> warp::reply::Response {
    let (caller, selection) = match desk.reading(&headers, &query, ROWS_MAX) {
        Ok(read) => read,
        Err(refused) => return refused.reply(),
    };
    let hub = desk.hub.clone();
    let rows = tokio::task::spawn_blocking(move || {
        selection
            .rows(&hub, &caller.principal)?
            .into_iter()
            .map(|row| row_json(&hub, row))
            .collect::<Result<Vec<_>, crate::engine::docs::DocsError>>()
    })
    .await;
    match rows {
        Ok(Ok(rows)) => ok(serde_json::json!({ "records": rows })),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "record index unavailable"),
    }
}

/// A list row as the desk reads it, in the list and in the event stream:
/// the index's fields and whether its claimed times were implausible (one
/// lookup in a small tree, no document loaded). Blocking.
pub(crate) fn row_json(
    hub: &SyncHub,
    row: crate::storage::store::RecordRow,
) -> Result<serde_json::Value, crate::engine::docs::DocsError> {
    let clock = match row.id.parse::<DocId>() {
        Ok(id) => hub.clock_skew(id)?,
        Err(_) => None,
    };
    let mut value = serde_json::json!(row);
    value["clock"] = serde_json::json!(clock);
    Ok(value)
}

/// Most records one export holds.
const EXPORT_ROWS_MAX: usize = 100_000;

async fn export(
    desk: Arc<Desk>,
    headers: HeaderMap,
    format: &'static str,
    query: std::collections::HashMap<String, String>,
) -> warp::reply::Response {
    let (caller, mut selection) = match desk.reading(&headers, &query, EXPORT_ROWS_MAX) {
        Ok(read) => read,
        Err(refused) => return refused.reply(),
    };
    let contacts = query
        .get("contacts")
        .is_some_and(|v| v == "1" || v == "true");
    let kind = match format {
        "geojson" => Kind::PatrolNote,
        _ => match query.get("kind").and_then(|k| Kind::parse(k)) {
            Some(kind) => kind,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "kind is required: one CSV per kind",
                )
            }
        },
    };
    if kind == Kind::FeedbackContact && !contacts {
        return error(
            StatusCode::FORBIDDEN,
            "contact details leave only when asked for explicitly (contacts=1)",
        );
    }
    selection.filter.kind = Some(kind.name().to_string());
    let hub = desk.hub.clone();
    let who = caller.clone();
    let built = tokio::task::spawn_blocking(move || {
        let rows = selection.rows(&hub, &who.principal)?;
        let records = rows
            .iter()
            .filter_map(|row| row.id.parse::<DocId>().ok())
            .map(|id| hub.export_record(&who.principal, id, contacts))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
        Ok::<_, crate::engine::docs::DocsError>(records)
    })
    .await;
    let records = match built {
        Ok(Ok(records)) => records,
        _ => return error(StatusCode::SERVICE_UNAVAILABLE, "record store unavailable"),
    };
    let audit = desk.hub.audit().clone();
    let details = serde_json::json!({
        "user": caller.principal.user,
        "format": format,
        "kind": kind.name(),
        "records": records.len(),
        "contacts": contacts,
    });
    let _ = tokio::task::spawn_blocking(move || {
        audit.record(
            if contacts {
                "restricted_export"
            } else {
                "export"
            },
            details,
        )
    })
    .await;
    let (body, content_type, extension) = match format {
        "geojson" => (
            crate::api::export::geojson(&records).to_string(),
            "application/geo+json",
            "geojson",
        ),
        _ => (
            crate::api::export::csv(kind, &records, contacts),
            "text/csv; charset=utf-8",
            "csv",
        ),
    };
    let reply = warp::reply::with_header(body, "content-type", content_type);
    warp::reply::with_header(
        reply,
        "content-disposition",
        format!(
            "attachment; filename=\"baraza-{}.{extension}\"",
            kind.name()
        ),
    )
    .into_response()
}

async fn show(desk: Arc<Desk>, headers: HeaderMap, id: String) -> warp::reply::Response {
    let caller = match desk.caller(&headers, false) {
        Ok((caller, _)) => caller,
        Err(refused) => return refused.reply(),
    };
    let Ok(doc) = id.parse::<DocId>() else {
        return error(StatusCode::NOT_FOUND, "no such record");
    };
    let hub = desk.hub.clone();
    let devices = desk.devices.clone();
    match tokio::task::spawn_blocking(move || hub.record_view(&caller, doc, &devices)).await {
        Ok(Ok(Some(view))) => warp::reply::json(&view).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, "no such record"),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "record store unavailable"),
    }
}

fn desk_error(err: DeskError) -> warp::reply::Response {
    match err {
        DeskError::NotFound => error(StatusCode::NOT_FOUND, "no such record"),
        DeskError::Edit(message) => error(StatusCode::BAD_REQUEST, message),
        DeskError::Refused { rule, message } => warp::reply::with_status(
            warp::reply::json(&serde_json::json!({ "error": message, "rule": rule })),
            // Not a matter of who asks: the record must change first.
            if rule == Some(baraza_records::access::rules::UNRESOLVED_CONFLICT) {
                StatusCode::CONFLICT
            } else {
                StatusCode::FORBIDDEN
            },
        )
        .into_response(),
        DeskError::Docs(err) => {
            tracing::error!(error = %err, "review desk change not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the change was not stored; try again",
            )
        }
    }
}

async fn decide(
    desk: Arc<Desk>,
    headers: HeaderMap,
    id: String,
    body: Bytes,
) -> warp::reply::Response {
    let caller = match desk.caller(&headers, true) {
        Ok((caller, _)) => caller,
        Err(refused) => return refused.reply(),
    };
    let Ok(doc) = id.parse::<DocId>() else {
        return error(StatusCode::NOT_FOUND, "no such record");
    };
    let Ok(request) = serde_json::from_slice::<DecisionRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"decision\": \"approved\" or \"returned\", \"comment\"}",
        );
    };
    let Some(decision) =
        baraza_records::ReviewState::parse(&request.decision).filter(|d| d.is_decision())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "decision must be approved or returned",
        );
    };
    let comment = request.comment.filter(|c| !c.trim().is_empty());
    if decision == baraza_records::ReviewState::Returned && comment.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "a return needs a comment saying what to fix",
        );
    }
    let user = caller.principal.user.clone();
    let outcome = desk
        .hub
        .author(&caller, doc, |d, at| {
            ops::review(
                d,
                decision,
                comment.as_deref().map(|c| (user.as_str(), c)),
                at,
            )
        })
        .await;
    match outcome {
        Ok(_) => ok(serde_json::json!({ "record": id, "review_state": decision })),
        Err(err) => desk_error(err),
    }
}

async fn resolve(
    desk: Arc<Desk>,
    headers: HeaderMap,
    id: String,
    body: Bytes,
) -> warp::reply::Response {
    let caller = match desk.caller(&headers, true) {
        Ok((caller, _)) => caller,
        Err(refused) => return refused.reply(),
    };
    let Ok(doc) = id.parse::<DocId>() else {
        return error(StatusCode::NOT_FOUND, "no such record");
    };
    let Ok(request) = serde_json::from_slice::<ResolveRequest>(&body) else {
        return error(StatusCode::BAD_REQUEST, "expected {\"path\", \"value\"}");
    };
    let outcome = desk
        .hub
        .author(&caller, doc, |d, at| {
            set_path(d, &request.path, &request.value, at)
        })
        .await;
    match outcome {
        Ok(_) => ok(serde_json::json!({ "record": id, "path": request.path })),
        Err(err) => desk_error(err),
    }
}

/// Sets a field by its conflict path: `field` or `list.index.field`.
fn set_path(
    doc: &mut automerge::Automerge,
    path: &str,
    text: &str,
    at: ops::Stamp<'_>,
) -> Result<(), baraza_records::EditError> {
    let kind: Kind = Header::read(doc)?.kind;
    let unknown = || baraza_records::EditError::UnknownField {
        field: path.to_string(),
        kind: kind.name(),
        known: baraza_records::schema::names(kind.fields()),
    };
    let parse = |ty: FieldType| {
        FieldValue::parse(ty, text).map_err(|reason| baraza_records::EditError::BadValue {
            field: path.to_string(),
            reason,
        })
    };
    match path.split('.').collect::<Vec<_>>().as_slice() {
        [field] => {
            let spec = kind.field(field).ok_or_else(unknown)?;
            ops::set(doc, field, parse(spec.ty)?, at)
        }
        [list, index, field] => {
            let spec = kind.field(list).ok_or_else(unknown)?;
            let part = spec
                .parts()
                .iter()
                .find(|p| p.name == *field)
                .ok_or_else(unknown)?;
            let index: usize = index.parse().map_err(|_| unknown())?;
            ops::set_item(doc, list, index, field, parse(part.ty)?, at)
        }
        _ => Err(unknown()),
    }
}
