//! The supervisors' review desk API against a real server: sign-in (only
//! supervisors, a non-supervisor answered as a wrong password is; cookie
//! flags; CSRF), listing and filtering, a record with
//! its conflict, resolving it, returning with a comment that reaches the
//! officer's tablet at its next sync, approving, and the refusals an
//! officer and a supervisor of another area get.

use baraza_tests::{
    https_request_with, DeskSession, HttpReply, ReviewWorld, ServerProcess, Tablet,
    HARNESS_PASSWORD,
};
use serde_json::json;

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// A supervisor's desk session whose cookie carries the flags a browser
/// must be told.
async fn open<'a>(server: &'a ServerProcess, user: &str) -> DeskSession<'a> {
    let desk = DeskSession::open(server, user).await;
    for flag in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(desk.set_cookie.contains(flag), "{}", desk.set_cookie);
    }
    desk
}

async fn login(server: &ServerProcess, user: &str, password: &str) -> HttpReply {
    https_request_with(
        server,
        "POST",
        "/review/api/login",
        &[],
        Some(&json!({ "user": user, "password": password })),
    )
    .await
}

/// The ids listed for `query`, sorted.
async fn listed(desk: &DeskSession<'_>, query: &str) -> Vec<String> {
    let mut ids: Vec<String> = desk
        .rows(query)
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_reviews_resolves_returns_and_approves_through_the_api() {
    // A meeting both edited offline (a conflict on the place), submitted;
    // a patrol note, submitted; a draft.
    let world = ReviewWorld::open().await;
    let (server, officer, liaison) = (&world.server, &world.officer, &world.liaison);
    let meeting = world.meeting.clone();
    server.add_user("sgt.kamau", "supervisor", &["westlands"]);
    let patrol = officer
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    officer.submit(&patrol).unwrap();
    let draft = officer
        .create_record("patrol_note", "kibera", vec![kv("beat", "B5")])
        .unwrap();
    liaison.sync().await;
    officer.sync().await;

    // Only supervisors sign in. A wrong password is refused, and so is an
    // officer's right one, with the same answer: the sign-in form does not
    // tell who has an account of which role.
    let wrong = login(server, "sgt.wanjiru", "not the password").await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert_eq!(
        wrong.json(),
        json!({ "error": "wrong user name or password" })
    );
    let officer_login = login(server, "cpl.otieno", HARNESS_PASSWORD).await;
    assert_eq!(
        (officer_login.status, &officer_login.body),
        (wrong.status, &wrong.body)
    );
    assert!(officer_login.header("set-cookie").is_none());
    let desk = open(server, "sgt.wanjiru").await;
    assert_eq!(
        https_request_with(server, "GET", "/review/api/records", &[], None)
            .await
            .status,
        401,
        "no cookie, no records"
    );

    // Listing and filters.
    let mut submitted = vec![meeting.clone(), patrol.clone()];
    submitted.sort();
    assert_eq!(listed(&desk, "?state=submitted").await, submitted);
    assert_eq!(listed(&desk, "?kind=meeting").await, vec![meeting.clone()]);
    assert_eq!(listed(&desk, "?state=draft").await, vec![draft.clone()]);
    assert_eq!(listed(&desk, "?q=LIGHTING").await, vec![meeting.clone()]);
    assert!(listed(&desk, "?area=westlands").await.is_empty());
    assert!(listed(&desk, "?from=99999999999999").await.is_empty());
    assert_eq!(listed(&desk, "?to=0").await, Vec::<String>::new());

    // The record with its conflict, each value with its author.
    let view = desk
        .get(&format!("/review/api/records/{meeting}"))
        .await
        .json();
    let conflicts = view["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{view}");
    assert_eq!(conflicts[0]["path"], "place");
    let users: Vec<&str> = conflicts[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["user"].as_str().unwrap())
        .collect();
    assert!(
        users.contains(&"cpl.otieno") && users.contains(&"lia.achieng"),
        "{users:?}"
    );

    // State-changing requests need the CSRF token.
    let forged = https_request_with(
        server,
        "POST",
        &format!("/review/api/records/{meeting}/resolve"),
        &[("Cookie", desk.cookie.as_str())],
        Some(&json!({ "path": "place", "value": "Social hall" })),
    )
    .await;
    assert_eq!(forged.status, 403);

    // Resolve the conflict with one of its values.
    let resolved = desk
        .post(
            &format!("/review/api/records/{meeting}/resolve"),
            json!({ "path": "place", "value": "Social hall" }),
        )
        .await;
    assert_eq!(resolved.status, 200, "{}", resolved.body);
    let view = desk
        .get(&format!("/review/api/records/{meeting}"))
        .await
        .json();
    assert!(view["conflicts"].as_array().unwrap().is_empty(), "{view}");
    assert_eq!(view["fields"]["place"], "Social hall");

    // A return needs a comment; with one it stands.
    let bare = desk
        .post(
            &format!("/review/api/records/{meeting}/decision"),
            json!({ "decision": "returned" }),
        )
        .await;
    assert_eq!(bare.status, 400);
    let returned = desk
        .post(
            &format!("/review/api/records/{meeting}/decision"),
            json!({ "decision": "returned", "comment": "add the attendee count" }),
        )
        .await;
    assert_eq!(returned.status, 200, "{}", returned.body);
    let approved = desk
        .post(
            &format!("/review/api/records/{patrol}/decision"),
            json!({ "decision": "approved" }),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(
        listed(&desk, "?state=returned").await,
        vec![meeting.clone()]
    );
    assert_eq!(listed(&desk, "?state=approved").await, vec![patrol.clone()]);
    let figures = desk.get("/review/api/indicators").await.json();
    assert_eq!(figures["decided"], 2, "{figures}");
    assert_eq!(figures["returned_at_least_once"], 1);
    assert_eq!(figures["share_returned"], 0.5);

    // The liaison's tablet shows the return, with the comment and who
    // made it, at its next sync; the officer's shows the approval.
    liaison.sync().await;
    let record = liaison.get(&meeting).unwrap();
    assert_eq!(record.review_state, baraza_records::ReviewState::Returned);
    assert_eq!(record.review_comments.len(), 1);
    assert_eq!(record.review_comments[0].by, "sgt.wanjiru");
    assert_eq!(record.review_comments[0].text, "add the attendee count");
    assert_eq!(liaison.field(&meeting, "place").value, "Social hall");
    assert!(liaison.field(&meeting, "place").conflicts.is_empty());
    officer.sync().await;
    assert_eq!(
        officer.get(&patrol).unwrap().review_state,
        baraza_records::ReviewState::Approved
    );
    let history = liaison.history(&meeting).unwrap();
    assert_eq!(
        history.last().and_then(|h| h.message.clone()).as_deref(),
        Some("review returned by sgt.wanjiru")
    );

    // A supervisor of another area sees none of it and decides nothing.
    let away = open(server, "sgt.kamau").await;
    assert!(listed(&away, "").await.is_empty());
    assert_eq!(
        away.get(&format!("/review/api/records/{meeting}"))
            .await
            .status,
        404
    );
    let refused = away
        .post(
            &format!("/review/api/records/{draft}/decision"),
            json!({ "decision": "approved" }),
        )
        .await;
    assert_eq!(refused.status, 404);

    // Decisions are audited with the supervisor; signing out ends the session.
    let log = server.audit_entries();
    // The officer's attempt is audited with its real reason.
    assert!(log.iter().any(|e| e["event"] == "review_login_refused"
        && e["details"]["user"] == "cpl.otieno"
        && e["details"]["reason"] == "not a supervisor"));
    assert!(log.iter().any(|e| e["event"] == "review_decision"
        && e["details"]["decision"] == "returned"
        && e["details"]["user"] == "sgt.wanjiru"));
    let out = desk.post("/review/api/logout", json!({})).await;
    assert_eq!(out.status, 200);
    assert_eq!(desk.get("/review/api/records").await.status, 401);
}

/// Parses CSV as RFC 4180 writes it (quoted cells, doubled quotes, CRLF).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

fn column<'r>(rows: &'r [Vec<String>], name: &str) -> Vec<&'r str> {
    let at = rows[0]
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", rows[0]));
    rows[1..].iter().map(|r| r[at].as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_parse_hold_the_right_rows_and_leave_contacts_out_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("cpl.otieno", "officer", &["kibera"]);
    server.add_user("sgt.wanjiru", "supervisor", &["kibera"]);
    let officer = Tablet::for_user(&server, "officer's tablet", "cpl.otieno", "kibera");

    let title = "Baraza, \"lighting\" <script>alert(1)</script>";
    let meeting = officer
        .create_record("meeting", "kibera", vec![kv("title", title)])
        .unwrap();
    officer
        .add_item(&meeting, "attendees", vec![kv("name", "Mama Njeri")])
        .unwrap();
    let patrol = officer
        .create_record("patrol_note", "kibera", vec![kv("beat", "B4")])
        .unwrap();
    officer
        .add_item(
            &patrol,
            "observations",
            vec![kv("text", "Broken street light")],
        )
        .unwrap();
    officer
        .add_item(&patrol, "observations", vec![kv("text", "No fix indoors")])
        .unwrap();
    officer
        .set_gps(&patrol, 0, "-1.3133", "36.7869", 12)
        .unwrap();
    let feedback = officer
        .create_record(
            "feedback",
            "kibera",
            vec![kv("category", "complaint"), kv("about", "Noise at night")],
        )
        .unwrap();
    let contact = officer
        .create_record(
            "feedback_contact",
            "kibera",
            vec![kv("feedback", &feedback), kv("phone", "+254 722 000 111")],
        )
        .unwrap();
    officer.set(&feedback, "contact", &contact).unwrap();
    officer
        .add_item(
            &meeting,
            "concerns",
            vec![kv("topic", "Lighting"), kv("text", "The road is dark")],
        )
        .unwrap();
    officer
        .follow_up(&feedback, "acknowledged", "Called back")
        .unwrap();
    officer
        .follow_up(&feedback, "resolved", "Noise stopped")
        .unwrap();
    assert_eq!(officer.sync().await.refused, 0);

    let desk = open(&server, "sgt.wanjiru").await;

    let reply = desk.get("/review/api/export.csv?kind=meeting").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/csv"));
    let rows = parse_csv(&reply.body);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(column(&rows, "id"), vec![meeting.as_str()]);
    assert_eq!(column(&rows, "title"), vec![title]);
    assert_eq!(column(&rows, "attendees_count"), vec!["1"]);
    assert!(
        desk.get("/review/api/export.csv?kind=meeting&area=westlands")
            .await
            .body
            .lines()
            .count()
            == 1
    );

    // Feedback: no contact details unless asked for, and then audited.
    let plain = desk.get("/review/api/export.csv?kind=feedback").await;
    assert_eq!(plain.status, 200);
    assert!(!plain.body.contains("722 000 111"));
    assert!(!plain.body.contains("contact.phone"));
    assert_eq!(
        column(&parse_csv(&plain.body), "about"),
        vec!["Noise at night"]
    );
    let asked = desk
        .get("/review/api/export.csv?kind=feedback&contacts=1")
        .await;
    // A leading + would start a formula in a spreadsheet: the apostrophe
    // makes it text there (and is not shown).
    assert_eq!(
        column(&parse_csv(&asked.body), "contact.phone"),
        vec!["'+254 722 000 111"]
    );
    assert_eq!(
        desk.get("/review/api/export.csv?kind=feedback_contact")
            .await
            .status,
        403
    );
    assert!(server
        .audit_entries()
        .iter()
        .any(|e| e["event"] == "restricted_export" && e["details"]["user"] == "sgt.wanjiru"));

    // GeoJSON: the observation with a fix, longitude first.
    let geo = desk.get("/review/api/export.geojson").await;
    assert_eq!(geo.status, 200);
    let geo = geo.json();
    assert_eq!(geo["type"], "FeatureCollection");
    let features = geo["features"].as_array().unwrap();
    assert_eq!(features.len(), 1, "{geo}");
    assert_eq!(
        features[0]["geometry"]["coordinates"],
        json!([36.7869, -1.3133])
    );
    assert_eq!(features[0]["properties"]["record"], patrol.as_str());
    assert_eq!(features[0]["properties"]["text"], "Broken street light");

    // Indicators for command and oversight.
    let figures = desk.get("/review/api/indicators?area=kibera").await;
    assert_eq!(figures.status, 200, "{}", figures.body);
    let figures = figures.json();
    let meetings = figures["meetings"].as_array().unwrap();
    assert_eq!(meetings.len(), 1, "{figures}");
    assert_eq!(meetings[0]["area"], "kibera");
    assert_eq!(meetings[0]["held"], 1);
    assert_eq!(meetings[0]["attendance"], 1);
    assert_eq!(figures["concerns_by_topic"]["lighting"], 1);
    assert_eq!(
        figures["feedback"],
        json!([{ "category": "complaint", "status": "resolved", "count": 1 }])
    );
    for key in ["median_days_to_acknowledged", "median_days_to_resolved"] {
        let days = figures[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {figures}"));
        assert!((0.0..1.0).contains(&days), "{key}: {days}");
    }
    assert_eq!(figures["decided"], 0);
    assert!(figures["share_returned"].is_null());
    let away = desk
        .get("/review/api/indicators?area=westlands")
        .await
        .json();
    assert!(away["meetings"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_from_the_binary_with_a_strict_policy_and_no_inline_code() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let page = https_request_with(&server, "GET", "/review", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page
        .header("content-security-policy")
        .expect("a CSP")
        .to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    // Every script is a file of our own; no inline script, style or handler.
    let html = page.body.to_lowercase();
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/review/").count()
    );
    assert!(!html.contains("<style") && !html.contains(" style=") && !html.contains(" onclick="));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    for (path, kind) in [
        ("/review/app.js", "text/javascript"),
        ("/review/app.css", "text/css"),
    ] {
        let asset = https_request_with(&server, "GET", path, &[], None).await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert!(asset.header("content-security-policy").is_some());
    }
    // The script builds the page from text, never from markup.
    let js = https_request_with(&server, "GET", "/review/app.js", &[], None)
        .await
        .body;
    assert!(
        !js.contains("innerHTML") && !js.contains("insertAdjacentHTML") && !js.contains("eval(")
    );
    // API answers carry the same policy.
    let api = https_request_with(&server, "GET", "/review/api/records", &[], None).await;
    assert_eq!(api.status, 401);
    assert!(api.header("content-security-policy").is_some());
}
