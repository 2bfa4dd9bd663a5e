//! The scenarios. Each starts its own server in its own directory under the
//! work directory and returns one [`Outcome`] per measured scenario.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use baraza_client::{Client, ClientError, NoListener, SyncEvent, SyncListener, SyncReport};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::proxy::{CountingProxy, Traffic};
use crate::records::{self, Gen};
use crate::server::{proc_cpu_time, Server};
use crate::stats::{ms, round3, summary};

/// How long to wait for the proxy to see a finished sync's connection close.
const PROXY_DRAIN: Duration = Duration::from_secs(5);
/// The record field the edits set.
pub(crate) const EDIT_FIELD: &str = "place";

/// Sizes and places.
#[derive(Clone, Debug)]
pub struct Options {
    /// S1/S2: records the first client holds.
    pub docs: usize,
    /// S1: records each side edits (the other device, then this one offline).
    pub edits: usize,
    /// S3: clients reconnecting at once.
    pub clients: usize,
    /// S3: records each client creates offline.
    pub creates: usize,
    /// S3: existing records each client edits offline.
    pub fanin_edits: usize,
    /// S3: records every client holds before going offline (the shared pool
    /// the edits touch). With `clients * fanin_edits` of them no two
    /// clients edit the same record.
    pub pool: usize,
    /// Threads making offline edits on different clients during setup.
    pub setup_threads: usize,
    /// Clients syncing at once during S3's (unmeasured) first sync.
    pub setup_syncs: usize,
    /// Worker threads of the shared runtime (setup, S1/S2).
    pub client_threads: usize,
    /// Worker threads of the runtime running S3's protocol-level clients.
    pub light_threads: usize,
    /// S3: connections being opened at once before the common start.
    pub connect_parallel: usize,
    /// S3: how long each client may take, from the common start.
    pub fanin_timeout: Duration,
    /// S3: clients hang up at their last acknowledgement instead of
    /// waiting for the feed (everything the others wrote).
    pub ack_only: bool,
    /// Hostile: records the S1 client holds.
    pub hostile_docs: usize,
    /// Hostile: S1 runs with and without the attack.
    pub hostile_runs: usize,
    /// Hostile: times each idle connection is reopened after the server
    /// closes it.
    pub hostile_reopen: usize,
    /// The `baraza-server` binary.
    pub server_bin: PathBuf,
    /// Where each scenario makes its directory.
    pub work_dir: PathBuf,
}

/// One scenario's result: a JSON object and a human summary.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Short name (`s1_reconnect`, ...).
    pub name: &'static str,
    /// The machine-readable result (one line when printed).
    pub json: Value,
    /// A few lines for a person.
    pub summary: String,
}

/// One measured `sync_once`.
struct Measured {
    report: SyncReport,
    wall: Duration,
    traffic: Traffic,
}

impl Measured {
    fn json(&self) -> Value {
        json!({
            "wall_ms": round3(ms(self.wall)),
            "bytes_up": self.traffic.up,
            "bytes_down": self.traffic.down,
            "connections": self.traffic.connections,
            "report": report_json(&self.report),
        })
    }
}

fn report_json(report: &SyncReport) -> Value {
    serde_json::to_value(report).unwrap_or(Value::Null)
}

/// The store key of every benchmark tablet: they are thrown away, and
/// sealing costs the same under any key.
const BENCH_KEY: [u8; 32] = [0x42; 32];

pub(crate) fn open_client(dir: &Path, url: &str, ca: &Path, token: &str) -> anyhow::Result<Client> {
    let client = Client::open(dir, &BENCH_KEY)
        .with_context(|| format!("cannot open a client in {}", dir.display()))?;
    client.configure(url, Some(ca), token)?;
    client.set_identity(crate::server::BENCH_USER, crate::server::BENCH_AREA)?;
    Ok(client)
}

pub(crate) fn field_value(
    client: &Client,
    id: &str,
    field: &str,
) -> anyhow::Result<Option<String>> {
    Ok(client
        .get(id)?
        .fields
        .into_iter()
        .find(|f| f.name == field)
        .map(|f| f.value))
}

