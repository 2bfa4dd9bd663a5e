//! The review desk's live updates (issue 12): a supervisor's desk holds
//! its event stream (`GET /review/api/events`) open while a tablet submits
//! records one at a time; for each, the time from the tablet receiving its
//! `Ack` to the record's event arriving on the desk's stream (and from the
//! push leaving the tablet). The stream is read on a task of its own that
//! stamps each event as it arrives, so an event that beats the `Ack` to
//! its reader counts as negative.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use baraza_protocol::DocId;
use baraza_records::ops::{self, Stamp};
use baraza_tests::sse::{EventStream, Sse};
use serde_json::json;

use super::{Bench, Outcome};
use crate::light::{self, Connector, LightRecord, Plan};
use crate::records::Gen;
use crate::server::{Server, BENCH_AREA, BENCH_PASSWORD, BENCH_USER};
use crate::stats::{ms, round3, summary};

/// How long one record's push and event may take.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// `later - earlier` in ms, negative if `later` came first.
fn signed_ms(earlier: Instant, later: Instant) -> f64 {
    if later >= earlier {
        ms(later - earlier)
    } else {
        -ms(earlier - later)
    }
}

impl Bench {
    /// Runs the live desk scenario over `records` records.
    pub fn desk_live(&self, records: usize) -> anyhow::Result<Outcome> {
        let dir = self.scenario_dir("desk-live")?;
        let server = Server::start(
            &self.opts.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        server.add_user(BENCH_USER, "supervisor", &[BENCH_AREA.to_string()])?;
        let token = server.add_device_for("desk-live tablet", BENCH_USER)?;
        let connector = Connector::new(server.addr(), &server.ca())?;
        let cookie = self
            .rt
            .block_on(connector.sign_in(BENCH_USER, BENCH_PASSWORD))?;

        let (after_ack, after_push) = self.rt.block_on(async {
            let (head, stream) =
                EventStream::open_at(server.addr(), &server.ca(), Some(&cookie)).await;
            let mut stream = stream.with_context(|| format!("no event stream: {head}"))?;
            ensure!(
                stream.next(RECORD_TIMEOUT).await == Some(Sse::Comment("connected".into())),
                "the stream did not open"
            );
            let (tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
            let reader = tokio::spawn(async move {
                while let Some(item) = stream.next(Duration::from_secs(120)).await {
                    if let Sse::Event { event, data } = item {
                        let at = Instant::now();
                        let id = serde_json::from_str::<serde_json::Value>(&data)
                            .ok()
                            .and_then(|row| row["id"].as_str().map(str::to_string));
                        if let (true, Some(id)) = (event == "record", id) {
                            if tx.send((id, at)).is_err() {
                                break;
                            }
                        }
                    }
                }
            });

            let device = light::device_id_of(&token)?;
            let mut gen = Gen::new(4242);
            let actor = light::actor_for(&device, &mut gen)?;
            let mut seen: HashMap<String, Instant> = HashMap::new();
            let (mut after_ack, mut after_push) = (Vec::new(), Vec::new());
            for i in 0..records {
                let id = DocId::from_bytes(light::id_bytes(&mut gen));
                let title = vec![("title".to_string(), format!("Live baraza {i}"))];
                let mut record = LightRecord::create(id, &device, &actor, &title)?;
                let stamp = Stamp {
                    now_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0),
                    by: BENCH_USER,
                };
                ops::review(
                    &mut record.doc,
                    baraza_records::ReviewState::Submitted,
                    None,
                    stamp,
                )?;
                let plan = Plan {
                    hello: light::hello_frame(None, 0)?,
                    pushes: vec![(id, record.push_frame()?)],
                    wait_for_feed: false,
                };
                let socket = connector.connect(&token).await?;
                let log =
                    light::run(socket, plan, tokio::time::Instant::now() + RECORD_TIMEOUT).await;
                let (Some(sent), Some((acked, _))) = (log.sent_at[0], log.acked[0].clone()) else {
                    anyhow::bail!("record {i} was not acknowledged: {:?}", log.error);
                };
                let wanted = id.to_string();
                let deadline = tokio::time::Instant::now() + RECORD_TIMEOUT;
                let arrived = loop {
                    if let Some(at) = seen.remove(&wanted) {
                        break at;
                    }
                    match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                        Ok(Some((got, at))) => {
                            seen.insert(got, at);
                        }
                        _ => anyhow::bail!("no event for record {i} within {RECORD_TIMEOUT:?}"),
                    }
                };
                after_ack.push(signed_ms(acked, arrived));
                after_push.push(signed_ms(sent, arrived));
            }
            reader.abort();
            Ok::<_, anyhow::Error>((after_ack, after_push))
        })?;

        let [ack_p50, _, ack_p99, ack_max] = summary(&after_ack);
        let [push_p50, _, push_p99, _] = summary(&after_push);
        let summary_text = format!(
            "Desk live: {records} records submitted one at a time by a tablet reach an open \
             desk's event stream {ack_p50:.1} ms p50 / {ack_p99:.1} ms p99 (max {ack_max:.1} ms) \
             after the tablet's Ack ({push_p50:.1} ms p50 / {push_p99:.1} ms p99 after its push)"
        );
        Ok(Outcome {
            name: "desk_live",
            json: json!({
                "scenario": "desk_live",
                "records": records,
                "ack_to_event_ms": { "p50": round3(ack_p50), "p99": round3(ack_p99), "max": round3(ack_max) },
                "push_to_event_ms": { "p50": round3(push_p50), "p99": round3(push_p99) },
            }),
            summary: summary_text,
        })
    }
}
