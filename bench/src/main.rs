//! `baraza-bench`: end-to-end benchmarks against a real `baraza-server`.
//!
//! Progress and a human summary go to stderr; stdout carries one JSON line
//! per scenario, for scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use baraza_bench::scenarios::{Bench, Options, Outcome};
use baraza_bench::server::find_server_bin;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// S1: a client holding --docs synced records reconnects after --edits
    /// offline edits while another device made --edits others.
    S1,
    /// S2: an empty client pulls --docs records (shares S1's setup); also
    /// S2b, a second empty client pulling them after S1's edits.
    S2,
    /// S3 (server ingest): --clients protocol-level clients, each pushing
    /// --creates new records and edits of --fanin-edits records it uploaded
    /// during setup, all at once; they decode downloads but never apply them.
    S3,
    /// S3 with full SDK clients (each applies everyone's records, so on a
    /// small machine it measures the clients as much as the server).
    #[value(name = "s3-sdk")]
    S3Sdk,
    /// Five devices make 50 offline operations each on one meeting record,
    /// then reconcile through the server: time and bytes.
    Meeting,
    /// The review desk: --review-records records in ten areas; list one
    /// area's submitted records from the index, open a record with 500
    /// history entries.
    Review,
    /// Server peak RSS under worst-case inputs (deflate bomb, wide CBOR
    /// array, a million empty changes, run-length bomb; 1 and 8
    /// connections), then S1 (--docs default 2,000) without and with 4,096
    /// idle TLS connections and repeated deflate bombs held against it.
    Hostile,
    /// The review desk's event stream: from a tablet's acknowledged submit
    /// to the record's event on an open desk, over --desk-records records.
    #[value(name = "desk-live")]
    DeskLive,
    /// A 5 MB photo uploaded on loopback, at 256 kbit/s with 150 ms delay,
    /// and so cut every 200 KB; the server's peak RSS while 50 tablets
    /// upload 5 MB each at once.
    Attachments,
    /// Login answer times at both doors (enrolment, review desk) for an
    /// unknown name, a wrong password, a locked and a disabled account, an
    /// officer at the desk, and a right password for reference.
    Login,
}

/// End-to-end benchmarks of Baraza against a real server process on
/// 127.0.0.1 over TLS, each scenario with its own temporary data
/// directory. Build the server with the same profile first:
/// `cargo build --release -p baraza-server -p baraza-bench`.
///
/// Progress and a summary go to stderr; stdout gets one JSON line per
/// scenario. Nothing is asserted on time.
#[derive(Debug, Parser)]
#[command(name = "baraza-bench", version)]
struct Cli {
    /// Scenarios to run (S1 and S2 share one setup; s3-sdk is the SDK-client
    /// variant of S3).
    #[arg(long, value_delimiter = ',', default_values = ["s1", "s2", "s3"])]
    scenarios: Vec<Scenario>,
    /// S1/S2: records held by the first client (about 300 bytes each)
    /// [default: 10000; 2000 for the hostile scenario's S1].
    #[arg(long)]
    docs: Option<usize>,
    /// S1: records edited on each side.
    #[arg(long, default_value_t = 50)]
    edits: usize,
    /// S1: reconnects measured (each after fresh edits on both sides); the
    /// median is reported.
    #[arg(long, default_value_t = 5)]
    s1_runs: usize,
    /// S3: clients reconnecting at once (each registers its own device).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// S3: records each client creates offline.
    #[arg(long, default_value_t = 20)]
    creates: usize,
    /// S3: existing records each client edits offline.
    #[arg(long, default_value_t = 20)]
    fanin_edits: usize,
    /// S3-sdk: records every client holds (synced once) before going offline;
    /// client i edits records i*E .. i*E+E of them, wrapping around
    /// [default: clients x fanin-edits, so no two clients edit the same
    /// record; a smaller pool makes clients edit records concurrently].
    #[arg(long)]
    pool: Option<usize>,
    /// Threads making S3-sdk's offline edits (different clients in parallel).
    #[arg(long, default_value_t = 8)]
    setup_threads: usize,
    /// Clients syncing at once in S3's unmeasured setup (upload of the
    /// records to edit; S3-sdk: first sync).
    #[arg(long, default_value_t = 8)]
    setup_syncs: usize,
    /// Worker threads of the async runtime for setup and S1/S2 (S3-sdk's
    /// fan-in runs each client on its own thread).
    #[arg(long, default_value_t = 8)]
    client_threads: usize,
    /// S3: worker threads of the runtime running the protocol-level clients.
    #[arg(long, default_value_t = 2)]
    light_threads: usize,
    /// S3: connections opened at once before the common start (not measured).
    #[arg(long, default_value_t = 16)]
    connect_parallel: usize,
    /// S3: seconds each client may take from the common start (and each
    /// setup connection from its start).
    #[arg(long, default_value_t = 300)]
    fanin_timeout: u64,
    /// S3: each client hangs up once its last push is acknowledged instead
    /// of staying until it has received the others' changes, so the server
    /// streams far less of its feed (ingest with little fan-out).
    #[arg(long)]
    ack_only: bool,
    /// S3: server nodes sharing one PostgreSQL database
    /// (BARAZA_BENCH_POSTGRES), the clients split across them.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// S1/S2: play a slow link of this many kbit/s each way for the
    /// measured syncs (the setup's upload stays on loopback); e.g. 256.
    #[arg(long)]
    link_kbit: Option<u64>,
    /// S2c: a fourth empty client pulls everything over connections cut
    /// after this many KiB from the server each, syncing again until it
    /// holds every record (S2c runs only when this is given; e.g. 1024).
    #[arg(long)]
    cut_every_kib: Option<u64>,
    /// S2d: the `baraza` CLI binary; when given, a cold start also runs in
    /// a `baraza sync` process of its own, for the tablet's peak RSS.
    #[arg(long, value_name = "FILE")]
    tablet_bin: Option<PathBuf>,
    /// S1/S2: the slow link's one-way delay in ms (with --link-kbit).
    #[arg(long, default_value_t = 150)]
    link_delay_ms: u64,
    /// Hostile: S1 runs without and with the attack.
    #[arg(long, default_value_t = 5)]
    hostile_runs: usize,
    /// Hostile: times each idle connection is reopened after the server
    /// closes it (keeps the pressure on during S1).
    #[arg(long, default_value_t = 3)]
    hostile_reopen: usize,
    /// Review: records the server holds.
    #[arg(long, default_value_t = 100_000)]
    review_records: usize,
    /// Desk live: records submitted one at a time.
    #[arg(long, default_value_t = 100)]
    desk_records: usize,
    /// The baraza-server binary [default: next to this executable].
    #[arg(long, env = "BARAZA_SERVER_BIN", value_name = "FILE")]
    server_bin: Option<PathBuf>,
    /// Directory for the temporary work directory [default: system temp].
    #[arg(long, value_name = "DIR")]
    tmp: Option<PathBuf>,
    /// Keep the work directory (server data, logs, client stores).
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let server_bin = find_server_bin(cli.server_bin.as_deref())?;
    let mut builder = tempfile::Builder::new();
    builder.prefix("baraza-bench-");
    let work = match &cli.tmp {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .context("cannot create a work directory")?;
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "baraza-bench ({profile} build); server {}; work dir {}",
        server_bin.display(),
        work.path().display()
    );
    let bench = Bench::new(Options {
        docs: cli.docs.unwrap_or(10_000),
        hostile_docs: cli.docs.unwrap_or(2_000),
        hostile_runs: cli.hostile_runs,
        hostile_reopen: cli.hostile_reopen,
        edits: cli.edits,
        s1_runs: cli.s1_runs,
        clients: cli.clients,
        creates: cli.creates,
        fanin_edits: cli.fanin_edits,
        pool: cli.pool.unwrap_or((cli.clients * cli.fanin_edits).max(1)),
        setup_threads: cli.setup_threads,
        setup_syncs: cli.setup_syncs,
        client_threads: cli.client_threads,
        light_threads: cli.light_threads,
        connect_parallel: cli.connect_parallel,
        fanin_timeout: std::time::Duration::from_secs(cli.fanin_timeout.max(1)),
        ack_only: cli.ack_only,
        nodes: cli.nodes.max(1),
        cut_every: cli.cut_every_kib.map(|kib| kib * 1024),
        tablet_bin: cli.tablet_bin.clone(),
        link: cli
            .link_kbit
            .map(|kbit| baraza_bench::proxy::Link::kbit(kbit, cli.link_delay_ms)),
        server_bin: server_bin.clone(),
        work_dir: work.path().to_path_buf(),
    })?;