pub(crate) fn kib_json(v: Option<u64>) -> Value {
    v.map(Value::from).unwrap_or(Value::Null)
}

pub(crate) fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

/// Times each change's acknowledgement as the client sees it.
///
/// The SDK reports no per-push acknowledgements, so this listener infers
/// them: the client emits a `Progress` event after every frame it handles;
/// when the `received` count did not move (an `Ack` or `Cursor` frame, not
/// new changes), it asks `Client::get` whether the next record it expects
/// to be acknowledged still is unacknowledged. Pushes go out in record-id
/// order and the server answers them in order, so it checks the ids in
/// sorted order and stops at the first still-unacknowledged one. An ack
/// noticed late is timed late, never early.
struct AckProbe {
    client: Client,
    state: Mutex<ProbeState>,
}

#[derive(Default)]
struct ProbeState {
    pending: std::collections::VecDeque<String>,
    last_received: u64,
    acked: Vec<Instant>,
    checks: u64,
}

/// What an [`AckProbe`] saw.
struct Probed {
    acked: Vec<Instant>,
    unseen: usize,
    checks: u64,
}

impl AckProbe {
    fn new(client: Client, mut ids: Vec<String>) -> AckProbe {
        ids.sort();
        AckProbe {
            client,
            state: Mutex::new(ProbeState {
                pending: ids.into(),
                ..ProbeState::default()
            }),
        }
    }

    fn advance(&self, state: &mut ProbeState) {
        while let Some(id) = state.pending.front() {
            state.checks += 1;
            match self.client.get(id) {
                Ok(record) if !record.unacknowledged => {
                    state.acked.push(Instant::now());
                    state.pending.pop_front();
                }
                _ => return,
            }
        }
    }

    fn finish(&self) -> Probed {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Probed {
            acked: state.acked.clone(),
            unseen: state.pending.len(),
            checks: state.checks,
        }
    }
}

impl SyncListener for AckProbe {
    fn on_event(&self, event: SyncEvent) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            SyncEvent::Progress { received, .. } => {
                if received != state.last_received {
                    state.last_received = received;
                } else {
                    self.advance(&mut state);
                }
            }
            SyncEvent::Settled(_) => self.advance(&mut state),
            _ => {}
        }
    }
}

/// One client's fan-in sync.
struct FanInResult {
    index: usize,
    result: Result<SyncReport, ClientError>,
    start: Instant,
    end: Instant,
    probed: Probed,
}

/// Runs every client's `sync_once` on its own OS thread with its own
/// single-threaded runtime, released together by a barrier. Separate
/// threads model separate tablets: the operating system time-slices them,
/// so a client busy applying records cannot starve another's TLS handshake
/// the way tasks sharing a few runtime workers would.
fn fan_in_threads(clients: &[Client], edited: &[Vec<String>]) -> anyhow::Result<Vec<FanInResult>> {
    let barrier = Arc::new(std::sync::Barrier::new(clients.len()));
    let mut handles = Vec::with_capacity(clients.len());
    for (index, client) in clients.iter().enumerate() {
        let probe = AckProbe::new(
            client.clone(),
            edited.get(index).cloned().unwrap_or_default(),
        );
        let barrier = barrier.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tablet-{index}"))
            .spawn(move || -> anyhow::Result<FanInResult> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                // Wait even if the runtime failed, so the others are released.
                barrier.wait();
                let runtime = runtime.context("cannot start a client runtime")?;
                let start = Instant::now();
                let result = runtime.block_on(probe.client.sync_once(&probe));
                let end = Instant::now();
                Ok(FanInResult {
                    index,
                    result,
                    start,
                    end,
                    probed: probe.finish(),
                })
            });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The barrier would never open: fail before anyone waits.
                bail!("cannot start thread for client {index}: {e}")
            }
        }
    }
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a fan-in thread panicked"))?
        })
        .collect()
}

/// Runs the scenarios on one tokio runtime, logging progress to stderr.
pub struct Bench {
    pub(crate) opts: Options,
    pub(crate) rt: Runtime,
    started: Instant,
}

