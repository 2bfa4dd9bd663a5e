//! HTTPS requests to a [`ServerProcess`] as tests make them: one
//! connection per request, a bearer token or extra headers, a JSON body,
//! and a failure of the test (not an error value) when the server does
//! not answer in time.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use rustls::pki_types::ServerName;

pub use crate::http::HttpReply;
use crate::http::{self, Endpoint, Request};
use crate::net::{tls_connector, FRAME_TIMEOUT};
use crate::server_process::ServerProcess;

/// A plain HTTPS GET (one connection, `Connection: close`) with an optional
/// bearer token: the status and the body.
pub async fn https_get(server: &ServerProcess, path: &str, token: Option<&str>) -> (u16, String) {
    let reply = https_request(server, "GET", path, token, None).await;
    (reply.status, reply.body)
}

/// One HTTPS request (one connection, `Connection: close`) with an optional
/// bearer token and JSON body.
pub async fn https_request(
    server: &ServerProcess,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&serde_json::Value>,
) -> HttpReply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    https_request_with(server, method, path, &headers, json).await
}

/// One HTTPS request with extra headers (cookies, CSRF tokens).
pub async fn https_request_with(
    server: &ServerProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&serde_json::Value>,
) -> HttpReply {
    https_exchange(server, None, method, path, headers, json).await
}

/// One HTTPS request whose body is `body` as it is (not JSON): an
/// attachment's chunk.
pub async fn https_request_raw(
    server: &ServerProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    let request = Request {
        method,
        path,
        headers,
        body: Some(body),
    };
    http::send(&endpoint(server), request, FRAME_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the server answers in time: {e:#}"))
}

/// [`https_request_with`] from the loopback address `local`: the server
/// throttles and counts connections per address.
pub async fn https_request_from(
    server: &ServerProcess,
    local: IpAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&serde_json::Value>,
) -> HttpReply {
    https_exchange(server, Some(local), method, path, headers, json).await
}

/// The server as the HTTP client reaches it: TLS trusting its dev CA,
/// the certificate checked for `localhost`.
pub fn endpoint(server: &ServerProcess) -> Endpoint {
    endpoint_at(server.addr(), &server.ca_path())
}

/// [`endpoint`] for the server at `addr` whose CA file is `ca`.
pub fn endpoint_at(addr: SocketAddr, ca: &Path) -> Endpoint {
    let name = ServerName::try_from("localhost").expect("a server name");
    Endpoint::tls(addr, tls_connector(ca), name)
}

async fn https_exchange(
    server: &ServerProcess,
    local: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&serde_json::Value>,
) -> HttpReply {
    let body = json.map(|j| j.to_string());
    let endpoint = endpoint(server).from(local);
    let request = Request {
        method,
        path,
        headers,
        body: body.as_deref(),
    };
    http::send(&endpoint, request, FRAME_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the server answers in time: {e:#}"))
}