    let wants = |s: Scenario| cli.scenarios.contains(&s);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        if wants(Scenario::S1) || wants(Scenario::S2) {
            for outcome in bench.reconnect_and_cold_start()? {
                let wanted = if outcome.name.starts_with("s1") {
                    wants(Scenario::S1)
                } else {
                    wants(Scenario::S2)
                };
                if wanted {
                    emit(&outcome, profile);
                    outcomes.push(outcome);
                }
            }
        }
        if wants(Scenario::S3) {
            let s3 = bench.fan_in()?;
            emit(&s3, profile);
            outcomes.push(s3);
        }
        if wants(Scenario::Meeting) {
            let m = bench.meeting()?;
            emit(&m, profile);
            outcomes.push(m);
        }
        if wants(Scenario::Review) {
            let r = bench.review_desk(cli.review_records)?;
            emit(&r, profile);
            outcomes.push(r);
        }
        if wants(Scenario::Hostile) {
            let h = bench.hostile()?;
            emit(&h, profile);
            outcomes.push(h);
        }
        if wants(Scenario::DeskLive) {
            let d = bench.desk_live(cli.desk_records.max(1))?;
            emit(&d, profile);
            outcomes.push(d);
        }
        if wants(Scenario::Login) {
            let l = bench.login_timing()?;
            emit(&l, profile);
            outcomes.push(l);
        }
        if wants(Scenario::Attachments) {
            let a = bench.attachments()?;
            emit(&a, profile);
            outcomes.push(a);
        }
        if wants(Scenario::S3Sdk) {
            let s3 = bench.fan_in_sdk()?;
            emit(&s3, profile);
            outcomes.push(s3);
        }
        Ok(())
    })();

    eprintln!("\n== summary ({profile} build)");
    for outcome in &outcomes {
        eprintln!("{}", outcome.summary);
    }
    if cli.keep || result.is_err() {
        let kept = work.keep();
        eprintln!("work directory kept at {}", kept.display());
    }
    result
}

/// Prints a scenario's JSON line on stdout as soon as it is known.
fn emit(outcome: &Outcome, profile: &str) {
    let mut json = outcome.json.clone();
    if let Some(map) = json.as_object_mut() {
        map.insert("profile".into(), profile.into());
    }
    println!("{json}");
}
