//! A supervisor signed in at the review desk through its API, holding
//! what a browser would (session cookie, CSRF token), so the review tests
//! read as a desk's requests rather than as header plumbing.

use crate::api::{https_request_with, HttpReply};
use crate::server_process::{ServerProcess, HARNESS_PASSWORD};

/// A supervisor signed in at the review desk through its API, holding what
/// a browser would: the session cookie and the CSRF token.
pub struct DeskSession<'a> {
    server: &'a ServerProcess,
    /// The session cookie, as `name=value`.
    pub cookie: String,
    /// The session's CSRF token, sent with every state-changing request.
    pub csrf: String,
    /// The whole `Set-Cookie` header the sign-in answered with (its flags).
    pub set_cookie: String,
}

impl<'a> DeskSession<'a> {
    /// Signs `user` in with the harness password; the sign-in must succeed.
    pub async fn open(server: &'a ServerProcess, user: &str) -> DeskSession<'a> {
        let reply = https_request_with(
            server,
            "POST",
            "/review/api/login",
            &[],
            Some(&serde_json::json!({ "user": user, "password": HARNESS_PASSWORD })),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let set_cookie = reply
            .header("set-cookie")
            .expect("a session cookie")
            .to_string();
        let cookie = set_cookie.split(';').next().unwrap_or_default().to_string();
        let csrf = reply.json()["csrf"]
            .as_str()
            .expect("a CSRF token")
            .to_string();
        DeskSession {
            server,
            cookie,
            csrf,
            set_cookie,
        }
    }

    /// A GET with the session cookie.
    pub async fn get(&self, path: &str) -> HttpReply {
        https_request_with(self.server, "GET", path, &[("Cookie", &self.cookie)], None).await
    }

    /// A POST with the session cookie and CSRF token.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> HttpReply {
        let headers = [
            ("Cookie", self.cookie.as_str()),
            ("X-CSRF-Token", self.csrf.as_str()),
        ];
        https_request_with(self.server, "POST", path, &headers, Some(&body)).await
    }

    /// The record view of `id`, which must answer 200.
    pub async fn record(&self, id: &str) -> serde_json::Value {
        let reply = self.get(&format!("/review/api/records/{id}")).await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.body);
        reply.json()
    }

    /// The list rows for `query` (`""` or `?state=...`), which must answer 200.
    pub async fn rows(&self, query: &str) -> Vec<serde_json::Value> {
        let reply = self.get(&format!("/review/api/records{query}")).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        reply.json()["records"]
            .as_array()
            .cloned()
            .expect("a records array")
    }
}
