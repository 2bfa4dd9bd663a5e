//! S3, the server's ingest under a fan-in: protocol-level clients
//! ([`crate::light`]) that speak the real wire protocol over real TLS
//! WebSockets but never apply what they download, so the machine's CPU
//! goes to the server rather than to simulated tablets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use automerge::ActorId;
use baraza_protocol::{DocId, Seq, StoreId};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use super::{device_client, field_value, kib_json, mib, Bench, Outcome, EDIT_FIELD};
use crate::light::{self, Connector, LightRecord, Plan, SessionLog};
use crate::records::{self, Gen};
use crate::server::{proc_cpu_time, Server};
use crate::stats::{ms, round3, summary};

/// How long one connection (TCP, TLS, WebSocket upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long every client together may take to connect before the start.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// One light device: its token, its writer id and its records.
struct Device {
    token: String,
    id: String,
    gen: Gen,
    actor: ActorId,
    /// Records pushed during setup, edited in the fan-in.
    old: Vec<LightRecord>,
}

/// One measured push.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    New,
    Edit,
}

fn percentiles_json(values: &[f64]) -> Value {
    let [p50, p90, p99, max] = summary(values);
    json!({"p50": round3(p50), "p90": round3(p90), "p99": round3(p99), "max": round3(max)})
}

/// Runs each plan on its own connection, `parallel` at a time; every
/// connection ends by `timeout` from its start.
pub(crate) async fn run_batched(
    connector: Arc<Connector>,
    work: Vec<(String, Plan)>,
    parallel: usize,
    timeout: Duration,
) -> Vec<SessionLog> {
    let slots = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    let count = work.len();
    for (i, (token, plan)) in work.into_iter().enumerate() {
        let slots = slots.clone();
        let connector = connector.clone();
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let n = plan.pushes.len();
            let deadline = tokio::time::Instant::now() + timeout;
            let log = match tokio::time::timeout_at(deadline, connector.connect(&token)).await {
                Ok(Ok(socket)) => light::run(socket, plan, deadline).await,
                Ok(Err(e)) => SessionLog::failed(n, format!("connect: {e:#}")),
                Err(_) => SessionLog::failed(n, "connect timed out".into()),
            };
            (i, log)
        });
    }
    let mut out: Vec<Option<SessionLog>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, log)) = joined {
            out[i] = Some(log);
        }
    }
    out.into_iter()
        .map(|l| l.unwrap_or_else(|| SessionLog::failed(0, "the client task panicked".into())))
        .collect()
}

/// What the fan-in itself returned.
struct FanIn {
    logs: Vec<SessionLog>,
    t0: Instant,
    connected: usize,
    setup_peak_kib: Option<u64>,
    rss_before_kib: Option<u64>,
    peak_reset: bool,
    server_cpu_before: Option<Duration>,
    bench_cpu_before: Option<Duration>,
}

