//! A tablet whose clock runs twenty years ahead files a patrol note. The
//! merge trusts no clock, so the record is taken and reaches other
//! devices like any other; but the server notes when it received each
//! change, beside the time the change claims, and flags the record on the
//! review desk (list and record, with both times in its history) and in
//! the CSV export, and a browser shows the flag. A record from a tablet
//! with a right clock is not flagged.

use automerge::{ActorId, Automerge};
use baraza_protocol::{to_heads, DocId, Message, Push};
use baraza_records::ops::{self, FieldValue, Stamp};
use baraza_records::{Header, Kind, SCHEMA_VERSION};
use baraza_tests::webdriver::Browser;
use baraza_tests::{
    device_of, https_request_with, RawConnection, ServerProcess, Tablet, HARNESS_PASSWORD,
};
use serde_bytes::ByteBuf;
use serde_json::json;

const OFFICER: &str = "cpl.otieno";
const SUPERVISOR: &str = "sgt.wanjiru";
const YEAR_MS: i64 = 31_557_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn actor_for(device: &str) -> ActorId {
    let mut bytes = hex::decode(device).unwrap();
    bytes.extend_from_slice(&[7; 8]);
    ActorId::from(bytes)
}

/// A submitted patrol note made under `device`'s actor at `at_ms`, as the
/// tablet's clock says.
fn note_made_at(device: &str, at_ms: i64) -> (DocId, Automerge) {
    let id = DocId::from_bytes(rand::random());
    let header = Header {
        id: id.to_string(),
        kind: Kind::PatrolNote,
        area: "kibera".into(),
        created_by_user: OFFICER.into(),
        created_by_device: device.to_string(),
        created_at: at_ms,
        schema: SCHEMA_VERSION,
    };
    let stamp = || Stamp {
        now_ms: at_ms,
        by: OFFICER,
    };
    let mut doc = Automerge::new();
    doc.set_actor(actor_for(device));
    ops::create(&mut doc, &header, stamp()).unwrap();
    ops::set(&mut doc, "beat", FieldValue::Str("B9".into()), stamp()).unwrap();
    ops::review(
        &mut doc,
        baraza_records::ReviewState::Submitted,
        None,
        stamp(),
    )
    .unwrap();
    (id, doc)
}

struct Desk<'a> {
    server: &'a ServerProcess,
    cookie: String,
}

