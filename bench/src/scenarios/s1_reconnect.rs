//! S1, reconnect: a tablet holding many synced records reconnects after
//! editing some offline while another device edited others; the time and
//! the bytes of that one `sync_once`. Its run also measures S2 and S2b
//! (cold starts, [`super::s2_cold_start`]): they share its server and the
//! records it builds, so one run yields all three.

use std::time::Instant;

use anyhow::ensure;
use serde_json::json;

use super::{
    device_client, field_value, kib_json, mib, report_json, s2_cold_start, Bench, Outcome,
    EDIT_FIELD,
};
use crate::proxy::CountingProxy;
use crate::records::{self, Gen};
use crate::server::Server;
use crate::stats::{ms, round3};

impl Bench {
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
        // What an empty store costs (PostgreSQL's catalogue is most of it).
        let store_empty = server.store_bytes()?;
        let a = device_client(&server, &url, &dir.join("client-a"), "bench-a")?;
        let b = device_client(&server, &url, &dir.join("client-b"), "bench-b")?;

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

        // The server snapshots records once the upload burst is over; a
        // cold start long after an upload (the usual case) finds them.
        let waited = server.wait_for_snapshots(std::time::Duration::from_secs(120))?;
        self.log(&format!(
            "S1/S2 setup: the server's snapshots were taken {:.1} s after the upload",
            waited.as_secs_f64()
        ));
        let store_full = server.store_bytes()?;
        let per_10k = store_full.saturating_sub(store_empty) as f64 * 10_000.0 / o.docs as f64;
        self.log(&format!(
            "S1/S2 setup: the {} store holds {:.1} MiB ({:.1} MiB empty): {:.1} MiB per 10,000 records",
            server.store_kind(),
            store_full as f64 / 1048576.0,
            store_empty as f64 / 1048576.0,
            per_10k / 1048576.0
        ));

        if let Some(link) = o.link {
            proxy.shape(Some(link));
            self.log(&format!(
                "S1/S2: the measured syncs go over a link of {} kbit/s each way, {} ms one way",
                link.kbit_per_sec(),
                link.delay.as_millis()
            ));
        }

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

        let s2d = match &o.tablet_bin {
            Some(bin) => Some(self.cold_start_process(&server, &url, &dir, &proxy, bin)?),
            None => None,
        };

        // B edits some records and syncs; A edits others offline; A
        // reconnects (S1). Repeated on fresh records each run, since one
        // sync of tens of milliseconds is at the mercy of whatever else
        // the machine (or the database) does at that moment.
        let ids = a.list()?;
        ensure!(ids.len() == o.docs, "A holds {} records", ids.len());
        let runs = o.s1_runs.max(1);
        ensure!(
            o.docs >= 2 * o.edits * runs,
            "--docs must be at least 2 x --edits x --s1-runs"
        );
        let mut walls = Vec::with_capacity(runs);
        let mut converged = true;
        let mut set_ms_each = 0.0;
        let mut last = None;
        for run in 0..runs {
            let b_ids: Vec<&String> = ids
                .iter()
                .step_by(2)
                .skip(run * o.edits)
                .take(o.edits)
                .collect();
            let a_ids: Vec<&String> = ids
                .iter()
                .skip(1)
                .step_by(2)
                .skip(run * o.edits)
                .take(o.edits)
                .collect();
            for (k, id) in b_ids.iter().enumerate() {
                b.set(id, EDIT_FIELD, &format!("reviewed by B #{run}.{k}"))?;
            }
            let b_push = self.sync(&b, Some(&proxy))?;
            let start = Instant::now();
            for (k, id) in a_ids.iter().enumerate() {
                a.set(id, EDIT_FIELD, &format!("closed by A #{run}.{k}"))?;
            }
            set_ms_each = ms(start.elapsed()) / o.edits.max(1) as f64;

            let reconnect = self.sync(&a, Some(&proxy))?;
            self.log(&format!(
                "S1 reconnect (run {} of {runs}): {:.1} ms, {} B up, {} B down",
                run + 1,
                ms(reconnect.wall),
                reconnect.traffic.up,
                reconnect.traffic.down
            ));
            walls.push(ms(reconnect.wall));

            // Both sides see both sets of edits?
            let b_pull = self.sync(&b, Some(&proxy))?;
            for (k, id) in b_ids.iter().enumerate() {
                converged &=
                    field_value(&a, id, EDIT_FIELD)? == Some(format!("reviewed by B #{run}.{k}"));
            }
            for (k, id) in a_ids.iter().enumerate() {
                converged &=
                    field_value(&b, id, EDIT_FIELD)? == Some(format!("closed by A #{run}.{k}"));
            }
            last = Some((reconnect, b_push, b_pull));
        }
        let Some((reconnect, b_push, b_pull)) = last else {
            anyhow::bail!("S1 made no run");
        };
        let [wall_p50, _, _, wall_max] = crate::stats::summary(&walls);
        let wall_min = walls.iter().copied().fold(f64::INFINITY, f64::min);

