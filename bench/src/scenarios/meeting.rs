//! The meeting scenario (issue 3): five devices edit one meeting record
//! offline, 50 operations each (attendees, action items and their status,
//! concerns, typing in the notes, setting the place), then sync through a
//! real server until all five hold the same record. Measures the wall time
//! and the TLS bytes of that reconciliation.

use std::time::Instant;

use anyhow::ensure;
use serde_json::json;

use super::{device_client, Bench, Outcome};
use crate::proxy::CountingProxy;
use crate::records::Gen;
use crate::server::Server;
use crate::stats::ms;

/// Devices editing the meeting.
const DEVICES: usize = 5;
/// Operations each device makes offline.
const OPS_PER_DEVICE: usize = 50;

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

impl Bench {
    /// Runs the meeting scenario.
    pub fn meeting(&self) -> anyhow::Result<Outcome> {
        let dir = self.scenario_dir("meeting")?;
        let server = Server::start(
            &self.opts.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let proxy = CountingProxy::start(server.addr())?;
        let url = format!("https://{}", proxy.addr());
        let mut devices = Vec::with_capacity(DEVICES);
        for i in 0..DEVICES {
            devices.push(device_client(
                &server,
                &url,
                &dir.join(format!("device-{i}")),
                &format!("meeting-device-{i}"),
            )?);
        }
        let id = devices[0].create_record(
            "meeting",
            crate::server::BENCH_AREA,
            vec![kv("title", "Ward baraza on lighting and patrols")],
        )?;
        for d in &devices {
            self.sync_counted(d, &proxy)?;
        }

        // Offline: each device makes its 50 operations.
        let mut gen = Gen::new(42);
        let mut expected_items = 0u64;
        for (i, d) in devices.iter().enumerate() {
            let mut actions = 0u64;
            for op in 0..OPS_PER_DEVICE {
                match gen.next_u64() % 6 {
                    0 => {
                        d.add_item(
                            &id,
                            "attendees",
                            vec![kv("name", &format!("resident {i}-{op}"))],
                        )?;
                        expected_items += 1;
                    }
                    1 => {
                        d.add_item(
                            &id,
                            "action_items",
                            vec![
                                kv("text", &format!("follow-up {i}-{op}")),
                                kv("status", "open"),
                            ],
                        )?;
                        actions += 1;
                        expected_items += 1;
                    }
                    2 if actions > 0 => {
                        d.set_item(&id, "action_items", 0, "status", "in_progress")?;
                    }
                    3 => {
                        d.add_item(
                            &id,
                            "concerns",
                            vec![
                                kv("topic", "lighting"),
                                kv("text", &format!("concern {i}-{op}")),
                            ],
                        )?;
                        expected_items += 1;
                    }
                    4 => d.set(&id, "place", &format!("hall {}", gen.next_u64() % 3))?,
                    _ => d.splice(&id, "notes", 0, 0, &format!("[{i}.{op}] "))?,
                }
            }
        }

        // Reconcile: every device syncs until all hold the same heads.
        let before = proxy.traffic();
        let start = Instant::now();
        let mut rounds = 0;
        let converged = loop {
            rounds += 1;
            for d in &devices {
                self.sync_counted(d, &proxy)?;
            }
            let heads = devices[0].heads(&id)?;
            let same = devices
                .iter()
                .all(|d| d.heads(&id).map(|h| h == heads).unwrap_or(false));
            if same || rounds >= 4 {
                break same;
            }
        };
        let wall = start.elapsed();
        let traffic = proxy.traffic().since(&before);
        let record = devices[0].get(&id)?;
        let count = |name: &str| {
            record
                .fields
                .iter()
                .find(|f| f.name == name)
                .and_then(|f| {
                    f.value
                        .trim_start_matches('[')
                        .split(' ')
                        .next()
                        .map(str::to_string)
                })
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let items = count("attendees") + count("action_items") + count("concerns");
        ensure!(
            converged,
            "the five devices did not converge in {rounds} rounds"
        );
        ensure!(
            items == expected_items,
            "{items} list items after the merge, {expected_items} added"
        );
        let summary = format!(
            "Meeting: {DEVICES} devices x {OPS_PER_DEVICE} offline operations on one record: reconciled in {:.1} ms over {rounds} sync rounds; {} B up, {} B down; {items} list items, all present",
            ms(wall),
            traffic.up,
            traffic.down
        );
        self.log(&summary);
        let _ = server.stop();
        Ok(Outcome {
            name: "meeting_5x50",
            json: json!({
                "scenario": "meeting_5x50",
                "devices": DEVICES,
                "ops_per_device": OPS_PER_DEVICE,
                "wall_ms": ms(wall),
                "rounds": rounds,
                "bytes_up": traffic.up,
                "bytes_down": traffic.down,
                "list_items": items,
                "converged": converged,
            }),
            summary,
        })
    }

    fn sync_counted(
        &self,
        client: &baraza_client::Client,
        proxy: &CountingProxy,
    ) -> anyhow::Result<()> {
        let (result, _, _) = self.try_sync(client, Some(proxy));
        result?;
        Ok(())
    }
}
