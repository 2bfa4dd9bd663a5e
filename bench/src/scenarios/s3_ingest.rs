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

/// Runs each plan on its own connection (through its connector), `parallel`
/// at a time; every connection ends by `timeout` from its start.
pub(crate) async fn run_batched(
    work: Vec<(Arc<Connector>, String, Plan)>,
    parallel: usize,
    timeout: Duration,
) -> Vec<SessionLog> {
    let slots = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    let count = work.len();
    for (i, (connector, token, plan)) in work.into_iter().enumerate() {
        let slots = slots.clone();
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
    /// Per node, read just before the start.
    nodes: Vec<NodeBefore>,
    peak_reset: bool,
    bench_cpu_before: Option<Duration>,
    probe: ProbeResult,
}

/// A node's figures just before the start.
struct NodeBefore {
    setup_peak_kib: Option<u64>,
    rss_kib: Option<u64>,
    cpu: Option<Duration>,
}

/// The push probe: a writer on the first node pushes a record every
/// [`PROBE_EVERY`] during the fan-in, a watcher on the last node (the
/// other one, with two) notes when each arrives.
pub(crate) struct Probe {
    writer: (Arc<Connector>, String),
    watcher: (Arc<Connector>, String),
    device_id: String,
    actor: ActorId,
    gen: Gen,
    hello: Vec<u8>,
}

/// How long, past the fan-in's own time limit, the probe watcher may wait
/// for the last probe records.
const PROBE_WAIT: Duration = Duration::from_secs(60);

/// How often the probe writer pushes a record.
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct ProbeResult {
    writes: light::ProbeWrites,
    arrivals: light::ProbeArrivals,
    connect_error: Option<String>,
}

impl ProbeResult {
    /// Per probe record that arrived: writer's ack → watcher's arrival
    /// (negative values clamp to 0: the feed can stream a record before
    /// its writer reads the ack), and writer's send → arrival.
    fn latencies(&self) -> (Vec<f64>, Vec<f64>, usize) {
        let (mut from_ack, mut from_send, mut missing) = (Vec::new(), Vec::new(), 0);
        for (id, sent, acked) in &self.writes.pushes {
            let Some(acked) = acked else { continue };
            match self.arrivals.first.get(id) {
                Some(at) => {
                    from_ack.push(ms(at.saturating_duration_since(*acked)));
                    from_send.push(ms(at.saturating_duration_since(*sent)));
                }
                None => missing += 1,
            }
        }
        (from_ack, from_send, missing)
    }
}

/// Connects every client (`connect_parallel` at a time), then releases
/// them together: each sends its hello and all its pushes at once and
/// reads until its plan is complete. The server's peak RSS is reset and
/// the CPU clocks read between the last connection and the start.
async fn fan_in_connected(
    servers: &[Server],
    work: Vec<(Arc<Connector>, String, Plan)>,
    probe: Probe,
    connect_parallel: usize,
    timeout: Duration,
) -> FanIn {
    let count = work.len();
    let slots = Arc::new(Semaphore::new(connect_parallel.max(1)));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<bool>();
    let (go_tx, go_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for (i, (connector, token, plan)) in work.into_iter().enumerate() {
        let slots = slots.clone();
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

    let mut probe_result = ProbeResult::default();
    let probe_sockets = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let writer = probe.writer.0.connect(&probe.writer.1).await?;
        let watcher = probe.watcher.0.connect(&probe.watcher.1).await?;
        anyhow::Ok((writer, watcher))
    })
    .await
    .map_err(|_| anyhow::anyhow!("connect timed out"))
    .and_then(|r| r);

    // Per node, in this order: the setup's peak, the RSS, then the peak
    // reset and the CPU clock, so the fan-in's figures are its own.
    let mut peak_reset = true;
    let nodes = servers
        .iter()
        .map(|s| {
            let setup_peak_kib = s.status_kib("VmHWM");
            let rss_kib = s.status_kib("VmRSS");
            peak_reset &= s.reset_peak_rss();
            NodeBefore {
                setup_peak_kib,
                rss_kib,
                cpu: s.cpu_time(),
            }
        })
        .collect::<Vec<_>>();
    let bench_cpu_before = proc_cpu_time(std::process::id());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (watcher_stop_tx, watcher_stop_rx) = watch::channel(None);
    let probe_deadline = tokio::time::Instant::now() + timeout + CONNECT_TIMEOUT + PROBE_WAIT;
    let probe_tasks = match probe_sockets {
        Ok((writer, watcher)) => {
            // The watcher first, so it is listening before the first push.
            let watched = tokio::spawn(light::probe_watcher(
                watcher,
                probe.hello.clone(),
                watcher_stop_rx,
                probe_deadline,
            ));
            let written = tokio::spawn(light::probe_writer(
                writer,
                probe.hello,
                light::ProbeDevice {
                    device_id: probe.device_id,
                    actor: probe.actor,
                    gen: probe.gen,
                },
                PROBE_EVERY,
                stop_rx,
                probe_deadline,
            ));
            Some((written, watched))
        }
        Err(e) => {
            probe_result.connect_error = Some(format!("{e:#}"));
            None
        }
    };
    let t0 = Instant::now();
    let _ = go_tx.send(true);

    let mut logs: Vec<Option<SessionLog>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, log)) = joined {
            logs[i] = Some(log);
        }
    }
    let _ = stop_tx.send(true);
    if let Some((written, watched)) = probe_tasks {
        probe_result.writes = written.await.unwrap_or_default();
        // The watcher waits for every acknowledged probe record (bounded
        // by its deadline), so one that never comes is told from a late one.
        let acked = probe_result
            .writes
            .pushes
            .iter()
            .filter(|p| p.2.is_some())
            .map(|p| p.0)
            .collect();
        let _ = watcher_stop_tx.send(Some(acked));
        probe_result.arrivals = watched.await.unwrap_or_default();
    }
    FanIn {
        logs: logs
            .into_iter()
            .map(|l| l.unwrap_or_else(|| SessionLog::failed(0, "the client task panicked".into())))
            .collect(),
        t0,
        connected,
        nodes,
        peak_reset,
        bench_cpu_before,
        probe: probe_result,
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
        let mut servers = vec![server];
        for k in 1..o.nodes.max(1) {
            let node = servers[0].start_node(
                &dir.join(format!("node-{k}-data")),
                &dir.join(format!("node-{k}.log")),
            )?;
            servers.push(node);
        }
        let connectors = servers
            .iter()
            .map(|s| Ok(Arc::new(Connector::new(s.addr(), &s.ca())?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let node_of = |i: usize| connectors[i % connectors.len()].clone();
        let server = &servers[0];
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(o.light_threads.max(1))
            .thread_name("light-client")
            .enable_all()
            .build()
            .context("cannot start the light clients' runtime")?;
        self.log(&format!(
            "S3: {} node(s) on {} ({}); protocol-level clients on {} threads, split across the nodes",
            servers.len(),
            server.store_kind(),
            servers
                .iter()
                .map(|s| format!("pid {} on {}", s.pid(), s.addr()))
                .collect::<Vec<_>>()
                .join(", "),
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
                .enumerate()
                .map(|(i, d)| {
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
                    Ok((node_of(i), d.token.clone(), plan))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let logs = rt.block_on(run_batched(work, o.setup_syncs, o.fanin_timeout));
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
                node_of(i),
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

        // The probe's two devices: the writer on the first node, the
        // watcher on the last.
        let probe_tokens = server.add_devices("bench-probe", 2, 2)?;
        let mut probe_gen = Gen::new(4999);
        let probe_device = light::device_id_of(&probe_tokens[0])?;
        let probe = Probe {
            actor: light::actor_for(&probe_device, &mut probe_gen)?,
            device_id: probe_device,
            gen: probe_gen,
            writer: (node_of(0), probe_tokens[0].clone()),
            watcher: (node_of(servers.len() - 1), probe_tokens[1].clone()),
            hello: light::hello_frame(store, cursor)?,
        };

        let fan = rt.block_on(fan_in_connected(
            &servers,
            work,
            probe,
            o.connect_parallel,
            o.fanin_timeout,
        ));
        let per_node = servers
            .iter()
            .zip(&fan.nodes)
            .map(|(s, before)| {
                let cpu = s
                    .cpu_time()
                    .zip(before.cpu)
                    .map(|(a, b)| a.saturating_sub(b));
                (s.status_kib("VmHWM"), s.status_kib("VmRSS"), cpu)
            })
            .collect::<Vec<_>>();
        let sum = |v: Vec<Option<u64>>| v.into_iter().sum::<Option<u64>>();
        let peak_kib = sum(per_node.iter().map(|n| n.0).collect());
        let rss_after_kib = sum(per_node.iter().map(|n| n.1).collect());
        let rss_before_kib = sum(fan.nodes.iter().map(|n| n.rss_kib).collect());
        let setup_peak_kib = sum(fan.nodes.iter().map(|n| n.setup_peak_kib).collect());
        let server_cpu = per_node.iter().map(|n| n.2).sum::<Option<Duration>>();
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

        let (probe_ack_ms, probe_send_ms, probe_missing) = fan.probe.latencies();
        let [p50, p90, p99, pmax] = summary(&probe_ack_ms);
        let probe_error = fan
            .probe
            .connect_error
            .clone()
            .or_else(|| fan.probe.writes.error.clone())
            .or_else(|| fan.probe.arrivals.error.clone());
        let probe_across = servers.len() > 1;
        let store_kind = servers[0].store_kind();
        self.log(&format!(
            "S3: {} probe records pushed through node 1, {} arrived on {} (ack -> arrival p50 {p50:.0} ms, \
             p99 {p99:.0} ms, max {pmax:.0} ms), {probe_missing} acknowledged but never arrived{}",
            fan.probe.writes.pushes.len(),
            probe_ack_ms.len(),
            if probe_across { "the other node" } else { "the same node" },
            probe_error.as_ref().map(|e| format!("; probe error: {e}")).unwrap_or_default()
        ));

        // Does the store hold everything, edits included? A fresh SDK
        // device pulls it all (from the last node).
        let last = &servers[servers.len() - 1];
        let checker = device_client(last, &last.url(), &dir.join("checker"), "bench-checker")?;
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
        let pids = servers.iter().map(|s| s.pid()).collect::<Vec<_>>();
        for (k, server) in servers.into_iter().enumerate() {
            let status = server.stop()?;
            if !status.success() {
                self.log(&format!("warning: S3 node {} exited with {status}", k + 1));
            }
        }

        let peak_scope = if fan.peak_reset {
            "fan_in"
        } else {
            "process_lifetime"
        };
        // The probe's records are in the store too.
        let probe_acked = fan
            .probe
            .writes
            .pushes
            .iter()
            .filter(|p| p.2.is_some())
            .count();
        let records_expected = o.clients * (o.fanin_edits + o.creates) + probe_acked;
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
            "server_rss_before_kib": kib_json(rss_before_kib),
            "server_rss_after_kib": kib_json(rss_after_kib),
            "server_setup_peak_rss_kib": kib_json(setup_peak_kib),
            "server_figures_kind": "sums over the nodes; per node in `nodes_detail`",
            "store": store_kind,
            "nodes": pids.len(),
            "nodes_detail": pids.iter().zip(&per_node).zip(&fan.nodes).map(|((pid, after), before)| json!({
                "pid": pid,
                "peak_rss_kib": kib_json(after.0),
                "rss_after_kib": kib_json(after.1),
                "rss_before_kib": kib_json(before.rss_kib),
                "cpu_ms": after.2.map(|d| round3(ms(d))),
            })).collect::<Vec<_>>(),
            "push_probe": {
                "kind": if probe_across {
                    "a record pushed every 100 ms through node 1 during the fan-in; \
                     its Ack on node 1 -> its Changes on a live connection to node 2"
                } else {
                    "a record pushed every 100 ms during the fan-in; its Ack -> its \
                     Changes on another live connection to the same node"
                },
                "across_nodes": probe_across,
                "pushed": fan.probe.writes.pushes.len(),
                "acked": probe_acked,
                "arrived": probe_ack_ms.len(),
                "acked_not_arrived": probe_missing,
                "ack_to_arrival_ms": percentiles_json(&probe_ack_ms),
                "send_to_arrival_ms": percentiles_json(&probe_send_ms),
                "error": probe_error,
            },
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
            "S3 fan-in (protocol-level clients, server ingest; {} node(s) on {store_kind}): {} clients x ({} new + {} edits) \
             pushed at once: {} of {} changes acknowledged in {:.2} s = {:.0} changes durably \
             stored/s; {} refused, {} failures\n  \
             per-change ack latency (push sent -> Ack read; {} samples): p50 {:.0} ms, \
             p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n  \
             per-client done ({}; {} Changes frames decoded, not applied): p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms\n  \
             server peak RSS during fan-in {} ({}; before {}, after {}, peak during setup {}); \
             server CPU {:.1} s, bench (clients) CPU {:.1} s\n  \
             a fresh device pulled {} records (expected {}), {} of {} edits visible{}\n  \
             push probe ({}): {} of {} arrived, ack -> arrival p50 {p50:.0} ms, p90 {p90:.0} ms, \
             p99 {p99:.0} ms, max {pmax:.0} ms",
            pids.len(),
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
            mib(rss_before_kib),
            mib(rss_after_kib),
            mib(setup_peak_kib),
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
            if probe_across {
                "node 1 -> node 2"
            } else {
                "same node"
            },
            probe_ack_ms.len(),
            fan.probe.writes.pushes.len(),
        );
        Ok(Outcome {
            name: "s3_fan_in",
            json,
            summary,
        })
    }
}
