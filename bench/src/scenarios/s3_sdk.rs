//! S3-sdk: the fan-in of S3 with full SDK clients. Every client holds the
//! shared pool, makes its edits offline, then all call `sync_once` at the
//! same moment, each on its own thread; the time of each change's
//! acknowledgement is inferred by a listener ([`AckProbe`]), since the
//! SDK does not report acks one by one. On a small machine this measures
//! the clients (each applies everyone's records) as much as the server;
//! [`super::s3_ingest`] measures the server's ingest alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use baraza_client::{Client, ClientError, NoListener, SyncEvent, SyncListener, SyncReport};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{device_client, kib_json, mib, open_client, Bench, Outcome, EDIT_FIELD};
use crate::records::{self, Gen};
use crate::server::{proc_cpu_time, Server};
use crate::stats::{ms, round3, summary};

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

impl Bench {
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
        let seeder = device_client(&server, &url, &dir.join("seeder"), "bench-seeder")?;
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
        let checker = device_client(&server, &url, &dir.join("checker"), "bench-checker")?;
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