impl<'a> Desk<'a> {
    async fn open(server: &'a ServerProcess) -> Desk<'a> {
        let body = json!({ "user": SUPERVISOR, "password": HARNESS_PASSWORD });
        let reply = https_request_with(server, "POST", "/review/api/login", &[], Some(&body)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let cookie = reply
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_string();
        Desk { server, cookie }
    }

    async fn get(&self, path: &str) -> String {
        let headers = [("Cookie", self.cookie.as_str())];
        let reply = https_request_with(self.server, "GET", path, &headers, None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.body
    }

    async fn json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.get(path).await).unwrap()
    }
}

/// RFC 4180 as the export writes it: quoted cells, doubled quotes, CRLF.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = vec![];
    let mut row = vec![];
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut cell)),
            ('\r', false) => {}
            ('\n', false) => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => cell.push(c),
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablet_twenty_years_ahead_is_merged_and_flagged_on_the_desk_and_in_exports() {
    let tmp = tempfile::tempdir().unwrap();
    // The default, written out: the key is read from `[records]`.
    let server = ServerProcess::start_with_config(
        &tmp.path().join("server"),
        "[records]\nclock_ahead_max_ms = 86400000\n",
    );
    server.add_user(OFFICER, "officer", &["kibera"]);
    server.add_user(SUPERVISOR, "supervisor", &["kibera"]);

    // A tablet with a right clock.
    let officer = Tablet::for_user(&server, "officer's tablet", OFFICER, "kibera");
    let beat = ("beat".to_string(), "B4".to_string());
    let normal = officer
        .create_record("patrol_note", "kibera", vec![beat])
        .unwrap();
    officer.submit(&normal).unwrap();
    officer.sync().await;

    // The officer's second tablet, its clock twenty years ahead.
    let token = server.add_device_for("tablet with a broken clock", OFFICER);
    let device = device_of(&token);
    let before = now_ms();
    let (id, doc) = note_made_at(&device, before + 20 * YEAR_MS);
    let mut raw = RawConnection::open(&server, &token).await;
    raw.hello().await;
    raw.send(&Message::Push(Push {
        doc: id,
        base: vec![],
        heads: to_heads(&doc.get_heads()),
        changes: doc
            .get_changes(&[])
            .iter()
            .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
            .collect(),
    }))
    .await;
    match raw.next_reply().await {
        Some(Message::Ack(ack)) => assert_eq!(ack.heads, to_heads(&doc.get_heads())),
        other => panic!("the skewed record should be taken like any other: {other:?}"),
    }
    let after = now_ms();

    // Merged as usual: the other tablet receives it and edits it.
    officer.sync().await;
    assert_eq!(
        officer.value(&id.to_string(), "beat").as_deref(),
        Some("B9")
    );
    officer.set(&id.to_string(), "beat", "B10").unwrap();
    officer.sync().await;

    // The desk's list flags it, and only it.
    let desk = Desk::open(&server).await;
    let list = desk.json("/review/api/records?state=submitted").await;
    let rows = list["records"].as_array().unwrap();
    let row = |rid: &str| {
        rows.iter()
            .find(|r| r["id"] == rid)
            .unwrap_or_else(|| panic!("{rid} not listed: {list}"))
            .clone()
    };
    let flagged = row(&id.to_string());
    assert!(
        flagged["clock"]["ahead_ms_max"].as_i64().unwrap() > 19 * YEAR_MS,
        "{flagged}"
    );
    assert!(
        flagged["clock"]["times"].as_u64().unwrap() >= 3,
        "{flagged}"
    );
    assert!(row(&normal)["clock"].is_null(), "{}", row(&normal));

    // The record: flagged, and each change's claimed time beside when the
    // server received it.
    let view = desk.json(&format!("/review/api/records/{id}")).await;
    assert!(view["clock"].is_object(), "{view}");
    let history = view["history"].as_array().unwrap();
    assert_eq!(
        history.len(),
        4,
        "three skewed changes and the officer's edit"
    );
    for change in history {
        let received = change["received_at_ms"].as_i64().expect("a receive time");
        assert!(
            received >= before - 1000 && received <= now_ms(),
            "{change}"
        );
        let claimed_ms = change["time"].as_i64().unwrap() * 1000;
        let skewed = claimed_ms > after + YEAR_MS;
        assert_eq!(change["clock_implausible"], skewed, "{change}");
    }
    assert_eq!(
        history
            .iter()
            .filter(|c| c["clock_implausible"] == true)
            .count(),
        3
    );
    let plain = desk.json(&format!("/review/api/records/{normal}")).await;
    assert!(plain["clock"].is_null(), "{plain}");
    for change in plain["history"].as_array().unwrap() {
        assert_eq!(change["clock_implausible"], false, "{change}");
        assert!(change["received_at_ms"].is_i64(), "{change}");
    }

    // The desk's page shows the flag (the browser test sees it rendered).
    let script = desk.get("/review/app.js").await;
    let strings = desk.get("/review/i18n/en.json").await;
    assert!(
        strings.contains("clock ahead: ") && script.contains("clock.flag"),
        "the page has no flag text"
    );
    assert!(
        script.contains("received_at_ms"),
        "the page shows no receive times"
    );

    // The export carries it in its own column.
    let csv = parse_csv(&desk.get("/review/api/export.csv?kind=patrol_note").await);
    let column = csv[0]
        .iter()
        .position(|c| c == "clock_flag")
        .expect("a clock_flag column");
    let cell = |rid: &str| {
        csv.iter()
            .find(|r| r[0] == rid)
            .unwrap_or_else(|| panic!("{rid} not exported"))[column]
            .clone()
    };
    let flag = cell(&id.to_string());
    assert!(flag.starts_with("clock ahead: "), "{flag}");
    assert!(flag.contains("days ahead of the server"), "{flag}");
    assert_eq!(cell(&normal), "");

    // In a browser: the flag on the queue entry and on the record's page,
    // the implausible changes marked in its history, none on the other.
    let url = server.url();
    let (skewed, plain) = (id.to_string(), normal.clone());
    let page = tokio::task::spawn_blocking(move || {
        let b = Browser::start();
        b.go(&format!("{url}/review"));
        b.type_into(&b.wait_for("#user"), SUPERVISOR);
        b.type_into(&b.wait_for("#password"), HARNESS_PASSWORD);
        b.click(&b.wait_for("#signin-form button[type=submit]"));
        let entry = b.text(&b.wait_for(&format!("#queue li[data-id=\"{skewed}\"]")));
        assert!(entry.contains("clock ahead"), "{entry}");
        let other = b.text(&b.wait_for(&format!("#queue li[data-id=\"{plain}\"]")));
        assert!(!other.contains("clock ahead"), "{other}");
        b.click(&b.wait_for(&format!("#queue li[data-id=\"{skewed}\"]")));
        let flag = b.text(&b.wait_for("#record-clock"));
        assert!(flag.contains("clock ahead"), "{flag}");
        let history = b.text(&b.wait_for("#history"));
        assert!(history.contains("Received"), "{history}");
        assert_eq!(history.matches("(implausible)").count(), 3, "{history}");
        b.click(&b.wait_for(&format!("#queue li[data-id=\"{plain}\"]")));
        b.wait_until("the other record open", || {
            b.text_of("#record-title")
                .filter(|t| t.contains("B4"))
                .map(|_| ())
        });
        assert!(b.all("#record-clock").is_empty());
    });
    if let Err(panic) = page.await {
        std::panic::resume_unwind(panic.into_panic());
    }
}
