//! Runs every scenario of `baraza-bench` at tiny sizes against a real
//! server and checks that the reported counts match the setup. Nothing is
//! asserted on time; the only time limit is a guard against a hang.
//!
//! Needs `baraza-server` built with the same profile next to the bench
//! binary (`cargo test --workspace` builds it; alone, run
//! `cargo build -p baraza-server` first).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Guard against a hung run; far above what the tiny run needs.
const HANG_GUARD: Duration = Duration::from_secs(600);

const DOCS: u64 = 50;
const EDITS: u64 = 5;
const CLIENTS: u64 = 5;
const CREATES: u64 = 3;
const FANIN_EDITS: u64 = 3;
const REVIEW_RECORDS: u64 = 400;
/// The default pool: one record per client edit, so none is shared.
const POOL: u64 = CLIENTS * FANIN_EDITS;

/// The push probe pushed records through its node, every one was
/// acknowledged and reached the watcher (on another node if `across`).
fn assert_probe_arrived(s3: &Value, across: bool) {
    let probe = &s3["push_probe"];
    assert_eq!(probe["across_nodes"], across, "{s3}");
    assert_eq!(probe["error"], Value::Null, "{s3}");
    assert!(u(&probe["pushed"]) > 0, "{s3}");
    assert_eq!(u(&probe["acked"]), u(&probe["pushed"]), "{s3}");
    assert_eq!(u(&probe["arrived"]), u(&probe["acked"]), "{s3}");
    assert_eq!(u(&probe["acked_not_arrived"]), 0, "{s3}");
}

fn run_bench() -> (Vec<Value>, String) {
    run_bench_with(&["--scenarios", "s1,s2,s3,s3-sdk,meeting,review"], &[])
}

fn run_bench_with(args: &[&str], env: &[(&str, &str)]) -> (Vec<Value>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baraza-bench"))
        .args(["--docs", &DOCS.to_string()])
        .args(["--edits", &EDITS.to_string()])
        .args(["--s1-runs", "2"])
        .args(["--clients", &CLIENTS.to_string()])
        .args(["--creates", &CREATES.to_string()])
        .args(["--fanin-edits", &FANIN_EDITS.to_string()])
        .args(args)
        .args(["--review-records", &REVIEW_RECORDS.to_string()])
        .envs(env.iter().copied())
        .arg("--tmp")
        .arg(tmp.path())
        .env_remove("BARAZA_SERVER_BIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start baraza-bench");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + HANG_GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "baraza-bench still running after {HANG_GUARD:?}; stderr:\n{}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        status.success(),
        "baraza-bench failed ({status}):\n{stderr}"
    );
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    (lines, stderr)
}