/// Connects every client (`connect_parallel` at a time), then releases
/// them together: each sends its hello and all its pushes at once and
/// reads until its plan is complete. The server's peak RSS is reset and
/// the CPU clocks read between the last connection and the start.
async fn fan_in_connected(
    server: &Server,
    connector: Arc<Connector>,
    work: Vec<(String, Plan)>,
    connect_parallel: usize,
    timeout: Duration,
) -> FanIn {
    let count = work.len();
    let slots = Arc::new(Semaphore::new(connect_parallel.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let (go_tx, go_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for (i, (token, plan)) in work.into_iter().enumerate() {
        let slots = slots.clone();
        let connector = connector.clone();
        let ready_tx = ready_tx.clone();
        let mut go_rx = go_rx.clone();
        set.spawn(async move {
            let n = plan.pushes.len();
            let socket = {
                let _slot = slots.acquire_owned().await;
                match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(&token)).await {
                    Ok(Ok(socket)) => Ok(socket),
                    Ok(Err(e)) => Err(format!("connect: {e:#}")),
                    Err(_) => Err("connect timed out".to_string()),
                }
            };
            let _ = ready_tx.send(socket.is_ok());
            let released = matches!(
                tokio::time::timeout(READY_TIMEOUT + CONNECT_TIMEOUT, go_rx.wait_for(|go| *go))
                    .await,
                Ok(Ok(_))
            );
            let log = match socket {
                Err(e) => SessionLog::failed(n, e),
                Ok(_) if !released => SessionLog::failed(n, "never released to start".into()),
                Ok(socket) => {
                    let deadline = tokio::time::Instant::now() + timeout;
                    light::run(socket, plan, deadline).await
                }
            };
            (i, log)
        });
    }
    drop(ready_tx);
    let mut connected = 0usize;
    let _ = tokio::time::timeout(READY_TIMEOUT, async {
        let mut heard = 0usize;
        while let Some(ok) = ready_rx.recv().await {
            heard += 1;
            connected += usize::from(ok);
            if heard == count {
                break;
            }
        }
    })
    .await;

    let setup_peak_kib = server.status_kib("VmHWM");
    let rss_before_kib = server.status_kib("VmRSS");
    let peak_reset = server.reset_peak_rss();
    let server_cpu_before = server.cpu_time();
    let bench_cpu_before = proc_cpu_time(std::process::id());
    let t0 = Instant::now();
    let _ = go_tx.send(true);

    let mut logs: Vec<Option<SessionLog>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, log)) = joined {
            logs[i] = Some(log);
        }
    }
    FanIn {
        logs: logs
            .into_iter()
            .map(|l| l.unwrap_or_else(|| SessionLog::failed(0, "the client task panicked".into())))
            .collect(),
        t0,
        connected,
        setup_peak_kib,
        rss_before_kib,
        peak_reset,
        server_cpu_before,
        bench_cpu_before,
    }
}

