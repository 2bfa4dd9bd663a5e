//! An administrator enrols a tablet like anyone else and manages users
//! over HTTPS with its token: adds an officer, changes their areas,
//! disables them (a disabled user cannot enrol) and enables them again.
//! Officers' devices, devices without a user, and requests without a valid
//! token are refused; every change is audited under the administrator's
//! name, and no password reaches the log, the audit log or a reply.

use std::path::Path;

use baraza_client::{Client, ClientError, Enrolment};
use baraza_tests::{https_request, run_server_command, HttpReply, ServerProcess};
use serde_json::json;

const ADMIN_PASSWORD: &str = "keys to the station";
const OFFICER_PASSWORD: &str = "night patrol B4";

async fn enroll(
    server: &ServerProcess,
    dir: &Path,
    user: &str,
    password: &str,
) -> Result<Enrolment, ClientError> {
    Client::open(dir, &baraza_tests::new_key())
        .unwrap()
        .enroll(&server.url(), &server.ca_path(), user, password, "tablet")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_manages_users_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let bootstrap = run_server_command(
        &data,
        &["user", "add", "--name", "amina", "--role", "admin"],
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert!(bootstrap.status.success(), "{bootstrap:?}");
    let server = ServerProcess::start(&data);

    let admin = enroll(&server, &tmp.path().join("admin"), "amina", ADMIN_PASSWORD)
        .await
        .unwrap();
    assert_eq!(admin.role, "admin");
    let token = admin.token.clone();
    let api = |method: &'static str, path: String, body: Option<serde_json::Value>| {
        let token = token.clone();
        let server = &server;
        async move { https_request(server, method, &path, Some(&token), body.as_ref()).await }
    };
    let error_of = |reply: &HttpReply| {
        reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    let listed = api("GET", "/v1/admin/users".into(), None).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(
        listed.json(),
        json!({ "users": [
            { "name": "amina", "role": "admin", "areas": [], "disabled": false, "locked": false }
        ]})
    );

    // Bad input is refused with the reason, as on the command line.
    let officer = |password: &str, role: &str| json!({ "name": "otieno", "role": role, "areas": ["mathare"], "password": password });
    let weak = api(
        "POST",
        "/v1/admin/users".into(),
        Some(officer("password123", "officer")),
    )
    .await;
    assert_eq!(weak.status, 400, "{weak:?}");
    assert!(error_of(&weak).contains("common passwords"), "{weak:?}");
    let role = api(
        "POST",
        "/v1/admin/users".into(),
        Some(officer(OFFICER_PASSWORD, "chief")),
    )
    .await;
    assert_eq!(role.status, 400, "{role:?}");
    assert!(error_of(&role).contains("unknown role"), "{role:?}");
    let typo = api(
        "POST",
        "/v1/admin/users".into(),
        Some(json!({ "name": "otieno", "role": "officer", "area": ["mathare"], "password": OFFICER_PASSWORD })),
    )
    .await;
    assert_eq!(typo.status, 400, "{typo:?}");
    assert!(error_of(&typo).contains("unknown field `area`"), "{typo:?}");
    let bad_name = api(
        "POST",
        "/v1/admin/users".into(),
        Some(json!({ "name": "o/tieno", "role": "officer", "password": OFFICER_PASSWORD })),
    )
    .await;
    assert_eq!(bad_name.status, 400, "{bad_name:?}");

    let added = api(
        "POST",
        "/v1/admin/users".into(),
        Some(officer(OFFICER_PASSWORD, "officer")),
    )
    .await;
    assert_eq!(added.status, 201, "{added:?}");
    assert_eq!(
        added.json(),
        json!({ "user": {
            "name": "otieno", "role": "officer", "areas": ["mathare"],
            "disabled": false, "locked": false
        }})
    );
    let again = api(
        "POST",
        "/v1/admin/users".into(),
        Some(officer(OFFICER_PASSWORD, "officer")),
    )
    .await;
    assert_eq!(again.status, 409, "{again:?}");

    let moved = api(
        "PUT",
        "/v1/admin/users/otieno/areas".into(),
        Some(json!({ "areas": ["mathare", "kariobangi"] })),
    )
    .await;
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_eq!(
        moved.json()["user"]["areas"],
        json!(["mathare", "kariobangi"])
    );
    let shown = api("GET", "/v1/admin/users/otieno".into(), None).await;
    assert_eq!(
        shown.json()["user"]["areas"],
        json!(["mathare", "kariobangi"])
    );
    for (method, path) in [
        ("GET", "/v1/admin/users/ghost"),
        ("POST", "/v1/admin/users/ghost/disable"),
        ("POST", "/v1/admin/users/ghost/release"),
    ] {
        let missing = api(method, path.into(), None).await;
        assert_eq!(missing.status, 404, "{method} {path}: {missing:?}");
        assert!(error_of(&missing).contains("ghost"), "{missing:?}");
    }

    // The officer enrols and gets the new areas; their token is no key to
    // the admin API.
    let officer_tablet = enroll(
        &server,
        &tmp.path().join("officer-1"),
        "otieno",
        OFFICER_PASSWORD,
    )
    .await
    .unwrap();
    assert_eq!(officer_tablet.areas, ["mathare", "kariobangi"]);
    let forbidden = https_request(
        &server,
        "GET",
        "/v1/admin/users",
        Some(&officer_tablet.token),
        None,
    )
    .await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    assert!(
        error_of(&forbidden).contains("administrator"),
        "{forbidden:?}"
    );
    let forbidden = https_request(
        &server,
        "POST",
        "/v1/admin/users/otieno/release",
        Some(&officer_tablet.token),
        None,
    )
    .await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    // Nor is a device registered by the operator, which has no user.
    let kiosk = server.add_device("kiosk");
    let forbidden = https_request(&server, "GET", "/v1/admin/users", Some(&kiosk), None).await;
    assert_eq!(forbidden.status, 403, "{forbidden:?}");
    for token in [None, Some("bz_not_a_real_token")] {
        let unknown = https_request(&server, "GET", "/v1/admin/users", token, None).await;
        assert_eq!(unknown.status, 401, "{unknown:?}");
        assert_eq!(unknown.header("www-authenticate"), Some("Bearer"));
        assert!(unknown.json()["error"].is_string(), "{unknown:?}");
    }

    // Disabled, the officer cannot enrol another tablet; enabled, they can.
    let disabled = api("POST", "/v1/admin/users/otieno/disable".into(), None).await;
    assert_eq!(disabled.status, 200, "{disabled:?}");
    assert_eq!(disabled.json()["user"]["disabled"], true);
    let refused = enroll(
        &server,
        &tmp.path().join("officer-2"),
        "otieno",
        OFFICER_PASSWORD,
    )
    .await;
    // Refused with the answer any failed login gets: only administrators
    // learn that the account is disabled.
    assert!(
        matches!(refused, Err(ClientError::Unauthorized { ref message, .. }) if message == "wrong user name or password"),
        "{refused:?}"
    );
    let enabled = api("POST", "/v1/admin/users/otieno/enable".into(), None).await;
    assert_eq!(enabled.status, 200, "{enabled:?}");
    assert_eq!(enabled.json()["user"]["disabled"], false);
    enroll(
        &server,
        &tmp.path().join("officer-3"),
        "otieno",
        OFFICER_PASSWORD,
    )
    .await
    .unwrap();

    // An administrator cannot lock themselves out of the API.
    let own = api("POST", "/v1/admin/users/amina/disable".into(), None).await;
    assert_eq!(own.status, 409, "{own:?}");

    // The audit log names who changed what, and holds no password.
    let exported = run_server_command(&data, &["audit", "export"], "");
    assert!(exported.status.success(), "{exported:?}");
    let export = String::from_utf8_lossy(&exported.stdout).into_owned();
    let entries: Vec<serde_json::Value> = export
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by_amina = |event: &str| {
        entries
            .iter()
            .filter(|e| e["event"] == event && e["details"]["by"]["user"] == "amina")
            .count()
    };
    assert_eq!(
        by_amina("user_added"),
        1,
        "only the add that happened: {export}"
    );
    assert_eq!(by_amina("user_areas"), 1, "{export}");
    assert_eq!(by_amina("user_disabled"), 2, "disable and enable: {export}");
    let forbidden = entries
        .iter()
        .filter(|e| e["event"] == "admin_forbidden")
        .count();
    assert_eq!(forbidden, 3, "{export}");
    for secret in [ADMIN_PASSWORD, OFFICER_PASSWORD, "password123"] {
        assert!(!export.contains(secret), "a password reached the audit log");
        assert!(
            !server.log().contains(secret),
            "a password reached the server log"
        );
    }
    for reply in [&listed, &added, &moved] {
        assert!(!reply.body.contains("argon2") && !reply.body.contains(OFFICER_PASSWORD));
    }
}