fn scenario<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["scenario"] == name)
        .unwrap_or_else(|| panic!("no {name} line in {lines:?}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn every_scenario_completes_with_counts_matching_the_setup() {
    let (lines, stderr) = run_bench();
    assert_eq!(lines.len(), 7, "{lines:?}");
    // Review desk: 400 records over ten areas, half submitted: one area's
    // submitted ones are 20.
    let review = scenario(&lines, "review_desk");
    assert_eq!(u(&review["records"]), REVIEW_RECORDS);
    assert_eq!(u(&review["list_rows"]), REVIEW_RECORDS / 10 / 2, "{review}");
    assert!(u(&review["history_entries"]) > 500, "{review}");
    let meeting = scenario(&lines, "meeting_5x50");
    assert_eq!(meeting["converged"], true, "{meeting}");
    assert!(meeting["list_items"].as_u64().unwrap() > 0, "{meeting}");
    assert!(meeting["bytes_up"].as_u64().unwrap() > 0, "{meeting}");
    assert!(stderr.contains("== summary"), "{stderr}");

    let s2 = scenario(&lines, "s2_cold_start");
    assert_eq!(u(&s2["records_after"]), DOCS);
    assert_eq!(u(&s2["report"]["docs_received"]), DOCS);
    assert_eq!(u(&s2["report"]["docs_sent"]), 0);
    assert_eq!(u(&s2["report"]["unacknowledged"]), 0);
    assert_eq!(u(&s2["connections"]), 1);
    // Every record crossed the wire: at least its id and heads (48 random
    // bytes, which packing cannot shrink) and something of its text.
    assert!(u(&s2["bytes_down"]) > DOCS * 100, "{s2}");
    assert!(u(&s2["bytes_up"]) > 0);

    let s1 = scenario(&lines, "s1_reconnect");
    assert_eq!(s1["converged"], true, "{s1}");
    assert_eq!(u(&s1["report"]["docs_sent"]), EDITS);
    // The other device's edits, and none of this one's echoed back.
    assert_eq!(u(&s1["report"]["docs_received"]), EDITS, "{s1}");
    assert_eq!(u(&s1["report"]["unacknowledged"]), 0);
    assert_eq!(u(&s1["report"]["refused"]), 0);
    assert_eq!(u(&s1["connections"]), 1);
    assert!(u(&s1["bytes_up"]) > 0 && u(&s1["bytes_down"]) > 0);
    assert_eq!(u(&s1["setup"]["upload"]["report"]["docs_sent"]), DOCS);

    let s2b = scenario(&lines, "s2b_cold_start_after_edits");
    assert_eq!(s2b["ok"], true, "{s2b}");
    assert_eq!(u(&s2b["records_after"]), DOCS);
    assert_eq!(u(&s2b["report"]["docs_received"]), DOCS);

    // S3: protocol-level clients; each uploaded FANIN_EDITS records in
    // setup, then pushes CREATES new ones and an edit of each of those.
    let s3 = scenario(&lines, "s3_fan_in");
    let changes = CLIENTS * (CREATES + FANIN_EDITS);
    assert_eq!(s3["clients_kind"], "protocol");
    assert_eq!(u(&s3["failures"]), 0, "{s3}");
    assert_eq!(u(&s3["connected"]), CLIENTS, "{s3}");
    assert_eq!(u(&s3["setup_records"]), CLIENTS * FANIN_EDITS);
    assert_eq!(u(&s3["setup"]["feed_seq"]), CLIENTS * FANIN_EDITS, "{s3}");
    assert_eq!(u(&s3["changes_expected"]), changes);
    assert_eq!(u(&s3["pushes_acked"]), changes, "{s3}");
    assert_eq!(u(&s3["ack_latency_samples"]), changes, "{s3}");
    assert_eq!(u(&s3["refused"]), 0, "{s3}");
    assert_eq!(u(&s3["unanswered"]), 0);
    assert_eq!(u(&s3["sync_frames"]), 0, "{s3}");
    // Each client is sent (some of) the others' writes, never its own,
    // and the push probe's records.
    let probe = &s3["push_probe"];
    assert!(u(&s3["changes_frames_received"]) > 0, "{s3}");
    assert!(
        u(&s3["changes_frames_received"])
            <= CLIENTS * (CLIENTS - 1) * (CREATES + FANIN_EDITS) + CLIENTS * u(&probe["pushed"]),
        "{s3}"
    );
    assert_probe_arrived(s3, false);
    assert_eq!(s3["checker_ok"], true, "{s3}");
    assert_eq!(
        u(&s3["records_on_server"]),
        CLIENTS * (FANIN_EDITS + CREATES) + u(&probe["acked"]),
        "{s3}"
    );
    assert_eq!(u(&s3["records_expected"]), u(&s3["records_on_server"]));
    assert_eq!(u(&s3["edits_visible"]), CLIENTS * FANIN_EDITS, "{s3}");
    if std::path::Path::new("/proc/self/status").exists() {
        assert!(u(&s3["server_peak_rss_kib"]) > 0, "{s3}");
    }

    // S3-sdk: the same fan-in with full SDK clients.
    let s3 = scenario(&lines, "s3_sdk_fan_in");
    assert_eq!(s3["clients_kind"], "sdk");
    assert_eq!(u(&s3["pool"]), POOL);
    assert_eq!(u(&s3["failures"]), 0, "{s3}");
    assert_eq!(u(&s3["changes_expected"]), changes);
    assert_eq!(u(&s3["pushes_acked"]), changes, "{s3}");
    assert_eq!(u(&s3["refused"]), 0);
    assert_eq!(u(&s3["unacknowledged"]), 0);
    assert_eq!(s3["checker_ok"], true, "{s3}");
    assert_eq!(u(&s3["records_on_server"]), POOL + CLIENTS * CREATES);
    assert_eq!(u(&s3["records_expected"]), POOL + CLIENTS * CREATES);
    if std::path::Path::new("/proc/self/status").exists() {
        assert!(u(&s3["server_peak_rss_kib"]) > 0, "{s3}");
    }
}

/// S3 on two nodes sharing one PostgreSQL database (in the throwaway
/// cluster `scripts/test` starts): the clients split across the nodes,
/// every change is acknowledged and stored, and the push probe's records
/// cross from one node to a tablet connected to the other.
#[test]
fn s3_on_two_nodes_of_one_database_stores_everything_and_pushes_across() {
    let cluster = std::env::var("BARAZA_TEST_PG").expect(
        "BARAZA_TEST_PG is not set: run the tests through scripts/test, \
         or as `scripts/with-postgres cargo test ...`",
    );
    let (lines, _) = run_bench_with(
        &["--scenarios", "s3", "--nodes", "2"],
        &[("BARAZA_BENCH_POSTGRES", cluster.as_str())],
    );
    let s3 = scenario(&lines, "s3_fan_in");
    let changes = CLIENTS * (CREATES + FANIN_EDITS);
    assert_eq!(s3["store"], "postgres", "{s3}");
    assert_eq!(u(&s3["nodes"]), 2, "{s3}");
    assert_eq!(s3["nodes_detail"].as_array().map(Vec::len), Some(2), "{s3}");
    assert_eq!(u(&s3["failures"]), 0, "{s3}");
    assert_eq!(u(&s3["pushes_acked"]), changes, "{s3}");
    assert_eq!(u(&s3["refused"]), 0, "{s3}");
    assert_probe_arrived(s3, true);
    assert_eq!(s3["checker_ok"], true, "{s3}");
    // The records uploaded in setup and those made in the fan-in (as many
    // as the changes pushed), and the probe's.
    assert_eq!(
        u(&s3["records_on_server"]),
        changes + u(&s3["push_probe"]["acked"]),
        "{s3}"
    );
    assert_eq!(u(&s3["edits_visible"]), CLIENTS * FANIN_EDITS, "{s3}");
}
