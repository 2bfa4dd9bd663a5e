//! The review desk benchmark (issue 5): a server holding many records in
//! several areas and review states, and a supervisor's desk asking for one
//! area's submitted records (served from the index: a prefix scan, not a
//! scan of every record), and opening a record with 500 history entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use automerge::Automerge;
use baraza_protocol::{codec, DocId};
use baraza_records::ops::{self, FieldValue, Stamp};
use baraza_records::{Header, Kind};
use serde_json::json;

use super::s3_ingest::run_batched;
use super::{Bench, Outcome};
use crate::light::{self, Connector, Plan};
use crate::records::Gen;
use crate::server::{Server, BENCH_PASSWORD};
use crate::stats::{ms, round3, summary};

const USER: &str = "review.bench";
const AREAS: usize = 10;
const SEED_DEVICES: usize = 8;
const HISTORY: usize = 500;
/// Attendees of the record the page is timed on.
const ATTENDEES: usize = 200;
const RUNS: usize = 20;

/// A push of all of `doc`, as a new record's first push.
fn push_frame(id: DocId, doc: &Automerge) -> anyhow::Result<Vec<u8>> {
    Ok(codec::encode(&baraza_tests::push_since(id, &[], doc))?)
}

impl Bench {
    /// Runs the review desk scenario with `records` records.
    pub fn review_desk(&self, records: usize) -> anyhow::Result<Outcome> {
        let dir = self.scenario_dir("review")?;
        let server = Server::start(
            &self.opts.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let areas: Vec<String> = (0..AREAS).map(|i| format!("area-{i}")).collect();
        server.add_user(USER, "supervisor", &areas)?;
        let tokens = (0..SEED_DEVICES)
            .map(|i| server.add_device_for(&format!("review-seed-{i}"), USER))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let at = |i: usize| Stamp {
            now_ms: 1_700_000_000_000 + i as i64,
            by: USER,
        };

        // Setup: every record made as a tablet would, pushed by eight
        // devices; half submitted, half drafts, spread over the areas.
        let start = Instant::now();
        let connector = Arc::new(Connector::new(server.addr(), &server.ca())?);
        let mut work = Vec::new();
        let mut history_id = None;
        for (d, token) in tokens.iter().enumerate() {
            let device = light::device_id_of(token)?;
            let mut gen = Gen::new(900 + d as u64);
            let actor = light::actor_for(&device, &mut gen)?;
            let mut pushes = Vec::new();
            for i in (d..records).step_by(SEED_DEVICES) {
                let id = DocId::from_bytes(light::id_bytes(&mut gen));
                let mut doc = Automerge::new();
                doc.set_actor(actor.clone());
                let header = Header {
                    id: id.to_string(),
                    kind: Kind::Meeting,
                    area: areas[i % AREAS].clone(),
                    created_by_user: USER.into(),
                    created_by_device: device.clone(),
                    created_at: 1_700_000_000_000 + i as i64,
                    schema: baraza_records::SCHEMA_VERSION,
                };
                ops::create(&mut doc, &header, at(i))?;
                ops::set(
                    &mut doc,
                    "title",
                    FieldValue::Str(format!("Baraza {i}")),
                    at(i),
                )?;
                // Half of each area's records submitted.
                if (i / AREAS).is_multiple_of(2) {
                    ops::review(
                        &mut doc,
                        baraza_records::ReviewState::Submitted,
                        None,
                        at(i),
                    )?;
                }
                if i == 0 {
                    for n in 0..ATTENDEES {
                        let attendee = [
                            ("name", FieldValue::Str(format!("Attendee {n}"))),
                            ("role", FieldValue::Str("resident".into())),
                            ("gender", FieldValue::Str(["f", "m"][n % 2].into())),
                            ("age_band", FieldValue::Str("25-34".into())),
                        ];
                        ops::append(&mut doc, "attendees", &attendee, at(n))?;
                    }
                    for n in 0..HISTORY {
                        let place = FieldValue::Str(format!("Hall {n}"));
                        ops::set(&mut doc, "place", place, at(n))?;
                    }
                    history_id = Some(id);
                }
                pushes.push((id, push_frame(id, &doc)?));
            }
            work.push((
                connector.clone(),
                token.clone(),
                Plan {
                    hello: light::hello_frame(None, 0)?,
                    pushes,
                    wait_for_feed: false,
                },
            ));
        }
        let made = start.elapsed();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let start = Instant::now();
        let logs = rt.block_on(run_batched(work, SEED_DEVICES, Duration::from_secs(3600)));
        let acked: usize = logs.iter().map(|l| l.acks()).sum();
        ensure!(acked == records, "{acked} of {records} records stored");
        self.log(&format!(
            "review setup: {records} records made in {:.1} s, stored in {:.1} s",
            made.as_secs_f64(),
            start.elapsed().as_secs_f64()
        ));

        // The desk signs in once; each request is a fresh TLS connection,
        // as a browser's would be after a pause.
        let cookie = rt.block_on(connector.sign_in(USER, BENCH_PASSWORD))?;
        let timed = |path: &str| -> anyhow::Result<(Vec<f64>, serde_json::Value)> {
            let mut times = Vec::new();
            let mut last = serde_json::Value::Null;
            for _ in 0..RUNS {
                let start = Instant::now();
                let reply =
                    rt.block_on(connector.https("GET", path, &[("Cookie", &cookie)], None))?;
                times.push(ms(start.elapsed()));
                ensure!(
                    reply.status == 200,
                    "{path}: {} {}",
                    reply.status,
                    reply.body
                );
                last = serde_json::from_str(&reply.body)?;
            }
            Ok((times, last))
        };
        let (list_100, rows) = timed("/review/api/records?area=area-3&state=submitted&limit=100")?;
        let expected = (records / AREAS / 2).min(100);
        ensure!(rows["records"].as_array().map(|r| r.len()) == Some(expected));
        let (list_1000, rows) =
            timed("/review/api/records?area=area-3&state=submitted&limit=1000")?;
        let matching = rows["records"].as_array().map_or(0, |r| r.len());
        let history_id = history_id.context("no history record")?;
        let (open, view) = timed(&format!("/review/api/records/{history_id}"))?;
        let entries = view["history"].as_array().map_or(0, |h| h.len());
        ensure!(entries > HISTORY, "{entries} history entries");

        let page = if std::path::Path::new(baraza_tests::webdriver::CHROMEDRIVER).exists() {
            Some(page_times(&server.url(), history_id)?)
        } else {
            self.log("review: no chromedriver, so the page's time is not measured");
            None
        };
        let [page_p50, _, page_p99, _] = summary(page.as_deref().unwrap_or(&[]));

        let [l100_p50, _, l100_p99, _] = summary(&list_100);
        let [l1000_p50, _, l1000_p99, _] = summary(&list_1000);
        let [open_p50, _, open_p99, _] = summary(&open);
        let summary_text = format!(
            "Review desk: {records} records in {AREAS} areas; one area's submitted records: \
             first 100 in {l100_p50:.1} ms p50 / {l100_p99:.1} ms p99, {matching} rows in \
             {l1000_p50:.1} ms p50 / {l1000_p99:.1} ms p99; a record with {entries} history \
             entries opened (fields, conflicts, history) in {open_p50:.1} ms p50 / \
             {open_p99:.1} ms p99 ({RUNS} requests each, a new TLS connection each); \
             with {ATTENDEES} attendees, the page shows it (request, building the view, layout) in {page_p50:.1} ms p50 / \
             {page_p99:.1} ms p99 in headless Chromium"
        );
        Ok(Outcome {
            name: "review_desk",
            json: json!({
                "scenario": "review_desk",
                "records": records,
                "areas": AREAS,
                "list_100_ms": { "p50": round3(l100_p50), "p99": round3(l100_p99) },
                "list_rows": matching,
                "list_rows_ms": { "p50": round3(l1000_p50), "p99": round3(l1000_p99) },
                "history_entries": entries,
                "attendees": ATTENDEES,
                "open_record_ms": { "p50": round3(open_p50), "p99": round3(open_p99) },
                "page_show_record_ms": page.map(|_| json!({ "p50": round3(page_p50), "p99": round3(page_p99) })),
            }),
            summary: summary_text,
        })
    }
}

/// Signs in on the page in headless Chromium and times showing the record
/// (its request, building the view, and a forced layout), `RUNS` times.
fn page_times(url: &str, id: DocId) -> anyhow::Result<Vec<f64>> {
    let b = baraza_tests::webdriver::Browser::start();
    b.go(&format!("{url}/review"));
    b.type_into(&b.wait_for("#user"), USER);
    b.type_into(&b.wait_for("#password"), BENCH_PASSWORD);
    b.click(&b.wait_for("#signin-form button[type=submit]"));
    b.wait_for("#queue li");
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let took = b.script_async(
            "const done = arguments[arguments.length - 1];\
             const t = performance.now();\
             openRecord(arguments[0]).then(() => {\
               void document.body.offsetHeight;\
               done(document.querySelectorAll('#history tr').length > 500 ? performance.now() - t : -1);\
             });",
            json!([id.to_string()]),
        );
        let ms = took.as_f64().context("no time from the page")?;
        ensure!(ms >= 0.0, "the page did not show the whole history");
        times.push(ms);
    }
    Ok(times)
}
