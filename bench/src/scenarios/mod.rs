//! The scenarios, one file each; each starts its own server in its own
//! directory under the work directory and returns one [`Outcome`] per
//! measured scenario. What they share is here: the sizes ([`Options`]),
//! the runner ([`Bench`]: its runtime, progress log, timed syncs and
//! directories), and small helpers for clients and figures.
//!
//! - [`s1_reconnect`]: S1, which also measures S2 and S2b
//!   ([`s2_cold_start`]) on the same server.
//! - [`s3_ingest`]: S3, the server's ingest under a fan-in of
//!   protocol-level clients; [`s3_sdk`]: the same with SDK clients.
//! - [`meeting`], [`review`], [`desk_live`], [`hostile`], [`login`],
//!   [`attachments`].

pub mod attachments;
pub mod desk_live;
pub mod hostile;
pub mod login;
pub mod meeting;
pub mod review;
pub mod s1_reconnect;
pub mod s2_cold_start;
pub mod s3_ingest;
pub mod s3_sdk;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use baraza_client::{Client, ClientError, NoListener, SyncReport};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::proxy::{CountingProxy, Traffic};
use crate::server::Server;
use crate::stats::{ms, round3};

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
    /// S1: reconnects measured, each on records not edited before; the
    /// median is reported.
    pub s1_runs: usize,
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
    /// S3: server nodes on one database (more than one needs a PostgreSQL
    /// store); clients are split across them.
    pub nodes: usize,
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
    /// S2c: bytes after which each connection is cut (none: no S2c).
    pub cut_every: Option<u64>,
    /// S2d: the `baraza` CLI, run as a cold-starting tablet (none: no S2d).
    pub tablet_bin: Option<PathBuf>,
    /// S1/S2: the slow link their measured syncs go over (none: loopback).
    pub link: Option<crate::proxy::Link>,
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
pub(crate) struct Measured {
    pub(crate) report: SyncReport,
    pub(crate) wall: Duration,
    pub(crate) traffic: Traffic,
}

impl Measured {
    pub(crate) fn json(&self) -> Value {
        json!({
            "wall_ms": round3(ms(self.wall)),
            "bytes_up": self.traffic.up,
            "bytes_down": self.traffic.down,
            "connections": self.traffic.connections,
            "report": report_json(&self.report),
        })
    }
}

pub(crate) fn report_json(report: &SyncReport) -> Value {
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

/// A benchmark tablet registered on `server` as a new device named
/// `device`, its store in `dir`, syncing through `url` (the server's, or a
/// counting proxy's in front of it).
pub(crate) fn device_client(
    server: &Server,
    url: &str,
    dir: &Path,
    device: &str,
) -> anyhow::Result<Client> {
    open_client(dir, url, &server.ca(), &server.add_device(device)?)
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
    pub(crate) fn sync(
        &self,
        client: &Client,
        proxy: Option<&CountingProxy>,
    ) -> anyhow::Result<Measured> {
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
}