impl Bench {
    /// S3, the server's ingest: `clients` protocol-level devices each push
    /// `fanin_edits` records during setup (acknowledged, not measured);
    /// then each prepares `creates` new records and one edit of each of its
    /// earlier records in memory, all connect (TLS + WebSocket), and at a
    /// common start each sends its hello and every push at once. Measured
    /// per change: push sent → its `Ack` received. A client is done when
    /// every push is acknowledged and its cursor reached the feed position
    /// of its welcome and acks (everything remote received), though it
    /// only decodes the `Changes` frames. A fresh SDK device then pulls
    /// everything as a check.
    pub fn fan_in(&self) -> anyhow::Result<Outcome> {
        let o = &self.opts;
        ensure!(o.clients > 0, "--clients must be positive");
        ensure!(
            o.creates + o.fanin_edits > 0,
            "--creates and --fanin-edits are both zero: nothing to push"
        );
        let dir = self.scenario_dir("s3")?;
        let server = Server::start(
            &o.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let connector = Arc::new(Connector::new(server.addr(), &server.ca())?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(o.light_threads.max(1))
            .thread_name("light-client")
            .enable_all()
            .build()
            .context("cannot start the light clients' runtime")?;
        self.log(&format!(
            "S3: server pid {} on {}; protocol-level clients on {} threads",
            server.pid(),
            server.addr(),
            o.light_threads.max(1)
        ));

        let start = Instant::now();
        let tokens = server.add_devices("bench-light", o.clients, 4)?;
        let mut devices = Vec::with_capacity(o.clients);
        for (i, token) in tokens.into_iter().enumerate() {
            let mut gen = Gen::new(5000 + i as u64);
            let device_id = light::device_id_of(&token)?;
            let actor = light::actor_for(&device_id, &mut gen)?;
            let mut old = Vec::with_capacity(o.fanin_edits);
            for j in 0..o.fanin_edits {
                let id = DocId::from_bytes(light::id_bytes(&mut gen));
                let fields = records::fields(&mut gen, i * o.fanin_edits + j);
                old.push(LightRecord::create(id, &device_id, &actor, &fields)?);
            }
            devices.push(Device {
                token,
                id: device_id,
                gen,
                actor,
                old,
            });
        }
        self.log(&format!(
            "S3 setup: registered {} devices in {:.1} s",
            o.clients,
            start.elapsed().as_secs_f64()
        ));

        // Setup: each device uploads the records it will edit, a few
        // devices at a time, and learns their acknowledged heads.
        let mut store: Option<StoreId> = None;
        let mut cursor: Seq = 0;
        if o.fanin_edits > 0 {
            let start = Instant::now();
            let work = devices
                .iter()
                .map(|d| {
                    let pushes = d
                        .old
                        .iter()
                        .map(|r| Ok((r.id, r.push_frame()?)))
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let plan = Plan {
                        hello: light::hello_frame(None, 0)?,
                        pushes,
                        wait_for_feed: false,
                    };
                    Ok((d.token.clone(), plan))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let logs = rt.block_on(run_batched(
                connector.clone(),
                work,
                o.setup_syncs,
                o.fanin_timeout,
            ));
            for (i, (device, log)) in devices.iter_mut().zip(logs).enumerate() {
                ensure!(
                    log.error.is_none() && log.acks() == device.old.len(),
                    "setup upload of device {i}: {} of {} acknowledged, {} refused ({:?}): {}",
                    log.acks(),
                    device.old.len(),
                    log.refused,
                    log.refusals,
                    log.error.as_deref().unwrap_or("no error")
                );
                let welcome = log.welcome.context("no welcome")?;
                ensure!(
                    store.is_none_or(|s| s == welcome.store),
                    "the server's store id changed during setup"
                );
                store = Some(welcome.store);
                cursor = cursor.max(log.ack_seq);
                for (record, acked) in device.old.iter_mut().zip(log.acked) {
                    let (_, heads) = acked.context("an acknowledged push lost its heads")?;
                    record.acked = heads;
                }
            }
            self.log(&format!(
                "S3 setup: {} devices uploaded {} records in {:.1} s ({} at a time); feed at {cursor}",
                o.clients,
                o.clients * o.fanin_edits,
                start.elapsed().as_secs_f64(),
                o.setup_syncs.max(1)
            ));
        }

        // The offline work, prepared in memory: new records and one edit of
        // each older record, encoded as pushes in record-id order. The hello
        // carries the feed position after setup, as a device that synced
        // everything then would.
        let start = Instant::now();
        let mut work = Vec::with_capacity(o.clients);
        let mut kinds: Vec<Vec<Kind>> = Vec::with_capacity(o.clients);
        let mut expected: Vec<Vec<(DocId, String)>> = Vec::with_capacity(o.clients);
        for (i, device) in devices.iter_mut().enumerate() {
            let mut pushes = Vec::with_capacity(o.creates + device.old.len());
            let mut edited = Vec::with_capacity(device.old.len());
            for j in 0..o.creates {
                let id = DocId::from_bytes(light::id_bytes(&mut device.gen));
                let fields = records::fields(&mut device.gen, 1_000_000 + i * o.creates + j);
                let record = LightRecord::create(id, &device.id, &device.actor, &fields)?;
                pushes.push((record.id, record.push_frame()?, Kind::New));
            }
            for (j, record) in device.old.iter_mut().enumerate() {
                let value = format!("visited by tablet {i} ({j})");
                record.set(EDIT_FIELD, &value)?;
                pushes.push((record.id, record.push_frame()?, Kind::Edit));
                edited.push((record.id, value));
            }
            pushes.sort_by_key(|p| p.0);
            kinds.push(pushes.iter().map(|p| p.2).collect());
            expected.push(edited);
            work.push((
                device.token.clone(),
                Plan {
                    hello: light::hello_frame(store, cursor)?,
                    pushes: pushes.into_iter().map(|(id, f, _)| (id, f)).collect(),
                    wait_for_feed: !o.ack_only,
                },
            ));
        }
        let prepare_wall = start.elapsed();
        let changes_expected = o.clients * (o.creates + o.fanin_edits);
        self.log(&format!(
            "S3: {} clients connect, then push {} changes at once",
            o.clients, changes_expected
        ));

        let fan = rt.block_on(fan_in_connected(
            &server,
            connector,
            work,
            o.connect_parallel,
            o.fanin_timeout,
        ));
        let peak_kib = server.status_kib("VmHWM");
        let rss_after_kib = server.status_kib("VmRSS");
        let server_cpu = server
            .cpu_time()
            .zip(fan.server_cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        let bench_cpu = proc_cpu_time(std::process::id())
            .zip(fan.bench_cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        drop(rt);
        let t0 = fan.t0;

        let mut ack_ms = Vec::with_capacity(changes_expected);
        let mut new_ms = Vec::new();
        let mut edit_ms = Vec::new();
        let mut done_ms = Vec::new();
        let mut first_send_ms = Vec::new();
        let mut last_ack: Option<Instant> = None;
        let mut first_ack: Option<Instant> = None;
        let mut errors = Vec::new();
        let (mut acked, mut refused, mut sync_frames) = (0usize, 0usize, 0u64);
        let (mut changes_frames, mut changes_bytes, mut bytes_down) = (0u64, 0u64, 0u64);
        let mut refusals = Vec::new();
        for (i, log) in fan.logs.iter().enumerate() {
            acked += log.acks();
            refused += log.refused;
            sync_frames += log.sync_frames;
            changes_frames += log.changes_frames;
            changes_bytes += log.changes_bytes;
            bytes_down += log.bytes_down;
            refusals.extend(log.refusals.iter().take(2).cloned());
            for (k, latency) in log.ack_latencies() {
                let v = ms(latency);
                ack_ms.push(v);
                match kinds[i].get(k) {
                    Some(Kind::New) => new_ms.push(v),
                    Some(Kind::Edit) => edit_ms.push(v),
                    None => {}
                }
            }
            for (at, _) in log.acked.iter().flatten() {
                last_ack = Some(last_ack.map_or(*at, |l| l.max(*at)));
                first_ack = Some(first_ack.map_or(*at, |f| f.min(*at)));
            }
            if let Some(first) = log.sent_at.iter().flatten().min() {
                first_send_ms.push(ms(first.saturating_duration_since(t0)));
            }
            match (&log.error, log.done_at) {
                (None, Some(done)) => done_ms.push(ms(done.saturating_duration_since(t0))),
                (Some(e), _) => errors.push(format!("client {i}: {e}")),
                (None, None) => errors.push(format!("client {i}: did not finish")),
            }
        }
        let ingest = last_ack
            .map(|l| l.saturating_duration_since(t0))
            .unwrap_or_default();
        let acked_per_sec = if ingest.is_zero() {
            0.0
        } else {
            acked as f64 / ingest.as_secs_f64()
        };
        let wall = done_ms.iter().copied().fold(0.0f64, f64::max);
        let [a50, a90, a99, amax] = summary(&ack_ms);
        let [d50, _, d99, dmax] = summary(&done_ms);
        self.log(&format!(
            "S3: {acked} of {changes_expected} changes acknowledged in {:.2} s; {} failures",
            ingest.as_secs_f64(),
            errors.len()
        ));

        // Does the server hold everything, edits included? A fresh SDK
        // device pulls it all.
        let checker = device_client(
            &server,
            &server.url(),
            &dir.join("checker"),
            "bench-checker",
        )?;
        let (check, check_wall, _) = self.try_sync(&checker, None);
        let records_on_server = checker.list()?.len();
        let mut edits_visible = 0usize;
        for (id, value) in expected.iter().flatten() {
            if field_value(&checker, &id.to_string(), EDIT_FIELD)?.as_deref() == Some(value) {
                edits_visible += 1;
            }
        }
        if let Err(e) = &check {
            self.log(&format!(
                "S3: the checking cold start FAILED after {:.1} s with {records_on_server} records: {e}",
                check_wall.as_secs_f64()
            ));
        }
        drop(checker);
        let status = server.stop()?;
        if !status.success() {
            self.log(&format!("warning: the S3 server exited with {status}"));
        }

        let peak_scope = if fan.peak_reset {
            "fan_in"
        } else {
            "process_lifetime"
        };
        let records_expected = o.clients * (o.fanin_edits + o.creates);
        let json = json!({
            "scenario": "s3_fan_in",
            "clients_kind": "protocol",
            "clients": o.clients,
            "creates_per_client": o.creates,
            "edits_per_client": o.fanin_edits,
            "setup_records": o.clients * o.fanin_edits,
            "changes_expected": changes_expected,
            "connected": fan.connected,
            "pushes_acked": acked,
            "refused": refused,
            "refusals": refusals.iter().take(5).collect::<Vec<_>>(),
            "unanswered": changes_expected.saturating_sub(acked + refused),
            "sync_frames": sync_frames,
            "failures": errors.len(),
            "errors": errors.iter().take(5).collect::<Vec<_>>(),
            "ingest_ms": round3(ms(ingest)),
            "acked_per_sec": round3(acked_per_sec),
            "first_ack_ms": first_ack.map(|f| round3(ms(f.saturating_duration_since(t0)))),
            "ack_latency_ms": percentiles_json(&ack_ms),
            "ack_latency_new_ms": percentiles_json(&new_ms),
            "ack_latency_edit_ms": percentiles_json(&edit_ms),
            "ack_latency_samples": ack_ms.len(),
            "ack_latency_kind": "per_change: this push handed to the socket -> its Ack frame read",
            "acked_per_sec_kind": "acks / (last ack - common start)",
            "client_first_send_ms": percentiles_json(&first_send_ms),
            "client_done_ms": percentiles_json(&done_ms),
            "client_done_kind": if o.ack_only {
                "per_client: common start -> every push acked (then hung up)"
            } else {
                "per_client: common start -> every push acked and cursor \
                    at the welcome's and acks' feed position"
            },
            "ack_only": o.ack_only,
            "wall_ms": round3(wall),
            "changes_frames_received": changes_frames,
            "changes_bytes_received": changes_bytes,
            "bytes_down_total": bytes_down,
            "server_peak_rss_kib": kib_json(peak_kib),
            "server_peak_rss_scope": peak_scope,
            "server_rss_before_kib": kib_json(fan.rss_before_kib),
            "server_rss_after_kib": kib_json(rss_after_kib),
            "server_setup_peak_rss_kib": kib_json(fan.setup_peak_kib),
            "server_cpu_ms": server_cpu.map(|d| round3(ms(d))),
            "bench_cpu_ms": bench_cpu.map(|d| round3(ms(d))),
            "light_threads": o.light_threads.max(1),
            "records_on_server": records_on_server,
            "records_expected": records_expected,
            "edits_visible": edits_visible,
            "edits_expected": o.clients * o.fanin_edits,
            "checker_ok": check.is_ok(),
            "checker_error": check.as_ref().err().map(|e| e.to_string()),
            "checker_pull_ms": round3(ms(check_wall)),
            "setup": {
                "feed_seq": cursor,
                "prepare_ms": round3(ms(prepare_wall)),
            },
        });
        let summary = format!(
            "S3 fan-in (protocol-level clients, server ingest): {} clients x ({} new + {} edits) \
             pushed at once: {} of {} changes acknowledged in {:.2} s = {:.0} changes durably \
             stored/s; {} refused, {} failures\n  \
             per-change ack latency (push sent -> Ack read; {} samples): p50 {:.0} ms, \
             p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n  \
             per-client done ({}; {} Changes frames decoded, not applied): p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms\n  \
             server peak RSS during fan-in {} ({}; before {}, after {}, peak during setup {}); \
             server CPU {:.1} s, bench (clients) CPU {:.1} s\n  \
             a fresh device pulled {} records (expected {}), {} of {} edits visible{}",
            o.clients,
            o.creates,
            o.fanin_edits,
            acked,
            changes_expected,
            ingest.as_secs_f64(),
            acked_per_sec,
            refused,
            errors.len(),
            ack_ms.len(),
            a50,
            a90,
            a99,
            amax,
            if o.ack_only {
                "all acked, then hung up"
            } else {
                "all acked and feed received"
            },
            changes_frames,
            d50,
            d99,
            dmax,
            mib(peak_kib),
            peak_scope,
            mib(fan.rss_before_kib),
            mib(rss_after_kib),
            mib(fan.setup_peak_kib),
            server_cpu.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
            bench_cpu.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
            records_on_server,
            records_expected,
            edits_visible,
            o.clients * o.fanin_edits,
            match &check {
                Ok(_) => String::new(),
                Err(e) => format!(" but its sync FAILED: {e}"),
            },
        );
        Ok(Outcome {
            name: "s3_fan_in",
            json,
            summary,
        })
    }
}