        // A second cold start, now that some records were edited after
        // they were created: their feed entries have moved past records
        // created later, which a long catch-up must still deliver whole.
        let c = device_client(&server, &url, &dir.join("client-c"), "bench-c")?;
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
        let s2c = match o.cut_every {
            Some(every) => Some(self.cold_start_cut(&server, &url, &dir, &proxy, every, &cold)?),
            None => None,
        };
        drop(proxy);
        let rss_kib = server.status_kib("VmRSS");
        let peak_kib = server.status_kib("VmHWM");
        let server_store = server.store_kind();
        let status = server.stop()?;
        if !status.success() {
            self.log(&format!("warning: the S1/S2 server exited with {status}"));
        }
        let s2b = s2_cold_start::cold_start_after_edits(
            o,
            &cold2,
            cold2_wall,
            &cold2_traffic,
            c_records,
            c_status.cursor,
        );
        let s2 = s2_cold_start::cold_start(o, &cold, b_records);
        let s1 = Outcome {
            name: "s1_reconnect",
            json: json!({
                "scenario": "s1_reconnect",
                "docs": o.docs,
                "local_edits": o.edits,
                "remote_edits": o.edits,
                "wall_ms": round3(wall_p50),
                "wall_kind": "median of the runs",
                "runs": runs,
                "wall_ms_runs": walls.iter().map(|w| round3(*w)).collect::<Vec<_>>(),
                "wall_ms_min": round3(wall_min),
                "wall_ms_max": round3(wall_max),
                "bytes_up": reconnect.traffic.up,
                "bytes_down": reconnect.traffic.down,
                "connections": reconnect.traffic.connections,
                "report": report_json(&reconnect.report),
                "converged": converged,
                "via_proxy": true,
                "link": o.link.map(|l| l.to_json()),
                "store": {
                    "kind": server_store,
                    "bytes_empty": store_empty,
                    "bytes_after_upload": store_full,
                    "bytes_per_10k_records": per_10k.round(),
                },
                "server_rss_kib": kib_json(rss_kib),
                "server_peak_rss_kib": kib_json(peak_kib),
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
                "S1 reconnect: client with {} records, {} local + {} remote edits: sync_once {:.1} ms \
                 (median of {runs}; min {wall_min:.1}, max {wall_max:.1}); \
                 {} B up, {} B down over {} connection(s); report {:?}; converged: {converged}\n  \
                 setup: {:.3} ms per create ({} creates in {:.1} s), {:.3} ms per set; \
                 initial upload {:.2} s ({} B up, {} B down); next sync received {} records ({} B down)\n  \
                 {server_store} store: {:.1} MiB per 10,000 records; server RSS at the end {} (peak {})",
                o.docs,
                o.edits,
                o.edits,
                wall_p50,
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
                per_10k / 1048576.0,
                mib(rss_kib),
                mib(peak_kib),
            ),
        };
        let mut outcomes = vec![s1, s2, s2b];
        outcomes.extend(s2d);
        outcomes.extend(s2c);
        Ok(outcomes)
    }
}