impl Bench {
    /// A bench with its own multi-threaded runtime (setup and S1/S2; S3
    /// runs its protocol-level clients on a runtime of its own, and the
    /// SDK S3 fan-in gives each client its own thread and runtime).
    pub fn new(opts: Options) -> anyhow::Result<Bench> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.client_threads.max(1))
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Bench {
            opts,
            rt,
            started: Instant::now(),
        })
    }

    pub(crate) fn log(&self, message: &str) {
        eprintln!("[{:>7.1}s] {message}", self.started.elapsed().as_secs_f64());
    }

    /// One `sync_once`, timed, with the proxy's byte counts if it goes
    /// through one; the sync's error is returned with the figures.
    pub(crate) fn try_sync(
        &self,
        client: &Client,
        proxy: Option<&CountingProxy>,
    ) -> (Result<SyncReport, ClientError>, Duration, Traffic) {
        let before = proxy.map(|p| p.traffic()).unwrap_or_default();
        let start = Instant::now();
        let result = self.rt.block_on(client.sync_once(&NoListener));
        let wall = start.elapsed();
        let traffic = match proxy {
            Some(p) => {
                if !p.wait_idle(PROXY_DRAIN) {
                    self.log("warning: the proxy still had a connection open after the sync");
                }
                p.traffic().since(&before)
            }
            None => Traffic::default(),
        };
        (result, wall, traffic)
    }

    /// [`Bench::try_sync`], failing on a sync error.
    fn sync(&self, client: &Client, proxy: Option<&CountingProxy>) -> anyhow::Result<Measured> {
        let (result, wall, traffic) = self.try_sync(client, proxy);
        Ok(Measured {
            report: result?,
            wall,
            traffic,
        })
    }

    pub(crate) fn scenario_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.opts.work_dir.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// S2 (cold start) and S1 (reconnect), which share their setup: client
    /// A creates and uploads `docs` records; client B starts empty and
    /// pulls them (S2); B edits `edits` records and syncs; A edits `edits`
    /// others offline and reconnects (S1). Every sync goes through the
    /// counting proxy. Finally client C cold-starts after the edits (S2b).
    /// Returns S1, S2 and S2b.
    pub fn reconnect_and_cold_start(&self) -> anyhow::Result<Vec<Outcome>> {
        let o = &self.opts;
        ensure!(
            o.docs >= 2 * o.edits && o.docs > 0,
            "--docs must be at least twice --edits"
        );
        let dir = self.scenario_dir("s1-s2")?;
        let server = Server::start(
            &o.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let proxy = CountingProxy::start(server.addr())?;
        let url = format!("https://{}", proxy.addr());
        self.log(&format!(
            "S1/S2: server pid {} on {}, proxy on {}",
            server.pid(),
            server.addr(),
            proxy.addr()
        ));
        let a = open_client(
            &dir.join("client-a"),
            &url,
            &server.ca(),
            &server.add_device("bench-a")?,
        )?;
        let b = open_client(
            &dir.join("client-b"),
            &url,
            &server.ca(),
            &server.add_device("bench-b")?,
        )?;

        // A creates its records, one flushed create at a time.
        let mut gen = Gen::new(1);
        let mut record_bytes = 0usize;
        let start = Instant::now();
        let step = (o.docs / 10).max(1);
        for n in 0..o.docs {
            let fields = records::fields(&mut gen, n);
            record_bytes += records::size(&fields);
            a.create(fields)?;
            if (n + 1) % step == 0 {
                self.log(&format!("S1/S2 setup: created {}/{}", n + 1, o.docs));
            }
        }
        let create_wall = start.elapsed();
        let create_ms_each = ms(create_wall) / o.docs as f64;
        self.log(&format!(
            "S1/S2 setup: {} creates took {:.1} s ({:.3} ms per create)",
            o.docs,
            create_wall.as_secs_f64(),
            create_ms_each
        ));

        let upload = self.sync(&a, Some(&proxy))?;
        ensure!(
            upload.report.docs_sent == o.docs as u64 && upload.report.unacknowledged == 0,
            "A's first sync did not push every record: {:?}",
            upload.report
        );
        self.log(&format!(
            "S1/S2 setup: A uploaded {} records in {:.2} s ({} B up, {} B down)",
            o.docs,
            upload.wall.as_secs_f64(),
            upload.traffic.up,
            upload.traffic.down
        ));
        // A second sync, as a tablet's next one would be: collects whatever
        // the feed still had for A after its upload settled.
        let settle = self.sync(&a, Some(&proxy))?;
        self.log(&format!(
            "S1/S2 setup: A's next sync took {:.2} s, received {} records ({} B down)",
            settle.wall.as_secs_f64(),
            settle.report.docs_received,
            settle.traffic.down
        ));

        // S2: B pulls everything.
        let cold = self.sync(&b, Some(&proxy))?;
        let b_records = b.list()?.len();
        self.log(&format!(
            "S2 cold start: {} records in {:.2} s, {} B down, {} B up",
            b_records,
            cold.wall.as_secs_f64(),
            cold.traffic.down,
            cold.traffic.up
        ));

        // B edits some records and syncs; A edits others offline.
        let ids = a.list()?;
        ensure!(ids.len() == o.docs, "A holds {} records", ids.len());
        let b_ids: Vec<&String> = ids.iter().step_by(2).take(o.edits).collect();
        let a_ids: Vec<&String> = ids.iter().skip(1).step_by(2).take(o.edits).collect();
        for (k, id) in b_ids.iter().enumerate() {
            b.set(id, EDIT_FIELD, &format!("reviewed by B #{k}"))?;
        }
        let b_push = self.sync(&b, Some(&proxy))?;
        let start = Instant::now();
        for (k, id) in a_ids.iter().enumerate() {
            a.set(id, EDIT_FIELD, &format!("closed by A #{k}"))?;
        }
        let set_ms_each = ms(start.elapsed()) / o.edits.max(1) as f64;

        // S1: A reconnects.
        let reconnect = self.sync(&a, Some(&proxy))?;
        self.log(&format!(
            "S1 reconnect: {:.1} ms, {} B up, {} B down",
            ms(reconnect.wall),
            reconnect.traffic.up,
            reconnect.traffic.down
        ));

        // Both sides see both sets of edits?
        let b_pull = self.sync(&b, Some(&proxy))?;
        let mut converged = true;
        for (k, id) in b_ids.iter().enumerate() {
            converged &= field_value(&a, id, EDIT_FIELD)? == Some(format!("reviewed by B #{k}"));
        }
        for (k, id) in a_ids.iter().enumerate() {
            converged &= field_value(&b, id, EDIT_FIELD)? == Some(format!("closed by A #{k}"));
        }

        // A second cold start, now that some records were edited after
        // they were created: their feed entries have moved past records
        // created later, which a long catch-up must still deliver whole.
        let c = open_client(
            &dir.join("client-c"),
            &url,
            &server.ca(),
            &server.add_device("bench-c")?,
        )?;
        let (cold2, cold2_wall, cold2_traffic) = self.try_sync(&c, Some(&proxy));
        let c_records = c.list()?.len();
        let c_status = c.status()?;
        match &cold2 {
            Ok(_) => self.log(&format!(
                "S2b cold start after edits: {c_records} records in {:.2} s",
                cold2_wall.as_secs_f64()
            )),
            Err(e) => self.log(&format!(
                "S2b cold start after edits FAILED after {:.1} s with {c_records} records: {e}",
                cold2_wall.as_secs_f64()
            )),
        }
        drop(proxy);
        let status = server.stop()?;
        if !status.success() {
            self.log(&format!("warning: the S1/S2 server exited with {status}"));
        }
        let s2b = Outcome {
            name: "s2b_cold_start_after_edits",
            json: json!({
                "scenario": "s2b_cold_start_after_edits",
                "docs": o.docs,
                "edited_records": 2 * o.edits,
                "records_after": c_records,
                "ok": cold2.is_ok(),
                "error": cold2.as_ref().err().map(|e| e.to_string()),
                "wall_ms": round3(ms(cold2_wall)),
                "bytes_up": cold2_traffic.up,
                "bytes_down": cold2_traffic.down,
                "connections": cold2_traffic.connections,
                "report": cold2.as_ref().ok().map(report_json),
                "cursor_after": c_status.cursor,
                "via_proxy": true,
            }),
            summary: match &cold2 {
                Ok(report) => format!(
                    "S2b cold start after {} edits: pulled {c_records} of {} records in {:.2} s; \
                     {} B down; report {report:?}",
                    2 * o.edits,
                    o.docs,
                    cold2_wall.as_secs_f64(),
                    cold2_traffic.down
                ),
                Err(e) => format!(
                    "S2b cold start after {} edits: FAILED after {:.1} s holding {c_records} of {} \
                     records (cursor {}): {e}",
                    2 * o.edits,
                    cold2_wall.as_secs_f64(),
                    o.docs,
                    c_status.cursor
                ),
            },
        };

        let s2 = Outcome {
            name: "s2_cold_start",
            json: json!({
                "scenario": "s2_cold_start",
                "docs": o.docs,
                "records_after": b_records,
                "wall_ms": round3(ms(cold.wall)),
                "bytes_up": cold.traffic.up,
                "bytes_down": cold.traffic.down,
                "bytes_down_per_record": round3(cold.traffic.down as f64 / o.docs as f64),
                "connections": cold.traffic.connections,
                "records_per_sec": round3(o.docs as f64 / cold.wall.as_secs_f64()),
                "report": report_json(&cold.report),
                "via_proxy": true,
            }),
            summary: format!(
                "S2 cold start: empty client pulled {b_records} of {} records in {:.2} s \
                 ({:.0} records/s); {} B down ({:.0} B/record), {} B up; report {:?}",
                o.docs,
                cold.wall.as_secs_f64(),
                o.docs as f64 / cold.wall.as_secs_f64(),
                cold.traffic.down,
                cold.traffic.down as f64 / o.docs as f64,
                cold.traffic.up,
                cold.report
            ),
        };
        let s1 = Outcome {
            name: "s1_reconnect",
            json: json!({
                "scenario": "s1_reconnect",
                "docs": o.docs,
                "local_edits": o.edits,
                "remote_edits": o.edits,
                "wall_ms": round3(ms(reconnect.wall)),
                "bytes_up": reconnect.traffic.up,
                "bytes_down": reconnect.traffic.down,
                "connections": reconnect.traffic.connections,
                "report": report_json(&reconnect.report),
                "converged": converged,
                "via_proxy": true,
                "setup": {
                    "record_bytes_avg": round3(record_bytes as f64 / o.docs as f64),
                    "create_ms_total": round3(ms(create_wall)),
                    "create_ms_each": round3(create_ms_each),
                    "set_ms_each": round3(set_ms_each),
                    "upload": upload.json(),
                    "next_sync": settle.json(),
                    "remote_edit_sync": b_push.json(),
                    "remote_pull_after": b_pull.json(),
                },
            }),
            summary: format!(
                "S1 reconnect: client with {} records, {} local + {} remote edits: sync_once {:.1} ms; \
                 {} B up, {} B down over {} connection(s); report {:?}; converged: {converged}\n  \
                 setup: {:.3} ms per create ({} creates in {:.1} s), {:.3} ms per set; \
                 initial upload {:.2} s ({} B up, {} B down); next sync received {} records ({} B down)",
                o.docs,
                o.edits,
                o.edits,
                ms(reconnect.wall),
                reconnect.traffic.up,
                reconnect.traffic.down,
                reconnect.traffic.connections,
                reconnect.report,
                create_ms_each,
                o.docs,
                create_wall.as_secs_f64(),
                set_ms_each,
                upload.wall.as_secs_f64(),
                upload.traffic.up,
                upload.traffic.down,
                settle.report.docs_received,
                settle.traffic.down,
            ),
        };
        Ok(vec![s1, s2, s2b])
    }

    /// S3 with full SDK clients (`s3-sdk`): `clients` clients hold the
    /// `pool` records (synced once), each creates `creates` records and
    /// edits `fanin_edits` pool records offline, then all call `sync_once`
    /// at the same moment, each on its own thread. Clients connect to the
    /// server directly (no proxy). On a small machine this measures the
    /// clients (each applies everyone's records) more than the server; see
    /// [`Bench::fan_in`] for the server's ingest.
    pub fn fan_in_sdk(&self) -> anyhow::Result<Outcome> {
        let o = &self.opts;
        ensure!(o.clients > 0, "--clients must be positive");
        ensure!(
            o.pool > 0 || o.fanin_edits == 0,
            "--pool must be positive when clients edit existing records"
        );
        let dir = self.scenario_dir("s3-sdk")?;
        let server = Server::start(
            &o.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let url = server.url();
        let ca = server.ca();
        self.log(&format!(
            "S3-sdk: server pid {} on {}",
            server.pid(),
            server.addr()
        ));

        // The shared records, from a seeding device.
        let seeder = open_client(
            &dir.join("seeder"),
            &url,
            &ca,
            &server.add_device("bench-seeder")?,
        )?;
        let mut gen = Gen::new(3);
        for n in 0..o.pool {
            seeder.create(records::fields(&mut gen, n))?;
        }
        let seeded = self.sync(&seeder, None)?;
        ensure!(
            seeded.report.docs_sent == o.pool as u64,
            "seeding pushed {:?}",
            seeded.report
        );
        let pool_ids = Arc::new(seeder.list()?);
        drop(seeder);

        let start = Instant::now();
        let tokens = server.add_devices("bench-fanin", o.clients, 4)?;
        self.log(&format!(
            "S3-sdk setup: seeded {} records; registered {} devices in {:.1} s",
            o.pool,
            o.clients,
            start.elapsed().as_secs_f64()
        ));
        let clients: Vec<Client> = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| open_client(&dir.join(format!("client-{i}")), &url, &ca, token))
            .collect::<anyhow::Result<_>>()?;

        // First sync of every client (not measured), a few at a time.
        let start = Instant::now();
        let first = self.rt.block_on(async {
            let slots = Arc::new(Semaphore::new(o.setup_syncs.max(1)));
            let mut set = JoinSet::new();
            for (i, client) in clients.iter().enumerate() {
                let client = client.clone();
                let slots = slots.clone();
                set.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    (i, client.sync_once(&NoListener).await)
                });
            }
            let mut out = Vec::new();
            while let Some(joined) = set.join_next().await {
                out.push(joined);
            }
            out
        });
        for joined in first {
            let (i, result) = joined.context("a first-sync task panicked")?;
            let report = result.with_context(|| format!("first sync of client {i}"))?;
            ensure!(
                report.unacknowledged == 0,
                "client {i}'s first sync left {report:?}"
            );
        }
        self.log(&format!(
            "S3-sdk setup: first sync of {} clients took {:.1} s",
            o.clients,
            start.elapsed().as_secs_f64()
        ));

        // Offline edits, several clients at a time.
        let start = Instant::now();
        let edited = self.offline_edits(&clients, &pool_ids)?;
        let edits_wall = start.elapsed();
        let edits_total = o.clients * (o.creates + o.fanin_edits);
        self.log(&format!(
            "S3-sdk setup: {} offline edits on {} threads took {:.1} s",
            edits_total,
            o.setup_threads,
            edits_wall.as_secs_f64()
        ));

        // The fan-in.
        let setup_peak_kib = server.status_kib("VmHWM");
        let rss_before_kib = server.status_kib("VmRSS");
        let peak_reset = server.reset_peak_rss();
        let server_cpu_before = server.cpu_time();
        let bench_cpu_before = proc_cpu_time(std::process::id());
        self.log(&format!("S3-sdk: {} clients reconnect at once", o.clients));
        let results = fan_in_threads(&clients, &edited)?;
        // The common start: every thread passed the barrier within moments
        // of the first.
        let t0 = results
            .iter()
            .map(|r| r.start)
            .min()
            .unwrap_or_else(Instant::now);
        let wall = results
            .iter()
            .map(|r| r.end)
            .max()
            .map(|end| end.saturating_duration_since(t0))
            .unwrap_or_default();
        let peak_kib = server.status_kib("VmHWM");
        let rss_after_kib = server.status_kib("VmRSS");
        let server_cpu = server
            .cpu_time()
            .zip(server_cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        let bench_cpu = proc_cpu_time(std::process::id())
            .zip(bench_cpu_before)
            .map(|(a, b)| a.saturating_sub(b));

        let mut latencies = Vec::new();
        let mut ack_latencies = Vec::new();
        let mut acks_unseen = 0usize;
        let mut probe_checks = 0u64;
        let mut errors = Vec::new();
        let mut acked = 0u64;
        let mut sent = 0u64;
        let mut received = 0u64;
        let mut refused = 0u64;
        let mut unacknowledged = 0u64;
        for FanInResult {
            index: i,
            result,
            end,
            probed,
            ..
        } in results
        {
            ack_latencies.extend(
                probed
                    .acked
                    .iter()
                    .map(|at| ms(at.saturating_duration_since(t0))),
            );
            acks_unseen += probed.unseen;
            probe_checks += probed.checks;
            match result {
                Ok(report) => {
                    latencies.push(ms(end.saturating_duration_since(t0)));
                    sent += report.docs_sent;
                    received += report.docs_received;
                    refused += report.refused;
                    unacknowledged += report.unacknowledged;
                    acked += report.docs_sent.saturating_sub(report.refused);
                }
                Err(e) => errors.push(format!("client {i}: {e}")),
            }
        }
        let [p50, p90, p99, max] = summary(&latencies);
        let [a50, a90, a99, amax] = summary(&ack_latencies);
        let acked_per_sec = acked as f64 / wall.as_secs_f64();
        self.log(&format!(
            "S3-sdk: done in {:.2} s; {} pushes acknowledged; {} failures",
            wall.as_secs_f64(),
            acked,
            errors.len()
        ));

        // Does the server hold everything? A fresh device pulls it all.
        let checker = open_client(
            &dir.join("checker"),
            &url,
            &ca,
            &server.add_device("bench-checker")?,
        )?;
        let (check, check_wall, _) = self.try_sync(&checker, None);
        let records_on_server = checker.list()?.len();
        if let Err(e) = &check {
            self.log(&format!(
                "S3-sdk: the checking cold start FAILED after {:.1} s with {records_on_server} records: {e}",
                check_wall.as_secs_f64()
            ));
        }
        drop(checker);
        drop(clients);
        let status = server.stop()?;
        if !status.success() {
            self.log(&format!("warning: the S3 server exited with {status}"));
        }

        let peak_scope = if peak_reset {
            "fan_in"
        } else {
            "process_lifetime"
        };
        let json = json!({
            "scenario": "s3_sdk_fan_in",
            "clients_kind": "sdk",
            "clients": o.clients,
            "creates_per_client": o.creates,
            "edits_per_client": o.fanin_edits,
            "pool": o.pool,
            "changes_expected": edits_total,
            "pushes_acked": acked,
            "docs_sent": sent,
            "refused": refused,
            "unacknowledged": unacknowledged,
            "docs_received_total": received,
            "failures": errors.len(),
            "errors": errors.iter().take(5).collect::<Vec<_>>(),
            "wall_ms": round3(ms(wall)),
            "acked_per_sec": round3(acked_per_sec),
            "ack_latency_ms": {
                "p50": round3(a50), "p90": round3(a90), "p99": round3(a99), "max": round3(amax),
            },
            "ack_latency_samples": ack_latencies.len(),
            "ack_latency_unseen": acks_unseen,
            "ack_latency_kind": "per_change: common start -> client processed the Ack \
                (SyncListener progress event, then Client::get(id).unacknowledged == false)",
            "ack_probe_checks": probe_checks,
            "client_latency_ms": {
                "p50": round3(p50), "p90": round3(p90), "p99": round3(p99), "max": round3(max),
            },
            "client_latency_kind": "per_client: common start -> sync_once returned",
            "server_peak_rss_kib": kib_json(peak_kib),
            "server_peak_rss_scope": peak_scope,
            "server_rss_before_kib": kib_json(rss_before_kib),
            "server_rss_after_kib": kib_json(rss_after_kib),
            "server_setup_peak_rss_kib": kib_json(setup_peak_kib),
            "server_cpu_ms": server_cpu.map(|d| round3(ms(d))),
            "bench_cpu_ms": bench_cpu.map(|d| round3(ms(d))),
            "records_on_server": records_on_server,
            "records_expected": o.pool + o.clients * o.creates,
            "checker_ok": check.is_ok(),
            "checker_error": check.as_ref().err().map(|e| e.to_string()),
            "checker_pull_ms": round3(ms(check_wall)),
            "setup": {
                "offline_edits_ms_total": round3(ms(edits_wall)),
                "offline_edit_threads": o.setup_threads,
            },
        });
        let summary = format!(
            "S3-sdk fan-in (full SDK clients): {} clients x ({} creates + {} edits) reconnecting at once: {} of {} pushes \
             acknowledged in {:.2} s = {:.0} changes durably stored/s; {} failures\n  \
             per-change ack latency (common start -> client processed the Ack; {} samples, \
             {} unseen): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n  \
             per-client sync_once completion (common start -> returned): \
             p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n  \
             server peak RSS during fan-in {} ({}; before {}, after {}, peak during setup {}); \
             server CPU {:.1} s, bench (clients) CPU {:.1} s; clients received {} record updates; \
             a fresh device pulled {} records (expected {}){}",
            o.clients,
            o.creates,
            o.fanin_edits,
            acked,
            edits_total,
            wall.as_secs_f64(),
            acked_per_sec,
            errors.len(),
            ack_latencies.len(),
            acks_unseen,
            a50,
            a90,
            a99,
            amax,
            p50,
            p90,
            p99,
            max,
            mib(peak_kib),
            peak_scope,
            mib(rss_before_kib),
            mib(rss_after_kib),
            mib(setup_peak_kib),
            server_cpu.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
            bench_cpu.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
            received,
            records_on_server,
            o.pool + o.clients * o.creates,
            match &check {
                Ok(_) => String::new(),
                Err(e) => format!(" but its sync FAILED: {e}"),
            },
        );
        Ok(Outcome {
            name: "s3_sdk_fan_in",
            json,
            summary,
        })
    }

    /// Each client creates `creates` records and edits `fanin_edits` pool
    /// records, spread over `setup_threads` threads (one client at a time
    /// per thread: a client's edits are serialised anyway). Returns each
    /// client's edited record ids, sorted.
    fn offline_edits(
        &self,
        clients: &[Client],
        pool_ids: &[String],
    ) -> anyhow::Result<Vec<Vec<String>>> {
        let o = &self.opts;
        let next = AtomicUsize::new(0);
        let edited: Mutex<Vec<Vec<String>>> = Mutex::new(vec![Vec::new(); clients.len()]);
        let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..o.setup_threads.clamp(1, clients.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= clients.len() {
                        return;
                    }
                    match self.edit_offline(i, &clients[i], pool_ids) {
                        Ok(ids) => {
                            if let Ok(mut e) = edited.lock() {
                                e[i] = ids;
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        match failure.into_inner() {
            Ok(None) => {}
            Ok(Some(e)) => return Err(e),
            Err(_) => bail!("an offline-edit thread panicked"),
        }
        edited
            .into_inner()
            .map_err(|_| anyhow::anyhow!("an offline-edit thread panicked"))
    }

    fn edit_offline(
        &self,
        i: usize,
        client: &Client,
        pool_ids: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let o = &self.opts;
        let mut gen = Gen::new(1000 + i as u64);
        let mut ids = Vec::with_capacity(o.creates + o.fanin_edits);
        for j in 0..o.creates {
            ids.push(client.create(records::fields(&mut gen, i * o.creates + j))?);
        }
        for j in 0..o.fanin_edits {
            let id = &pool_ids[(i * o.fanin_edits + j) % pool_ids.len()];
            client.set(id, EDIT_FIELD, &format!("visited by tablet {i} ({j})"))?;
            ids.push(id.clone());
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}
