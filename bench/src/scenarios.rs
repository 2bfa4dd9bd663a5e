//! The scenarios. Each starts its own server in its own directory under the
//! work directory and returns one [`Outcome`] per measured scenario.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use baraza_client::{Client, NoListener, SyncReport};
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
const EDIT_FIELD: &str = "status";

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
    /// the edits touch).
    pub pool: usize,
    /// Threads making offline edits on different clients during setup.
    pub setup_threads: usize,
    /// Clients syncing at once during S3's (unmeasured) first sync.
    pub setup_syncs: usize,
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

fn open_client(dir: &Path, url: &str, ca: &Path, token: &str) -> anyhow::Result<Client> {
    let client =
        Client::open(dir).with_context(|| format!("cannot open a client in {}", dir.display()))?;
    client.configure(url, Some(ca), token)?;
    Ok(client)
}

fn field_value(client: &Client, id: &str, field: &str) -> anyhow::Result<Option<String>> {
    Ok(client
        .get(id)?
        .fields
        .into_iter()
        .find(|f| f.name == field)
        .map(|f| f.value))
}

fn kib_json(v: Option<u64>) -> Value {
    v.map(Value::from).unwrap_or(Value::Null)
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

/// Runs the scenarios on one tokio runtime, logging progress to stderr.
pub struct Bench {
    opts: Options,
    rt: Runtime,
    started: Instant,
}

impl Bench {
    /// A bench with its own multi-threaded runtime.
    pub fn new(opts: Options) -> anyhow::Result<Bench> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Bench {
            opts,
            rt,
            started: Instant::now(),
        })
    }

    fn log(&self, message: &str) {
        eprintln!("[{:>7.1}s] {message}", self.started.elapsed().as_secs_f64());
    }

    /// One `sync_once`, timed, with the proxy's byte counts if it goes
    /// through one.
    fn sync(&self, client: &Client, proxy: Option<&CountingProxy>) -> anyhow::Result<Measured> {
        let before = proxy.map(|p| p.traffic()).unwrap_or_default();
        let start = Instant::now();
        let report = self.rt.block_on(client.sync_once(&NoListener))?;
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
        Ok(Measured {
            report,
            wall,
            traffic,
        })
    }

    fn scenario_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.opts.work_dir.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }

    /// S2 (cold start) and S1 (reconnect), which share their setup: client
    /// A creates and uploads `docs` records; client B starts empty and
    /// pulls them (S2); B edits `edits` records and syncs; A edits `edits`
    /// others offline and reconnects (S1). Every sync goes through the
    /// counting proxy. Returns (S2, S1).
    pub fn reconnect_and_cold_start(&self) -> anyhow::Result<(Outcome, Outcome)> {
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
        drop(proxy);
        let status = server.stop()?;
        if !status.success() {
            self.log(&format!("warning: the S1/S2 server exited with {status}"));
        }

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
        Ok((s2, s1))
    }

    /// S3: `clients` clients hold the `pool` records (synced once), each
    /// creates `creates` records and edits `fanin_edits` pool records
    /// offline, then all call `sync_once` at the same moment. Clients
    /// connect to the server directly (no proxy).
    pub fn fan_in(&self) -> anyhow::Result<Outcome> {
        let o = &self.opts;
        ensure!(o.clients > 0, "--clients must be positive");
        ensure!(
            o.pool > 0 || o.fanin_edits == 0,
            "--pool must be positive when clients edit existing records"
        );
        let dir = self.scenario_dir("s3")?;
        let server = Server::start(
            &o.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let url = server.url();
        let ca = server.ca();
        self.log(&format!(
            "S3: server pid {} on {}",
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
            "S3 setup: seeded {} records; registered {} devices in {:.1} s",
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
            "S3 setup: first sync of {} clients took {:.1} s",
            o.clients,
            start.elapsed().as_secs_f64()
        ));

        // Offline edits, several clients at a time.
        let start = Instant::now();
        self.offline_edits(&clients, &pool_ids)?;
        let edits_wall = start.elapsed();
        let edits_total = o.clients * (o.creates + o.fanin_edits);
        self.log(&format!(
            "S3 setup: {} offline edits on {} threads took {:.1} s",
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
        self.log(&format!("S3: {} clients reconnect at once", o.clients));
        let t0 = Instant::now();
        let results = self.rt.block_on(async {
            let mut set = JoinSet::new();
            for (i, client) in clients.iter().enumerate() {
                let client = client.clone();
                set.spawn(async move {
                    let result = client.sync_once(&NoListener).await;
                    (i, result, t0.elapsed())
                });
            }
            let mut out = Vec::new();
            while let Some(joined) = set.join_next().await {
                out.push(joined);
            }
            out
        });
        let wall = t0.elapsed();
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
        let mut errors = Vec::new();
        let mut acked = 0u64;
        let mut sent = 0u64;
        let mut received = 0u64;
        let mut refused = 0u64;
        let mut unacknowledged = 0u64;
        for joined in results {
            let (i, result, elapsed) = joined.context("a fan-in task panicked")?;
            match result {
                Ok(report) => {
                    latencies.push(ms(elapsed));
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
        let acked_per_sec = acked as f64 / wall.as_secs_f64();
        self.log(&format!(
            "S3: done in {:.2} s; {} pushes acknowledged; {} failures",
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
        let check = self.sync(&checker, None)?;
        let records_on_server = checker.list()?.len();
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
            "scenario": "s3_fan_in",
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
            "latency_kind": "per_client_sync_once_completion_since_common_start",
            "client_latency_ms": {
                "p50": round3(p50), "p90": round3(p90), "p99": round3(p99), "max": round3(max),
            },
            "server_peak_rss_kib": kib_json(peak_kib),
            "server_peak_rss_scope": peak_scope,
            "server_rss_before_kib": kib_json(rss_before_kib),
            "server_rss_after_kib": kib_json(rss_after_kib),
            "server_setup_peak_rss_kib": kib_json(setup_peak_kib),
            "server_cpu_ms": server_cpu.map(|d| round3(ms(d))),
            "bench_cpu_ms": bench_cpu.map(|d| round3(ms(d))),
            "records_on_server": records_on_server,
            "records_expected": o.pool + o.clients * o.creates,
            "checker_pull_ms": round3(ms(check.wall)),
            "setup": {
                "offline_edits_ms_total": round3(ms(edits_wall)),
                "offline_edit_threads": o.setup_threads,
            },
        });
        let summary = format!(
            "S3 fan-in: {} clients x ({} creates + {} edits) reconnecting at once: {} of {} pushes \
             acknowledged in {:.2} s = {:.0} changes durably stored/s; {} failures\n  \
             per-client sync_once completion (from the common start; the SDK does not expose \
             per-change ack times, and each change's ack latency is at most its client's \
             completion): p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n  \
             server peak RSS during fan-in {} ({}; before {}, after {}, peak during setup {}); \
             server CPU {:.1} s, bench (clients) CPU {:.1} s; clients received {} record updates; \
             server holds {} records (expected {})",
            o.clients,
            o.creates,
            o.fanin_edits,
            acked,
            edits_total,
            wall.as_secs_f64(),
            acked_per_sec,
            errors.len(),
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
        );
        Ok(Outcome {
            name: "s3_fan_in",
            json,
            summary,
        })
    }

    /// Each client creates `creates` records and edits `fanin_edits` pool
    /// records, spread over `setup_threads` threads (one client at a time
    /// per thread: a client's edits are serialised anyway).
    fn offline_edits(&self, clients: &[Client], pool_ids: &[String]) -> anyhow::Result<()> {
        let o = &self.opts;
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..o.setup_threads.clamp(1, clients.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= clients.len() {
                        return;
                    }
                    if let Err(e) = self.edit_offline(i, &clients[i], pool_ids) {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                });
            }
        });
        match failure.into_inner() {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => bail!("an offline-edit thread panicked"),
        }
    }

    fn edit_offline(&self, i: usize, client: &Client, pool_ids: &[String]) -> anyhow::Result<()> {
        let o = &self.opts;
        let mut gen = Gen::new(1000 + i as u64);
        for j in 0..o.creates {
            client.create(records::fields(&mut gen, i * o.creates + j))?;
        }
        for j in 0..o.fanin_edits {
            let id = &pool_ids[(i * o.fanin_edits + j) % pool_ids.len()];
            client.set(id, EDIT_FIELD, &format!("visited by tablet {i} ({j})"))?;
        }
        Ok(())
    }
}
