//! S2, cold start: an empty tablet pulls every record the server holds
//! (S2), and again after S1's edits (S2b: records whose latest write moved
//! their feed entries past records created later, which a long catch-up
//! must still deliver whole), with `--cut-every-kib` over connections
//! cut again and again (S2c), and with `--tablet-bin` in a `baraza sync`
//! process of its own, for the tablet's peak memory (S2d). All are
//! measured during S1's run, which builds the records they pull
//! ([`super::s1_reconnect`]); this file says what they report, and runs
//! S2c and S2d.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use baraza_client::{ClientError, SyncReport};
use serde_json::json;

use super::{device_client, report_json, Bench, Measured, Options, Outcome};
use crate::proxy::{CountingProxy, Traffic};
use crate::server::Server;
use crate::stats::{ms, round3};

/// S2's result: `cold` is the empty client's measured first sync, after
/// which it held `b_records` records.
pub(super) fn cold_start(o: &Options, cold: &Measured, b_records: usize) -> Outcome {
    Outcome {
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
                "link": o.link.map(|l| l.to_json()),
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
    }
}

/// S2b's result: a third, empty client's first sync after the edits
/// (`cold2`, which may have failed), with its figures, the records it
/// then held and its feed cursor.
pub(super) fn cold_start_after_edits(
    o: &Options,
    cold2: &Result<SyncReport, ClientError>,
    cold2_wall: Duration,
    cold2_traffic: &Traffic,
    c_records: usize,
    cursor: u64,
) -> Outcome {
    Outcome {
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
            "cursor_after": cursor,
            "via_proxy": true,
                "link": o.link.map(|l| l.to_json()),
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
                cursor
            ),
        },
    }
}

/// Most syncs S2c makes before it gives up.
const CUT_TRIES_MAX: usize = 1_000;

impl Bench {
    /// S2c: an empty client pulls every record over connections cut after
    /// `every` bytes from the server, syncing again (at once) after each
    /// cut until a sync completes holding every record. Compared with the
    /// uncut S2 (`uncut`): the bytes a cut costs.
    pub(super) fn cold_start_cut(
        &self,
        server: &Server,
        url: &str,
        dir: &std::path::Path,
        proxy: &CountingProxy,
        every: u64,
        uncut: &Measured,
    ) -> anyhow::Result<Outcome> {
        let o = &self.opts;
        proxy.cut_every(Some(every));
        let d = device_client(server, url, &dir.join("client-d"), "bench-d")?;
        let (mut tries, mut wall, mut down, mut up) = (0usize, Duration::ZERO, 0u64, 0u64);
        let mut done = false;
        while tries < CUT_TRIES_MAX && !done {
            tries += 1;
            let (result, took, traffic) = self.try_sync(&d, Some(proxy));
            wall += took;
            down += traffic.down;
            up += traffic.up;
            done = result.is_ok() && d.list()?.len() == o.docs;
        }
        proxy.cut_every(None);
        let records = d.list()?.len();
        let ratio = down as f64 / uncut.traffic.down.max(1) as f64;
        let summary = format!(
            "S2c cold start cut every {} KiB: {records} of {} records in {tries} syncs, \
             {:.2} s; {down} B down ({ratio:.2}x the uncut {} B), {up} B up{}",
            every / 1024,
            o.docs,
            wall.as_secs_f64(),
            uncut.traffic.down,
            if done { "" } else { "; DID NOT COMPLETE" }
        );
        self.log(&summary);
        Ok(Outcome {
            name: "s2c_cold_start_cut",
            json: json!({
                "scenario": "s2c_cold_start_cut",
                "docs": o.docs,
                "cut_every_bytes": every,
                "records_after": records,
                "complete": done,
                "syncs": tries,
                "wall_ms": round3(ms(wall)),
                "bytes_down": down,
                "bytes_up": up,
                "bytes_down_uncut": uncut.traffic.down,
                "bytes_down_ratio": round3(ratio),
                "link": o.link.map(|l| l.to_json()),
            }),
            summary,
        })
    }

    /// S2d: an empty tablet pulls every record in a `baraza sync` process
    /// (`tablet_bin`) of its own, as an officer's would: its wall time,
    /// traffic, and peak RSS (the kernel's high-water mark for that
    /// process alone, from `wait4`).
    pub(super) fn cold_start_process(
        &self,
        server: &Server,
        url: &str,
        dir: &Path,
        proxy: &CountingProxy,
        tablet_bin: &Path,
    ) -> anyhow::Result<Outcome> {
        let o = &self.opts;
        let data = dir.join("client-cli");
        let token = server.add_device("bench-cli")?;
        let cli = |args: &[&str]| {
            let mut command = Command::new(tablet_bin);
            command
                .arg("--data")
                .arg(&data)
                .arg("--key-file")
                .arg(dir.join("client-cli.key"))
                .args(args)
                .env("BARAZA_TOKEN", &token)
                .env_remove("BARAZA_TABLET_DATA")
                .env_remove("BARAZA_KEY_FILE")
                .stdin(Stdio::null());
            command
        };
        let ca = server.ca();
        let ca = ca.to_string_lossy();
        let init = cli(&["init", "--server", url, "--ca", &ca])
            .output()
            .with_context(|| format!("cannot run {}", tablet_bin.display()))?;
        ensure!(
            init.status.success(),
            "baraza init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let before = proxy.traffic();
        let start = Instant::now();
        let mut child = cli(&["--json", "sync"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start baraza sync")?;
        // Drained while it runs, so a full pipe cannot stall it.
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut out);
                }
                out
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
        let (peak_kib, exit) = wait_with_peak_rss(child.id())?;
        let wall = start.elapsed();
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if !proxy.wait_idle(super::PROXY_DRAIN) {
            self.log("warning: the proxy still had a connection open after baraza sync");
        }
        let traffic = proxy.traffic().since(&before);
        ensure!(
            exit == 0,
            "baraza sync exited with {exit}: {}",
            String::from_utf8_lossy(&stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&stdout).context("baraza sync --json printed no JSON")?;
        let received = report["docs_received"].as_u64().unwrap_or(0);
        let summary = format!(
            "S2d cold start in a baraza process: {received} of {} records in {:.2} s; \
             {} B down, {} B up; peak RSS {}",
            o.docs,
            wall.as_secs_f64(),
            traffic.down,
            traffic.up,
            super::mib(Some(peak_kib)),
        );
        self.log(&summary);
        Ok(Outcome {
            name: "s2d_cold_start_process",
            json: json!({
                "scenario": "s2d_cold_start_process",
                "docs": o.docs,
                "records_received": received,
                "wall_ms": round3(ms(wall)),
                "bytes_down": traffic.down,
                "bytes_up": traffic.up,
                "peak_rss_kib": peak_kib,
                "report": report,
                "link": o.link.map(|l| l.to_json()),
            }),
            summary,
        })
    }
}

/// Waits for the child `pid` to exit; its peak RSS in KiB and exit code.
/// std's `Child::wait` reaps without the resource usage, and
/// `RUSAGE_CHILDREN` would mix in the server's.
fn wait_with_peak_rss(pid: u32) -> anyhow::Result<(u64, i32)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals of the right types, and
    // `pid` is our own unreaped child.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if reaped != pid as libc::pid_t {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    // Linux reports ru_maxrss in KiB.
    Ok((usage.ru_maxrss.max(0) as u64, code))
}
