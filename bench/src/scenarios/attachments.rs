//! The attachments scenario (issue 17): a 5 MB photo uploaded by the
//! SDK's queue, on loopback, over a link shaped to 256 kbit/s with 150 ms
//! one-way delay (against the link's floor, bytes / rate), and over that
//! link cut every 200 KB; then the server's peak RSS while 50 tablets
//! upload 5 MB each at once, against chunk size times connections.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use baraza_client::{Client, NoListener};
use serde_json::json;

use super::{device_client, Bench, Outcome};
use crate::proxy::{CountingProxy, Link};
use crate::server::Server;
use crate::stats::{ms, round3};

/// The photo's size.
const PHOTO_BYTES: usize = 5_000_000;
/// Tablets uploading at once for the memory case.
const TABLETS: usize = 50;
/// The shaped link's cut.
const CUT_EVERY: u64 = 200 * 1024;
/// Upload passes at most over the cut link (each cut ends one).
const PASSES_MAX: usize = 400;

/// Bytes that do not compress, different for each seed.
fn photo(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..PHOTO_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// One upload case's figures.
struct Upload {
    wall: Duration,
    passes: usize,
    bytes_up: u64,
}

impl Bench {
    /// A meeting with a fresh 5 MB photo attached and its record synced
    /// (through the proxy, unshaped), so only the bytes are left to go.
    fn photo_waiting(&self, client: &Client, seed: u64) -> anyhow::Result<String> {
        let id = client.create_record(
            "meeting",
            crate::server::BENCH_AREA,
            vec![("title".into(), format!("Baraza {seed}"))],
        )?;
        client.attach(&id, "photos", &photo(seed), "image/jpeg", "scene.jpg")?;
        // The record change goes; the upload is what is measured.
        self.rt.block_on(client.sync_records(&NoListener))?;
        Ok(id)
    }

    /// Upload passes until nothing waits; failures (cuts) are retried at
    /// once, as the background queue's first backoff would, bounded.
    fn upload(&self, client: &Client, proxy: &CountingProxy) -> anyhow::Result<Upload> {
        let before = proxy.traffic();
        let start = Instant::now();
        let mut passes = 0;
        loop {
            passes += 1;
            ensure!(passes <= PASSES_MAX, "the upload did not finish");
            match self.rt.block_on(client.upload_attachments(&NoListener)) {
                Ok(report) if report.waiting == 0 && report.refused == 0 => break,
                Ok(report) => anyhow::bail!("an upload pass left work: {report:?}"),
                Err(error) => {
                    // A cut ends a pass; anything else is worth seeing.
                    self.log(&format!("attachments: upload pass {passes} ended: {error}"));
                    continue;
                }
            }
        }
        let wall = start.elapsed();
        proxy.wait_idle(Duration::from_secs(5));
        Ok(Upload {
            wall,
            passes,
            bytes_up: proxy.traffic().since(&before).up,
        })
    }

    /// Runs the attachments scenario.
    pub fn attachments(&self) -> anyhow::Result<Outcome> {
        let dir = self.scenario_dir("attachments")?;
        let server = Server::start(
            &self.opts.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let proxy = CountingProxy::start(server.addr())?;
        let url = format!("https://{}", proxy.addr());
        let tablet = device_client(&server, &url, &dir.join("tablet"), "photographer")?;

        let link = Link::kbit(256, 150);
        let floor = Duration::from_secs_f64(PHOTO_BYTES as f64 / link.bytes_per_sec as f64);

        self.log("attachments: 5 MB on loopback");
        self.photo_waiting(&tablet, 1)?;
        let loopback = self.upload(&tablet, &proxy)?;

        self.log(&format!(
            "attachments: 5 MB at 256 kbit/s, 150 ms (floor {:.0} s)",
            floor.as_secs_f64()
        ));
        self.photo_waiting(&tablet, 2)?;
        proxy.shape(Some(link));
        let shaped = self.upload(&tablet, &proxy)?;
        proxy.shape(None);

        self.log("attachments: 5 MB at 256 kbit/s, 150 ms, cut every 200 KB");
        self.photo_waiting(&tablet, 3)?;
        proxy.shape(Some(link));
        proxy.cut_up_every(Some(CUT_EVERY));
        let cut = self.upload(&tablet, &proxy)?;
        proxy.shape(None);
        proxy.cut_up_every(None);

        self.log(&format!(
            "attachments: {TABLETS} tablets upload 5 MB each at once"
        ));
        let mut tablets = Vec::with_capacity(TABLETS);
        for i in 0..TABLETS {
            let t = device_client(
                &server,
                &server.url(),
                &dir.join(format!("tablet-{i}")),
                &format!("uploader-{i}"),
            )?;
            self.photo_waiting(&t, 100 + i as u64)?;
            tablets.push(t);
        }
        let idle_kib = server.status_kib("VmRSS");
        let reset = server.reset_peak_rss();
        let start = Instant::now();
        let results: Vec<anyhow::Result<()>> = self.rt.block_on(async {
            let passes = tablets.iter().map(|t| async move {
                let report = t.upload_attachments(&NoListener).await?;
                ensure!(report.uploaded == 1, "an upload did not finish: {report:?}");
                Ok(())
            });
            futures_util::future::join_all(passes).await
        });
        let many_wall = start.elapsed();
        for r in results {
            r.context("one of the 50 uploads")?;
        }
        let peak_kib = server.status_kib("VmHWM");
        let chunk_max_kib = (baraza_client::UPLOAD_CHUNK_MAX / 1024) as u64;
        server.stop()?;

        let over = |u: &Upload| round3(u.wall.as_secs_f64() / floor.as_secs_f64() - 1.0);
        let json = json!({
            "scenario": "attachments",
            "photo_bytes": PHOTO_BYTES,
            "loopback": { "wall_ms": ms(loopback.wall), "bytes_up": loopback.bytes_up },
            "link": link.to_json(),
            "link_floor_ms": ms(floor),
            "shaped": {
                "wall_ms": ms(shaped.wall),
                "over_floor": over(&shaped),
                "bytes_up": shaped.bytes_up,
            },
            "shaped_cut": {
                "cut_every_bytes": CUT_EVERY,
                "wall_ms": ms(cut.wall),
                "over_floor": over(&cut),
                "passes": cut.passes,
                "bytes_up": cut.bytes_up,
            },
            "many": {
                "tablets": TABLETS,
                "wall_ms": ms(many_wall),
                "rss_idle_kib": idle_kib,
                "peak_rss_kib": if reset { peak_kib } else { None },
                "chunk_max_kib": chunk_max_kib,
                "chunks_in_flight_kib": chunk_max_kib * TABLETS as u64,
            },
        });
        let summary = format!(
            "attachments: 5 MB loopback {:.0} ms; 256 kbit/s 150 ms {:.1} s vs floor {:.1} s \
             ({:+.1}%); cut every 200 KB {:.1} s ({:+.1}%, {} passes); {TABLETS} x 5 MB at once \
             {:.1} s, server peak RSS {} MiB (idle {} MiB; {TABLETS} chunks of {} KiB = {} MiB)",
            ms(loopback.wall),
            shaped.wall.as_secs_f64(),
            floor.as_secs_f64(),
            over(&shaped) * 100.0,
            cut.wall.as_secs_f64(),
            over(&cut) * 100.0,
            cut.passes,
            many_wall.as_secs_f64(),
            peak_kib.map_or("?".into(), |k| (k / 1024).to_string()),
            idle_kib.map_or("?".into(), |k| (k / 1024).to_string()),
            chunk_max_kib,
            chunk_max_kib * TABLETS as u64 / 1024,
        );
        Ok(Outcome {
            name: "attachments",
            json,
            summary,
        })
    }
}
